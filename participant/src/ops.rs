//! What operators and orchestrators ask of a participant besides its
//! internal API: `/livez` (the process serves HTTP), `/readyz` (it can
//! serve: its Postgres answers and a partition map is loaded) and
//! `/metrics` (Prometheus text format).

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::json;
use wallet_shared::metrics::{self, Readiness};

use crate::app::App;
use crate::store::{Store, Vitals};

/// Longest a readiness check or a scrape waits for Postgres.
const DB_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn livez() -> Json<serde_json::Value> {
    Json(json!({"status": "live"}))
}

pub async fn readyz<S: Store>(State(app): State<App<S>>) -> Response {
    let mut readiness = Readiness::default();
    let db = vitals(&app.store).await;
    readiness.check(
        "postgres",
        db.map(|v| json!({"open_records": v.open_records, "prepared_legs": v.prepared_legs})),
    );
    // The map as this node holds it: a participant keeps serving the
    // revisions it knows while etcd is away (requests name their revision;
    // a newer one than ours fails on its own), so etcd is not a condition.
    let map = app.map.current();
    readiness.check(
        "map",
        if map.owners.is_empty() {
            Err("no partition map".into())
        } else {
            Ok(json!({"revision": map.revision, "age_seconds": app.map.age().as_secs_f64()}))
        },
    );
    let (status, mut body) = readiness.reply();
    body["node_id"] = json!(&*app.node_id);
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        Json(body),
    )
        .into_response()
}

pub async fn metrics<S: Store>(State(app): State<App<S>>) -> Response {
    metrics::record_map(&app.map);
    match vitals(&app.store).await {
        Ok(v) => record(&v),
        Err(_) => ::metrics::gauge!("wallet_db_up").set(0.0),
    }
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(),
    )
        .into_response()
}

async fn vitals<S: Store>(store: &S) -> Result<Vitals, String> {
    match tokio::time::timeout(DB_TIMEOUT, store.vitals()).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("postgres: {e}")),
        Err(_) => Err(format!("postgres did not answer within {DB_TIMEOUT:?}")),
    }
}

fn record(v: &Vitals) {
    let now = Utc::now();
    let age = |t: Option<DateTime<Utc>>| {
        t.map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
    };
    ::metrics::gauge!("wallet_db_up").set(1.0);
    ::metrics::gauge!("wallet_in_doubt_transfers").set(v.open_records as f64);
    ::metrics::gauge!("wallet_in_doubt_oldest_age_seconds").set(age(v.oldest_record));
    ::metrics::gauge!("wallet_prepared_legs").set(v.prepared_legs as f64);
    ::metrics::gauge!("wallet_prepared_leg_oldest_age_seconds").set(age(v.oldest_leg));
    ::metrics::gauge!("wallet_feed_head_position").set(v.feed_head as f64);
    ::metrics::gauge!("wallet_feed_pruned_through_position").set(v.feed_pruned_through as f64);
    // Entries the slowest registered consumer holds in the outbox.
    ::metrics::gauge!("wallet_feed_slowest_consumer_lag").set(
        v.feed_slowest_consumer
            .map_or(0.0, |p| (v.feed_head - p) as f64),
    );
    if let Some(pool) = v.pool {
        ::metrics::gauge!("wallet_db_pool_connections", "state" => "in_use").set(pool.in_use);
        ::metrics::gauge!("wallet_db_pool_connections", "state" => "idle").set(pool.idle);
        ::metrics::gauge!("wallet_db_pool_max_connections").set(pool.max);
        ::metrics::gauge!("wallet_db_pool_waiting").set(pool.waiting);
    }
}
