//! docker-compose.yml the way a user runs it: build the image, `compose up
//! -d`, wait until both coordinators are ready, open accounts and move money
//! through the published ports while a participant and then a coordinator
//! are `docker kill`ed and started again, then check everything with the
//! chaos suite's own settling and checker (nothing lost, applied once or
//! not at all, nothing pending or held once recovered, conservation), that
//! Prometheus scraped every service and serves the dashboard, and `compose
//! down -v`.
//!
//! The image is built on the local base from Debian's packages
//! (scripts/build-base-image.sh: built once per machine, then reused) with
//! the debug binaries this build already made (scripts/compose.sh up
//! --debug). Its own compose project, image tag and free ports, so it runs
//! beside `make compose-up` and `make run`. It prints how long the build
//! and each part took.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use chaos::history::{Clock, Fault, FaultKind, History};
use chaos::workload::{self, Client, Workload};
use chaos::Until;
use wallet_shared::{Currency, MapStore};

/// The seed of the clients' choices (printed; `COMPOSE_SEED` picks another).
const SEED: u64 = 20_261_201;
/// Concurrent clients.
const CLIENTS: usize = 8;
/// Longest wait for a restarted container to be healthy again.
const HEALTHY_WITHIN: Duration = Duration::from_secs(120);

/// One compose project of this test: its environment, and `down -v` (with
/// its image) when dropped, whatever happened.
struct Project {
    root: PathBuf,
    env: Vec<(String, String)>,
}

impl Project {
    fn new() -> Project {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace")
            .to_path_buf();
        let pid = std::process::id();
        let mut env = vec![
            (
                "COMPOSE_PROJECT_NAME".to_string(),
                format!("wallet-test-{pid}"),
            ),
            ("WALLET_IMAGE".to_string(), format!("wallet:test-{pid}")),
        ];
        for name in [
            "COORDINATOR_1",
            "COORDINATOR_2",
            "ETCD",
            "POSTGRES_1",
            "POSTGRES_2",
            "POSTGRES_3",
            "PROJECTOR",
            "PROMETHEUS",
        ] {
            let port = devcluster::ports::free_port().expect("a free port");
            env.push((format!("WALLET_{name}_PORT"), port.to_string()));
        }
        Project { root, env }
    }

