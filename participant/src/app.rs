//! The participant's internal HTTP API (`/internal/v1/...`), used only by
//! coordinators. Every request names the partition-map revision it was
//! routed with; [`App::fence`] refuses partitions this node does not own.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use wallet_shared::admin::{
    AuditRequest, InDoubt, InDoubtRequest, NodeAudit, NodeLegs, NodePartitions, OpenTransfer,
};
use wallet_shared::protocol::*;
use wallet_shared::routes;
use wallet_shared::{AccountId, ErrorCode, MapHandle, PartitionId, Rejection, TransactionId};

use crate::error::ApiResult;
use crate::fence::{self, Fences, Work};
use crate::store::Store;
use crate::{decisions, ledger, legs, movements};

#[derive(Clone)]
pub struct App<S> {
    /// This node's id in the partition map.
    pub node_id: Arc<str>,
    pub store: S,
    /// Current partition map, followed from etcd.
    pub map: MapHandle,
    /// Partitions moving, or moved, away from this node.
    pub fences: Fences,
}

/// A request's pass: while it is held, no fence can be set, so hold it until
/// the request's local transaction is over.
pub type Admitted = tokio::sync::OwnedRwLockReadGuard<crate::fence::FenceMap>;

impl<S: Store> App<S> {
    /// Admits `work` on `partitions` if no fence forbids it and this node
    /// owns every one of them at (at least) the request's map revision.
    pub async fn admit(
        &self,
        map_revision: i64,
        work: Work,
        partitions: impl IntoIterator<Item = PartitionId>,
    ) -> ApiResult<Admitted> {
        let partitions: Vec<PartitionId> = partitions.into_iter().collect();
        let pass = self.fences.read().await;
        fence::check(&pass, work, partitions.iter().copied())?;
        let map = self.map.at_least(map_revision).await.map_err(|e| {
            Rejection::new(
                ErrorCode::Unavailable,
                format!("cannot read the partition map: {e}"),
            )
        })?;
        for p in partitions {
            if map.owner(p).map(|o| o.as_str()) != Some(&*self.node_id) {
                return Err(Rejection::new(
                    ErrorCode::WrongPartitionOwner,
                    format!(
                        "node {} does not own partition {p} at map revision {}",
                        self.node_id, map.revision
                    ),
                )
                .into());
            }
        }
        Ok(pass)
    }

    /// Every leg in its account's partition, and every partition ours.
    async fn admit_legs(&self, map_revision: i64, work: Work, legs: &[Leg]) -> ApiResult<Admitted> {
        for leg in legs {
            self.check_partition(&leg.account, leg.partition)?;
        }
        self.admit(map_revision, work, legs.iter().map(|l| l.partition))
            .await
    }

    /// A leg's partition must be its account's: guards against a caller
    /// with another partition count.
    fn check_partition(&self, account: &AccountId, partition: PartitionId) -> ApiResult<()> {
        let expected = self.map.current().account_partition(account);
        if expected != partition {
            return Err(Rejection::new(
                ErrorCode::InvalidRequest,
                format!("account {account} is in partition {expected}, not {partition}"),
            )
            .into());
        }
        Ok(())
    }
}

pub fn router<S: Store>(app: App<S>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route(routes::BEGIN.pattern(), post(begin::<S>))
        .route(routes::DECIDE.pattern(), post(decide::<S>))
        .route(routes::COMPLETE.pattern(), post(complete::<S>))
        .route(routes::EXECUTE.pattern(), post(execute::<S>))
        .route(routes::TRANSFER.pattern(), get(transfer::<S>))
        .route(routes::PREPARE.pattern(), post(prepare::<S>))
        .route(routes::COMMIT.pattern(), post(commit::<S>))
        .route(routes::ABORT.pattern(), post(abort::<S>))
        .route(routes::UNRESOLVED.pattern(), get(unresolved::<S>))
        .route(routes::ACCOUNTS.pattern(), post(open_account::<S>))
        .route(routes::MOVEMENTS.pattern(), post(movement::<S>))
        .route(routes::BALANCE.pattern(), get(balance::<S>))
        .route(routes::EVENTS.pattern(), get(events::<S>))
        .route(routes::FEED.pattern(), get(feed::<S>))
        .route(routes::REPLAY.pattern(), get(replay_check::<S>))
        .route(routes::PARTITIONS.pattern(), get(partitions::<S>))
        .route(routes::IN_DOUBT.pattern(), post(in_doubt::<S>))
        .route(routes::LEGS_OF.pattern(), get(legs_of::<S>))
        .route(routes::AUDIT.pattern(), post(audit::<S>))
        .with_state(app)
        .layer(axum::middleware::from_fn(run_to_completion))
}

