//! The one HTTP client to participants. It routes by partition with the
//! current map, stamps the map revision on every request, and retries
//! (bounded, with backoff and jitter) on transport errors and on
//! `wrong_partition_owner` after re-reading the map. Whatever is still not a
//! clear answer after that is [`CallError::Unknown`], never a success.
//!
//! Bytes travel through a [`Transport`]: HTTP in production, the simulated
//! network in the deterministic simulation.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use wallet_shared::protocol::{Routed, Verdict};
use wallet_shared::secret::Secret;
use wallet_shared::signing;
use wallet_shared::{retry, ErrorCode, MapHandle, PartitionId, Rejection};

/// One request to a participant: `GET` when there is no body, else a JSON `POST`.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub url: String,
    pub body: Option<Vec<u8>>,
}

/// What came back: the HTTP status and the body.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Carries requests to participants. An `Err` means no answer arrived: the
/// request may or may not have taken effect.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, req: Outgoing) -> BoxFuture<'static, Result<Incoming, String>>;
}

/// The production transport: HTTP/1.1 with pooled connections, every
/// request signed with the cluster secret (`wallet_shared::signing`).
pub struct HttpTransport {
    http: reqwest::Client,
    secret: Secret,
}

impl HttpTransport {
    pub fn new(timeout: Duration, secret: Secret) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(64)
            // Well before a participant closes an idle connection
            // (its header_read_timeout_ms, 60 s by default), so a request
            // never races that close.
            .pool_idle_timeout(Duration::from_secs(20))
            .build()?;
        Ok(HttpTransport { http, secret })
    }
}

impl Transport for HttpTransport {
    fn send(&self, req: Outgoing) -> BoxFuture<'static, Result<Incoming, String>> {
        let builder = match req.body {
            Some(body) => self
                .http
                .post(req.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
            None => self.http.get(req.url),
        };
        let secret = self.secret.clone();
        Box::pin(async move {
            let resp = signing::send(Some(&secret), builder)
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = resp.bytes().await.map_err(|e| e.to_string())?;
            Ok(Incoming {
                status,
                body: body.to_vec(),
            })
        })
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The participant answered with a refusal: a definite answer.
    #[error("{0}")]
    Rejected(Rejection),
    /// No clear answer: the request may or may not have taken effect.
    #[error("no clear answer: {0}")]
    Unknown(String),
}

impl CallError {
    fn retryable(&self) -> bool {
        match self {
            CallError::Unknown(_) => true,
            CallError::Rejected(r) => matches!(
                r.code,
                ErrorCode::WrongPartitionOwner | ErrorCode::PartitionMoving
            ),
        }
    }
}

/// A participant's verdict as the protocol takes it: a refusal of the
/// item is `CallError::Rejected`, as a refusal of the whole request is, so
/// every refusal reaches the coordinator's code one way.
pub fn judged<T>(answer: Result<Verdict<T>, CallError>) -> Result<T, CallError> {
    answer.and_then(|verdict| verdict.map_err(CallError::Rejected))
}

#[derive(Clone)]
pub struct Participants {
    transport: Arc<dyn Transport>,
    /// How long one call may take before its answer counts as unknown.
    timeout: Duration,
    pub map: MapHandle,
    /// How long new work on a partition that is being moved waits for the
    /// move to end (see [`Participants::await_moves`]).
    pub move_wait: Duration,
}

impl Participants {
    /// One request, bounded by the call timeout; the answer decoded.
    async fn send<Resp: DeserializeOwned>(&self, req: Outgoing) -> Result<Resp, CallError> {
        let resp = tokio::time::timeout(self.timeout, self.transport.send(req))
            .await
            .map_err(|_| CallError::Unknown(format!("no answer within {:?}", self.timeout)))?
            .map_err(CallError::Unknown)?;
        if (200..300).contains(&resp.status) {
            let body = if resp.body.is_empty() {
                &b"null"[..]
            } else {
                &resp.body[..]
            };
            return serde_json::from_slice(body)
                .map_err(|e| CallError::Unknown(format!("unreadable answer: {e}")));
        }
        match serde_json::from_slice::<Rejection>(&resp.body) {
            // A fenced partition is refused before anything is done.
            Ok(r) if r.code == ErrorCode::PartitionMoving => Err(CallError::Rejected(r)),
            // 5xx: the participant could not do it now; what happened is unclear.
            Ok(r) if resp.status >= 500 => Err(CallError::Unknown(r.to_string())),
            // The signature was refused (another secret, a clock apart):
            // nothing was done, but that judges this coordinator, not the
            // request, so it is no verdict to record for the transfer.
            Ok(r) if r.code == ErrorCode::Unauthenticated => Err(CallError::Unknown(r.to_string())),
            Ok(r) => Err(CallError::Rejected(r)),
            Err(_) => Err(CallError::Unknown(format!("HTTP {}", resp.status))),
        }
    }

