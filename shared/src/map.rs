//! The partition map: which node owns each partition, and where each node
//! listens. It lives in etcd under one prefix (default `/wallet/`):
//!
//! ```text
//! {prefix}partition_count       -> "64"
//! {prefix}nodes/{node_id}       -> "http://127.0.0.1:7001"
//! {prefix}partitions/{p:05}     -> "{node_id}"
//! {prefix}epoch                 -> bumped by every change after the first map
//! {prefix}moves/{p:05}          -> {"from":..,"to":..,"phase":..} while a move runs
//! ```
//!
//! A map read from etcd carries the etcd revision it was read at. Every
//! coordinator-to-participant request carries that revision, so a participant
//! that has seen an older map first catches up, then refuses a partition it
//! does not own (`wrong_partition_owner`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::ids::{AccountId, TransactionId};
use crate::partition::{account_partition, decision_partition, PartitionId};
use crate::retry;

pub type NodeId = String;

/// How a service reaches etcd beyond its endpoints, by configuration: TLS
/// (`etcd_ca_file`: the CA that signed etcd's certificate, with `https://`
/// endpoints; `etcd_cert_file`/`etcd_key_file`: a client certificate, for
/// an etcd with `--client-cert-auth`) and a user (`etcd_user`, its password
/// read from `etcd_password_file`). Nothing set: plain, anonymous.
#[derive(Clone, Default)]
pub struct EtcdAccess {
    tls: Option<etcd_client::TlsOptions>,
    user: Option<(String, crate::secret::Secret)>,
}

impl EtcdAccess {
    /// From the settings of that name (paths), reading the files now.
    pub fn from_settings(
        ca_file: Option<&std::path::Path>,
        cert_file: Option<&std::path::Path>,
        key_file: Option<&std::path::Path>,
        user: Option<&str>,
        password_file: Option<&std::path::Path>,
    ) -> anyhow::Result<EtcdAccess> {
        use anyhow::Context;
        let read = |p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))
        };
        let tls = match (ca_file, cert_file, key_file) {
            (None, None, None) => None,
            (ca, cert, key) => {
                let mut tls = etcd_client::TlsOptions::new();
                if let Some(ca) = ca {
                    tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
                }
                match (cert, key) {
                    (Some(cert), Some(key)) => {
                        tls =
                            tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
                    }
                    (None, None) => {}
                    _ => anyhow::bail!("etcd_cert_file and etcd_key_file go together"),
                }
                Some(tls)
            }
        };
        let user = match (user, password_file) {
            (Some(user), Some(file)) => Some((
                user.to_string(),
                crate::secret::Secret::from_password_file(file)?,
            )),
            (None, None) => None,
            _ => anyhow::bail!("etcd_user and etcd_password_file go together"),
        };
        Ok(EtcdAccess { tls, user })
    }
}

impl std::fmt::Debug for EtcdAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAccess")
            .field("tls", &self.tls.is_some())
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("no partition map under {0:?} in etcd yet")]
    Missing(String),
    #[error("partition map under {prefix:?} is invalid: {why}")]
    Invalid { prefix: String, why: String },
    #[error("a partition map already exists under {0:?}")]
    AlreadyExists(String),
    #[error("the partition map changed since revision {0}; read it again and retry")]
    Changed(i64),
}

/// One consistent reading of the map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMap {
    /// etcd revision this reading reflects; newer readings have larger ones.
    pub revision: i64,
    /// Owner of each partition, indexed by partition number.
    pub owners: Vec<NodeId>,
    /// Base URL of each node.
    pub nodes: BTreeMap<NodeId, String>,
    /// Partition moves under way (`walletctl partitions move`).
    #[serde(default)]
    pub moves: BTreeMap<PartitionId, Move>,
}

