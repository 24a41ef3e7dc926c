//! The reference: `pgbench` running the plain two-row transfer of
//! `pgbench-transfer.sql` against one of the cluster's Postgres servers
//! (same server settings as the participants': fsync and synchronous_commit
//! on), in a database of its own (`pgbench_ref`, never the participant's),
//! at several client counts; the best one is the reference.
//!
//! The script is the project's shared reference (`../shared/reference/` beside
//! the repository) when it is there, else the copy in `bench/`.
//! Every transaction's latency comes from pgbench's per-transaction log.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::cpu::{self, Trees, TreesUsage, Usage};
use super::generator::{histogram, Latency};
use super::setup::connect;

/// Database the reference runs in.
pub const DATABASE: &str = "pgbench_ref";
/// The script, as kept in the repository.
pub const SCRIPT: &str = include_str!("../pgbench-transfer.sql");
/// Balance of every reference account: never runs dry.
pub const BALANCE: i64 = 1_000_000_000_000;

/// One pgbench run.
#[derive(Debug, Clone, Serialize)]
pub struct RefRun {
    pub clients: usize,
    pub threads: usize,
    pub seconds: u64,
    /// pgbench's "tps (without initial connection time)".
    pub tps: f64,
    /// Transactions pgbench counted as failed.
    pub failed: u64,
    pub latency: Latency,
    /// CPU use of the machine during the run.
    pub cpu: Usage,
    /// Transactions pgbench processed.
    pub transactions: u64,
    /// CPU of the Postgres server (postmaster and backends, not pgbench)
    /// over the run.
    pub server_cpu: TreesUsage,
    /// `server_cpu` per processed transaction, microseconds.
    pub cpu_us_per_tx: Option<f64>,
}

/// The reference measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    /// Where the script came from.
    pub script: PathBuf,
    pub accounts: usize,
    pub runs: Vec<RefRun>,
    /// The run with the most transfers per second.
    pub best: RefRun,
}

/// The script to run: the shared reference if it is beside the repository
/// (`../shared/reference/pgbench-transfer.sql` from the workspace root),
/// else the repository's copy, written into `out_dir`.
pub fn script(workspace: &Path, out_dir: &Path) -> Result<PathBuf> {
    let shared = workspace.join("../shared/reference/pgbench-transfer.sql");
    if shared.is_file() {
        let text = std::fs::read_to_string(&shared)?;
        if text != SCRIPT {
            tracing::warn!(path = %shared.display(), "the shared reference script differs from bench/pgbench-transfer.sql; using the shared one");
        }
        return std::fs::canonicalize(&shared).context("resolving the script path");
    }
    let path = out_dir.join("pgbench-transfer.sql");
    std::fs::write(&path, SCRIPT).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Creates (afresh) the reference database on the server at `port`: table
/// `accounts(id int primary key, balance bigint not null check (balance >= 0))`
/// with `accounts` rows.
pub async fn prepare(port: u16, accounts: usize) -> Result<()> {
    prepare_database(port, DATABASE, accounts).await
}

/// Creates (afresh) `database` on the server at `port` with the reference's
/// `accounts` table of `accounts` rows (ids 1 to `accounts`).
pub async fn prepare_database(port: u16, database: &str, accounts: usize) -> Result<()> {
    let admin = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let mut conn = connect(&admin, Duration::from_secs(120)).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {database}"))
        .execute(&mut conn)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&mut conn)
        .await?;
    let url = format!("postgres://postgres@127.0.0.1:{port}/{database}");
    let mut conn = connect(&url, Duration::from_secs(120)).await?;
    sqlx::query(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))",
    )
    .execute(&mut conn)
    .await?;
    sqlx::query("INSERT INTO accounts SELECT i, $2 FROM generate_series(1, $1) AS i")
        .bind(accounts as i32)
        .bind(BALANCE)
        .execute(&mut conn)
        .await?;
    sqlx::query("VACUUM ANALYZE accounts")
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// Runs pgbench once per client count (`-j` up to 2), `seconds` each, and
/// keeps every run; per-transaction logs go to `out_dir`. `server` names
/// the Postgres server's process tree (name, postmaster PID) whose CPU the
/// transfers cost.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    pgbench: &Path,
    server: &(String, u32),
    port: u16,
    script: &Path,
    accounts: usize,
    clients: &[usize],
    seconds: u64,
    out_dir: &Path,
) -> Result<Reference> {
    let mut runs = Vec::new();
    for &c in clients {
        let run = run_one(pgbench, server, port, script, c, seconds, out_dir)
            .await
            .with_context(|| format!("pgbench with {c} clients"))?;
        eprintln!(
            "  pgbench -c {:>3} -j {}: {:>8.0} tps  p50 {:.2} ms  p99 {:.2} ms  failed {}  server CPU {:.0} µs/tx  other CPU {:.0}%",
            run.clients,
            run.threads,
            run.tps,
            run.latency.p50_ms,
            run.latency.p99_ms,
            run.failed,
            run.cpu_us_per_tx.unwrap_or(f64::NAN),
            run.cpu.other_pct
        );
        runs.push(run);
    }
    let best = runs
        .iter()
        .max_by(|a, b| a.tps.total_cmp(&b.tps))
        .cloned()
        .context("no client counts given")?;
    Ok(Reference {
        script: script.to_path_buf(),
        accounts,
        runs,
        best,
    })
}

