//! Moving a partition to another node (driven by `walletctl partitions
//! move`), on the Postgres store:
//!
//! 1. the old owner fences the partition `draining` (no new work), then
//!    `frozen` (nothing changes);
//! 2. it exports the partition's rows, and the new owner imports them in one
//!    local transaction (after dropping any older copy);
//! 3. the map in etcd switches the owner;
//! 4. the old owner fences it `moved` and drops its rows, in one local
//!    transaction. A caller with any map is then refused here.
//!
//! Every step is idempotent, so a move interrupted anywhere is run again
//! from the start; before the switch it can also be undone (`release` on
//! the old owner, `discard` on the new one).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use sqlx::{PgConnection, Row};
use wallet_shared::admin::{Fence, FenceState, ImportRequest, PartitionExport, PartitionSummary};
use wallet_shared::{routes, ErrorCode, PartitionId, Rejection};

use crate::app::App;
use crate::error::{ApiResult, StoreError};
use crate::fence::{self, FenceMap};
use crate::pg::PgStore;

/// The tables a partition's rows live in, and how to select them; in the
/// order they are inserted (deleted in reverse: events refer to accounts).
const TABLES: &[(&str, &str)] = &[
    ("accounts", "partition = $1"),
    (
        "events",
        "account_id IN (SELECT account_id FROM accounts WHERE partition = $1)",
    ),
    ("legs", "partition = $1"),
    ("transfers", "partition = $1"),
    // Last, so dropped first, while the accounts that select them remain.
    // Not the outbox: the feed stays with the node that published it.
    (
        "snapshots",
        "account_id IN (SELECT account_id FROM accounts WHERE partition = $1)",
    ),
];

/// The moving routes, merged into the participant's router by `main`.
pub fn router(app: App<PgStore>) -> Router {
    // A partition's copy can be far above the API's body limit.
    let big = axum::extract::DefaultBodyLimit::max(1 << 30);
    Router::new()
        .route(routes::FENCE.pattern(), post(fence).delete(release))
        .route(routes::EXPORT.pattern(), get(export))
        .route(routes::IMPORT.pattern(), post(import).layer(big))
        .route(routes::DISCARD.pattern(), post(discard))
        .with_state(app)
        .layer(axum::middleware::from_fn(crate::app::run_to_completion))
}

/// Fences read at start: a fence outlives the process.
pub async fn load_fences(store: &PgStore) -> anyhow::Result<FenceMap> {
    let rows = sqlx::query("SELECT partition, state, target FROM partition_fences")
        .fetch_all(&store.pool)
        .await?;
    let mut fences = FenceMap::new();
    for r in rows {
        let state: String = r.try_get("state")?;
        let state = FenceState::parse(&state)
            .ok_or_else(|| anyhow::anyhow!("unknown fence state {state:?}"))?;
        fences.insert(
            r.try_get::<i32, _>("partition")? as PartitionId,
            Fence {
                state,
                to: r.try_get("target")?,
            },
        );
    }
    Ok(fences)
}

fn refuse(code: ErrorCode, why: String) -> crate::error::ApiError {
    Rejection::new(code, why).into()
}

/// Whether the map, read from etcd now, says this node owns `p`.
async fn owns(app: &App<PgStore>, p: PartitionId) -> ApiResult<bool> {
    let map = app.map.refresh().await.map_err(|e| {
        refuse(
            ErrorCode::Unavailable,
            format!("cannot read the partition map: {e}"),
        )
    })?;
    if p >= map.partition_count() {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            format!("no partition {p}: the map has {}", map.partition_count()),
        ));
    }
    Ok(map.owner(p).map(|o| o.as_str()) == Some(&*app.node_id))
}

/// `POST .../fence {state, to}`: draining, then frozen while this node owns
/// the partition; moved (dropping the rows) once the map says it does not.
async fn fence(
    State(app): State<App<PgStore>>,
    Path(p): Path<PartitionId>,
    Json(want): Json<Fence>,
) -> ApiResult<Json<Fence>> {
    // Guard first, then the map: nothing can import or move the partition
    // back here between the check and the change.
    let mut fences = app.fences.write().await;
    let owned = owns(&app, p).await?;
    let Some(want) = fence::advance(p, fences.get(&p), &want, owned, &app.node_id)? else {
        return Ok(Json(fences.get(&p).cloned().unwrap_or(want)));
    };
    let mut tx = app.store.pool.begin().await.map_err(StoreError::from)?;
    if want.state == FenceState::Moved {
        drop_rows(&mut tx, p).await?;
    }
    sqlx::query(
        "INSERT INTO partition_fences (partition, state, target) VALUES ($1, $2, $3)
         ON CONFLICT (partition) DO UPDATE
           SET state = excluded.state, target = excluded.target, updated_at = now()",
    )
    .bind(p as i32)
    .bind(want.state.as_str())
    .bind(&want.to)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    tracing::info!(partition = p, state = want.state.as_str(), to = %want.to, "partition fenced");
    fences.insert(p, want.clone());
    Ok(Json(want))
}

