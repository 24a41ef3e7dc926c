//! One of our own HTTP services (a participant, a coordinator), run as a
//! real process from the workspace's build output.
//!
//! The service is configured by environment variables, appends its output
//! to `DIR/NAME.log`, and counts as started once `GET http://ADDR/health`
//! answers 200.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;

use crate::ports::wait_port_free;
use crate::postgres::absolute;
use crate::process::{self, log_tail, Proc, POLL};

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
    /// The process, while started.
    proc: Option<Proc>,
}

impl Service {
    /// Starts the service and waits until its health check answers 200. If
    /// the process exits first, or the timeout passes, the error carries the
    /// end of its log.
    pub async fn start(mut config: ServiceConfig) -> Result<Service> {
        config.dir = absolute(&config.dir)?;
        std::fs::create_dir_all(&config.dir)
            .with_context(|| format!("creating {}", config.dir.display()))?;
        let mut service = Service { config, proc: None };
        service.launch().await?;
        Ok(service)
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

    /// Its PID, unless it is known to have exited.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::live_pid)
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// How it is run.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// Its log (stdout and stderr, appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.config.dir.join(format!("{}.log", self.config.name))
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// Waits up to `timeout` for the process to exit on its own (a crash
    /// hook, say) and returns how it exited.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let proc = self
            .proc
            .as_mut()
            .ok_or_else(|| anyhow!("{} was never started", self.config.name))?;
        proc.wait_exit(timeout)
            .await
            .ok_or_else(|| anyhow!("{} still running after {timeout:?}", self.config.name))
    }

    /// SIGKILL; returns once it is gone and its port is free.
    pub async fn kill9(&mut self) -> Result<()> {
        let Some(proc) = self.proc.as_mut() else {
            return Ok(());
        };
        proc.terminate(Signal::SIGKILL, Duration::from_secs(10))
            .await?;
        wait_port_free(self.config.addr.port(), Duration::from_secs(10)).await?;
        tracing::info!(name = %self.config.name, "killed (SIGKILL)");
        Ok(())
    }

    /// SIGSTOP: the process freezes, its sockets stay open and its callers
    /// wait, as when a machine stalls. [`Service::resume`] undoes it.
    pub fn pause(&mut self) -> Result<()> {
        self.proc
            .as_mut()
            .map_or(Ok(()), |p| p.signal(Signal::SIGSTOP))
    }

    /// SIGCONT after [`Service::pause`].
    pub fn resume(&mut self) -> Result<()> {
        self.proc
            .as_mut()
            .map_or(Ok(()), |p| p.signal(Signal::SIGCONT))
    }

    /// SIGTERM, then SIGKILL if it has not exited after the stop timeout
    /// (10 s by default).
    pub async fn stop(&mut self) -> Result<()> {
        let Some(proc) = self.proc.as_mut() else {
            return Ok(());
        };
        let status = proc
            .terminate(Signal::SIGTERM, self.config.stop_timeout)
            .await?;
        wait_port_free(self.config.addr.port(), Duration::from_secs(10)).await?;
        tracing::info!(name = %self.config.name, %status, "stopped");
        Ok(())
    }

    /// Starts it again with the same config (same port), stopping it first
    /// if it still runs; returns once it is healthy.
    pub async fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            self.stop().await?;
        }
        self.launch().await
    }

    async fn launch(&mut self) -> Result<()> {
        let config = &self.config;
        let log_path = self.log_path();
        let log = process::open_log(&log_path, &format!("{} on {}", config.name, config.addr))?;
        let (out, err) = process::log_stdio(&log)?;
        let mut cmd = Command::new(&config.program);
        cmd.args(&config.args)
            .envs(config.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&config.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let started = Instant::now();
        self.proc = Some(Proc::new(process::spawn(cmd).with_context(|| {
            format!("starting {} ({})", config.name, config.program.display())
        })?));
        self.wait_healthy().await?;
        tracing::info!(
            name = %self.config.name,
            addr = %self.config.addr,
            pid = self.pid(),
            elapsed = ?started.elapsed(),
            "ready"
        );
        Ok(())
    }

    async fn wait_healthy(&mut self) -> Result<()> {
        let client = http_client()?;
        let url = format!("{}{}", self.url(), self.config.health_path);
        let timeout = self.config.startup_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.proc.as_mut().and_then(Proc::exited) {
                bail!(
                    "{} exited during startup ({status}); end of {}:\n{}",
                    self.config.name,
                    self.log_path().display(),
                    self.log_tail(40)
                );
            }
            if let Ok(resp) = client.get(&url).send().await {
                if resp.status() == reqwest::StatusCode::OK {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not answer 200 on {url} within {timeout:?}; end of {}:\n{}",
                    self.config.name,
                    self.log_path().display(),
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(proc) = self.proc.as_mut() {
            proc.kill_blocking();
        }
    }
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
