//! The checker: what the history and the final state must agree on once
//! every fault is healed and everything has settled. The simulation and the
//! chaos suite both call [`check`]; what only the simulation can see it
//! checks beside (its feed, snapshots and the invariants its rules refused).
//!
//! - everything [`State::anomalies`] checks at rest (replay, conservation,
//!   atomicity, records, nothing held, pending, prepared or undecided, no
//!   row on two nodes, event times never going back);
//! - every answer was one the API documents for the request;
//! - every balance read, and the final read, is non-negative, and the final
//!   read equals the state;
//! - per transaction id and body: an acknowledged one applied exactly once,
//!   as the client asked (accounts, amount, currency, kind) and as its record
//!   holds; a refused one not at all; an unknown one 0 or 1 times and now
//!   resolved (the transfer's status is final, a movement's retry answered);
//!   every definite answer the same; the same body never refused as a
//!   reused id; another body under an id already used never acknowledged;
//!   and no money moved under an id nobody sent;
//! - each account's balance equals what the history says it should be;
//! - everything resolved within the limit after healing, and the fresh
//!   operations after it succeeded.

use std::collections::BTreeMap;

use serde_json::Value;
use uuid::Uuid;
use wallet_shared::protocol::EventKind;
use wallet_shared::Currency;

use crate::anomaly::{Anomaly, AnomalyKind};
use crate::history::{History, Known, Op, Outcome, Phase, Request};
use crate::state::{Applied, AuditEvent, State, StoredTransfer};

/// What the checker needs besides the history and the final state.
#[derive(Debug, Clone, Copy)]
pub struct Settling {
    /// When every fault was healed (ms since the start).
    pub healed_ms: f64,
    /// When every unknown operation was resolved and the state had nothing
    /// in flight (ms since the start); `None`: not by the end of waiting.
    pub settled_ms: Option<f64>,
    /// How long settling may take (ms).
    pub limit_ms: f64,
}

/// Checks everything (see the module docs); returns every anomaly found.
pub fn check(history: &History, state: &State, settling: Settling) -> Vec<Anomaly> {
    let mut found = state.anomalies();
    for op in &history.ops {
        check_answer(op, &mut found);
    }
    check_transactions(history, state, &mut found);
    check_final_reads(history, state, &mut found);
    match settling.settled_ms {
        None => found.push(Anomaly::new(
            AnomalyKind::SlowRecovery,
            "not everything resolved and settled by the end of waiting",
        )),
        Some(t) if t - settling.healed_ms > settling.limit_ms => found.push(Anomaly::new(
            AnomalyKind::SlowRecovery,
            format!(
                "resolved and settled {:.1} s after healing (limit {:.0} s)",
                (t - settling.healed_ms) / 1000.0,
                settling.limit_ms / 1000.0
            ),
        )),
        Some(_) => {}
    }
    found
}

/// The answers the API documents for each request (status, `code`).
fn expected(op: &Op) -> bool {
    let Some(status) = op.status else {
        return true;
    };
    let code = op.code();
    let shared = matches!(status, 429 | 503);
    shared
        || match &op.request {
            Request::Transfer { .. } => match status {
                200 => op.state() == Some("committed"),
                202 => op.state() == Some("pending"),
                409 => matches!(code, Some("in_progress" | "transfer_aborted")),
                422 => matches!(
                    code,
                    Some(
                        "insufficient_funds"
                            | "currency_mismatch"
                            | "balance_overflow"
                            | "leg_aborted"
                            | "idempotency_key_reused"
                    )
                ),
                _ => false,
            },
            Request::Deposit { .. } | Request::Withdraw { .. } => match status {
                200 => op.state() == Some("committed"),
                202 => op.state() == Some("pending"),
                409 => code == Some("in_progress"),
                422 => matches!(
                    code,
                    Some("insufficient_funds" | "balance_overflow" | "idempotency_key_reused")
                ),
                _ => false,
            },
            Request::Status { .. } => {
                status == 200 || (status == 404 && code == Some("transfer_not_found"))
            }
            Request::Open { .. } | Request::Read { .. } => status == 200,
        }
}

