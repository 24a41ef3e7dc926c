//! Online partition moves, driven from here (see `participant::moves` for
//! the node's side):
//!
//! 1. record the move in etcd (`moves/{p}`, phase `copying`): the old owner
//!    serves the partition as usual;
//! 2. copy it in chunks, pass after pass, each pass up to a mark taken on
//!    the old owner and copying only what changed during the one before,
//!    until what is left is small (at most `--cutover-rows`);
//! 3. cut over (phase `moving`: coordinators hold new work back): fence the
//!    partition `draining` on its owner, wait (bounded) for its in-flight
//!    transfers, fence it `frozen`, copy the last changes, have the new owner
//!    check its copy against the old owner's summary, and switch the owner
//!    in etcd, a compare-and-set that also requires the cut-over unchanged.
//!    A cut-over that overruns the old owner's deadline is rolled back there
//!    (phase `copying` again); this tries again, a few times;
//! 4. fence it `moved` on the old owner (a caller with any map is refused
//!    there from then on), drop its rows there in small batches;
//! 5. delete the move record.
//!
//! Every step is idempotent and the record (with the new owner's copy
//! cursors) says where a move stands, so running the same command again
//! after a crash (of walletctl, or of either node) resumes it; `--abort`
//! undoes one that has not switched yet.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use wallet_shared::admin::{
    CopyBegin, CopyFinish, CopyRows, CopyState, CutoverCheck, Discarded, Fence, FenceState, Mark,
    MarkRequest, NodePartitions, PartitionSummary, RowsChunk, PARTITION_TABLES,
};
use wallet_shared::map::{MapError, Move, MovePhase};
use wallet_shared::{routes, MapStore, PartitionId, PartitionMap};

use crate::ctx::Ctx;
use crate::error::{conflict, not_found, CtlError, CtlResult, Exit};
use crate::output::Table;

