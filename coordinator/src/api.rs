//! The public API (`/v1/wallet/...`): parses requests into domain types and
//! renders what the application (`Coordinator::transfer`, `movement`,
//! `open`, `balance`, `events`, `feed`, `status`) returns. A body that gets
//! past [`ApiJson`] and the `parse` functions is valid. Amounts come in and
//! go out as decimal strings in the major unit.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use wallet_shared::protocol::*;
use wallet_shared::{AccountId, Amount, Currency, ErrorCode, Rejection, TransactionId};

use crate::auth::{scope, Caller, Needs};
use crate::feed::FeedCursor;
use crate::http::{invalid, reply, ApiError, ApiJson, ApiQuery, ApiResult};
use crate::machine::TransferOutcome;
use crate::transfer::Coordinator;

/// The routes open to anyone: probes and metrics (`http::router` adds the
/// authenticated ones, the admin routes and the edge's limits).
pub fn routes() -> Router<Coordinator> {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(crate::ops::livez))
        .route("/readyz", get(crate::ops::readyz))
        .route("/metrics", get(crate::ops::metrics))
}

/// The public API proper: every route needs an API key (`auth`); each
/// handler asks its [`Caller`] for the scope it needs, and shows a tenant
/// only its own accounts and transactions.
pub fn authenticated_routes() -> Router<Coordinator> {
    Router::new()
        .route("/v1/wallet/balance_transfer", post(balance_transfer))
        .route("/v1/wallet/transfers/{id}", get(transfer_status))
        .route("/v1/wallet/accounts", post(open_account))
        .route("/v1/wallet/accounts/{id}/deposit", post(deposit))
        .route("/v1/wallet/accounts/{id}/withdraw", post(withdraw))
        .route("/v1/wallet/accounts/{id}/balance", get(balance))
        .route("/v1/wallet/accounts/{id}/events", get(events))
        .route("/v1/wallet/events", get(feed))
        .route("/openapi.json", get(crate::openapi::document))
}

/// Amounts must be JSON strings: a JSON number may already have lost
/// precision in the client's float.
fn parse_amount(value: &Value, currency: Currency) -> Result<Amount, Rejection> {
    match value {
        Value::String(s) => Amount::parse(s, currency),
        Value::Number(_) => Err(Rejection::new(
            ErrorCode::InvalidAmount,
            "amount must be a decimal string such as \"12.34\", not a JSON number",
        )),
        _ => Err(Rejection::new(
            ErrorCode::InvalidAmount,
            "amount must be a decimal string such as \"12.34\"",
        )),
    }
}

async fn health(State(c): State<Coordinator>) -> Json<Value> {
    Json(json!({ "status": "ok", "map_revision": c.participants.map.current().revision }))
}

// ---- transfers ------------------------------------------------------------------

/// `POST /v1/wallet/balance_transfer`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TransferBody {
    /// A UUID: it names the transfer and deduplicates its retries.
    #[schema(format = Uuid, example = "6f1c1a52-5f3e-4a0e-9d0a-2f7f4f0b7a11")]
    transaction_id: String,
    /// The account debited (1 to 64 of `[A-Za-z0-9_-]`).
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", example = "alice")]
    from_account: String,
    /// The account credited.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", example = "bob")]
    to_account: String,
    /// A decimal string in the currency's major unit (`"12.34"`), never a
    /// JSON number.
    #[schema(value_type = String, pattern = "^[0-9]{1,18}(\\.[0-9]{1,3})?$", example = "12.34")]
    amount: Value,
    /// ISO 4217 code.
    #[schema(pattern = "^[A-Z]{3}$", example = "USD")]
    currency: String,
}

fn parse_transfer(body: TransferBody) -> Result<TransferSpec, Rejection> {
    let transaction_id = TransactionId::parse(&body.transaction_id)?;
    let from = AccountId::parse(body.from_account)?;
    let to = AccountId::parse(body.to_account)?;
    let currency = Currency::parse(&body.currency)?;
    let amount = parse_amount(&body.amount, currency)?;
    if from == to {
        return Err(Rejection::new(
            ErrorCode::SameAccount,
            format!("from_account and to_account are both {from}"),
        ));
    }
    Ok(TransferSpec {
        transaction_id,
        from,
        to,
        amount,
        currency,
        tenant: None,
    })
}

