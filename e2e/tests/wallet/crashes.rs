//! Crashes at the worst moments: the coordinator killed (`kill -9`, by its
//! crash hook) between prepare and decision and between decision and
//! commit; a participant's Postgres killed under traffic.

use std::time::Duration;

use devcluster::ClusterOptions;

use crate::concurrency::Traffic;
use crate::support::{quick_recovery, TestCluster};

async fn crashing_cluster(point: &str) -> TestCluster {
    let mut env = quick_recovery();
    env.push(("WALLET_CRASH_AT".into(), point.into()));
    TestCluster::start_with(ClusterOptions {
        coordinator_env: env,
        ..ClusterOptions::default()
    })
    .await
}

/// Sends a transfer to a coordinator that dies on it, waits for the death,
/// then starts a healthy coordinator and switches the helpers to it.
async fn transfer_into_crash(
    t: &mut TestCluster,
    id: uuid::Uuid,
    from: &str,
    to: &str,
    amount: &str,
) -> uuid::Uuid {
    let body = TestCluster::transfer_body(id, from, to, amount, "USD");
    let url = format!(
        "{}/v1/wallet/balance_transfer",
        t.cluster.coordinator_url(0)
    );
    let sent = t.http.post(url).json(&body).send().await;
    assert!(
        sent.is_err(),
        "the coordinator should have died mid-transfer, but answered {:?}",
        sent.map(|r| r.status())
    );
    t.cluster
        .coordinator_mut(0)
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("coordinator died");
    id
}

async fn restart_coordinator(t: &mut TestCluster) {
    t.coordinator = t
        .cluster
        .start_coordinator(quick_recovery())
        .await
        .expect("healthy coordinator starts");
}

async fn two_accounts(t: &TestCluster, prefix: &str) -> (String, String) {
    let from = t.accounts_on(0, &format!("{prefix}-from"), 1).remove(0);
    let to = t.accounts_on(1, &format!("{prefix}-to"), 1).remove(0);
    t.open(&from, "USD").await;
    t.open(&to, "USD").await;
    t.deposit(&from, "100", "USD").await;
    (from, to)
}

#[tokio::test]
async fn coordinator_killed_before_the_decision_aborts_the_transfer() {
    let mut t = crashing_cluster("after_prepare").await;
    let (from, to) = two_accounts(&t, "undecided").await;
    // The debit's node holds the decision too: its prepare went with the
    // claim, and it is held all the same.
    let id = t.transaction_id_homed_on(0);
    let id = transfer_into_crash(&mut t, id, &from, &to, "30").await;

    // It died holding the funds: the debit is prepared, nothing decided.
    let audit = t.audit().await;
    assert_eq!(audit.accounts[&from].held, 3_000);
    assert_eq!(audit.accounts[&to].pending_credit, 3_000);

    restart_coordinator(&mut t).await;
    let status = t.settled(id, Duration::from_secs(30)).await;
    assert_eq!(status["status"], "aborted", "{status}");
    assert_eq!(status["code"], "transfer_aborted");
    // A retry of the same id gets that same final answer.
    let retry = t
        .post(
            "/v1/wallet/balance_transfer",
            TestCluster::transfer_body(id, &from, &to, "30", "USD"),
        )
        .await;
    assert_eq!(
        (retry.status, retry.body["status"].as_str()),
        (409, Some("aborted"))
    );

    let audit = t.wait_settled().await;
    assert!(audit.applied(id).nothing());
    assert_eq!(audit.posted(&from), 10_000);
    assert_eq!(audit.posted(&to), 0);
}

/// After a coordinator died past its decision (commit, 30.00 out of
/// 100.00): a healthy one's recovery commits the transfer, once.
async fn recovery_commits_it_once(t: &mut TestCluster, id: uuid::Uuid, from: &str, to: &str) {
    restart_coordinator(t).await;
    let status = t.settled(id, Duration::from_secs(30)).await;
    assert_eq!(status["status"], "committed", "{status}");
    let audit = t.wait_settled().await;
    assert!(audit.applied(id).transferred_once());
    assert_eq!(audit.posted(from), 7_000);
    assert_eq!(audit.posted(to), 3_000);
    assert_eq!(t.balance(to).await, ("30.00".into(), "30.00".into()));
}

#[tokio::test]
async fn coordinator_killed_after_the_decision_commits_the_transfer() {
    let mut t = crashing_cluster("after_decision").await;
    let (from, to) = two_accounts(&t, "decided").await;
    // The decision on a third node: no leg travels with it.
    let id = t.transaction_id_homed_on(2);
    let id = transfer_into_crash(&mut t, id, &from, &to, "30").await;

    // Decided, but no leg has heard of it yet.
    let audit = t.audit().await;
    assert_eq!(audit.accounts[&from].held, 3_000);
    assert_eq!(audit.accounts[&to].posted, 0);

    recovery_commits_it_once(&mut t, id, &from, &to).await;
}

