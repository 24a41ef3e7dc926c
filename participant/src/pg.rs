//! The Postgres store: loads a transaction's rows with one locking query per
//! table (`= ANY`, in key order, so concurrent transactions never deadlock
//! on them) and writes back its changes set-based (`UNNEST`) in one
//! statement, whatever the number of items in the batch.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::Arguments;
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
use wallet_shared::admin::{
    AuditRequest, Discarded, Fence, FenceState, NodeAudit, PartitionStats, PARTITION_TABLES,
};
use wallet_shared::protocol::{
    Event, EventKind, FeedEntry, LegState, RecordKind, Snapshot, TransferRecord, TransferSpec,
    TransferState,
};
use wallet_shared::{
    retry, AccountId, Amount, Currency, ErrorCode, PartitionId, Rejection, TransactionId,
};

use crate::config::ParticipantConfig;
use crate::error::StoreError;
use crate::fence::FenceMap;
use crate::model::{AccountRow, Broken, Changes, Keys, LegRow, RowRole, TransferRow, Working};
use crate::store::{Durability, ReadSpan, Store};

mod copy;

/// Opens a round of the feed publisher: the advisory lock (key
/// 0x77616c6c65740001) that serialises the rounds, in the BEGIN's round trip.
/// An advisory lock rather than the row lock on `outbox_head` that the
/// pruner and the consumers' acknowledgements take: a round does not wait
/// for a pruning pass.
const PUBLISHER_BEGIN: &str = "BEGIN; SELECT pg_advisory_xact_lock(x'77616c6c65740001'::int8)";

#[derive(Clone)]
pub struct PgStore {
    pub pool: PgPool,
    /// Snapshot every account's balance at every this many events (0: never).
    pub snapshot_every: i64,
    /// How long finished records are kept (`record_retention_secs`): the
    /// audit does not judge what may have been pruned.
    pub retention: Duration,
    /// Acquires of a connection in progress ([`PgStore::acquire`]): the
    /// pool's waiting count in `/metrics` (sqlx does not expose its own).
    waiting: Arc<AtomicU32>,
}

/// Counts one acquire in progress while it lives (a cancelled acquire too).
struct Waiting<'a>(&'a AtomicU32);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicU32) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Longest one statement of a whole-node or whole-partition read may take
/// (the node audit, a move's counts), instead of the hot path's
/// `statement_timeout`: they read every row, and run beside the traffic.
const LONG_READ_TIMEOUT: &str = "120s";

/// Lets the statements of the transaction on `conn` run up to
/// [`LONG_READ_TIMEOUT`] each.
pub async fn allow_long_reads(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "SET LOCAL statement_timeout = '{LONG_READ_TIMEOUT}'"
    ))
    .execute(conn)
    .await?;
    Ok(())
}

/// How long a pooled connection may wait unused before it is checked
/// again before use.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(1);

/// Rows deleted per statement when a partition's copy is dropped.
const DROP_BATCH: i64 = 5_000;

impl PgStore {
    /// A connection of the pool, counted as waiting until it is handed
    /// over. Everything here but the operators' audit takes its
    /// connections this way, so the count is what waits for the pool.
    pub async fn acquire(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let _waiting = Waiting::enter(&self.waiting);
        self.pool.acquire().await
    }

    /// A transaction on a connection taken as [`PgStore::acquire`] does.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let _waiting = Waiting::enter(&self.waiting);
        self.pool.begin().await
    }

    /// [`PgStore::begin`] with `statement` (a `BEGIN` and what goes with it
    /// in its round trip) instead of a plain `BEGIN`.
    async fn begin_with(
        &self,
        statement: &'static str,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let _waiting = Waiting::enter(&self.waiting);
        self.pool.begin_with(statement).await
    }

    /// Acquires of a connection in progress now.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Connects (retrying while Postgres starts) and applies the migrations.
    pub async fn connect(cfg: &ParticipantConfig) -> anyhow::Result<Self> {
        let timeout = format!("{}ms", cfg.statement_timeout_ms);
        let options: PgConnectOptions = cfg.database_url.parse()?;
        let options = options.options([
            ("statement_timeout", timeout.as_str()),
            ("lock_timeout", timeout.as_str()),
            // Every statement here looks rows up by key: one generic plan
            // serves all, so Postgres need not plan each execution anew.
            ("plan_cache_mode", "force_generic_plan"),
        ]);
        let pool = retry::with_backoff("connect to Postgres", retry::Policy::startup(), || {
            PgPoolOptions::new()
                .max_connections(cfg.db_pool_size)
                .acquire_timeout(Duration::from_secs(5))
                // A connection is checked (one round trip) when it comes
                // back to the pool; it is checked again before use only if
                // it has waited there a while, instead of on every acquire,
                // which put that round trip before each transaction. One
                // that died since fails its first statement: an I/O error,
                // which is transient (the transaction is retried).
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for > IDLE_CHECK_AFTER {
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                })
                .connect_with(options.clone())
        })
        .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(PgStore {
            pool,
            snapshot_every: cfg.snapshot_every,
            retention: cfg.retention().keep,
            waiting: Arc::default(),
        })
    }

    /// One round of the feed's publisher: numbers the committed, unnumbered
    /// outbox rows (at most `limit` of them), oldest insertion first, after
    /// the last position handed out. Rounds are serialised by the
    /// publisher's advisory lock; a row committed after this round's
    /// snapshot is invisible here and gets a later round's higher position,
    /// so positions follow commit order (rows of transactions that touched
    /// the same account are in the order they committed: the later one
    /// inserted after the earlier one committed). Returns how many rows
    /// (transactions) it numbered.
    pub async fn publish(&self, limit: i64) -> Result<u64, StoreError> {
        // Nothing to number (an idle node, twenty rounds a second): one
        // statement and no transaction. A row committed just after it is
        // the next round's, as one committed after the snapshot below is.
        let waiting: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox WHERE first_position IS NULL)")
                .fetch_one(&mut *self.acquire().await?)
                .await?;
        if !waiting {
            return Ok(0);
        }
        // The lock is taken in the BEGIN's round trip; the numbering reads the
        // head, numbers and moves the head in one statement. Read committed:
        // that statement's snapshot is taken after the lock, so it sees the
        // previous round's numbers and everything that round saw.
        let mut tx = self.begin_with(PUBLISHER_BEGIN).await?;
        let (rows,): (i64,) = sqlx::query_as(
            "WITH h AS (SELECT last_position FROM outbox_head WHERE only_row),
             n AS (
                 UPDATE outbox o SET first_position = h.last_position + n.before + 1
                 FROM h, (SELECT id, sum(entries) OVER (ORDER BY id) - entries AS before
                          FROM (SELECT id, entries FROM outbox WHERE first_position IS NULL
                                ORDER BY id LIMIT $1) u) n
                 WHERE o.id = n.id AND o.first_position IS NULL
                 RETURNING o.entries),
             moved AS (
                 UPDATE outbox_head SET last_position = last_position + s.numbered
                 FROM (SELECT sum(entries) AS numbered FROM n) s
                 WHERE only_row AND s.numbered > 0)
             SELECT count(*)::int8 FROM n",
        )
        .bind(limit)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows as u64)
    }
}

