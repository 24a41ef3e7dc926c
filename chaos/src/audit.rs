//! The audit: every participant's Postgres read directly (accounts, events,
//! decision records, prepared legs, `pg_prepared_xacts`), and what can be
//! checked on it at rest, with no history: balances are the fold of their
//! events, nothing is negative, held, pending or undecided, every transfer is
//! either not applied or applied once on both sides, and money is conserved
//! per currency.
//!
//! The end-to-end tests and the chaos checker both use it. The rows are
//! read by the participant's own reader ([`participant::rows`]); the checks
//! are here.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;
use wallet_shared::protocol::EventKind;

use super::checker::{Anomaly, AnomalyKind};

pub use participant::rows::{AuditEvent, Stored, StoredTransfer};

/// Longest a whole read of one database may take.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything read from every participant's database.
#[derive(Debug, Default)]
pub struct Audit {
    /// Balance rows, by account id.
    pub accounts: BTreeMap<String, Stored>,
    /// Every event, ordered by account, then sequence number.
    pub events: Vec<AuditEvent>,
    /// Decision records, by transaction id.
    pub transfers: BTreeMap<Uuid, StoredTransfer>,
    /// Rows in `pg_prepared_xacts`, over every database.
    pub prepared_xacts: i64,
    /// Legs still `prepared`, over every database.
    pub prepared_legs: i64,
    /// Balance rows and decision records found on more than one node (an
    /// old owner's copy after a move, say): each one, once.
    pub duplicates: Vec<String>,
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

impl Audit {
    /// Reads every database (one URL per participant).
    pub async fn read(urls: &[String]) -> Result<Audit> {
        let mut audit = Audit::default();
        for (node, url) in urls.iter().enumerate() {
            tokio::time::timeout(READ_TIMEOUT, audit.read_one(node, url))
                .await
                .with_context(|| format!("reading {url} took over {READ_TIMEOUT:?}"))?
                .with_context(|| format!("reading {url}"))?;
        }
        audit
            .events
            .sort_by(|a, b| (&a.account, a.seq).cmp(&(&b.account, b.seq)));
        Ok(audit)
    }

    /// Adds what database `node` holds. Rows are keyed by id, so a second
    /// copy of one (on another node) is kept aside as a duplicate instead of
    /// hiding the first.
    async fn read_one(&mut self, node: usize, url: &str) -> Result<()> {
        let mut conn = PgConnection::connect(url).await?;
        let contents = participant::rows::read(&mut conn).await?;
        keep_first(
            &mut self.accounts,
            contents.accounts,
            "account",
            node,
            &mut self.duplicates,
        );
        keep_first(
            &mut self.transfers,
            contents.transfers,
            "record",
            node,
            &mut self.duplicates,
        );
        self.events.extend(contents.events);
        self.prepared_xacts += contents.prepared_xacts;
        self.prepared_legs += contents.prepared_legs;
        conn.close().await?;
        Ok(())
    }

    /// Reads every database until nothing is in flight any more (no hold, no
    /// pending credit, no prepared leg, no undecided or uncompleted record),
    /// or `timeout` passes; returns the last reading and how long it took.
    pub async fn wait_settled(urls: &[String], timeout: Duration) -> Result<(Audit, Duration)> {
        let started = Instant::now();
        loop {
            let audit = Audit::read(urls).await?;
            if !audit.in_flight() || started.elapsed() >= timeout {
                return Ok((audit, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether some transfer is still on its way: funds held or pending, a
    /// leg prepared, a record undecided or not completed.
    pub fn in_flight(&self) -> bool {
        self.prepared_legs > 0
            || self
                .accounts
                .values()
                .any(|s| s.held > 0 || s.pending_credit > 0)
            || self
                .transfers
                .values()
                .any(|t| t.state == "preparing" || !t.completed)
    }

    /// Everything wrong with the databases at rest (see the module docs);
    /// empty when all is well.
    pub fn anomalies(&self) -> Vec<Anomaly> {
        let mut found = Vec::new();
        self.check_replay(&mut found);
        self.check_transactions(&mut found);
        self.check_conservation(&mut found);
        if self.prepared_xacts != 0 {
            found.push(Anomaly::new(
                AnomalyKind::PreparedXact,
                format!("{} rows in pg_prepared_xacts", self.prepared_xacts),
            ));
        }
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
                    format!("transfer {id} is still undecided"),
                ));
            } else if !t.completed {
                found.push(Anomaly::new(
                    AnomalyKind::UncompletedTransfer,
                    format!("transfer {id} ({}) is not completed", t.state),
                ));
            }
        }
        found
    }

    /// Panics with every anomaly, if there is any.
    pub fn assert_settled(&self) {
        let found = self.anomalies();
        assert!(
            found.is_empty(),
            "the audit found {} anomalies:\n{}",
            found.len(),
            found
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    /// Every balance is the fold of its gapless events; nothing negative,
    /// held or pending.
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
            if s.posted < 0 || s.held > s.posted {
                found.push(Anomaly::new(
                    AnomalyKind::NegativeBalance,
                    format!(
                        "account {id}: posted {}, held {} (available {})",
                        s.posted,
                        s.held,
                        s.posted - s.held
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

    /// Per transaction id: a deposit or withdrawal at most once; a transfer
    /// either nothing or exactly one debit and one matching credit, as its
    /// decision record says; every hold and pending credit settled once.
    fn check_transactions(&self, found: &mut Vec<Anomaly>) {
        let by_transaction = self.by_transaction();
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
                });
                if !recorded {
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
                    let currency = |a: &str| self.accounts.get(a).map(|s| s.currency.as_str());
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

    /// Per currency, the balances add up to deposits minus withdrawals.
    fn check_conservation(&self, found: &mut Vec<Anomaly>) {
        let mut flows: BTreeMap<&str, i64> = BTreeMap::new();
        for e in &self.events {
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
    /// event: for a few ids; [`Audit::by_transaction`] and [`Applied::of`]
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

/// Adds `rows` from database `node` to `into`; a row whose id is there
/// already (from another node) is named in `duplicates` instead of
/// replacing the first.
fn keep_first<K: Ord + std::fmt::Display, V>(
    into: &mut BTreeMap<K, V>,
    rows: Vec<(K, V)>,
    what: &str,
    node: usize,
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
