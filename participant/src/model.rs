//! The participant's rows as plain data, and the working set one local
//! transaction runs on.
//!
//! A transaction is three steps: the store loads (and locks) the rows a
//! request names into a [`Working`] set; the rules (`decisions`, `legs`,
//! `movements`) decide everything in memory, synchronously; the store writes
//! back what changed, set-based, and commits. The rules never see SQL, which
//! is what lets the deterministic simulation run them unchanged on an
//! in-memory store.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use wallet_shared::protocol::{
    Event, EventKind, FeedEntry, FeedKind, LegState, RecordKind, Snapshot, TransferRecord,
    TransferState,
};
use wallet_shared::{AccountId, Currency, PartitionId, Rejection, TransactionId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRow {
    pub account_id: AccountId,
    pub partition: PartitionId,
    pub currency: Currency,
    /// Money that is the account's, in minor units.
    pub posted: i64,
    /// Part of `posted` held by prepared debits.
    pub held: i64,
    /// Prepared credits, not yet the account's.
    pub pending_credit: i64,
    pub last_seq: i64,
    pub created_at: DateTime<Utc>,
    /// The tenant that opened it (`None`: an admin, admin keys only).
    pub owner: Option<String>,
}

/// What the rules fail with: the loaded rows break an invariant (a bug or
/// damaged data), never an answer to a caller. The rules know nothing of
/// the database; the store turns this into its own error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored data is not valid: {0}")]
pub struct Broken(pub String);

impl Broken {
    pub fn new(why: impl std::fmt::Display) -> Self {
        Broken(why.to_string())
    }
}

/// What a row of `legs` is for: the two legs of a transfer, or a movement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowRole {
    Debit,
    Credit,
    Deposit,
    Withdrawal,
}

impl RowRole {
    pub fn as_str(self) -> &'static str {
        match self {
            RowRole::Debit => "debit",
            RowRole::Credit => "credit",
            RowRole::Deposit => "deposit",
            RowRole::Withdrawal => "withdrawal",
        }
    }

    pub fn parse(s: &str) -> Result<Self, Broken> {
        match s {
            "debit" => Ok(RowRole::Debit),
            "credit" => Ok(RowRole::Credit),
            "deposit" => Ok(RowRole::Deposit),
            "withdrawal" => Ok(RowRole::Withdrawal),
            other => Err(Broken::new(format!("leg role {other:?}"))),
        }
    }
}

pub type LegKey = (TransactionId, RowRole);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegRow {
    pub transaction_id: TransactionId,
    pub role: RowRole,
    pub account_id: AccountId,
    pub partition: PartitionId,
    pub amount: i64,
    pub currency: Currency,
    pub counterparty: Option<AccountId>,
    pub decision_partition: Option<PartitionId>,
    /// Movements only: what "the same body" means for their dedup.
    pub fingerprint: Option<String>,
    /// `Prepared`, `Committed` or `Aborted` (never `Missing`).
    pub state: LegState,
    pub reason: Option<Rejection>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl LegRow {
    pub fn key(&self) -> LegKey {
        (self.transaction_id, self.role)
    }
}

/// A transfer's dedup record and decision, at its decision partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferRow {
    pub record: TransferRecord,
    pub partition: PartitionId,
    pub fingerprint: String,
    pub lease_until: DateTime<Utc>,
    /// The coordinator attempt that holds the lease.
    pub lease_owner: uuid::Uuid,
}

impl TransferRow {
    pub fn id(&self) -> TransactionId {
        self.record.spec.transaction_id
    }
}

/// The rows one transaction reads: what the store must load (and lock)
/// before the rules run. The store adds the accounts of the loaded legs.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    pub transfers: BTreeSet<TransactionId>,
    pub legs: BTreeSet<LegKey>,
    pub accounts: BTreeSet<AccountId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Inserted,
    Updated,
}

#[derive(Debug, Clone)]
pub struct Slot<T> {
    pub row: T,
    pub change: Change,
}

impl<T> Slot<T> {
    fn loaded(row: T) -> Self {
        Slot {
            row,
            change: Change::Unchanged,
        }
    }

    fn touch(&mut self) -> &mut T {
        if self.change == Change::Unchanged {
            self.change = Change::Updated;
        }
        &mut self.row
    }
}

