//! Transfers, deposits, idempotency and input validation through the public API.

use futures::future::join_all;
use serde_json::json;

use crate::support::TestCluster;

#[tokio::test]
async fn transfers_move_money_across_nodes_and_within_a_partition() {
    let t = TestCluster::start().await;
    let alice = t.accounts_on(0, "alice", 1).remove(0);
    let bob = t.accounts_on(1, "bob", 1).remove(0);
    let (carol, dave) = t.same_partition_pair("carol");
    for a in [&alice, &bob, &carol, &dave] {
        t.open(a, "USD").await;
    }
    t.deposit(&alice, "100.00", "USD").await;
    t.deposit(&carol, "10", "USD").await;

    let r = t.transfer(&alice, &bob, "12.34").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "committed");
    assert_eq!(r.body["amount"], "12.34");
    assert_eq!(t.balance(&alice).await, ("87.66".into(), "87.66".into()));
    assert_eq!(t.balance(&bob).await, ("12.34".into(), "12.34".into()));

    // Same partition, decision record on the same node: one local transaction.
    let node = t.node_of(&carol);
    let local = t.transaction_id_homed_on(node);
    let body = TestCluster::transfer_body(local, &carol, &dave, "2.50", "USD");
    let r = t.post("/v1/wallet/balance_transfer", body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(t.balance(&carol).await.0, "7.50");
    assert_eq!(t.balance(&dave).await.0, "2.50");
    // Same partition, decision record elsewhere: both legs share each phase.
    let remote = t.transaction_id_homed_on((node + 1) % 3);
    let body = TestCluster::transfer_body(remote, &carol, &dave, "1.50", "USD");
    let r2 = t.post("/v1/wallet/balance_transfer", body).await;
    assert_eq!(r2.status, 200, "{}", r2.body);
    assert_eq!(t.balance(&carol).await.0, "6.00");
    assert_eq!(t.balance(&dave).await.0, "4.00");

    // Status lookup by id alone.
    let id = r.body["transaction_id"].as_str().unwrap();
    let s = t.get(&format!("/v1/wallet/transfers/{id}")).await;
    assert_eq!(
        (s.status, s.body["status"].as_str()),
        (200, Some("committed"))
    );

    // The events tell the story, in order, and replay to the balance.
    let ev = t.get(&format!("/v1/wallet/accounts/{alice}/events")).await;
    assert_eq!(ev.status, 200);
    let kinds: Vec<&str> = ev.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["opened", "deposited", "debit_held", "debit_posted"]);
    assert_eq!(ev.body["events"][3]["amount"], "12.34");
    assert_eq!(ev.body["events"][3]["counterparty"], bob.as_str());
    let ev = t.get(&format!("/v1/wallet/accounts/{dave}/events")).await;
    let kinds: Vec<&str> = ev.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "opened",
            "transferred_in",
            "credit_pending",
            "credit_posted"
        ]
    );

    let audit = t.wait_settled().await;
    assert_eq!(audit.total("USD"), 11_000);
}

#[tokio::test]
async fn insufficient_funds_is_refused_and_changes_nothing() {
    let t = TestCluster::start().await;
    let from = t.accounts_on(0, "poor", 1).remove(0);
    let to = t.accounts_on(2, "rich", 1).remove(0);
    t.open(&from, "USD").await;
    t.open(&to, "USD").await;
    t.deposit(&from, "5.00", "USD").await;

    let id = uuid::Uuid::new_v4();
    let body = TestCluster::transfer_body(id, &from, &to, "5.01", "USD");
    let r = t.post("/v1/wallet/balance_transfer", body.clone()).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (422, Some("insufficient_funds")),
        "{}",
        r.body
    );
    assert_eq!(r.body["status"], "aborted");
    // The same answer on a retry, and nothing moved or stayed held.
    let again = t.post("/v1/wallet/balance_transfer", body).await;
    assert_eq!(
        (again.status, again.body["code"].as_str()),
        (422, Some("insufficient_funds"))
    );
    assert_eq!(t.balance(&from).await, ("5.00".into(), "5.00".into()));
    assert_eq!(t.balance(&to).await, ("0.00".into(), "0.00".into()));
    assert!(t.audit().await.applied(id).nothing());

    // Withdrawals never go below zero either.
    let w = json!({"transaction_id": uuid::Uuid::new_v4(), "amount": "6", "currency": "USD"});
    let r = t
        .post(&format!("/v1/wallet/accounts/{from}/withdraw"), w)
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (422, Some("insufficient_funds"))
    );
    let w = json!({"transaction_id": uuid::Uuid::new_v4(), "amount": "5", "currency": "USD"});
    assert_eq!(
        t.post(&format!("/v1/wallet/accounts/{from}/withdraw"), w)
            .await
            .status,
        200
    );
    assert_eq!(t.balance(&from).await.0, "0.00");
    t.wait_settled().await;
}

