//! A whole local cluster: etcd, one Postgres per participant, the
//! participants, the coordinators, all real processes.
//!
//! Layout of the root directory: `etcd/`, `postgres-N/`, `participant-N/`,
//! `coordinator-N/`, each with its log. Participant `i` (0-based in the
//! accessors) is node `node-{i+1}`, backed by `postgres-{i+1}`.
//!
//! Dropping a [`Cluster`] SIGKILLs every process (coordinators first, etcd
//! last), also while a test panics, and removes a temporary root. Set
//! `DEVCLUSTER_KEEP=1` to keep a temporary root for a post-mortem; when a test
//! panics, the ends of the services' logs are printed to stderr.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::future::try_join_all;
use serde::Serialize;
use wallet_shared::auth::{ApiKey, KeyRecord, KeyStore, Scope};
use wallet_shared::map::MapError;
use wallet_shared::secret::Secret;
use wallet_shared::{MapStore, PartitionMap};

use crate::etcd::Etcd;
use crate::ports::{free_port, local, port_is_free};
use crate::postgres::{absolute, Postgres};
use crate::proxy::Proxy;
use crate::service::{find_binary, Service, ServiceConfig};

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of participants (and of Postgres servers).
    pub participants: usize,
    /// Number of coordinators started with the cluster.
    pub coordinators: usize,
    /// Partition count of the map written at start.
    pub partitions: u32,
    /// Root directory; `None`: a temporary directory, removed on drop.
    pub root: Option<PathBuf>,
    /// Fixed ports (for `devcluster run`); `None`: free ports.
    pub ports: Option<FixedPorts>,
    /// Key prefix of the partition map in etcd.
    pub etcd_prefix: String,
    /// Extra environment for every coordinator.
    pub coordinator_env: Vec<(String, String)>,
    /// Extra environment for every participant.
    pub participant_env: Vec<(String, String)>,
    /// Where the `participant` and `coordinator` binaries are; `None`: see
    /// [`find_binary`].
    pub bin_dir: Option<PathBuf>,
    /// Puts a fault-injecting [`Proxy`] in front of each participant (the
    /// partition map names the proxies, so coordinators reach participants
    /// only through them) and one between each coordinator and etcd
    /// (participants reach etcd directly). For the chaos suite.
    pub proxies: bool,
    /// Starts the projector too, with its read models in the database
    /// [`PROJECTOR_DATABASE`] of the first Postgres server.
    pub projector: bool,
    /// Extra environment for the projector.
    pub projector_env: Vec<(String, String)>,
}

/// The projector's database, on the first Postgres server.
pub const PROJECTOR_DATABASE: &str = "projections";

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            participants: 3,
            coordinators: 1,
            partitions: 64,
            root: None,
            ports: None,
            etcd_prefix: "/wallet/".into(),
            coordinator_env: Vec::new(),
            participant_env: Vec::new(),
            bin_dir: None,
            proxies: false,
            projector: false,
            projector_env: Vec::new(),
        }
    }
}

/// Fixed ports; the `N`th component of a kind gets `first + N - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedPorts {
    /// etcd's client port.
    pub etcd_client: u16,
    /// etcd's peer port.
    pub etcd_peer: u16,
    /// The first Postgres server's port.
    pub postgres: u16,
    /// The first participant's port.
    pub participant: u16,
    /// The first coordinator's port.
    pub coordinator: u16,
    /// The projector's port.
    pub projector: u16,
}

impl Default for FixedPorts {
    /// etcd 2379/2380, Postgres 5433.., participants 7001.., coordinators 8080...
    fn default() -> Self {
        FixedPorts {
            etcd_client: 2379,
            etcd_peer: 2380,
            postgres: 5433,
            participant: 7001,
            coordinator: 8080,
            projector: 9100,
        }
    }
}

