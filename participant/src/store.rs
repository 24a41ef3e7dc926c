//! What the participant needs from its storage. Production uses Postgres
//! ([`crate::pg::PgStore`]); the deterministic simulation plugs in an
//! in-memory store. Both run the same rules on the same [`Working`] set.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use wallet_shared::admin::{AuditRequest, Discarded, Fence, NodeAudit, PartitionStats};
use wallet_shared::protocol::{Event, EventKind, FeedEntry, Snapshot, TransferRecord};
use wallet_shared::{retry, AccountId, PartitionId, TransactionId};

use crate::error::StoreError;
use crate::fence::FenceMap;
use crate::model::{AccountRow, Broken, Keys, LegRow, TransferRow, Working};

/// What `/metrics` and `/readyz` read of the node's database: the work left
/// unfinished here and the connection pool. Reading it at all proves the
/// database answers.
#[derive(Debug, Clone, Default)]
pub struct Vitals {
    /// Decision records here not completed yet (undecided, or decided with
    /// a leg still to apply): the in-doubt transfers.
    pub open_records: i64,
    /// When the oldest of them began.
    pub oldest_record: Option<DateTime<Utc>>,
    /// Transfer legs here still prepared (funds held or credits pending).
    pub prepared_legs: i64,
    /// When the oldest of them was prepared.
    pub oldest_leg: Option<DateTime<Utc>>,
    /// The last position the change feed handed out.
    pub feed_head: i64,
    /// The last position pruned from the outbox.
    pub feed_pruned_through: i64,
    /// The smallest position a registered feed consumer acknowledged
    /// (none registered: the outbox is not pruned).
    pub feed_slowest_consumer: Option<i64>,
    /// Connections: in use, idle, the most the pool opens, and the acquires
    /// waiting for one (Postgres only).
    pub pool: Option<PoolStats>,
}

/// A connection pool's state.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStats {
    pub in_use: u32,
    pub idle: u32,
    pub max: u32,
    /// Acquires of a connection in progress: work waiting for the pool.
    pub waiting: u32,
}

/// Whether a local transaction's commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// On disk before the answer: votes (prepares), decisions and their
    /// dedup records, one-transaction transfers, deposits and withdrawals.
    #[default]
    Flushed,
    /// Phase two (a leg's commit or abort, `complete`): its effect follows
    /// from a decision already on disk, and recovery redoes it if a crash
    /// loses it (a leg still prepared, a record not complete), so its
    /// commit does not wait for the disk (Postgres's
    /// `synchronous_commit = off`). The log is one sequence: the next
    /// flushed commit flushes it too, so nothing that read its writes and
    /// was flushed can outlive it. Visible to every reader at once.
    Redo,
}

