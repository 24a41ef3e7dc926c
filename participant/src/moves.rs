//! Moving a partition to another node while it serves (driven by
//! `walletctl partitions move`). The shape of Vitess's `MoveTables`: copy,
//! catch up, short cut-over. The node's own steps ([`set_fence`],
//! [`release`], [`discard_some`], [`expire_cutovers`]) run over any
//! [`Store`], and the simulation runs them too; the copy's routes read and
//! write the Postgres tables directly.
//!
//! 1. **Copy** (phase `copying` in etcd; the old owner serves as usual): the
//!    new owner pulls the partition's rows table by table in chunks, oldest
//!    change first (`change_no`, see migration 0005), and applies each
//!    chunk with its cursor in one local transaction, so a copy resumes
//!    where it stopped and never applies a chunk twice. A pass ends at a
//!    `mark` (every change up to it committed); a row changed after it was
//!    copied comes round again in the next pass, so each pass copies only
//!    the changes made during the one before.
//! 2. **Cut-over** (phase `moving`): the old owner fences the partition
//!    `draining` (no new work), then `frozen` (nothing changes); the last
//!    changes are copied, the new owner checks its copy against the old
//!    owner's summary, and the map switches the owner. The fence has a
//!    deadline ([`expire_cutovers`]): past it, this node rolls the move back
//!    to `copying` in etcd and serves the partition again.
//! 3. The old owner fences it `moved` (refusing it to anyone from then on)
//!    and drops its rows in small batches (`discard`).
//!
//! Every step is idempotent; a move interrupted anywhere is run again, or
//! undone before the switch (`release` on the old owner, `discard` on the
//! new one).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use sqlx::{PgConnection, Row};
use wallet_shared::admin::{
    AccountsSummary, CopyBegin, CopyFinish, CopyRows, CopyState, CutoverCheck, Discarded, Fence,
    FenceState, Mark, MarkRequest, PartitionSummary, RowsChunk, PARTITION_TABLES,
};
use wallet_shared::map::{MovePhase, PartitionMap};
use wallet_shared::{routes, ErrorCode, PartitionId, Rejection};

use crate::app::App;
use crate::error::{ApiError, ApiResult, StoreError};
use crate::fence::{self, FenceMap};
use crate::pg::{allow_long_reads, PgStore};
use crate::store::Store;

/// How to select a partition's rows in each of [`PARTITION_TABLES`] (`$1`
/// is the partition).
fn filter(table: &str) -> Option<&'static str> {
    Some(match table {
        "accounts" | "legs" | "transfers" => "partition = $1",
        "events" | "snapshots" => {
            "account_id IN (SELECT account_id FROM accounts WHERE partition = $1)"
        }
        _ => return None,
    })
}

/// Largest chunk a caller may ask for.
const MAX_CHUNK: i64 = 20_000;
/// How long one `discard` call goes on dropping before it answers.
const DROP_BUDGET: Duration = Duration::from_secs(1);

/// The moving routes' state: the node, and how long a cut-over may last.
#[derive(Clone)]
pub struct Mover {
    pub app: App<PgStore>,
    /// From fencing `draining` to the owner switch, at most this long.
    pub cutover_deadline: Duration,
}

/// The moving routes, merged into the participant's router by `main`.
pub fn router(mover: Mover) -> Router {
    // A chunk of rows can be above the API's body limit.
    let big = axum::extract::DefaultBodyLimit::max(64 << 20);
    Router::new()
        .route(routes::FENCE.pattern(), post(fence).delete(release_route))
        .route(routes::MARK.pattern(), post(mark))
        .route(routes::ROWS.pattern(), get(rows))
        .route(routes::SUMMARY.pattern(), get(summary))
        .route(routes::COPY.pattern(), post(copy_begin))
        .route(routes::COPY_ROWS.pattern(), post(copy_rows).layer(big))
        .route(routes::COPY_FINISH.pattern(), post(copy_finish))
        .route(routes::DISCARD.pattern(), post(discard))
        .with_state(mover)
        .layer(axum::middleware::from_fn(crate::app::run_to_completion))
}

