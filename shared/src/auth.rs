//! API keys: who may call the public API, for which tenant, with which
//! scopes.
//!
//! A key is `wk_<key_id>_<secret>`: the id names its record, so a lookup
//! needs no scan and an unknown id costs no hash. The record, in etcd under
//! [`keys_prefix`], holds the tenant, the scopes, an optional rate and the
//! HMAC-SHA256 of the secret keyed with the cluster secret, never the secret
//! itself: a copy of etcd (or of a backup) does not hold a usable key, and
//! without the cluster secret the hashes cannot even be tested offline.
//! etcd, because it is the cluster's own durable store that every
//! coordinator already reads and watches (the partition map): a revocation
//! reaches every coordinator within a watch event, with no database of its
//! own to run.

use std::fmt;

use chrono::{DateTime, Utc};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::map::MapStore;
use crate::secret::Secret;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Open the tenant's accounts, deposit and withdraw on them, move money
    /// out of them to any account.
    Transfer,
    /// Balances, events and transfer status of the tenant's own accounts.
    Read,
    /// Every account, the global change feed, resolving transfers.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Transfer, Scope::Read, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Transfer => "transfer",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// A comma-separated list (`transfer,read`), at least one.
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, String> {
        let mut scopes = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let scope = Scope::parse(part)
                .ok_or_else(|| format!("unknown scope {part:?}; known: transfer, read, admin"))?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        if scopes.is_empty() {
            return Err("at least one scope: transfer, read or admin".into());
        }
        scopes.sort();
        Ok(scopes)
    }
}

/// A tenant's name: 1 to 64 characters `[A-Za-z0-9_-]`, as an account id.
pub fn check_tenant(tenant: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&tenant.len())
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tenant {tenant:?} must be 1 to 64 characters [A-Za-z0-9_-]"
        ))
    }
}

/// A key as a caller presents it: `wk_<key_id>_<secret>`. Its `Debug`
/// shows the id only.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    secret: String,
}

/// Hex characters of a key id (64 bits) and of a secret (256 bits).
const ID_HEX: usize = 16;
const SECRET_HEX: usize = 64;

impl ApiKey {
    /// A new key: random id and secret from the OS.
    pub fn generate() -> ApiKey {
        ApiKey {
            id: random_hex(ID_HEX / 2),
            secret: random_hex(SECRET_HEX / 2),
        }
    }

