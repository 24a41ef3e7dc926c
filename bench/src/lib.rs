//! The benchmark (`make bench`, the `bench` binary) and the load generator
//! (`loadgen`): scenarios over many accounts loaded straight into the
//! participants' databases, closed- and open-loop load with HDR latency
//! histograms, the pgbench reference, the services' resident memory, and a
//! report (table, JSON, SVG chart).
//!
//! Performance figures come from these programs, never from a test: the
//! smoke test in `e2e/tests/wallet/bench.rs` only checks that they
//! measure something plausible.

pub mod cpu;
pub mod generator;
pub mod move_trace;
pub mod profile;
pub mod reference;
pub mod report;
pub mod rss;
pub mod scenario;
pub mod setup;
pub mod xa;

use devcluster::Cluster;

pub use generator::{Load, Plan, RunResult, Target};
pub use report::{Report, Row};
pub use scenario::{Accounts, Kind, Scenario};

/// Every participant of `cluster` with its database, for [`setup::load`].
pub fn nodes(cluster: &Cluster) -> Vec<setup::Node> {
    (0..cluster.participants().len())
        .map(|i| setup::Node {
            node_id: cluster.node_id(i),
            database_url: cluster.postgres_url(i),
        })
        .collect()
}

/// The coordinators and participants of `cluster` (name, PID), for [`rss::Sampler`].
pub fn services(cluster: &Cluster) -> Vec<(String, u32)> {
    cluster
        .coordinators()
        .iter()
        .chain(cluster.participants())
        .filter_map(|s| Some((s.name().to_string(), s.pid()?)))
        .collect()
}

/// Every process of `cluster` whose CPU a transfer costs (name, root PID):
/// coordinators, participants, each Postgres server (its backends are
/// below it) and etcd. Not the load generator.
pub fn cluster_processes(cluster: &Cluster) -> Vec<(String, u32)> {
    let mut out = services(cluster);
    for i in 0..cluster.participants().len() {
        if let Some(pid) = cluster.postgres(i).pid() {
            out.push((format!("postgres-{}", i + 1), pid));
        }
    }
    if let Some(pid) = cluster.etcd().pid() {
        out.push(("etcd".to_string(), pid));
    }
    out
}

/// The processes [`measure`] watches.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    /// Resident memory sampled (name, PID): the services.
    pub rss: Vec<(String, u32)>,
    /// CPU time summed over these process trees (name, root PID) in the
    /// measured window: the whole cluster, not the load generator.
    pub cpu: Vec<(String, u32)>,
}

impl Watched {
    /// The services' memory and the whole cluster's CPU.
    pub fn cluster(cluster: &Cluster) -> Watched {
        Watched {
            rss: services(cluster),
            cpu: cluster_processes(cluster),
        }
    }
}

/// Runs `plan` with `scenario`'s requests while sampling the resident
/// memory and the CPU time of the `watched` processes and the machine's CPU
/// use; one row of the report (ratios not yet set).
pub async fn measure(
    name: &str,
    target: &Target,
    scenario: &Scenario,
    plan: &Plan,
    seed: u64,
    watched: &Watched,
) -> Row {
    let sampler = rss::Sampler::start(watched.rss.clone());
    let before = cpu::snapshot();
    // The cluster's CPU over the measured window only (the generator's
    // clock starts now), so that it matches the commits counted in it.
    let window = {
        let roots = watched.cpu.clone();
        let start = tokio::time::Instant::now() + plan.warmup;
        let end = start + plan.measure;
        tokio::spawn(async move {
            tokio::time::sleep_until(start).await;
            let first = cpu::Trees::read(&roots);
            tokio::time::sleep_until(end).await;
            first.usage_until(&cpu::Trees::read(&roots))
        })
    };
    let result = generator::run(target, scenario, plan, seed).await;
    let cpu = before.usage_until(&cpu::snapshot());
    let rss_mb = sampler.stop().await;
    let cluster_cpu = window.await.unwrap_or_default();
    let cpu_us_per_tx = if watched.cpu.is_empty() {
        None
    } else {
        cluster_cpu.us_per(result.outcomes.committed)
    };
    Row {
        scenario: name.to_string(),
        result,
        ratio: None,
        rss_mb,
        rss_before_mb: Default::default(),
        rss_after_mb: Default::default(),
        cpu,
        cluster_cpu,
        cpu_us_per_tx,
        ratios: Default::default(),
    }
}