const TRANSFER_COLUMNS: &str =
    "transaction_id, kind, partition, fingerprint, from_account, to_account,
     amount, currency, state, reason_code, reason_message, lease_until, lease_owner, created_at,
     decided_at, completed, tenant";
pub(crate) const LEG_COLUMNS: &str =
    "transaction_id, role, account_id, partition, amount, currency,
     counterparty, decision_partition, fingerprint, state, reason_code, reason_message,
     created_at, updated_at";
const ACCOUNT_COLUMNS: &str =
    "account_id, partition, currency, posted, held, pending_credit, last_seq, created_at, owner";

impl Store for PgStore {
    async fn attempt<T, F>(
        &self,
        keys: &Keys,
        durability: Durability,
        rules: &F,
    ) -> Result<T, StoreError>
    where
        T: Send,
        F: Fn(&mut Working) -> Result<T, Broken> + Send + Sync,
    {
        let mut tx = match durability {
            Durability::Flushed => self.begin().await?,
            // Said with the BEGIN, in its round trip.
            Durability::Redo => {
                self.begin_with("BEGIN; SET LOCAL synchronous_commit = off")
                    .await?
            }
        };
        let mut w = load(&mut tx, keys).await?;
        w.snapshot_every = self.snapshot_every;
        let out = rules(&mut w)?;
        let changes = w.into_changes();
        if !changes.is_empty() {
            save(&mut tx, &changes).await?;
            tx.commit().await?;
        }
        Ok(out)
    }

    type PartitionRead = copy::PgRead;
    type CopyWrite = copy::PgCopy;

    async fn read_partition(
        &self,
        p: PartitionId,
        span: ReadSpan,
    ) -> Result<copy::PgRead, StoreError> {
        self.read(p, span).await
    }

    async fn read_partition_quiet<G: Send>(
        &self,
        p: PartitionId,
        span: ReadSpan,
        quiet: impl std::future::Future<Output = G> + Send,
    ) -> Result<(copy::PgRead, i64), StoreError> {
        self.read_quiet(p, span, quiet).await
    }

    async fn copy_state(
        &self,
        p: PartitionId,
    ) -> Result<Option<wallet_shared::admin::CopyState>, StoreError> {
        self.copy_record(p).await
    }

    async fn holds_rows(&self, p: PartitionId) -> Result<bool, StoreError> {
        self.partition_rows_exist(p).await
    }

    async fn start_copy(
        &self,
        p: PartitionId,
        from: &str,
        move_id: &str,
    ) -> Result<(), StoreError> {
        self.insert_copy(p, from, move_id).await
    }

    async fn write_copy(&self, p: PartitionId) -> Result<copy::PgCopy, StoreError> {
        self.begin_copy_write(p).await
    }

    async fn lookup(&self, id: TransactionId) -> Result<Option<TransferRecord>, StoreError> {
        let sql = format!("SELECT {TRANSFER_COLUMNS} FROM transfers WHERE transaction_id = $1");
        let row = sqlx::query(&sql)
            .bind(id.0)
            .fetch_optional(&mut *self.acquire().await?)
            .await?;
        row.as_ref()
            .map(|r| transfer_from_row(r).map(|t| t.record))
            .transpose()
    }

