//! Money entering and leaving through one account (deposits, withdrawals),
//! and opening accounts: single-partition operations in one local
//! transaction. A movement is deduplicated by its transaction id on the
//! account's node, with a fingerprint of its body; a refusal is recorded too,
//! so a retry always gets the first answer.

use sqlx::{PgConnection, Row};
use wallet_shared::protocol::{AccountBalance, EventKind, Movement, MovementKind, OpenAccount};
use wallet_shared::{ErrorCode, Rejection};

use crate::error::StoreError;
use crate::{ledger, legs};

/// Opens the account; `Ok(true)` when it was created now, `Ok(false)` when
/// it already existed with the same currency.
pub async fn open(
    conn: &mut PgConnection,
    req: &OpenAccount,
) -> Result<Result<bool, Rejection>, StoreError> {
    let created = sqlx::query(
        "INSERT INTO accounts (account_id, partition, currency) VALUES ($1, $2, $3)
         ON CONFLICT (account_id) DO NOTHING",
    )
    .bind(req.account_id.as_str())
    .bind(req.partition as i32)
    .bind(req.currency.code())
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if created {
        ledger::record(conn, &req.account_id, EventKind::Opened, 0, None, None).await?;
        return Ok(Ok(true));
    }
    let existing = ledger::balance(conn, &req.account_id).await?;
    match existing {
        Some(b) if b.currency == req.currency => Ok(Ok(false)),
        Some(b) => Ok(Err(Rejection::new(
            ErrorCode::AccountExists,
            format!(
                "account {} already exists in {}",
                req.account_id, b.currency
            ),
        ))),
        None => Err(StoreError::corrupt(
            "account vanished after a conflicting insert",
        )),
    }
}

/// Applies a deposit or withdrawal once. Returns the balance after it, or
/// the refusal (the first one, on every retry).
pub async fn apply(
    conn: &mut PgConnection,
    m: &Movement,
) -> Result<Result<AccountBalance, Rejection>, StoreError> {
    let role = match m.kind {
        MovementKind::Deposit => "deposit",
        MovementKind::Withdrawal => "withdrawal",
    };
    let fingerprint = m.fingerprint();
    let inserted = sqlx::query(
        "INSERT INTO legs (transaction_id, role, account_id, partition, amount, currency, fingerprint, state)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'committed')
         ON CONFLICT (transaction_id, role) DO NOTHING",
    )
    .bind(m.transaction_id.0)
    .bind(role)
    .bind(m.account_id.as_str())
    .bind(m.partition as i32)
    .bind(m.amount.minor())
    .bind(m.currency.code())
    .bind(&fingerprint)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        let row = sqlx::query(
            "SELECT fingerprint, state, reason_code, reason_message FROM legs WHERE transaction_id = $1 AND role = $2",
        )
        .bind(m.transaction_id.0)
        .bind(role)
        .fetch_one(&mut *conn)
        .await?;
        if row.try_get::<Option<String>, _>("fingerprint")?.as_deref() != Some(fingerprint.as_str())
        {
            return Ok(Err(Rejection::new(
                ErrorCode::IdempotencyKeyReused,
                format!(
                    "transaction_id {} was already used with a different body",
                    m.transaction_id
                ),
            )));
        }
        if let Some(reason) = legs::read_reason(&row)? {
            return Ok(Err(reason));
        }
        return current(conn, m).await;
    }
    let accounts = ledger::lock(conn, &[&m.account_id]).await?;
    let amount = m.amount.minor();
    let verdict = match accounts.get(&m.account_id) {
        None => Err(ledger::not_found(&m.account_id)),
        Some(a) => match m.kind {
            MovementKind::Deposit => a.can_credit(&m.account_id, amount, m.currency),
            MovementKind::Withdrawal => a.can_debit(&m.account_id, amount, m.currency),
        },
    };
    if let Err(reason) = verdict {
        sqlx::query(
            "UPDATE legs SET state = 'aborted', reason_code = $3, reason_message = $4
             WHERE transaction_id = $1 AND role = $2",
        )
        .bind(m.transaction_id.0)
        .bind(role)
        .bind(reason.code.as_str())
        .bind(&reason.message)
        .execute(&mut *conn)
        .await?;
        return Ok(Err(reason));
    }
    let kind = match m.kind {
        MovementKind::Deposit => EventKind::Deposited,
        MovementKind::Withdrawal => EventKind::Withdrawn,
    };
    ledger::record(
        conn,
        &m.account_id,
        kind,
        amount,
        Some(m.transaction_id),
        None,
    )
    .await?;
    current(conn, m).await
}

async fn current(
    conn: &mut PgConnection,
    m: &Movement,
) -> Result<Result<AccountBalance, Rejection>, StoreError> {
    Ok(ledger::balance(conn, &m.account_id)
        .await?
        .ok_or_else(|| ledger::not_found(&m.account_id)))
}
