//! `walletctl partitions ...`: who owns what, and moving partitions.

use std::collections::BTreeMap;

use serde::Serialize;
use wallet_shared::admin::{NodePartitions, PartitionStats};
use wallet_shared::PartitionId;

use crate::ctx::Ctx;
use crate::error::CtlResult;
use crate::output::Table;

#[derive(Debug, clap::Subcommand)]
pub enum PartitionsCmd {
    /// Every partition: its owner, its state and how many accounts it holds.
    Show,
}

pub async fn run(ctx: &Ctx, cmd: PartitionsCmd) -> CtlResult<()> {
    match cmd {
        PartitionsCmd::Show => show(ctx).await,
    }
}

#[derive(Debug, Serialize)]
struct PartitionRow {
    partition: PartitionId,
    node: String,
    state: String,
    /// As counted on the owner; `None` if it did not answer.
    accounts: Option<i64>,
    prepared_legs: Option<i64>,
    open_transfers: Option<i64>,
}

#[derive(Debug, Serialize)]
struct Show {
    map_revision: i64,
    partitions: Vec<PartitionRow>,
    /// Nodes that did not answer, and why.
    unreachable: BTreeMap<String, String>,
}

async fn show(ctx: &Ctx) -> CtlResult<()> {
    let map = ctx.map().await?;
    let asks = map.nodes.iter().map(|(id, url)| async move {
        let got: CtlResult<NodePartitions> = ctx
            .get(
                &format!("node {id}"),
                &format!("{url}/internal/v1/partitions"),
            )
            .await;
        (id.clone(), got)
    });
    let mut held: BTreeMap<(String, PartitionId), PartitionStats> = BTreeMap::new();
    let mut unreachable = BTreeMap::new();
    for (node, got) in futures::future::join_all(asks).await {
        match got {
            Ok(np) => {
                for s in np.partitions {
                    held.insert((node.clone(), s.partition), s);
                }
            }
            Err(e) => {
                unreachable.insert(node, e.to_string());
            }
        }
    }
    let partitions = map
        .owners
        .iter()
        .enumerate()
        .map(|(p, node)| {
            let p = p as PartitionId;
            let stats = if unreachable.contains_key(node) {
                None
            } else {
                Some(held.get(&(node.clone(), p)).cloned().unwrap_or_default())
            };
            PartitionRow {
                partition: p,
                node: node.clone(),
                state: "active".to_string(),
                accounts: stats.as_ref().map(|s| s.accounts),
                prepared_legs: stats.as_ref().map(|s| s.prepared_legs),
                open_transfers: stats.as_ref().map(|s| s.open_transfers),
            }
        })
        .collect();
    let show = Show {
        map_revision: map.revision,
        partitions,
        unreachable,
    };
    ctx.output.emit(&show, |s| {
        let mut t = Table::new(&["PARTITION", "NODE", "STATE", "ACCOUNTS", "PREPARED", "OPEN"]);
        let n = |v: Option<i64>| v.map_or("?".to_string(), |v| v.to_string());
        for r in &s.partitions {
            t.row(vec![
                r.partition.to_string(),
                r.node.clone(),
                r.state.clone(),
                n(r.accounts),
                n(r.prepared_legs),
                n(r.open_transfers),
            ]);
        }
        let mut out = t.render();
        out.push_str(&format!("\nmap revision {}", s.map_revision));
        for (node, why) in &s.unreachable {
            out.push_str(&format!("\nnode {node} did not answer: {why}"));
        }
        out
    });
    Ok(())
}