/// Moves money between two accounts, atomically and exactly once per
/// `transaction_id`.
#[utoipa::path(post, path = "/v1/wallet/balance_transfer", tag = "transfers",
    request_body = TransferBody,
    responses(
        (status = 200, description = "committed: both legs are durable", body = crate::openapi::TransferView),
        (status = 202, description = "pending: the outcome is not known yet", body = crate::openapi::PendingView),
        (status = "4XX", description = "refused, nothing applied", body = crate::openapi::ErrorView),
        (status = "5XX", description = "not done now, retry with the same transaction_id", body = crate::openapi::ErrorView),
    ))]
async fn balance_transfer(
    State(c): State<Coordinator>,
    Needs(caller, _): Needs<scope::Transfer>,
    ApiJson(body): ApiJson<TransferBody>,
) -> ApiResult {
    let mut spec = parse_transfer(body).inspect_err(|r| {
        // Refused before the protocol ran; the rest are counted by `transfer`.
        metrics::counter!("wallet_transfers_total", "outcome" => "refused", "code" => r.code.as_str())
            .increment(1);
    })?;
    // The participant holding the debit refuses it unless the account is
    // this tenant's: no extra round trip.
    spec.tenant = caller.acting_for();
    let id = spec.transaction_id;
    Ok(match c.transfer(spec).await {
        TransferOutcome::Decided(record) => record_response(&record),
        TransferOutcome::Pending(why) => pending(id, &why),
        TransferOutcome::Refused(r) => ApiError(r).into_response(),
    })
}

fn pending(id: TransactionId, why: &str) -> Response {
    // `why` may name a participant's address: the log's, not the client's.
    tracing::info!(reason = why, "transfer pending");
    reply(
        202,
        json!({
            "status": "pending",
            "transaction_id": id,
            "message": format!("the outcome is not known yet; it will be resolved: GET /v1/wallet/transfers/{id}"),
        }),
    )
}

/// The answer for a transaction that has a record: the same on every
/// retry. A deposit's or withdrawal's names its one account.
fn record_response(record: &TransferRecord) -> Response {
    let spec = &record.spec;
    let mut body = json!({
        "transaction_id": spec.transaction_id,
        "kind": record.kind,
        "amount": spec.currency.format(spec.amount.minor()),
        "currency": spec.currency,
        "created_at": record.created_at,
        "decided_at": record.decided_at,
    });
    if record.kind == RecordKind::Transfer {
        body["from_account"] = json!(spec.from);
        body["to_account"] = json!(spec.to);
    } else {
        body["account_id"] = json!(spec.to);
    }
    let status = match (&record.state, &record.reason) {
        (TransferState::Committed, _) => {
            body["status"] = json!("committed");
            200
        }
        (TransferState::Preparing, _) => {
            body["status"] = json!("pending");
            202
        }
        (TransferState::Aborted, reason) => {
            let reason = reason
                .clone()
                .unwrap_or_else(|| Rejection::new(ErrorCode::TransferAborted, "aborted"));
            body["status"] = json!("aborted");
            body["code"] = json!(reason.code);
            body["message"] = json!(reason.message);
            reason.code.http_status()
        }
    };
    reply(status, body)
}

/// A transfer's (or deposit's, or withdrawal's) status and outcome.
#[utoipa::path(get, path = "/v1/wallet/transfers/{id}", tag = "transfers",
    params(("id" = String, Path, description = "the transaction_id")),
    responses(
        (status = 200, description = "its status, whatever it is", body = crate::openapi::TransferView),
        (status = "4XX", description = "no such transfer, or a malformed id", body = crate::openapi::ErrorView),
        (status = "5XX", description = "cannot tell now", body = crate::openapi::ErrorView),
    ))]
