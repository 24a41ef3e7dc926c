//! Partition fences: what keeps a partition that is moving, or moved, away
//! from this node from being written here, whatever map a caller has. The
//! rules are pure: [`check`] (what a fence refuses), [`advance`] (how a
//! fence moves forward) and [`release`] (when it may be lifted); `moves`
//! does the I/O around them.
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

/// What asking for fence `want` on partition `p` comes to, from the fence
/// that holds now: a fence only moves forward (none, draining, frozen,
/// moved), toward one target; draining and frozen need this node to own
/// the partition in the map, moved needs it not to (the owner switched).
/// `Ok(None)`: it holds already, nothing to write. `Ok(Some(fence))`: write
/// it (and, for `moved`, drop the partition's rows in the same transaction).
pub fn advance(
    p: PartitionId,
    now: Option<&Fence>,
    want: &Fence,
    owned: bool,
    node: &str,
) -> Result<Option<Fence>, Rejection> {
    let order = |s: Option<FenceState>| match s {
        None => 0,
        Some(FenceState::Draining) => 1,
        Some(FenceState::Frozen) => 2,
        Some(FenceState::Moved) => 3,
    };
    let invalid = |why: String| Rejection::new(ErrorCode::InvalidRequest, why);
    if order(now.map(|f| f.state)) > order(Some(want.state)) {
        // Asking for less than what holds (a move resumed) is done already;
        // but a partition that moved away is not fenced again here.
        return match now {
            Some(now) if now.state != FenceState::Moved && now.to == want.to => Ok(None),
            _ => Err(invalid(format!(
                "partition {p} is already {} here; a fence only moves forward",
                now.map_or("unfenced", |f| f.state.as_str())
            ))),
        };
    }
    if let Some(now) = now {
        if now.to != want.to && now.state != FenceState::Moved {
            return Err(invalid(format!(
                "partition {p} is moving to node {}, not {}",
                now.to, want.to
            )));
        }
    }
    if want.state == FenceState::Moved
        && !matches!(
            now.map(|f| f.state),
            Some(FenceState::Frozen | FenceState::Moved)
        )
    {
        return Err(invalid(format!(
            "partition {p} must be frozen here before it is marked moved"
        )));
    }
    match (want.state, owned) {
        (FenceState::Moved, true) => {
            return Err(Rejection::new(
                ErrorCode::WrongPartitionOwner,
                format!("node {node} still owns partition {p} in the map; switch the owner first"),
            ))
        }
        (FenceState::Draining | FenceState::Frozen, false) => {
            return Err(Rejection::new(
                ErrorCode::WrongPartitionOwner,
                format!("node {node} does not own partition {p}"),
            ))
        }
        _ => {}
    }
    let same = now.is_some_and(|f| (f.state, &f.to) == (want.state, &want.to));
    Ok((!same).then(|| want.clone()))
}

/// Whether the fence on `p` may be lifted (a move rolled back): yes when
/// there is none (`Ok(false)`: nothing to do) or it is draining or frozen
/// on a partition this node still owns.
pub fn release(p: PartitionId, now: Option<&Fence>, owned: bool) -> Result<bool, Rejection> {
    match now {
        None => Ok(false),
        Some(f) if f.state == FenceState::Moved || !owned => Err(Rejection::new(
            ErrorCode::WrongPartitionOwner,
            format!(
                "partition {p} has moved to node {}; it cannot be released here",
                f.to
            ),
        )),
        Some(_) => Ok(true),
    }
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
                    deadline: None,
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

    #[test]
    fn a_fence_only_moves_forward_toward_one_target_and_owner_rules_apply() {
        use FenceState::*;
        let f = |state, to: &str| Fence {
            state,
            to: to.into(),
            deadline: None,
        };
        let adv = |now: Option<Fence>, want: Fence, owned| {
            advance(5, now.as_ref(), &want, owned, "node-1").map_err(|r| r.code)
        };
        // The forward path of a move.
        assert_eq!(
            adv(None, f(Draining, "n2"), true),
            Ok(Some(f(Draining, "n2")))
        );
        assert_eq!(
            adv(Some(f(Draining, "n2")), f(Frozen, "n2"), true),
            Ok(Some(f(Frozen, "n2")))
        );
        assert_eq!(
            adv(Some(f(Frozen, "n2")), f(Moved, "n2"), false),
            Ok(Some(f(Moved, "n2")))
        );
        // Resumed: the same again, or less than what holds, is done already.
        assert_eq!(adv(Some(f(Frozen, "n2")), f(Frozen, "n2"), true), Ok(None));
        assert_eq!(
            adv(Some(f(Frozen, "n2")), f(Draining, "n2"), true),
            Ok(None)
        );
        assert_eq!(adv(Some(f(Moved, "n2")), f(Moved, "n2"), false), Ok(None));
        // Refused: backwards from moved, another target, moved before
        // frozen, moved while still the owner, fencing what it does not own.
        use ErrorCode::*;
        assert_eq!(
            adv(Some(f(Moved, "n2")), f(Frozen, "n2"), true),
            Err(InvalidRequest)
        );
        assert_eq!(
            adv(Some(f(Draining, "n2")), f(Frozen, "n3"), true),
            Err(InvalidRequest)
        );
        assert_eq!(
            adv(Some(f(Draining, "n2")), f(Moved, "n2"), false),
            Err(InvalidRequest)
        );
        assert_eq!(adv(None, f(Moved, "n2"), false), Err(InvalidRequest));
        assert_eq!(
            adv(Some(f(Frozen, "n2")), f(Moved, "n2"), true),
            Err(WrongPartitionOwner)
        );
        assert_eq!(
            adv(None, f(Draining, "n2"), false),
            Err(WrongPartitionOwner)
        );
        // A partition that moved away and came back may be fenced anew.
        assert_eq!(
            adv(Some(f(Moved, "n2")), f(Moved, "n3"), false),
            Ok(Some(f(Moved, "n3")))
        );
    }

    #[test]
    fn only_a_fence_on_an_owned_partition_that_has_not_moved_is_released() {
        use FenceState::*;
        let f = |state| Fence {
            state,
            to: "n2".into(),
            deadline: None,
        };
        assert_eq!(release(5, None, true), Ok(false));
        assert_eq!(release(5, Some(&f(Draining)), true), Ok(true));
        assert_eq!(release(5, Some(&f(Frozen)), true), Ok(true));
        let code = |r: Result<bool, Rejection>| r.map_err(|r| r.code);
        assert_eq!(
            code(release(5, Some(&f(Moved)), false)),
            Err(ErrorCode::WrongPartitionOwner)
        );
        assert_eq!(
            code(release(5, Some(&f(Frozen)), false)),
            Err(ErrorCode::WrongPartitionOwner)
        );
    }
}