/// A running cluster. Fields are in the order processes die on drop.
pub struct Cluster {
    /// With [`ClusterOptions::projector`]: the projector.
    projector: Option<Service>,
    /// Coordinators, in start order (including ones started later).
    coordinators: Vec<Service>,
    /// Participants; index `i` is node `node-{i+1}`.
    participants: Vec<Service>,
    /// Postgres servers; index `i` backs participant `i`.
    postgres: Vec<Postgres>,
    /// The etcd member.
    etcd: Etcd,
    /// With [`ClusterOptions::proxies`]: the proxy in front of participant `i`.
    participant_proxies: Vec<Proxy>,
    /// With [`ClusterOptions::proxies`]: coordinator `i`'s proxy to etcd.
    etcd_proxies: Vec<Proxy>,
    /// The root directory.
    root: PathBuf,
    /// The cluster secret's file (`cluster-secret` in the root), passed to
    /// every service as `WALLET_CLUSTER_SECRET_FILE`.
    secret_file: PathBuf,
    /// The operator's API key (scope `admin`), also in `api-key` in the root.
    admin_key: String,
    /// What the cluster was started with.
    options: ClusterOptions,
    /// Number of coordinators ever started (names and fixed ports).
    coordinators_started: usize,
    /// The temporary root, if any; dropped last, after every process died.
    temp: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Starts etcd and the Postgres servers, writes the partition map (an
    /// existing one is kept), then starts the participants and coordinators.
    pub async fn start(options: ClusterOptions) -> Result<Cluster> {
        let started = Instant::now();
        let (root, temp) = match &options.root {
            Some(root) => {
                std::fs::create_dir_all(root)
                    .with_context(|| format!("creating {}", root.display()))?;
                (absolute(root)?, None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("devcluster-")
                    .tempdir()
                    .context("creating a temporary directory")?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        // The postgres user must be able to reach its data directories.
        set_mode(&root, 0o755)?;
        let secret_file = cluster_secret_file(&root)?;

        let n = options.participants;
        let ports = match options.ports {
            Some(fixed) => Ports::fixed(fixed, n, options.coordinators)?,
            None => Ports::free(n)?,
        };

        let (etcd, postgres) = tokio::try_join!(
            Etcd::start(root.join("etcd"), ports.etcd_client, ports.etcd_peer),
            try_join_all((0..n).map(|i| Postgres::start(
                root.join(format!("postgres-{}", i + 1)),
                ports.postgres[i]
            ))),
        )?;

        let participant_proxies = if options.proxies {
            try_join_all((0..n).map(|i| {
                Proxy::start(
                    format!("participant-{}", i + 1),
                    local(ports.participants[i]),
                )
            }))
            .await?
        } else {
            Vec::new()
        };
        let nodes: Vec<(String, String)> = (0..n)
            .map(|i| {
                let url = match participant_proxies.get(i) {
                    Some(proxy) => proxy.url(),
                    None => format!("http://{}", local(ports.participants[i])),
                };
                (node_id(i), url)
            })
            .collect();
        if !nodes.is_empty() {
            write_partition_map(
                &etcd.endpoints(),
                &options.etcd_prefix,
                options.partitions,
                &nodes,
            )
            .await?;
        }
        // Before the coordinators start, so they load it.
        let admin_key =
            operator_key(&root, &secret_file, &etcd.endpoints(), &options.etcd_prefix).await?;

        let participants = if n == 0 {
            Vec::new()
        } else {
            let program = binary(&options, "participant")?;
            try_join_all((0..n).map(|i| {
                Service::start(participant_config(
                    &options,
                    &program,
                    &root,
                    i,
                    ports.participants[i],
                    &postgres[i],
                    &etcd,
                ))
            }))
            .await?
        };

        let projector = if options.projector && n > 0 {
            postgres[0].create_database(PROJECTOR_DATABASE).await?;
            let port = match options.ports {
                Some(fixed) => fixed.projector,
                None => free_port()?,
            };
            let mut config = ServiceConfig::new(
                "projector",
                binary(&options, "projector")?,
                root.join("projector"),
                local(port),
            )
            .env("WALLET_LISTEN_ADDR", local(port).to_string())
            .env(
                "WALLET_DATABASE_URL",
                postgres[0].url_of(PROJECTOR_DATABASE),
            )
            .env("WALLET_ETCD_ENDPOINTS", etcd.url())
            .env("WALLET_ETCD_PREFIX", &options.etcd_prefix)
            .env("WALLET_POLL_INTERVAL_MS", "100")
            .env(
                "WALLET_CLUSTER_SECRET_FILE",
                secret_file.display().to_string(),
            );
            config.env.extend(options.projector_env.iter().cloned());
            Some(Service::start(config).await?)
        } else {
            None
        };

        let mut cluster = Cluster {
            projector,
            coordinators: Vec::new(),
            participants,
            postgres,
            etcd,
            participant_proxies,
            etcd_proxies: Vec::new(),
            root,
            secret_file,
            admin_key,
            options,
            coordinators_started: 0,
            temp,
        };
        let mut configs = Vec::new();
        for _ in 0..cluster.options.coordinators {
            configs.push(cluster.next_coordinator(Vec::new()).await?);
        }
        cluster.coordinators = try_join_all(configs.into_iter().map(Service::start)).await?;
        tracing::info!(
            root = %cluster.root.display(),
            participants = n,
            coordinators = cluster.coordinators.len(),
            elapsed = ?started.elapsed(),
            "cluster ready"
        );
        Ok(cluster)
    }

    /// Where the cluster's binary `name` (e.g. `walletctl`) is.
    pub fn binary(&self, name: &str) -> Result<PathBuf> {
        binary(&self.options, name)
    }

    /// Starts one more Postgres server and participant (node `node-{n+1}`,
    /// on free ports) and returns its index. It is not in the partition map
    /// until someone adds it (`walletctl nodes add`).
    pub async fn add_participant(&mut self) -> Result<usize> {
        if self.options.proxies {
            bail!("adding a participant to a cluster with proxies is not supported");
        }
        let i = self.participants.len();
        let postgres =
            Postgres::start(self.root.join(format!("postgres-{}", i + 1)), free_port()?).await?;
        let program = binary(&self.options, "participant")?;
        let config = participant_config(
            &self.options,
            &program,
            &self.root,
            i,
            free_port()?,
            &postgres,
            &self.etcd,
        );
        self.postgres.push(postgres);
        self.participants.push(Service::start(config).await?);
        Ok(i)
    }

    /// Starts one more coordinator, with the cluster's coordinator
    /// environment plus `extra_env` (later entries win); returns its index.
    pub async fn start_coordinator(&mut self, extra_env: Vec<(String, String)>) -> Result<usize> {
        let config = self.next_coordinator(extra_env).await?;
        self.coordinators.push(Service::start(config).await?);
        Ok(self.coordinators.len() - 1)
    }

    async fn next_coordinator(
        &mut self,
        extra_env: Vec<(String, String)>,
    ) -> Result<ServiceConfig> {
        self.coordinators_started += 1;
        let k = self.coordinators_started;
        let port = match self.options.ports {
            Some(fixed) => fixed.coordinator + (k as u16 - 1),
            None => free_port()?,
        };
        let etcd_url = if self.options.proxies {
            let proxy = Proxy::start(format!("coordinator-{k}->etcd"), self.etcd.addr()).await?;
            let url = proxy.url();
            self.etcd_proxies.push(proxy);
            url
        } else {
            self.etcd.url()
        };
        let mut config = ServiceConfig::new(
            format!("coordinator-{k}"),
            binary(&self.options, "coordinator")?,
            self.root.join(format!("coordinator-{k}")),
            local(port),
        )
        .env("WALLET_LISTEN_ADDR", local(port).to_string())
        .env("WALLET_ETCD_ENDPOINTS", etcd_url)
        .env("WALLET_ETCD_PREFIX", &self.options.etcd_prefix)
        .env(
            "WALLET_CLUSTER_SECRET_FILE",
            self.secret_file.display().to_string(),
        );
        config
            .env
            .extend(self.options.coordinator_env.iter().cloned());
        config.env.extend(extra_env);
        Ok(config)
    }

    /// Coordinator `i` (start order, 0-based). Panics if there is none.
    pub fn coordinator(&self, i: usize) -> &Service {
        &self.coordinators[i]
    }

    /// Coordinator `i`, to kill or restart it.
    pub fn coordinator_mut(&mut self, i: usize) -> &mut Service {
        &mut self.coordinators[i]
    }

    /// Every coordinator started so far.
    pub fn coordinators(&self) -> &[Service] {
        &self.coordinators
    }

    /// Base URL of coordinator `i`.
    pub fn coordinator_url(&self, i: usize) -> String {
        self.coordinators[i].url()
    }

    /// With [`ClusterOptions::projector`]: the projector.
    pub fn projector(&self) -> Option<&Service> {
        self.projector.as_ref()
    }

    /// The projector, to kill or restart it.
    pub fn projector_mut(&mut self) -> Option<&mut Service> {
        self.projector.as_mut()
    }

    /// URL of the projector's database (whether or not it runs).
    pub fn projector_database_url(&self) -> Option<String> {
        self.postgres
            .first()
            .map(|pg| pg.url_of(PROJECTOR_DATABASE))
    }

    /// Participant `i` (0-based: participant 0 is `node-1`).
    pub fn participant(&self, i: usize) -> &Service {
        &self.participants[i]
    }

    /// Participant `i`, to kill or restart it.
    pub fn participant_mut(&mut self, i: usize) -> &mut Service {
        &mut self.participants[i]
    }

    /// Every participant.
    pub fn participants(&self) -> &[Service] {
        &self.participants
    }

    /// Base URL of participant `i`.
    pub fn participant_url(&self, i: usize) -> String {
        self.participants[i].url()
    }

    /// Node id of participant `i`: `node-{i+1}`.
    pub fn node_id(&self, i: usize) -> String {
        node_id(i)
    }

    /// The Postgres server of participant `i`.
    pub fn postgres(&self, i: usize) -> &Postgres {
        &self.postgres[i]
    }

    /// The Postgres server of participant `i`, to kill or restart it.
    pub fn postgres_mut(&mut self, i: usize) -> &mut Postgres {
        &mut self.postgres[i]
    }

    /// URL of the database of participant `i`.
    pub fn postgres_url(&self, i: usize) -> String {
        self.postgres[i].url()
    }

    /// With [`ClusterOptions::proxies`]: the proxy in front of participant
    /// `i`, through which every coordinator reaches it.
    pub fn participant_proxy(&self, i: usize) -> Option<&Proxy> {
        self.participant_proxies.get(i)
    }

    /// With [`ClusterOptions::proxies`]: the proxy through which
    /// coordinator `i` reaches etcd.
    pub fn etcd_proxy(&self, i: usize) -> Option<&Proxy> {
        self.etcd_proxies.get(i)
    }

    /// Every proxy (none without [`ClusterOptions::proxies`]).
    pub fn proxies(&self) -> impl Iterator<Item = &Proxy> {
        self.participant_proxies.iter().chain(&self.etcd_proxies)
    }

    /// The etcd member.
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// The etcd member, to kill or restart it.
    pub fn etcd_mut(&mut self) -> &mut Etcd {
        &mut self.etcd
    }

    /// etcd endpoints, as clients take them.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.etcd.endpoints()
    }

    /// Key prefix of the partition map.
    pub fn etcd_prefix(&self) -> &str {
        &self.options.etcd_prefix
    }

    /// A client of the partition map in this cluster's etcd.
    pub async fn map_store(&self) -> Result<MapStore> {
        MapStore::connect(
            &self.etcd_endpoints(),
            &self.options.etcd_prefix,
            Duration::from_secs(5),
        )
        .await
        .context("connecting to etcd")
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What the cluster was started with.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// What runs where, for people and scripts.
    pub fn manifest(&self) -> Manifest {
        let mut components = vec![Component {
            name: "etcd".into(),
            kind: "etcd",
            pid: self.etcd.pid(),
            address: self.etcd.addr().to_string(),
            url: self.etcd.url(),
            data_dir: self.etcd.data_dir(),
            log: self.etcd.log_path().to_path_buf(),
            node_id: None,
        }];
        for (i, pg) in self.postgres.iter().enumerate() {
            components.push(Component {
                name: format!("postgres-{}", i + 1),
                kind: "postgres",
                pid: pg.pid(),
                address: pg.addr().to_string(),
                url: pg.url(),
                data_dir: pg.data_dir().to_path_buf(),
                log: pg.log_path().to_path_buf(),
                node_id: None,
            });
        }
        let projector: Vec<Service> = Vec::new();
        let projector = match &self.projector {
            Some(p) => std::slice::from_ref(p),
            None => &projector[..],
        };
        for (kind, services) in [
            ("participant", &self.participants[..]),
            ("coordinator", &self.coordinators[..]),
            ("projector", projector),
        ] {
            for (i, s) in services.iter().enumerate() {
                components.push(Component {
                    name: s.name().to_string(),
                    kind,
                    pid: s.pid(),
                    address: s.addr().to_string(),
                    url: s.url(),
                    data_dir: s.dir().to_path_buf(),
                    log: s.log_path().to_path_buf(),
                    node_id: (kind == "participant").then(|| node_id(i)),
                });
            }
        }
        Manifest {
            root: self.root.clone(),
            etcd_endpoints: self.etcd_endpoints(),
            etcd_prefix: self.options.etcd_prefix.clone(),
            coordinator_url: self.coordinators.first().map(Service::url),
            coordinator_urls: self.coordinators.iter().map(Service::url).collect(),
            projector_url: self.projector.as_ref().map(Service::url),
            projector_database_url: self.projector.as_ref().and(self.projector_database_url()),
            cluster_secret_file: self.secret_file.clone(),
            api_key_file: self.api_key_file(),
            components,
        }
    }

    /// The file holding the cluster secret, for clients that sign their
    /// calls to participants (walletctl, tests).
    pub fn cluster_secret_file(&self) -> &Path {
        &self.secret_file
    }

    /// The operator's API key (tenant `operator`, scope `admin`: every
    /// account, the feed, resolve), created at the first start and kept in
    /// `api-key` in the root (mode 0600).
    pub fn admin_key(&self) -> &str {
        &self.admin_key
    }

    /// The file holding [`Cluster::admin_key`].
    pub fn api_key_file(&self) -> PathBuf {
        self.root.join(API_KEY_FILE)
    }

    /// A new API key for `tenant` with `scopes` (and `rate` requests a
    /// second, if given), returned once every running coordinator accepts it.
    pub async fn create_key(
        &self,
        tenant: &str,
        scopes: &[Scope],
        rate: Option<u32>,
    ) -> Result<String> {
        let key = create_key(
            &self.etcd_endpoints(),
            &self.options.etcd_prefix,
            &self.secret_file,
            tenant,
            scopes,
            rate,
        )
        .await?;
        self.await_key(&key, true).await?;
        Ok(key)
    }

    /// Revokes the key `key` (the whole key), returning once every running
    /// coordinator refuses it.
    pub async fn revoke_key(&self, key: &str) -> Result<()> {
        let id = ApiKey::parse(key).context("not an API key")?.id;
        KeyStore::new(self.map_store().await?).revoke(&id).await?;
        self.await_key(key, false).await
    }

    /// Waits until every running coordinator accepts (`accepted`) or
    /// refuses the key.
    pub async fn await_key(&self, key: &str, accepted: bool) -> Result<()> {
        let urls: Vec<String> = self.coordinators.iter().map(Service::url).collect();
        await_key(&urls, key, accepted).await
    }

    /// Writes [`Cluster::manifest`] as pretty JSON to `path` (atomically).
    pub fn write_manifest(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let json = serde_json::to_string_pretty(&self.manifest())?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json + "\n").with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }

    /// Stops everything gracefully: coordinators, participants, Postgres
    /// (fast shutdown), then etcd. Goes on after a failure and returns the
    /// first one.
    pub async fn stop(mut self) -> Result<()> {
        let mut first_error = None;
        let mut note = |what: &str, result: Result<()>| {
            if let Err(e) = result {
                tracing::warn!(error = %format!("{e:#}"), "stopping {what} failed");
                first_error.get_or_insert(e.context(format!("stopping {what}")));
            }
        };
        if let Some(p) = self.projector.as_mut() {
            note("the projector", p.stop().await);
        }
        let results =
            futures::future::join_all(self.coordinators.iter_mut().map(|s| s.stop())).await;
        results.into_iter().for_each(|r| note("a coordinator", r));
        let results =
            futures::future::join_all(self.participants.iter_mut().map(|s| s.stop())).await;
        results.into_iter().for_each(|r| note("a participant", r));
        let results = futures::future::join_all(self.postgres.iter_mut().map(|pg| pg.stop())).await;
        results.into_iter().for_each(|r| note("postgres", r));
        note("etcd", self.etcd.stop().await);
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "devcluster: dropping the cluster in {} during a panic",
                self.root.display()
            );
            for s in self
                .coordinators
                .iter()
                .chain(&self.participants)
                .chain(&self.projector)
            {
                eprintln!(
                    "----- end of {} -----\n{}",
                    s.log_path().display(),
                    s.log_tail(30)
                );
            }
        }
        // Kill in order: nothing should talk to a database that is gone.
        self.projector = None;
        self.coordinators.clear();
        self.participants.clear();
        self.postgres.clear();
        if std::env::var_os("DEVCLUSTER_KEEP").is_some() {
            if let Some(temp) = self.temp.take() {
                let kept = temp.keep();
                eprintln!(
                    "devcluster: DEVCLUSTER_KEEP is set; kept {}",
                    kept.display()
                );
            }
        }
    }
}

/// The cluster, as written by [`Cluster::write_manifest`].
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// Root directory of the cluster.
    pub root: PathBuf,
    /// etcd endpoints for clients.
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of the partition map.
    pub etcd_prefix: String,
    /// The first coordinator's URL: where the public API is.
    pub coordinator_url: Option<String>,
    /// Every coordinator's URL.
    pub coordinator_urls: Vec<String>,
    /// The projector's `/status` and read models, when it runs.
    pub projector_url: Option<String>,
    /// The projector's database, when it runs.
    pub projector_database_url: Option<String>,
    /// The file holding the cluster secret (walletctl reads it to sign its
    /// calls to participants).
    pub cluster_secret_file: PathBuf,
    /// The file holding the operator's API key (scope `admin`), for
    /// walletctl, the load generator and curl.
    pub api_key_file: PathBuf,
    /// Every process.
    pub components: Vec<Component>,
}

