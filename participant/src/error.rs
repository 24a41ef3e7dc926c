//! The participant's errors: a refusal that is an answer (`Rejection`, with
//! its stable code), or a failure of the store that is not one.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use wallet_shared::{ErrorCode, Rejection};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    /// The store cannot be reached now (the simulation's down database).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Something this store does not do (the simulation's runs no audit).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// An answer, not a failure (a read of a pruned part of the feed).
    #[error("{0}")]
    Refused(Rejection),
}

impl From<crate::model::Broken> for StoreError {
    fn from(b: crate::model::Broken) -> Self {
        StoreError::Corrupt(b.0)
    }
}

impl StoreError {
    pub fn corrupt(why: impl std::fmt::Display) -> Self {
        StoreError::Corrupt(why.to_string())
    }

    /// Deadlocks, serialization failures, a concurrent insert of the same
    /// key (unique violation) and lost connections are worth another try of
    /// the whole transaction, which then reads the winner's rows.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Database(db)) => {
                matches!(
                    db.code().as_deref(),
                    Some("23505" | "40001" | "40P01" | "55P03" | "57014")
                )
            }
            StoreError::Db(
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed,
            ) => true,
            StoreError::Unavailable(_) => true,
            _ => false,
        }
    }
}

/// What an HTTP handler of the participant returns on failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::model::Broken> for ApiError {
    fn from(b: crate::model::Broken) -> Self {
        ApiError::Store(b.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self {
            ApiError::Rejected(r) | ApiError::Store(StoreError::Refused(r)) => r,
            ApiError::Store(e) => {
                tracing::error!(error = %e, "store failure");
                let code = if e.is_transient() {
                    ErrorCode::Unavailable
                } else {
                    ErrorCode::Internal
                };
                Rejection::new(code, e.to_string())
            }
        };
        let status = StatusCode::from_u16(body.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
