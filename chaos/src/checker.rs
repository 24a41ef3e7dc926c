//! The checker: what the history and the final audit must agree on once
//! every fault is healed and everything has settled.
//!
//! - every answer was one the API documents for the request;
//! - every balance read, and the final read, is non-negative, and the final
//!   read equals the database;
//! - per transaction id: an acknowledged one applied exactly once, a refused
//!   one not at all, an unknown one 0 or 1 times and now resolved (the
//!   transfer's status is final, a movement's retry answered), every
//!   definite answer the same; and no money moved under an id nobody sent;
//! - each account's balance equals what the history says it should be;
//! - everything the [`Audit`] checks at rest (replay, conservation, legs,
//!   nothing held, pending, prepared or undecided);
//! - everything resolved within the limit after healing, and the fresh
//!   operations after it succeeded.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;
use wallet_shared::Currency;

use super::audit::{Applied, Audit};
use super::history::{History, Known, Op, Outcome, Phase, Request};

/// What went wrong, by kind (the report counts them by kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// A read or a stored balance below zero (posted or available).
    NegativeBalance,
    /// A stored balance differs from the fold of its events.
    ReplayMismatch,
    /// An account's event sequence has a gap or a repeat.
    SeqGap,
    /// An account's event is stamped earlier than the one before it.
    EventTimeWentBack,
    /// A balance row or decision record stored on more than one node.
    DuplicateRow,
    /// Funds still held after settling.
    HeldLeft,
    /// A credit still pending after settling.
    PendingCreditLeft,
    /// A row in `pg_prepared_xacts` after settling.
    PreparedXact,
    /// A leg still prepared after settling.
    PreparedLeg,
    /// A decision record still `preparing` after settling.
    UndecidedTransfer,
    /// A decided record not marked complete after settling.
    UncompletedTransfer,
    /// Balances do not add up to deposits minus withdrawals.
    Conservation,
    /// A transfer's events are not "nothing" or "one debit and one matching
    /// credit", or a hold or pending credit was settled twice.
    LegMismatch,
    /// A deposit or withdrawal applied more than once.
    MovementMismatch,
    /// A decision record disagrees with the money its transfer moved.
    RecordMismatch,
    /// Acknowledged (200) but not applied exactly once.
    AckedNotApplied,
    /// Refused (or never sent) but applied.
    RefusedButApplied,
    /// Unknown to the client and still not resolved after healing.
    UnknownUnresolved,
    /// The transfer's final status disagrees with the money it moved.
    ResolutionMismatch,
    /// Two definite answers for one transaction id differ.
    AnswerChanged,
    /// Money moved under a transaction id no client sent.
    PhantomTransaction,
    /// An account's balance differs from what the history adds up to.
    BalanceMismatch,
    /// The final read through the API differs from the database.
    FinalReadMismatch,
    /// A fresh operation after settling did not succeed.
    FreshOperationFailed,
    /// An answer the API does not document for that request.
    UnexpectedAnswer,
    /// Resolving and settling took longer than the limit after healing.
    SlowRecovery,
}

/// One thing that went wrong.
#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    /// What kind.
    pub kind: AnomalyKind,
    /// Which ids, accounts and values.
    pub detail: String,
}