/// One process of the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct Component {
    /// e.g. `postgres-1`, `participant-2`, `coordinator-1`, `etcd`.
    pub name: String,
    /// `etcd`, `postgres`, `participant`, `coordinator` or `projector`.
    pub kind: &'static str,
    /// PID while running.
    pub pid: Option<u32>,
    /// `127.0.0.1:PORT`.
    pub address: String,
    /// How to reach it (`postgres://...` or `http://...`).
    pub url: String,
    /// Its data directory (services: their working directory).
    pub data_dir: PathBuf,
    /// Its log.
    pub log: PathBuf,
    /// Participants: their node id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

/// How participant `i` runs.
fn participant_config(
    options: &ClusterOptions,
    program: &Path,
    root: &Path,
    i: usize,
    port: u16,
    postgres: &Postgres,
    etcd: &Etcd,
) -> ServiceConfig {
    let mut config = ServiceConfig::new(
        format!("participant-{}", i + 1),
        program,
        root.join(format!("participant-{}", i + 1)),
        local(port),
    )
    .env("WALLET_NODE_ID", node_id(i))
    .env("WALLET_LISTEN_ADDR", local(port).to_string())
    .env("WALLET_DATABASE_URL", postgres.url())
    .env("WALLET_ETCD_ENDPOINTS", etcd.url())
    .env("WALLET_ETCD_PREFIX", &options.etcd_prefix)
    .env(
        "WALLET_CLUSTER_SECRET_FILE",
        root.join(CLUSTER_SECRET_FILE).display().to_string(),
    );
    config.env.extend(options.participant_env.iter().cloned());
    config
}

