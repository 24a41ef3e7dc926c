//! What the cluster ended up holding, node by node: balance rows, event
//! logs and decision records, as they are stored. The chaos suite reads them
//! from every participant's Postgres (`participant::rows`), the simulation
//! from its in-memory stores; both merge them here with [`State::add_node`],
//! which keeps a row that a second node holds too (an old owner's copy
//! after a move) aside as a duplicate instead of letting it hide the first.
//!
//! [`State::anomalies`] is everything that can be checked on it at rest,
//! with no history: balances are the fold of their gapless, time-ordered
//! events; nothing is negative, held, pending, prepared or undecided; every
//! transaction id is either not applied or applied once as its record says;
//! money is conserved per currency.

use std::collections::BTreeMap;

use uuid::Uuid;
use wallet_shared::protocol::EventKind;

use crate::anomaly::{Anomaly, AnomalyKind};

/// An account's balance row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// ISO code.
    pub currency: String,
    /// Money that is the account's, in minor units.
    pub posted: i64,
    /// Part of `posted` held by prepared debits.
    pub held: i64,
    /// Prepared credits, not yet the account's.
    pub pending_credit: i64,
    /// Sequence number of its last event.
    pub last_seq: i64,
}

/// One event of an account's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Whose log.
    pub account: String,
    /// Per-account sequence number, from 1.
    pub seq: i64,
    /// What happened.
    pub kind: EventKind,
    /// Minor units.
    pub amount: i64,
    /// The transfer, deposit or withdrawal it belongs to.
    pub transaction_id: Option<Uuid>,
    /// The other account of a transfer.
    pub counterparty: Option<String>,
    /// When it was written; never earlier than the account's event before.
    pub at: chrono::DateTime<chrono::Utc>,
}

/// A decision record (the `transfers` table of the transfer's decision node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTransfer {
    /// `transfer`, `deposit` or `withdrawal` (whose record names its
    /// account as both `from` and `to`).
    pub kind: String,
    /// Account debited.
    pub from: String,
    /// Account credited.
    pub to: String,
    /// Minor units.
    pub amount: i64,
    /// ISO code.
    pub currency: String,
    /// `preparing`, `committed` or `aborted`.
    pub state: String,
    /// Whether both legs have applied the decision.
    pub completed: bool,
}

/// What one node holds.
#[derive(Debug, Default, Clone)]
pub struct NodeRows {
    /// Balance rows, with their account ids.
    pub accounts: Vec<(String, Stored)>,
    /// Every event, in any order.
    pub events: Vec<AuditEvent>,
    /// Decision records, with their transaction ids.
    pub transfers: Vec<(Uuid, StoredTransfer)>,
    /// Legs still prepared.
    pub prepared_legs: i64,
}

/// What every node holds, merged.
#[derive(Debug, Default, Clone)]
pub struct State {
    /// Balance rows, by account id (the first node's, where two hold one).
    pub accounts: BTreeMap<String, Stored>,
    /// Every event, ordered by account, then sequence number.
    pub events: Vec<AuditEvent>,
    /// Decision records, by transaction id (the first node's, likewise).
    pub transfers: BTreeMap<Uuid, StoredTransfer>,
    /// Legs still `prepared`, over every node.
    pub prepared_legs: i64,
    /// Balance rows and decision records found on more than one node (an
    /// old owner's copy after a move, say): each one, once.
    pub duplicates: Vec<String>,
    /// Decision records finished before this instant may have been pruned
    /// (the participants' record retention, `participant::retention`): a
    /// transaction whose every event is older is not faulted for a missing
    /// record (a record completes after its legs posted their money).
    pub pruned_before: Option<chrono::DateTime<chrono::Utc>>,
}

/// How many times one transaction id moved money, by event kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// `debit_posted` and `transferred_out` events.
    pub out: usize,
    /// `credit_posted` and `transferred_in` events.
    pub into: usize,
    /// `deposited` events.
    pub deposited: usize,
    /// `withdrawn` events.
    pub withdrawn: usize,
}

impl State {
    /// Adds what `node` holds. Rows are keyed by id, so a second copy of one
    /// (on another node) is kept aside as a duplicate instead of hiding the
    /// first.
    pub fn add_node(&mut self, node: impl std::fmt::Display, rows: NodeRows) {
        let node = node.to_string();
        keep_first(
            &mut self.accounts,
            rows.accounts,
            "account",
            &node,
            &mut self.duplicates,
        );
        keep_first(
            &mut self.transfers,
            rows.transfers,
            "record",
            &node,
            &mut self.duplicates,
        );
        self.events.extend(rows.events);
        self.events
            .sort_by(|a, b| (&a.account, a.seq).cmp(&(&b.account, b.seq)));
        self.prepared_legs += rows.prepared_legs;
    }

