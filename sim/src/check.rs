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

use std::collections::BTreeMap;

use serde::Serialize;
use wallet_shared::protocol::{
    replay, EventKind, FeedKind, LegState, RecordKind, TransferRecord, TransferState,
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

#[derive(Default)]
struct Applied {
    debits: Vec<(String, i64)>,
    credits: Vec<(String, i64)>,
    movements: usize,
}

pub fn check(stores: &BTreeMap<String, MemStore>, history: &[Op]) -> Vec<Anomaly> {
    let mut out = Vec::new();
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    let mut brought: BTreeMap<String, i64> = BTreeMap::new();
    let mut applied: BTreeMap<TransactionId, Applied> = BTreeMap::new();
    let mut records = BTreeMap::new();
    for (node, store) in stores {
        let t = store.tables.lock().unwrap();
        for why in &t.corrupt {
            out.push(Anomaly::new("invariant", format!("{node}: {why}")));
        }
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
                match e.kind {
                    EventKind::Deposited => {
                        *brought.entry(currency.clone()).or_default() += e.amount;
                        entry.movements += 1;
                    }
                    EventKind::Withdrawn => {
                        *brought.entry(currency.clone()).or_default() -= e.amount;
                        entry.movements += 1;
                    }
                    EventKind::DebitPosted | EventKind::TransferredOut => {
                        entry.debits.push((who, e.amount))
                    }
                    EventKind::CreditPosted | EventKind::TransferredIn => {
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
            });
        if !committed || !pair_ok {
            out.push(Anomaly::new(
                "atomicity",
                format!(
                    "{id}: debits {:?}, credits {:?}, record {:?}",
                    a.debits,
                    a.credits,
                    record.map(|r| r.state)
                ),
            ));
        }
    }
    // Every record against what its id applied: a transfer's id moves no
    // money through a deposit or withdrawal; a deposit's or withdrawal's
    // record says whether it was applied, once, and nothing else was.
    for (id, r) in &records {
        let a = applied.get(id);
        let movements = a.map_or(0, |a| a.movements);
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
                    && posted.map_or(0, |a| a.movements) != 1
                {
                    out.push(Anomaly::new(
                        "lost_commit",
                        format!(
                            "movement {id} was acknowledged but applied {} times",
                            posted.map_or(0, |a| a.movements)
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
                if record.is_none() && posted.is_some_and(|a| a.movements != 0) {
                    out.push(Anomaly::new(
                        "changed_outcome",
                        format!("movement {id} was refused ({code}) but applied"),
                    ));
                }
            }
        }
        if let Request::Movement(_) = op.request {
            if posted.map_or(0, |a| a.movements) > 1 {
                out.push(Anomaly::new(
                    "applied_twice",
                    format!(
                        "movement {id} applied {} times",
                        posted.map_or(0, |a| a.movements)
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
