//! The simulation's store: the participant's tables as maps in memory, one
//! transaction at a time. Each transaction runs to the end without yielding
//! (the simulation is single-threaded), so it is atomic and serializable,
//! like the Postgres one; and what it wrote survives a crash of the node,
//! like a committed Postgres transaction, except a [`Durability::Redo`]
//! commit not yet flushed: as with Postgres's `synchronous_commit = off`,
//! a crash of the database ([`MemStore::crash`]) loses it, and the next
//! flushed commit flushes it (the log is one sequence).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use participant::error::StoreError;
use participant::fence::FenceMap;
use participant::memory::{CopiedRows, PartitionSnapshot};
use participant::model::{self, AccountRow, Broken, Keys, LegRow, TransferRow, Working};
use participant::store::{CopyWrite, Durability, PartitionTable, ReadSpan, Store};
use wallet_shared::admin::{CopyState, Discarded, Fence, PartitionStats};
use wallet_shared::protocol::{Event, EventKind, FeedEntry, LegState, Snapshot, TransferRecord};
use wallet_shared::{AccountId, PartitionId, TransactionId};

use crate::clock::NodeClock;

/// The participant's tables in memory (shared with the rules' tests).
pub type Tables = participant::memory::Tables;

#[derive(Clone)]
pub struct MemStore {
    pub tables: Arc<Mutex<Tables>>,
    /// Transactions the rules refused as corrupt (a broken invariant).
    pub corrupt: Arc<Mutex<Vec<String>>>,
    pub clock: NodeClock,
    /// The node's database is down: every call fails as Postgres's would.
    pub down: Arc<Mutex<bool>>,
    /// Snapshot every account at every this many events (small, so the
    /// simulation writes and checks many).
    pub snapshot_every: i64,
    /// The tables as they are on disk when commits are not yet flushed:
    /// as they were before the first of them (`None`: all flushed).
    pub on_disk: Arc<Mutex<Option<Tables>>>,
}

impl MemStore {
    pub fn new(clock: NodeClock) -> Self {
        MemStore {
            tables: Arc::default(),
            corrupt: Arc::default(),
            clock,
            down: Arc::default(),
            snapshot_every: 4,
            on_disk: Arc::default(),
        }
    }

    /// The database crashes (`kill -9`): it is down, and every commit not
    /// yet flushed is lost. Returns how many tables' worth was rolled back
    /// (0 or 1), for the record.
    pub fn crash(&self) -> bool {
        *self.down.lock().unwrap() = true;
        let mut tables = self.tables.lock().unwrap();
        match self.on_disk.lock().unwrap().take() {
            Some(on_disk) => {
                *tables = on_disk;
                true
            }
            None => false,
        }
    }

    pub(crate) fn check_up(&self) -> Result<(), StoreError> {
        if *self.down.lock().unwrap() {
            return Err(StoreError::Unavailable("the database is down".into()));
        }
        Ok(())
    }

    /// A flushed commit: it flushes every commit before it (the log is one
    /// sequence).
    pub fn flush(&self) {
        *self.on_disk.lock().unwrap() = None;
    }
}