fn check_answer(op: &Op, found: &mut Vec<Anomaly>) {
    if !expected(op) {
        found.push(Anomaly::new(
            AnomalyKind::UnexpectedAnswer,
            format!(
                "{} {:?} answered {:?}: {}",
                op.request.kind(),
                op.request,
                op.status,
                op.body
            ),
        ));
    }
    if let (Request::Read { account }, Some(200)) = (&op.request, op.status) {
        match read_balance(op) {
            Some((balance, available)) => {
                if balance < 0 || available < 0 || available > balance {
                    found.push(Anomaly::new(
                        AnomalyKind::NegativeBalance,
                        format!("read of {account} at {:.0} ms: {}", op.complete_ms, op.body),
                    ));
                }
            }
            None => found.push(Anomaly::new(
                AnomalyKind::UnexpectedAnswer,
                format!("unreadable balance of {account}: {}", op.body),
            )),
        }
    }
    if op.phase == Phase::Fresh && op.outcome != Outcome::Ok {
        found.push(Anomaly::new(
            AnomalyKind::FreshOperationFailed,
            format!(
                "{:?} after settling: {:?} {} {}",
                op.request,
                op.status,
                op.body,
                op.error.as_deref().unwrap_or("")
            ),
        ));
    }
}

/// Whether a transaction id's money moved, as the history tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Applied,
    NotApplied,
    Unresolved,
}

/// One transaction id: its requests with the body it stands for (see
/// [`own_body`]), what it moved and what its record holds.
struct Transaction<'a> {
    id: Uuid,
    /// The requests with the id's own body.
    ops: Vec<&'a Op>,
    /// Its events.
    events: &'a [&'a AuditEvent],
    /// What they moved.
    applied: Applied,
    /// Its decision record.
    record: Option<&'a StoredTransfer>,
}

fn check_transactions(history: &History, state: &State, found: &mut Vec<Anomaly>) {
    let by_id = history.by_transaction();
    let status = history.statuses();
    let events = state.by_transaction();
    let mut expected_balance: BTreeMap<&str, i64> = BTreeMap::new();
    let mut unresolved = 0;
    for (id, ops) in &by_id {
        let record = state.transfers.get(id);
        let body = own_body(ops, record);
        let (own, other): (Vec<&Op>, Vec<&Op>) =
            ops.iter().copied().partition(|op| op.request == *body);
        // Another body under an id already used must be refused.
        if other.iter().any(|op| op.outcome == Outcome::Ok) {
            found.push(Anomaly::new(
                AnomalyKind::ReuseAccepted,
                format!("{id} was used again with another body and acknowledged: {other:?}"),
            ));
        }
        let id_events = events.get(id).map(Vec::as_slice).unwrap_or_default();
        let t = Transaction {
            id: *id,
            ops: own,
            events: id_events,
            applied: Applied::of(id_events.iter().copied()),
            record,
        };
        let verdict = transaction_verdict(&t, state, status.get(id).copied(), found);
        match (verdict, body) {
            (Verdict::Unresolved, _) => unresolved += 1,
            (Verdict::NotApplied, _) => {}
            (
                Verdict::Applied,
                Request::Transfer {
                    from, to, amount, ..
                },
            ) => {
                *expected_balance.entry(from).or_default() -= amount;
                *expected_balance.entry(to).or_default() += amount;
            }
            (
                Verdict::Applied,
                Request::Deposit {
                    account, amount, ..
                },
            ) => {
                *expected_balance.entry(account).or_default() += amount;
            }
            (
                Verdict::Applied,
                Request::Withdraw {
                    account, amount, ..
                },
            ) => {
                *expected_balance.entry(account).or_default() -= amount;
            }
            (Verdict::Applied, _) => {}
        }
    }
    for id in events.keys() {
        if !by_id.contains_key(id) {
            found.push(Anomaly::new(
                AnomalyKind::PhantomTransaction,
                format!(
                    "money moved under {id}, which no client sent: {:?}",
                    events[id]
                ),
            ));
        }
    }
    // With an unresolved id the history cannot say what balances should be.
    if unresolved == 0 {
        for (account, stored) in &state.accounts {
            let want = expected_balance.get(account.as_str()).copied().unwrap_or(0);
            if stored.posted != want {
                found.push(Anomaly::new(
                    AnomalyKind::BalanceMismatch,
                    format!(
                        "account {account}: {} in the state, {want} by the history",
                        stored.posted
                    ),
                ));
            }
        }
    }
}

