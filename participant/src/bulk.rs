//! Bulk loading: the participant's own rows written straight into its
//! database, set-based, where going through the API one account at a time
//! would take minutes (the benchmark's 100,000 accounts; the long histories
//! behind the `as_of` figures and tests). Nothing in the service calls it.
//!
//! The rows are exactly those the participant writes itself: the same
//! tables, event kinds, leg roles and states (named by [`RowRole`],
//! [`EventKind`], [`LegState`], [`RecordKind`], [`TransferState`] as
//! [`crate::pg`] stores them) and the same fingerprints, so the participant
//! finds them where it would have put them and answers for them as its own
//! (a replay of a loaded deposit is the same deposit). The events bypass the
//! feed, like any bulk import.

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};
use wallet_shared::protocol::{
    EventKind, LegState, Movement, MovementKind, RecordKind, TransferState,
};
use wallet_shared::PartitionId;

use crate::error::StoreError;
use crate::model::RowRole;
use crate::pg::{leg_state, transfer_state};

/// A deposit's claim record, kept by the node that owns its decision
/// partition: it makes the deposit's transaction id one key across the
/// cluster.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The deposit's decision partition (`PartitionMap::decision_partition`).
    pub partition: PartitionId,
    /// The deposit it claims the id for.
    pub deposit: Movement,
}

/// Writes, in one transaction, every account of `deposits` as opened and
/// then funded by that deposit, and the claim records of `claims`; then
/// `ANALYZE`s the tables so the planner knows their new size.
///
/// What `open` then `deposit` leave (`movements.rs`): the account row
/// (`posted` = the deposit, `last_seq` = 2); its `opened` (seq 1, amount 0)
/// and `deposited` (seq 2, with the transaction id) events; the deposit's
/// leg, committed, with [`Movement::fingerprint`]. And what
/// `decisions::begin` and `decide` leave of a deposit's claim: committed,
/// decided and completed. `deposits` are accounts this node owns, `claims`
/// the deposits whose decision partition it owns (either may be empty).
/// Fails if an account or claim exists already, or a movement is not a
/// deposit.
pub async fn load_funded_accounts(
    conn: &mut PgConnection,
    deposits: &[Movement],
    claims: &[Claim],
) -> Result<(), StoreError> {
    only_deposits(deposits, claims)?;
    let ids: Vec<&str> = deposits.iter().map(|m| m.account_id.as_str()).collect();
    let partitions: Vec<i32> = deposits.iter().map(|m| m.partition as i32).collect();
    let amounts: Vec<i64> = deposits.iter().map(|m| m.amount.minor()).collect();
    let currencies: Vec<&str> = deposits.iter().map(|m| m.currency.code()).collect();
    let transactions: Vec<uuid::Uuid> = deposits.iter().map(|m| m.transaction_id.0).collect();
    // The deposit's tenant opened the account (`Movement::tenant`).
    let owners: Vec<Option<&str>> = deposits.iter().map(|m| m.tenant.as_deref()).collect();

    let mut tx = conn.begin().await?;
    sqlx::query(
        "INSERT INTO accounts (account_id, partition, currency, posted, last_seq, owner)
         SELECT id, p, c, amount, 2, o
         FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::text[], $5::text[]) AS t(id, p, amount, c, o)",
    )
    .bind(&ids)
    .bind(&partitions)
    .bind(&amounts)
    .bind(&currencies)
    .bind(&owners)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO events (account_id, seq, kind, amount, transaction_id)
         SELECT id, 1, $4, 0, NULL::uuid FROM UNNEST($1::text[]) AS t(id)
         UNION ALL
         SELECT id, 2, $5, amount, tx FROM UNNEST($1::text[], $2::int8[], $3::uuid[]) AS t(id, amount, tx)",
    )
    .bind(&ids)
    .bind(&amounts)
    .bind(&transactions)
    .bind(EventKind::Opened.as_str())
    .bind(EventKind::Deposited.as_str())
    .execute(&mut *tx)
    .await?;
    insert_deposit_legs(&mut tx, deposits).await?;
    insert_claims(&mut tx, claims).await?;
    tx.commit().await?;
    sqlx::query("ANALYZE accounts, events, legs, transfers")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Refuses any movement of `deposits` or `claims` that is not a deposit.
