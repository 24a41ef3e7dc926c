//! `walletctl partitions ...`: who owns what, and moving partitions.

use std::collections::BTreeMap;

use serde::Serialize;
use wallet_shared::admin::{NodePartitions, PartitionStats};
use wallet_shared::map::MovePhase;
use wallet_shared::{routes, PartitionId};

use crate::ctx::Ctx;
use crate::error::CtlResult;
use crate::moves::{self, MoveOptions};
use crate::output::Table;

#[derive(Debug, clap::Subcommand)]
pub enum PartitionsCmd {
    /// Every partition: its owner, its state and how many accounts it holds.
    Show,
    /// Moves a partition to another node, online. Run it again to resume a
    /// move that was interrupted, or with --abort to undo it.
    Move {
        /// The partition number
        partition: PartitionId,
        /// The node to move it to
        #[arg(long, required_unless_present = "abort")]
        to: Option<String>,
        /// Undo an interrupted move instead (only before the owner switched)
        #[arg(long, conflicts_with = "to")]
        abort: bool,
        #[command(flatten)]
        options: MoveOptions,
    },
    /// Spreads partitions evenly over the nodes, one move at a time.
    Rebalance {
        /// Print the moves without making them
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        options: MoveOptions,
    },
}

pub async fn run(ctx: &Ctx, cmd: PartitionsCmd) -> CtlResult<()> {
    match cmd {
        PartitionsCmd::Show => show(ctx).await,
        PartitionsCmd::Move {
            partition,
            to,
            abort,
            options,
        } => {
            if abort {
                moves::abort(ctx, partition).await
            } else {
                let to = to.expect("clap requires --to without --abort");
                let report = moves::run(ctx, partition, &to, &options).await?;
                ctx.output.emit(&report, moves::describe);
                Ok(())
            }
        }
        PartitionsCmd::Rebalance { dry_run, options } => {
            moves::rebalance(ctx, dry_run, &options).await
        }
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
                &format!("{url}{}", routes::PARTITIONS),
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
                state: match map.moves.get(&p) {
                    Some(m) if m.phase == MovePhase::Copying => format!("copying to {}", m.to),
                    Some(m) if m.phase == MovePhase::Moving => format!("moving to {}", m.to),
                    Some(m) if m.phase == MovePhase::Aborting => {
                        format!("undoing the move to {}", m.to)
                    }
                    Some(m) => format!("moved from {} (cleanup pending)", m.from),
                    None => "active".to_string(),
                },
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
