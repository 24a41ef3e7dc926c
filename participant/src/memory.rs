//! The participant's tables as maps in memory, one transaction at a time:
//! the store of the deterministic simulation and of the rules' tests. A
//! transaction loads the rows its keys name into a `Working` set, runs the
//! rules, and writes back what changed, all or nothing, as Postgres would.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use wallet_shared::admin::Fence;
use wallet_shared::protocol::{Event, FeedEntry, Snapshot};
use wallet_shared::{AccountId, PartitionId, TransactionId};

use crate::model::{AccountRow, Broken, Keys, LegKey, LegRow, TransferRow, Working};

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
            self.transfers.insert(row.id(), row);
        }
        for row in c.new_legs.into_iter().chain(c.changed_legs) {
            self.legs.insert(row.key(), row);
        }
        for row in c.new_accounts.into_iter().chain(c.changed_accounts) {
            self.accounts.insert(row.account_id.clone(), row);
        }
        for e in c.events {
            self.events.entry(e.account_id.clone()).or_default().push(e);
        }
        for s in c.snapshots {
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
    /// A partition's rows, as a move copies them ([`crate::moves`] on
    /// Postgres): its accounts with their events and snapshots, the legs on
    /// its accounts and the decision records it holds. Not the change feed:
    /// what a node has published stays in its feed.
    pub fn partition(&self, p: PartitionId) -> Tables {
        let accounts: BTreeMap<AccountId, AccountRow> = self
            .accounts
            .iter()
            .filter(|(_, a)| a.partition == p)
            .map(|(id, a)| (id.clone(), a.clone()))
            .collect();
        let of = |id: &AccountId| accounts.contains_key(id);
        Tables {
            transfers: self
                .transfers
                .iter()
                .filter(|(_, r)| r.partition == p)
                .map(|(k, r)| (*k, r.clone()))
                .collect(),
            legs: self
                .legs
                .iter()
                .filter(|(_, r)| r.partition == p)
                .map(|(k, r)| (*k, r.clone()))
                .collect(),
            events: self
                .events
                .iter()
                .filter(|(id, _)| of(id))
                .map(|(id, log)| (id.clone(), log.clone()))
                .collect(),
            snapshots: self
                .snapshots
                .iter()
                .filter(|(id, _)| of(id))
                .map(|(id, s)| (id.clone(), s.clone()))
                .collect(),
            accounts,
            outbox: Vec::new(),
            fences: BTreeMap::new(),
        }
    }

    /// Drops partition `p`'s rows (a copy discarded, or the old owner's
    /// after the switch). Returns how many rows went.
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
        before - self.row_count()
    }

    /// Replaces partition `p`'s rows with `copy`'s (a copy imported whole).
    pub fn import_partition(&mut self, p: PartitionId, copy: Tables) {
        self.drop_partition(p);
        self.transfers.extend(copy.transfers);
        self.legs.extend(copy.legs);
        self.accounts.extend(copy.accounts);
        self.events.extend(copy.events);
        self.snapshots.extend(copy.snapshots);
    }

    fn row_count(&self) -> usize {
        self.transfers.len()
            + self.legs.len()
            + self.accounts.len()
            + self.events.values().map(Vec::len).sum::<usize>()
            + self.snapshots.values().map(Vec::len).sum::<usize>()
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