fn only_deposits(deposits: &[Movement], claims: &[Claim]) -> Result<(), StoreError> {
    let not_deposit = deposits
        .iter()
        .chain(claims.iter().map(|c| &c.deposit))
        .find(|m| m.kind != MovementKind::Deposit);
    match not_deposit {
        Some(m) => Err(StoreError::Unsupported(format!(
            "funding {} with {:?}: only a deposit funds an account",
            m.account_id, m.kind
        ))),
        None => Ok(()),
    }
}

/// Appends `deposits` to accounts this node owns, in one transaction, as
/// `deposit` leaves each: a `deposited` event after the account's last one
/// (in the order given, the account's `seq` and balance moved to match),
/// the committed leg with its fingerprint; and the claim records of
/// `claims` (the deposits whose decision partition this node owns). For a
/// long, valid history (the audit accepts it) behind the move benchmark.
/// Writes no snapshot: keep each account under `snapshot_every` events.
/// Fails if an account does not exist or a movement is not a deposit.
pub async fn append_funded_deposits(
    conn: &mut PgConnection,
    deposits: &[Movement],
    claims: &[Claim],
) -> Result<(), StoreError> {
    only_deposits(deposits, claims)?;
    let ids: Vec<&str> = deposits.iter().map(|m| m.account_id.as_str()).collect();
    let amounts: Vec<i64> = deposits.iter().map(|m| m.amount.minor()).collect();
    let transactions: Vec<uuid::Uuid> = deposits.iter().map(|m| m.transaction_id.0).collect();
    let mut tx = conn.begin().await?;
    // Lock the accounts, in a fixed order, before numbering their events.
    let locked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT account_id FROM accounts
                              WHERE account_id = ANY($1) ORDER BY account_id FOR UPDATE) l",
    )
    .bind(&ids)
    .fetch_one(&mut *tx)
    .await?;
    let distinct = ids.iter().collect::<std::collections::BTreeSet<_>>().len();
    if locked != distinct as i64 {
        return Err(StoreError::Unsupported(format!(
            "appending deposits: {} of {distinct} accounts do not exist here",
            distinct as i64 - locked
        )));
    }
    sqlx::query(
        "INSERT INTO events (account_id, seq, kind, amount, transaction_id)
         SELECT d.id, a.last_seq + row_number() OVER (PARTITION BY d.id ORDER BY d.ord), $4, d.amount, d.tx
         FROM UNNEST($1::text[], $2::int8[], $3::uuid[]) WITH ORDINALITY AS d(id, amount, tx, ord)
         JOIN accounts a ON a.account_id = d.id
         ORDER BY d.ord",
    )
    .bind(&ids)
    .bind(&amounts)
    .bind(&transactions)
    .bind(EventKind::Deposited.as_str())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE accounts a SET posted = a.posted + d.amount, last_seq = a.last_seq + d.n,
                last_event_at = NULL, change_no = nextval('row_changes')
         FROM (SELECT id, sum(amount)::int8 AS amount, count(*) AS n
               FROM UNNEST($1::text[], $2::int8[]) AS t(id, amount) GROUP BY id) d
         WHERE a.account_id = d.id",
    )
    .bind(&ids)
    .bind(&amounts)
    .execute(&mut *tx)
    .await?;
    insert_deposit_legs(&mut tx, deposits).await?;
    insert_claims(&mut tx, claims).await?;
    tx.commit().await?;
    Ok(())
}

