//! The coordinator's admin endpoints, for `walletctl` (under
//! `/internal/v1/`, next to the public API on the same listener): an API
//! key with the `admin` scope only, and every call is logged with the key
//! and tenant that made it (`auth::authenticate`).

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use wallet_shared::admin::{ResolveReply, ResolveRequest};
use wallet_shared::{routes, TransactionId};

use crate::auth::{scope, Needs};
use crate::http::{ApiError, ApiJson};
use crate::resolver;
use crate::transfer::Coordinator;

pub fn routes() -> Router<Coordinator> {
    Router::new().route(routes::RESOLVE.pattern(), post(resolve))
}

/// `walletctl tx resolve`: one transfer driven to its end now.
async fn resolve(
    State(c): State<Coordinator>,
    _admin: Needs<scope::Admin>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ResolveRequest>,
) -> Result<Json<ResolveReply>, ApiError> {
    let id = TransactionId::parse(&id)?;
    let span = tracing::info_span!("resolve", transaction_id = %id, force = req.force);
    let reply =
        tracing::Instrument::instrument(resolver::resolve_one(&c, id, req.force), span).await?;
    Ok(Json(reply))
}
