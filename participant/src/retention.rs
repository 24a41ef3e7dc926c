//! Bounded growth: what this node keeps, and for how long.
//!
//! - **Decision records** (`transfers`: transfers, deposits, withdrawals at
//!   their decision partition) and **leg records** (`legs`: each leg's and
//!   each movement's dedup record) are kept for `record_retention_secs`
//!   after they finished, then pruned in the background, a small batch per
//!   local transaction. Only finished rows go: a record completed (decided,
//!   and every leg applied the decision), a leg committed or aborted; never
//!   anything in doubt or prepared. The retention is the window in which a
//!   retry is recognized (same answer, or `idempotency_key_reused`); past
//!   it the id is forgotten and a request with it is a new request.
//! - **The event log** (`events`, `snapshots`) is the history balances, the
//!   feed and the projections derive from: never pruned.
//! - **The outbox** is pruned behind the slowest registered feed consumer
//!   ([`outbox_floor`]); with none registered, it is kept whole.
//!
//! Both finish times are "last changed" times of rows of one transaction:
//! a leg's money is posted in the local transaction that finishes it, and
//! a record completes only after every leg applied its decision. So a
//! record finished before a horizon has legs finished before it (up to the
//! nodes' clock skew), and a leg finished before it has its posting at the
//! same instant. The audit therefore judges nothing finished before
//! [`audit_horizon`] (a little later than any prune's horizon): it never
//! reports a pruned row's partner as an anomaly.
//!
//! A partition is pruned only while this node owns it, no move of it is
//! recorded in the map and no fence is set: a move's copy is checked
//! against the old owner's row counts. Each batch runs under the fences'
//! read guard, so a move's mark (taken under the write guard, after the
//! node has seen the move) waits for a batch in flight and every later
//! batch sees the move.

use std::time::Duration;

use chrono::{DateTime, Utc};
use wallet_shared::map::PartitionMap;
use wallet_shared::PartitionId;

use crate::app::App;
use crate::error::StoreError;
use crate::fence::FenceMap;
use crate::pg::PgStore;

/// How much later than the prune's horizon the audit's is: the clock skew
/// between nodes (a record's completion against its legs' times) and
/// between a leg's finish and its posting's time, at most.
pub const AUDIT_SLACK: Duration = Duration::from_secs(2);

/// The pruner's settings (`record_retention_secs`, `prune_interval_ms`,
/// `prune_batch`).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// How long a finished record is kept.
    pub keep: Duration,
    /// Pause between prune rounds.
    pub interval: Duration,
    /// Rows deleted per local transaction.
    pub batch: i64,
}

/// Rows finished before this instant may be pruned now (a retention
/// longer than the calendar: 1970, nothing is pruned).
pub fn prune_horizon(now: DateTime<Utc>, keep: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(keep)
        .ok()
        .and_then(|keep| now.checked_sub_signed(keep))
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// Rows finished before this instant may be gone: the audit does not judge
/// them (nor their partners on other nodes).
pub fn audit_horizon(now: DateTime<Utc>, keep: Duration) -> DateTime<Utc> {
    let slack = chrono::Duration::from_std(AUDIT_SLACK).unwrap_or_default();
    prune_horizon(now, keep)
        .checked_add_signed(slack)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// The partitions the pruner may touch: owned here in `map`, no move of
/// them recorded, no fence.
pub fn prunable(map: &PartitionMap, node: &str, fences: &FenceMap) -> Vec<PartitionId> {
    map.partitions_of(node)
        .into_iter()
        .filter(|p| !map.moves.contains_key(p) && !fences.contains_key(p))
        .collect()
}

/// The position up to which outbox rows may go: the smallest position the
/// registered consumers acknowledged; none registered, none.
pub fn outbox_floor(acknowledged: &[i64]) -> Option<i64> {
    acknowledged.iter().copied().min()
}

/// Rows pruned by one round, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub transfers: u64,
    pub legs: u64,
    pub outbox: u64,
}

/// The pruner: a round every `interval`, batches until a round's work is
/// done. A failed round is logged and retried after a bounded, jittered
/// pause.
pub async fn run(app: App<PgStore>, r: Retention) {
    let mut failures = wallet_shared::retry::Policy::background().backoff();
    loop {
        match round(&app, &r).await {
            Ok(p) => {
                failures = wallet_shared::retry::Policy::background().backoff();
                if p != Pruned::default() {
                    tracing::info!(
                        transfers = p.transfers,
                        legs = p.legs,
                        outbox = p.outbox,
                        "pruned finished records"
                    );
                }
                tokio::time::sleep(r.interval).await;
            }
            Err(e) => {
                let pause = failures.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e, ?pause, "prune round failed");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// One round: every finished record older than the horizon, then the
/// outbox behind its consumers, a batch at a time.
pub async fn round(app: &App<PgStore>, r: &Retention) -> Result<Pruned, StoreError> {
    let mut total = Pruned::default();
    let horizon = prune_horizon(Utc::now(), r.keep);
    for table in ["transfers", "legs"] {
        loop {
            let n = {
                let fences = app.fences.read().await;
                let parts: Vec<i32> = prunable(&app.map.current(), &app.node_id, &fences)
                    .into_iter()
                    .map(|p| p as i32)
                    .collect();
                if parts.is_empty() {
                    break;
                }
                prune_batch(&app.store, table, horizon, &parts, r.batch).await?
            };
            ::metrics::counter!("wallet_pruned_rows_total", "table" => table).increment(n);
            match table {
                "transfers" => total.transfers += n,
                _ => total.legs += n,
            }
            if (n as i64) < r.batch {
                break;
            }
        }
    }
    loop {
        let n = prune_outbox(&app.store, r.batch).await?;
        ::metrics::counter!("wallet_pruned_rows_total", "table" => "outbox").increment(n);
        total.outbox += n;
        if (n as i64) < r.batch {
            break;
        }
    }
    Ok(total)
}

/// Deletes at most `limit` finished rows of `table` (`transfers` or
/// `legs`) in `partitions` that finished before `horizon`, oldest first.
async fn prune_batch(
    store: &PgStore,
    table: &str,
    horizon: DateTime<Utc>,
    partitions: &[i32],
    limit: i64,
) -> Result<u64, StoreError> {
    let sql = match table {
        "transfers" => {
            "WITH d AS (DELETE FROM transfers WHERE transaction_id IN (
                 SELECT transaction_id FROM transfers
                 WHERE completed AND state <> 'preparing' AND updated_at < $1
                   AND partition = ANY($2)
                 ORDER BY updated_at LIMIT $3)
               AND completed RETURNING 1)
             SELECT count(*) FROM d"
        }
        _ => {
            "WITH d AS (DELETE FROM legs WHERE (transaction_id, role) IN (
                 SELECT transaction_id, role FROM legs
                 WHERE state <> 'prepared' AND updated_at < $1 AND partition = ANY($2)
                 ORDER BY updated_at LIMIT $3)
               AND state <> 'prepared' RETURNING 1)
             SELECT count(*) FROM d"
        }
    };
    let n: i64 = sqlx::query_scalar(sql)
        .bind(horizon)
        .bind(partitions)
        .bind(limit)
        .fetch_one(&mut *store.acquire().await?)
        .await?;
    Ok(n as u64)
}

