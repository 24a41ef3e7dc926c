//! The coordinator: a stateless HTTP service that owns the public API, runs
//! the transfer protocol against the participants, and resolves in-doubt
//! transfers in the background. Run as many as you like.
//!
//! A library too, so the deterministic simulation runs the same protocol
//! code over a simulated network ([`client::Transport`]).
//!
//! Read in this order: `machine` (the transfer protocol as a state machine),
//! `transfer` (drives it), `movement` (deposits and withdrawals),
//! `accounts` and `feed` (the rest of the application), `resolver`
//! (recovery), `batch` and `client` (how messages travel), `auth` (API
//! keys), `api`, `admin`,
//! `ops` (liveness, readiness, metrics) and `http` (the HTTP edge).

pub mod accounts;
pub mod admin;
pub mod api;
pub mod auth;
pub mod batch;
pub mod client;
pub mod config;
pub mod feed;
pub mod http;
pub mod machine;
pub mod movement;
pub mod openapi;
pub mod ops;
pub mod resolver;
pub mod transfer;