fn refuse(code: ErrorCode, why: String) -> ApiError {
    Rejection::new(code, why).into()
}

fn map_unavailable(e: impl std::fmt::Display) -> ApiError {
    refuse(
        ErrorCode::Unavailable,
        format!("cannot read the partition map: {e}"),
    )
}

fn check_partition(map: &PartitionMap, p: PartitionId) -> ApiResult<()> {
    if p >= map.partition_count() {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            format!("no partition {p}: the map has {}", map.partition_count()),
        ));
    }
    Ok(())
}

fn owned<S>(app: &App<S>, map: &PartitionMap, p: PartitionId) -> bool {
    map.owner(p).map(|o| o.as_str()) == Some(&*app.node_id)
}

/// The map read from etcd now, and whether it says this node owns `p`.
async fn fresh_map<S>(app: &App<S>, p: PartitionId) -> ApiResult<(PartitionMap, bool)> {
    let map = app.map.refresh().await.map_err(map_unavailable)?;
    check_partition(&map, p)?;
    let owns = owned(app, &map, p);
    Ok(((*map).clone(), owns))
}

/// `POST .../fence {state, to}`: [`set_fence`].
async fn fence(
    State(m): State<Mover>,
    Path(p): Path<PartitionId>,
    Json(want): Json<Fence>,
) -> ApiResult<Json<Fence>> {
    Ok(Json(set_fence(&m.app, p, want, m.cutover_deadline).await?))
}

/// Fences `p` here as `want` says: draining, then frozen while this node
/// owns the partition and the map records the move's cut-over; moved once
/// the map says it does not own it any more. Draining starts the
/// cut-over's deadline (`cutover_deadline` from this node's clock). Answers
/// the fence now in force.
pub async fn set_fence<S: Store>(
    app: &App<S>,
    p: PartitionId,
    want: Fence,
    cutover_deadline: Duration,
) -> ApiResult<Fence> {
    // Guard first, then the map: nothing can copy or move the partition
    // back here between the check and the change.
    let mut fences = app.fences.write().await;
    let (map, owns) = fresh_map(app, p).await?;
    let now = fences.get(&p).cloned();
    if want.state != FenceState::Moved {
        let cutover = map
            .moves
            .get(&p)
            .is_some_and(|mv| mv.to == want.to && mv.phase == MovePhase::Moving);
        if !cutover && owns {
            return Err(refuse(
                ErrorCode::InvalidRequest,
                format!(
                    "the map records no cut-over of partition {p} to {} (rolled back past \
                     its deadline, or undone); nothing fenced",
                    want.to
                ),
            ));
        }
    }
    let Some(mut next) = fence::advance(p, now.as_ref(), &want, owns, &app.node_id)? else {
        return Ok(now.unwrap_or(want));
    };
    next.deadline = match next.state {
        FenceState::Moved => None,
        // Frozen keeps the deadline draining started.
        _ => Some(
            now.as_ref()
                .and_then(|f| f.deadline)
                .unwrap_or_else(|| app.store.now() + cutover_deadline),
        ),
    };
    app.store.save_fence(p, Some(next.clone())).await?;
    tracing::info!(partition = p, state = next.state.as_str(), to = %next.to, "partition fenced");
    fences.insert(p, next.clone());
    Ok(next)
}

