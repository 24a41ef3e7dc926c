//! `make move-bench`: `make move-under-load` grown up. For each size in
//! `MOVE_SIZES` (events in the moved partition), on a cluster of its own
//! (three participants, one coordinator, `--partitions` partitions):
//!
//! 1. loads `--accounts` accounts straight into the databases (as `make
//!    bench` does), then appends to partition 0's accounts committed
//!    deposits (event, leg, claim record: `participant::bulk`) until the
//!    partition holds that many events, a valid history the audit accepts;
//! 2. runs uniform transfers in a closed loop (`--clients`), keeping every
//!    request's send time, latency, answer and whether it touched
//!    partition 0;
//! 3. after `--before` seconds moves partition 0 to another node with
//!    `walletctl partitions move` (its `-o json` report: rows and bytes
//!    copied, copy time, the freeze), sampling the resident memory of the
//!    source participant, the target participant and walletctl every 50 ms;
//! 4. `--after` seconds later stops the load, lets it settle and runs
//!    `walletctl audit`.
//!
//! Then it writes a table (one column per size) and JSON into
//! `target/move-bench/<time>/` and prints the table.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bench::generator::send;
use bench::move_trace::{self, Sample, Seen};
use bench::{rss, setup, Accounts, Kind, Scenario, Target};
use clap::Parser;
use devcluster::{Cluster, ClusterOptions};
use participant::bulk::{self, Claim};
use serde::Serialize;
use serde_json::Value;
use wallet_shared::auth::Scope;
use wallet_shared::protocol::{Movement, MovementKind};
use wallet_shared::{AccountId, Amount, PartitionMap, TransactionId};

/// The partition moved.
const MOVED: u32 = 0;
/// Deposits appended per transaction.
const BATCH: usize = 50_000;
/// Resident memory is sampled this often during the move.
const RSS_EVERY: Duration = Duration::from_millis(50);
/// The participant writes a snapshot every this many events of an account
/// (`snapshot_every`); the appended history stays below it.
const SNAPSHOT_EVERY: i64 = 1_000;

#[derive(Parser)]
#[command(about = "Moves a partition of growing size under load and reports what it cost")]
struct Args {
    /// Events in the moved partition, one run per size (space or comma separated).
    #[arg(long, env = "MOVE_SIZES", default_value = "10000 100000 1000000")]
    sizes: String,
    /// Accounts loaded (over every partition; the moved one holds about
    /// 1/`--partitions` of them).
    #[arg(long, env = "MOVE_ACCOUNTS", default_value_t = 16_000)]
    accounts: usize,
    #[arg(long, env = "MOVE_PARTITIONS", default_value_t = 8)]
    partitions: u32,
    /// Closed-loop clients sending uniform transfers.
    #[arg(long, env = "MOVE_CLIENTS", default_value_t = 32)]
    clients: usize,
    /// Seconds of load before the move (the first 3 are warmup).
    #[arg(long, env = "MOVE_BEFORE_SECONDS", default_value_t = 15)]
    before: u64,
    /// Seconds of load after the move.
    #[arg(long, env = "MOVE_AFTER_SECONDS", default_value_t = 5)]
    after: u64,
    /// Extra environment of the participants, `NAME=VALUE` separated by
    /// spaces (e.g. `WALLET_MOVE_CUTOVER_DEADLINE_MS=10000`).
    #[arg(long, env = "MOVE_PARTICIPANT_ENV", default_value = "")]
    participant_env: String,
    /// Extra arguments for `walletctl partitions move` (e.g. `--rate 20000`).
    #[arg(long, env = "MOVE_ARGS", default_value = "")]
    move_args: String,
    /// Where the report goes (a folder per run is made in it).
    #[arg(long, env = "MOVE_OUT", default_value = "target/move-bench")]
    out: PathBuf,
}

/// Peak resident memory during the move, MB (1 MB = 1,048,576 bytes).
#[derive(Debug, Clone, Default, Serialize)]
struct Memory {
    /// Largest VmRSS sampled during the move.
    source_mb: f64,
    target_mb: f64,
    walletctl_mb: f64,
    /// VmHWM: the participants' peak over their whole life (load included),
    /// walletctl's at its last sample.
    source_hwm_mb: f64,
    target_hwm_mb: f64,
    walletctl_hwm_mb: f64,
}

