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
