//! Accounts and lookups, as the application does them: opening an account,
//! its balance (now or as of an instant), its events, and a transaction's
//! status. The public API (`api`) only parses into these and renders what
//! they return; the simulation calls them too.

use chrono::{DateTime, Utc};
use wallet_shared::protocol::{
    AccountBalance, EventKind, EventsPage, HistoricalBalance, OpenAccount, TransferRecord,
};
use wallet_shared::{routes, AccountId, Currency, TransactionId};

use crate::client::CallError;
use crate::transfer::Coordinator;

/// A page of an account's events: what to read.
#[derive(Debug, Clone, Default)]
pub struct EventsQuery {
    /// Events after this sequence number.
    pub after: i64,
    pub limit: Option<i64>,
    /// Only these types (all when empty).
    pub types: Vec<EventKind>,
}

impl Coordinator {
    /// Opens an account on the node that owns its partition, owned by
    /// `owner` (`None`: by admins); the same request again answers with its
    /// balance, another currency or another tenant's id is `account_exists`.
    pub async fn open(
        &self,
        account_id: AccountId,
        currency: Currency,
        owner: Option<String>,
    ) -> Result<AccountBalance, CallError> {
        let partition = self
            .participants
            .map
            .current()
            .account_partition(&account_id);
        self.participants
            .await_moves(&[partition])
            .await
            .map_err(CallError::Rejected)?;
        let req = OpenAccount {
            account_id,
            partition,
            currency,
            owner,
        };
        self.participants
            .post(&[partition], routes::ACCOUNTS.pattern(), &req)
            .await
    }

    /// The account's balance now, or rebuilt from its events as of an
    /// instant (from the newest snapshot before it unless `snapshots` is
    /// false).
    pub async fn balance(
        &self,
        account_id: &AccountId,
        as_of: Option<DateTime<Utc>>,
        snapshots: Option<bool>,
    ) -> Result<HistoricalBalance, CallError> {
        let partition = self
            .participants
            .map
            .current()
            .account_partition(account_id);
        let mut query = Vec::new();
        if let Some(t) = as_of {
            query.push(("as_of", t.to_rfc3339()));
        }
        if let Some(snapshots) = snapshots {
            query.push(("snapshots", snapshots.to_string()));
        }
        self.participants
            .get(partition, &routes::BALANCE.with(account_id), &query)
            .await
    }

    /// A page of the account's events, in sequence order.
    pub async fn events(
        &self,
        account_id: &AccountId,
        q: &EventsQuery,
    ) -> Result<EventsPage, CallError> {
        let partition = self
            .participants
            .map
            .current()
            .account_partition(account_id);
        let mut query = vec![("after", q.after.to_string())];
        if let Some(limit) = q.limit {
            query.push(("limit", limit.to_string()));
        }
        if !q.types.is_empty() {
            let types: Vec<&str> = q.types.iter().map(|k| k.as_str()).collect();
            query.push(("types", types.join(",")));
        }
        self.participants
            .get(partition, &routes::EVENTS.with(account_id), &query)
            .await
    }

    /// The record of a transaction id (a transfer, deposit or withdrawal) at
    /// its decision partition.
    pub async fn status(&self, id: TransactionId) -> Result<TransferRecord, CallError> {
        let partition = self.participants.map.current().decision_partition(id);
        self.participants
            .get(partition, &routes::TRANSFER.with(id), &[])
            .await
    }
}
