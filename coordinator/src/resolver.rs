//! Recovery: finds every unresolved transfer and leg, however old, on every
//! node, and drives it to its decision. Any number of coordinators may run
//! it at once: decisions are compare-and-set and leg operations idempotent.
//!
//! Each round, for each node:
//! - a record still `preparing` after its lease: decide abort (the CAS loses
//!   to a decision that got there first, and then that one is applied);
//! - a decided record not yet complete: apply the decision to both legs;
//! - a leg still prepared after the grace period: look up its decision and
//!   apply it; no record at all means abort (presumed abort);
//! - a deposit's or withdrawal's claim still `preparing` after its lease:
//!   send the movement again (idempotent: applied once, or refused once, on
//!   the account's node) and decide the record to match.

use std::time::Duration;

use tracing::Instrument;
use wallet_shared::admin::ResolveReply;
use wallet_shared::protocol::{
    Begin, Begun, Decision, Leg, LegRole, Movement, RecordKind, TransferRecord, TransferState,
    Unresolved,
};
use wallet_shared::{routes, ErrorCode, PartitionMap, Rejection, TransactionId};

use crate::client::{judged, CallError};
use crate::machine::{Ending, Machine};
use crate::transfer::Coordinator;

pub async fn run(coordinator: Coordinator, interval: Duration, grace: Duration) {
    loop {
        let jitter = Duration::from_millis(fastrand::u64(0..=interval.as_millis() as u64 / 4 + 1));
        tokio::time::sleep(interval + jitter).await;
        let n = round(&coordinator, grace).await;
        if n > 0 {
            tracing::info!(resolved = n, "recovery round");
        }
    }
}

/// One pass over every node; returns how many items it worked on.
pub async fn round(coordinator: &Coordinator, grace: Duration) -> usize {
    let map = coordinator.participants.map.current();
    let mut worked = 0;
    for node in map.nodes.keys() {
        let query = [("grace_ms", grace.as_millis().to_string())];
        let found: Unresolved = match coordinator
            .participants
            .get_node(node, routes::UNRESOLVED.pattern(), &query)
            .await
        {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%node, error = %e, "recovery cannot scan node");
                continue;
            }
        };
        worked += found.transfers.len() + found.legs.len();
        for record in found.transfers {
            let span = tracing::info_span!("recover", transaction_id = %record.spec.transaction_id);
            resolve_record(coordinator, &map, record)
                .instrument(span)
                .await;
        }
        for leg in found.legs {
            let span = tracing::info_span!("recover_leg", transaction_id = %leg.transaction_id);
            resolve_leg(coordinator, &map, leg).instrument(span).await;
        }
    }
    worked
}

fn legs_of(map: &PartitionMap, record: &TransferRecord) -> [Leg; 2] {
    let spec = &record.spec;
    Leg::both(
        spec,
        map.account_partition(&spec.from),
        map.account_partition(&spec.to),
        map.decision_partition(spec.transaction_id),
    )
}

async fn resolve_record(coordinator: &Coordinator, map: &PartitionMap, record: TransferRecord) {
    if let Err(e) = settle(coordinator, map, record).await {
        tracing::warn!(error = %e, "recovery could not decide");
    }
}

/// Aborts an undecided record (a compare-and-set: a decision that got there
/// first wins and is applied instead), then drives both legs to the
/// decision. Returns the record as decided, and whether both legs applied it.
async fn settle(
    coordinator: &Coordinator,
    map: &PartitionMap,
    record: TransferRecord,
) -> Result<(TransferRecord, bool), CallError> {
    let id = record.spec.transaction_id;
    if let Some(m) = Movement::of_record(&record, map.account_partition(&record.spec.to)) {
        return settle_movement(coordinator, map, record, m).await;
    }
    let legs = legs_of(map, &record);
    let (machine, first) = Machine::recover(record, legs);
    match coordinator.drive(machine, first).await {
        Ending::Decided { record, finished } => {
            tracing::info!(state = ?record.state, finished, "recovery applied the decision");
            Ok((record, finished))
        }
        Ending::Undecided(e) => Err(e),
        Ending::Early(outcome) => Err(CallError::Unknown(format!(
            "internal: recovery of {id} ended early: {outcome:?}"
        ))),
    }
}

