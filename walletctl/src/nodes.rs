//! `walletctl nodes ...`: the nodes in the partition map.

use serde::Serialize;

use crate::ctx::Ctx;
use crate::error::CtlResult;
use crate::output::Table;

#[derive(Debug, clap::Subcommand)]
pub enum NodesCmd {
    /// Every node: its address, the partitions it owns, whether it answers.
    List,
}

#[derive(Debug, Serialize)]
struct NodeRow {
    node_id: String,
    url: String,
    partitions: usize,
    /// `up` with the map revision it has seen, or why it did not answer.
    health: String,
}

pub async fn run(ctx: &Ctx, cmd: NodesCmd) -> CtlResult<()> {
    match cmd {
        NodesCmd::List => list(ctx).await,
    }
}

async fn list(ctx: &Ctx) -> CtlResult<()> {
    let map = ctx.map().await?;
    let map = &map;
    let checks = map.nodes.iter().map(|(id, url)| async move {
        let health: CtlResult<serde_json::Value> = ctx
            .get(&format!("node {id}"), &format!("{url}/health"))
            .await;
        NodeRow {
            node_id: id.clone(),
            url: url.clone(),
            partitions: map.owners.iter().filter(|o| *o == id).count(),
            health: match health {
                Ok(h) => format!("up (map revision {})", h["map_revision"]),
                Err(e) => format!("down: {e}"),
            },
        }
    });
    let rows: Vec<NodeRow> = futures::future::join_all(checks).await;
    ctx.output.emit(&rows, |rows| {
        let mut t = Table::new(&["NODE", "URL", "PARTITIONS", "HEALTH"]);
        for r in rows {
            t.row(vec![
                r.node_id.clone(),
                r.url.clone(),
                r.partitions.to_string(),
                r.health.clone(),
            ]);
        }
        t.render()
    });
    Ok(())
}
