//! Decision records: the dedup record and the one durable decision of each
//! transfer whose decision partition lives here.
//!
//! `begin` inserts the record (`preparing`) with a lease for the coordinator
//! that runs it; `decide` is a compare-and-set out of `preparing`, so the first
//! decision wins and every later one (a slow coordinator, recovery) reads it.
//! Presumed abort: a transfer without a `committed` record never happened.

use sqlx::{PgConnection, Row};
use wallet_shared::protocol::{
    Begin, BeginResult, Decision, EventKind, Leg, TransferRecord, TransferSpec, TransferState,
};
use wallet_shared::{AccountId, Amount, Currency, TransactionId};

use crate::error::StoreError;
use crate::{ledger, legs};

const RECORD_COLUMNS: &str = "transaction_id, fingerprint, from_account, to_account, amount, currency, state,
     reason_code, reason_message, created_at, decided_at, completed, lease_until > now() AS leased, lease_owner";

struct Stored {
    record: TransferRecord,
    fingerprint: String,
    leased: bool,
    lease_owner: uuid::Uuid,
}

fn from_row(row: &sqlx::postgres::PgRow) -> Result<Stored, StoreError> {
    let state = match row.try_get::<String, _>("state")?.as_str() {
        "preparing" => TransferState::Preparing,
        "committed" => TransferState::Committed,
        "aborted" => TransferState::Aborted,
        other => return Err(StoreError::corrupt(format!("transfer state {other:?}"))),
    };
    Ok(Stored {
        record: TransferRecord {
            spec: TransferSpec {
                transaction_id: TransactionId(row.try_get("transaction_id")?),
                from: AccountId::parse(row.try_get::<String, _>("from_account")?)
                    .map_err(StoreError::corrupt)?,
                to: AccountId::parse(row.try_get::<String, _>("to_account")?)
                    .map_err(StoreError::corrupt)?,
                amount: Amount::from_minor(row.try_get("amount")?).map_err(StoreError::corrupt)?,
                currency: Currency::parse(&row.try_get::<String, _>("currency")?)
                    .map_err(StoreError::corrupt)?,
            },
            state,
            reason: legs::read_reason(row)?,
            created_at: row.try_get("created_at")?,
            decided_at: row.try_get("decided_at")?,
            completed: row.try_get("completed")?,
        },
        fingerprint: row.try_get("fingerprint")?,
        leased: row.try_get("leased")?,
        lease_owner: row.try_get("lease_owner")?,
    })
}

async fn load(
    conn: &mut PgConnection,
    id: TransactionId,
    lock: bool,
) -> Result<Option<Stored>, StoreError> {
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM transfers WHERE transaction_id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let row = sqlx::query(&sql)
        .bind(id.0)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

pub async fn lookup(
    conn: &mut PgConnection,
    id: TransactionId,
) -> Result<Option<TransferRecord>, StoreError> {
    Ok(load(conn, id, false).await?.map(|s| s.record))
}

/// Claims a transfer for the calling coordinator, or says why not.
pub async fn begin(conn: &mut PgConnection, b: &Begin) -> Result<BeginResult, StoreError> {
    let spec = &b.spec;
    let fingerprint = spec.fingerprint();
    let inserted = sqlx::query(
        "INSERT INTO transfers (transaction_id, partition, fingerprint, from_account, to_account, amount,
                                currency, state, lease_until, lease_owner)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'preparing', now() + make_interval(secs => $8::float8 / 1000), $9)
         ON CONFLICT (transaction_id) DO NOTHING",
    )
    .bind(spec.transaction_id.0)
    .bind(b.partition as i32)
    .bind(&fingerprint)
    .bind(spec.from.as_str())
    .bind(spec.to.as_str())
    .bind(spec.amount.minor())
    .bind(spec.currency.code())
    .bind(b.lease_ms as i64)
    .bind(b.attempt)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(BeginResult::Proceed);
    }
    let Some(stored) = load(conn, spec.transaction_id, true).await? else {
        return Err(StoreError::corrupt(
            "transfer record vanished after a conflicting insert",
        ));
    };
    if stored.fingerprint != fingerprint {
        return Ok(BeginResult::Reused);
    }
    if stored.record.state != TransferState::Preparing {
        return Ok(BeginResult::Decided {
            record: stored.record,
        });
    }
    if stored.leased && stored.lease_owner != b.attempt {
        return Ok(BeginResult::InProgress);
    }
    // The coordinator that began it has gone quiet past its lease: this one
    // takes over. Both running the protocol is safe (idempotent legs, CAS
    // decision); the lease only avoids doing the work twice.
    sqlx::query(
        "UPDATE transfers SET lease_until = now() + make_interval(secs => $2::float8 / 1000), lease_owner = $3
         WHERE transaction_id = $1",
    )
    .bind(spec.transaction_id.0)
    .bind(b.lease_ms as i64)
    .bind(b.attempt)
        .execute(&mut *conn)
        .await?;
    if stored.lease_owner != b.attempt {
        tracing::info!(transaction_id = %spec.transaction_id, "taking over a transfer whose lease expired");
    }
    Ok(BeginResult::Proceed)
}

