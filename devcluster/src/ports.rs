//! TCP ports on 127.0.0.1: picking a free one, checking one, waiting for one
//! to be released.
//!
//! [`free_port`] picks ports below the kernel's ephemeral range
//! (32768-60999 on Linux), so that while a component is down (killed by a
//! test, about to be restarted on the same port) an outgoing connection
//! cannot take its port as a local port. A port is never handed out twice by
//! one process.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::process::POLL;

/// Range [`free_port`] picks from.
const RANGE: std::ops::Range<u16> = 20000..32000;

/// A port on 127.0.0.1 that nothing listens on right now and that this
/// process has not handed out before.
///
/// There is a race between this check and the component binding the port;
/// it is small, and components fail loudly if it happens.
pub fn free_port() -> Result<u16> {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    if let Some(port) = pick(given, || fastrand::u16(RANGE), port_is_free) {
        return Ok(port);
    }
    // The range is crowded: fall back to what the kernel picks.
    for _ in 0..100 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if given.insert(port) {
            return Ok(port);
        }
    }
    bail!("no free TCP port found on 127.0.0.1")
}

/// Up to 1,000 candidates from `candidate`: the first that `is_free` accepts
/// and that is not in `given`, which it joins.
fn pick(
    given: &mut HashSet<u16>,
    mut candidate: impl FnMut() -> u16,
    is_free: impl Fn(u16) -> bool,
) -> Option<u16> {
    (0..1000)
        .map(|_| candidate())
        .find(|port| !given.contains(port) && is_free(*port))
        .inspect(|port| {
            given.insert(*port);
        })
}

/// Whether we could listen on 127.0.0.1:`port` now.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Waits until nothing listens on `port` any more.
pub async fn wait_port_free(port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !port_is_free(port) {
        if Instant::now() >= deadline {
            bail!("port {port} is still in use after {timeout:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_handed_out_once_and_only_when_free() {
        let mut given = HashSet::new();
        let mut next = [7, 7, 8, 9, 9, 10].into_iter().cycle();
        let free = |port| port != 8;
        assert_eq!(pick(&mut given, || next.next().unwrap(), free), Some(7));
        // 7 again is skipped (given), 8 is in use.
        assert_eq!(pick(&mut given, || next.next().unwrap(), free), Some(9));
        assert_eq!(pick(&mut given, || next.next().unwrap(), free), Some(10));
        // Nothing left: every candidate is given or in use.
        assert_eq!(pick(&mut given, || next.next().unwrap(), free), None);
        assert_eq!(given, HashSet::from([7, 9, 10]));
    }

    #[test]
    fn a_port_someone_listens_on_is_not_free() {
        let held = TcpListener::bind(local(0)).unwrap();
        let port = held.local_addr().unwrap().port();
        assert!(!port_is_free(port));
        let a = free_port().unwrap();
        let b = free_port().unwrap();
        assert_ne!(a, b);
        assert_ne!(a, port);
        assert_ne!(b, port);
    }
}
