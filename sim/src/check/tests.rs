use std::collections::BTreeSet;

use chrono::{DateTime, TimeZone, Utc};
use futures::executor::block_on;
use participant::memory::CopiedRows;
use participant::model::Broken;
use participant::model::{Keys, TransferRow, Working};
use participant::store::{Durability, PartitionRead, PartitionTable, Store};
use participant::{decisions, legs, movements};
use serde_json::{json, Value};
use wallet_history::{Op, Outcome, Phase, Request};
use wallet_shared::protocol::{
    Begin, Begun, Decision, Event, FeedEntry, Leg, LegState, Movement, MovementKind,
    MovementRequest, OpenAccount, Snapshot, TransferSpec,
};
use wallet_shared::protocol::{EventKind, TransferRecord};
use wallet_shared::{AccountId, TransactionId};
use wallet_shared::{Amount, Currency, Rejection};

use super::*;
use crate::clock::NodeClock;

const N1: &str = "node-1";
const N2: &str = "node-2";

fn id(n: u128) -> TransactionId {
    TransactionId(uuid::Uuid::from_u128(n))
}

fn acct(name: &str) -> AccountId {
    AccountId::parse(name).unwrap()
}

fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

fn jpy() -> Currency {
    Currency::parse("JPY").unwrap()
}

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

/// One local transaction of the real rules on a store (the in-memory
/// store never waits, so this runs it to the end).
fn tx<T: Send>(
    store: &MemStore,
    keys: Keys,
    rules: impl Fn(&mut Working) -> Result<T, Broken> + Send + Sync,
) -> T {
    block_on(store.attempt(&keys, Durability::Flushed, &rules)).expect("the rules accept it")
}

fn open(store: &MemStore, account: &str, currency: Currency) {
    let req = OpenAccount {
        account_id: acct(account),
        partition: 0,
        currency,
        owner: None,
    };
    tx(store, movements::open_keys(&req), |w| {
        movements::open(w, &req)
    })
    .unwrap();
}

fn spec(n: u128, from: &str, to: &str, minor: i64) -> TransferSpec {
    TransferSpec {
        transaction_id: id(n),
        from: acct(from),
        to: acct(to),
        amount: Amount::from_minor(minor).unwrap(),
        currency: usd(),
        tenant: None,
    }
}

fn movement(n: u128, kind: MovementKind, account: &str, minor: i64) -> Movement {
    Movement {
        transaction_id: id(n),
        kind,
        account_id: acct(account),
        partition: 0,
        amount: Amount::from_minor(minor).unwrap(),
        currency: usd(),
        tenant: None,
    }
}

/// A transfer in two phases as a coordinator runs it: the record at
/// `home`, the debit at `debit`, the credit at `credit`.
fn two_phase(home: &MemStore, debit: &MemStore, credit: &MemStore, spec: &TransferSpec) {
    let id = spec.transaction_id;
    let begin = Begin {
        spec: spec.clone(),
        partition: 0,
        lease_ms: 5000,
        attempt: uuid::Uuid::nil(),
        kind: RecordKind::Transfer,
        prepare: None,
    };
    let began = tx(home, decisions::keys([id]), |w| decisions::begin(w, &begin));
    assert_eq!(began, Ok(Begun::Proceed));
    let [d, c] = Leg::both(spec, 0, 0, 0);
    let prepare = |store, leg: &Leg| {
        tx(store, legs::keys(std::slice::from_ref(leg)), |w| {
            legs::prepare(w, leg)
        })
    };
    let votes = [prepare(debit, &d), prepare(credit, &c)];
    let decision = match votes.iter().find_map(|v| v.clone().err()) {
        None => Decision::Commit,
        Some(reason) => Decision::Abort { reason },
    };
    tx(home, decisions::keys([id]), |w| {
        decisions::decide(w, id, &decision)
    });
    for (store, leg) in [(debit, &d), (credit, &c)] {
        tx(store, legs::keys(std::slice::from_ref(leg)), |w| {
            let how = if decision == Decision::Commit {
                legs::Finish::Commit
            } else {
                legs::Finish::Abort
            };
            legs::finish(w, leg, how)
        });
    }
    tx(home, decisions::keys([id]), |w| {
        decisions::complete(w, id);
        Ok(())
    });
}

/// What a client heard, as the tests write it.
#[derive(Debug, Clone, Copy)]
enum Heard {
    Ok,
    Fail(&'static str),
    Unknown,
}

/// An operation of a client with `heard` as the API answers it.
fn op(request: Request, heard: Heard) -> Op {
    let (outcome, status, body) = match heard {
        Heard::Ok => (Outcome::Ok, Some(200), json!({"status": "committed"})),
        Heard::Fail(code) => (
            Outcome::Fail,
            Some(if code == "transfer_aborted" { 409 } else { 422 }),
            json!({"status": "aborted", "code": code}),
        ),
        Heard::Unknown => (Outcome::Unknown, None, Value::Null),
    };
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
        error: matches!(heard, Heard::Unknown).then(|| "timeout".to_string()),
    }
}

