//! Messages between `walletctl` and participants (JSON over HTTP, under
//! `/internal/v1/`): what a node holds per partition, the partition moves,
//! transfers in doubt, the audit; and `tx resolve`, which walletctl asks of
//! a coordinator. Amounts here are integers in minor units.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Rejection;
use crate::ids::{AccountId, TransactionId};
use crate::money::Currency;
use crate::partition::PartitionId;
use crate::protocol::{LegState, TransferRecord, TransferState};

/// What a node holds of each partition it has rows for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStats {
    pub partition: PartitionId,
    pub accounts: i64,
    /// Legs prepared and not yet committed or aborted.
    pub prepared_legs: i64,
    /// Decision records not yet completed.
    pub open_transfers: i64,
}

/// `GET /internal/v1/partitions`: every partition this node has rows for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodePartitions {
    pub node_id: String,
    pub map_revision: i64,
    pub partitions: Vec<PartitionStats>,
    /// Partitions this node fences (moving away, or moved).
    #[serde(default)]
    pub fences: std::collections::BTreeMap<PartitionId, Fence>,
}

/// How a node fences a partition it is moving away (`partition_fences`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FenceState {
    /// No new work (begin, execute, prepare, open, deposit, withdraw);
    /// in-flight transfers may still decide, commit, abort and complete.
    Draining,
    /// Nothing changes any more: the partition is being copied.
    Frozen,
    /// The partition belongs to another node now; its rows here are gone.
    Moved,
}

impl FenceState {
    pub fn as_str(self) -> &'static str {
        match self {
            FenceState::Draining => "draining",
            FenceState::Frozen => "frozen",
            FenceState::Moved => "moved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [FenceState::Draining, FenceState::Frozen, FenceState::Moved]
            .into_iter()
            .find(|f| f.as_str() == s)
    }
}

/// `POST /internal/v1/partitions/{p}/fence`; also what a node reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub state: FenceState,
    /// The node the partition is moving to.
    pub to: String,
    /// While draining or frozen: when the node rolls the cut-over back on
    /// its own if the owner has not switched by then. Set by the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
}

/// What a partition's copy holds, to check that a copy is whole: every row
/// counted, so it takes as long as the partition's history is long. A move
/// counts it while the partition serves (at a mark, [`MarkRequest::whole`],
/// and on the new owner after the pass up to it); the cut-over adds only
/// the rows inserted since ([`CutoverCheck`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSummary {
    pub accounts: i64,
    pub events: i64,
    pub legs: i64,
    pub transfers: i64,
    /// Sum of posted balances per currency, in minor units.
    pub posted: std::collections::BTreeMap<String, i64>,
    /// The node's last change number when it counted: every row of the
    /// partition inserted after the count is numbered above it.
    #[serde(default)]
    pub change_no: i64,
}

impl PartitionSummary {
    /// Per table (`events`, `legs`, `transfers`), its rows counted here plus
    /// those `inserted` since the count: what a cut-over compares.
    pub fn plus(
        &self,
        inserted: std::collections::BTreeMap<String, i64>,
    ) -> std::collections::BTreeMap<String, i64> {
        inserted
            .into_iter()
            .map(|(table, n)| {
                let counted = match table.as_str() {
                    "events" => self.events,
                    "legs" => self.legs,
                    "transfers" => self.transfers,
                    _ => 0,
                };
                (table, counted + n)
            })
            .collect()
    }
}

/// The tables a partition's rows live in, in the order a copy imports them
/// (an event needs its account first).
pub const PARTITION_TABLES: [&str; 5] = ["accounts", "events", "snapshots", "legs", "transfers"];

/// `POST /internal/v1/partitions/{p}/mark` on the old owner: where a copy
/// pass ends. Every row changed up to `mark` is committed when it answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MarkRequest {
    /// The map revision the mover read (the move recorded in it); the node
    /// catches up to it first, so its background pruning sees the move.
    pub map_revision: i64,
    /// Per table, the `change_no` the copy has reached (absent: 0).
    #[serde(default)]
    pub after: std::collections::BTreeMap<String, i64>,
    /// Also count the whole partition as it stands at the mark
    /// ([`Mark::whole`]): slow on a long history, so asked once per move,
    /// while the partition serves.
    #[serde(default)]
    pub whole: bool,
    /// The cut-over's count: the events, legs and transfer records of the
    /// partition inserted after this change number ([`Mark::inserted`]),
    /// and its accounts summed up ([`Mark::accounts`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inserted_after: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mark {
    /// The last `change_no` handed out, all of them committed.
    pub mark: i64,
    /// Per table, the rows of the partition changed after `after` (at most
    /// up to `mark`, but for `accounts`): what this pass has to copy.
    pub left: std::collections::BTreeMap<String, i64>,
    /// Asked with [`MarkRequest::whole`]: the partition as it stands at the
    /// mark (read in one snapshot taken there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whole: Option<PartitionSummary>,
    /// Asked with [`MarkRequest::inserted_after`]: per table (`events`,
    /// `legs`, `transfers`), the partition's rows inserted after it ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inserted: Option<std::collections::BTreeMap<String, i64>>,
    /// ... and its accounts at the mark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounts: Option<AccountsSummary>,
}