/// How often an account's balance is snapshotted unless configured
/// (`snapshot_every`): every 1,000th event.
pub const DEFAULT_SNAPSHOT_EVERY: i64 = 1000;

/// The loaded rows of one local transaction, the changes the rules made to
/// them, and the events they appended.
#[derive(Debug, Clone)]
pub struct Working {
    /// This transaction's clock: leases, grace periods and event times.
    pub now: DateTime<Utc>,
    /// Every account's balance is snapshotted with its event number
    /// `snapshot_every`, `2 * snapshot_every`, ... (0: never).
    pub snapshot_every: i64,
    keys: Keys,
    /// Time of each loaded account's newest event: an event is never stamped
    /// earlier than the one before it (so `as_of` folds a prefix of the log).
    event_floor: BTreeMap<AccountId, DateTime<Utc>>,
    /// Each loaded transfer's state before this transaction, to tell which
    /// ones it decided (aborted transfers go to the feed).
    loaded_states: BTreeMap<TransactionId, TransferState>,
    transfers: BTreeMap<TransactionId, Slot<TransferRow>>,
    legs: BTreeMap<LegKey, Slot<LegRow>>,
    accounts: BTreeMap<AccountId, Slot<AccountRow>>,
    events: Vec<Event>,
    snapshots: Vec<Snapshot>,
}

