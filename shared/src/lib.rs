//! What every wallet component shares: the domain types that parse (an
//! `AccountId`, `Currency`, `Amount` or `TransactionId` that exists is valid),
//! the stable partition hash, the partition map in etcd, the messages between
//! coordinators and participants and the routes that carry them, the error codes, retries, config, logs and metrics.

pub mod admin;
pub mod auth;
pub mod config;
pub mod error;
pub mod ids;
pub mod map;
pub mod memory;
pub mod metrics;
pub mod money;
pub mod partition;
pub mod protocol;
pub mod retry;
pub mod routes;
pub mod secret;
pub mod server;
pub mod signing;
pub mod telemetry;
pub mod tls;
pub mod traces;

pub use error::{ErrorCode, Rejection};
pub use ids::{AccountId, TransactionId};
pub use map::{MapHandle, MapStore, NodeId, PartitionMap};
pub use money::{Amount, Currency};
pub use partition::PartitionId;
