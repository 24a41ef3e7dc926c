//! The participant's rows as they are stored, read straight from its
//! database by those who check it from outside the service (the chaos
//! suite's audit, the end-to-end tests through it, the benchmark's final
//! count), who must see what is there rather than what the service would
//! answer. The SQL is here, beside the schema; the checks are theirs.

use sqlx::{PgConnection, Row};
use uuid::Uuid;
use wallet_shared::protocol::{EventKind, LegState};

use crate::error::StoreError;
use crate::pg::leg_state;

// The rows' types are the checkers' model of a node's contents.
pub use wallet_history::state::{AuditEvent, Stored, StoredTransfer};

/// Everything [`read`] found in one database.
#[derive(Debug, Default)]
pub struct Contents {
    /// Balance rows, with their account ids.
    pub accounts: Vec<(String, Stored)>,
    /// Every event, in no particular order.
    pub events: Vec<AuditEvent>,
    /// Decision records, with their transaction ids.
    pub transfers: Vec<(Uuid, StoredTransfer)>,
    /// Legs still prepared.
    pub prepared_legs: i64,
}

/// Reads every balance row, event and decision record of one database, and
/// counts its prepared legs.
pub async fn read(conn: &mut PgConnection) -> Result<Contents, StoreError> {
    let mut contents = Contents::default();
    for row in sqlx::query(
        "SELECT account_id, currency, posted, held, pending_credit, last_seq FROM accounts",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        contents.accounts.push((
            row.try_get("account_id")?,
            Stored {
                currency: row.try_get("currency")?,
                posted: row.try_get("posted")?,
                held: row.try_get("held")?,
                pending_credit: row.try_get("pending_credit")?,
                last_seq: row.try_get("last_seq")?,
            },
        ));
    }
    for row in sqlx::query(
        "SELECT account_id, seq, kind, amount, transaction_id, counterparty, at FROM events",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        let kind: String = row.try_get("kind")?;
        contents.events.push(AuditEvent {
            account: row.try_get("account_id")?,
            seq: row.try_get("seq")?,
            kind: EventKind::parse(&kind)
                .ok_or_else(|| StoreError::corrupt(format!("unknown event kind {kind:?}")))?,
            amount: row.try_get("amount")?,
            transaction_id: row.try_get("transaction_id")?,
            counterparty: row.try_get("counterparty")?,
            at: row.try_get("at")?,
        });
    }
    for row in sqlx::query(
        "SELECT transaction_id, kind, from_account, to_account, amount, currency, state, completed
         FROM transfers",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        contents.transfers.push((
            row.try_get("transaction_id")?,
            StoredTransfer {
                kind: row.try_get("kind")?,
                from: row.try_get("from_account")?,
                to: row.try_get("to_account")?,
                amount: row.try_get("amount")?,
                currency: row.try_get("currency")?,
                state: row.try_get("state")?,
                completed: row.try_get("completed")?,
            },
        ));
    }
    contents.prepared_legs = sqlx::query_scalar("SELECT count(*) FROM legs WHERE state = $1")
        .bind(leg_state(LegState::Prepared))
        .fetch_one(&mut *conn)
        .await?;
    Ok(contents)
}

/// The larger of the number of legs still prepared and of accounts with
/// funds held or a credit pending: 0 once nothing is in flight.
pub async fn in_flight(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM legs WHERE state = $1
         UNION ALL SELECT count(*) FROM accounts WHERE held > 0 OR pending_credit > 0
         ORDER BY 1 DESC LIMIT 1",
    )
    .bind(leg_state(LegState::Prepared))
    .fetch_one(&mut *conn)
    .await?)
}

/// The sum of every account's posted balance (minor units, all currencies).
pub async fn posted_total(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT COALESCE(sum(posted), 0)::int8 FROM accounts")
            .fetch_one(&mut *conn)
            .await?,
    )
}
