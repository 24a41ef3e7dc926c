//! The participant's tables as maps in memory, one transaction at a time:
//! the store of the deterministic simulation and of the rules' tests. A
//! transaction loads the rows its keys name into a `Working` set, runs the
//! rules, and writes back what changed, all or nothing, as Postgres would.
//! Every row written takes a change number, as Postgres's do, so a
//! partition's copy (`crate::moves`) reads and writes these tables by the
//! same rules ([`Tables::snapshot`], [`Tables::write_rows`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use wallet_shared::admin::{AccountsSummary, CopyState, Fence, RowsChunk};
use wallet_shared::protocol::{Event, FeedEntry, Snapshot};
use wallet_shared::{AccountId, PartitionId, TransactionId};

use crate::error::StoreError;
use crate::model::{AccountRow, Broken, Keys, LegKey, LegRow, TransferRow, Working};
use crate::store::{PartitionRead, PartitionTable};

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tables {
    pub transfers: BTreeMap<TransactionId, TransferRow>,
    pub legs: BTreeMap<LegKey, LegRow>,
    pub accounts: BTreeMap<AccountId, AccountRow>,
    pub events: BTreeMap<AccountId, Vec<Event>>,
    pub snapshots: BTreeMap<AccountId, Vec<Snapshot>>,
    /// The change feed, in commit order (one transaction at a time, so an
    /// entry's position is its place here, from 1).
    pub outbox: Vec<FeedEntry>,
    /// The partition fences saved here (`partition_fences`).
    pub fences: BTreeMap<PartitionId, Fence>,
    /// The last change number handed out (the sequence `row_changes`).
    pub last_change: i64,
    /// Every row's change numbers.
    pub change_nos: BTreeMap<RowKey, ChangeNo>,
    /// The copies of partitions moving here (`partition_copies`).
    pub copies: BTreeMap<PartitionId, CopyState>,
}

/// A row of the partitions' tables, by its primary key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RowKey {
    Account(AccountId),
    Event(AccountId, i64),
    Snapshot(AccountId, i64),
    Leg(LegKey),
    Transfer(TransactionId),
}

/// A row's change numbers, from the tables' one counter, as Postgres hands
/// them out from `row_changes` (migrations 0005 and 0008).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeNo {
    /// Taken when the row is inserted, and again at every update (`change_no`).
    pub change: i64,
    /// Taken when it is inserted (`created_no`).
    pub created: i64,
}

impl Tables {
    /// One local transaction at `now`: loads what `keys` names (and the
    /// accounts of the loaded legs), runs `rules`, and writes back what
    /// changed. On an error nothing is written. Also answers whether
    /// anything was written.
    pub fn transaction<T>(
        &mut self,
        now: DateTime<Utc>,
        snapshot_every: i64,
        keys: &Keys,
        rules: impl FnOnce(&mut Working) -> Result<T, Broken>,
    ) -> Result<(T, bool), Broken> {
        let mut w = Working::new(now, keys.clone());
        w.snapshot_every = snapshot_every;
        for id in &keys.transfers {
            if let Some(row) = self.transfers.get(id) {
                w.load_transfer(row.clone());
            }
        }
        let mut accounts: Vec<AccountId> = keys.accounts.iter().cloned().collect();
        for key in &keys.legs {
            if let Some(row) = self.legs.get(key) {
                accounts.push(row.account_id.clone());
                w.load_leg(row.clone());
            }
        }
        for id in accounts {
            if let Some(row) = self.accounts.get(&id) {
                w.load_account(row.clone());
            }
            if let Some(last) = self.events.get(&id).and_then(|log| log.last()) {
                w.load_last_event_at(id.clone(), last.at);
            }
            w.note_account_key(id);
        }
        let out = rules(&mut w)?;
        let c = w.into_changes();
        let wrote = !c.is_empty();
        let feed = c.feed_entries()?;
        // Check before writing anything: all or nothing.
        let mut next_seq: BTreeMap<&AccountId, i64> = BTreeMap::new();
        for e in &c.events {
            let next = next_seq
                .entry(&e.account_id)
                .or_insert_with(|| self.events.get(&e.account_id).map_or(0, Vec::len) as i64 + 1);
            if e.seq != *next {
                return Err(Broken::new(format!(
                    "event {} of {} is not next in its log",
                    e.seq, e.account_id
                )));
            }
            *next += 1;
        }
        for row in c.new_transfers.into_iter().chain(c.changed_transfers) {
            self.number(RowKey::Transfer(row.id()));
            self.transfers.insert(row.id(), row);
        }
        for row in c.new_legs.into_iter().chain(c.changed_legs) {
            self.number(RowKey::Leg(row.key()));
            self.legs.insert(row.key(), row);
        }
        for row in c.new_accounts.into_iter().chain(c.changed_accounts) {
            self.number(RowKey::Account(row.account_id.clone()));
            self.accounts.insert(row.account_id.clone(), row);
        }
        for e in c.events {
            self.number(RowKey::Event(e.account_id.clone(), e.seq));
            self.events.entry(e.account_id.clone()).or_default().push(e);
        }
        for s in c.snapshots {
            self.number(RowKey::Snapshot(s.account_id.clone(), s.seq));
            self.snapshots
                .entry(s.account_id.clone())
                .or_default()
                .push(s);
        }
        for mut entry in feed {
            entry.position = self.outbox.len() as i64 + 1;
            self.outbox.push(entry);
        }
        Ok((out, wrote))
    }
}

