//! What operators and orchestrators ask of a coordinator besides the API:
//! `/livez` (the process serves HTTP), `/readyz` (it can serve transfers:
//! etcd answers and a partition map is loaded; unready while etcd cannot be
//! reached) and `/metrics` (Prometheus text format).

use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use wallet_shared::metrics::{self, Readiness};

use crate::http::reply;
use crate::transfer::Coordinator;

/// Longest a readiness check waits for etcd.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn livez() -> Json<serde_json::Value> {
    Json(json!({"status": "live"}))
}

pub async fn readyz(State(c): State<Coordinator>) -> Response {
    let mut readiness = Readiness::default();
    readiness.check(
        "etcd_map",
        metrics::check_map(&c.participants.map, READY_TIMEOUT).await,
    );
    let (status, body) = readiness.reply();
    reply(status, body)
}

pub async fn metrics(State(c): State<Coordinator>) -> Response {
    metrics::record_map(&c.participants.map);
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(),
    )
        .into_response()
}