/// A partition move, as recorded in etcd while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub from: NodeId,
    pub to: NodeId,
    pub phase: MovePhase,
    /// RFC 3339, when the move started; with `from` and `to`, it names the
    /// move (the new owner's copy belongs to it).
    pub started_at: String,
    /// RFC 3339, when the cut-over (phase `moving`) began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutover_at: Option<String>,
    /// Cut-overs that overran their deadline and were rolled back.
    #[serde(default)]
    pub rollbacks: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MovePhase {
    /// The partition is being copied while its old owner serves it as
    /// usual; nothing waits.
    Copying,
    /// The cut-over: the old owner still owns the partition, but no longer
    /// changes it; new work on it waits. It has a deadline, past which the
    /// old owner rolls it back to `copying` and serves the partition again.
    Moving,
    /// The new owner owns it; the old owner's copy is still to be dropped.
    Switched,
    /// Being undone (`--abort`): the old owner keeps the partition.
    Aborting,
}

impl PartitionMap {
    pub fn partition_count(&self) -> u32 {
        self.owners.len() as u32
    }

    pub fn account_partition(&self, account: &AccountId) -> PartitionId {
        account_partition(account, self.partition_count())
    }

    pub fn decision_partition(&self, id: TransactionId) -> PartitionId {
        decision_partition(id, self.partition_count())
    }

    pub fn owner(&self, partition: PartitionId) -> Option<&NodeId> {
        self.owners.get(partition as usize)
    }

    pub fn url(&self, node: &str) -> Option<&str> {
        self.nodes.get(node).map(String::as_str)
    }

    /// The partitions `node` owns, in order.
    pub fn partitions_of(&self, node: &str) -> Vec<PartitionId> {
        (0..self.partition_count())
            .filter(|&p| self.owners[p as usize] == node)
            .collect()
    }

    /// The partition is in a move's cut-over (or a move is being undone)
    /// and its new owner does not own it yet: new work on it should wait.
    /// A partition that is only being copied serves as usual.
    pub fn is_moving(&self, partition: PartitionId) -> bool {
        self.moves
            .get(&partition)
            .is_some_and(|m| matches!(m.phase, MovePhase::Moving | MovePhase::Aborting))
    }

    /// Builds a map from the key-values found under `prefix`.
    fn from_kvs<'a>(
        prefix: &str,
        revision: i64,
        kvs: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, MapError> {
        let invalid = |why: String| MapError::Invalid {
            prefix: prefix.to_string(),
            why,
        };
        let mut count: Option<u32> = None;
        let mut nodes = BTreeMap::new();
        let mut owners = BTreeMap::new();
        let mut moves = BTreeMap::new();
        for (key, value) in kvs {
            let Some(rest) = key.strip_prefix(prefix) else {
                continue;
            };
            if rest == "partition_count" {
                count = Some(
                    value
                        .parse()
                        .map_err(|_| invalid(format!("partition_count {value:?}")))?,
                );
            } else if let Some(node) = rest.strip_prefix("nodes/") {
                nodes.insert(node.to_string(), value.to_string());
            } else if let Some(p) = rest.strip_prefix("partitions/") {
                let p: u32 = p
                    .parse()
                    .map_err(|_| invalid(format!("partition key {key:?}")))?;
                owners.insert(p, value.to_string());
            } else if let Some(p) = rest.strip_prefix("moves/") {
                let p: u32 = p
                    .parse()
                    .map_err(|_| invalid(format!("move key {key:?}")))?;
                let m: Move = serde_json::from_str(value)
                    .map_err(|e| invalid(format!("move {key:?}: {e}")))?;
                moves.insert(p, m);
            }
        }
        let Some(count) = count else {
            return Err(MapError::Missing(prefix.to_string()));
        };
        if count == 0 {
            // Every account would be in partition `hash % 0`.
            return Err(invalid(
                "partition_count is 0; a map needs at least one partition".into(),
            ));
        }
        if count as usize > owners.len() {
            // Named before anything is allocated for it: a count of four
            // billion must not cost memory.
            let p = (0..count).find(|p| !owners.contains_key(p)).unwrap_or(0);
            return Err(invalid(format!(
                "partition_count is {count} but partition {p} has no owner"
            )));
        }
        let mut list = Vec::with_capacity(count as usize);
        for p in 0..count {
            let owner = owners
                .remove(&p)
                .ok_or_else(|| invalid(format!("partition {p} has no owner")))?;
            if !nodes.contains_key(&owner) {
                return Err(invalid(format!(
                    "partition {p} is owned by unknown node {owner:?}"
                )));
            }
            list.push(owner);
        }
        if let Some((p, _)) = owners.into_iter().next() {
            return Err(invalid(format!(
                "partition {p} is beyond partition_count {count}"
            )));
        }
        if let Some((p, _)) = moves.range(count..).next() {
            return Err(invalid(format!(
                "move of partition {p} beyond partition_count {count}"
            )));
        }
        Ok(PartitionMap {
            revision,
            owners: list,
            nodes,
            moves,
        })
    }
}