/// `DELETE .../fence`: [`release`].
async fn release_route(
    State(m): State<Mover>,
    Path(p): Path<PartitionId>,
) -> ApiResult<StatusCode> {
    release(&m.app, p).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Undoes draining or frozen here (a move rolled back or aborted).
pub async fn release<S: Store>(app: &App<S>, p: PartitionId) -> ApiResult<()> {
    let mut fences = app.fences.write().await;
    let (_, owns) = fresh_map(app, p).await?;
    if fence::release(p, fences.get(&p), owns)? {
        lift_fence(app, &mut fences, p).await?;
    }
    Ok(())
}

/// Lifts `p`'s fence, saved first; the caller holds the fences' write guard.
pub async fn lift_fence<S: Store>(
    app: &App<S>,
    fences: &mut FenceMap,
    p: PartitionId,
) -> ApiResult<()> {
    app.store.save_fence(p, None).await?;
    fences.remove(&p);
    tracing::info!(partition = p, "partition fence lifted");
    Ok(())
}

/// `POST .../mark`: the end of a copy pass on the old owner. Taken under
/// the fences' write guard, which waits for every request between its
/// fence check and its commit: every `change_no` up to the mark belongs to
/// a committed row (or to none), so a pass that copies up to it misses
/// nothing that a later pass would not see.
async fn mark(
    State(m): State<Mover>,
    Path(p): Path<PartitionId>,
    Json(req): Json<MarkRequest>,
) -> ApiResult<Json<Mark>> {
    let app = &m.app;
    let map = app
        .map
        .at_least(req.map_revision)
        .await
        .map_err(map_unavailable)?;
    check_partition(&map, p)?;
    if !owned(app, &map, p) {
        return Err(refuse(
            ErrorCode::WrongPartitionOwner,
            format!("node {} does not own partition {p}", app.node_id),
        ));
    }
    // One snapshot, taken at a quiet point (under the guard), so every
    // count below is of the partition exactly as it stands at the mark.
    let mut tx = app.store.begin().await.map_err(StoreError::from)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    // A first pass's counts, and a whole count, read the partition whole.
    allow_long_reads(&mut tx).await.map_err(StoreError::from)?;
    let mark: i64 = {
        let _quiet = app.fences.write().await;
        sqlx::query_scalar("SELECT last_value FROM row_changes")
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from)?
    };
    let mut left = BTreeMap::new();
    for table in PARTITION_TABLES {
        let after = req.after.get(table).copied().unwrap_or(0);
        let upto = (table != "accounts").then_some(mark);
        left.insert(
            table.to_string(),
            count_changed(&mut tx, table, p, after, upto).await?,
        );
    }
    let whole = match req.whole {
        true => Some(PartitionSummary {
            change_no: mark,
            ..summarize(&mut tx, p).await?
        }),
        false => None,
    };
    let (mut inserted, mut accounts) = (None, None);
    if let Some(after) = req.inserted_after {
        inserted = Some(count_inserted(&mut tx, p, after).await?);
        accounts = Some(sum_accounts(&mut tx, p).await?);
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Json(Mark {
        mark,
        left,
        whole,
        inserted,
        accounts,
    }))
}

/// The tables a move counts the rows of (accounts are summed up instead;
/// snapshots are derived from the events).
const COUNTED: [&str; 3] = ["events", "legs", "transfers"];

/// Per table of [`COUNTED`], the partition's rows inserted after change
/// number `after`: found through the change index, so it takes as long as
/// there were changes since, however long the history. Events are never
/// changed (their `change_no` is their insertion); legs and transfer
/// records keep theirs in `created_no` (migration 0008; none before it).
async fn count_inserted(
    conn: &mut PgConnection,
    p: PartitionId,
    after: i64,
) -> Result<BTreeMap<String, i64>, StoreError> {
    let mut counts = BTreeMap::new();
    for table in COUNTED {
        let inserted = match table {
            "events" => "",
            _ => "AND created_no > $2",
        };
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE {} AND change_no > $2 {inserted}",
            filter(table).expect("a partition table")
        ))
        .bind(p as i32)
        .bind(after)
        .fetch_one(&mut *conn)
        .await?;
        counts.insert(table.to_string(), n);
    }
    Ok(counts)
}

/// Rows of the partition in `table` changed after `after` (and at most up
/// to `upto`), by this node's change numbers.
async fn count_changed(
    conn: &mut PgConnection,
    table: &str,
    p: PartitionId,
    after: i64,
    upto: Option<i64>,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {table} WHERE {} AND change_no > $2
           AND ($3::int8 IS NULL OR change_no <= $3)",
        filter(table).expect("a partition table")
    ))
    .bind(p as i32)
    .bind(after)
    .bind(upto)
    .fetch_one(&mut *conn)
    .await?)
}

