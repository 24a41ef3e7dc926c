//! Bounded growth end to end: decision and dedup records pruned after the
//! record retention under load (a retry inside the window is still
//! recognized, the audit stays clean), the outbox pruned behind the slowest
//! registered feed consumer, and a rebuild of the projections after the
//! outbox was pruned giving the same tables.

use std::time::Duration;

use futures::future::join_all;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use wallet_shared::protocol::{FeedAck, FeedConsumers};
use wallet_shared::routes;

use crate::events::{projected, walletctl};
use crate::support::{metric, quick_recovery, scrape, TestCluster};

/// Seconds a finished record is kept in these tests.
const RETENTION_SECS: u64 = 4;

fn options(retention: bool, projector: bool) -> devcluster::ClusterOptions {
    let mut env = vec![
        ("WALLET_PRUNE_INTERVAL_MS", "200".to_string()),
        ("WALLET_PRUNE_BATCH", "50".to_string()),
    ];
    if retention {
        env.push(("WALLET_RECORD_RETENTION_SECS", RETENTION_SECS.to_string()));
    }
    devcluster::ClusterOptions {
        coordinator_env: quick_recovery(),
        participant_env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        projector,
        ..devcluster::ClusterOptions::default()
    }
}

/// Decision records and legs of `ids`, over every node.
async fn rows_of(t: &TestCluster, ids: &[uuid::Uuid]) -> (i64, i64, i64) {
    let (mut transfers, mut legs, mut events) = (0, 0, 0);
    for url in t.databases() {
        let mut db = PgConnection::connect(&url).await.unwrap();
        let (t, l, e): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM transfers WHERE transaction_id = ANY($1)),
                    (SELECT count(*) FROM legs WHERE transaction_id = ANY($1)),
                    (SELECT count(*) FROM events WHERE transaction_id = ANY($1))",
        )
        .bind(ids)
        .fetch_one(&mut db)
        .await
        .unwrap();
        transfers += t;
        legs += l;
        events += e;
    }
    (transfers, legs, events)
}

