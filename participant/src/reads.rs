//! What the participant answers without writing: balances (now and as of
//! an instant, rebuilt from the events), an account's events, this node's
//! change feed, and the replay check of balances against their events.

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use wallet_shared::protocol::*;
use wallet_shared::{routes, AccountId, ErrorCode, PartitionId, Rejection};

use crate::app::App;
use crate::error::ApiResult;
use crate::fence::Work;
use crate::ledger;
use crate::store::Store;

/// This module's routes; `app::router` mounts them.
pub(crate) fn routes<S: Store>() -> Router<App<S>> {
    Router::new()
        .route(routes::BALANCE.pattern(), get(balance::<S>))
        .route(routes::EVENTS.pattern(), get(events::<S>))
        .route(routes::FEED.pattern(), get(feed::<S>))
        .route(routes::REPLAY.pattern(), get(replay_check::<S>))
}

#[derive(Deserialize)]
struct BalanceQuery {
    map_revision: i64,
    partition: PartitionId,
    as_of: Option<chrono::DateTime<chrono::Utc>>,
    /// `false`: fold from the first event, ignoring snapshots (audits, and
    /// the proof that both ways agree).
    #[serde(default = "yes")]
    snapshots: bool,
}

fn yes() -> bool {
    true
}

async fn balance<S: Store>(
    State(app): State<App<S>>,
    Path(id): Path<String>,
    Query(q): Query<BalanceQuery>,
) -> ApiResult<Json<HistoricalBalance>> {
    let id = AccountId::parse(id)?;
    app.check_partition(&id, q.partition)?;
    let _pass = app.admit(q.map_revision, Work::Read, [q.partition]).await?;
    let current = app
        .store
        .account(&id)
        .await?
        .ok_or_else(|| ledger::not_found(&id))?
        .balance();
    let Some(as_of) = q.as_of else {
        return Ok(Json(HistoricalBalance {
            balance: current,
            events_replayed: 0,
            snapshot: None,
        }));
    };
    Ok(Json(
        historical_balance(&app.store, current, as_of, q.snapshots, app.max_fold_events).await?,
    ))
}

/// The most events one fold reads by default (`max_fold_events`).
pub const DEFAULT_MAX_FOLD_EVENTS: i64 = 1_000_000;

/// Events read per query of a fold: a long fold takes a pooled connection
/// for one page at a time, and other requests get theirs in between.
const FOLD_PAGE: i64 = 10_000;

/// The balance at `as_of`, rebuilt from the event log: the newest snapshot
/// at or before `as_of` (if `use_snapshots`), then the fold of the events
/// after it that are at or before `as_of`. An account's event times never go
/// down, so those events are the ones between that snapshot and the next:
/// at most `snapshot_every` of them. A fold that would read more than
/// `max_events` events is refused (`history_too_long`) once it has read
/// that many.
pub async fn historical_balance<S: Store>(
    store: &S,
    current: AccountBalance,
    as_of: chrono::DateTime<chrono::Utc>,
    use_snapshots: bool,
    max_events: i64,
) -> ApiResult<HistoricalBalance> {
    let id = current.account_id.clone();
    let (snapshot, next) = if use_snapshots {
        store.snapshot_at(&id, as_of).await?
    } else {
        (None, None)
    };
    let start_seq = snapshot.as_ref().map_or(0, |s| s.seq);
    let mut wanted = next.map_or(i64::MAX, |n| n - start_seq);
    let mut events = Vec::new();
    let mut after = start_seq;
    while wanted > 0 {
        let page = FOLD_PAGE.min(wanted);
        let got = store.events(&id, after, page, Some(as_of), &[]).await?;
        let n = got.len() as i64;
        after = got.last().map_or(after, |e| e.seq);
        events.extend(got);
        if events.len() as i64 > max_events.max(0) {
            return Err(Rejection::new(
                ErrorCode::HistoryTooLong,
                format!(
                    "rebuilding this balance would fold more than {max_events} events; \
                     ask for it with snapshots (the default)"
                ),
            )
            .into());
        }
        if n < page {
            break;
        }
        wanted -= n;
    }
    let last_seq = events.last().map_or(start_seq, |e| e.seq);
    if last_seq == 0 {
        return Err(Rejection::new(
            ErrorCode::AccountNotFound,
            format!("account {id} did not exist at {as_of}"),
        )
        .into());
    }
    let start = snapshot.as_ref().map_or((0, 0, 0), Snapshot::fold);
    let (posted, held, pending_credit) = replay_from(start, &events);
    Ok(HistoricalBalance {
        balance: AccountBalance {
            account_id: id,
            currency: current.currency,
            posted,
            held,
            pending_credit,
            last_seq,
            owner: current.owner,
        },
        events_replayed: events.len() as u64,
        snapshot: snapshot.map(|s| SnapshotRef {
            seq: s.seq,
            at: s.at,
        }),
    })
}

#[derive(Deserialize)]
struct EventsQuery {
    map_revision: i64,
    partition: PartitionId,
    #[serde(default)]
    after: i64,
    #[serde(default = "crate::protocol::default_limit")]
    limit: i64,
    /// Comma-separated event types; all when absent.
    types: Option<String>,
}

/// Parses a comma-separated list of event types (`deposited,withdrawn`).
pub fn parse_event_types(list: &str) -> Result<Vec<EventKind>, Rejection> {
    list.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            EventKind::parse(t).ok_or_else(|| {
                Rejection::new(
                    ErrorCode::InvalidRequest,
                    format!("unknown event type {t:?}"),
                )
            })
        })
        .collect()
}