/// A request, once started, runs to the end in its own task, even if the
/// caller hangs up: dropping it halfway could cancel a database transaction
/// between two statements (sqlx then hands the connection back mid-BEGIN).
pub async fn run_to_completion(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::spawn(next.run(req)).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "request task failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn health<S: Store>(State(app): State<App<S>>) -> Json<serde_json::Value> {
    Json(
        serde_json::json!({ "node_id": &*app.node_id, "map_revision": app.map.current().revision }),
    )
}

async fn begin<S: Store>(
    State(app): State<App<S>>,
    Json(req): Json<Routed<BeginRequest>>,
) -> ApiResult<Json<BeginReply>> {
    let items = req.body.transfers;
    let _pass = app
        .admit(
            req.map_revision,
            Work::New,
            items.iter().map(|b| b.partition),
        )
        .await?;
    let results = app
        .store
        .batch(
            "begin",
            &items,
            |b| decisions::keys([b.spec.transaction_id]),
            decisions::begin,
        )
        .await?;
    Ok(Json(BeginReply { results }))
}

async fn decide<S: Store>(
    State(app): State<App<S>>,
    Json(req): Json<Routed<DecideRequest>>,
) -> ApiResult<Json<DecideReply>> {
    let items = req.body.decisions;
    let _pass = app
        .admit(
            req.map_revision,
            Work::Finish,
            items.iter().map(|d| d.partition),
        )
        .await?;
    let records = app
        .store
        .batch(
            "decide",
            &items,
            |d| decisions::keys([d.transaction_id]),
            |w, d| decisions::decide(w, d.transaction_id, &d.decision),
        )
        .await?;
    Ok(Json(DecideReply { records }))
}

