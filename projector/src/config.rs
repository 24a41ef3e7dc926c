//! Projector settings: a TOML file (first argument or `WALLET_CONFIG`), then
//! `WALLET_*` variables.

use serde::Deserialize;

/// Its settings and their defaults: `config/projector.toml` (compiled in).
pub const DEFAULTS: &str = include_str!("../../config/projector.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectorConfig {
    /// Where `/status` and the read-model queries listen.
    pub listen_addr: String,
    /// Log lines as text or JSON.
    pub log_format: wallet_shared::telemetry::LogFormat,
    /// The projector's own database (the query side).
    pub database_url: String,
    pub statement_timeout_ms: u64,
    pub etcd_endpoints: Vec<String>,
    pub etcd_prefix: String,
    pub etcd_timeout_ms: u64,
    /// Longest wait for one page of a participant's feed.
    pub participant_timeout_ms: u64,
    /// Pause between rounds once every feed is caught up.
    pub poll_interval_ms: u64,
    /// Entries read (and projected in one transaction) per page.
    pub page: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_file_holds_every_default() {
        let c: ProjectorConfig = wallet_shared::config::from_toml(DEFAULTS, "").unwrap();
        assert_eq!(c.listen_addr, "127.0.0.1:9100");
        assert_eq!(c.page, 1_000);
    }
}
