//! Many clients at once over few accounts, so they contend and overdraw.
//! The clients are the chaos suite's (`chaos::workload`), with
//! transfers only and no faults; its checker holds the system to the
//! recorded history.

use std::time::Duration;

use chaos::history::{Clock, History, Op, Outcome};
use chaos::workload::{place_accounts, Client, Mix, Workload};
use chaos::{Checked, Until};
use wallet_shared::Currency;

use crate::support::TestCluster;

/// Clients of one coordinator, their accounts, and what they did.
pub struct Traffic {
    pub client: Client,
    pub workload: Workload,
    pub history: History,
    /// Process number of the test's own requests (after the clients').
    harness: usize,
}

impl Traffic {
    /// Three USD accounts on every node, each funded with 100.00; clients
    /// that only transfer, up to 60% of that at a time.
    pub async fn setup(t: &TestCluster, clients: usize) -> Traffic {
        let usd = Currency::parse("USD").unwrap();
        Self::setup_with(
            t,
            clients,
            Workload {
                accounts: place_accounts(&t.map, &[(usd, 3)]),
                initial: 10_000,
                mix: Mix {
                    transfer: 100,
                    deposit: 0,
                    withdraw: 0,
                    read: 0,
                    retry: 0,
                    cross_currency: 0,
                },
            },
        )
        .await
    }

    /// Opens and funds `workload`'s accounts for `clients` clients.
    pub async fn setup_with(t: &TestCluster, clients: usize, workload: Workload) -> Traffic {
        let client = Client::new(
            vec![t.api().base],
            t.cluster.admin_key(),
            Clock::start(),
            Duration::from_secs(30),
        )
        .expect("HTTP client");
        let mut history = History::default();
        chaos::fund(&client, clients, &workload, 1, &mut history)
            .await
            .expect("accounts opened and funded");
        Traffic {
            client,
            workload,
            history,
            harness: clients,
        }
    }

    /// Runs the clients for `duration`; returns what they did this time.
    pub async fn run(&mut self, duration: Duration) -> Vec<Op> {
        let ops = self
            .workload
            .run(&self.client, self.harness, 1, &Until::after(duration))
            .await;
        self.history.ops.extend(ops.iter().cloned());
        ops
    }

    /// Resolves every unknown outcome, waits for the cluster to settle,
    /// and asserts that the checker finds nothing.
    pub async fn check(mut self, t: &TestCluster) -> Checked {
        let checked = chaos::settle_and_check(
            &self.client,
            self.harness,
            &self.workload,
            &mut self.history,
            &t.databases(),
            Duration::from_secs(30),
        )
        .await
        .expect("settle and check");
        assert!(
            checked.anomalies.is_empty(),
            "{} anomalies:\n{}",
            checked.anomalies.len(),
            checked
                .anomalies
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        checked
    }
}

#[tokio::test]
async fn concurrent_random_transfers_conserve_money() {
    let t = TestCluster::start().await;
    let mut traffic = Traffic::setup(&t, 8).await;
    let history = traffic.run(Duration::from_secs(6)).await;
    let committed = history
        .iter()
        .filter(|op| op.outcome == Outcome::Ok)
        .count();
    let overdrawn = history
        .iter()
        .filter(|op| op.code() == Some("insufficient_funds"))
        .count();
    assert!(
        committed > 20 && overdrawn > 0,
        "{committed} committed, {overdrawn} overdrafts refused"
    );
    for op in &history {
        assert!(
            op.status == Some(200) || op.code() == Some("insufficient_funds"),
            "without faults every answer is final: {op:?}"
        );
    }
    traffic.check(&t).await;
}