async fn complete<S: Store>(
    State(app): State<App<S>>,
    Json(req): Json<Routed<CompleteRequest>>,
) -> ApiResult<StatusCode> {
    let items = req.body.transfers;
    let _pass = app
        .admit(
            req.map_revision,
            Work::Finish,
            items.iter().map(|t| t.partition),
        )
        .await?;
    app.store
        .batch(
            "complete",
            &items,
            |t| decisions::keys([t.transaction_id]),
            |w, t| {
                decisions::complete(w, t.transaction_id);
                Ok(())
            },
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn execute<S: Store>(
    State(app): State<App<S>>,
    Json(req): Json<Routed<ExecuteBatch>>,
) -> ApiResult<Json<ExecuteReply>> {
    let items = req.body.transfers;
    for e in &items {
        for leg in &e.legs {
            app.check_partition(&leg.account, leg.partition)?;
        }
    }
    let _pass = app
        .admit(
            req.map_revision,
            Work::New,
            items
                .iter()
                .flat_map(|e| [e.begin.partition, e.legs[0].partition, e.legs[1].partition]),
        )
        .await?;
    let results = app
        .store
        .batch(
            "execute",
            &items,
            |e| decisions::execute_keys(&e.begin, &e.legs),
            |w, e| decisions::execute(w, &e.begin, &e.legs),
        )
        .await?;
    Ok(Json(ExecuteReply { results }))
}

#[derive(Deserialize)]
struct Routing {
    map_revision: i64,
    partition: PartitionId,
}

async fn transfer<S: Store>(
    State(app): State<App<S>>,
    Path(id): Path<String>,
    Query(q): Query<Routing>,
) -> ApiResult<Json<TransferRecord>> {
    let id = TransactionId::parse(&id)?;
    let _pass = app.admit(q.map_revision, Work::Read, [q.partition]).await?;
    match app.store.lookup(id).await? {
        Some(record) => Ok(Json(record)),
        None => {
            Err(Rejection::new(ErrorCode::TransferNotFound, format!("no transfer {id}")).into())
        }
    }
}

async fn prepare<S: Store>(
    State(app): State<App<S>>,
    Json(req): Json<Routed<LegsRequest>>,
) -> ApiResult<Json<PrepareReply>> {
    let items = req.body.legs;
    let _pass = app.admit_legs(req.map_revision, Work::New, &items).await?;
    let votes = app
        .store
        .batch(
            "prepare",
            &items,
            |l| legs::keys(std::slice::from_ref(l)),
            legs::prepare,
        )
        .await?;
    Ok(Json(PrepareReply { votes }))
}

async fn finish<S: Store>(
    app: App<S>,
    req: Routed<LegsRequest>,
    commit: bool,
) -> ApiResult<Json<LegsReply>> {
    let items = req.body.legs;
    let _pass = app
        .admit_legs(req.map_revision, Work::Finish, &items)
        .await?;
    let keys = |l: &Leg| legs::keys(std::slice::from_ref(l));
    let states = if commit {
        app.store
            .batch("commit", &items, keys, |w, l| legs::finish(w, l, true))
            .await?
    } else {
        app.store
            .batch("abort", &items, keys, |w, l| legs::finish(w, l, false))
            .await?
    };
    Ok(Json(LegsReply { states }))
}

async fn commit<S: Store>(
    State(app): State<App<S>>,
    Json(req): Json<Routed<LegsRequest>>,
) -> ApiResult<Json<LegsReply>> {
    finish(app, req, true).await
}

async fn abort<S: Store>(
    State(app): State<App<S>>,
    Json(req): Json<Routed<LegsRequest>>,
) -> ApiResult<Json<LegsReply>> {
    finish(app, req, false).await
}

#[derive(Deserialize)]
struct UnresolvedQuery {
    grace_ms: u64,
    #[serde(default = "default_limit")]
    limit: i64,
}

fn default_limit() -> i64 {
    200
}

async fn unresolved<S: Store>(
    State(app): State<App<S>>,
    Query(q): Query<UnresolvedQuery>,
) -> ApiResult<Json<Unresolved>> {
    let limit = q.limit.clamp(1, 10_000);
    let grace = std::time::Duration::from_millis(q.grace_ms);
    let (transfers, stale) = app.store.unresolved(grace, limit).await?;
    Ok(Json(Unresolved {
        transfers: transfers.into_iter().map(|t| t.record).collect(),
        legs: stale.iter().map(legs::as_leg).collect::<Result<_, _>>()?,
    }))
}

async fn open_account<S: Store>(
    State(app): State<App<S>>,
    Json(req): Json<Routed<OpenAccount>>,
) -> ApiResult<(StatusCode, Json<AccountBalance>)> {
    app.check_partition(&req.body.account_id, req.body.partition)?;
    let _pass = app
        .admit(req.map_revision, Work::New, [req.body.partition])
        .await?;
    let open = req.body;
    let (created, balance) = app
        .store
        .transaction("open account", movements::open_keys(&open), |w| {
            movements::open(w, &open)
        })
        .await??;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(balance)))
}

