//! A long account history written straight into a participant's database,
//! set-based, exactly as the participant would have written it: `n`
//! deposits of one minor unit after the account's last event, one
//! microsecond apart, the snapshot every `snapshot_every`th event, and the
//! balance row moved to match. For the `as_of` figures (`asof-bench`) and
//! the test that an `as_of` on a long history folds a bounded number of
//! events. The events bypass the feed (like a bulk import).

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};

/// What [`append_deposits`] wrote.
#[derive(Debug, Clone, Copy)]
pub struct History {
    /// Time of the account's last event before: the `k`th new deposit
    /// (from 1) is stamped `base + k` microseconds.
    pub base: DateTime<Utc>,
    /// The account's posted balance before (minor units).
    pub posted_before: i64,
    /// Sequence number of the first new event.
    pub first_seq: i64,
}

impl History {
    /// The instant of the `k`th new deposit.
    pub fn at(&self, k: i64) -> DateTime<Utc> {
        self.base + chrono::Duration::microseconds(k)
    }
}

pub async fn append_deposits(
    database_url: &str,
    account: &str,
    n: i64,
    snapshot_every: i64,
) -> Result<History> {
    let mut db = PgConnection::connect(database_url)
        .await
        .with_context(|| format!("connecting to {database_url}"))?;
    let mut tx = db.begin().await?;
    let (first_seq, posted_before, base): (i64, i64, DateTime<Utc>) = sqlx::query_as(
        "SELECT a.last_seq + 1, a.posted, e.at FROM accounts a
         JOIN events e ON e.account_id = a.account_id AND e.seq = a.last_seq
         WHERE a.account_id = $1 FOR UPDATE OF a",
    )
    .bind(account)
    .fetch_one(&mut *tx)
    .await
    .with_context(|| format!("account {account} with at least one event"))?;
    sqlx::query(
        "INSERT INTO events (account_id, seq, kind, amount, transaction_id, at)
         SELECT $1, s, 'deposited', 1, gen_random_uuid(),
                $3 + (s - $2 + 1) * interval '1 microsecond'
         FROM generate_series($2::int8, $2 + $4 - 1) s",
    )
    .bind(account)
    .bind(first_seq)
    .bind(base)
    .bind(n)
    .execute(&mut *tx)
    .await?;
    if snapshot_every > 0 {
        sqlx::query(
            "INSERT INTO snapshots (account_id, seq, posted, held, pending_credit, at)
             SELECT $1, s, $3 + (s - $2 + 1), a.held, a.pending_credit,
                    $4 + (s - $2 + 1) * interval '1 microsecond'
             FROM generate_series($2::int8, $2 + $5 - 1) s, accounts a
             WHERE a.account_id = $1 AND s % $6 = 0",
        )
        .bind(account)
        .bind(first_seq)
        .bind(posted_before)
        .bind(base)
        .bind(n)
        .bind(snapshot_every)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "UPDATE accounts SET posted = posted + $2, last_seq = last_seq + $2 WHERE account_id = $1",
    )
    .bind(account)
    .bind(n)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(History {
        base,
        posted_before,
        first_seq,
    })
}
