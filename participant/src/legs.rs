//! Legs of cross-node transfers: prepare (hold funds as data), then commit or
//! abort as the decision says. Each operation is idempotent on
//! `(transaction_id, role)`, so duplicated, late and reordered messages are
//! harmless: a prepare after an abort finds the tombstone and votes no.

use wallet_shared::admin::StoredLeg;
use wallet_shared::protocol::{Decision, EventKind, Leg, LegRole, LegState, Vote};
use wallet_shared::{ErrorCode, Rejection};

use crate::ledger;
use crate::model::{Broken, Keys, LegKey, LegRow, RowRole, Working};

pub fn key(leg: &Leg) -> LegKey {
    let role = match leg.role {
        LegRole::Debit => RowRole::Debit,
        LegRole::Credit => RowRole::Credit,
    };
    (leg.transaction_id, role)
}

/// The legs and their accounts (the store adds the accounts of the stored
/// legs, which is what commit and abort touch).
pub fn keys(legs: &[Leg]) -> Keys {
    Keys {
        legs: legs.iter().map(key).collect(),
        accounts: legs.iter().map(|l| l.account.clone()).collect(),
        ..Keys::default()
    }
}

fn new_row(w: &Working, leg: &Leg, state: LegState, reason: Option<Rejection>) -> LegRow {
    let (transaction_id, role) = key(leg);
    LegRow {
        transaction_id,
        role,
        account_id: leg.account.clone(),
        partition: leg.partition,
        amount: leg.amount.minor(),
        currency: leg.currency,
        counterparty: Some(leg.counterparty.clone()),
        decision_partition: Some(leg.decision_partition),
        fingerprint: None,
        state,
        reason,
        created_at: w.now,
        updated_at: w.now,
    }
}

/// Records a leg that was applied (or refused) in the same local
/// transaction as its decision.
pub fn insert_finished(w: &mut Working, leg: &Leg, decision: &Decision) -> Result<(), Broken> {
    if w.leg(key(leg)).is_some() {
        return Err(Broken::new(format!(
            "{} leg of {} exists although its transfer just began",
            leg.role.as_str(),
            leg.transaction_id
        )));
    }
    let (state, reason) = match decision {
        Decision::Commit => (LegState::Committed, None),
        Decision::Abort { reason } => (LegState::Aborted, Some(reason.clone())),
    };
    let row = new_row(w, leg, state, reason);
    w.insert_leg(row)
}

/// Prepares one leg: a debit moves the amount from available to held, a
/// credit records a pending credit. A refusal is recorded too (as an aborted
/// leg), so every later prepare of the same leg gets the same vote: yes, or
/// the refusal.
pub fn prepare(w: &mut Working, leg: &Leg) -> Result<Vote, Broken> {
    if let Some(stored) = w.leg(key(leg)) {
        if stored.account_id != leg.account
            || stored.amount != leg.amount.minor()
            || stored.currency != leg.currency
        {
            return Ok(Err(Rejection::new(
                ErrorCode::IdempotencyKeyReused,
                format!(
                    "transaction {} already has another {} leg",
                    leg.transaction_id,
                    leg.role.as_str()
                ),
            )));
        }
        return Ok(match stored.state {
            LegState::Prepared | LegState::Committed => Ok(()),
            LegState::Aborted | LegState::Missing => Err(stored
                .reason
                .clone()
                .unwrap_or_else(|| already_aborted(leg))),
        });
    }
    let amount = leg.amount.minor();
    let verdict = match w.account(&leg.account) {
        None => Err(ledger::not_found(&leg.account)),
        Some(a) => match leg.role {
            LegRole::Debit => a
                .can_be_debited_by(leg.tenant.as_deref())
                .and_then(|()| a.can_debit(amount, leg.currency)),
            LegRole::Credit => a.can_credit(amount, leg.currency),
        },
    };
    match verdict {
        Ok(()) => {
            let kind = match leg.role {
                LegRole::Debit => EventKind::DebitHeld,
                LegRole::Credit => EventKind::CreditPending,
            };
            w.record(
                &leg.account,
                kind,
                amount,
                Some(leg.transaction_id),
                Some(&leg.counterparty),
            )?;
            let row = new_row(w, leg, LegState::Prepared, None);
            w.insert_leg(row)?;
            Ok(Ok(()))
        }
        Err(reason) => {
            let row = new_row(w, leg, LegState::Aborted, Some(reason.clone()));
            w.insert_leg(row)?;
            Ok(Err(reason))
        }
    }
}

