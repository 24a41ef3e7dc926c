//! The load generator against a running cluster (`make run`): loads
//! `--accounts` accounts straight into the participants' databases (found
//! in the cluster's manifest, `.data/cluster.json`), then runs one scenario
//! in a closed loop (`--clients`) or an open loop (`--rate`, at most
//! `--max-in-flight` unanswered) and prints throughput, every outcome and
//! latency percentiles (HDR histogram). `make bench` runs the whole
//! benchmark on a cluster of its own; this is for trying one thing.
//!
//! ```text
//! target/release/loadgen --scenario uniform --clients 64 --seconds 20
//! target/release/loadgen --no-setup --scenario hot-credit --rate 500 --seconds 20
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bench::{setup, Accounts, Kind, Load, Plan, Scenario, Target};
use clap::Parser;
use serde_json::Value;
use wallet_shared::auth::Scope;
use wallet_shared::MapStore;

#[derive(Parser)]
#[command(about = "Sends one benchmark scenario to a running wallet cluster")]
struct Args {
    /// Coordinator base URL (default: the manifest's).
    #[arg(long)]
    url: Option<String>,
    /// The running cluster's manifest (written by `devcluster run`).
    #[arg(long, default_value = ".data/cluster.json")]
    manifest: PathBuf,
    #[arg(long, value_enum, default_value = "uniform")]
    scenario: Kind,
    /// Number of accounts (plus two hot ones).
    #[arg(long, default_value_t = 10_000)]
    accounts: usize,
    /// Prefix of the account ids.
    #[arg(long, default_value = "load")]
    prefix: String,
    /// Use the accounts a previous run loaded (same --prefix and --accounts).
    #[arg(long)]
    no_setup: bool,
    /// Closed loop with this many clients (unless --rate is given).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Open loop at this many requests per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: most unanswered requests; further ones are dropped (counted).
    #[arg(long, default_value_t = 10_000)]
    max_in_flight: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Unmeasured seconds first.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Client timeout of every request, seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Also write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.manifest).with_context(|| {
        format!(
            "reading {} (start a cluster with `make run`, or pass --manifest)",
            args.manifest.display()
        )
    })?;
    let manifest: Value = serde_json::from_str(&text)?;
    let url = match &args.url {
        Some(u) => u.clone(),
        None => manifest["coordinator_url"]
            .as_str()
            .context("the manifest names no coordinator")?
            .to_string(),
    };
    let endpoints: Vec<String> = serde_json::from_value(manifest["etcd_endpoints"].clone())?;
    let prefix = manifest["etcd_prefix"].as_str().unwrap_or("/wallet/");
    let map = MapStore::connect(&endpoints, prefix, Duration::from_secs(5))
        .await
        .context("connecting to etcd")?
        .load()
        .await
        .context("reading the partition map")?;
    let accounts = Arc::new(Accounts::new(&args.prefix, args.accounts, &map)?);
    // A key of the benchmark's tenant, whose accounts it loads.
    let secret_file = manifest["cluster_secret_file"]
        .as_str()
        .context("the manifest names no cluster_secret_file")?;
    let key = devcluster::create_key(
        &endpoints,
        prefix,
        std::path::Path::new(secret_file),
        setup::TENANT,
        &[Scope::Transfer, Scope::Read],
        None,
    )
    .await
    .context("creating an API key for the load")?;
    devcluster::await_key(std::slice::from_ref(&url), &key, true).await?;
    let target = Target::new(url, &key, Duration::from_secs(args.timeout))?;

    if !args.no_setup {
        let nodes = nodes(&manifest)?;
        eprintln!(
            "loading {} accounts into {} databases...",
            accounts.ids.len() + 2,
            nodes.len()
        );
        let loaded = setup::load(&map, &nodes, &accounts)
            .await
            .context("loading accounts (with --no-setup, a previous run's are used)")?;
        setup::verify(&target, &accounts, &loaded, 20).await?;
        eprintln!(
            "loaded {:?} in {:.1} s",
            loaded.per_node,
            loaded.elapsed.as_secs_f64()
        );
    }

    let load = match args.rate {
        Some(rate) => Load::Open {
            rate,
            max_in_flight: args.max_in_flight,
        },
        None => Load::Closed {
            clients: args.clients,
        },
    };
    let plan = Plan {
        load,
        warmup: Duration::from_secs(args.warmup),
        measure: Duration::from_secs(args.seconds),
    };
    eprintln!(
        "{} ({load}) for {} s after {} s of warmup...",
        args.scenario.name(),
        args.seconds,
        args.warmup
    );
    let scenario = Scenario::new(args.scenario, accounts);
    let row = bench::measure(
        args.scenario.name(),
        &target,
        &scenario,
        &plan,
        1,
        &bench::Watched::default(),
    )
    .await;
    let r = &row.result;
    println!("{} ({}), {:.1} s measured", row.scenario, r.load, r.seconds);
    println!(
        "committed: {} ({:.0}/s); sent {}",
        r.outcomes.committed, r.committed_per_s, r.sent
    );
    println!(
        "not committed: 422/404 {}, 409 {}, 202 {}, 5xx {}, other {}, timeouts {}, transport errors {}",
        r.outcomes.refused,
        r.outcomes.conflict,
        r.outcomes.pending,
        r.outcomes.server_error,
        r.outcomes.other,
        r.outcomes.timeouts,
        r.outcomes.transport_errors
    );
    println!("answers by status: {:?}", r.outcomes.by_status);
    if !r.outcomes.codes.is_empty() {
        println!("error codes: {:?}", r.outcomes.codes);
    }
    if let Load::Open { .. } = r.load {
        println!(
            "open loop: dropped {} (in-flight cap), late {} (> {:?} behind schedule)",
            r.dropped,
            r.late,
            bench::generator::LATE
        );
    }
    println!(
        "in flight: mean {:.1}, max {}",
        r.in_flight_mean, r.in_flight_max
    );
    let l = &r.latency;
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&row)? + "\n")?;
    }
    Ok(())
}

/// Each participant's node id and database URL: participant-N is backed by
/// postgres-N (see `devcluster::cluster`).
fn nodes(manifest: &Value) -> anyhow::Result<Vec<setup::Node>> {
    let components = manifest["components"]
        .as_array()
        .context("the manifest lists no components")?;
    let find = |name: &str| components.iter().find(|c| c["name"] == name);
    let mut nodes = Vec::new();
    for c in components.iter().filter(|c| c["kind"] == "participant") {
        let name = c["name"].as_str().unwrap_or_default();
        let node_id = c["node_id"]
            .as_str()
            .with_context(|| format!("{name} has no node_id"))?;
        let n = name.trim_start_matches("participant-");
        let Some(pg) = find(&format!("postgres-{n}")) else {
            bail!("no postgres-{n} for {name} in the manifest");
        };
        nodes.push(setup::Node {
            node_id: node_id.to_string(),
            database_url: pg["url"].as_str().unwrap_or_default().to_string(),
        });
    }
    Ok(nodes)
}