fn fail(code: &'static str) -> Heard {
    Heard::Fail(code)
}

/// What a client asks for a transfer.
fn transfer_req(spec: TransferSpec) -> Request {
    Request::Transfer {
        transaction_id: spec.transaction_id.0,
        from: spec.from.as_str().into(),
        to: spec.to.as_str().into(),
        amount: spec.amount.minor(),
        currency: spec.currency.code().into(),
    }
}

/// What a client asks for a deposit or withdrawal.
fn movement_req(m: Movement) -> Request {
    let (transaction_id, account) = (m.transaction_id.0, m.account_id.as_str().into());
    let (amount, currency) = (m.amount.minor(), m.currency.code().into());
    match m.kind {
        MovementKind::Deposit => Request::Deposit {
            transaction_id,
            account,
            amount,
            currency,
        },
        MovementKind::Withdrawal => Request::Withdraw {
            transaction_id,
            account,
            amount,
            currency,
        },
    }
}

/// Two nodes and what their clients heard, all consistent:
/// node-1 holds accounts `a` and `c` and every record, node-2 holds `b`.
struct Fixture {
    stores: BTreeMap<String, MemStore>,
    history: Vec<Op>,
}

const D1: u128 = 1;
const T1: u128 = 2;
const T2: u128 = 3;
const T3: u128 = 4;
const W1: u128 = 5;
const T4: u128 = 6;

impl Fixture {
    fn good() -> Self {
        let start = tokio::time::Instant::now();
        let stores: BTreeMap<String, MemStore> = [N1, N2]
            .into_iter()
            .map(|n| (n.to_string(), MemStore::new(NodeClock::new(start))))
            .collect();
        let (n1, n2) = (&stores[N1], &stores[N2]);
        open(n1, "a", usd());
        open(n1, "c", usd());
        open(n2, "b", usd());
        // D1: 100 into a, claim and movement in one local transaction.
        let d1 = movement(D1, MovementKind::Deposit, "a", 100);
        let req = MovementRequest {
            claim: Some(d1.claim(0, 5000, uuid::Uuid::nil())),
            movement: d1.clone(),
        };
        tx(n1, movements::request_keys(&req), |w| {
            movements::apply_request(w, &req)
        })
        .unwrap();
        // T1: 30 from a to b, across nodes.
        let t1 = spec(T1, "a", "b", 30);
        two_phase(n1, n1, n2, &t1);
        // T2: 10 from a to c, in one local transaction.
        let t2 = spec(T2, "a", "c", 10);
        let begin = Begin {
            spec: t2.clone(),
            partition: 0,
            lease_ms: 5000,
            attempt: uuid::Uuid::nil(),
            kind: RecordKind::Transfer,
            prepare: None,
        };
        let both = Leg::both(&t2, 0, 0, 0);
        let executed = tx(n1, decisions::execute_keys(&begin, &both), |w| {
            decisions::execute(w, &begin, &both)
        });
        assert!(
            matches!(executed, Ok(Begun::Decided { .. })),
            "{executed:?}"
        );
        // T3: 1000 from a to b, refused: not enough funds.
        let t3 = spec(T3, "a", "b", 1000);
        two_phase(n1, n1, n2, &t3);
        // W1: 5 out of b; claimed at node-1, applied at node-2.
        let w1 = movement(W1, MovementKind::Withdrawal, "b", 5);
        let claim = w1.claim(0, 5000, uuid::Uuid::nil());
        let claimed = tx(n1, decisions::keys([id(W1)]), |w| {
            decisions::begin(w, &claim)
        });
        assert_eq!(claimed, Ok(Begun::Proceed));
        let req = MovementRequest {
            movement: w1.clone(),
            claim: None,
        };
        let outcome = tx(n2, movements::request_keys(&req), |w| {
            movements::apply_request(w, &req)
        });
        tx(n1, decisions::keys([id(W1)]), |w| {
            decisions::decide(w, id(W1), &Decision::of(&outcome))
        });
        // T1's id again, as a deposit into c: refused, nothing applied.
        let reused = movement(T1, MovementKind::Deposit, "c", 7);
        let reuse = op(movement_req(reused), fail("idempotency_key_reused"));
        let mut retry = op(transfer_req(t1.clone()), Heard::Ok);
        retry.retry = true;
        let history = vec![
            op(movement_req(d1), Heard::Ok),
            op(transfer_req(t1), Heard::Ok),
            retry,
            op(transfer_req(t2), Heard::Ok),
            op(transfer_req(t3), fail("insufficient_funds")),
            op(movement_req(w1), Heard::Ok),
            reuse,
            // Never reached any node.
            op(transfer_req(spec(T4, "c", "b", 1)), Heard::Unknown),
            // Which its status settles: no record, nothing applied.
            Op {
                phase: Phase::Resolve,
                outcome: Outcome::Ok,
                status: Some(404),
                body: json!({"code": "transfer_not_found"}),
                ..op(
                    Request::Status {
                        transaction_id: id(T4).0,
                    },
                    Heard::Ok,
                )
            },
        ];
        Fixture { stores, history }
    }