    /// Whether some transfer is still on its way: funds held or pending, a
    /// leg prepared, a record undecided or not completed.
    pub fn in_flight(&self) -> bool {
        self.prepared_legs > 0
            || self
                .accounts
                .values()
                .any(|s| s.held != 0 || s.pending_credit != 0)
            || self
                .transfers
                .values()
                .any(|t| t.state == "preparing" || !t.completed)
    }

    /// Everything wrong with the state at rest (see the module docs);
    /// empty when all is well.
    pub fn anomalies(&self) -> Vec<Anomaly> {
        let mut found = Vec::new();
        self.check_replay(&mut found);
        self.check_transactions(&mut found);
        self.check_conservation(&mut found);
        for d in &self.duplicates {
            found.push(Anomaly::new(AnomalyKind::DuplicateRow, d.clone()));
        }
        if self.prepared_legs != 0 {
            found.push(Anomaly::new(
                AnomalyKind::PreparedLeg,
                format!("{} legs still prepared", self.prepared_legs),
            ));
        }
        for (id, t) in &self.transfers {
            if t.state == "preparing" {
                found.push(Anomaly::new(
                    AnomalyKind::UndecidedTransfer,
                    format!("{} {id} is still undecided", t.kind),
                ));
            } else if !t.completed {
                found.push(Anomaly::new(
                    AnomalyKind::UncompletedTransfer,
                    format!("{} {id} ({}) is not completed", t.kind, t.state),
                ));
            }
        }
        found
    }

    /// Every balance is the fold of its gapless, time-ordered events;
    /// nothing negative, held or pending.
    fn check_replay(&self, found: &mut Vec<Anomaly>) {
        let mut folded: BTreeMap<&str, (i64, i64, i64, i64)> = BTreeMap::new();
        let mut previous: BTreeMap<&str, &AuditEvent> = BTreeMap::new();
        for e in &self.events {
            let f = folded.entry(&e.account).or_default();
            if e.seq != f.3 + 1 {
                found.push(Anomaly::new(
                    AnomalyKind::SeqGap,
                    format!("events of {} jump from seq {} to {}", e.account, f.3, e.seq),
                ));
            }
            // An account's events are in time order: `as_of` relies on it.
            if let Some(before) = previous.get(e.account.as_str()).filter(|p| p.at > e.at) {
                found.push(Anomaly::new(
                    AnomalyKind::EventTimeWentBack,
                    format!(
                        "event {} of {} is stamped {}, before event {} ({})",
                        e.seq, e.account, e.at, before.seq, before.at
                    ),
                ));
            }
            previous.insert(&e.account, e);
            let (dp, dh, dc) = e.kind.effect(e.amount);
            *f = (f.0 + dp, f.1 + dh, f.2 + dc, e.seq);
        }
        for (id, s) in &self.accounts {
            let (p, h, c, last) = folded.get(id.as_str()).copied().unwrap_or_default();
            if (s.posted, s.held, s.pending_credit) != (p, h, c) {
                found.push(Anomaly::new(
                    AnomalyKind::ReplayMismatch,
                    format!(
                        "account {id}: stored (posted, held, pending) {:?}, events fold to {:?}",
                        (s.posted, s.held, s.pending_credit),
                        (p, h, c)
                    ),
                ));
            }
            if s.last_seq != last {
                found.push(Anomaly::new(
                    AnomalyKind::SeqGap,
                    format!(
                        "account {id}: last_seq {} but its last event is {last}",
                        s.last_seq
                    ),
                ));
            }
            if s.posted < 0 || s.held < 0 || s.held > s.posted || s.pending_credit < 0 {
                found.push(Anomaly::new(
                    AnomalyKind::NegativeBalance,
                    format!(
                        "account {id}: posted {}, held {} (available {}), pending {}",
                        s.posted,
                        s.held,
                        s.posted - s.held,
                        s.pending_credit
                    ),
                ));
            }
            if s.held != 0 {
                found.push(Anomaly::new(
                    AnomalyKind::HeldLeft,
                    format!("account {id} still has {} held", s.held),
                ));
            }
            if s.pending_credit != 0 {
                found.push(Anomaly::new(
                    AnomalyKind::PendingCreditLeft,
                    format!(
                        "account {id} still has a pending credit of {}",
                        s.pending_credit
                    ),
                ));
            }
        }
        for id in folded.keys() {
            if !self.accounts.contains_key(*id) {
                found.push(Anomaly::new(
                    AnomalyKind::ReplayMismatch,
                    format!("events of {id}, which has no balance row"),
                ));
            }
        }
    }

