//! Deterministic simulation of the transfer protocol.
//!
//! One seed, one single-threaded run: clients send JSON to the real public
//! API (`coordinator::http::router`), whose coordinator code (the transfer
//! state machine, deposits and withdrawals, recovery, batching, the client)
//! talks over a simulated network ([`net`]) to the real participant router
//! and rules (`participant::app`, `decisions`, `legs`, `movements`) on
//! in-memory stores ([`mem`]), under a paused Tokio clock. A nemesis crashes
//! and restarts coordinators and participants at any step, takes databases
//! down, cuts links (one way too), loses, duplicates and delays messages and
//! makes node clocks jump; meanwhile an operator (`mover`) moves
//! partitions between nodes (copy, fences, owner switch, roll-backs and
//! aborts). Then the faults stop, recovery must settle
//! everything within 30 s, and [`check`] verifies promises 1 to 4 and 7 of
//! `docs/promises.md` (and 6: balances equal the fold of their events).
//!
//! Every random choice comes from the seed (and Tokio's paused clock only
//! moves when every task waits), so a failing seed replays exactly.

pub mod check;
pub mod clock;
pub mod mem;
mod mover;
mod nemesis;
pub mod net;
mod world;

pub use world::{run, Options, Report};