#[derive(Debug, Clone, clap::Args)]
pub struct MoveOptions {
    /// Longest wait, in seconds, for the partition's in-flight transfers to
    /// finish once it takes no new work (whatever is left is copied as it
    /// is and finishes on the new owner)
    #[arg(long, default_value_t = 0.5)]
    drain_timeout: f64,
    /// Milliseconds to let coordinators see the cut-over before fencing
    #[arg(long, default_value_t = 200)]
    announce_ms: u64,
    /// Copy at most this many rows per second (0: as fast as it goes)
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Rows per chunk
    #[arg(long, default_value_t = 2_000)]
    chunk: i64,
    /// Cut over once a pass has at most this many rows left to copy
    #[arg(long, default_value_t = 2_000)]
    cutover_rows: i64,
    /// Cut-overs to try before giving up, when one overruns its deadline
    /// and is rolled back
    #[arg(long, default_value_t = 3)]
    cutovers: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct MoveReport {
    pub partition: PartitionId,
    pub from: String,
    pub to: String,
    /// Nothing to do: the partition was already there.
    pub already_there: bool,
    /// What the new owner held when its copy was checked whole, at the
    /// last mark before the cut-over (`None` when resuming after the
    /// switch); what changed after it is `delta_rows`.
    pub copied: Option<PartitionSummary>,
    /// Rows and bytes (JSON) copied by this run, counting rows copied again
    /// because they changed meanwhile.
    pub rows_copied: i64,
    pub bytes_copied: i64,
    /// Copy passes while the partition served.
    pub passes: u32,
    /// Seconds spent copying while the partition served (every pass, up
    /// to the cut-over).
    pub copy_seconds: f64,
    /// Rows copied while the partition was frozen (the last delta).
    pub delta_rows: i64,
    /// Seconds spent waiting for in-flight transfers (no new work taken).
    pub drain_seconds: f64,
    /// Seconds the partition was frozen (no writes at all).
    pub frozen_seconds: f64,
    /// Seconds the old owner refused writes on it (draining and frozen).
    pub refused_seconds: f64,
    /// Cut-overs rolled back by the deadline during this run.
    pub rollbacks: u32,
    pub total_seconds: f64,
}

pub fn describe(r: &MoveReport) -> String {
    if r.already_there {
        return format!("partition {} is already on {}", r.partition, r.to);
    }
    let copied = r
        .copied
        .as_ref()
        .map_or("resumed after the switch".to_string(), |c| {
            format!(
                "{} accounts, {} events, {} legs, {} transfer records",
                c.accounts, c.events, c.legs, c.transfers
            )
        });
    format!(
        "partition {} moved from {} to {} in {:.2} s ({}; {} rows, {} copied in {} passes; \
         last delta {} rows; drained {:.3} s, frozen {:.3} s, writes refused {:.3} s{})",
        r.partition,
        r.from,
        r.to,
        r.total_seconds,
        copied,
        r.rows_copied,
        megabytes(r.bytes_copied),
        r.passes,
        r.delta_rows,
        r.drain_seconds,
        r.frozen_seconds,
        r.refused_seconds,
        if r.rollbacks > 0 {
            format!("; {} cut-overs rolled back", r.rollbacks)
        } else {
            String::new()
        }
    )
}

fn megabytes(bytes: i64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Test hooks at the named points: `WALLETCTL_CRASH_AT=point` dies there,
/// as `kill -9` would; `WALLETCTL_PAUSE_AT=point:FILE` writes `FILE.paused`
/// there and stands still until FILE exists, so a test can run something
/// else (an abort, say) at exactly that step.
fn crash_point(point: &str) {
    if std::env::var("WALLETCTL_CRASH_AT").as_deref() == Ok(point) {
        eprintln!("walletctl: WALLETCTL_CRASH_AT={point}: dying here");
        std::process::abort();
    }
    let Ok(pause) = std::env::var("WALLETCTL_PAUSE_AT") else {
        return;
    };
    let Some((at, file)) = pause.split_once(':') else {
        return;
    };
    if at != point {
        return;
    }
    eprintln!("walletctl: WALLETCTL_PAUSE_AT={point}: waiting for {file}");
    if let Err(e) = std::fs::write(format!("{file}.paused"), point) {
        eprintln!("walletctl: cannot write {file}.paused: {e}");
    }
    while !std::path::Path::new(file).exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check_partition(map: &PartitionMap, p: PartitionId) -> CtlResult<()> {
    if p >= map.partition_count() {
        return Err(not_found(format!(
            "no partition {p}: the map has partitions 0 to {}",
            map.partition_count() - 1
        )));
    }
    Ok(())
}

/// Applies a map change that depends on the map as read: `change` looks at
/// a fresh reading and says what to write (or fails); a concurrent change
/// makes it read again (a few times, with backoff).
async fn change_map(
    store: &MapStore,
    what: &str,
    change: impl Fn(&PartitionMap) -> CtlResult<(Vec<(String, String)>, Vec<String>)>,
) -> CtlResult<PartitionMap> {
    let mut backoff = wallet_shared::retry::Policy::request().backoff();
    loop {
        let map = store.load().await?;
        let (puts, deletes) = change(&map)?;
        match store.update(map.revision, &puts, &deletes).await {
            Ok(map) => return Ok(map),
            Err(MapError::Changed(_)) => match backoff.next() {
                Some(delay) => tokio::time::sleep(delay).await,
                None => {
                    return Err(conflict(format!(
                        "{what}: the partition map keeps changing underneath; try again"
                    )))
                }
            },
            Err(e) => return Err(e.into()),
        }
    }
}

fn move_key(p: PartitionId) -> String {
    format!("moves/{p:05}")
}

fn owner_key(p: PartitionId) -> String {
    format!("partitions/{p:05}")
}

fn same_move(a: &Move, b: &Move) -> bool {
    (&a.from, &a.to, &a.started_at) == (&b.from, &b.to, &b.started_at)
}

/// One move as this run drives it: where, and what it did so far.
struct Mover<'a> {
    ctx: &'a Ctx,
    store: MapStore,
    p: PartitionId,
    record: Move,
    from_url: String,
    to_url: String,
    from_name: String,
    to_name: String,
    opts: &'a MoveOptions,
    report: MoveReport,
    /// When this run started copying, and the rows it copied: the rate.
    copy_started: Instant,
    last_note: Instant,
    /// The partition counted whole by the last pass while it served: on
    /// the old owner at its mark, and on the new owner after the pass.
    counted: Option<(PartitionSummary, PartitionSummary)>,
}

pub async fn run(ctx: &Ctx, p: PartitionId, to: &str, opts: &MoveOptions) -> CtlResult<MoveReport> {
    let started = Instant::now();
    let store = ctx.map_store().await?;
    let map = store.load().await?;
    check_partition(&map, p)?;
    ctx.node_url(&map, to)?;
    let mut report = MoveReport {
        partition: p,
        from: map.owners[p as usize].clone(),
        to: to.to_string(),
        ..MoveReport::default()
    };
    let record = match map.moves.get(&p) {
        Some(m) if m.phase == MovePhase::Aborting => {
            return Err(conflict(format!(
                "the move of partition {p} to {} is being undone; run \
                 `walletctl partitions move {p} --abort` to finish undoing it",
                m.to
            )))
        }
        Some(m) if m.to != to => {
            return Err(conflict(format!(
                "partition {p} is being moved to {}; run `walletctl partitions move {p} --to {}` \
                 to finish that move, or `walletctl partitions move {p} --abort` to undo it",
                m.to, m.to
            )))
        }
        Some(m) => {
            ctx.output.note(format!(
                "resuming the move of partition {p} from {} to {to} ({})",
                m.from,
                phase_name(m.phase)
            ));
            m.clone()
        }
        None if map.owners[p as usize] == to => {
            report.already_there = true;
            return Ok(report);
        }
        None => {
            let record = Move {
                from: map.owners[p as usize].clone(),
                to: to.to_string(),
                phase: MovePhase::Copying,
                started_at: chrono::Utc::now().to_rfc3339(),
                cutover_at: None,
                rollbacks: 0,
            };
            let value = serde_json::to_string(&record).expect("serializable");
            change_map(&store, "recording the move", |map| {
                if map.moves.contains_key(&p) {
                    return Err(conflict(format!(
                        "partition {p}: another move started just now"
                    )));
                }
                if map.owners[p as usize] != record.from {
                    return Err(conflict(format!("partition {p} changed owner just now")));
                }
                Ok((vec![(move_key(p), value.clone())], vec![]))
            })
            .await?;
            record
        }
    };
    report.from = record.from.clone();
    let map = store.load().await?;
    let mut mv = Mover {
        ctx,
        p,
        from_url: ctx.node_url(&map, &record.from)?.to_string(),
        to_url: ctx.node_url(&map, &record.to)?.to_string(),
        from_name: format!("node {} (the old owner)", record.from),
        to_name: format!("node {} (the new owner)", record.to),
        store,
        record,
        opts,
        report,
        copy_started: Instant::now(),
        last_note: Instant::now(),
        counted: None,
    };

    if map.owners[p as usize] != mv.record.to {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let copy = Instant::now();
            mv.copy_online().await?;
            mv.report.copy_seconds += copy.elapsed().as_secs_f64();
            crash_point("after_copy");
            if mv.cut_over().await? {
                break;
            }
            mv.report.rollbacks += 1;
            if attempt >= opts.cutovers.max(1) {
                return Err(CtlError::new(
                    Exit::Conflict,
                    format!(
                        "partition {p}: {attempt} cut-overs overran the old owner's deadline and \
                         were rolled back; {} serves it as before. Run the same command again \
                         (the copy resumes), at a quieter time or with a higher --cutover-rows \
                         limit, or undo it with `walletctl partitions move {p} --abort`",
                        mv.record.from
                    ),
                ));
            }
            ctx.output.note(format!(
                "partition {p}: the cut-over overran the old owner's deadline and was rolled \
                 back; {} serves it again; catching up and trying again",
                mv.record.from
            ));
        }
    }
    mv.finish().await?;
    mv.report.total_seconds = started.elapsed().as_secs_f64();
    Ok(mv.report)
}

fn phase_name(phase: MovePhase) -> &'static str {
    match phase {
        MovePhase::Copying => "copying",
        MovePhase::Moving => "cutting over",
        MovePhase::Switched => "switched, cleanup pending",
        MovePhase::Aborting => "being undone",
    }
}

