//! The simulation's check: the checker it shares with the chaos suite
//! ([`wallet_history::check`]: the clients' history against what every
//! node's in-memory store holds, see its docs for the list), plus what only
//! the simulation can see, since it holds every node's whole tables:
//!
//! - Invariants: no transaction the participant's rules refused as breaking
//!   a balance's invariants.
//! - The feed, over the cluster (a moved partition's events are fed by its
//!   old owner up to the move, by its new owner after): every event exactly
//!   once, each node's in order, and one `transfer_aborted` per aborted
//!   transfer's record.
//! - Snapshots: each is the fold of the events up to its own.

use std::collections::BTreeMap;

use wallet_history::{Anomaly, AnomalyKind, History, Settling, State};
use wallet_shared::protocol::{replay, FeedKind, RecordKind, TransferState};
use wallet_shared::AccountId;

use crate::mem::MemStore;

/// What every node holds, as the shared checker reads it.
pub fn state(stores: &BTreeMap<String, MemStore>) -> State {
    let mut state = State::default();
    for (node, store) in stores {
        let rows = store.tables.lock().unwrap().rows();
        state.add_node(node, rows);
    }
    state
}

/// Checks the run: the shared checker, then what only the simulation sees.
pub fn check(
    stores: &BTreeMap<String, MemStore>,
    history: &History,
    settling: Settling,
) -> Vec<Anomaly> {
    let mut out = wallet_history::check(history, &state(stores), settling);
    out.extend(extensions(stores));
    out
}

/// The simulation's own checks (see the module docs).
pub fn extensions(stores: &BTreeMap<String, MemStore>) -> Vec<Anomaly> {
    let mut out = Vec::new();
    // The feed, over the cluster: every event exactly once, each node's in
    // order, and one `transfer_aborted` per aborted decision record. A
    // partition's events fed before it moved stay in its old owner's feed,
    // the later ones are in its new owner's.
    let mut fed: BTreeMap<AccountId, Vec<i64>> = BTreeMap::new();
    let mut logs: BTreeMap<AccountId, Vec<i64>> = BTreeMap::new();
    let mut aborted = std::collections::BTreeSet::new();
    let mut aborted_fed = 0;
    for (node, store) in stores {
        for why in store.corrupt.lock().unwrap().iter() {
            out.push(Anomaly::new(
                AnomalyKind::Invariant,
                format!("{node}: {why}"),
            ));
        }
        let t = store.tables.lock().unwrap();
        let mut here: BTreeMap<&AccountId, Vec<i64>> = BTreeMap::new();
        for entry in &t.outbox {
            match (entry.kind, entry.seq) {
                (FeedKind::Event(_), Some(seq)) => {
                    here.entry(&entry.account_id).or_default().push(seq)
                }
                (FeedKind::TransferAborted, None) => aborted_fed += 1,
                _ => out.push(Anomaly::new(
                    AnomalyKind::Feed,
                    format!("{node}: malformed entry {entry:?}"),
                )),
            }
        }
        for (account, seqs) in here {
            if seqs.windows(2).any(|w| w[0] >= w[1]) {
                out.push(Anomaly::new(
                    AnomalyKind::Feed,
                    format!("{node}: the feed carries {account}'s events out of order: {seqs:?}"),
                ));
            }
            fed.entry(account.clone()).or_default().extend(seqs);
        }
        for (account, log) in &t.events {
            let seqs: Vec<i64> = log.iter().map(|e| e.seq).collect();
            // A copy on a second node is a duplicate row (the state's check).
            let held = logs.entry(account.clone()).or_default();
            if seqs.len() > held.len() {
                *held = seqs;
            }
        }
        aborted.extend(
            t.transfers
                .values()
                .filter(|r| r.record.kind == RecordKind::Transfer)
                .filter(|r| r.record.state == TransferState::Aborted)
                .map(|r| r.id()),
        );
        // Snapshots: each is the fold of the events up to its own.
        for (account, snaps) in &t.snapshots {
            let log = t.events.get(account).map(Vec::as_slice).unwrap_or(&[]);
            for snap in snaps {
                let upto = log.get(..snap.seq as usize).unwrap_or(log);
                let at = (snap.seq as usize)
                    .checked_sub(1)
                    .and_then(|i| log.get(i))
                    .map(|e| e.at);
                if snap.seq % store.snapshot_every != 0
                    || replay(upto) != snap.fold()
                    || at != Some(snap.at)
                {
                    out.push(Anomaly::new(
                        AnomalyKind::Snapshot,
                        format!(
                            "{account}: snapshot at event {} says {:?}, the events say {:?}",
                            snap.seq,
                            snap.fold(),
                            replay(upto)
                        ),
                    ));
                }
            }
        }
    }
    for (account, want) in &logs {
        let mut got = fed.remove(account).unwrap_or_default();
        got.sort_unstable();
        if &got != want {
            out.push(Anomaly::new(
                AnomalyKind::Feed,
                format!(
                    "the feed does not carry {account}'s events 1..{} once",
                    want.len()
                ),
            ));
        }
    }
    for (account, seqs) in fed {
        out.push(Anomaly::new(
            AnomalyKind::Feed,
            format!("the feed carries events {seqs:?} of {account}, which no node holds"),
        ));
    }
    if aborted.len() != aborted_fed {
        out.push(Anomaly::new(
            AnomalyKind::Feed,
            format!(
                "{} aborted transfers, {aborted_fed} in the feed",
                aborted.len()
            ),
        ));
    }
    out
}

/// Every anomaly kind, fed a history that has it (and nothing else that
/// would hide it), and a good history that has none: a checker that cannot
/// fail proves nothing. The good history is written by the real rules on
/// two `MemStore`s; each bad one breaks it through the tables directly.
#[cfg(test)]
mod tests;
