//! What the participant needs from its storage. Production uses Postgres
//! ([`crate::pg::PgStore`]); the deterministic simulation plugs in an
//! in-memory store. Both run the same rules on the same [`Working`] set.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use wallet_shared::admin::{
    AccountsSummary, AuditRequest, CopyState, Discarded, Fence, NodeAudit, PartitionStats,
    RowsChunk, PARTITION_TABLES,
};
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

    /// What a move reads of partition `p` here ([`PartitionRead`]); each
    /// read sees what is committed when it runs.
    type PartitionRead: PartitionRead;

    /// A move's writes of its copy here ([`CopyWrite`]).
    type CopyWrite: CopyWrite;

    /// Starts a read of partition `p`, its statements limited as `span` says.
    fn read_partition(
        &self,
        p: PartitionId,
        span: ReadSpan,
    ) -> impl Future<Output = Result<Self::PartitionRead, StoreError>> + Send;

    /// Starts a read of partition `p` in one snapshot, taken at a quiet
    /// point: the snapshot is begun, then `quiet` is awaited (the fences'
    /// write guard, which waits until no request is between its fence
    /// check and its commit), then the snapshot is taken with its first
    /// read, the last change number handed out, and the guard is let go.
    /// So every change numbered up to that number is in the snapshot, and
    /// every later one is numbered above it. And all of them are on disk
    /// before the read ends: a commit that does not wait for the disk
    /// ([`Durability::Redo`]) is visible before it is flushed, and a copy
    /// that carried it to the new owner before a crash of this database
    /// lost it would hold what the old owner no longer has (and the
    /// changes numbered anew after the crash could hide under its cursor).
    /// A chunk bounded by a mark reads only changes up to it, so they are
    /// on disk too. Answers the read and the number.
    fn read_partition_quiet<G: Send>(
        &self,
        p: PartitionId,
        span: ReadSpan,
        quiet: impl Future<Output = G> + Send,
    ) -> impl Future<Output = Result<(Self::PartitionRead, i64), StoreError>> + Send;

    /// The copy of partition `p` started here, if any (`partition_copies`).
    fn copy_state(
        &self,
        p: PartitionId,
    ) -> impl Future<Output = Result<Option<CopyState>, StoreError>> + Send;

    /// Whether this node holds any account, leg or decision record of `p`.
    fn holds_rows(&self, p: PartitionId) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records the start of a copy of `p` from node `from` for the move
    /// `move_id`, with no row copied yet; flushed before it answers.
    fn start_copy(
        &self,
        p: PartitionId,
        from: &str,
        move_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Begins one local transaction of `p`'s copy ([`CopyWrite`]).
    fn write_copy(
        &self,
        p: PartitionId,
    ) -> impl Future<Output = Result<Self::CopyWrite, StoreError>> + Send;

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

// ---- a partition's copy (a move) ------------------------------------------

/// The tables a partition's rows live in ([`PARTITION_TABLES`], in the
/// order a copy imports them: an event needs its account first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PartitionTable {
    Accounts,
    Events,
    Snapshots,
    Legs,
    Transfers,
}

impl PartitionTable {
    /// Every one, in [`PARTITION_TABLES`]' order.
    pub const ALL: [PartitionTable; 5] = [
        PartitionTable::Accounts,
        PartitionTable::Events,
        PartitionTable::Snapshots,
        PartitionTable::Legs,
        PartitionTable::Transfers,
    ];

    /// The tables whose rows a move counts (accounts are summed up instead;
    /// snapshots are derived from the events).
    pub const COUNTED: [PartitionTable; 3] = [
        PartitionTable::Events,
        PartitionTable::Legs,
        PartitionTable::Transfers,
    ];

    pub fn as_str(self) -> &'static str {
        PARTITION_TABLES[self as usize]
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// How long one statement of a partition's read may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadSpan {
    /// A chunk, or rows found through an index: the node's usual limit.
    Chunk,
    /// The partition read whole (a move's counts): a long read's limit,
    /// since it runs beside the traffic.
    Whole,
}

/// What a move reads of one partition on one node, by this node's change
/// numbers (`change_no`: every insert and update of a partition's row
/// takes the next one from one counter; `created_no`: the one a leg or a
/// decision record got when it was inserted). Postgres reads in one
/// transaction ([`Store::read_partition`]) or one snapshot
/// ([`Store::read_partition_quiet`]); [`PartitionRead::finish`] ends it.
pub trait PartitionRead: Send {
    /// The last change number handed out.
    fn last_change(&mut self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Rows of `table` changed after `after` (and at most up to `upto`).
    fn count_changed(
        &mut self,
        table: PartitionTable,
        after: i64,
        upto: Option<i64>,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Per table of [`PartitionTable::COUNTED`], its rows.
    fn count_whole(
        &mut self,
    ) -> impl Future<Output = Result<BTreeMap<String, i64>, StoreError>> + Send;

    /// Per table of [`PartitionTable::COUNTED`], its rows inserted after
    /// change number `after` (found through the change numbers, so it
    /// takes as long as there were changes since, however long the
    /// history). Events are never changed (their change number is their
    /// insertion); legs and decision records keep theirs in `created_no`.
    fn count_inserted(
        &mut self,
        after: i64,
    ) -> impl Future<Output = Result<BTreeMap<String, i64>, StoreError>> + Send;

    /// The accounts summed up: one row per account, however long its history.
    fn sum_accounts(&mut self) -> impl Future<Output = Result<AccountsSummary, StoreError>> + Send;

    /// At most `limit` rows of `table` changed after `after` (and at most
    /// up to `upto`), oldest change first, without their change numbers.
    /// The rows are as this kind of store writes them back
    /// ([`CopyWrite::apply`]): a chunk only goes between two stores of
    /// the same kind.
    fn chunk(
        &mut self,
        table: PartitionTable,
        after: i64,
        upto: Option<i64>,
        limit: i64,
    ) -> impl Future<Output = Result<RowsChunk, StoreError>> + Send;

    /// Ends the read.
    fn finish(self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// One local transaction of a copy on the node a partition moves to: its
/// copy record (`partition_copies`) stays locked until [`CopyWrite::commit`],
/// flushed before it answers; dropped uncommitted, nothing is written.
pub trait CopyWrite: Send {
    /// The copy's state, if one was started.
    fn state(&mut self) -> impl Future<Output = Result<Option<CopyState>, StoreError>> + Send;

    /// Inserts the rows of `table` (a chunk's JSON array, as
    /// [`PartitionRead::chunk`] reads them), or writes them over the rows
    /// with the same primary key, each with a new change number of this
    /// node. Answers how many rows it applied.
    fn apply(
        &mut self,
        table: PartitionTable,
        rows: &str,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Moves the copy's cursor of `table` to `last` and counts `rows` rows
    /// and `bytes` bytes more; answers the copy's state.
    fn advance(
        &mut self,
        table: PartitionTable,
        last: i64,
        rows: i64,
        bytes: i64,
    ) -> impl Future<Output = Result<CopyState, StoreError>> + Send;

    fn commit(self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
