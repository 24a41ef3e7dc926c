//! Online partition moves, driven from here (see `participant::moves` for
//! the node's side):
//!
//! 1. record the move in etcd (`moves/{p}`, phase `moving`): coordinators
//!    hold new work on the partition back until it ends;
//! 2. fence the partition `draining` on its owner and wait (bounded) for
//!    its in-flight transfers to finish; then `frozen`;
//! 3. copy it: export from the old owner, import into the new one, which
//!    checks the copy against the export's summary;
//! 4. switch the owner in etcd, a compare-and-set on the map revision that
//!    also requires the move record and the old owner unchanged;
//! 5. fence it `moved` on the old owner, which drops its rows; a caller with
//!    any map is refused there from then on;
//! 6. delete the move record.
//!
//! Every step is idempotent and the record says where a move stands, so
//! running the same command again after a crash (of walletctl, or of either
//! node) resumes it; `--abort` undoes one that has not switched yet.

use std::time::{Duration, Instant};

use serde::Serialize;
use wallet_shared::admin::{
    Fence, FenceState, ImportRequest, NodePartitions, PartitionExport, PartitionSummary,
};
use wallet_shared::map::{MapError, Move, MovePhase};
use wallet_shared::{routes, MapStore, PartitionId, PartitionMap};

use crate::ctx::Ctx;
use crate::error::{conflict, not_found, CtlError, CtlResult, Exit};
use crate::output::Table;

