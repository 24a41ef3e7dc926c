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

/// An account's balance row.
#[derive(Debug, Clone)]
pub struct Stored {
    /// ISO code.
    pub currency: String,
    /// Money that is the account's, in minor units.
    pub posted: i64,
    /// Part of `posted` held by prepared debits.
    pub held: i64,
    /// Prepared credits, not yet the account's.
    pub pending_credit: i64,
    /// Sequence number of its last event.
    pub last_seq: i64,
}

/// One event of an account's log.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// Whose log.
    pub account: String,
    /// Per-account sequence number, from 1.
    pub seq: i64,
    /// What happened.
    pub kind: EventKind,
    /// Minor units.
    pub amount: i64,
    /// The transfer, deposit or withdrawal it belongs to.
    pub transaction_id: Option<Uuid>,
    /// The other account of a transfer.
    pub counterparty: Option<String>,
    /// When it was written; never earlier than the account's event before.
    pub at: chrono::DateTime<chrono::Utc>,
}

/// A decision record (the `transfers` table of the transfer's decision node).
#[derive(Debug, Clone)]
pub struct StoredTransfer {
    /// `transfer`, `deposit` or `withdrawal` (whose record names its
    /// account as both `from` and `to`).
    pub kind: String,
    /// Account debited.
    pub from: String,
    /// Account credited.
    pub to: String,
    /// Minor units.
    pub amount: i64,
    /// ISO code.
    pub currency: String,
    /// `preparing`, `committed` or `aborted`.
    pub state: String,
    /// Whether both legs have applied the decision.
    pub completed: bool,
}

/// Everything [`read`] found in one database.
#[derive(Debug, Default)]
pub struct Contents {
    /// Balance rows, with their account ids.
    pub accounts: Vec<(String, Stored)>,
    /// Every event, in no particular order.
    pub events: Vec<AuditEvent>,
    /// Decision records, with their transaction ids.
    pub transfers: Vec<(Uuid, StoredTransfer)>,
    /// Rows in `pg_prepared_xacts`.
    pub prepared_xacts: i64,
    /// Legs still prepared.
    pub prepared_legs: i64,
}

/// Reads every balance row, event and decision record of one database, and
/// counts its prepared transactions and prepared legs.
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
    contents.prepared_xacts = sqlx::query_scalar("SELECT count(*) FROM pg_prepared_xacts")
        .fetch_one(&mut *conn)
        .await?;
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
