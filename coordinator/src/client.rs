//! The one HTTP client to participants. It routes by partition with the
//! current map, stamps the map revision on every request, and retries
//! (bounded, with backoff and jitter) on transport errors and on
//! `wrong_partition_owner` after re-reading the map. Whatever is still not a
//! clear answer after that is [`CallError::Unknown`], never a success.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use wallet_shared::protocol::Routed;
use wallet_shared::{retry, ErrorCode, MapHandle, PartitionId, Rejection};

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
            CallError::Rejected(r) => r.code == ErrorCode::WrongPartitionOwner,
        }
    }
}

#[derive(Clone)]
pub struct Participants {
    http: reqwest::Client,
    pub map: MapHandle,
}

impl Participants {
    pub fn new(map: MapHandle, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Participants { http, map })
    }

    /// POSTs `body` to the node that owns `partitions` (all on one node).
    pub async fn post<Req: Serialize + Clone, Resp: DeserializeOwned>(
        &self,
        partitions: &[PartitionId],
        path: &str,
        body: &Req,
    ) -> Result<Resp, CallError> {
        self.call(partitions, path, |http, url, rev| {
            http.post(url).json(&Routed {
                map_revision: rev,
                body: body.clone(),
            })
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
        self.call(&[partition], path, |http, url, rev| {
            http.get(url)
                .query(&[
                    ("map_revision", rev.to_string()),
                    ("partition", partition.to_string()),
                ])
                .query(query)
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
        send(self.http.get(format!("{base}{path}")).query(query)).await
    }

    async fn call<Resp: DeserializeOwned>(
        &self,
        partitions: &[PartitionId],
        path: &str,
        build: impl Fn(&reqwest::Client, String, i64) -> reqwest::RequestBuilder,
    ) -> Result<Resp, CallError> {
        retry::when(
            path,
            retry::Policy::request(),
            || async {
                let map = self.map.current();
                let node = single_owner(&map, partitions)?;
                let base = map.url(node).ok_or_else(|| CallError::Unknown(format!("node {node} has no address")))?;
                let result = send(build(&self.http, format!("{base}{path}"), map.revision)).await;
                if let Err(CallError::Rejected(r)) = &result {
                    if r.code == ErrorCode::WrongPartitionOwner {
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

fn single_owner<'m>(
    map: &'m wallet_shared::PartitionMap,
    partitions: &[PartitionId],
) -> Result<&'m str, CallError> {
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
    owner.ok_or_else(|| CallError::Unknown("no partition to route by".into()))
}

async fn send<Resp: DeserializeOwned>(req: reqwest::RequestBuilder) -> Result<Resp, CallError> {
    let resp = req
        .send()
        .await
        .map_err(|e| CallError::Unknown(e.to_string()))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| CallError::Unknown(e.to_string()))?;
    if status.is_success() {
        let body = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        return serde_json::from_slice(body)
            .map_err(|e| CallError::Unknown(format!("unreadable answer: {e}")));
    }
    match serde_json::from_slice::<Rejection>(&bytes) {
        // 5xx: the participant could not do it now; what happened is unclear.
        Ok(r) if status.is_server_error() => Err(CallError::Unknown(r.to_string())),
        Ok(r) => Err(CallError::Rejected(r)),
        Err(_) => Err(CallError::Unknown(format!("HTTP {status}"))),
    }
}