async fn transfer_status(
    State(c): State<Coordinator>,
    Needs(caller, _): Needs<scope::Read>,
    Path(id): Path<String>,
) -> ApiResult {
    let id = TransactionId::parse(&id)?;
    let record = c.status(id).await?;
    if !caller.may_see(record.spec.tenant.as_deref()) {
        // Another tenant's: the same answer as no such transaction.
        return Err(
            Rejection::new(ErrorCode::TransferNotFound, format!("no transfer {id}")).into(),
        );
    }
    // A status lookup answers 200 with the status in the body, whatever it is.
    let mut response = record_response(&record);
    *response.status_mut() = StatusCode::OK;
    Ok(response)
}

// ---- accounts -------------------------------------------------------------------

/// `POST /v1/wallet/accounts`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OpenBody {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", example = "alice")]
    account_id: String,
    #[schema(pattern = "^[A-Z]{3}$", example = "USD")]
    currency: String,
}

/// Opens an account; the same body again is a success.
#[utoipa::path(post, path = "/v1/wallet/accounts", tag = "accounts",
    request_body = OpenBody,
    responses(
        (status = 200, description = "open (now or before)", body = crate::openapi::BalanceView),
        (status = "4XX", description = "refused (409 account_exists: another currency)", body = crate::openapi::ErrorView),
        (status = "5XX", description = "not done now", body = crate::openapi::ErrorView),
    ))]
async fn open_account(
    State(c): State<Coordinator>,
    Needs(caller, _): Needs<scope::Transfer>,
    ApiJson(body): ApiJson<OpenBody>,
) -> ApiResult {
    let account_id = AccountId::parse(body.account_id)?;
    let currency = Currency::parse(&body.currency)?;
    let balance = c.open(account_id, currency, caller.acting_for()).await?;
    Ok(reply(200, balance_json(&balance)))
}

/// `POST /v1/wallet/accounts/{id}/deposit` and `.../withdraw`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MovementBody {
    #[schema(format = Uuid, example = "0b9d3d0e-2f43-4c1e-9a57-7b0f7c0d8a21")]
    transaction_id: String,
    #[schema(value_type = String, pattern = "^[0-9]{1,18}(\\.[0-9]{1,3})?$", example = "100.00")]
    amount: Value,
    #[schema(pattern = "^[A-Z]{3}$", example = "USD")]
    currency: String,
}

/// Adds money from outside (idempotent by `transaction_id`).
#[utoipa::path(post, path = "/v1/wallet/accounts/{id}/deposit", tag = "accounts",
    params(("id" = String, Path, description = "the account id")),
    request_body = MovementBody,
    responses(
        (status = 200, description = "committed", body = crate::openapi::MovementView),
        (status = "4XX", description = "refused, nothing applied", body = crate::openapi::ErrorView),
        (status = "5XX", description = "not done now, retry with the same transaction_id", body = crate::openapi::ErrorView),
    ))]
async fn deposit(
    state: State<Coordinator>,
    caller: Needs<scope::Transfer>,
    path: Path<String>,
    body: ApiJson<MovementBody>,
) -> ApiResult {
    movement(state, caller, path, body, MovementKind::Deposit).await
}

/// Takes money out, never below zero (idempotent by `transaction_id`).
#[utoipa::path(post, path = "/v1/wallet/accounts/{id}/withdraw", tag = "accounts",
    params(("id" = String, Path, description = "the account id")),
    request_body = MovementBody,
    responses(
        (status = 200, description = "committed", body = crate::openapi::MovementView),
        (status = "4XX", description = "refused, nothing applied", body = crate::openapi::ErrorView),
        (status = "5XX", description = "not done now, retry with the same transaction_id", body = crate::openapi::ErrorView),
    ))]
async fn withdraw(
    state: State<Coordinator>,
    caller: Needs<scope::Transfer>,
    path: Path<String>,
    body: ApiJson<MovementBody>,
) -> ApiResult {
    movement(state, caller, path, body, MovementKind::Withdrawal).await
}

