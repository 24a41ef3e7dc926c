//! `walletctl`: the wallet's admin CLI. See `walletctl --help`.
//!
//! Endpoints come from flags, then the environment (`WALLET_ETCD_ENDPOINTS`,
//! `WALLET_ETCD_PREFIX`, `WALLET_COORDINATOR_URL`), then the manifest that
//! `make run` writes (`.data/cluster.json`), then the defaults of a local
//! cluster. Calls to the coordinator carry an API key with the `admin`
//! scope: `WALLET_API_KEY`, `--api-key-file` (`WALLET_API_KEY_FILE`), or the
//! manifest's `api_key_file`. Output is a table for people, or JSON with `--output json`.

mod accounts;
mod audit;
mod cluster;
mod ctx;
mod error;
mod feed;
mod keys;
mod moves;
mod nodes;
mod output;
mod partitions;
mod projections;
mod replay;
mod tx;

use clap::{Parser, Subcommand};

use crate::ctx::{Ctx, Endpoints};
use crate::output::Output;

#[derive(Parser)]
#[command(
    name = "walletctl",
    about = "Administers a wallet cluster: partition map, nodes, partition moves, transfers, accounts, audit",
    after_help = "Exit codes: 0 done; 1 a check found problems; 2 bad usage or input; \
                  3 etcd, a node or the coordinator did not answer; 4 not found; \
                  5 the cluster's state does not allow it; 6 any other failure."
)]
struct Cli {
    #[command(flatten)]
    endpoints: Endpoints,
    /// How to print results
    #[arg(long, short, value_enum, default_value = "table", global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writing the first partition map
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// The nodes in the partition map
    #[command(subcommand)]
    Nodes(nodes::NodesCmd),
    /// Partition owners, and moving partitions between nodes
    #[command(subcommand)]
    Partitions(partitions::PartitionsCmd),
    /// Transfers: one in detail, those in doubt, resolving one now
    #[command(subcommand)]
    Tx(tx::TxCmd),
    /// Accounts: balances and last events
    #[command(subcommand)]
    Accounts(accounts::AccountsCmd),
    /// API keys of the public API: create, list, revoke
    #[command(subcommand)]
    Keys(keys::KeysCmd),
    /// Checks every promise that can be checked at rest, on every node;
    /// exits 1 if one does not hold
    Audit(audit::AuditArgs),
    /// The read models the projector builds from the change feeds
    #[command(subcommand)]
    Projections(projections::ProjectionsCmd),
    /// Each node's change feed: its registered consumers, what is pruned
    #[command(subcommand)]
    Feed(feed::FeedCmd),
    /// Rebuilds balances from the event log on every node and compares
    /// them with the stored balances (exit 1 on any mismatch)
    Replay(replay::ReplayArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    wallet_shared::telemetry::init_cli();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let result = runtime.block_on(async {
        let ctx = Ctx::new(cli.endpoints, cli.output)?;
        match cli.command {
            Command::Nodes(cmd) => nodes::run(&ctx, cmd).await,
            Command::Partitions(cmd) => partitions::run(&ctx, cmd).await,
            Command::Cluster(cmd) => cluster::run(&ctx, cmd).await,
            Command::Tx(cmd) => tx::run(&ctx, cmd).await,
            Command::Accounts(cmd) => accounts::run(&ctx, cmd).await,
            Command::Keys(cmd) => keys::run(&ctx, cmd).await,
            Command::Audit(args) => audit::run(&ctx, args).await,
            Command::Projections(cmd) => projections::run(&ctx, cmd).await,
            Command::Feed(cmd) => feed::run(&ctx, cmd).await,
            Command::Replay(args) => replay::run(&ctx, args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("walletctl: {e}");
            std::process::ExitCode::from(e.exit as u8)
        }
    }
}
