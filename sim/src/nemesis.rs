//! The nemesis of a simulated run: crashes of coordinators, participants
//! and databases, cut links, clock jumps and pauses, one after another and
//! each healed after a while, in bad weather; and the healing at the end.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::net::Weather;
use crate::world::{Options, World, LEASE};

/// Faults, one after another, each healed after a while, until the clients
/// are done. The weather (loss, duplicates, delays) stays bad throughout.
pub(crate) async fn nemesis(world: Arc<World>, done: Arc<tokio::sync::Notify>, opts: Options) {
    {
        let weather = Weather {
            loss: world.rng(|r| r.u32(0..60)),
            duplicate: world.rng(|r| r.u32(0..80)),
            long_delay: world.rng(|r| r.u32(0..50)),
        };
        world.net.lock().unwrap().weather = weather;
    }
    let nodes: Vec<String> = world.stores.keys().cloned().collect();
    let stop = done.notified();
    tokio::pin!(stop);
    loop {
        let wait = Duration::from_millis(world.rng(|r| r.u64(200..2500)));
        tokio::select! {
            biased;
            _ = &mut stop => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let heal_after = Duration::from_millis(world.rng(|r| r.u64(10..2500)));
        match world.rng(|r| r.u32(0..8)) {
            0 => {
                let c = world.rng(|r| r.usize(0..opts.coordinators));
                world.fault("coordinator_crash");
                world.crash_coordinator(c);
                let w = world.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(heal_after).await;
                    w.start_coordinator(c);
                });
            }
            1 => {
                let n = nodes[world.rng(|r| r.usize(0..nodes.len()))].clone();
                world.fault("participant_crash");
                set_node_up(&world, &n, false);
                let w = world.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(heal_after).await;
                    w.restart_participant(&n).await;
                });
            }
            2 => {
                let n = nodes[world.rng(|r| r.usize(0..nodes.len()))].clone();
                // Killed, not stopped: commits not yet flushed are lost.
                world.fault("database_crash");
                world.stores[&n].crash();
                let w = world.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(heal_after).await;
                    *w.stores[&n].down.lock().unwrap() = false;
                });
            }
            3 | 4 => {
                let c = World::coordinator_name(world.rng(|r| r.usize(0..opts.coordinators)));
                let n = nodes[world.rng(|r| r.usize(0..nodes.len()))].clone();
                let mut cuts = Vec::new();
                let way = world.rng(|r| r.u32(0..3));
                if way != 1 {
                    cuts.push((c.clone(), n.clone()));
                }
                if way != 0 {
                    cuts.push((n.clone(), c.clone()));
                }
                world.fault(match way {
                    0 => "cut_requests_only",
                    1 => "cut_replies_only",
                    _ => "cut_both_ways",
                });
                world.net.lock().unwrap().cuts.extend(cuts.clone());
                let w = world.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(heal_after).await;
                    let mut net = w.net.lock().unwrap();
                    for cut in cuts {
                        net.cuts.remove(&cut);
                    }
                });
            }
            5 => {
                let n = nodes[world.rng(|r| r.usize(0..nodes.len()))].clone();
                let by = world.rng(|r| r.i64(-10_000..=10_000));
                world.fault(if by >= 0 {
                    "clock_jump_forward"
                } else {
                    "clock_jump_backward"
                });
                world.stores[&n].clock.jump(by);
            }
            6 => {
                // A pause longer than the lease: the coordinator wakes up
                // and carries on as if nothing happened.
                let c = World::coordinator_name(world.rng(|r| r.usize(0..opts.coordinators)));
                let pause = LEASE + Duration::from_millis(world.rng(|r| r.u64(0..4000)));
                world.fault("coordinator_pause");
                world
                    .net
                    .lock()
                    .unwrap()
                    .paused
                    .insert(c, Instant::now() + pause);
            }
            _ => {
                // Crash every coordinator at once: nothing is left running
                // that knows what it was doing.
                world.fault("all_coordinators_crash");
                for c in 0..opts.coordinators {
                    world.crash_coordinator(c);
                }
                let w = world.clone();
                let n = opts.coordinators;
                tokio::spawn(async move {
                    tokio::time::sleep(heal_after).await;
                    for c in 0..n {
                        if w.coordinators.lock().unwrap()[c].api.is_none() {
                            w.start_coordinator(c);
                        }
                    }
                });
            }
        }
    }
}

pub(crate) fn set_node_up(world: &World, node: &str, up: bool) {
    let mut net = world.net.lock().unwrap();
    if let Some(n) = net.nodes.get_mut(node) {
        if n.up && !up {
            n.incarnation += 1;
        }
        n.up = up;
    }
}

/// Faults stop: every node and coordinator up, links whole, fair weather.
/// Clock offsets stay (a clock that jumped does not jump back).
pub(crate) fn heal(world: &World, opts: &Options) {
    {
        let mut net = world.net.lock().unwrap();
        net.weather = Weather::default();
        net.cuts.clear();
        net.paused.clear();
        for n in net.nodes.values_mut() {
            n.up = true;
        }
    }
    for s in world.stores.values() {
        *s.down.lock().unwrap() = false;
    }
    for c in 0..opts.coordinators {
        if world.coordinators.lock().unwrap()[c].api.is_none() {
            world.start_coordinator(c);
        }
    }
}
