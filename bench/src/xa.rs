//! The second reference: a plain XA transfer across two of the cluster's
//! Postgres servers, the way a transaction manager's XA mode (DTM, Seata)
//! runs it. Per transfer, on each server at once: `BEGIN`, the update of
//! one account, `PREPARE TRANSACTION`; then `COMMIT PREPARED` on both at
//! once. No dedup record, no event log, no decision record: the cost of
//! atomicity across two databases and nothing else, so a row's ratio to it
//! says what the wallet's promises cost on top.
//!
//! It runs in a database of its own (`xa_ref`) on each server, with the
//! pgbench reference's `accounts` table. Two transfers that lock the same
//! two rows in opposite order on two servers deadlock where neither server
//! can see it: `lock_timeout` ends such a pair, and the transfer counts as
//! failed (rolled back, prepared or not). Whatever a run leaves prepared
//! (a client timed out between prepare and commit) is rolled back after it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use sqlx::{Executor, PgConnection};
use tokio::time::Instant;

use super::cpu::{self, Trees, TreesUsage, Usage};
use super::generator::{histogram, Latency};
use super::reference::prepare_database;
use super::setup::connect;

/// Database the XA reference runs in, on each of its two servers.
pub const DATABASE: &str = "xa_ref";
/// A transfer that takes longer is abandoned (its connections dropped, its
/// prepared branches rolled back after the run).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);
/// Ends a cross-server deadlock (see the module doc).
const SET_LOCK_TIMEOUT: &str = "SET lock_timeout = '1s'";

/// One run at one client count.
#[derive(Debug, Clone, Serialize)]
pub struct XaRun {
    pub clients: usize,
    pub seconds: u64,
    /// Committed transfers per second.
    pub tps: f64,
    /// Committed transfers.
    pub transactions: u64,
    /// Transfers rolled back (lock timeout, error, client timeout).
    pub failed: u64,
    /// Latency of the committed transfers.
    pub latency: Latency,
    /// CPU use of the machine during the run.
    pub cpu: Usage,
    /// CPU of the two Postgres servers (not this client) over the run.
    pub server_cpu: TreesUsage,
    /// `server_cpu` per committed transfer, microseconds.
    pub cpu_us_per_tx: Option<f64>,
}

/// The XA reference measurement.
#[derive(Debug, Clone, Serialize)]
pub struct XaReference {
    /// The two servers, by name.
    pub servers: Vec<String>,
    pub accounts: usize,
    pub runs: Vec<XaRun>,
    /// The run with the most transfers per second.
    pub best: XaRun,
}

/// One of the two servers: its process tree (name, postmaster PID) and port.
#[derive(Debug, Clone)]
pub struct Server {
    pub name: String,
    pub pid: u32,
    pub port: u16,
}

impl Server {
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", self.port)
    }
}

/// Creates the reference database on both servers.
pub async fn prepare(servers: &[Server; 2], accounts: usize) -> Result<()> {
    for s in servers {
        prepare_database(s.port, DATABASE, accounts)
            .await
            .with_context(|| format!("creating {DATABASE} on {}", s.name))?;
    }
    Ok(())
}

