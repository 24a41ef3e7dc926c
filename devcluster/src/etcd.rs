//! One real single-member etcd in a directory of its own.
//!
//! Layout of `dir`: `data/` (etcd's data directory) and `etcd.log`.
//! The member is called `default`; it listens on 127.0.0.1 only. Its
//! election timeout is short (a single member has nobody to wait for), so it
//! is up in a fraction of a second instead of one to two seconds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;

use crate::ports::{local, wait_port_free};
use crate::postgres::absolute;
use crate::process::{self, log_tail, Proc, POLL};

/// How long a start may take.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// An etcd server we started.
#[derive(Debug)]
pub struct Etcd {
    /// The directory that holds `data/` and `etcd.log`.
    dir: PathBuf,
    /// Port for clients (gRPC and HTTP).
    client_port: u16,
    /// Port for peers (unused by a single member, but etcd binds it).
    peer_port: u16,
    /// The etcd process, while started.
    proc: Option<Proc>,
    /// The etcd binary.
    program: PathBuf,
}

impl Etcd {
    /// Starts etcd with its data in `dir/data` (kept if already there) and
    /// returns once `/health` says it is healthy.
    pub async fn start(dir: impl AsRef<Path>, client_port: u16, peer_port: u16) -> Result<Etcd> {
        let dir = absolute(dir.as_ref())?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut etcd = Etcd {
            dir,
            client_port,
            peer_port,
            proc: None,
            program: program(),
        };
        etcd.launch().await?;
        Ok(etcd)
    }

    /// `http://127.0.0.1:CLIENT_PORT`, the endpoint for clients.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The endpoints list clients take (one member).
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.url()]
    }

    /// `127.0.0.1:CLIENT_PORT`.
    pub fn addr(&self) -> SocketAddr {
        local(self.client_port)
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The peer port.
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// etcd's PID, unless it is known to have exited.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::live_pid)
    }

    /// Whether etcd is alive.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// The directory given to [`Etcd::start`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// etcd's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// etcd's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    /// SIGKILL; returns once it is gone and both ports are free.
    pub async fn kill9(&mut self) -> Result<()> {
        let Some(proc) = self.proc.as_mut() else {
            return Ok(());
        };
        proc.terminate(Signal::SIGKILL, Duration::from_secs(10))
            .await?;
        self.wait_ports_free().await?;
        tracing::info!(port = self.client_port, "etcd killed (SIGKILL)");
        Ok(())
    }

    /// SIGSTOP: etcd freezes with its sockets open. [`Etcd::resume`] undoes it.
    pub fn pause(&mut self) -> Result<()> {
        self.proc
            .as_mut()
            .map_or(Ok(()), |p| p.signal(Signal::SIGSTOP))
    }

    /// SIGCONT after [`Etcd::pause`].
    pub fn resume(&mut self) -> Result<()> {
        self.proc
            .as_mut()
            .map_or(Ok(()), |p| p.signal(Signal::SIGCONT))
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(proc) = self.proc.as_mut() else {
            return Ok(());
        };
        let status = proc
            .terminate(Signal::SIGTERM, Duration::from_secs(10))
            .await?;
        self.wait_ports_free().await?;
        tracing::info!(port = self.client_port, %status, "etcd stopped");
        Ok(())
    }

    /// Starts etcd again on the same directory and ports (stopping it first
    /// if it still runs); returns once it is healthy.
    pub async fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            self.stop().await?;
        }
        self.launch().await
    }

    async fn wait_ports_free(&self) -> Result<()> {
        wait_port_free(self.client_port, Duration::from_secs(10)).await?;
        wait_port_free(self.peer_port, Duration::from_secs(10)).await
    }

    async fn launch(&mut self) -> Result<()> {
        let log_path = self.log_path();
        let log = process::open_log(&log_path, &format!("etcd on port {}", self.client_port))?;
        let (out, err) = process::log_stdio(&log)?;
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(&self.program);
        cmd.arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("default={peer}"))
            .args(["--heartbeat-interval", "25", "--election-timeout", "250"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let started = Instant::now();
        self.proc = Some(Proc::new(process::spawn(cmd)?));
        self.wait_healthy().await?;
        tracing::info!(
            port = self.client_port,
            pid = self.pid(),
            elapsed = ?started.elapsed(),
            "etcd ready"
        );
        Ok(())
    }

    async fn wait_healthy(&mut self) -> Result<()> {
        #[derive(serde::Deserialize)]
        struct Health {
            health: String,
        }
        let client = crate::service::http_client()?;
        let url = format!("{}/health", self.url());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.proc.as_mut().and_then(Proc::exited) {
                bail!(
                    "etcd on port {} exited during startup ({status}); end of {}:\n{}",
                    self.client_port,
                    self.log_path().display(),
                    log_tail(&self.log_path(), 30)
                );
            }
            if let Ok(resp) = client.get(&url).send().await {
                if let Ok(health) = resp.json::<Health>().await {
                    if health.health == "true" {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "etcd on port {} not healthy after {START_TIMEOUT:?}; end of {}:\n{}",
                    self.client_port,
                    self.log_path().display(),
                    log_tail(&self.log_path(), 30)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(proc) = self.proc.as_mut() {
            proc.kill_blocking();
        }
    }
}

/// The etcd binary: `$WALLET_ETCD_BIN`, else `etcd` on `PATH`, else `/usr/bin/etcd`.
fn program() -> PathBuf {
    if let Some(bin) = std::env::var_os("WALLET_ETCD_BIN") {
        return PathBuf::from(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}
