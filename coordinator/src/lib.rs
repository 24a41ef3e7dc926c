//! The coordinator: a stateless HTTP service that owns the public API, runs
//! the transfer protocol against the participants, and resolves in-doubt
//! transfers in the background. Run as many as you like.
//!
//! A library too, so the deterministic simulation runs the same protocol
//! code over a simulated network ([`client::Transport`]).

pub mod admin;
pub mod api;
pub mod batch;
pub mod client;
pub mod config;
pub mod machine;
pub mod movement;
pub mod resolver;
pub mod transfer;
