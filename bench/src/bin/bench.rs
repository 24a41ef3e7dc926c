//! `make bench`: starts its own cluster (etcd, three Postgres servers with
//! fsync and synchronous_commit on, three participants, one coordinator, all
//! on this machine), loads the accounts, measures the pgbench reference on
//! one of the cluster's Postgres servers, then every scenario, and writes
//! the report (table, JSON, SVG chart) into `target/bench/<timestamp>/`.
//!
//! Order: pgbench reference at each client count; the XA reference (a plain
//! XA transfer across two of the cluster's Postgres servers) at each of
//! `BENCH_XA_CLIENTS`; uniform transfers, closed loop, at each of
//! `BENCH_CLIENTS`; a profiled uniform run at the best count (`profile.txt`,
//! not a row); the best count is used for the other closed-loop scenarios; uniform in open loop at half the best closed-loop rate (the
//! p99 target); then open loop at a high rate capped at `BENCH_IN_FLIGHT`
//! unanswered requests (resident memory at 10,000 in flight, and once those
//! connections closed). `BENCH_ONLY=in-flight` runs that last row alone, on
//! a cluster of its own with the accounts loaded. Every setting has an
//! environment variable (see `--help`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bench::{report, setup, Accounts, Kind, Load, Plan, Report, Scenario, Target};
use clap::{Parser, ValueEnum};
use devcluster::{Cluster, ClusterOptions};
use wallet_shared::auth::Scope;

#[derive(Parser)]
#[command(about = "Benchmarks a local wallet cluster against the pgbench reference")]
struct Args {
    /// Measured seconds per scenario.
    #[arg(long, env = "BENCH_SECONDS", default_value_t = 20)]
    seconds: u64,
    /// Unmeasured seconds before each scenario's window.
    #[arg(long, env = "BENCH_WARMUP_SECONDS", default_value_t = 3)]
    warmup: u64,
    /// Seconds of each pgbench run.
    #[arg(long, env = "BENCH_REF_SECONDS", default_value_t = 10)]
    ref_seconds: u64,
    /// pgbench client counts; the best is the reference.
    #[arg(
        long,
        env = "BENCH_REF_CLIENTS",
        value_delimiter = ',',
        default_value = "1,4,16,32,64"
    )]
    ref_clients: Vec<usize>,
    /// Number of accounts (the reference uses as many).
    #[arg(long, env = "BENCH_ACCOUNTS", default_value_t = 100_000)]
    accounts: usize,
    /// Closed-loop client counts tried for uniform transfers; the best is
    /// used for the other scenarios.
    #[arg(
        long,
        env = "BENCH_CLIENTS",
        value_delimiter = ',',
        default_value = "1,16,64,256,1024"
    )]
    clients: Vec<usize>,
    /// XA reference client counts; the best is the reference.
    #[arg(
        long,
        env = "BENCH_XA_CLIENTS",
        value_delimiter = ',',
        default_value = "4,16,32,64"
    )]
    xa_clients: Vec<usize>,
    /// Seconds of the profiled uniform run (at the best client count; not a
    /// row of the table); 0: no profile.
    #[arg(long, env = "BENCH_PROFILE_SECONDS", default_value_t = 10)]
    profile_seconds: u64,
    /// In-flight cap of the memory scenario (and of the half-load run).
    #[arg(long, env = "BENCH_IN_FLIGHT", default_value_t = 10_000)]
    in_flight: usize,
    /// Offered rate of the memory scenario, requests per second.
    #[arg(long, env = "BENCH_IN_FLIGHT_RATE", default_value_t = 20_000.0)]
    in_flight_rate: f64,
    /// Client timeout of every request, seconds.
    #[arg(long, env = "BENCH_TIMEOUT_SECONDS", default_value_t = 30)]
    timeout: u64,
    /// Participants of the scale-out run (the best uniform load again on a
    /// second, wider cluster, after the first stopped); 0: no such run.
    #[arg(long, env = "BENCH_SCALE_OUT_PARTICIPANTS", default_value_t = 6)]
    scale_out_participants: usize,
    /// Coordinators of the scale-out run; the load takes turns among them.
    #[arg(long, env = "BENCH_SCALE_OUT_COORDINATORS", default_value_t = 2)]
    scale_out_coordinators: usize,
    /// Which rows: every one, or the memory row alone (`in-flight`).
    #[arg(long, env = "BENCH_ONLY", value_enum, default_value = "all")]
    only: Only,
    /// Where the report goes (a folder per run is made in it).
    #[arg(long, env = "BENCH_OUT", default_value = "target/bench")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Only {
    /// Every row, the references and the scale-out run.
    All,
    /// The memory row (`10k in flight`) alone: no reference, no sweep, no
    /// profile, no scale-out.
    InFlight,
}

