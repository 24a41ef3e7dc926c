//! The operator of the simulation: partition moves under the faults, as
//! `walletctl partitions move` runs them, through the participant's own
//! move steps (`participant::moves`: fences saved in the store and checked
//! against the map, the chunked copy and its checks, roll-back and abort,
//! discarding the rows left behind) over the in-memory stores, with the map
//! changed as etcd would be.
//!
//! A move copies the partition while its old owner serves it (`copying`):
//! pass after pass up to a mark on the old owner, in small chunks of
//! random size, until a pass has little left; the last pass goes up to a
//! mark at which the old owner counts the partition whole, and the new
//! owner's count of its copy must hold as many events. Then it cuts over
//! (`moving`): the old owner fences it `draining`, then `frozen`, the last
//! changes are copied and the new owner checks its copy against the old
//! owner's counts (`copy/finish`), and the owner switches; the old owner
//! fences it `moved` and drops its rows. A cut-over may overrun its
//! deadline and roll back to `copying` (the fence lifted, the old owner
//! serving again; the copy goes on from its cursors), and a move may be
//! aborted at any point before the switch (its copy discarded on the new
//! owner).
//!
//! Every store write here is a flushed commit, as the mover's are on
//! Postgres; a step waits while a store it needs is down (walletctl would
//! fail and be run again). A step the participant refuses is recorded, and
//! the run fails on it: the operator only asks what a move may. A refused
//! step ends the move (aborted), so that the run goes on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use participant::app::App;
use participant::error::{ApiError, ApiResult};
use participant::moves::{self, RowsQuery};
use wallet_shared::admin::{
    CopyBegin, CopyFinish, CopyRows, CopyState, CutoverCheck, Fence, FenceState, Mark, MarkRequest,
    PartitionSummary, PARTITION_TABLES,
};
use wallet_shared::map::{Move, MovePhase};
use wallet_shared::{PartitionId, PartitionMap};

use crate::mem::MemStore;
use crate::world::World;

/// From `draining` to the owner switch, at most this long (only the
/// fence's record: the simulation's operator decides roll-backs itself).
const CUTOVER_DEADLINE: Duration = Duration::from_secs(10);
/// Copy passes while the partition serves, at most (as walletctl's).
const MAX_PASSES: u32 = 8;

/// Moves one partition after another, a while apart, until `stop`; a move
/// under way when it is set runs to its end.
pub(crate) async fn operator(world: Arc<World>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x6d6f_7665_7300);
    let nodes: Vec<String> = world.stores.keys().cloned().collect();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rng.u64(300..2500))).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let map = world.map.current();
        let p = rng.u32(0..map.partition_count());
        let Some(from) = map.owner(p).cloned() else {
            continue;
        };
        let others: Vec<&String> = nodes.iter().filter(|n| **n != from).collect();
        let to = others[rng.usize(0..others.len())].clone();
        move_partition(&world, &mut rng, p, &from, &to).await;
    }
}

/// How a move ends.
enum Ending {
    Switched,
    Aborted,
}

async fn move_partition(
    world: &World,
    rng: &mut fastrand::Rng,
    p: PartitionId,
    from: &str,
    to: &str,
) {
    world.fault("partition_move");
    let started_at = world.clock_text();
    publish(world, |m| {
        m.moves.insert(
            p,
            Move {
                from: from.to_string(),
                to: to.to_string(),
                phase: MovePhase::Copying,
                started_at: started_at.clone(),
                cutover_at: None,
                rollbacks: 0,
            },
        );
    });
    let mut mv = Moving {
        world,
        p,
        from,
        to,
        move_id: started_at,
        cutover_rows: rng.i64(0..40),
        counted: None,
        rng,
    };
    match mv.cut_over().await {
        Ending::Switched => {}
        Ending::Aborted => {
            world.fault("partition_move_aborted");
            phase(world, p, MovePhase::Aborting);
            release(world, from, p).await;
            discard(world, to, p).await;
        }
    }
    publish(world, |m| {
        m.moves.remove(&p);
    });
}