impl Mover<'_> {
    fn url(&self, base: &str, route: routes::Route) -> String {
        format!("{base}{}", route.with(self.p))
    }

    /// Starts or resumes the new owner's copy: how far it has come.
    async fn begin_copy(&mut self) -> CtlResult<CopyState> {
        let begin = |rev| CopyBegin {
            map_revision: rev,
            from: self.record.from.clone(),
            move_id: self.record.started_at.clone(),
        };
        let rev = self.store.load().await?.revision;
        let url = self.url(&self.to_url, routes::COPY);
        let mut state: CopyState = self.ctx.post(&self.to_name, &url, &begin(rev)).await?;
        if state.older_copy {
            self.ctx.output.note(format!(
                "partition {}: {} holds an older copy; dropping it first",
                self.p, self.record.to
            ));
            drop_rows(
                self.ctx,
                &self.to_name,
                &self.url(&self.to_url, routes::DISCARD),
            )
            .await?;
            state = self.ctx.post(&self.to_name, &url, &begin(rev)).await?;
            if state.older_copy {
                return Err(CtlError::new(
                    Exit::Failed,
                    format!(
                        "{}: its older copy of partition {} is still there",
                        self.to_name, self.p
                    ),
                ));
            }
        } else if state.rows > 0 {
            self.ctx.output.note(format!(
                "partition {}: resuming the copy ({} rows, {} copied before)",
                self.p,
                state.rows,
                megabytes(state.bytes)
            ));
        }
        Ok(state)
    }

    /// A mark on the old owner after `cursors`; `whole`: with the partition
    /// counted whole at it; `inserted_after`: with the rows inserted after
    /// that change number counted, and the accounts summed up.
    async fn mark(
        &self,
        cursors: &BTreeMap<String, i64>,
        whole: bool,
        inserted_after: Option<i64>,
    ) -> CtlResult<Mark> {
        let rev = self.store.load().await?.revision;
        let req = MarkRequest {
            map_revision: rev,
            after: cursors.clone(),
            whole,
            inserted_after,
        };
        self.ctx
            .post(
                &self.from_name,
                &self.url(&self.from_url, routes::MARK),
                &req,
            )
            .await
    }

    /// Copies while the partition serves, pass after pass, until a pass has
    /// at most `--cutover-rows` rows to copy (or after a few passes); that
    /// last pass goes up to a mark at which the old owner counted the
    /// partition whole, and the copy must then hold as many rows: the one
    /// check whose time grows with the partition's history, taken while it
    /// serves, so the cut-over checks only what changed after it.
    async fn copy_online(&mut self) -> CtlResult<()> {
        const MAX_PASSES: u32 = 8;
        let mut cursors = self.begin_copy().await?.cursors;
        for pass in 1..=MAX_PASSES {
            let mark = self.mark(&cursors, false, None).await?;
            let left: i64 = mark.left.values().sum();
            if left <= self.opts.cutover_rows.max(0) || pass == MAX_PASSES {
                return self.copy_checked(&mut cursors).await;
            }
            self.report.passes += 1;
            self.ctx.output.note(format!(
                "partition {}: copy pass {pass}: {left} rows to copy while it serves",
                self.p
            ));
            self.copy_pass(&mut cursors, mark.mark, left).await?;
        }
        Ok(())
    }

    /// The last pass while the partition serves, up to a mark at which the
    /// old owner counted it whole; then the new owner counts its copy
    /// whole. The events, never changed, must be as many already (a row
    /// changed after the mark waits for the next pass, so legs and
    /// transfer records can differ yet); the cut-over compares the rest.
    async fn copy_checked(&mut self, cursors: &mut BTreeMap<String, i64>) -> CtlResult<()> {
        let mark = self.mark(cursors, true, None).await?;
        let left: i64 = mark.left.values().sum();
        self.ctx.output.note(format!(
            "partition {}: {left} rows left to copy; counting the copy, then cutting over",
            self.p
        ));
        self.copy_pass(cursors, mark.mark, left).await?;
        let Some(old) = mark.whole else {
            return Err(CtlError::new(
                Exit::Failed,
                format!("{} did not count the partition at the mark", self.from_name),
            ));
        };
        let new: PartitionSummary = self
            .ctx
            .get(&self.to_name, &self.url(&self.to_url, routes::SUMMARY))
            .await?;
        if new.events != old.events {
            return Err(self.differs(format!(
                "{} events on {}, {} on {} at mark {}",
                new.events, self.record.to, old.events, self.record.from, mark.mark
            )));
        }
        self.report.copied = Some(new.clone());
        self.counted = Some((old, new));
        Ok(())
    }

    /// The copy does not hold what the old owner holds: a bug, never a
    /// race; nothing switches.
    fn differs(&self, what: String) -> CtlError {
        CtlError::new(
            Exit::Failed,
            format!(
                "partition {}: the copy does not match the old owner ({what}); {} serves it as \
                 before. Undo the move with `walletctl partitions move {} --abort` and report \
                 this",
                self.p, self.record.from, self.p
            ),
        )
    }

    /// Copies every table up to `upto` (accounts: all of them, so that every
    /// event copied finds its account); returns the rows copied.
    async fn copy_pass(
        &mut self,
        cursors: &mut BTreeMap<String, i64>,
        upto: i64,
        left: i64,
    ) -> CtlResult<i64> {
        let mut copied = 0;
        let limit = self.opts.chunk.clamp(1, 20_000);
        for table in PARTITION_TABLES {
            loop {
                let after = cursors.get(table).copied().unwrap_or(0);
                let mut url = format!(
                    "{}?table={table}&after={after}&limit={limit}",
                    self.url(&self.from_url, routes::ROWS)
                );
                if table != "accounts" {
                    url.push_str(&format!("&upto={upto}"));
                }
                let chunk: RowsChunk = self.ctx.get(&self.from_name, &url).await?;
                if chunk.count == 0 {
                    break;
                }
                let n = chunk.count;
                let req = CopyRows {
                    move_id: self.record.started_at.clone(),
                    chunk,
                };
                let state: CopyState = self
                    .ctx
                    .post(
                        &self.to_name,
                        &self.url(&self.to_url, routes::COPY_ROWS),
                        &req,
                    )
                    .await?;
                let bytes = req.chunk.rows.to_string().len() as i64;
                cursors.insert(table.to_string(), req.chunk.last);
                crash_point("mid_copy");
                copied += n;
                self.report.rows_copied += n;
                self.report.bytes_copied += bytes;
                if self.last_note.elapsed() >= Duration::from_secs(1) {
                    self.last_note = Instant::now();
                    self.ctx.output.note(format!(
                        "partition {}: {} rows ({}) copied by this run, {} in all; {} left of this pass ({table})",
                        self.p,
                        self.report.rows_copied,
                        megabytes(self.report.bytes_copied),
                        state.rows,
                        (left - copied).max(0)
                    ));
                }
                self.throttle().await;
                if n < limit {
                    break;
                }
            }
        }
        Ok(copied)
    }

    /// `--rate`: sleeps while this run is ahead of its rows per second.
    async fn throttle(&self) {
        if self.opts.rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.report.rows_copied as f64 / self.opts.rate as f64);
        if let Some(ahead) = due.checked_sub(self.copy_started.elapsed()) {
            tokio::time::sleep(ahead).await;
        }
    }

    /// The cut-over: `Ok(true)` once the owner switched, `Ok(false)` if it
    /// overran the old owner's deadline and was rolled back.
    async fn cut_over(&mut self) -> CtlResult<bool> {
        let p = self.p;
        // 1. Into phase `moving` (unless resuming one).
        let cutting = Move {
            phase: MovePhase::Moving,
            cutover_at: Some(chrono::Utc::now().to_rfc3339()),
            ..self.record.clone()
        };
        let value = serde_json::to_string(&cutting).expect("serializable");
        let record = self.record.clone();
        let map = change_map(&self.store, "starting the cut-over", |map| {
            let Some(now) = map.moves.get(&p).filter(|m| same_move(m, &record)) else {
                return Err(conflict(format!(
                    "partition {p}: the move record changed underneath (undone?)"
                )));
            };
            if map.owners[p as usize] != record.from || now.phase == MovePhase::Switched {
                return Ok((vec![], vec![]));
            }
            if now.phase == MovePhase::Moving {
                return Ok((vec![], vec![]));
            }
            Ok((vec![(move_key(p), value.clone())], vec![]))
        })
        .await?;
        if map.owners[p as usize] == self.record.to {
            return Ok(true);
        }
        if let Some(m) = map.moves.get(&p) {
            self.record = m.clone();
        }
        crash_point("after_cutover_record");
        // Coordinators follow the map: give them a moment to hold new work
        // back, so few requests meet the fence.
        tokio::time::sleep(Duration::from_millis(self.opts.announce_ms)).await;

        // 2. Fence, drain, freeze.
        let fence = |state| Fence {
            state,
            to: self.record.to.clone(),
            deadline: None,
        };
        let fence_url = self.url(&self.from_url, routes::FENCE);
        let refused_at = Instant::now();
        match self
            .ctx
            .post::<_, Fence>(&self.from_name, &fence_url, &fence(FenceState::Draining))
            .await
        {
            Ok(f) => {
                if let Some(d) = f.deadline {
                    let left = (d - chrono::Utc::now()).num_milliseconds().max(0);
                    self.ctx.output.note(format!(
                        "partition {p}: cutting over; the old owner takes no new work on it \
                         and rolls the cut-over back in {:.1} s unless the owner switches",
                        left as f64 / 1000.0
                    ));
                }
            }
            Err(e) if e.exit == Exit::Usage && self.rolled_back().await? => return Ok(false),
            Err(e) => return Err(e),
        }
        crash_point("after_drain_fence");
        let drain_started = Instant::now();
        let deadline = drain_started + Duration::from_secs_f64(self.opts.drain_timeout.max(0.0));
        loop {
            let np: NodePartitions = self
                .ctx
                .get(
                    &self.from_name,
                    &format!("{}{}", self.from_url, routes::PARTITIONS),
                )
                .await?;
            let busy = np
                .partitions
                .iter()
                .find(|s| s.partition == p)
                .map_or(0, |s| s.prepared_legs + s.open_transfers);
            if busy == 0 {
                break;
            }
            if Instant::now() >= deadline {
                self.ctx.output.note(format!(
                    "partition {p}: {busy} legs or transfers still in flight after {:.2} s; \
                     they are copied as they are and finish on {}",
                    self.opts.drain_timeout, self.record.to
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.report.drain_seconds = drain_started.elapsed().as_secs_f64();
        let frozen_at = Instant::now();
        match self
            .ctx
            .post::<_, Fence>(&self.from_name, &fence_url, &fence(FenceState::Frozen))
            .await
        {
            Ok(_) => {}
            Err(e) if e.exit == Exit::Usage && self.rolled_back().await? => return Ok(false),
            Err(e) => return Err(e),
        }
        crash_point("after_freeze");

        // 3. The last changes, and the check: the accounts summed up, and
        //    the rows counted before plus those inserted since, never the
        //    whole history again.
        let Some((old, new)) = self.counted.clone() else {
            return Err(CtlError::new(
                Exit::Failed,
                format!("partition {p}: cutting over a copy that was never counted"),
            ));
        };
        let mut cursors = self.begin_copy().await?.cursors;
        let mark = self.mark(&cursors, false, Some(old.change_no)).await?;
        let left: i64 = mark.left.values().sum();
        self.report.delta_rows = self.copy_pass(&mut cursors, mark.mark, left).await?;
        let (Some(accounts), Some(inserted)) = (mark.accounts, mark.inserted) else {
            return Err(CtlError::new(
                Exit::Failed,
                format!("{} did not count the rows inserted since", self.from_name),
            ));
        };
        let finish = CopyFinish {
            move_id: self.record.started_at.clone(),
            expected: CutoverCheck {
                accounts,
                rows: old.plus(inserted),
            },
            counted: new,
        };
        let _: CutoverCheck = self
            .ctx
            .post(
                &self.to_name,
                &self.url(&self.to_url, routes::COPY_FINISH),
                &finish,
            )
            .await
            .map_err(|e| {
                CtlError::new(
                    e.exit,
                    format!(
                        "{e}\nthe old owner rolls the cut-over back at its deadline; run the \
                         same command again"
                    ),
                )
            })?;
        crash_point("after_import");

        // 4. Switch the owner, if the cut-over still stands.
        let switched = Move {
            phase: MovePhase::Switched,
            ..self.record.clone()
        };
        let value = serde_json::to_string(&switched).expect("serializable");
        let record = self.record.clone();
        let result = change_map(&self.store, "switching the owner", |map| {
            let same = map
                .moves
                .get(&p)
                .is_some_and(|m| same_move(m, &record) && m.phase == MovePhase::Moving);
            if !same || map.owners[p as usize] != record.from {
                return Err(conflict(format!(
                    "partition {p}: the cut-over no longer stands (rolled back or undone)"
                )));
            }
            Ok((
                vec![
                    (owner_key(p), record.to.clone()),
                    (move_key(p), value.clone()),
                ],
                vec![],
            ))
        })
        .await;
        self.report.frozen_seconds = frozen_at.elapsed().as_secs_f64();
        self.report.refused_seconds = refused_at.elapsed().as_secs_f64();
        match result {
            Ok(_) => {}
            Err(e) if e.exit == Exit::Conflict && self.rolled_back().await? => return Ok(false),
            Err(e) => return Err(e),
        }
        self.record = switched;
        crash_point("after_switch");
        Ok(true)
    }

    /// Whether the move stands in phase `copying` again (the old owner
    /// rolled the cut-over back).
    async fn rolled_back(&mut self) -> CtlResult<bool> {
        let map = self.store.load().await?;
        match map.moves.get(&self.p) {
            Some(m) if same_move(m, &self.record) && m.phase == MovePhase::Copying => {
                self.record = m.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// After the switch: the old owner refuses the partition for good and
    /// drops its rows; then the record goes.
    async fn finish(&mut self) -> CtlResult<()> {
        let p = self.p;
        let fence = Fence {
            state: FenceState::Moved,
            to: self.record.to.clone(),
            deadline: None,
        };
        let _: Fence = self
            .ctx
            .post(
                &self.from_name,
                &self.url(&self.from_url, routes::FENCE),
                &fence,
            )
            .await?;
        drop_rows(
            self.ctx,
            &self.from_name,
            &self.url(&self.from_url, routes::DISCARD),
        )
        .await?;
        change_map(&self.store, "ending the move", |map| {
            Ok(if map.moves.contains_key(&p) {
                (vec![], vec![move_key(p)])
            } else {
                (vec![], vec![])
            })
        })
        .await?;
        Ok(())
    }
}

/// Drops a node's rows of a partition it does not own, a batch at a time.
async fn drop_rows(ctx: &Ctx, who: &str, url: &str) -> CtlResult<()> {
    let mut dropped = 0;
    let mut last_note = Instant::now();
    loop {
        let d: Discarded = ctx.post(who, url, &serde_json::json!({})).await?;
        dropped += d.dropped;
        if d.done {
            return Ok(());
        }
        if last_note.elapsed() >= Duration::from_secs(1) {
            last_note = Instant::now();
            ctx.output.note(format!(
                "{who}: {dropped} rows of the old copy dropped so far"
            ));
        }
    }
}

/// Undoes a move that has not switched the owner yet.
pub async fn abort(ctx: &Ctx, p: PartitionId) -> CtlResult<()> {
    let store = ctx.map_store().await?;
    let map = store.load().await?;
    check_partition(&map, p)?;
    let Some(record) = map.moves.get(&p).cloned() else {
        return Err(not_found(format!("no move of partition {p} is under way")));
    };
    if map.owners[p as usize] == record.to {
        return Err(conflict(format!(
            "partition {p} already belongs to {}; finish the move with \
             `walletctl partitions move {p} --to {}` (or move it back afterwards)",
            record.to, record.to
        )));
    }
    // First mark the move as being undone (compare-and-set): a run of the
    // move that is still going can then no longer switch the owner.
    let aborting = Move {
        phase: MovePhase::Aborting,
        ..record.clone()
    };
    let value = serde_json::to_string(&aborting).expect("serializable");
    change_map(&store, "marking the move as undone", |map| {
        let same = map
            .moves
            .get(&p)
            .is_some_and(|m| (&m.from, &m.to) == (&record.from, &record.to));
        if !same || map.owners[p as usize] != record.from {
            return Err(conflict(format!(
                "partition {p}: the move changed underneath"
            )));
        }
        Ok((vec![(move_key(p), value.clone())], vec![]))
    })
    .await?;
    crash_point("abort_after_mark");
    let from_url = ctx.node_url(&map, &record.from)?.to_string();
    let to_url = ctx.node_url(&map, &record.to)?.to_string();
    drop_rows(
        ctx,
        &format!("node {}", record.to),
        &format!("{to_url}{}", routes::DISCARD.with(p)),
    )
    .await?;
    let _: Option<serde_json::Value> = ctx
        .delete(
            &format!("node {}", record.from),
            &format!("{from_url}{}", routes::FENCE.with(p)),
        )
        .await?;
    change_map(&store, "ending the move", |map| {
        if map.owners[p as usize] != record.from {
            return Err(conflict(format!("partition {p} changed owner underneath")));
        }
        Ok((vec![], vec![move_key(p)]))
    })
    .await?;
    #[derive(Serialize)]
    struct Aborted {
        partition: PartitionId,
        owner: String,
        undone_move_to: String,
    }
    let done = Aborted {
        partition: p,
        owner: record.from.clone(),
        undone_move_to: record.to.clone(),
    };
    ctx.output.emit(&done, |d| {
        format!(
            "move of partition {} to {} undone; {} owns it and serves it again",
            d.partition, d.undone_move_to, d.owner
        )
    });
    Ok(())
}

/// The moves that spread partitions evenly: from the node with the most to
/// the one with the fewest, until they differ by at most one.
pub fn plan(map: &PartitionMap) -> Vec<(PartitionId, String, String)> {
    let mut owners = map.owners.clone();
    let mut moves = Vec::new();
    loop {
        let count = |n: &String| owners.iter().filter(|o| *o == n).count();
        let most = map
            .nodes
            .keys()
            .max_by_key(|n| (count(n), std::cmp::Reverse(*n)));
        let fewest = map.nodes.keys().min_by_key(|n| (count(n), *n));
        let (Some(most), Some(fewest)) = (most, fewest) else {
            return moves;
        };
        if count(most) <= count(fewest) + 1 {
            return moves;
        }
        let p = owners
            .iter()
            .rposition(|o| o == most)
            .expect("the busiest node owns a partition");
        owners[p] = fewest.clone();
        moves.push((p as PartitionId, most.clone(), fewest.clone()));
    }
}

pub async fn rebalance(ctx: &Ctx, dry_run: bool, opts: &MoveOptions) -> CtlResult<()> {
    let map = ctx.map().await?;
    // Moves left over from an interrupted run come first.
    let mut todo: Vec<(PartitionId, String, String)> = map
        .moves
        .iter()
        .map(|(p, m)| (*p, m.from.clone(), m.to.clone()))
        .collect();
    let mut after = map.clone();
    for (p, _, to) in &todo {
        after.owners[*p as usize] = to.clone();
    }
    todo.extend(plan(&after));
    if dry_run {
        #[derive(Serialize)]
        struct Planned {
            partition: PartitionId,
            from: String,
            to: String,
        }
        let planned: Vec<Planned> = todo
            .iter()
            .map(|(p, from, to)| Planned {
                partition: *p,
                from: from.clone(),
                to: to.clone(),
            })
            .collect();
        ctx.output.emit(&planned, |planned| {
            if planned.is_empty() {
                return "the partitions are already spread evenly".to_string();
            }
            let mut t = Table::new(&["PARTITION", "FROM", "TO"]);
            for m in planned {
                t.row(vec![m.partition.to_string(), m.from.clone(), m.to.clone()]);
            }
            t.render()
        });
        return Ok(());
    }
    let total = todo.len();
    let mut reports = Vec::with_capacity(total);
    for (i, (p, from, to)) in todo.into_iter().enumerate() {
        ctx.output.note(format!(
            "{} {}/{total} partition {p}: {from} -> {to} ...",
            bar(i, total),
            i + 1
        ));
        let report = run(ctx, p, &to, opts).await.map_err(|e| {
            CtlError::new(
                e.exit,
                format!(
                    "{e}\n{} of {total} moves done; run `walletctl partitions rebalance` again to go on",
                    i
                ),
            )
        })?;
        ctx.output.note(format!("    {}", describe(&report)));
        reports.push(report);
    }
    ctx.output
        .note(format!("{} {total}/{total} done", bar(total, total)));
    ctx.output.emit(&reports, |r| {
        if r.is_empty() {
            return "the partitions are already spread evenly".to_string();
        }
        let mut t = Table::new(&[
            "PARTITION",
            "FROM",
            "TO",
            "ACCOUNTS",
            "EVENTS",
            "ROWS COPIED",
            "MB",
            "LAST DELTA",
            "FROZEN S",
            "REFUSED S",
            "TOTAL S",
        ]);
        for m in r {
            let copied = |f: fn(&PartitionSummary) -> i64| {
                m.copied.as_ref().map_or("-".into(), |c| f(c).to_string())
            };
            t.row(vec![
                m.partition.to_string(),
                m.from.clone(),
                m.to.clone(),
                copied(|c| c.accounts),
                copied(|c| c.events),
                m.rows_copied.to_string(),
                format!("{:.1}", m.bytes_copied as f64 / 1e6),
                m.delta_rows.to_string(),
                format!("{:.3}", m.frozen_seconds),
                format!("{:.3}", m.refused_seconds),
                format!("{:.2}", m.total_seconds),
            ]);
        }
        t.render()
    });
    Ok(())
}

fn bar(done: usize, total: usize) -> String {
    let width = 20;
    let filled = (done * width).checked_div(total).unwrap_or(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(owners: &[&str], nodes: &[&str]) -> PartitionMap {
        PartitionMap {
            revision: 1,
            owners: owners.iter().map(|s| s.to_string()).collect(),
            nodes: nodes
                .iter()
                .map(|n| (n.to_string(), format!("http://{n}")))
                .collect(),
            moves: Default::default(),
        }
    }

    #[test]
    fn a_new_node_gets_its_share_and_nobody_more_than_one_extra() {
        let m = map(
            &["a", "b", "c", "a", "b", "c", "a", "b"],
            &["a", "b", "c", "d"],
        );
        let moves = plan(&m);
        assert_eq!(moves.len(), 2);
        let mut owners = m.owners.clone();
        for (p, from, to) in &moves {
            assert_eq!(&owners[*p as usize], from);
            owners[*p as usize] = to.clone();
        }
        for n in ["a", "b", "c", "d"] {
            assert_eq!(
                owners.iter().filter(|o| *o == n).count(),
                2,
                "{n}: {owners:?}"
            );
        }
        assert!(plan(&map(&["a", "b", "a"], &["a", "b"])).is_empty());
    }
}
