//! The participant's internal HTTP API (`/internal/v1/...`): the node's
//! state (`App`), admission of every request, and the router, which mounts
//! the routes of `protocol` (the writes), `reads` and `admin`. Every request
//! names the partition-map revision it was routed with; [`App::admit`]
//! refuses partitions this node does not own, or is moving away.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use wallet_shared::protocol::*;
use wallet_shared::{AccountId, ErrorCode, MapHandle, PartitionId, Rejection};

use crate::error::ApiResult;
use crate::fence::{self, Fences, Work};
use crate::store::Store;
use crate::{admin, protocol, reads};

#[derive(Clone)]
pub struct App<S> {
    /// This node's id in the partition map.
    pub node_id: Arc<str>,
    pub store: S,
    /// Current partition map, followed from etcd.
    pub map: MapHandle,
    /// Partitions moving, or moved, away from this node.
    pub fences: Fences,
    /// The most events one balance fold may read (`max_fold_events`).
    pub max_fold_events: i64,
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

    /// `leg`, riding along with a request admitted by `pass` for its
    /// decision partition, if it may be worked on here too: its partition
    /// is its account's, no fence forbids `work` on it, and this node owns
    /// it (at the newest map, at least the request's revision). `None`
    /// when not: the leg is left out and the coordinator sends it on its
    /// own.
    pub(crate) fn takes_along(&self, pass: &Admitted, work: Work, leg: Option<Leg>) -> Option<Leg> {
        leg.filter(|leg| {
            self.check_partition(&leg.account, leg.partition).is_ok()
                && fence::check(pass, work, [leg.partition]).is_ok()
                && self.map.current().owner(leg.partition).map(|o| o.as_str())
                    == Some(&*self.node_id)
        })
    }

    /// Every leg in its account's partition, and every partition ours.
    pub(crate) async fn admit_legs(
        &self,
        map_revision: i64,
        work: Work,
        legs: &[Leg],
    ) -> ApiResult<Admitted> {
        for leg in legs {
            self.check_partition(&leg.account, leg.partition)?;
        }
        self.admit(map_revision, work, legs.iter().map(|l| l.partition))
            .await
    }

    /// A leg's partition must be its account's: guards against a caller
    /// with another partition count.
    pub(crate) fn check_partition(
        &self,
        account: &AccountId,
        partition: PartitionId,
    ) -> ApiResult<()> {
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
        .route("/livez", get(crate::ops::livez))
        .route("/readyz", get(crate::ops::readyz::<S>))
        .route("/metrics", get(crate::ops::metrics::<S>))
        .merge(protocol::routes())
        .merge(reads::routes())
        .merge(admin::routes())
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
    // In the request's span: its log lines carry the request id and trace.
    let work = tracing::Instrument::in_current_span(next.run(req));
    match tokio::spawn(work).await {
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