/// A movement's claim: its record follows the account's node, which holds
/// the movement's truth. The client asked for it and the record holds all
/// of it, so recovery completes it rather than abort it: a retry of a
/// deposit whose answer was lost always gets the deposit's real outcome.
async fn settle_movement(
    coordinator: &Coordinator,
    map: &PartitionMap,
    record: TransferRecord,
    m: Movement,
) -> Result<(TransferRecord, bool), CallError> {
    if record.state != TransferState::Preparing {
        // Decided records of movements are complete when written.
        return Ok((record, true));
    }
    let id = m.transaction_id;
    let outcome = coordinator.apply_movement(m).await?;
    let record = coordinator
        .decide(id, map.decision_partition(id), Decision::of(&outcome))
        .await?;
    tracing::info!(state = ?record.state, "recovery settled the movement");
    Ok((record, true))
}

/// Drives one transfer to its end now (`walletctl tx resolve`), with the
/// code the background rounds use. An undecided transfer whose coordinator
/// still holds its lease is left alone unless `force`: this claims the
/// lease with `begin`, as a retry of the transfer would, so a live
/// coordinator is never raced. Only ever decides abort, so nothing commits
/// without its two yes votes. (A deposit's or withdrawal's claim is
/// completed instead: see `settle_movement`.)
pub async fn resolve_one(
    coordinator: &Coordinator,
    id: TransactionId,
    force: bool,
) -> Result<ResolveReply, CallError> {
    let map = coordinator.participants.map.current();
    let home = map.decision_partition(id);
    let record = coordinator.status(id).await?;
    let before = record.state;
    let record = if record.state == TransferState::Preparing && !force {
        let begin = Begin {
            spec: record.spec.clone(),
            partition: home,
            lease_ms: coordinator.lease.as_millis() as u64,
            attempt: crate::transfer::new_attempt(),
            kind: record.kind,
            prepare: None,
        };
        match judged(coordinator.batches.begin.submit(begin).await) {
            Ok(Begun::Proceed | Begun::Prepared { .. }) => record,
            Ok(Begun::Decided { record }) => record,
            Err(CallError::Rejected(r)) if r.code == ErrorCode::InProgress => {
                return Err(CallError::Rejected(Rejection::new(
                    ErrorCode::InProgress,
                    format!(
                        "transfer {id} is undecided and its coordinator still holds its lease; \
                         try again after the lease ({} ms), or force an abort",
                        coordinator.lease.as_millis()
                    ),
                )))
            }
            Err(CallError::Rejected(r)) if r.code == ErrorCode::IdempotencyKeyReused => {
                return Err(CallError::Unknown(format!(
                    "transfer {id}: its own body was refused as another one"
                )))
            }
            Err(e) => return Err(e),
        }
    } else {
        record
    };
    let (record, finished) = settle(coordinator, &map, record).await?;
    let action = match (before, record.state) {
        (TransferState::Preparing, TransferState::Aborted) => "aborted the undecided transfer",
        (TransferState::Preparing, _) => "found it decided meanwhile and applied the decision",
        _ => "applied its decision to both legs",
    };
    let action = if finished {
        action.to_string()
    } else {
        format!("{action}; not every leg answered yet (recovery keeps trying)")
    };
    Ok(ResolveReply {
        record,
        finished,
        action,
    })
}

