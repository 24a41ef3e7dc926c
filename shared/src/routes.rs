//! Every route of the internal API (`/internal/v1/...`), defined once.
//!
//! The participant's router and the coordinator's admin router mount these
//! patterns; every caller (the coordinator's client, walletctl, the
//! projector, the simulation) builds its paths from them, so a route cannot
//! be renamed on one side only. The messages they carry are in
//! [`crate::protocol`] and [`crate::admin`]; each constant names its request
//! and reply types.

use std::fmt;

/// One route: an axum pattern with at most one `{param}` segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route(&'static str);

impl Route {
    /// The pattern, as a router mounts it (`/internal/v1/transfers/{id}`).
    pub const fn pattern(self) -> &'static str {
        self.0
    }

    /// Whether `path` (no query) is this route with its `{param}` filled in.
    pub fn matches(self, path: &str) -> bool {
        let mut want = self.0.split('/');
        let mut got = path.split('/');
        loop {
            match (want.next(), got.next()) {
                (None, None) => return true,
                (Some(w), Some(g)) if w.starts_with('{') => {
                    if g.is_empty() {
                        return false;
                    }
                }
                (Some(w), Some(g)) if w == g => {}
                _ => return false,
            }
        }
    }

    /// The path with its `{param}` segment filled in by `value`.
    pub fn with(self, value: impl fmt::Display) -> String {
        match (self.0.find('{'), self.0.find('}')) {
            (Some(open), Some(close)) => {
                format!("{}{value}{}", &self.0[..open], &self.0[close + 1..])
            }
            _ => self.0.to_string(),
        }
    }
}

/// A route without a parameter is its own path.
impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

// ---- the transfer protocol (participant) ------------------------------------

/// `Routed<BeginRequest>` -> `BeginReply`.
pub const BEGIN: Route = Route("/internal/v1/transfers/begin");
/// `Routed<DecideRequest>` -> `DecideReply`.
pub const DECIDE: Route = Route("/internal/v1/transfers/decide");
/// `Routed<CompleteRequest>` -> `()`.
pub const COMPLETE: Route = Route("/internal/v1/transfers/complete");
/// `Routed<ExecuteBatch>` -> `ExecuteReply`.
pub const EXECUTE: Route = Route("/internal/v1/transfers/execute");
/// GET, `?map_revision&partition` -> `TransferRecord` (404 `transfer_not_found`).
pub const TRANSFER: Route = Route("/internal/v1/transfers/{id}");
/// `Routed<LegsRequest>` -> `PrepareReply`.
pub const PREPARE: Route = Route("/internal/v1/legs/prepare");
/// `Routed<LegsRequest>` -> `LegsReply`.
pub const COMMIT: Route = Route("/internal/v1/legs/commit");
/// `Routed<LegsRequest>` -> `LegsReply`.
pub const ABORT: Route = Route("/internal/v1/legs/abort");
/// GET, `?grace_ms` -> `Unresolved`: recovery's work on one node.
pub const UNRESOLVED: Route = Route("/internal/v1/unresolved");

// ---- accounts (participant) --------------------------------------------------

/// `Routed<OpenAccount>` -> `AccountBalance` (201 when created).
pub const ACCOUNTS: Route = Route("/internal/v1/accounts");
/// `Routed<MovementRequest>` -> `AccountBalance`.
pub const MOVEMENTS: Route = Route("/internal/v1/movements");
/// GET, `?map_revision&partition[&as_of&snapshots]` -> `HistoricalBalance`.
pub const BALANCE: Route = Route("/internal/v1/accounts/{id}/balance");
/// GET, `?map_revision&partition[&after&limit&types]` -> `EventsPage`.
pub const EVENTS: Route = Route("/internal/v1/accounts/{id}/events");
/// GET, `?after&limit` -> `FeedPage`: this node's change feed.
pub const FEED: Route = Route("/internal/v1/feed");
/// GET -> `FeedConsumers`: the feed's registered consumers.
pub const FEED_CONSUMERS: Route = Route("/internal/v1/feed/consumers");
/// PUT `FeedAck` / DELETE -> `FeedConsumers`: a consumer's position.
pub const FEED_CONSUMER: Route = Route("/internal/v1/feed/consumers/{name}");
/// GET, `?after_account&after_seq&limit` -> `HistoryPage`: every event.
pub const HISTORY_EVENTS: Route = Route("/internal/v1/history/events");
/// GET, `?after&limit` -> `HistoryPage`: aborted transfers still kept.
pub const HISTORY_ABORTED: Route = Route("/internal/v1/history/aborted");
/// GET, `?account` or `?after&limit` -> `ReplayPage`: balances against their events.
pub const REPLAY: Route = Route("/internal/v1/replay");

// ---- operators (participant, walletctl) ---------------------------------------