    async fn unresolved(
        &self,
        grace: Duration,
        limit: i64,
    ) -> Result<(Vec<TransferRow>, Vec<LegRow>), StoreError> {
        // The SQL form of `model::needs_recovery` and `model::is_stale_prepared`.
        let now = Utc::now();
        let grace = chrono::Duration::from_std(grace).map_err(StoreError::corrupt)?;
        let (settled_before, ahead_after) = (now - grace, now + grace);
        let sql = format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers
             WHERE NOT completed
               AND ((state = 'preparing' AND (lease_until < $1 OR created_at > $4))
                 OR (state <> 'preparing' AND (decided_at < $2 OR decided_at > $4)))
             ORDER BY created_at LIMIT $3"
        );
        let transfers = sqlx::query(&sql)
            .bind(now)
            .bind(settled_before)
            .bind(limit)
            .bind(ahead_after)
            .fetch_all(&mut *self.acquire().await?)
            .await?
            .iter()
            .map(transfer_from_row)
            .collect::<Result<_, _>>()?;
        let sql = format!(
            "SELECT {LEG_COLUMNS} FROM legs
             WHERE state = 'prepared' AND role IN ('debit', 'credit')
               AND (created_at < $1 OR created_at > $3)
             ORDER BY created_at LIMIT $2"
        );
        let legs = sqlx::query(&sql)
            .bind(settled_before)
            .bind(limit)
            .bind(ahead_after)
            .fetch_all(&mut *self.acquire().await?)
            .await?
            .iter()
            .map(leg_from_row)
            .collect::<Result<_, _>>()?;
        Ok((transfers, legs))
    }

    async fn in_doubt(
        &self,
        partitions: &[PartitionId],
        limit: i64,
    ) -> Result<(Vec<TransferRow>, Vec<LegRow>), StoreError> {
        let partitions: Vec<i32> = partitions.iter().map(|&p| p as i32).collect();
        let sql = format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers
             WHERE NOT completed AND partition = ANY($1)
             ORDER BY created_at LIMIT $2"
        );
        let transfers = sqlx::query(&sql)
            .bind(&partitions)
            .bind(limit)
            .fetch_all(&mut *self.acquire().await?)
            .await?
            .iter()
            .map(transfer_from_row)
            .collect::<Result<_, _>>()?;
        let sql = format!(
            "SELECT {LEG_COLUMNS} FROM legs
             WHERE state = 'prepared' AND role IN ('debit', 'credit') AND partition = ANY($1)
             ORDER BY created_at LIMIT $2"
        );
        let legs = sqlx::query(&sql)
            .bind(&partitions)
            .bind(limit)
            .fetch_all(&mut *self.acquire().await?)
            .await?
            .iter()
            .map(leg_from_row)
            .collect::<Result<_, _>>()?;
        Ok((transfers, legs))
    }

    async fn legs_of(&self, id: TransactionId) -> Result<Vec<LegRow>, StoreError> {
        let sql = format!("SELECT {LEG_COLUMNS} FROM legs WHERE transaction_id = $1 ORDER BY role");
        sqlx::query(&sql)
            .bind(id.0)
            .fetch_all(&mut *self.acquire().await?)
            .await?
            .iter()
            .map(leg_from_row)
            .collect()
    }

    async fn audit(&self, req: &AuditRequest) -> Result<NodeAudit, StoreError> {
        let horizon = crate::retention::audit_horizon(Utc::now(), self.retention);
        crate::audit::run(&self.pool, req, horizon).await
    }

    async fn vitals(&self) -> Result<crate::store::Vitals, StoreError> {
        // Each count uses its partial index (transfers_open, legs_prepared).
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM transfers WHERE NOT completed) AS open_records,
                    (SELECT min(created_at) FROM transfers WHERE NOT completed) AS oldest_record,
                    (SELECT count(*) FROM legs WHERE state = 'prepared'
                       AND role IN ('debit', 'credit')) AS prepared_legs,
                    (SELECT min(created_at) FROM legs WHERE state = 'prepared'
                       AND role IN ('debit', 'credit')) AS oldest_leg,
                    (SELECT last_position FROM outbox_head) AS feed_head,
                    (SELECT pruned_through FROM outbox_head) AS feed_pruned_through,
                    (SELECT min(position) FROM feed_consumers) AS feed_slowest_consumer",
        )
        .fetch_one(&self.pool)
        .await?;
        let size = self.pool.size();
        let idle = self.pool.num_idle() as u32;
        Ok(crate::store::Vitals {
            open_records: row.try_get("open_records")?,
            oldest_record: row.try_get("oldest_record")?,
            prepared_legs: row.try_get("prepared_legs")?,
            oldest_leg: row.try_get("oldest_leg")?,
            feed_head: row.try_get::<Option<i64>, _>("feed_head")?.unwrap_or(0),
            feed_pruned_through: row
                .try_get::<Option<i64>, _>("feed_pruned_through")?
                .unwrap_or(0),
            feed_slowest_consumer: row.try_get("feed_slowest_consumer")?,
            pool: Some(crate::store::PoolStats {
                in_use: size.saturating_sub(idle),
                idle,
                waiting: self.waiting(),
                max: self.pool.options().get_max_connections(),
            }),
        })
    }

    async fn partition_stats(&self) -> Result<Vec<PartitionStats>, StoreError> {
        let rows = sqlx::query(
            "WITH a AS (SELECT partition, count(*) AS n FROM accounts GROUP BY partition),
                  l AS (SELECT partition, count(*) AS n FROM legs
                        WHERE state = 'prepared' GROUP BY partition),
                  t AS (SELECT partition, count(*) AS n FROM transfers
                        WHERE NOT completed GROUP BY partition)
             SELECT partition, coalesce(a.n, 0) AS accounts, coalesce(l.n, 0) AS legs,
                    coalesce(t.n, 0) AS transfers
             FROM a FULL JOIN l USING (partition) FULL JOIN t USING (partition)
             ORDER BY partition",
        )
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PartitionStats {
                    partition: r.try_get::<i32, _>("partition")? as PartitionId,
                    accounts: r.try_get("accounts")?,
                    prepared_legs: r.try_get("legs")?,
                    open_transfers: r.try_get("transfers")?,
                })
            })
            .collect()
    }

    async fn account(&self, id: &AccountId) -> Result<Option<AccountRow>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = $1");
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&mut *self.acquire().await?)
            .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    async fn events(
        &self,
        id: &AccountId,
        after: i64,
        limit: i64,
        until: Option<DateTime<Utc>>,
        kinds: &[EventKind],
    ) -> Result<Vec<Event>, StoreError> {
        let kinds: Option<Vec<&str>> =
            (!kinds.is_empty()).then(|| kinds.iter().map(|k| k.as_str()).collect());
        let rows = sqlx::query(
            "SELECT seq, kind, amount, transaction_id, counterparty, at FROM events
             WHERE account_id = $1 AND seq > $2 AND ($4::timestamptz IS NULL OR at <= $4)
               AND ($5::text[] IS NULL OR kind = ANY($5))
             ORDER BY seq LIMIT $3",
        )
        .bind(id.as_str())
        .bind(after)
        .bind(limit)
        .bind(until)
        .bind(kinds)
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        rows.into_iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                Ok(Event {
                    account_id: id.clone(),
                    seq: row.try_get("seq")?,
                    kind: EventKind::parse(&kind)
                        .ok_or_else(|| StoreError::corrupt(format!("event kind {kind:?}")))?,
                    amount: row.try_get("amount")?,
                    transaction_id: row
                        .try_get::<Option<uuid::Uuid>, _>("transaction_id")?
                        .map(TransactionId),
                    counterparty: optional_account(row.try_get("counterparty")?)?,
                    at: row.try_get("at")?,
                })
            })
            .collect()
    }

    async fn snapshot_at(
        &self,
        id: &AccountId,
        as_of: DateTime<Utc>,
    ) -> Result<(Option<Snapshot>, Option<i64>), StoreError> {
        // Snapshot times follow their sequence numbers (event times never go
        // down), so both are short walks of the primary key.
        let before = sqlx::query(
            "SELECT account_id, seq, posted, held, pending_credit, at FROM snapshots
             WHERE account_id = $1 AND at <= $2 ORDER BY seq DESC LIMIT 1",
        )
        .bind(id.as_str())
        .bind(as_of)
        .fetch_optional(&mut *self.acquire().await?)
        .await?;
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM snapshots WHERE account_id = $1 AND at > $2 ORDER BY seq LIMIT 1",
        )
        .bind(id.as_str())
        .bind(as_of)
        .fetch_optional(&mut *self.acquire().await?)
        .await?;
        Ok((before.as_ref().map(snapshot_from_row).transpose()?, next))
    }

    async fn snapshots(&self, id: &AccountId) -> Result<Vec<Snapshot>, StoreError> {
        sqlx::query(
            "SELECT account_id, seq, posted, held, pending_credit, at FROM snapshots
             WHERE account_id = $1 ORDER BY seq",
        )
        .bind(id.as_str())
        .fetch_all(&mut *self.acquire().await?)
        .await?
        .iter()
        .map(snapshot_from_row)
        .collect()
    }

    async fn accounts_after(
        &self,
        after: Option<&AccountId>,
        limit: i64,
    ) -> Result<Vec<AccountRow>, StoreError> {
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE $1::text IS NULL OR account_id > $1
             ORDER BY account_id LIMIT $2"
        );
        sqlx::query(&sql)
            .bind(after.map(|a| a.as_str()))
            .bind(limit)
            .fetch_all(&mut *self.acquire().await?)
            .await?
            .iter()
            .map(account_from_row)
            .collect()
    }

    async fn fences(&self) -> Result<FenceMap, StoreError> {
        let rows = sqlx::query("SELECT partition, state, target, deadline FROM partition_fences")
            .fetch_all(&mut *self.acquire().await?)
            .await?;
        let mut fences = FenceMap::new();
        for r in rows {
            let state: String = r.try_get("state")?;
            let state = FenceState::parse(&state).ok_or_else(|| {
                StoreError::Corrupt(format!("unknown fence state {state:?} in partition_fences"))
            })?;
            fences.insert(
                r.try_get::<i32, _>("partition")? as PartitionId,
                Fence {
                    state,
                    to: r.try_get("target")?,
                    deadline: r.try_get("deadline")?,
                },
            );
        }
        Ok(fences)
    }

    async fn save_fence(&self, p: PartitionId, fence: Option<Fence>) -> Result<(), StoreError> {
        let mut conn = self.acquire().await?;
        match &fence {
            Some(f) => sqlx::query(
                "INSERT INTO partition_fences (partition, state, target, deadline)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (partition) DO UPDATE
                   SET state = excluded.state, target = excluded.target,
                       deadline = excluded.deadline, updated_at = now()",
            )
            .bind(p as i32)
            .bind(f.state.as_str())
            .bind(&f.to)
            .bind(f.deadline),
            None => sqlx::query("DELETE FROM partition_fences WHERE partition = $1").bind(p as i32),
        }
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn discard(&self, p: PartitionId, budget: Duration) -> Result<Discarded, StoreError> {
        let started = std::time::Instant::now();
        let mut dropped = 0;
        // Reverse order: events and snapshots are found through their
        // accounts, which go last.
        for table in PARTITION_TABLES.iter().rev() {
            // Found through an index, never a scan of the table: a scan
            // would start again at the table's head on every batch and wade
            // through the rows the batches before it left dead. An account's
            // events and snapshots are found by its key (`OFFSET 0` keeps the
            // planner from turning that into a join over every event).
            let batch = match *table {
                "events" | "snapshots" => format!(
                    "SELECT r.ctid FROM accounts a
                     CROSS JOIN LATERAL (
                         SELECT ctid FROM {table} WHERE account_id = a.account_id OFFSET 0) r
                     WHERE a.partition = $1 LIMIT $2"
                ),
                _ => format!("SELECT ctid FROM {table} WHERE partition = $1 LIMIT $2"),
            };
            loop {
                let n = sqlx::query(&format!(
                    "DELETE FROM {table} WHERE ctid = ANY(ARRAY({batch}))"
                ))
                .bind(p as i32)
                .bind(DROP_BATCH)
                .execute(&mut *self.acquire().await?)
                .await?
                .rows_affected() as i64;
                dropped += n;
                if n < DROP_BATCH {
                    break;
                }
                if started.elapsed() > budget {
                    return Ok(Discarded {
                        dropped,
                        done: false,
                    });
                }
            }
        }
        sqlx::query("DELETE FROM partition_copies WHERE partition = $1")
            .bind(p as i32)
            .execute(&mut *self.acquire().await?)
            .await?;
        Ok(Discarded {
            dropped,
            done: true,
        })
    }

    async fn feed(&self, after: i64, limit: i64) -> Result<(Vec<FeedEntry>, i64), StoreError> {
        // The head first: every position up to it is published, so the page
        // below is never behind the head it is returned with.
        let (head, pruned): (i64, i64) =
            sqlx::query_as("SELECT last_position, pruned_through FROM outbox_head")
                .fetch_one(&mut *self.acquire().await?)
                .await?;
        if after < pruned {
            return Err(StoreError::Refused(Rejection::new(
                ErrorCode::NotFound,
                format!(
                    "the feed is pruned through position {pruned} (behind its slowest \
                     registered consumer): read from {pruned} on, after rebuilding from \
                     the history (walletctl projections rebuild)"
                ),
            )));
        }
        // From the row that holds position `after + 1` (rows' ranges are
        // contiguous), at most `limit` rows: each holds at least one entry.
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT first_position, body::text FROM outbox
             WHERE first_position >= COALESCE(
                       (SELECT max(first_position) FROM outbox WHERE first_position <= $1 + 1), 1)
               AND first_position <= $3
             ORDER BY first_position LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .bind(head)
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        let mut entries = Vec::new();
        'rows: for (first, body) in rows {
            let block: Vec<FeedEntry> = serde_json::from_str(&body)
                .map_err(|e| StoreError::corrupt(format!("outbox row at position {first}: {e}")))?;
            for (position, mut entry) in (first..).zip(block) {
                if position > head || entries.len() as i64 >= limit {
                    break 'rows;
                }
                if position > after {
                    entry.position = position;
                    entries.push(entry);
                }
            }
        }
        Ok((entries, head))
    }
}

