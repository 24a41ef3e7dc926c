//! Moving a partition to another node while it serves (driven by
//! `walletctl partitions move`). The shape of Vitess's `MoveTables`: copy,
//! catch up, short cut-over. Every step of the node's side is a function
//! over any [`Store`] ([`set_fence`], [`mark`], [`rows`], [`copy_rows`],
//! [`copy_finish`], [`release`], [`discard_some`], ...), which the routes
//! parse for and render, and which the simulation runs too; the store does
//! only the reads and writes ([`crate::store::PartitionRead`],
//! [`crate::store::CopyWrite`]).
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
use wallet_shared::admin::{
    CopyBegin, CopyFinish, CopyRows, CopyState, CutoverCheck, Discarded, Fence, FenceState, Mark,
    MarkRequest, PartitionSummary, RowsChunk, PARTITION_TABLES,
};
use wallet_shared::map::{MovePhase, PartitionMap};
use wallet_shared::{routes, ErrorCode, PartitionId, Rejection};

use crate::app::App;
use crate::error::{ApiError, ApiResult, StoreError};
use crate::fence::{self, FenceMap};
use crate::store::{CopyWrite, PartitionRead, PartitionTable, ReadSpan, Store};

/// Largest chunk a caller may ask for.
const MAX_CHUNK: i64 = 20_000;
/// How long one `discard` call goes on dropping before it answers.
const DROP_BUDGET: Duration = Duration::from_secs(1);

/// The moving routes' state: the node, and how long a cut-over may last.
#[derive(Clone)]
pub struct Mover<S> {
    pub app: App<S>,
    /// From fencing `draining` to the owner switch, at most this long.
    pub cutover_deadline: Duration,
}

