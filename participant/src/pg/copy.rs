//! A partition's copy (a move, `crate::moves`) over Postgres: its reads by
//! change number (`change_no` from the sequence `row_changes`, migration
//! 0005; `created_no`, migration 0008) and its writes, the rows upserted by
//! primary key with the cursor in `partition_copies`.

use std::collections::BTreeMap;

use sqlx::{PgConnection, Postgres, Row, Transaction};
use wallet_shared::admin::{AccountsSummary, CopyState, RowsChunk};
use wallet_shared::PartitionId;

use super::{allow_long_reads, PgStore};
use crate::error::StoreError;
use crate::store::{CopyWrite, PartitionRead, PartitionTable, ReadSpan};

/// How to select a partition's rows in `table` (`$1` is the partition).
fn filter(table: PartitionTable) -> &'static str {
    match table {
        PartitionTable::Accounts | PartitionTable::Legs | PartitionTable::Transfers => {
            "partition = $1"
        }
        PartitionTable::Events | PartitionTable::Snapshots => {
            "account_id IN (SELECT account_id FROM accounts WHERE partition = $1)"
        }
    }
}

/// A read of one partition in one transaction ([`PartitionRead`]).
pub struct PgRead {
    tx: Transaction<'static, Postgres>,
    p: PartitionId,
}

impl PgStore {
    /// The transaction of a partition read, long reads allowed for `Whole`.
    async fn begin_read(
        &self,
        span: ReadSpan,
        snapshot: bool,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.begin().await?;
        if snapshot {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        if span == ReadSpan::Whole {
            allow_long_reads(&mut tx).await?;
        }
        Ok(tx)
    }

    pub(super) async fn read(&self, p: PartitionId, span: ReadSpan) -> Result<PgRead, StoreError> {
        let tx = self.begin_read(span, false).await?;
        Ok(PgRead { tx, p })
    }

    /// The snapshot is taken by the first statement, `last_value` read
    /// under the guard. Then a WAL record of the read's own (a
    /// transactional logical message, which any role may write, read-only
    /// too) makes its commit wait for the disk, which flushes every commit
    /// before it.
    pub(super) async fn read_quiet<G: Send>(
        &self,
        p: PartitionId,
        span: ReadSpan,
        quiet: impl std::future::Future<Output = G> + Send,
    ) -> Result<(PgRead, i64), StoreError> {
        let tx = self.begin_read(span, true).await?;
        let mut read = PgRead { tx, p };
        let last = {
            let _quiet = quiet.await;
            read.last_change().await?
        };
        sqlx::query("SELECT pg_logical_emit_message(true, 'wallet.move', 'flush')")
            .execute(&mut *read.tx)
            .await?;
        Ok((read, last))
    }

    pub(super) async fn copy_record(
        &self,
        p: PartitionId,
    ) -> Result<Option<CopyState>, StoreError> {
        copy_state(&mut *self.acquire().await?, p).await
    }

    pub(super) async fn partition_rows_exist(&self, p: PartitionId) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM accounts WHERE partition = $1)
                 OR EXISTS (SELECT 1 FROM legs WHERE partition = $1)
                 OR EXISTS (SELECT 1 FROM transfers WHERE partition = $1)",
        )
        .bind(p as i32)
        .fetch_one(&mut *self.acquire().await?)
        .await?)
    }

    pub(super) async fn insert_copy(
        &self,
        p: PartitionId,
        from: &str,
        move_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO partition_copies (partition, source, move_id) VALUES ($1, $2, $3)",
        )
        .bind(p as i32)
        .bind(from)
        .bind(move_id)
        .execute(&mut *self.acquire().await?)
        .await?;
        Ok(())
    }

    pub(super) async fn begin_copy_write(&self, p: PartitionId) -> Result<PgCopy, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("SELECT 1 FROM partition_copies WHERE partition = $1 FOR UPDATE")
            .bind(p as i32)
            .execute(&mut *tx)
            .await?;
        Ok(PgCopy { tx, p })
    }
}