#[tokio::test]
async fn records_are_pruned_after_the_retention_under_load_and_a_retry_inside_it_is_recognized() {
    let t = TestCluster::start_with(options(true, false)).await;
    let mut accounts = Vec::new();
    for node in 0..3 {
        accounts.extend(t.accounts_on(node, "keep", 3));
    }
    for a in &accounts {
        t.open(a, "USD").await;
        t.deposit(a, "1000.00", "USD").await;
    }

    // The old ones: a transfer and a deposit, finished at once.
    let old_transfer = uuid::Uuid::new_v4();
    let body = TestCluster::transfer_body(old_transfer, &accounts[0], &accounts[4], "1.00", "USD");
    assert_eq!(
        t.post("/v1/wallet/balance_transfer", body).await.status,
        200
    );
    let old_deposit = uuid::Uuid::new_v4();
    let deposit = json!({"transaction_id": old_deposit, "amount": "2.00", "currency": "USD"});
    let deposit_path = format!("/v1/wallet/accounts/{}/deposit", accounts[7]);
    assert_eq!(t.post(&deposit_path, deposit.clone()).await.status, 200);
    let old = [old_transfer, old_deposit];
    let (records, legs, events) = rows_of(&t, &old).await;
    assert_eq!(
        (records, legs),
        (2, 3),
        "a transfer's record and two legs, a deposit's and its leg"
    );

    // Load on every node for twice the retention, while the pruner runs.
    let api = t.api();
    let load = join_all((0..4u64).map(|seed| {
        let api = api.clone();
        let accounts = accounts.clone();
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            let until = tokio::time::Instant::now() + Duration::from_secs(2 * RETENTION_SECS);
            let mut sent = 0;
            while tokio::time::Instant::now() < until {
                let (a, b) = (rng.usize(..accounts.len()), rng.usize(..accounts.len()));
                if a == b {
                    continue;
                }
                let id = uuid::Uuid::new_v4();
                let body =
                    TestCluster::transfer_body(id, &accounts[a], &accounts[b], "0.01", "USD");
                api.post("/v1/wallet/balance_transfer", body).await;
                sent += 1;
            }
            sent
        })
    }));

    // Meanwhile, a retry a little inside the window gets the first answer,
    // and the same id with another body is refused, again and again.
    let mut retried = 0;
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(2 * RETENTION_SECS) {
        let id = uuid::Uuid::new_v4();
        let body = TestCluster::transfer_body(id, &accounts[1], &accounts[5], "0.02", "USD");
        let first = t.post("/v1/wallet/balance_transfer", body.clone()).await;
        assert_eq!(first.status, 200, "{}", first.body);
        tokio::time::sleep(Duration::from_millis(RETENTION_SECS * 1000 / 2)).await;
        let again = t.post("/v1/wallet/balance_transfer", body).await;
        assert_eq!((again.status, &again.body), (first.status, &first.body));
        let other = TestCluster::transfer_body(id, &accounts[1], &accounts[5], "0.03", "USD");
        let reused = t.post("/v1/wallet/balance_transfer", other).await;
        assert_eq!(reused.status, 422, "{}", reused.body);
        assert_eq!(
            reused.body["code"], "idempotency_key_reused",
            "{}",
            reused.body
        );
        retried += 1;
    }
    assert!(retried >= 3);
    let sent: usize = load.await.into_iter().map(|r| r.unwrap()).sum();
    assert!(sent > 0);

    // Out of the window: the old records and legs are gone, their events
    // (the history) are not.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (records, legs, now_events) = rows_of(&t, &old).await;
        assert_eq!(now_events, events, "the event log is never pruned");
        if (records, legs) == (0, 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {records} records and {legs} legs of the old transactions"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut pruned = [0.0, 0.0];
    for i in 0..3 {
        let samples = scrape(
            &t.http,
            &format!("{}/metrics", t.cluster.participant_url(i)),
        )
        .await;
        for (n, table) in pruned.iter_mut().zip(["transfers", "legs"]) {
            *n += metric(&samples, "wallet_pruned_rows_total", &[("table", table)]).unwrap_or(0.0);
        }
    }
    assert!(pruned[0] >= 2.0 && pruned[1] >= 3.0, "pruned {pruned:?}");

    // The audit, at rest, is clean: walletctl's (on every node) and the
    // checkers' (every row read), told what may have been pruned.
    let (mut audit, _) = chaos::audit::Audit::wait_settled(&t.databases(), Duration::from_secs(30))
        .await
        .unwrap();
    audit.pruned_before = Some(participant::retention::audit_horizon(
        chrono::Utc::now(),
        Duration::from_secs(RETENTION_SECS),
    ));
    audit.assert_settled();
    let ctl = t
        .walletctl(&["audit", "--older-than", "1", "--output", "json"], &[])
        .await;
    ctl.expect(0);
    assert_eq!(ctl.json()["clean"], true);

    // Past the window the id is forgotten: the same deposit is a new one.
    let before = t.balance(&accounts[7]).await.0;
    let again = t.post(&deposit_path, deposit).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_ne!(t.balance(&accounts[7]).await.0, before);
}

/// A node's feed consumers, head and `pruned_through`.
async fn consumers(t: &TestCluster, node: usize) -> FeedConsumers {
    let url = format!(
        "{}{}",
        t.cluster.participant_url(node),
        routes::FEED_CONSUMERS
    );
    let resp = t.internal(t.http.get(url)).await;
    assert!(resp.status().is_success());
    resp.json().await.unwrap()
}

async fn acknowledge(t: &TestCluster, node: usize, name: &str, position: i64) -> u16 {
    let url = format!(
        "{}{}",
        t.cluster.participant_url(node),
        routes::FEED_CONSUMER.with(name)
    );
    t.internal(t.http.put(url).json(&FeedAck { position }))
        .await
        .status()
        .as_u16()
}

