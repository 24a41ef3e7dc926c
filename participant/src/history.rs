//! The feed's consumers, and the history a projection is rebuilt from.
//!
//! - `GET/PUT/DELETE /internal/v1/feed/consumers[/{name}]`: a feed reader
//!   (the projector) registers its position here; the pruner
//!   ([`crate::retention`]) drops outbox rows at or below the smallest one.
//! - `GET /internal/v1/history/events` and `.../history/aborted`: what the
//!   feed carried, read from the tables it was written with (the event log,
//!   never pruned; and the aborted transfer records still kept), for the
//!   partitions this node owns. A rebuild reads these instead of the feed
//!   from position 0, so it works after the outbox is pruned.

use axum::extract::{Path, Query, State};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use sqlx::Row;
use wallet_shared::protocol::{
    EventKind, FeedAck, FeedConsumer, FeedConsumers, FeedEntry, FeedKind, HistoryPage,
};
use wallet_shared::{routes, AccountId, Currency, ErrorCode, Rejection, TransactionId};

use crate::app::App;
use crate::error::{ApiResult, StoreError};
use crate::pg::PgStore;

/// The routes, merged into the participant's router by `main`.
pub fn router(app: App<PgStore>) -> Router {
    Router::new()
        .route(routes::FEED_CONSUMERS.pattern(), get(consumers))
        .route(
            routes::FEED_CONSUMER.pattern(),
            put(acknowledge).delete(unregister),
        )
        .route(routes::HISTORY_EVENTS.pattern(), get(events))
        .route(routes::HISTORY_ABORTED.pattern(), get(aborted))
        .with_state(app)
        .layer(axum::middleware::from_fn(crate::app::run_to_completion))
}

/// A consumer's name: 1 to 64 of `a-z0-9._-`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

fn refuse(why: String) -> Rejection {
    Rejection::new(ErrorCode::InvalidRequest, why)
}

async fn state(
    app: &App<PgStore>,
    conn: &mut sqlx::PgConnection,
) -> Result<FeedConsumers, StoreError> {
    let (head, pruned_through): (i64, i64) =
        sqlx::query_as("SELECT last_position, pruned_through FROM outbox_head")
            .fetch_one(&mut *conn)
            .await?;
    let consumers = sqlx::query_as::<_, (String, i64, chrono::DateTime<chrono::Utc>)>(
        "SELECT name, position, updated_at FROM feed_consumers ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|(name, position, updated_at)| FeedConsumer {
        name,
        position,
        updated_at,
    })
    .collect();
    Ok(FeedConsumers {
        node_id: app.node_id.to_string(),
        head,
        pruned_through,
        consumers,
    })
}

async fn consumers(State(app): State<App<PgStore>>) -> ApiResult<Json<FeedConsumers>> {
    let mut conn = app.store.acquire().await.map_err(StoreError::from)?;
    Ok(Json(state(&app, &mut conn).await?))
}

/// Registers `name` at `position`, or moves it there. Under the lock on
/// `outbox_head` the pruner takes too, so nothing above the position is
/// pruned once this answers.
async fn acknowledge(
    State(app): State<App<PgStore>>,
    Path(name): Path<String>,
    Json(ack): Json<FeedAck>,
) -> ApiResult<Json<FeedConsumers>> {
    if !valid_name(&name) {
        return Err(refuse(format!("consumer name {name:?}: 1 to 64 of a-z 0-9 . _ -")).into());
    }
    let mut tx = app.store.begin().await.map_err(StoreError::from)?;
    let (head, pruned): (i64, i64) = sqlx::query_as(
        "SELECT last_position, pruned_through FROM outbox_head WHERE only_row FOR UPDATE",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    if ack.position < pruned || ack.position > head {
        return Err(refuse(format!(
            "position {} is outside the feed kept here ({pruned} to {head})",
            ack.position
        ))
        .into());
    }
    sqlx::query(
        "INSERT INTO feed_consumers (name, position) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now()",
    )
    .bind(&name)
    .bind(ack.position)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    let now = state(&app, &mut tx).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Json(now))
}

async fn unregister(
    State(app): State<App<PgStore>>,
    Path(name): Path<String>,
) -> ApiResult<Json<FeedConsumers>> {
    let mut conn = app.store.acquire().await.map_err(StoreError::from)?;
    sqlx::query("DELETE FROM feed_consumers WHERE name = $1")
        .bind(&name)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::from)?;
    Ok(Json(state(&app, &mut conn).await?))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after_account: String,
    #[serde(default)]
    after_seq: i64,
    limit: Option<i64>,
}

fn limit(l: Option<i64>) -> i64 {
    l.unwrap_or(1_000).clamp(1, 10_000)
}

