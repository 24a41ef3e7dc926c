//! The operator of the simulation: partition moves under the faults, as
//! `walletctl partitions move` runs them, through the participant's own
//! move steps (`participant::moves`: fences saved in the store and checked
//! against the map, roll-back and abort, discarding the rows left behind)
//! over the in-memory stores, with the map changed as etcd would be.
//!
//! A move copies the partition while its old owner serves it (`copying`),
//! then cuts over (`moving`): the old owner fences it `draining`, then
//! `frozen`, the copy is taken again whole, and the owner switches; the old
//! owner fences it `moved` and drops its rows. A cut-over may overrun its
//! deadline and roll back to `copying` (the fence lifted, the old owner
//! serving again), and a move may be aborted at any point before the
//! switch (its copy discarded on the new owner). The copy itself is the
//! whole partition at once; the chunked copy over Postgres has tests of its
//! own (end-to-end, `moves`).
//!
//! Every store write here is a flushed commit, as the mover's are on
//! Postgres; a step waits while a store it writes is down (walletctl would
//! fail and be run again). A step the participant refuses is recorded, and
//! the run fails on it: the operator only asks what a move may.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use participant::app::App;
use participant::error::{ApiError, ApiResult, StoreError};
use participant::moves;
use wallet_shared::admin::{Fence, FenceState};
use wallet_shared::map::{Move, MovePhase};
use wallet_shared::{PartitionId, PartitionMap};

use crate::mem::MemStore;
use crate::world::World;

/// From `draining` to the owner switch, at most this long (only the
/// fence's record: the simulation's operator decides roll-backs itself).
const CUTOVER_DEADLINE: Duration = Duration::from_secs(10);

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
    let ending = cut_over(world, rng, p, from, to).await;
    match ending {
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

/// The online copy, then cut-over attempts until one switches the owner or
/// the move is aborted.
async fn cut_over(
    world: &World,
    rng: &mut fastrand::Rng,
    p: PartitionId,
    from: &str,
    to: &str,
) -> Ending {
    copy(world, from, to, p).await;
    tokio::time::sleep(Duration::from_millis(rng.u64(0..1000))).await;
    if rng.u32(0..8) == 0 {
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
        tokio::time::sleep(Duration::from_millis(rng.u64(0..200))).await;
        fence_at(world, from, p, FenceState::Draining, to).await;
        tokio::time::sleep(Duration::from_millis(rng.u64(0..300))).await;
        fence_at(world, from, p, FenceState::Frozen, to).await;
        // Frozen, and every request that passed an older check is over:
        // this copy sees every write the partition will ever get there.
        tokio::time::sleep(Duration::from_millis(rng.u64(0..300))).await;
        copy(world, from, to, p).await;
        match rng.u32(0..10) {
            // The deadline passed first: the old owner rolls the cut-over
            // back and serves again; the move goes on copying.
            0 | 1 => {
                world.fault("partition_move_rolled_back");
                release(world, from, p).await;
                publish(world, |m| {
                    if let Some(mv) = m.moves.get_mut(&p) {
                        mv.phase = MovePhase::Copying;
                        mv.cutover_at = None;
                        mv.rollbacks += 1;
                    }
                });
                tokio::time::sleep(Duration::from_millis(rng.u64(0..500))).await;
                copy(world, from, to, p).await;
            }
            2 => return Ending::Aborted,
            _ => {
                publish(world, |m| {
                    m.owners[p as usize] = to.to_string();
                    if let Some(mv) = m.moves.get_mut(&p) {
                        mv.phase = MovePhase::Switched;
                    }
                });
                tokio::time::sleep(Duration::from_millis(rng.u64(0..300))).await;
                fence_at(world, from, p, FenceState::Moved, to).await;
                discard(world, from, p).await;
                return Ending::Switched;
            }
        }
    }
    Ending::Aborted
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

/// Takes partition `p`'s rows on `from` and puts them on `to` whole,
/// replacing an earlier copy, and lifts a fence `to` holds from when `p`
/// moved away from it before (as `copy/finish` does on Postgres, whose
/// chunked copy the end-to-end tests run).
async fn copy(world: &World, from: &str, to: &str, p: PartitionId) {
    let what = format!("copying partition {p} from {from}");
    step(world, to, &what, |app| async move {
        let mut fences = app.fences.write().await;
        moves::not_ours(&app, &world.map.current(), &fences, p)?;
        let source = &world.stores[from];
        if *source.down.lock().unwrap() {
            // Read as the copy reads it, from the old owner's database.
            return Err(StoreError::Unavailable(format!("{from}'s database is down")).into());
        }
        let rows = source.tables.lock().unwrap().partition(p);
        app.store.check_up()?;
        app.store.tables.lock().unwrap().import_partition(p, rows);
        app.store.flush();
        if fences.contains_key(&p) {
            moves::lift_fence(&app, &mut fences, p).await?;
        }
        Ok(())
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