    /// Per transaction id: a deposit or withdrawal at most once, alone, and
    /// as its record says (account, amount, currency); a transfer either
    /// nothing or exactly one debit and one matching credit, as its decision
    /// record says; every hold and pending credit settled once; a committed
    /// record moved money.
    fn check_transactions(&self, found: &mut Vec<Anomaly>) {
        let by_transaction = self.by_transaction();
        let currency = |a: &str| self.accounts.get(a).map(|s| s.currency.as_str());
        for (id, r) in &self.transfers {
            if r.state == "committed" && !by_transaction.contains_key(id) {
                found.push(Anomaly::new(
                    AnomalyKind::RecordMismatch,
                    format!("{} {id} is committed but moved no money", r.kind),
                ));
            }
        }
        for (id, events) in by_transaction {
            let count =
                |kinds: &[EventKind]| events.iter().filter(|e| kinds.contains(&e.kind)).count();
            let out: Vec<&&AuditEvent> = events
                .iter()
                .filter(|e| matches!(e.kind, EventKind::DebitPosted | EventKind::TransferredOut))
                .collect();
            let into: Vec<&&AuditEvent> = events
                .iter()
                .filter(|e| matches!(e.kind, EventKind::CreditPosted | EventKind::TransferredIn))
                .collect();
            let movements = count(&[EventKind::Deposited, EventKind::Withdrawn]);
            if movements > 1 || (movements == 1 && events.len() > 1) {
                found.push(Anomaly::new(
                    AnomalyKind::MovementMismatch,
                    format!(
                        "transaction {id}: {movements} deposits/withdrawals among {} events",
                        events.len()
                    ),
                ));
            }
            let held = count(&[EventKind::DebitHeld]);
            let unheld = count(&[EventKind::DebitPosted, EventKind::DebitReleased]);
            let pending = count(&[EventKind::CreditPending]);
            let unpending = count(&[EventKind::CreditPosted, EventKind::CreditVoided]);
            if held > 1 || pending > 1 || held != unheld || pending != unpending {
                found.push(Anomaly::new(
                    AnomalyKind::LegMismatch,
                    format!(
                        "transaction {id}: {held} holds settled {unheld} times, {pending} pending credits settled {unpending} times"
                    ),
                ));
            }
            let record = self.transfers.get(&id);
            let maybe_pruned = record.is_none()
                && self
                    .pruned_before
                    .is_some_and(|h| events.iter().all(|e| e.at < h));
            // A deposit's or withdrawal's id is claimed at its decision
            // partition: the record says it, once, for this account.
            let movement_events: Vec<&&AuditEvent> = events
                .iter()
                .filter(|e| matches!(e.kind, EventKind::Deposited | EventKind::Withdrawn))
                .collect();
            for m in &movement_events {
                let kind = if m.kind == EventKind::Deposited {
                    "deposit"
                } else {
                    "withdrawal"
                };
                let recorded = record.is_some_and(|r| {
                    r.kind == kind
                        && r.state == "committed"
                        && r.to == m.account
                        && r.amount == m.amount
                        && Some(r.currency.as_str()) == currency(&m.account)
                });
                if !recorded && !maybe_pruned {
                    found.push(Anomaly::new(
                        AnomalyKind::RecordMismatch,
                        format!(
                            "{kind} {id} of {} to {} applied, but its record is {record:?}",
                            m.amount, m.account
                        ),
                    ));
                }
            }
            match (out.as_slice(), into.as_slice()) {
                ([], []) => {
                    if movement_events.is_empty() && record.is_some_and(|r| r.state == "committed")
                    {
                        found.push(Anomaly::new(
                            AnomalyKind::RecordMismatch,
                            format!("{id} is committed but moved no money: {record:?}"),
                        ));
                    }
                }
                ([o], [i]) => {
                    let matching = o.amount == i.amount
                        && o.counterparty.as_deref() == Some(i.account.as_str())
                        && i.counterparty.as_deref() == Some(o.account.as_str())
                        && currency(&o.account) == currency(&i.account);
                    if !matching {
                        found.push(Anomaly::new(
                            AnomalyKind::LegMismatch,
                            format!("transfer {id}: debit {o:?} and credit {i:?} do not match"),
                        ));
                    }
                    match record {
                        None if maybe_pruned => {}
                        None => found.push(Anomaly::new(
                            AnomalyKind::RecordMismatch,
                            format!("transfer {id} moved money but has no decision record"),
                        )),
                        Some(r) => {
                            if r.state != "committed"
                                || r.kind != "transfer"
                                || r.from != o.account
                                || r.to != i.account
                                || r.amount != o.amount
                                || Some(r.currency.as_str()) != currency(&o.account)
                            {
                                found.push(Anomaly::new(
                                    AnomalyKind::RecordMismatch,
                                    format!("transfer {id}: record {r:?}, but debit {o:?} and credit {i:?}"),
                                ));
                            }
                        }
                    }
                }
                (out, into) => found.push(Anomaly::new(
                    AnomalyKind::LegMismatch,
                    format!(
                        "transfer {id} applied {} debits and {} credits: {events:?}",
                        out.len(),
                        into.len()
                    ),
                )),
            }
        }
    }