#[tokio::test]
async fn a_transaction_id_is_applied_once() {
    let t = TestCluster::start().await;
    let from = t.accounts_on(1, "payer", 1).remove(0);
    let to = t.accounts_on(2, "payee", 1).remove(0);
    t.open(&from, "USD").await;
    t.open(&to, "USD").await;
    t.deposit(&from, "100", "USD").await;

    let id = uuid::Uuid::new_v4();
    let body = TestCluster::transfer_body(id, &from, &to, "10", "USD");
    let first = t.post("/v1/wallet/balance_transfer", body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let second = t.post("/v1/wallet/balance_transfer", body).await;
    assert_eq!(second.status, 200);
    assert_eq!(first.body, second.body, "a retry gets the same answer");
    assert_eq!(t.balance(&from).await.0, "90.00");

    // Same id, other body: refused, nothing applied.
    let other = TestCluster::transfer_body(id, &from, &to, "11", "USD");
    let r = t.post("/v1/wallet/balance_transfer", other).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (422, Some("idempotency_key_reused")),
        "{}",
        r.body
    );
    let swapped = TestCluster::transfer_body(id, &to, &from, "10", "USD");
    let r = t.post("/v1/wallet/balance_transfer", swapped).await;
    assert_eq!(r.body["code"], "idempotency_key_reused");
    assert_eq!(t.balance(&from).await.0, "90.00");

    // Fifty identical requests at once: applied once, every answer agrees.
    let id = uuid::Uuid::new_v4();
    let body = TestCluster::transfer_body(id, &from, &to, "1.00", "USD");
    let replies =
        join_all((0..50).map(|_| t.post("/v1/wallet/balance_transfer", body.clone()))).await;
    let committed = replies.iter().filter(|r| r.status == 200).count();
    assert!(committed >= 1);
    for r in &replies {
        assert!(
            r.status == 200 || (r.status == 409 && r.body["code"] == "in_progress"),
            "{} {}",
            r.status,
            r.body
        );
    }
    assert!(t.audit().await.applied(id).transferred_once());
    assert_eq!(t.balance(&from).await.0, "89.00");
    assert_eq!(t.balance(&to).await.0, "11.00");

    // Deposits deduplicate too.
    let dep = json!({"transaction_id": uuid::Uuid::new_v4(), "amount": "3", "currency": "USD"});
    let path = format!("/v1/wallet/accounts/{to}/deposit");
    let replies = join_all((0..10).map(|_| t.post(&path, dep.clone()))).await;
    assert!(
        replies.iter().all(|r| r.status == 200),
        "{:?}",
        replies.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    assert_eq!(t.balance(&to).await.0, "14.00");
    let mut changed = dep.clone();
    changed["amount"] = json!("4");
    assert_eq!(
        t.post(&path, changed).await.body["code"],
        "idempotency_key_reused"
    );
    t.wait_settled().await;
}

/// Promise 3 across the cluster: a `transaction_id` is one key whatever
/// account or kind it is sent for (it is claimed at its decision partition),
/// so a client that retries a deposit against the wrong account, or reuses a
/// transfer's id, never moves money twice; and a partition move later never
/// meets the id twice either.
#[tokio::test]
async fn a_transaction_id_is_one_key_across_nodes_accounts_and_kinds() {
    let t = TestCluster::start().await;
    let accounts: Vec<String> = (0..3)
        .flat_map(|node| t.accounts_on(node, &format!("one-key-{node}"), 3))
        .collect();
    for a in &accounts {
        t.open(a, "USD").await;
    }

    // One deposit id sent to nine accounts on three nodes at once: one is
    // applied, every other is refused, and nothing else moves.
    let id = uuid::Uuid::new_v4();
    let body = json!({"transaction_id": id, "amount": "7.00", "currency": "USD"});
    let paths: Vec<String> = accounts
        .iter()
        .map(|a| format!("/v1/wallet/accounts/{a}/deposit"))
        .collect();
    let replies = join_all(paths.iter().map(|p| t.post(p, body.clone()))).await;
    let winners: Vec<&String> = accounts
        .iter()
        .zip(&replies)
        .filter(|(_, r)| r.status == 200)
        .map(|(a, _)| a)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "{:?}",
        replies.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    let winner = winners[0].clone();
    for r in replies.iter().filter(|r| r.status != 200) {
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (422, Some("idempotency_key_reused")),
            "{}",
            r.body
        );
    }
    let audit = t.audit().await;
    assert_eq!(audit.applied(id).deposited, 1);
    assert_eq!(audit.total("USD"), 700);
    // Sequentially too, and the winner's retry still gets its answer.
    for a in &accounts {
        let r = t
            .post(&format!("/v1/wallet/accounts/{a}/deposit"), body.clone())
            .await;
        let want = if *a == winner { 200 } else { 422 };
        assert_eq!(r.status, want, "{a}: {}", r.body);
    }
    let status = t.get(&format!("/v1/wallet/transfers/{id}")).await;
    assert_eq!(
        (
            &status.body["status"],
            &status.body["kind"],
            &status.body["account_id"]
        ),
        (&json!("committed"), &json!("deposit"), &json!(winner)),
        "{}",
        status.body
    );

    // Across kinds: a withdrawal, or a transfer, with the deposit's id; a
    // deposit with a transfer's id.
    let r = t
        .post(
            &format!("/v1/wallet/accounts/{winner}/withdraw"),
            body.clone(),
        )
        .await;
    assert_eq!(r.body["code"], "idempotency_key_reused", "{}", r.body);
    let other = accounts
        .iter()
        .find(|a| t.node_of(a) != t.node_of(&winner))
        .unwrap();
    let r = t
        .post(
            "/v1/wallet/balance_transfer",
            TestCluster::transfer_body(id, &winner, other, "1.00", "USD"),
        )
        .await;
    assert_eq!(r.body["code"], "idempotency_key_reused", "{}", r.body);
    let transfer_id = uuid::Uuid::new_v4();
    let r = t
        .post(
            "/v1/wallet/balance_transfer",
            TestCluster::transfer_body(transfer_id, &winner, other, "1.00", "USD"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let reuse = json!({"transaction_id": transfer_id, "amount": "1.00", "currency": "USD"});
    for a in [&winner, other] {
        let r = t
            .post(&format!("/v1/wallet/accounts/{a}/deposit"), reuse.clone())
            .await;
        assert_eq!(r.body["code"], "idempotency_key_reused", "{}", r.body);
    }
    let audit = t.audit().await;
    assert_eq!(audit.applied(id).deposited, 1);
    assert_eq!(audit.applied(id).withdrawn, 0);
    assert_eq!(audit.applied(id).out, 0);
    assert_eq!(audit.applied(transfer_id).deposited, 0);
    assert_eq!(audit.total("USD"), 700);

    // The winner's partition moves to a node that was sent the same id: it
    // holds no second copy of it, so the move goes through.
    let p = t.partition_of(&winner);
    let target = t.cluster.node_id(t.node_of(other));
    let ctl = t
        .walletctl(
            &["partitions", "move", &p.to_string(), "--to", &target],
            &[],
        )
        .await;
    assert_eq!(ctl.code, Some(0), "{}{}", ctl.stdout, ctl.stderr);
    assert_eq!(t.balance(&winner).await.0, "6.00");
    let r = t
        .post(&format!("/v1/wallet/accounts/{winner}/deposit"), body)
        .await;
    assert_eq!(r.status, 200, "a retry after the move: {}", r.body);
    t.wait_settled().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let t = TestCluster::start().await;
    let a = t.accounts_on(0, "usd", 1).remove(0);
    let b = t.accounts_on(1, "usd", 1).remove(0);
    let e = t.accounts_on(2, "eur", 1).remove(0);
    t.open(&a, "USD").await;
    t.open(&b, "USD").await;
    t.open(&e, "EUR").await;
    t.deposit(&a, "50", "USD").await;
    let before = t.audit().await;

    let id = || uuid::Uuid::new_v4().to_string();
    let transfer = |amount: serde_json::Value, from: &str, to: &str, currency: &str| json!({"transaction_id": id(), "from_account": from, "to_account": to, "amount": amount, "currency": currency});
    let cases = vec![
        (
            "amount as a JSON number",
            transfer(json!(1.5), &a, &b, "USD"),
            400,
            "invalid_amount",
        ),
        (
            "zero",
            transfer(json!("0.00"), &a, &b, "USD"),
            400,
            "invalid_amount",
        ),
        (
            "negative",
            transfer(json!("-1"), &a, &b, "USD"),
            400,
            "invalid_amount",
        ),
        (
            "too many decimals",
            transfer(json!("1.001"), &a, &b, "USD"),
            400,
            "invalid_amount",
        ),
        (
            "overflow",
            transfer(json!("99999999999999999999"), &a, &b, "USD"),
            400,
            "invalid_amount",
        ),
        (
            "unknown currency",
            transfer(json!("1"), &a, &b, "XYZ"),
            400,
            "invalid_currency",
        ),
        (
            "currency mismatch",
            transfer(json!("1"), &a, &e, "USD"),
            422,
            "currency_mismatch",
        ),
        (
            "same account",
            transfer(json!("1"), &a, &a, "USD"),
            422,
            "same_account",
        ),
        (
            "unknown account",
            transfer(json!("1"), &a, "nobody-here", "USD"),
            404,
            "account_not_found",
        ),
        (
            "bad account id",
            transfer(json!("1"), &a, "no spaces", "USD"),
            400,
            "invalid_account_id",
        ),
        (
            "malformed uuid",
            json!({"transaction_id": "123", "from_account": a, "to_account": b, "amount": "1", "currency": "USD"}),
            400,
            "invalid_transaction_id",
        ),
        (
            "unknown field",
            json!({"transaction_id": id(), "from_account": a, "to_account": b, "amount": "1", "currency": "USD", "memo": "x"}),
            400,
            "invalid_request",
        ),
        (
            "missing field",
            json!({"transaction_id": id(), "from_account": a}),
            400,
            "invalid_request",
        ),
    ];
    for (what, body, status, code) in cases {
        let r = t.post("/v1/wallet/balance_transfer", body).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (status, Some(code)),
            "{what}: {}",
            r.body
        );
        assert!(
            r.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: no message"
        );
    }
    let r = t.post_raw("/v1/wallet/balance_transfer", "{not json").await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let huge = format!(
        "{{\"transaction_id\": \"{}\", \"pad\": \"{}\"}}",
        id(),
        "x".repeat(100_000)
    );
    // The server refuses the body unread and drops the connection: the
    // client must not pool it for the next request (IncompleteMessage).
    let api = t.api();
    let req = api
        .http
        .post(format!("{}/v1/wallet/balance_transfer", api.base))
        .header("content-type", "application/json")
        .header("connection", "close")
        .body(huge);
    let r = api.send(req).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (413, Some("payload_too_large")),
        "{}",
        r.body
    );

    // Accounts: another currency for an existing id, a deposit in the wrong currency.
    let r = t
        .post(
            "/v1/wallet/accounts",
            json!({"account_id": a, "currency": "EUR"}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("account_exists"))
    );
    let r = t
        .post(
            "/v1/wallet/accounts",
            json!({"account_id": a, "currency": "USD"}),
        )
        .await;
    assert_eq!(r.status, 200, "the same body again is a success");
    let r = t
        .post(
            &format!("/v1/wallet/accounts/{e}/deposit"),
            json!({"transaction_id": id(), "amount": "1", "currency": "USD"}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (422, Some("currency_mismatch"))
    );
    let r = t
        .post(
            "/v1/wallet/accounts/nobody/deposit",
            json!({"transaction_id": id(), "amount": "1", "currency": "USD"}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (404, Some("account_not_found"))
    );
    let r = t.get("/v1/wallet/accounts/nobody/balance").await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (404, Some("account_not_found"))
    );
    let r = t.get("/v1/wallet/transfers/not-a-uuid").await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("invalid_transaction_id"))
    );

    let after = t.wait_settled().await;
    for (id, s) in &before.accounts {
        assert_eq!(after.accounts[id].posted, s.posted, "{id} changed");
    }
    assert_eq!(after.total("USD"), 5_000);
}
