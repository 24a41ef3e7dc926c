//! The public API (`/v1/wallet/...`). Requests are parsed into domain types
//! at the edge: a body that gets past [`ApiJson`] and the `parse` functions
//! is valid. Amounts come in and go out as decimal strings in the major unit.

use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use wallet_shared::protocol::*;
use wallet_shared::{routes, AccountId, Amount, Currency, ErrorCode, Rejection, TransactionId};

use crate::client::CallError;
use crate::machine::TransferOutcome;
use crate::transfer::Coordinator;

pub fn router(coordinator: Coordinator, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/wallet/balance_transfer", post(balance_transfer))
        .route("/v1/wallet/transfers/{id}", get(transfer_status))
        .route("/v1/wallet/accounts", post(open_account))
        .route("/v1/wallet/accounts/{id}/deposit", post(deposit))
        .route("/v1/wallet/accounts/{id}/withdraw", post(withdraw))
        .route("/v1/wallet/accounts/{id}/balance", get(balance))
        .route("/v1/wallet/accounts/{id}/events", get(events))
        .route("/v1/wallet/events", get(feed))
        .merge(crate::admin::routes())
        .fallback(|| async { ApiError(Rejection::new(ErrorCode::NotFound, "no such endpoint")) })
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(coordinator)
}

/// The one error-to-response mapping of the public API: `{code, message}`
/// with the code's HTTP status.
#[derive(Debug)]
pub struct ApiError(pub Rejection);

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        ApiError(r)
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Rejected(r) => ApiError(r),
            CallError::Unknown(why) => ApiError(Rejection::new(
                ErrorCode::Unavailable,
                format!("a node did not answer ({why}); the outcome is unknown, retry with the same transaction_id"),
            )),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(mut self) -> Response {
        if self.0.code == ErrorCode::WrongPartitionOwner {
            // Our map was stale and re-reading it did not help in time: a
            // routing matter, and nothing was done; not the client's fault.
            self.0 = Rejection::new(
                ErrorCode::Unavailable,
                format!(
                    "the partition map is changing ({}); nothing was done, try again",
                    self.0.message
                ),
            );
        }
        let too_large = self.0.code == ErrorCode::PayloadTooLarge;
        let mut response = reply(
            self.0.code.http_status(),
            serde_json::to_value(&self.0).unwrap_or(Value::Null),
        );
        if too_large {
            // The rest of the body was never read: this connection cannot
            // carry another request, so say so instead of letting the
            // client's next request on it fail.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

fn reply(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response()
}

type ApiResult<T = Response> = Result<T, ApiError>;

fn invalid(message: impl Into<String>) -> Rejection {
    Rejection::new(ErrorCode::InvalidRequest, message)
}

/// JSON body extractor whose every failure is a `{code, message}` error:
/// 413 over the size limit, 400 for anything that is not the expected JSON
/// (unknown fields included). The content type is not required.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Rejection::new(
                        ErrorCode::PayloadTooLarge,
                        "request body is larger than the limit",
                    )
                } else {
                    invalid(format!("cannot read the request body: {e}"))
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError(invalid(format!("invalid JSON body: {e}"))))
    }
}

/// Query-string extractor whose failure is a `400 invalid_request` with a
/// `{code, message}` body (unknown parameters included, where the type says so).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError(invalid(format!("invalid query string: {}", e.body_text()))))
    }
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    transaction_id: String,
    from_account: String,
    to_account: String,
    amount: Value,
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
    })
}

async fn balance_transfer(
    State(c): State<Coordinator>,
    ApiJson(body): ApiJson<TransferBody>,
) -> ApiResult {
    let spec = parse_transfer(body)?;
    let id = spec.transaction_id;
    Ok(match c.transfer(spec).await {
        TransferOutcome::Decided(record) => record_response(&record),
        TransferOutcome::Pending(why) => pending(id, &why),
        TransferOutcome::InProgress => ApiError(Rejection::in_progress(id)).into_response(),
        TransferOutcome::Reused => ApiError(Rejection::idempotency_key_reused(id)).into_response(),
        TransferOutcome::Refused(r) => ApiError(r).into_response(),
    })
}

