//! The nemesis: one fault at a time, on a random schedule, each healed
//! after a bounded time before the next: `kill -9` and restart of a
//! coordinator, a participant, a Postgres server (once its old processes are
//! gone) or etcd; SIGSTOP/SIGCONT of any of them; a cut or a blackhole of a
//! link, through the cluster's proxies (coordinators to one participant, or
//! one coordinator to etcd); a partition move with `walletctl`, sometimes
//! with one of those faults or a crash of walletctl in the middle, run again
//! until it is done. Every fault becomes a [`Fault`] in the history.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use devcluster::proxy::{Mode, Proxy};
use devcluster::{Cluster, Supervised};

use super::history::{Clock, Fault, FaultKind};
use super::Until;

/// How often and how long.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Mean pause between one fault's healing and the next fault (uniform
    /// between 0 and twice this).
    pub interval: Duration,
    /// Shortest time a fault lasts.
    pub hold_min: Duration,
    /// Longest time a fault lasts (a restart adds its own start-up time).
    pub hold_max: Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            interval: Duration::from_millis(1000),
            hold_min: Duration::from_millis(300),
            hold_max: Duration::from_millis(2000),
        }
    }
}

/// How many times a restart is tried before the run gives up.
const RESTART_ATTEMPTS: u32 = 3;

/// Injects faults into `cluster` until `until`; returns them. Fails only
/// when the harness cannot heal a fault (a process that will not restart).
pub async fn run(
    cluster: &mut Cluster,
    schedule: &Schedule,
    seed: u64,
    clock: Clock,
    until: &Until,
) -> Result<Vec<Fault>> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x6e65_6d65_7369_7321);
    let mut faults = Vec::new();
    loop {
        let gap = schedule.interval.mul_f64(2.0 * rng.f64());
        tokio::time::sleep(gap).await;
        if until.reached() {
            return Ok(faults);
        }
        let kind = FaultKind::IN_PROCESS[rng.usize(..FaultKind::IN_PROCESS.len())];
        let span = schedule.hold_max.saturating_sub(schedule.hold_min);
        let hold = schedule.hold_min + span.mul_f64(rng.f64());
        let start_ms = clock.now_ms();
        let target = inject(cluster, kind, &mut rng, hold)
            .await
            .with_context(|| format!("fault {}", kind.as_str()))?;
        let fault = Fault {
            kind,
            target,
            start_ms,
            end_ms: clock.now_ms(),
        };
        tracing::info!(
            kind = fault.kind.as_str(),
            target = %fault.target,
            ms = fault.end_ms - fault.start_ms,
            "fault healed"
        );
        faults.push(fault);
        until.fault_healed();
    }
}

/// Injects one fault on a random target, holds it, heals it; returns the
/// target's name.
async fn inject(
    cluster: &mut Cluster,
    kind: FaultKind,
    rng: &mut fastrand::Rng,
    hold: Duration,
) -> Result<String> {
    let coordinator = rng.usize(..cluster.coordinators().len());
    let participant = rng.usize(..cluster.participants().len());
    use FaultKind::*;
    let kill = matches!(
        kind,
        KillCoordinator | KillParticipant | KillPostgres | KillEtcd
    );
    match kind {
        KillCoordinator | PauseCoordinator => {
            let s = cluster.coordinator_mut(coordinator);
            let name = s.name().to_string();
            disturb(s, kill, hold).await?;
            Ok(name)
        }
        KillParticipant | PauseParticipant => {
            let s = cluster.participant_mut(participant);
            let name = s.name().to_string();
            disturb(s, kill, hold).await?;
            Ok(name)
        }
        KillPostgres | PausePostgres => {
            disturb(cluster.postgres_mut(participant), kill, hold).await?;
            Ok(format!("postgres-{}", participant + 1))
        }
        KillEtcd | PauseEtcd => {
            disturb(cluster.etcd_mut(), kill, hold).await?;
            Ok("etcd".into())
        }
        CutParticipant | BlackholeParticipant => {
            let proxy = cluster.participant_proxy(participant);
            hold_link(proxy, kind == CutParticipant, hold).await
        }
        CutEtcd | BlackholeEtcd => {
            let proxy = cluster.etcd_proxy(coordinator);
            hold_link(proxy, kind == CutEtcd, hold).await
        }
        MovePartition => move_partition(cluster, rng, hold).await,
        Disconnect => bail!("a disconnect is a fault of the containers mode (containers.rs)"),
    }
}

/// Where walletctl dies on purpose (`WALLETCTL_CRASH_AT`), at random.
const MOVE_CRASH_POINTS: [&str; 4] = [
    "after_drain_fence",
    "after_freeze",
    "after_import",
    "after_switch",
];

/// How many times a move is run before the run gives up on it.
const MOVE_ATTEMPTS: u32 = 10;

