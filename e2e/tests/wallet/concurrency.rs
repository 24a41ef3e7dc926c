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

/// Event times under concurrent writers, which once went back (the newest
/// event's time was read inside the locking statement, whose snapshot is
/// taken before the wait). Step by step, with the row lock as the hook:
/// another writer holds the account's row; a deposit through the
/// participant's store starts (its clock reads now) and waits on the row;
/// the holder adds an event stamped an hour ahead and commits; the deposit
/// goes on, and its event is not stamped before the holder's. The holder
/// writes its row as the participant does (`last_event_at`, the time of the
/// account's newest event, read with the lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_never_stamped_before_one_a_concurrent_writer_added() {
    stamped_after_a_concurrent_writer(
        "last_event_at = (SELECT e.at FROM events e
                           WHERE e.account_id = a.account_id AND e.seq = a.last_seq + 1)",
    )
    .await;
}

/// The same with a holder that leaves the row's `last_event_at` unknown
/// (NULL), as rows loaded in bulk have it: the newest event is then read
/// from the events, after the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_never_stamped_before_one_a_bulk_writer_added() {
    stamped_after_a_concurrent_writer("last_event_at = NULL").await;
}

/// `sets`: how the holder's update of the account row `a` sets
/// `last_event_at`.
async fn stamped_after_a_concurrent_writer(sets: &str) {
    use chrono::{DateTime, Utc};
    use participant::movements;
    use participant::store::Store;
    use sqlx::Connection;
    use wallet_shared::protocol::{Movement, MovementKind, OpenAccount};
    use wallet_shared::{AccountId, Amount, TransactionId};

    let dir = tempfile::tempdir().unwrap();
    let port = devcluster::free_port().unwrap();
    let pg = devcluster::Postgres::start(dir.path().join("pg"), port)
        .await
        .unwrap();
    let cfg: participant::config::ParticipantConfig = wallet_shared::config::from_toml(
        participant::config::DEFAULTS,
        &format!("node_id = \"node-t\"\ndatabase_url = \"{}\"", pg.url()),
    )
    .unwrap();
    let store = participant::pg::PgStore::connect(&cfg).await.unwrap();
    let account = AccountId::parse("times-1").unwrap();
    let usd = Currency::parse("USD").unwrap();
    let open = OpenAccount {
        account_id: account.clone(),
        partition: 0,
        currency: usd,
        owner: None,
    };
    store
        .transaction("open", movements::open_keys(&open), |w| {
            movements::open(w, &open)
        })
        .await
        .unwrap()
        .unwrap();

    // 1. Another writer holds the account's row.
    let mut holder = sqlx::PgConnection::connect(&pg.url()).await.unwrap();
    let mut held = holder.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM accounts WHERE account_id = $1 FOR UPDATE")
        .bind(account.as_str())
        .execute(&mut *held)
        .await
        .unwrap();

    // 2. A deposit starts and waits on that row.
    let deposit = Movement {
        transaction_id: TransactionId(uuid::Uuid::from_u128(7)),
        kind: MovementKind::Deposit,
        account_id: account.clone(),
        partition: 0,
        amount: Amount::from_minor(500).unwrap(),
        currency: usd,
        tenant: None,
    };
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .transaction("deposit", movements::keys(&deposit), |w| {
                    movements::apply(w, &deposit)
                })
                .await
        })
    };
    let mut observer = sqlx::PgConnection::connect(&pg.url()).await.unwrap();
    let since = std::time::Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut observer)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(4),
            "the deposit never waited on the row"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // 3. The holder adds an event stamped an hour ahead, and commits.
    let ahead: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO events (account_id, seq, kind, amount, at)
         SELECT account_id, last_seq + 1, 'deposited', 100, now() + interval '1 hour'
           FROM accounts WHERE account_id = $1
         RETURNING at",
    )
    .bind(account.as_str())
    .fetch_one(&mut *held)
    .await
    .unwrap();
    sqlx::query(&format!(
        "UPDATE accounts a SET last_seq = last_seq + 1, posted = posted + 100, {sets}
         WHERE account_id = $1"
    ))
    .bind(account.as_str())
    .execute(&mut *held)
    .await
    .unwrap();
    held.commit().await.unwrap();

    // 4. The deposit goes on after it: its event comes next, not earlier.
    let balance = writer.await.unwrap().unwrap().unwrap();
    assert_eq!(balance.posted, 600, "{balance:?}");
    let times: Vec<(i64, DateTime<Utc>)> =
        sqlx::query_as("SELECT seq, at FROM events WHERE account_id = $1 ORDER BY seq")
            .bind(account.as_str())
            .fetch_all(&mut observer)
            .await
            .unwrap();
    assert_eq!(
        times.len(),
        3,
        "opened, the holder's, the deposit: {times:?}"
    );
    assert_eq!(times[1], (2, ahead));
    assert!(
        times[2].1 >= ahead,
        "the deposit's event is stamped before the one before it: {times:?}"
    );
}