    fn port(&self, name: &str) -> u16 {
        let key = format!("WALLET_{name}_PORT");
        self.env
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.parse().expect("a port"))
            .expect("every port is set")
    }

    /// `scripts/compose.sh ARGS`, its output passed through; whether it succeeded.
    fn compose(&self, args: &[&str]) -> bool {
        Command::new(self.root.join("scripts/compose.sh"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.root)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// `scripts/compose.sh ARGS`, its standard output.
    fn compose_output(&self, args: &[&str]) -> String {
        let out = Command::new(self.root.join("scripts/compose.sh"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.root)
            .output()
            .expect("compose runs");
        assert!(out.status.success(), "compose {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The container id of `service`.
    fn container(&self, service: &str) -> String {
        let id = self.compose_output(&["ps", "-q", service]);
        assert!(!id.is_empty(), "no container for {service}");
        id
    }

    /// `docker exec` in `service`'s container: its standard output.
    fn exec(&self, service: &str, command: &[&str]) -> String {
        let id = self.container(service);
        let out = Command::new("docker")
            .arg("exec")
            .arg(&id)
            .args(command)
            .output()
            .expect("docker runs");
        assert!(
            out.status.success(),
            "docker exec {service} {command:?} failed"
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn docker(&self, args: &[&str]) {
        let status = Command::new("docker")
            .args(args)
            .status()
            .expect("docker runs");
        assert!(status.success(), "docker {args:?}: {status}");
    }

    /// Waits until `service`'s container is running and its health check passes.
    async fn healthy(&self, service: &str) {
        let id = self.container(service);
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            let out = Command::new("docker")
                .args([
                    "inspect",
                    "-f",
                    "{{.State.Status}} {{.State.Health.Status}}",
                    &id,
                ])
                .output()
                .expect("docker inspect runs");
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "running healthy" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{service} not healthy after {HEALTHY_WITHIN:?}: {state}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}", self.port(name))
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.compose(&["ps"]);
            self.compose(&["logs", "--tail", "40"]);
        }
        self.compose(&["down", "--rmi", "all"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_cluster_survives_kills_and_loses_nothing() {
    let seed = std::env::var("COMPOSE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    let project = Project::new();
    eprintln!("compose test: seed {seed}, project {:?}", project.env);

    // Build and start, as a user does (make compose-up), with the debug build.
    let started = Instant::now();
    let up = tokio::task::block_in_place(|| project.compose(&["up", "--debug"]));
    assert!(up, "scripts/compose.sh up failed");
    let up_s = started.elapsed().as_secs_f64();

    let store = MapStore::connect(&[project.url("ETCD")], "/wallet/", Duration::from_secs(5))
        .await
        .expect("etcd answers on its published port");
    let map = store.load().await.expect("the init job wrote the map");
    assert_eq!(map.owners.len(), 64);
    assert_eq!(map.nodes.len(), 3);

    let per_node = [
        (Currency::parse("USD").unwrap(), 3),
        (Currency::parse("JPY").unwrap(), 1),
    ];
    let workload = Workload {
        accounts: workload::place_accounts(&map, &per_node),
        initial: 100_000,
        mix: workload::Mix::default(),
    };
    // The operator's key, which the init job wrote into the secrets volume.
    let key = project.exec("coordinator-1", &["cat", "/var/lib/wallet/secrets/api-key"]);
    let clock = Clock::start();
    let client = Client::new(
        vec![project.url("COORDINATOR_1"), project.url("COORDINATOR_2")],
        &key,
        clock,
        Duration::from_secs(10),
    )
    .expect("client");
    let mut history = History::default();
    let harness = CLIENTS;
    chaos::fund(&client, harness, &workload, seed, &mut history)
        .await
        .expect("accounts opened and funded");

    // Load, and meanwhile: a participant killed and started again, then a
    // coordinator. At least 20 s and 1,000 transfers, both faults done.
    let load_started = Instant::now();
    let until = Until::counts(Duration::from_secs(20), Duration::from_secs(300), 1_000, 2);
    let nemesis = async {
        let mut faults = Vec::new();
        for (service, kind) in [
            ("participant-2", FaultKind::KillParticipant),
            ("coordinator-1", FaultKind::KillCoordinator),
        ] {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let id = project.container(service);
            let start_ms = clock.now_ms();
            eprintln!("compose test: docker kill {service}");
            project.docker(&["kill", &id]);
            tokio::time::sleep(Duration::from_secs(3)).await;
            project.docker(&["start", &id]);
            project.healthy(service).await;
            eprintln!("compose test: {service} healthy again");
            faults.push(Fault {
                kind,
                target: service.to_string(),
                start_ms,
                end_ms: clock.now_ms(),
            });
            until.fault_healed();
        }
        faults
    };
    let (ops, faults) = tokio::join!(workload.run(&client, CLIENTS, seed, &until), nemesis);
    history.ops.extend(ops);
    history.faults = faults;
    let load_s = load_started.elapsed().as_secs_f64();

    // Recovery: every unknown outcome resolved, nothing in flight, then the
    // whole check, over the databases' published ports.
    let databases: Vec<String> = ["POSTGRES_1", "POSTGRES_2", "POSTGRES_3"]
        .iter()
        .map(|p| format!("postgres://postgres@127.0.0.1:{}/wallet", project.port(p)))
        .collect();
    let checked = chaos::settle_and_check(
        &client,
        harness,
        &workload,
        &mut history,
        &databases,
        Duration::from_secs(30),
    )
    .await
    .expect("settling and checking ran");
    let transfers = history
        .ops
        .iter()
        .filter(|op| matches!(op.request, chaos::history::Request::Transfer { .. }))
        .count();
    eprintln!(
        "compose test: {} operations ({transfers} transfers), {} faults, {} anomalies",
        history.ops.len(),
        history.faults.len(),
        checked.anomalies.len()
    );
    for a in checked.anomalies.iter().take(20) {
        eprintln!("  anomaly: {a:?}");
    }
    assert!(
        checked.anomalies.is_empty(),
        "anomalies: {:?}",
        checked.anomalies
    );
    assert!(!checked.audit.in_flight(), "something still in flight");
    assert_eq!(checked.audit.prepared_legs, 0);
    assert_eq!(history.faults.len(), 2);
    assert!(transfers >= 1_000, "only {transfers} transfers");

    // Prometheus scraped every service, and the dashboard renders.
    let http = reqwest::Client::new();
    let prometheus = project.url("PROMETHEUS");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up: serde_json::Value = http
            .get(format!("{prometheus}/api/v1/query?query=up"))
            .send()
            .await
            .expect("prometheus answers")
            .json()
            .await
            .expect("json");
        let targets = up["data"]["result"].as_array().cloned().unwrap_or_default();
        let all_up = targets.len() == 8 && targets.iter().all(|t| t["value"][1] == "1");
        if all_up {
            break;
        }
        assert!(Instant::now() < deadline, "targets not all up: {up}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let committed: serde_json::Value = http
        .get(format!(
            "{prometheus}/api/v1/query?query=sum(wallet_transfers_total)"
        ))
        .send()
        .await
        .expect("prometheus answers")
        .json()
        .await
        .expect("json");
    eprintln!("compose test: Prometheus counts {committed}");
    let console = http
        .get(format!("{prometheus}/consoles/wallet.html"))
        .send()
        .await
        .expect("console answers");
    assert_eq!(console.status().as_u16(), 200);
    let page = console.text().await.expect("console page");
    assert!(
        page.contains("Wallet cluster") && page.contains("node-1"),
        "{page}"
    );

    let down_started = Instant::now();
    let down = tokio::task::block_in_place(|| project.compose(&["down", "--rmi", "all"]));
    assert!(down, "compose down failed");
    eprintln!(
        "compose test: build and up {up_s:.0} s, load with faults {load_s:.0} s, \
         down {:.0} s, total {:.0} s",
        down_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
