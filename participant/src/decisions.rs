//! Decision records: the dedup record and the one durable decision of each
//! transfer whose decision partition lives here.
//!
//! `begin` inserts the record (`preparing`) with a lease for the coordinator
//! that runs it; `decide` is a compare-and-set out of `preparing`, so the first
//! decision wins and every later one (a slow coordinator, recovery) reads it.
//! Presumed abort: a transfer without a `committed` record never happened.

use wallet_shared::protocol::{
    Begin, Begun, Decide, Decision, EventKind, Leg, LegState, RecordKind, TransferRecord,
    TransferState, Verdict,
};
use wallet_shared::{Rejection, TransactionId};

use crate::model::{Broken, Keys, TransferRow, Working};
use crate::{ledger, legs};

pub fn keys(ids: impl IntoIterator<Item = TransactionId>) -> Keys {
    Keys {
        transfers: ids.into_iter().collect(),
        ..Keys::default()
    }
}

/// The longest lease a coordinator may claim; a longer one from the wire is
/// taken as this (a lease only delays recovery, it never decides anything).
const MAX_LEASE: chrono::Duration = chrono::Duration::hours(1);

fn lease_until(w: &Working, b: &Begin) -> chrono::DateTime<chrono::Utc> {
    let asked = i64::try_from(b.lease_ms).unwrap_or(i64::MAX);
    let lease = chrono::Duration::try_milliseconds(asked).map_or(MAX_LEASE, |d| d.min(MAX_LEASE));
    w.now + lease
}

/// Claims a transfer for the calling coordinator, or says why not: the id
/// was used with another body (`idempotency_key_reused`), or another
/// coordinator holds a live lease on it (`in_progress`).
pub fn begin(w: &mut Working, b: &Begin) -> Result<Verdict<Begun>, Broken> {
    let spec = &b.spec;
    let id = spec.transaction_id;
    let fingerprint = b.fingerprint();
    let until = lease_until(w, b);
    let now = w.now;
    let Some(stored) = w.transfer(id) else {
        w.insert_transfer(TransferRow {
            record: TransferRecord {
                kind: b.kind,
                spec: spec.clone(),
                state: TransferState::Preparing,
                reason: None,
                created_at: now,
                decided_at: None,
                completed: false,
            },
            partition: b.partition,
            fingerprint,
            lease_until: until,
            lease_owner: b.attempt,
        })?;
        return Ok(Ok(Begun::Proceed));
    };
    if stored.fingerprint != fingerprint {
        return Ok(Err(Rejection::idempotency_key_reused(id)));
    }
    if stored.record.state != TransferState::Preparing {
        return Ok(Ok(Begun::Decided {
            record: stored.record.clone(),
        }));
    }
    // A live lease keeps a second coordinator off a transfer. A deposit or
    // withdrawal needs no such care: its one step is idempotent on the
    // account's node, so an identical request running beside the first
    // just gets the same outcome.
    if stored.lease_until > now
        && stored.lease_owner != b.attempt
        && stored.record.kind == RecordKind::Transfer
    {
        return Ok(Err(Rejection::in_progress(id)));
    }
    // The coordinator that began it has gone quiet past its lease: this one
    // takes over. Both running the protocol is safe (idempotent legs, CAS
    // decision); the lease only avoids doing the work twice.
    if stored.lease_owner != b.attempt {
        tracing::info!(transaction_id = %id, "taking over a transfer whose lease expired");
    }
    // Only now is the row written: an answer that changes nothing (reused,
    // decided, in progress) costs no UPDATE.
    if let Some(stored) = w.transfer_mut(id) {
        stored.lease_until = until;
        stored.lease_owner = b.attempt;
    }
    Ok(Ok(Begun::Proceed))
}

/// The record, and `leg` with its account when one rides along
/// ([`begin_and_prepare`], [`decide_and_apply`]).
pub fn keys_with(id: TransactionId, leg: Option<&Leg>) -> Keys {
    Keys {
        transfers: [id].into(),
        ..legs::keys(leg.map_or(&[], std::slice::from_ref))
    }
}

/// [`begin`], and when the claim proceeds, the prepare of `leg` (a leg of
/// the transfer on this node) in the same local transaction: one local
/// transaction and one round trip fewer than a begin and a prepare. The
/// prepare still comes after the claim, as it does in two steps.
pub fn begin_and_prepare(
    w: &mut Working,
    b: &Begin,
    leg: Option<&Leg>,
) -> Result<Verdict<Begun>, Broken> {
    match (begin(w, b)?, leg) {
        (Ok(Begun::Proceed), Some(leg)) => Ok(Ok(Begun::Prepared {
            vote: legs::prepare(w, leg)?,
        })),
        (begun, _) => Ok(begun),
    }
}

/// [`decide`], and when the record is decided, that decision (the winning
/// one, whatever was asked) applied to `leg` (a leg of the transfer on
/// this node) in the same local transaction, which is flushed with the
/// decision. Returns the record and the leg's state (`None`: no leg, or no
/// decision to apply).
pub fn decide_and_apply(
    w: &mut Working,
    d: &Decide,
    leg: Option<&Leg>,
) -> Result<(Option<TransferRecord>, Option<LegState>), Broken> {
    let record = decide(w, d.transaction_id, &d.decision)?;
    let how = match record.as_ref().map(|r| r.state) {
        Some(TransferState::Committed) => legs::Finish::Commit,
        Some(TransferState::Aborted) => legs::Finish::Abort,
        Some(TransferState::Preparing) | None => return Ok((record, None)),
    };
    let applied = match leg {
        Some(leg) => Some(legs::finish(w, leg, how)?),
        None => None,
    };
    Ok((record, applied))
}

