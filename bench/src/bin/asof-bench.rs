//! `asof-bench`: how long `GET /v1/wallet/accounts/{id}/balance?as_of=T`
//! takes on an account with a long history, answered from the newest
//! snapshot (default) and from the first event (`snapshots=false`).
//!
//! Starts a cluster of its own (one participant), opens an account, writes
//! `--events` deposits straight into its database with a snapshot every
//! `--snapshot-every` (as the participant would; see
//! `participant::bulk::append_deposits`), then times `--repeat` queries through the
//! coordinator at a few instants of the history and prints the median and
//! the fastest. Not part of `make test`:
//!
//! ```sh
//! cargo build --release --workspace && target/release/asof-bench
//! ```

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use devcluster::{Cluster, ClusterOptions};
use participant::bulk::append_deposits;
use serde_json::Value;
use sqlx::Connection;

#[derive(Parser)]
#[command(
    about = "Times as_of balance queries on a long account history, with and without snapshots"
)]
struct Args {
    /// Events in the account's history.
    #[arg(long, default_value_t = 100_000)]
    events: i64,
    /// A snapshot every this many events.
    #[arg(long, default_value_t = 1_000)]
    snapshot_every: i64,
    /// Timed queries per instant and mode.
    #[arg(long, default_value_t = 20)]
    repeat: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    wallet_shared::telemetry::init("asof-bench");
    let args = Args::parse();
    let cluster = Cluster::start(ClusterOptions {
        participants: 1,
        participant_env: vec![(
            "WALLET_SNAPSHOT_EVERY".into(),
            args.snapshot_every.to_string(),
        )],
        ..ClusterOptions::default()
    })
    .await?;
    let result = run(&args, &cluster).await;
    if let Err(e) = cluster.stop().await {
        eprintln!("asof-bench: stopping the cluster: {e:#}");
    }
    result
}

async fn run(args: &Args, cluster: &Cluster) -> Result<()> {
    let api = cluster.coordinator_url(0);
    let http = reqwest::Client::builder()
        .default_headers(devcluster::bearer(cluster.admin_key()))
        .timeout(Duration::from_secs(60))
        .build()?;
    let account = "long-history";
    let r = http
        .post(format!("{api}/v1/wallet/accounts"))
        .json(&serde_json::json!({"account_id": account, "currency": "USD"}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("opening the account: {}", r.text().await?);
    }
    let loading = Instant::now();
    let database = cluster.postgres_url(0);
    let mut db = sqlx::PgConnection::connect(&database)
        .await
        .with_context(|| format!("connecting to {database}"))?;
    let history = append_deposits(&mut db, account, args.events, args.snapshot_every)
        .await
        .with_context(|| format!("appending {} deposits to {account}", args.events))?;
    println!(
        "{} events written in {:.1} s (a snapshot every {})",
        args.events,
        loading.elapsed().as_secs_f64(),
        args.snapshot_every
    );
    println!(
        "{:>10}  {:>10}  {:>10}  {:>12}  {:>12}",
        "instant", "snapshots", "events", "median ms", "fastest ms"
    );
    let n = args.events;
    for k in [n / 2 + n / 200, n] {
        let at = history
            .at(k)
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            .replace('+', "%2B");
        for snapshots in [true, false] {
            let url = format!(
                "{api}/v1/wallet/accounts/{account}/balance?as_of={at}&snapshots={snapshots}"
            );
            let mut times = Vec::with_capacity(args.repeat);
            let mut replayed = 0;
            for _ in 0..args.repeat.max(1) {
                let started = Instant::now();
                let r = http.get(&url).send().await?;
                let status = r.status();
                let body: Value = r.json().await.context("decoding the answer")?;
                times.push(started.elapsed());
                if !status.is_success() {
                    bail!("{url}: {status} {body}");
                }
                replayed = body["events_replayed"].as_u64().unwrap_or(0);
            }
            times.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "{:>10}  {:>10}  {:>10}  {:>12.2}  {:>12.2}",
                format!("event {k}"),
                if snapshots { "yes" } else { "no" },
                replayed,
                ms(times[times.len() / 2]),
                ms(times[0])
            );
        }
    }
    Ok(())
}
