//! The coordinator's HTTP edge, shared by the public API (`api`) and the
//! admin routes (`admin`): the listener's router and its limits, JSON body
//! and query extractors whose every failure is a `{code, message}` error,
//! and the one error-to-response mapping.
//!
//! Every request but the probes (`/health`, `/livez`, `/readyz`,
//! `/metrics`) goes through [`guard`]: past `max_requests_in_flight` it is
//! shed (`503 overloaded`, `Retry-After`); otherwise its handler runs in a
//! task of its own, so a client that hangs up, or a request that overruns
//! `request_timeout`, does not stop a transfer halfway: it runs on to its
//! decision. Error bodies (and a `202`'s) carry the request's id; what went
//! wrong inside (a participant's address, a driver's text) goes to the log,
//! never to the client.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Semaphore;
use tracing::Instrument;
use wallet_shared::telemetry::RequestId;
use wallet_shared::{ErrorCode, Rejection};

use crate::client::CallError;
use crate::transfer::Coordinator;

/// The edge's limits (see `config/coordinator.toml`).
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Requests served at once at most, probes apart.
    pub max_requests_in_flight: usize,
    /// Longest a client waits for its answer.
    pub request_timeout: Duration,
}

/// Seconds a shed client is told to wait (`Retry-After`).
pub const RETRY_AFTER_SECONDS: &str = "1";

/// Everything the coordinator's listener serves: the public API and the
/// admin routes (both behind the API keys of `keys`), with a
/// `{code, message}` 404, the body limit and the [`guard`].
pub fn router(coordinator: Coordinator, keys: crate::auth::Keys, limits: EdgeLimits) -> Router {
    let authenticated = axum::middleware::from_fn_with_state(keys, crate::auth::authenticate);
    let edge = Arc::new(Edge {
        in_flight: Arc::new(Semaphore::new(limits.max_requests_in_flight.max(1))),
        timeout: limits.request_timeout,
    });
    let routes = crate::api::routes()
        .merge(crate::api::authenticated_routes().route_layer(authenticated.clone()))
        .merge(crate::admin::routes().route_layer(authenticated))
        .fallback(|| async { ApiError(Rejection::new(ErrorCode::NotFound, "no such endpoint")) })
        .with_state(coordinator);
    // Around the whole router, once (see `wallet_shared::server::around`).
    wallet_shared::server::around(
        routes,
        tower::ServiceBuilder::new()
            .layer(axum::middleware::from_fn_with_state(edge, guard))
            .layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes)),
    )
}

struct Edge {
    in_flight: Arc<Semaphore>,
    timeout: Duration,
}

/// Probes answer whatever the load: an orchestrator must not take a busy
/// coordinator for a dead one.
fn is_probe(path: &str) -> bool {
    matches!(path, "/health" | "/livez" | "/readyz" | "/metrics")
}

/// Middleware: load shedding, the request in its own task, the request
/// timeout, and the request id in error bodies (see the module's
/// documentation).
async fn guard(State(edge): State<Arc<Edge>>, req: Request, next: Next) -> Response {
    let request_id = req.extensions().get::<RequestId>().cloned();
    let response = if is_probe(req.uri().path()) {
        next.run(req).await
    } else if let Ok(permit) = edge.in_flight.clone().try_acquire_owned() {
        // The permit goes with the task: work a client walked away from
        // still counts until it ends.
        let work = tokio::spawn(
            async move {
                let response = next.run(req).await;
                drop(permit);
                response
            }
            .in_current_span(),
        );
        match tokio::time::timeout(edge.timeout, work).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "request handler failed");
                ApiError(Rejection::new(ErrorCode::Internal, "the request failed")).into_response()
            }
            Err(_) => {
                tracing::warn!(timeout = ?edge.timeout, "request timed out; its work goes on");
                ApiError(Rejection::new(
                    ErrorCode::Unavailable,
                    format!(
                        "no answer within {:?}; what the request started goes on to its end: look up a transfer's status, or retry with the same transaction_id",
                        edge.timeout
                    ),
                ))
                .into_response()
            }
        }
    } else {
        metrics::counter!("wallet_http_requests_shed_total").increment(1);
        ApiError(Rejection::new(
            ErrorCode::Overloaded,
            "too many requests in flight; nothing was done, retry after a pause",
        ))
        .into_response()
    };
    match request_id {
        Some(id) => with_request_id(response, &id.0).await,
        None => response,
    }
}

/// Adds `request_id` to an error body (and a `202`'s), so a client can
/// quote it and an operator find the log lines.
async fn with_request_id(response: Response, id: &str) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error() || status == StatusCode::ACCEPTED)
        || !is_json
    {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return ApiError(Rejection::new(
            ErrorCode::Internal,
            "the answer could not be sent",
        ))
        .into_response();
    };
    let body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(mut fields)) => {
            fields.insert("request_id".into(), Value::String(id.to_string()));
            serde_json::to_vec(&fields).map_or(bytes, axum::body::Bytes::from)
        }
        _ => bytes,
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
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
            CallError::Unknown(why) => {
                // `why` may name a participant's address or quote its
                // database: the log's, not the client's.
                tracing::warn!(error = %why, "a participant gave no clear answer");
                ApiError(Rejection::new(
                    ErrorCode::Unavailable,
                    "a node did not answer; the outcome is unknown, retry with the same transaction_id",
                ))
            }
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
        let shed = self.0.code == ErrorCode::Overloaded;
        let mut response = reply(
            self.0.code.http_status(),
            serde_json::to_value(&self.0).unwrap_or(Value::Null),
        );
        if too_large {
            // The rest of the body was never read: this connection cannot
            // carry another request, so say so instead of letting the
            // client's next request on it fail.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if shed {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

pub fn reply(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response()
}

pub type ApiResult<T = Response> = Result<T, ApiError>;

pub fn invalid(message: impl Into<String>) -> Rejection {
    Rejection::new(ErrorCode::InvalidRequest, message)
}

/// JSON body extractor whose every failure is a `{code, message}` error:
/// 415 unless the content type is `application/json` (a browser's form
/// post, `text/plain` or none at all: such a body is not read), 413 over the
/// size limit, 400 for anything that is not the expected JSON (unknown
/// fields included).
pub struct ApiJson<T>(pub T);

/// `application/json`, with parameters (`; charset=utf-8`) or without.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError(Rejection::new(
                ErrorCode::UnsupportedMediaType,
                "the body must be JSON, sent with Content-Type: application/json",
            )));
        }
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