/// The etcd side of the map: read, write the first one, follow changes.
#[derive(Clone)]
pub struct MapStore {
    client: Client,
    prefix: String,
    timeout: Duration,
}

impl MapStore {
    /// Plain and anonymous: [`MapStore::connect_with`] a default access.
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, MapError> {
        Self::connect_with(endpoints, &EtcdAccess::default(), prefix, timeout).await
    }

    /// The one way anything connects to etcd.
    pub async fn connect_with(
        endpoints: &[String],
        access: &EtcdAccess,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, MapError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        if let Some(tls) = &access.tls {
            options = options.with_tls(tls.clone());
        }
        if let Some((user, password)) = &access.user {
            let password = String::from_utf8_lossy(password.expose()).into_owned();
            options = options.with_user(user.clone(), password);
        }
        let client = tokio::time::timeout(timeout, Client::connect(endpoints, Some(options)))
            .await
            .map_err(|_| MapError::Timeout(timeout))??;
        Ok(MapStore {
            client,
            prefix: prefix.to_string(),
            timeout,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The etcd client, for the cluster's other records beside the map
    /// (the API keys, see `auth`).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The bound on each etcd call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Reads the whole map in one etcd read (one revision).
    pub async fn load(&self) -> Result<PartitionMap, MapError> {
        let mut client = self.client.clone();
        let resp = tokio::time::timeout(
            self.timeout,
            client.get(self.prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await
        .map_err(|_| MapError::Timeout(self.timeout))??;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let kvs = resp
            .kvs()
            .iter()
            .filter_map(|kv| Some((kv.key_str().ok()?, kv.value_str().ok()?)));
        PartitionMap::from_kvs(&self.prefix, revision, kvs)
    }

    /// Writes a first map that spreads `partition_count` partitions
    /// round-robin over `nodes`. Refuses if a map exists, unless `force`.
    ///
    /// etcd takes at most 128 operations per transaction, so the owners go in
    /// chunks and `partition_count` last, with a compare-and-set: until that
    /// key exists there is no map to read, so no reader sees half of one.
    /// With `force`, the old map is deleted first (readers see no map until
    /// the new one is complete).
    pub async fn init(
        &self,
        partition_count: u32,
        nodes: &[(NodeId, String)],
        force: bool,
    ) -> Result<PartitionMap, MapError> {
        if nodes.is_empty() || partition_count == 0 {
            return Err(MapError::Invalid {
                prefix: self.prefix.clone(),
                why: "a map needs at least one node and one partition".into(),
            });
        }
        let mut client = self.client.clone();
        let count_key = format!("{}partition_count", self.prefix);
        if force {
            let delete = client.delete(
                self.prefix.as_str(),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            );
            tokio::time::timeout(self.timeout, delete)
                .await
                .map_err(|_| MapError::Timeout(self.timeout))??;
        } else {
            let existing = client.get(count_key.as_str(), None);
            let existing = tokio::time::timeout(self.timeout, existing)
                .await
                .map_err(|_| MapError::Timeout(self.timeout))??;
            if !existing.kvs().is_empty() {
                return Err(MapError::AlreadyExists(self.prefix.clone()));
            }
        }
        let mut puts: Vec<(String, String)> = nodes
            .iter()
            .map(|(id, url)| (format!("{}nodes/{id}", self.prefix), url.clone()))
            .collect();
        puts.extend((0..partition_count).map(|p| {
            let (owner, _) = &nodes[p as usize % nodes.len()];
            (format!("{}partitions/{p:05}", self.prefix), owner.clone())
        }));
        for chunk in puts.chunks(100) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
                .collect();
            let txn = client.txn(Txn::new().and_then(ops));
            tokio::time::timeout(self.timeout, txn)
                .await
                .map_err(|_| MapError::Timeout(self.timeout))??;
        }
        // `epoch` goes with it: a change prepared against a reading of the
        // map this one replaces (`update` with an older `read_at`) then
        // fails its compare-and-set instead of landing on the new map.
        let epoch_key = format!("{}epoch", self.prefix);
        let txn = Txn::new()
            .when([Compare::version(count_key.as_str(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(count_key.as_str(), partition_count.to_string(), None),
                TxnOp::put(epoch_key.as_str(), "0", None),
            ]);
        let resp = tokio::time::timeout(self.timeout, client.txn(txn))
            .await
            .map_err(|_| MapError::Timeout(self.timeout))??;
        if !resp.succeeded() {
            return Err(MapError::AlreadyExists(self.prefix.clone()));
        }
        self.load().await
    }

    /// Changes the map, if it has not changed since the reading at
    /// `read_at` (a compare-and-set on the map revision): writes `puts`,
    /// deletes `deletes` (keys relative to the prefix) and bumps `epoch`, all
    /// in one etcd transaction. Returns the map as it is afterwards.
    pub async fn update(
        &self,
        read_at: i64,
        puts: &[(String, String)],
        deletes: &[String],
    ) -> Result<PartitionMap, MapError> {
        let key = |k: &str| format!("{}{k}", self.prefix);
        let epoch = key("epoch");
        let mut ops: Vec<TxnOp> = puts
            .iter()
            .map(|(k, v)| TxnOp::put(key(k), v.as_str(), None))
            .collect();
        ops.extend(deletes.iter().map(|k| TxnOp::delete(key(k), None)));
        ops.push(TxnOp::put(epoch.as_str(), read_at.to_string(), None));
        // Every change bumps `epoch`, so "epoch not modified after read_at"
        // means "nothing in the map changed since read_at".
        let txn = Txn::new()
            .when([Compare::mod_revision(
                epoch.as_str(),
                CompareOp::Less,
                read_at + 1,
            )])
            .and_then(ops);
        let mut client = self.client.clone();
        let resp = tokio::time::timeout(self.timeout, client.txn(txn))
            .await
            .map_err(|_| MapError::Timeout(self.timeout))??;
        if !resp.succeeded() {
            return Err(MapError::Changed(read_at));
        }
        self.load().await
    }

    /// Waits for a valid map (bounded retries with backoff), then follows etcd
    /// with a watch, so [`MapHandle::current`] is at most one event behind.
    /// An invalid map is not waited for: a service refuses to start on one,
    /// naming what is wrong with it. A running service that reads one keeps
    /// the last valid map, logs the error and reports itself unready.
    pub async fn follow(self) -> Result<MapHandle, MapError> {
        let first = retry::when(
            "load partition map",
            retry::Policy::startup(),
            || self.load(),
            |e| !matches!(e, MapError::Invalid { .. }),
        )
        .await?;
        let handle = MapHandle::holding(first, Some(Arc::new(self)));
        tokio::spawn(handle.clone().watch_loop());
        Ok(handle)
    }
}

/// What every service does at start: connect to etcd (waiting for it, with
/// bounded retries), then follow the map.
pub async fn follow_map(
    endpoints: &[String],
    access: &EtcdAccess,
    prefix: &str,
    timeout: Duration,
) -> Result<MapHandle, MapError> {
    let store = retry::with_backoff("connect to etcd", retry::Policy::startup(), || {
        MapStore::connect_with(endpoints, access, prefix, timeout)
    })
    .await?;
    store.follow().await
}

/// A shared, always-current view of the map.
#[derive(Clone)]
pub struct MapHandle {
    /// Where the map is read from; `None` for a fixed map. Shared: an etcd
    /// client is about 3.5 KB, and every request's handler holds a clone of
    /// this handle (in its service's state).
    store: Option<Arc<MapStore>>,
    /// The newest map seen; readers clone it without asking etcd.
    held: Arc<std::sync::RwLock<Arc<PartitionMap>>>,
    /// Rings each time a newer map is held. A `Notify` wakes its waiters
    /// in the order they began to wait (a `tokio::sync::watch` wakes them
    /// in a random order), so the deterministic simulation replays.
    newer: Arc<Notify>,
    /// When etcd last confirmed the map we hold (a read of it succeeded):
    /// how stale it may be, for `/metrics` and `/readyz`.
    confirmed: Arc<std::sync::Mutex<std::time::Instant>>,
}

impl MapHandle {
    /// A map that never changes, with no etcd behind it (the deterministic
    /// simulation's).
    pub fn fixed(map: PartitionMap) -> Self {
        Self::holding(map, None)
    }

    fn holding(map: PartitionMap, store: Option<Arc<MapStore>>) -> Self {
        MapHandle {
            store,
            held: Arc::new(std::sync::RwLock::new(Arc::new(map))),
            newer: Arc::new(Notify::new()),
            confirmed: Arc::new(std::sync::Mutex::new(std::time::Instant::now())),
        }
    }

    pub fn current(&self) -> Arc<PartitionMap> {
        self.held.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Holds `map` from now on if it is newer than the one held: the
    /// deterministic simulation's etcd, for a map it changes (a partition
    /// move). Every clone of this handle sees it at once.
    pub fn replace(&self, map: PartitionMap) {
        {
            let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
            if map.revision <= held.revision {
                return;
            }
            *held = Arc::new(map);
        }
        self.newer.notify_waiters();
    }

    /// Waits until a map newer than `revision` is held, and answers it.
    pub async fn newer_than(&self, revision: i64) -> Arc<PartitionMap> {
        loop {
            let rang = self.newer.notified();
            tokio::pin!(rang);
            // Waiting from here: a map held after this check rings it.
            rang.as_mut().enable();
            let map = self.current();
            if map.revision > revision {
                return map;
            }
            rang.await;
        }
    }

    /// The etcd side, to change the map (`None` for a fixed map).
    pub fn store(&self) -> Option<&MapStore> {
        self.store.as_deref()
    }

    /// Re-reads etcd now. Used when a peer shows a newer revision than ours.
    pub async fn refresh(&self) -> Result<Arc<PartitionMap>, MapError> {
        let Some(store) = &self.store else {
            return Ok(self.current());
        };
        let fresh = store.load().await?;
        *self.confirmed.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
        self.replace(fresh);
        Ok(self.current())
    }

    /// Makes sure our map is at least as new as `revision`.
    pub async fn at_least(&self, revision: i64) -> Result<Arc<PartitionMap>, MapError> {
        let cur = self.current();
        if cur.revision >= revision {
            return Ok(cur);
        }
        self.refresh().await
    }

    /// How long ago etcd last confirmed the map we hold (zero for a fixed
    /// map). The watch re-reads the map at least every 5 s while etcd
    /// answers, so a larger age means etcd has not been reachable.
    pub fn age(&self) -> Duration {
        if self.store.is_none() {
            return Duration::ZERO;
        }
        self.confirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    async fn watch_loop(self) {
        let Some(store) = self.store.clone() else {
            return;
        };
        // A watch can break (etcd restart, network cut); each time, re-read
        // the map and watch again from the revision we have. A periodic
        // refresh covers whatever a broken watch missed.
        let mut backoff = retry::Policy::background().backoff();
        loop {
            let from = self.current().revision + 1;
            let mut client = store.client.clone();
            let opts = WatchOptions::new().with_prefix().with_start_revision(from);
            match client.watch(store.prefix.as_str(), Some(opts)).await {
                Ok(mut stream) => loop {
                    match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                        Ok(Ok(Some(resp))) if !resp.events().is_empty() => {
                            if let Err(e) = self.refresh().await {
                                tracing::warn!(error = %e, "partition map refresh failed");
                            }
                        }
                        Ok(Ok(Some(_))) => {}
                        Err(_) => {
                            if let Err(e) = self.refresh().await {
                                tracing::warn!(error = %e, "partition map refresh failed");
                                break;
                            }
                        }
                        Ok(Ok(None)) | Ok(Err(_)) => break,
                    }
                },
                Err(e) => tracing::warn!(error = %e, "cannot watch the partition map"),
            }
            tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(2))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_needs_every_partition_owned_by_a_known_node() {
        let kvs = [
            ("/w/partition_count", "2"),
            ("/w/nodes/a", "http://a"),
            ("/w/partitions/00000", "a"),
            ("/w/partitions/00001", "a"),
        ];
        let map = PartitionMap::from_kvs("/w/", 7, kvs.iter().copied()).unwrap();
        assert_eq!(map.owners, vec!["a", "a"]);
        assert_eq!(map.revision, 7);
        assert_eq!(map.url("a"), Some("http://a"));

        let missing = PartitionMap::from_kvs("/w/", 7, kvs[..3].iter().copied());
        assert!(matches!(missing, Err(MapError::Invalid { .. })));
        let unknown = [("/w/partition_count", "1"), ("/w/partitions/00000", "b")];
        assert!(matches!(
            PartitionMap::from_kvs("/w/", 1, unknown.iter().copied()),
            Err(MapError::Invalid { .. })
        ));
        assert!(matches!(
            PartitionMap::from_kvs("/w/", 1, std::iter::empty()),
            Err(MapError::Missing(_))
        ));
    }

    #[test]
    fn a_map_of_no_partitions_or_of_more_than_its_owners_is_invalid() {
        for (count, why) in [
            ("0", "partition_count is 0"),
            ("4294967295", "partition 1 has no owner"),
            ("-1", "partition_count \"-1\""),
            ("many", "partition_count \"many\""),
        ] {
            let kvs = [
                ("/w/partition_count", count),
                ("/w/nodes/a", "http://a"),
                ("/w/partitions/00000", "a"),
            ];
            match PartitionMap::from_kvs("/w/", 3, kvs.iter().copied()) {
                Err(e @ MapError::Invalid { .. }) => {
                    assert!(e.to_string().contains(why), "{count}: {e}")
                }
                other => panic!("{count}: {other:?}"),
            }
        }
    }

    fn map_at(revision: i64) -> PartitionMap {
        PartitionMap {
            revision,
            owners: vec!["a".into()],
            nodes: BTreeMap::from([("a".into(), "http://a".into())]),
            moves: BTreeMap::new(),
        }
    }

    /// Those who wait for a newer map wake in the order they began to
    /// wait, every run: the simulation's replay depends on it (a
    /// `tokio::sync::watch` woke them in a random order).
    #[test]
    fn waiters_for_a_newer_map_wake_in_the_order_they_came() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let handle = MapHandle::fixed(map_at(1));
            let woke = Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut tasks = Vec::new();
            for i in 0..64 {
                let (handle, woke) = (handle.clone(), woke.clone());
                tasks.push(tokio::spawn(async move {
                    let map = handle.newer_than(1).await;
                    woke.lock().unwrap().push((i, map.revision));
                }));
                // Each one waiting before the next starts.
                tokio::task::yield_now().await;
            }
            handle.replace(map_at(1));
            tokio::task::yield_now().await;
            assert!(woke.lock().unwrap().is_empty(), "not newer: nobody wakes");
            handle.replace(map_at(2));
            for t in tasks {
                t.await.unwrap();
            }
            let woke = woke.lock().unwrap().clone();
            assert_eq!(woke, (0..64).map(|i| (i, 2)).collect::<Vec<_>>());
            // Newer already held: no wait at all.
            assert_eq!(handle.newer_than(1).await.revision, 2);
        });
    }
}
