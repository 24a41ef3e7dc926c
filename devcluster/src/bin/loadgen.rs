//! A closed-loop load generator for the public API: opens `--accounts`
//! accounts, funds them, then runs `--clients` concurrent loops of
//! cross-partition transfers for `--seconds`, and prints throughput and
//! latency percentiles. Point it at any coordinator (default: `make run`'s).
//!
//! ```text
//! target/release/loadgen --url http://127.0.0.1:8080 --clients 32 --seconds 20
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures::stream::{self, StreamExt};
use serde_json::json;
use wallet_shared::partition::account_partition;
use wallet_shared::AccountId;

#[derive(Parser)]
struct Args {
    /// Coordinator base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    #[arg(long, default_value_t = 32)]
    clients: usize,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Partition count of the cluster's map (to pick cross-partition pairs).
    #[arg(long, default_value_t = 64)]
    partitions: u32,
    /// Prefix of the account ids this run creates (reused runs top them up).
    #[arg(long, default_value = "load")]
    prefix: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(args.clients)
        .build()?;
    let accounts: Vec<String> = (0..args.accounts)
        .map(|i| format!("{}-{i}", args.prefix))
        .collect();

    eprintln!("opening and funding {} accounts...", accounts.len());
    let setup = stream::iter(accounts.iter().cloned())
        .map(|a| {
            let (http, url) = (http.clone(), args.url.clone());
            async move {
                let r = http.post(format!("{url}/v1/wallet/accounts")).json(&json!({"account_id": a, "currency": "USD"})).send().await?;
                if !r.status().is_success() {
                    bail!("open {a}: {}", r.text().await?);
                }
                let body = json!({"transaction_id": uuid::Uuid::new_v4(), "amount": "1000000.00", "currency": "USD"});
                let r = http.post(format!("{url}/v1/wallet/accounts/{a}/deposit")).json(&body).send().await?;
                if !r.status().is_success() {
                    bail!("deposit {a}: {}", r.text().await?);
                }
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<anyhow::Result<()>>>()
        .await;
    setup
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()
        .context("setting up accounts")?;

    let partition: Vec<u32> = accounts
        .iter()
        .map(|a| {
            Ok(account_partition(
                &AccountId::parse(a.as_str())?,
                args.partitions,
            ))
        })
        .collect::<Result<_, wallet_shared::Rejection>>()?;
    eprintln!("running {} clients for {} s...", args.clients, args.seconds);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let loops = (0..args.clients).map(|c| {
        let (http, url, accounts, partition) =
            (http.clone(), args.url.clone(), &accounts, &partition);
        async move {
            let mut rng = fastrand::Rng::with_seed(c as u64);
            let mut latencies = Vec::new();
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            while Instant::now() < deadline {
                let from = rng.usize(..accounts.len());
                let to = rng.usize(..accounts.len());
                if partition[from] == partition[to] {
                    continue;
                }
                let body = json!({
                    "transaction_id": uuid::Uuid::new_v4(), "from_account": accounts[from],
                    "to_account": accounts[to], "amount": "0.01", "currency": "USD",
                });
                let t0 = Instant::now();
                let status = match http
                    .post(format!("{url}/v1/wallet/balance_transfer"))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                latencies.push(t0.elapsed());
                *statuses.entry(status).or_default() += 1;
            }
            (latencies, statuses)
        }
    });
    let results = futures::future::join_all(loops).await;
    let elapsed = started.elapsed();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for (l, s) in results {
        latencies.extend(l);
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let committed = statuses.get(&200).copied().unwrap_or(0);
    println!(
        "cross-partition transfers: {} clients, {:.1} s",
        args.clients,
        elapsed.as_secs_f64()
    );
    println!(
        "committed: {committed} ({:.0} transfers/s)",
        committed as f64 / elapsed.as_secs_f64()
    );
    println!("answers by HTTP status (0 = no answer): {statuses:?}");
    println!(
        "latency p50 {:?}  p99 {:?}  p99.9 {:?}  max {:?}",
        pct(0.50),
        pct(0.99),
        pct(0.999),
        latencies.last().copied().unwrap_or_default()
    );
    Ok(())
}
