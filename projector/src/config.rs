//! Projector settings: a TOML file (first argument or `WALLET_CONFIG`), then
//! `WALLET_*` variables.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct ProjectorConfig {
    /// Where `/status` and the read-model queries listen.
    #[serde(default = "default_listen")]
    pub listen_addr: String,
    /// The projector's own database (the query side).
    pub database_url: String,
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    pub etcd_endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub etcd_prefix: String,
    #[serde(default = "default_etcd_timeout_ms")]
    pub etcd_timeout_ms: u64,
    /// Longest wait for one page of a participant's feed.
    #[serde(default = "default_participant_timeout_ms")]
    pub participant_timeout_ms: u64,
    /// Pause between rounds once every feed is caught up.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Entries read (and projected in one transaction) per page.
    #[serde(default = "default_page")]
    pub page: i64,
}

fn default_listen() -> String {
    "127.0.0.1:9100".into()
}
fn default_statement_timeout_ms() -> u64 {
    10_000
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
fn default_poll_interval_ms() -> u64 {
    200
}
fn default_page() -> i64 {
    1_000
}
