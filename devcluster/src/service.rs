//! One of our own HTTP services (a participant, a coordinator), run as a
//! real process from the workspace's build output.
//!
//! The service is configured by environment variables, appends its output
//! to `DIR/NAME.log`, and counts as started once `GET http://ADDR/health`
//! answers 200. Its lifecycle (`kill9`, `pause`, `stop`, `restart`, ...) is
//! the one of every child ([`Supervised`]).

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;

use crate::postgres::absolute;
use crate::process::{Launch, Ready, Supervised};

/// How to run a service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Name for logs and the manifest, e.g. `participant-1`; also the log's
    /// file name (`NAME.log`).
    pub name: String,
    /// The executable.
    pub program: PathBuf,
    /// Command-line arguments.
    pub args: Vec<String>,
    /// Environment variables set on top of ours (later entries win).
    pub env: Vec<(String, String)>,
    /// Working directory, holding the log; created if missing.
    pub dir: PathBuf,
    /// Address the service's HTTP server listens on.
    pub addr: SocketAddr,
    /// Path that answers 200 once the service is ready.
    pub health_path: String,
    /// How long a start may take before it counts as failed.
    pub startup_timeout: Duration,
    /// How long a stop waits after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
}

impl ServiceConfig {
    /// A config with no arguments or environment, `/health`, a 30 s startup
    /// timeout and a 10 s stop timeout.
    pub fn new(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        dir: impl Into<PathBuf>,
        addr: SocketAddr,
    ) -> Self {
        ServiceConfig {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            dir: dir.into(),
            addr,
            health_path: "/health".into(),
            startup_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(10),
        }
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Adds command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

/// A service process we started.
#[derive(Debug)]
pub struct Service {
    /// How it was (and will be re-) started.
    config: ServiceConfig,
    /// The process: its `pid`, `kill9`, `pause`, `resume`, `stop`,
    /// `restart`, `wait_exit` and log, through `Deref`.
    process: Supervised,
}

impl Service {
    /// Starts the service and waits until its health check answers 200. If
    /// the process exits first, or the timeout passes, the error carries the
    /// end of its log.
    pub async fn start(mut config: ServiceConfig) -> Result<Service> {
        config.dir = absolute(&config.dir)?;
        std::fs::create_dir_all(&config.dir)
            .with_context(|| format!("creating {}", config.dir.display()))?;
        let launch = Launch::new(&config.program, &config.dir)
            .args(&config.args)
            .envs(config.env.iter().map(|(k, v)| (k, v)));
        let url = format!("http://{}{}", config.addr, config.health_path);
        let http = http_client()?;
        let ready = Ready::new(format!("GET {url} answers 200"), move || {
            answers_ok(http.clone(), url.clone())
        });
        let mut process = Supervised::new(
            format!("{} on {}", config.name, config.addr),
            launch,
            config.dir.join(format!("{}.log", config.name)),
            ready,
        )
        .start_timeout(config.startup_timeout)
        .stop_with(Signal::SIGTERM, config.stop_timeout)
        .ports([config.addr.port()]);
        process.start().await?;
        Ok(Service { config, process })
    }

    /// Its name, e.g. `participant-1`.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.config.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.config.addr)
    }

    /// How it is run.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }
}

impl Deref for Service {
    type Target = Supervised;
    fn deref(&self) -> &Supervised {
        &self.process
    }
}

impl DerefMut for Service {
    fn deref_mut(&mut self) -> &mut Supervised {
        &mut self.process
    }
}

/// Whether `GET url` answers 200.
async fn answers_ok(client: reqwest::Client, url: String) -> Result<bool> {
    Ok(client
        .get(&url)
        .send()
        .await
        .is_ok_and(|resp| resp.status() == reqwest::StatusCode::OK))
}

/// An HTTP client for health checks: short timeouts, never a proxy.
pub(crate) fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .build()
        .context("building an HTTP client")
}

/// Finds one of the workspace's binaries: in `$WALLET_BIN_DIR` if set, else
/// in the nearest directory above the running executable that holds it
/// (tests run from `target/debug/deps`, `devcluster` from `target/debug`).
pub fn find_binary(name: &str) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WALLET_BIN_DIR") {
        let path = PathBuf::from(dir).join(name);
        if path.is_file() {
            return Ok(path);
        }
        bail!("{} not found (WALLET_BIN_DIR is set)", path.display());
    }
    let exe = std::env::current_exe().context("finding the running executable")?;
    find_binary_from(&exe, name).ok_or_else(|| {
        anyhow!(
            "binary {name:?} not found in any directory above {}; \
             build it first (cargo build --workspace) or set WALLET_BIN_DIR",
            exe.display()
        )
    })
}

/// The first `DIR/name` that is a file, for `DIR` the ancestors of `start`.
pub fn find_binary_from(start: &Path, name: &str) -> Option<PathBuf> {
    start
        .ancestors()
        .skip(1)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