/// GET -> `NodePartitions`: what this node holds, partition by partition.
pub const PARTITIONS: Route = Route("/internal/v1/partitions");
/// POST `Fence` -> `Fence` / DELETE: a partition move's fence on its old owner.
pub const FENCE: Route = Route("/internal/v1/partitions/{p}/fence");
/// `MarkRequest` -> `Mark`: where a copy pass ends (old owner).
pub const MARK: Route = Route("/internal/v1/partitions/{p}/mark");
/// GET, `?table&after&upto&limit` -> `RowsChunk`: rows to copy (old owner).
pub const ROWS: Route = Route("/internal/v1/partitions/{p}/rows");
/// GET -> `PartitionSummary`: what the partition holds here.
pub const SUMMARY: Route = Route("/internal/v1/partitions/{p}/summary");
/// `CopyBegin` -> `CopyState`: start or resume a copy (new owner).
pub const COPY: Route = Route("/internal/v1/partitions/{p}/copy");
/// `CopyRows` -> `CopyState`: apply one chunk (new owner).
pub const COPY_ROWS: Route = Route("/internal/v1/partitions/{p}/copy/rows");
/// `CopyFinish` -> `CutoverCheck`: check the copy at the cut-over (new owner).
pub const COPY_FINISH: Route = Route("/internal/v1/partitions/{p}/copy/finish");
/// POST -> `Discarded`: drops (part of) a copy this node does not own.
pub const DISCARD: Route = Route("/internal/v1/partitions/{p}/discard");
/// `InDoubtRequest` -> `InDoubt`.
pub const IN_DOUBT: Route = Route("/internal/v1/admin/in_doubt");
/// GET -> `NodeLegs`: every leg of one transaction here.
pub const LEGS_OF: Route = Route("/internal/v1/admin/legs/{id}");
/// `AuditRequest` -> `NodeAudit`.
pub const AUDIT: Route = Route("/internal/v1/admin/audit");

// ---- operators (coordinator) --------------------------------------------------

/// `ResolveRequest` -> `ResolveReply`: drive one transfer to its end now.
pub const RESOLVE: Route = Route("/internal/v1/transfers/{id}/resolve");

/// The routes whose replay is not harmless: releasing a fence could undo a
/// newer fence of a later move, a discard could drop a later copy. A
/// signed request to one of them is accepted once (see
/// [`crate::signing`]); every other route is idempotent by its transaction
/// id, move id, copy cursor or fence state, or only reads.
pub const ONCE_ONLY: [Route; 2] = [FENCE, DISCARD];

/// Every route, for the checks below and for whoever lists them.
pub const ALL: [Route; 32] = [
    BEGIN,
    DECIDE,
    COMPLETE,
    EXECUTE,
    TRANSFER,
    PREPARE,
    COMMIT,
    ABORT,
    UNRESOLVED,
    ACCOUNTS,
    MOVEMENTS,
    BALANCE,
    EVENTS,
    FEED,
    FEED_CONSUMERS,
    FEED_CONSUMER,
    HISTORY_EVENTS,
    HISTORY_ABORTED,
    REPLAY,
    PARTITIONS,
    FENCE,
    MARK,
    ROWS,
    SUMMARY,
    COPY,
    COPY_ROWS,
    COPY_FINISH,
    DISCARD,
    IN_DOUBT,
    LEGS_OF,
    AUDIT,
    RESOLVE,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_fills_its_segment_and_nothing_else() {
        assert_eq!(TRANSFER.with("abc"), "/internal/v1/transfers/abc");
        assert_eq!(FENCE.with(7), "/internal/v1/partitions/7/fence");
        assert_eq!(RESOLVE.with("x"), "/internal/v1/transfers/x/resolve");
        assert_eq!(BEGIN.with("ignored"), BEGIN.to_string());
    }

    #[test]
    fn a_path_matches_its_route_only() {
        assert!(FENCE.matches("/internal/v1/partitions/7/fence"));
        assert!(!FENCE.matches("/internal/v1/partitions/7/fence/x"));
        assert!(!FENCE.matches("/internal/v1/partitions//fence"));
        assert!(!FENCE.matches("/internal/v1/partitions/7"));
        assert!(BEGIN.matches("/internal/v1/transfers/begin"));
        assert!(!BEGIN.matches("/internal/v1/transfers/end"));
        for r in ALL {
            assert!(r.matches(&r.with(3)), "{r}");
        }
    }

    #[test]
    fn routes_are_distinct_internal_and_have_at_most_one_parameter() {
        let mut seen = std::collections::BTreeSet::new();
        for r in ALL {
            assert!(seen.insert(r.pattern()), "{r} twice");
            assert!(r.pattern().starts_with("/internal/v1/"), "{r}");
            assert!(r.pattern().matches('{').count() <= 1, "{r}");
        }
    }
}