    /// Parses `wk_<key_id>_<secret>`; `None` for anything else.
    pub fn parse(text: &str) -> Option<ApiKey> {
        let (id, secret) = text.strip_prefix("wk_")?.split_once('_')?;
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        (hex(id, ID_HEX) && hex(secret, SECRET_HEX)).then(|| ApiKey {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// The whole key, to hand to its owner once.
    pub fn reveal(&self) -> String {
        format!("wk_{}_{}", self.id, self.secret)
    }
}

/// HMAC-SHA256 keyed with the cluster secret, set up once (the key's
/// padding blocks already absorbed): hashing a key's secret costs two
/// compressions of SHA-256.
#[derive(Clone)]
pub struct KeyHasher(Hmac<Sha256>);

impl KeyHasher {
    pub fn new(cluster: &Secret) -> KeyHasher {
        KeyHasher(
            Hmac::<Sha256>::new_from_slice(cluster.expose())
                .expect("HMAC takes a key of any length"),
        )
    }

    /// The hash of the key's secret, as its record stores it.
    pub fn hash(&self, key: &ApiKey) -> [u8; 32] {
        let mut mac = self.0.clone();
        mac.update(key.secret.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether the key's secret hashes to `hash` (a constant-time compare).
    pub fn verify(&self, key: &ApiKey, hash: &[u8]) -> bool {
        let mut mac = self.0.clone();
        mac.update(key.secret.as_bytes());
        mac.verify_slice(hash).is_ok()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}, <redacted>)", self.id)
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS random source");
    hex(&buf)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A key's record in etcd (JSON). Never holds the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub key_id: String,
    pub tenant: String,
    pub scopes: Vec<Scope>,
    /// Requests per second this key may make (a token bucket with a burst
    /// of one second's worth); `None`: no limit.
    #[serde(default)]
    pub rate: Option<u32>,
    /// Hex HMAC-SHA256 of the secret, keyed with the cluster secret.
    pub hash: String,
    pub created_at: DateTime<Utc>,
    /// Set by `walletctl keys revoke`: from then on the key is refused.
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl KeyRecord {
    /// A new key for `tenant` and its record.
    pub fn create(
        cluster: &Secret,
        tenant: &str,
        scopes: Vec<Scope>,
        rate: Option<u32>,
    ) -> Result<(ApiKey, KeyRecord), String> {
        check_tenant(tenant)?;
        if scopes.is_empty() {
            return Err("a key needs at least one scope".into());
        }
        if rate == Some(0) {
            return Err("a rate must be at least 1 request per second".into());
        }
        let key = ApiKey::generate();
        let record = KeyRecord {
            key_id: key.id.clone(),
            tenant: tenant.to_string(),
            scopes,
            rate,
            hash: hex(&KeyHasher::new(cluster).hash(&key)),
            created_at: Utc::now(),
            revoked_at: None,
        };
        Ok((key, record))
    }
}

/// Where the keys live: beside the map's prefix, not under it, so reading
/// or watching the map never reads the keys (`/wallet/` -> `/wallet-auth/keys/`).
pub fn keys_prefix(etcd_prefix: &str) -> String {
    format!("{}-auth/keys/", etcd_prefix.trim_end_matches('/'))
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("key record {key}: {why}")]
    Invalid { key: String, why: String },
    #[error("no key {0}")]
    Unknown(String),
}

/// The keys in etcd: read all, add one, revoke one.
#[derive(Clone)]
pub struct KeyStore {
    store: MapStore,
    prefix: String,
}

impl KeyStore {
    pub fn new(store: MapStore) -> KeyStore {
        let prefix = keys_prefix(store.prefix());
        KeyStore { store, prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn client(&self) -> etcd_client::Client {
        self.store.client()
    }

    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, KeysError> {
        let t = self.store.timeout();
        Ok(tokio::time::timeout(t, f)
            .await
            .map_err(|_| KeysError::Timeout(t))??)
    }

    /// Every key record (revoked ones too), in key id order, and the etcd
    /// revision they were read at.
    pub async fn load(&self) -> Result<(Vec<KeyRecord>, i64), KeysError> {
        let mut client = self.client();
        let resp = self
            .bounded(client.get(self.prefix.as_str(), Some(GetOptions::new().with_prefix())))
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut records = Vec::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let record: KeyRecord =
                serde_json::from_slice(kv.value()).map_err(|e| KeysError::Invalid {
                    key: key.clone(),
                    why: e.to_string(),
                })?;
            records.push(record);
        }
        Ok((records, revision))
    }

    /// Stores a new record; refuses to overwrite one with the same id.
    pub async fn insert(&self, record: &KeyRecord) -> Result<(), KeysError> {
        let key = format!("{}{}", self.prefix, record.key_id);
        let value = serde_json::to_string(record).expect("a key record serializes");
        let txn = Txn::new()
            .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value, None)]);
        let mut client = self.client();
        let resp = self.bounded(client.txn(txn)).await?;
        if !resp.succeeded() {
            return Err(KeysError::Invalid {
                key,
                why: "a key with this id exists".into(),
            });
        }
        Ok(())
    }

    /// Marks the key revoked (kept, so `keys list` still shows who had it).
    /// Revoking a revoked key changes nothing.
    pub async fn revoke(&self, key_id: &str) -> Result<KeyRecord, KeysError> {
        let key = format!("{}{}", self.prefix, key_id);
        let mut client = self.client();
        let resp = self.bounded(client.get(key.as_str(), None)).await?;
        let Some(kv) = resp.kvs().first() else {
            return Err(KeysError::Unknown(key_id.to_string()));
        };
        let mut record: KeyRecord =
            serde_json::from_slice(kv.value()).map_err(|e| KeysError::Invalid {
                key: key.clone(),
                why: e.to_string(),
            })?;
        if record.revoked_at.is_none() {
            record.revoked_at = Some(Utc::now());
            let value = serde_json::to_string(&record).expect("a key record serializes");
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([TxnOp::put(key.as_str(), value, None)]);
            let resp = self.bounded(client.txn(txn)).await?;
            if !resp.succeeded() {
                return Err(KeysError::Invalid {
                    key,
                    why: "changed while being revoked; try again".into(),
                });
            }
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Secret {
        Secret::from_text("0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn a_key_round_trips_and_verifies_only_with_its_secret() {
        let (key, record) =
            KeyRecord::create(&cluster(), "acme", vec![Scope::Read], Some(5)).unwrap();
        let text = key.reveal();
        assert!(text.starts_with(&format!("wk_{}_", record.key_id)));
        let parsed = ApiKey::parse(&text).unwrap();
        assert_eq!(parsed, key);
        let hash = unhex(&record.hash).unwrap();
        let hasher = KeyHasher::new(&cluster());
        assert!(hasher.verify(&parsed, &hash));
        let other = Secret::from_text("another-cluster-secret-0123456789abcdef").unwrap();
        assert!(!KeyHasher::new(&other).verify(&parsed, &hash));
        let forged = ApiKey::parse(&format!("wk_{}_{}", key.id, "0".repeat(64))).unwrap();
        assert!(!hasher.verify(&forged, &hash));
        assert!(!record.hash.contains(&text[20..]));
        assert!(!format!("{key:?}").contains(&text[20..]));
    }

    #[test]
    fn malformed_keys_and_scopes_are_refused() {
        for bad in [
            "",
            "wk_",
            "wk_abc_def",
            "Bearer x",
            &format!("wk_{}", "a".repeat(81)),
        ] {
            assert!(ApiKey::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(
            Scope::parse_list("read, transfer,read").unwrap(),
            vec![Scope::Transfer, Scope::Read]
        );
        assert!(Scope::parse_list("").is_err());
        assert!(Scope::parse_list("write").is_err());
        assert!(check_tenant("a b").is_err());
        assert_eq!(keys_prefix("/wallet/"), "/wallet-auth/keys/");
    }
}
