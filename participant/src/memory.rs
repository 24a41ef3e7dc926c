//! The participant's tables as maps in memory, one transaction at a time:
//! the store of the deterministic simulation and of the rules' tests. A
//! transaction loads the rows its keys name into a `Working` set, runs the
//! rules, and writes back what changed, all or nothing, as Postgres would.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use wallet_shared::protocol::{Event, FeedEntry, Snapshot};
use wallet_shared::{AccountId, TransactionId};

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