/// The moving routes, merged into the participant's router by `main`.
pub fn router<S: Store>(mover: Mover<S>) -> Router {
    // A chunk of rows can be above the API's body limit.
    let big = axum::extract::DefaultBodyLimit::max(64 << 20);
    Router::new()
        .route(routes::FENCE.pattern(), post(fence).delete(release_route))
        .route(routes::MARK.pattern(), post(mark_route))
        .route(routes::ROWS.pattern(), get(rows_route))
        .route(routes::SUMMARY.pattern(), get(summary_route))
        .route(routes::COPY.pattern(), post(copy_begin_route))
        .route(
            routes::COPY_ROWS.pattern(),
            post(copy_rows_route).layer(big),
        )
        .route(routes::COPY_FINISH.pattern(), post(copy_finish_route))
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
async fn fence<S: Store>(
    State(m): State<Mover<S>>,
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
async fn release_route<S: Store>(
    State(m): State<Mover<S>>,
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

/// `POST .../mark`: [`mark`].
async fn mark_route<S: Store>(
    State(m): State<Mover<S>>,
    Path(p): Path<PartitionId>,
    Json(req): Json<MarkRequest>,
) -> ApiResult<Json<Mark>> {
    Ok(Json(mark(&m.app, p, &req).await?))
}

/// The end of a copy pass on the old owner, with what is left to copy
/// after `req.after` and the counts `req` asks for. The mark is the last
/// change number at a quiet point (under the fences' write guard, which
/// waits for every request between its fence check and its commit): every
/// `change_no` up to it belongs to a committed row (or to none), so a pass
/// that copies up to it misses nothing that a later pass would not see.
/// Every count is read in the snapshot taken there, of the partition
/// exactly as it stands at the mark.
pub async fn mark<S: Store>(app: &App<S>, p: PartitionId, req: &MarkRequest) -> ApiResult<Mark> {
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
    // A first pass's counts, and a whole count, read the partition whole.
    let (mut read, mark) = app
        .store
        .read_partition_quiet(p, ReadSpan::Whole, app.fences.write())
        .await?;
    let mut left = BTreeMap::new();
    for table in PartitionTable::ALL {
        let after = req.after.get(table.as_str()).copied().unwrap_or(0);
        // Accounts are copied whole every pass (an event copied finds its
        // account), so not only up to the mark.
        let upto = (table != PartitionTable::Accounts).then_some(mark);
        let n = read.count_changed(table, after, upto).await?;
        left.insert(table.as_str().to_string(), n);
    }
    let whole = match req.whole {
        true => Some(PartitionSummary {
            change_no: mark,
            ..summarize(&mut read).await?
        }),
        false => None,
    };
    let (mut inserted, mut accounts) = (None, None);
    if let Some(after) = req.inserted_after {
        inserted = Some(read.count_inserted(after).await?);
        accounts = Some(read.sum_accounts().await?);
    }
    read.finish().await?;
    Ok(Mark {
        mark,
        left,
        whole,
        inserted,
        accounts,
    })
}

/// The chunk of rows `GET .../rows` asks for.
#[derive(Debug, Clone, Deserialize)]
pub struct RowsQuery {
    pub table: String,
    /// The cursor: rows changed after this change number.
    #[serde(default)]
    pub after: i64,
    /// At most up to this change number (a mark); none: every row.
    pub upto: Option<i64>,
    /// At most this many rows (2,000 when not given; 1 to [`MAX_CHUNK`]).
    pub limit: Option<i64>,
}

/// The table a copy names, or a refusal.
fn partition_table(table: &str) -> ApiResult<PartitionTable> {
    PartitionTable::parse(table).ok_or_else(|| {
        refuse(
            ErrorCode::InvalidRequest,
            format!("no table {table:?} in a partition (one of {PARTITION_TABLES:?})"),
        )
    })
}

/// `GET .../rows`: [`rows`].
async fn rows_route<S: Store>(
    State(m): State<Mover<S>>,
    Path(p): Path<PartitionId>,
    Query(q): Query<RowsQuery>,
) -> ApiResult<Json<RowsChunk>> {
    Ok(Json(rows(&m.app, p, &q).await?))
}

/// One chunk of the partition's rows of one table, changed after the
/// cursor (and at most up to `upto`), oldest change first.
pub async fn rows<S: Store>(app: &App<S>, p: PartitionId, q: &RowsQuery) -> ApiResult<RowsChunk> {
    let table = partition_table(&q.table)?;
    let limit = q.limit.unwrap_or(2_000).clamp(1, MAX_CHUNK);
    let mut read = match q.upto {
        Some(_) => app.store.read_partition(p, ReadSpan::Chunk).await?,
        // No mark bounds this read (accounts: every one is copied, so that
        // each event copied finds its account), and the cursor it returns
        // must not pass a change still uncommitted: a row numbered below
        // it that commits later would never be copied. So the chunk is
        // read in a snapshot taken at a quiet point (as a mark is): no
        // request is in flight, so every change numbered so far is in the
        // snapshot and every later one is numbered above it.
        None => {
            app.store
                .read_partition_quiet(p, ReadSpan::Chunk, app.fences.write())
                .await?
                .0
        }
    };
    let chunk = read.chunk(table, q.after, q.upto, limit).await?;
    read.finish().await?;
    Ok(chunk)
}

/// `GET .../summary`: [`summary`].
async fn summary_route<S: Store>(
    State(m): State<Mover<S>>,
    Path(p): Path<PartitionId>,
) -> ApiResult<Json<PartitionSummary>> {
    Ok(Json(summary(&m.app, p).await?))
}

/// What this node holds of the partition, counted whole.
pub async fn summary<S: Store>(app: &App<S>, p: PartitionId) -> ApiResult<PartitionSummary> {
    let mut read = app.store.read_partition(p, ReadSpan::Whole).await?;
    let summary = summarize(&mut read).await?;
    read.finish().await?;
    Ok(summary)
}

/// The whole partition, every row counted (a move checks it while the
/// partition serves, never while it is frozen).
async fn summarize(read: &mut impl PartitionRead) -> Result<PartitionSummary, StoreError> {
    // Read first: whatever is inserted while it counts is numbered above.
    let change_no = read.last_change().await?;
    let rows = read.count_whole().await?;
    let accounts = read.sum_accounts().await?;
    let count = |table: PartitionTable| rows.get(table.as_str()).copied().unwrap_or(0);
    Ok(PartitionSummary {
        accounts: accounts.accounts,
        events: count(PartitionTable::Events),
        legs: count(PartitionTable::Legs),
        transfers: count(PartitionTable::Transfers),
        posted: accounts.posted,
        change_no,
    })
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

/// `POST .../copy`: [`copy_begin`].
async fn copy_begin_route<S: Store>(
    State(m): State<Mover<S>>,
    Path(p): Path<PartitionId>,
    Json(req): Json<CopyBegin>,
) -> ApiResult<Json<CopyState>> {
    Ok(Json(copy_begin(&m.app, p, req).await?))
}

/// On the new owner: starts the copy of a move, or says how far it has
/// come. Rows of an older copy must be discarded first (`older_copy`).
pub async fn copy_begin<S: Store>(
    app: &App<S>,
    p: PartitionId,
    req: CopyBegin,
) -> ApiResult<CopyState> {
    let map = app
        .map
        .at_least(req.map_revision)
        .await
        .map_err(map_unavailable)?;
    let fences = app.fences.read().await;
    not_ours(app, &map, &fences, p)?;
    let older = match app.store.copy_state(p).await? {
        Some(s) if (&s.from, &s.move_id) == (&req.from, &req.move_id) => return Ok(s),
        Some(_) => true,
        None => app.store.holds_rows(p).await?,
    };
    if older {
        return Ok(CopyState {
            older_copy: true,
            ..CopyState::default()
        });
    }
    app.store.start_copy(p, &req.from, &req.move_id).await?;
    tracing::info!(partition = p, from = %req.from, "partition copy started");
    Ok(CopyState {
        from: req.from,
        move_id: req.move_id,
        ..CopyState::default()
    })
}

/// `POST .../copy/rows`: [`copy_rows`].
async fn copy_rows_route<S: Store>(
    State(m): State<Mover<S>>,
    Path(p): Path<PartitionId>,
    Json(req): Json<CopyRows>,
) -> ApiResult<Json<CopyState>> {
    Ok(Json(copy_rows(&m.app, p, &req).await?))
}

/// On the new owner: one chunk, inserted or written over by primary key,
/// with the cursor moved past it, in one local transaction; refused unless
/// the cursor is where the chunk starts and every row of it was applied.
pub async fn copy_rows<S: Store>(
    app: &App<S>,
    p: PartitionId,
    req: &CopyRows,
) -> ApiResult<CopyState> {
    let chunk = &req.chunk;
    let table = partition_table(&chunk.table)?;
    let fences = app.fences.read().await;
    not_ours(app, &app.map.current(), &fences, p)?;
    let mut copy = app.store.write_copy(p).await?;
    let Some(state) = copy.state().await?.filter(|s| s.move_id == req.move_id) else {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            format!("no copy of partition {p} for this move here; start it first"),
        ));
    };
    let cursor = state.cursors.get(table.as_str()).copied().unwrap_or(0);
    if cursor != chunk.after {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            format!(
                "the copy of {} is at {cursor}, not {}; read the copy's state again",
                chunk.table, chunk.after
            ),
        ));
    }
    let body = chunk.rows.to_string();
    if chunk.count > 0 {
        let applied = copy.apply(table, &body).await?;
        if applied != chunk.count {
            return Err(refuse(
                ErrorCode::InvalidRequest,
                format!(
                    "the chunk of {} says {} rows, it holds {applied}",
                    chunk.table, chunk.count
                ),
            ));
        }
    }
    let state = copy
        .advance(table, chunk.last, chunk.count, body.len() as i64)
        .await?;
    copy.commit().await?;
    Ok(state)
}