fn pending(id: TransactionId, why: &str) -> Response {
    reply(
        202,
        json!({
            "status": "pending",
            "transaction_id": id,
            "message": format!("the outcome is not known yet ({why}); it will be resolved: GET /v1/wallet/transfers/{id}"),
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

async fn transfer_status(State(c): State<Coordinator>, Path(id): Path<String>) -> ApiResult {
    let id = TransactionId::parse(&id)?;
    let partition = c.participants.map.current().decision_partition(id);
    let record: TransferRecord = c
        .participants
        .get(partition, &routes::TRANSFER.with(id), &[])
        .await?;
    // A status lookup answers 200 with the status in the body, whatever it is.
    let mut response = record_response(&record);
    *response.status_mut() = StatusCode::OK;
    Ok(response)
}

// ---- accounts -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenBody {
    account_id: String,
    currency: String,
}

async fn open_account(State(c): State<Coordinator>, ApiJson(body): ApiJson<OpenBody>) -> ApiResult {
    let account_id = AccountId::parse(body.account_id)?;
    let currency = Currency::parse(&body.currency)?;
    let partition = c.participants.map.current().account_partition(&account_id);
    c.participants.await_moves(&[partition]).await?;
    let req = OpenAccount {
        account_id,
        partition,
        currency,
    };
    let balance: AccountBalance = c
        .participants
        .post(&[partition], routes::ACCOUNTS.pattern(), &req)
        .await?;
    Ok(reply(200, balance_json(&balance)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MovementBody {
    transaction_id: String,
    amount: Value,
    currency: String,
}

async fn deposit(
    state: State<Coordinator>,
    path: Path<String>,
    body: ApiJson<MovementBody>,
) -> ApiResult {
    movement(state, path, body, MovementKind::Deposit).await
}

async fn withdraw(
    state: State<Coordinator>,
    path: Path<String>,
    body: ApiJson<MovementBody>,
) -> ApiResult {
    movement(state, path, body, MovementKind::Withdrawal).await
}

async fn movement(
    State(c): State<Coordinator>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalanceQuery {
    as_of: Option<String>,
    /// `false`: rebuild from the very first event, ignoring snapshots.
    snapshots: Option<bool>,
}

async fn balance(
    State(c): State<Coordinator>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<BalanceQuery>,
) -> ApiResult {
    let account_id = AccountId::parse(id)?;
    let partition = c.participants.map.current().account_partition(&account_id);
    let mut query = Vec::new();
    if let Some(as_of) = &q.as_of {
        let t = chrono::DateTime::parse_from_rfc3339(as_of).map_err(|_| {
            invalid(format!(
                "as_of {as_of:?} is not an RFC 3339 instant such as 2026-01-31T12:00:00Z"
            ))
        })?;
        query.push(("as_of", t.with_timezone(&chrono::Utc).to_rfc3339()));
    } else if q.snapshots.is_some() {
        return Err(invalid("snapshots applies to an as_of query only").into());
    }
    if let Some(snapshots) = q.snapshots {
        query.push(("snapshots", snapshots.to_string()));
    }
    let path = routes::BALANCE.with(&account_id);
    let h: HistoricalBalance = c.participants.get(partition, &path, &query).await?;
    let mut body = balance_json(&h.balance);
    if let Some(as_of) = q.as_of {
        body["as_of"] = json!(as_of);
        body["last_seq"] = json!(h.balance.last_seq);
        body["events_replayed"] = json!(h.events_replayed);
        body["snapshot"] = json!(h.snapshot);
    }
    Ok(reply(200, body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<i64>,
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

async fn events(
    State(c): State<Coordinator>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult {
    let account_id = AccountId::parse(id)?;
    let after = q.after.unwrap_or(0);
    check_page(after, q.limit)?;
    let partition = c.participants.map.current().account_partition(&account_id);
    let mut query = vec![("after", after.to_string())];
    if let Some(limit) = q.limit {
        query.push(("limit", limit.to_string()));
    }
    if let Some(types) = q.types {
        for t in types.split(',').filter(|t| !t.is_empty()) {
            if EventKind::parse(t).is_none() {
                return Err(invalid(format!(
                    "unknown event type {t:?}; known: {}",
                    EventKind::ALL.map(EventKind::as_str).join(", ")
                ))
                .into());
            }
        }
        query.push(("types", types));
    }
    let path = routes::EVENTS.with(&account_id);
    let page: EventsPage = c.participants.get(partition, &path, &query).await?;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    after: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/wallet/events?after=CURSOR`: every node's feed, each in its
/// commit order. The cursor names each node's position
/// (`node-1:120,node-2:98`); a node it does not name is read from its
/// start. A node that does not answer is listed in `unavailable` and its
/// position stays put, so a consumer that keeps the returned cursor misses
/// nothing and sees nothing twice.
async fn feed(State(c): State<Coordinator>, ApiQuery(q): ApiQuery<FeedQuery>) -> ApiResult {
    let mut cursor = FeedCursor::parse(q.after.as_deref().unwrap_or(""))?;
    check_page(0, q.limit)?;
    let limit = q.limit.unwrap_or(100);
    let map = c.participants.map.current();
    let nodes: Vec<String> = map.nodes.keys().cloned().collect();
    let pages = futures::future::join_all(nodes.iter().map(|node| {
        let query = [
            ("after", cursor.position(node).to_string()),
            ("limit", limit.to_string()),
        ];
        let participants = c.participants.clone();
        async move {
            participants
                .get_node::<FeedPage>(node, routes::FEED.pattern(), &query)
                .await
        }
    }))
    .await;
    let mut events = Vec::new();
    let mut heads = serde_json::Map::new();
    let mut unavailable = Vec::new();
    for (node, page) in nodes.iter().zip(pages) {
        match page {
            Ok(page) => {
                if let Some(last) = page.entries.last() {
                    cursor.positions.insert(node.clone(), last.position);
                }
                heads.insert(node.clone(), json!(page.head));
                events.extend(page.entries.iter().map(|e| feed_entry_json(node, e)));
            }
            Err(e) => {
                tracing::warn!(%node, error = %e, "feed of a node unavailable");
                unavailable.push(node.clone());
            }
        }
    }
    if unavailable.len() == nodes.len() && !nodes.is_empty() {
        return Err(Rejection::new(ErrorCode::Unavailable, "no node's feed answered").into());
    }
    Ok(reply(
        200,
        json!({
            "events": events,
            "next_after": cursor.to_string(),
            "heads": heads,
            "unavailable": unavailable,
        }),
    ))
}

/// A consumer's place in every node's feed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FeedCursor {
    pub positions: std::collections::BTreeMap<String, i64>,
}

impl FeedCursor {
    pub fn parse(s: &str) -> Result<Self, Rejection> {
        let mut positions = std::collections::BTreeMap::new();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let bad = || {
                invalid(format!(
                    "cursor part {part:?} is not NODE:POSITION (e.g. node-1:120)"
                ))
            };
            let (node, position) = part.rsplit_once(':').ok_or_else(bad)?;
            let position: i64 = position.parse().map_err(|_| bad())?;
            if node.is_empty() || position < 0 {
                return Err(bad());
            }
            positions.insert(node.to_string(), position);
        }
        Ok(FeedCursor { positions })
    }

    pub fn position(&self, node: &str) -> i64 {
        self.positions.get(node).copied().unwrap_or(0)
    }
}

impl std::fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .positions
            .iter()
            .map(|(node, p)| format!("{node}:{p}"))
            .collect();
        f.write_str(&parts.join(","))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_cursors_round_trip_and_refuse_garbage() {
        let c = FeedCursor::parse("node-1:120,node-2:0").unwrap();
        assert_eq!(c.position("node-1"), 120);
        assert_eq!(c.position("node-3"), 0);
        assert_eq!(FeedCursor::parse(&c.to_string()).unwrap(), c);
        assert_eq!(FeedCursor::parse("").unwrap(), FeedCursor::default());
        for bad in ["node-1", "node-1:x", ":5", "node-1:-1"] {
            assert!(FeedCursor::parse(bad).is_err(), "{bad}");
        }
    }
}