impl Anomaly {
    /// An anomaly of `kind`.
    pub fn new(kind: AnomalyKind, detail: impl Into<String>) -> Anomaly {
        Anomaly {
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The serde name, so the text and JSON reports say the same.
        match serde_json::to_value(self) {
            Ok(Value::String(s)) => f.write_str(&s),
            _ => write!(f, "{self:?}"),
        }
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// What the checker needs besides the history and the final audit.
#[derive(Debug, Clone, Copy)]
pub struct Settling {
    /// When every fault was healed (ms since the start).
    pub healed_ms: f64,
    /// When every unknown operation was resolved and the audit had nothing
    /// in flight (ms since the start); `None`: not by the end of waiting.
    pub settled_ms: Option<f64>,
    /// How long settling may take (ms).
    pub limit_ms: f64,
}

/// Checks everything (see the module docs); returns every anomaly found.
pub fn check(history: &History, audit: &Audit, settling: Settling) -> Vec<Anomaly> {
    let mut found = audit.anomalies();
    for op in &history.ops {
        check_answer(op, &mut found);
    }
    check_transactions(history, audit, &mut found);
    check_final_reads(history, audit, &mut found);
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
                    )
                ),
                _ => false,
            },
            Request::Deposit { .. } | Request::Withdraw { .. } => match status {
                200 => op.state() == Some("committed"),
                422 => matches!(code, Some("insufficient_funds" | "balance_overflow")),
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

fn check_transactions(history: &History, audit: &Audit, found: &mut Vec<Anomaly>) {
    let by_id = history.by_transaction();
    let status = history.statuses();
    let events = audit.by_transaction();
    let mut expected_balance: BTreeMap<&str, i64> = BTreeMap::new();
    let mut unresolved = 0;
    for (id, ops) in &by_id {
        let applied = Applied::of(events.get(id).into_iter().flatten().copied());
        let verdict = transaction_verdict(*id, ops, applied, status.get(id).copied(), found);
        match (verdict, &ops[0].request) {
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
        for (account, stored) in &audit.accounts {
            let want = expected_balance.get(account.as_str()).copied().unwrap_or(0);
            if stored.posted != want {
                found.push(Anomaly::new(
                    AnomalyKind::BalanceMismatch,
                    format!(
                        "account {account}: {} in the database, {want} by the history",
                        stored.posted
                    ),
                ));
            }
        }
    }
}

/// Checks one transaction id's operations against the money it moved and
/// its resolution; says whether it was applied.
fn transaction_verdict(
    id: Uuid,
    ops: &[&Op],
    applied: Applied,
    resolution: Option<&Op>,
    found: &mut Vec<Anomaly>,
) -> Verdict {
    let mut answers: Vec<String> = ops.iter().filter_map(|op| op.answer()).collect();
    answers.sort();
    answers.dedup();
    if answers.len() > 1 {
        found.push(Anomaly::new(
            AnomalyKind::AnswerChanged,
            format!("{id} was answered {answers:?}"),
        ));
    }
    let (once, nothing) = match ops[0].request {
        Request::Deposit { .. } => (applied.deposited == 1, applied.deposited == 0),
        Request::Withdraw { .. } => (applied.withdrawn == 1, applied.withdrawn == 0),
        _ => (applied.transferred_once(), applied.nothing()),
    };
    let what = || format!("{:?}, applied {applied:?}", ops[0].request);
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
    match known {
        Known::Acked => {
            if !once {
                found.push(Anomaly::new(AnomalyKind::AckedNotApplied, what()));
            }
            return Verdict::Applied;
        }
        Known::Refused | Known::NeverSent => {
            if !nothing {
                found.push(Anomaly::new(AnomalyKind::RefusedButApplied, what()));
            }
            return Verdict::NotApplied;
        }
        Known::Unknown => {}
    }
    // Only unknown answers: a transfer is resolved by its status; a
    // movement by a retry, which is among `ops` and would have answered.
    let status = match (&ops[0].request, resolution) {
        (Request::Transfer { .. }, Some(r)) if r.is_final_status() => r,
        (_, last) => {
            found.push(Anomaly::new(
                AnomalyKind::UnknownUnresolved,
                format!(
                    "{}; every answer unknown; last status {}",
                    what(),
                    last.map_or("none".into(), |r| format!("{:?} {}", r.status, r.body))
                ),
            ));
            return Verdict::Unresolved;
        }
    };
    let verdict = if status.state() == Some("committed") {
        Verdict::Applied
    } else {
        Verdict::NotApplied
    };
    let agrees = match verdict {
        Verdict::Applied => once,
        _ => nothing,
    };
    if !agrees {
        found.push(Anomaly::new(
            AnomalyKind::ResolutionMismatch,
            format!("{}; status says {}", what(), status.body),
        ));
    }
    verdict
}

/// The final reads through the API equal the database.
fn check_final_reads(history: &History, audit: &Audit, found: &mut Vec<Anomaly>) {
    for op in history.ops.iter().filter(|op| op.phase == Phase::Final) {
        let Request::Read { account } = &op.request else {
            continue;
        };
        let want = audit
            .accounts
            .get(account)
            .map(|s| (s.posted, s.posted - s.held));
        if op.outcome != Outcome::Ok || read_balance(op) != want {
            found.push(Anomaly::new(
                AnomalyKind::FinalReadMismatch,
                format!(
                    "account {account}: the API says {:?} {}, the database {:?}",
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
mod tests {
    use serde_json::json;
    use wallet_shared::protocol::EventKind;

    use super::*;
    use crate::audit::{AuditEvent, Stored, StoredTransfer};

    const A: &str = "a";
    const B: &str = "b";

    fn op(request: Request, outcome: Outcome, status: Option<u16>, body: Value) -> Op {
        Op {
            process: 0,
            phase: Phase::Chaos,
            request,
            retry: false,
            coordinator: 0,
            invoke_ms: 0.0,
            complete_ms: 1.0,
            outcome,
            status,
            body,
            error: None,
        }
    }

    fn transfer(id: u128, amount: i64) -> Request {
        Request::Transfer {
            transaction_id: Uuid::from_u128(id),
            from: A.into(),
            to: B.into(),
            amount,
            currency: "USD".into(),
        }
    }

    fn committed(request: Request) -> Op {
        op(
            request,
            Outcome::Ok,
            Some(200),
            json!({"status": "committed"}),
        )
    }

    fn event(account: &str, seq: i64, kind: EventKind, amount: i64, id: u128) -> AuditEvent {
        let counterparty = match (kind, account) {
            (EventKind::Deposited, _) => None,
            (_, "a") => Some(B.to_string()),
            _ => Some(A.to_string()),
        };
        AuditEvent {
            account: account.into(),
            seq,
            kind,
            amount,
            transaction_id: Some(Uuid::from_u128(id)),
            counterparty,
            at: chrono::DateTime::UNIX_EPOCH + chrono::Duration::seconds(seq),
        }
    }

    /// Account `a` funded with 100 by deposit 1, then `moves` (events on
    /// top, transfer records committed), balances folded from the events.
    fn audit(moves: Vec<AuditEvent>) -> Audit {
        let mut events = vec![event(A, 1, EventKind::Deposited, 100, 1)];
        events.extend(moves);
        let mut audit = Audit {
            events,
            ..Audit::default()
        };
        for account in [A, B] {
            let mut stored = Stored {
                currency: "USD".into(),
                posted: 0,
                held: 0,
                pending_credit: 0,
                last_seq: 0,
            };
            for e in audit.events.iter().filter(|e| e.account == account) {
                let (p, h, c) = e.kind.effect(e.amount);
                stored.posted += p;
                stored.held += h;
                stored.pending_credit += c;
                stored.last_seq = e.seq;
            }
            audit.accounts.insert(account.into(), stored);
        }
        let transfers: Vec<Uuid> = audit
            .by_transaction()
            .into_keys()
            .filter(|id| id.as_u128() != 1)
            .collect();
        audit.transfers.insert(
            Uuid::from_u128(1),
            StoredTransfer {
                kind: "deposit".into(),
                from: A.into(),
                to: A.into(),
                amount: 100,
                currency: "USD".into(),
                state: "committed".into(),
                completed: true,
            },
        );
        for id in transfers {
            audit.transfers.insert(
                id,
                StoredTransfer {
                    kind: "transfer".into(),
                    from: A.into(),
                    to: B.into(),
                    amount: 30,
                    currency: "USD".into(),
                    state: "committed".into(),
                    completed: true,
                },
            );
        }
        audit
    }

    fn history(ops: Vec<Op>) -> History {
        let deposit = Request::Deposit {
            transaction_id: Uuid::from_u128(1),
            account: A.into(),
            amount: 100,
            currency: "USD".into(),
        };
        let mut all = vec![committed(deposit)];
        all.extend(ops);
        History {
            ops: all,
            faults: Vec::new(),
        }
    }

    fn kinds(history: &History, audit: &Audit) -> Vec<AnomalyKind> {
        let settling = Settling {
            healed_ms: 0.0,
            settled_ms: Some(10.0),
            limit_ms: 30_000.0,
        };
        let mut kinds: Vec<AnomalyKind> = check(history, audit, settling)
            .into_iter()
            .map(|a| a.kind)
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds
    }

    fn applied_transfer(id: u128) -> Vec<AuditEvent> {
        vec![
            event(A, 2, EventKind::DebitHeld, 30, id),
            event(B, 1, EventKind::CreditPending, 30, id),
            event(A, 3, EventKind::DebitPosted, 30, id),
            event(B, 2, EventKind::CreditPosted, 30, id),
        ]
    }

    #[test]
    fn a_consistent_history_has_no_anomaly() {
        let h = history(vec![committed(transfer(2, 30))]);
        assert_eq!(kinds(&h, &audit(applied_transfer(2))), vec![]);
    }

    #[test]
    fn an_acknowledged_transfer_that_moved_nothing_is_lost() {
        let h = history(vec![committed(transfer(2, 30))]);
        let a = audit(Vec::new());
        assert!(kinds(&h, &a).contains(&AnomalyKind::AckedNotApplied));
        assert!(kinds(&h, &a).contains(&AnomalyKind::BalanceMismatch));
    }

    #[test]
    fn a_refused_transfer_that_moved_money_is_caught() {
        let refused = op(
            transfer(2, 30),
            Outcome::Fail,
            Some(422),
            json!({"status": "aborted", "code": "insufficient_funds"}),
        );
        let h = history(vec![refused]);
        assert!(kinds(&h, &audit(applied_transfer(2))).contains(&AnomalyKind::RefusedButApplied));
    }

    #[test]
    fn a_retry_that_changes_the_answer_is_caught() {
        let refused = op(
            transfer(2, 30),
            Outcome::Fail,
            Some(409),
            json!({"status": "aborted", "code": "transfer_aborted"}),
        );
        let h = history(vec![committed(transfer(2, 30)), refused]);
        assert!(kinds(&h, &audit(applied_transfer(2))).contains(&AnomalyKind::AnswerChanged));
    }

    #[test]
    fn a_status_that_contradicts_the_answer_is_caught() {
        let lookup = |state: &str| {
            op(
                Request::Status {
                    transaction_id: Uuid::from_u128(2),
                },
                Outcome::Ok,
                Some(200),
                json!({"status": state}),
            )
        };
        let h = history(vec![committed(transfer(2, 30)), lookup("committed")]);
        assert_eq!(kinds(&h, &audit(applied_transfer(2))), vec![]);
        let h = history(vec![committed(transfer(2, 30)), lookup("pending")]);
        assert_eq!(
            kinds(&h, &audit(applied_transfer(2))),
            vec![AnomalyKind::AnswerChanged]
        );
    }

    #[test]
    fn a_deposit_applied_twice_or_without_its_claim_is_caught() {
        let h = history(vec![committed(transfer(2, 30))]);
        // The same id credited on another account too (per-node dedup).
        let mut doubled = applied_transfer(2);
        doubled.push(event(B, 3, EventKind::Deposited, 100, 1));
        let found = kinds(&h, &audit(doubled));
        for kind in [AnomalyKind::MovementMismatch, AnomalyKind::RecordMismatch] {
            assert!(found.contains(&kind), "{kind} not in {found:?}");
        }
        // Applied with no record at the id's decision partition.
        let mut unclaimed = audit(applied_transfer(2));
        unclaimed.transfers.remove(&Uuid::from_u128(1));
        assert_eq!(kinds(&h, &unclaimed), vec![AnomalyKind::RecordMismatch]);
        // A transfer's id used again as a deposit.
        let mut reused = applied_transfer(2);
        reused.push(event(B, 3, EventKind::Deposited, 5, 2));
        let found = kinds(&h, &audit(reused));
        assert!(found.contains(&AnomalyKind::RecordMismatch), "{found:?}");
    }

    #[test]
    fn an_event_stamped_before_the_one_before_it_is_caught() {
        let h = history(vec![committed(transfer(2, 30))]);
        let mut a = audit(applied_transfer(2));
        assert_eq!(kinds(&h, &a), vec![]);
        let last = a.events.iter().rposition(|e| e.account == A).unwrap();
        a.events[last].at = chrono::DateTime::UNIX_EPOCH;
        assert_eq!(kinds(&h, &a), vec![AnomalyKind::EventTimeWentBack]);
    }

    #[test]
    fn a_row_left_on_a_second_node_is_caught_not_overwritten() {
        let h = history(vec![committed(transfer(2, 30))]);
        let mut a = audit(applied_transfer(2));
        a.duplicates
            .push("account a is stored on node 1 too".into());
        assert_eq!(kinds(&h, &a), vec![AnomalyKind::DuplicateRow]);
    }

    #[test]
    fn a_half_applied_transfer_breaks_legs_and_conservation() {
        let half = vec![
            event(A, 2, EventKind::DebitHeld, 30, 2),
            event(A, 3, EventKind::DebitPosted, 30, 2),
        ];
        let h = history(vec![committed(transfer(2, 30))]);
        let found = kinds(&h, &audit(half));
        for kind in [
            AnomalyKind::LegMismatch,
            AnomalyKind::Conservation,
            AnomalyKind::AckedNotApplied,
        ] {
            assert!(found.contains(&kind), "{kind} not in {found:?}");
        }
    }

    #[test]
    fn an_unknown_transfer_must_be_resolved_and_agree_with_its_status() {
        let unknown = op(
            transfer(2, 30),
            Outcome::Unknown,
            Some(202),
            json!({"status": "pending"}),
        );
        let h = history(vec![unknown.clone()]);
        assert!(kinds(&h, &audit(Vec::new())).contains(&AnomalyKind::UnknownUnresolved));

        let status = op(
            Request::Status {
                transaction_id: Uuid::from_u128(2),
            },
            Outcome::Ok,
            Some(200),
            json!({"status": "aborted", "code": "transfer_aborted"}),
        );
        let h = history(vec![unknown, status]);
        assert_eq!(kinds(&h, &audit(Vec::new())), vec![]);
        assert!(kinds(&h, &audit(applied_transfer(2))).contains(&AnomalyKind::ResolutionMismatch));
    }

    #[test]
    fn a_negative_read_and_a_stale_projection_are_caught() {
        let read = op(
            Request::Read { account: A.into() },
            Outcome::Ok,
            Some(200),
            json!({"currency": "USD", "balance": "-0.01", "available": "-0.01"}),
        );
        let h = history(vec![read]);
        let mut a = audit(Vec::new());
        a.accounts.get_mut(A).unwrap().posted += 1;
        let found = kinds(&h, &a);
        assert!(found.contains(&AnomalyKind::NegativeBalance), "{found:?}");
        assert!(found.contains(&AnomalyKind::ReplayMismatch), "{found:?}");
    }

    #[test]
    fn reads_decimal_strings_in_minor_units() {
        assert_eq!(minor_units("12.34", "USD"), Some(1234));
        assert_eq!(minor_units("0.00", "USD"), Some(0));
        assert_eq!(minor_units("-1.50", "USD"), Some(-150));
        assert_eq!(minor_units("500", "JPY"), Some(500));
        assert_eq!(minor_units("1.250", "KWD"), Some(1250));
        assert_eq!(minor_units("1.2", "USD"), None);
        assert_eq!(minor_units("x.00", "USD"), None);
        assert_eq!(minor_units("1.00", "XXX"), None);
    }
}