impl Tables {
    /// The next change number, for the row `key` (inserted or updated).
    fn number(&mut self, key: RowKey) {
        self.last_change += 1;
        let n = self.last_change;
        self.change_nos
            .entry(key)
            .and_modify(|c| c.change = n)
            .or_insert(ChangeNo {
                change: n,
                created: n,
            });
    }

    /// Partition `p`'s rows with their change numbers as they stand now:
    /// its accounts with their events and snapshots, the legs on its
    /// accounts and the decision records it holds. Not the change feed:
    /// what a node has published stays in its feed.
    pub fn snapshot(&self, p: PartitionId) -> Result<PartitionSnapshot, StoreError> {
        let mut rows: Vec<(PartitionTable, RowKey, CopiedRow)> = Vec::new();
        for a in self.accounts.values().filter(|a| a.partition == p) {
            let id = &a.account_id;
            rows.push((
                PartitionTable::Accounts,
                RowKey::Account(id.clone()),
                CopiedRow::Account(a.clone()),
            ));
            for e in self.events.get(id).into_iter().flatten() {
                let key = RowKey::Event(id.clone(), e.seq);
                rows.push((PartitionTable::Events, key, CopiedRow::Event(e.clone())));
            }
            for s in self.snapshots.get(id).into_iter().flatten() {
                let key = RowKey::Snapshot(id.clone(), s.seq);
                rows.push((
                    PartitionTable::Snapshots,
                    key,
                    CopiedRow::Snapshot(s.clone()),
                ));
            }
        }
        for l in self.legs.values().filter(|l| l.partition == p) {
            let key = RowKey::Leg(l.key());
            rows.push((PartitionTable::Legs, key, CopiedRow::Leg(l.clone())));
        }
        for t in self.transfers.values().filter(|t| t.partition == p) {
            let key = RowKey::Transfer(t.id());
            rows.push((
                PartitionTable::Transfers,
                key,
                CopiedRow::Transfer(t.clone()),
            ));
        }
        let mut snapshot = PartitionSnapshot {
            last_change: self.last_change,
            rows: BTreeMap::new(),
        };
        for (table, key, row) in rows {
            let Some(n) = self.change_nos.get(&key) else {
                return Err(StoreError::corrupt(format!("{key:?} has no change number")));
            };
            snapshot.rows.entry(table).or_default().push((*n, row));
        }
        for rows in snapshot.rows.values_mut() {
            rows.sort_by_key(|(n, _)| n.change);
        }
        Ok(snapshot)
    }

    /// Whether any account, leg or decision record of `p` is here.
    pub fn holds_rows(&self, p: PartitionId) -> bool {
        self.accounts.values().any(|a| a.partition == p)
            || self.legs.values().any(|l| l.partition == p)
            || self.transfers.values().any(|t| t.partition == p)
    }