/// Random transfers, deposits and withdrawals among `accounts`.
async fn traffic(t: &TestCluster, accounts: &[String], seed: u64, n: usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    for _ in 0..n {
        let a = &accounts[rng.usize(..accounts.len())];
        let b = &accounts[rng.usize(..accounts.len())];
        let amount = format!("{}.{:02}", rng.u32(0..30), rng.u32(1..100));
        let id = uuid::Uuid::new_v4();
        if rng.u8(..3) == 0 || a == b {
            let kind = if rng.bool() { "deposit" } else { "withdraw" };
            let body = json!({"transaction_id": id, "amount": amount, "currency": "USD"});
            t.post(&format!("/v1/wallet/accounts/{a}/{kind}"), body)
                .await;
        } else {
            let body = TestCluster::transfer_body(id, a, b, &amount, "USD");
            t.post("/v1/wallet/balance_transfer", body).await;
        }
    }
}

async fn wait_for(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ok().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_outbox_is_pruned_behind_the_slowest_consumer_and_a_rebuild_after_it_gives_the_same_tables(
) {
    let t = TestCluster::start_with(options(false, true)).await;
    // A slow reader registers on node 1 before anything is written, and
    // stays at its start.
    assert_eq!(acknowledge(&t, 0, "slow", 0).await, 200);
    assert_eq!(
        acknowledge(&t, 1, "slow", 1_000_000).await,
        400,
        "past the head"
    );
    let mut accounts = Vec::new();
    for node in 0..3 {
        accounts.extend(t.accounts_on(node, "outbox", 3));
    }
    for a in &accounts {
        t.open(a, "USD").await;
        t.deposit(a, "50.00", "USD").await;
    }
    traffic(&t, &accounts, 1, 120).await;
    projected(&t).await;

    // The projector registered itself everywhere; node 1 keeps everything
    // after the slow reader's position, the others prune behind the
    // projector.
    wait_for("nodes 2 and 3 prune behind the projector", async || {
        let mut ok = true;
        for node in 1..3 {
            let c = consumers(&t, node).await;
            ok &= c.consumers.iter().any(|c| c.name == "projector") && c.pruned_through > 0;
        }
        ok
    })
    .await;
    let slow = consumers(&t, 0).await;
    assert_eq!(slow.pruned_through, 0, "{slow:?}");
    assert!(slow.head > 2, "{slow:?}");
    let after = |node: usize, p: i64| {
        let url = format!(
            "{}{}?after={p}&limit=10",
            t.cluster.participant_url(node),
            routes::FEED
        );
        t.internal(t.http.get(url))
    };
    let page: Value = after(0, 0).await.json().await.unwrap();
    assert_eq!(page["entries"][0]["position"], 1, "{page}");
    // On node 2 the start of the feed is gone: refused, not skipped.
    let gone = after(1, 0).await;
    assert_eq!(gone.status().as_u16(), 404);
    // A position below what is pruned cannot be registered.
    assert_eq!(acknowledge(&t, 1, "late", 0).await, 400);

    // What an operator sees: the slow reader and how far behind it is.
    let samples = scrape(
        &t.http,
        &format!("{}/metrics", t.cluster.participant_url(0)),
    )
    .await;
    let lag = metric(&samples, "wallet_feed_slowest_consumer_lag", &[]).unwrap();
    assert!(lag > 0.0, "{lag}");
    let listed = t.walletctl(&["feed", "consumers", "-o", "json"], &[]).await;
    let rows = listed.expect(0).json();
    let slow: Vec<&Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["consumer"] == "slow")
        .collect();
    assert_eq!(slow.len(), 1, "{rows}");
    assert_eq!(slow[0]["node_id"], t.cluster.node_id(0));
    assert!(slow[0]["behind"].as_i64().unwrap() > 0, "{rows}");

    // The slow reader is dropped: node 1 prunes behind the projector too.
    t.walletctl(&["feed", "drop", "slow"], &[]).await.expect(0);
    t.walletctl(&["feed", "drop", "slow"], &[]).await.expect(4);
    wait_for("node 1 prunes once the slow reader left", async || {
        consumers(&t, 0).await.pruned_through > 0
    })
    .await;

    // A rebuild, with the projector still running and every feed's start
    // pruned, gives the same tables.
    traffic(&t, &accounts, 2, 40).await;
    t.wait_settled().await;
    let projections = projected(&t).await;
    let before = projections.dump().await.unwrap();
    assert!(!before["account_view"].is_empty());
    let (code, out) = walletctl(&t, &["projections", "rebuild"]).await;
    assert_eq!(code, 0, "{out}");
    let projections = projected(&t).await;
    assert_eq!(projections.dump().await.unwrap(), before);
    // And traffic after it is projected as before.
    traffic(&t, &accounts, 3, 20).await;
    t.wait_settled().await;
    let projections = projected(&t).await;
    let audit = t.audit().await;
    let view: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT account_id, posted, events FROM account_view ORDER BY account_id")
            .fetch_all(&projections.pool)
            .await
            .unwrap();
    let stored: Vec<(String, i64, i64)> = audit
        .accounts
        .iter()
        .map(|(id, s)| (id.clone(), s.posted, s.last_seq))
        .collect();
    assert_eq!(view, stored);
}