/// One move as the operator drives it, step for step as walletctl's.
struct Moving<'a> {
    world: &'a World,
    rng: &'a mut fastrand::Rng,
    p: PartitionId,
    from: &'a str,
    to: &'a str,
    /// Names the move (its `started_at` in the map).
    move_id: String,
    /// Cut over once a pass has at most this many rows to copy.
    cutover_rows: i64,
    /// The partition counted whole by the last pass while it served: on
    /// the old owner at its mark, and on the new owner after the pass.
    counted: Option<(PartitionSummary, PartitionSummary)>,
}

impl Moving<'_> {
    /// The online copy, then cut-over attempts until one switches the owner
    /// or the move is aborted.
    async fn cut_over(&mut self) -> Ending {
        let (world, p, from, to) = (self.world, self.p, self.from, self.to);
        if self.copy_online().await.is_none() {
            return Ending::Aborted;
        }
        self.pause(0..1000).await;
        if self.rng.u32(0..8) == 0 {
            return Ending::Aborted;
        }
        for _attempt in 0..3 {
            let cutover_at = world.clock_text();
            publish(world, |m| {
                if let Some(mv) = m.moves.get_mut(&p) {
                    mv.phase = MovePhase::Moving;
                    mv.cutover_at = Some(cutover_at.clone());
                }
            });
            self.pause(0..200).await;
            fence_at(world, from, p, FenceState::Draining, to).await;
            self.pause(0..300).await;
            fence_at(world, from, p, FenceState::Frozen, to).await;
            // Frozen, and every request that passed an older check is over:
            // the last changes copied now are the last the partition gets there.
            self.pause(0..300).await;
            match self.rng.u32(0..10) {
                // The deadline passed first, before the last changes were
                // copied or after the check: the old owner rolls the
                // cut-over back and serves again; the move goes on copying.
                0 | 1 => {
                    if self.rng.bool() && self.copy_frozen().await.is_none() {
                        return Ending::Aborted;
                    }
                    world.fault("partition_move_rolled_back");
                    release(world, from, p).await;
                    publish(world, |m| {
                        if let Some(mv) = m.moves.get_mut(&p) {
                            mv.phase = MovePhase::Copying;
                            mv.cutover_at = None;
                            mv.rollbacks += 1;
                        }
                    });
                    self.pause(0..500).await;
                    if self.copy_online().await.is_none() {
                        return Ending::Aborted;
                    }
                }
                2 => return Ending::Aborted,
                _ => {
                    if self.copy_frozen().await.is_none() {
                        return Ending::Aborted;
                    }
                    publish(world, |m| {
                        m.owners[p as usize] = to.to_string();
                        if let Some(mv) = m.moves.get_mut(&p) {
                            mv.phase = MovePhase::Switched;
                        }
                    });
                    self.pause(0..300).await;
                    fence_at(world, from, p, FenceState::Moved, to).await;
                    discard(world, from, p).await;
                    return Ending::Switched;
                }
            }
        }
        Ending::Aborted
    }

    /// Lets the traffic go on for a while (milliseconds in `range`).
    async fn pause(&mut self, range: std::ops::Range<u64>) {
        tokio::time::sleep(Duration::from_millis(self.rng.u64(range))).await;
    }

    /// Starts or resumes the new owner's copy: how far it has come. An
    /// older copy there (of another move) is dropped first.
    async fn begin_copy(&mut self) -> Option<CopyState> {
        let (world, p, to) = (self.world, self.p, self.to);
        let begin = CopyBegin {
            map_revision: world.map.current().revision,
            from: self.from.to_string(),
            move_id: self.move_id.clone(),
        };
        let what = format!("starting the copy of partition {p}");
        let start = || {
            step(world, to, &what, |app| {
                let begin = begin.clone();
                async move { moves::copy_begin(&app, p, begin).await }
            })
        };
        let state = start().await?;
        if !state.older_copy {
            return Some(state);
        }
        world.fault("partition_move_older_copy");
        discard(world, to, p).await;
        let state = start().await?;
        if state.older_copy {
            world.refused(format!("{what} on {to}: its older copy is still there"));
            return None;
        }
        Some(state)
    }

    /// A mark on the old owner after `cursors`; `whole`: with the partition
    /// counted whole at it; `inserted_after`: with the rows inserted after
    /// that change number counted, and the accounts summed up.
    async fn mark(
        &self,
        cursors: &BTreeMap<String, i64>,
        whole: bool,
        inserted_after: Option<i64>,
    ) -> Option<Mark> {
        let req = MarkRequest {
            map_revision: self.world.map.current().revision,
            after: cursors.clone(),
            whole,
            inserted_after,
        };
        let (p, what) = (self.p, format!("marking partition {}", self.p));
        step(self.world, self.from, &what, |app| {
            let req = req.clone();
            async move { moves::mark(&app, p, &req).await }
        })
        .await
    }

    /// Copies while the partition serves, pass after pass, until a pass
    /// has at most `cutover_rows` rows to copy (or after a few passes);
    /// that last pass is [`Moving::copy_checked`].
    async fn copy_online(&mut self) -> Option<()> {
        let mut cursors = self.begin_copy().await?.cursors;
        for pass in 1..=MAX_PASSES {
            let mark = self.mark(&cursors, false, None).await?;
            let left: i64 = mark.left.values().sum();
            if left <= self.cutover_rows || pass == MAX_PASSES {
                return self.copy_checked(&mut cursors).await;
            }
            self.copy_pass(&mut cursors, mark.mark).await?;
        }
        Some(())
    }

    /// The last pass while the partition serves, up to a mark at which the
    /// old owner counted it whole; then the new owner counts its copy
    /// whole, and must hold as many events (never changed; legs and
    /// decision records changed after the mark wait for the next pass).
    async fn copy_checked(&mut self, cursors: &mut BTreeMap<String, i64>) -> Option<()> {
        let (world, p, to) = (self.world, self.p, self.to);
        let mark = self.mark(cursors, true, None).await?;
        self.copy_pass(cursors, mark.mark).await?;
        let Some(old) = mark.whole else {
            world.refused(format!(
                "partition {p}: {} did not count it whole",
                self.from
            ));
            return None;
        };
        let what = format!("counting the copy of partition {p}");
        let new = step(world, to, &what, |app| async move {
            moves::summary(&app, p).await
        })
        .await?;
        if new.events != old.events {
            world.refused(format!(
                "partition {p}: the copy does not match the old owner: {} events on {to}, {} on {} at mark {}",
                new.events, old.events, self.from, mark.mark
            ));
            return None;
        }
        self.counted = Some((old, new));
        Some(())
    }

    /// The cut-over's copy, the partition frozen on the old owner: the last
    /// changes, then the new owner's check (`copy/finish`): the accounts
    /// summed up, and the rows counted before plus those inserted since.
    async fn copy_frozen(&mut self) -> Option<()> {
        let (world, p, to) = (self.world, self.p, self.to);
        let Some((old, new)) = self.counted.clone() else {
            world.refused(format!("partition {p}: cutting over a copy never counted"));
            return None;
        };
        let mut cursors = self.begin_copy().await?.cursors;
        let mark = self.mark(&cursors, false, Some(old.change_no)).await?;
        self.copy_pass(&mut cursors, mark.mark).await?;
        let (Some(accounts), Some(inserted)) = (mark.accounts, mark.inserted) else {
            world.refused(format!(
                "partition {p}: {} did not count the rows inserted",
                self.from
            ));
            return None;
        };
        let finish = CopyFinish {
            move_id: self.move_id.clone(),
            expected: CutoverCheck {
                accounts,
                rows: old.plus(inserted),
            },
            counted: new,
        };
        let what = format!("finishing the copy of partition {p}");
        step(world, to, &what, |app| {
            let finish = finish.clone();
            async move { moves::copy_finish(&app, p, &finish).await }
        })
        .await?;
        Some(())
    }

    /// Copies every table up to `upto` (accounts: all of them, so that
    /// every event copied finds its account), in chunks of random size,
    /// the traffic going on between them. Now and then the cursors are
    /// read again from the new owner, as a walletctl run again would.
    async fn copy_pass(&mut self, cursors: &mut BTreeMap<String, i64>, upto: i64) -> Option<()> {
        let (world, p, from, to) = (self.world, self.p, self.from, self.to);
        for table in PARTITION_TABLES {
            loop {
                let limit = self.rng.i64(1..50);
                let q = RowsQuery {
                    table: table.to_string(),
                    after: cursors.get(table).copied().unwrap_or(0),
                    upto: (table != "accounts").then_some(upto),
                    limit: Some(limit),
                };
                let what = format!("reading partition {p}'s {table}");
                let chunk = step(world, from, &what, |app| {
                    let q = q.clone();
                    async move { moves::rows(&app, p, &q).await }
                })
                .await?;
                if chunk.count == 0 {
                    break;
                }
                let req = CopyRows {
                    move_id: self.move_id.clone(),
                    chunk,
                };
                let what = format!("copying partition {p}'s {table}");
                step(world, to, &what, |app| {
                    let req = req.clone();
                    async move { moves::copy_rows(&app, p, &req).await }
                })
                .await?;
                cursors.insert(table.to_string(), req.chunk.last);
                self.pause(0..30).await;
                if self.rng.u32(0..25) == 0 {
                    world.fault("partition_copy_resumed");
                    *cursors = self.begin_copy().await?.cursors;
                }
                if req.chunk.count < limit {
                    break;
                }
            }
        }
        Some(())
    }
}