    /// Everything the checker finds.
    fn check(&self) -> Vec<Anomaly> {
        let history = History {
            ops: self.history.clone(),
            faults: Vec::new(),
        };
        let settling = Settling {
            healed_ms: 0.0,
            settled_ms: Some(1.0),
            limit_ms: 30_000.0,
        };
        check(&self.stores, &history, settling)
    }

    /// Op `i` of the history heard `heard` instead.
    fn heard(&mut self, i: usize, heard: Heard) {
        let retry = self.history[i].retry;
        self.history[i] = op(self.history[i].request.clone(), heard);
        self.history[i].retry = retry;
    }

    fn tables(&self, node: &str) -> std::sync::MutexGuard<'_, crate::mem::Tables> {
        self.stores[node].tables.lock().unwrap()
    }

    /// The anomaly kinds the checker reports.
    fn kinds(&self) -> BTreeSet<String> {
        let found = self.check();
        eprintln!("{found:#?}");
        found.into_iter().map(|a| a.kind.to_string()).collect()
    }

    /// Appends an event as the rules would write it (row, log, feed,
    /// snapshot), but without asking them: how a bug would write it.
    fn append(
        &self,
        node: &str,
        account: &str,
        kind: EventKind,
        amount: i64,
        transaction_id: Option<TransactionId>,
    ) {
        let every = self.stores[node].snapshot_every;
        let mut t = self.tables(node);
        let t = &mut *t;
        let id = acct(account);
        let row = t.accounts.get_mut(&id).expect("an account here");
        let (dp, dh, dc) = kind.effect(amount);
        row.posted += dp;
        row.held += dh;
        row.pending_credit += dc;
        row.last_seq += 1;
        let log = t.events.entry(id.clone()).or_default();
        let when = log.last().map_or(at(), |e| e.at);
        log.push(Event {
            account_id: id.clone(),
            seq: row.last_seq,
            kind,
            amount,
            transaction_id,
            counterparty: None,
            at: when,
        });
        t.outbox.push(FeedEntry {
            position: t.outbox.len() as i64 + 1,
            kind: FeedKind::Event(kind),
            account_id: id.clone(),
            seq: Some(row.last_seq),
            amount,
            currency: row.currency,
            transaction_id,
            counterparty: None,
            reason: None,
            partition: row.partition,
            at: when,
        });
        if row.last_seq % every == 0 {
            t.snapshots.entry(id.clone()).or_default().push(Snapshot {
                account_id: id,
                seq: row.last_seq,
                posted: row.posted,
                held: row.held,
                pending_credit: row.pending_credit,
                at: when,
            });
        }
    }

    /// Writes a decided record straight into node-1's table.
    fn record(&self, kind: RecordKind, spec: TransferSpec, state: TransferState) {
        let reason = (state == TransferState::Aborted)
            .then(|| Rejection::new(wallet_shared::ErrorCode::TransferAborted, "no"));
        let row = TransferRow {
            partition: 0,
            fingerprint: spec.fingerprint(),
            lease_until: at(),
            lease_owner: uuid::Uuid::nil(),
            record: TransferRecord {
                kind,
                spec,
                state,
                reason,
                created_at: at(),
                decided_at: Some(at()),
                completed: state != TransferState::Preparing,
            },
        };
        self.tables(N1).transfers.insert(row.id(), row);
    }

    /// A deposit's or withdrawal's record, decided.
    fn claim_record(&self, m: &Movement, state: TransferState) {
        let spec = m.claim(0, 0, uuid::Uuid::nil()).spec;
        self.record(m.kind.into(), spec, state);
    }
}

