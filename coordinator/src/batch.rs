//! Group commit on the coordinator's side: items of one kind (begins, leg
//! prepares, decisions, ...) bound for one node travel together, and the
//! node applies each request in one local transaction.
//!
//! Each (kind, node) lane sends at once while fewer than `max_in_flight`
//! of its requests are out; otherwise items wait, and whatever waited goes
//! in the next request as soon as one comes back. Light load: no added
//! latency. Heavy load: batches grow to `max_batch`, and the number of
//! requests and commits per transfer falls.
//!
//! Batching changes how items travel, not what they mean: every answer is
//! per item, in order, and an unclear answer for the request is unknown for
//! every item in it.
//!
//! An item is routed once, when it joins a lane: the lane's request goes
//! to that node, stamped with the newest map revision its items were
//! routed at. A node that no longer owns a partition refuses the request
//! (`wrong_partition_owner`); the client's retry routes it again with the
//! current map ([`Participants::post_routed`]).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::Instrument;
use wallet_shared::protocol::*;
use wallet_shared::{routes, ErrorCode, PartitionId, Rejection};

use crate::client::{CallError, Participants, Route};

/// One kind of batched item: how to route it, wrap many in a request, and
/// read their answers from the reply.
pub trait Kind: Send + Sync + 'static {
    type Item: Serialize + Clone + Send + Sync + 'static;
    type Request: Serialize + Clone + Send + Sync;
    type Reply: DeserializeOwned + Send;
    type Answer: Send + 'static;
    const PATH: &'static str;
    /// The first message of a transfer or movement (begin, execute): past
    /// `max_queued` waiting items it is refused (`overloaded`) before
    /// anything is done. Later messages always queue: refusing them would
    /// leave a transfer halfway, and there are no more of them than
    /// transfers that got in.
    const SHEDS: bool;
    /// Nobody waits for its answer (complete): an idle lane holds the first
    /// item `Limits::linger` before sending, so that the items of that
    /// time share one request and one local transaction.
    const LINGERS: bool = false;
    fn partitions(item: &Self::Item) -> Vec<PartitionId>;
    fn request(items: Vec<Self::Item>) -> Self::Request;
    fn answers(reply: Self::Reply, n: usize) -> Vec<Self::Answer>;
}

/// An item, where its answer goes, the `traceparent` of the span that
/// submitted it ("" when traces are off), and the map revision that routed
/// it to its lane.
type Waiting<K> = (
    <K as Kind>::Item,
    oneshot::Sender<Result<<K as Kind>::Answer, CallError>>,
    String,
    i64,
);

struct Lane<K: Kind> {
    queue: Vec<Waiting<K>>,
    in_flight: usize,
}

/// The lanes of one kind, one per node.
pub struct Batcher<K: Kind> {
    participants: Participants,
    lanes: Mutex<HashMap<String, Lane<K>>>,
    limits: Limits,
    kind: PhantomData<K>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Items per request at most.
    pub max_batch: usize,
    /// Requests of one lane out at once at most.
    pub max_in_flight: usize,
    /// Items waiting in one lane at most, for the kinds that shed.
    pub max_queued: usize,
    /// How long an idle lane of a kind that lingers holds its first item.
    pub linger: std::time::Duration,
}

impl<K: Kind> Batcher<K> {
    pub fn new(participants: Participants, limits: Limits) -> Arc<Self> {
        Arc::new(Batcher {
            participants,
            lanes: Mutex::new(HashMap::new()),
            limits,
            kind: PhantomData,
        })
    }

    /// Sends `item` with whatever else is bound for its node, and returns
    /// its own answer.
    pub async fn submit(self: &Arc<Self>, item: K::Item) -> Result<K::Answer, CallError> {
        let mut answers = self.submit_all(vec![item]).await;
        answers
            .pop()
            .unwrap_or_else(|| Err(CallError::Unknown("no answer".into())))
    }

