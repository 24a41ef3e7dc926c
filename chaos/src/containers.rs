//! The chaos suite with every node in its own container: the compose
//! cluster of `docker-compose.yml` (started before, `scripts/compose.sh
//! up`), each coordinator, participant, Postgres and etcd a container with
//! its own address on the compose network. The same clients, settling and
//! checker as the in-process suite ([`super::run`]), through the published
//! ports; the faults are docker's, one at a time on a random container,
//! each healed before the next: `docker kill` (then `docker start`),
//! `docker pause` (then `unpause`) and `docker network disconnect` (then
//! `connect`, under the service's name again). After each, the container
//! must be healthy again (its compose health check) before the next fault.
//!
//! ```text
//! make chaos-containers                         # builds, compose up, 10 minutes, compose down
//! target/release/chaos --containers --duration 60   # against a compose cluster already up
//! ```
//!
//! The in-process mode stays the fast one (no image, faults in
//! milliseconds); this one runs what operators run.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::Command;
use wallet_shared::MapStore;

use super::history::{Clock, Fault, FaultKind, History};
use super::nemesis::Schedule;
use super::report::Report;
use super::workload::Client;
use super::{Config, Until};

/// Longest wait for one docker or compose command.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a container to be healthy again after its fault.
const HEALTHY_WITHIN: Duration = Duration::from_secs(120);

/// The containers a fault may hit: the compose service, and the kinds its
/// kill and its pause are recorded as.
const TARGETS: [(&str, FaultKind, FaultKind); 9] = [
    (
        "coordinator-1",
        FaultKind::KillCoordinator,
        FaultKind::PauseCoordinator,
    ),
    (
        "coordinator-2",
        FaultKind::KillCoordinator,
        FaultKind::PauseCoordinator,
    ),
    (
        "participant-1",
        FaultKind::KillParticipant,
        FaultKind::PauseParticipant,
    ),
    (
        "participant-2",
        FaultKind::KillParticipant,
        FaultKind::PauseParticipant,
    ),
    (
        "participant-3",
        FaultKind::KillParticipant,
        FaultKind::PauseParticipant,
    ),
    (
        "postgres-1",
        FaultKind::KillPostgres,
        FaultKind::PausePostgres,
    ),
    (
        "postgres-2",
        FaultKind::KillPostgres,
        FaultKind::PausePostgres,
    ),
    (
        "postgres-3",
        FaultKind::KillPostgres,
        FaultKind::PausePostgres,
    ),
    ("etcd", FaultKind::KillEtcd, FaultKind::PauseEtcd),
];

/// A compose project of `docker-compose.yml` that is up.
#[derive(Debug, Clone)]
pub struct Compose {
    /// The workspace, where `scripts/compose.sh` is.
    pub root: PathBuf,
    /// `COMPOSE_PROJECT_NAME`, `WALLET_IMAGE` and the `WALLET_*_PORT`s it
    /// was started with (unset: compose's defaults).
    pub env: Vec<(String, String)>,
}

impl Compose {
    /// The project this process's environment names, as
    /// `scripts/compose.sh` reads it, in the workspace `root`.
    pub fn from_env(root: impl Into<PathBuf>) -> Compose {
        let env = std::env::vars()
            .filter(|(k, _)| {
                k == "COMPOSE_PROJECT_NAME"
                    || k == "WALLET_IMAGE"
                    || (k.starts_with("WALLET_") && k.ends_with("_PORT"))
            })
            .collect();
        Compose {
            root: root.into(),
            env,
        }
    }

    /// The published port `WALLET_<name>_PORT` (compose's default if unset).
    fn port(&self, name: &str, default: u16) -> u16 {
        let key = format!("WALLET_{name}_PORT");
        self.env
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(default)
    }

    fn url(&self, name: &str, default: u16) -> String {
        format!("http://127.0.0.1:{}", self.port(name, default))
    }

