//! The chaos suite: the eight promises checked against a real cluster under
//! faults, the way Jepsen's bank workload does it, plus what that cannot see
//! (per transaction id: applied exactly once or not at all).
//!
//! [`run`] starts etcd, three Postgres servers, three participants and two
//! coordinators with short recovery settings and a fault-injecting proxy on
//! every coordinator-to-participant and coordinator-to-etcd link; opens and
//! funds a few accounts on every node; then runs the [`workload`] (clients)
//! and the [`nemesis`] (faults) together, recording everything in the
//! [`history`]. Afterwards it heals everything, resolves every unknown
//! outcome (a transfer's status, a movement's retry), waits for the cluster
//! to settle, checks that fresh operations succeed, reads every database
//! ([`audit`]) and every balance, and hands it all to the [`checker`].
//! History, report and the cluster's logs go to one folder.
//!
//! The same code serves the `chaos` binary (`make chaos`) and the short
//! version in `make test`. [`containers`] runs the same clients and checks
//! against the compose cluster, every node its own container, with docker's
//! faults (`make chaos-containers`).

pub mod audit;
pub mod checker;
pub mod containers;
pub mod history;
pub mod nemesis;
pub mod report;
pub mod workload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::stream::{self, StreamExt};
use tokio::time::Instant;
use wallet_shared::auth::Scope;
use wallet_shared::Currency;

use self::audit::Audit;
use self::checker::{Anomaly, Settling};
use self::history::{Clock, History, Known, Op, Outcome, Phase, Request};
use self::nemesis::Schedule;
use self::report::{Report, Timings};
use self::workload::{Client, Workload};
use devcluster::{Cluster, ClusterOptions};