    /// Sends `items` together (those bound for one node in one request when
    /// its lane is free) and returns their answers in order.
    pub async fn submit_all(
        self: &Arc<Self>,
        items: Vec<K::Item>,
    ) -> Vec<Result<K::Answer, CallError>> {
        let map = self.participants.map.current();
        let trace = wallet_shared::traces::current_traceparent().unwrap_or_default();
        let mut waits = Vec::with_capacity(items.len());
        let mut start = Vec::new();
        {
            let mut lanes = self.lanes.lock().unwrap();
            for item in items {
                let Route { node, revision } = match Route::of(&map, &K::partitions(&item)) {
                    Ok(route) => route,
                    Err(e) => {
                        waits.push(Err(e));
                        continue;
                    }
                };
                let lane = lanes.entry(node.clone()).or_insert_with(|| Lane {
                    queue: Vec::new(),
                    in_flight: 0,
                });
                if K::SHEDS && lane.queue.len() >= self.limits.max_queued {
                    metrics::counter!("wallet_batch_shed_total", "node" => node.clone())
                        .increment(1);
                    waits.push(Err(CallError::Rejected(Rejection::new(
                        ErrorCode::Overloaded,
                        "too much work is waiting for a node; nothing was done, retry after a pause",
                    ))));
                    continue;
                }
                let (tx, rx) = oneshot::channel();
                waits.push(Ok(rx));
                lane.queue.push((item, tx, trace.clone(), revision));
                if !start.contains(&node) {
                    start.push(node);
                }
            }
            start.retain(|node| {
                let lane = lanes.get_mut(node).expect("the lane just used");
                let free = lane.in_flight < self.limits.max_in_flight;
                if free {
                    lane.in_flight += 1;
                }
                free
            });
            for node in start {
                // Its own task: the batch carries other callers' items, so it
                // must not stop when this caller goes away.
                if K::LINGERS {
                    tokio::spawn(self.clone().linger(node).in_current_span());
                } else {
                    let lane = lanes.get_mut(&node).expect("the lane just used");
                    let batch = take(&mut lane.queue, self.limits.max_batch);
                    tokio::spawn(self.clone().drain(node, batch).in_current_span());
                }
            }
        }
        let mut answers = Vec::with_capacity(waits.len());
        for wait in waits {
            answers.push(match wait {
                Ok(rx) => rx
                    .await
                    .unwrap_or_else(|_| Err(CallError::Unknown("the batch was dropped".into()))),
                Err(e) => Err(e),
            });
        }
        answers
    }

    /// Waits `linger` (none when it is zero), then drains whatever queued
    /// meanwhile (nothing, if another request of the lane took it).
    async fn linger(self: Arc<Self>, node: String) {
        if !self.limits.linger.is_zero() {
            tokio::time::sleep(self.limits.linger).await;
        }
        if let Some(batch) = self.next_batch(&node) {
            self.drain(node, batch).await;
        }
    }

    /// Sends `batch`, then whatever queued meanwhile, until the lane is empty.
    async fn drain(self: Arc<Self>, node: String, mut batch: Vec<Waiting<K>>) {
        loop {
            self.send(&node, batch).await;
            match self.next_batch(&node) {
                Some(next) => batch = next,
                None => return,
            }
        }
    }

    /// The lane's next batch; `None`, and the lane's request slot freed,
    /// when nothing waits.
    fn next_batch(&self, node: &str) -> Option<Vec<Waiting<K>>> {
        let mut lanes = self.lanes.lock().unwrap();
        let lane = lanes.get_mut(node)?;
        if lane.queue.is_empty() {
            lane.in_flight -= 1;
            return None;
        }
        Some(take(&mut lane.queue, self.limits.max_batch))
    }