/// `DELETE .../fence`: undoes draining or frozen (a move rolled back).
async fn release(
    State(app): State<App<PgStore>>,
    Path(p): Path<PartitionId>,
) -> ApiResult<StatusCode> {
    let mut fences = app.fences.write().await;
    let owned = owns(&app, p).await?;
    if !fence::release(p, fences.get(&p), owned)? {
        return Ok(StatusCode::NO_CONTENT);
    }
    sqlx::query("DELETE FROM partition_fences WHERE partition = $1")
        .bind(p as i32)
        .execute(&app.store.pool)
        .await
        .map_err(StoreError::from)?;
    fences.remove(&p);
    tracing::info!(partition = p, "partition fence released");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET .../export`: the rows of a frozen partition.
async fn export(
    State(app): State<App<PgStore>>,
    Path(p): Path<PartitionId>,
) -> ApiResult<Json<PartitionExport>> {
    // Hold the read pass: the fence cannot change while we read.
    let fences = app.fences.read().await;
    if fences.get(&p).map(|f| f.state) != Some(FenceState::Frozen) {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            format!("partition {p} must be frozen here before it is exported"),
        ));
    }
    let mut tx = app.store.pool.begin().await.map_err(StoreError::from)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    let mut tables = BTreeMap::new();
    for (table, filter) in TABLES {
        let sql = format!("SELECT coalesce(json_agg(t), '[]'::json) FROM {table} t WHERE {filter}");
        let rows: serde_json::Value = sqlx::query_scalar(&sql)
            .bind(p as i32)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        tables.insert(table.to_string(), rows);
    }
    let summary = summarize(&mut tx, p).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Json(PartitionExport {
        partition: p,
        tables,
        summary,
    }))
}

/// `POST .../import`: replaces this node's copy of a partition it does not
/// own (yet) with the export, in one local transaction.
async fn import(
    State(app): State<App<PgStore>>,
    Path(p): Path<PartitionId>,
    Json(req): Json<ImportRequest>,
) -> ApiResult<Json<PartitionSummary>> {
    if req.export.partition != p {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            format!(
                "the export is of partition {}, not {p}",
                req.export.partition
            ),
        ));
    }
    app.map.at_least(req.map_revision).await.map_err(|e| {
        refuse(
            ErrorCode::Unavailable,
            format!("cannot read the partition map: {e}"),
        )
    })?;
    let mut fences = app.fences.write().await;
    if owns(&app, p).await? {
        return Err(refuse(
            ErrorCode::WrongPartitionOwner,
            format!(
                "node {} owns partition {p}; it will not overwrite it",
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
    let mut tx = app.store.pool.begin().await.map_err(StoreError::from)?;
    drop_rows(&mut tx, p).await?;
    for (table, _) in TABLES {
        let rows = req.export.tables.get(*table).ok_or_else(|| {
            refuse(
                ErrorCode::InvalidRequest,
                format!("the export has no table {table}"),
            )
        })?;
        let sql = format!(
            "INSERT INTO {table} SELECT * FROM json_populate_recordset(NULL::{table}, $1::json)"
        );
        sqlx::query(&sql)
            .bind(rows)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
    }
    let summary = summarize(&mut tx, p).await?;
    if summary != req.export.summary {
        // Nothing is committed: the copy is not the export.
        return Err(refuse(
            ErrorCode::Internal,
            format!(
                "partition {p}: the imported copy does not match the export ({summary:?} vs {:?})",
                req.export.summary
            ),
        ));
    }
    sqlx::query("DELETE FROM partition_fences WHERE partition = $1")
        .bind(p as i32)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    tx.commit().await.map_err(StoreError::from)?;
    fences.remove(&p);
    tracing::info!(
        partition = p,
        accounts = summary.accounts,
        events = summary.events,
        "partition imported"
    );
    Ok(Json(summary))
}

/// `POST .../discard`: drops this node's copy of a partition it does not
/// own (a move undone before the switch).
async fn discard(
    State(app): State<App<PgStore>>,
    Path(p): Path<PartitionId>,
) -> ApiResult<StatusCode> {
    let fences = app.fences.write().await;
    if owns(&app, p).await? {
        return Err(refuse(
            ErrorCode::WrongPartitionOwner,
            format!(
                "node {} owns partition {p}; it will not drop it",
                app.node_id
            ),
        ));
    }
    if let Some(f) = fences.get(&p).filter(|f| f.state != FenceState::Moved) {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            format!(
                "partition {p} is {} here; it will not drop it",
                f.state.as_str()
            ),
        ));
    }
    let mut tx = app.store.pool.begin().await.map_err(StoreError::from)?;
    drop_rows(&mut tx, p).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn drop_rows(tx: &mut PgConnection, p: PartitionId) -> Result<(), StoreError> {
    for (table, filter) in TABLES.iter().rev() {
        sqlx::query(&format!("DELETE FROM {table} WHERE {filter}"))
            .bind(p as i32)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

async fn summarize(tx: &mut PgConnection, p: PartitionId) -> Result<PartitionSummary, StoreError> {
    let count =
        |table: &str, filter: &str| format!("(SELECT count(*) FROM {table} WHERE {filter})");
    let sql = format!(
        "SELECT {}, {}, {}, {}",
        count(TABLES[0].0, TABLES[0].1),
        count(TABLES[1].0, TABLES[1].1),
        count(TABLES[2].0, TABLES[2].1),
        count(TABLES[3].0, TABLES[3].1),
    );
    let (accounts, events, legs, transfers): (i64, i64, i64, i64) = sqlx::query_as(&sql)
        .bind(p as i32)
        .fetch_one(&mut *tx)
        .await?;
    let posted = sqlx::query_as::<_, (String, i64)>(
        "SELECT currency, sum(posted)::bigint FROM accounts WHERE partition = $1 GROUP BY currency",
    )
    .bind(p as i32)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    Ok(PartitionSummary {
        accounts,
        events,
        legs,
        transfers,
        posted,
    })
}
