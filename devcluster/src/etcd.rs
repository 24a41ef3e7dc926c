//! One real single-member etcd in a directory of its own.
//!
//! Layout of `dir`: `data/` (etcd's data directory) and `etcd.log`.
//! The member is called `default`; it listens on 127.0.0.1 only. Its
//! election timeout is short (a single member has nobody to wait for), so it
//! is up in a fraction of a second instead of one to two seconds.
//!
//! Its lifecycle (`kill9`, `pause`, `stop`, `restart`, ...) is the one of
//! every child ([`Supervised`]); `kill9` and `stop` return once both ports
//! are free.

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::ports::local;
use crate::postgres::absolute;
use crate::process::{Launch, Ready, Supervised};

/// An etcd server we started.
#[derive(Debug)]
pub struct Etcd {
    /// `http`, or `https` when it serves clients over TLS.
    scheme: &'static str,
    /// The directory that holds `data/` and `etcd.log`.
    dir: PathBuf,
    /// Port for clients (gRPC and HTTP).
    client_port: u16,
    /// Port for peers (unused by a single member, but etcd binds it).
    peer_port: u16,
    /// The etcd process: its `pid`, `kill9`, `pause`, `resume`, `stop`,
    /// `restart` and log, through `Deref`.
    process: Supervised,
}

impl Etcd {
    /// Starts etcd with its data in `dir/data` (kept if already there) and
    /// returns once `/health` says it is healthy.
    pub async fn start(dir: impl AsRef<Path>, client_port: u16, peer_port: u16) -> Result<Etcd> {
        Etcd::start_with(dir, client_port, peer_port, None).await
    }

    /// The same, serving clients over TLS (`https://`) with the PEM
    /// certificate `cert` and its key `key`; `/health` is then read over
    /// plain HTTP on `metrics_port`.
    pub async fn start_tls(
        dir: impl AsRef<Path>,
        client_port: u16,
        peer_port: u16,
        metrics_port: u16,
        cert: &Path,
        key: &Path,
    ) -> Result<Etcd> {
        Etcd::start_with(dir, client_port, peer_port, Some((metrics_port, cert, key))).await
    }

    async fn start_with(
        dir: impl AsRef<Path>,
        client_port: u16,
        peer_port: u16,
        tls: Option<(u16, &Path, &Path)>,
    ) -> Result<Etcd> {
        let dir = absolute(dir.as_ref())?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut launch = Launch::new(program(), &dir)
            .arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(dir.join("data"))
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
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        let mut health = format!("{client}/health");
        let mut ports = vec![client_port, peer_port];
        if let Some((metrics_port, cert, key)) = tls {
            let metrics = format!("http://127.0.0.1:{metrics_port}");
            launch = launch
                .arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key)
                .arg("--listen-metrics-urls")
                .arg(&metrics);
            health = format!("{metrics}/health");
            ports.push(metrics_port);
        }
        let http = crate::service::http_client()?;
        let ready = Ready::new(format!("{health} says healthy"), move || {
            healthy(http.clone(), health.clone())
        });
        let mut process = Supervised::new(
            format!("etcd on port {client_port}"),
            launch,
            dir.join("etcd.log"),
            ready,
        )
        .ports(ports);
        process.start().await?;
        Ok(Etcd {
            scheme,
            dir,
            client_port,
            peer_port,
            process,
        })
    }

    /// `http://127.0.0.1:CLIENT_PORT` (`https` with TLS), the endpoint for clients.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.client_port)
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

    /// The directory given to [`Etcd::start`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// etcd's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}

impl Deref for Etcd {
    type Target = Supervised;
    fn deref(&self) -> &Supervised {
        &self.process
    }
}

impl DerefMut for Etcd {
    fn deref_mut(&mut self) -> &mut Supervised {
        &mut self.process
    }
}

/// Whether etcd's `/health` at `url` says `"health": "true"`.
async fn healthy(client: reqwest::Client, url: String) -> Result<bool> {
    #[derive(serde::Deserialize)]
    struct Health {
        health: String,
    }
    let Ok(resp) = client.get(&url).send().await else {
        return Ok(false);
    };
    Ok(resp
        .json::<Health>()
        .await
        .is_ok_and(|h| h.health == "true"))
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