/// Runs the XA transfer at each client count for `seconds`; the best run
/// is the reference.
pub async fn run(
    servers: &[Server; 2],
    accounts: usize,
    clients: &[usize],
    seconds: u64,
) -> Result<XaReference> {
    let mut runs = Vec::new();
    for &c in clients {
        let run = run_one(servers, accounts, c, seconds)
            .await
            .with_context(|| format!("XA reference with {c} clients"))?;
        eprintln!(
            "  XA -c {:>3}: {:>8.0} tps  p50 {:.2} ms  p99 {:.2} ms  failed {}  server CPU {:.0} µs/tx  other CPU {:.0}%",
            run.clients,
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
    Ok(XaReference {
        servers: servers.iter().map(|s| s.name.clone()).collect(),
        accounts,
        runs,
        best,
    })
}

/// What the clients of one run count together.
struct Tally {
    committed: u64,
    failed: u64,
    latency: hdrhistogram::Histogram<u64>,
}

async fn run_one(
    servers: &[Server; 2],
    accounts: usize,
    clients: usize,
    seconds: u64,
) -> Result<XaRun> {
    // Connect every client first, so the run measures transfers only.
    let mut pairs = Vec::with_capacity(clients);
    for _ in 0..clients {
        pairs.push((open(&servers[0]).await?, open(&servers[1]).await?));
    }
    let roots: Vec<(String, u32)> = servers.iter().map(|s| (s.name.clone(), s.pid)).collect();
    let tally = Arc::new(Mutex::new(Tally {
        committed: 0,
        failed: 0,
        latency: histogram(),
    }));
    let before = cpu::snapshot();
    let server_before = Trees::read(&roots);
    let end = Instant::now() + Duration::from_secs(seconds);
    let broken = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = pairs
        .into_iter()
        .enumerate()
        .map(|(i, (debit, credit))| {
            let (tally, broken, servers) = (tally.clone(), broken.clone(), servers.clone());
            tokio::spawn(async move {
                client(i, [debit, credit], &servers, accounts, end, &tally, &broken).await
            })
        })
        .collect();
    for t in tasks {
        t.await.context("an XA client panicked")?;
    }
    let server_cpu = server_before.usage_until(&Trees::read(&roots));
    let cpu = before.usage_until(&cpu::snapshot());
    for s in servers {
        roll_back_leftovers(s).await?;
    }
    let t = tally.lock().expect("tally");
    Ok(XaRun {
        clients,
        seconds,
        tps: t.committed as f64 / seconds as f64,
        transactions: t.committed,
        failed: t.failed,
        latency: Latency::of(&t.latency),
        cpu,
        cpu_us_per_tx: server_cpu.us_per(t.committed),
        server_cpu,
    })
}

/// A connection to the reference database with the lock timeout set.
async fn open(server: &Server) -> Result<PgConnection> {
    let mut conn = connect(&server.url(), TRANSFER_TIMEOUT).await?;
    conn.execute(SET_LOCK_TIMEOUT).await?;
    Ok(conn)
}

/// One closed-loop client: transfers until `end`. A transfer that times out
/// leaves its connections in an unknown state: they are replaced.
async fn client(
    i: usize,
    mut conns: [PgConnection; 2],
    servers: &[Server; 2],
    accounts: usize,
    end: Instant,
    tally: &Mutex<Tally>,
    broken: &AtomicBool,
) {
    let mut rng = fastrand::Rng::with_seed(0x5a_u64 ^ ((i as u64 + 1) * 0x9e37_79b9));
    while Instant::now() < end && !broken.load(Ordering::Relaxed) {
        let (a, b) = (rng.i32(1..=accounts as i32), rng.i32(1..=accounts as i32));
        let gid = format!("xa-{}", uuid::Uuid::new_v4());
        let t0 = Instant::now();
        let [debit, credit] = &mut conns;
        let outcome =
            tokio::time::timeout(TRANSFER_TIMEOUT, transfer(debit, credit, a, b, &gid)).await;
        {
            let mut t = tally.lock().expect("tally");
            match outcome {
                Ok(true) => {
                    t.committed += 1;
                    t.latency
                        .saturating_record((t0.elapsed().as_micros() as u64).max(1));
                }
                Ok(false) | Err(_) => t.failed += 1,
            }
        }
        if outcome.is_err() {
            match (open(&servers[0]).await, open(&servers[1]).await) {
                (Ok(x), Ok(y)) => conns = [x, y],
                _ => {
                    // A server that cannot be reached ends the run.
                    broken.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

/// One XA transfer: both branches prepared at once, then both committed at
/// once; `false` if it was rolled back.
async fn transfer(
    debit: &mut PgConnection,
    credit: &mut PgConnection,
    a: i32,
    b: i32,
    gid: &str,
) -> bool {
    let (d, c) = tokio::join!(branch(debit, a, -1, gid), branch(credit, b, 1, gid));
    if d && c {
        let commit = format!("COMMIT PREPARED '{gid}'");
        let (d, c) = tokio::join!(
            (&mut *debit).execute(commit.as_str()),
            (&mut *credit).execute(commit.as_str())
        );
        // A prepared branch whose COMMIT PREPARED failed stays prepared; it
        // is rolled back after the run (a real manager would retry it).
        return d.is_ok() && c.is_ok();
    }
    let rollback = format!("ROLLBACK PREPARED '{gid}'");
    if d {
        let _ = (&mut *debit).execute(rollback.as_str()).await;
    }
    if c {
        let _ = (&mut *credit).execute(rollback.as_str()).await;
    }
    false
}

/// `BEGIN`, the update, `PREPARE TRANSACTION`; `true` once prepared. On a
/// failure before the prepare the transaction is rolled back here.
async fn branch(conn: &mut PgConnection, id: i32, delta: i64, gid: &str) -> bool {
    match prepare_branch(conn, id, delta, gid).await {
        Ok(()) => true,
        Err(_) => {
            let _ = (&mut *conn).execute("ROLLBACK").await;
            false
        }
    }
}

async fn prepare_branch(
    conn: &mut PgConnection,
    id: i32,
    delta: i64,
    gid: &str,
) -> Result<(), sqlx::Error> {
    (&mut *conn).execute("BEGIN").await?;
    conn.execute(
        sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = $2")
            .bind(delta)
            .bind(id),
    )
    .await?;
    let prepare = format!("PREPARE TRANSACTION '{gid}'");
    (&mut *conn).execute(prepare.as_str()).await?;
    Ok(())
}

/// Rolls back every transaction a run left prepared in the reference
/// database of `server`.
async fn roll_back_leftovers(server: &Server) -> Result<()> {
    let mut conn = connect(&server.url(), TRANSFER_TIMEOUT).await?;
    let gids: Vec<String> =
        sqlx::query_scalar("SELECT gid FROM pg_prepared_xacts WHERE database = $1")
            .bind(DATABASE)
            .fetch_all(&mut conn)
            .await?;
    for gid in gids {
        sqlx::raw_sql(&format!("ROLLBACK PREPARED '{gid}'"))
            .execute(&mut conn)
            .await
            .with_context(|| format!("rolling back {gid} on {}", server.name))?;
    }
    Ok(())
}