impl Store for MemStore {
    async fn attempt<T, F>(
        &self,
        keys: &Keys,
        durability: Durability,
        rules: &F,
    ) -> Result<T, StoreError>
    where
        T: Send,
        F: Fn(&mut Working) -> Result<T, Broken> + Send + Sync,
    {
        self.check_up()?;
        let mut t = self.tables.lock().unwrap();
        let mut on_disk = self.on_disk.lock().unwrap();
        // The first commit that is not flushed: keep what the disk holds.
        let before = (durability == Durability::Redo && on_disk.is_none()).then(|| t.clone());
        match t.transaction(self.now(), self.snapshot_every, keys, rules) {
            Ok((out, wrote)) => {
                match durability {
                    Durability::Flushed if wrote => *on_disk = None, // as `flush`
                    Durability::Redo if wrote && before.is_some() => *on_disk = before,
                    _ => {}
                }
                Ok(out)
            }
            Err(broken) => {
                self.corrupt.lock().unwrap().push(broken.0.clone());
                Err(broken.into())
            }
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    async fn fences(&self) -> Result<FenceMap, StoreError> {
        self.check_up()?;
        Ok(self.tables.lock().unwrap().fences.clone())
    }

    async fn save_fence(&self, p: PartitionId, fence: Option<Fence>) -> Result<(), StoreError> {
        self.check_up()?;
        let mut t = self.tables.lock().unwrap();
        match fence {
            Some(f) => t.fences.insert(p, f),
            None => t.fences.remove(&p),
        };
        self.flush();
        Ok(())
    }

    /// All at once: the simulation's partitions are small.
    async fn discard(&self, p: PartitionId, _budget: Duration) -> Result<Discarded, StoreError> {
        self.check_up()?;
        let dropped = self.tables.lock().unwrap().drop_partition(p) as i64;
        self.flush();
        Ok(Discarded {
            dropped,
            done: true,
        })
    }

    type PartitionRead = PartitionSnapshot;
    type CopyWrite = MemCopy;

    async fn read_partition(
        &self,
        p: PartitionId,
        _span: ReadSpan,
    ) -> Result<PartitionSnapshot, StoreError> {
        self.check_up()?;
        self.tables.lock().unwrap().snapshot(p)
    }

    async fn read_partition_quiet<G: Send>(
        &self,
        p: PartitionId,
        _span: ReadSpan,
        quiet: impl std::future::Future<Output = G> + Send,
    ) -> Result<(PartitionSnapshot, i64), StoreError> {
        self.check_up()?;
        let _quiet = quiet.await;
        self.check_up()?;
        let t = self.tables.lock().unwrap();
        // Every change so far on disk, as the trait asks.
        self.flush();
        Ok((t.snapshot(p)?, t.last_change))
    }

    async fn copy_state(&self, p: PartitionId) -> Result<Option<CopyState>, StoreError> {
        self.check_up()?;
        Ok(self.tables.lock().unwrap().copies.get(&p).cloned())
    }

    async fn holds_rows(&self, p: PartitionId) -> Result<bool, StoreError> {
        self.check_up()?;
        Ok(self.tables.lock().unwrap().holds_rows(p))
    }

    async fn start_copy(
        &self,
        p: PartitionId,
        from: &str,
        move_id: &str,
    ) -> Result<(), StoreError> {
        self.check_up()?;
        let state = CopyState {
            from: from.to_string(),
            move_id: move_id.to_string(),
            ..CopyState::default()
        };
        self.tables.lock().unwrap().copies.insert(p, state);
        self.flush();
        Ok(())
    }

    async fn write_copy(&self, p: PartitionId) -> Result<MemCopy, StoreError> {
        self.check_up()?;
        let state = self.tables.lock().unwrap().copies.get(&p).cloned();
        Ok(MemCopy {
            store: self.clone(),
            p,
            state,
            rows: CopiedRows::default(),
        })
    }

    async fn lookup(&self, id: TransactionId) -> Result<Option<TransferRecord>, StoreError> {
        self.check_up()?;
        let t = self.tables.lock().unwrap();
        Ok(t.transfers.get(&id).map(|r| r.record.clone()))
    }

    async fn unresolved(
        &self,
        grace: Duration,
        limit: i64,
    ) -> Result<(Vec<TransferRow>, Vec<LegRow>), StoreError> {
        self.check_up()?;
        let now = self.now();
        let grace = chrono::Duration::from_std(grace).map_err(StoreError::corrupt)?;
        let t = self.tables.lock().unwrap();
        let mut transfers: Vec<TransferRow> = t
            .transfers
            .values()
            .filter(|r| model::needs_recovery(r, now, grace))
            .cloned()
            .collect();
        transfers.sort_by_key(|r| (r.record.created_at, r.id()));
        transfers.truncate(limit as usize);
        let mut legs: Vec<LegRow> = t
            .legs
            .values()
            .filter(|r| model::is_stale_prepared(r, now, grace))
            .cloned()
            .collect();
        legs.sort_by_key(|r| (r.created_at, r.key()));
        legs.truncate(limit as usize);
        Ok((transfers, legs))
    }

    async fn in_doubt(
        &self,
        partitions: &[PartitionId],
        limit: i64,
    ) -> Result<(Vec<TransferRow>, Vec<LegRow>), StoreError> {
        self.check_up()?;
        let t = self.tables.lock().unwrap();
        let mut transfers: Vec<TransferRow> = t
            .transfers
            .values()
            .filter(|r| !r.record.completed && partitions.contains(&r.partition))
            .cloned()
            .collect();
        transfers.sort_by_key(|r| (r.record.created_at, r.id()));
        transfers.truncate(limit.max(0) as usize);
        let mut legs: Vec<LegRow> = t
            .legs
            .values()
            .filter(|r| {
                r.state == LegState::Prepared
                    && matches!(r.role, model::RowRole::Debit | model::RowRole::Credit)
                    && partitions.contains(&r.partition)
            })
            .cloned()
            .collect();
        legs.sort_by_key(|r| (r.created_at, r.key()));
        legs.truncate(limit.max(0) as usize);
        Ok((transfers, legs))
    }

    async fn legs_of(&self, id: TransactionId) -> Result<Vec<LegRow>, StoreError> {
        self.check_up()?;
        let t = self.tables.lock().unwrap();
        Ok(t.legs
            .values()
            .filter(|r| r.transaction_id == id)
            .cloned()
            .collect())
    }

    async fn partition_stats(&self) -> Result<Vec<PartitionStats>, StoreError> {
        self.check_up()?;
        let t = self.tables.lock().unwrap();
        let mut by: BTreeMap<PartitionId, PartitionStats> = BTreeMap::new();
        fn of(
            by: &mut BTreeMap<PartitionId, PartitionStats>,
            p: PartitionId,
        ) -> &mut PartitionStats {
            by.entry(p).or_insert_with(|| PartitionStats {
                partition: p,
                ..PartitionStats::default()
            })
        }
        for a in t.accounts.values() {
            of(&mut by, a.partition).accounts += 1;
        }
        for l in t.legs.values().filter(|l| l.state == LegState::Prepared) {
            of(&mut by, l.partition).prepared_legs += 1;
        }
        for r in t.transfers.values().filter(|r| !r.record.completed) {
            of(&mut by, r.partition).open_transfers += 1;
        }
        Ok(by.into_values().collect())
    }

    async fn account(&self, id: &AccountId) -> Result<Option<AccountRow>, StoreError> {
        self.check_up()?;
        Ok(self.tables.lock().unwrap().accounts.get(id).cloned())
    }

    async fn events(
        &self,
        id: &AccountId,
        after: i64,
        limit: i64,
        until: Option<DateTime<Utc>>,
        kinds: &[EventKind],
    ) -> Result<Vec<Event>, StoreError> {
        self.check_up()?;
        let t = self.tables.lock().unwrap();
        Ok(t.events
            .get(id)
            .map(|log| {
                log.iter()
                    .filter(|e| e.seq > after && until.is_none_or(|u| e.at <= u))
                    .filter(|e| kinds.is_empty() || kinds.contains(&e.kind))
                    .take(limit.max(0) as usize)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn snapshot_at(
        &self,
        id: &AccountId,
        as_of: DateTime<Utc>,
    ) -> Result<(Option<Snapshot>, Option<i64>), StoreError> {
        self.check_up()?;
        let t = self.tables.lock().unwrap();
        let all = t.snapshots.get(id).map(Vec::as_slice).unwrap_or_default();
        let before = all.iter().rev().find(|s| s.at <= as_of).cloned();
        let next = all.iter().find(|s| s.at > as_of).map(|s| s.seq);
        Ok((before, next))
    }

    async fn snapshots(&self, id: &AccountId) -> Result<Vec<Snapshot>, StoreError> {
        self.check_up()?;
        let t = self.tables.lock().unwrap();
        Ok(t.snapshots.get(id).cloned().unwrap_or_default())
    }

    async fn accounts_after(
        &self,
        after: Option<&AccountId>,
        limit: i64,
    ) -> Result<Vec<AccountRow>, StoreError> {
        self.check_up()?;
        let t = self.tables.lock().unwrap();
        Ok(t.accounts
            .values()
            .filter(|a| after.is_none_or(|after| &a.account_id > after))
            .take(limit.max(0) as usize)
            .cloned()
            .collect())
    }

    async fn feed(&self, after: i64, limit: i64) -> Result<(Vec<FeedEntry>, i64), StoreError> {
        self.check_up()?;
        let t = self.tables.lock().unwrap();
        let entries = t
            .outbox
            .iter()
            .skip(after.max(0) as usize)
            .take(limit.max(0) as usize)
            .cloned()
            .collect();
        Ok((entries, t.outbox.len() as i64))
    }
}

/// One local transaction of a copy on the in-memory store: the chunk's rows
/// and the copy's next state wait here and are written at
/// [`CopyWrite::commit`], all at once, as one flushed commit. None of its
/// steps waits, so nothing runs between its first read and its commit (as
/// the record's row lock makes it on Postgres).
pub struct MemCopy {
    store: MemStore,
    p: PartitionId,
    /// The copy's state as read, then as advanced.
    state: Option<CopyState>,
    /// The rows to write.
    rows: CopiedRows,
}

impl CopyWrite for MemCopy {
    async fn state(&mut self) -> Result<Option<CopyState>, StoreError> {
        Ok(self.state.clone())
    }

    /// Every row of the chunk is written, all or nothing.
    async fn apply(&mut self, table: PartitionTable, rows: &str) -> Result<i64, StoreError> {
        let rows = CopiedRows::parse(table, rows)?;
        let n = rows.len() as i64;
        self.rows.append(rows);
        Ok(n)
    }

    async fn advance(
        &mut self,
        table: PartitionTable,
        last: i64,
        rows: i64,
        bytes: i64,
    ) -> Result<CopyState, StoreError> {
        let Some(state) = &mut self.state else {
            return Ok(CopyState::default());
        };
        state.cursors.insert(table.as_str().to_string(), last);
        state.rows += rows;
        state.bytes += bytes;
        Ok(state.clone())
    }

    async fn commit(self) -> Result<(), StoreError> {
        self.store.check_up()?;
        let mut t = self.store.tables.lock().unwrap();
        t.write_rows(self.rows)?;
        if let Some(state) = self.state {
            t.copies.insert(self.p, state);
        }
        self.store.flush();
        Ok(())
    }
}
