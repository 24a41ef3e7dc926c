//! Following the feeds: one page per node per round, read over HTTP from the
//! node's `/internal/v1/feed` after the stored cursor, projected with
//! [`Projections::apply`]. Nodes come from the partition map, so a node that
//! joins is followed from its first entry.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wallet_shared::protocol::{FeedAck, FeedConsumers, FeedPage, HistoryPage};
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
    /// The name its positions are registered under on every node, which
    /// holds each node's outbox from there on (none: not registered).
    consumer: Option<String>,
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
            consumer: None,
        })
    }

    /// Registers every position it reaches under `name` (empty: none).
    pub fn registered_as(mut self, name: &str) -> Self {
        self.consumer = (!name.is_empty()).then(|| name.to_string());
        self
    }

    /// `GET` or `PUT` of one of a node's routes, signed, as JSON.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T> {
        let resp = signing::send(Some(&self.secret), request)
            .await
            .with_context(|| format!("calling {url}"))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            bail!("{url}: HTTP {status}: {body}");
        }
        resp.json().await.with_context(|| format!("decoding {url}"))
    }

    fn base(&self, node: &str) -> Result<String> {
        match self.map.current().url(node) {
            Some(base) => Ok(base.to_string()),
            None => bail!("node {node} is not in the partition map"),
        }
    }

    /// Registers (or moves) this follower's position on `node`.
    pub async fn acknowledge(&self, node: &str, position: i64) -> Result<Option<FeedConsumers>> {
        let Some(name) = &self.consumer else {
            return Ok(None);
        };
        Ok(Some(self.register(node, name, position).await?))
    }

    async fn register(&self, node: &str, name: &str, position: i64) -> Result<FeedConsumers> {
        let url = format!("{}{}", self.base(node)?, routes::FEED_CONSUMER.with(name));
        let req = self.http.put(&url).json(&FeedAck { position });
        self.call(req, &url).await
    }

    /// The name a rebuild holds each node's outbox under, from where it
    /// starts until [`Follower::finish_rebuild`]: its own, so a running
    /// projector's acknowledgements cannot release it.
    fn pin(&self) -> Option<String> {
        self.consumer.as_ref().map(|c| format!("{c}.rebuild"))
    }

    /// Drops the rebuild's hold on every node (once it has caught up).
    pub async fn finish_rebuild(&self) -> Result<()> {
        let Some(pin) = self.pin() else { return Ok(()) };
        for node in self.map.current().nodes.keys() {
            let url = format!("{}{}", self.base(node)?, routes::FEED_CONSUMER.with(&pin));
            let _: FeedConsumers = self.call(self.http.delete(&url), &url).await?;
        }
        Ok(())
    }

    /// The node's feed consumers, head and `pruned_through`.
    pub async fn consumers(&self, node: &str) -> Result<FeedConsumers> {
        let url = format!("{}{}", self.base(node)?, routes::FEED_CONSUMERS);
        self.call(self.http.get(&url), &url).await
    }

    /// Rebuilds the projections from every node's history (its event log
    /// and the aborted transfers it keeps), not from its feed's start, so it
    /// works however much of the outbox is pruned. Under the projections'
    /// rebuild lock (a running projector's pages wait), for every node:
    /// empty everything; register a hold at the node's `pruned_through`
    /// (`{consumer}.rebuild`: nothing after it is pruned until
    /// [`Follower::finish_rebuild`]) and put the cursor there; then read the
    /// history into the models, noting what was read. Following the feeds
    /// afterwards ([`Follower::catch_up`]) skips the entries already read,
    /// whichever node's feed carries them: every entry counts once. Returns
    /// each node's starting position.
    pub async fn rebuild(&self) -> Result<BTreeMap<String, i64>> {
        let Some(pin) = self.pin() else {
            bail!("a rebuild registers its position on each node: give it a consumer name");
        };
        let lock = self.projections.rebuild_lock().await?;
        self.projections.empty().await?;
        let nodes: Vec<String> = self.map.current().nodes.keys().cloned().collect();
        let mut starts = BTreeMap::new();
        for node in &nodes {
            // The pruner may pass the old position meanwhile: a few tries.
            let mut tries = 0;
            let start = loop {
                let pruned = self.consumers(node).await?.pruned_through;
                match self.register(node, &pin, pruned).await {
                    Ok(_) => break pruned,
                    Err(e) if tries < 5 => {
                        tries += 1;
                        tracing::warn!(%node, error = %format!("{e:#}"), "registering the rebuild's start: again");
                        tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            self.projections.start_at(node, start).await?;
            starts.insert(node.clone(), start);
        }
        for node in &nodes {
            let base = self.base(node)?;
            let (mut account, mut seq) = (String::new(), 0i64);
            loop {
                let url = format!("{base}{}", routes::HISTORY_EVENTS);
                let req = self.http.get(&url).query(&[
                    ("after_account", account.clone()),
                    ("after_seq", seq.to_string()),
                    ("limit", self.page.to_string()),
                ]);
                let page: HistoryPage = self.call(req, &url).await?;
                self.projections.apply_history(&page.entries).await?;
                if let Some(last) = page.entries.last() {
                    account = last.account_id.as_str().to_string();
                    seq = last.seq.unwrap_or(0);
                }
                if page.done {
                    break;
                }
            }
            let mut after: Option<String> = None;
            loop {
                let url = format!("{base}{}", routes::HISTORY_ABORTED);
                let mut query = vec![("limit", self.page.to_string())];
                query.extend(after.clone().map(|a| ("after", a)));
                let page: HistoryPage = self.call(self.http.get(&url).query(&query), &url).await?;
                self.projections.apply_history(&page.entries).await?;
                if let Some(id) = page.entries.last().and_then(|e| e.transaction_id) {
                    after = Some(id.to_string());
                }
                if page.done {
                    break;
                }
            }
            tracing::info!(%node, "history read");
        }
        lock.release().await?;
        Ok(starts)
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
                if position > from {
                    // Only a hint to the node's pruner: a failed ack holds
                    // its outbox back a little longer, nothing more.
                    if let Err(e) = self.acknowledge(node, position).await {
                        tracing::warn!(node, position, error = %format!("{e:#}"), "cannot register the feed position");
                    }
                }
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