fn snapshot_from_row(row: &PgRow) -> Result<Snapshot, StoreError> {
    Ok(Snapshot {
        account_id: account_id(row.try_get("account_id")?)?,
        seq: row.try_get("seq")?,
        posted: row.try_get("posted")?,
        held: row.try_get("held")?,
        pending_credit: row.try_get("pending_credit")?,
        at: row.try_get("at")?,
    })
}

/// Loads and locks, table by table in one order (transfers, legs,
/// accounts), each in key order.
async fn load(conn: &mut PgConnection, keys: &Keys) -> Result<Working, StoreError> {
    let mut w = Working::new(Utc::now(), keys.clone());
    if !keys.transfers.is_empty() {
        let ids: Vec<uuid::Uuid> = keys.transfers.iter().map(|t| t.0).collect();
        let sql = format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE transaction_id = ANY($1)
             ORDER BY transaction_id FOR UPDATE"
        );
        for row in sqlx::query(&sql).bind(&ids).fetch_all(&mut *conn).await? {
            w.load_transfer(transfer_from_row(&row)?);
        }
    }
    let mut accounts: Vec<String> = keys.accounts.iter().map(|a| a.as_str().into()).collect();
    if !keys.legs.is_empty() {
        // `transaction_id = ANY` as well, for the primary key's index: the
        // plan is generic, and for the pairs alone it is a scan of the
        // whole table until the table is large.
        let ids: Vec<uuid::Uuid> = keys.legs.iter().map(|(t, _)| t.0).collect();
        let roles: Vec<&str> = keys.legs.iter().map(|(_, r)| r.as_str()).collect();
        let sql = format!(
            "SELECT {LEG_COLUMNS} FROM legs
             WHERE transaction_id = ANY($1)
               AND (transaction_id, role) IN (SELECT * FROM UNNEST($1::uuid[], $2::text[]))
             ORDER BY transaction_id, role FOR UPDATE"
        );
        let rows = sqlx::query(&sql)
            .bind(&ids)
            .bind(&roles)
            .fetch_all(&mut *conn)
            .await?;
        for row in rows {
            let leg = leg_from_row(&row)?;
            accounts.push(leg.account_id.as_str().into());
            w.load_leg(leg);
        }
    }
    if !accounts.is_empty() {
        accounts.sort_unstable();
        accounts.dedup();
        // With each account, the time of its newest event (`last_event_at`,
        // read with the lock: a locked row is re-read at its newest
        // version), so the next one is never stamped earlier.
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS}, last_event_at FROM accounts WHERE account_id = ANY($1)
             ORDER BY account_id FOR UPDATE"
        );
        let mut unknown: (Vec<String>, Vec<i64>) = (Vec::new(), Vec::new());
        for row in sqlx::query(&sql)
            .bind(&accounts)
            .fetch_all(&mut *conn)
            .await?
        {
            let account = account_from_row(&row)?;
            match row.try_get::<Option<DateTime<Utc>>, _>("last_event_at")? {
                Some(at) => w.load_last_event_at(account.account_id.clone(), at),
                None if account.last_seq > 0 => {
                    unknown.0.push(account.account_id.as_str().into());
                    unknown.1.push(account.last_seq);
                }
                None => {}
            }
            w.load_account(account);
        }
        if !unknown.0.is_empty() {
            // Rows written in bulk say nothing of their newest event: it
            // is read in a statement of its own, after the lock (a
            // subquery of the locking statement would still see the
            // snapshot taken before the wait, without the event the lock
            // holder added).
            let rows = sqlx::query(
                "SELECT e.account_id, e.at FROM events e
                 JOIN UNNEST($1::text[], $2::bigint[]) AS k(account_id, seq)
                   ON e.account_id = k.account_id AND e.seq = k.seq",
            )
            .bind(&unknown.0)
            .bind(&unknown.1)
            .fetch_all(&mut *conn)
            .await?;
            for row in rows {
                let id = account_id(row.try_get("account_id")?)?;
                w.load_last_event_at(id, row.try_get("at")?);
            }
        }
        for id in accounts {
            // Accounts that do not exist are known to be absent, too.
            let id = AccountId::parse(id).map_err(StoreError::corrupt)?;
            w.note_account_key(id);
        }
    }
    Ok(w)
}

