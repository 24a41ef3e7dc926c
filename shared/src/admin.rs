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
}

/// What a partition's copy holds, to check that a copy is whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSummary {
    pub accounts: i64,
    pub events: i64,
    pub legs: i64,
    pub transfers: i64,
    /// Sum of posted balances per currency, in minor units.
    pub posted: std::collections::BTreeMap<String, i64>,
}

/// `GET /internal/v1/partitions/{p}/export` from a frozen partition: its
/// rows, table by table, as Postgres renders them (`json_agg`), so a copy
/// keeps every column as it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionExport {
    pub partition: PartitionId,
    pub tables: std::collections::BTreeMap<String, serde_json::Value>,
    pub summary: PartitionSummary,
}

/// `POST /internal/v1/partitions/{p}/import`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportRequest {
    /// The map revision the mover read; the node catches up to it first.
    pub map_revision: i64,
    pub export: PartitionExport,
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
    /// `stuck_leg`, `prepared_xact`, `conservation`, `transfer_legs_mismatch`.
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
}
