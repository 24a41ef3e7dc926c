//! The chaos suite's checker: the one the simulation uses too
//! ([`wallet_history::check`]: the history against what every database
//! holds, once every fault is healed and everything has settled), and what
//! only Postgres can show ([`Audit`]'s `pg_prepared_xacts`).

pub use wallet_history::anomaly::{Anomaly, AnomalyKind};
pub use wallet_history::check::{minor_units, Settling};

use super::audit::Audit;
use super::history::History;

/// Checks everything (see [`wallet_history::check`]); returns every
/// anomaly found.
pub fn check(history: &History, audit: &Audit, settling: Settling) -> Vec<Anomaly> {
    let mut found = wallet_history::check(history, &audit.state, settling);
    found.extend(audit.postgres_anomalies());
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transaction left prepared in Postgres is the one thing this adds
    /// to the shared checker.
    #[test]
    fn a_prepared_postgres_transaction_is_caught() {
        let settling = Settling {
            healed_ms: 0.0,
            settled_ms: Some(1.0),
            limit_ms: 30_000.0,
        };
        let mut audit = Audit::default();
        assert_eq!(check(&History::default(), &audit, settling), vec![]);
        audit.prepared_xacts = 1;
        let kinds: Vec<AnomalyKind> = check(&History::default(), &audit, settling)
            .into_iter()
            .map(|a| a.kind)
            .collect();
        assert_eq!(kinds, vec![AnomalyKind::PreparedXact]);
    }
}
