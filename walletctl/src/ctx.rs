//! Where the cluster is, and the one way to talk to it: etcd through
//! `wallet_shared::map`, nodes and the coordinator over HTTP. Every call has
//! a timeout; a call that gets no answer is an `Unreachable` error, never
//! taken for a success.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use wallet_shared::map::EtcdAccess;
use wallet_shared::secret::Secret;
use wallet_shared::{signing, ErrorCode, MapStore, PartitionMap, Rejection};

use crate::error::{CtlError, CtlResult, Exit};
use crate::output::Output;

/// Where things are, from flags or the environment; what is missing comes
/// from the manifest `make run` writes, then from the defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct Endpoints {
    /// etcd endpoints, comma-separated [default: from the manifest, else http://127.0.0.1:2379]
    #[arg(
        long,
        env = "WALLET_ETCD_ENDPOINTS",
        value_delimiter = ',',
        global = true
    )]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of the partition map in etcd [default: from the manifest, else /wallet/]
    #[arg(long, env = "WALLET_ETCD_PREFIX", global = true)]
    pub etcd_prefix: Option<String>,
    /// The coordinator's public API [default: from the manifest, else http://127.0.0.1:8080]
    #[arg(long, env = "WALLET_COORDINATOR_URL", global = true)]
    pub coordinator: Option<String>,
    /// The cluster manifest `make run` writes
    #[arg(
        long,
        env = "WALLET_MANIFEST",
        default_value = ".data/cluster.json",
        global = true
    )]
    pub manifest: PathBuf,
    /// The projector's database (the read models) [default: from the manifest]
    #[arg(long, env = "WALLET_PROJECTOR_DATABASE_URL", global = true)]
    pub projector_database_url: Option<String>,
    /// File holding the cluster secret, which signs calls to participants
    /// and keys the hash of API keys (the secret itself is never an
    /// argument; WALLET_CLUSTER_SECRET holds it inline) [default: from the manifest]
    #[arg(long, env = "WALLET_CLUSTER_SECRET_FILE", global = true)]
    pub cluster_secret_file: Option<PathBuf>,
    /// CA of etcd's certificate, for etcd over TLS (https:// endpoints)
    #[arg(long, env = "WALLET_ETCD_CA_FILE", global = true)]
    pub etcd_ca_file: Option<PathBuf>,
    /// Client certificate for an etcd that checks them (with --etcd-key-file)
    #[arg(long, env = "WALLET_ETCD_CERT_FILE", global = true)]
    pub etcd_cert_file: Option<PathBuf>,
    /// Key of the client certificate
    #[arg(long, env = "WALLET_ETCD_KEY_FILE", global = true)]
    pub etcd_key_file: Option<PathBuf>,
    /// etcd user (with --etcd-password-file)
    #[arg(long, env = "WALLET_ETCD_USER", global = true)]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password (never the password itself)
    #[arg(long, env = "WALLET_ETCD_PASSWORD_FILE", global = true)]
    pub etcd_password_file: Option<PathBuf>,
    /// File holding an API key with the admin scope, for calls to the
    /// coordinator (WALLET_API_KEY holds it inline) [default: from the manifest]
    #[arg(long, env = "WALLET_API_KEY_FILE", global = true)]
    pub api_key_file: Option<PathBuf>,
    /// Seconds to wait for any one answer from etcd or a node
    #[arg(long, default_value_t = 10, global = true)]
    pub timeout: u64,
}

/// The part of `.data/cluster.json` walletctl reads.
#[derive(Debug, Default, Deserialize)]
struct Manifest {
    #[serde(default)]
    etcd_endpoints: Vec<String>,
    etcd_prefix: Option<String>,
    coordinator_url: Option<String>,
    projector_database_url: Option<String>,
    cluster_secret_file: Option<PathBuf>,
    api_key_file: Option<PathBuf>,
}

pub struct Ctx {
    pub etcd_endpoints: Vec<String>,
    /// TLS and user for etcd.
    pub etcd_access: EtcdAccess,
    pub etcd_prefix: String,
    pub coordinator: String,
    pub timeout: Duration,
    pub output: Output,
    /// The projector's database, if known.
    pub projector_database_url: Option<String>,
    /// The cluster secret, if one is configured: it signs every call
    /// (`wallet_shared::signing`).
    pub cluster_secret: Option<Secret>,
    /// The API key calls to the coordinator carry, if one is configured.
    api_key: Option<Secret>,
    http: reqwest::Client,
}

