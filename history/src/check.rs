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
mod tests {
    use serde_json::json;
    use wallet_shared::protocol::EventKind;

    use super::*;
    use crate::history::Fault;
    use crate::state::Stored;

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
    fn audit(moves: Vec<AuditEvent>) -> State {
        let mut events = vec![event(A, 1, EventKind::Deposited, 100, 1)];
        events.extend(moves);
        let mut audit = State {
            events,
            ..State::default()
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
            faults: Vec::<Fault>::new(),
        }
    }

    fn kinds(history: &History, audit: &State) -> Vec<AnomalyKind> {
        kinds_settled(history, audit, Some(10.0))
    }

    fn kinds_settled(
        history: &History,
        audit: &State,
        settled_ms: Option<f64>,
    ) -> Vec<AnomalyKind> {
        let settling = Settling {
            healed_ms: 0.0,
            settled_ms,
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

    // ---- doubled, first -------------------------------------------------------

    /// Transfer 2 posted twice on both sides: each side's balance is the fold
    /// of its events and the totals add up; the count per id tells.
    #[test]
    fn a_doubled_transfer_is_caught() {
        let h = history(vec![committed(transfer(2, 30))]);
        let mut twice = applied_transfer(2);
        twice.extend([
            event(A, 4, EventKind::TransferredOut, 30, 2),
            event(B, 3, EventKind::TransferredIn, 30, 2),
        ]);
        assert_eq!(
            kinds(&h, &audit(twice)),
            vec![
                AnomalyKind::LegMismatch,
                AnomalyKind::AckedNotApplied,
                AnomalyKind::BalanceMismatch
            ]
        );
    }

    /// Deposit 1 applied twice on its account, both as its record says.
    #[test]
    fn a_doubled_deposit_is_caught() {
        let h = history(vec![committed(transfer(2, 30))]);
        let mut twice = applied_transfer(2);
        twice.push(event(A, 4, EventKind::Deposited, 100, 1));
        assert_eq!(
            kinds(&h, &audit(twice)),
            vec![
                AnomalyKind::MovementMismatch,
                AnomalyKind::AckedNotApplied,
                AnomalyKind::BalanceMismatch
            ]
        );
    }

    /// Records pruned after the retention: at rest, a transaction whose
    /// events are all older than the horizon may lack its record; a newer
    /// one may not.
    #[test]
    fn a_record_pruned_before_the_horizon_is_no_anomaly_at_rest_but_a_newer_one_is() {
        let mut a = audit(applied_transfer(2));
        assert!(a.anomalies().is_empty());
        a.transfers.clear();
        let kinds = |a: &State| {
            a.anomalies()
                .into_iter()
                .map(|x| x.kind)
                .collect::<Vec<_>>()
        };
        assert!(kinds(&a).contains(&AnomalyKind::RecordMismatch));
        // Every event is stamped at most 3 s after the epoch.
        a.pruned_before = Some(chrono::DateTime::UNIX_EPOCH + chrono::Duration::seconds(3));
        assert!(kinds(&a).contains(&AnomalyKind::RecordMismatch));
        a.pruned_before = Some(chrono::DateTime::UNIX_EPOCH + chrono::Duration::seconds(4));
        assert_eq!(kinds(&a), vec![]);
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
        // (and the acknowledged deposit's record does not hold it)
        assert_eq!(
            kinds(&h, &unclaimed),
            vec![AnomalyKind::RecordMismatch, AnomalyKind::AckedNotApplied]
        );
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

    #[test]
    fn money_moved_under_an_id_nobody_sent_is_a_phantom() {
        let h = history(vec![committed(transfer(2, 30))]);
        let mut moves = applied_transfer(2);
        moves.extend(applied_transfer(9).into_iter().map(|mut e| {
            e.seq += 2;
            e
        }));
        let found = kinds(&h, &audit(moves));
        assert!(
            found.contains(&AnomalyKind::PhantomTransaction),
            "{found:?}"
        );
    }

    #[test]
    fn a_final_read_that_is_not_the_state_is_caught() {
        let read = |balance: &str| Op {
            phase: Phase::Final,
            ..op(
                Request::Read { account: A.into() },
                Outcome::Ok,
                Some(200),
                json!({"currency": "USD", "balance": balance, "available": balance}),
            )
        };
        let a = audit(applied_transfer(2));
        let h = history(vec![committed(transfer(2, 30)), read("0.70")]);
        assert_eq!(kinds(&h, &a), vec![]);
        let h = history(vec![committed(transfer(2, 30)), read("0.71")]);
        assert_eq!(kinds(&h, &a), vec![AnomalyKind::FinalReadMismatch]);
    }

    #[test]
    fn a_fresh_operation_that_failed_is_caught() {
        let fresh = Op {
            phase: Phase::Fresh,
            ..op(
                transfer(2, 30),
                Outcome::Unknown,
                Some(503),
                json!({"code": "overloaded"}),
            )
        };
        let found = kinds(&history(vec![fresh]), &audit(Vec::new()));
        assert!(
            found.contains(&AnomalyKind::FreshOperationFailed),
            "{found:?}"
        );
    }

    #[test]
    fn an_answer_the_api_does_not_document_is_caught() {
        let odd = op(
            transfer(2, 30),
            Outcome::Fail,
            Some(418),
            json!({"code": "teapot"}),
        );
        assert_eq!(
            kinds(&history(vec![odd]), &audit(Vec::new())),
            vec![AnomalyKind::UnexpectedAnswer]
        );
    }

    #[test]
    fn settling_late_or_never_is_slow_recovery() {
        let h = history(vec![committed(transfer(2, 30))]);
        let a = audit(applied_transfer(2));
        assert_eq!(kinds_settled(&h, &a, Some(30_000.0)), vec![]);
        assert_eq!(
            kinds_settled(&h, &a, Some(30_001.0)),
            vec![AnomalyKind::SlowRecovery]
        );
        assert_eq!(kinds_settled(&h, &a, None), vec![AnomalyKind::SlowRecovery]);
    }

    /// An id sent again with another body: refused, it is no anomaly and
    /// the first body's checks are not disturbed; acknowledged, it is.
    #[test]
    fn another_body_under_a_used_id_must_be_refused() {
        let other = |outcome, status, body| op(transfer(2, 31), outcome, status, body);
        let refused = other(
            Outcome::Fail,
            Some(422),
            json!({"status": "aborted", "code": "idempotency_key_reused"}),
        );
        let h = history(vec![committed(transfer(2, 30)), refused]);
        assert_eq!(kinds(&h, &audit(applied_transfer(2))), vec![]);
        let accepted = other(Outcome::Ok, Some(200), json!({"status": "committed"}));
        let h = history(vec![committed(transfer(2, 30)), accepted]);
        assert_eq!(
            kinds(&h, &audit(applied_transfer(2))),
            vec![AnomalyKind::ReuseAccepted]
        );
    }

    #[test]
    fn the_same_body_refused_as_reused_is_a_false_reuse() {
        let refused = op(
            transfer(2, 30),
            Outcome::Fail,
            Some(422),
            json!({"status": "aborted", "code": "idempotency_key_reused"}),
        );
        let h = history(vec![committed(transfer(2, 30)), refused]);
        let found = kinds(&h, &audit(applied_transfer(2)));
        assert!(found.contains(&AnomalyKind::FalseReuse), "{found:?}");
    }

    #[test]
    fn a_transfer_applied_otherwise_than_asked_is_not_as_asked() {
        // Asked for 30 from a to b; its record and events say 30 from a to
        // b as well, but the client asked for b to a.
        let asked = Request::Transfer {
            transaction_id: Uuid::from_u128(2),
            from: B.into(),
            to: A.into(),
            amount: 30,
            currency: "USD".into(),
        };
        let h = history(vec![committed(asked)]);
        let found = kinds(&h, &audit(applied_transfer(2)));
        assert!(found.contains(&AnomalyKind::NotAsAsked), "{found:?}");
    }

    #[test]
    fn a_history_writes_one_json_line_per_op_and_fault() {
        let mut h = history(vec![committed(transfer(2, 30))]);
        h.ops[1].invoke_ms = 1.0;
        h.faults.push(Fault {
            kind: crate::history::FaultKind::KillEtcd,
            target: "etcd".into(),
            start_ms: 0.5,
            end_ms: 2.0,
        });
        let mut out = Vec::new();
        h.write_jsonl_to(&mut out).unwrap();
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["op", "fault", "op"]);
        assert_eq!(lines[1]["kind"], "kill_etcd");
    }
}
