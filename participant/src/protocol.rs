//! The transfer protocol's routes and the writes of one account: begin,
//! decide, complete, execute, prepare/commit/abort of legs, recovery's scan,
//! opening accounts, deposits and withdrawals. Each admits the request
//! (map revision, fences), then runs the pure rules of `decisions`, `legs`
//! and `movements` in one local transaction of the store.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use wallet_shared::protocol::*;
use wallet_shared::{routes, ErrorCode, PartitionId, Rejection, TransactionId};

use crate::app::App;
use crate::error::ApiResult;
use crate::fence::Work;
use crate::legs::Finish;
use crate::store::{Durability, Store};
use crate::{decisions, legs, movements};

/// This module's routes; `app::router` mounts them.
pub(crate) fn routes<S: Store>() -> Router<App<S>> {
    Router::new()
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
}

async fn begin<S: Store>(
    State(app): State<App<S>>,
    Json(req): Json<Routed<BeginRequest>>,
) -> ApiResult<Json<BeginReply>> {
    // Each item's span, in its own trace (wallet_shared::traces).
    let _traced = wallet_shared::traces::item_spans("begin", &req.traces);
    let mut items = req.body.transfers;
    let pass = app
        .admit(
            req.map_revision,
            Work::New,
            items.iter().map(|b| b.partition),
        )
        .await?;
    for b in &mut items {
        b.prepare = app.takes_along(&pass, Work::New, b.prepare.take());
    }
    let results = app
        .store
        .batch(
            "begin",
            &items,
            Durability::Flushed,
            |b| decisions::keys_with(b.spec.transaction_id, b.prepare.as_ref()),
            |w, b| decisions::begin_and_prepare(w, b, b.prepare.as_ref()),
        )
        .await?;
    Ok(Json(BeginReply { results }))
}

async fn decide<S: Store>(
    State(app): State<App<S>>,
    Json(req): Json<Routed<DecideRequest>>,
) -> ApiResult<Json<DecideReply>> {
    // Each item's span, in its own trace (wallet_shared::traces).
    let _traced = wallet_shared::traces::item_spans("decide", &req.traces);
    let mut items = req.body.decisions;
    let pass = app
        .admit(
            req.map_revision,
            Work::Finish,
            items.iter().map(|d| d.partition),
        )
        .await?;
    let along = items.iter().any(|d| d.apply.is_some());
    for d in &mut items {
        d.apply = app.takes_along(&pass, Work::Finish, d.apply.take());
    }
    let results = app
        .store
        .batch(
            "decide",
            &items,
            Durability::Flushed,
            |d| decisions::keys_with(d.transaction_id, d.apply.as_ref()),
            |w, d| decisions::decide_and_apply(w, d, d.apply.as_ref()),
        )
        .await?;
    let (records, applied) = results.into_iter().unzip();
    Ok(Json(DecideReply {
        records,
        applied: if along { applied } else { Vec::new() },
    }))
}

async fn complete<S: Store>(
    State(app): State<App<S>>,
    Json(req): Json<Routed<CompleteRequest>>,
) -> ApiResult<StatusCode> {
    // Each item's span, in its own trace (wallet_shared::traces).
    let _traced = wallet_shared::traces::item_spans("complete", &req.traces);
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
            Durability::Redo,
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
    // Each item's span, in its own trace (wallet_shared::traces).
    let _traced = wallet_shared::traces::item_spans("execute", &req.traces);
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
            Durability::Flushed,
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
    // Each item's span, in its own trace (wallet_shared::traces).
    let _traced = wallet_shared::traces::item_spans("prepare", &req.traces);
    let items = req.body.legs;
    let _pass = app.admit_legs(req.map_revision, Work::New, &items).await?;
    let votes = app
        .store
        .batch(
            "prepare",
            &items,
            Durability::Flushed,
            |l| legs::keys(std::slice::from_ref(l)),
            legs::prepare,
        )
        .await?;
    Ok(Json(PrepareReply { votes }))
}

async fn finish<S: Store>(
    app: App<S>,
    req: Routed<LegsRequest>,
    how: Finish,
) -> ApiResult<Json<LegsReply>> {
    let lane = match how {
        Finish::Commit => "commit",
        Finish::Abort => "abort",
    };
    let _traced = wallet_shared::traces::item_spans(lane, &req.traces);
    let items = req.body.legs;
    let _pass = app
        .admit_legs(req.map_revision, Work::Finish, &items)
        .await?;
    let keys = |l: &Leg| legs::keys(std::slice::from_ref(l));
    let states = match how {
        // Phase two: the decision is on disk already.
        Finish::Commit => app
            .store
            .batch("commit", &items, Durability::Redo, keys, |w, l| {
                legs::finish(w, l, Finish::Commit)
            }),
        Finish::Abort => app
            .store
            .batch("abort", &items, Durability::Redo, keys, |w, l| {
                legs::finish(w, l, Finish::Abort)
            }),
    }
    .await?;
    Ok(Json(LegsReply { states }))
}

async fn commit<S: Store>(
    State(app): State<App<S>>,
    Json(req): Json<Routed<LegsRequest>>,
) -> ApiResult<Json<LegsReply>> {
    finish(app, req, Finish::Commit).await
}

async fn abort<S: Store>(
    State(app): State<App<S>>,
    Json(req): Json<Routed<LegsRequest>>,
) -> ApiResult<Json<LegsReply>> {
    finish(app, req, Finish::Abort).await
}

#[derive(Deserialize)]
struct UnresolvedQuery {
    grace_ms: u64,
    #[serde(default = "default_limit")]
    limit: i64,
}

pub(crate) fn default_limit() -> i64 {
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