impl Ctx {
    pub fn new(endpoints: Endpoints, output: Output) -> CtlResult<Self> {
        let manifest = read_manifest(&endpoints.manifest)?;
        let etcd_endpoints = if !endpoints.etcd_endpoints.is_empty() {
            endpoints.etcd_endpoints
        } else if !manifest.etcd_endpoints.is_empty() {
            manifest.etcd_endpoints
        } else {
            vec!["http://127.0.0.1:2379".to_string()]
        };
        let cluster_secret = secret_setting(
            "WALLET_CLUSTER_SECRET",
            std::env::var("WALLET_CLUSTER_SECRET").ok(),
            endpoints.cluster_secret_file,
            manifest.cluster_secret_file,
        )?;
        let etcd_access = EtcdAccess::from_settings(
            endpoints.etcd_ca_file.as_deref(),
            endpoints.etcd_cert_file.as_deref(),
            endpoints.etcd_key_file.as_deref(),
            endpoints.etcd_user.as_deref(),
            endpoints.etcd_password_file.as_deref(),
        )
        .map_err(|e| CtlError::new(Exit::Usage, format!("{e:#}")))?;
        let api_key = secret_setting(
            "WALLET_API_KEY",
            std::env::var("WALLET_API_KEY")
                .ok()
                .map(|text| text.trim().to_string()),
            endpoints.api_key_file,
            manifest.api_key_file,
        )?;
        let timeout = Duration::from_secs(endpoints.timeout.max(1));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| {
                CtlError::new(Exit::Failed, format!("cannot build an HTTP client: {e}"))
            })?;
        Ok(Ctx {
            etcd_endpoints,
            etcd_access,
            etcd_prefix: endpoints
                .etcd_prefix
                .or(manifest.etcd_prefix)
                .unwrap_or_else(|| "/wallet/".to_string()),
            coordinator: endpoints
                .coordinator
                .or(manifest.coordinator_url)
                .unwrap_or_else(|| "http://127.0.0.1:8080".to_string())
                .trim_end_matches('/')
                .to_string(),
            timeout,
            output,
            projector_database_url: endpoints
                .projector_database_url
                .or(manifest.projector_database_url),
            cluster_secret,
            api_key,
            http,
        })
    }

    /// The cluster secret, or a clear error saying where to set it.
    pub fn secret(&self) -> CtlResult<&Secret> {
        self.cluster_secret.as_ref().ok_or_else(|| {
            CtlError::new(
                Exit::Usage,
                "no cluster secret: set --cluster-secret-file (WALLET_CLUSTER_SECRET_FILE) \
                 or WALLET_CLUSTER_SECRET; participants take only signed calls",
            )
        })
    }

    /// Connects to etcd (one try, bounded by the timeout).
    pub async fn map_store(&self) -> CtlResult<MapStore> {
        MapStore::connect_with(
            &self.etcd_endpoints,
            &self.etcd_access,
            &self.etcd_prefix,
            self.timeout,
        )
        .await
        .map_err(|e| {
            CtlError::new(
                Exit::Unreachable,
                format!(
                    "cannot reach etcd at {}: {e}",
                    self.etcd_endpoints.join(",")
                ),
            )
        })
    }

    /// The partition map as etcd has it now.
    pub async fn map(&self) -> CtlResult<PartitionMap> {
        let map = self.map_store().await?.load().await;
        map.map_err(|e| match e {
            wallet_shared::map::MapError::Etcd(e) => CtlError::new(
                Exit::Unreachable,
                format!(
                    "cannot reach etcd at {}: {e}",
                    self.etcd_endpoints.join(",")
                ),
            ),
            e => e.into(),
        })
    }

    /// `GET url`, the answer decoded.
    pub async fn get<T: DeserializeOwned>(&self, who: &str, url: &str) -> CtlResult<T> {
        self.send(who, self.http.get(url)).await
    }

    /// `POST url` with a JSON body, the answer decoded.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        who: &str,
        url: &str,
        body: &B,
    ) -> CtlResult<T> {
        self.post_within(who, url, body, self.timeout).await
    }

    /// `POST` for work that takes longer than one answer should (an audit,
    /// a resolve that retries): waits up to `timeout`, or `--timeout` if
    /// that is longer.
    pub async fn post_within<B: Serialize, T: DeserializeOwned>(
        &self,
        who: &str,
        url: &str,
        body: &B,
        timeout: Duration,
    ) -> CtlResult<T> {
        let timeout = timeout.max(self.timeout);
        let req = self.http.post(url).json(body).timeout(timeout);
        self.send(who, req).await.map_err(|mut e| {
            if e.message.contains("no answer within") {
                e.message = format!("{who} is unreachable: no answer within {timeout:?}");
            }
            e
        })
    }

    /// `POST path` on the coordinator with the API key, as `post_within`.
    pub async fn post_coordinator<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> CtlResult<T> {
        let key = self.api_key.as_ref().ok_or_else(|| {
            CtlError::new(
                Exit::Usage,
                "calling the coordinator needs an API key with the admin scope: \
                 WALLET_API_KEY, --api-key-file (WALLET_API_KEY_FILE) or the manifest's api_key_file \
                 (`walletctl keys create --tenant ops --scopes admin`)",
            )
        })?;
        let who = format!("the coordinator at {}", self.coordinator);
        let timeout = timeout.max(self.timeout);
        let req = self
            .http
            .post(format!("{}{path}", self.coordinator))
            .bearer_auth(String::from_utf8_lossy(key.expose()))
            .json(body)
            .timeout(timeout);
        self.send(&who, req).await.map_err(|mut e| {
            if e.message.contains("no answer within") {
                e.message = format!("{who} is unreachable: no answer within {timeout:?}");
            }
            e
        })
    }

    /// `DELETE url`, the answer decoded.
    pub async fn delete<T: DeserializeOwned>(&self, who: &str, url: &str) -> CtlResult<T> {
        self.send(who, self.http.delete(url)).await
    }

    /// The base URL of `node` (no trailing `/`), or a clear error naming the
    /// known ones.
    pub fn node_url<'m>(&self, map: &'m PartitionMap, node: &str) -> CtlResult<&'m str> {
        map.url(node)
            .map(|u| u.trim_end_matches('/'))
            .ok_or_else(|| {
                let known: Vec<&str> = map.nodes.keys().map(String::as_str).collect();
                crate::error::not_found(format!(
                    "no node {node:?} in the map (nodes: {})",
                    known.join(", ")
                ))
            })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        who: &str,
        req: reqwest::RequestBuilder,
    ) -> CtlResult<T> {
        let resp = signing::send(self.cluster_secret.as_ref(), req)
            .await
            .map_err(|e| {
                let why = if e.is_timeout() {
                    format!("no answer within {:?}", self.timeout)
                } else {
                    e.to_string()
                };
                CtlError::new(Exit::Unreachable, format!("{who} is unreachable: {why}"))
            })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| {
            CtlError::new(
                Exit::Unreachable,
                format!("{who}: the answer was cut off: {e}"),
            )
        })?;
        if status.is_success() {
            let body = if body.is_empty() {
                &b"null"[..]
            } else {
                &body[..]
            };
            return serde_json::from_slice(body).map_err(|e| {
                CtlError::new(Exit::Failed, format!("{who}: unreadable answer: {e}"))
            });
        }
        Err(match serde_json::from_slice::<Rejection>(&body) {
            Ok(r) if r.code == ErrorCode::Unauthenticated && self.cluster_secret.is_none() => {
                let mut e = rejection(who, r);
                e.message += "; no cluster secret is configured (--cluster-secret-file)";
                e
            }
            Ok(r) => rejection(who, r),
            Err(_) => CtlError::new(
                if status.is_server_error() {
                    Exit::Unreachable
                } else {
                    Exit::Failed
                },
                format!(
                    "{who} answered HTTP {status}: {}",
                    String::from_utf8_lossy(&body)
                ),
            ),
        })
    }
}