impl Working {
    /// `now` is kept to the microsecond, as Postgres stores it, so an answer
    /// read back later is the same as the one given at first.
    pub fn new(now: DateTime<Utc>, keys: Keys) -> Self {
        use chrono::SubsecRound;
        Working {
            now: now.trunc_subsecs(6),
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            keys,
            event_floor: BTreeMap::new(),
            loaded_states: BTreeMap::new(),
            transfers: BTreeMap::new(),
            legs: BTreeMap::new(),
            accounts: BTreeMap::new(),
            events: Vec::new(),
            snapshots: Vec::new(),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    // ---- loading (stores only) --------------------------------------------

    pub fn load_transfer(&mut self, row: TransferRow) {
        self.loaded_states.insert(row.id(), row.record.state);
        self.transfers.insert(row.id(), Slot::loaded(row));
    }

    pub fn load_leg(&mut self, row: LegRow) {
        self.legs.insert(row.key(), Slot::loaded(row));
    }

    /// An account the transaction reads, whether or not it exists.
    pub fn note_account_key(&mut self, id: AccountId) {
        self.keys.accounts.insert(id);
    }

    /// The time of a loaded account's newest event (its row's `last_seq`).
    pub fn load_last_event_at(&mut self, id: AccountId, at: DateTime<Utc>) {
        self.event_floor.insert(id, at);
    }

    pub fn load_account(&mut self, row: AccountRow) {
        self.keys.accounts.insert(row.account_id.clone());
        self.accounts
            .insert(row.account_id.clone(), Slot::loaded(row));
    }

    // ---- reading and changing (rules) ---------------------------------------

    pub fn transfer(&self, id: TransactionId) -> Option<&TransferRow> {
        debug_assert!(
            self.keys.transfers.contains(&id),
            "transfer {id} not loaded"
        );
        self.transfers.get(&id).map(|s| &s.row)
    }

    pub fn transfer_mut(&mut self, id: TransactionId) -> Option<&mut TransferRow> {
        debug_assert!(
            self.keys.transfers.contains(&id),
            "transfer {id} not loaded"
        );
        self.transfers.get_mut(&id).map(Slot::touch)
    }

    pub fn insert_transfer(&mut self, row: TransferRow) -> Result<(), Broken> {
        insert(&mut self.transfers, row.id(), row)
    }

    pub fn leg(&self, key: LegKey) -> Option<&LegRow> {
        debug_assert!(self.keys.legs.contains(&key), "leg {key:?} not loaded");
        self.legs.get(&key).map(|s| &s.row)
    }

    pub fn leg_mut(&mut self, key: LegKey) -> Option<&mut LegRow> {
        debug_assert!(self.keys.legs.contains(&key), "leg {key:?} not loaded");
        self.legs.get_mut(&key).map(Slot::touch)
    }

    pub fn insert_leg(&mut self, row: LegRow) -> Result<(), Broken> {
        insert(&mut self.legs, row.key(), row)
    }

    pub fn account(&self, id: &AccountId) -> Option<&AccountRow> {
        debug_assert!(self.keys.accounts.contains(id), "account {id} not loaded");
        self.accounts.get(id).map(|s| &s.row)
    }

    pub fn insert_account(&mut self, row: AccountRow) -> Result<(), Broken> {
        insert(&mut self.accounts, row.account_id.clone(), row)
    }

    /// The one way a balance changes: appends the event to the account's log
    /// and applies its effect (`EventKind::effect`, the fold replay uses) to
    /// the balance row. Refuses a change that would break the row's
    /// invariants, whatever the caller checked.
    pub fn record(
        &mut self,
        account: &AccountId,
        kind: EventKind,
        amount: i64,
        transaction_id: Option<TransactionId>,
        counterparty: Option<&AccountId>,
    ) -> Result<i64, Broken> {
        let now = self.now;
        let slot = self
            .accounts
            .get_mut(account)
            .ok_or_else(|| Broken::new(format!("event for unknown account {account}")))?;
        let (d_posted, d_held, d_pending) = kind.effect(amount);
        let row = slot.touch();
        let posted = row.posted.checked_add(d_posted);
        let held = row.held.checked_add(d_held);
        let pending = row.pending_credit.checked_add(d_pending);
        match (posted, held, pending) {
            (Some(p), Some(h), Some(c)) if p >= 0 && h >= 0 && h <= p && c >= 0 => {
                row.posted = p;
                row.held = h;
                row.pending_credit = c;
            }
            _ => {
                return Err(Broken::new(format!(
                    "{} of {amount} on {account} would break its balance (posted {}, held {}, pending {})",
                    kind.as_str(),
                    row.posted,
                    row.held,
                    row.pending_credit
                )))
            }
        }
        row.last_seq += 1;
        let seq = row.last_seq;
        let at = match self.event_floor.get(account) {
            Some(&floor) if floor > now => floor,
            _ => now,
        };
        self.event_floor.insert(account.clone(), at);
        if self.snapshot_every > 0 && seq % self.snapshot_every == 0 {
            self.snapshots.push(Snapshot {
                account_id: account.clone(),
                seq,
                posted: row.posted,
                held: row.held,
                pending_credit: row.pending_credit,
                at,
            });
        }
        self.events.push(Event {
            account_id: account.clone(),
            seq,
            kind,
            amount,
            transaction_id,
            counterparty: counterparty.cloned(),
            at,
        });
        Ok(seq)
    }

    // ---- writing back (stores only) ---------------------------------------

    pub fn into_changes(self) -> Changes {
        fn split<K, T>(rows: BTreeMap<K, Slot<T>>) -> (Vec<T>, Vec<T>) {
            let mut inserted = Vec::new();
            let mut updated = Vec::new();
            for slot in rows.into_values() {
                match slot.change {
                    Change::Inserted => inserted.push(slot.row),
                    Change::Updated => updated.push(slot.row),
                    Change::Unchanged => {}
                }
            }
            (inserted, updated)
        }
        let aborted = self
            .transfers
            .values()
            .filter(|slot| {
                slot.change != Change::Unchanged
                    && slot.row.record.kind == RecordKind::Transfer
                    && slot.row.record.state == TransferState::Aborted
                    && self.loaded_states.get(&slot.row.id()) != Some(&TransferState::Aborted)
            })
            .map(|slot| slot.row.clone())
            .collect();
        let (new_transfers, changed_transfers) = split(self.transfers);
        let (new_legs, changed_legs) = split(self.legs);
        let (new_accounts, changed_accounts) = split(self.accounts);
        Changes {
            new_transfers,
            changed_transfers,
            new_legs,
            changed_legs,
            new_accounts,
            changed_accounts,
            events: self.events,
            snapshots: self.snapshots,
            aborted,
        }
    }
}

fn insert<K: Ord + std::fmt::Debug, T>(
    rows: &mut BTreeMap<K, Slot<T>>,
    key: K,
    row: T,
) -> Result<(), Broken> {
    if rows.contains_key(&key) {
        return Err(Broken::new(format!("{key:?} inserted twice")));
    }
    rows.insert(
        key,
        Slot {
            row,
            change: Change::Inserted,
        },
    );
    Ok(())
}

/// What one transaction writes, in key order (so concurrent writers take
/// row locks in one order).
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub new_transfers: Vec<TransferRow>,
    pub changed_transfers: Vec<TransferRow>,
    pub new_legs: Vec<LegRow>,
    pub changed_legs: Vec<LegRow>,
    pub new_accounts: Vec<AccountRow>,
    pub changed_accounts: Vec<AccountRow>,
    pub events: Vec<Event>,
    /// Balances to snapshot (every Nth event of an account).
    pub snapshots: Vec<Snapshot>,
    /// Transfers this transaction decided aborted (already in the lists above).
    pub aborted: Vec<TransferRow>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.new_transfers.is_empty()
            && self.changed_transfers.is_empty()
            && self.new_legs.is_empty()
            && self.changed_legs.is_empty()
            && self.new_accounts.is_empty()
            && self.changed_accounts.is_empty()
            && self.events.is_empty()
    }

