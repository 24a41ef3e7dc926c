//! Moving partitions between live nodes with `walletctl` (the real binary):
//! a rebalance onto a new node under load, and moves interrupted by a crash
//! of walletctl or of the old owner, run again or undone.

use std::collections::BTreeMap;
use std::time::Duration;

use chaos::quick_recovery;
use chaos::workload::{place_accounts, Mix, Workload};
use devcluster::ClusterOptions;
use serde_json::json;
use wallet_shared::protocol::{Movement, MovementKind, Routed};
use wallet_shared::{routes, signing, AccountId, Amount, Currency, TransactionId};

use crate::concurrency::Traffic;
use crate::support::TestCluster;

/// The posted balance of `account` in participant `node`'s database, if it
/// has a row for it.
async fn row(t: &TestCluster, node: usize, account: &str) -> Option<i64> {
    let pool = sqlx::PgPool::connect(&t.cluster.postgres_url(node))
        .await
        .expect("database");
    let posted = sqlx::query_scalar("SELECT posted FROM accounts WHERE account_id = $1")
        .bind(account)
        .fetch_optional(&pool)
        .await
        .expect("query");
    pool.close().await;
    posted
}

fn index_of(t: &TestCluster, node: &str) -> usize {
    (0..t.cluster.participants().len())
        .find(|&i| t.cluster.node_id(i) == node)
        .expect("a node of the cluster")
}