/// `POST .../copy/finish`: [`copy_finish`].
async fn copy_finish_route<S: Store>(
    State(m): State<Mover<S>>,
    Path(p): Path<PartitionId>,
    Json(req): Json<CopyFinish>,
) -> ApiResult<Json<CutoverCheck>> {
    Ok(Json(copy_finish(&m.app, p, &req).await?))
}

/// On the new owner, once the old owner is frozen and the last changes
/// are here: the copy must hold what it holds ([`CutoverCheck`]: the
/// accounts summed up, and the rows counted whole before the cut-over plus
/// those inserted since, never the whole history again). Lifts an old
/// `moved` fence of this partition here, so it serves it once it owns it.
pub async fn copy_finish<S: Store>(
    app: &App<S>,
    p: PartitionId,
    req: &CopyFinish,
) -> ApiResult<CutoverCheck> {
    let mut fences = app.fences.write().await;
    not_ours(app, &app.map.current(), &fences, p)?;
    match app.store.copy_state(p).await? {
        Some(s) if s.move_id == req.move_id => {}
        _ => {
            return Err(refuse(
                ErrorCode::InvalidRequest,
                format!("no copy of partition {p} for this move here"),
            ))
        }
    }
    let mut read = app.store.read_partition(p, ReadSpan::Chunk).await?;
    let inserted = read.count_inserted(req.counted.change_no).await?;
    let found = CutoverCheck {
        accounts: read.sum_accounts().await?,
        rows: req.counted.plus(inserted),
    };
    read.finish().await?;
    let expected = &req.expected;
    if found != *expected {
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
    Ok(found)
}

/// `POST .../discard`: [`discard_some`] for about a second; called again
/// until `done`.
async fn discard<S: Store>(
    State(m): State<Mover<S>>,
    Path(p): Path<PartitionId>,
) -> ApiResult<Json<Discarded>> {
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