async fn events<S: Store>(
    State(app): State<App<S>>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<EventsPage>> {
    let id = AccountId::parse(id)?;
    app.check_partition(&id, q.partition)?;
    let _pass = app.admit(q.map_revision, Work::Read, [q.partition]).await?;
    let kinds = parse_event_types(q.types.as_deref().unwrap_or(""))?;
    let account = app
        .store
        .account(&id)
        .await?
        .ok_or_else(|| ledger::not_found(&id))?;
    let limit = q.limit.clamp(1, 1000);
    let mut events = app
        .store
        .events(&id, q.after.max(0), limit + 1, None, &kinds)
        .await?;
    let next_after = if events.len() as i64 > limit {
        events.truncate(limit as usize);
        events.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(Json(EventsPage {
        currency: account.currency,
        owner: account.owner,
        events,
        next_after,
    }))
}

#[derive(Deserialize)]
struct FeedQuery {
    #[serde(default)]
    after: i64,
    #[serde(default = "crate::protocol::default_limit")]
    limit: i64,
}

/// This node's change feed after a position. Not fenced by partition: the
/// feed is the node's, whatever it owns now.
async fn feed<S: Store>(
    State(app): State<App<S>>,
    Query(q): Query<FeedQuery>,
) -> ApiResult<Json<FeedPage>> {
    if q.after < 0 {
        return Err(Rejection::new(ErrorCode::InvalidRequest, "after must be 0 or more").into());
    }
    let limit = q.limit.clamp(1, 10_000);
    let (entries, head) = app.store.feed(q.after, limit).await?;
    Ok(Json(FeedPage {
        node_id: app.node_id.to_string(),
        entries,
        head,
    }))
}

#[derive(Deserialize)]
struct ReplayQuery {
    /// One account; otherwise a page of all of them.
    account: Option<String>,
    after: Option<String>,
    #[serde(default = "default_replay_limit")]
    limit: i64,
}

fn default_replay_limit() -> i64 {
    100
}

/// Rebuilds accounts of this node from their events and compares them with
/// their stored rows and snapshots (`walletctl replay`).
async fn replay_check<S: Store>(
    State(app): State<App<S>>,
    Query(q): Query<ReplayQuery>,
) -> ApiResult<Json<ReplayPage>> {
    let node_id = app.node_id.to_string();
    if let Some(account) = q.account {
        let id = AccountId::parse(account)?;
        let accounts = match app.store.account(&id).await? {
            Some(row) => vec![replay_account(&app.store, row.balance()).await?],
            None => Vec::new(),
        };
        return Ok(Json(ReplayPage {
            node_id,
            accounts,
            next_after: None,
        }));
    }
    let after = q.after.map(AccountId::parse).transpose()?;
    let limit = q.limit.clamp(1, 1000);
    let rows = app.store.accounts_after(after.as_ref(), limit).await?;
    let next_after = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.account_id.clone()))
        .flatten();
    let mut accounts = Vec::with_capacity(rows.len());
    for row in rows {
        accounts.push(replay_account(&app.store, row.balance()).await?);
    }
    Ok(Json(ReplayPage {
        node_id,
        accounts,
        next_after,
    }))
}

/// Folds every event of the account, page by page, checking that the
/// sequence numbers run 1, 2, 3, ..., that times never go down, that each
/// snapshot is the fold at its event, and that the fold is the stored row.
pub async fn replay_account<S: Store>(
    store: &S,
    stored: AccountBalance,
) -> Result<ReplayedAccount, crate::error::StoreError> {
    const PAGE: i64 = 10_000;
    let id = stored.account_id.clone();
    let snapshots = store.snapshots(&id).await?;
    let mut pending_snapshots = snapshots.iter().peekable();
    let mut problems = Vec::new();
    let mut fold = (0, 0, 0);
    let mut seq = 0;
    let mut last_at = None;
    let mut count = 0u64;
    loop {
        let page = store.events(&id, seq, PAGE, None, &[]).await?;
        for e in &page {
            if e.seq != seq + 1 {
                problems.push(format!("event {} follows event {seq}", e.seq));
            }
            if last_at.is_some_and(|t| e.at < t) {
                problems.push(format!(
                    "event {} is stamped before the one before it",
                    e.seq
                ));
            }
            last_at = Some(e.at);
            seq = e.seq;
            count += 1;
            fold = replay_from(fold, std::slice::from_ref(e));
            while let Some(s) = pending_snapshots.next_if(|s| s.seq <= seq) {
                if s.seq != seq || s.fold() != fold || s.at != e.at {
                    problems.push(format!(
                        "snapshot at event {} says {:?} at {}, the events say {fold:?} at {} (event {seq})",
                        s.seq,
                        s.fold(),
                        s.at,
                        e.at
                    ));
                }
            }
        }
        if (page.len() as i64) < PAGE {
            break;
        }
    }
    for s in pending_snapshots {
        problems.push(format!("snapshot at event {} has no such event", s.seq));
    }
    let stored_fold = (stored.posted, stored.held, stored.pending_credit);
    if stored_fold != fold {
        problems.push(format!(
            "stored (posted, held, pending credit) {stored_fold:?}, events fold to {fold:?}"
        ));
    }
    if stored.last_seq != seq {
        problems.push(format!(
            "stored last_seq {}, last event {seq}",
            stored.last_seq
        ));
    }
    Ok(ReplayedAccount {
        account_id: id,
        stored,
        replayed: fold,
        events: count,
        snapshots: snapshots.len() as u64,
        problems,
    })
}
