//! Participant settings: `config/participant.toml`, then `WALLET_*` variables.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct ParticipantConfig {
    /// This node's id in the partition map (`node-1`).
    pub node_id: String,
    /// Where the internal HTTP API listens.
    #[serde(default = "default_listen")]
    pub listen_addr: String,
    /// The node's Postgres database.
    pub database_url: String,
    #[serde(default = "default_pool")]
    pub db_pool_size: u32,
    /// Longest any single SQL statement may run.
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    pub etcd_endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub etcd_prefix: String,
    #[serde(default = "default_etcd_timeout_ms")]
    pub etcd_timeout_ms: u64,
    /// Snapshot an account's balance at every this many of its events, in
    /// the same transaction as the event (0: never).
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: i64,
    /// Longest pause of the feed's publisher between rounds (it also runs
    /// right after a write, at most once per this interval).
    #[serde(default = "default_publish_interval_ms")]
    pub publish_interval_ms: u64,
}

fn default_snapshot_every() -> i64 {
    crate::model::DEFAULT_SNAPSHOT_EVERY
}
fn default_publish_interval_ms() -> u64 {
    50
}

fn default_listen() -> String {
    "127.0.0.1:7001".into()
}
fn default_pool() -> u32 {
    32
}
fn default_statement_timeout_ms() -> u64 {
    5_000
}
fn default_prefix() -> String {
    "/wallet/".into()
}
fn default_etcd_timeout_ms() -> u64 {
    2_000
}