fn owned(app: &App<PgStore>) -> Vec<i32> {
    app.map
        .current()
        .partitions_of(&app.node_id)
        .into_iter()
        .map(|p| p as i32)
        .collect()
}

fn currency(code: &str) -> Result<Currency, StoreError> {
    Currency::parse(code).map_err(StoreError::corrupt)
}

fn account(id: String) -> Result<AccountId, StoreError> {
    AccountId::parse(id).map_err(StoreError::corrupt)
}

/// Every event of the accounts in the partitions this node owns, after
/// (`after_account`, `after_seq`), in that order.
async fn events(
    State(app): State<App<PgStore>>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<HistoryPage>> {
    let limit = limit(q.limit);
    let rows = sqlx::query(
        "SELECT e.account_id, e.seq, e.kind, e.amount, e.transaction_id, e.counterparty, e.at,
                a.currency, a.partition
         FROM events e JOIN accounts a USING (account_id)
         WHERE (e.account_id, e.seq) > ($1, $2) AND a.partition = ANY($3)
         ORDER BY e.account_id, e.seq LIMIT $4",
    )
    .bind(&q.after_account)
    .bind(q.after_seq)
    .bind(owned(&app))
    .bind(limit)
    .fetch_all(&mut *app.store.acquire().await.map_err(StoreError::from)?)
    .await
    .map_err(StoreError::from)?;
    let done = (rows.len() as i64) < limit;
    let entries = rows
        .iter()
        .map(|r| -> Result<FeedEntry, StoreError> {
            let kind: String = r.try_get("kind")?;
            Ok(FeedEntry {
                position: 0,
                kind: FeedKind::Event(
                    EventKind::parse(&kind)
                        .ok_or_else(|| StoreError::corrupt(format!("event kind {kind:?}")))?,
                ),
                account_id: account(r.try_get("account_id")?)?,
                seq: Some(r.try_get("seq")?),
                amount: r.try_get("amount")?,
                currency: currency(r.try_get("currency")?)?,
                transaction_id: r
                    .try_get::<Option<uuid::Uuid>, _>("transaction_id")?
                    .map(TransactionId),
                counterparty: r
                    .try_get::<Option<String>, _>("counterparty")?
                    .map(account)
                    .transpose()?,
                reason: None,
                partition: r.try_get::<i32, _>("partition")? as u32,
                at: r.try_get("at")?,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Json(HistoryPage {
        node_id: app.node_id.to_string(),
        entries,
        done,
    }))
}

#[derive(Debug, Deserialize)]
struct AbortedQuery {
    after: Option<uuid::Uuid>,
    limit: Option<i64>,
}

/// Every transfer decision record aborted and still kept, in the
/// partitions this node owns, as its feed entry was.
async fn aborted(
    State(app): State<App<PgStore>>,
    Query(q): Query<AbortedQuery>,
) -> ApiResult<Json<HistoryPage>> {
    let limit = limit(q.limit);
    let rows = sqlx::query(
        "SELECT transaction_id, from_account, to_account, amount, currency, reason_code,
                partition, coalesce(decided_at, created_at) AS at
         FROM transfers
         WHERE kind = 'transfer' AND state = 'aborted' AND partition = ANY($1)
           AND ($2::uuid IS NULL OR transaction_id > $2)
         ORDER BY transaction_id LIMIT $3",
    )
    .bind(owned(&app))
    .bind(q.after)
    .bind(limit)
    .fetch_all(&mut *app.store.acquire().await.map_err(StoreError::from)?)
    .await
    .map_err(StoreError::from)?;
    let done = (rows.len() as i64) < limit;
    let entries = rows
        .iter()
        .map(|r| -> Result<FeedEntry, StoreError> {
            let reason = r
                .try_get::<Option<String>, _>("reason_code")?
                .map(|c| serde_json::from_value::<ErrorCode>(serde_json::Value::String(c)))
                .transpose()
                .map_err(StoreError::corrupt)?;
            Ok(FeedEntry {
                position: 0,
                kind: FeedKind::TransferAborted,
                account_id: account(r.try_get("from_account")?)?,
                seq: None,
                amount: r.try_get("amount")?,
                currency: currency(r.try_get("currency")?)?,
                transaction_id: Some(TransactionId(r.try_get("transaction_id")?)),
                counterparty: Some(account(r.try_get("to_account")?)?),
                reason,
                partition: r.try_get::<i32, _>("partition")? as u32,
                at: r.try_get("at")?,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Json(HistoryPage {
        node_id: app.node_id.to_string(),
        entries,
        done,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_are_short_and_plain() {
        assert!(valid_name("projector"));
        assert!(valid_name("feed-reader.2_b"));
        assert!(!valid_name(""));
        assert!(!valid_name("Projector"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
