//! The operator of the simulation: partition moves under the faults, as
//! `walletctl partitions move` runs them on Postgres (`participant::moves`),
//! over the participants' in-memory stores and their real fences
//! (`participant::fence`), with the map changed as etcd would be.
//!
//! A move copies the partition while its old owner serves it (`copying`),
//! then cuts over (`moving`): the old owner fences it `draining`, then
//! `frozen`, the copy is taken again whole, and the owner switches; the old
//! owner fences it `moved` and drops its rows in the same step. A cut-over
//! may overrun its deadline and roll back to `copying` (the fence lifted,
//! the old owner serving again), and a move may be aborted at any point
//! before the switch (its copy discarded on the new owner).
//!
//! Every store write here is a flushed commit, as the mover's are on
//! Postgres; a step waits while a store it writes is down (walletctl would
//! fail and be run again). A fence step the fence rules refuse is recorded,
//! and the run fails on it: the operator only asks what a move may.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use participant::fence;
use wallet_shared::admin::{Fence, FenceState};
use wallet_shared::map::{Move, MovePhase};
use wallet_shared::{PartitionId, PartitionMap};

use crate::world::World;

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

/// Waits until `node`'s database is up; the caller writes it before it
/// awaits anything else.
async fn up(world: &World, node: &str) {
    while *world.stores[node].down.lock().unwrap() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A flushed commit on `node`: it flushes every commit before it.
fn flushed(world: &World, node: &str) {
    *world.stores[node].on_disk.lock().unwrap() = None;
}

/// Fences `p` on `node` under the fences' write guard (no request is then
/// between its fence check and its commit), as the rules allow; `moved`
/// drops the partition's rows in the same step.
async fn fence_at(world: &World, node: &str, p: PartitionId, state: FenceState, to: &str) {
    loop {
        let mut fences = world.fences[node].write().await;
        if *world.stores[node].down.lock().unwrap() {
            drop(fences);
            up(world, node).await;
            continue;
        }
        let map = world.map.current();
        let owned = map.owner(p).map(String::as_str) == Some(node);
        let want = Fence {
            state,
            to: to.to_string(),
            deadline: None,
        };
        match fence::advance(p, fences.get(&p), &want, owned, node) {
            Ok(Some(next)) => {
                fences.insert(p, next);
                if state == FenceState::Moved {
                    world.stores[node].tables.lock().unwrap().drop_partition(p);
                }
                flushed(world, node);
            }
            Ok(None) => {}
            Err(r) => world.refused(format!(
                "fencing partition {p} {} on {node}: {} {}",
                state.as_str(),
                r.code.as_str(),
                r.message
            )),
        }
        return;
    }
}

/// Lifts the cut-over's fence on the old owner (a roll-back or an abort).
async fn release(world: &World, node: &str, p: PartitionId) {
    let mut fences = world.fences[node].write().await;
    let owned = world.map.current().owner(p).map(String::as_str) == Some(node);
    match fence::release(p, fences.get(&p), owned) {
        Ok(true) => {
            fences.remove(&p);
        }
        Ok(false) => {}
        Err(r) => world.refused(format!(
            "releasing partition {p} on {node}: {} {}",
            r.code.as_str(),
            r.message
        )),
    }
}

/// Takes partition `p`'s rows on `from` and puts them on `to` whole,
/// replacing an earlier copy; lifts a fence `to` holds from when `p` moved
/// away from it before (`copy_finish`).
async fn copy(world: &World, from: &str, to: &str, p: PartitionId) {
    loop {
        let mut fences = world.fences[to].write().await;
        let down = |n: &str| *world.stores[n].down.lock().unwrap();
        if down(from) || down(to) {
            drop(fences);
            up(world, from).await;
            up(world, to).await;
            continue;
        }
        if world.map.current().owner(p).map(String::as_str) == Some(to) {
            world.refused(format!("copying partition {p} onto its owner {to}"));
            return;
        }
        let rows = world.stores[from].tables.lock().unwrap().partition(p);
        world.stores[to]
            .tables
            .lock()
            .unwrap()
            .import_partition(p, rows);
        flushed(world, to);
        fences.remove(&p);
        return;
    }
}

/// Drops the copy of an aborted move on the node it was copied to.
async fn discard(world: &World, node: &str, p: PartitionId) {
    loop {
        let _fences = world.fences[node].write().await;
        if *world.stores[node].down.lock().unwrap() {
            drop(_fences);
            up(world, node).await;
            continue;
        }
        if world.map.current().owner(p).map(String::as_str) == Some(node) {
            world.refused(format!("discarding partition {p} on its owner {node}"));
            return;
        }
        world.stores[node].tables.lock().unwrap().drop_partition(p);
        flushed(world, node);
        return;
    }
}
