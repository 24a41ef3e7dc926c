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

fn kinds_settled(history: &History, audit: &State, settled_ms: Option<f64>) -> Vec<AnomalyKind> {
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
