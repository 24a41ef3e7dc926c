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
pub mod reference;
pub mod report;
pub mod rss;
pub mod scenario;
pub mod setup;

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

/// Runs `plan` with `scenario`'s requests while sampling the resident
/// memory of `processes` and the machine's CPU use; one row of the report
/// (ratio not yet set).
pub async fn measure(
    name: &str,
    target: &Target,
    scenario: &Scenario,
    plan: &Plan,
    seed: u64,
    processes: Vec<(String, u32)>,
) -> Row {
    let sampler = rss::Sampler::start(processes);
    let before = cpu::snapshot();
    let result = generator::run(target, scenario, plan, seed).await;
    let cpu = before.usage_until(&cpu::snapshot());
    let rss_mb = sampler.stop().await;
    Row {
        scenario: name.to_string(),
        result,
        ratio: None,
        rss_mb,
        cpu,
    }
}