/// Deletes at most `limit` outbox rows whose entries are all at or below
/// the smallest position the registered consumers acknowledged, and moves
/// `pruned_through` up to the last position deleted. Serialised with the
/// registrations by the lock on `outbox_head`.
async fn prune_outbox(store: &PgStore, limit: i64) -> Result<u64, StoreError> {
    let mut tx = store.begin().await?;
    sqlx::query("SELECT 1 FROM outbox_head WHERE only_row FOR UPDATE")
        .execute(&mut *tx)
        .await?;
    let acked: Vec<i64> = sqlx::query_scalar("SELECT position FROM feed_consumers")
        .fetch_all(&mut *tx)
        .await?;
    let Some(floor) = outbox_floor(&acked) else {
        return Ok(0);
    };
    let (n, last): (i64, Option<i64>) = sqlx::query_as(
        "WITH d AS (DELETE FROM outbox WHERE id IN (
             SELECT id FROM outbox
             WHERE first_position IS NOT NULL AND first_position + entries - 1 <= $1
             ORDER BY first_position LIMIT $2)
           RETURNING first_position + entries - 1 AS last)
         SELECT count(*), max(last) FROM d",
    )
    .bind(floor)
    .bind(limit)
    .fetch_one(&mut *tx)
    .await?;
    if let Some(last) = last {
        sqlx::query(
            "UPDATE outbox_head SET pruned_through = GREATEST(pruned_through, $1) WHERE only_row",
        )
        .bind(last)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use wallet_shared::admin::{Fence, FenceState};

    #[test]
    fn the_audit_judges_nothing_a_prune_may_have_taken() {
        let now = Utc::now();
        let keep = Duration::from_secs(30 * 24 * 3600);
        let pruned_before = prune_horizon(now, keep);
        assert_eq!(now - pruned_before, chrono::Duration::days(30));
        // An audit at the same instant or later skips at least as much.
        for later in [0, 1, 3600] {
            let audit = audit_horizon(now + chrono::Duration::seconds(later), keep);
            assert!(audit >= pruned_before + chrono::Duration::from_std(AUDIT_SLACK).unwrap());
        }
        // A retention too long for the clock keeps everything.
        assert_eq!(
            prune_horizon(now, Duration::MAX),
            DateTime::<Utc>::UNIX_EPOCH
        );
    }

    #[test]
    fn the_outbox_waits_for_the_slowest_consumer_and_for_one_to_exist() {
        assert_eq!(outbox_floor(&[]), None);
        assert_eq!(outbox_floor(&[120, 7, 300]), Some(7));
        assert_eq!(outbox_floor(&[0]), Some(0));
    }

    #[test]
    fn only_owned_still_partitions_are_pruned() {
        let mut map = PartitionMap {
            revision: 1,
            owners: ["node-1", "node-1", "node-1", "node-2"]
                .map(String::from)
                .to_vec(),
            nodes: BTreeMap::new(),
            moves: BTreeMap::new(),
        };
        map.moves.insert(
            1,
            wallet_shared::map::Move {
                from: "node-1".into(),
                to: "node-2".into(),
                phase: wallet_shared::map::MovePhase::Copying,
                started_at: "2026-01-01T00:00:00Z".into(),
                cutover_at: None,
                rollbacks: 0,
            },
        );
        let mut fences = BTreeMap::new();
        fences.insert(
            2,
            Fence {
                state: FenceState::Draining,
                to: "node-2".into(),
                deadline: None,
            },
        );
        assert_eq!(prunable(&map, "node-1", &fences), vec![0]);
        assert_eq!(prunable(&map, "node-2", &BTreeMap::new()), vec![3]);
    }
}