/// Changes the map as etcd would (one new revision), for every node and
/// coordinator at once.
fn publish(world: &World, change: impl FnOnce(&mut PartitionMap)) {
    let mut map = (*world.map.current()).clone();
    change(&mut map);
    map.revision += 1;
    world.map.replace(map);
}

fn phase(world: &World, p: PartitionId, phase: MovePhase) {
    publish(world, |m| {
        if let Some(mv) = m.moves.get_mut(&p) {
            mv.phase = phase;
        }
    });
}

/// Runs one step of the participant's move code (`participant::moves`) on
/// `node`, as walletctl calls it, again while a database it needs is down
/// (walletctl would fail and be run again). A refusal is recorded: the
/// operator only asks what a move may.
async fn step<T, F, Fut>(world: &World, node: &str, what: &str, f: F) -> Option<T>
where
    F: Fn(App<MemStore>) -> Fut,
    Fut: std::future::Future<Output = ApiResult<T>>,
{
    loop {
        match f(world.app(node)).await {
            Ok(out) => return Some(out),
            Err(ApiError::Store(e)) if e.is_transient() => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => {
                world.refused(format!("{what} on {node}: {e}"));
                return None;
            }
        }
    }
}

/// Fences `p` on `node` (`moves::set_fence`): `moved` once the owner
/// switched, the cut-over's states before.
async fn fence_at(world: &World, node: &str, p: PartitionId, state: FenceState, to: &str) {
    let want = Fence {
        state,
        to: to.to_string(),
        deadline: None,
    };
    let what = format!("fencing partition {p} {}", state.as_str());
    step(world, node, &what, |app| {
        let want = want.clone();
        async move { moves::set_fence(&app, p, want, CUTOVER_DEADLINE).await }
    })
    .await;
}

/// Lifts the cut-over's fence on the old owner (a roll-back or an abort).
async fn release(world: &World, node: &str, p: PartitionId) {
    let what = format!("releasing partition {p}");
    step(world, node, &what, |app| async move {
        moves::release(&app, p).await
    })
    .await;
}

/// Drops `node`'s rows of `p`, which it does not own (a copy undone, or
/// the old owner's rows after the switch), until none is left.
async fn discard(world: &World, node: &str, p: PartitionId) {
    let what = format!("discarding partition {p}");
    loop {
        let done = step(world, node, &what, |app| async move {
            moves::discard_some(&app, p, Duration::from_secs(1)).await
        })
        .await;
        if done.is_none_or(|d| d.done) {
            return;
        }
    }
}
