//! The checker: what must hold after a run, read from every node's tables
//! and the clients' history.
//!
//! - Liveness (7): nothing preparing, nothing decided but unfinished, no leg
//!   prepared, no hold, no pending credit.
//! - No overdraft (4): no balance below zero, and no transaction the rules
//!   refused as breaking a balance's invariants.
//! - Replay (6): every balance is the fold of its account's events.
//! - Conservation (1): per currency, the balances add up to what deposits
//!   brought in minus what withdrawals took out.
//! - Atomicity (2): per transaction id, the event logs hold either no
//!   posting or exactly one debit and one matching credit, as its decision
//!   record says.
//! - Exactly once (3): an acknowledged transfer or movement is applied once,
//!   a refused one never; a transfer's answer never changes, so every
//!   definite answer for one id agrees with the others and with the record.
//! - As asked: what an acknowledged request applied is what the client
//!   asked for (accounts, amount, currency, kind), not only what its record
//!   says; and a deposit or withdrawal applied what its record says.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use wallet_shared::protocol::{
    replay, EventKind, FeedKind, LegState, MovementKind, RecordKind, TransferRecord, TransferState,
};
use wallet_shared::{AccountId, TransactionId};

use crate::mem::MemStore;
use crate::world::{Op, Outcome, Request};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: String,
    pub detail: String,
}

impl Anomaly {
    pub fn new(kind: &str, detail: impl Into<String>) -> Self {
        Anomaly {
            kind: kind.into(),
            detail: detail.into(),
        }
    }
}

/// What is still unsettled (promise 7), one line each.
pub fn unsettled(stores: &BTreeMap<String, MemStore>) -> Vec<String> {
    let mut out = Vec::new();
    for (node, store) in stores {
        let t = store.tables.lock().unwrap();
        for r in t.transfers.values() {
            if r.record.state == TransferState::Preparing || !r.record.completed {
                out.push(format!(
                    "{node}: transfer {} {:?} completed={}",
                    r.id(),
                    r.record.state,
                    r.record.completed
                ));
            }
        }
        for l in t.legs.values() {
            if l.state == LegState::Prepared {
                out.push(format!(
                    "{node}: {} leg of {} prepared",
                    l.role.as_str(),
                    l.transaction_id
                ));
            }
        }
        for a in t.accounts.values() {
            if a.held != 0 || a.pending_credit != 0 {
                out.push(format!(
                    "{node}: {} holds {} and expects {}",
                    a.account_id, a.held, a.pending_credit
                ));
            }
        }
    }
    out
}

pub fn settled(stores: &BTreeMap<String, MemStore>) -> bool {
    unsettled(stores).is_empty()
}

/// What one transaction id applied, read from the event logs.
#[derive(Default)]
struct Applied {
    debits: Vec<(String, i64)>,
    credits: Vec<(String, i64)>,
    /// The currencies of the accounts its debits and credits posted to.
    currencies: BTreeSet<String>,
    /// Its deposits and withdrawals.
    movements: Vec<Moved>,
}

/// One deposit or withdrawal as its event says it was applied.
#[derive(Debug, PartialEq)]
struct Moved {
    account: String,
    kind: MovementKind,
    amount: i64,
    currency: String,
}

impl Moved {
    fn is(&self, account: &AccountId, kind: MovementKind, amount: i64, currency: &str) -> bool {
        self.account == account.as_str()
            && self.kind == kind
            && self.amount == amount
            && self.currency == currency
    }
}

