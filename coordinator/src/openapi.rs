//! `GET /openapi.json`: the public API's OpenAPI 3.1 document, generated
//! from the handlers (`#[utoipa::path]` in `api`) and their request types.
//! The response bodies are rendered as JSON in `api`; the types here say
//! their shape, and the schemathesis test holds every answer to it.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use wallet_shared::ErrorCode;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wallet",
        description = "Move money between accounts that live on different Postgres nodes, atomically and exactly once. Amounts are decimal strings in the currency's major unit.",
    ),
    paths(
        crate::api::balance_transfer,
        crate::api::transfer_status,
        crate::api::open_account,
        crate::api::deposit,
        crate::api::withdraw,
        crate::api::balance,
        crate::api::events,
        crate::api::feed,
    ),
    modifiers(&BearerKey),
    security(("api_key" = [])),
)]
struct ApiDoc;

/// Every call carries `Authorization: Bearer <API key>`.
struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("an API key: walletctl keys create"))
                    .build(),
            ),
        );
    }
}

/// The document, as JSON (built once).
pub fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

/// `GET /openapi.json`.
pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json())
}

/// Every error: a stable machine-readable `code` and a human `message`.
#[derive(ToSchema)]
#[allow(dead_code)] // a shape for the document; `http::ApiError` renders it
pub struct ErrorView {
    code: ErrorCode,
    message: String,
    /// Names the request in the service's logs.
    request_id: Option<String>,
    /// Present on an aborted transfer's status.
    transaction_id: Option<String>,
    status: Option<String>,
}

#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum TransferStatus {
    Committed,
    Pending,
    Aborted,
}

#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum RecordKindView {
    Transfer,
    Deposit,
    Withdrawal,
}

/// A transfer's record: the same answer on every retry of its id.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TransferView {
    #[schema(format = Uuid)]
    transaction_id: String,
    kind: RecordKindView,
    status: TransferStatus,
    #[schema(example = "12.34")]
    amount: String,
    currency: String,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    decided_at: Option<String>,
    /// A transfer's accounts.
    from_account: Option<String>,
    to_account: Option<String>,
    /// A deposit's or withdrawal's account.
    account_id: Option<String>,
    /// Why it was aborted.
    code: Option<ErrorCode>,
    message: Option<String>,
}

/// `202`: the outcome is not known yet; `GET /v1/wallet/transfers/{id}`
/// tells it later.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PendingView {
    status: TransferStatus,
    #[schema(format = Uuid)]
    transaction_id: String,
    message: Option<String>,
}

/// A committed deposit or withdrawal.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MovementView {
    status: TransferStatus,
    #[schema(format = Uuid)]
    transaction_id: String,
    account_id: String,
    #[schema(value_type = String, example = "deposit")]
    kind: (),
    amount: String,
    currency: String,
}

/// Posted balance, and available (posted minus held).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BalanceView {
    account_id: String,
    currency: String,
    #[schema(example = "87.66")]
    balance: String,
    #[schema(example = "87.66")]
    available: String,
    /// With `as_of`: the instant asked for, the last event folded, how many
    /// events were folded and the snapshot the fold started from.
    as_of: Option<String>,
    last_seq: Option<i64>,
    events_replayed: Option<u64>,
    #[schema(value_type = Option<Object>)]
    snapshot: Option<()>,
}

/// One event of an account's log.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventView {
    seq: i64,
    #[serde(rename = "type")]
    #[schema(example = "deposited")]
    kind: String,
    amount: String,
    currency: String,
    transaction_id: Option<String>,
    counterparty: Option<String>,
    #[schema(format = DateTime)]
    at: String,
}

/// A page of an account's events.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventsView {
    account_id: String,
    currency: String,
    events: Vec<EventView>,
    /// Pass it as `after` for the next page.
    next_after: Option<i64>,
}

/// One entry of a node's change feed.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FeedEntryView {
    node: String,
    position: i64,
    #[serde(rename = "type")]
    kind: String,
    amount: String,
    currency: String,
    transaction_id: Option<String>,
    #[schema(format = DateTime)]
    at: String,
    account_id: Option<String>,
    seq: Option<i64>,
    counterparty: Option<String>,
    from_account: Option<String>,
    to_account: Option<String>,
    reason: Option<ErrorCode>,
}

/// Entries of every node's feed after a cursor.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FeedView {
    events: Vec<FeedEntryView>,
    /// The cursor to pass as `after` next time.
    next_after: String,
    #[schema(value_type = Object)]
    heads: (),
    unavailable: Vec<String>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_names_every_public_route_and_the_bearer_key() {
        let doc: serde_json::Value = serde_json::from_str(super::json()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/v1/wallet/balance_transfer",
            "/v1/wallet/transfers/{id}",
            "/v1/wallet/accounts",
            "/v1/wallet/accounts/{id}/deposit",
            "/v1/wallet/accounts/{id}/withdraw",
            "/v1/wallet/accounts/{id}/balance",
            "/v1/wallet/accounts/{id}/events",
            "/v1/wallet/events",
        ] {
            assert!(paths.contains_key(path), "{path} missing");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["api_key"]["scheme"],
            "bearer"
        );
        let amount = &doc["components"]["schemas"]["TransferBody"]["properties"]["amount"];
        assert_eq!(amount["type"], "string", "{amount}");
    }
}
