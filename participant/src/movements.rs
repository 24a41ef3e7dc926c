//! Money entering and leaving through one account (deposits, withdrawals),
//! and opening accounts: single-partition operations in one local
//! transaction.
//!
//! A movement's id is claimed first at its decision partition, like a
//! transfer's (`decisions::begin` with a record of the movement's kind), so
//! an id is used once across the cluster. On the account's node the movement
//! is applied once, keyed by its transaction id, with a fingerprint of its
//! body; a refusal is recorded too, so a retry always gets the first answer.
//! That row is the movement's truth: the claim's record copies it.

use wallet_shared::protocol::{
    AccountBalance, Decision, EventKind, LegState, Movement, MovementKind, MovementRequest,
    OpenAccount, TransferState, Verdict,
};
use wallet_shared::{ErrorCode, Rejection};

use crate::model::{AccountRow, Broken, Keys, LegKey, LegRow, RowRole, Working};
use crate::{decisions, ledger};

pub fn open_keys(req: &OpenAccount) -> Keys {
    Keys {
        accounts: [req.account_id.clone()].into(),
        ..Keys::default()
    }
}

/// Opens the account; `Ok(true)` when it was created now, `Ok(false)` when
/// it already existed with the same currency. Answers with its balance.
pub fn open(w: &mut Working, req: &OpenAccount) -> Result<Verdict<(bool, AccountBalance)>, Broken> {
    if let Some(existing) = w.account(&req.account_id) {
        let another_tenants = req.owner.is_some() && existing.owner != req.owner;
        if another_tenants {
            // Says no more than that the id is taken.
            return Ok(Err(Rejection::new(
                ErrorCode::AccountExists,
                format!("account {} already exists", req.account_id),
            )));
        }
        if existing.currency != req.currency {
            return Ok(Err(Rejection::new(
                ErrorCode::AccountExists,
                format!(
                    "account {} already exists in {}",
                    req.account_id, existing.currency
                ),
            )));
        }
        return Ok(Ok((false, existing.balance())));
    }
    w.insert_account(AccountRow {
        account_id: req.account_id.clone(),
        partition: req.partition,
        currency: req.currency,
        posted: 0,
        held: 0,
        pending_credit: 0,
        last_seq: 0,
        created_at: w.now,
        owner: req.owner.clone(),
    })?;
    w.record(&req.account_id, EventKind::Opened, 0, None, None)?;
    Ok(Ok((true, balance(w, &req.account_id)?)))
}

fn key(m: &Movement) -> LegKey {
    let role = match m.kind {
        MovementKind::Deposit => RowRole::Deposit,
        MovementKind::Withdrawal => RowRole::Withdrawal,
    };
    (m.transaction_id, role)
}

pub fn keys(m: &Movement) -> Keys {
    Keys {
        legs: [key(m)].into(),
        accounts: [m.account_id.clone()].into(),
        ..Keys::default()
    }
}

/// The rows of a movement and, when it carries one, of its claim.
pub fn request_keys(req: &MovementRequest) -> Keys {
    let mut keys = keys(&req.movement);
    if let Some(claim) = &req.claim {
        keys.transfers.insert(claim.spec.transaction_id);
    }
    keys
}

/// A movement, with its claim when the decision partition lives here: the
/// claim, the movement and the decision in one local transaction.
pub fn apply_request(
    w: &mut Working,
    req: &MovementRequest,
) -> Result<Verdict<AccountBalance>, Broken> {
    let Some(claim) = &req.claim else {
        return apply(w, &req.movement);
    };
    let id = claim.spec.transaction_id;
    if let Err(refused) = decisions::begin(w, claim)? {
        return Ok(Err(refused));
    }
    let outcome = apply(w, &req.movement)?;
    if w.transfer(id).map(|t| t.record.state) == Some(TransferState::Preparing) {
        decisions::decide(w, id, &Decision::of(&outcome))?;
    }
    Ok(outcome)
}

/// Applies a deposit or withdrawal once. Returns the balance after it, or
/// the refusal (the first one, on every retry).
pub fn apply(w: &mut Working, m: &Movement) -> Result<Verdict<AccountBalance>, Broken> {
    let fingerprint = m.fingerprint();
    if let Some(stored) = w.leg(key(m)) {
        if stored.fingerprint.as_deref() != Some(fingerprint.as_str()) {
            return Ok(Err(Rejection::idempotency_key_reused(m.transaction_id)));
        }
        if let Some(reason) = &stored.reason {
            return Ok(Err(reason.clone()));
        }
        return current(w, m);
    }
    let amount = m.amount.minor();
    let verdict = match w.account(&m.account_id) {
        None => Err(ledger::not_found(&m.account_id)),
        Some(a) => a
            .can_be_debited_by(m.tenant.as_deref())
            .and_then(|()| match m.kind {
                MovementKind::Deposit => a.can_credit(amount, m.currency),
                MovementKind::Withdrawal => a.can_debit(amount, m.currency),
            }),
    };
    let (transaction_id, role) = key(m);
    let row = LegRow {
        transaction_id,
        role,
        account_id: m.account_id.clone(),
        partition: m.partition,
        amount,
        currency: m.currency,
        counterparty: None,
        decision_partition: None,
        fingerprint: Some(fingerprint),
        state: if verdict.is_ok() {
            LegState::Committed
        } else {
            LegState::Aborted
        },
        reason: verdict.clone().err(),
        created_at: w.now,
        updated_at: w.now,
    };
    w.insert_leg(row)?;
    if let Err(reason) = verdict {
        return Ok(Err(reason));
    }
    let kind = match m.kind {
        MovementKind::Deposit => EventKind::Deposited,
        MovementKind::Withdrawal => EventKind::Withdrawn,
    };
    w.record(&m.account_id, kind, amount, Some(m.transaction_id), None)?;
    current(w, m)
}

fn current(w: &Working, m: &Movement) -> Result<Verdict<AccountBalance>, Broken> {
    Ok(w.account(&m.account_id)
        .map(AccountRow::balance)
        .ok_or_else(|| ledger::not_found(&m.account_id)))
}

fn balance(w: &Working, id: &wallet_shared::AccountId) -> Result<AccountBalance, Broken> {
    w.account(id)
        .map(AccountRow::balance)
        .ok_or_else(|| Broken::new("account vanished after opening"))
}