#[derive(Debug, Deserialize)]
struct RowsQuery {
    table: String,
    #[serde(default)]
    after: i64,
    upto: Option<i64>,
    limit: Option<i64>,
}

/// `GET .../rows`: one chunk of the partition's rows of one table, changed
/// after the cursor (and at most up to `upto`), oldest change first.
async fn rows(
    State(m): State<Mover>,
    Path(p): Path<PartitionId>,
    Query(q): Query<RowsQuery>,
) -> ApiResult<Json<RowsChunk>> {
    let Some(filter) = filter(&q.table) else {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            format!(
                "no table {:?} in a partition (one of {PARTITION_TABLES:?})",
                q.table
            ),
        ));
    };
    let limit = q.limit.unwrap_or(2_000).clamp(1, MAX_CHUNK);
    let mut tx = m.app.store.begin().await.map_err(StoreError::from)?;
    if q.upto.is_none() {
        // No mark bounds this read (accounts: every one is copied, so that
        // each event copied finds its account), and the cursor it returns
        // must not pass a change still uncommitted: a row numbered below
        // it that commits later would never be copied. So the chunk is
        // read in a snapshot taken at a quiet point (as a mark is): no
        // request is in flight, so every change numbered so far is in the
        // snapshot and every later one is numbered above it.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        let _quiet = m.app.fences.write().await;
        sqlx::query("SELECT 1")
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
    }
    let (rows, last, count): (serde_json::Value, Option<i64>, i64) = sqlx::query_as(&format!(
        "SELECT coalesce(json_agg(to_jsonb(t) - 'change_no' - 'created_no' ORDER BY t.change_no), '[]'::json),
                max(t.change_no), count(*)
         FROM (SELECT * FROM {} WHERE {filter} AND change_no > $2
                 AND ($3::int8 IS NULL OR change_no <= $3)
               ORDER BY change_no LIMIT $4) t",
        q.table
    ))
    .bind(p as i32)
    .bind(q.after)
    .bind(q.upto)
    .bind(limit)
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Json(RowsChunk {
        table: q.table,
        after: q.after,
        last: last.unwrap_or(q.after),
        count,
        rows,
    }))
}

/// `GET .../summary`: what this node holds of the partition.
async fn summary(
    State(m): State<Mover>,
    Path(p): Path<PartitionId>,
) -> ApiResult<Json<PartitionSummary>> {
    let mut tx = m.app.store.begin().await.map_err(StoreError::from)?;
    allow_long_reads(&mut tx).await.map_err(StoreError::from)?;
    let summary = summarize(&mut tx, p).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Json(summary))
}

/// Refuses to copy into, or drop, a partition this node owns or is moving
/// away.
pub fn not_ours<S>(
    app: &App<S>,
    map: &PartitionMap,
    fences: &FenceMap,
    p: PartitionId,
) -> ApiResult<()> {
    check_partition(map, p)?;
    if owned(app, map, p) {
        return Err(refuse(
            ErrorCode::WrongPartitionOwner,
            format!(
                "node {} owns partition {p}; it will not overwrite or drop it",
                app.node_id
            ),
        ));
    }
    if let Some(f) = fences.get(&p).filter(|f| f.state != FenceState::Moved) {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            format!(
                "partition {p} is {} here for a move to {}; finish that move first",
                f.state.as_str(),
                f.to
            ),
        ));
    }
    Ok(())
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