/// Writes every change in one statement: a data-modifying `WITH` part per
/// table and kind that has rows, so a transaction's writes cost one round
/// trip to Postgres, not one per table. New rows are plain inserts, so a
/// concurrent insert of the same key fails (and the whole transaction is
/// retried on fresh rows) instead of being lost. The parts share the
/// statement's snapshot and none reads what another writes: new and changed
/// rows are different keys, and the foreign key of `events` is checked at
/// the end of the statement, after its account's insert.
async fn save(conn: &mut PgConnection, c: &Changes) -> Result<(), StoreError> {
    let mut w = Writes::default();
    // Each account's newest event written here: its row keeps the time.
    let mut newest: BTreeMap<&AccountId, (i64, DateTime<Utc>)> = BTreeMap::new();
    for e in &c.events {
        let slot = newest.entry(&e.account_id).or_insert((e.seq, e.at));
        if e.seq >= slot.0 {
            *slot = (e.seq, e.at);
        }
    }
    let last_event_at = |id: &AccountId| newest.get(id).map(|n| n.1);
    if !c.new_accounts.is_empty() {
        let a = &c.new_accounts;
        let cols = [
            w.col("text", a, |r| r.account_id.as_str())?,
            w.col("int4", a, |r| r.partition as i32)?,
            w.col("text", a, |r| r.currency.code())?,
            w.col("int8", a, |r| r.posted)?,
            w.col("int8", a, |r| r.held)?,
            w.col("int8", a, |r| r.pending_credit)?,
            w.col("int8", a, |r| r.last_seq)?,
            w.col("timestamptz", a, |r| r.created_at)?,
            w.col("text", a, |r| r.owner.as_deref())?,
            w.col("timestamptz", a, |r| last_event_at(&r.account_id))?,
        ]
        .join(", ");
        w.part(format!(
            "INSERT INTO accounts (account_id, partition, currency, posted, held, pending_credit,
                                   last_seq, created_at, owner, last_event_at)
             SELECT * FROM UNNEST({cols})"
        ));
    }
    if !c.changed_accounts.is_empty() {
        let a = &c.changed_accounts;
        let cols = [
            w.col("text", a, |r| r.account_id.as_str())?,
            w.col("int8", a, |r| r.posted)?,
            w.col("int8", a, |r| r.held)?,
            w.col("int8", a, |r| r.pending_credit)?,
            w.col("int8", a, |r| r.last_seq)?,
            w.col("timestamptz", a, |r| last_event_at(&r.account_id))?,
        ]
        .join(", ");
        w.part(format!(
            "UPDATE accounts a SET posted = u.posted, held = u.held,
                    pending_credit = u.pending_credit, last_seq = u.last_seq,
                    last_event_at = COALESCE(u.last_event_at, a.last_event_at),
                    change_no = nextval('row_changes')
             FROM UNNEST({cols}) AS u(account_id, posted, held, pending_credit, last_seq, last_event_at)
             WHERE a.account_id = u.account_id"
        ));
    }
    if !c.events.is_empty() {
        let e = &c.events;
        let cols = [
            w.col("text", e, |r| r.account_id.as_str())?,
            w.col("int8", e, |r| r.seq)?,
            w.col("text", e, |r| r.kind.as_str())?,
            w.col("int8", e, |r| r.amount)?,
            w.col("uuid", e, |r| r.transaction_id.map(|t| t.0))?,
            w.col("text", e, |r| r.counterparty.as_ref().map(|c| c.as_str()))?,
            w.col("timestamptz", e, |r| r.at)?,
        ]
        .join(", ");
        w.part(format!(
            "INSERT INTO events (account_id, seq, kind, amount, transaction_id, counterparty, at)
             SELECT * FROM UNNEST({cols})"
        ));
    }
    if !c.snapshots.is_empty() {
        let s = &c.snapshots;
        let cols = [
            w.col("text", s, |r| r.account_id.as_str())?,
            w.col("int8", s, |r| r.seq)?,
            w.col("int8", s, |r| r.posted)?,
            w.col("int8", s, |r| r.held)?,
            w.col("int8", s, |r| r.pending_credit)?,
            w.col("timestamptz", s, |r| r.at)?,
        ]
        .join(", ");
        w.part(format!(
            "INSERT INTO snapshots (account_id, seq, posted, held, pending_credit, at)
             SELECT * FROM UNNEST({cols})"
        ));
    }
    // The change feed: here, in the write path of the rules' changes, so a
    // bulk copy of rows (a partition move) never publishes them again.
    let feed = c.feed_entries()?;
    if !feed.is_empty() {
        let body = serde_json::to_string(&feed).map_err(StoreError::corrupt)?;
        let entries = w.value(feed.len() as i32)?;
        let body = w.value(body)?;
        w.part(format!(
            "INSERT INTO outbox (entries, body) VALUES ({entries}, {body}::json)"
        ));
    }
    if !c.new_transfers.is_empty() {
        let t = &c.new_transfers;
        let cols = [
            w.col("uuid", t, |r| r.id().0)?,
            w.col("int4", t, |r| r.partition as i32)?,
            w.col("text", t, |r| r.fingerprint.as_str())?,
            w.col("text", t, |r| r.record.spec.from.as_str())?,
            w.col("text", t, |r| r.record.spec.to.as_str())?,
            w.col("int8", t, |r| r.record.spec.amount.minor())?,
            w.col("text", t, |r| r.record.spec.currency.code())?,
            w.col("text", t, |r| transfer_state(r.record.state))?,
            w.col("text", t, |r| reason_code(&r.record.reason))?,
            w.col("text", t, |r| reason_message(&r.record.reason))?,
            w.col("timestamptz", t, |r| r.lease_until)?,
            w.col("uuid", t, |r| r.lease_owner)?,
            w.col("timestamptz", t, |r| r.record.created_at)?,
            w.col("timestamptz", t, |r| r.record.decided_at)?,
            w.col("bool", t, |r| r.record.completed)?,
            w.col("text", t, |r| r.record.kind.as_str())?,
            w.col("text", t, |r| r.record.spec.tenant.as_deref())?,
        ]
        .join(", ");
        w.part(format!(
            "INSERT INTO transfers (transaction_id, partition, fingerprint, from_account, to_account, amount,
                                    currency, state, reason_code, reason_message, lease_until, lease_owner,
                                    created_at, decided_at, completed, kind, tenant)
             SELECT * FROM UNNEST({cols})"
        ));
    }
    if !c.changed_transfers.is_empty() {
        let t = &c.changed_transfers;
        let cols = [
            w.col("uuid", t, |r| r.id().0)?,
            w.col("text", t, |r| transfer_state(r.record.state))?,
            w.col("text", t, |r| reason_code(&r.record.reason))?,
            w.col("text", t, |r| reason_message(&r.record.reason))?,
            w.col("timestamptz", t, |r| r.lease_until)?,
            w.col("uuid", t, |r| r.lease_owner)?,
            w.col("timestamptz", t, |r| r.record.decided_at)?,
            w.col("bool", t, |r| r.record.completed)?,
        ]
        .join(", ");
        w.part(format!(
            "UPDATE transfers t SET state = u.state, reason_code = u.reason_code,
                    reason_message = u.reason_message, lease_until = u.lease_until,
                    lease_owner = u.lease_owner, decided_at = u.decided_at, completed = u.completed,
                    updated_at = now(), change_no = nextval('row_changes')
             FROM UNNEST({cols})
                  AS u(transaction_id, state, reason_code, reason_message, lease_until, lease_owner,
                       decided_at, completed)
             WHERE t.transaction_id = u.transaction_id"
        ));
    }
    if !c.new_legs.is_empty() {
        let l = &c.new_legs;
        let cols = [
            w.col("uuid", l, |r| r.transaction_id.0)?,
            w.col("text", l, |r| r.role.as_str())?,
            w.col("text", l, |r| r.account_id.as_str())?,
            w.col("int4", l, |r| r.partition as i32)?,
            w.col("int8", l, |r| r.amount)?,
            w.col("text", l, |r| r.currency.code())?,
            w.col("text", l, |r| r.counterparty.as_ref().map(|c| c.as_str()))?,
            w.col("int4", l, |r| r.decision_partition.map(|p| p as i32))?,
            w.col("text", l, |r| r.fingerprint.as_deref())?,
            w.col("text", l, |r| leg_state(r.state))?,
            w.col("text", l, |r| reason_code(&r.reason))?,
            w.col("text", l, |r| reason_message(&r.reason))?,
            w.col("timestamptz", l, |r| r.created_at)?,
            w.col("timestamptz", l, |r| r.updated_at)?,
        ]
        .join(", ");
        w.part(format!(
            "INSERT INTO legs (transaction_id, role, account_id, partition, amount, currency, counterparty,
                               decision_partition, fingerprint, state, reason_code, reason_message,
                               created_at, updated_at)
             SELECT * FROM UNNEST({cols})"
        ));
    }
    if !c.changed_legs.is_empty() {
        let l = &c.changed_legs;
        let cols = [
            w.col("uuid", l, |r| r.transaction_id.0)?,
            w.col("text", l, |r| r.role.as_str())?,
            w.col("text", l, |r| leg_state(r.state))?,
            w.col("text", l, |r| reason_code(&r.reason))?,
            w.col("text", l, |r| reason_message(&r.reason))?,
            w.col("timestamptz", l, |r| r.updated_at)?,
        ]
        .join(", ");
        w.part(format!(
            "UPDATE legs l SET state = u.state, reason_code = u.reason_code,
                    reason_message = u.reason_message, updated_at = u.updated_at,
                    change_no = nextval('row_changes')
             FROM UNNEST({cols})
                  AS u(transaction_id, role, state, reason_code, reason_message, updated_at)
             WHERE l.transaction_id = u.transaction_id AND l.role = u.role"
        ));
    }
    w.run(conn).await
}

