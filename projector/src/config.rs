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
    /// Where spans are exported over OTLP/HTTP; unset: no traces.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The projector's own database (the query side).
    pub database_url: String,
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
    /// Longest wait for one page of a participant's feed.
    pub participant_timeout_ms: u64,
    /// Pause between rounds once every feed is caught up.
    pub poll_interval_ms: u64,
    /// Entries read (and projected in one transaction) per page.
    pub page: i64,
    /// The name it registers its feed positions under (empty: none).
    pub consumer_name: String,
    /// The cluster secret: it signs every internal request and keys the
    /// hash of API keys. Given inline (`WALLET_CLUSTER_SECRET`) or, better,
    /// as a file (`WALLET_CLUSTER_SECRET_FILE`); never on the command line.
    #[serde(default)]
    pub cluster_secret: Option<wallet_shared::secret::Secret>,
    #[serde(default)]
    pub cluster_secret_file: Option<std::path::PathBuf>,
}

impl ProjectorConfig {
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
        let c: ProjectorConfig = wallet_shared::config::from_toml(DEFAULTS, "").unwrap();
        assert_eq!(c.listen_addr, "127.0.0.1:9100");
        assert_eq!(c.page, 1_000);
    }
}