/// One size's results.
#[derive(Debug, Clone, Serialize)]
struct SizeResult {
    events_wanted: u64,
    /// Events, legs and transfer records in the moved partition before the move.
    events: i64,
    legs: i64,
    records: i64,
    accounts: i64,
    load_seconds: f64,
    from: String,
    to: String,
    /// walletctl's `-o json` report (`null` if the move failed).
    walletctl: Value,
    /// Why the move failed (walletctl's exit status and message), if it did.
    move_error: Option<String>,
    /// Seconds walletctl ran.
    move_seconds: f64,
    seen: Seen,
    memory: Memory,
    audit_clean: bool,
    audit: Value,
}

#[tokio::main]
async fn main() -> Result<()> {
    wallet_shared::telemetry::init("move-bench");
    let args = Args::parse();
    let sizes: Vec<u64> = args
        .sizes
        .split([' ', ','])
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().with_context(|| format!("MOVE_SIZES: {s:?}")))
        .collect::<Result<_>>()?;
    let participant_env = args
        .participant_env
        .split_whitespace()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("MOVE_PARTICIPANT_ENV: {kv:?} is not NAME=VALUE"))
        })
        .collect::<Result<Vec<_>>>()?;
    if sizes.is_empty() || args.before < 5 {
        bail!("MOVE_SIZES must name a size and --before be at least 5 s");
    }
    let started_at = chrono::Utc::now();
    let out = std::path::absolute(
        args.out
            .join(started_at.format("%Y%m%d-%H%M%S").to_string()),
    )?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut results = Vec::new();
    for &size in &sizes {
        eprintln!("move-bench: {size} events: starting a cluster...");
        let cluster = Cluster::start(ClusterOptions {
            partitions: args.partitions,
            participant_env: participant_env.clone(),
            ..Default::default()
        })
        .await?;
        let result = run(&args, &cluster, size, &out).await;
        if let Err(e) = cluster.stop().await {
            eprintln!("move-bench: stopping the cluster: {e:#}");
        }
        let result = result.with_context(|| format!("the {size}-event move"))?;
        eprintln!(
            "move-bench: {size} events: walletctl {}",
            serde_json::to_string(&result.walletctl)?
        );
        results.push(result);
        write(&out, &args, &results)?;
    }
    print!("{}", std::fs::read_to_string(out.join("table.md"))?);
    println!(
        "\nmove-bench: report in {} (report.json, table.md, walletctl logs)",
        out.display()
    );
    Ok(())
}

