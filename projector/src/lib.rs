//! The projector: the query side. It follows the change feed of every
//! participant named in the partition map (`GET /internal/v1/feed`), and
//! folds the entries into read models in its own Postgres database:
//!
//! - `account_view`: each account's balance and last activity;
//! - `ledger`: totals per currency across all accounts (posted, held,
//!   pending, deposited, withdrawn);
//! - `rejected_transfers`: transfers decided aborted, by day, reason and
//!   currency.
//!
//! Each page of a node's feed is projected in one transaction together with
//! the node's cursor, moved by compare-and-set: an entry counts exactly once,
//! even with two projectors (or a rebuild) running at once. Every model is a
//! sum of per-entry deltas, so the interleaving of nodes does not matter.
//! `walletctl projections rebuild` empties the models and cursors and
//! replays every feed from its start ([`Projections::rebuild`]).

pub mod config;
pub mod follow;
pub mod models;
pub mod status;

pub use follow::Follower;
pub use models::Projections;
