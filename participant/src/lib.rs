//! The participant: an HTTP service in front of one Postgres database. It
//! holds the balances, legs, decision records and event log of the
//! partitions the partition map gives its node.
//!
//! A library too, so the deterministic simulation runs the same router and
//! rules on an in-memory [`store::Store`], and so the tools that write or
//! read the participant's rows straight in its database (the benchmark's
//! loader, the chaos audit) use [`bulk`] and [`rows`], whose SQL is here
//! beside the schema.
//!
//! Read in this order: `model` (the `Working` set the rules run over),
//! `decisions`, `legs` and `movements` (the pure rules), `store` and `pg`
//! (loading and saving), `app` (admission and the router), `protocol`,
//! `reads` and `admin` (the routes), `fence` and `moves` (partition moves), `retention` (pruning), `ops`
//! (liveness, readiness, metrics).

pub mod admin;
pub mod app;
pub mod audit;
pub mod bulk;
pub mod config;
pub mod decisions;
pub mod error;
pub mod fence;
pub mod history;
pub mod ledger;
pub mod legs;
pub mod memory;
pub mod model;
pub mod movements;
pub mod moves;
pub mod ops;
pub mod pg;
pub mod protocol;
pub mod reads;
pub mod retention;
pub mod rows;
pub mod store;
