//! What operators read: `/metrics` on the coordinator, the participants and
//! the projector agrees with the traffic sent; `/readyz` follows what a
//! service needs (a participant's Postgres, the coordinator's etcd) down
//! and back up, while `/livez` stays up.

use std::time::Duration;

use devcluster::ClusterOptions;
use serde_json::{json, Value};

use crate::support::{metric, quick_recovery, scrape, Sample, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_with_the_traffic_sent() {
    let t = TestCluster::start_with(ClusterOptions {
        coordinator_env: quick_recovery(),
        projector: true,
        ..ClusterOptions::default()
    })
    .await;
    let a = t.accounts_on(0, "metrics-a", 1).remove(0);
    let b = t.accounts_on(1, "metrics-b", 1).remove(0);
    t.open(&a, "USD").await;
    t.open(&b, "USD").await;
    t.deposit(&a, "100.00", "USD").await;
    const COMMITTED: usize = 10;
    const OVERDRAWN: usize = 4;
    const SAME: usize = 2;
    for _ in 0..COMMITTED {
        let r = t.transfer(&a, &b, "1.00").await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    for _ in 0..OVERDRAWN {
        let r = t.transfer(&a, &b, "1000.00").await;
        assert_eq!(r.status, 422, "{}", r.body);
        assert_eq!(r.body["code"], "insufficient_funds");
    }
    for _ in 0..SAME {
        let r = t.transfer(&a, &a, "1.00").await;
        assert_eq!(r.status, 422, "{}", r.body);
        assert_eq!(r.body["code"], "same_account");
    }

    let coordinator = format!("{}/metrics", t.cluster.coordinator_url(0));
    let m = scrape(&t.http, &coordinator).await;
    let count = |name: &str, labels: &[(&str, &str)]| metric(&m, name, labels).unwrap_or(0.0);
    let transfers = "wallet_transfers_total";
    assert_eq!(
        count(transfers, &[("outcome", "committed")]),
        COMMITTED as f64
    );
    assert_eq!(
        count(
            transfers,
            &[("outcome", "aborted"), ("code", "insufficient_funds")]
        ),
        OVERDRAWN as f64
    );
    assert_eq!(
        count(
            transfers,
            &[("outcome", "refused"), ("code", "same_account")]
        ),
        SAME as f64
    );
    assert_eq!(count(transfers, &[("outcome", "pending")]), 0.0);
    assert_eq!(
        count(
            "wallet_movements_total",
            &[("kind", "deposit"), ("outcome", "committed")]
        ),
        1.0
    );
    // Every transfer that got past parsing began once and prepared both
    // legs: one on each node, in that node's prepare lane, or, for the leg
    // on the decision partition's node, with the begin.
    let begun = (COMMITTED + OVERDRAWN) as f64;
    let phase = "wallet_transfer_phase_duration_seconds_count";
    assert_eq!(count(phase, &[("phase", "begin")]), begun);
    assert_eq!(count(phase, &[("phase", "prepare")]), begun);
    assert_eq!(count(phase, &[("phase", "decide")]), begun);
    assert_eq!(count(phase, &[("phase", "commit")]), COMMITTED as f64);
    assert_eq!(count(phase, &[("phase", "abort")]), OVERDRAWN as f64);
    let along = count("wallet_legs_along_total", &[("with", "begin")]);
    assert!(along <= begun, "{along} legs went with {begun} begins");
    assert_eq!(
        count("wallet_batch_items_sum", &[("lane", "prepare")]) + along,
        2.0 * begun
    );
    assert!(count("wallet_batch_items_count", &[("lane", "prepare")]) >= begun);
    assert!(
        count(
            "wallet_transfer_phase_duration_seconds_bucket",
            &[("phase", "begin"), ("le", "+Inf")]
        ) == begun
    );
    assert_eq!(count("wallet_map_revision", &[]), t.map.revision as f64);
    assert!(count("wallet_map_age_seconds", &[]) < 30.0);

    // Participants: nothing left in doubt once the transfers completed
    // (completion is sent in the background), the pool, the map, the feed.
    let mut heads = Vec::new();
    for i in 0..t.cluster.participants().len() {
        let url = format!("{}/metrics", t.cluster.participant_url(i));
        let m = eventually(&t, &url, |m| {
            metric(m, "wallet_in_doubt_transfers", &[]) == Some(0.0)
                && metric(m, "wallet_prepared_legs", &[]) == Some(0.0)
                // At rest nothing waits for a connection.
                && metric(m, "wallet_db_pool_waiting", &[]) == Some(0.0)
        })
        .await;
        assert_eq!(metric(&m, "wallet_db_up", &[]), Some(1.0), "{url}");
        assert_eq!(
            metric(&m, "wallet_in_doubt_oldest_age_seconds", &[]),
            Some(0.0)
        );
        assert_eq!(
            metric(&m, "wallet_db_pool_max_connections", &[]),
            Some(32.0)
        );
        let in_use = metric(&m, "wallet_db_pool_connections", &[("state", "in_use")]);
        let idle = metric(&m, "wallet_db_pool_connections", &[("state", "idle")]);
        assert!(in_use.is_some() && idle.is_some(), "{url}: pool gauges");
        assert!(in_use.unwrap() + idle.unwrap() <= 32.0);
        assert_eq!(
            metric(&m, "wallet_db_pool_waiting", &[]),
            Some(0.0),
            "{url}"
        );
        assert_eq!(
            metric(&m, "wallet_map_revision", &[]),
            Some(t.map.revision as f64)
        );
        heads.push((
            t.cluster.node_id(i),
            metric(&m, "wallet_feed_head_position", &[]),
        ));
    }
    // a's node published at least: opened, deposited, and per committed
    // transfer a hold and its post (an overdraft holds nothing).
    let a_head = heads[0].1.expect("feed head of node-1");
    assert!(a_head >= (2 + 2 * COMMITTED) as f64, "{heads:?}");

    // The projector catches up with every node's head (which the feed's
    // publisher may still move for a moment): position = head, lag 0.
    let projector = format!(
        "{}/metrics",
        t.cluster.projector().expect("projector").url()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut heads = Vec::new();
        for i in 0..t.cluster.participants().len() {
            let url = format!("{}/metrics", t.cluster.participant_url(i));
            let m = scrape(&t.http, &url).await;
            heads.push((
                t.cluster.node_id(i),
                metric(&m, "wallet_feed_head_position", &[]),
            ));
        }
        let m = scrape(&t.http, &projector).await;
        let caught_up = heads.iter().all(|(node, head)| {
            let position = metric(&m, "wallet_projector_feed_position", &[("node", node)]);
            position.is_some() && position == *head
        });
        if caught_up {
            for (node, _) in &heads {
                assert_eq!(
                    metric(&m, "wallet_projector_feed_lag_entries", &[("node", node)]),
                    Some(0.0),
                    "{node}"
                );
            }
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "projector behind after 60 s: heads {heads:?}, projector {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_postgres_and_etcd() {
    let mut t = TestCluster::start().await;
    let participant = t.cluster.participant_url(0);
    let coordinator = t.cluster.coordinator_url(0);
    let (status, body) = get(&t, &format!("{participant}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["postgres"]["ok"], true);
    let (status, _) = get(&t, &format!("{coordinator}/readyz")).await;
    assert_eq!(status, 200);

    // The participant's Postgres stops: unready, saying why; still live.
    t.cluster
        .postgres_mut(0)
        .stop()
        .await
        .expect("postgres stops");
    let body = until_status(&t, &format!("{participant}/readyz"), 503).await;
    assert_eq!(body["status"], "unready");
    assert_eq!(body["checks"]["postgres"]["ok"], false, "{body}");
    assert_eq!(body["checks"]["map"]["ok"], true, "{body}");
    let (status, _) = get(&t, &format!("{participant}/livez")).await;
    assert_eq!(status, 200);
    let m = scrape(&t.http, &format!("{participant}/metrics")).await;
    assert_eq!(crate::support::metric(&m, "wallet_db_up", &[]), Some(0.0));
    assert_eq!(crate::support::metric(&m, "wallet_ready", &[]), Some(0.0));
    // Back: ready again.
    t.cluster
        .postgres_mut(0)
        .restart()
        .await
        .expect("postgres restarts");
    let body = until_status(&t, &format!("{participant}/readyz"), 200).await;
    assert_eq!(body["status"], "ready");

    // etcd stops: the coordinator is unready (it cannot see map changes),
    // and ready again once etcd is back.
    t.cluster.etcd_mut().stop().await.expect("etcd stops");
    let body = until_status(&t, &format!("{coordinator}/readyz"), 503).await;
    assert_eq!(body["checks"]["etcd_map"]["ok"], false, "{body}");
    let (status, _) = get(&t, &format!("{coordinator}/livez")).await;
    assert_eq!(status, 200);
    t.cluster.etcd_mut().restart().await.expect("etcd restarts");
    until_status(&t, &format!("{coordinator}/readyz"), 200).await;
    // And it serves.
    let a = t.accounts_on(1, "ready-a", 1).remove(0);
    t.open(&a, "USD").await;
}

async fn get(t: &TestCluster, url: &str) -> (u16, Value) {
    let resp = t.http.get(url).send().await.expect("answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(json!(null)))
}

/// Polls `url` until it answers `status` (at most 60 s); returns the body.
async fn until_status(t: &TestCluster, url: &str, status: u16) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (got, body) = get(t, url).await;
        if got == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url}: still {got} {body}, waiting for {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Scrapes `url` until `done` holds (at most 60 s); returns that scrape.
async fn eventually(t: &TestCluster, url: &str, done: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = scrape(&t.http, url).await;
        if done(&m) {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url}: not there after 60 s: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM to a coordinator under load: it stops accepting, finishes what is
/// in flight and exits by itself; every client got an answer or a transport
/// error (a refused connect, or a reset of a connection still in the kernel's
/// accept queue when the listener closed), and a retry of the same
/// `transaction_id` at the other coordinator gets a definite answer; nothing
/// is left pending once the 202s are looked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_client_and_leaves_nothing_pending() {
    let mut t = TestCluster::start_with(ClusterOptions {
        coordinators: 2,
        coordinator_env: quick_recovery(),
        ..ClusterOptions::default()
    })
    .await;
    let mut accounts = t.accounts_on(0, "term-a", 2);
    accounts.extend(t.accounts_on(1, "term-b", 2));
    for a in &accounts {
        t.open(a, "USD").await;
        t.deposit(a, "1000.00", "USD").await;
    }
    // A new connection per request: a refused connect is then the only way
    // to meet a stopping server without an answer.
    let http = reqwest::Client::builder()
        .default_headers(devcluster::bearer(t.cluster.admin_key()))
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let base = t.cluster.coordinator_url(0);
    let other = t.cluster.coordinator_url(1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (http, base, other, stop, accounts) = (
                http.clone(),
                base.clone(),
                other.clone(),
                stop.clone(),
                accounts.clone(),
            );
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut i = c;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = uuid::Uuid::new_v4();
                    let (from, to) = (&accounts[i % 4], &accounts[(i + 1 + c % 3) % 4]);
                    i += 1;
                    let body = TestCluster::transfer_body(id, from, to, "0.01", "USD");
                    let sent = http
                        .post(format!("{base}/v1/wallet/balance_transfer"))
                        .json(&body)
                        .send()
                        .await;
                    let sent = match sent {
                        Ok(r) => Ok(r.status().as_u16()),
                        Err(e) => {
                            // No answer: the same id again, at the other
                            // coordinator, as a client would retry.
                            let retried = http
                                .post(format!("{other}/v1/wallet/balance_transfer"))
                                .json(&body)
                                .send()
                                .await
                                .map(|r| r.status().as_u16());
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Err((e, retried))
                        }
                    };
                    seen.push((id, sent));
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = t.cluster.coordinator(0).pid().expect("coordinator runs");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let exit = t
        .cluster
        .coordinator_mut(0)
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the coordinator exits by itself after SIGTERM");
    assert!(exit.success(), "exit status {exit}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut answered = 0;
    let mut refused = 0;
    let mut pending = Vec::new();
    for client in clients {
        for (id, sent) in client.await.expect("client task") {
            match sent {
                Ok(200) => answered += 1,
                Ok(202) => pending.push(id),
                Ok(status) => panic!("transfer {id}: unexpected {status}"),
                Err((e, retried)) => {
                    assert!(
                        e.is_connect() || e.is_request(),
                        "transfer {id}: an error a client cannot retry: {e:?}"
                    );
                    match retried {
                        Ok(200) => {}
                        Ok(202) => pending.push(id),
                        other => panic!("transfer {id}: retried after {e}: {other:?}"),
                    }
                    refused += 1;
                }
            }
        }
    }
    eprintln!(
        "SIGTERM under load: {answered} committed, {} pending, {refused} without an answer (retried at the other coordinator)",
        pending.len()
    );
    assert!(
        answered > 0 && refused > 0,
        "the load must straddle the shutdown"
    );
    t.coordinator = 1;
    for id in pending {
        let status = t.settled(id, Duration::from_secs(30)).await;
        assert_eq!(status["status"], "committed", "{status}");
    }
    t.wait_settled().await;
}
