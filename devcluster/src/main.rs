//! `devcluster run`: the whole cluster in the foreground, for `make run`.
//!
//! Data lives under `--data-dir` (default `.data/`) and survives the next run;
//! `make clean-data` wipes it. Ports are fixed: coordinator 8080, participants
//! 7001.., Postgres 5433.., etcd 2379/2380. Ctrl-C or SIGTERM stops everything
//! gracefully.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use devcluster::{Cluster, ClusterOptions, FixedPorts};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(about = "Runs a local wallet cluster (etcd, Postgres, participants, coordinators)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Starts the cluster and runs until Ctrl-C or SIGTERM.
    Run {
        /// Where every component keeps its data and log.
        #[arg(long, default_value = ".data")]
        data_dir: PathBuf,
        /// Port of the (first) coordinator: the public API.
        #[arg(long, default_value_t = 8080)]
        coordinator_port: u16,
        /// Number of participants, each with its own Postgres.
        #[arg(long, default_value_t = 3)]
        participants: usize,
        /// Number of coordinators (on consecutive ports).
        #[arg(long, default_value_t = 1)]
        coordinators: usize,
        /// Partition count of a new partition map (an existing map is kept).
        #[arg(long, default_value_t = 64)]
        partitions: u32,
        /// Port of the projector (read models; `/status` shows its lag).
        #[arg(long, default_value_t = 9100)]
        projector_port: u16,
        /// Do not start the projector.
        #[arg(long)]
        no_projector: bool,
        /// Free ports instead of the fixed ones (a second cluster beside a
        /// running one; the manifest says where everything is).
        #[arg(long)]
        free_ports: bool,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    wallet_shared::telemetry::init("devcluster");
    match Cli::parse().command {
        Cmd::Run {
            data_dir,
            coordinator_port,
            participants,
            coordinators,
            partitions,
            projector_port,
            no_projector,
            free_ports,
        } => {
            run(
                data_dir,
                ClusterOptions {
                    participants,
                    coordinators,
                    partitions,
                    ports: (!free_ports).then_some(FixedPorts {
                        coordinator: coordinator_port,
                        projector: projector_port,
                        ..FixedPorts::default()
                    }),
                    projector: !no_projector,
                    ..ClusterOptions::default()
                },
            )
            .await
        }
    }
}

async fn run(data_dir: PathBuf, mut options: ClusterOptions) -> Result<()> {
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let data_dir = std::path::absolute(&data_dir)?;
    options.root = Some(data_dir.clone());
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let started = Instant::now();
    let mut cluster = tokio::select! {
        cluster = Cluster::start(options) => cluster?,
        _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted while starting"); return Ok(()) }
        _ = sigterm.recv() => { tracing::info!("terminated while starting"); return Ok(()) }
    };
    let manifest_path = data_dir.join("cluster.json");
    cluster.write_manifest(&manifest_path)?;
    print_banner(&cluster, &manifest_path, started.elapsed());

    let mut reported = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { tracing::info!("Ctrl-C: stopping"); break }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break }
            _ = tick.tick() => report_exits(&mut cluster, &mut reported),
        }
    }
    let stopped = cluster.stop().await;
    if let Err(e) = std::fs::remove_file(&manifest_path) {
        tracing::warn!(error = %e, "cannot remove {}", manifest_path.display());
    }
    stopped?;
    tracing::info!(
        "all stopped; data kept in {} (make clean-data wipes it)",
        data_dir.display()
    );
    Ok(())
}

