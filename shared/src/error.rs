//! The stable, machine-readable error codes every component speaks, and the
//! body that carries one (`{"code": ..., "message": ...}`).
//!
//! A code never changes meaning once published: clients branch on it. The
//! HTTP status belongs to the code, so the coordinator and the participants
//! answer the same thing the same way.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // 400: the request itself is wrong; nothing was looked at.
    InvalidRequest,
    InvalidAmount,
    InvalidCurrency,
    InvalidAccountId,
    InvalidTransactionId,
    // 401/403/404/409/413/422: the request is well formed but cannot be done.
    /// No API key, or one the cluster does not know (or has revoked).
    Unauthenticated,
    /// The key is known but may not do this (its scope, or another
    /// tenant's account).
    Forbidden,
    AccountNotFound,
    TransferNotFound,
    NotFound,
    AccountExists,
    InProgress,
    PayloadTooLarge,
    /// A body that is not `application/json` (a browser's form post).
    UnsupportedMediaType,
    SameAccount,
    CurrencyMismatch,
    InsufficientFunds,
    BalanceOverflow,
    IdempotencyKeyReused,
    /// A fold of an account's events (`as_of` without snapshots) would read
    /// more events than the node allows (`max_fold_events`).
    HistoryTooLong,
    /// Aborted for a reason outside the request (a node did not answer, or
    /// its coordinator stopped before deciding). Final for this id.
    TransferAborted,
    /// A leg was already aborted (for example by recovery) when its prepare arrived.
    LegAborted,
    // 421/429/5xx: try again later.
    WrongPartitionOwner,
    /// The partition is being moved to another node; nothing was done.
    PartitionMoving,
    /// Shedding load: more requests in flight than the limit, or a full
    /// queue; nothing was done (with `Retry-After`).
    Overloaded,
    /// Over the API key's rate; `Retry-After` says when to try again.
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            InvalidRequest | InvalidAmount | InvalidCurrency | InvalidAccountId
            | InvalidTransactionId => 400,
            Unauthenticated => 401,
            Forbidden => 403,
            AccountNotFound | TransferNotFound | NotFound => 404,
            AccountExists | InProgress | TransferAborted => 409,
            PayloadTooLarge => 413,
            UnsupportedMediaType => 415,
            SameAccount | CurrencyMismatch | InsufficientFunds | BalanceOverflow
            | IdempotencyKeyReused | LegAborted | HistoryTooLong => 422,
            WrongPartitionOwner => 421,
            RateLimited => 429,
            Internal => 500,
            Unavailable | PartitionMoving | Overloaded => 503,
        }
    }

    /// A refusal that judges the request itself (a 4xx other than a stale
    /// route and a rate limit): the same on every retry, so it may be
    /// recorded as the final answer for its id. Anything else (a stale map,
    /// a partition moving, overload, a node that cannot serve now) says
    /// nothing was done, and only for now.
    pub fn is_verdict(self) -> bool {
        let status = self.http_status();
        (400..500).contains(&status) && status != 421 && status != 429
    }

    /// The code's wire spelling (the same as serde's, which a test checks).
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidRequest => "invalid_request",
            InvalidAmount => "invalid_amount",
            InvalidCurrency => "invalid_currency",
            InvalidAccountId => "invalid_account_id",
            InvalidTransactionId => "invalid_transaction_id",
            Unauthenticated => "unauthenticated",
            Forbidden => "forbidden",
            AccountNotFound => "account_not_found",
            TransferNotFound => "transfer_not_found",
            NotFound => "not_found",
            AccountExists => "account_exists",
            InProgress => "in_progress",
            PayloadTooLarge => "payload_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            SameAccount => "same_account",
            CurrencyMismatch => "currency_mismatch",
            InsufficientFunds => "insufficient_funds",
            BalanceOverflow => "balance_overflow",
            IdempotencyKeyReused => "idempotency_key_reused",
            HistoryTooLong => "history_too_long",
            TransferAborted => "transfer_aborted",
            LegAborted => "leg_aborted",
            WrongPartitionOwner => "wrong_partition_owner",
            PartitionMoving => "partition_moving",
            Overloaded => "overloaded",
            RateLimited => "rate_limited",
            Unavailable => "unavailable",
            Internal => "internal",
        }
    }

    /// Every code, for tests and documentation.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidAmount,
        ErrorCode::InvalidCurrency,
        ErrorCode::InvalidAccountId,
        ErrorCode::InvalidTransactionId,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::AccountNotFound,
        ErrorCode::TransferNotFound,
        ErrorCode::NotFound,
        ErrorCode::AccountExists,
        ErrorCode::InProgress,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::SameAccount,
        ErrorCode::CurrencyMismatch,
        ErrorCode::InsufficientFunds,
        ErrorCode::BalanceOverflow,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::HistoryTooLong,
        ErrorCode::TransferAborted,
        ErrorCode::LegAborted,
        ErrorCode::WrongPartitionOwner,
        ErrorCode::PartitionMoving,
        ErrorCode::Overloaded,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why something was refused: a code and a sentence for humans. This is also
/// the JSON error body of every HTTP API in the project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }

    /// The id was used before with another body, or for another kind of
    /// operation; says nothing about that use.
    pub fn idempotency_key_reused(id: crate::TransactionId) -> Self {
        Rejection::new(
            ErrorCode::IdempotencyKeyReused,
            format!(
                "transaction_id {id} was already used with a different body; nothing was applied"
            ),
        )
    }

    /// Another request with this id is running right now.
    pub fn in_progress(id: crate::TransactionId) -> Self {
        Rejection::new(
            ErrorCode::InProgress,
            format!("transaction {id} is being processed right now; retry shortly or GET /v1/wallet/transfers/{id}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_judgement_of_the_request_is_a_verdict() {
        use ErrorCode::*;
        for code in [
            AccountNotFound,
            InsufficientFunds,
            CurrencyMismatch,
            IdempotencyKeyReused,
        ] {
            assert!(code.is_verdict(), "{code}");
        }
        for code in [
            WrongPartitionOwner,
            PartitionMoving,
            Overloaded,
            Unavailable,
            Internal,
        ] {
            assert!(!code.is_verdict(), "{code}");
        }
    }

    #[test]
    fn every_code_has_its_snake_case_name() {
        for code in ErrorCode::ALL {
            let wire = serde_json::to_value(code).unwrap();
            assert_eq!(wire, serde_json::Value::String(code.as_str().to_string()));
        }
    }
}
