//! Participant settings: `config/participant.toml`, then `WALLET_*` variables.

use serde::Deserialize;

/// Its settings and their defaults: `config/participant.toml` (compiled in).
pub const DEFAULTS: &str = include_str!("../../config/participant.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantConfig {
    /// This node's id in the partition map (`node-1`).
    pub node_id: String,
    /// Where the internal HTTP API listens.
    pub listen_addr: String,
    /// Log lines as text or JSON.
    pub log_format: wallet_shared::telemetry::LogFormat,
    /// Where spans are exported over OTLP/HTTP; unset: no traces.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// On SIGTERM, the longest wait for requests in flight.
    pub shutdown_grace_ms: u64,
    /// The node's Postgres database.
    pub database_url: String,
    pub db_pool_size: u32,
    /// Longest any single SQL statement may run.
    pub statement_timeout_ms: u64,
    pub etcd_endpoints: Vec<String>,
    pub etcd_prefix: String,
    pub etcd_timeout_ms: u64,
    /// etcd over TLS: the CA of its certificate (PEM; `https://` endpoints).
    #[serde(default)]
    pub etcd_ca_file: Option<std::path::PathBuf>,
    /// A client certificate and its key (PEM), for `--client-cert-auth`.
    #[serde(default)]
    pub etcd_cert_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub etcd_key_file: Option<std::path::PathBuf>,
    /// etcd's user (`auth enable`), its password in `etcd_password_file`.
    #[serde(default)]
    pub etcd_user: Option<String>,
    #[serde(default)]
    pub etcd_password_file: Option<std::path::PathBuf>,
    /// Snapshot an account's balance at every this many of its events, in
    /// the same transaction as the event (0: never).
    pub snapshot_every: i64,
    /// The most events one balance fold may read (`history_too_long` past it).
    pub max_fold_events: i64,
    /// Open connections at most; more wait in the accept queue.
    pub max_connections: usize,
    /// Longest wait for a request's complete headers (also the keep-alive
    /// idle limit).
    pub header_read_timeout_ms: u64,
    /// Largest read or write buffer of one connection (at least 8192): a
    /// request's headers must fit in it.
    pub connection_buffer_bytes: usize,
    /// Longest pause of the feed's publisher between rounds (it also runs
    /// right after a write, at most once per this interval).
    pub publish_interval_ms: u64,
    /// A partition move's cut-over (from fencing the partition `draining`
    /// here to the owner switch) lasts at most this long; past it, this
    /// node rolls it back and serves the partition again.
    pub move_cutover_deadline_ms: u64,
    /// How long finished decision and leg (dedup) records are kept: the
    /// window in which a retry of a transaction id is recognized. See
    /// [`crate::retention`].
    pub record_retention_secs: u64,
    /// Pause between the pruner's rounds.
    pub prune_interval_ms: u64,
    /// Rows the pruner deletes per local transaction.
    pub prune_batch: i64,
    /// The cluster secret: it signs every internal request and keys the
    /// hash of API keys. Given inline (`WALLET_CLUSTER_SECRET`) or, better,
    /// as a file (`WALLET_CLUSTER_SECRET_FILE`); never on the command line.
    #[serde(default)]
    pub cluster_secret: Option<wallet_shared::secret::Secret>,
    #[serde(default)]
    pub cluster_secret_file: Option<std::path::PathBuf>,
    /// A signed internal request is accepted this far from this node's
    /// clock, either way (see `wallet_shared::signing`).
    pub signature_window_ms: u64,
}

impl ParticipantConfig {
    /// How to reach etcd: TLS and user, from the `etcd_*` settings.
    pub fn etcd_access(&self) -> anyhow::Result<wallet_shared::map::EtcdAccess> {
        wallet_shared::map::EtcdAccess::from_settings(
            self.etcd_ca_file.as_deref(),
            self.etcd_cert_file.as_deref(),
            self.etcd_key_file.as_deref(),
            self.etcd_user.as_deref(),
            self.etcd_password_file.as_deref(),
        )
    }

    /// The pruner's settings.
    pub fn retention(&self) -> crate::retention::Retention {
        crate::retention::Retention {
            keep: std::time::Duration::from_secs(self.record_retention_secs),
            interval: std::time::Duration::from_millis(self.prune_interval_ms),
            batch: self.prune_batch.clamp(1, 100_000),
        }
    }

    /// The cluster secret, from whichever of its two settings is set.
    pub fn cluster_secret(&self) -> anyhow::Result<Option<wallet_shared::secret::Secret>> {
        wallet_shared::secret::resolve(
            "cluster_secret",
            self.cluster_secret.as_ref(),
            self.cluster_secret_file.as_deref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_file_holds_every_default_but_the_node_id() {
        let none = wallet_shared::config::from_toml::<ParticipantConfig>(DEFAULTS, "");
        assert!(none.is_err(), "a node id must be given");
        let c: ParticipantConfig =
            wallet_shared::config::from_toml(DEFAULTS, r#"node_id = "node-7""#).unwrap();
        assert_eq!(c.node_id, "node-7");
        assert_eq!(c.snapshot_every, crate::model::DEFAULT_SNAPSHOT_EVERY);
        assert_eq!(c.db_pool_size, 32);
        assert_eq!(c.max_fold_events, crate::reads::DEFAULT_MAX_FOLD_EVENTS);
        assert_eq!(c.record_retention_secs, 30 * 24 * 3600);
    }
}