/// `POST .../copy` on the new owner: starts the copy of a move, or says how
/// far it has come. Rows of an older copy must be discarded first.
async fn copy_begin(
    State(m): State<Mover>,
    Path(p): Path<PartitionId>,
    Json(req): Json<CopyBegin>,
) -> ApiResult<Json<CopyState>> {
    let app = &m.app;
    let map = app
        .map
        .at_least(req.map_revision)
        .await
        .map_err(map_unavailable)?;
    let fences = app.fences.read().await;
    not_ours(app, &map, &fences, p)?;
    let mut conn = app.store.acquire().await.map_err(StoreError::from)?;
    let older = match copy_state(&mut conn, p).await? {
        Some(s) if (&s.from, &s.move_id) == (&req.from, &req.move_id) => return Ok(Json(s)),
        Some(_) => true,
        None => sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM accounts WHERE partition = $1)
                     OR EXISTS (SELECT 1 FROM legs WHERE partition = $1)
                     OR EXISTS (SELECT 1 FROM transfers WHERE partition = $1)",
        )
        .bind(p as i32)
        .fetch_one(&mut *conn)
        .await
        .map_err(StoreError::from)?,
    };
    if older {
        return Ok(Json(CopyState {
            older_copy: true,
            ..CopyState::default()
        }));
    }
    sqlx::query("INSERT INTO partition_copies (partition, source, move_id) VALUES ($1, $2, $3)")
        .bind(p as i32)
        .bind(&req.from)
        .bind(&req.move_id)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::from)?;
    tracing::info!(partition = p, from = %req.from, "partition copy started");
    Ok(Json(CopyState {
        from: req.from,
        move_id: req.move_id,
        ..CopyState::default()
    }))
}

/// The columns a copy writes (all but `change_no` and `created_no`, which
/// are this node's),
/// and the primary key's, read from the catalog so a column added to a
/// table is copied too.
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

/// `POST .../copy/rows` on the new owner: one chunk, inserted or written
/// over by primary key, with the cursor moved past it, in one local
/// transaction; refused unless the cursor is where the chunk starts.
async fn copy_rows(
    State(m): State<Mover>,
    Path(p): Path<PartitionId>,
    Json(req): Json<CopyRows>,
) -> ApiResult<Json<CopyState>> {
    let app = &m.app;
    let table = req.chunk.table.as_str();
    if filter(table).is_none() {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            format!("no table {table:?} in a partition"),
        ));
    }
    let fences = app.fences.read().await;
    not_ours(app, &app.map.current(), &fences, p)?;
    let mut tx = app.store.begin().await.map_err(StoreError::from)?;
    sqlx::query("SELECT 1 FROM partition_copies WHERE partition = $1 FOR UPDATE")
        .bind(p as i32)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    let state = copy_state(&mut tx, p).await?;
    let Some(state) = state.filter(|s| s.move_id == req.move_id) else {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            format!("no copy of partition {p} for this move here; start it first"),
        ));
    };
    let cursor = state.cursors.get(table).copied().unwrap_or(0);
    if cursor != req.chunk.after {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            format!(
                "the copy of {table} is at {cursor}, not {}; read the copy's state again",
                req.chunk.after
            ),
        ));
    }
    let body = req.chunk.rows.to_string();
    if req.chunk.count > 0 {
        let (cols, key) = columns(&mut tx, table).await?;
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
        .bind(&body)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?
        .rows_affected();
        if applied as i64 != req.chunk.count {
            return Err(refuse(
                ErrorCode::InvalidRequest,
                format!(
                    "the chunk of {table} says {} rows, it holds {applied}",
                    req.chunk.count
                ),
            ));
        }
    }
    sqlx::query(
        "UPDATE partition_copies
         SET cursors = jsonb_set(cursors, ARRAY[$2::text], to_jsonb($3::int8)),
             rows = rows + $4, bytes = bytes + $5, updated_at = now()
         WHERE partition = $1",
    )
    .bind(p as i32)
    .bind(table)
    .bind(req.chunk.last)
    .bind(req.chunk.count)
    .bind(body.len() as i64)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    let state = copy_state(&mut tx, p).await?.unwrap_or_default();
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Json(state))
}

