//! Following the feeds: one page per node per round, read over HTTP from the
//! node's `/internal/v1/feed` after the stored cursor, projected with
//! [`Projections::apply`]. Nodes come from the partition map, so a node that
//! joins is followed from its first entry.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wallet_shared::protocol::FeedPage;
use wallet_shared::secret::Secret;
use wallet_shared::{retry, routes, signing, MapHandle};

use crate::models::{Applied, Projections};

#[derive(Clone)]
pub struct Follower {
    pub projections: Projections,
    /// The partition map: which nodes there are and where they listen.
    pub map: MapHandle,
    /// One client for every node; each request bounded by its timeout.
    http: reqwest::Client,
    /// Signs every call (`wallet_shared::signing`).
    secret: Secret,
    /// Entries per page (and per projecting transaction).
    page: i64,
}

/// What one round did on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Entries projected.
    pub projected: usize,
    /// The node's cursor after the round.
    pub position: i64,
    /// The node's head as it answered.
    pub head: i64,
}

impl Follower {
    pub fn new(
        projections: Projections,
        map: MapHandle,
        timeout: Duration,
        page: i64,
        secret: Secret,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        Ok(Follower {
            projections,
            map,
            http,
            secret,
            page: page.clamp(1, 10_000),
        })
    }

    /// Reads one page of `node`'s feed after its cursor and projects it.
    pub async fn step(&self, node: &str) -> Result<Step> {
        let map = self.map.current();
        let Some(base) = map.url(node) else {
            bail!("node {node} is not in the partition map");
        };
        let from = self.projections.position(node).await?;
        let url = format!("{base}{}?after={from}&limit={}", routes::FEED, self.page);
        let resp = signing::send(Some(&self.secret), self.http.get(&url))
            .await
            .with_context(|| format!("reading {url}"))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            bail!("{url}: HTTP {status}: {body}");
        }
        let page: FeedPage = resp
            .json()
            .await
            .with_context(|| format!("decoding {url}"))?;
        if let Some(bad) = page
            .entries
            .iter()
            .zip(from + 1..)
            .find(|(e, want)| e.position != *want)
        {
            bail!(
                "{node}'s feed skipped: entry at position {} where {} was due",
                bad.0.position,
                bad.1
            );
        }
        match self
            .projections
            .apply(node, from, page.head, &page.entries)
            .await?
        {
            Applied::Moved(position) => {
                if !page.entries.is_empty() {
                    tracing::info!(
                        node,
                        projected = page.entries.len(),
                        position,
                        head = page.head,
                        lag = page.head - position,
                        "feed page projected"
                    );
                }
                Ok(Step {
                    projected: page.entries.len(),
                    position,
                    head: page.head,
                })
            }
            Applied::Stale => {
                tracing::info!(node, from, "cursor moved by someone else; reading again");
                Ok(Step {
                    projected: 0,
                    position: self.projections.position(node).await?,
                    head: page.head,
                })
            }
        }
    }

    /// Follows every node until `stop` resolves: a page per node per round,
    /// at once again while some node had a full page, else after `idle`.
    /// A node that fails is retried after a bounded, jittered backoff; the
    /// others go on.
    pub async fn run(&self, idle: Duration, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let policy = retry::Policy::background();
        let mut backoff: BTreeMap<String, (Instant, backon::ExponentialBackoff)> = BTreeMap::new();
        loop {
            let nodes: Vec<String> = self.map.current().nodes.keys().cloned().collect();
            let mut busy = false;
            for node in &nodes {
                if backoff
                    .get(node)
                    .is_some_and(|(until, ..)| Instant::now() < *until)
                {
                    continue;
                }
                match self.step(node).await {
                    Ok(step) => {
                        backoff.remove(node);
                        busy |= step.projected as i64 == self.page;
                    }
                    Err(e) => {
                        let entry = backoff
                            .entry(node.clone())
                            .or_insert_with(|| (Instant::now(), policy.backoff()));
                        let pause = entry.1.next().unwrap_or(policy.max_delay);
                        entry.0 = Instant::now() + pause;
                        tracing::warn!(%node, error = %format!("{e:#}"), ?pause, "cannot follow a node's feed");
                    }
                }
            }
            let pause = if busy { Duration::ZERO } else { idle };
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Rounds until every node's cursor has reached the head it had when
    /// this started (what `walletctl projections rebuild` waits for), or
    /// `within` has passed.
    pub async fn catch_up(&self, within: Duration) -> Result<BTreeMap<String, Step>> {
        let deadline = Instant::now() + within;
        let nodes: Vec<String> = self.map.current().nodes.keys().cloned().collect();
        let mut targets: BTreeMap<String, Option<i64>> =
            nodes.iter().map(|n| (n.clone(), None)).collect();
        let mut last = BTreeMap::new();
        loop {
            let mut done = true;
            for node in &nodes {
                let step = match self.step(node).await {
                    Ok(step) => step,
                    Err(e) if Instant::now() < deadline => {
                        tracing::warn!(%node, error = %format!("{e:#}"), "catching up: retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        done = false;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let target = *targets
                    .get_mut(node)
                    .expect("every node has a target")
                    .get_or_insert(step.head);
                done &= step.position >= target;
                last.insert(node.clone(), step);
            }
            if done {
                return Ok(last);
            }
            if Instant::now() >= deadline {
                bail!("projections did not catch up within {within:?}");
            }
        }
    }
}