/// The body a transaction id stands for when clients sent it with more than
/// one (the first to reach its record wins it, every other must be
/// refused): the one its record holds, else the first acknowledged, else
/// the first sent.
fn own_body<'a>(ops: &[&'a Op], record: Option<&StoredTransfer>) -> &'a Request {
    let op = record
        .and_then(|r| ops.iter().find(|op| holds(r, &op.request)))
        .or_else(|| ops.iter().find(|op| op.outcome == Outcome::Ok))
        .unwrap_or(&ops[0]);
    &op.request
}

/// Checks one transaction id's requests against the money it moved, its
/// record and its resolution; says whether it was applied.
fn transaction_verdict(
    t: &Transaction,
    state: &State,
    resolution: Option<&Op>,
    found: &mut Vec<Anomaly>,
) -> Verdict {
    let (id, ops, applied, record) = (t.id, &t.ops, t.applied, t.record);
    let body = &ops[0].request;
    let mut answers: Vec<String> = ops.iter().filter_map(|op| op.answer()).collect();
    answers.sort();
    answers.dedup();
    if answers.len() > 1 {
        found.push(Anomaly::new(
            AnomalyKind::AnswerChanged,
            format!("{id} was answered {answers:?}"),
        ));
    }
    let mine = record.filter(|r| holds(r, body));
    let committed = mine.is_some_and(|r| r.state == "committed");
    if mine.is_some()
        && ops
            .iter()
            .any(|op| op.code() == Some("idempotency_key_reused"))
    {
        found.push(Anomaly::new(
            AnomalyKind::FalseReuse,
            format!("{id}: the body its record holds was refused as a reused key"),
        ));
    }
    let (once, nothing) = match body {
        Request::Deposit { .. } => (applied.deposited == 1, applied.deposited == 0),
        Request::Withdraw { .. } => (applied.withdrawn == 1, applied.withdrawn == 0),
        _ => (applied.transferred_once(), applied.nothing()),
    };
    let what = || format!("{body:?}, applied {applied:?}, record {record:?}");
    let known = Known::of(ops);
    // A status lookup of a transfer with a definite answer must say the same.
    if let (Some(lookup), Some(answer)) = (resolution, ops.iter().find_map(|op| op.answer())) {
        let agrees = match (lookup.status, known) {
            (Some(200), Known::Acked) => lookup.state() == Some("committed"),
            (Some(200), _) => {
                lookup.state() == Some("aborted") && answer.ends_with(lookup.code().unwrap_or("?"))
            }
            // Refused before anything was recorded; an acknowledged one is found.
            (Some(404), known) => known == Known::Refused,
            // A lookup that failed says nothing.
            _ => true,
        };
        if !agrees {
            found.push(Anomaly::new(
                AnomalyKind::AnswerChanged,
                format!(
                    "{id} was answered {answer}, its status says {:?} {}",
                    lookup.status, lookup.body
                ),
            ));
        }
    }
    let verdict = match known {
        Known::Acked => {
            if !once || !committed {
                found.push(Anomaly::new(AnomalyKind::AckedNotApplied, what()));
            }
            Verdict::Applied
        }
        Known::Refused | Known::NeverSent => {
            if !nothing || committed {
                found.push(Anomaly::new(AnomalyKind::RefusedButApplied, what()));
            }
            Verdict::NotApplied
        }
        // Only unknown answers: a transfer is resolved by its status; a
        // movement by a retry, which is among `ops` and would have answered.
        Known::Unknown => match (body, resolution) {
            (Request::Transfer { .. }, Some(status)) if status.is_final_status() => {
                let verdict = if status.state() == Some("committed") {
                    Verdict::Applied
                } else {
                    Verdict::NotApplied
                };
                let agrees = match verdict {
                    Verdict::Applied => once && committed,
                    _ => nothing && !committed,
                };
                if !agrees {
                    found.push(Anomaly::new(
                        AnomalyKind::ResolutionMismatch,
                        format!("{}; status says {}", what(), status.body),
                    ));
                }
                verdict
            }
            (_, last) => {
                found.push(Anomaly::new(
                    AnomalyKind::UnknownUnresolved,
                    format!(
                        "{}; every answer unknown; last status {}",
                        what(),
                        last.map_or("none".into(), |r| format!("{:?} {}", r.status, r.body))
                    ),
                ));
                Verdict::Unresolved
            }
        },
    };
    if verdict == Verdict::Applied && !as_asked(body, t.events, state) {
        found.push(Anomaly::new(
            AnomalyKind::NotAsAsked,
            format!("{id} was asked {body:?} but applied {:?}", t.events),
        ));
    }
    verdict
}

