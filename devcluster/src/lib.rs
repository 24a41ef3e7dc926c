//! A local cluster of real processes for development and tests: etcd, one
//! PostgreSQL server per participant, the participants and the coordinators.
//!
//! Used two ways:
//! - as a library by integration tests: [`Cluster::start`] with
//!   [`ClusterOptions::default`] starts everything in a temporary directory on
//!   free ports, and dropping the [`Cluster`] kills every process and removes
//!   the directory (also when the test panics);
//! - as the `devcluster` binary, which `make run` runs in the foreground with
//!   fixed ports and data kept in `.data/`.
//!
//! Each piece can also be used on its own: [`Postgres`], [`Etcd`] and
//! [`Service`] each start one process and wait until it is ready; each is a
//! [`Supervised`] process, the one lifecycle they share: `kill9`, `restart`,
//! `stop`, `pause`, `resume`, `wait_exit`, its PID and its log. A [`Proxy`]
//! cuts or silences a link on demand.
//!
//! Built on it, each in a crate of its own: the chaos suite (`chaos/`), the
//! benchmark (`bench/`) and the end-to-end tests (`e2e/`).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use devcluster::{Cluster, ClusterOptions};
//! let mut cluster = Cluster::start(ClusterOptions::default()).await?;
//! let api = cluster.coordinator_url(0);
//! cluster.postgres_mut(1).kill9().await?;
//! cluster.postgres_mut(1).restart().await?;
//! # let _ = api; Ok(()) }
//! ```

pub mod cluster;
pub mod etcd;
pub mod ports;
pub mod postgres;
mod process;
pub mod proxy;
pub mod service;

pub use cluster::{
    await_key, create_key, write_partition_map, Cluster, ClusterOptions, Component, FixedPorts,
    Manifest,
};
pub use etcd::Etcd;
pub use ports::free_port;
pub use postgres::Postgres;
pub use process::{log_tail, Supervised};
pub use proxy::Proxy;
pub use service::{find_binary, Service, ServiceConfig};

/// Headers that make every request of a client carry the API key `key`
/// (`reqwest::ClientBuilder::default_headers`); marked sensitive, so a
/// client's debug output does not show it.
pub fn bearer(key: &str) -> reqwest::header::HeaderMap {
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
        .expect("an API key is a valid header value");
    value.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    headers
}