/// Name of the cluster secret's file in the root directory.
const CLUSTER_SECRET_FILE: &str = "cluster-secret";

/// The cluster secret's file in `root`: the one already there (a cluster
/// started again over its data keeps its secret, and with it its API keys),
/// or a new random one.
fn cluster_secret_file(root: &Path) -> Result<PathBuf> {
    let path = root.join(CLUSTER_SECRET_FILE);
    if path.exists() {
        wallet_shared::secret::Secret::from_file(&path)?;
    } else {
        wallet_shared::secret::Secret::generate().write_file(&path)?;
    }
    Ok(path)
}

/// A new API key for `tenant` in the etcd at `endpoints` (hashed with the
/// cluster secret in `secret_file`): the whole key, to use at once or to
/// hand over.
pub async fn create_key(
    endpoints: &[String],
    prefix: &str,
    secret_file: &Path,
    tenant: &str,
    scopes: &[Scope],
    rate: Option<u32>,
) -> Result<String> {
    let secret = Secret::from_file(secret_file)?;
    let (key, record) = KeyRecord::create(&secret, tenant, scopes.to_vec(), rate)
        .map_err(|e| anyhow::anyhow!(e))?;
    let store = MapStore::connect(endpoints, prefix, Duration::from_secs(5)).await?;
    KeyStore::new(store).insert(&record).await?;
    Ok(key.reveal())
}