/// The one statement [`save`] sends: its parts and their arguments.
#[derive(Default)]
struct Writes {
    parts: Vec<String>,
    args: PgArguments,
    count: usize,
}

impl Writes {
    /// Adds a column, `f` of each row; returns it as an array parameter of
    /// `sql_type`, for `UNNEST`.
    fn col<'r, R, T>(
        &mut self,
        sql_type: &str,
        rows: &'r [R],
        f: impl Fn(&'r R) -> T,
    ) -> Result<String, StoreError>
    where
        Vec<T>: 'r + sqlx::Encode<'r, Postgres> + sqlx::Type<Postgres>,
    {
        let column: Vec<T> = rows.iter().map(f).collect();
        Ok(format!("{}::{sql_type}[]", self.value(column)?))
    }

    /// Adds one value; returns its parameter.
    fn value<'q, T>(&mut self, value: T) -> Result<String, StoreError>
    where
        T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>,
    {
        self.args.add(value).map_err(sqlx::Error::Encode)?;
        self.count += 1;
        Ok(format!("${}", self.count))
    }

    fn part(&mut self, sql: String) {
        self.parts.push(sql);
    }

    async fn run(self, conn: &mut PgConnection) -> Result<(), StoreError> {
        if self.parts.is_empty() {
            return Ok(());
        }
        let parts: Vec<String> = self
            .parts
            .iter()
            .enumerate()
            .map(|(i, sql)| format!("w{i} AS ({sql})"))
            .collect();
        let sql = format!("WITH {} SELECT 1", parts.join(",\n"));
        sqlx::query_with(&sql, self.args).execute(conn).await?;
        Ok(())
    }
}