fn already_aborted(leg: &Leg) -> Rejection {
    Rejection::new(
        ErrorCode::LegAborted,
        format!(
            "the {} leg of {} was already aborted",
            leg.role.as_str(),
            leg.transaction_id
        ),
    )
}

/// What a decision does to a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Posts it: a debit's held funds leave, a pending credit arrives.
    Commit,
    /// Releases it: held funds are available again, a pending credit voids.
    Abort,
}

/// Applies a decision to one leg. An abort of a leg never seen leaves a
/// tombstone, so a late prepare is refused.
pub fn finish(w: &mut Working, leg: &Leg, how: Finish) -> Result<LegState, Broken> {
    let commit = how == Finish::Commit;
    let Some(stored) = w.leg(key(leg)) else {
        if commit {
            tracing::error!(transaction_id = %leg.transaction_id, role = leg.role.as_str(), "commit of a leg this node never prepared");
            return Ok(LegState::Missing);
        }
        let row = new_row(w, leg, LegState::Aborted, Some(already_aborted(leg)));
        w.insert_leg(row)?;
        return Ok(LegState::Aborted);
    };
    let wanted = if commit {
        LegState::Committed
    } else {
        LegState::Aborted
    };
    if stored.state != LegState::Prepared {
        if stored.state != wanted {
            tracing::error!(transaction_id = %leg.transaction_id, role = leg.role.as_str(), state = ?stored.state, ?wanted, "leg already finished the other way");
        }
        return Ok(stored.state);
    }
    let (account, amount) = (stored.account_id.clone(), stored.amount);
    let kind = match (leg.role, commit) {
        (LegRole::Debit, true) => EventKind::DebitPosted,
        (LegRole::Debit, false) => EventKind::DebitReleased,
        (LegRole::Credit, true) => EventKind::CreditPosted,
        (LegRole::Credit, false) => EventKind::CreditVoided,
    };
    w.record(
        &account,
        kind,
        amount,
        Some(leg.transaction_id),
        Some(&leg.counterparty),
    )?;
    let now = w.now;
    if let Some(row) = w.leg_mut(key(leg)) {
        row.state = wanted;
        row.updated_at = now;
    }
    Ok(wanted)
}

/// A stored transfer leg as the protocol names it (recovery's view).
pub fn as_leg(row: &LegRow) -> Result<Leg, Broken> {
    let role = match row.role {
        RowRole::Debit => LegRole::Debit,
        RowRole::Credit => LegRole::Credit,
        other => {
            return Err(Broken::new(format!(
                "{} row is not a transfer leg",
                other.as_str()
            )))
        }
    };
    Ok(Leg {
        transaction_id: row.transaction_id,
        role,
        account: row.account_id.clone(),
        partition: row.partition,
        amount: wallet_shared::Amount::from_minor(row.amount).map_err(Broken::new)?,
        currency: row.currency,
        counterparty: row
            .counterparty
            .clone()
            .ok_or_else(|| Broken::new("transfer leg without counterparty"))?,
        decision_partition: row.decision_partition.unwrap_or_default(),
        // Only a prepare checks it, and a stored leg is past its prepare.
        tenant: None,
    })
}

/// A stored leg, any role, as walletctl is shown it.
pub fn as_stored(row: &LegRow) -> StoredLeg {
    StoredLeg {
        transaction_id: row.transaction_id,
        role: row.role.as_str().to_string(),
        account_id: row.account_id.clone(),
        partition: row.partition,
        amount: row.amount,
        currency: row.currency,
        state: row.state,
        reason: row.reason.clone(),
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}