    pub fn new(map: MapHandle, transport: Arc<dyn Transport>, timeout: Duration) -> Self {
        Participants {
            transport,
            timeout,
            map,
            move_wait: Duration::from_secs(5),
        }
    }

    /// New work waits while one of `partitions` is being moved (the map in
    /// etcd records the move), at most [`Participants::move_wait`]; then it
    /// is refused with `partition_moving`, before anything was done. The old
    /// owner refuses it anyway (its fence), so this only spares callers
    /// refusals during the short moves.
    pub async fn await_moves(&self, partitions: &[PartitionId]) -> Result<(), Rejection> {
        let deadline = tokio::time::Instant::now() + self.move_wait;
        let mut map = self.map.current();
        loop {
            let Some(&p) = partitions.iter().find(|&&p| map.is_moving(p)) else {
                return Ok(());
            };
            let waited = tokio::time::timeout_at(deadline, self.map.newer_than(map.revision)).await;
            let Ok(newer) = waited else {
                let to = map.moves.get(&p).map_or("another node", |m| m.to.as_str());
                return Err(Rejection::new(
                    ErrorCode::PartitionMoving,
                    format!("partition {p} is moving to {to}; nothing was done, try again shortly"),
                ));
            };
            map = newer;
        }
    }

    /// Over HTTP (production), signed with the cluster secret.
    pub fn http(map: MapHandle, timeout: Duration, secret: Secret) -> anyhow::Result<Self> {
        Ok(Self::new(
            map,
            Arc::new(HttpTransport::new(timeout, secret)?),
            timeout,
        ))
    }

    /// POSTs `body` to the node that owns `partitions` (all on one node).
    pub async fn post<Req: Serialize + Clone, Resp: DeserializeOwned>(
        &self,
        partitions: &[PartitionId],
        path: &str,
        body: &Req,
    ) -> Result<Resp, CallError> {
        self.call(None, partitions, path, |url, rev| {
            routed(url, rev, body, &[])
        })
        .await
    }

    /// POSTs a batch to the node its lane routed it to, at the map revision
    /// it was routed at, its items' `traceparent`s beside it
    /// (`Routed::traces`; empty when traces are off). A retry (after a
    /// refusal for a stale map, or no answer) routes `partitions` again
    /// with the current map.
    pub async fn post_routed<Req: Serialize + Clone, Resp: DeserializeOwned>(
        &self,
        route: Route,
        partitions: &[PartitionId],
        path: &str,
        body: &Req,
        traces: &[String],
    ) -> Result<Resp, CallError> {
        self.call(Some(route), partitions, path, |url, rev| {
            routed(url, rev, body, traces)
        })
        .await
    }

