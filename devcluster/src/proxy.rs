//! A fault-injecting TCP proxy: it listens on a free port on 127.0.0.1 and
//! forwards every connection to one target, until told otherwise.
//!
//! The chaos suite puts one in front of each participant (the partition map
//! names the proxy, so coordinators reach participants only through it) and
//! one between each coordinator and etcd, and switches them at run time:
//! - [`Mode::Cut`]: existing connections are reset, new ones are accepted
//!   and reset at once, as when a link goes down and the peer's kernel
//!   answers with RST;
//! - [`Mode::Blackhole`]: bytes go nowhere and nothing comes back, existing
//!   connections included, so callers wait until their own timeout; when the
//!   mode changes the held connections are reset;
//! - [`Mode::Open`]: forwarding again (connections held or cut stay gone;
//!   callers reconnect).
//!
//! Everything runs on the tokio runtime of the caller; dropping the
//! [`Proxy`] stops it and closes every connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ports::{free_port, local};

/// Longest wait for the target to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Forward both ways.
    Open,
    /// Reset every connection, old and new.
    Cut,
    /// Accept and swallow; forward and answer nothing.
    Blackhole,
}

/// Counters, for logs and reports.
#[derive(Debug, Default)]
struct Counters {
    /// Connections accepted.
    accepted: AtomicU64,
    /// Connections reset or swallowed because of a fault.
    faulted: AtomicU64,
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    /// Name for logs, e.g. `participant-1` or `coordinator-2->etcd`.
    name: String,
    /// Where it listens.
    addr: SocketAddr,
    /// Where it forwards to.
    target: SocketAddr,
    /// The current mode; every connection task watches it. Dropping it
    /// tells every task to close its connections and stop.
    mode: watch::Sender<Mode>,
    /// Shared with the tasks.
    counters: Arc<Counters>,
    /// The accept loop.
    acceptor: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `target`.
    pub async fn start(name: impl Into<String>, target: SocketAddr) -> Result<Proxy> {
        let name = name.into();
        let addr = local(free_port()?);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("proxy {name}: binding {addr}"))?;
        let (mode, rx) = watch::channel(Mode::Open);
        let counters = Arc::new(Counters::default());
        let acceptor = tokio::spawn(accept_loop(listener, target, rx, counters.clone()));
        tracing::debug!(%name, %addr, %target, "proxy listening");
        Ok(Proxy {
            name,
            addr,
            target,
            mode,
            counters,
            acceptor,
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `127.0.0.1:PORT`, where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Switches the mode; takes effect on every connection at once.
    pub fn set_mode(&self, mode: Mode) {
        let old = self.mode.send_replace(mode);
        if old != mode {
            tracing::info!(name = %self.name, from = ?old, to = ?mode, "proxy mode");
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }

    /// Connections reset or swallowed by a fault so far.
    pub fn faulted(&self) -> u64 {
        self.counters.faulted.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The tasks see the sender go away and close their connections.
        self.acceptor.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    counters: Arc<Counters>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    counters.accepted.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(serve(client, target, mode.clone(), counters.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, say: wait a little, go on.
                    tracing::warn!(error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            changed = mode.changed() => if changed.is_err() {
                return;
            },
        }
    }
}

/// One connection, from accept to close.
async fn serve(
    mut client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    counters: Arc<Counters>,
) {
    let fault = |counters: &Counters| counters.faulted.fetch_add(1, Ordering::Relaxed);
    let now = *mode.borrow_and_update();
    match now {
        Mode::Open => {}
        Mode::Cut => {
            fault(&counters);
            return reset(client);
        }
        Mode::Blackhole => {
            fault(&counters);
            return swallow(client, mode).await;
        }
    }
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await
    {
        Ok(Ok(upstream)) => upstream,
        // The target is down: the caller sees its connection reset.
        _ => return reset(client),
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let next = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => return,
        next = leaves_open(&mut mode) => next,
    };
    fault(&counters);
    reset(upstream);
    match next {
        Some(Mode::Blackhole) => swallow(client, mode).await,
        _ => reset(client),
    }
}

/// Resolves with the next mode other than [`Mode::Open`], or `None` when the
/// proxy is gone.
async fn leaves_open(mode: &mut watch::Receiver<Mode>) -> Option<Mode> {
    loop {
        mode.changed().await.ok()?;
        let now = *mode.borrow_and_update();
        if now != Mode::Open {
            return Some(now);
        }
    }
}

/// Reads and discards whatever the caller sends, answering nothing, until
/// the mode changes or the caller gives up; then resets the connection.
async fn swallow(mut client: TcpStream, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = client.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow_and_update() != Mode::Blackhole {
                    return reset(client);
                }
            }
        }
    }
}

/// Closes with RST rather than FIN, as a broken link looks to the peer.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// An echo server on a free port.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind(local(0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).await?;
        Ok(buf)
    }

    #[tokio::test]
    async fn forwards_cuts_blackholes_and_heals() {
        let proxy = Proxy::start("echo", echo().await).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut a, b"hello").await.unwrap(), b"hello");

        // Cut: the open connection breaks, a new one is reset at once.
        proxy.set_mode(Mode::Cut);
        assert!(round_trip(&mut a, b"again").await.is_err());
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut b, b"x").await.is_err());

        // Blackhole: accepted, but nothing comes back.
        proxy.set_mode(Mode::Blackhole);
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        let silent =
            tokio::time::timeout(Duration::from_millis(300), round_trip(&mut c, b"hi")).await;
        assert!(silent.is_err(), "a blackholed connection answered");

        // Healed: the held connection is reset, new ones work.
        proxy.set_mode(Mode::Open);
        let mut buf = [0u8; 1];
        let held = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await;
        assert!(matches!(held, Ok(Ok(0)) | Ok(Err(_))), "{held:?}");
        let mut d = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut d, b"back").await.unwrap(), b"back");
        assert_eq!(proxy.accepted(), 4);
        assert_eq!(proxy.faulted(), 3);
    }

    #[tokio::test]
    async fn a_dead_target_resets_the_caller() {
        let target = local(free_port().unwrap());
        let proxy = Proxy::start("nobody", target).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut s, b"x").await.is_err());
    }
}