    /// What this transaction adds to the change feed, in order: its events,
    /// then the transfers it aborted. Positions are 0: the store numbers
    /// them in commit order.
    pub fn feed_entries(&self) -> Result<Vec<FeedEntry>, Broken> {
        let accounts: BTreeMap<&AccountId, &AccountRow> = self
            .new_accounts
            .iter()
            .chain(&self.changed_accounts)
            .map(|a| (&a.account_id, a))
            .collect();
        let mut entries = Vec::with_capacity(self.events.len() + self.aborted.len());
        for e in &self.events {
            let account = accounts.get(&e.account_id).ok_or_else(|| {
                Broken::new(format!("event of {} without its account row", e.account_id))
            })?;
            entries.push(FeedEntry {
                position: 0,
                kind: FeedKind::Event(e.kind),
                account_id: e.account_id.clone(),
                seq: Some(e.seq),
                amount: e.amount,
                currency: account.currency,
                transaction_id: e.transaction_id,
                counterparty: e.counterparty.clone(),
                reason: None,
                partition: account.partition,
                at: e.at,
            });
        }
        for t in &self.aborted {
            let r = &t.record;
            entries.push(FeedEntry {
                position: 0,
                kind: FeedKind::TransferAborted,
                account_id: r.spec.from.clone(),
                seq: None,
                amount: r.spec.amount.minor(),
                currency: r.spec.currency,
                transaction_id: Some(r.spec.transaction_id),
                counterparty: Some(r.spec.to.clone()),
                reason: r.reason.as_ref().map(|x| x.code),
                partition: t.partition,
                at: r.decided_at.unwrap_or(r.created_at),
            });
        }
        Ok(entries)
    }
}

/// A record still `preparing` after its lease, or decided but not completed
/// for longer than `grace`: recovery's work. (The Postgres store says the
/// same in SQL, to use its index.) A time more than `grace` ahead of this
/// node's clock was stamped by a clock ahead of it (on the node that held
/// the partition before a move, or before this clock stepped back): such a
/// row is not left waiting out the difference.
pub fn needs_recovery(row: &TransferRow, now: DateTime<Utc>, grace: chrono::Duration) -> bool {
    use wallet_shared::protocol::TransferState;
    let r = &row.record;
    !r.completed
        && match r.state {
            // A lease begun by a clock ahead of ours would last as much
            // longer: it counts as run out (recovery's abort is a
            // compare-and-set, which a live attempt's decision may win).
            TransferState::Preparing => row.lease_until < now || r.created_at > now + grace,
            _ => r.decided_at.is_some_and(|d| settled(d, now, grace)),
        }
}

/// Whether a row stamped `at` has waited `grace` by this clock, or was
/// stamped by a clock more than `grace` ahead of it.
fn settled(at: DateTime<Utc>, now: DateTime<Utc>, grace: chrono::Duration) -> bool {
    at < now - grace || at > now + grace
}

/// A transfer leg still prepared after `grace`: recovery looks up its
/// decision.
pub fn is_stale_prepared(row: &LegRow, now: DateTime<Utc>, grace: chrono::Duration) -> bool {
    matches!(row.role, RowRole::Debit | RowRole::Credit)
        && row.state == LegState::Prepared
        && settled(row.created_at, now, grace)
}
