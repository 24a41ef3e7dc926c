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
//! The projector registers its position on every node (`consumer_name`),
//! so a node prunes its outbox only behind it. `walletctl projections
//! rebuild` empties the models and cursors, reads every node's history
//! (event log and kept aborted transfers) and then follows each feed from
//! where it is still kept, skipping what the history gave
//! ([`Follower::rebuild`]): it never needs a feed from position 0.

pub mod config;
pub mod follow;
pub mod models;
pub mod status;

pub use follow::Follower;
pub use models::Projections;
