//! `walletctl nodes ...`: the nodes in the partition map.

use serde::Serialize;

use crate::cluster::{parse_node_id, parse_node_url, MapSummary};
use crate::ctx::Ctx;
use crate::error::{conflict, CtlResult};
use crate::output::Table;

#[derive(Debug, clap::Subcommand)]
pub enum NodesCmd {
    /// Every node: its address, the partitions it owns, whether it answers.
    List,
    /// Adds a node to the map (owning nothing yet: `partitions rebalance`
    /// gives it its share).
    Add {
        /// Its node id, as the participant is configured (WALLET_NODE_ID)
        id: String,
        /// Its base URL, e.g. http://127.0.0.1:7004
        url: String,
        /// Do not check that the node answers /health with this id
        #[arg(long)]
        no_check: bool,
    },
    /// Removes a node that owns no partition any more.
    Remove {
        /// The node id
        id: String,
    },
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
        NodesCmd::Add { id, url, no_check } => add(ctx, &id, &url, no_check).await,
        NodesCmd::Remove { id } => remove(ctx, &id).await,
    }
}

async fn add(ctx: &Ctx, id: &str, url: &str, no_check: bool) -> CtlResult<()> {
    let id = parse_node_id(id)?;
    let url = parse_node_url(url)?;
    let map = ctx.map().await?;
    if let Some(known) = map.url(&id) {
        return Err(conflict(format!(
            "node {id} is already in the map (at {known})"
        )));
    }
    if !no_check {
        let health: serde_json::Value = ctx
            .get(&format!("node {id} at {url}"), &format!("{url}/health"))
            .await
            .map_err(|mut e| {
                e.message
                    .push_str(" (start the participant first, or pass --no-check)");
                e
            })?;
        let answered = health["node_id"].as_str().unwrap_or("");
        if answered != id {
            return Err(conflict(format!(
                "the node at {url} says it is {answered:?}, not {id:?} (check its WALLET_NODE_ID)"
            )));
        }
    }
    let map = ctx
        .map_store()
        .await?
        .update(map.revision, &[(format!("nodes/{id}"), url.clone())], &[])
        .await?;
    ctx.output.note(format!(
        "node {id} added; it owns no partition yet: `walletctl partitions rebalance` gives it its share"
    ));
    let summary = MapSummary::of(&map);
    ctx.output.emit(&summary, MapSummary::render);
    Ok(())
}

async fn remove(ctx: &Ctx, id: &str) -> CtlResult<()> {
    let map = ctx.map().await?;
    ctx.node_url(&map, id)?;
    let owned = map.partitions_of(id);
    if !owned.is_empty() {
        return Err(conflict(format!(
            "node {id} still owns {} partitions; move them to other nodes first \
             (`walletctl partitions move P --to NODE`, or `walletctl partitions rebalance`)",
            owned.len()
        )));
    }
    if let Some((p, m)) = map.moves.iter().find(|(_, m)| m.from == id || m.to == id) {
        return Err(conflict(format!(
            "partition {p} is moving from {} to {}; run `walletctl partitions move {p} --to {}` \
             again to finish it, then remove the node",
            m.from, m.to, m.to
        )));
    }
    // The compare-and-set fails if a move gave the node a partition since
    // we read the map.
    let map = ctx
        .map_store()
        .await?
        .update(map.revision, &[], &[format!("nodes/{id}")])
        .await?;
    ctx.output.note(format!("node {id} removed from the map"));
    let summary = MapSummary::of(&map);
    ctx.output.emit(&summary, MapSummary::render);
    Ok(())
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
            partitions: map.partitions_of(id).len(),
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