/// A secret walletctl may be given inline (the environment variable
/// `name`) or as a file: the flag's, else, when neither is given, the
/// manifest's.
fn secret_setting(
    name: &str,
    inline: Option<String>,
    flag_file: Option<PathBuf>,
    manifest_file: Option<PathBuf>,
) -> CtlResult<Option<Secret>> {
    let inline = inline
        .map(|text| Secret::from_text(&text))
        .transpose()
        .map_err(|e| CtlError::new(Exit::Usage, format!("{name}: {e:#}")))?;
    let file = match (&inline, flag_file) {
        (None, None) => manifest_file,
        (_, file) => file,
    };
    wallet_shared::secret::resolve(name, inline.as_ref(), file.as_deref())
        .map_err(|e| CtlError::new(Exit::Usage, format!("{e:#}")))
}

fn rejection(who: &str, r: Rejection) -> CtlError {
    use ErrorCode::*;
    let exit = match r.code {
        AccountNotFound | TransferNotFound | NotFound => Exit::NotFound,
        InvalidRequest | InvalidAmount | InvalidCurrency | InvalidAccountId
        | InvalidTransactionId => Exit::Usage,
        Unavailable | Overloaded | Internal => Exit::Unreachable,
        InProgress | AccountExists | WrongPartitionOwner => Exit::Conflict,
        Unauthenticated | Forbidden => Exit::Usage,
        _ => Exit::Failed,
    };
    CtlError::new(exit, format!("{who}: {} ({})", r.message, r.code.as_str()))
}

fn read_manifest(path: &std::path::Path) -> CtlResult<Manifest> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            CtlError::new(
                Exit::Usage,
                format!("the manifest {} is not valid: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
        Err(e) => Err(CtlError::new(
            Exit::Usage,
            format!("cannot read the manifest {}: {e}", path.display()),
        )),
    }
}
