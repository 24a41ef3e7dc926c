//! One simulated run: the cluster, the clients, recovery, and the check
//! (the faults are [`crate::nemesis`]'s).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordinator::batch::Limits;
use coordinator::client::Participants;
use coordinator::transfer::Coordinator;
use participant::app::App;
use participant::fence::Fences;
use participant::store::Store;
use serde::Serialize;
use serde_json::Value;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tower::ServiceExt;
use wallet_history::{classify, Anomaly, AnomalyKind, History, Op, Outcome, Phase, Request};
use wallet_shared::{AccountId, Currency, MapHandle, PartitionMap};

use crate::check;
use crate::clock::NodeClock;
use crate::mem::MemStore;
use crate::nemesis::{heal, nemesis};
use crate::net::{Net, NetStats, Node, SharedNet, SimTransport, Weather};

#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    pub nodes: usize,
    pub coordinators: usize,
    pub partitions: u32,
    pub accounts: usize,
    pub clients: usize,
    pub ops_per_client: usize,
    /// Faults on (off: the same workload on a healthy cluster).
    pub faults: bool,
    /// Partitions moved under the faults (with them only).
    pub moves: bool,
}

impl Options {
    pub fn new(seed: u64) -> Self {
        Options {
            seed,
            nodes: 3,
            coordinators: 2,
            partitions: 16,
            accounts: 8,
            clients: 4,
            ops_per_client: 30,
            faults: true,
            moves: true,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub seed: u64,
    pub ops: BTreeMap<String, u64>,
    pub faults: BTreeMap<String, u64>,
    pub anomalies: Vec<Anomaly>,
    /// Simulated time of the whole run, and from healing to all resolved.
    pub sim_ms: u64,
    pub resolved_ms: Option<u64>,
    pub messages: BTreeMap<String, u64>,
    /// A digest of the history and the final state: equal for equal seeds.
    pub digest: u64,
}

/// Runs one seed to the end and checks it.
pub fn run(opts: &Options) -> Report {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a Tokio runtime");
    // backon's jitter and the resolver's draw from fastrand's thread-local
    // generator: seed it too, so they repeat with the run.
    fastrand::seed(opts.seed);
    rt.block_on(simulate(opts.clone()))
}

pub(crate) const LEASE: Duration = Duration::from_millis(5000);
const CALL_TIMEOUT: Duration = Duration::from_millis(2000);
const RESOLVER_INTERVAL: Duration = Duration::from_millis(1000);
const RESOLVER_GRACE: Duration = Duration::from_millis(2000);
/// Small, so that batches form and split in many ways.
const BATCH_LIMITS: Limits = Limits {
    max_batch: 8,
    max_in_flight: 2,
    max_queued: 1 << 20,
    // As configured by default (`complete_linger_ms`).
    linger: Duration::from_millis(100),
};
/// The coordinator's edge: its config's body limit; no shedding and no
/// request timeout (the simulation's clients wait as long as it takes).
const EDGE: coordinator::http::EdgeLimits = coordinator::http::EdgeLimits {
    max_body_bytes: 16 * 1024,
    max_requests_in_flight: 1 << 20,
    request_timeout: Duration::from_secs(24 * 3600),
};

/// The simulation's clients act as one tenant, with one fixed key of the
/// `transfer` and `read` scopes: every account is that tenant's, so every
/// transfer, deposit and withdrawal passes the participants' ownership
/// check under the faults.
const SIM_KEY: &str =
    "wk_5151515151515151_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The coordinators' keys: the simulation's one.
fn sim_keys() -> coordinator::auth::Keys {
    use wallet_shared::auth::{hex, ApiKey, KeyHasher, KeyRecord, Scope};
    let cluster = wallet_shared::secret::Secret::from_text(
        "the-simulation-s-cluster-secret-0123456789abcdef",
    )
    .expect("a long enough secret");
    let key = ApiKey::parse(SIM_KEY).expect("a well-formed key");
    let record = KeyRecord {
        key_id: key.id.clone(),
        tenant: "sim".into(),
        scopes: vec![Scope::Transfer, Scope::Read],
        rate: None,
        hash: hex(&KeyHasher::new(&cluster).hash(&key)),
        created_at: chrono::DateTime::UNIX_EPOCH,
        revoked_at: None,
    };
    coordinator::auth::Keys::fixed(&cluster, vec![record])
}

/// Promise 7: after the faults stop, everything resolves within this.
pub const RESOLVE_WITHIN: Duration = Duration::from_secs(30);

pub(crate) struct CoordinatorSlot {
    /// Its public API (`coordinator::http::router`), while it is up.
    pub(crate) api: Option<axum::Router>,
    /// Its tasks (requests it is serving, its resolver): a crash aborts them.
    tasks: Vec<AbortHandle>,
}

pub(crate) struct World {
    pub start: Instant,
    pub net: SharedNet,
    /// The partition map, one handle for every node and coordinator: the
    /// mover changes it as etcd would, and every one sees it at once.
    pub map: MapHandle,
    pub stores: BTreeMap<String, MemStore>,
    /// Each node's fences (its `App`'s), which the mover sets.
    pub fences: BTreeMap<String, Fences>,
    /// Fence and copy steps the participant's rules refused the mover.
    pub refused: Mutex<Vec<String>>,
    pub(crate) coordinators: Mutex<Vec<CoordinatorSlot>>,
    pub rng: Mutex<fastrand::Rng>,
    pub history: Mutex<History>,
    pub faults: Mutex<BTreeMap<String, u64>>,
    pub accounts: Vec<AccountId>,
    pub currency: Currency,
}

impl World {
    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub(crate) fn coordinator_name(i: usize) -> String {
        format!("coordinator-{i}")
    }

    /// A new incarnation of coordinator `i`'s network endpoint: what the
    /// previous one still sends is dropped.
    fn next_incarnation(&self, i: usize) -> u64 {
        let mut net = self.net.lock().unwrap();
        let n = net
            .incarnations
            .entry(Self::coordinator_name(i))
            .or_default();
        *n += 1;
        *n
    }

    /// Starts coordinator `i` unless it is up (a restart scheduled by an
    /// earlier crash may come after healing restarted it already).
    pub(crate) fn start_coordinator(&self, i: usize) {
        if self.coordinators.lock().unwrap()[i].api.is_some() {
            return;
        }
        let transport = Arc::new(SimTransport {
            net: self.net.clone(),
            from: Self::coordinator_name(i),
            incarnation: self.next_incarnation(i),
        });
        let participants = Participants::new(self.map.clone(), transport, CALL_TIMEOUT);
        let c = Coordinator::new(participants, LEASE, BATCH_LIMITS, None);
        let resolver = tokio::spawn(coordinator::resolver::run(
            c.clone(),
            RESOLVER_INTERVAL,
            RESOLVER_GRACE,
        ));
        let mut slots = self.coordinators.lock().unwrap();
        slots[i] = CoordinatorSlot {
            api: Some(coordinator::http::router(c, sim_keys(), EDGE)),
            tasks: vec![resolver.abort_handle()],
        };
    }

    /// `kill -9`: every request it was serving stops where it stands.
    pub(crate) fn crash_coordinator(&self, i: usize) {
        self.next_incarnation(i);
        let mut slots = self.coordinators.lock().unwrap();
        for t in slots[i].tasks.drain(..) {
            t.abort();
        }
        slots[i].api = None;
    }

    /// Node `node`'s participant state, as its router holds it.
    pub(crate) fn app(&self, node: &str) -> App<MemStore> {
        participant_app(node, &self.stores[node], &self.map, &self.fences[node])
    }

    /// Participant `node` starts again after a crash: as its `main` does,
    /// it reads its fences from its database (waiting for it), then serves.
    pub(crate) async fn restart_participant(&self, node: &str) {
        let store = &self.stores[node];
        let fences = loop {
            match store.fences().await {
                Ok(f) => break f,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        *self.fences[node].write().await = fences;
        crate::nemesis::set_node_up(self, node, true);
    }

    pub(crate) fn fault(&self, kind: &str) {
        *self.faults.lock().unwrap().entry(kind.into()).or_default() += 1;
    }

    pub(crate) fn refused(&self, why: String) {
        self.refused.lock().unwrap().push(why);
    }

    /// The simulated wall clock, as etcd's records write it.
    pub(crate) fn clock_text(&self) -> String {
        (chrono::DateTime::UNIX_EPOCH + self.start.elapsed()).to_rfc3339()
    }

    pub(crate) fn rng<T>(&self, f: impl FnOnce(&mut fastrand::Rng) -> T) -> T {
        f(&mut self.rng.lock().unwrap())
    }
}

fn participant_app(
    node: &str,
    store: &MemStore,
    map: &MapHandle,
    fences: &Fences,
) -> App<MemStore> {
    App {
        node_id: Arc::from(node),
        store: store.clone(),
        map: map.clone(),
        fences: fences.clone(),
        max_fold_events: participant::reads::DEFAULT_MAX_FOLD_EVENTS,
    }
}

fn node_name(i: usize) -> String {
    format!("node-{}", i + 1)
}

async fn simulate(opts: Options) -> Report {
    let start = Instant::now();
    let nodes: Vec<String> = (0..opts.nodes).map(node_name).collect();
    let map = MapHandle::fixed(PartitionMap {
        revision: 1,
        moves: Default::default(),
        owners: (0..opts.partitions as usize)
            .map(|p| nodes[p % nodes.len()].clone())
            .collect(),
        nodes: nodes
            .iter()
            .map(|n| (n.clone(), format!("http://{n}")))
            .collect(),
    });
    let mut net = Net {
        rng: fastrand::Rng::with_seed(opts.seed ^ 0x6e65_7477_6f72_6b00),
        nodes: BTreeMap::new(),
        cuts: BTreeSet::new(),
        weather: Weather::default(),
        stats: NetStats::default(),
        paused: BTreeMap::new(),
        in_transit: 0,
        incarnations: BTreeMap::new(),
    };
    let mut stores = BTreeMap::new();
    let mut fences = BTreeMap::new();
    for n in &nodes {
        let store = MemStore::new(NodeClock::new(start));
        let fenced = Fences::default();
        let app = participant_app(n, &store, &map, &fenced);
        net.nodes.insert(
            n.clone(),
            Node {
                router: participant::app::router(app),
                up: true,
                incarnation: 0,
            },
        );
        stores.insert(n.clone(), store);
        fences.insert(n.clone(), fenced);
    }
    let world = Arc::new(World {
        start,
        net: Arc::new(Mutex::new(net)),
        map,
        stores,
        fences,
        refused: Mutex::new(Vec::new()),
        coordinators: Mutex::new(
            (0..opts.coordinators)
                .map(|_| CoordinatorSlot {
                    api: None,
                    tasks: Vec::new(),
                })
                .collect(),
        ),
        rng: Mutex::new(fastrand::Rng::with_seed(opts.seed)),
        history: Mutex::new(History::default()),
        faults: Mutex::new(BTreeMap::new()),
        accounts: (0..opts.accounts)
            .map(|i| AccountId::parse(format!("acct-{i}")).unwrap())
            .collect(),
        currency: Currency::parse("USD").unwrap(),
    });
    for i in 0..opts.coordinators {
        world.start_coordinator(i);
    }
    let mut anomalies = open_accounts(&world, opts.clients).await;

    // Faults and clients together; the nemesis stops when the clients do.
    let done = Arc::new(tokio::sync::Notify::new());
    let nemesis = opts.faults.then(|| {
        let (w, d, o) = (world.clone(), done.clone(), opts.clone());
        tokio::spawn(async move { nemesis(w, d, o).await })
    });
    // The operator moves partitions meanwhile, and stops with the nemesis.
    let stop_moving = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let operator = (opts.faults && opts.moves).then(|| {
        let (w, stop, seed) = (world.clone(), stop_moving.clone(), opts.seed);
        tokio::spawn(async move { crate::mover::operator(w, stop, seed).await })
    });
    let clients: Vec<_> = (0..opts.clients)
        .map(|c| {
            let (w, o) = (world.clone(), opts.clone());
            tokio::spawn(async move { client(w, c, o).await })
        })
        .collect();
    for c in clients {
        c.await.expect("a client task");
    }
    done.notify_one();
    if let Some(n) = nemesis {
        n.await.expect("the nemesis task");
    }
    stop_moving.store(true, std::sync::atomic::Ordering::Relaxed);
    heal(&world, &opts);
    // A move under way runs to its end (its steps wait for no fault).
    if let Some(o) = operator {
        o.await.expect("the operator task");
    }
    let healed_ms = world.ms();
    for why in world.refused.lock().unwrap().iter() {
        anomalies.push(Anomaly::new(
            AnomalyKind::Invariant,
            format!("partition move: {why}"),
        ));
    }

    // Recovery: faults off; every unknown outcome is resolved as a client
    // would (a transfer's status, a movement's retry) and nothing may be
    // left in flight, in time.
    let harness = opts.clients;
    let resolved_ms = settle(&world, harness, healed_ms).await;
    fresh_transfer(&world, harness).await;
    settle(&world, harness, world.ms()).await;
    look_again(&world, harness).await;
    read_balances(&world, harness).await;
    let history = std::mem::take(&mut *world.history.lock().unwrap());
    let settling = wallet_history::Settling {
        healed_ms: healed_ms as f64,
        settled_ms: resolved_ms.map(|ms| (healed_ms + ms) as f64),
        limit_ms: RESOLVE_WITHIN.as_millis() as f64,
    };
    anomalies.extend(check::check(&world.stores, &history, settling));

    let ops = tally(&history);
    let stats = world.net.lock().unwrap().stats.clone();
    let messages = BTreeMap::from([
        ("sent".to_string(), stats.sent),
        ("delivered".to_string(), stats.delivered),
        ("lost".to_string(), stats.lost),
        ("duplicated".to_string(), stats.duplicated),
        ("delayed".to_string(), stats.delayed),
        ("dropped_by_cut".to_string(), stats.cut),
        ("refused".to_string(), stats.refused),
    ]);
    let mut h = std::hash::DefaultHasher::new();
    for op in &history.ops {
        format!("{op:?}").hash(&mut h);
    }
    for store in world.stores.values() {
        let t = store.tables.lock().unwrap();
        format!("{:?}", t.accounts).hash(&mut h);
        format!(
            "{:?}",
            t.transfers.values().map(|r| &r.record).collect::<Vec<_>>()
        )
        .hash(&mut h);
    }
    let faults = world.faults.lock().unwrap().clone();
    Report {
        seed: opts.seed,
        ops,
        faults,
        anomalies,
        sim_ms: world.ms(),
        resolved_ms,
        messages,
        digest: h.finish(),
    }
}

/// Opens every account and funds it through the public API, before any
/// fault, as the harness's process `harness`; the requests are in the
/// history like any other.
async fn open_accounts(world: &Arc<World>, harness: usize) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let currency = world.currency.code().to_string();
    for (i, account) in world.accounts.iter().enumerate() {
        let open = Request::Open {
            account: account.as_str().to_string(),
            currency: currency.clone(),
        };
        let deposit = Request::Deposit {
            transaction_id: uuid::Uuid::from_u128(i as u128 + 1),
            account: account.as_str().to_string(),
            amount: world.rng(|r| r.i64(1..20_000)),
            currency: currency.clone(),
        };
        for request in [open, deposit] {
            let op = call(world, harness, Phase::Setup, 0, request, false).await;
            if op.outcome != Outcome::Ok {
                anomalies.push(Anomaly::new(
                    AnomalyKind::Setup,
                    format!("could not open and fund {account}: {op:?}"),
                ));
            }
        }
    }
    anomalies
}

fn new_id(world: &World) -> uuid::Uuid {
    let bytes = world.rng(|r| r.u128(..)).to_le_bytes();
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// One client: transfers among few accounts (so they contend and overdraw),
/// deposits, withdrawals, retries of its earlier requests, and an earlier
/// request's id sent again with another body (a deposit into another
/// account), which must be refused.
async fn client(world: Arc<World>, id: usize, opts: Options) {
    let mut sent: Vec<Request> = Vec::new();
    let mut done = 0;
    let currency = world.currency.code().to_string();
    let n = world.accounts.len();
    let account = |i: usize| world.accounts[i].as_str().to_string();
    while done < opts.ops_per_client {
        let think = world.rng(|r| r.u64(0..40));
        tokio::time::sleep(Duration::from_millis(think)).await;
        // A coordinator that is down refuses the connection: nothing was
        // sent, so it is no operation; the client tries again shortly.
        let c = world.rng(|r| r.usize(0..opts.coordinators));
        if world.coordinators.lock().unwrap()[c].api.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        done += 1;
        let roll = world.rng(|r| r.u32(0..100));
        let (request, retry) = if roll < 15 && !sent.is_empty() {
            let i = world.rng(|r| r.usize(0..sent.len()));
            (sent[i].clone(), true)
        } else if roll < 18 && !sent.is_empty() {
            let earlier = sent[world.rng(|r| r.usize(0..sent.len()))].clone();
            let mut to = world.rng(|r| r.usize(0..n));
            if earlier.movement().is_some_and(|(a, _, _)| a == account(to)) {
                to = (to + 1) % n;
            }
            let reuse = Request::Deposit {
                transaction_id: earlier.transaction_id().expect("a transaction id"),
                account: account(to),
                amount: world.rng(|r| r.i64(1..5_000)),
                currency: currency.clone(),
            };
            (reuse, false)
        } else if roll < 25 {
            let (transaction_id, to) = (new_id(&world), account(world.rng(|r| r.usize(0..n))));
            let amount = world.rng(|r| r.i64(1..5_000));
            let request = if roll < 22 {
                Request::Deposit {
                    transaction_id,
                    account: to,
                    amount,
                    currency: currency.clone(),
                }
            } else {
                Request::Withdraw {
                    transaction_id,
                    account: to,
                    amount,
                    currency: currency.clone(),
                }
            };
            sent.push(request.clone());
            (request, false)
        } else {
            let from = world.rng(|r| r.usize(0..n));
            let to = (from + world.rng(|r| r.usize(1..n))) % n;
            let request = Request::Transfer {
                transaction_id: new_id(&world),
                from: account(from),
                to: account(to),
                amount: world.rng(|r| r.i64(1..8_000)),
                currency: currency.clone(),
            };
            sent.push(request.clone());
            (request, false)
        };
        call(&world, id, Phase::Chaos, c, request, retry).await;
    }
}

/// Sends one request through coordinator `c`, as a task that a crash of
/// that coordinator aborts, and records it in the history.
async fn call(
    world: &Arc<World>,
    process: usize,
    phase: Phase,
    c: usize,
    request: Request,
    retry: bool,
) -> Op {
    let invoke_ms = world.ms() as f64;
    let api = {
        let slots = world.coordinators.lock().unwrap();
        slots[c].api.clone()
    };
    let (outcome, status, body, error) = match api {
        // Connection refused: the request never left, nothing happened.
        None => (
            Outcome::Fail,
            None,
            Value::Null,
            Some("coordinator down: connection refused".to_string()),
        ),
        Some(api) => {
            let task = tokio::spawn(through_the_api(api, request.clone()));
            {
                let mut slots = world.coordinators.lock().unwrap();
                slots[c].tasks.retain(|t| !t.is_finished());
                slots[c].tasks.push(task.abort_handle());
            }
            match task.await {
                Ok(answer) => answer,
                Err(_) => (
                    Outcome::Unknown,
                    None,
                    Value::Null,
                    Some("coordinator crashed mid-request".to_string()),
                ),
            }
        }
    };
    let op = Op {
        process,
        phase,
        request,
        retry,
        coordinator: c,
        invoke_ms,
        complete_ms: world.ms() as f64,
        outcome,
        status,
        body,
        error,
    };
    world.history.lock().unwrap().ops.push(op.clone());
    op
}

/// Sends a client's request through the coordinator's public API, as a
/// client would (JSON in, status and body out), so the API layer runs in
/// the simulation too; reads the answer as the chaos suite's clients do
/// ([`classify`]): a 5xx or `in_progress` says nothing about the outcome.
async fn through_the_api(
    api: axum::Router,
    request: Request,
) -> (Outcome, Option<u16>, Value, Option<String>) {
    let call = request.http();
    let builder = axum::http::Request::builder()
        .method(call.method)
        .uri(&call.path)
        .header("authorization", format!("Bearer {SIM_KEY}"));
    let req = match &call.body {
        Some(body) => builder
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_string())),
        None => builder.body(axum::body::Body::empty()),
    }
    .expect("a well-formed request");
    let response = match api.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = response.status().as_u16();
    let bytes = match axum::body::to_bytes(response.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(e) => {
            return (
                Outcome::Unknown,
                Some(status),
                Value::Null,
                Some(format!("unreadable answer: {e}")),
            )
        }
    };
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (classify(&request, status, &body), Some(status), body, None)
}

/// Resolves every unknown outcome as a client would (a transfer's status,
/// a movement's retry) until the history settles all of them, no message is
/// still on its way (a late one could open a transfer) and no node has
/// anything in flight, or [`RESOLVE_WITHIN`] after `from_ms` passes; says
/// how long after `from_ms` it was settled.
async fn settle(world: &Arc<World>, harness: usize, from_ms: u64) -> Option<u64> {
    let n = world.coordinators.lock().unwrap().len();
    while world.ms() - from_ms <= RESOLVE_WITHIN.as_millis() as u64 {
        let pending = world.history.lock().unwrap().undetermined();
        let quiet = world.net.lock().unwrap().in_transit == 0;
        if pending.is_empty() && quiet && !check::state(&world.stores).in_flight() {
            return Some(world.ms() - from_ms);
        }
        for (i, request) in pending.into_iter().enumerate() {
            let (request, retry) = match request {
                Request::Transfer { transaction_id, .. } => {
                    (Request::Status { transaction_id }, false)
                }
                movement => (movement, true),
            };
            call(world, harness, Phase::Resolve, i % n, request, retry).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// A lookup that found no record, looked up again if one appeared since (a
/// message delayed past the lookup).
async fn look_again(world: &Arc<World>, harness: usize) {
    let state = check::state(&world.stores);
    let appeared = world.history.lock().unwrap().to_look_up_again(&state);
    for transaction_id in appeared {
        let again = Request::Status { transaction_id };
        call(world, harness, Phase::Final, 0, again, false).await;
    }
}

/// The final read of every balance through the API (the checker compares
/// it with the stores).
async fn read_balances(world: &Arc<World>, harness: usize) {
    for account in &world.accounts {
        let read = Request::Read {
            account: account.as_str().to_string(),
        };
        call(world, harness, Phase::Final, 0, read, false).await;
    }
}

/// Operations by phase, kind and outcome (`transfer ok`, `resolve status
/// ok`); a request under an id sent before with another body is a
/// `reused_id`, a retry of a transfer a `transfer_retry`.
fn tally(history: &History) -> BTreeMap<String, u64> {
    let mut first_body: BTreeMap<uuid::Uuid, &Request> = BTreeMap::new();
    let mut ops = BTreeMap::new();
    for op in &history.ops {
        let reuse = op
            .request
            .transaction_id()
            .is_some_and(|id| *first_body.entry(id).or_insert(&op.request) != &op.request);
        let kind = match &op.request {
            _ if reuse => "reused_id",
            Request::Transfer { .. } if op.retry => "transfer_retry",
            Request::Withdraw { .. } => "withdrawal",
            other => other.kind(),
        };
        let outcome = match op.outcome {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Unknown => "unknown",
        };
        let phase = match op.phase {
            Phase::Chaos | Phase::Fresh => String::new(),
            Phase::Setup => "setup ".into(),
            Phase::Resolve => "resolve ".into(),
            Phase::Final => "final ".into(),
        };
        *ops.entry(format!("{phase}{kind} {outcome}")).or_default() += 1;
    }
    ops
}

/// After recovery, a new transfer between funded accounts (the checker
/// requires that it commits).
async fn fresh_transfer(world: &Arc<World>, harness: usize) {
    let mut richest: Option<(i64, AccountId)> = None;
    for store in world.stores.values() {
        for a in store.tables.lock().unwrap().accounts.values() {
            if richest.as_ref().is_none_or(|(v, _)| a.available() > *v) {
                richest = Some((a.available(), a.account_id.clone()));
            }
        }
    }
    let Some((available, from)) = richest.filter(|(v, _)| *v > 0) else {
        return;
    };
    let to = world
        .accounts
        .iter()
        .find(|a| {
            let map = world.map.current();
            map.owner(map.account_partition(a)) != map.owner(map.account_partition(&from))
        })
        .or_else(|| world.accounts.iter().find(|a| **a != from))
        .cloned()
        .expect("two accounts");
    let transfer = Request::Transfer {
        transaction_id: new_id(world),
        from: from.as_str().to_string(),
        to: to.as_str().to_string(),
        amount: available.min(100),
        currency: world.currency.code().to_string(),
    };
    call(world, harness, Phase::Fresh, 0, transfer, false).await;
}