/// The decision on the debit's node: the debit is posted with the decision
/// (in its local transaction), the credit has not heard of it when the
/// coordinator dies; recovery posts the credit, and nothing is applied twice.
#[tokio::test]
async fn coordinator_killed_after_a_decision_that_took_its_leg_along_commits_the_other() {
    let mut t = crashing_cluster("after_decision").await;
    let (from, to) = two_accounts(&t, "along").await;
    let id = t.transaction_id_homed_on(0);
    let id = transfer_into_crash(&mut t, id, &from, &to, "30").await;

    let audit = t.audit().await;
    assert_eq!(audit.accounts[&from].posted, 7_000);
    assert_eq!(audit.accounts[&from].held, 0);
    assert_eq!(audit.accounts[&to].pending_credit, 3_000);
    assert_eq!(audit.accounts[&to].posted, 0);

    recovery_commits_it_once(&mut t, id, &from, &to).await;
}

/// A deposit whose coordinator dies after claiming its id, and one whose
/// coordinator dies after applying it: recovery completes both from their
/// records (applied once, on the account's node) and commits the records;
/// a retry gets that answer, and nothing is applied twice.
#[tokio::test]
async fn coordinator_killed_mid_deposit_is_completed_once_by_recovery() {
    let mut t = crashing_cluster("movement_after_claim").await;
    let account = t.accounts_on(0, "mid-deposit", 1).remove(0);
    t.open(&account, "USD").await;
    let deposit_into_crash = |t: &TestCluster| {
        // Its id lives on another node than the account: claim and
        // movement are two steps, with the crash point between them.
        let id = t.transaction_id_homed_on(1);
        let url = format!(
            "{}/v1/wallet/accounts/{account}/deposit",
            t.cluster.coordinator_url(t.coordinator)
        );
        let body = serde_json::json!({"transaction_id": id, "amount": "25.00", "currency": "USD"});
        let send = t.http.post(url).json(&body).send();
        async move {
            let sent = send.await;
            assert!(
                sent.is_err(),
                "the coordinator answered {:?}",
                sent.map(|r| r.status())
            );
            (id, body)
        }
    };

    let (claimed, claimed_body) = deposit_into_crash(&t).await;
    t.cluster
        .coordinator_mut(t.coordinator)
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("died");
    assert_eq!(t.audit().await.transfers[&claimed].state, "preparing");
    let mut env = quick_recovery();
    env.push(("WALLET_CRASH_AT".into(), "movement_after_apply".into()));
    t.coordinator = t
        .cluster
        .start_coordinator(env)
        .await
        .expect("coordinator starts");
    let status = t.settled(claimed, Duration::from_secs(30)).await;
    assert_eq!(
        (&status["status"], &status["kind"]),
        (
            &serde_json::json!("committed"),
            &serde_json::json!("deposit")
        ),
        "{status}"
    );

    let (applied, applied_body) = deposit_into_crash(&t).await;
    t.cluster
        .coordinator_mut(t.coordinator)
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("died");
    let audit = t.audit().await;
    assert_eq!(audit.transfers[&applied].state, "preparing");
    assert_eq!(audit.posted(&account), 5_000);
    restart_coordinator(&mut t).await;
    let status = t.settled(applied, Duration::from_secs(30)).await;
    assert_eq!(status["status"], "committed", "{status}");

    // Retries get the recovered answers; nothing more is applied.
    let path = format!("/v1/wallet/accounts/{account}/deposit");
    for body in [claimed_body, applied_body] {
        let r = t.post(&path, body).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let audit = t.wait_settled().await;
    assert_eq!(audit.applied(claimed).deposited, 1);
    assert_eq!(audit.applied(applied).deposited, 1);
    assert_eq!(audit.posted(&account), 5_000);
}

#[tokio::test]
async fn postgres_killed_and_restarted_under_traffic_loses_and_doubles_nothing() {
    let mut t = TestCluster::start().await;
    let mut traffic = Traffic::setup(&t, 4).await;
    let clock = traffic.client.clock();
    let outage = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let killed = clock.now_ms();
        t.cluster
            .postgres_mut(1)
            .kill9()
            .await
            .expect("kill -9 postgres");
        tokio::time::sleep(Duration::from_secs(2)).await;
        t.cluster
            .postgres_mut(1)
            .restart()
            .await
            .expect("postgres restarts");
        (killed, clock.now_ms())
    };
    let (history, (killed, restarted)) = tokio::join!(traffic.run(Duration::from_secs(10)), outage);
    let across = history
        .iter()
        .filter(|op| op.invoke_ms < restarted && op.complete_ms > killed)
        .count();
    assert!(
        across > 0,
        "no transfer was in flight while Postgres was down"
    );
    assert!(
        history
            .iter()
            .any(|op| op.invoke_ms > restarted && op.status == Some(200)),
        "transfers commit after the restart"
    );
    traffic.check(&t).await;
}