/// A deposit sent straight to participant `node`, routed with `map_revision`.
async fn direct_deposit(
    t: &TestCluster,
    node: usize,
    account: &str,
    map_revision: i64,
) -> (u16, serde_json::Value) {
    let id = AccountId::parse(account).unwrap();
    let usd = Currency::parse("USD").unwrap();
    let m = Routed {
        map_revision,
        traces: Vec::new(),
        body: Movement {
            transaction_id: TransactionId(uuid::Uuid::new_v4()),
            kind: MovementKind::Deposit,
            partition: t.map.account_partition(&id),
            account_id: id,
            amount: Amount::parse("1.00", usd).unwrap(),
            currency: usd,
            tenant: None,
        },
    };
    let url = t.cluster.participant_url(node);
    let resp = t
        .internal(t.http.post(format!("{url}{}", routes::MOVEMENTS)).json(&m))
        .await;
    (resp.status().as_u16(), resp.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_onto_a_new_node_under_load_loses_and_doubles_nothing() {
    let mut t = TestCluster::start_with(ClusterOptions {
        partitions: 16,
        coordinator_env: quick_recovery(),
        ..ClusterOptions::default()
    })
    .await;
    let usd = Currency::parse("USD").unwrap();
    let workload = Workload {
        accounts: place_accounts(&t.map, &[(usd, 8)]),
        initial: 10_000,
        mix: Mix {
            transfer: 80,
            deposit: 10,
            withdraw: 10,
            read: 0,
            retry: 0,
            cross_currency: 0,
        },
    };
    let accounts: Vec<String> = workload.accounts.iter().map(|a| a.id.clone()).collect();
    let mut traffic = Traffic::setup_with(&t, 8, workload).await;
    let before = t.map.clone();

    let new = t
        .cluster
        .add_participant()
        .await
        .expect("a fourth participant");
    let url = t.cluster.participant_url(new);
    let added = t.walletctl(&["nodes", "add", "node-4", &url], &[]).await;
    assert_eq!(added.code, Some(0), "{}", added.stderr);

    let (ops, ctl) = tokio::join!(traffic.run(Duration::from_secs(10)), async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        t.walletctl(&["partitions", "rebalance"], &[]).await
    });
    assert_eq!(ctl.code, Some(0), "rebalance failed: {}", ctl.stderr);
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for op in &ops {
        let what = op.code().unwrap_or(if op.status == Some(200) {
            "ok"
        } else {
            "other"
        });
        *answers.entry(what.to_string()).or_default() += 1;
    }
    eprintln!("answers during the rebalance: {answers:?}");

    t.reload_map().await;
    for node in ["node-1", "node-2", "node-3", "node-4"] {
        let owned = t.map.owners.iter().filter(|o| *o == node).count();
        assert_eq!(
            owned, 4,
            "{node} owns {owned} partitions: {:?}",
            t.map.owners
        );
    }
    assert!(t.map.moves.is_empty(), "moves left: {:?}", t.map.moves);

    // Every account lives on its owner only, with the balance the API shows.
    let mut on_new = 0;
    for a in &accounts {
        let owner = index_of(&t, t.map.owner(t.partition_of(a)).unwrap());
        let before_owner = index_of(&t, before.owner(t.partition_of(a)).unwrap());
        let posted = row(&t, owner, a)
            .await
            .unwrap_or_else(|| panic!("{a} is not on its owner"));
        if owner != before_owner {
            assert_eq!(row(&t, before_owner, a).await, None, "{a} left behind");
        }
        if owner == new {
            on_new += 1;
            let r = t.get(&format!("/v1/wallet/accounts/{a}/balance")).await;
            assert_eq!(r.status, 200, "{}", r.body);
            let shown = chaos::checker::minor_units(r.body["balance"].as_str().unwrap(), "USD");
            assert_eq!(shown, Some(posted), "{a}");
        }
    }
    assert!(on_new > 0, "no account of the load moved to node-4");

    // Promise 8: the old owner of a moved partition refuses a caller with
    // the old map.
    let moved = accounts
        .iter()
        .find(|a| t.map.owner(t.partition_of(a)).unwrap() == "node-4")
        .unwrap();
    let old_owner = index_of(&t, before.owner(t.partition_of(moved)).unwrap());
    let (status, body) = direct_deposit(&t, old_owner, moved, before.revision).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (421, Some("wrong_partition_owner")),
        "{body}"
    );

    let checked = traffic.check(&t).await;
    assert!(!checked.audit.in_flight());
    let audit = t.walletctl(&["audit"], &[]).await;
    assert_eq!(audit.code, Some(0), "{}{}", audit.stdout, audit.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_move_resumes_or_rolls_back() {
    let mut env = quick_recovery();
    env.push(("WALLET_MOVE_WAIT_MS".into(), "300".into()));
    let mut t = TestCluster::start_with(ClusterOptions {
        partitions: 8,
        coordinator_env: env,
        ..ClusterOptions::default()
    })
    .await;
    // Partition 0 starts on node-1; three accounts in it, one elsewhere.
    let p = 0;
    let mine = t.accounts_in(p, "mv", 3);
    let other = t.accounts_on(1, "other", 1).pop().unwrap();
    for a in mine.iter().chain([&other]) {
        t.open(a, "USD").await;
        t.deposit(a, "100.00", "USD").await;
    }
    let r = t.transfer(&mine[0], &other, "30.00").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let expected = [("mv", 27_000), ("other", 13_000)];
    let balances = |t: &TestCluster| {
        let (mine, other) = (mine.clone(), other.clone());
        let t = t.api();
        async move {
            let mut sum = 0;
            for a in &mine {
                let r = t.get(&format!("/v1/wallet/accounts/{a}/balance")).await;
                assert_eq!(r.status, 200, "{a}: {}", r.body);
                sum += chaos::checker::minor_units(r.body["balance"].as_str().unwrap(), "USD")
                    .unwrap();
            }
            let r = t.get(&format!("/v1/wallet/accounts/{other}/balance")).await;
            let o =
                chaos::checker::minor_units(r.body["balance"].as_str().unwrap(), "USD").unwrap();
            [("mv", sum), ("other", o)]
        }
    };
    let deposit = |t: &TestCluster, account: String, amount: &'static str| {
        let api = t.api();
        async move {
            api.post(
                &format!("/v1/wallet/accounts/{account}/deposit"),
                json!({"transaction_id": uuid::Uuid::new_v4(), "amount": amount, "currency": "USD"}),
            )
            .await
        }
    };
    let owner = |t: &TestCluster| t.map.owners[p as usize].clone();

    // 1. walletctl dies once the partition is frozen: it takes no writes
    //    (a retryable 503), and running the same move again finishes it.
    let ctl = t
        .walletctl(
            &["partitions", "move", "0", "--to", "node-2"],
            &[("WALLETCTL_CRASH_AT", "after_freeze")],
        )
        .await;
    assert_ne!(ctl.code, Some(0));
    let r = deposit(&t, mine[1].clone(), "5.00").await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (503, Some("partition_moving")),
        "{}",
        r.body
    );
    let shown = t.walletctl(&["partitions", "show"], &[]).await;
    assert!(
        shown.stdout.contains("moving to node-2"),
        "{}",
        shown.stdout
    );
    let ctl = t
        .walletctl(&["partitions", "move", "0", "--to", "node-2"], &[])
        .await;
    assert_eq!(ctl.code, Some(0), "{}", ctl.stderr);
    t.reload_map().await;
    assert_eq!(owner(&t), "node-2");
    assert_eq!(balances(&t).await, expected);
    assert_eq!(row(&t, 0, &mine[0]).await, None, "node-1 kept a copy");
    assert_eq!(row(&t, 1, &mine[0]).await, Some(7_000));
    let r = deposit(&t, mine[1].clone(), "5.00").await;
    assert_eq!(r.status, 200, "{}", r.body);

    // 2. walletctl dies after copying to node-3; --abort undoes the move:
    //    node-2 serves the partition again and node-3's copy is gone.
    let ctl = t
        .walletctl(
            &["partitions", "move", "0", "--to", "node-3"],
            &[("WALLETCTL_CRASH_AT", "after_import")],
        )
        .await;
    assert_ne!(ctl.code, Some(0));
    assert_eq!(
        row(&t, 2, &mine[0]).await,
        Some(7_000),
        "the copy is on node-3"
    );
    let ctl = t
        .walletctl(&["partitions", "move", "0", "--abort"], &[])
        .await;
    assert_eq!(ctl.code, Some(0), "{}", ctl.stderr);
    t.reload_map().await;
    assert_eq!(owner(&t), "node-2");
    assert!(t.map.moves.is_empty());
    assert_eq!(row(&t, 2, &mine[0]).await, None, "node-3 kept the copy");
    let r = t.transfer(&other, &mine[2], "10.00").await;
    assert_eq!(r.status, 200, "{}", r.body);

    // 3. The old owner is killed in the middle of a move: after its restart
    //    it still refuses the partition (the fence is durable), and the
    //    move, run again, finishes.
    let ctl = t
        .walletctl(
            &["partitions", "move", "0", "--to", "node-3"],
            &[("WALLETCTL_CRASH_AT", "after_freeze")],
        )
        .await;
    assert_ne!(ctl.code, Some(0));
    t.cluster.participant_mut(1).kill9().await.unwrap();
    t.cluster.participant_mut(1).restart().await.unwrap();
    t.reload_map().await;
    let (status, body) = direct_deposit(&t, 1, &mine[1], t.map.revision).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("partition_moving")),
        "{body}"
    );
    let ctl = t
        .walletctl(&["partitions", "move", "0", "--to", "node-3"], &[])
        .await;
    assert_eq!(ctl.code, Some(0), "{}", ctl.stderr);
    t.reload_map().await;
    assert_eq!(owner(&t), "node-3");

    // 4. The old owner is down when the move runs: walletctl says so
    //    (exit 3); once the node is back, the same command finishes it.
    t.cluster.participant_mut(2).kill9().await.unwrap();
    let ctl = t
        .walletctl(&["partitions", "move", "0", "--to", "node-1"], &[])
        .await;
    assert_eq!(ctl.code, Some(3), "{}", ctl.stderr);
    assert!(ctl.stderr.contains("node-3"), "{}", ctl.stderr);
    t.cluster.participant_mut(2).restart().await.unwrap();
    let ctl = t
        .walletctl(&["partitions", "move", "0", "--to", "node-1"], &[])
        .await;
    assert_eq!(ctl.code, Some(0), "{}", ctl.stderr);
    t.reload_map().await;
    assert_eq!(owner(&t), "node-1");

    // A stale or stray "moved" can never drop a partition that was not
    // frozen for that move first (here: partition 1, never moved, sent to a
    // node that does not own it).
    let owner_of_1 = t.map.owners[1].clone();
    let stray = (0..3)
        .find(|&i| t.cluster.node_id(i) != owner_of_1)
        .unwrap();
    let url = t.cluster.participant_url(stray);
    let resp = t
        .internal(
            t.http
                .post(format!("{url}{}", routes::FENCE.with(1)))
                .json(&json!({"state": "moved", "to": owner_of_1})),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 400);

    // Nothing lost, nothing doubled, nothing left in flight.
    assert_eq!(balances(&t).await, [("mv", 28_500), ("other", 12_000)]);
    for node in 1..3 {
        assert_eq!(row(&t, node, &mine[0]).await, None);
    }
    t.wait_settled().await;
    let audit = t.walletctl(&["audit"], &[]).await;
    assert_eq!(audit.code, Some(0), "{}{}", audit.stdout, audit.stderr);
}