/// Whether every posting or movement of `events` (one id's) is the one the
/// client asked for in `request`. How many there are is for the other checks.
fn as_asked(request: &Request, events: &[&AuditEvent], state: &State) -> bool {
    let currency = |account: &str| state.accounts.get(account).map(|s| s.currency.as_str());
    events.iter().all(|e| {
        let posts = |account: &str, amount: i64, code: &str| {
            e.account == account && e.amount == amount && currency(&e.account) == Some(code)
        };
        match (request, e.kind) {
            (
                Request::Transfer {
                    from,
                    amount,
                    currency,
                    ..
                },
                EventKind::DebitPosted | EventKind::TransferredOut,
            ) => posts(from, *amount, currency),
            (
                Request::Transfer {
                    to,
                    amount,
                    currency,
                    ..
                },
                EventKind::CreditPosted | EventKind::TransferredIn,
            ) => posts(to, *amount, currency),
            (Request::Transfer { .. }, EventKind::Deposited | EventKind::Withdrawn) => false,
            (
                Request::Deposit {
                    account,
                    amount,
                    currency,
                    ..
                },
                EventKind::Deposited,
            )
            | (
                Request::Withdraw {
                    account,
                    amount,
                    currency,
                    ..
                },
                EventKind::Withdrawn,
            ) => posts(account, *amount, currency),
            // Any other posting under a deposit's or withdrawal's id.
            (
                Request::Deposit { .. } | Request::Withdraw { .. },
                EventKind::DebitPosted
                | EventKind::TransferredOut
                | EventKind::CreditPosted
                | EventKind::TransferredIn
                | EventKind::Deposited
                | EventKind::Withdrawn,
            ) => false,
            _ => true,
        }
    })
}

/// Whether `record` is this request's: the same kind and body.
fn holds(record: &StoredTransfer, request: &Request) -> bool {
    match request {
        Request::Transfer {
            from,
            to,
            amount,
            currency,
            ..
        } => {
            record.kind == "transfer"
                && record.from == *from
                && record.to == *to
                && record.amount == *amount
                && record.currency == *currency
        }
        _ => request
            .movement()
            .is_some_and(|(account, amount, currency)| {
                let kind = if matches!(request, Request::Deposit { .. }) {
                    "deposit"
                } else {
                    "withdrawal"
                };
                record.kind == kind
                    && record.to == account
                    && record.amount == amount
                    && record.currency == currency
            }),
    }
}

/// The final reads through the API equal the state.
fn check_final_reads(history: &History, state: &State, found: &mut Vec<Anomaly>) {
    for op in history.ops.iter().filter(|op| op.phase == Phase::Final) {
        let Request::Read { account } = &op.request else {
            continue;
        };
        let want = state
            .accounts
            .get(account)
            .map(|s| (s.posted, s.posted - s.held));
        if op.outcome != Outcome::Ok || read_balance(op) != want {
            found.push(Anomaly::new(
                AnomalyKind::FinalReadMismatch,
                format!(
                    "account {account}: the API says {:?} {}, the state {:?}",
                    op.status, op.body, want
                ),
            ));
        }
    }
}

/// (balance, available) in minor units from a balance read's answer.
fn read_balance(op: &Op) -> Option<(i64, i64)> {
    let currency = op.body.get("currency").and_then(Value::as_str)?;
    let money = |field: &str| minor_units(op.body.get(field)?.as_str()?, currency);
    Some((money("balance")?, money("available")?))
}

/// Minor units of a decimal string in `currency` (`"-12.30"` USD is
/// -1230); `None` if it is not one.
pub fn minor_units(text: &str, currency: &str) -> Option<i64> {
    let exponent = Currency::parse(currency).ok()?.exponent() as usize;
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if fraction.len() != exponent
        || whole.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let value: i64 = format!("{whole}{fraction}").parse().ok()?;
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests;