/// Recovery settings short enough to watch recovery work in a test:
/// environment for coordinators.
pub fn quick_recovery() -> Vec<(String, String)> {
    [
        ("WALLET_LEASE_MS", "1500"),
        ("WALLET_RESOLVER_INTERVAL_MS", "200"),
        ("WALLET_RESOLVER_GRACE_MS", "500"),
        ("WALLET_PARTICIPANT_TIMEOUT_MS", "1500"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// When the clients and the nemesis stop: not before `earliest`, then as
/// soon as enough transfers were sent and faults injected, and at `latest`
/// whatever the counts.
#[derive(Debug)]
pub struct Until {
    /// Not before this.
    earliest: Instant,
    /// Not after this.
    latest: Instant,
    /// New transfers to send at least.
    min_transfers: u64,
    /// Faults to inject at least.
    min_faults: u64,
    /// New transfers sent so far.
    transfers: AtomicU64,
    /// Faults healed so far.
    faults: AtomicU64,
}

impl Until {
    /// After `duration`, whatever was done.
    pub fn after(duration: Duration) -> Until {
        Until::counts(duration, duration, 0, 0)
    }

    /// After at least `earliest` and at most `latest` from now, once
    /// `transfers` new transfers were sent and `faults` faults healed.
    pub fn counts(earliest: Duration, latest: Duration, transfers: u64, faults: u64) -> Until {
        let now = Instant::now();
        Until {
            earliest: now + earliest,
            latest: now + latest.max(earliest),
            min_transfers: transfers,
            min_faults: faults,
            transfers: AtomicU64::new(0),
            faults: AtomicU64::new(0),
        }
    }

    /// Whether it is time to stop.
    pub fn reached(&self) -> bool {
        let now = Instant::now();
        now >= self.latest
            || (now >= self.earliest
                && self.transfers.load(Ordering::Relaxed) >= self.min_transfers
                && self.faults.load(Ordering::Relaxed) >= self.min_faults)
    }

    /// Counts a new transfer sent.
    pub fn transfer_sent(&self) {
        self.transfers.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a fault healed.
    pub fn fault_healed(&self) {
        self.faults.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long the clients and the nemesis run at least.
    pub duration: Duration,
    /// How long they run at most, while `min_transfers` or `min_faults` are
    /// not reached.
    pub max_duration: Duration,
    /// New transfers to send at least (within `max_duration`).
    pub min_transfers: u64,
    /// Faults to inject at least (within `max_duration`).
    pub min_faults: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Where the history, the report and the cluster (logs, data) go.
    pub out: PathBuf,
    /// When and how long faults are.
    pub schedule: Schedule,
    /// Longest wait from healing until every unknown outcome is resolved
    /// and nothing is in flight (product promise 7: 30 s).
    pub settle_limit: Duration,
    /// A request without an answer after this is unknown.
    pub request_timeout: Duration,
    /// Where the service binaries are (`None`: next to the running one).
    pub bin_dir: Option<PathBuf>,
    /// Keep the databases' data directories even when no anomaly was found.
    pub keep_data: bool,
}

impl Config {
    /// A one-minute run with 16 clients and the default schedule.
    pub fn new(out: impl Into<PathBuf>, seed: u64) -> Config {
        Config {
            duration: Duration::from_secs(60),
            max_duration: Duration::from_secs(60),
            min_transfers: 0,
            min_faults: 0,
            clients: 16,
            seed,
            out: out.into(),
            schedule: Schedule::default(),
            settle_limit: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            bin_dir: None,
            keep_data: false,
        }
    }
}

/// Accounts per node: three in USD and one in JPY.
const ACCOUNTS: [(&str, usize); 2] = [("USD", 3), ("JPY", 1)];
/// What every account is funded with, in minor units.
const INITIAL: i64 = 100_000;
/// Concurrent lookups and retries while resolving.
const RESOLVERS: usize = 16;
/// How many transfers with a definite answer have their status looked up.
const STATUS_SAMPLE: usize = 500;

/// Runs the whole suite (see the module docs) and writes `history.jsonl`,
/// `report.json` and `report.txt` into `config.out`. An error means the
/// harness itself failed (a process would not restart); anomalies are in
/// the report.
pub async fn run(config: &Config) -> Result<Report> {
    std::fs::create_dir_all(&config.out)
        .with_context(|| format!("creating {}", config.out.display()))?;
    tracing::info!(seed = config.seed, out = %config.out.display(), "chaos run starting");
    let mut history = History::default();
    let result = run_into(config, &mut history).await;
    let written = history::write_jsonl(&history, &config.out.join("history.jsonl"));
    let report = result?;
    written?;
    report.write(&config.out)?;
    Ok(report)
}

async fn run_into(config: &Config, history: &mut History) -> Result<Report> {
    let clock = Clock::start();
    let mut cluster = Cluster::start(ClusterOptions {
        participants: 3,
        coordinators: 2,
        root: Some(config.out.join("cluster")),
        coordinator_env: quick_recovery(),
        bin_dir: config.bin_dir.clone(),
        proxies: true,
        ..ClusterOptions::default()
    })
    .await?;
    let map = cluster.map_store().await?.load().await?;
    let workload = chaos_workload(&map)?;
    let urls: Vec<String> = (0..cluster.coordinators().len())
        .map(|i| cluster.coordinator_url(i))
        .collect();
    // The clients act as one tenant (`transfer` and `read`): every transfer
    // passes the ownership check on the debit's node, under the faults.
    let key = cluster
        .create_key("chaos", &[Scope::Transfer, Scope::Read], None)
        .await?;
    let client = Client::new(urls, &key, clock, config.request_timeout)?;
    let databases: Vec<String> = (0..cluster.participants().len())
        .map(|i| cluster.postgres_url(i))
        .collect();
    // The harness's own requests carry the first process number after the clients'.
    let harness = config.clients;
    fund(&client, harness, &workload, config.seed, history).await?;
    let setup_ms = clock.now_ms();

    tracing::info!(
        accounts = workload.accounts.len(),
        clients = config.clients,
        seconds = config.duration.as_secs_f64(),
        "chaos: clients and nemesis start"
    );
    let until = Until::counts(
        config.duration,
        config.max_duration,
        config.min_transfers,
        config.min_faults,
    );
    let (ops, faults) = tokio::join!(
        workload.run(&client, config.clients, config.seed, &until),
        nemesis::run(&mut cluster, &config.schedule, config.seed, clock, &until),
    );
    history.ops.extend(ops);
    let chaos_ms = clock.now_ms();
    let healed = nemesis::heal_all(&mut cluster).await;
    let faults = faults?;
    healed?;
    history.faults = faults;
    for proxy in cluster.proxies() {
        tracing::info!(
            proxy = proxy.name(),
            connections = proxy.accepted(),
            broken_by_faults = proxy.faulted(),
            "link"
        );
    }
    tracing::info!(
        ops = history.ops.len(),
        faults = history.faults.len(),
        "chaos: healed; resolving"
    );

    let report = check_and_report(
        config,
        &client,
        harness,
        &workload,
        history,
        &databases,
        (setup_ms, chaos_ms),
    )
    .await?;

    drop(cluster);
    if report.anomaly_count() == 0 && !config.keep_data {
        remove_data_dirs(&config.out.join("cluster"));
    }
    Ok(report)
}

/// The chaos workload over `map`: [`ACCOUNTS`] on every node, each funded
/// with [`INITIAL`].
pub fn chaos_workload(map: &wallet_shared::PartitionMap) -> Result<Workload> {
    let per_node: Vec<(Currency, usize)> = ACCOUNTS
        .iter()
        .map(|(c, n)| Ok((Currency::parse(c)?, *n)))
        .collect::<Result<_, wallet_shared::Rejection>>()?;
    Ok(Workload {
        accounts: workload::place_accounts(map, &per_node),
        initial: INITIAL,
        mix: workload::Mix::default(),
    })
}

/// After the faults are healed: [`settle_and_check`], then the report with
/// the run's timings (`phases`: when setup and the faults ended, in ms of
/// the client's clock).
pub async fn check_and_report(
    config: &Config,
    client: &Client,
    process: usize,
    workload: &Workload,
    history: &mut History,
    databases: &[String],
    (setup_ms, chaos_ms): (f64, f64),
) -> Result<Report> {
    let checked = settle_and_check(
        client,
        process,
        workload,
        history,
        databases,
        config.settle_limit,
    )
    .await?;
    let end_ms = client.clock().now_ms();
    let timings = Timings {
        setup_s: setup_ms / 1000.0,
        chaos_s: (chaos_ms - setup_ms) / 1000.0,
        after_s: (end_ms - chaos_ms) / 1000.0,
        total_s: end_ms / 1000.0,
        ..Timings::default()
    };
    Ok(Report::new(
        config,
        history,
        &checked.audit,
        &checked.anomalies,
        checked.settling,
        timings,
    ))
}

/// Opens every account of `workload` and funds it with its initial amount,
/// recording it all in `history` (the checker adds the history up).
pub async fn fund(
    client: &Client,
    process: usize,
    workload: &Workload,
    seed: u64,
    history: &mut History,
) -> Result<()> {
    let mut rng = fastrand::Rng::with_seed(seed);
    for a in &workload.accounts {
        let currency = a.currency.code().to_string();
        let open = Request::Open {
            account: a.id.clone(),
            currency: currency.clone(),
        };
        until_ok(client, process, open, history).await?;
        let deposit = Request::Deposit {
            transaction_id: workload::new_transaction_id(&mut rng),
            account: a.id.clone(),
            amount: workload.initial,
            currency,
        };
        until_ok(client, process, deposit, history).await?;
    }
    Ok(())
}

/// What [`settle_and_check`] found.
#[derive(Debug)]
pub struct Checked {
    /// The final reading of every database.
    pub audit: Audit,
    /// When it was healed and settled.
    pub settling: Settling,
    /// Everything the checker found wrong.
    pub anomalies: Vec<Anomaly>,
}

/// Everything after the faults are healed (call it then): resolves every
/// unknown outcome and waits until nothing is in flight (both within
/// `limit`, waiting on up to three times as long only to learn more); sends
/// fresh operations; reads every database, every balance and the status of
/// a sample of the transfers with a definite answer; and checks the history
/// against all of it. Every request goes into `history`.
pub async fn settle_and_check(
    client: &Client,
    process: usize,
    workload: &Workload,
    history: &mut History,
    databases: &[String],
    limit: Duration,
) -> Result<Checked> {
    let clock = client.clock();
    let healed_ms = clock.now_ms();
    let give_up = Instant::now() + limit * 3;
    let resolved = resolve(client, process, history, give_up).await;
    let remaining = give_up.saturating_duration_since(Instant::now());
    let (audit, _) = Audit::wait_settled(databases, remaining).await?;
    let settled_ms = (resolved && !audit.in_flight()).then(|| clock.now_ms());

    fresh(client, process, workload, &audit, history).await;
    let (audit, _) = Audit::wait_settled(databases, limit).await?;
    // A lookup that found no record is looked up again if one appeared.
    for transaction_id in history.to_look_up_again(&audit) {
        let again = Request::Status { transaction_id };
        let op = client.call(process, Phase::Final, 0, again, false).await;
        history.ops.push(op);
    }
    // A sample of the transfers that got a definite answer: their status
    // must say the same.
    let mut decided: Vec<uuid::Uuid> = history
        .by_transaction()
        .into_iter()
        .filter(|(_, ops)| {
            matches!(ops[0].request, Request::Transfer { .. })
                && matches!(Known::of(ops), Known::Acked | Known::Refused)
        })
        .map(|(id, _)| id)
        .collect();
    fastrand::Rng::with_seed(decided.len() as u64).shuffle(&mut decided);
    decided.truncate(STATUS_SAMPLE);
    let n = client.coordinators();
    let lookups: Vec<Op> = stream::iter(decided.into_iter().enumerate())
        .map(|(i, transaction_id)| {
            let lookup = Request::Status { transaction_id };
            client.call(process, Phase::Final, i % n, lookup, false)
        })
        .buffer_unordered(RESOLVERS)
        .collect()
        .await;
    history.ops.extend(lookups);
    for (i, a) in workload.accounts.iter().enumerate() {
        let read = Request::Read {
            account: a.id.clone(),
        };
        let coordinator = i % client.coordinators();
        let op = client
            .call(process, Phase::Final, coordinator, read, false)
            .await;
        history.ops.push(op);
    }
    let settling = Settling {
        healed_ms,
        settled_ms,
        limit_ms: limit.as_secs_f64() * 1000.0,
    };
    let anomalies = checker::check(history, &audit, settling);
    Ok(Checked {
        audit,
        settling,
        anomalies,
    })
}

/// Sends `request` until it succeeds (setup, before any fault: a few tries).
async fn until_ok(
    client: &Client,
    process: usize,
    request: Request,
    history: &mut History,
) -> Result<()> {
    for attempt in 0..10 {
        let op = client
            .call(
                process,
                Phase::Setup,
                attempt % client.coordinators(),
                request.clone(),
                attempt > 0,
            )
            .await;
        let ok = op.outcome == Outcome::Ok;
        let answer = format!("{:?} {} {:?}", op.status, op.body, op.error);
        history.ops.push(op);
        if ok {
            return Ok(());
        }
        tracing::warn!(?request, %answer, "setup request failed; retrying");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("setup request {request:?} did not succeed in 10 tries")
}

/// Looks up the status of every transfer whose outcome is unknown, and
/// retries every deposit and withdrawal whose outcome is unknown, until the
/// history settles all of them or `give_up` passes; says whether it did.
async fn resolve(client: &Client, process: usize, history: &mut History, give_up: Instant) -> bool {
    loop {
        let pending = history.undetermined();
        if pending.is_empty() {
            return true;
        }
        if Instant::now() >= give_up {
            tracing::warn!(pending = pending.len(), "unknown outcomes left unresolved");
            return false;
        }
        let n = client.coordinators();
        let ops: Vec<Op> = stream::iter(pending.into_iter().enumerate())
            .map(|(i, request)| {
                let (request, retry) = match request {
                    Request::Transfer { transaction_id, .. } => {
                        (Request::Status { transaction_id }, false)
                    }
                    movement => (movement, true),
                };
                client.call(process, Phase::Resolve, i % n, request, retry)
            })
            .buffer_unordered(RESOLVERS)
            .collect()
            .await;
        history.ops.extend(ops);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// After settling, on every coordinator: a transfer in each currency from
/// its richest account, and a deposit. Each must succeed.
async fn fresh(
    client: &Client,
    process: usize,
    workload: &Workload,
    audit: &Audit,
    history: &mut History,
) {
    let mut rng = fastrand::Rng::with_seed(!0);
    let mut requests = Vec::new();
    let mut currencies: Vec<&str> = workload
        .accounts
        .iter()
        .map(|a| a.currency.code())
        .collect();
    currencies.sort_unstable();
    currencies.dedup();
    for code in currencies {
        let mut mine: Vec<&str> = workload
            .accounts
            .iter()
            .filter(|a| a.currency.code() == code)
            .map(|a| a.id.as_str())
            .collect();
        mine.sort_by_key(|a| std::cmp::Reverse(audit.posted(a)));
        if let [from, to, ..] = mine[..] {
            for _ in 0..client.coordinators() {
                requests.push(Request::Transfer {
                    transaction_id: workload::new_transaction_id(&mut rng),
                    from: from.to_string(),
                    to: to.to_string(),
                    amount: 1,
                    currency: code.to_string(),
                });
            }
        }
    }
    for a in workload.accounts.iter().take(client.coordinators()) {
        requests.push(Request::Deposit {
            transaction_id: workload::new_transaction_id(&mut rng),
            account: a.id.clone(),
            amount: 100,
            currency: a.currency.code().to_string(),
        });
    }
    for (i, request) in requests.into_iter().enumerate() {
        let op = client
            .call(
                process,
                Phase::Fresh,
                i % client.coordinators(),
                request,
                false,
            )
            .await;
        history.ops.push(op);
    }
}

/// Removes the databases' data directories (logs stay) of a run that found
/// nothing: a ten-minute run leaves hundreds of megabytes.
fn remove_data_dirs(root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let data = entry.path().join("data");
        if data.is_dir() {
            if let Err(e) = std::fs::remove_dir_all(&data) {
                tracing::warn!(dir = %data.display(), error = %e, "cannot remove data directory");
            }
        }
    }
}
