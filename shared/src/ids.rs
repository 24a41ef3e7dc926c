//! Identifiers that exist only when valid: account ids and transaction ids.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{ErrorCode, Rejection};

/// 1 to 64 characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountId(String);

impl AccountId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(id: impl Into<String>) -> Result<Self, Rejection> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= Self::MAX_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(AccountId(id))
        } else {
            Err(Rejection::new(
                ErrorCode::InvalidAccountId,
                format!(
                    "account id {id:?} must be 1 to {} characters of A-Z, a-z, 0-9, '_' and '-'",
                    Self::MAX_LEN
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for AccountId {
    type Error = Rejection;
    fn try_from(s: String) -> Result<Self, Rejection> {
        AccountId::parse(s)
    }
}

impl From<AccountId> for String {
    fn from(a: AccountId) -> String {
        a.0
    }
}

/// The client-chosen UUID that names one operation and deduplicates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TransactionId(pub Uuid);

impl TransactionId {
    pub fn parse(text: &str) -> Result<Self, Rejection> {
        Uuid::parse_str(text).map(TransactionId).map_err(|_| {
            Rejection::new(
                ErrorCode::InvalidTransactionId,
                format!("transaction_id {text:?} is not a UUID"),
            )
        })
    }

    pub fn new_random() -> Self {
        TransactionId(Uuid::new_v4())
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_are_short_and_plain() {
        assert!(AccountId::parse("alice_01-x").is_ok());
        assert!(AccountId::parse("a".repeat(64)).is_ok());
        for bad in ["", "a b", "ü", "a/b", "a.b"] {
            assert!(AccountId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(AccountId::parse("a".repeat(65)).is_err());
    }

    #[test]
    fn transaction_ids_are_uuids() {
        assert!(TransactionId::parse("8d6c5e0a-4f3b-4c1e-9d7a-2b1c0e9f8a7b").is_ok());
        let err = TransactionId::parse("not-a-uuid").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidTransactionId);
    }
}