/// A partition's accounts, summed: few rows (one per account, however long
/// its history), so read whole while the partition is frozen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountsSummary {
    pub accounts: i64,
    /// Sum of the accounts' `last_seq`: the events they say they hold.
    pub last_seqs: i64,
    /// Sum of posted balances per currency, in minor units.
    pub posted: std::collections::BTreeMap<String, i64>,
}

impl AccountsSummary {
    /// Counts in `accounts` accounts of `currency` whose `last_seq`s sum to
    /// `last_seqs` and posted balances to `posted`.
    pub fn add(&mut self, currency: &str, accounts: i64, last_seqs: i64, posted: i64) {
        self.accounts += accounts;
        self.last_seqs += last_seqs;
        *self.posted.entry(currency.to_string()).or_default() += posted;
    }
}

/// What the new owner checks its copy by at the cut-over, in time that
/// does not grow with the partition's history: the partition was counted
/// whole on both nodes while it served ([`PartitionSummary`], the old owner
/// at a mark, the new one after the pass up to it), and no row of a
/// partition being moved is deleted on either node (pruning waits for the
/// move), so now, frozen, each node holds what it counted plus what was
/// inserted since, which an index finds. Its accounts are few and summed
/// up whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutoverCheck {
    pub accounts: AccountsSummary,
    /// Per table (`events`, `legs`, `transfers`), the partition's rows.
    pub rows: std::collections::BTreeMap<String, i64>,
}

/// `GET /internal/v1/partitions/{p}/rows?table&after&upto&limit` on the old
/// owner: the partition's rows of one table changed after `after` (and at
/// most up to `upto`), oldest change first, as Postgres renders them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RowsChunk {
    pub table: String,
    /// The cursor this chunk continues from.
    pub after: i64,
    /// The `change_no` of its last row (`after` when empty): the next cursor.
    pub last: i64,
    pub count: i64,
    /// A JSON array of rows, without their `change_no`.
    pub rows: serde_json::Value,
}

/// `POST /internal/v1/partitions/{p}/copy` on the new owner: start or
/// resume the copy of one move.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyBegin {
    pub map_revision: i64,
    /// The old owner.
    pub from: String,
    /// Names the move (its `started_at` in etcd).
    pub move_id: String,
}

/// How far a copy has come, on the new owner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyState {
    pub from: String,
    pub move_id: String,
    /// Per table, the source's `change_no` of the last row copied.
    pub cursors: std::collections::BTreeMap<String, i64>,
    /// Rows and bytes (of JSON) copied so far, counting rows copied again.
    pub rows: i64,
    pub bytes: i64,
    /// Nothing was started: this node holds rows of the partition from an
    /// older copy (another move); discard them first.
    #[serde(default)]
    pub older_copy: bool,
}

/// `POST /internal/v1/partitions/{p}/copy/rows` on the new owner: one chunk,
/// applied (inserted or overwritten by primary key) in one local
/// transaction with the cursor, if the cursor is where the chunk starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyRows {
    pub move_id: String,
    pub chunk: RowsChunk,
}

/// `POST /internal/v1/partitions/{p}/copy/finish` on the new owner, once
/// the old owner is frozen and the last changes are copied: the copy must
/// hold what the old owner holds ([`CutoverCheck`]). Answers the new
/// owner's own count, the same shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyFinish {
    pub move_id: String,
    pub expected: CutoverCheck,
    /// What the new owner counted after the pass up to the old owner's
    /// whole count (its `GET .../summary` then).
    pub counted: PartitionSummary,
}

/// `POST /internal/v1/partitions/{p}/discard`: what is left to drop.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Discarded {
    /// Rows dropped by this call.
    pub dropped: i64,
    /// Whether the partition has no rows left here.
    pub done: bool,
}

// ---- transfers in doubt ------------------------------------------------------