    /// Per currency, the balances add up to deposits minus withdrawals (of
    /// a transaction id: money that came in under none came from nowhere).
    fn check_conservation(&self, found: &mut Vec<Anomaly>) {
        let mut flows: BTreeMap<&str, i64> = BTreeMap::new();
        for e in self.events.iter().filter(|e| e.transaction_id.is_some()) {
            let Some(s) = self.accounts.get(&e.account) else {
                continue;
            };
            let sign = match e.kind {
                EventKind::Deposited => 1,
                EventKind::Withdrawn => -1,
                _ => continue,
            };
            *flows.entry(&s.currency).or_default() += sign * e.amount;
        }
        let mut currencies: Vec<&str> = self
            .accounts
            .values()
            .map(|s| s.currency.as_str())
            .collect();
        currencies.sort_unstable();
        currencies.dedup();
        for currency in currencies {
            let total = self.total(currency);
            let flow = flows.get(currency).copied().unwrap_or(0);
            if total != flow {
                found.push(Anomaly::new(
                    AnomalyKind::Conservation,
                    format!(
                        "{currency}: balances add up to {total}, deposits minus withdrawals to {flow}"
                    ),
                ));
            }
        }
    }

    /// The events of each transaction id.
    pub fn by_transaction(&self) -> BTreeMap<Uuid, Vec<&AuditEvent>> {
        let mut by: BTreeMap<Uuid, Vec<&AuditEvent>> = BTreeMap::new();
        for e in &self.events {
            if let Some(id) = e.transaction_id {
                by.entry(id).or_default().push(e);
            }
        }
        by
    }

    /// Sum of the posted balances in `currency`.
    pub fn total(&self, currency: &str) -> i64 {
        self.accounts
            .values()
            .filter(|s| s.currency == currency)
            .map(|s| s.posted)
            .sum()
    }

    /// Posted balance of `account` (0 if there is no such account).
    pub fn posted(&self, account: &str) -> i64 {
        self.accounts.get(account).map_or(0, |s| s.posted)
    }

    /// How many times the transaction moved money (one pass over every
    /// event: for a few ids; [`State::by_transaction`] and [`Applied::of`]
    /// for many).
    pub fn applied(&self, id: Uuid) -> Applied {
        Applied::of(self.events.iter().filter(|e| e.transaction_id == Some(id)))
    }
}

impl Applied {
    /// Counts the money-moving events among `events` (one transaction's).
    pub fn of<'a>(events: impl IntoIterator<Item = &'a AuditEvent>) -> Applied {
        let mut applied = Applied::default();
        for e in events {
            match e.kind {
                EventKind::DebitPosted | EventKind::TransferredOut => applied.out += 1,
                EventKind::CreditPosted | EventKind::TransferredIn => applied.into += 1,
                EventKind::Deposited => applied.deposited += 1,
                EventKind::Withdrawn => applied.withdrawn += 1,
                _ => {}
            }
        }
        applied
    }

    /// Applied as a whole transfer once: one debit and one credit.
    pub fn transferred_once(self) -> bool {
        (self.out, self.into) == (1, 1)
    }

    /// Moved no money at all.
    pub fn nothing(self) -> bool {
        self == Applied::default()
    }
}

/// Adds `rows` from `node` to `into`; a row whose id is there already (from
/// another node) is named in `duplicates` instead of replacing the first.
fn keep_first<K: Ord + std::fmt::Display, V>(
    into: &mut BTreeMap<K, V>,
    rows: Vec<(K, V)>,
    what: &str,
    node: &str,
    duplicates: &mut Vec<String>,
) {
    for (id, row) in rows {
        match into.entry(id) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(row);
            }
            std::collections::btree_map::Entry::Occupied(slot) => {
                duplicates.push(format!(
                    "{what} {} is stored on node {node} too",
                    slot.key()
                ));
            }
        }
    }
}
