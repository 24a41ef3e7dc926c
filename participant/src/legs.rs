//! Legs of cross-node transfers: prepare (hold funds as data), then commit or
//! abort as the decision says. Each operation is idempotent on
//! `(transaction_id, role)`, so duplicated, late and reordered messages are
//! harmless: a prepare after an abort finds the tombstone and votes no.

use sqlx::{PgConnection, Row};
use wallet_shared::protocol::{EventKind, Leg, LegRole, LegState, Vote};
use wallet_shared::{ErrorCode, Rejection};

use crate::error::StoreError;
use crate::ledger;

/// What a stored leg says, for comparing with a request.
struct StoredLeg {
    account_id: String,
    amount: i64,
    currency: String,
    state: LegState,
    reason: Option<Rejection>,
}

async fn load(
    conn: &mut PgConnection,
    leg: &Leg,
    lock: bool,
) -> Result<Option<StoredLeg>, StoreError> {
    let sql = if lock {
        "SELECT account_id, amount, currency, state, reason_code, reason_message FROM legs
         WHERE transaction_id = $1 AND role = $2 FOR UPDATE"
    } else {
        "SELECT account_id, amount, currency, state, reason_code, reason_message FROM legs
         WHERE transaction_id = $1 AND role = $2"
    };
    let row = sqlx::query(sql)
        .bind(leg.transaction_id.0)
        .bind(leg.role.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(StoredLeg {
        account_id: row.try_get("account_id")?,
        amount: row.try_get("amount")?,
        currency: row.try_get("currency")?,
        state: parse_state(&row.try_get::<String, _>("state")?)?,
        reason: read_reason(&row)?,
    }))
}

pub fn parse_state(s: &str) -> Result<LegState, StoreError> {
    match s {
        "prepared" => Ok(LegState::Prepared),
        "committed" => Ok(LegState::Committed),
        "aborted" => Ok(LegState::Aborted),
        other => Err(StoreError::corrupt(format!("leg state {other:?}"))),
    }
}

/// Reads `reason_code` / `reason_message` columns into a rejection.
pub fn read_reason(row: &sqlx::postgres::PgRow) -> Result<Option<Rejection>, StoreError> {
    let code: Option<String> = row.try_get("reason_code")?;
    let Some(code) = code else { return Ok(None) };
    let code: ErrorCode =
        serde_json::from_value(serde_json::Value::String(code)).map_err(StoreError::corrupt)?;
    Ok(Some(Rejection::new(
        code,
        row.try_get::<Option<String>, _>("reason_message")?
            .unwrap_or_default(),
    )))
}

/// Inserts the leg's row in `state`; false when a row for it already exists.
async fn insert(
    conn: &mut PgConnection,
    leg: &Leg,
    state: &str,
    reason: Option<&Rejection>,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO legs (transaction_id, role, account_id, partition, amount, currency,
                           counterparty, decision_partition, state, reason_code, reason_message)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (transaction_id, role) DO NOTHING",
    )
    .bind(leg.transaction_id.0)
    .bind(leg.role.as_str())
    .bind(leg.account.as_str())
    .bind(leg.partition as i32)
    .bind(leg.amount.minor())
    .bind(leg.currency.code())
    .bind(leg.counterparty.as_str())
    .bind(leg.decision_partition as i32)
    .bind(state)
    .bind(reason.map(|r| r.code.as_str()))
    .bind(reason.map(|r| r.message.as_str()))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Records a leg that was applied (or refused) in the same local
/// transaction as its decision.
pub async fn insert_finished(
    conn: &mut PgConnection,
    leg: &Leg,
    state: &str,
    reason: Option<&Rejection>,
) -> Result<(), StoreError> {
    if !insert(conn, leg, state, reason).await? {
        return Err(StoreError::corrupt(format!(
            "{} leg of {} exists although its transfer just began",
            leg.role.as_str(),
            leg.transaction_id
        )));
    }
    Ok(())
}

async fn set_state(
    conn: &mut PgConnection,
    leg: &Leg,
    state: &str,
    reason: Option<&Rejection>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE legs SET state = $3, reason_code = $4, reason_message = $5, updated_at = now()
         WHERE transaction_id = $1 AND role = $2",
    )
    .bind(leg.transaction_id.0)
    .bind(leg.role.as_str())
    .bind(state)
    .bind(reason.map(|r| r.code.as_str()))
    .bind(reason.map(|r| r.message.as_str()))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Prepares one leg: a debit moves the amount from available to held, a
