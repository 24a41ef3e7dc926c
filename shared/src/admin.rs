//! Messages between `walletctl` and participants (JSON over HTTP, under
//! `/internal/v1/`): what a node holds per partition, and the partition
//! moves. Amounts here are integers in minor units.

use serde::{Deserialize, Serialize};

use crate::partition::PartitionId;

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
