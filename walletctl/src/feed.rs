//! `walletctl feed ...`: each node's change-feed consumers. A registered
//! consumer holds its node's outbox from its position on (the participant
//! prunes behind the slowest one), so one that is gone for good (a reader
//! retired, a rebuild that died: `projector.rebuild`) is dropped here.

use serde::Serialize;
use wallet_shared::protocol::FeedConsumers;
use wallet_shared::routes;

use crate::ctx::Ctx;
use crate::error::{not_found, CtlResult};
use crate::output::Table;

#[derive(Debug, clap::Subcommand)]
pub enum FeedCmd {
    /// Every node's feed head, what is pruned, and its registered consumers
    Consumers,
    /// Unregisters a consumer, on every node or one: its outbox rows may go
    Drop {
        name: String,
        /// Only on this node
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Debug, Serialize)]
struct Row {
    node_id: String,
    head: i64,
    pruned_through: i64,
    consumer: Option<String>,
    position: Option<i64>,
    /// Entries published and not yet acknowledged by this consumer.
    behind: Option<i64>,
}

pub async fn run(ctx: &Ctx, cmd: FeedCmd) -> CtlResult<()> {
    let map = ctx.map().await?;
    let (name, only) = match &cmd {
        FeedCmd::Consumers => (None, None),
        FeedCmd::Drop { name, node } => (Some(name.as_str()), node.as_deref()),
    };
    if let Some(node) = only {
        ctx.node_url(&map, node)?;
    }
    let mut rows = Vec::new();
    let mut dropped = false;
    for node in map.nodes.keys().filter(|n| only.is_none_or(|o| o == *n)) {
        let base = ctx.node_url(&map, node)?;
        let who = format!("node {node}");
        let feed: FeedConsumers = match name {
            Some(name) => {
                let before: FeedConsumers = ctx
                    .get(&who, &format!("{base}{}", routes::FEED_CONSUMERS))
                    .await?;
                dropped |= before.consumers.iter().any(|c| c.name == name);
                ctx.delete(&who, &format!("{base}{}", routes::FEED_CONSUMER.with(name)))
                    .await?
            }
            None => {
                ctx.get(&who, &format!("{base}{}", routes::FEED_CONSUMERS))
                    .await?
            }
        };
        if feed.consumers.is_empty() {
            rows.push(Row {
                node_id: node.clone(),
                head: feed.head,
                pruned_through: feed.pruned_through,
                consumer: None,
                position: None,
                behind: None,
            });
        }
        for c in &feed.consumers {
            rows.push(Row {
                node_id: node.clone(),
                head: feed.head,
                pruned_through: feed.pruned_through,
                consumer: Some(c.name.clone()),
                position: Some(c.position),
                behind: Some(feed.head - c.position),
            });
        }
    }
    if let Some(name) = name {
        if !dropped {
            return Err(not_found(format!("no node has a feed consumer {name:?}")));
        }
    }
    ctx.output.emit(&rows, |rows| {
        let mut t = Table::new(&[
            "NODE",
            "HEAD",
            "PRUNED THROUGH",
            "CONSUMER",
            "POSITION",
            "BEHIND",
        ]);
        for r in rows {
            let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
            t.row(vec![
                r.node_id.clone(),
                r.head.to_string(),
                r.pruned_through.to_string(),
                r.consumer
                    .clone()
                    .unwrap_or_else(|| "(none: nothing pruned)".into()),
                opt(r.position),
                opt(r.behind),
            ]);
        }
        t.render()
    });
    Ok(())
}