/// `POST .../copy/finish` on the new owner: the old owner is frozen and the
/// last changes are here; the copy must hold what it holds
/// ([`CutoverCheck`]: the accounts summed up, and the rows counted whole
/// before the cut-over plus those inserted since, never the whole history
/// again). Lifts an old `moved` fence of this
/// partition here, so it serves it once it owns it.
async fn copy_finish(
    State(m): State<Mover>,
    Path(p): Path<PartitionId>,
    Json(req): Json<CopyFinish>,
) -> ApiResult<Json<CutoverCheck>> {
    let app = &m.app;
    let mut fences = app.fences.write().await;
    not_ours(app, &app.map.current(), &fences, p)?;
    let mut conn = app.store.acquire().await.map_err(StoreError::from)?;
    match copy_state(&mut conn, p).await? {
        Some(s) if s.move_id == req.move_id => {}
        _ => {
            return Err(refuse(
                ErrorCode::InvalidRequest,
                format!("no copy of partition {p} for this move here"),
            ))
        }
    }
    let inserted = count_inserted(&mut conn, p, req.counted.change_no).await?;
    let found = CutoverCheck {
        accounts: sum_accounts(&mut conn, p).await?,
        rows: req.counted.plus(inserted),
    };
    let expected = req.expected;
    if found != expected {
        return Err(refuse(
            ErrorCode::Internal,
            format!(
                "partition {p}: the copy does not match the old owner (here {found:?}, there {expected:?})"
            ),
        ));
    }
    if fences.contains_key(&p) {
        lift_fence(app, &mut fences, p).await?;
    }
    tracing::info!(
        partition = p,
        accounts = found.accounts.accounts,
        events = found.rows.get("events").copied().unwrap_or(0),
        "partition copy complete"
    );
    Ok(Json(found))
}

/// `POST .../discard`: [`discard_some`] for about a second; called again
/// until `done`.
async fn discard(State(m): State<Mover>, Path(p): Path<PartitionId>) -> ApiResult<Json<Discarded>> {
    Ok(Json(discard_some(&m.app, p, DROP_BUDGET).await?))
}

/// Drops this node's rows of a partition it does not own (a copy undone,
/// or the old owner's rows after the switch), for about `budget`.
pub async fn discard_some<S: Store>(
    app: &App<S>,
    p: PartitionId,
    budget: Duration,
) -> ApiResult<Discarded> {
    {
        let fences = app.fences.read().await;
        let (map, _) = fresh_map(app, p).await?;
        not_ours(app, &map, &fences, p)?;
    }
    let discarded = app.store.discard(p, budget).await?;
    if discarded.dropped > 0 {
        tracing::info!(
            partition = p,
            rows = discarded.dropped,
            done = discarded.done,
            "partition rows dropped"
        );
    }
    Ok(discarded)
}

/// The whole partition here, every row counted (a move checks it while
/// the partition serves, never while it is frozen).
async fn summarize(
    conn: &mut PgConnection,
    p: PartitionId,
) -> Result<PartitionSummary, StoreError> {
    let count = |table: &str| {
        format!(
            "(SELECT count(*) FROM {table} WHERE {})",
            filter(table).expect("a partition table")
        )
    };
    let sql = format!(
        "SELECT {}, {}, {}",
        count("events"),
        count("legs"),
        count("transfers"),
    );
    // Read first: whatever is inserted while it counts is numbered above.
    let change_no: i64 = sqlx::query_scalar("SELECT last_value FROM row_changes")
        .fetch_one(&mut *conn)
        .await?;
    let (events, legs, transfers): (i64, i64, i64) = sqlx::query_as(&sql)
        .bind(p as i32)
        .fetch_one(&mut *conn)
        .await?;
    let accounts = sum_accounts(conn, p).await?;
    Ok(PartitionSummary {
        accounts: accounts.accounts,
        events,
        legs,
        transfers,
        posted: accounts.posted,
        change_no,
    })
}

