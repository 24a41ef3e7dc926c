//! Many clients at once over few accounts, so they contend and overdraw.
//! The test keeps its own history and checks the system against it.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;

use crate::crashes::wait_settled;
use crate::support::{Api, TestCluster};

#[derive(Clone)]
pub struct Traffic {
    pub accounts: Vec<String>,
    /// Minor units deposited into each account at setup.
    pub initial: i64,
}

impl Traffic {
    /// `n` USD accounts spread over every node, `deposit` each.
    pub async fn setup(t: &TestCluster, n: usize, deposit: &str) -> Traffic {
        let nodes = t.cluster.participants().len();
        let mut accounts = Vec::new();
        for i in 0..n {
            let a = t.accounts_on(i % nodes, &format!("acct{i}"), 1).remove(0);
            t.open(&a, "USD").await;
            t.deposit(&a, deposit, "USD").await;
            accounts.push(a);
        }
        let initial =
            wallet_shared::Amount::parse(deposit, wallet_shared::Currency::parse("USD").unwrap())
                .unwrap()
                .minor();
        Traffic { accounts, initial }
    }
}

#[derive(Debug, Clone)]
pub struct Op {
    pub id: uuid::Uuid,
    pub from: String,
    pub to: String,
    pub cents: i64,
    pub status: u16,
    /// The body's `status` (committed, aborted, pending), if any.
    pub state: Option<String>,
    /// The body's error `code`, if any.
    pub code: Option<String>,
    pub invoked: tokio::time::Instant,
    pub completed: tokio::time::Instant,
}

impl Op {
    pub fn overdraft(&self) -> bool {
        self.code.as_deref() == Some("insufficient_funds")
    }
}

/// `clients` concurrent loops of random transfers (up to 60% of an initial
/// balance, so overdrafts are frequent) for `duration`.
pub async fn run_traffic(
    api: Api,
    traffic: Traffic,
    clients: usize,
    duration: Duration,
) -> Vec<Op> {
    let deadline = tokio::time::Instant::now() + duration;
    let (api, traffic) = (&api, &traffic);
    let loops = (0..clients).map(|c| async move {
        let mut rng = fastrand::Rng::with_seed(c as u64);
        let mut ops = Vec::new();
        while tokio::time::Instant::now() < deadline {
            let from = &traffic.accounts[rng.usize(..traffic.accounts.len())];
            let to = &traffic.accounts[rng.usize(..traffic.accounts.len())];
            if from == to {
                continue;
            }
            let cents = rng.i64(1..=traffic.initial * 6 / 10);
            let id = uuid::Uuid::new_v4();
            let invoked = tokio::time::Instant::now();
            let amount = format!("{}.{:02}", cents / 100, cents % 100);
            let r = api
                .post(
                    "/v1/wallet/balance_transfer",
                    TestCluster::transfer_body(id, from, to, &amount, "USD"),
                )
                .await;
            let state = r.body["status"].as_str().map(String::from);
            let code = r.body["code"].as_str().map(String::from);
            ops.push(Op {
                id,
                from: from.clone(),
                to: to.clone(),
                cents,
                status: r.status,
                state,
                code,
                invoked,
                completed: tokio::time::Instant::now(),
            });
        }
        ops
    });
    join_all(loops).await.into_iter().flatten().collect()
}

/// Settles every transfer whose answer was not final, then checks: each
/// committed transfer applied exactly once, each aborted one not at all,
/// balances equal what the history says, money conserved, replay agrees,
/// nothing held.
pub async fn check_history(t: &TestCluster, traffic: &Traffic, history: &[Op]) {
    let mut expected: BTreeMap<&str, i64> = traffic
        .accounts
        .iter()
        .map(|a| (a.as_str(), traffic.initial))
        .collect();
    let mut finals = Vec::new();
    for op in history {
        let committed = match (op.status, op.state.as_deref()) {
            (200, Some("committed")) => true,
            (_, Some("aborted")) => false,
            _ => {
                // Unknown to the client: find out how it ended.
                let status = t.settled(op.id, Duration::from_secs(30)).await;
                status["status"] == "committed"
            }
        };
        if committed {
            *expected.get_mut(op.from.as_str()).unwrap() -= op.cents;
            *expected.get_mut(op.to.as_str()).unwrap() += op.cents;
        }
        finals.push((op, committed));
    }
    let audit = wait_settled(t).await;
    for (op, committed) in finals {
        let want = if committed { (1, 1) } else { (0, 0) };
        assert_eq!(audit.applied(op.id), want, "transfer {op:?}");
        if op.status == 200 {
            assert!(committed, "acknowledged transfer {} lost", op.id);
        }
    }
    for (a, cents) in &expected {
        assert_eq!(audit.posted(a), *cents, "balance of {a}");
    }
    assert_eq!(
        audit.total("USD"),
        traffic.initial * traffic.accounts.len() as i64,
        "money was created or destroyed"
    );
    // Fresh transfers still work.
    let r = t
        .transfer(&traffic.accounts[0], &traffic.accounts[1], "0.01")
        .await;
    assert!(
        r.status == 200 || r.body["code"] == "insufficient_funds",
        "{}",
        r.body
    );
}

#[tokio::test]
async fn concurrent_random_transfers_conserve_money() {
    let t = TestCluster::start().await;
    let traffic = Traffic::setup(&t, 10, "100").await;
    let history = run_traffic(t.api(), traffic.clone(), 8, Duration::from_secs(6)).await;
    let committed = history.iter().filter(|op| op.status == 200).count();
    let overdrawn = history.iter().filter(|op| op.overdraft()).count();
    assert!(
        committed > 20 && overdrawn > 0,
        "{committed} committed, {overdrawn} overdrafts refused"
    );
    for op in &history {
        assert!(
            op.status == 200 || op.overdraft(),
            "without faults every answer is final: {op:?}"
        );
    }
    check_history(&t, &traffic, &history).await;
}