/// The cut-over has a deadline the old owner keeps on its own: a move whose
/// walletctl died after freezing the partition, after fencing it draining,
/// or after recording the cut-over but before fencing, is rolled back (the move goes back to
/// copying, the fence is lifted) and the partition serves again at its old
/// owner, with nobody doing anything; the same command later finishes the
/// move from where its copy stood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_left_alone_rolls_back_by_its_deadline() {
    let mut t = TestCluster::start_with(short_cutovers()).await;
    let p = 0;
    let mine = t.accounts_in(p, "dl", 2);
    for a in &mine {
        t.open(a, "USD").await;
        t.deposit(a, "100.00", "USD").await;
    }
    let deposit = |t: &TestCluster, account: String| {
        let api = t.api();
        async move {
            api.post(
                &format!("/v1/wallet/accounts/{account}/deposit"),
                json!({"transaction_id": uuid::Uuid::new_v4(), "amount": "1.00", "currency": "USD"}),
            )
            .await
        }
    };
    let fences_on_node_1 = |t: &TestCluster| {
        let (http, url) = (t.http.clone(), t.cluster.participant_url(0));
        let secret = t.secret.clone();
        async move {
            let req = http.get(format!("{url}{}", routes::PARTITIONS));
            let np: serde_json::Value = signing::send(Some(&secret), req)
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            np["fences"].clone()
        }
    };

    for crash_at in ["after_freeze", "after_drain_fence", "after_cutover_record"] {
        let ctl = t
            .walletctl(
                &["partitions", "move", "0", "--to", "node-2"],
                &[("WALLETCTL_CRASH_AT", crash_at)],
            )
            .await;
        assert_ne!(ctl.code, Some(0), "{crash_at}: {}", ctl.stderr);
        // Right away (once the coordinator's watch of etcd brought it the
        // cut-over record), the partition takes no writes ...
        t.reload_map().await;
        coordinator_holds(&t, t.map.revision).await;
        let r = deposit(&t, mine[0].clone()).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (503, Some("partition_moving")),
            "{crash_at}: {}",
            r.body
        );
        // ... and by the deadline (2 s) it serves again at node-1, alone.
        let took = serves_again(&t, &mine[1], Duration::from_secs(20)).await;
        eprintln!("{crash_at}: the partition served again after {took:?}");
        t.reload_map().await;
        assert_eq!(t.map.owners[p as usize], "node-1");
        let m = t.map.moves.get(&p).expect("the move stays, copying");
        assert_eq!(m.phase, wallet_shared::map::MovePhase::Copying, "{m:?}");
        assert!(m.rollbacks >= 1, "{m:?}");
        assert_eq!(fences_on_node_1(&t).await, json!({}), "{crash_at}");
        let shown = t.walletctl(&["partitions", "show"], &[]).await;
        assert!(
            shown.stdout.contains("copying to node-2"),
            "{}",
            shown.stdout
        );
    }

    // The same command finishes the move, from the copy already made.
    let ctl = t
        .walletctl(
            &["partitions", "move", "0", "--to", "node-2", "-o", "json"],
            &[],
        )
        .await;
    assert_eq!(ctl.code, Some(0), "{}", ctl.stderr);
    let report: serde_json::Value = serde_json::from_str(&ctl.stdout).expect("json report");
    assert_eq!(report["copied"]["accounts"], 2, "{report}");
    t.reload_map().await;
    assert_eq!(t.map.owners[p as usize], "node-2");
    assert!(t.map.moves.is_empty());
    // 2 x 100.00 deposited, and 1.00 for each of the three rollbacks.
    let mut sum = 0;
    for a in &mine {
        let r = t.get(&format!("/v1/wallet/accounts/{a}/balance")).await;
        sum += chaos::checker::minor_units(r.body["balance"].as_str().unwrap(), "USD").unwrap();
        assert_eq!(row(&t, 0, a).await, None, "node-1 kept {a}");
    }
    assert_eq!(sum, 20_300);
    let r = deposit(&t, mine[0].clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    t.wait_settled().await;
    let audit = t.walletctl(&["audit"], &[]).await;
    assert_eq!(audit.code, Some(0), "{}{}", audit.stdout, audit.stderr);
}