    /// GETs `path` (with `query`) from the node that owns `partition`.
    pub async fn get<Resp: DeserializeOwned>(
        &self,
        partition: PartitionId,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Resp, CallError> {
        self.call(None, &[partition], path, |url, rev| {
            let routing = [
                ("map_revision", rev.to_string()),
                ("partition", partition.to_string()),
            ];
            Ok(Outgoing {
                url: with_query(&url, routing.iter().chain(query))?,
                body: None,
            })
        })
        .await
    }

    /// GETs from a node by id (recovery scans every node).
    pub async fn get_node<Resp: DeserializeOwned>(
        &self,
        node: &str,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Resp, CallError> {
        let map = self.map.current();
        let base = map
            .url(node)
            .ok_or_else(|| CallError::Unknown(format!("node {node} is not in the map")))?;
        let url = with_query(&format!("{base}{path}"), query)?;
        self.send(Outgoing { url, body: None }).await
    }

    /// Sends to `route` (else where the current map routes `partitions`),
    /// then, on a retry, where the current map routes them then.
    async fn call<Resp: DeserializeOwned>(
        &self,
        route: Option<Route>,
        partitions: &[PartitionId],
        path: &str,
        build: impl Fn(String, i64) -> Result<Outgoing, CallError>,
    ) -> Result<Resp, CallError> {
        let first = std::sync::Mutex::new(route);
        retry::when(
            path,
            retry::Policy::request(),
            || async {
                let map = self.map.current();
                let taken = first.lock().unwrap().take();
                let Route { node, revision } = match taken {
                    Some(route) => route,
                    None => Route::of(&map, partitions)?,
                };
                let base = map.url(&node).ok_or_else(|| CallError::Unknown(format!("node {node} has no address")))?;
                let result = self.send(build(format!("{base}{path}"), revision)?).await;
                if let Err(CallError::Rejected(r)) = &result {
                    if matches!(r.code, ErrorCode::WrongPartitionOwner | ErrorCode::PartitionMoving) {
                        tracing::info!(%node, reason = %r.message, "stale partition map; re-reading it");
                        if let Err(e) = self.map.refresh().await {
                            tracing::warn!(error = %e, "cannot re-read the partition map");
                        }
                    }
                }
                result
            },
            CallError::retryable,
        )
        .await
    }
}

/// A POST's body: `body` stamped with the map revision it was routed at.
fn routed<Req: Serialize + Clone>(
    url: String,
    map_revision: i64,
    body: &Req,
    traces: &[String],
) -> Result<Outgoing, CallError> {
    let routed = Routed {
        map_revision,
        traces: traces.to_vec(),
        body: body.clone(),
    };
    let body = serde_json::to_vec(&routed)
        .map_err(|e| CallError::Unknown(format!("cannot encode the request: {e}")))?;
    Ok(Outgoing {
        url,
        body: Some(body),
    })
}

/// Where a message goes: the node that owns every one of its partitions in
/// the map of `revision`. A batch takes it once, when an item joins its
/// node's lane, and sends the lane's request there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub node: String,
    pub revision: i64,
}

impl Route {
    pub fn of(
        map: &wallet_shared::PartitionMap,
        partitions: &[PartitionId],
    ) -> Result<Route, CallError> {
        let mut owner: Option<&str> = None;
        for &p in partitions {
            let o = map
                .owner(p)
                .ok_or_else(|| CallError::Unknown(format!("partition {p} is not in the map")))?;
            match owner {
                Some(prev) if prev != o => {
                    return Err(CallError::Unknown(format!(
                        "partitions {partitions:?} are on several nodes"
                    )))
                }
                _ => owner = Some(o),
            }
        }
        let node = owner.ok_or_else(|| CallError::Unknown("no partition to route by".into()))?;
        Ok(Route {
            node: node.to_string(),
            revision: map.revision,
        })
    }
}

fn with_query<'a>(
    url: &str,
    pairs: impl IntoIterator<Item = &'a (&'a str, String)>,
) -> Result<String, CallError> {
    let pairs = pairs.into_iter().map(|(k, v)| (*k, v.as_str()));
    url::Url::parse_with_params(url, pairs)
        .map(String::from)
        .map_err(|e| CallError::Unknown(format!("bad participant address {url}: {e}")))
}
