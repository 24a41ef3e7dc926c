//! The coordinator's HTTP edge, shared by the public API (`api`) and the
//! admin routes (`admin`): the listener's router, JSON body and query
//! extractors whose every failure is a `{code, message}` error, and the one
//! error-to-response mapping.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::Value;
use wallet_shared::{ErrorCode, Rejection};

use crate::client::CallError;
use crate::transfer::Coordinator;

/// Everything the coordinator's listener serves: the public API and the
/// admin routes (both behind the API keys of `keys`), with a
/// `{code, message}` 404 and the body limit.
pub fn router(coordinator: Coordinator, keys: crate::auth::Keys, max_body_bytes: usize) -> Router {
    let authenticated = axum::middleware::from_fn_with_state(keys, crate::auth::authenticate);
    crate::api::routes()
        .merge(crate::api::authenticated_routes().route_layer(authenticated.clone()))
        .merge(crate::admin::routes().route_layer(authenticated))
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