/// The committed leg of each of `deposits` (what `deposit` leaves).
async fn insert_deposit_legs(
    conn: &mut PgConnection,
    deposits: &[Movement],
) -> Result<(), StoreError> {
    let ids: Vec<&str> = deposits.iter().map(|m| m.account_id.as_str()).collect();
    let partitions: Vec<i32> = deposits.iter().map(|m| m.partition as i32).collect();
    let amounts: Vec<i64> = deposits.iter().map(|m| m.amount.minor()).collect();
    let currencies: Vec<&str> = deposits.iter().map(|m| m.currency.code()).collect();
    let transactions: Vec<uuid::Uuid> = deposits.iter().map(|m| m.transaction_id.0).collect();
    let fingerprints: Vec<String> = deposits.iter().map(Movement::fingerprint).collect();
    sqlx::query(
        "INSERT INTO legs (transaction_id, role, account_id, partition, amount, currency, fingerprint, state)
         SELECT tx, $7, id, p, amount, c, fp, $8
         FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::uuid[], $5::text[], $6::text[])
              AS t(id, p, amount, tx, fp, c)",
    )
    .bind(&ids)
    .bind(&partitions)
    .bind(&amounts)
    .bind(&transactions)
    .bind(&fingerprints)
    .bind(&currencies)
    .bind(RowRole::Deposit.as_str())
    .bind(leg_state(LegState::Committed))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The claim record of each of `claims` (what `decisions::begin` and
/// `decide` leave of a deposit's claim: committed, decided, completed).
async fn insert_claims(conn: &mut PgConnection, claims: &[Claim]) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO transfers (transaction_id, kind, partition, fingerprint, from_account, to_account,
                                amount, currency, state, lease_until, lease_owner, decided_at, completed, tenant)
         SELECT tx, $7, p, fp, id, id, amount, c, $8, now(), gen_random_uuid(), now(), true, ten
         FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::text[], $5::int8[], $6::text[], $9::text[])
              AS t(tx, p, fp, id, amount, c, ten)",
    )
    .bind(claims.iter().map(|c| c.deposit.transaction_id.0).collect::<Vec<_>>())
    .bind(claims.iter().map(|c| c.partition as i32).collect::<Vec<_>>())
    .bind(claims.iter().map(|c| c.deposit.fingerprint()).collect::<Vec<_>>())
    .bind(claims.iter().map(|c| c.deposit.account_id.as_str()).collect::<Vec<_>>())
    .bind(claims.iter().map(|c| c.deposit.amount.minor()).collect::<Vec<_>>())
    .bind(claims.iter().map(|c| c.deposit.currency.code()).collect::<Vec<_>>())
    .bind(RecordKind::Deposit.as_str())
    .bind(transfer_state(TransferState::Committed))
    .bind(claims.iter().map(|c| c.deposit.tenant.as_deref()).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

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

/// Appends a long history to `account` (which has at least one event), in
/// one transaction: `n` deposits of one minor unit after its last event,
/// one microsecond apart, a snapshot every `snapshot_every`th event (0:
/// none), and the balance row moved to match.
pub async fn append_deposits(
    conn: &mut PgConnection,
    account: &str,
    n: i64,
    snapshot_every: i64,
) -> Result<History, StoreError> {
    let mut tx = conn.begin().await?;
    let (first_seq, posted_before, base): (i64, i64, DateTime<Utc>) = sqlx::query_as(
        "SELECT a.last_seq + 1, a.posted, e.at FROM accounts a
         JOIN events e ON e.account_id = a.account_id AND e.seq = a.last_seq
         WHERE a.account_id = $1 FOR UPDATE OF a",
    )
    .bind(account)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO events (account_id, seq, kind, amount, transaction_id, at)
         SELECT $1, s, $5, 1, gen_random_uuid(),
                $3 + (s - $2 + 1) * interval '1 microsecond'
         FROM generate_series($2::int8, $2 + $4 - 1) s",
    )
    .bind(account)
    .bind(first_seq)
    .bind(base)
    .bind(n)
    .bind(EventKind::Deposited.as_str())
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
        "UPDATE accounts SET posted = posted + $2, last_seq = last_seq + $2,
                last_event_at = NULL, change_no = nextval('row_changes') WHERE account_id = $1",
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