async fn run(args: &Args, cluster: &Cluster, size: u64, out: &Path) -> Result<SizeResult> {
    let manifest = cluster.root().join("cluster.json");
    cluster.write_manifest(&manifest)?;
    let key = cluster
        .create_key(setup::TENANT, &[Scope::Transfer, Scope::Read], None)
        .await?;
    let target = Target::new(cluster.coordinator_url(0), &key, Duration::from_secs(30))?;
    let map = cluster.map_store().await?.load().await?;
    let accounts = Arc::new(Accounts::new("mv", args.accounts, &map)?);
    let nodes = bench::nodes(cluster);
    let loaded = setup::load(&map, &nodes, &accounts).await?;
    setup::verify(&target, &accounts, &loaded, 20).await?;

    let from = map
        .owner(MOVED)
        .context("partition 0 has no owner")?
        .to_string();
    let src = nodes
        .iter()
        .position(|n| n.node_id == from)
        .context("the owner of partition 0 is not a participant")?;
    let dst = (src + 1) % nodes.len();
    let to = nodes[dst].node_id.clone();

    let started = Instant::now();
    let mut db = setup::connect(&nodes[src].database_url, Duration::from_secs(600)).await?;
    let (events, _, _, _) = partition_rows(&mut db).await?;
    let ids: Vec<&str> = accounts.by_partition[MOVED as usize]
        .iter()
        .map(|&i| accounts.ids[i].as_str())
        .collect();
    let extra = size.saturating_sub(events as u64) as usize;
    if ids.is_empty() || (extra / ids.len()) as i64 + 3 >= SNAPSHOT_EVERY {
        bail!(
            "{size} events over {} accounts is more than {SNAPSHOT_EVERY} per account: raise MOVE_ACCOUNTS",
            ids.len()
        );
    }
    eprintln!(
        "move-bench: appending {extra} deposits to the {} accounts of partition {MOVED} on {from}...",
        ids.len()
    );
    append_history(&mut db, &map, &accounts, &ids, extra).await?;
    sqlx::query("ANALYZE accounts, events, legs, transfers")
        .execute(&mut db)
        .await?;
    let (events, legs, records, n_accounts) = partition_rows(&mut db).await?;
    drop(db);
    let load_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "move-bench: partition {MOVED} holds {events} events, {legs} legs, {records} records, \
         {n_accounts} accounts (loaded in {load_seconds:.1} s)"
    );

    // The load.
    let scenario = Scenario::new(Kind::Uniform, accounts.clone());
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = tokio::time::Instant::now();
    let workers: Vec<_> = (0..args.clients)
        .map(|c| {
            let (target, scenario, samples, stop) = (
                target.clone(),
                scenario.clone(),
                samples.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(c as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    let op = scenario.next(&mut rng);
                    let sent = t0.elapsed();
                    let answer = send(&target, &op).await;
                    let latency = t0.elapsed() - sent;
                    samples.lock().expect("samples").push(Sample {
                        sent,
                        latency,
                        answer,
                        moved: op.partitions.contains(&MOVED),
                    });
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(args.before)).await;

    // The move.
    let walletctl = cluster.binary("walletctl")?;
    let log = out.join(format!("walletctl-{size}.log"));
    let mut cmd = tokio::process::Command::new(&walletctl);
    cmd.arg("--manifest")
        .arg(&manifest)
        .args([
            "-o",
            "json",
            "partitions",
            "move",
            &MOVED.to_string(),
            "--to",
            &to,
        ])
        .args(args.move_args.split_whitespace())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true);
    let pids = [
        cluster.participant(src).pid(),
        cluster.participant(dst).pid(),
    ];
    eprintln!("move-bench: moving partition {MOVED} from {from} to {to} under load...");
    let move_start = t0.elapsed();
    let mut child = cmd.spawn().context("starting walletctl")?;
    let ctl_pid = child.id();
    let stdout = child.stdout.take().context("walletctl's stdout")?;
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::BufReader::new(stdout), &mut buf)
            .await
            .map(|_| buf)
    });
    let mut memory = Memory::default();
    let mut tick = tokio::time::interval(RSS_EVERY);
    let status = loop {
        let mb = |kb: Option<u64>| kb.unwrap_or(0) as f64 / 1024.0;
        for (pid, rss, hwm) in [
            (pids[0], &mut memory.source_mb, &mut memory.source_hwm_mb),
            (pids[1], &mut memory.target_mb, &mut memory.target_hwm_mb),
            (
                ctl_pid,
                &mut memory.walletctl_mb,
                &mut memory.walletctl_hwm_mb,
            ),
        ] {
            if let Some(pid) = pid {
                *rss = rss.max(mb(rss::vm_rss_kb(pid)));
                *hwm = hwm.max(mb(rss::vm_hwm_kb(pid)));
            }
        }
        tokio::select! {
            s = child.wait() => break s?,
            _ = tick.tick() => {}
        }
    };
    let move_end = t0.elapsed();
    let stdout = reader.await??;
    let (report, move_error) = if status.success() {
        let report: Value = serde_json::from_slice(&stdout)
            .with_context(|| format!("walletctl's report: {}", String::from_utf8_lossy(&stdout)))?;
        (report, None)
    } else {
        let error = format!(
            "walletctl partitions move: {status}: {}",
            std::fs::read_to_string(&log).unwrap_or_default().trim()
        );
        eprintln!("move-bench: {error}");
        (Value::Null, Some(error))
    };

    tokio::time::sleep(Duration::from_secs(args.after)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let samples = std::mem::take(&mut *samples.lock().expect("samples"));
    // The first 3 s of the load are warmup.
    let before = move_start.saturating_sub(Duration::from_secs(3));
    let seen = move_trace::analyze(&samples, before, move_start, move_end);

    eprintln!("move-bench: load stopped; settling, then the audit...");
    setup::settle(&nodes, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let audit = tokio::process::Command::new(&walletctl)
        .arg("--manifest")
        .arg(&manifest)
        .args(["-o", "json", "audit", "--older-than", "1"])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let audit = tokio::time::timeout(Duration::from_secs(600), audit)
        .await
        .context("walletctl audit: no answer in 600 s")??;
    let audit: Value = serde_json::from_slice(&audit.stdout)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&audit.stdout).into_owned()));
    Ok(SizeResult {
        events_wanted: size,
        events,
        legs,
        records,
        accounts: n_accounts,
        load_seconds,
        from,
        to,
        move_seconds: (move_end - move_start).as_secs_f64(),
        walletctl: report,
        move_error,
        seen,
        memory,
        audit_clean: audit["clean"] == Value::Bool(true),
        audit,
    })
}

