//! Coordinator settings: `config/coordinator.toml`, then `WALLET_*` variables.

use serde::Deserialize;

/// Its settings and their defaults: `config/coordinator.toml` (compiled in).
pub const DEFAULTS: &str = include_str!("../../config/coordinator.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Where the public API listens.
    pub listen_addr: String,
    /// Log lines as text or JSON.
    pub log_format: wallet_shared::telemetry::LogFormat,
    /// Where spans are exported over OTLP/HTTP; unset: no traces.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// On SIGTERM, the longest wait for requests in flight.
    pub shutdown_grace_ms: u64,
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
    /// Longest wait for one participant call; past it the answer is "unknown".
    pub participant_timeout_ms: u64,
    /// How long a coordinator claims a transfer it began. A retry after the
    /// lease takes over; recovery aborts an undecided one after it.
    pub lease_ms: u64,
    /// Pause between recovery rounds.
    pub resolver_interval_ms: u64,
    /// Recovery leaves decided transfers and prepared legs younger than this
    /// to the coordinator that is finishing them.
    pub resolver_grace_ms: u64,
    /// Protocol messages of one kind for one node travel together: at most
    /// this many per request...
    pub max_batch: usize,
    /// ...with at most this many such requests out at once (more wait and
    /// join the next one).
    pub max_in_flight: usize,
    /// `complete`, whose answer nobody waits for, is held this long on an
    /// idle lane, so that those of that time share one request.
    pub complete_linger_ms: u64,
    /// New work on a partition that is being moved waits this long for the
    /// move to end, then gets `503 partition_moving`.
    pub move_wait_ms: u64,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Open connections at most; more wait in the accept queue.
    pub max_connections: usize,
    /// Longest wait for a request's complete headers, from the connection's
    /// start or its previous response (also the keep-alive idle limit).
    pub header_read_timeout_ms: u64,
    /// Largest read or write buffer of one connection (at least 8192): a
    /// request's headers must fit in it.
    pub connection_buffer_bytes: usize,
    /// Requests served at once at most; past it `503 overloaded`.
    pub max_requests_in_flight: usize,
    /// Longest a request is waited for before `503 unavailable` (its work
    /// goes on).
    pub request_timeout_ms: u64,
    /// Items waiting for one node's lane at most before new work is refused.
    pub max_queued_per_node: usize,
    /// Test hook: kill this process (SIGKILL, as `kill -9`) when a transfer
    /// reaches this point: `after_prepare` or `after_decision`; a deposit or
    /// withdrawal whose id lives on another node: `movement_after_claim` or
    /// `movement_after_apply`.
    #[serde(default)]
    pub crash_at: Option<String>,
    /// The cluster secret: it signs every internal request and keys the
    /// hash of API keys. Given inline (`WALLET_CLUSTER_SECRET`) or, better,
    /// as a file (`WALLET_CLUSTER_SECRET_FILE`); never on the command line.
    #[serde(default)]
    pub cluster_secret: Option<wallet_shared::secret::Secret>,
    #[serde(default)]
    pub cluster_secret_file: Option<std::path::PathBuf>,
    /// HTTPS on the public listener: its certificate chain (PEM)...
    #[serde(default)]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// ... and its private key (PEM). Both, or neither.
    #[serde(default)]
    pub tls_key_file: Option<std::path::PathBuf>,
}

impl CoordinatorConfig {
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
    fn the_config_file_holds_every_default() {
        let c: CoordinatorConfig = wallet_shared::config::from_toml(DEFAULTS, "").unwrap();
        assert_eq!(c.listen_addr, "127.0.0.1:8080");
        assert_eq!(c.lease_ms, 5_000);
        assert_eq!(c.crash_at, None);
        let c: CoordinatorConfig =
            wallet_shared::config::from_toml(DEFAULTS, "lease_ms = 700").unwrap();
        assert_eq!(c.lease_ms, 700);
    }
}
