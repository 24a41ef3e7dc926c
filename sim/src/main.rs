//! `wallet-sim`: runs seeds of the deterministic simulation and prints a
//! summary; a failing seed prints the command that replays it exactly.
//!
//! ```text
//! wallet-sim --seeds 1000              # seeds 1..=1000
//! wallet-sim --seed 42 --verbose       # one seed, with the protocol's logs
//! ```

use std::collections::BTreeMap;
use std::time::Instant;

use clap::Parser;
use wallet_history::{Anomaly, AnomalyKind};
use wallet_sim::{run, Options, Report};

#[derive(Parser)]
#[command(about = "Deterministic simulation of the wallet's transfer protocol under faults")]
struct Args {
    /// Run exactly this seed (and print its whole report).
    #[arg(long)]
    seed: Option<u64>,
    /// Number of seeds to run, starting at --first.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// Requests per client per seed.
    #[arg(long, default_value_t = 30)]
    ops: usize,
    /// Print the protocol's logs (one seed at a time is best).
    #[arg(long)]
    verbose: bool,
    /// Write every report as JSON lines here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.verbose {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .init();
    }
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first..args.first + args.seeds).collect(),
    };
    let started = Instant::now();
    let mut out = args.out.as_ref().map(std::fs::File::create).transpose()?;
    let mut ops: BTreeMap<String, u64> = BTreeMap::new();
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    let mut anomalies: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed = Vec::new();
    let mut slowest_resolve = 0;
    let mut sim_ms = 0;
    for &seed in &seeds {
        let mut opts = Options::new(seed);
        opts.ops_per_client = args.ops;
        let report = std::panic::catch_unwind(|| run(&opts)).unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Report {
                seed,
                anomalies: vec![Anomaly::new(AnomalyKind::Panic, why)],
                ..Report::default()
            }
        });
        if let Some(f) = out.as_mut() {
            use std::io::Write;
            writeln!(f, "{}", serde_json::to_string(&report)?)?;
        }
        if args.seed.is_some() {
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        add(&mut ops, &report.ops);
        add(&mut faults, &report.faults);
        for a in &report.anomalies {
            *anomalies.entry(a.kind.to_string()).or_default() += 1;
        }
        slowest_resolve = slowest_resolve.max(report.resolved_ms.unwrap_or(u64::MAX));
        sim_ms += report.sim_ms;
        if !report.anomalies.is_empty() {
            print_failure(&report);
            failed.push(seed);
        }
    }
    println!(
        "{} seeds in {:.1} s ({:.0} s simulated); slowest recovery after healing: {} ms",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        sim_ms as f64 / 1000.0,
        slowest_resolve
    );
    println!("operations: {} {ops:?}", ops.values().sum::<u64>());
    println!("faults:     {} {faults:?}", faults.values().sum::<u64>());
    println!(
        "anomalies:  {} {anomalies:?}",
        anomalies.values().sum::<u64>()
    );
    if !failed.is_empty() {
        anyhow::bail!("{} seed(s) failed: {failed:?}", failed.len());
    }
    Ok(())
}

fn add(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

fn print_failure(report: &Report) {
    println!("seed {} FAILED:", report.seed);
    for a in &report.anomalies {
        println!("  {}: {}", a.kind, a.detail);
    }
    println!(
        "  replay it: cargo run --release -p wallet-sim -- --seed {} --verbose",
        report.seed
    );
}