    /// `scripts/compose.sh ARGS`: its standard output.
    async fn compose(&self, args: &[&str]) -> Result<String> {
        let mut command = Command::new(self.root.join("scripts/compose.sh"));
        command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.root);
        output(command, &format!("compose {}", args.join(" "))).await
    }

    /// The container id of a compose service.
    async fn container(&self, service: &str) -> Result<String> {
        let id = self.compose(&["ps", "-a", "-q", service]).await?;
        if id.is_empty() {
            bail!("compose has no container for {service}");
        }
        Ok(id)
    }

    /// Waits until the container runs and its health check passes.
    async fn healthy(&self, service: &str, id: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + HEALTHY_WITHIN;
        loop {
            let state = docker(&[
                "inspect",
                "-f",
                "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}healthy{{end}}",
                id,
            ])
            .await?;
            if state == "running healthy" {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{service} is not healthy after {HEALTHY_WITHIN:?}: {state}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The compose network the container is on.
    async fn network(&self, id: &str) -> Result<String> {
        let names = docker(&[
            "inspect",
            "-f",
            "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}",
            id,
        ])
        .await?;
        names
            .split_whitespace()
            .next()
            .map(str::to_string)
            .with_context(|| format!("container {id} is on no network"))
    }
}

/// Runs `command` (bounded by [`DOCKER_TIMEOUT`]): its standard output, or
/// why it failed.
async fn output(mut command: Command, what: &str) -> Result<String> {
    command.kill_on_drop(true);
    let out = tokio::time::timeout(DOCKER_TIMEOUT, command.output())
        .await
        .with_context(|| format!("{what}: no answer within {DOCKER_TIMEOUT:?}"))?
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

async fn docker(args: &[&str]) -> Result<String> {
    let mut command = Command::new("docker");
    command.args(args);
    output(command, &format!("docker {}", args.join(" "))).await
}

/// Runs the suite against the compose cluster `compose` (up and ready) and
/// writes `history.jsonl`, `report.json` and `report.txt` into
/// `config.out`, as [`super::run`] does.
pub async fn run(config: &Config, compose: &Compose) -> Result<Report> {
    std::fs::create_dir_all(&config.out)
        .with_context(|| format!("creating {}", config.out.display()))?;
    tracing::info!(seed = config.seed, out = %config.out.display(), "chaos run in containers starting");
    let mut history = History::default();
    let result = run_into(config, compose, &mut history).await;
    let written = super::history::write_jsonl(&history, &config.out.join("history.jsonl"));
    let report = result?;
    written?;
    report.write(&config.out)?;
    Ok(report)
}

async fn run_into(config: &Config, compose: &Compose, history: &mut History) -> Result<Report> {
    let clock = Clock::start();
    let store = MapStore::connect(
        &[compose.url("ETCD", 2379)],
        "/wallet/",
        Duration::from_secs(5),
    )
    .await
    .context("etcd on its published port")?;
    let map = store.load().await.context("the partition map")?;
    let workload = super::chaos_workload(&map)?;
    // The operator's key, which the init job wrote into the secrets volume.
    let coordinator = compose.container("coordinator-1").await?;
    let key = docker(&[
        "exec",
        &coordinator,
        "cat",
        "/var/lib/wallet/secrets/api-key",
    ])
    .await
    .context("reading the API key the init job wrote")?;
    let urls = vec![
        compose.url("COORDINATOR_1", 8080),
        compose.url("COORDINATOR_2", 8081),
    ];
    let client = Client::new(urls, &key, clock, config.request_timeout)?;
    let databases: Vec<String> = [
        ("POSTGRES_1", 5433),
        ("POSTGRES_2", 5434),
        ("POSTGRES_3", 5435),
    ]
    .iter()
    .map(|(name, port)| {
        format!(
            "postgres://postgres@127.0.0.1:{}/wallet",
            compose.port(name, *port)
        )
    })
    .collect();
    let harness = config.clients;
    super::fund(&client, harness, &workload, config.seed, history).await?;
    let setup_ms = clock.now_ms();

    tracing::info!(
        accounts = workload.accounts.len(),
        clients = config.clients,
        seconds = config.duration.as_secs_f64(),
        "chaos in containers: clients and nemesis start"
    );
    let until = Until::counts(
        config.duration,
        config.max_duration,
        config.min_transfers,
        config.min_faults,
    );
    let (ops, faults) = tokio::join!(
        workload.run(&client, config.clients, config.seed, &until),
        nemesis(compose, &config.schedule, config.seed, clock, &until),
    );
    history.ops.extend(ops);
    let chaos_ms = clock.now_ms();
    // Every fault is healed before the next; a failed one is healed here.
    let healed = heal_all(compose).await;
    history.faults = faults?;
    healed?;
    tracing::info!(
        ops = history.ops.len(),
        faults = history.faults.len(),
        "chaos in containers: healed; resolving"
    );

    super::check_and_report(
        config,
        &client,
        harness,
        &workload,
        history,
        &databases,
        (setup_ms, chaos_ms),
    )
    .await
}

/// What a docker fault does, and how it is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Docker {
    Kill,
    Pause,
    Disconnect,
}

/// One fault at a time on a random container until `until`, each held for
/// a random time within the schedule, then healed and the container healthy
/// again.
async fn nemesis(
    compose: &Compose,
    schedule: &Schedule,
    seed: u64,
    clock: Clock,
    until: &Until,
) -> Result<Vec<Fault>> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x646f_636b_6572_2121);
    let mut faults = Vec::new();
    loop {
        let gap = schedule.interval.mul_f64(2.0 * rng.f64());
        tokio::time::sleep(gap).await;
        if until.reached() {
            return Ok(faults);
        }
        let (service, kill, pause) = TARGETS[rng.usize(..TARGETS.len())];
        let how = [Docker::Kill, Docker::Pause, Docker::Disconnect][rng.usize(..3)];
        let span = schedule.hold_max.saturating_sub(schedule.hold_min);
        let hold = schedule.hold_min + span.mul_f64(rng.f64());
        let start_ms = clock.now_ms();
        disturb(compose, service, how, hold)
            .await
            .with_context(|| format!("{how:?} of {service}"))?;
        let fault = Fault {
            kind: match how {
                Docker::Kill => kill,
                Docker::Pause => pause,
                Docker::Disconnect => FaultKind::Disconnect,
            },
            target: service.to_string(),
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

/// Injects `how` on `service`'s container, holds it, undoes it, and waits
/// until the container is healthy again.
async fn disturb(compose: &Compose, service: &str, how: Docker, hold: Duration) -> Result<()> {
    let id = compose.container(service).await?;
    match how {
        Docker::Kill => {
            docker(&["kill", &id]).await?;
            tokio::time::sleep(hold).await;
            docker(&["start", &id]).await?;
        }
        Docker::Pause => {
            docker(&["pause", &id]).await?;
            tokio::time::sleep(hold).await;
            docker(&["unpause", &id]).await?;
        }
        Docker::Disconnect => {
            let network = compose.network(&id).await?;
            docker(&["network", "disconnect", &network, &id]).await?;
            tokio::time::sleep(hold).await;
            // Back under the service's name, which the others address it by.
            docker(&["network", "connect", "--alias", service, &network, &id]).await?;
        }
    }
    compose.healthy(service, &id).await
}

/// Undoes whatever fault a failed nemesis left (unpaused, connected,
/// started), and waits until every target is healthy.
async fn heal_all(compose: &Compose) -> Result<()> {
    for (service, _, _) in TARGETS {
        let id = compose.container(service).await?;
        let state = docker(&["inspect", "-f", "{{.State.Status}}", &id]).await?;
        match state.as_str() {
            "paused" => {
                docker(&["unpause", &id]).await?;
            }
            "running" => {}
            _ => {
                docker(&["start", &id]).await?;
            }
        }
        let networks = docker(&["inspect", "-f", "{{len .NetworkSettings.Networks}}", &id]).await?;
        if networks == "0" {
            let network = format!(
                "{}_default",
                compose
                    .env
                    .iter()
                    .find(|(k, _)| k == "COMPOSE_PROJECT_NAME")
                    .map_or("wallet", |(_, v)| v.as_str())
            );
            docker(&["network", "connect", "--alias", service, &network, &id]).await?;
        }
        compose.healthy(service, &id).await?;
    }
    Ok(())
}
