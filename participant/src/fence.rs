//! Partition fences: what keeps a partition that is moving, or moved, away
//! from this node from being written here, whatever map a caller has.
//!
//! Every request holds a read guard from before its fence check until its
//! local transaction is over; a fence is set under the write guard. So once
//! a fence is set, no request that passed an older check is still running:
//! a copy taken after freezing sees every write the partition will ever get
//! here.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};
use wallet_shared::admin::{Fence, FenceState};
use wallet_shared::{ErrorCode, PartitionId, Rejection};

/// What a request is about to do to a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Starts something: begin, execute, prepare, open an account, deposit, withdraw.
    New,
    /// Takes an in-flight transfer further: decide, commit, abort, complete.
    Finish,
    /// Reads only.
    Read,
}

pub type FenceMap = BTreeMap<PartitionId, Fence>;

#[derive(Clone, Default)]
pub struct Fences(Arc<RwLock<FenceMap>>);

impl Fences {
    pub fn new(fences: FenceMap) -> Self {
        Fences(Arc::new(RwLock::new(fences)))
    }

    pub async fn read(&self) -> OwnedRwLockReadGuard<FenceMap> {
        self.0.clone().read_owned().await
    }

    /// Waits until no request is between its fence check and its commit.
    pub async fn write(&self) -> OwnedRwLockWriteGuard<FenceMap> {
        self.0.clone().write_owned().await
    }
}

/// Refuses `work` on any of `partitions` that a fence forbids.
pub fn check(
    fences: &FenceMap,
    work: Work,
    partitions: impl IntoIterator<Item = PartitionId>,
) -> Result<(), Rejection> {
    for p in partitions {
        let Some(fence) = fences.get(&p) else {
            continue;
        };
        let refused = match fence.state {
            FenceState::Moved => true,
            FenceState::Frozen => work != Work::Read,
            FenceState::Draining => work == Work::New,
        };
        if !refused {
            continue;
        }
        return Err(if fence.state == FenceState::Moved {
            Rejection::new(
                ErrorCode::WrongPartitionOwner,
                format!("partition {p} moved to node {}", fence.to),
            )
        } else {
            Rejection::new(
                ErrorCode::PartitionMoving,
                format!(
                    "partition {p} is moving to node {} ({}); try again shortly",
                    fence.to,
                    fence.state.as_str()
                ),
            )
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_fence_refuses_what_it_must() {
        let fence = |state| {
            FenceMap::from([(
                3,
                Fence {
                    state,
                    to: "node-4".into(),
                },
            )])
        };
        let code = |state, work| check(&fence(state), work, [1, 3]).err().map(|r| r.code);
        use ErrorCode::*;
        use FenceState::*;
        assert_eq!(code(Draining, Work::New), Some(PartitionMoving));
        assert_eq!(code(Draining, Work::Finish), None);
        assert_eq!(code(Draining, Work::Read), None);
        assert_eq!(code(Frozen, Work::Finish), Some(PartitionMoving));
        assert_eq!(code(Frozen, Work::Read), None);
        assert_eq!(code(Moved, Work::Read), Some(WrongPartitionOwner));
        assert_eq!(check(&fence(Moved), Work::New, [1, 2]), Ok(()));
    }
}