/// `POST /internal/v1/admin/in_doubt`: what is unfinished in these
/// partitions (the ones the node owns, as walletctl read the map).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InDoubtRequest {
    pub partitions: Vec<PartitionId>,
    /// At most this many of each kind, oldest first.
    pub limit: i64,
}

/// A decision record not completed yet: undecided (`preparing`), or decided
/// with a leg that may not have applied it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenTransfer {
    pub record: TransferRecord,
    pub partition: PartitionId,
    /// Until when its coordinator holds it (meaningful while `preparing`).
    pub lease_until: DateTime<Utc>,
}

/// A transfer leg as a node stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredLeg {
    pub transaction_id: TransactionId,
    /// `debit`, `credit`, `deposit` or `withdrawal`.
    pub role: String,
    pub account_id: AccountId,
    pub partition: PartitionId,
    /// Minor units.
    pub amount: i64,
    pub currency: Currency,
    pub state: LegState,
    pub reason: Option<Rejection>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InDoubt {
    pub transfers: Vec<OpenTransfer>,
    /// Transfer legs still `prepared`.
    pub legs: Vec<StoredLeg>,
}

/// `GET /internal/v1/admin/legs/{transaction_id}`: every leg of that id on
/// this node (a transfer's debit or credit, or a deposit or withdrawal).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeLegs {
    pub node_id: String,
    pub legs: Vec<StoredLeg>,
}

// ---- tx resolve (coordinator) ------------------------------------------------

/// `POST /internal/v1/transfers/{id}/resolve` on a coordinator: drive one
/// transfer to its end now, with the recovery code.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResolveRequest {
    /// Abort an undecided transfer even while its coordinator's lease runs.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolveReply {
    /// The decision record as it stands afterwards.
    pub record: TransferRecord,
    /// Whether both legs now carry the decision (and the record is marked
    /// complete, or about to be).
    pub finished: bool,
    /// What was done, for people.
    pub action: String,
}

// ---- audit -------------------------------------------------------------------

/// `POST /internal/v1/admin/audit`: check, set-based in SQL, what can be
/// checked at rest on one node, over the partitions it owns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRequest {
    pub partitions: Vec<PartitionId>,
    /// What changed after this instant is in flight: not judged as stuck,
    /// and left out of the transfer totals.
    pub cutoff: DateTime<Utc>,
    /// At most this many findings of each kind.
    pub limit: i64,
    /// Transaction-id buckets (first byte of the UUID) whose decision
    /// records and legs to list one by one, to name what does not match.
    #[serde(default)]
    pub detail_buckets: Vec<u8>,
}

/// One thing that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable, snake_case: `replay_mismatch`, `negative_balance`,
    /// `hold_mismatch`, `leg_posting_mismatch`, `stuck_transfer`,
    /// `stuck_leg`, `conservation`, `transfer_legs_mismatch`.
    pub kind: String,
    pub node: Option<String>,
    pub account_id: Option<String>,
    pub transaction_id: Option<TransactionId>,
    /// For people; amounts as decimal strings.
    pub detail: String,
}

/// Sums over one currency's accounts, in minor units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrencyTotals {
    pub accounts: i64,
    pub posted: i64,
    pub held: i64,
    pub pending_credit: i64,
    pub deposited: i64,
    pub withdrawn: i64,
}

/// Count and sum (minor units) of some rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub count: i64,
    pub amount: i64,
}

/// Per transaction-id bucket: committed decisions, and committed legs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketTotals {
    pub committed: Tally,
    pub debits: Tally,
    pub credits: Tally,
}

/// A decision record or a transfer leg, for the by-transaction comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRecord {
    pub transaction_id: TransactionId,
    pub state: TransferState,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: i64,
    pub currency: Currency,
    pub decided_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeAudit {
    pub node_id: String,
    /// Accounts checked (in the owned partitions).
    pub accounts: i64,
    pub currencies: std::collections::BTreeMap<Currency, CurrencyTotals>,
    pub findings: Vec<Finding>,
    /// Findings of each kind, before `limit` cut the list.
    pub totals: std::collections::BTreeMap<String, i64>,
    /// Keyed by bucket (first byte of the transaction id).
    pub buckets: std::collections::BTreeMap<u8, BucketTotals>,
    /// For `detail_buckets`: their decision records and transfer legs.
    pub records: Vec<AuditRecord>,
    pub legs: Vec<StoredLeg>,
    /// Rows finished before this instant may have been pruned (the node's
    /// record retention): nothing older was judged, and walletctl does not
    /// judge a transfer whose decision or legs are older.
    #[serde(default)]
    pub horizon: Option<DateTime<Utc>>,
}