fn kinds(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

// ---- the good history ------------------------------------------------

#[test]
fn a_good_history_has_no_anomaly_and_is_settled() {
    let f = Fixture::good();
    assert_eq!(f.kinds(), kinds(&[]));
    assert!(!state(&f.stores).in_flight());
    // It has what the bad ones break: a snapshot, an aborted transfer
    // in the feed, records of every kind.
    let t = f.tables(N1);
    assert!(!t.snapshots.is_empty());
    assert!(t.outbox.iter().any(|e| e.kind == FeedKind::TransferAborted));
    let states: BTreeSet<_> = t
        .transfers
        .values()
        .map(|r| format!("{:?} {:?}", r.record.kind, r.record.state))
        .collect();
    assert_eq!(
        states,
        [
            "Deposit Committed",
            "Transfer Aborted",
            "Transfer Committed",
            "Withdrawal Committed"
        ]
        .map(String::from)
        .into()
    );
}

// ---- doubled ------------------------------------------------------------

/// T1 posted twice on both sides: balances, events and totals agree,
/// only the count per id tells.
#[test]
fn a_doubled_transfer_is_an_atomicity_anomaly() {
    let f = Fixture::good();
    f.append(N1, "a", EventKind::TransferredOut, 30, Some(id(T1)));
    f.append(N2, "b", EventKind::TransferredIn, 30, Some(id(T1)));
    assert_eq!(
        f.kinds(),
        kinds(&["acked_not_applied", "balance_mismatch", "leg_mismatch"])
    );
}

/// D1 applied twice: its record, the acknowledged movement and the
/// history each see a second application.
#[test]
fn a_doubled_deposit_is_applied_twice() {
    let f = Fixture::good();
    f.append(N1, "a", EventKind::Deposited, 100, Some(id(D1)));
    assert_eq!(
        f.kinds(),
        kinds(&["acked_not_applied", "balance_mismatch", "movement_mismatch"])
    );
}

// ---- the tables ---------------------------------------------------------

#[test]
fn a_transaction_the_rules_refused_is_an_invariant_anomaly() {
    let f = Fixture::good();
    f.stores[N2]
        .corrupt
        .lock()
        .unwrap()
        .push("debit_posted of 5 on b would break its balance".into());
    assert_eq!(f.kinds(), kinds(&["invariant"]));
}

#[test]
fn a_malformed_feed_entry_is_a_feed_anomaly() {
    let f = Fixture::good();
    // An aborted transfer's entry with a sequence number.
    let mut t = f.tables(N1);
    let entry = t
        .outbox
        .iter_mut()
        .find(|e| e.kind == FeedKind::TransferAborted)
        .unwrap();
    entry.seq = Some(1);
    drop(t);
    assert_eq!(f.kinds(), kinds(&["feed"]));
}

#[test]
fn an_event_missing_from_the_feed_is_a_feed_anomaly() {
    let f = Fixture::good();
    let mut t = f.tables(N2);
    let i = t
        .outbox
        .iter()
        .position(|e| e.kind == FeedKind::Event(EventKind::CreditPosted))
        .unwrap();
    t.outbox.remove(i);
    drop(t);
    assert_eq!(f.kinds(), kinds(&["feed"]));
}

#[test]
fn an_event_fed_twice_or_out_of_order_is_a_feed_anomaly() {
    let events_of_a = |t: &crate::mem::Tables| -> Vec<usize> {
        (0..t.outbox.len())
            .filter(|&i| t.outbox[i].account_id == acct("a") && t.outbox[i].seq.is_some())
            .collect()
    };
    let f = Fixture::good();
    let mut t = f.tables(N1);
    let last = *events_of_a(&t).last().unwrap();
    let twice = t.outbox[last].clone();
    t.outbox.push(twice);
    drop(t);
    assert_eq!(f.kinds(), kinds(&["feed"]));

    let f = Fixture::good();
    let mut t = f.tables(N1);
    let a = events_of_a(&t);
    t.outbox.swap(a[1], a[2]);
    drop(t);
    assert_eq!(f.kinds(), kinds(&["feed"]));
}

/// A partition moved to another node: its events fed before the move
/// stay in the old owner's feed, its rows are the new owner's only.
/// The checker sees one whole feed; a copy left behind is a duplicate.
#[test]
fn a_moved_partition_keeps_its_feed_whole_and_a_copy_left_behind_is_a_duplicate() {
    const N3: &str = "node-3";
    let mut f = Fixture::good();
    let clock = f.stores[N1].clock.clone();
    f.stores.insert(N3.to_string(), MemStore::new(clock));
    // Copied as a move copies it: every table, in chunks.
    let mut read = f.tables(N1).snapshot(0).unwrap();
    for table in PartitionTable::ALL {
        let mut after = 0;
        loop {
            let chunk = block_on(read.chunk(table, after, None, 2)).unwrap();
            if chunk.count == 0 {
                break;
            }
            after = chunk.last;
            let rows = CopiedRows::parse(table, &chunk.rows.to_string()).unwrap();
            f.tables(N3).write_rows(rows).unwrap();
        }
    }
    assert!(!f.tables(N3).accounts.is_empty() && !f.tables(N3).transfers.is_empty());
    assert!(f.kinds().contains("duplicate_row"));
    assert!(f.tables(N1).drop_partition(0) > 0);
    assert_eq!(f.kinds(), kinds(&[]));
    assert!(f.tables(N1).accounts.is_empty() && !f.tables(N1).outbox.is_empty());
}

#[test]
fn an_aborted_transfer_missing_from_the_feed_is_a_feed_anomaly() {
    let f = Fixture::good();
    f.tables(N1)
        .outbox
        .retain(|e| e.kind != FeedKind::TransferAborted);
    assert_eq!(f.kinds(), kinds(&["feed"]));
}

#[test]
fn more_held_than_posted_is_an_overdraft() {
    let f = Fixture::good();
    f.append(N1, "a", EventKind::DebitHeld, 61, Some(id(50)));
    assert_eq!(
        f.kinds(),
        kinds(&[
            "held_left",
            "leg_mismatch",
            "negative_balance",
            "phantom_transaction"
        ])
    );
}

#[test]
fn a_negative_pending_credit_is_an_overdraft() {
    let f = Fixture::good();
    f.append(N1, "c", EventKind::CreditVoided, 1, Some(id(50)));
    assert_eq!(
        f.kinds(),
        kinds(&[
            "leg_mismatch",
            "negative_balance",
            "pending_credit_left",
            "phantom_transaction"
        ])
    );
}

#[test]
fn a_negative_balance_is_an_overdraft() {
    let f = Fixture::good();
    // 100 in, 40 out: 60 left, and 61 withdrawn by a record that says so.
    let m = movement(51, MovementKind::Withdrawal, "a", 61);
    f.claim_record(&m, TransferState::Committed);
    f.append(N1, "a", EventKind::Withdrawn, 61, Some(id(51)));
    assert_eq!(
        f.kinds(),
        kinds(&[
            "balance_mismatch",
            "negative_balance",
            "phantom_transaction"
        ])
    );
}

#[test]
fn a_balance_that_is_not_its_events_is_a_replay_anomaly() {
    let f = Fixture::good();
    f.tables(N1).accounts.get_mut(&acct("c")).unwrap().held += 1;
    assert_eq!(f.kinds(), kinds(&["held_left", "replay_mismatch"]));

    let f = Fixture::good();
    f.tables(N2).accounts.get_mut(&acct("b")).unwrap().last_seq += 1;
    assert_eq!(f.kinds(), kinds(&["seq_gap"]));
}

#[test]
fn a_snapshot_that_is_not_its_events_is_a_snapshot_anomaly() {
    // Another balance.
    let f = Fixture::good();
    f.tables(N1).snapshots.values_mut().next().unwrap()[0].posted += 1;
    assert_eq!(f.kinds(), kinds(&["snapshot"]));
    // Another time.
    let f = Fixture::good();
    f.tables(N1).snapshots.values_mut().next().unwrap()[0].at += chrono::Duration::seconds(1);
    assert_eq!(f.kinds(), kinds(&["snapshot"]));
    // Right, but not at a snapshot's place.
    let f = Fixture::good();
    let mut t = f.tables(N1);
    let log = t.events[&acct("a")].clone();
    let (posted, held, pending_credit) = replay(&log[..3]);
    t.snapshots.entry(acct("a")).or_default().push(Snapshot {
        account_id: acct("a"),
        seq: 3,
        posted,
        held,
        pending_credit,
        at: log[2].at,
    });
    drop(t);
    assert_eq!(f.kinds(), kinds(&["snapshot"]));
}

#[test]
fn money_from_nowhere_is_a_conservation_anomaly() {
    let f = Fixture::good();
    f.append(N2, "b", EventKind::Deposited, 5, None);
    assert_eq!(f.kinds(), kinds(&["balance_mismatch", "conservation"]));
}

/// 5 USD out and 5 JPY in add up to nothing, but not per currency.
#[test]
fn conservation_is_per_currency() {
    let f = Fixture::good();
    open(&f.stores[N2], "j", jpy());
    f.append(N2, "j", EventKind::Deposited, 5, None);
    f.append(N1, "c", EventKind::Withdrawn, 5, None);
    let found = f.check();
    let conservation: Vec<&Anomaly> = found
        .iter()
        .filter(|a| a.kind == AnomalyKind::Conservation)
        .collect();
    assert_eq!(conservation.len(), 2, "{found:#?}");
    assert!(conservation.iter().any(|a| a.detail.starts_with("JPY")));
    assert!(conservation.iter().any(|a| a.detail.starts_with("USD")));
}

// ---- atomicity ------------------------------------------------------------

#[test]
fn a_posting_of_an_aborted_transfer_is_an_atomicity_anomaly() {
    let f = Fixture::good();
    f.append(N1, "a", EventKind::TransferredOut, 10, Some(id(T3)));
    f.append(N2, "b", EventKind::TransferredIn, 10, Some(id(T3)));
    assert_eq!(
        f.kinds(),
        kinds(&[
            "balance_mismatch",
            "leg_mismatch",
            "record_mismatch",
            "refused_but_applied"
        ])
    );
}

#[test]
fn a_committed_transfer_without_postings_is_an_atomicity_anomaly() {
    let f = Fixture::good();
    f.record(
        RecordKind::Transfer,
        spec(60, "a", "b", 5),
        TransferState::Committed,
    );
    assert_eq!(f.kinds(), kinds(&["record_mismatch"]));
}

#[test]
fn a_committed_transfer_posted_on_one_side_is_an_atomicity_anomaly() {
    let f = Fixture::good();
    f.record(
        RecordKind::Transfer,
        spec(61, "a", "b", 5),
        TransferState::Committed,
    );
    f.append(N1, "a", EventKind::TransferredOut, 5, Some(id(61)));
    f.append(N1, "a", EventKind::Deposited, 5, None);
    assert_eq!(f.kinds(), kinds(&["leg_mismatch", "phantom_transaction"]));
}

#[test]
fn a_transfer_credited_to_another_account_is_an_atomicity_anomaly() {
    let f = Fixture::good();
    f.record(
        RecordKind::Transfer,
        spec(62, "a", "b", 5),
        TransferState::Committed,
    );
    f.append(N1, "a", EventKind::TransferredOut, 5, Some(id(62)));
    f.append(N1, "c", EventKind::TransferredIn, 5, Some(id(62)));
    assert_eq!(
        f.kinds(),
        kinds(&[
            "balance_mismatch",
            "leg_mismatch",
            "phantom_transaction",
            "record_mismatch"
        ])
    );
}

#[test]
fn a_transfer_posted_with_two_amounts_is_an_atomicity_anomaly() {
    let f = Fixture::good();
    f.record(
        RecordKind::Transfer,
        spec(63, "a", "b", 5),
        TransferState::Committed,
    );
    f.append(N1, "a", EventKind::TransferredOut, 5, Some(id(63)));
    f.append(N2, "b", EventKind::TransferredIn, 4, Some(id(63)));
    f.append(N2, "b", EventKind::Deposited, 1, None);
    assert_eq!(
        f.kinds(),
        kinds(&["balance_mismatch", "leg_mismatch", "phantom_transaction"])
    );
}

// ---- exactly once -----------------------------------------------------------

#[test]
fn a_transfers_id_applied_as_a_deposit_too_is_applied_twice() {
    let f = Fixture::good();
    f.append(N1, "c", EventKind::Deposited, 7, Some(id(T1)));
    assert_eq!(
        f.kinds(),
        kinds(&[
            "balance_mismatch",
            "movement_mismatch",
            "not_as_asked",
            "record_mismatch"
        ])
    );
}

#[test]
fn a_committed_movement_never_applied_is_a_movement_record_anomaly() {
    let f = Fixture::good();
    f.claim_record(
        &movement(70, MovementKind::Deposit, "c", 5),
        TransferState::Committed,
    );
    assert_eq!(f.kinds(), kinds(&["record_mismatch"]));
}

#[test]
fn an_aborted_movement_applied_is_a_movement_record_anomaly() {
    let f = Fixture::good();
    f.claim_record(
        &movement(71, MovementKind::Deposit, "c", 5),
        TransferState::Aborted,
    );
    f.append(N1, "c", EventKind::Deposited, 5, Some(id(71)));
    assert_eq!(
        f.kinds(),
        kinds(&["balance_mismatch", "phantom_transaction", "record_mismatch"])
    );
}

#[test]
fn a_movements_id_posting_transfer_legs_is_a_movement_record_anomaly() {
    let f = Fixture::good();
    f.claim_record(
        &movement(72, MovementKind::Deposit, "c", 5),
        TransferState::Aborted,
    );
    f.append(N1, "c", EventKind::TransferredOut, 5, Some(id(72)));
    f.append(N1, "a", EventKind::TransferredIn, 5, Some(id(72)));
    assert_eq!(
        f.kinds(),
        kinds(&[
            "balance_mismatch",
            "leg_mismatch",
            "phantom_transaction",
            "record_mismatch"
        ])
    );
}

#[test]
fn an_acknowledged_transfer_without_its_record_is_a_lost_commit() {
    let mut f = Fixture::good();
    f.history
        .push(op(transfer_req(spec(80, "a", "b", 5)), Heard::Ok));
    assert_eq!(f.kinds(), kinds(&["acked_not_applied", "balance_mismatch"]));
}

#[test]
fn an_acknowledged_transfer_whose_record_aborted_is_a_lost_commit() {
    let mut f = Fixture::good();
    let t3 = f.history[4].request.clone();
    f.heard(4, Heard::Ok);
    assert_eq!(t3.transaction_id(), Some(id(T3).0));
    assert_eq!(f.kinds(), kinds(&["acked_not_applied", "balance_mismatch"]));
}

#[test]
fn an_acknowledged_movement_never_applied_is_a_lost_commit() {
    let mut f = Fixture::good();
    let m = movement(81, MovementKind::Deposit, "a", 5);
    f.claim_record(&m, TransferState::Committed);
    f.history.push(op(movement_req(m), Heard::Ok));
    assert_eq!(
        f.kinds(),
        kinds(&["acked_not_applied", "balance_mismatch", "record_mismatch"])
    );
}

#[test]
fn the_same_body_refused_as_reused_is_a_false_reuse() {
    let mut f = Fixture::good();
    f.heard(4, fail("idempotency_key_reused"));
    assert_eq!(f.kinds(), kinds(&["false_reuse"]));
}

#[test]
fn a_refused_transfer_that_committed_is_a_changed_outcome() {
    let mut f = Fixture::good();
    let t2 = f.history[3].request.clone();
    f.heard(3, fail("insufficient_funds"));
    assert_eq!(t2.transaction_id(), Some(id(T2).0));
    assert_eq!(
        f.kinds(),
        kinds(&["balance_mismatch", "refused_but_applied"])
    );
}

#[test]
fn a_refused_movement_that_was_applied_is_a_changed_outcome() {
    let mut f = Fixture::good();
    let m = movement(82, MovementKind::Deposit, "c", 5);
    f.append(N1, "c", EventKind::Deposited, 5, Some(id(82)));
    f.history
        .push(op(movement_req(m), fail("insufficient_funds")));
    assert_eq!(
        f.kinds(),
        kinds(&["balance_mismatch", "record_mismatch", "refused_but_applied"])
    );
}

#[test]
fn two_answers_for_one_id_are_a_changed_outcome() {
    let mut f = Fixture::good();
    let mut again = op(f.history[4].request.clone(), fail("transfer_aborted"));
    again.retry = true;
    f.history.push(again);
    assert_eq!(f.kinds(), kinds(&["answer_changed"]));
}

#[test]
fn a_reused_id_acknowledged_is_reuse_accepted() {
    let mut f = Fixture::good();
    assert!(matches!(f.history[6].request, Request::Deposit { .. }));
    f.heard(6, Heard::Ok);
    assert_eq!(f.kinds(), kinds(&["reuse_accepted"]));
}

#[test]
fn two_bodies_acknowledged_for_one_id_are_reuse_accepted() {
    let mut f = Fixture::good();
    f.history.push(op(
        movement_req(movement(D1, MovementKind::Deposit, "a", 99)),
        Heard::Ok,
    ));
    // And the second was not applied as asked (99): 100 was.
    assert_eq!(f.kinds(), kinds(&["reuse_accepted"]));
}

// ---- what the client asked ------------------------------------------------

/// An acknowledged deposit or withdrawal whose record says what was
/// asked, applied otherwise on its account's node (the shape of `body`).
fn movement_applied_as(f: &mut Fixture, asked: Movement, applied: (&str, EventKind, i64)) {
    f.claim_record(&asked, TransferState::Committed);
    let (account, kind, amount) = applied;
    f.append(N1, account, kind, amount, Some(asked.transaction_id));
    f.history.push(op(movement_req(asked), Heard::Ok));
}

#[test]
fn a_deposit_applied_to_another_account_is_not_as_asked() {
    let mut f = Fixture::good();
    let asked = movement(100, MovementKind::Deposit, "a", 50);
    movement_applied_as(&mut f, asked, ("c", EventKind::Deposited, 50));
    assert_eq!(
        f.kinds(),
        kinds(&["balance_mismatch", "not_as_asked", "record_mismatch"])
    );
}

#[test]
fn a_deposit_applied_with_another_amount_is_not_as_asked() {
    let mut f = Fixture::good();
    let asked = movement(101, MovementKind::Deposit, "a", 50);
    movement_applied_as(&mut f, asked, ("a", EventKind::Deposited, 49));
    assert_eq!(
        f.kinds(),
        kinds(&["balance_mismatch", "not_as_asked", "record_mismatch"])
    );
}

#[test]
fn a_withdrawal_applied_as_a_deposit_is_not_as_asked() {
    let mut f = Fixture::good();
    let asked = movement(102, MovementKind::Withdrawal, "a", 5);
    movement_applied_as(&mut f, asked, ("a", EventKind::Deposited, 5));
    assert_eq!(
        f.kinds(),
        kinds(&[
            "acked_not_applied",
            "balance_mismatch",
            "not_as_asked",
            "record_mismatch"
        ])
    );
}

/// The record and the event agree with each other, not with the client.
#[test]
fn a_movement_recorded_and_applied_otherwise_is_not_as_asked() {
    let mut f = Fixture::good();
    let asked = movement(103, MovementKind::Deposit, "a", 50);
    let mut done = asked.clone();
    done.account_id = acct("c");
    f.claim_record(&done, TransferState::Committed);
    f.append(N1, "c", EventKind::Deposited, 50, Some(id(103)));
    f.history.push(op(movement_req(asked), Heard::Ok));
    assert_eq!(
        f.kinds(),
        kinds(&["acked_not_applied", "balance_mismatch", "not_as_asked"])
    );
}

#[test]
fn a_transfer_recorded_and_posted_with_another_amount_is_not_as_asked() {
    let mut f = Fixture::good();
    f.record(
        RecordKind::Transfer,
        spec(104, "a", "b", 5),
        TransferState::Committed,
    );
    f.append(N1, "a", EventKind::TransferredOut, 5, Some(id(104)));
    f.append(N2, "b", EventKind::TransferredIn, 5, Some(id(104)));
    f.history
        .push(op(transfer_req(spec(104, "a", "b", 6)), Heard::Ok));
    assert_eq!(
        f.kinds(),
        kinds(&[
            "acked_not_applied",
            "balance_mismatch",
            "leg_mismatch",
            "not_as_asked"
        ])
    );
}

#[test]
fn a_transfer_credited_to_another_account_than_asked_is_not_as_asked() {
    let mut f = Fixture::good();
    let asked = spec(105, "a", "b", 5);
    f.record(
        RecordKind::Transfer,
        asked.clone(),
        TransferState::Committed,
    );
    f.append(N1, "a", EventKind::TransferredOut, 5, Some(id(105)));
    f.append(N1, "c", EventKind::TransferredIn, 5, Some(id(105)));
    f.history.push(op(transfer_req(asked), Heard::Ok));
    assert_eq!(
        f.kinds(),
        kinds(&[
            "balance_mismatch",
            "leg_mismatch",
            "not_as_asked",
            "record_mismatch"
        ])
    );
}

/// A USD transfer that moved yen: the record and the amounts agree.
#[test]
fn a_transfer_posted_in_another_currency_is_not_as_asked() {
    let mut f = Fixture::good();
    let n2 = &f.stores[N2];
    open(n2, "j1", jpy());
    open(n2, "j2", jpy());
    let mut fund = movement(106, MovementKind::Deposit, "j1", 100);
    fund.currency = jpy();
    let req = MovementRequest {
        claim: Some(fund.claim(0, 5000, uuid::Uuid::nil())),
        movement: fund,
    };
    tx(n2, movements::request_keys(&req), |w| {
        movements::apply_request(w, &req)
    })
    .unwrap();
    let asked = spec(107, "j1", "j2", 5);
    f.record(
        RecordKind::Transfer,
        asked.clone(),
        TransferState::Committed,
    );
    f.append(N2, "j1", EventKind::TransferredOut, 5, Some(id(107)));
    f.append(N2, "j2", EventKind::TransferredIn, 5, Some(id(107)));
    f.history.push(op(transfer_req(asked), Heard::Ok));
    assert_eq!(
        f.kinds(),
        kinds(&[
            "balance_mismatch",
            "leg_mismatch",
            "not_as_asked",
            "phantom_transaction",
            "record_mismatch"
        ])
    );
}

// ---- liveness ---------------------------------------------------------------

/// What is left open is in flight, and each kind of it an anomaly.
#[test]
fn what_is_left_open_is_in_flight_and_named() {
    let f = Fixture::good();
    assert!(!state(&f.stores).in_flight());
    // A record still preparing, one decided but not completed, a leg
    // prepared, a hold and a pending credit.
    f.record(
        RecordKind::Transfer,
        spec(90, "a", "c", 1),
        TransferState::Preparing,
    );
    f.tables(N1)
        .transfers
        .get_mut(&id(T1))
        .unwrap()
        .record
        .completed = false;
    let leg = Leg::both(&spec(91, "a", "b", 1), 0, 0, 0);
    let vote = tx(
        &f.stores[N2],
        legs::keys(std::slice::from_ref(&leg[1])),
        |w| legs::prepare(w, &leg[1]),
    );
    assert_eq!(vote, Ok(()));
    f.append(N1, "a", EventKind::DebitHeld, 1, Some(id(92)));
    assert!(state(&f.stores).in_flight());
    let found = f.check();
    for (kind, what) in [
        (AnomalyKind::UndecidedTransfer, id(90).to_string()),
        (AnomalyKind::UncompletedTransfer, id(T1).to_string()),
        (AnomalyKind::PreparedLeg, "1 legs".to_string()),
        (
            AnomalyKind::HeldLeft,
            "account a still has 1 held".to_string(),
        ),
        (AnomalyKind::PendingCreditLeft, "account b".to_string()),
    ] {
        assert!(
            found
                .iter()
                .any(|a| a.kind == kind && a.detail.contains(&what)),
            "{kind} {what}: {found:#?}"
        );
    }
    let _ = LegState::Prepared;
}