/// Compare-and-set out of `preparing`. Returns the record as it now stands:
/// the winning decision, which may not be the one asked for.
pub async fn decide(
    conn: &mut PgConnection,
    id: TransactionId,
    decision: &Decision,
) -> Result<Option<TransferRecord>, StoreError> {
    let (state, reason) = match decision {
        Decision::Commit => ("committed", None),
        Decision::Abort { reason } => ("aborted", Some(reason)),
    };
    sqlx::query(
        "UPDATE transfers SET state = $2, reason_code = $3, reason_message = $4, decided_at = now()
         WHERE transaction_id = $1 AND state = 'preparing'",
    )
    .bind(id.0)
    .bind(state)
    .bind(reason.map(|r| r.code.as_str()))
    .bind(reason.map(|r| r.message.as_str()))
    .execute(&mut *conn)
    .await?;
    lookup(conn, id).await
}

pub async fn complete(conn: &mut PgConnection, ids: &[uuid::Uuid]) -> Result<(), StoreError> {
    sqlx::query("UPDATE transfers SET completed = true WHERE transaction_id = ANY($1) AND state <> 'preparing'")
        .bind(ids)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Records recovery should drive: decided but not completed (and older than
/// `grace_ms`, so the live coordinator finishes its own), or preparing with
/// an expired lease.
pub async fn unresolved(
    conn: &mut PgConnection,
    grace_ms: i64,
    limit: i64,
) -> Result<Vec<TransferRecord>, StoreError> {
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM transfers
         WHERE NOT completed
           AND ((state = 'preparing' AND lease_until < now())
             OR (state <> 'preparing' AND decided_at < now() - make_interval(secs => $1::float8 / 1000)))
         ORDER BY created_at LIMIT $2"
    );
    let rows = sqlx::query(&sql)
        .bind(grace_ms)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(|r| from_row(r).map(|s| s.record)).collect()
}

/// The whole transfer in one local transaction, when its decision partition
/// and both accounts live here: dedup record, both legs and both events
/// commit together or not at all.
pub async fn execute(
    conn: &mut PgConnection,
    b: &Begin,
    legs_: &[Leg; 2],
) -> Result<BeginResult, StoreError> {
    let started = begin(conn, b).await?;
    if started != BeginResult::Proceed {
        return Ok(started);
    }
    let spec = &b.spec;
    let amount = spec.amount.minor();
    let accounts = ledger::lock(conn, &[&spec.from, &spec.to]).await?;
    let verdict = match (accounts.get(&spec.from), accounts.get(&spec.to)) {
        (None, _) => Err(ledger::not_found(&spec.from)),
        (_, None) => Err(ledger::not_found(&spec.to)),
        (Some(from), Some(to)) => from
            .can_debit(&spec.from, amount, spec.currency)
            .and_then(|()| to.can_credit(&spec.to, amount, spec.currency)),
    };
    let decision = match verdict {
        Ok(()) => {
            ledger::record(
                conn,
                &spec.from,
                EventKind::TransferredOut,
                amount,
                Some(spec.transaction_id),
                Some(&spec.to),
            )
            .await?;
            ledger::record(
                conn,
                &spec.to,
                EventKind::TransferredIn,
                amount,
                Some(spec.transaction_id),
                Some(&spec.from),
            )
            .await?;
            Decision::Commit
        }
        Err(reason) => Decision::Abort { reason },
    };
    let (state, reason) = match &decision {
        Decision::Commit => ("committed", None),
        Decision::Abort { reason } => ("aborted", Some(reason)),
    };
    for leg in legs_ {
        legs::insert_finished(conn, leg, state, reason).await?;
    }
    let record = decide(conn, spec.transaction_id, &decision).await?;
    complete(conn, &[spec.transaction_id.0]).await?;
    match record {
        Some(mut record) => {
            record.completed = true;
            Ok(BeginResult::Decided { record })
        }
        None => Err(StoreError::corrupt(
            "transfer record vanished inside its transaction",
        )),
    }
}