pub trait Store: Clone + Send + Sync + 'static {
    /// One attempt at a local transaction: load and lock the rows `keys`
    /// names (and the accounts of the loaded legs) into a [`Working`] set,
    /// run `rules` on it, write back what changed and commit with
    /// `durability`; or change nothing at all.
    fn attempt<T, F>(
        &self,
        keys: &Keys,
        durability: Durability,
        rules: &F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send
    where
        T: Send,
        F: Fn(&mut Working) -> Result<T, Broken> + Send + Sync;

    /// A transfer's decision record.
    fn lookup(
        &self,
        id: TransactionId,
    ) -> impl Future<Output = Result<Option<TransferRecord>, StoreError>> + Send;

    /// Recovery's work here (see [`crate::model::needs_recovery`] and
    /// [`crate::model::is_stale_prepared`]), oldest first, at most `limit` of each.
    fn unresolved(
        &self,
        grace: Duration,
        limit: i64,
    ) -> impl Future<Output = Result<(Vec<TransferRow>, Vec<LegRow>), StoreError>> + Send;

    fn account(
        &self,
        id: &AccountId,
    ) -> impl Future<Output = Result<Option<AccountRow>, StoreError>> + Send;

    /// Events with `seq > after`, oldest first, at most `limit`, only those
    /// at or before `until` when given, and only of `kinds` unless empty.
    fn events(
        &self,
        id: &AccountId,
        after: i64,
        limit: i64,
        until: Option<DateTime<Utc>>,
        kinds: &[EventKind],
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;

    /// The account's newest snapshot at or before `as_of`, and the sequence
    /// number of the one after it (the fold from the first needs no event
    /// beyond the second).
    fn snapshot_at(
        &self,
        id: &AccountId,
        as_of: DateTime<Utc>,
    ) -> impl Future<Output = Result<(Option<Snapshot>, Option<i64>), StoreError>> + Send;

    /// Every snapshot of the account, oldest first.
    fn snapshots(
        &self,
        id: &AccountId,
    ) -> impl Future<Output = Result<Vec<Snapshot>, StoreError>> + Send;

    /// Accounts in id order after `after`, at most `limit`.
    fn accounts_after(
        &self,
        after: Option<&AccountId>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<AccountRow>, StoreError>> + Send;

    /// Published feed entries with positions after `after`, in order, at
    /// most `limit`; and the last position handed out so far.
    fn feed(
        &self,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<(Vec<FeedEntry>, i64), StoreError>> + Send;

    /// Everything unfinished in `partitions`, oldest first, at most `limit`
    /// of each: decision records not completed (undecided ones too, lease or
    /// no lease), and transfer legs still prepared (`walletctl tx pending`).
    fn in_doubt(
        &self,
        partitions: &[PartitionId],
        limit: i64,
    ) -> impl Future<Output = Result<(Vec<TransferRow>, Vec<LegRow>), StoreError>> + Send;

    /// Every leg stored here under this transaction id.
    fn legs_of(
        &self,
        id: TransactionId,
    ) -> impl Future<Output = Result<Vec<LegRow>, StoreError>> + Send;

    /// The at-rest checks of `walletctl audit` over `req.partitions`.
    /// Postgres runs them set-based; a store without them says so.
    fn audit(
        &self,
        req: &AuditRequest,
    ) -> impl Future<Output = Result<NodeAudit, StoreError>> + Send {
        let _ = req;
        async {
            Err(StoreError::Unsupported(
                "this store does not run the audit".into(),
            ))
        }
    }

    /// Unfinished work and the pool ([`Vitals`]). A store without them says so.
    fn vitals(&self) -> impl Future<Output = Result<Vitals, StoreError>> + Send {
        async {
            Err(StoreError::Unsupported(
                "this store does not report vitals".into(),
            ))
        }
    }

    /// What this node holds of each partition it has rows for, by partition.
    fn partition_stats(
        &self,
    ) -> impl Future<Output = Result<Vec<PartitionStats>, StoreError>> + Send;

    /// This node's clock: a fence's deadline is set from it and held to
    /// it (the simulation's store has a clock of its own).
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    /// The partition fences saved here: a fence outlives the process, so a
    /// node reads them before it serves.
    fn fences(&self) -> impl Future<Output = Result<FenceMap, StoreError>> + Send;

    /// Saves partition `p`'s fence, or lifts it (`None`); flushed before it
    /// answers. The caller holds the fences' write guard and changes its
    /// map after this succeeds.
    fn save_fence(
        &self,
        p: PartitionId,
        fence: Option<Fence>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Drops this node's rows of partition `p` (and the state of a copy of
    /// it), for about `budget`; `done` once none is left. The caller has
    /// checked that this node neither owns nor is moving `p` away.
    fn discard(
        &self,
        p: PartitionId,
        budget: Duration,
    ) -> impl Future<Output = Result<Discarded, StoreError>> + Send;

    /// The one way to run a local transaction: retried (bounded, with
    /// backoff) on deadlocks, conflicting inserts and lost connections. The
    /// rules run again on fresh rows, so a retry is always consistent.
    /// Flushed to disk before it answers.
    fn transaction<T, F>(
        &self,
        what: &'static str,
        keys: Keys,
        rules: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send
    where
        T: Send,
        F: Fn(&mut Working) -> Result<T, Broken> + Send + Sync,
    {
        self.transaction_with(what, keys, Durability::Flushed, rules)
    }

    /// [`Store::transaction`] with the given durability.
    fn transaction_with<T, F>(
        &self,
        what: &'static str,
        keys: Keys,
        durability: Durability,
        rules: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send
    where
        T: Send,
        F: Fn(&mut Working) -> Result<T, Broken> + Send + Sync,
    {
        async move {
            let (keys, rules) = (&keys, &rules);
            retry::when(
                what,
                retry::Policy::request(),
                || self.attempt(keys, durability, rules),
                StoreError::is_transient,
            )
            .await
        }
    }

    /// Applies `step` to every item in one transaction, committed with
    /// `durability`, and answers in request order.
    fn batch<I, T>(
        &self,
        what: &'static str,
        items: &[I],
        durability: Durability,
        keys: impl Fn(&I) -> Keys,
        step: fn(&mut Working, &I) -> Result<T, Broken>,
    ) -> impl Future<Output = Result<Vec<T>, StoreError>> + Send
    where
        I: Sync,
        T: Send,
    {
        let mut all = Keys::default();
        for item in items {
            let k = keys(item);
            all.transfers.extend(k.transfers);
            all.legs.extend(k.legs);
            all.accounts.extend(k.accounts);
        }
        self.transaction_with(what, all, durability, move |w| {
            items.iter().map(|item| step(w, item)).collect()
        })
    }
}