/// Waits until every coordinator at `urls` accepts (`accepted`) or refuses
/// the key: a coordinator learns of a new or revoked key through its etcd
/// watch, a moment after the write.
pub async fn await_key(urls: &[String], key: &str, accepted: bool) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    for url in urls {
        // Any authenticated route: 401 means "not (or no longer) known".
        let probe = format!("{url}/v1/wallet/transfers/00000000-0000-4000-8000-000000000000");
        loop {
            // bearer_auth marks the header sensitive.
            let status = http
                .get(&probe)
                .bearer_auth(key)
                .send()
                .await
                .map(|r| r.status().as_u16());
            let known = matches!(status, Ok(s) if s != 401 && s < 500);
            let unknown = matches!(status, Ok(401));
            if (accepted && known) || (!accepted && unknown) {
                break;
            }
            if Instant::now() > deadline {
                bail!("coordinator {url} did not see the key change within 15 s (last answer: {status:?})");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Name of the operator's API key file in the root directory.
const API_KEY_FILE: &str = "api-key";

/// The operator's API key: the one in `root/api-key` while etcd still
/// knows it (a cluster started again over its data keeps it), else a new
/// one (tenant `operator`, scope `admin`), written there with mode 0600.
async fn operator_key(
    root: &Path,
    secret_file: &Path,
    endpoints: &[String],
    prefix: &str,
) -> Result<String> {
    let path = root.join(API_KEY_FILE);
    let store = KeyStore::new(MapStore::connect(endpoints, prefix, Duration::from_secs(5)).await?);
    let (records, _) = store.load().await?;
    if let Ok(text) = std::fs::read_to_string(&path) {
        let text = text.trim();
        if let Some(key) = ApiKey::parse(text) {
            let live = records
                .iter()
                .any(|r| r.key_id == key.id && r.revoked_at.is_none());
            if live {
                return Ok(text.to_string());
            }
        }
    }
    let secret = Secret::from_file(secret_file)?;
    let (key, record) = KeyRecord::create(&secret, "operator", vec![Scope::Admin], None)
        .map_err(|e| anyhow::anyhow!(e))?;
    store.insert(&record).await?;
    let key = key.reveal();
    Secret::from_text(&key)?.write_file(&path)?;
    tracing::info!(key_id = %record.key_id, file = %path.display(), "created the operator's API key");
    Ok(key)
}

/// Node id of participant `i`.
fn node_id(i: usize) -> String {
    format!("node-{}", i + 1)
}

fn binary(options: &ClusterOptions, name: &str) -> Result<PathBuf> {
    match &options.bin_dir {
        Some(dir) => {
            let path = dir.join(name);
            if !path.is_file() {
                bail!("{} not found (ClusterOptions::bin_dir)", path.display());
            }
            Ok(path)
        }
        None => find_binary(name),
    }
}

/// Writes the first partition map, or keeps the one already in etcd
/// (`devcluster run` on old data).
///
/// A new map is written with `MapStore::init` (partitions round-robin over
/// the nodes, `partition_count` last, so a reader sees no map until it is
/// complete); the harness test `map_init_against_real_etcd` checks it against
/// a real etcd, with and without `force`.
pub async fn write_partition_map(
    endpoints: &[String],
    prefix: &str,
    partitions: u32,
    nodes: &[(String, String)],
) -> Result<PartitionMap> {
    let timeout = Duration::from_secs(5);
    let store = MapStore::connect(endpoints, prefix, timeout)
        .await
        .context("connecting to etcd")?;
    match store.load().await {
        Ok(map) => {
            tracing::info!(
                revision = map.revision,
                partitions = map.partition_count(),
                "partition map already in etcd; kept"
            );
            if map.nodes.len() != nodes.len() {
                tracing::warn!(
                    existing = map.nodes.len(),
                    wanted = nodes.len(),
                    "the kept map names a different number of nodes (make clean-data starts afresh)"
                );
            }
            // A node's address is this run's, not data: with other ports
            // (`--free-ports`, `--base-port`) the kept map would send every
            // request to the last run's.
            let moved: Vec<(String, String)> = nodes
                .iter()
                .filter(|(id, url)| map.nodes.get(id).is_some_and(|old| old != url))
                .map(|(id, url)| (format!("nodes/{id}"), url.clone()))
                .collect();
            if moved.is_empty() {
                return Ok(map);
            }
            let map = store
                .update(map.revision, &moved, &[])
                .await
                .context("pointing the kept map at this run's node addresses")?;
            tracing::info!(nodes = moved.len(), "kept map's node addresses updated");
            return Ok(map);
        }
        Err(MapError::Missing(_)) => {}
        Err(e) => return Err(e).context("reading the partition map"),
    }
    let map = match store.init(partitions, nodes, false).await {
        Ok(map) => map,
        Err(MapError::AlreadyExists(_)) => {
            bail!("someone else wrote a partition map under {prefix:?} while the cluster started")
        }
        Err(e) => return Err(e).context("writing the partition map"),
    };
    tracing::info!(
        revision = map.revision,
        partitions = map.partition_count(),
        "partition map written"
    );
    Ok(map)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// The ports a new cluster uses.
struct Ports {
    /// etcd's client port.
    etcd_client: u16,
    /// etcd's peer port.
    etcd_peer: u16,
    /// One per Postgres server.
    postgres: Vec<u16>,
    /// One per participant.
    participants: Vec<u16>,
}

impl Ports {
    fn free(n: usize) -> Result<Ports> {
        Ok(Ports {
            etcd_client: free_port()?,
            etcd_peer: free_port()?,
            postgres: (0..n).map(|_| free_port()).collect::<Result<_>>()?,
            participants: (0..n).map(|_| free_port()).collect::<Result<_>>()?,
        })
    }

    /// The fixed ports, after checking that each one is free.
    fn fixed(fixed: FixedPorts, n: usize, coordinators: usize) -> Result<Ports> {
        let nth = |first: u16, i: usize| first + i as u16;
        let mut wanted = vec![
            ("etcd (client)".to_string(), fixed.etcd_client),
            ("etcd (peer)".to_string(), fixed.etcd_peer),
        ];
        for i in 0..n {
            wanted.push((format!("postgres-{}", i + 1), nth(fixed.postgres, i)));
            wanted.push((format!("participant-{}", i + 1), nth(fixed.participant, i)));
        }
        for i in 0..coordinators {
            wanted.push((format!("coordinator-{}", i + 1), nth(fixed.coordinator, i)));
        }
        for (who, port) in &wanted {
            if !port_is_free(*port) {
                bail!(
                    "port {port} (for {who}) is already in use on 127.0.0.1; \
                     stop whatever listens there (`ss -ltnp 'sport = :{port}'` shows it) \
                     or choose other ports"
                );
            }
        }
        Ok(Ports {
            etcd_client: fixed.etcd_client,
            etcd_peer: fixed.etcd_peer,
            postgres: (0..n).map(|i| nth(fixed.postgres, i)).collect(),
            participants: (0..n).map(|i| nth(fixed.participant, i)).collect(),
        })
    }
}