/// A deposit or withdrawal: on the tenant's own accounts only (the
/// account's node refuses another's, as part of applying it).
async fn movement(
    State(c): State<Coordinator>,
    Needs(caller, _): Needs<scope::Transfer>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<MovementBody>,
    kind: MovementKind,
) -> ApiResult {
    let transaction_id = TransactionId::parse(&body.transaction_id)?;
    let account_id = AccountId::parse(id)?;
    let currency = Currency::parse(&body.currency)?;
    let amount = parse_amount(&body.amount, currency)?;
    let partition = c.participants.map.current().account_partition(&account_id);
    let m = Movement {
        transaction_id,
        kind,
        account_id,
        partition,
        amount,
        currency,
        tenant: caller.acting_for(),
    };
    c.movement(m.clone()).await?;
    Ok(reply(
        200,
        json!({
            "status": "committed",
            "transaction_id": m.transaction_id,
            "account_id": m.account_id,
            "kind": m.kind,
            "amount": currency.format(amount.minor()),
            "currency": currency,
        }),
    ))
}

fn balance_json(b: &AccountBalance) -> Value {
    json!({
        "account_id": b.account_id,
        "currency": b.currency,
        "balance": b.currency.format(b.posted),
        "available": b.currency.format(b.available()),
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct BalanceQuery {
    /// An RFC 3339 instant: the balance then, rebuilt from the event log.
    #[param(format = DateTime)]
    as_of: Option<String>,
    /// `false`: rebuild from the very first event, ignoring snapshots.
    snapshots: Option<bool>,
}

/// 404 for an account the caller may not see: whether another tenant's
/// account exists does not leak.
fn visible(caller: &Caller, account_id: &AccountId, owner: Option<&str>) -> Result<(), Rejection> {
    if caller.may_see(owner) {
        Ok(())
    } else {
        Err(Rejection::new(
            ErrorCode::AccountNotFound,
            format!("account {account_id} does not exist"),
        ))
    }
}

/// The posted and available balance, now or at `as_of`.
#[utoipa::path(get, path = "/v1/wallet/accounts/{id}/balance", tag = "accounts",
    params(("id" = String, Path, description = "the account id"), BalanceQuery),
    responses(
        (status = 200, description = "the balance", body = crate::openapi::BalanceView),
        (status = "4XX", description = "no such account, or a malformed query", body = crate::openapi::ErrorView),
        (status = "5XX", description = "cannot tell now", body = crate::openapi::ErrorView),
    ))]

async fn balance(
    State(c): State<Coordinator>,
    Needs(caller, _): Needs<scope::Read>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<BalanceQuery>,
) -> ApiResult {
    let account_id = AccountId::parse(id)?;
    let as_of = match &q.as_of {
        Some(as_of) => Some(
            chrono::DateTime::parse_from_rfc3339(as_of)
                .map_err(|_| {
                    invalid(format!(
                        "as_of {as_of:?} is not an RFC 3339 instant such as 2026-01-31T12:00:00Z"
                    ))
                })?
                .with_timezone(&chrono::Utc),
        ),
        None if q.snapshots.is_some() => {
            return Err(invalid("snapshots applies to an as_of query only").into())
        }
        None => None,
    };
    let h = c.balance(&account_id, as_of, q.snapshots).await?;
    visible(&caller, &account_id, h.balance.owner.as_deref())?;
    let mut body = balance_json(&h.balance);
    if let Some(as_of) = q.as_of {
        body["as_of"] = json!(as_of);
        body["last_seq"] = json!(h.balance.last_seq);
        body["events_replayed"] = json!(h.events_replayed);
        body["snapshot"] = json!(h.snapshot);
    }
    Ok(reply(200, body))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// Events after this sequence number (`next_after` of the last page).
    after: Option<i64>,
    /// At most this many (1 to 1000).
    limit: Option<i64>,
    /// Comma-separated event types (`deposited,withdrawn`).
    types: Option<String>,
}

/// Largest page of events the API hands out.
const MAX_EVENTS_PAGE: i64 = 1000;

fn check_page(after: i64, limit: Option<i64>) -> Result<(), Rejection> {
    if after < 0 {
        return Err(invalid("after must be 0 or more"));
    }
    if let Some(limit) = limit {
        if !(1..=MAX_EVENTS_PAGE).contains(&limit) {
            return Err(invalid(format!(
                "limit must be between 1 and {MAX_EVENTS_PAGE}"
            )));
        }
    }
    Ok(())
}

/// The account's event log, oldest first, paged.
#[utoipa::path(get, path = "/v1/wallet/accounts/{id}/events", tag = "accounts",
    params(("id" = String, Path, description = "the account id"), EventsQuery),
    responses(
        (status = 200, description = "a page of events", body = crate::openapi::EventsView),
        (status = "4XX", description = "no such account, or a malformed query", body = crate::openapi::ErrorView),
        (status = "5XX", description = "cannot tell now", body = crate::openapi::ErrorView),
    ))]
