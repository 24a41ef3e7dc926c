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
}
