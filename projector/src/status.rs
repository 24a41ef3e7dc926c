//! The projector's HTTP side: `/status` (where each feed stands, and the
//! lag) and the read models as JSON, amounts as decimal strings; `/livez`,
//! `/readyz` (its database answers and a partition map is loaded) and
//! `/metrics` (Prometheus text format, the feed lag per node among them).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sqlx::Row;
use wallet_shared::metrics::Readiness;
use wallet_shared::{AccountId, Currency, ErrorCode, MapHandle, Rejection};

use crate::models::Projections;

/// What the routes read: the models, and the map whose nodes are followed.
#[derive(Clone)]
struct Served {
    projections: Projections,
    map: MapHandle,
}

impl axum::extract::FromRef<Served> for Projections {
    fn from_ref(s: &Served) -> Projections {
        s.projections.clone()
    }
}

/// Longest a readiness check or a scrape waits for the database.
const DB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub fn router(projections: Projections, map: MapHandle) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/livez", get(|| async { Json(json!({"status": "live"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/v1/ledger", get(ledger))
        .route("/v1/accounts/{id}", get(account))
        .route("/v1/rejected_transfers", get(rejected))
        .with_state(Served { projections, map })
}

async fn cursors(p: &Projections) -> Result<Vec<crate::models::Cursor>, String> {
    match tokio::time::timeout(DB_TIMEOUT, p.cursors()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("postgres: {e}")),
        Err(_) => Err(format!("postgres did not answer within {DB_TIMEOUT:?}")),
    }
}

async fn readyz(State(s): State<Served>) -> Response {
    let mut readiness = Readiness::default();
    readiness.check(
        "postgres",
        cursors(&s.projections)
            .await
            .map(|c| json!({"feeds": c.len()})),
    );
    let map = s.map.current();
    readiness.check(
        "map",
        if map.owners.is_empty() {
            Err("no partition map".into())
        } else {
            Ok(json!({"revision": map.revision, "nodes": map.nodes.len()}))
        },
    );
    let (status, body) = readiness.reply();
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        Json(body),
    )
        .into_response()
}

/// The feed gauges per node (`wallet_projector_feed_*`), from the cursors
/// table: what is projected, the head last seen, and the lag between them.
async fn metrics(State(s): State<Served>) -> Response {
    wallet_shared::metrics::record_map(&s.map);
    match cursors(&s.projections).await {
        Ok(cursors) => {
            ::metrics::gauge!("wallet_db_up").set(1.0);
            for c in cursors {
                let node = c.node_id.clone();
                ::metrics::gauge!("wallet_projector_feed_position", "node" => node.clone())
                    .set(c.position as f64);
                ::metrics::gauge!("wallet_projector_feed_head_position", "node" => node.clone())
                    .set(c.head as f64);
                ::metrics::gauge!("wallet_projector_feed_lag_entries", "node" => node)
                    .set(c.lag as f64);
            }
        }
        Err(_) => ::metrics::gauge!("wallet_db_up").set(0.0),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            wallet_shared::metrics::CONTENT_TYPE,
        )],
        wallet_shared::metrics::render(),
    )
        .into_response()
}

struct Error(Rejection);

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "projector database");
        Error(Rejection::new(ErrorCode::Unavailable, e.to_string()))
    }
}

impl From<Rejection> for Error {
    fn from(r: Rejection) -> Self {
        Error(r)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

/// Minor units as a decimal string of the currency, or the raw integer if
/// the code is not one we know.
fn money(currency: &str, minor: i128) -> Value {
    match (Currency::parse(currency), i64::try_from(minor)) {
        (Ok(c), Ok(m)) => json!(c.format(m)),
        _ => json!(minor.to_string()),
    }
}

async fn status(State(p): State<Projections>) -> Result<Json<Value>, Error> {
    let cursors = p.cursors().await?;
    let lag: i64 = cursors.iter().map(|c| c.lag).sum();
    Ok(Json(json!({ "lag": lag, "feeds": cursors })))
}

async fn ledger(State(p): State<Projections>) -> Result<Json<Value>, Error> {
    let rows = p.ledger().await?;
    let out: Vec<Value> = rows
        .iter()
        .map(|(c, r)| {
            json!({
                "currency": c,
                "total": money(c, r.posted),
                "held": money(c, r.held),
                "pending_credit": money(c, r.pending_credit),
                "deposited": money(c, r.deposited),
                "withdrawn": money(c, r.withdrawn),
                "accounts": r.accounts,
                "events": r.events,
            })
        })
        .collect();
    Ok(Json(json!({ "ledger": out })))
}

async fn account(
    State(p): State<Projections>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Error> {
    let id = AccountId::parse(id)?;
    let row = sqlx::query(
        "SELECT currency, posted, held, last_seq, last_activity_at FROM account_view WHERE account_id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(&p.pool)
    .await?
    .ok_or_else(|| {
        Rejection::new(
            ErrorCode::AccountNotFound,
            format!("account {id} is not in the account view (yet)"),
        )
    })?;
    let currency: String = row.try_get("currency")?;
    let posted: i64 = row.try_get("posted")?;
    let held: i64 = row.try_get("held")?;
    Ok(Json(json!({
        "account_id": id,
        "currency": currency,
        "balance": money(&currency, posted.into()),
        "available": money(&currency, (posted - held).into()),
        "last_seq": row.try_get::<i64, _>("last_seq")?,
        "last_activity_at": row.try_get::<chrono::DateTime<chrono::Utc>, _>("last_activity_at")?,
    })))
}

async fn rejected(State(p): State<Projections>) -> Result<Json<Value>, Error> {
    let rows = sqlx::query(
        "SELECT day::text, reason, currency, transfers, amount::text FROM rejected_transfers
         ORDER BY day DESC, reason, currency LIMIT 1000",
    )
    .fetch_all(&p.pool)
    .await?;
    let out = rows
        .iter()
        .map(|r| {
            let currency: String = r.try_get("currency")?;
            let amount: String = r.try_get("amount")?;
            let amount: i128 = amount
                .parse()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            Ok(json!({
                "day": r.try_get::<String, _>("day")?,
                "reason": r.try_get::<String, _>("reason")?,
                "currency": currency,
                "transfers": r.try_get::<i64, _>("transfers")?,
                "amount": money(&currency, amount),
            }))
        })
        .collect::<Result<Vec<Value>, sqlx::Error>>()?;
    Ok(Json(json!({ "rejected_transfers": out })))
}
