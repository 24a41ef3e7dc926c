//! The chaos suite's checker: the one the simulation uses too
//! ([`wallet_history::check`]: the history against what every database
//! holds, once every fault is healed and everything has settled). Its
//! anomaly kinds are tested in `wallet-history` and `sim`.

pub use wallet_history::anomaly::{Anomaly, AnomalyKind};
pub use wallet_history::check::{minor_units, Settling};

use super::audit::Audit;
use super::history::History;

/// Checks everything (see [`wallet_history::check`]); returns every
/// anomaly found.
pub fn check(history: &History, audit: &Audit, settling: Settling) -> Vec<Anomaly> {
    wallet_history::check(history, &audit.state, settling)
}