    /// Writes rows a copy brought ([`CopiedRows::parse`]), each inserted or
    /// written over by its key with a new change number; all or nothing:
    /// an event needs its account here (Postgres's foreign key). Answers
    /// how many rows it wrote.
    pub fn write_rows(&mut self, rows: CopiedRows) -> Result<i64, StoreError> {
        for row in &rows.0 {
            if let CopiedRow::Event(e) = row {
                if !self.accounts.contains_key(&e.account_id) {
                    return Err(StoreError::corrupt(format!(
                        "event {} of {}: no such account here",
                        e.seq, e.account_id
                    )));
                }
            }
        }
        let mut written = 0;
        for row in rows.0 {
            match row {
                CopiedRow::Account(a) => {
                    self.number(RowKey::Account(a.account_id.clone()));
                    self.accounts.insert(a.account_id.clone(), a);
                }
                CopiedRow::Event(e) => {
                    self.number(RowKey::Event(e.account_id.clone(), e.seq));
                    let log = self.events.entry(e.account_id.clone()).or_default();
                    put_by_seq(log, e, |e| e.seq);
                }
                CopiedRow::Snapshot(s) => {
                    self.number(RowKey::Snapshot(s.account_id.clone(), s.seq));
                    let all = self.snapshots.entry(s.account_id.clone()).or_default();
                    put_by_seq(all, s, |s| s.seq);
                }
                CopiedRow::Leg(l) => {
                    self.number(RowKey::Leg(l.key()));
                    self.legs.insert(l.key(), l);
                }
                CopiedRow::Transfer(t) => {
                    self.number(RowKey::Transfer(t.id()));
                    self.transfers.insert(t.id(), t);
                }
            }
            written += 1;
        }
        Ok(written)
    }

    /// Drops partition `p`'s rows (a copy discarded, or the old owner's
    /// after the switch), and the state of a copy of it. Returns how many
    /// rows went.
    pub fn drop_partition(&mut self, p: PartitionId) -> usize {
        let gone: Vec<AccountId> = self
            .accounts
            .values()
            .filter(|a| a.partition == p)
            .map(|a| a.account_id.clone())
            .collect();
        let before = self.row_count();
        self.transfers.retain(|_, r| r.partition != p);
        self.legs.retain(|_, r| r.partition != p);
        for id in &gone {
            self.accounts.remove(id);
            self.events.remove(id);
            self.snapshots.remove(id);
        }
        let (accounts, legs, transfers) = (&self.accounts, &self.legs, &self.transfers);
        self.change_nos.retain(|key, _| match key {
            RowKey::Account(id) | RowKey::Event(id, _) | RowKey::Snapshot(id, _) => {
                accounts.contains_key(id)
            }
            RowKey::Leg(key) => legs.contains_key(key),
            RowKey::Transfer(id) => transfers.contains_key(id),
        });
        self.copies.remove(&p);
        before - self.row_count()
    }

    fn row_count(&self) -> usize {
        self.transfers.len()
            + self.legs.len()
            + self.accounts.len()
            + self.events.values().map(Vec::len).sum::<usize>()
            + self.snapshots.values().map(Vec::len).sum::<usize>()
    }
}

/// Puts `row` in `rows` (ordered by sequence number) in its place, over
/// the one with its sequence number if there is one.
fn put_by_seq<T>(rows: &mut Vec<T>, row: T, seq: impl Fn(&T) -> i64) {
    match rows.binary_search_by_key(&seq(&row), &seq) {
        Ok(i) => rows[i] = row,
        Err(i) => rows.insert(i, row),
    }
}

/// A row of a partition as a copy carries it between two in-memory stores:
/// the store's own types, as JSON.
#[derive(Debug, Clone)]
enum CopiedRow {
    Account(AccountRow),
    Event(Event),
    Snapshot(Snapshot),
    Leg(LegRow),
    Transfer(TransferRow),
}

impl CopiedRow {
    fn to_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            CopiedRow::Account(r) => serde_json::to_value(r),
            CopiedRow::Event(r) => serde_json::to_value(r),
            CopiedRow::Snapshot(r) => serde_json::to_value(r),
            CopiedRow::Leg(r) => serde_json::to_value(r),
            CopiedRow::Transfer(r) => serde_json::to_value(r),
        }
    }
}