async fn events(
    State(c): State<Coordinator>,
    Needs(caller, _): Needs<scope::Read>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult {
    let account_id = AccountId::parse(id)?;
    let after = q.after.unwrap_or(0);
    check_page(after, q.limit)?;
    let mut types = Vec::new();
    for t in q
        .types
        .iter()
        .flat_map(|t| t.split(','))
        .filter(|t| !t.is_empty())
    {
        types.push(EventKind::parse(t).ok_or_else(|| {
            invalid(format!(
                "unknown event type {t:?}; known: {}",
                EventKind::ALL.map(EventKind::as_str).join(", ")
            ))
        })?);
    }
    let query = crate::accounts::EventsQuery {
        after,
        limit: q.limit,
        types,
    };
    let page = c.events(&account_id, &query).await?;
    visible(&caller, &account_id, page.owner.as_deref())?;
    let currency = page.currency;
    let events: Vec<Value> = page
        .events
        .iter()
        .map(|e| {
            json!({
                "seq": e.seq,
                "type": e.kind,
                "amount": currency.format(e.amount),
                "currency": currency,
                "transaction_id": e.transaction_id,
                "counterparty": e.counterparty,
                "at": e.at,
            })
        })
        .collect();
    Ok(reply(
        200,
        json!({ "account_id": account_id, "currency": currency, "events": events, "next_after": page.next_after }),
    ))
}

// ---- the change feed ------------------------------------------------------------

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct FeedQuery {
    /// The cursor of the last page (`node-1:120,node-2:98`); none: from the start.
    after: Option<String>,
    /// At most this many entries per node (1 to 1000).
    limit: Option<i64>,
}

/// `GET /v1/wallet/events?after=CURSOR`: every node's feed, each in its
/// commit order (see `feed`).
#[utoipa::path(get, path = "/v1/wallet/events", tag = "feed",
    params(FeedQuery),
    responses(
        (status = 200, description = "entries of every node's feed", body = crate::openapi::FeedView),
        (status = "4XX", description = "a malformed cursor", body = crate::openapi::ErrorView),
        (status = "5XX", description = "no node answered", body = crate::openapi::ErrorView),
    ))]
async fn feed(
    State(c): State<Coordinator>,
    _admin: Needs<scope::Admin>,
    ApiQuery(q): ApiQuery<FeedQuery>,
) -> ApiResult {
    let cursor = FeedCursor::parse(q.after.as_deref().unwrap_or(""))?;
    check_page(0, q.limit)?;
    let feed = c.feed(cursor, q.limit.unwrap_or(100)).await?;
    let events: Vec<Value> = feed
        .entries
        .iter()
        .map(|(node, e)| feed_entry_json(node, e))
        .collect();
    Ok(reply(
        200,
        json!({
            "events": events,
            "next_after": feed.next.to_string(),
            "heads": feed.heads,
            "unavailable": feed.unavailable,
        }),
    ))
}

/// A feed entry at the public edge: amounts as decimal strings; an aborted
/// transfer names its accounts and reason.
pub fn feed_entry_json(node: &str, e: &FeedEntry) -> Value {
    let mut v = json!({
        "node": node,
        "position": e.position,
        "type": e.kind,
        "amount": e.currency.format(e.amount),
        "currency": e.currency,
        "transaction_id": e.transaction_id,
        "at": e.at,
    });
    match e.kind {
        FeedKind::Event(_) => {
            v["account_id"] = json!(e.account_id);
            v["seq"] = json!(e.seq);
            v["counterparty"] = json!(e.counterparty);
        }
        FeedKind::TransferAborted => {
            v["from_account"] = json!(e.account_id);
            v["to_account"] = json!(e.counterparty);
            v["reason"] = json!(e.reason);
        }
    }
    v
}