async fn resolve_leg(coordinator: &Coordinator, map: &PartitionMap, leg: Leg) {
    let id = leg.transaction_id;
    let path = routes::TRANSFER.with(id);
    match coordinator
        .participants
        .get::<TransferRecord>(leg.decision_partition, &path, &[])
        .await
    {
        Ok(record) if record.state == TransferState::Preparing => {
            // Its lease has not run out yet; the record's own turn comes then.
        }
        Ok(record) if matches_leg(&record, &leg) => {
            let legs = legs_of(map, &record);
            let (machine, first) = Machine::recover(record, legs);
            coordinator.drive(machine, first).await;
        }
        Ok(_) => {
            tracing::error!("a prepared leg does not match its transfer record; aborting the leg");
            abort_leg(coordinator, leg).await;
        }
        Err(CallError::Rejected(r)) if r.code == ErrorCode::TransferNotFound => {
            tracing::warn!("prepared leg without a transfer record: presumed abort");
            abort_leg(coordinator, leg).await;
        }
        Err(e) => tracing::debug!(error = %e, "cannot look up the decision"),
    }
}

fn matches_leg(record: &TransferRecord, leg: &Leg) -> bool {
    if record.kind != RecordKind::Transfer {
        return false;
    }
    let spec = &record.spec;
    let account = match leg.role {
        LegRole::Debit => &spec.from,
        LegRole::Credit => &spec.to,
    };
    *account == leg.account && spec.amount == leg.amount && spec.currency == leg.currency
}

async fn abort_leg(coordinator: &Coordinator, leg: Leg) {
    if let Err(e) = coordinator.batches.abort.submit(leg).await {
        tracing::warn!(error = %e, "could not abort leg");
    }
}

#[cfg(test)]
mod tests {
    use wallet_shared::protocol::TransferSpec;
    use wallet_shared::{AccountId, Amount, Currency};

    use super::*;

    fn spec(id: TransactionId, from: &str, to: &str, minor: i64, currency: &str) -> TransferSpec {
        TransferSpec {
            transaction_id: id,
            from: AccountId::parse(from).unwrap(),
            to: AccountId::parse(to).unwrap(),
            amount: Amount::from_minor(minor).unwrap(),
            currency: Currency::parse(currency).unwrap(),
            tenant: None,
        }
    }

    fn record(spec: &TransferSpec, kind: RecordKind) -> TransferRecord {
        TransferRecord {
            kind,
            spec: spec.clone(),
            state: TransferState::Committed,
            reason: None,
            created_at: chrono::Utc::now(),
            decided_at: None,
            completed: false,
        }
    }

    /// The guard recovery applies before driving a prepared leg to its
    /// record's decision: only the record's own leg (same role, account,
    /// amount, currency) gets it; a leg of the id used with another body is
    /// aborted instead, and a deposit's or withdrawal's record owns no
    /// transfer leg.
    #[test]
    fn only_the_records_own_leg_gets_its_decision() {
        let id = TransactionId::new_random();
        let original = spec(id, "alice", "bob", 1_000, "USD");
        let r = record(&original, RecordKind::Transfer);
        for leg in Leg::both(&original, 1, 2, 3) {
            assert!(matches_leg(&r, &leg), "{leg:?}");
        }
        let others = [
            spec(id, "carol", "dave", 1_000, "USD"),
            spec(id, "alice", "bob", 999, "USD"),
            spec(id, "alice", "bob", 1_000, "EUR"),
            // The same accounts the other way round: each leg's role names
            // the other account.
            spec(id, "bob", "alice", 1_000, "USD"),
        ];
        for other in &others {
            for leg in Leg::both(other, 1, 2, 3) {
                assert!(!matches_leg(&r, &leg), "{leg:?}");
            }
        }
        // Another body sharing one leg with the record: that leg is the
        // record's (same role, account, amount, currency), the other not.
        let [debit, credit] = Leg::both(&spec(id, "alice", "erin", 1_000, "USD"), 1, 2, 3);
        assert!(matches_leg(&r, &debit));
        assert!(!matches_leg(&r, &credit));
        for kind in [RecordKind::Deposit, RecordKind::Withdrawal] {
            for leg in Leg::both(&original, 1, 2, 3) {
                assert!(!matches_leg(&record(&original, kind), &leg));
            }
        }
    }
}