async fn movement<S: Store>(
    State(app): State<App<S>>,
    Json(req): Json<Routed<MovementRequest>>,
) -> ApiResult<Json<AccountBalance>> {
    let m = &req.body.movement;
    app.check_partition(&m.account_id, m.partition)?;
    let mut partitions = vec![m.partition];
    if let Some(claim) = &req.body.claim {
        if claim.spec.transaction_id != m.transaction_id || claim.fingerprint() != m.fingerprint() {
            return Err(Rejection::new(
                ErrorCode::InvalidRequest,
                "the claim does not name this movement",
            )
            .into());
        }
        partitions.push(claim.partition);
    }
    let _pass = app.admit(req.map_revision, Work::New, partitions).await?;
    let req = req.body;
    let balance = app
        .store
        .transaction("movement", movements::request_keys(&req), |w| {
            movements::apply_request(w, &req)
        })
        .await??;
    Ok(Json(balance))
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
        historical_balance(&app.store, current, as_of, q.snapshots).await?,
    ))
}

/// The balance at `as_of`, rebuilt from the event log: the newest snapshot
/// at or before `as_of` (if `use_snapshots`), then the fold of the events
/// after it that are at or before `as_of`. An account's event times never go
/// down, so those events are the ones between that snapshot and the next:
/// at most `snapshot_every` of them.
pub async fn historical_balance<S: Store>(
    store: &S,
    current: AccountBalance,
    as_of: chrono::DateTime<chrono::Utc>,
    use_snapshots: bool,
) -> ApiResult<HistoricalBalance> {
    let id = current.account_id.clone();
    let (snapshot, next) = if use_snapshots {
        store.snapshot_at(&id, as_of).await?
    } else {
        (None, None)
    };
    let start_seq = snapshot.as_ref().map_or(0, |s| s.seq);
    let limit = next.map_or(i64::MAX, |n| n - start_seq);
    let events = store
        .events(&id, start_seq, limit, Some(as_of), &[])
        .await?;
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
    #[serde(default = "default_limit")]
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
    let currency = app
        .store
        .account(&id)
        .await?
        .ok_or_else(|| ledger::not_found(&id))?
        .currency;
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
        currency,
        events,
        next_after,
    }))
}

#[derive(Deserialize)]
struct FeedQuery {
    #[serde(default)]
    after: i64,
    #[serde(default = "default_limit")]
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

/// What this node holds, per partition (for `walletctl partitions show`).
async fn partitions<S: Store>(State(app): State<App<S>>) -> ApiResult<Json<NodePartitions>> {
    let fences = app.fences.read().await.clone();
    Ok(Json(NodePartitions {
        node_id: app.node_id.to_string(),
        map_revision: app.map.current().revision,
        partitions: app.store.partition_stats().await?,
        fences,
    }))
}

/// Everything unfinished in the given partitions (`walletctl tx pending`).
async fn in_doubt<S: Store>(
    State(app): State<App<S>>,
    Json(req): Json<InDoubtRequest>,
) -> ApiResult<Json<InDoubt>> {
    let (transfers, legs) = app
        .store
        .in_doubt(&req.partitions, req.limit.clamp(1, 10_000))
        .await?;
    Ok(Json(InDoubt {
        transfers: transfers
            .into_iter()
            .map(|t| OpenTransfer {
                record: t.record,
                partition: t.partition,
                lease_until: t.lease_until,
            })
            .collect(),
        legs: legs.iter().map(legs::as_stored).collect(),
    }))
}

/// Every leg of one transaction id stored here (`walletctl tx show`).
async fn legs_of<S: Store>(
    State(app): State<App<S>>,
    Path(id): Path<String>,
) -> ApiResult<Json<NodeLegs>> {
    let id = TransactionId::parse(&id)?;
    let legs = app.store.legs_of(id).await?;
    Ok(Json(NodeLegs {
        node_id: app.node_id.to_string(),
        legs: legs.iter().map(legs::as_stored).collect(),
    }))
}

/// The at-rest checks of `walletctl audit`, over the partitions named.
async fn audit<S: Store>(
    State(app): State<App<S>>,
    Json(req): Json<AuditRequest>,
) -> ApiResult<Json<NodeAudit>> {
    let mut audit = app.store.audit(&req).await?;
    audit.node_id = app.node_id.to_string();
    for f in &mut audit.findings {
        f.node = Some(app.node_id.to_string());
    }
    Ok(Json(audit))
}