impl PartitionRead for PgRead {
    async fn last_change(&mut self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT last_value FROM row_changes")
            .fetch_one(&mut *self.tx)
            .await?)
    }

    async fn count_changed(
        &mut self,
        table: PartitionTable,
        after: i64,
        upto: Option<i64>,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {} WHERE {} AND change_no > $2
               AND ($3::int8 IS NULL OR change_no <= $3)",
            table.as_str(),
            filter(table)
        ))
        .bind(self.p as i32)
        .bind(after)
        .bind(upto)
        .fetch_one(&mut *self.tx)
        .await?)
    }

    async fn count_whole(&mut self) -> Result<BTreeMap<String, i64>, StoreError> {
        let counts: Vec<String> = PartitionTable::COUNTED
            .iter()
            .map(|t| format!("(SELECT count(*) FROM {} WHERE {})", t.as_str(), filter(*t)))
            .collect();
        let row = sqlx::query(&format!("SELECT {}", counts.join(", ")))
            .bind(self.p as i32)
            .fetch_one(&mut *self.tx)
            .await?;
        let mut whole = BTreeMap::new();
        for (i, table) in PartitionTable::COUNTED.iter().enumerate() {
            whole.insert(table.as_str().to_string(), row.try_get::<i64, _>(i)?);
        }
        Ok(whole)
    }

    async fn count_inserted(&mut self, after: i64) -> Result<BTreeMap<String, i64>, StoreError> {
        let mut counts = BTreeMap::new();
        for table in PartitionTable::COUNTED {
            let inserted = match table {
                PartitionTable::Events => "",
                _ => "AND created_no > $2",
            };
            let n: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM {} WHERE {} AND change_no > $2 {inserted}",
                table.as_str(),
                filter(table)
            ))
            .bind(self.p as i32)
            .bind(after)
            .fetch_one(&mut *self.tx)
            .await?;
            counts.insert(table.as_str().to_string(), n);
        }
        Ok(counts)
    }

    async fn sum_accounts(&mut self) -> Result<AccountsSummary, StoreError> {
        let mut summary = AccountsSummary::default();
        let rows = sqlx::query_as::<_, (String, i64, i64, i64)>(
            "SELECT currency, count(*), sum(last_seq)::bigint, sum(posted)::bigint
             FROM accounts WHERE partition = $1 GROUP BY currency",
        )
        .bind(self.p as i32)
        .fetch_all(&mut *self.tx)
        .await?;
        for (currency, accounts, last_seqs, posted) in rows {
            summary.add(&currency, accounts, last_seqs, posted);
        }
        Ok(summary)
    }

    /// The rows as Postgres renders them (`to_jsonb`), without
    /// `change_no` and `created_no`, which are each node's own.
    async fn chunk(
        &mut self,
        table: PartitionTable,
        after: i64,
        upto: Option<i64>,
        limit: i64,
    ) -> Result<RowsChunk, StoreError> {
        let (rows, last, count): (serde_json::Value, Option<i64>, i64) = sqlx::query_as(&format!(
            "SELECT coalesce(json_agg(to_jsonb(t) - 'change_no' - 'created_no' ORDER BY t.change_no), '[]'::json),
                    max(t.change_no), count(*)
             FROM (SELECT * FROM {} WHERE {} AND change_no > $2
                     AND ($3::int8 IS NULL OR change_no <= $3)
                   ORDER BY change_no LIMIT $4) t",
            table.as_str(),
            filter(table)
        ))
        .bind(self.p as i32)
        .bind(after)
        .bind(upto)
        .bind(limit)
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(RowsChunk {
            table: table.as_str().to_string(),
            after,
            last: last.unwrap_or(after),
            count,
            rows,
        })
    }

    async fn finish(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

async fn copy_state(
    conn: &mut PgConnection,
    p: PartitionId,
) -> Result<Option<CopyState>, StoreError> {
    let row = sqlx::query(
        "SELECT source, move_id, cursors, rows, bytes FROM partition_copies WHERE partition = $1",
    )
    .bind(p as i32)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| {
        let cursors: serde_json::Value = r.try_get("cursors")?;
        Ok(CopyState {
            from: r.try_get("source")?,
            move_id: r.try_get("move_id")?,
            cursors: serde_json::from_value(cursors).map_err(StoreError::corrupt)?,
            rows: r.try_get("rows")?,
            bytes: r.try_get("bytes")?,
            older_copy: false,
        })
    })
    .transpose()
}

/// The columns a copy writes (all but `change_no` and `created_no`, which
/// are this node's), and the primary key's, read from the catalog so a
/// column added to a table is copied too.
async fn columns(
    conn: &mut PgConnection,
    table: &str,
) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let cols: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute
         WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped
           AND attname NOT IN ('change_no', 'created_no')
         ORDER BY attnum",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    let key: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
         WHERE i.indrelid = $1::regclass AND i.indisprimary",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    Ok((cols, key))
}

/// One local transaction of a copy ([`CopyWrite`]), its record locked
/// `FOR UPDATE`.
pub struct PgCopy {
    tx: Transaction<'static, Postgres>,
    p: PartitionId,
}

impl CopyWrite for PgCopy {
    async fn state(&mut self) -> Result<Option<CopyState>, StoreError> {
        copy_state(&mut self.tx, self.p).await
    }

    /// One statement: the rows populate the table's record type, inserted
    /// or, on a conflict of the primary key, written over with a new
    /// `change_no` (a new row takes its `change_no` and `created_no` from
    /// their defaults).
    async fn apply(&mut self, table: PartitionTable, rows: &str) -> Result<i64, StoreError> {
        let table = table.as_str();
        let (cols, key) = columns(&mut self.tx, table).await?;
        let list = cols.join(", ");
        let set: Vec<String> = cols
            .iter()
            .filter(|c| !key.contains(c))
            .map(|c| format!("{c} = excluded.{c}"))
            .chain(["change_no = nextval('row_changes')".to_string()])
            .collect();
        let applied = sqlx::query(&format!(
            "INSERT INTO {table} ({list})
             SELECT {list} FROM json_populate_recordset(NULL::{table}, $1::json)
             ON CONFLICT ({}) DO UPDATE SET {}",
            key.join(", "),
            set.join(", ")
        ))
        .bind(rows)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        Ok(applied as i64)
    }

    async fn advance(
        &mut self,
        table: PartitionTable,
        last: i64,
        rows: i64,
        bytes: i64,
    ) -> Result<CopyState, StoreError> {
        sqlx::query(
            "UPDATE partition_copies
             SET cursors = jsonb_set(cursors, ARRAY[$2::text], to_jsonb($3::int8)),
                 rows = rows + $4, bytes = bytes + $5, updated_at = now()
             WHERE partition = $1",
        )
        .bind(self.p as i32)
        .bind(table.as_str())
        .bind(last)
        .bind(rows)
        .bind(bytes)
        .execute(&mut *self.tx)
        .await?;
        Ok(copy_state(&mut self.tx, self.p).await?.unwrap_or_default())
    }

    async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}