#[derive(Debug, Clone, clap::Args)]
pub struct MoveOptions {
    /// Longest wait, in seconds, for the partition's in-flight transfers to
    /// finish before it is frozen (whatever is left is copied as it is)
    #[arg(long, default_value_t = 10)]
    drain_timeout: u64,
    /// Milliseconds to let coordinators see a new move before fencing
    #[arg(long, default_value_t = 500)]
    announce_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct MoveReport {
    pub partition: PartitionId,
    pub from: String,
    pub to: String,
    /// Nothing to do: the partition was already there.
    pub already_there: bool,
    /// What was copied (`None` when resuming after the switch).
    pub copied: Option<PartitionSummary>,
    /// Seconds spent waiting for in-flight transfers.
    pub drain_seconds: f64,
    /// Seconds the partition was frozen (no writes at all).
    pub frozen_seconds: f64,
    pub total_seconds: f64,
}

pub fn describe(r: &MoveReport) -> String {
    if r.already_there {
        return format!("partition {} is already on {}", r.partition, r.to);
    }
    let copied = r
        .copied
        .as_ref()
        .map_or("resumed after the switch".to_string(), |c| {
            format!(
                "{} accounts, {} events, {} legs, {} transfer records",
                c.accounts, c.events, c.legs, c.transfers
            )
        });
    format!(
        "partition {} moved from {} to {} in {:.2} s ({}; drained {:.2} s, frozen {:.2} s)",
        r.partition, r.from, r.to, r.total_seconds, copied, r.drain_seconds, r.frozen_seconds
    )
}

/// Test hook: dies here, as `kill -9` would (`WALLETCTL_CRASH_AT`).
fn crash_point(point: &str) {
    if std::env::var("WALLETCTL_CRASH_AT").as_deref() == Ok(point) {
        eprintln!("walletctl: WALLETCTL_CRASH_AT={point}: dying here");
        std::process::abort();
    }
}

fn check_partition(map: &PartitionMap, p: PartitionId) -> CtlResult<()> {
    if p >= map.partition_count() {
        return Err(not_found(format!(
            "no partition {p}: the map has partitions 0 to {}",
            map.partition_count() - 1
        )));
    }
    Ok(())
}

/// Applies a map change that depends on the map as read: `change` looks at
/// a fresh reading and says what to write (or fails); a concurrent change
/// makes it read again (a few times, with backoff).
async fn change_map(
    store: &MapStore,
    what: &str,
    change: impl Fn(&PartitionMap) -> CtlResult<(Vec<(String, String)>, Vec<String>)>,
) -> CtlResult<PartitionMap> {
    let mut backoff = wallet_shared::retry::Policy::request().backoff();
    loop {
        let map = store.load().await?;
        let (puts, deletes) = change(&map)?;
        match store.update(map.revision, &puts, &deletes).await {
            Ok(map) => return Ok(map),
            Err(MapError::Changed(_)) => match backoff.next() {
                Some(delay) => tokio::time::sleep(delay).await,
                None => {
                    return Err(conflict(format!(
                        "{what}: the partition map keeps changing underneath; try again"
                    )))
                }
            },
            Err(e) => return Err(e.into()),
        }
    }
}

fn move_key(p: PartitionId) -> String {
    format!("moves/{p:05}")
}

fn owner_key(p: PartitionId) -> String {
    format!("partitions/{p:05}")
}

pub async fn run(ctx: &Ctx, p: PartitionId, to: &str, opts: &MoveOptions) -> CtlResult<MoveReport> {
    let started = Instant::now();
    let store = ctx.map_store().await?;
    let map = store.load().await?;
    check_partition(&map, p)?;
    ctx.node_url(&map, to)?;
    let mut report = MoveReport {
        partition: p,
        from: map.owners[p as usize].clone(),
        to: to.to_string(),
        already_there: false,
        copied: None,
        drain_seconds: 0.0,
        frozen_seconds: 0.0,
        total_seconds: 0.0,
    };
    let record = match map.moves.get(&p) {
        Some(m) if m.phase == MovePhase::Aborting => {
            return Err(conflict(format!(
                "the move of partition {p} to {} is being undone; run \
                 `walletctl partitions move {p} --abort` to finish undoing it",
                m.to
            )))
        }
        Some(m) if m.to != to => {
            return Err(conflict(format!(
                "partition {p} is being moved to {}; run `walletctl partitions move {p} --to {}` \
                 to finish that move, or `walletctl partitions move {p} --abort` to undo it",
                m.to, m.to
            )))
        }
        Some(m) => {
            ctx.output.note(format!(
                "resuming the move of partition {p} from {} to {to}",
                m.from
            ));
            m.clone()
        }
        None if map.owners[p as usize] == to => {
            report.already_there = true;
            return Ok(report);
        }
        None => {
            let record = Move {
                from: map.owners[p as usize].clone(),
                to: to.to_string(),
                phase: MovePhase::Moving,
                started_at: chrono::Utc::now().to_rfc3339(),
            };
            let value = serde_json::to_string(&record).expect("serializable");
            change_map(&store, "recording the move", |map| {
                if map.moves.contains_key(&p) {
                    return Err(conflict(format!(
                        "partition {p}: another move started just now"
                    )));
                }
                if map.owners[p as usize] != record.from {
                    return Err(conflict(format!("partition {p} changed owner just now")));
                }
                Ok((vec![(move_key(p), value.clone())], vec![]))
            })
            .await?;
            // Coordinators follow the map: give them a moment to hold new
            // work back, so few requests meet the fence.
            tokio::time::sleep(Duration::from_millis(opts.announce_ms)).await;
            record
        }
    };
    report.from = record.from.clone();
    let map = store.load().await?;
    let from_url = ctx.node_url(&map, &record.from)?.to_string();
    let to_url = ctx.node_url(&map, &record.to)?.to_string();
    let from_name = format!("node {} (the old owner)", record.from);
    let to_name = format!("node {} (the new owner)", record.to);

    if map.owners[p as usize] != record.to {
        // 2. Fence, drain, freeze.
        let fence = |state| Fence {
            state,
            to: record.to.clone(),
        };
        let fence_url = format!("{from_url}{}", routes::FENCE.with(p));
        let _: Fence = ctx
            .post(&from_name, &fence_url, &fence(FenceState::Draining))
            .await?;
        crash_point("after_drain_fence");
        let drain_started = Instant::now();
        let deadline = drain_started + Duration::from_secs(opts.drain_timeout);
        loop {
            let np: NodePartitions = ctx
                .get(&from_name, &format!("{from_url}{}", routes::PARTITIONS))
                .await?;
            let busy = np
                .partitions
                .iter()
                .find(|s| s.partition == p)
                .map_or(0, |s| s.prepared_legs + s.open_transfers);
            if busy == 0 {
                break;
            }
            if Instant::now() >= deadline {
                ctx.output.note(format!(
                    "partition {p}: {busy} legs or transfers still in flight after {} s; \
                     they are copied as they are and finish on {to}",
                    opts.drain_timeout
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        report.drain_seconds = drain_started.elapsed().as_secs_f64();
        let frozen_at = Instant::now();
        let _: Fence = ctx
            .post(&from_name, &fence_url, &fence(FenceState::Frozen))
            .await?;
        crash_point("after_freeze");

        // 3. Copy.
        let export: PartitionExport = ctx
            .get(&from_name, &format!("{from_url}{}", routes::EXPORT.with(p)))
            .await?;
        let map = store.load().await?;
        let import = ImportRequest {
            map_revision: map.revision,
            export,
        };
        let copied: PartitionSummary = ctx
            .post(
                &to_name,
                &format!("{to_url}{}", routes::IMPORT.with(p)),
                &import,
            )
            .await?;
        if copied != import.export.summary {
            return Err(CtlError::new(
                Exit::Failed,
                format!("partition {p}: the copy on {to} does not match the export; the move stays frozen, run it again"),
            ));
        }
        report.copied = Some(copied);
        crash_point("after_import");

        // 4. Switch the owner.
        let switched = Move {
            phase: MovePhase::Switched,
            ..record.clone()
        };
        let value = serde_json::to_string(&switched).expect("serializable");
        change_map(&store, "switching the owner", |map| {
            let same = map.moves.get(&p).is_some_and(|m| {
                (&m.from, &m.to, m.phase) == (&record.from, &record.to, MovePhase::Moving)
            });
            if !same {
                return Err(conflict(format!(
                    "partition {p}: the move record changed underneath (undone?)"
                )));
            }
            if map.owners[p as usize] != record.from {
                return Err(conflict(format!("partition {p} changed owner underneath")));
            }
            Ok((
                vec![
                    (owner_key(p), record.to.clone()),
                    (move_key(p), value.clone()),
                ],
                vec![],
            ))
        })
        .await?;
        report.frozen_seconds = frozen_at.elapsed().as_secs_f64();
        crash_point("after_switch");
    }

    // 5. The old owner drops its copy and refuses the partition for good.
    let fence = Fence {
        state: FenceState::Moved,
        to: record.to.clone(),
    };
    let _: Fence = ctx
        .post(
            &from_name,
            &format!("{from_url}{}", routes::FENCE.with(p)),
            &fence,
        )
        .await?;
    // 6. Done.
    change_map(&store, "ending the move", |map| {
        Ok(if map.moves.contains_key(&p) {
            (vec![], vec![move_key(p)])
        } else {
            (vec![], vec![])
        })
    })
    .await?;
    report.total_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Undoes a move that has not switched the owner yet.
pub async fn abort(ctx: &Ctx, p: PartitionId) -> CtlResult<()> {
    let store = ctx.map_store().await?;
    let map = store.load().await?;
    check_partition(&map, p)?;
    let Some(record) = map.moves.get(&p).cloned() else {
        return Err(not_found(format!("no move of partition {p} is under way")));
    };
    if map.owners[p as usize] == record.to {
        return Err(conflict(format!(
            "partition {p} already belongs to {}; finish the move with \
             `walletctl partitions move {p} --to {}` (or move it back afterwards)",
            record.to, record.to
        )));
    }
    // First mark the move as being undone (compare-and-set): a run of the
    // move that is still going can then no longer switch the owner.
    let aborting = Move {
        phase: MovePhase::Aborting,
        ..record.clone()
    };
    let value = serde_json::to_string(&aborting).expect("serializable");
    change_map(&store, "marking the move as undone", |map| {
        let same = map
            .moves
            .get(&p)
            .is_some_and(|m| (&m.from, &m.to) == (&record.from, &record.to));
        if !same || map.owners[p as usize] != record.from {
            return Err(conflict(format!(
                "partition {p}: the move changed underneath"
            )));
        }
        Ok((vec![(move_key(p), value.clone())], vec![]))
    })
    .await?;
    let from_url = ctx.node_url(&map, &record.from)?.to_string();
    let to_url = ctx.node_url(&map, &record.to)?.to_string();
    let _: Option<serde_json::Value> = ctx
        .post(
            &format!("node {}", record.to),
            &format!("{to_url}{}", routes::DISCARD.with(p)),
            &serde_json::json!({}),
        )
        .await?;
    let _: Option<serde_json::Value> = ctx
        .delete(
            &format!("node {}", record.from),
            &format!("{from_url}{}", routes::FENCE.with(p)),
        )
        .await?;
    change_map(&store, "ending the move", |map| {
        if map.owners[p as usize] != record.from {
            return Err(conflict(format!("partition {p} changed owner underneath")));
        }
        Ok((vec![], vec![move_key(p)]))
    })
    .await?;
    #[derive(Serialize)]
    struct Aborted {
        partition: PartitionId,
        owner: String,
        undone_move_to: String,
    }
    let done = Aborted {
        partition: p,
        owner: record.from.clone(),
        undone_move_to: record.to.clone(),
    };
    ctx.output.emit(&done, |d| {
        format!(
            "move of partition {} to {} undone; {} owns it and serves it again",
            d.partition, d.undone_move_to, d.owner
        )
    });
    Ok(())
}

/// The moves that spread partitions evenly: from the node with the most to
/// the one with the fewest, until they differ by at most one.
pub fn plan(map: &PartitionMap) -> Vec<(PartitionId, String, String)> {
    let mut owners = map.owners.clone();
    let mut moves = Vec::new();
    loop {
        let count = |n: &String| owners.iter().filter(|o| *o == n).count();
        let most = map
            .nodes
            .keys()
            .max_by_key(|n| (count(n), std::cmp::Reverse(*n)));
        let fewest = map.nodes.keys().min_by_key(|n| (count(n), *n));
        let (Some(most), Some(fewest)) = (most, fewest) else {
            return moves;
        };
        if count(most) <= count(fewest) + 1 {
            return moves;
        }
        let p = owners
            .iter()
            .rposition(|o| o == most)
            .expect("the busiest node owns a partition");
        owners[p] = fewest.clone();
        moves.push((p as PartitionId, most.clone(), fewest.clone()));
    }
}

pub async fn rebalance(ctx: &Ctx, dry_run: bool, opts: &MoveOptions) -> CtlResult<()> {
    let map = ctx.map().await?;
    // Moves left over from an interrupted run come first.
    let mut todo: Vec<(PartitionId, String, String)> = map
        .moves
        .iter()
        .map(|(p, m)| (*p, m.from.clone(), m.to.clone()))
        .collect();
    let mut after = map.clone();
    for (p, _, to) in &todo {
        after.owners[*p as usize] = to.clone();
    }
    todo.extend(plan(&after));
    if dry_run {
        #[derive(Serialize)]
        struct Planned {
            partition: PartitionId,
            from: String,
            to: String,
        }
        let planned: Vec<Planned> = todo
            .iter()
            .map(|(p, from, to)| Planned {
                partition: *p,
                from: from.clone(),
                to: to.clone(),
            })
            .collect();
        ctx.output.emit(&planned, |planned| {
            if planned.is_empty() {
                return "the partitions are already spread evenly".to_string();
            }
            let mut t = Table::new(&["PARTITION", "FROM", "TO"]);
            for m in planned {
                t.row(vec![m.partition.to_string(), m.from.clone(), m.to.clone()]);
            }
            t.render()
        });
        return Ok(());
    }
    let total = todo.len();
    let mut reports = Vec::with_capacity(total);
    for (i, (p, from, to)) in todo.into_iter().enumerate() {
        ctx.output.note(format!(
            "{} {}/{total} partition {p}: {from} -> {to} ...",
            bar(i, total),
            i + 1
        ));
        let report = run(ctx, p, &to, opts).await.map_err(|e| {
            CtlError::new(
                e.exit,
                format!(
                    "{e}\n{} of {total} moves done; run `walletctl partitions rebalance` again to go on",
                    i
                ),
            )
        })?;
        ctx.output.note(format!("    {}", describe(&report)));
        reports.push(report);
    }
    ctx.output
        .note(format!("{} {total}/{total} done", bar(total, total)));
    ctx.output.emit(&reports, |r| {
        if r.is_empty() {
            return "the partitions are already spread evenly".to_string();
        }
        let mut t = Table::new(&["PARTITION", "FROM", "TO", "ACCOUNTS", "FROZEN S", "TOTAL S"]);
        for m in r {
            t.row(vec![
                m.partition.to_string(),
                m.from.clone(),
                m.to.clone(),
                m.copied
                    .as_ref()
                    .map_or("-".into(), |c| c.accounts.to_string()),
                format!("{:.2}", m.frozen_seconds),
                format!("{:.2}", m.total_seconds),
            ]);
        }
        t.render()
    });
    Ok(())
}

fn bar(done: usize, total: usize) -> String {
    let width = 20;
    let filled = (done * width).checked_div(total).unwrap_or(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(owners: &[&str], nodes: &[&str]) -> PartitionMap {
        PartitionMap {
            revision: 1,
            owners: owners.iter().map(|s| s.to_string()).collect(),
            nodes: nodes
                .iter()
                .map(|n| (n.to_string(), format!("http://{n}")))
                .collect(),
            moves: Default::default(),
        }
    }

    #[test]
    fn a_new_node_gets_its_share_and_nobody_more_than_one_extra() {
        let m = map(
            &["a", "b", "c", "a", "b", "c", "a", "b"],
            &["a", "b", "c", "d"],
        );
        let moves = plan(&m);
        assert_eq!(moves.len(), 2);
        let mut owners = m.owners.clone();
        for (p, from, to) in &moves {
            assert_eq!(&owners[*p as usize], from);
            owners[*p as usize] = to.clone();
        }
        for n in ["a", "b", "c", "d"] {
            assert_eq!(
                owners.iter().filter(|o| *o == n).count(),
                2,
                "{n}: {owners:?}"
            );
        }
        assert!(plan(&map(&["a", "b", "a"], &["a", "b"])).is_empty());
    }
}