    async fn send(&self, node: &str, batch: Vec<Waiting<K>>) {
        let n = batch.len();
        // The lane's kind, by its route's last segment (begin, prepare, ...).
        let lane = K::PATH.rsplit('/').next().unwrap_or(K::PATH);
        metrics::histogram!("wallet_batch_items", "lane" => lane, "node" => node.to_string())
            .record(n as f64);
        let started = std::time::Instant::now();
        // Empty unless traces are on (then "" marks an item without one).
        let traced = batch.iter().any(|(_, _, trace, _)| !trace.is_empty());
        let revision = batch.iter().map(|w| w.3).max().unwrap_or_default();
        let mut traces = Vec::with_capacity(if traced { n } else { 0 });
        let mut items = Vec::with_capacity(n);
        let mut senders = Vec::with_capacity(n);
        for (item, tx, trace, _) in batch {
            items.push(item);
            senders.push(tx);
            if traced {
                traces.push(trace);
            }
        }
        // With traces on: this request's own span, in its first item's
        // trace and linking every item's (wallet_shared::traces).
        let span = wallet_shared::traces::batch_span(lane, node, &traces);
        let mut partitions: Vec<PartitionId> = items.iter().flat_map(K::partitions).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let route = Route {
            node: node.to_string(),
            revision,
        };
        let reply = self
            .participants
            .post_routed::<K::Request, K::Reply>(
                route,
                &partitions,
                K::PATH,
                &K::request(items),
                &traces,
            )
            .instrument(span)
            .await;
        metrics::histogram!("wallet_batch_request_duration_seconds", "lane" => lane, "node" => node.to_string())
            .record(started.elapsed().as_secs_f64());
        let answers = reply.map(|r| K::answers(r, n));
        match answers {
            Ok(answers) if answers.len() == n => {
                for (tx, answer) in senders.into_iter().zip(answers) {
                    let _ = tx.send(Ok(answer));
                }
            }
            Ok(answers) => {
                let e = CallError::Unknown(format!(
                    "{} answers to {n} items from {}",
                    answers.len(),
                    K::PATH
                ));
                for tx in senders {
                    let _ = tx.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for tx in senders {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }
}

fn take<T>(queue: &mut Vec<T>, max: usize) -> Vec<T> {
    let n = queue.len().min(max);
    queue.drain(..n).collect()
}

// ---- the kinds ---------------------------------------------------------------

/// A kind whose request wraps the items in one field and whose reply
/// answers them in one field, in order.
macro_rules! kind {
    ($kind:ident: $item:ty => $request:ident { $items:ident } @ $path:expr, sheds: $sheds:expr,
     $reply:ident { $answers:ident: $answer:ty }, |$i:ident| $partitions:expr) => {
        pub struct $kind;
        impl Kind for $kind {
            type Item = $item;
            type Request = $request;
            type Reply = $reply;
            type Answer = $answer;
            const PATH: &'static str = $path;
            const SHEDS: bool = $sheds;
            fn partitions($i: &$item) -> Vec<PartitionId> {
                $partitions
            }
            fn request($items: Vec<$item>) -> $request {
                $request { $items }
            }
            fn answers(reply: $reply, _: usize) -> Vec<$answer> {
                reply.$answers
            }
        }
    };
}

kind!(BeginKind: Begin => BeginRequest { transfers } @ routes::BEGIN.pattern(), sheds: true,
      BeginReply { results: Verdict<Begun> }, |b| vec![b.partition]);
kind!(ExecuteKind: ExecuteRequest => ExecuteBatch { transfers } @ routes::EXECUTE.pattern(), sheds: true,
      ExecuteReply { results: Verdict<Begun> },
      |e| vec![e.begin.partition, e.legs[0].partition, e.legs[1].partition]);
kind!(PrepareKind: Leg => LegsRequest { legs } @ routes::PREPARE.pattern(), sheds: false,
      PrepareReply { votes: Vote }, |l| vec![l.partition]);
kind!(CommitKind: Leg => LegsRequest { legs } @ routes::COMMIT.pattern(), sheds: false,
      LegsReply { states: LegState }, |l| vec![l.partition]);
kind!(AbortKind: Leg => LegsRequest { legs } @ routes::ABORT.pattern(), sheds: false,
      LegsReply { states: LegState }, |l| vec![l.partition]);
/// A decision answers with the record as it now stands, and with the state
/// of the leg that went with it (`DecideReply::applied`).
pub struct DecideKind;
impl Kind for DecideKind {
    type Item = Decide;
    type Request = DecideRequest;
    type Reply = DecideReply;
    type Answer = (Option<TransferRecord>, Option<LegState>);
    const PATH: &'static str = routes::DECIDE.pattern();
    const SHEDS: bool = false;
    fn partitions(d: &Decide) -> Vec<PartitionId> {
        vec![d.partition]
    }
    fn request(decisions: Vec<Decide>) -> DecideRequest {
        DecideRequest { decisions }
    }
    fn answers(reply: DecideReply, _: usize) -> Vec<Self::Answer> {
        let mut applied = reply.applied.into_iter();
        reply
            .records
            .into_iter()
            .map(|record| (record, applied.next().flatten()))
            .collect()
    }
}

/// Completing answers nothing but "done" (204).
pub struct CompleteKind;
impl Kind for CompleteKind {
    type Item = TransferRef;
    type Request = CompleteRequest;
    type Reply = ();
    type Answer = ();
    const PATH: &'static str = routes::COMPLETE.pattern();
    const SHEDS: bool = false;
    const LINGERS: bool = true;
    fn partitions(t: &TransferRef) -> Vec<PartitionId> {
        vec![t.partition]
    }
    fn request(transfers: Vec<TransferRef>) -> CompleteRequest {
        CompleteRequest { transfers }
    }
    fn answers(_: (), n: usize) -> Vec<()> {
        vec![(); n]
    }
}

/// One batcher per kind, shared by every transfer of a coordinator.
#[derive(Clone)]
pub struct Batches {
    pub begin: Arc<Batcher<BeginKind>>,
    pub execute: Arc<Batcher<ExecuteKind>>,
    pub prepare: Arc<Batcher<PrepareKind>>,
    pub commit: Arc<Batcher<CommitKind>>,
    pub abort: Arc<Batcher<AbortKind>>,
    pub decide: Arc<Batcher<DecideKind>>,
    pub complete: Arc<Batcher<CompleteKind>>,
}

impl Batches {
    pub fn new(participants: &Participants, limits: Limits) -> Self {
        Batches {
            begin: Batcher::new(participants.clone(), limits),
            execute: Batcher::new(participants.clone(), limits),
            prepare: Batcher::new(participants.clone(), limits),
            commit: Batcher::new(participants.clone(), limits),
            abort: Batcher::new(participants.clone(), limits),
            decide: Batcher::new(participants.clone(), limits),
            complete: Batcher::new(participants.clone(), limits),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use futures::future::BoxFuture;
    use tokio::sync::Semaphore;
    use wallet_shared::{MapHandle, PartitionMap, TransactionId};

    use super::*;
    use crate::client::{Incoming, Outgoing, Transport};

    /// Node `a` answers its first request once `gate` opens and refuses
    /// every later one as no longer the owner; node `b` answers every one.
    /// Each request is recorded as (node, map revision).
    #[derive(Clone)]
    struct Nodes {
        sent: Arc<Mutex<Vec<(String, i64)>>>,
        gate: Arc<Semaphore>,
    }

    impl Transport for Nodes {
        fn send(&self, req: Outgoing) -> BoxFuture<'static, Result<Incoming, String>> {
            let node = req.url["http://".len()..]
                .split('/')
                .next()
                .unwrap()
                .to_string();
            let body: serde_json::Value = serde_json::from_slice(&req.body.unwrap()).unwrap();
            let revision = body["map_revision"].as_i64().unwrap();
            let mut sent = self.sent.lock().unwrap();
            sent.push((node.clone(), revision));
            let first_to_a = node == "a" && sent.iter().filter(|(n, _)| n == "a").count() == 1;
            let gate = self.gate.clone();
            Box::pin(async move {
                let done = Incoming {
                    status: 204,
                    body: Vec::new(),
                };
                if first_to_a {
                    let _open = gate.acquire().await.unwrap();
                    return Ok(done);
                }
                if node == "a" {
                    let refusal = Rejection::new(ErrorCode::WrongPartitionOwner, "moved away");
                    return Ok(Incoming {
                        status: 409,
                        body: serde_json::to_vec(&refusal).unwrap(),
                    });
                }
                Ok(done)
            })
        }
    }

    fn map_at(revision: i64, owner: &str) -> PartitionMap {
        PartitionMap {
            revision,
            owners: vec![owner.to_string()],
            nodes: BTreeMap::from([
                ("a".to_string(), "http://a".to_string()),
                ("b".to_string(), "http://b".to_string()),
            ]),
            moves: BTreeMap::new(),
        }
    }

    fn item() -> TransferRef {
        TransferRef {
            transaction_id: TransactionId::new_random(),
            partition: 0,
        }
    }

    #[tokio::test]
    async fn a_batch_goes_where_its_lane_routed_it_and_a_refusal_routes_it_again() {
        let nodes = Nodes {
            sent: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        };
        let map = MapHandle::fixed(map_at(1, "a"));
        let participants =
            Participants::new(map.clone(), Arc::new(nodes.clone()), Duration::from_secs(5));
        let limits = Limits {
            max_batch: 8,
            max_in_flight: 1,
            max_queued: 8,
            linger: Duration::ZERO,
        };
        let batcher = Batcher::<CompleteKind>::new(participants, limits);
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.submit(item()).await }
        });
        while nodes.sent.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        // Routed to `a` at revision 1; it waits in `a`'s lane.
        let second = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.submit(item()).await }
        });
        while batcher.lanes.lock().unwrap()["a"].queue.is_empty() {
            tokio::task::yield_now().await;
        }
        // The partition moves to `b` before the waiting batch is sent.
        map.replace(map_at(2, "b"));
        nodes.gate.add_permits(1);
        assert!(first.await.unwrap().is_ok());
        assert!(second.await.unwrap().is_ok());
        assert_eq!(
            *nodes.sent.lock().unwrap(),
            vec![
                ("a".to_string(), 1),
                ("a".to_string(), 1),
                ("b".to_string(), 2)
            ]
        );
    }

    /// Answers every request at once, and counts them by path.
    #[derive(Default)]
    struct Counting {
        completes: AtomicUsize,
        decides: AtomicUsize,
    }

    impl Transport for Arc<Counting> {
        fn send(&self, req: Outgoing) -> BoxFuture<'static, Result<Incoming, String>> {
            let (status, body) = if req.url.contains("complete") {
                self.completes.fetch_add(1, Ordering::SeqCst);
                (204, Vec::new())
            } else {
                self.decides.fetch_add(1, Ordering::SeqCst);
                (200, br#"{"records":[null]}"#.to_vec())
            };
            Box::pin(async move { Ok(Incoming { status, body }) })
        }
    }

    fn batches(transport: Arc<Counting>) -> Batches {
        let map = MapHandle::fixed(PartitionMap {
            revision: 1,
            moves: Default::default(),
            owners: vec!["n1".to_string()],
            nodes: [("n1".to_string(), "http://n1".to_string())].into(),
        });
        let participants = Participants::new(map, Arc::new(transport), Duration::from_secs(1));
        Batches::new(
            &participants,
            Limits {
                max_batch: 512,
                max_in_flight: 1,
                max_queued: 1024,
                linger: Duration::from_millis(100),
            },
        )
    }

    fn complete(n: u128) -> TransferRef {
        TransferRef {
            transaction_id: TransactionId(uuid::Uuid::from_u128(n)),
            partition: 0,
        }
    }

    /// Completes sent one by one to an idle lane within the linger share one
    /// request; a decision (which someone waits for) goes at once.
    #[tokio::test(start_paused = true)]
    async fn completes_on_an_idle_lane_wait_for_each_other_and_decisions_do_not() {
        let transport = Arc::new(Counting::default());
        let b = batches(transport.clone());
        let started = tokio::time::Instant::now();
        let mut sent = Vec::new();
        for n in 0..5 {
            let batcher = b.complete.clone();
            sent.push(tokio::spawn(
                async move { batcher.submit(complete(n)).await },
            ));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for s in sent {
            s.await.unwrap().unwrap();
        }
        assert_eq!(transport.completes.load(Ordering::SeqCst), 1);
        assert!(started.elapsed() >= Duration::from_millis(100));

        let started = tokio::time::Instant::now();
        let decided = b
            .decide
            .submit(Decide {
                transaction_id: TransactionId(uuid::Uuid::from_u128(9)),
                partition: 0,
                decision: Decision::Commit,
                apply: None,
            })
            .await
            .unwrap();
        assert_eq!(decided, (None, None));
        assert_eq!(transport.decides.load(Ordering::SeqCst), 1);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