pub fn check(stores: &BTreeMap<String, MemStore>, history: &[Op]) -> Vec<Anomaly> {
    let mut out = Vec::new();
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    let mut brought: BTreeMap<String, i64> = BTreeMap::new();
    let mut applied: BTreeMap<TransactionId, Applied> = BTreeMap::new();
    let mut records = BTreeMap::new();
    for (node, store) in stores {
        for why in store.corrupt.lock().unwrap().iter() {
            out.push(Anomaly::new("invariant", format!("{node}: {why}")));
        }
        let t = store.tables.lock().unwrap();
        for r in t.transfers.values() {
            records.insert(r.id(), r.record.clone());
        }
        // The feed: every event exactly once, each account's in order, and
        // one `transfer_aborted` per aborted decision record here.
        let mut fed: BTreeMap<&AccountId, Vec<i64>> = BTreeMap::new();
        let mut aborted_fed = 0;
        for entry in &t.outbox {
            match (entry.kind, entry.seq) {
                (FeedKind::Event(_), Some(seq)) => {
                    fed.entry(&entry.account_id).or_default().push(seq)
                }
                (FeedKind::TransferAborted, None) => aborted_fed += 1,
                _ => out.push(Anomaly::new(
                    "feed",
                    format!("{node}: malformed entry {entry:?}"),
                )),
            }
        }
        for (account, log) in &t.events {
            let want: Vec<i64> = log.iter().map(|e| e.seq).collect();
            if fed.get(account).map(Vec::as_slice).unwrap_or_default() != want.as_slice() {
                out.push(Anomaly::new(
                    "feed",
                    format!(
                        "{node}: the feed does not carry {account}'s events 1..{} once, in order",
                        want.len()
                    ),
                ));
            }
        }
        let aborted = t
            .transfers
            .values()
            .filter(|r| r.record.kind == RecordKind::Transfer)
            .filter(|r| r.record.state == TransferState::Aborted)
            .count();
        if aborted != aborted_fed {
            out.push(Anomaly::new(
                "feed",
                format!("{node}: {aborted} aborted transfers, {aborted_fed} in the feed"),
            ));
        }
        for a in t.accounts.values() {
            let currency = a.currency.code().to_string();
            if a.posted < 0 || a.held < 0 || a.held > a.posted || a.pending_credit < 0 {
                out.push(Anomaly::new(
                    "overdraft",
                    format!(
                        "{}: posted {} held {} pending {}",
                        a.account_id, a.posted, a.held, a.pending_credit
                    ),
                ));
            }
            let log = t
                .events
                .get(&a.account_id)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            if replay(log) != (a.posted, a.held, a.pending_credit) || log.len() as i64 != a.last_seq
            {
                out.push(Anomaly::new(
                    "replay",
                    format!(
                        "{}: events fold to {:?} over {} events, the row says ({}, {}, {}) at seq {}",
                        a.account_id,
                        replay(log),
                        log.len(),
                        a.posted,
                        a.held,
                        a.pending_credit,
                        a.last_seq
                    ),
                ));
            }
            // Snapshots: each is the fold of the events up to its own.
            for snap in t.snapshots.get(&a.account_id).into_iter().flatten() {
                let upto = log.get(..snap.seq as usize).unwrap_or(log);
                let at = log.get(snap.seq as usize - 1).map(|e| e.at);
                if snap.seq % store.snapshot_every != 0
                    || replay(upto) != snap.fold()
                    || at != Some(snap.at)
                {
                    out.push(Anomaly::new(
                        "snapshot",
                        format!(
                            "{}: snapshot at event {} says {:?}, the events say {:?}",
                            a.account_id,
                            snap.seq,
                            snap.fold(),
                            replay(upto)
                        ),
                    ));
                }
            }
            *totals.entry(currency.clone()).or_default() += a.posted;
            for e in log {
                let Some(id) = e.transaction_id else { continue };
                let entry = applied.entry(id).or_default();
                let who = e.account_id.as_str().to_string();
                let moved = |kind| Moved {
                    account: who.clone(),
                    kind,
                    amount: e.amount,
                    currency: currency.clone(),
                };
                match e.kind {
                    EventKind::Deposited => {
                        *brought.entry(currency.clone()).or_default() += e.amount;
                        entry.movements.push(moved(MovementKind::Deposit));
                    }
                    EventKind::Withdrawn => {
                        *brought.entry(currency.clone()).or_default() -= e.amount;
                        entry.movements.push(moved(MovementKind::Withdrawal));
                    }
                    EventKind::DebitPosted | EventKind::TransferredOut => {
                        entry.currencies.insert(currency.clone());
                        entry.debits.push((who, e.amount))
                    }
                    EventKind::CreditPosted | EventKind::TransferredIn => {
                        entry.currencies.insert(currency.clone());
                        entry.credits.push((who, e.amount))
                    }
                    _ => {}
                }
            }
        }
    }
    for (currency, total) in &totals {
        let expected = brought.get(currency).copied().unwrap_or(0);
        if *total != expected {
            out.push(Anomaly::new(
                "conservation",
                format!("{currency}: balances add up to {total}, deposits minus withdrawals to {expected}"),
            ));
        }
    }
    // Atomicity: per transfer, nothing posted or exactly one matching pair,
    // as its record says.
    for (id, a) in &applied {
        if a.debits.is_empty() && a.credits.is_empty() {
            continue;
        }
        let record = records.get(id);
        let committed = record.is_some_and(|r| r.state == TransferState::Committed);
        let pair_ok = a.debits.len() == 1
            && a.credits.len() == 1
            && a.debits[0].1 == a.credits[0].1
            && record.is_some_and(|r| {
                r.spec.from.as_str() == a.debits[0].0
                    && r.spec.to.as_str() == a.credits[0].0
                    && r.spec.amount.minor() == a.debits[0].1
                    && a.currencies.iter().all(|c| c == r.spec.currency.code())
            });
        if !committed || !pair_ok {
            out.push(Anomaly::new(
                "atomicity",
                format!(
                    "{id}: debits {:?}, credits {:?} in {:?}, record {:?}",
                    a.debits,
                    a.credits,
                    a.currencies,
                    record.map(|r| (r.state, r.spec.currency.code()))
                ),
            ));
        }
    }
    // Every record against what its id applied: a transfer's id moves no
    // money through a deposit or withdrawal; a deposit's or withdrawal's
    // record says whether it was applied, once, and nothing else was.
    for (id, r) in &records {
        let a = applied.get(id);
        let movements = a.map_or(0, |a| a.movements.len());
        let legs = a.map_or(0, |a| a.debits.len() + a.credits.len());
        let committed = r.state == TransferState::Committed;
        match r.kind {
            RecordKind::Transfer => {
                if committed && a.is_none_or(|a| a.debits.len() != 1 || a.credits.len() != 1) {
                    out.push(Anomaly::new(
                        "atomicity",
                        format!("{id}: committed but not posted on both sides"),
                    ));
                }
                if movements != 0 {
                    out.push(Anomaly::new(
                        "applied_twice",
                        format!("transfer {id}: its id also applied {movements} deposits or withdrawals"),
                    ));
                }
            }
            RecordKind::Deposit | RecordKind::Withdrawal => {
                let want = usize::from(committed);
                if movements != want || legs != 0 {
                    out.push(Anomaly::new(
                        "movement_record",
                        format!(
                            "{} {id} is {:?} but applied {movements} movements and {legs} transfer legs",
                            r.kind.as_str(),
                            r.state
                        ),
                    ));
                }
                // What it applied is what the record holds.
                let spec = &r.spec;
                let other: Vec<&Moved> = a
                    .map(|a| a.movements.iter())
                    .into_iter()
                    .flatten()
                    .filter(|m| {
                        r.kind.movement().is_none_or(|kind| {
                            !m.is(&spec.to, kind, spec.amount.minor(), spec.currency.code())
                        })
                    })
                    .collect();
                if !other.is_empty() {
                    out.push(Anomaly::new(
                        "movement_record",
                        format!(
                            "{} {id} of {} {} to {} applied {other:?}",
                            r.kind.as_str(),
                            spec.amount.minor(),
                            spec.currency.code(),
                            spec.to
                        ),
                    ));
                }
            }
        }
    }
    // What clients heard.
    let mut answers: BTreeMap<TransactionId, Vec<&Outcome>> = BTreeMap::new();
    let mut acknowledged: BTreeMap<TransactionId, Vec<&Request>> = BTreeMap::new();
    for op in history {
        let id = op.request.id();
        let posted = applied.get(&id);
        let record = records.get(&id);
        if op.outcome == Outcome::Ok {
            acknowledged.entry(id).or_default().push(&op.request);
        }
        if op.reuse {
            // An earlier request's id with another body. The first of the
            // two to reach the id's record wins it; the other is refused,
            // and nothing of it is applied (the checks below and the
            // records' checks above see a second body).
            if op.outcome == Outcome::Ok && !record.is_some_and(|r| holds(r, &op.request)) {
                out.push(Anomaly::new(
                    "reuse_accepted",
                    format!("{id} was used again with another body and acknowledged"),
                ));
            }
            continue;
        }
        match (&op.request, &op.outcome) {
            (_, Outcome::Unknown(_)) => continue,
            (_, Outcome::Ok) => {
                if !matches!(record, Some(r) if holds(r, &op.request) && r.state == TransferState::Committed)
                {
                    out.push(Anomaly::new(
                        "lost_commit",
                        format!(
                            "{id} was acknowledged but its record is {:?}",
                            record.map(|r| (r.kind, r.state))
                        ),
                    ));
                }
                if matches!(op.request, Request::Movement(_))
                    && posted.map_or(0, |a| a.movements.len()) != 1
                {
                    out.push(Anomaly::new(
                        "lost_commit",
                        format!(
                            "movement {id} was acknowledged but applied {} times",
                            posted.map_or(0, |a| a.movements.len())
                        ),
                    ));
                }
                if let Some(a) = posted.filter(|a| !as_asked(&op.request, a)) {
                    out.push(Anomaly::new(
                        "not_as_asked",
                        format!(
                            "{id} was acknowledged for {:?} but applied debits {:?}, credits {:?} in {:?}, movements {:?}",
                            op.request, a.debits, a.credits, a.currencies, a.movements
                        ),
                    ));
                }
            }
            (_, Outcome::Fail(code)) => {
                let mine = record.filter(|r| holds(r, &op.request));
                if code == "idempotency_key_reused" && mine.is_some() {
                    out.push(Anomaly::new(
                        "false_reuse",
                        format!("{id}: the same body was refused as a reused key"),
                    ));
                }
                if mine.is_some_and(|r| r.state == TransferState::Committed) {
                    out.push(Anomaly::new(
                        "changed_outcome",
                        format!("{id} was refused ({code}) but committed"),
                    ));
                }
                if record.is_none() && posted.is_some_and(|a| !a.movements.is_empty()) {
                    out.push(Anomaly::new(
                        "changed_outcome",
                        format!("movement {id} was refused ({code}) but applied"),
                    ));
                }
            }
        }
        if let Request::Movement(_) = op.request {
            if posted.map_or(0, |a| a.movements.len()) > 1 {
                out.push(Anomaly::new(
                    "applied_twice",
                    format!(
                        "movement {id} applied {} times",
                        posted.map_or(0, |a| a.movements.len())
                    ),
                ));
            }
        }
        answers.entry(id).or_default().push(&op.outcome);
    }
    for (id, requests) in acknowledged {
        if requests.windows(2).any(|w| w[0] != w[1]) {
            out.push(Anomaly::new(
                "reuse_accepted",
                format!("{id}: two different bodies were acknowledged: {requests:?}"),
            ));
        }
    }
    for (id, outs) in answers {
        if outs.windows(2).any(|w| w[0] != w[1]) {
            out.push(Anomaly::new(
                "changed_outcome",
                format!("{id}: answers differ across retries: {outs:?}"),
            ));
        }
    }
    out.sort_by(|a, b| (&a.kind, &a.detail).cmp(&(&b.kind, &b.detail)));
    out.dedup();
    out
}

