//! Coordinator settings: `config/coordinator.toml`, then `WALLET_*` variables.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct CoordinatorConfig {
    /// Where the public API listens.
    #[serde(default = "default_listen")]
    pub listen_addr: String,
    pub etcd_endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub etcd_prefix: String,
    #[serde(default = "default_etcd_timeout_ms")]
    pub etcd_timeout_ms: u64,
    /// Longest wait for one participant call; past it the answer is "unknown".
    #[serde(default = "default_participant_timeout_ms")]
    pub participant_timeout_ms: u64,
    /// How long a coordinator claims a transfer it began. A retry after the
    /// lease takes over; recovery aborts an undecided one after it.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// Pause between recovery rounds.
    #[serde(default = "default_resolver_interval_ms")]
    pub resolver_interval_ms: u64,
    /// Recovery leaves decided transfers and prepared legs younger than this
    /// to the coordinator that is finishing them.
    #[serde(default = "default_resolver_grace_ms")]
    pub resolver_grace_ms: u64,
    /// Protocol messages of one kind for one node travel together: at most
    /// this many per request...
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// ...with at most this many such requests out at once (more wait and
    /// join the next one).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// New work on a partition that is being moved waits this long for the
    /// move to end, then gets `503 partition_moving`.
    #[serde(default = "default_move_wait_ms")]
    pub move_wait_ms: u64,
    /// Largest accepted request body.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Test hook: kill this process (SIGKILL, as `kill -9`) when a transfer
    /// reaches this point: `after_prepare` or `after_decision`; a deposit or
    /// withdrawal whose id lives on another node: `movement_after_claim` or
    /// `movement_after_apply`.
    #[serde(default)]
    pub crash_at: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_prefix() -> String {
    "/wallet/".into()
}
fn default_etcd_timeout_ms() -> u64 {
    2_000
}
fn default_participant_timeout_ms() -> u64 {
    2_000
}
fn default_lease_ms() -> u64 {
    5_000
}
fn default_resolver_interval_ms() -> u64 {
    1_000
}
fn default_resolver_grace_ms() -> u64 {
    2_000
}
fn default_max_batch() -> usize {
    512
}
fn default_max_in_flight() -> usize {
    1
}
fn default_move_wait_ms() -> u64 {
    5_000
}
fn default_max_body_bytes() -> usize {
    16 * 1024
}
