//! One model of a test run, shared by the deterministic simulation (`sim`)
//! and the chaos suite (`chaos`), so that both hold the cluster to the same
//! promises in the same words:
//!
//! - [`history`]: what the clients asked and were told ([`Op`]s: the
//!   request, retry, outcome, answer and times) and the faults injected;
//! - [`state`]: what the cluster ended up holding, node by node (balance
//!   rows, events, decision records), and what is wrong with it at rest;
//! - [`anomaly`]: one list of what can go wrong, by kind;
//! - [`check`]: the checker of the history against the state.
//!
//! No I/O here: the simulation builds the [`State`] from its in-memory
//! stores, the chaos suite from every participant's Postgres
//! (`participant::rows`), and each runs its own clients.

pub mod anomaly;
pub mod check;
pub mod history;
pub mod state;

pub use anomaly::{Anomaly, AnomalyKind};
pub use check::{check, minor_units, Settling};
pub use history::{
    classify, Fault, FaultKind, History, HttpCall, Known, Op, Outcome, Phase, Request,
};
pub use state::{Applied, AuditEvent, NodeRows, State, Stored, StoredTransfer};