/// Says once when a component exits by itself.
fn report_exits(cluster: &mut Cluster, reported: &mut std::collections::HashSet<String>) {
    let mut dead = Vec::new();
    for i in 0..cluster.coordinators().len() {
        let s = cluster.coordinator_mut(i);
        if !s.is_running() {
            dead.push((s.name().to_string(), s.log_path().to_path_buf()));
        }
    }
    for i in 0..cluster.participants().len() {
        let s = cluster.participant_mut(i);
        if !s.is_running() {
            dead.push((s.name().to_string(), s.log_path().to_path_buf()));
        }
    }
    for i in 0..cluster.options().participants {
        let pg = cluster.postgres_mut(i);
        if !pg.is_running() {
            dead.push((format!("postgres-{}", i + 1), pg.log_path().to_path_buf()));
        }
    }
    if !cluster.etcd_mut().is_running() {
        dead.push(("etcd".to_string(), cluster.etcd().log_path().to_path_buf()));
    }
    for (name, log) in dead {
        if reported.insert(name.clone()) {
            tracing::error!("{name} exited; see {}", log.display());
        }
    }
}

fn print_banner(cluster: &Cluster, manifest: &std::path::Path, elapsed: Duration) {
    let api = cluster.coordinator_url(0);
    let mut lines = vec![
        String::new(),
        format!("wallet dev cluster up in {:.1} s", elapsed.as_secs_f64()),
        format!("  coordinator (public API): {api}"),
    ];
    for (i, p) in cluster.participants().iter().enumerate() {
        lines.push(format!(
            "  {} ({}): {}   database {}",
            p.name(),
            cluster.node_id(i),
            p.url(),
            cluster.postgres_url(i)
        ));
    }
    if let Some(p) = cluster.projector() {
        lines.push(format!(
            "  projector (read models): {}   /status, /v1/ledger, /v1/accounts/ID, /v1/rejected_transfers   database {}",
            p.url(),
            cluster.projector_database_url().unwrap_or_default()
        ));
    }
    lines.push(format!("  etcd: {}", cluster.etcd().url()));
    lines.push(format!(
        "  manifest: {}   data and logs: {}",
        manifest.display(),
        cluster.root().display()
    ));
    let tx = uuid::Uuid::new_v4();
    let dep = uuid::Uuid::new_v4();
    let key_file = cluster.api_key_file();
    let auth = format!("-H \"authorization: Bearer $(cat {})\"", key_file.display());
    let json = "-H 'content-type: application/json'";
    // Every line carries the key once: in front of the URL.
    let api = format!("{auth} {api}");
    lines.extend([
        format!(
            "  API key (tenant operator, scope admin): {}   more: walletctl keys create --tenant T --scopes transfer,read",
            key_file.display()
        ),
        String::new(),
        "try:".to_string(),
        format!("  curl -s {json} -d '{{\"account_id\":\"alice\",\"currency\":\"USD\"}}' {api}/v1/wallet/accounts"),
        format!("  curl -s {json} -d '{{\"account_id\":\"bob\",\"currency\":\"USD\"}}' {api}/v1/wallet/accounts"),
        format!("  curl -s {json} -d '{{\"transaction_id\":\"{dep}\",\"amount\":\"100.00\",\"currency\":\"USD\"}}' {api}/v1/wallet/accounts/alice/deposit"),
        format!("  curl -s {json} -d '{{\"transaction_id\":\"{tx}\",\"from_account\":\"alice\",\"to_account\":\"bob\",\"amount\":\"25.00\",\"currency\":\"USD\"}}' {api}/v1/wallet/balance_transfer"),
        format!("  curl -s {api}/v1/wallet/accounts/alice/balance"),
        format!("  curl -s {api}/v1/wallet/transfers/{tx}"),
        format!("  curl -s {api}/v1/wallet/accounts/alice/events"),
        format!("  curl -s {auth} \"{}/v1/wallet/accounts/alice/balance?as_of=$(date -u +%FT%T.%NZ)\"", cluster.coordinator_url(0)),
        format!("  curl -s {auth} '{}/v1/wallet/events?limit=10'", cluster.coordinator_url(0)),
        String::new(),
        "Ctrl-C stops everything (data is kept; make clean-data wipes it).".to_string(),
    ]);
    println!("{}", lines.join("\n"));
}