/// The partition's accounts summed up: one row per account, however long
/// its history.
async fn sum_accounts(
    conn: &mut PgConnection,
    p: PartitionId,
) -> Result<AccountsSummary, StoreError> {
    let mut summary = AccountsSummary::default();
    let rows = sqlx::query_as::<_, (String, i64, i64, i64)>(
        "SELECT currency, count(*), sum(last_seq)::bigint, sum(posted)::bigint
         FROM accounts WHERE partition = $1 GROUP BY currency",
    )
    .bind(p as i32)
    .fetch_all(&mut *conn)
    .await?;
    for (currency, accounts, last_seqs, posted) in rows {
        summary.accounts += accounts;
        summary.last_seqs += last_seqs;
        summary.posted.insert(currency, posted);
    }
    Ok(summary)
}

/// The cut-over's deadline, enforced by the old owner on its own: a
/// partition fenced `draining` or `frozen` past its fence's deadline, or
/// recorded in etcd as in cut-over from here with no fence for longer than
/// the deadline (the mover died before fencing), is rolled back: the move
/// goes back to `copying` in etcd (a compare-and-set, so a switch that
/// happened first wins and nothing is rolled back), then the fence is
/// lifted and the partition serves here again. The mover's own switch is a
/// compare-and-set that requires the cut-over, so it can no longer land.
pub async fn expire_cutovers<S: Store>(app: App<S>, cutover_deadline: Duration) {
    let app = &app;
    let mut unfenced_since: HashMap<PartitionId, Instant> = HashMap::new();
    let mut failures = wallet_shared::retry::Policy::background().backoff();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = app.store.now();
        let fences = app.fences.read().await.clone();
        let map = app.map.current();
        let mut due: Vec<PartitionId> = fences
            .iter()
            .filter(|(_, f)| f.state != FenceState::Moved && f.deadline.is_some_and(|d| d < now))
            .map(|(p, _)| *p)
            .collect();
        let unfenced: Vec<PartitionId> = map
            .moves
            .iter()
            .filter(|(p, mv)| {
                mv.phase == MovePhase::Moving
                    && mv.from == *app.node_id
                    && owned(app, &map, **p)
                    && !fences.contains_key(p)
            })
            .map(|(p, _)| *p)
            .collect();
        unfenced_since.retain(|p, _| unfenced.contains(p));
        for p in unfenced {
            let since = *unfenced_since.entry(p).or_insert_with(Instant::now);
            if since.elapsed() > cutover_deadline {
                due.push(p);
            }
        }
        for p in due {
            match roll_back(app, p).await {
                Ok(()) => {
                    unfenced_since.remove(&p);
                    failures = wallet_shared::retry::Policy::background().backoff();
                }
                Err(e) => {
                    let pause = failures.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(partition = p, error = %e, ?pause, "cannot roll back an overdue cut-over yet");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

async fn roll_back<S: Store>(app: &App<S>, p: PartitionId) -> anyhow::Result<()> {
    let mut fences = app.fences.write().await;
    let map = app.map.refresh().await?;
    if !owned(app, &map, p) {
        // The owner switched first: the move goes on, nothing to undo.
        return Ok(());
    }
    if let Some(mv) = map
        .moves
        .get(&p)
        .filter(|mv| mv.phase == MovePhase::Moving && mv.from == *app.node_id)
    {
        let store = app
            .map
            .store()
            .ok_or_else(|| anyhow::anyhow!("no etcd behind the map"))?;
        let back = wallet_shared::map::Move {
            phase: MovePhase::Copying,
            cutover_at: None,
            rollbacks: mv.rollbacks + 1,
            ..mv.clone()
        };
        let key = format!("moves/{p:05}");
        store
            .update(map.revision, &[(key, serde_json::to_string(&back)?)], &[])
            .await?;
        tracing::warn!(
            partition = p,
            to = %mv.to,
            "the move's cut-over overran its deadline: rolled back to copying; the partition serves here again"
        );
    }
    if fences.get(&p).is_some_and(|f| f.state != FenceState::Moved) {
        lift_fence(app, &mut fences, p)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}
