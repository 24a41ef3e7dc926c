//! Accounts and their event log. Every balance change in the participant goes
//! through [`record`]: it appends the event and applies the event's effect
//! (`EventKind::effect`, the same function a replay folds) to the balance row,
//! in the caller's transaction. So the balance can never drift from the log.

use std::collections::BTreeMap;

use sqlx::{PgConnection, Row};
use wallet_shared::protocol::{AccountBalance, Event, EventKind};
use wallet_shared::{AccountId, Currency, ErrorCode, Rejection, TransactionId};

use crate::error::StoreError;

/// An account row, read under `FOR UPDATE` while a transaction decides.
#[derive(Debug, Clone)]
pub struct Account {
    pub currency: Currency,
    pub posted: i64,
    pub held: i64,
    pub pending_credit: i64,
}

impl Account {
    pub fn available(&self) -> i64 {
        self.posted - self.held
    }

    /// May `amount` of `currency` leave this account?
    pub fn can_debit(
        &self,
        id: &AccountId,
        amount: i64,
        currency: Currency,
    ) -> Result<(), Rejection> {
        self.same_currency(id, currency)?;
        if self.available() < amount {
            return Err(Rejection::new(
                ErrorCode::InsufficientFunds,
                format!(
                    "account {id} has {} {currency} available, {} needed",
                    currency.format(self.available()),
                    currency.format(amount)
                ),
            ));
        }
        Ok(())
    }

    /// May `amount` of `currency` arrive in this account (now or once pending credits post)?
    pub fn can_credit(
        &self,
        id: &AccountId,
        amount: i64,
        currency: Currency,
    ) -> Result<(), Rejection> {
        self.same_currency(id, currency)?;
        let room = i64::MAX - self.posted - self.pending_credit;
        if amount > room {
            return Err(Rejection::new(
                ErrorCode::BalanceOverflow,
                format!("account {id} cannot hold that much {currency}"),
            ));
        }
        Ok(())
    }

    fn same_currency(&self, id: &AccountId, currency: Currency) -> Result<(), Rejection> {
        if self.currency != currency {
            return Err(Rejection::new(
                ErrorCode::CurrencyMismatch,
                format!("account {id} holds {}, not {currency}", self.currency),
            ));
        }
        Ok(())
    }
}

pub fn not_found(id: &AccountId) -> Rejection {
    Rejection::new(
        ErrorCode::AccountNotFound,
        format!("account {id} does not exist"),
    )
}

/// Locks the accounts in id order (so two transactions never deadlock on
/// them) and returns those that exist.
pub async fn lock(
    conn: &mut PgConnection,
    ids: &[&AccountId],
) -> Result<BTreeMap<AccountId, Account>, StoreError> {
    let mut sorted: Vec<&str> = ids.iter().map(|a| a.as_str()).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let rows = sqlx::query(
        "SELECT account_id, currency, posted, held, pending_credit FROM accounts
         WHERE account_id = ANY($1) ORDER BY account_id FOR UPDATE",
    )
    .bind(&sorted)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = BTreeMap::new();
    for row in rows {
        let id = AccountId::parse(row.try_get::<String, _>("account_id")?)
            .map_err(StoreError::corrupt)?;
        let currency =
            Currency::parse(&row.try_get::<String, _>("currency")?).map_err(StoreError::corrupt)?;
        out.insert(
            id,
            Account {
                currency,
                posted: row.try_get("posted")?,
                held: row.try_get("held")?,
                pending_credit: row.try_get("pending_credit")?,
            },
        );
    }
    Ok(out)
}

/// Appends one event to the account's log and applies it to the balance row.
pub async fn record(
    conn: &mut PgConnection,
    account: &AccountId,
    kind: EventKind,
    amount: i64,
    transaction_id: Option<TransactionId>,
    counterparty: Option<&AccountId>,
) -> Result<i64, StoreError> {
    let (d_posted, d_held, d_pending) = kind.effect(amount);
    let seq: i64 = sqlx::query_scalar(
        "WITH moved AS (
             UPDATE accounts SET posted = posted + $2, held = held + $3,
                    pending_credit = pending_credit + $4, last_seq = last_seq + 1
             WHERE account_id = $1 RETURNING last_seq)
         INSERT INTO events (account_id, seq, kind, amount, transaction_id, counterparty)
         SELECT $1, last_seq, $5, $6, $7, $8 FROM moved RETURNING seq",
    )
    .bind(account.as_str())
    .bind(d_posted)
    .bind(d_held)
    .bind(d_pending)
    .bind(kind.as_str())
    .bind(amount)
    .bind(transaction_id.map(|t| t.0))
    .bind(counterparty.map(|c| c.as_str()))
    .fetch_one(&mut *conn)
    .await?;
    Ok(seq)
}

pub async fn balance(
    conn: &mut PgConnection,
    id: &AccountId,
) -> Result<Option<AccountBalance>, StoreError> {
    let row = sqlx::query(
        "SELECT currency, posted, held, pending_credit, last_seq FROM accounts WHERE account_id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(AccountBalance {
        account_id: id.clone(),
        currency: Currency::parse(&row.try_get::<String, _>("currency")?)
            .map_err(StoreError::corrupt)?,
        posted: row.try_get("posted")?,
        held: row.try_get("held")?,
        pending_credit: row.try_get("pending_credit")?,
        last_seq: row.try_get("last_seq")?,
    }))
}

/// Events with `seq > after`, oldest first, at most `limit`, and only those
/// at or before `until` when given.
pub async fn events(
    conn: &mut PgConnection,
    id: &AccountId,
    after: i64,
    limit: i64,
    until: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Vec<Event>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, kind, amount, transaction_id, counterparty, at FROM events
         WHERE account_id = $1 AND seq > $2 AND ($4::timestamptz IS NULL OR at <= $4)
         ORDER BY seq LIMIT $3",
    )
    .bind(id.as_str())
    .bind(after)
    .bind(limit)
    .bind(until)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            let kind: String = row.try_get("kind")?;
            let counterparty: Option<String> = row.try_get("counterparty")?;
            Ok(Event {
                account_id: id.clone(),
                seq: row.try_get("seq")?,
                kind: EventKind::parse(&kind)
                    .ok_or_else(|| StoreError::corrupt(format!("event kind {kind:?}")))?,
                amount: row.try_get("amount")?,
                transaction_id: row
                    .try_get::<Option<uuid::Uuid>, _>("transaction_id")?
                    .map(TransactionId),
                counterparty: counterparty
                    .map(AccountId::parse)
                    .transpose()
                    .map_err(StoreError::corrupt)?,
                at: row.try_get("at")?,
            })
        })
        .collect()
}