#[tokio::test]
async fn a_move_under_load_while_the_pruner_runs_copies_a_whole_partition() {
    let mut t = TestCluster::start_with(devcluster::ClusterOptions {
        partitions: 8,
        ..options(true, false)
    })
    .await;
    let (a, b) = t.same_partition_pair("moving");
    let others: Vec<String> = (1..3)
        .map(|n| t.accounts_on(n, "still", 1).remove(0))
        .collect();
    let accounts: Vec<String> = [a.clone(), b.clone()].into_iter().chain(others).collect();
    for x in &accounts {
        t.open(x, "USD").await;
        t.deposit(x, "500.00", "USD").await;
    }
    // Load on the moving partition (within it, and to and from the others)
    // until the move is over, so that while it is copied some of its
    // records leave the retention window.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let api = t.api();
    let load = {
        let (stop, accounts) = (stop.clone(), accounts.clone());
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(7);
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let from = &accounts[rng.usize(..2)];
                let to = &accounts[rng.usize(..accounts.len())];
                if from == to {
                    continue;
                }
                let body =
                    TestCluster::transfer_body(uuid::Uuid::new_v4(), from, to, "0.01", "USD");
                api.post("/v1/wallet/balance_transfer", body).await;
                sent += 1;
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_secs(RETENTION_SECS + 1)).await;
    let p = t.partition_of(&a).to_string();
    let from = t.cluster.node_id(t.node_of(&a));
    let to = if from == "node-2" { "node-3" } else { "node-2" };
    // Slowly, so that records leave the window while it is copied.
    let args = [
        "partitions",
        "move",
        &p,
        "--to",
        to,
        "--rate",
        "300",
        "--chunk",
        "20",
        "--cutover-rows",
        "50",
    ];
    let ctl = t.walletctl(&args, &[]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(load.await.unwrap() > 0);
    ctl.expect(0);
    t.reload_map().await;
    assert_eq!(t.map.owners[t.partition_of(&a) as usize], to);

    // Once settled, nothing is lost or doubled, and what was pruned is no
    // anomaly.
    let (mut audit, _) = chaos::audit::Audit::wait_settled(&t.databases(), Duration::from_secs(30))
        .await
        .unwrap();
    audit.pruned_before = Some(participant::retention::audit_horizon(
        chrono::Utc::now(),
        Duration::from_secs(RETENTION_SECS),
    ));
    audit.assert_settled();
    t.walletctl(&["audit", "--older-than", "1"], &[])
        .await
        .expect(0);
    let mut pruned = 0.0;
    for i in 0..3 {
        let samples = scrape(
            &t.http,
            &format!("{}/metrics", t.cluster.participant_url(i)),
        )
        .await;
        pruned += metric(
            &samples,
            "wallet_pruned_rows_total",
            &[("table", "transfers")],
        )
        .unwrap_or(0.0);
    }
    assert!(pruned > 0.0, "the pruner ran meanwhile");
}