/// An abort racing a running move, step by step (`WALLETCTL_PAUSE_AT`):
/// the move stands still with the partition frozen and copied, just before
/// the owner switch; `--abort` marks the move `aborting` and stands still
/// too; the move goes on, and its switch, a compare-and-set on phase
/// `moving`, is refused; then the abort finishes. The partition stays with
/// its old owner, serving, and the copy is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_racing_a_running_move_wins_and_the_move_does_not_switch() {
    let mut t = TestCluster::start_with(ClusterOptions {
        partitions: 8,
        coordinator_env: quick_recovery(),
        ..ClusterOptions::default()
    })
    .await;
    let p = 0;
    let mine = t.accounts_in(p, "ab", 2);
    for a in &mine {
        t.open(a, "USD").await;
        t.deposit(a, "100.00", "USD").await;
    }
    let dir = tempfile::tempdir().unwrap();
    let (go, abort_go) = (dir.path().join("go"), dir.path().join("abort-go"));
    let move_at = format!("after_import:{}", go.display());
    let abort_at = format!("abort_after_mark:{}", abort_go.display());
    let move_env = [("WALLETCTL_PAUSE_AT", move_at.as_str())];
    let abort_env = [("WALLETCTL_PAUSE_AT", abort_at.as_str())];
    // Waits until walletctl stands still at the pause released by `file`.
    let paused_at = |file: &std::path::Path| {
        let flag = std::path::PathBuf::from(format!("{}.paused", file.display()));
        async move {
            let since = std::time::Instant::now();
            while !flag.exists() {
                assert!(
                    since.elapsed() < Duration::from_secs(60),
                    "walletctl never reached {}",
                    flag.display()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let (ended, moved_ended) = tokio::sync::oneshot::channel();
    // 1. The move runs up to the switch and stands still.
    let running = async {
        let out = t
            .walletctl(&["partitions", "move", "0", "--to", "node-2"], &move_env)
            .await;
        let _ = ended.send(());
        out
    };
    let racer = async {
        paused_at(&go).await;
        assert_eq!(
            row(&t, 1, &mine[0]).await,
            Some(10_000),
            "the copy is on node-2"
        );
        // 2. The abort marks the move `aborting` and stands still; 3. the
        //    move goes on to its end; 4. the abort finishes.
        let aborting = t.walletctl(&["partitions", "move", "0", "--abort"], &abort_env);
        let (aborted, ()) = tokio::join!(aborting, async {
            paused_at(&abort_go).await;
            std::fs::write(&go, "").unwrap();
            let _ = moved_ended.await;
            std::fs::write(&abort_go, "").unwrap();
        });
        aborted
    };
    let (moved, aborted) = tokio::join!(running, racer);
    assert_ne!(
        moved.code,
        Some(0),
        "the move switched under the abort: {}",
        moved.stdout
    );
    assert!(
        moved.stderr.contains("no longer stands"),
        "{}",
        moved.stderr
    );
    assert_eq!(aborted.code, Some(0), "{}", aborted.stderr);
    t.reload_map().await;
    assert_eq!(t.map.owners[p as usize], "node-1");
    assert!(t.map.moves.is_empty(), "{:?}", t.map.moves);
    assert_eq!(row(&t, 1, &mine[0]).await, None, "node-2 kept the copy");
    assert_eq!(row(&t, 0, &mine[0]).await, Some(10_000));
    let r = t
        .api()
        .post(
            &format!("/v1/wallet/accounts/{}/deposit", mine[1]),
            json!({"transaction_id": uuid::Uuid::new_v4(), "amount": "1.00", "currency": "USD"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    t.wait_settled().await;
    let audit = t.walletctl(&["audit"], &[]).await;
    assert_eq!(audit.code, Some(0), "{}{}", audit.stdout, audit.stderr);
}

/// One idempotency domain: a deposit id used on one node's account and
/// then sent for an account on another node is refused there, so a later
/// move of the first account's partition onto that node meets no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_deposit_id_on_two_nodes_is_refused_and_a_move_then_succeeds() {
    let mut t = TestCluster::start_with(ClusterOptions {
        partitions: 8,
        ..ClusterOptions::default()
    })
    .await;
    let a = t.accounts_on(0, "dup-a", 1).pop().unwrap();
    let b = t.accounts_on(1, "dup-b", 1).pop().unwrap();
    for x in [&a, &b] {
        t.open(x, "USD").await;
    }
    let id = uuid::Uuid::new_v4();
    let body = json!({"transaction_id": id, "amount": "10.00", "currency": "USD"});
    let first = t
        .post(&format!("/v1/wallet/accounts/{a}/deposit"), body.clone())
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let second = t
        .post(&format!("/v1/wallet/accounts/{b}/deposit"), body.clone())
        .await;
    assert_eq!(
        (second.status, second.body["code"].as_str()),
        (422, Some("idempotency_key_reused")),
        "{}",
        second.body
    );
    let p = t.partition_of(&a).to_string();
    let ctl = t
        .walletctl(&["partitions", "move", &p, "--to", "node-2"], &[])
        .await;
    assert_eq!(ctl.code, Some(0), "{}", ctl.stderr);
    t.reload_map().await;
    assert_eq!(t.map.owners[t.partition_of(&a) as usize], "node-2");
    assert_eq!(t.balance(&a).await.0, "10.00");
    assert_eq!(t.balance(&b).await.0, "0.00");
    // The retry of the first deposit still gets its answer, from node-2.
    let again = t
        .post(&format!("/v1/wallet/accounts/{a}/deposit"), body)
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(t.balance(&a).await.0, "10.00");
    let audit = t.walletctl(&["audit"], &[]).await;
    assert_eq!(audit.code, Some(0), "{}{}", audit.stdout, audit.stderr);
}

/// Every event in the databases, as (account, seq), appears exactly once in
/// the cluster's change feed read through the coordinator.
async fn assert_feed_has_every_event_once(t: &TestCluster, audit: &chaos::audit::Audit) {
    let events: i64 = audit.accounts.values().map(|s| s.last_seq).sum();
    let mut seen: BTreeMap<(String, i64), usize> = BTreeMap::new();
    let mut cursor = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (seen.len() as i64) < events {
        assert!(
            std::time::Instant::now() < deadline,
            "the feed holds {} of {events} events",
            seen.len()
        );
        let r = t
            .get(&format!("/v1/wallet/events?after={cursor}&limit=1000"))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let page = r.body["events"].as_array().unwrap();
        for e in page {
            if let Some(seq) = e["seq"].as_i64() {
                *seen
                    .entry((e["account_id"].as_str().unwrap().to_string(), seq))
                    .or_default() += 1;
            }
        }
        cursor = r.body["next_after"].as_str().unwrap().to_string();
        if page.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(seen.len() as i64, events);
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n != 1).collect();
    assert!(
        twice.is_empty(),
        "events in the feed more than once: {twice:?}"
    );
    for (account, state) in &audit.accounts {
        for seq in 1..=state.last_seq {
            assert!(
                seen.contains_key(&(account.clone(), seq)),
                "{account} event {seq} is not in the feed"
            );
        }
    }
}

/// A move under load, interrupted at every step: walletctl killed in the
/// middle of the online copy, the new owner or the old owner killed
/// (`kill -9`) in the middle of the copy, during the freeze, after the
/// copy is checked and after the switch; each time the same command run
/// again finishes it. The chaos checker then holds the cluster to the
/// recorded history (every operation applied exactly once or not at all,
/// balances, nothing held), and the feed has every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_killed_at_every_step_under_load_is_resumed_and_loses_nothing() {
    let mut env = quick_recovery();
    env.push(("WALLET_MOVE_WAIT_MS".into(), "500".into()));
    let mut t = TestCluster::start_with(ClusterOptions {
        partitions: 4,
        coordinator_env: env,
        participant_env: vec![("WALLET_MOVE_CUTOVER_DEADLINE_MS".into(), "3000".into())],
        ..ClusterOptions::default()
    })
    .await;
    let usd = Currency::parse("USD").unwrap();
    let workload = Workload {
        accounts: place_accounts(&t.map, &[(usd, 8)]),
        initial: 10_000,
        mix: Mix {
            transfer: 70,
            deposit: 15,
            withdraw: 15,
            read: 0,
            retry: 0,
            cross_currency: 0,
        },
    };
    let moving = workload.accounts[0].id.clone();
    let p = t.partition_of(&moving);
    let ps = p.to_string();
    let mut traffic = Traffic::setup_with(&t, 6, workload).await;

    // (crash point of walletctl, the participant to kill -9 meanwhile)
    #[derive(Clone, Copy, Debug)]
    enum Victim {
        None,
        Source,
        Target,
    }
    let steps = [
        ("mid_copy", Victim::None),
        ("mid_copy", Victim::Target),
        ("mid_copy", Victim::Source),
        ("after_freeze", Victim::Source),
        ("after_import", Victim::Target),
        ("after_switch", Victim::Source),
    ];
    let (ops, ()) = tokio::join!(traffic.run(Duration::from_secs(40)), async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (crash_at, victim) in steps {
            t.reload_map().await;
            let from = index_of(&t, &t.map.owners[p as usize]);
            let to = (from + 1) % 3;
            let to_id = t.cluster.node_id(to);
            let args = [
                "partitions",
                "move",
                &ps,
                "--to",
                &to_id,
                "--chunk",
                "3",
                "--cutover-rows",
                "5",
            ];
            let ctl = t
                .walletctl(&args, &[("WALLETCTL_CRASH_AT", crash_at)])
                .await;
            assert_ne!(ctl.code, Some(0), "{crash_at}: {}", ctl.stderr);
            let killed = match victim {
                Victim::None => None,
                Victim::Source => Some(from),
                Victim::Target => Some(to),
            };
            if let Some(i) = killed {
                t.cluster.participant_mut(i).kill9().await.unwrap();
                t.cluster.participant_mut(i).restart().await.unwrap();
            }
            let ctl = t.walletctl(&args, &[]).await;
            assert_eq!(
                ctl.code,
                Some(0),
                "{crash_at}, {victim:?} killed: {}",
                ctl.stderr
            );
            t.reload_map().await;
            assert_eq!(t.map.owners[p as usize], to_id, "{crash_at}");
            assert!(t.map.moves.is_empty(), "{crash_at}: {:?}", t.map.moves);
            assert_eq!(
                row(&t, from, &moving).await,
                None,
                "{crash_at}: left behind"
            );
            eprintln!("{crash_at}, {victim:?} killed: moved to {to_id}");
        }
    });
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for op in &ops {
        let what = op.code().unwrap_or(if op.status == Some(200) {
            "ok"
        } else {
            "other"
        });
        *answers.entry(what.to_string()).or_default() += 1;
    }
    eprintln!("answers during the moves: {answers:?}");
    assert!(
        answers.get("ok").copied().unwrap_or(0) > 50,
        "too little traffic got through: {answers:?}"
    );
    let checked = traffic.check(&t).await;
    assert!(!checked.audit.in_flight());
    assert_feed_has_every_event_once(&t, &checked.audit).await;
    let audit = t.walletctl(&["audit"], &[]).await;
    assert_eq!(audit.code, Some(0), "{}{}", audit.stdout, audit.stderr);
}

/// Eight partitions; coordinators hold work on a cutting-over partition
/// back for at most 300 ms, and an old owner rolls a cut-over back 2 s
/// after fencing it.
fn short_cutovers() -> ClusterOptions {
    let mut env = quick_recovery();
    env.push(("WALLET_MOVE_WAIT_MS".into(), "300".into()));
    ClusterOptions {
        partitions: 8,
        coordinator_env: env,
        participant_env: vec![("WALLET_MOVE_CUTOVER_DEADLINE_MS".into(), "2000".into())],
        ..ClusterOptions::default()
    }
}

/// Deposits 1.00 into `account` until one is taken (its partition serves;
/// the only refusal allowed meanwhile is `partition_moving`), for at most
/// `within`; how long it took.
async fn serves_again(t: &TestCluster, account: &str, within: Duration) -> Duration {
    let api = t.api();
    let start = std::time::Instant::now();
    loop {
        let r = api
            .post(
                &format!("/v1/wallet/accounts/{account}/deposit"),
                json!({"transaction_id": uuid::Uuid::new_v4(), "amount": "1.00", "currency": "USD"}),
            )
            .await;
        if r.status == 200 {
            return start.elapsed();
        }
        assert_eq!(r.body["code"], "partition_moving", "{}", r.body);
        assert!(
            start.elapsed() < within,
            "the partition still refuses writes after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `walletctl partitions move 0 --to node-2` paused at `point` (the
/// pause released by creating `go`), runs `meddle` (with `account` as $1) on
/// the new owner's database there, and lets it go on to its end.
async fn move_meddled(
    t: &TestCluster,
    node2: &sqlx::PgPool,
    go: &std::path::Path,
    account: &str,
    point: &str,
    meddle: &str,
) -> crate::support::Ctl {
    let pause = format!("{point}:{}", go.display());
    let env = [("WALLETCTL_PAUSE_AT", pause.as_str())];
    let running = t.walletctl(&["partitions", "move", "0", "--to", "node-2"], &env);
    let meddling = async {
        let flag = std::path::PathBuf::from(format!("{}.paused", go.display()));
        let since = std::time::Instant::now();
        while !flag.exists() {
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "never paused at {point}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = sqlx::query(meddle)
            .bind(account)
            .execute(node2)
            .await
            .expect("meddle")
            .rows_affected();
        assert_eq!(n, 1, "{meddle}");
        std::fs::write(go, "").unwrap();
    };
    let (out, ()) = tokio::join!(running, meddling);
    out
}

/// The copy is checked twice, and either check stops a move whose copy
/// differs from the old owner's rows: while the partition serves, counted
/// whole at a mark (a stray event slipped into the new owner's copy), and
/// at the cut-over, its accounts summed up (a balance changed on the new
/// owner behind the copy's back). Either way nothing switches, the
/// partition serves at its old owner, and after `--abort` a clean move
/// goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_differs_from_the_old_owner_never_switches() {
    let mut t = TestCluster::start_with(short_cutovers()).await;
    let p = 0;
    let mine = t.accounts_in(p, "cc", 2);
    for a in &mine {
        t.open(a, "USD").await;
        t.deposit(a, "100.00", "USD").await;
    }
    assert_eq!(t.map.owners[p as usize], "node-1");
    let node2 = sqlx::PgPool::connect(&t.cluster.postgres_url(1))
        .await
        .expect("database");
    let dir = tempfile::tempdir().unwrap();
    // 1. While it serves: an event the old owner never had, on the new
    //    owner (its accounts are copied first: the pause is after their
    //    chunk).
    let out = move_meddled(
        &t,
        &node2,
        &dir.path().join("go-1"),
        &mine[0],
        "mid_copy",
        "INSERT INTO events (account_id, seq, kind, amount) VALUES ($1, 999, 'deposit', 1)",
    )
    .await;
    assert_ne!(out.code, Some(0), "{}", out.stdout);
    assert!(out.stderr.contains("does not match"), "{}", out.stderr);
    t.reload_map().await;
    assert_eq!(t.map.owners[p as usize], "node-1");
    serves_again(&t, &mine[1], Duration::from_secs(20)).await;
    let undo = t
        .walletctl(&["partitions", "move", "0", "--abort"], &[])
        .await;
    assert_eq!(undo.code, Some(0), "{}", undo.stderr);
    assert_eq!(row(&t, 1, &mine[0]).await, None, "node-2 kept the copy");

    // 2. Frozen: a balance changed on the new owner after its copy was
    //    checked whole; the cut-over's accounts check refuses it, and the
    //    old owner rolls the cut-over back by its deadline.
    let out = move_meddled(
        &t,
        &node2,
        &dir.path().join("go-2"),
        &mine[0],
        "after_freeze",
        "UPDATE accounts SET posted = posted + 1 WHERE account_id = $1",
    )
    .await;
    assert_ne!(out.code, Some(0), "{}", out.stdout);
    assert!(out.stderr.contains("does not match"), "{}", out.stderr);
    serves_again(&t, &mine[1], Duration::from_secs(20)).await;
    t.reload_map().await;
    assert_eq!(t.map.owners[p as usize], "node-1");
    let undo = t
        .walletctl(&["partitions", "move", "0", "--abort"], &[])
        .await;
    assert_eq!(undo.code, Some(0), "{}", undo.stderr);
    node2.close().await;

    // 3. Untouched, the move goes through, and nothing was lost.
    let out = t
        .walletctl(&["partitions", "move", "0", "--to", "node-2"], &[])
        .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    t.reload_map().await;
    assert_eq!(t.map.owners[p as usize], "node-2");
    let mut sum = 0;
    for a in &mine {
        let r = t.get(&format!("/v1/wallet/accounts/{a}/balance")).await;
        sum += chaos::checker::minor_units(r.body["balance"].as_str().unwrap(), "USD").unwrap();
    }
    assert_eq!(sum, 20_200, "2 x 100.00 and the two deposits between");
    t.wait_settled().await;
    let audit = t.walletctl(&["audit"], &[]).await;
    assert_eq!(audit.code, Some(0), "{}{}", audit.stdout, audit.stderr);
}

/// Waits until the coordinator holds map revision `revision` or a newer one
/// (it follows etcd with a watch, a moment behind it).
async fn coordinator_holds(t: &TestCluster, revision: i64) {
    let url = format!("{}/metrics", t.cluster.coordinator_url(0));
    let since = std::time::Instant::now();
    loop {
        let text = t.http.get(&url).send().await.unwrap().text().await.unwrap();
        let held = text
            .lines()
            .find_map(|l| l.strip_prefix("wallet_map_revision "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if held >= revision as f64 {
            return;
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "the coordinator holds map revision {held}, not {revision}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
