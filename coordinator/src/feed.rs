//! The change feed of the whole cluster: every node's feed read from a
//! consumer's cursor, each node in its own commit order. A node that does
//! not answer is listed as unavailable and its position stays put, so a
//! consumer that keeps the returned cursor misses nothing and sees nothing
//! twice.

use std::collections::BTreeMap;

use wallet_shared::protocol::{FeedEntry, FeedPage};
use wallet_shared::{routes, ErrorCode, Rejection};

use crate::transfer::Coordinator;

/// A consumer's place in every node's feed (`node-1:120,node-2:98`); a node
/// it does not name is read from its start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FeedCursor {
    pub positions: BTreeMap<String, i64>,
}

impl FeedCursor {
    pub fn parse(s: &str) -> Result<Self, Rejection> {
        let mut positions = BTreeMap::new();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let bad = || {
                Rejection::new(
                    ErrorCode::InvalidRequest,
                    format!("cursor part {part:?} is not NODE:POSITION (e.g. node-1:120)"),
                )
            };
            let (node, position) = part.rsplit_once(':').ok_or_else(bad)?;
            let position: i64 = position.parse().map_err(|_| bad())?;
            if node.is_empty() || position < 0 {
                return Err(bad());
            }
            positions.insert(node.to_string(), position);
        }
        Ok(FeedCursor { positions })
    }

    pub fn position(&self, node: &str) -> i64 {
        self.positions.get(node).copied().unwrap_or(0)
    }
}

impl std::fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .positions
            .iter()
            .map(|(node, p)| format!("{node}:{p}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// One read of every node's feed.
#[derive(Debug, Default)]
pub struct ClusterFeed {
    /// Entries with the node they come from, node by node.
    pub entries: Vec<(String, FeedEntry)>,
    /// Where to read from next time.
    pub next: FeedCursor,
    /// Each answering node's newest position.
    pub heads: BTreeMap<String, i64>,
    /// Nodes that did not answer (their positions did not move).
    pub unavailable: Vec<String>,
}

impl Coordinator {
    /// Up to `limit` entries of every node's feed after `cursor`;
    /// `unavailable` when no node answers.
    pub async fn feed(&self, cursor: FeedCursor, limit: i64) -> Result<ClusterFeed, Rejection> {
        let map = self.participants.map.current();
        let nodes: Vec<String> = map.nodes.keys().cloned().collect();
        let pages = futures::future::join_all(nodes.iter().map(|node| {
            let query = [
                ("after", cursor.position(node).to_string()),
                ("limit", limit.to_string()),
            ];
            async move {
                self.participants
                    .get_node::<FeedPage>(node, routes::FEED.pattern(), &query)
                    .await
            }
        }))
        .await;
        let mut feed = ClusterFeed {
            next: cursor,
            ..ClusterFeed::default()
        };
        for (node, page) in nodes.iter().zip(pages) {
            match page {
                Ok(page) => {
                    if let Some(last) = page.entries.last() {
                        feed.next.positions.insert(node.clone(), last.position);
                    }
                    feed.heads.insert(node.clone(), page.head);
                    feed.entries
                        .extend(page.entries.into_iter().map(|e| (node.clone(), e)));
                }
                Err(e) => {
                    tracing::warn!(%node, error = %e, "feed of a node unavailable");
                    feed.unavailable.push(node.clone());
                }
            }
        }
        if feed.unavailable.len() == nodes.len() && !nodes.is_empty() {
            return Err(Rejection::new(
                ErrorCode::Unavailable,
                "no node's feed answered",
            ));
        }
        Ok(feed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_cursors_round_trip_and_refuse_garbage() {
        let c = FeedCursor::parse("node-1:120,node-2:0").unwrap();
        assert_eq!(c.position("node-1"), 120);
        assert_eq!(c.position("node-3"), 0);
        assert_eq!(FeedCursor::parse(&c.to_string()).unwrap(), c);
        assert_eq!(FeedCursor::parse("").unwrap(), FeedCursor::default());
        for bad in ["node-1", "node-1:x", ":5", "node-1:-1"] {
            assert!(FeedCursor::parse(bad).is_err(), "{bad}");
        }
    }
}