/// A chunk's rows of one table, read back ([`Tables::write_rows`]).
#[derive(Debug, Clone, Default)]
pub struct CopiedRows(Vec<CopiedRow>);

impl CopiedRows {
    /// The rows of `table` in a chunk's JSON array.
    pub fn parse(table: PartitionTable, rows: &str) -> Result<Self, StoreError> {
        fn all<T: DeserializeOwned>(
            rows: &str,
            row: fn(T) -> CopiedRow,
        ) -> Result<Vec<CopiedRow>, StoreError> {
            let rows: Vec<T> = serde_json::from_str(rows).map_err(StoreError::corrupt)?;
            Ok(rows.into_iter().map(row).collect())
        }
        Ok(CopiedRows(match table {
            PartitionTable::Accounts => all(rows, CopiedRow::Account)?,
            PartitionTable::Events => all(rows, CopiedRow::Event)?,
            PartitionTable::Snapshots => all(rows, CopiedRow::Snapshot)?,
            PartitionTable::Legs => all(rows, CopiedRow::Leg)?,
            PartitionTable::Transfers => all(rows, CopiedRow::Transfer)?,
        }))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds `more` after these.
    pub fn append(&mut self, more: CopiedRows) {
        self.0.extend(more.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One partition's rows as they stood at an instant, with their change
/// numbers ([`Tables::snapshot`]): what a move reads of an in-memory store
/// ([`PartitionRead`]), a snapshot whatever the read.
#[derive(Debug, Clone)]
pub struct PartitionSnapshot {
    last_change: i64,
    /// By table, its rows of the partition, oldest change first.
    rows: BTreeMap<PartitionTable, Vec<(ChangeNo, CopiedRow)>>,
}

impl PartitionSnapshot {
    fn of(&self, table: PartitionTable) -> impl Iterator<Item = &(ChangeNo, CopiedRow)> {
        self.rows.get(&table).into_iter().flatten()
    }

    /// `table`'s rows changed after `after`, and at most up to `upto`.
    fn changed(
        &self,
        table: PartitionTable,
        after: i64,
        upto: Option<i64>,
    ) -> impl Iterator<Item = &(ChangeNo, CopiedRow)> {
        self.of(table)
            .filter(move |(n, _)| n.change > after && upto.is_none_or(|u| n.change <= u))
    }

    fn counts(&self, row: impl Fn(PartitionTable, &ChangeNo) -> bool) -> BTreeMap<String, i64> {
        PartitionTable::COUNTED
            .into_iter()
            .map(|t| {
                let n = self.of(t).filter(|(n, _)| row(t, n)).count() as i64;
                (t.as_str().to_string(), n)
            })
            .collect()
    }
}

impl PartitionRead for PartitionSnapshot {
    async fn last_change(&mut self) -> Result<i64, StoreError> {
        Ok(self.last_change)
    }

    async fn count_changed(
        &mut self,
        table: PartitionTable,
        after: i64,
        upto: Option<i64>,
    ) -> Result<i64, StoreError> {
        Ok(self.changed(table, after, upto).count() as i64)
    }

    async fn count_whole(&mut self) -> Result<BTreeMap<String, i64>, StoreError> {
        Ok(self.counts(|_, _| true))
    }

    async fn count_inserted(&mut self, after: i64) -> Result<BTreeMap<String, i64>, StoreError> {
        Ok(self.counts(|table, n| {
            n.change > after && (table == PartitionTable::Events || n.created > after)
        }))
    }

    async fn sum_accounts(&mut self) -> Result<AccountsSummary, StoreError> {
        let mut summary = AccountsSummary::default();
        for (_, row) in self.of(PartitionTable::Accounts) {
            if let CopiedRow::Account(a) = row {
                summary.add(a.currency.code(), 1, a.last_seq, a.posted);
            }
        }
        Ok(summary)
    }

    /// The rows as JSON of the store's own row types.
    async fn chunk(
        &mut self,
        table: PartitionTable,
        after: i64,
        upto: Option<i64>,
        limit: i64,
    ) -> Result<RowsChunk, StoreError> {
        let rows: Vec<&(ChangeNo, CopiedRow)> = self
            .changed(table, after, upto)
            .take(limit.max(0) as usize)
            .collect();
        let json = rows
            .iter()
            .map(|(_, row)| row.to_json())
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::corrupt)?;
        Ok(RowsChunk {
            table: table.as_str().to_string(),
            after,
            last: rows.last().map_or(after, |(n, _)| n.change),
            count: rows.len() as i64,
            rows: serde_json::Value::Array(json),
        })
    }

    async fn finish(self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl Tables {
    /// Every balance row, event and decision record, and the number of legs
    /// still prepared, as the checkers see a node (what [`crate::rows::read`]
    /// reads from Postgres).
    pub fn rows(&self) -> wallet_history::NodeRows {
        use wallet_history::{AuditEvent, Stored, StoredTransfer};
        wallet_history::NodeRows {
            accounts: self
                .accounts
                .values()
                .map(|a| {
                    let stored = Stored {
                        currency: a.currency.code().to_string(),
                        posted: a.posted,
                        held: a.held,
                        pending_credit: a.pending_credit,
                        last_seq: a.last_seq,
                    };
                    (a.account_id.as_str().to_string(), stored)
                })
                .collect(),
            events: self
                .events
                .values()
                .flatten()
                .map(|e| AuditEvent {
                    account: e.account_id.as_str().to_string(),
                    seq: e.seq,
                    kind: e.kind,
                    amount: e.amount,
                    transaction_id: e.transaction_id.map(|id| id.0),
                    counterparty: e.counterparty.as_ref().map(|c| c.as_str().to_string()),
                    at: e.at,
                })
                .collect(),
            transfers: self
                .transfers
                .values()
                .map(|r| {
                    let spec = &r.record.spec;
                    let stored = StoredTransfer {
                        kind: r.record.kind.as_str().to_string(),
                        from: spec.from.as_str().to_string(),
                        to: spec.to.as_str().to_string(),
                        amount: spec.amount.minor(),
                        currency: spec.currency.code().to_string(),
                        state: crate::pg::transfer_state(r.record.state).to_string(),
                        completed: r.record.completed,
                    };
                    (r.id().0, stored)
                })
                .collect(),
            prepared_legs: self
                .legs
                .values()
                .filter(|l| l.state == wallet_shared::protocol::LegState::Prepared)
                .count() as i64,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use futures::executor::block_on;
    use wallet_shared::protocol::EventKind;
    use wallet_shared::Currency;

    use super::*;

    fn account(name: &str, p: PartitionId, posted: i64, last_seq: i64) -> AccountRow {
        AccountRow {
            account_id: AccountId::parse(name).unwrap(),
            partition: p,
            currency: Currency::parse("USD").unwrap(),
            posted,
            held: 0,
            pending_credit: 0,
            last_seq,
            created_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            owner: None,
        }
    }

    fn deposit(name: &str, seq: i64, amount: i64) -> Event {
        Event {
            account_id: AccountId::parse(name).unwrap(),
            seq,
            kind: EventKind::Deposited,
            amount,
            transaction_id: None,
            counterparty: None,
            at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        }
    }

    fn write<T: serde::Serialize>(t: &mut Tables, table: PartitionTable, rows: &[T]) {
        let json = serde_json::to_string(rows).unwrap();
        t.write_rows(CopiedRows::parse(table, &json).unwrap())
            .unwrap();
    }

    /// Account `a` (partition 0) with three deposits, `b` (partition 1)
    /// with one.
    fn source() -> Tables {
        let mut t = Tables::default();
        let accounts = [account("a", 0, 60, 3), account("b", 1, 5, 1)];
        write(&mut t, PartitionTable::Accounts, &accounts);
        let events = [
            deposit("a", 1, 10),
            deposit("b", 1, 5),
            deposit("a", 2, 20),
            deposit("a", 3, 30),
        ];
        write(&mut t, PartitionTable::Events, &events);
        t
    }

    /// Copies `table` of partition 0 from `from` to `to` after `after`,
    /// `limit` rows a chunk, as a move does; answers the cursor.
    fn copy(from: &Tables, to: &mut Tables, table: PartitionTable, mut after: i64) -> i64 {
        let mut read = from.snapshot(0).unwrap();
        loop {
            let chunk = block_on(read.chunk(table, after, None, 2)).unwrap();
            if chunk.count == 0 {
                return after;
            }
            after = chunk.last;
            let rows = CopiedRows::parse(table, &chunk.rows.to_string()).unwrap();
            assert_eq!(to.write_rows(rows).unwrap(), chunk.count);
        }
    }

    #[test]
    fn a_chunk_is_the_partitions_rows_changed_in_its_range_oldest_first() {
        let t = source();
        let mut read = t.snapshot(0).unwrap();
        let first = block_on(read.chunk(PartitionTable::Events, 0, None, 2)).unwrap();
        let seqs: Vec<i64> = serde_json::from_value::<Vec<Event>>(first.rows)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!((seqs, first.count), (vec![1, 2], 2));
        let rest = block_on(read.chunk(PartitionTable::Events, first.last, None, 2)).unwrap();
        assert_eq!(rest.count, 1, "b's event is another partition's");
        let upto = block_on(read.count_changed(PartitionTable::Events, 0, Some(first.last)));
        assert_eq!(upto.unwrap(), 2);
        let empty = block_on(read.chunk(PartitionTable::Events, rest.last, None, 2)).unwrap();
        assert_eq!((empty.count, empty.last), (0, rest.last));
    }

    #[test]
    fn a_copy_in_chunks_holds_the_partition_and_a_row_changed_since_comes_round_again() {
        let mut from = source();
        let mut to = Tables::default();
        let accounts = copy(&from, &mut to, PartitionTable::Accounts, 0);
        let events = copy(&from, &mut to, PartitionTable::Events, 0);
        let whole = |t: &Tables| {
            let mut read = t.snapshot(0).unwrap();
            let rows = block_on(read.count_whole()).unwrap();
            (rows, block_on(read.sum_accounts()).unwrap())
        };
        assert_eq!(whole(&to), whole(&from));
        assert_eq!(
            to.events[&AccountId::parse("a").unwrap()],
            from.events[&AccountId::parse("a").unwrap()]
        );
        assert!(!to.accounts.contains_key(&AccountId::parse("b").unwrap()));

        // An update of `a` there, and a new event: both come round again;
        // only the event counts as inserted here (an account is summed up,
        // never counted).
        let counted = to.last_change;
        write(
            &mut from,
            PartitionTable::Accounts,
            &[account("a", 0, 100, 4)],
        );
        write(&mut from, PartitionTable::Events, &[deposit("a", 4, 40)]);
        assert!(copy(&from, &mut to, PartitionTable::Accounts, accounts) > accounts);
        copy(&from, &mut to, PartitionTable::Events, events);
        assert_eq!(whole(&to), whole(&from));
        let mut read = to.snapshot(0).unwrap();
        let inserted = block_on(read.count_inserted(counted)).unwrap();
        assert_eq!(inserted["events"], 1);
        let key = RowKey::Account(AccountId::parse("a").unwrap());
        assert!(to.change_nos[&key].created < to.change_nos[&key].change);
    }

    #[test]
    fn an_event_needs_its_account_and_a_chunk_is_written_all_or_nothing() {
        let mut t = Tables::default();
        write(&mut t, PartitionTable::Accounts, &[account("a", 0, 0, 0)]);
        let before = t.clone();
        let json = serde_json::to_string(&[deposit("a", 1, 10), deposit("c", 1, 10)]).unwrap();
        let rows = CopiedRows::parse(PartitionTable::Events, &json).unwrap();
        assert!(t.write_rows(rows).is_err());
        assert_eq!(t, before);
    }

    #[test]
    fn a_dropped_partition_leaves_no_numbers_and_no_copy_behind() {
        let mut t = source();
        t.copies.insert(0, CopyState::default());
        assert_eq!(t.drop_partition(0), 4);
        assert!(t.copies.is_empty());
        assert!(t.change_nos.keys().all(|k| match k {
            RowKey::Account(id) | RowKey::Event(id, _) => id.as_str() == "b",
            _ => false,
        }));
    }
}