/// How long the memory row waits, once its connections closed, before it
/// reads what the services still hold: two of their rounds of giving freed
/// memory back (`wallet_shared::memory::TRIM_EVERY`), and a second.
const CLOSE_WAIT: Duration =
    Duration::from_secs(2 * wallet_shared::memory::TRIM_EVERY.as_secs() + 1);

#[tokio::main]
async fn main() -> Result<()> {
    wallet_shared::telemetry::init("bench");
    let args = Args::parse();
    if args.clients.is_empty() || args.seconds == 0 {
        bail!("BENCH_CLIENTS must name at least one client count and BENCH_SECONDS be > 0");
    }
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let out_dir = args
        .out
        .join(started_at.format("%Y%m%d-%H%M%S").to_string());
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let out_dir = std::path::absolute(&out_dir)?;

    eprintln!("bench: starting the cluster...");
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let result = run(&args, &cluster, &out_dir, started_at).await;
    if let Err(e) = cluster.stop().await {
        eprintln!("bench: stopping the cluster: {e:#}");
    }
    let mut report = result?;
    if args.scale_out_participants > 0 && args.only == Only::All {
        let row = scale_out(&args, &report).await?;
        report.rows.push(row);
        report.finish();
        report.write(&out_dir)?;
    }
    print!("{}", report.table());
    println!(
        "\nbench: report in {} (report.json, table.md, chart.svg); took {:.0} s",
        out_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn run(
    args: &Args,
    cluster: &Cluster,
    out_dir: &std::path::Path,
    started_at: chrono::DateTime<chrono::Utc>,
) -> Result<Report> {
    let mut report = Report {
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        settings: Default::default(),
        reference: None,
        xa: None,
        rows: Vec::new(),
        targets: Vec::new(),
    };
    let s = &mut report.settings;
    s.insert("cpus".into(), num_cpus().to_string());
    s.insert("memory".into(), mem_total());
    s.insert("seconds per scenario".into(), args.seconds.to_string());
    s.insert("warmup seconds".into(), args.warmup.to_string());
    s.insert(
        "pgbench seconds per client count".into(),
        args.ref_seconds.to_string(),
    );
    s.insert("accounts".into(), args.accounts.to_string());
    s.insert(
        "cluster".into(),
        format!(
            "etcd, {} Postgres, {} participants, {} coordinator, partitions {}",
            cluster.participants().len(),
            cluster.participants().len(),
            cluster.coordinators().len(),
            cluster.options().partitions
        ),
    );
    s.insert(
        "load generator".into(),
        "in the same machine, sharing its CPUs with the cluster".into(),
    );

    // The durability the targets require, as the servers report it.
    for i in 0..cluster.participants().len() {
        let mut conn = setup::connect(&cluster.postgres_url(i), Duration::from_secs(10)).await?;
        let mut shown = Vec::new();
        for name in ["fsync", "synchronous_commit", "full_page_writes"] {
            let v: String = sqlx::query_scalar(&format!("SHOW {name}"))
                .fetch_one(&mut conn)
                .await?;
            if v != "on" {
                bail!(
                    "postgres-{}: {name} is {v}; the benchmark needs it on",
                    i + 1
                );
            }
            shown.push(format!("{name}={v}"));
        }
        s.insert(format!("postgres-{}", i + 1), shown.join(" "));
    }

    let key = cluster
        .create_key(setup::TENANT, &[Scope::Transfer, Scope::Read], None)
        .await?;
    let target = Target::new(
        cluster.coordinator_url(0),
        &key,
        Duration::from_secs(args.timeout),
    )?;
    let map = cluster.map_store().await?.load().await?;
    let accounts = Arc::new(Accounts::new("bench", args.accounts, &map)?);
    eprintln!(
        "bench: loading {} accounts into the participants' databases...",
        accounts.ids.len() + 2
    );
    let nodes = bench::nodes(cluster);
    let loaded = setup::load(&map, &nodes, &accounts).await?;
    setup::verify(&target, &accounts, &loaded, 50).await?;
    eprintln!(
        "bench: loaded {:?} in {:.1} s; a sample checked through the API",
        loaded.per_node,
        loaded.elapsed.as_secs_f64()
    );
    report.settings.insert(
        "setup".into(),
        format!(
            "{} accounts by SQL in {:.1} s ({:?}); 52 balances and 5 deposit replays checked through the API",
            accounts.ids.len() + 2,
            loaded.elapsed.as_secs_f64(),
            loaded.per_node
        ),
    );

    let processes = bench::Watched::cluster(cluster);
    if args.only == Only::InFlight {
        flood(
            args,
            cluster,
            &key,
            &accounts,
            &processes,
            &nodes,
            &mut report,
        )
        .await?;
        report.finish();
        report.write(out_dir)?;
        return Ok(report);
    }

    // The reference, on the first participant's Postgres server.
    let pg = cluster.postgres(0);
    eprintln!(
        "bench: pgbench reference on postgres-1 (port {}), {} s per client count...",
        pg.port(),
        args.ref_seconds
    );
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = bench::reference::script(&workspace, out_dir)?;
    bench::reference::prepare(pg.port(), args.accounts).await?;
    let pgbench = devcluster::postgres::bin_dir()?.join("pgbench");
    let server = |i: usize| {
        let pg = cluster.postgres(i);
        let pid = pg
            .pid()
            .with_context(|| format!("postgres-{} is not running", i + 1))?;
        Ok::<_, anyhow::Error>(bench::xa::Server {
            name: format!("postgres-{}", i + 1),
            pid,
            port: pg.port(),
        })
    };
    let first = server(0)?;
    report.reference = Some(
        bench::reference::run(
            &pgbench,
            &(first.name.clone(), first.pid),
            pg.port(),
            &script,
            args.accounts,
            &args.ref_clients,
            args.ref_seconds,
            out_dir,
        )
        .await?,
    );

    eprintln!(
        "bench: XA reference across postgres-1 and postgres-2, {} s per client count...",
        args.ref_seconds
    );
    let servers = [server(0)?, server(1)?];
    bench::xa::prepare(&servers, args.accounts).await?;
    report.xa =
        Some(bench::xa::run(&servers, args.accounts, &args.xa_clients, args.ref_seconds).await?);

    let plan = |load| Plan {
        load,
        warmup: Duration::from_secs(args.warmup),
        measure: Duration::from_secs(args.seconds),
    };
    let mut seed = 1;
    let mut step = |name: &str, kind: Kind, load: Load| {
        seed += 1;
        let (name, scenario, plan, processes) = (
            name.to_string(),
            Scenario::new(kind, accounts.clone()),
            plan(load),
            processes.clone(),
        );
        let target = target.clone();
        let seed = seed;
        async move {
            eprintln!("bench: {name} ({load}), {} s...", plan.measure.as_secs());
            let row = bench::measure(&name, &target, &scenario, &plan, seed, &processes).await;
            summary(&row);
            // Let the tail of this run settle before the next one.
            tokio::time::sleep(Duration::from_secs(2)).await;
            row
        }
    };

    for &clients in &args.clients {
        let row = step(report::UNIFORM, Kind::Uniform, Load::Closed { clients }).await;
        report.rows.push(row);
    }
    let best = report
        .rows
        .iter()
        .max_by(|a, b| {
            a.result
                .committed_per_s
                .total_cmp(&b.result.committed_per_s)
        })
        .context("no uniform run")?;
    let (best_rate, best_clients) = match best.result.load {
        Load::Closed { clients } => (best.result.committed_per_s, clients),
        Load::Open { .. } => unreachable!("the sweep is closed-loop"),
    };
    report.settings.insert(
        "best closed-loop client count (uniform)".into(),
        best_clients.to_string(),
    );
    if args.profile_seconds > 0 {
        let path = profile(args, cluster, &target, &accounts, best_clients, out_dir).await?;
        report
            .settings
            .insert("profile".into(), path.display().to_string());
    }

    let half = Load::Open {
        rate: (best_rate / 2.0).max(1.0),
        max_in_flight: args.in_flight,
    };
    let row = step(report::UNIFORM_HALF, Kind::Uniform, half).await;
    report.rows.push(row);
    for (name, kind) in [
        ("same-partition", Kind::SamePartition),
        (report::HOT_CREDIT, Kind::HotCredit),
        (report::HOT_DEBIT, Kind::HotDebit),
        ("mixed", Kind::Mixed),
    ] {
        let row = step(
            name,
            kind,
            Load::Closed {
                clients: best_clients,
            },
        )
        .await;
        report.rows.push(row);
    }
    // Money at rest, before the flood: once nothing is held any more, the
    // sum of all balances is what was loaded plus deposits minus withdrawals.
    let check = money(&nodes, &accounts, &report.rows, Duration::from_secs(60)).await?;
    eprintln!("bench: money at rest: {check}");
    report.settings.insert("money at rest".into(), check);

    flood(
        args,
        cluster,
        &key,
        &accounts,
        &processes,
        &nodes,
        &mut report,
    )
    .await?;

    report.finish();
    report.write(out_dir)?;
    Ok(report)
}

/// One line per row on stderr, as it ends.
fn summary(row: &bench::Row) {
    let r = &row.result;
    eprintln!(
        "  {:.0} committed/s  p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  CPU {:.0} µs/tx  errors {}  dropped {}  late {}  in flight max {}  other CPU {:.0}%  RSS {:?}",
        r.committed_per_s,
        r.latency.p50_ms,
        r.latency.p99_ms,
        r.latency.p999_ms,
        row.cpu_us_per_tx.unwrap_or(f64::NAN),
        r.outcomes.errors(),
        r.dropped,
        r.late,
        r.in_flight_max,
        row.cpu.other_pct,
        row.rss_mb
    );
}

/// The 10k-in-flight row, then the money check after it.
async fn flood(
    args: &Args,
    cluster: &Cluster,
    key: &str,
    accounts: &Arc<Accounts>,
    processes: &bench::Watched,
    nodes: &[setup::Node],
    report: &mut bench::Report,
) -> Result<()> {
    let row = in_flight(args, cluster, key, accounts, processes).await?;
    report.rows.push(row);
    let check = money(nodes, accounts, &report.rows, Duration::from_secs(60)).await?;
    eprintln!("bench: money after the 10k-in-flight flood: {check}");
    report
        .settings
        .insert("money after the 10k-in-flight flood".into(), check);
    Ok(())
}

/// The memory row: uniform transfers in an open loop at `--in-flight-rate`,
/// at most `--in-flight` unanswered, over a client of its own, so that its
/// connections close when it is dropped; the services' resident memory
/// just before, at the peak, and [`CLOSE_WAIT`] after those connections
/// closed.
async fn in_flight(
    args: &Args,
    cluster: &Cluster,
    key: &str,
    accounts: &Arc<Accounts>,
    processes: &bench::Watched,
) -> Result<bench::Row> {
    let target = Target::new(
        cluster.coordinator_url(0),
        key,
        Duration::from_secs(args.timeout),
    )?;
    let plan = Plan {
        load: Load::Open {
            rate: args.in_flight_rate,
            max_in_flight: args.in_flight,
        },
        warmup: Duration::from_secs(args.warmup),
        measure: Duration::from_secs(args.seconds),
    };
    eprintln!(
        "bench: {} ({}), {} s...",
        report::IN_FLIGHT,
        plan.load,
        plan.measure.as_secs()
    );
    let before = bench::rss::now_mb(&processes.rss);
    let scenario = Scenario::new(Kind::Uniform, accounts.clone());
    let mut row = bench::measure(report::IN_FLIGHT, &target, &scenario, &plan, 50, processes).await;
    summary(&row);
    drop(target);
    tokio::time::sleep(CLOSE_WAIT).await;
    row.rss_before_mb = before;
    row.rss_after_mb = bench::rss::now_mb(&processes.rss);
    eprintln!(
        "  RSS MB before {:?}, {} s after the connections closed {:?}",
        row.rss_before_mb,
        CLOSE_WAIT.as_secs(),
        row.rss_after_mb
    );
    Ok(row)
}

/// The best uniform load again on a second cluster, wider by
/// `--scale-out-participants` and `--scale-out-coordinators`, the requests
/// taking turns among its coordinators: a cost that grows with the number
/// of nodes shows as more CPU per transfer than the first cluster's.
async fn scale_out(args: &Args, report: &Report) -> Result<bench::Row> {
    let clients = report
        .rows
        .iter()
        .filter(|r| r.scenario == report::UNIFORM)
        .max_by(|a, b| {
            a.result
                .committed_per_s
                .total_cmp(&b.result.committed_per_s)
        })
        .and_then(|r| match r.result.load {
            Load::Closed { clients } => Some(clients),
            Load::Open { .. } => None,
        })
        .context("no closed-loop uniform run to repeat")?;
    eprintln!(
        "bench: scale-out: starting {} participants and {} coordinators...",
        args.scale_out_participants, args.scale_out_coordinators
    );
    let cluster = Cluster::start(ClusterOptions {
        participants: args.scale_out_participants,
        coordinators: args.scale_out_coordinators.max(1),
        ..ClusterOptions::default()
    })
    .await?;
    let row = async {
        let key = cluster
            .create_key(setup::TENANT, &[Scope::Transfer, Scope::Read], None)
            .await?;
        let bases = (0..cluster.coordinators().len())
            .map(|i| cluster.coordinator_url(i))
            .collect();
        let target = Target::spread(bases, &key, Duration::from_secs(args.timeout))?;
        let map = cluster.map_store().await?.load().await?;
        let accounts = Arc::new(Accounts::new("bench", args.accounts, &map)?);
        let loaded = setup::load(&map, &bench::nodes(&cluster), &accounts).await?;
        setup::verify(&target, &accounts, &loaded, 10).await?;
        let plan = Plan {
            load: Load::Closed { clients },
            warmup: Duration::from_secs(args.warmup),
            measure: Duration::from_secs(args.seconds),
        };
        eprintln!(
            "bench: {} ({}), {} s...",
            report::SCALE_OUT,
            plan.load,
            args.seconds
        );
        let scenario = Scenario::new(Kind::Uniform, accounts);
        let watched = bench::Watched::cluster(&cluster);
        let row = bench::measure(report::SCALE_OUT, &target, &scenario, &plan, 99, &watched).await;
        eprintln!(
            "  {:.0} committed/s  p50 {:.2} ms  p99 {:.2} ms  CPU {:.0} µs/tx  errors {}",
            row.result.committed_per_s,
            row.result.latency.p50_ms,
            row.result.latency.p99_ms,
            row.cpu_us_per_tx.unwrap_or(f64::NAN),
            row.result.outcomes.errors()
        );
        Ok::<_, anyhow::Error>(row)
    }
    .await;
    if let Err(e) = cluster.stop().await {
        eprintln!("bench: stopping the scale-out cluster: {e:#}");
    }
    row
}

/// A uniform run at `clients` while `perf` samples the cluster (not a row:
/// the sampling costs CPU); writes `profile.txt` into `out_dir`.
async fn profile(
    args: &Args,
    cluster: &Cluster,
    target: &Target,
    accounts: &Arc<Accounts>,
    clients: usize,
    out_dir: &std::path::Path,
) -> Result<PathBuf> {
    eprintln!(
        "bench: profiling uniform ({clients} clients), {} s...",
        args.profile_seconds
    );
    let watched = bench::Watched::cluster(cluster);
    let roots: Vec<u32> = watched.cpu.iter().map(|(_, pid)| *pid).collect();
    let plan = Plan {
        load: Load::Closed { clients },
        warmup: Duration::from_secs(args.warmup),
        measure: Duration::from_secs(args.profile_seconds),
    };
    let scenario = Scenario::new(Kind::Uniform, accounts.clone());
    // Warm up unprofiled, then sample the measured window only.
    let warm = Plan {
        measure: Duration::from_secs(args.warmup.max(1)),
        warmup: Duration::ZERO,
        ..plan.clone()
    };
    bench::generator::run(target, &scenario, &warm, 101).await;
    let profiler = bench::profile::Profiler::start(&roots, out_dir).await;
    let row = bench::measure(
        "uniform (profiled)",
        target,
        &scenario,
        &Plan {
            warmup: Duration::ZERO,
            ..plan
        },
        102,
        &watched,
    )
    .await;
    let title = format!(
        "Profile of uniform transfers, closed loop, {clients} clients, {} s: {:.0} committed/s, CPU {:.0} µs per transfer (whole cluster), p50 {:.2} ms, p99 {:.2} ms",
        args.profile_seconds,
        row.result.committed_per_s,
        row.cpu_us_per_tx.unwrap_or(f64::NAN),
        row.result.latency.p50_ms,
        row.result.latency.p99_ms
    );
    let path = profiler.finish(&title, &row.cluster_cpu, out_dir).await?;
    eprintln!(
        "  {title}
  written to {}",
        path.display()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(path)
}

/// Waits up to `within` for nothing to be held any more, then compares the
/// sum of all balances with what was loaded plus the deposits minus the
/// withdrawals the runs so far committed.
async fn money(
    nodes: &[setup::Node],
    accounts: &Accounts,
    rows: &[bench::Row],
    within: Duration,
) -> Result<String> {
    let (deposited, withdrawn, unknown) = rows.iter().fold((0i64, 0i64, 0u64), |acc, r| {
        let m = r.result.moved;
        (acc.0 + m.deposited, acc.1 + m.withdrawn, acc.2 + m.unknown)
    });
    let started = Instant::now();
    let (posted, held) = setup::settle(nodes, within).await?;
    let want = accounts.total() + deposited - withdrawn;
    Ok(if held > 0 {
        format!(
            "not checked: legs or balances still held after {} s ({held})",
            within.as_secs()
        )
    } else if unknown > 0 {
        format!(
            "not checked: {unknown} deposits or withdrawals of unknown outcome; total {posted}, {want} if none applied"
        )
    } else if posted == want {
        format!(
            "ok: total {posted} minor units = loaded + deposits - withdrawals (settled in {:.1} s)",
            started.elapsed().as_secs_f64()
        )
    } else {
        format!("VIOLATED: total {posted} minor units, expected {want}")
    })
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        })
        .unwrap_or_default()
}