pub(crate) fn transfer_state(s: TransferState) -> &'static str {
    match s {
        TransferState::Preparing => "preparing",
        TransferState::Committed => "committed",
        TransferState::Aborted => "aborted",
    }
}

pub(crate) fn leg_state(s: LegState) -> &'static str {
    match s {
        LegState::Prepared => "prepared",
        LegState::Committed => "committed",
        // `Missing` is an answer, never stored.
        LegState::Aborted | LegState::Missing => "aborted",
    }
}

fn reason_code(r: &Option<Rejection>) -> Option<&'static str> {
    r.as_ref().map(|r| r.code.as_str())
}

fn reason_message(r: &Option<Rejection>) -> Option<&str> {
    r.as_ref().map(|r| r.message.as_str())
}

fn read_reason(row: &PgRow) -> Result<Option<Rejection>, StoreError> {
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

fn account_id(s: String) -> Result<AccountId, StoreError> {
    AccountId::parse(s).map_err(StoreError::corrupt)
}

fn optional_account(s: Option<String>) -> Result<Option<AccountId>, StoreError> {
    s.map(account_id).transpose()
}

fn currency(row: &PgRow) -> Result<Currency, StoreError> {
    Currency::parse(&row.try_get::<String, _>("currency")?).map_err(StoreError::corrupt)
}

fn transfer_from_row(row: &PgRow) -> Result<TransferRow, StoreError> {
    let state = match row.try_get::<String, _>("state")?.as_str() {
        "preparing" => TransferState::Preparing,
        "committed" => TransferState::Committed,
        "aborted" => TransferState::Aborted,
        other => return Err(StoreError::corrupt(format!("transfer state {other:?}"))),
    };
    let kind: String = row.try_get("kind")?;
    Ok(TransferRow {
        record: TransferRecord {
            kind: RecordKind::parse(&kind)
                .ok_or_else(|| StoreError::corrupt(format!("record kind {kind:?}")))?,
            spec: TransferSpec {
                transaction_id: TransactionId(row.try_get("transaction_id")?),
                from: account_id(row.try_get("from_account")?)?,
                to: account_id(row.try_get("to_account")?)?,
                amount: Amount::from_minor(row.try_get("amount")?).map_err(StoreError::corrupt)?,
                currency: currency(row)?,
                tenant: row.try_get("tenant")?,
            },
            state,
            reason: read_reason(row)?,
            created_at: row.try_get("created_at")?,
            decided_at: row.try_get("decided_at")?,
            completed: row.try_get("completed")?,
        },
        partition: row.try_get::<i32, _>("partition")? as u32,
        fingerprint: row.try_get("fingerprint")?,
        lease_until: row.try_get("lease_until")?,
        lease_owner: row.try_get("lease_owner")?,
    })
}

pub(crate) fn leg_from_row(row: &PgRow) -> Result<LegRow, StoreError> {
    let state = match row.try_get::<String, _>("state")?.as_str() {
        "prepared" => LegState::Prepared,
        "committed" => LegState::Committed,
        "aborted" => LegState::Aborted,
        other => return Err(StoreError::corrupt(format!("leg state {other:?}"))),
    };
    Ok(LegRow {
        transaction_id: TransactionId(row.try_get("transaction_id")?),
        role: RowRole::parse(&row.try_get::<String, _>("role")?)?,
        account_id: account_id(row.try_get("account_id")?)?,
        partition: row.try_get::<i32, _>("partition")? as u32,
        amount: row.try_get("amount")?,
        currency: currency(row)?,
        counterparty: optional_account(row.try_get("counterparty")?)?,
        decision_partition: row
            .try_get::<Option<i32>, _>("decision_partition")?
            .map(|p| p as u32),
        fingerprint: row.try_get("fingerprint")?,
        state,
        reason: read_reason(row)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn account_from_row(row: &PgRow) -> Result<AccountRow, StoreError> {
    Ok(AccountRow {
        account_id: account_id(row.try_get("account_id")?)?,
        partition: row.try_get::<i32, _>("partition")? as u32,
        currency: currency(row)?,
        posted: row.try_get("posted")?,
        held: row.try_get("held")?,
        pending_credit: row.try_get("pending_credit")?,
        last_seq: row.try_get("last_seq")?,
        created_at: row.try_get("created_at")?,
        owner: row.try_get("owner")?,
    })
}