async fn run_one(
    pgbench: &Path,
    server: &(String, u32),
    port: u16,
    script: &Path,
    clients: usize,
    seconds: u64,
    out_dir: &Path,
) -> Result<RefRun> {
    let threads = clients.min(2);
    let log_dir = out_dir.join(format!("pgbench-c{clients}"));
    std::fs::create_dir_all(&log_dir)?;
    let mut cmd = tokio::process::Command::new(pgbench);
    cmd.args(["-n", "-f"])
        .arg(script)
        .args(["-c", &clients.to_string(), "-j", &threads.to_string()])
        .args(["-T", &seconds.to_string()])
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-l", "--log-prefix"])
        .arg(log_dir.join("txn"))
        .arg(DATABASE)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let limit = Duration::from_secs(seconds + 60);
    let servers = [server.clone()];
    let before = cpu::snapshot();
    let server_before = Trees::read(&servers);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .with_context(|| format!("pgbench did not finish in {limit:?}"))?
        .context("running pgbench")?;
    let server_cpu = server_before.usage_until(&Trees::read(&servers));
    let cpu = before.usage_until(&cpu::snapshot());
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(log_dir.join("pgbench.out"), stdout.as_bytes())?;
    let tps =
        parse_tps(&stdout).with_context(|| format!("no tps in pgbench's output:\n{stdout}"))?;
    let failed = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("number of failed transactions: ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let transactions = parse_processed(&stdout)
        .with_context(|| format!("no transaction count in pgbench's output:\n{stdout}"))?;
    Ok(RefRun {
        clients,
        threads,
        seconds,
        tps,
        failed,
        latency: log_latency(&log_dir)?,
        cpu,
        transactions,
        cpu_us_per_tx: server_cpu.us_per(transactions),
        server_cpu,
    })
}

/// `number of transactions actually processed: 12345` (`/12345` may follow).
fn parse_processed(stdout: &str) -> Option<u64> {
    stdout.lines().find_map(|l| {
        l.strip_prefix("number of transactions actually processed: ")?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

/// `tps = 1234.5 (without initial connection time)`.
fn parse_tps(stdout: &str) -> Option<f64> {
    stdout.lines().find_map(|l| {
        l.strip_prefix("tps = ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// Latencies from pgbench's per-transaction logs in `dir` (one file per
/// thread; the third field of a line is the latency in microseconds).
fn log_latency(dir: &Path) -> Result<Latency> {
    let mut h = histogram();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("txn"))
        {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for line in text.lines() {
            if let Some(us) = line
                .split_whitespace()
                .nth(2)
                .and_then(|f| f.parse::<u64>().ok())
            {
                h.saturating_record(us.max(1));
            }
        }
        // The logs are large and their content is now in the histogram.
        let _ = std::fs::remove_file(&path);
    }
    Ok(Latency::of(&h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgbench_output() {
        let out = "transaction type: pgbench-transfer.sql\nnumber of failed transactions: 0 (0.000%)\n\
                   latency average = 1.234 ms\ntps = 1617.123456 (without initial connection time)\n";
        assert_eq!(parse_tps(out), Some(1617.123456));
        assert_eq!(parse_processed(out), None);
        let out = "number of transactions actually processed: 16171\nnumber of failed transactions: 0 (0.000%)\n";
        assert_eq!(parse_processed(out), Some(16171));
        assert_eq!(
            parse_processed("number of transactions actually processed: 500/500\n"),
            Some(500)
        );
    }

    #[test]
    fn the_repository_copy_is_the_reference_script() {
        let shared = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/reference/pgbench-transfer.sql");
        if let Ok(text) = std::fs::read_to_string(shared) {
            assert_eq!(
                text, SCRIPT,
                "bench/pgbench-transfer.sql must equal the shared reference"
            );
        }
        assert!(SCRIPT.contains("UPDATE accounts SET balance = balance - 1 WHERE id = :a;"));
    }
}