/// credit records a pending credit. A refusal is recorded too (as an aborted
/// leg), so every later prepare of the same leg gets the same vote.
pub async fn prepare(conn: &mut PgConnection, leg: &Leg) -> Result<Vote, StoreError> {
    if !insert(conn, leg, "prepared", None).await? {
        let Some(stored) = load(conn, leg, false).await? else {
            return Err(StoreError::corrupt(
                "leg vanished after a conflicting insert",
            ));
        };
        if stored.account_id != leg.account.as_str()
            || stored.amount != leg.amount.minor()
            || stored.currency != leg.currency.code()
        {
            return Ok(Vote::No {
                reason: Rejection::new(
                    ErrorCode::IdempotencyKeyReused,
                    format!(
                        "transaction {} already has another {} leg",
                        leg.transaction_id,
                        leg.role.as_str()
                    ),
                ),
            });
        }
        return Ok(match stored.state {
            LegState::Prepared | LegState::Committed => Vote::Yes,
            LegState::Aborted | LegState::Missing => Vote::No {
                reason: stored.reason.unwrap_or_else(|| already_aborted(leg)),
            },
        });
    }
    let accounts = ledger::lock(conn, &[&leg.account]).await?;
    let amount = leg.amount.minor();
    let verdict = match accounts.get(&leg.account) {
        None => Err(ledger::not_found(&leg.account)),
        Some(a) => match leg.role {
            LegRole::Debit => a.can_debit(&leg.account, amount, leg.currency),
            LegRole::Credit => a.can_credit(&leg.account, amount, leg.currency),
        },
    };
    match verdict {
        Ok(()) => {
            let kind = match leg.role {
                LegRole::Debit => EventKind::DebitHeld,
                LegRole::Credit => EventKind::CreditPending,
            };
            ledger::record(
                conn,
                &leg.account,
                kind,
                amount,
                Some(leg.transaction_id),
                Some(&leg.counterparty),
            )
            .await?;
            Ok(Vote::Yes)
        }
        Err(reason) => {
            set_state(conn, leg, "aborted", Some(&reason)).await?;
            Ok(Vote::No { reason })
        }
    }
}

fn already_aborted(leg: &Leg) -> Rejection {
    Rejection::new(
        ErrorCode::LegAborted,
        format!(
            "the {} leg of {} was already aborted",
            leg.role.as_str(),
            leg.transaction_id
        ),
    )
}

/// Applies a decision to one leg: commit posts it, abort releases it. An
/// abort of a leg never seen leaves a tombstone, so a late prepare is refused.
pub async fn finish(
    conn: &mut PgConnection,
    leg: &Leg,
    commit: bool,
) -> Result<LegState, StoreError> {
    let Some(stored) = load(conn, leg, true).await? else {
        if commit {
            tracing::error!(transaction_id = %leg.transaction_id, role = leg.role.as_str(), "commit of a leg this node never prepared");
            return Ok(LegState::Missing);
        }
        insert(conn, leg, "aborted", Some(&already_aborted(leg))).await?;
        return Ok(LegState::Aborted);
    };
    if stored.state != LegState::Prepared {
        let wanted = if commit {
            LegState::Committed
        } else {
            LegState::Aborted
        };
        if stored.state != wanted {
            tracing::error!(transaction_id = %leg.transaction_id, role = leg.role.as_str(), state = ?stored.state, ?wanted, "leg already finished the other way");
        }
        return Ok(stored.state);
    }
    let account =
        wallet_shared::AccountId::parse(stored.account_id).map_err(StoreError::corrupt)?;
    let kind = match (leg.role, commit) {
        (LegRole::Debit, true) => EventKind::DebitPosted,
        (LegRole::Debit, false) => EventKind::DebitReleased,
        (LegRole::Credit, true) => EventKind::CreditPosted,
        (LegRole::Credit, false) => EventKind::CreditVoided,
    };
    ledger::lock(conn, &[&account]).await?;
    ledger::record(
        conn,
        &account,
        kind,
        stored.amount,
        Some(leg.transaction_id),
        Some(&leg.counterparty),
    )
    .await?;
    let state = if commit { "committed" } else { "aborted" };
    set_state(conn, leg, state, None).await?;
    Ok(if commit {
        LegState::Committed
    } else {
        LegState::Aborted
    })
}

/// Legs still prepared since before `grace_ms`: recovery's safety net.
pub async fn stale_prepared(
    conn: &mut PgConnection,
    grace_ms: i64,
    limit: i64,
) -> Result<Vec<Leg>, StoreError> {
    let rows = sqlx::query(
        "SELECT transaction_id, role, account_id, partition, amount, currency, counterparty, decision_partition
         FROM legs WHERE state = 'prepared' AND created_at < now() - make_interval(secs => $1::float8 / 1000)
         ORDER BY created_at LIMIT $2",
    )
    .bind(grace_ms)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(leg_from_row).collect()
}

fn leg_from_row(row: &sqlx::postgres::PgRow) -> Result<Leg, StoreError> {
    let role = match row.try_get::<String, _>("role")?.as_str() {
        "debit" => LegRole::Debit,
        "credit" => LegRole::Credit,
        other => return Err(StoreError::corrupt(format!("leg role {other:?}"))),
    };
    Ok(Leg {
        transaction_id: wallet_shared::TransactionId(row.try_get("transaction_id")?),
        role,
        account: wallet_shared::AccountId::parse(row.try_get::<String, _>("account_id")?)
            .map_err(StoreError::corrupt)?,
        partition: row.try_get::<i32, _>("partition")? as u32,
        amount: wallet_shared::Amount::from_minor(row.try_get("amount")?)
            .map_err(StoreError::corrupt)?,
        currency: wallet_shared::Currency::parse(&row.try_get::<String, _>("currency")?)
            .map_err(StoreError::corrupt)?,
        counterparty: wallet_shared::AccountId::parse(
            row.try_get::<Option<String>, _>("counterparty")?
                .unwrap_or_default(),
        )
        .map_err(StoreError::corrupt)?,
        decision_partition: row
            .try_get::<Option<i32>, _>("decision_partition")?
            .unwrap_or_default() as u32,
    })
}