/// Events, legs, transfer records and accounts of the moved partition.
async fn partition_rows(db: &mut sqlx::PgConnection) -> Result<(i64, i64, i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT (SELECT count(*) FROM events e JOIN accounts a USING (account_id) WHERE a.partition = $1),
                (SELECT count(*) FROM legs WHERE partition = $1),
                (SELECT count(*) FROM transfers WHERE partition = $1),
                (SELECT count(*) FROM accounts WHERE partition = $1)",
    )
    .bind(MOVED as i32)
    .fetch_one(db)
    .await?)
}

/// Appends `n` one-cent deposits round-robin over `ids` (accounts of the
/// moved partition), with transaction ids whose decision partition is the
/// moved one too, so their claim records are in it.
async fn append_history(
    db: &mut sqlx::PgConnection,
    map: &PartitionMap,
    accounts: &Accounts,
    ids: &[&str],
    n: usize,
) -> Result<()> {
    let amount = Amount::from_minor(1)?;
    let mut done = 0;
    while done < n {
        let batch = BATCH.min(n - done);
        let mut deposits = Vec::with_capacity(batch);
        for k in done..done + batch {
            let transaction_id = loop {
                let t = TransactionId::new_random();
                if map.decision_partition(t) == MOVED {
                    break t;
                }
            };
            deposits.push(Movement {
                transaction_id,
                kind: MovementKind::Deposit,
                account_id: AccountId::parse(ids[k % ids.len()])?,
                partition: MOVED,
                amount,
                currency: accounts.currency,
                tenant: Some(setup::TENANT.to_string()),
            });
        }
        let claims: Vec<Claim> = deposits
            .iter()
            .map(|d| Claim {
                partition: MOVED,
                deposit: d.clone(),
            })
            .collect();
        bulk::append_funded_deposits(db, &deposits, &claims)
            .await
            .context("appending deposits")?;
        done += batch;
    }
    Ok(())
}

/// Writes `report.json` and `table.md` for the sizes done so far.
fn write(out: &Path, args: &Args, results: &[SizeResult]) -> Result<()> {
    let json = serde_json::json!({
        "settings": {
            "accounts": args.accounts,
            "partitions": args.partitions,
            "clients": args.clients,
            "scenario": "uniform",
            "before_seconds": args.before,
            "after_seconds": args.after,
            "move_args": args.move_args,
            "participant_env": args.participant_env,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        },
        "sizes": results,
    });
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    std::fs::write(out.join("table.md"), table(args, results))?;
    Ok(())
}

/// How a row of the table shows one size.
type Cell = Box<dyn Fn(&SizeResult) -> String>;

