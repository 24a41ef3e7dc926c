//! The participant's internal HTTP API (`/internal/v1/...`), used only by
//! coordinators. Every request names the partition-map revision it was
//! routed with; [`App::fence`] refuses partitions this node does not own.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use sqlx::PgPool;
use wallet_shared::protocol::*;
use wallet_shared::{AccountId, ErrorCode, MapHandle, PartitionId, Rejection, TransactionId};

use crate::db::{batch, transaction};
use crate::error::{ApiResult, StoreError};
use crate::{decisions, ledger, legs, movements};

#[derive(Clone)]
pub struct App {
    /// This node's id in the partition map.
    pub node_id: Arc<str>,
    pub pool: PgPool,
    /// Current partition map, followed from etcd.
    pub map: MapHandle,
}

impl App {
    /// Refuses unless this node owns every partition at (at least) the
    /// request's map revision.
    async fn fence(
        &self,
        map_revision: i64,
        partitions: impl IntoIterator<Item = PartitionId>,
    ) -> ApiResult<()> {
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
        Ok(())
    }

    /// Every leg in its account's partition, and every partition ours.
    async fn check_legs(&self, map_revision: i64, legs: &[Leg]) -> ApiResult<()> {
        for leg in legs {
            self.check_partition(&leg.account, leg.partition)?;
        }
        self.fence(map_revision, legs.iter().map(|l| l.partition))
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

pub fn router(app: App) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/internal/v1/transfers/begin", post(begin))
        .route("/internal/v1/transfers/decide", post(decide))
        .route("/internal/v1/transfers/complete", post(complete))
        .route("/internal/v1/transfers/execute", post(execute))
        .route("/internal/v1/transfers/{id}", get(transfer))
        .route("/internal/v1/legs/prepare", post(prepare))
        .route("/internal/v1/legs/commit", post(commit))
        .route("/internal/v1/legs/abort", post(abort))
        .route("/internal/v1/unresolved", get(unresolved))
        .route("/internal/v1/accounts", post(open_account))
        .route("/internal/v1/movements", post(movement))
        .route("/internal/v1/accounts/{id}/balance", get(balance))
        .route("/internal/v1/accounts/{id}/events", get(events))
        .with_state(app)
}

async fn health(State(app): State<App>) -> Json<serde_json::Value> {
    Json(
        serde_json::json!({ "node_id": &*app.node_id, "map_revision": app.map.current().revision }),
    )
}

async fn begin(
    State(app): State<App>,
    Json(req): Json<Routed<BeginRequest>>,
) -> ApiResult<Json<BeginReply>> {
    app.fence(
        req.map_revision,
        req.body.transfers.iter().map(|b| b.partition),
    )
    .await?;
    let results = batch(
        &app.pool,
        "begin",
        req.body.transfers,
        |b| b.spec.transaction_id,
        |conn, b| Box::pin(decisions::begin(conn, b)),
    )
    .await?;
    Ok(Json(BeginReply { results }))
}

async fn decide(
    State(app): State<App>,
    Json(req): Json<Routed<DecideRequest>>,
) -> ApiResult<Json<DecideReply>> {
    app.fence(
        req.map_revision,
        req.body.decisions.iter().map(|d| d.partition),
    )
    .await?;
    let records = batch(
        &app.pool,
        "decide",
        req.body.decisions,
        |d| d.transaction_id,
        |conn, d| Box::pin(decisions::decide(conn, d.transaction_id, &d.decision)),
    )
    .await?;
    Ok(Json(DecideReply { records }))
}

async fn complete(
    State(app): State<App>,
    Json(req): Json<Routed<CompleteRequest>>,
) -> ApiResult<StatusCode> {
    app.fence(
        req.map_revision,
        req.body.transfers.iter().map(|t| t.partition),
    )
    .await?;
    let ids: Vec<uuid::Uuid> = req
        .body
        .transfers
        .iter()
        .map(|t| t.transaction_id.0)
        .collect();
    transaction(&app.pool, "complete", |conn| {
        let ids = ids.clone();
        Box::pin(async move { decisions::complete(conn, &ids).await })
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn execute(
    State(app): State<App>,
    Json(req): Json<Routed<ExecuteRequest>>,
) -> ApiResult<Json<BeginResult>> {
    let ExecuteRequest { begin, legs } = req.body;
    for leg in &legs {
        app.check_partition(&leg.account, leg.partition)?;
    }
    app.fence(
        req.map_revision,
        [begin.partition, legs[0].partition, legs[1].partition],
    )
    .await?;
    let result = transaction(&app.pool, "execute", |conn| {
        let (begin, legs) = (begin.clone(), legs.clone());
        Box::pin(async move { decisions::execute(conn, &begin, &legs).await })
    })
    .await?;
    Ok(Json(result))
}

#[derive(Deserialize)]
struct Routing {
    map_revision: i64,
    partition: PartitionId,
}

async fn transfer(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<Routing>,
) -> ApiResult<Json<TransferRecord>> {
    let id = TransactionId::parse(&id)?;
    app.fence(q.map_revision, [q.partition]).await?;
    let mut conn = app.pool.acquire().await.map_err(StoreError::from)?;
    match decisions::lookup(&mut conn, id).await? {
        Some(record) => Ok(Json(record)),
        None => {
            Err(Rejection::new(ErrorCode::TransferNotFound, format!("no transfer {id}")).into())
        }
    }
}

/// Legs go in account order, so concurrent batches lock accounts in one order.
fn leg_order(leg: &Leg) -> (AccountId, &'static str) {
    (leg.account.clone(), leg.role.as_str())
}

async fn prepare(
    State(app): State<App>,
    Json(req): Json<Routed<LegsRequest>>,
) -> ApiResult<Json<PrepareReply>> {
    app.check_legs(req.map_revision, &req.body.legs).await?;
    let votes = batch(
        &app.pool,
        "prepare",
        req.body.legs,
        leg_order,
        |conn, leg| Box::pin(legs::prepare(conn, leg)),
    )
    .await?;
    Ok(Json(PrepareReply { votes }))
}

async fn finish(app: App, req: Routed<LegsRequest>, commit: bool) -> ApiResult<Json<LegsReply>> {
    app.check_legs(req.map_revision, &req.body.legs).await?;
    let states = if commit {
        batch(
            &app.pool,
            "commit",
            req.body.legs,
            leg_order,
            |conn, leg| Box::pin(legs::finish(conn, leg, true)),
        )
        .await?
    } else {
        batch(&app.pool, "abort", req.body.legs, leg_order, |conn, leg| {
            Box::pin(legs::finish(conn, leg, false))
        })
        .await?
    };
    Ok(Json(LegsReply { states }))
}

async fn commit(
    State(app): State<App>,
    Json(req): Json<Routed<LegsRequest>>,
) -> ApiResult<Json<LegsReply>> {
    finish(app, req, true).await
}

async fn abort(
    State(app): State<App>,
    Json(req): Json<Routed<LegsRequest>>,
) -> ApiResult<Json<LegsReply>> {
    finish(app, req, false).await
}

#[derive(Deserialize)]
struct UnresolvedQuery {
    grace_ms: i64,
    #[serde(default = "default_limit")]
    limit: i64,
}

fn default_limit() -> i64 {
    200
}

async fn unresolved(
    State(app): State<App>,
    Query(q): Query<UnresolvedQuery>,
) -> ApiResult<Json<Unresolved>> {
    let mut conn = app.pool.acquire().await.map_err(StoreError::from)?;
    let limit = q.limit.clamp(1, 10_000);
    let transfers = decisions::unresolved(&mut conn, q.grace_ms, limit).await?;
    let legs = legs::stale_prepared(&mut conn, q.grace_ms, limit).await?;
    Ok(Json(Unresolved { transfers, legs }))
}

async fn open_account(
    State(app): State<App>,
    Json(req): Json<Routed<OpenAccount>>,
) -> ApiResult<(StatusCode, Json<AccountBalance>)> {
    app.check_partition(&req.body.account_id, req.body.partition)?;
    app.fence(req.map_revision, [req.body.partition]).await?;
    let open = req.body;
    let (created, balance) = transaction(&app.pool, "open account", |conn| {
        let open = open.clone();
        Box::pin(async move {
            let created = match movements::open(conn, &open).await? {
                Ok(created) => created,
                Err(rejection) => return Ok(Err(rejection)),
            };
            let balance = ledger::balance(conn, &open.account_id).await?;
            Ok(Ok((created, balance)))
        })
    })
    .await??;
    let balance = balance.ok_or_else(|| StoreError::corrupt("account vanished after opening"))?;
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(balance),
    ))
}

async fn movement(
    State(app): State<App>,
    Json(req): Json<Routed<Movement>>,
) -> ApiResult<Json<AccountBalance>> {
    app.check_partition(&req.body.account_id, req.body.partition)?;
    app.fence(req.map_revision, [req.body.partition]).await?;
    let m = req.body;
    let balance = transaction(&app.pool, "movement", |conn| {
        let m = m.clone();
        Box::pin(async move { movements::apply(conn, &m).await })
    })
    .await??;
    Ok(Json(balance))
}

#[derive(Deserialize)]
struct BalanceQuery {
    map_revision: i64,
    partition: PartitionId,
    as_of: Option<chrono::DateTime<chrono::Utc>>,
}

async fn balance(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<BalanceQuery>,
) -> ApiResult<Json<HistoricalBalance>> {
    let id = AccountId::parse(id)?;
    app.check_partition(&id, q.partition)?;
    app.fence(q.map_revision, [q.partition]).await?;
    let mut conn = app.pool.acquire().await.map_err(StoreError::from)?;
    let current = ledger::balance(&mut conn, &id)
        .await?
        .ok_or_else(|| ledger::not_found(&id))?;
    let Some(as_of) = q.as_of else {
        return Ok(Json(HistoricalBalance {
            balance: current,
            events_replayed: 0,
        }));
    };
    // Rebuilt from the event log: the fold of every event up to `as_of`.
    let events = ledger::events(&mut conn, &id, 0, i64::MAX, Some(as_of)).await?;
    let Some(last) = events.last() else {
        return Err(Rejection::new(
            ErrorCode::AccountNotFound,
            format!("account {id} did not exist at {as_of}"),
        )
        .into());
    };
    let (posted, held, pending_credit) = replay(&events);
    Ok(Json(HistoricalBalance {
        balance: AccountBalance {
            account_id: id,
            currency: current.currency,
            posted,
            held,
            pending_credit,
            last_seq: last.seq,
        },
        events_replayed: events.len() as u64,
    }))
}

#[derive(Deserialize)]
struct EventsQuery {
    map_revision: i64,
    partition: PartitionId,
    #[serde(default)]
    after: i64,
    #[serde(default = "default_limit")]
    limit: i64,
}

async fn events(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<EventsPage>> {
    let id = AccountId::parse(id)?;
    app.check_partition(&id, q.partition)?;
    app.fence(q.map_revision, [q.partition]).await?;
    let mut conn = app.pool.acquire().await.map_err(StoreError::from)?;
    let currency = ledger::balance(&mut conn, &id)
        .await?
        .ok_or_else(|| ledger::not_found(&id))?
        .currency;
    let limit = q.limit.clamp(1, 1000);
    let mut events = ledger::events(&mut conn, &id, q.after, limit + 1, None).await?;
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