/// Whether every posting or movement of an acknowledged request is the one
/// its client asked for. How many there are is for the other checks.
fn as_asked(request: &Request, a: &Applied) -> bool {
    match request {
        Request::Transfer(spec) => {
            let amount = spec.amount.minor();
            a.debits
                .iter()
                .all(|(who, n)| who == spec.from.as_str() && *n == amount)
                && a.credits
                    .iter()
                    .all(|(who, n)| who == spec.to.as_str() && *n == amount)
                && a.currencies.iter().all(|c| c == spec.currency.code())
        }
        Request::Movement(m) => a
            .movements
            .iter()
            .all(|moved| moved.is(&m.account_id, m.kind, m.amount.minor(), m.currency.code())),
    }
}

/// Whether `record` is this request's: the same kind and body.
fn holds(record: &TransferRecord, request: &Request) -> bool {
    match request {
        Request::Transfer(spec) => record.kind == RecordKind::Transfer && record.spec == *spec,
        Request::Movement(m) => {
            record.kind == RecordKind::from(m.kind)
                && record.spec.to == m.account_id
                && record.spec.amount == m.amount
                && record.spec.currency == m.currency
        }
    }
}

/// Every anomaly kind, fed a history that has it (and nothing else that
/// would hide it), and a good history that has none: a checker that cannot
/// fail proves nothing. The good history is written by the real rules on
/// two `MemStore`s; each bad one breaks it through the tables directly.
#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use chrono::{DateTime, TimeZone, Utc};
    use participant::model::Broken;
    use participant::model::{Keys, TransferRow, Working};
    use participant::store::Store;
    use participant::{decisions, legs, movements};
    use wallet_shared::protocol::{
        Begin, BeginResult, Decision, Event, FeedEntry, Leg, Movement, MovementKind,
        MovementRequest, OpenAccount, Snapshot, TransferSpec, Vote,
    };
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
        futures::executor::block_on(store.attempt(&keys, &rules)).expect("the rules accept it")
    }

    fn open(store: &MemStore, account: &str, currency: Currency) {
        let req = OpenAccount {
            account_id: acct(account),
            partition: 0,
            currency,
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
        };
        let began = tx(home, decisions::keys([id]), |w| decisions::begin(w, &begin));
        assert_eq!(began, BeginResult::Proceed);
        let [d, c] = Leg::both(spec, 0, 0, 0);
        let prepare = |store, leg: &Leg| {
            tx(store, legs::keys(std::slice::from_ref(leg)), |w| {
                legs::prepare(w, leg)
            })
        };
        let votes = [prepare(debit, &d), prepare(credit, &c)];
        let decision = match votes.iter().find_map(|v| match v {
            Vote::No { reason } => Some(reason.clone()),
            Vote::Yes => None,
        }) {
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

    fn op(request: Request, outcome: Outcome) -> Op {
        Op {
            client: 0,
            coordinator: 0,
            request,
            retry: false,
            reuse: false,
            invoked_ms: 0,
            completed_ms: 0,
            outcome,
        }
    }

    fn fail(code: &str) -> Outcome {
        Outcome::Fail(code.into())
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
            };
            let both = Leg::both(&t2, 0, 0, 0);
            tx(n1, decisions::execute_keys(&begin, &both), |w| {
                decisions::execute(w, &begin, &both)
            });
            // T3: 1000 from a to b, refused: not enough funds.
            let t3 = spec(T3, "a", "b", 1000);
            two_phase(n1, n1, n2, &t3);
            // W1: 5 out of b; claimed at node-1, applied at node-2.
            let w1 = movement(W1, MovementKind::Withdrawal, "b", 5);
            let claim = w1.claim(0, 5000, uuid::Uuid::nil());
            tx(n1, decisions::keys([id(W1)]), |w| {
                decisions::begin(w, &claim)
            });
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
            let mut reuse = op(Request::Movement(reused), fail("idempotency_key_reused"));
            reuse.reuse = true;
            let mut retry = op(Request::Transfer(t1.clone()), Outcome::Ok);
            retry.retry = true;
            let history = vec![
                op(Request::Movement(d1), Outcome::Ok),
                op(Request::Transfer(t1), Outcome::Ok),
                retry,
                op(Request::Transfer(t2), Outcome::Ok),
                op(Request::Transfer(t3), fail("insufficient_funds")),
                op(Request::Movement(w1), Outcome::Ok),
                reuse,
                // Never reached any node.
                op(
                    Request::Transfer(spec(T4, "c", "b", 1)),
                    Outcome::Unknown("timeout".into()),
                ),
            ];
            Fixture { stores, history }
        }

        fn tables(&self, node: &str) -> std::sync::MutexGuard<'_, crate::mem::Tables> {
            self.stores[node].tables.lock().unwrap()
        }

        /// The anomaly kinds the checker reports.
        fn kinds(&self) -> BTreeSet<String> {
            let found = check(&self.stores, &self.history);
            eprintln!("{found:#?}");
            found.into_iter().map(|a| a.kind).collect()
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
        assert!(settled(&f.stores), "{:?}", unsettled(&f.stores));
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
        assert_eq!(f.kinds(), kinds(&["atomicity"]));
    }

    /// D1 applied twice: its record, the acknowledged movement and the
    /// history each see a second application.
    #[test]
    fn a_doubled_deposit_is_applied_twice() {
        let f = Fixture::good();
        f.append(N1, "a", EventKind::Deposited, 100, Some(id(D1)));
        assert_eq!(
            f.kinds(),
            kinds(&["applied_twice", "lost_commit", "movement_record"])
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
        assert_eq!(f.kinds(), kinds(&["overdraft"]));
    }

    #[test]
    fn a_negative_pending_credit_is_an_overdraft() {
        let f = Fixture::good();
        f.append(N1, "c", EventKind::CreditVoided, 1, Some(id(50)));
        assert_eq!(f.kinds(), kinds(&["overdraft"]));
    }

    #[test]
    fn a_negative_balance_is_an_overdraft() {
        let f = Fixture::good();
        // 100 in, 40 out: 60 left, and 61 withdrawn by a record that says so.
        let m = movement(51, MovementKind::Withdrawal, "a", 61);
        f.claim_record(&m, TransferState::Committed);
        f.append(N1, "a", EventKind::Withdrawn, 61, Some(id(51)));
        assert_eq!(f.kinds(), kinds(&["overdraft"]));
    }

    #[test]
    fn a_balance_that_is_not_its_events_is_a_replay_anomaly() {
        let f = Fixture::good();
        f.tables(N1).accounts.get_mut(&acct("c")).unwrap().held += 1;
        assert_eq!(f.kinds(), kinds(&["replay"]));

        let f = Fixture::good();
        f.tables(N2).accounts.get_mut(&acct("b")).unwrap().last_seq += 1;
        assert_eq!(f.kinds(), kinds(&["replay"]));
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
        assert_eq!(f.kinds(), kinds(&["conservation"]));
    }

    /// 5 USD out and 5 JPY in add up to nothing, but not per currency.
    #[test]
    fn conservation_is_per_currency() {
        let f = Fixture::good();
        open(&f.stores[N2], "j", jpy());
        f.append(N2, "j", EventKind::Deposited, 5, None);
        f.append(N1, "c", EventKind::Withdrawn, 5, None);
        let found = check(&f.stores, &f.history);
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found.iter().all(|a| a.kind == "conservation"));
    }

    // ---- atomicity ------------------------------------------------------------

    #[test]
    fn a_posting_of_an_aborted_transfer_is_an_atomicity_anomaly() {
        let f = Fixture::good();
        f.append(N1, "a", EventKind::TransferredOut, 10, Some(id(T3)));
        f.append(N2, "b", EventKind::TransferredIn, 10, Some(id(T3)));
        assert_eq!(f.kinds(), kinds(&["atomicity"]));
    }

    #[test]
    fn a_committed_transfer_without_postings_is_an_atomicity_anomaly() {
        let f = Fixture::good();
        f.record(
            RecordKind::Transfer,
            spec(60, "a", "b", 5),
            TransferState::Committed,
        );
        assert_eq!(f.kinds(), kinds(&["atomicity"]));
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
        assert_eq!(f.kinds(), kinds(&["atomicity"]));
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
        assert_eq!(f.kinds(), kinds(&["atomicity"]));
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
        assert_eq!(f.kinds(), kinds(&["atomicity"]));
    }

    // ---- exactly once -----------------------------------------------------------

    #[test]
    fn a_transfers_id_applied_as_a_deposit_too_is_applied_twice() {
        let f = Fixture::good();
        f.append(N1, "c", EventKind::Deposited, 7, Some(id(T1)));
        assert_eq!(f.kinds(), kinds(&["applied_twice"]));
    }

    #[test]
    fn a_committed_movement_never_applied_is_a_movement_record_anomaly() {
        let f = Fixture::good();
        f.claim_record(
            &movement(70, MovementKind::Deposit, "c", 5),
            TransferState::Committed,
        );
        assert_eq!(f.kinds(), kinds(&["movement_record"]));
    }

    #[test]
    fn an_aborted_movement_applied_is_a_movement_record_anomaly() {
        let f = Fixture::good();
        f.claim_record(
            &movement(71, MovementKind::Deposit, "c", 5),
            TransferState::Aborted,
        );
        f.append(N1, "c", EventKind::Deposited, 5, Some(id(71)));
        assert_eq!(f.kinds(), kinds(&["movement_record"]));
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
        assert_eq!(f.kinds(), kinds(&["atomicity", "movement_record"]));
    }

    #[test]
    fn an_acknowledged_transfer_without_its_record_is_a_lost_commit() {
        let mut f = Fixture::good();
        f.history
            .push(op(Request::Transfer(spec(80, "a", "b", 5)), Outcome::Ok));
        assert_eq!(f.kinds(), kinds(&["lost_commit"]));
    }

    #[test]
    fn an_acknowledged_transfer_whose_record_aborted_is_a_lost_commit() {
        let mut f = Fixture::good();
        let t3 = f.history[4].request.clone();
        f.history[4].outcome = Outcome::Ok;
        assert_eq!(t3.id(), id(T3));
        assert_eq!(f.kinds(), kinds(&["lost_commit"]));
    }

    #[test]
    fn an_acknowledged_movement_never_applied_is_a_lost_commit() {
        let mut f = Fixture::good();
        let m = movement(81, MovementKind::Deposit, "a", 5);
        f.claim_record(&m, TransferState::Committed);
        f.history.push(op(Request::Movement(m), Outcome::Ok));
        assert_eq!(f.kinds(), kinds(&["lost_commit", "movement_record"]));
    }

    #[test]
    fn the_same_body_refused_as_reused_is_a_false_reuse() {
        let mut f = Fixture::good();
        f.history[4].outcome = fail("idempotency_key_reused");
        assert_eq!(f.kinds(), kinds(&["false_reuse"]));
    }

    #[test]
    fn a_refused_transfer_that_committed_is_a_changed_outcome() {
        let mut f = Fixture::good();
        let t2 = f.history[3].request.clone();
        f.history[3].outcome = fail("insufficient_funds");
        assert_eq!(t2.id(), id(T2));
        assert_eq!(f.kinds(), kinds(&["changed_outcome"]));
    }

    #[test]
    fn a_refused_movement_that_was_applied_is_a_changed_outcome() {
        let mut f = Fixture::good();
        let m = movement(82, MovementKind::Deposit, "c", 5);
        f.append(N1, "c", EventKind::Deposited, 5, Some(id(82)));
        f.history
            .push(op(Request::Movement(m), fail("insufficient_funds")));
        assert_eq!(f.kinds(), kinds(&["changed_outcome"]));
    }

    #[test]
    fn two_answers_for_one_id_are_a_changed_outcome() {
        let mut f = Fixture::good();
        let mut again = f.history[4].clone();
        again.outcome = fail("transfer_aborted");
        again.retry = true;
        f.history.push(again);
        assert_eq!(f.kinds(), kinds(&["changed_outcome"]));
    }

    #[test]
    fn a_reused_id_acknowledged_is_reuse_accepted() {
        let mut f = Fixture::good();
        let reuse = f.history.iter_mut().find(|o| o.reuse).unwrap();
        reuse.outcome = Outcome::Ok;
        assert_eq!(f.kinds(), kinds(&["reuse_accepted"]));
    }

    #[test]
    fn two_bodies_acknowledged_for_one_id_are_reuse_accepted() {
        let mut f = Fixture::good();
        f.history.push(op(
            Request::Movement(movement(D1, MovementKind::Deposit, "a", 99)),
            Outcome::Ok,
        ));
        // And the second was not applied as asked (99): 100 was.
        assert_eq!(
            f.kinds(),
            kinds(&["lost_commit", "not_as_asked", "reuse_accepted"])
        );
    }

    // ---- what the client asked ------------------------------------------------

    /// An acknowledged deposit or withdrawal whose record says what was
    /// asked, applied otherwise on its account's node (the shape of `body`).
    fn movement_applied_as(f: &mut Fixture, asked: Movement, applied: (&str, EventKind, i64)) {
        f.claim_record(&asked, TransferState::Committed);
        let (account, kind, amount) = applied;
        f.append(N1, account, kind, amount, Some(asked.transaction_id));
        f.history.push(op(Request::Movement(asked), Outcome::Ok));
    }

    #[test]
    fn a_deposit_applied_to_another_account_is_not_as_asked() {
        let mut f = Fixture::good();
        let asked = movement(100, MovementKind::Deposit, "a", 50);
        movement_applied_as(&mut f, asked, ("c", EventKind::Deposited, 50));
        assert_eq!(f.kinds(), kinds(&["movement_record", "not_as_asked"]));
    }

    #[test]
    fn a_deposit_applied_with_another_amount_is_not_as_asked() {
        let mut f = Fixture::good();
        let asked = movement(101, MovementKind::Deposit, "a", 50);
        movement_applied_as(&mut f, asked, ("a", EventKind::Deposited, 49));
        assert_eq!(f.kinds(), kinds(&["movement_record", "not_as_asked"]));
    }

    #[test]
    fn a_withdrawal_applied_as_a_deposit_is_not_as_asked() {
        let mut f = Fixture::good();
        let asked = movement(102, MovementKind::Withdrawal, "a", 5);
        movement_applied_as(&mut f, asked, ("a", EventKind::Deposited, 5));
        assert_eq!(f.kinds(), kinds(&["movement_record", "not_as_asked"]));
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
        f.history.push(op(Request::Movement(asked), Outcome::Ok));
        assert_eq!(f.kinds(), kinds(&["lost_commit", "not_as_asked"]));
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
            .push(op(Request::Transfer(spec(104, "a", "b", 6)), Outcome::Ok));
        assert_eq!(f.kinds(), kinds(&["lost_commit", "not_as_asked"]));
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
        f.history.push(op(Request::Transfer(asked), Outcome::Ok));
        assert_eq!(f.kinds(), kinds(&["atomicity", "not_as_asked"]));
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
        f.history.push(op(Request::Transfer(asked), Outcome::Ok));
        assert_eq!(f.kinds(), kinds(&["atomicity", "not_as_asked"]));
    }

    // ---- liveness ---------------------------------------------------------------

    #[test]
    fn unsettled_names_what_is_left_open() {
        let f = Fixture::good();
        assert!(unsettled(&f.stores).is_empty());
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
        tx(
            &f.stores[N2],
            legs::keys(std::slice::from_ref(&leg[1])),
            |w| legs::prepare(w, &leg[1]),
        );
        f.append(N1, "a", EventKind::DebitHeld, 1, Some(id(92)));
        let open = unsettled(&f.stores);
        assert_eq!(open.len(), 5, "{open:#?}");
        for (what, line) in [
            (id(90).to_string(), "Preparing"),
            (id(T1).to_string(), "completed=false"),
            (id(91).to_string(), "credit leg"),
            ("a holds 1".to_string(), ""),
            ("b holds 0 and expects 1".to_string(), ""),
        ] {
            assert!(
                open.iter().any(|l| l.contains(&what) && l.contains(line)),
                "{what} {line}: {open:#?}"
            );
        }
        assert!(!settled(&f.stores));
    }
}