fn table(args: &Args, results: &[SizeResult]) -> String {
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut rows: Vec<(&str, Cell)> = Vec::new();
    rows.push((
        "events / legs / records in the partition",
        Box::new(|r| format!("{} / {} / {}", r.events, r.legs, r.records)),
    ));
    rows.push((
        "history loaded in (s)",
        Box::new(|r| format!("{:.1}", r.load_seconds)),
    ));
    rows.push((
        "move took (s, walletctl)",
        Box::new(move |r| format!("{:.2}", num(&r.walletctl["total_seconds"]))),
    ));
    rows.push((
        "copy while serving (s)",
        Box::new(move |r| format!("{:.2}", num(&r.walletctl["copy_seconds"]))),
    ));
    rows.push((
        "rows copied / MB copied / passes",
        Box::new(move |r| {
            format!(
                "{} / {:.1} / {}",
                r.walletctl["rows_copied"],
                num(&r.walletctl["bytes_copied"]) / 1e6,
                r.walletctl["passes"]
            )
        }),
    ));
    rows.push((
        "last delta (rows)",
        Box::new(|r| r.walletctl["delta_rows"].to_string()),
    ));
    rows.push((
        "writes refused, walletctl (s): drain + frozen",
        Box::new(move |r| {
            format!(
                "{:.3} ({:.3} + {:.3})",
                num(&r.walletctl["refused_seconds"]),
                num(&r.walletctl["drain_seconds"]),
                num(&r.walletctl["frozen_seconds"])
            )
        }),
    ));
    rows.push((
        "freeze seen by clients (s): longest gap between commits on it, during (before)",
        Box::new(|r| {
            format!(
                "{:.3} ({:.3})",
                r.seen.moved_longest_gap_during_s, r.seen.moved_longest_gap_before_s
            )
        }),
    ));
    rows.push((
        "p99 / max ms, transfers touching it, during the move",
        Box::new(|r| {
            let l = &r.seen.moved_during.latency;
            format!("{:.1} / {:.1}", l.p99_ms, l.max_ms)
        }),
    ));
    rows.push((
        "p99 ms, others: during (before)",
        Box::new(|r| {
            format!(
                "{:.1} ({:.1})",
                r.seen.others_during.latency.p99_ms, r.seen.others_before.latency.p99_ms
            )
        }),
    ));
    rows.push((
        "others committed/s: during / before (ratio)",
        Box::new(|r| {
            format!(
                "{:.0} / {:.0} ({:.2})",
                r.seen.others_during.committed_per_s,
                r.seen.others_before.committed_per_s,
                r.seen.others_throughput_ratio
            )
        }),
    ));
    rows.push((
        "not committed during the move (touching it; others)",
        Box::new(|r| {
            let n = |w: &move_trace::Window| w.not_committed.values().sum::<u64>();
            format!("{}; {}", n(&r.seen.moved_during), n(&r.seen.others_during))
        }),
    ));
    rows.push((
        "peak RSS MB: source / target / walletctl (sampled)",
        Box::new(|r| {
            let m = &r.memory;
            format!(
                "{:.0} / {:.0} / {:.0}",
                m.source_mb, m.target_mb, m.walletctl_mb
            )
        }),
    ));
    rows.push((
        "VmHWM MB: source / target (whole life) / walletctl",
        Box::new(|r| {
            let m = &r.memory;
            format!(
                "{:.0} / {:.0} / {:.0}",
                m.source_hwm_mb, m.target_hwm_mb, m.walletctl_hwm_mb
            )
        }),
    ));
    rows.push((
        "move failed",
        Box::new(|r| {
            r.move_error
                .as_deref()
                .map_or("no".into(), |e| e.replace(['\n', '|'], " "))
        }),
    ));
    rows.push((
        "audit afterwards",
        Box::new(|r| if r.audit_clean { "clean" } else { "NOT CLEAN" }.into()),
    ));
    let mut t = format!(
        "Move of partition {MOVED} under uniform load ({} clients, closed loop; {} accounts, \
         {} partitions, 3 nodes)\n\n| |",
        args.clients, args.accounts, args.partitions
    );
    for r in results {
        t.push_str(&format!(" {} events |", r.events_wanted));
    }
    t.push_str("\n|---|");
    t.push_str(&"---|".repeat(results.len()));
    t.push('\n');
    for (name, f) in &rows {
        t.push_str(&format!("| {name} |"));
        for r in results {
            t.push_str(&format!(" {} |", f(r)));
        }
        t.push('\n');
    }
    t
}
