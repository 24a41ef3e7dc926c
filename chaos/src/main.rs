//! `chaos`: the chaos suite against a real local cluster (see
//! the `chaos` library). Starts its own cluster, runs clients and faults for
//! `--duration` seconds, heals, checks, writes `history.jsonl`,
//! `report.json`, `report.txt` and the cluster's logs into `--out`, prints
//! the summary, and exits with 1 if the checker found any anomaly (2 if the
//! harness itself failed).
//!
//! ```text
//! make chaos                                   # release build, 10 minutes
//! target/release/chaos --duration 60 --seed 7  # replays seed 7's choices
//! make chaos-containers                        # each node its own container (docker faults)
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chaos::{nemesis::Schedule, Config};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Runs clients and faults against a real wallet cluster, then checks the history")]
struct Args {
    /// Seconds of clients and faults.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Run on past `--duration` until this many new transfers were sent...
    #[arg(long, default_value_t = 0)]
    min_transfers: u64,
    /// ...and this many faults injected...
    #[arg(long, default_value_t = 0)]
    min_faults: u64,
    /// ...but no longer than this many seconds (default: `--duration`).
    #[arg(long)]
    max_duration: Option<u64>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 24)]
    clients: usize,
    /// Seed of every random choice (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Output folder (default: `target/chaos/<unix time>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Mean pause between one fault's healing and the next fault, in ms.
    #[arg(long, default_value_t = 1000)]
    fault_interval_ms: u64,
    /// Shortest fault, in ms.
    #[arg(long, default_value_t = 300)]
    fault_min_ms: u64,
    /// Longest fault, in ms (a restart adds its start-up time).
    #[arg(long, default_value_t = 2000)]
    fault_max_ms: u64,
    /// A client request without an answer after this many ms is unknown
    /// (shorter: more retries race the first attempt).
    #[arg(long, default_value_t = 10_000)]
    request_timeout_ms: u64,
    /// Seconds from healing within which everything must be resolved.
    #[arg(long, default_value_t = 30)]
    settle_limit: u64,
    /// Keep the databases' data even when nothing was found.
    #[arg(long)]
    keep_data: bool,
    /// Run against the compose cluster that is up (`scripts/compose.sh up`;
    /// its project and ports from COMPOSE_PROJECT_NAME and WALLET_*_PORT),
    /// each node its own container, with docker's faults: kill, pause,
    /// network disconnect. Run it from the workspace.
    #[arg(long)]
    containers: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    wallet_shared::telemetry::init("chaos");
    let args = Args::parse();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seed = args.seed.unwrap_or(now.as_nanos() as u64);
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("target/chaos/{}", now.as_secs())));
    let config = Config {
        duration: Duration::from_secs(args.duration),
        max_duration: Duration::from_secs(args.max_duration.unwrap_or(args.duration)),
        min_transfers: args.min_transfers,
        min_faults: args.min_faults,
        clients: args.clients,
        schedule: Schedule {
            interval: Duration::from_millis(args.fault_interval_ms),
            hold_min: Duration::from_millis(args.fault_min_ms),
            hold_max: Duration::from_millis(args.fault_max_ms.max(args.fault_min_ms)),
        },
        settle_limit: Duration::from_secs(args.settle_limit),
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        keep_data: args.keep_data,
        ..Config::new(out, seed)
    };
    println!(
        "chaos: seed {seed}, {} clients, {} s of faults; output in {} (same choices again: --seed {seed})",
        config.clients,
        args.duration,
        config.out.display()
    );
    let run = if args.containers {
        let root = std::env::current_dir().unwrap_or_default();
        let compose = chaos::containers::Compose::from_env(root);
        chaos::containers::run(&config, &compose).await
    } else {
        chaos::run(&config).await
    };
    match run {
        Ok(report) => {
            println!("{}", report.summary());
            if report.anomaly_count() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("chaos: the harness failed: {e:#}");
            ExitCode::from(2)
        }
    }
}
