//! The simulated network between coordinators and participants. Every
//! request travels as its own task, so it arrives (or not) whatever the
//! caller does meanwhile: a caller that timed out can still have its request
//! applied, which is exactly what a real network does.
//!
//! Faults: lost requests and replies, duplicated requests, long delays (and
//! so reordering), links cut in one direction or both, nodes down.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordinator::client::{Incoming, Outgoing, Transport};
use futures::future::BoxFuture;
use tower::ServiceExt;

/// Per-message fault probabilities, in permille.
#[derive(Debug, Clone, Copy, Default)]
pub struct Weather {
    pub loss: u32,
    pub duplicate: u32,
    pub long_delay: u32,
}

pub struct Node {
    pub router: axum::Router,
    pub up: bool,
    /// Bumped by each crash: requests and replies of an older incarnation are dropped.
    pub incarnation: u64,
}

#[derive(Debug, Default, Clone)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub delayed: u64,
    pub cut: u64,
    pub refused: u64,
}

pub struct Net {
    pub rng: fastrand::Rng,
    pub nodes: BTreeMap<String, Node>,
    /// Cut directions: (from, to) drops every message from `from` to `to`.
    pub cuts: BTreeSet<(String, String)>,
    pub weather: Weather,
    pub stats: NetStats,
    /// Endpoints frozen (SIGSTOP) until the given instant: they send nothing
    /// and hear nothing before then.
    pub paused: BTreeMap<String, tokio::time::Instant>,
    /// Messages on their way (a request not yet handled, or its reply not
    /// yet back): a late one can still open a transfer after the faults
    /// stop, so the run is not settled while any is.
    pub in_transit: u64,
    /// Each coordinator endpoint's current incarnation, bumped when it
    /// crashes and when it starts: a task of a crashed incarnation that
    /// lives on in the simulation (a retry loop it spawned) sends nothing,
    /// as a killed process does.
    pub incarnations: BTreeMap<String, u64>,
}

/// One message on its way, counted in [`Net::in_transit`] while it lives.
struct InTransit(SharedNet);

impl InTransit {
    fn new(net: &SharedNet) -> InTransit {
        net.lock().unwrap().in_transit += 1;
        InTransit(net.clone())
    }
}

impl Drop for InTransit {
    fn drop(&mut self) {
        self.0.lock().unwrap().in_transit -= 1;
    }
}

pub type SharedNet = Arc<Mutex<Net>>;

impl Net {
    fn chance(&mut self, permille: u32) -> bool {
        permille > 0 && self.rng.u32(0..1000) < permille
    }

    fn delay(&mut self) -> Duration {
        if self.chance(self.weather.long_delay) {
            self.stats.delayed += 1;
            Duration::from_millis(self.rng.u64(300..4000))
        } else {
            Duration::from_micros(self.rng.u64(200..15_000))
        }
    }
}

/// What a coordinator holds: its end of the simulated network.
pub struct SimTransport {
    pub net: SharedNet,
    /// This endpoint's name, as used in cuts ("coordinator-0").
    pub from: String,
    /// The incarnation it belongs to (see [`Net::incarnations`]).
    pub incarnation: u64,
}

impl Transport for SimTransport {
    fn send(&self, req: Outgoing) -> BoxFuture<'static, Result<Incoming, String>> {
        let (net, from, incarnation) = (self.net.clone(), self.from.clone(), self.incarnation);
        Box::pin(async move {
            wait_unpaused(&net, &from).await;
            if net.lock().unwrap().incarnations.get(&from) != Some(&incarnation) {
                return Err(format!("{from} crashed: it sends nothing"));
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let dup = {
                let mut n = net.lock().unwrap();
                n.stats.sent += 1;
                let w = n.weather.duplicate;
                n.chance(w)
            };
            if dup {
                net.lock().unwrap().stats.duplicated += 1;
                tokio::spawn(deliver(net.clone(), from.clone(), req.clone(), None));
            }
            tokio::spawn(deliver(net, from, req, Some(tx)));
            rx.await.map_err(|_| "connection reset".to_string())?
        })
    }
}

fn split(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<Incoming, String>>;

/// Silence: the caller hears nothing and times out.
async fn silence(reply: Option<Reply>) {
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop(reply);
}

/// A frozen process does nothing until it is thawed.
async fn wait_unpaused(net: &SharedNet, who: &str) {
    loop {
        let until = net.lock().unwrap().paused.get(who).copied();
        match until {
            Some(t) if t > tokio::time::Instant::now() => tokio::time::sleep_until(t).await,
            _ => return,
        }
    }
}

fn count_dropped(net: &SharedNet, by_cut: bool) {
    let mut n = net.lock().unwrap();
    if by_cut {
        n.stats.cut += 1;
    } else {
        n.stats.lost += 1;
    }
}

async fn deliver(net: SharedNet, from: String, req: Outgoing, reply: Option<Reply>) {
    let (node, path) = split(&req.url);
    let (delay, lost, cut) = {
        let mut n = net.lock().unwrap();
        let w = n.weather.loss;
        let lost = n.chance(w);
        let cut = n.cuts.contains(&(from.clone(), node.clone()));
        (n.delay(), lost, cut)
    };
    if lost || cut {
        count_dropped(&net, cut);
        return silence(reply).await;
    }
    let transit = InTransit::new(&net);
    let incarnation = {
        let n = net.lock().unwrap();
        n.nodes.get(&node).filter(|x| x.up).map(|x| x.incarnation)
    };
    let incarnation = match incarnation {
        Some(i) => i,
        None => {
            net.lock().unwrap().stats.refused += 1;
            if let Some(r) = reply {
                let _ = r.send(Err(format!("connection refused by {node}")));
            }
            return;
        }
    };
    tokio::time::sleep(delay).await;
    let router = {
        let n = net.lock().unwrap();
        match n.nodes.get(&node) {
            Some(x) if x.up && x.incarnation == incarnation => Some(x.router.clone()),
            _ => None,
        }
    };
    let Some(router) = router else {
        if let Some(r) = reply {
            let _ = r.send(Err(format!("connection to {node} reset")));
        }
        return;
    };
    let builder = axum::http::Request::builder().uri(path);
    let http_req = match req.body {
        Some(body) => builder
            .method("POST")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body)),
        None => builder.method("GET").body(axum::body::Body::empty()),
    }
    .expect("a valid request");
    let resp = match router.oneshot(http_req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let (delay, lost, cut, crashed) = {
        let mut n = net.lock().unwrap();
        n.stats.delivered += 1;
        let w = n.weather.loss;
        let lost = n.chance(w);
        let cut = n.cuts.contains(&(node.clone(), from.clone()));
        let crashed = n
            .nodes
            .get(&node)
            .is_none_or(|x| !x.up || x.incarnation != incarnation);
        (n.delay(), lost, cut, crashed)
    };
    if crashed {
        if let Some(r) = reply {
            let _ = r.send(Err(format!("connection to {node} reset")));
        }
        return;
    }
    if lost || cut {
        count_dropped(&net, cut);
        drop(transit);
        return silence(reply).await;
    }
    tokio::time::sleep(delay).await;
    wait_unpaused(&net, &from).await;
    if let Some(r) = reply {
        let _ = r.send(Ok(Incoming { status, body }));
    }
}
