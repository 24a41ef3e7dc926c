//! The operator's reads for `walletctl`: what this node holds per
//! partition, what is unfinished, every leg of one transaction, and the
//! at-rest audit.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use wallet_shared::admin::{
    AuditRequest, InDoubt, InDoubtRequest, NodeAudit, NodeLegs, NodePartitions, OpenTransfer,
};
use wallet_shared::{routes, TransactionId};

use crate::app::App;
use crate::error::ApiResult;
use crate::legs;
use crate::store::Store;

/// This module's routes; `app::router` mounts them.
pub(crate) fn routes<S: Store>() -> Router<App<S>> {
    Router::new()
        .route(routes::PARTITIONS.pattern(), get(partitions::<S>))
        .route(routes::IN_DOUBT.pattern(), post(in_doubt::<S>))
        .route(routes::LEGS_OF.pattern(), get(legs_of::<S>))
        .route(routes::AUDIT.pattern(), post(audit::<S>))
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