/// Moves a random partition to another node with the real `walletctl`;
/// half the time another fault (never a move) strikes while it runs, and a
/// third of the time walletctl dies at a random step. Then runs the move
/// again until it is done, as an operator would.
async fn move_partition(
    cluster: &mut Cluster,
    rng: &mut fastrand::Rng,
    hold: Duration,
) -> Result<String> {
    let map = cluster.map_store().await?.load().await?;
    let p = rng.u32(..map.partition_count());
    let others: Vec<&String> = map
        .nodes
        .keys()
        .filter(|n| Some(*n) != map.owner(p))
        .collect();
    if others.is_empty() {
        bail!("a move needs two nodes");
    }
    let to = others[rng.usize(..others.len())].clone();
    let crash =
        (rng.u32(..3) == 0).then(|| MOVE_CRASH_POINTS[rng.usize(..MOVE_CRASH_POINTS.len())]);
    let mut first = walletctl(
        cluster,
        &["partitions", "move", &p.to_string(), "--to", &to],
    )?;
    if let Some(point) = crash {
        first.env("WALLETCTL_CRASH_AT", point);
    }
    let child = first.spawn().context("starting walletctl")?;
    let during = rng.bool().then(|| loop {
        let kind = FaultKind::IN_PROCESS[rng.usize(..FaultKind::IN_PROCESS.len())];
        if kind != FaultKind::MovePartition {
            break kind;
        }
    });
    let mut target = format!("partition {p} to {to}");
    if let Some(kind) = during {
        tokio::time::sleep(hold.mul_f64(0.25 * rng.f64())).await;
        let hit = Box::pin(inject(cluster, kind, rng, hold)).await?;
        target.push_str(&format!(" (during it: {} {hit})", kind.as_str()));
    }
    let first = child
        .wait_with_output()
        .await
        .context("waiting for walletctl")?;
    if !first.status.success() {
        let hook = crash.map_or(String::new(), |c| format!(", WALLETCTL_CRASH_AT={c}"));
        target.push_str(&format!(" (walletctl {}{hook})", first.status));
    }
    finish_moves(cluster).await?;
    Ok(target)
}

/// Runs every move under way (in the map) again until it is done.
pub async fn finish_moves(cluster: &Cluster) -> Result<()> {
    let mut attempt = 1;
    loop {
        let map = cluster.map_store().await?.load().await?;
        let Some((p, m)) = map.moves.iter().next() else {
            return Ok(());
        };
        let out = walletctl(
            cluster,
            &["partitions", "move", &p.to_string(), "--to", &m.to],
        )?
        .output()
        .await
        .context("running walletctl")?;
        if !out.status.success() {
            if attempt >= MOVE_ATTEMPTS {
                bail!(
                    "walletctl could not finish the move of partition {p} to {} in {MOVE_ATTEMPTS} runs: {}",
                    m.to,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            tracing::warn!(partition = p, to = %m.to, stderr = %String::from_utf8_lossy(&out.stderr).trim(), "move not finished; running it again");
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The real walletctl, pointed at this cluster, its output captured.
fn walletctl(cluster: &Cluster, args: &[&str]) -> Result<tokio::process::Command> {
    let mut cmd = tokio::process::Command::new(cluster.binary("walletctl")?);
    cmd.arg("--etcd-endpoints")
        .arg(cluster.etcd_endpoints().join(","))
        .arg("--etcd-prefix")
        .arg(cluster.etcd_prefix())
        .args(args)
        .env("WALLET_CLUSTER_SECRET_FILE", cluster.cluster_secret_file())
        .env_remove("WALLET_CLUSTER_SECRET")
        .env_remove("WALLETCTL_CRASH_AT")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    Ok(cmd)
}

/// Cuts (or blackholes) the link through `proxy` for `hold`; returns its name.
async fn hold_link(proxy: Option<&Proxy>, cut: bool, hold: Duration) -> Result<String> {
    let proxy = proxy.context("the cluster has no proxies (ClusterOptions::proxies)")?;
    proxy.set_mode(if cut { Mode::Cut } else { Mode::Blackhole });
    tokio::time::sleep(hold).await;
    proxy.set_mode(Mode::Open);
    Ok(proxy.name().to_string())
}

/// `kill -9`, down for `hold`, restart; or SIGSTOP, `hold`, SIGCONT.
async fn disturb(victim: &mut Supervised, kill: bool, hold: Duration) -> Result<()> {
    if kill {
        victim.kill9().await?;
        tokio::time::sleep(hold).await;
        restart(victim).await
    } else {
        victim.pause()?;
        tokio::time::sleep(hold).await;
        victim.resume()
    }
}

/// Restarts, a few times if need be (a start can fail on a port race).
async fn restart(victim: &mut Supervised) -> Result<()> {
    let mut attempt = 1;
    loop {
        match victim.restart().await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < RESTART_ATTEMPTS => {
                tracing::warn!(error = %format!("{e:#}"), attempt, "restart failed; trying again");
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => bail!("restart failed {RESTART_ATTEMPTS} times: {e:#}"),
        }
    }
}

/// Makes sure no fault is left: every link open, every process resumed and
/// running.
pub async fn heal_all(cluster: &mut Cluster) -> Result<()> {
    for proxy in cluster.proxies() {
        proxy.set_mode(Mode::Open);
    }
    heal(cluster.etcd_mut()).await?;
    for i in 0..cluster.participants().len() {
        heal(cluster.postgres_mut(i)).await?;
        heal(cluster.participant_mut(i)).await?;
    }
    for i in 0..cluster.coordinators().len() {
        heal(cluster.coordinator_mut(i)).await?;
    }
    finish_moves(cluster).await
}

async fn heal(victim: &mut Supervised) -> Result<()> {
    victim.resume()?;
    if !victim.is_running() {
        restart(victim).await?;
    }
    Ok(())
}