/// Compare-and-set out of `preparing`. Returns the record as it now stands:
/// the winning decision, which may not be the one asked for.
pub fn decide(
    w: &mut Working,
    id: TransactionId,
    decision: &Decision,
) -> Result<Option<TransferRecord>, Broken> {
    let now = w.now;
    let Some(stored) = w.transfer(id) else {
        return Ok(None);
    };
    if stored.record.state != TransferState::Preparing {
        // Decided already: the winner stands, and nothing is written.
        return Ok(Some(stored.record.clone()));
    }
    let Some(stored) = w.transfer_mut(id) else {
        return Ok(None);
    };
    let (state, reason) = match decision {
        Decision::Commit => (TransferState::Committed, None),
        Decision::Abort { reason } => (TransferState::Aborted, Some(reason.clone())),
    };
    stored.record.state = state;
    stored.record.reason = reason;
    stored.record.decided_at = Some(now);
    // A deposit's or withdrawal's record is decided from the outcome its
    // account's node already holds: nothing is left to apply.
    stored.record.completed = stored.record.kind != RecordKind::Transfer;
    Ok(Some(stored.record.clone()))
}

/// Marks decided records complete: recovery stops looking at them.
pub fn complete(w: &mut Working, id: TransactionId) {
    if let Some(stored) = w.transfer(id) {
        if stored.record.state != TransferState::Preparing && !stored.record.completed {
            if let Some(stored) = w.transfer_mut(id) {
                stored.record.completed = true;
            }
        }
    }
}

pub fn execute_keys(b: &Begin, legs_: &[Leg; 2]) -> Keys {
    let mut keys = decisions_and_legs(b.spec.transaction_id, legs_);
    keys.accounts.insert(b.spec.from.clone());
    keys.accounts.insert(b.spec.to.clone());
    keys
}

fn decisions_and_legs(id: TransactionId, legs_: &[Leg; 2]) -> Keys {
    let mut keys = keys([id]);
    keys.legs = legs_.iter().map(legs::key).collect();
    keys
}

/// The whole transfer in one local transaction, when its decision partition
/// and both accounts live here: dedup record, both legs and both events
/// commit together or not at all.
pub fn execute(w: &mut Working, b: &Begin, legs_: &[Leg; 2]) -> Result<Verdict<Begun>, Broken> {
    let started = begin(w, b)?;
    if started != Ok(Begun::Proceed) {
        return Ok(started);
    }
    if legs_.iter().any(|leg| w.leg(legs::key(leg)).is_some()) {
        // An earlier attempt ran in two phases (before a partition move
        // brought the decision and both accounts here) and left legs: this
        // one takes it over and finishes it the two-phase way, here.
        return take_over(w, b, legs_);
    }
    let spec = &b.spec;
    let amount = spec.amount.minor();
    let verdict = match (w.account(&spec.from), w.account(&spec.to)) {
        (None, _) => Err(ledger::not_found(&spec.from)),
        (_, None) => Err(ledger::not_found(&spec.to)),
        (Some(from), Some(to)) => from
            .can_be_debited_by(spec.tenant.as_deref())
            .and_then(|()| from.can_debit(amount, spec.currency))
            .and_then(|()| to.can_credit(amount, spec.currency)),
    };
    let decision = match verdict {
        Ok(()) => {
            let id = Some(spec.transaction_id);
            w.record(
                &spec.from,
                EventKind::TransferredOut,
                amount,
                id,
                Some(&spec.to),
            )?;
            w.record(
                &spec.to,
                EventKind::TransferredIn,
                amount,
                id,
                Some(&spec.from),
            )?;
            Decision::Commit
        }
        Err(reason) => Decision::Abort { reason },
    };
    for leg in legs_ {
        legs::insert_finished(w, leg, &decision)?;
    }
    decide(w, spec.transaction_id, &decision)?;
    completed(w, spec.transaction_id)
}

/// The rest of a two-phase transfer whose record and legs are all here, in
/// one local transaction: prepare what is not prepared yet, decide from the
/// votes, apply the decision to both legs, complete.
fn take_over(w: &mut Working, b: &Begin, legs_: &[Leg; 2]) -> Result<Verdict<Begun>, Broken> {
    let id = b.spec.transaction_id;
    let mut decision = Decision::Commit;
    for leg in legs_ {
        if let Err(reason) = legs::prepare(w, leg)? {
            decision = Decision::Abort { reason };
        }
    }
    decide(w, id, &decision)?;
    let how = match decision {
        Decision::Commit => legs::Finish::Commit,
        Decision::Abort { .. } => legs::Finish::Abort,
    };
    for leg in legs_ {
        legs::finish(w, leg, how)?;
    }
    completed(w, id)
}

/// Completes a transfer decided in this transaction and answers with its
/// record, as `execute` does for every one-node transfer.
fn completed(w: &mut Working, id: TransactionId) -> Result<Verdict<Begun>, Broken> {
    complete(w, id);
    w.transfer(id)
        .map(|stored| {
            Ok(Begun::Decided {
                record: stored.record.clone(),
            })
        })
        .ok_or_else(|| Broken::new("transfer record vanished inside its transaction"))
}
