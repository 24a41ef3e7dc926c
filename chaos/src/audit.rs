//! The audit: every participant's Postgres read directly into the checkers'
//! model of what the cluster holds ([`wallet_history::State`]: accounts,
//! events, decision records, prepared legs, node by node). What can be
//! checked on it at rest is [`Audit::anomalies`]: the shared checks of
//! [`State::anomalies`]. (Nothing in the protocol prepares a Postgres
//! transaction, so `pg_prepared_xacts` is no part of it; the XA reference
//! benchmark, which does, rolls back and counts its own leftovers.)
//!
//! The end-to-end tests and the chaos checker both use it. The rows are
//! read by the participant's own reader ([`participant::rows`]); the checks
//! are the shared model's.

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sqlx::{Connection, PgConnection};

pub use wallet_history::state::{Applied, AuditEvent, NodeRows, State, Stored, StoredTransfer};

use super::checker::Anomaly;

/// Longest a whole read of one database may take.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything read from every participant's database: the shared model's
/// [`State`] (its fields and methods are the audit's, through `Deref`).
#[derive(Debug, Default, Clone)]
pub struct Audit {
    /// Accounts, events, records and prepared legs of every node.
    pub state: State,
}

impl Deref for Audit {
    type Target = State;

    fn deref(&self) -> &State {
        &self.state
    }
}

impl DerefMut for Audit {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Audit {
    /// Reads every database (one URL per participant).
    pub async fn read(urls: &[String]) -> Result<Audit> {
        let mut audit = Audit::default();
        for (node, url) in urls.iter().enumerate() {
            tokio::time::timeout(READ_TIMEOUT, audit.read_one(node, url))
                .await
                .with_context(|| format!("reading {url} took over {READ_TIMEOUT:?}"))?
                .with_context(|| format!("reading {url}"))?;
        }
        Ok(audit)
    }

    /// Adds what database `node` holds.
    async fn read_one(&mut self, node: usize, url: &str) -> Result<()> {
        let mut conn = PgConnection::connect(url).await?;
        let contents = participant::rows::read(&mut conn).await?;
        self.state.add_node(
            node,
            NodeRows {
                accounts: contents.accounts,
                events: contents.events,
                transfers: contents.transfers,
                prepared_legs: contents.prepared_legs,
            },
        );
        conn.close().await?;
        Ok(())
    }

    /// Reads every database until nothing is in flight any more (no hold, no
    /// pending credit, no prepared leg, no undecided or uncompleted record),
    /// or `timeout` passes; returns the last reading and how long it took.
    pub async fn wait_settled(urls: &[String], timeout: Duration) -> Result<(Audit, Duration)> {
        let started = Instant::now();
        loop {
            let audit = Audit::read(urls).await?;
            if !audit.in_flight() || started.elapsed() >= timeout {
                return Ok((audit, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Everything wrong with the databases at rest (see the module docs);
    /// empty when all is well.
    pub fn anomalies(&self) -> Vec<Anomaly> {
        self.state.anomalies()
    }

    /// Panics with every anomaly, if there is any.
    pub fn assert_settled(&self) {
        let found = self.anomalies();
        assert!(
            found.is_empty(),
            "the audit found {} anomalies:\n{}",
            found.len(),
            found
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
