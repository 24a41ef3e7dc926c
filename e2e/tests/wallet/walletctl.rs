//! `walletctl` as operators run it: the real binary, as a process, against
//! a real cluster. Every command's happy path, its main errors and their
//! exit codes, `--output json`, and an audit that catches a tampered
//! database.

use std::time::Duration;

use devcluster::ClusterOptions;
use serde_json::Value;
use sqlx::Connection;

use crate::support::{quick_recovery, run_walletctl, Ctl, TestCluster};

/// Runs walletctl with the cluster's endpoints, then `args`.
async fn ctl(t: &TestCluster, args: &[&str]) -> Ctl {
    t.walletctl(args, &[]).await
}

/// Runs walletctl against this map prefix and coordinator.
async fn ctl_at(t: &TestCluster, prefix: &str, coordinator: &str, args: &[&str]) -> Ctl {
    t.walletctl_at(prefix, coordinator, args, &[]).await
}

fn finding_kinds(report: &Value) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .collect()
}

async fn sql(url: &str, statement: &str) {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let done = sqlx::query(statement).execute(&mut conn).await.unwrap();
    assert_eq!(done.rows_affected(), 1, "{statement}");
}

#[tokio::test]
async fn walletctl_map_nodes_accounts_transfers_and_audit() {
    let t = TestCluster::start().await;

    // nodes list, and etcd unreachable.
    let nodes = ctl(&t, &["nodes", "list", "-o", "json"]).await;
    assert_eq!(nodes.expect(0).json().as_array().unwrap().len(), 3);
    let down = run_walletctl(
        &[
            "--etcd-endpoints",
            "http://127.0.0.1:1",
            "--manifest",
            "/nonexistent",
            "--timeout",
            "2",
            "nodes",
            "list",
        ],
        &[],
    )
    .await;
    down.expect(3);
    assert!(down.stderr.contains("cannot reach etcd"), "{}", down.stderr);

    // cluster init: never over the running cluster's map without --force;
    // bad input is a usage error.
    let node1 = format!("node-1={}", t.cluster.participant_url(0));
    let over = ctl(
        &t,
        &["cluster", "init", "--partitions", "8", "--node", &node1],
    )
    .await;
    over.expect(5);
    assert!(over.stderr.contains("already exists"), "{}", over.stderr);
    for bad in [
        vec!["cluster", "init", "--partitions", "0", "--node", &node1],
        vec!["cluster", "init", "--partitions", "8", "--node", "node-1"],
        vec![
            "cluster",
            "init",
            "--partitions",
            "8",
            "--node",
            "bad id=http://x",
        ],
        vec![
            "cluster",
            "init",
            "--partitions",
            "8",
            "--node",
            "n=ftp://x",
        ],
    ] {
        ctl(&t, &bad).await.expect(2);
    }

    // A fresh map under another prefix: init, refused again, forced.
    let api = t.cluster.coordinator_url(0);
    let init = ctl_at(
        &t,
        "/fresh/",
        &api,
        &[
            "cluster",
            "init",
            "--partitions",
            "8",
            "--node",
            &node1,
            "-o",
            "json",
        ],
    )
    .await;
    let map = init.expect(0).json();
    assert_eq!(map["partitions"], 8);
    assert_eq!(map["nodes"][0]["partitions"], 8);
    ctl_at(
        &t,
        "/fresh/",
        &api,
        &["cluster", "init", "--partitions", "4", "--node", &node1],
    )
    .await
    .expect(5);
    let forced = ctl_at(
        &t,
        "/fresh/",
        &api,
        &[
            "cluster",
            "init",
            "--partitions",
            "4",
            "--node",
            &node1,
            "--force",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(forced.expect(0).json()["partitions"], 4);

    // nodes add: checked against the node's /health; refused twice.
    let url2 = t.cluster.participant_url(1);
    let added = ctl_at(
        &t,
        "/fresh/",
        &api,
        &["nodes", "add", "node-2", &url2, "-o", "json"],
    )
    .await;
    assert_eq!(added.expect(0).json()["nodes"].as_array().unwrap().len(), 2);
    ctl_at(&t, "/fresh/", &api, &["nodes", "add", "node-2", &url2])
        .await
        .expect(5);
    let wrong = ctl_at(&t, "/fresh/", &api, &["nodes", "add", "node-7", &url2]).await;
    wrong.expect(5);
    assert!(wrong.stderr.contains("node-2"), "{}", wrong.stderr);
    ctl_at(
        &t,
        "/fresh/",
        &api,
        &["nodes", "add", "node-8", "http://127.0.0.1:1"],
    )
    .await
    .expect(3);
    ctl_at(
        &t,
        "/fresh/",
        &api,
        &["nodes", "add", "node-8", "http://127.0.0.1:1", "--no-check"],
    )
    .await
    .expect(0);
    // nodes remove: not while it owns partitions; unknown is 4.
    let owner = ctl_at(&t, "/fresh/", &api, &["nodes", "remove", "node-1"]).await;
    owner.expect(5);
    assert!(
        owner.stderr.contains("owns 4 partitions"),
        "{}",
        owner.stderr
    );
    ctl_at(&t, "/fresh/", &api, &["nodes", "remove", "node-9"])
        .await
        .expect(4);
    let removed = ctl_at(
        &t,
        "/fresh/",
        &api,
        &["nodes", "remove", "node-8", "-o", "json"],
    )
    .await;
    assert_eq!(
        removed.expect(0).json()["nodes"].as_array().unwrap().len(),
        2
    );

    // Money moves, then accounts show and tx show.
    let from = t.accounts_on(0, "ctl-from", 1).remove(0);
    let to = t.accounts_on(1, "ctl-to", 1).remove(0);
    t.open(&from, "USD").await;
    t.open(&to, "USD").await;
    t.deposit(&from, "100", "USD").await;
    let id = uuid::Uuid::new_v4();
    let body = TestCluster::transfer_body(id, &from, &to, "30.25", "USD");
    let r = t.post("/v1/wallet/balance_transfer", body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    t.wait_settled().await;

    let account = ctl(&t, &["accounts", "show", &from, "-o", "json"]).await;
    let account = account.expect(0).json();
    assert_eq!(account["balance"], "69.75");
    assert_eq!(account["available"], "69.75");
    assert_eq!(account["node"], "node-1");
    let kinds_of: Vec<&str> = account["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds_of,
        ["opened", "deposited", "debit_held", "debit_posted"]
    );
    ctl(&t, &["accounts", "show", &from]).await.expect(0);
    ctl(&t, &["accounts", "show", "nobody-here"])
        .await
        .expect(4);
    ctl(&t, &["accounts", "show", "not valid!"]).await.expect(2);

    let id_text = id.to_string();
    let shown = ctl(&t, &["tx", "show", &id_text, "-o", "json"]).await;
    let shown = shown.expect(0).json();
    assert_eq!(shown["decision"]["state"], "committed");
    assert_eq!(shown["decision"]["amount"], "30.25");
    assert_eq!(shown["decision"]["completed"], true);
    let legs: Vec<(&str, &str, &str)> = shown["legs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["role"].as_str().unwrap(),
                l["node"].as_str().unwrap(),
                l["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        legs,
        [
            ("credit", "node-2", "committed"),
            ("debit", "node-1", "committed")
        ]
    );
    ctl(&t, &["tx", "show", &id_text]).await.expect(0);
    let unknown = uuid::Uuid::new_v4().to_string();
    ctl(&t, &["tx", "show", &unknown]).await.expect(4);
    ctl(&t, &["tx", "show", "not-a-uuid"]).await.expect(2);
    let pending = ctl(&t, &["tx", "pending", "-o", "json"]).await;
    assert_eq!(pending.expect(0).json()["transfers"], serde_json::json!([]));

    // Resolving a finished transfer re-applies its decision, harmlessly.
    let resolved = ctl(&t, &["tx", "resolve", &id_text, "-o", "json"]).await;
    let resolved = resolved.expect(0).json();
    assert_eq!(resolved["state"], "committed");
    assert_eq!(resolved["finished"], true);
    ctl(&t, &["tx", "resolve", &unknown]).await.expect(4);
    let no_coordinator = ctl_at(
        &t,
        t.cluster.etcd_prefix(),
        "http://127.0.0.1:1",
        &["tx", "resolve", &id_text],
    )
    .await;
    no_coordinator.expect(3);

    // A clean audit, then one that catches tampering.
    let clean = ctl(&t, &["audit", "--older-than", "0", "-o", "json"]).await;
    let clean = clean.expect(0).json();
    assert_eq!(clean["clean"], true, "{clean}");
    assert_eq!(clean["currencies"]["USD"]["balances"], "100.00");
    assert_eq!(clean["currencies"]["USD"]["deposited"], "100.00");
    ctl(&t, &["audit"]).await.expect(0);

    sql(
        &t.cluster.postgres_url(1),
        &format!(
            "UPDATE legs SET state = 'aborted' WHERE transaction_id = '{id}' AND role = 'credit'"
        ),
    )
    .await;
    sql(
        &t.cluster.postgres_url(0),
        &format!("UPDATE accounts SET posted = posted + 1 WHERE account_id = '{from}'"),
    )
    .await;
    let caught = ctl(&t, &["audit", "--older-than", "0", "-o", "json"]).await;
    let report = caught.expect(1).json();
    let found = finding_kinds(&report);
    for kind in [
        "replay_mismatch",
        "conservation",
        "leg_posting_mismatch",
        "transfer_legs_mismatch",
    ] {
        assert!(found.iter().any(|k| k == kind), "{kind} not in {report:#}");
    }
    let findings = report["findings"].as_array().unwrap();
    assert!(findings.iter().any(|f| f["kind"] == "replay_mismatch"
        && f["account_id"] == from.as_str()
        && f["node"] == "node-1"));
    assert!(findings
        .iter()
        .any(|f| f["kind"] == "transfer_legs_mismatch" && f["transaction_id"] == id_text.as_str()));
    let table = ctl(&t, &["audit", "--older-than", "0"]).await;
    table.expect(1);
    assert!(table.stdout.contains(&from), "{}", table.stdout);
    assert!(table.stderr.contains("auditing node-1"), "{}", table.stderr);
}

#[tokio::test]
async fn walletctl_lists_and_resolves_a_transfer_in_doubt() {
    // The coordinator dies between prepare and decision, holding a long
    // lease: the transfer stays undecided, its funds held.
    let mut env = quick_recovery();
    env.push(("WALLET_CRASH_AT".into(), "after_prepare".into()));
    env.push(("WALLET_LEASE_MS".into(), "600000".into()));
    let mut t = TestCluster::start_with(ClusterOptions {
        coordinator_env: env,
        ..ClusterOptions::default()
    })
    .await;
    let from = t.accounts_on(0, "doubt-from", 1).remove(0);
    let to = t.accounts_on(1, "doubt-to", 1).remove(0);
    t.open(&from, "USD").await;
    t.open(&to, "USD").await;
    t.deposit(&from, "50", "USD").await;
    let id = uuid::Uuid::new_v4();
    let body = TestCluster::transfer_body(id, &from, &to, "20", "USD");
    let url = format!(
        "{}/v1/wallet/balance_transfer",
        t.cluster.coordinator_url(0)
    );
    assert!(t.http.post(url).json(&body).send().await.is_err());
    t.cluster
        .coordinator_mut(0)
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("coordinator died");
    // A healthy coordinator whose own recovery rounds are far apart.
    t.coordinator = t
        .cluster
        .start_coordinator(vec![
            ("WALLET_CRASH_AT".into(), "none".into()),
            ("WALLET_RESOLVER_INTERVAL_MS".into(), "600000".into()),
        ])
        .await
        .expect("coordinator starts");

    let id_text = id.to_string();
    let pending = ctl(&t, &["tx", "pending", "-o", "json"]).await;
    let pending = pending.expect(0).json();
    let rows = pending["transfers"].as_array().unwrap();
    let kinds: Vec<&str> = rows.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.len(), 3, "{pending:#}");
    assert_eq!(kinds.iter().filter(|k| **k == "prepared_leg").count(), 2);
    let undecided = rows.iter().find(|r| r["kind"] == "undecided").unwrap();
    assert_eq!(undecided["transaction_id"], id_text.as_str());
    assert_eq!(undecided["amount"], "20.00");
    assert_ne!(undecided["lease"], "expired");
    assert!(rows
        .windows(2)
        .all(|w| w[0]["since"].as_str() <= w[1]["since"].as_str()));
    ctl(&t, &["tx", "pending"]).await.expect(0);

    // Held too long for an audit with a short threshold.
    let stuck = ctl(&t, &["audit", "--older-than", "0", "-o", "json"]).await;
    let found = finding_kinds(&stuck.expect(1).json());
    assert!(found.contains(&"stuck_transfer".to_string()), "{found:?}");
    assert!(found.contains(&"stuck_leg".to_string()), "{found:?}");

    // Inside its lease: left alone unless forced.
    let refused = ctl(&t, &["tx", "resolve", &id_text]).await;
    refused.expect(5);
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    let forced = ctl(&t, &["tx", "resolve", &id_text, "--force", "-o", "json"]).await;
    let forced = forced.expect(0).json();
    assert_eq!(forced["state"], "aborted");
    assert_eq!(forced["finished"], true);

    let shown = ctl(&t, &["tx", "show", &id_text, "-o", "json"]).await;
    let shown = shown.expect(0).json();
    assert_eq!(shown["decision"]["state"], "aborted");
    for leg in shown["legs"].as_array().unwrap() {
        assert_eq!(leg["state"], "aborted", "{shown:#}");
    }
    t.wait_settled().await;
    let pending = ctl(&t, &["tx", "pending", "-o", "json"]).await;
    assert_eq!(pending.expect(0).json()["transfers"], serde_json::json!([]));
    ctl(&t, &["audit", "--older-than", "0"]).await.expect(0);
    assert_eq!(t.balance(&from).await.0, "50.00");
}
