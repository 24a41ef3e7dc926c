//! Who may do what (promise 9): every public and admin route refuses a
//! request without a key, with an unknown, revoked or wrong-scope key, and
//! with another tenant's key, and the databases show that nothing changed;
//! a tenant cannot debit another's account or learn of another's
//! transaction; a key's rate is enforced; keys never reach a log; and
//! `walletctl keys` creates, lists and revokes them end to end.

use std::time::Duration;

use serde_json::{json, Value};
use wallet_shared::auth::Scope;

use crate::support::{Reply, TestCluster};

/// A request as a client would send it, with `key` (or none).
async fn call(
    t: &TestCluster,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Reply {
    // A client of its own: the test cluster's carries the operator's key.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = format!("{}{path}", t.cluster.coordinator_url(0));
    let mut req = match method {
        "GET" => http.get(url),
        _ => http.post(url),
    };
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    t.api().send(req).await
}

/// Every route of the public and admin API, with a valid body that would
/// change or show something of `victim` (another tenant's account) if it
/// were let through.
fn routes(
    victim: &str,
    mine: &str,
    victim_tx: uuid::Uuid,
) -> Vec<(&'static str, String, Option<Value>)> {
    let new_tx = uuid::Uuid::new_v4;
    vec![
        (
            "POST",
            "/v1/wallet/balance_transfer".into(),
            Some(
                json!({"transaction_id": new_tx(), "from_account": victim, "to_account": mine, "amount": "1.00", "currency": "USD"}),
            ),
        ),
        ("GET", format!("/v1/wallet/transfers/{victim_tx}"), None),
        (
            "POST",
            "/v1/wallet/accounts".into(),
            Some(json!({"account_id": victim, "currency": "USD"})),
        ),
        (
            "POST",
            format!("/v1/wallet/accounts/{victim}/deposit"),
            Some(json!({"transaction_id": new_tx(), "amount": "1.00", "currency": "USD"})),
        ),
        (
            "POST",
            format!("/v1/wallet/accounts/{victim}/withdraw"),
            Some(json!({"transaction_id": new_tx(), "amount": "1.00", "currency": "USD"})),
        ),
        ("GET", format!("/v1/wallet/accounts/{victim}/balance"), None),
        (
            "GET",
            format!("/v1/wallet/accounts/{victim}/balance?as_of=2100-01-01T00:00:00Z"),
            None,
        ),
        ("GET", format!("/v1/wallet/accounts/{victim}/events"), None),
        ("GET", "/v1/wallet/events?limit=10".into(), None),
        (
            "POST",
            format!("/internal/v1/transfers/{victim_tx}/resolve"),
            Some(json!({"force": true})),
        ),
    ]
}

/// What the databases hold: every balance row, and the events of the
/// victim's account. Equal before and after means nothing moved. (The
/// refused debit of a cross-node transfer may leave a credit pending and
/// then voided on the credit's account, as any aborted transfer does: no
/// money.)
async fn money(t: &TestCluster, victim: &str) -> (Value, usize) {
    let audit = t.wait_settled().await;
    let accounts: Vec<(String, i64, i64, i64)> = audit
        .accounts
        .iter()
        .map(|(id, s)| (id.clone(), s.posted, s.held, s.pending_credit))
        .collect();
    let victims = audit.events.iter().filter(|e| e.account == victim).count();
    (json!(accounts), victims)
}

#[tokio::test]
async fn every_route_refuses_callers_without_the_right_key() {
    let t = TestCluster::start().await;
    let (victim, mine) = ("vault-1", "purse-1");
    let acme = t
        .cluster
        .create_key("acme", &[Scope::Transfer, Scope::Read], None)
        .await
        .unwrap();
    let globex = t
        .cluster
        .create_key("globex", &[Scope::Transfer, Scope::Read], None)
        .await
        .unwrap();
    let globex_read = t
        .cluster
        .create_key("globex", &[Scope::Read], None)
        .await
        .unwrap();
    let revoked = t
        .cluster
        .create_key("acme", &[Scope::Transfer, Scope::Read, Scope::Admin], None)
        .await
        .unwrap();
    t.cluster.revoke_key(&revoked).await.unwrap();

    // Acme opens and funds its account and makes a transfer; Globex opens its own.
    let opened = call(
        &t,
        Some(&acme),
        "POST",
        "/v1/wallet/accounts",
        Some(&json!({"account_id": victim, "currency": "USD"})),
    )
    .await;
    assert_eq!(opened.status, 200, "{}", opened.body);
    let opened = call(
        &t,
        Some(&globex),
        "POST",
        "/v1/wallet/accounts",
        Some(&json!({"account_id": mine, "currency": "USD"})),
    )
    .await;
    assert_eq!(opened.status, 200, "{}", opened.body);
    let funded = call(
        &t,
        Some(&acme),
        "POST",
        &format!("/v1/wallet/accounts/{victim}/deposit"),
        Some(
            &json!({"transaction_id": uuid::Uuid::new_v4(), "amount": "100.00", "currency": "USD"}),
        ),
    )
    .await;
    assert_eq!(funded.status, 200, "{}", funded.body);
    let victim_tx = uuid::Uuid::new_v4();
    let paid = call(&t, Some(&acme), "POST", "/v1/wallet/balance_transfer", Some(&json!({"transaction_id": victim_tx, "from_account": victim, "to_account": mine, "amount": "10.00", "currency": "USD"}))).await;
    assert_eq!(paid.status, 200, "{}", paid.body);
    // The owner sees its own.
    let seen = call(
        &t,
        Some(&acme),
        "GET",
        &format!("/v1/wallet/accounts/{victim}/balance"),
        None,
    )
    .await;
    assert_eq!(
        (seen.status, seen.body["balance"].clone()),
        (200, json!("90.00"))
    );
    let seen = call(
        &t,
        Some(&acme),
        "GET",
        &format!("/v1/wallet/transfers/{victim_tx}"),
        None,
    )
    .await;
    assert_eq!(
        (seen.status, seen.body["status"].clone()),
        (200, json!("committed"))
    );

    let before = money(&t, victim).await;
    let unknown = format!("wk_{}_{}", "0123456789abcdef", "f".repeat(64));
    for (method, path, body) in routes(victim, mine, victim_tx) {
        for (who, key) in [
            ("no key", None),
            ("an unknown key", Some(unknown.as_str())),
            ("a revoked key", Some(revoked.as_str())),
            ("a malformed header", Some("not-a-key")),
        ] {
            let r = call(&t, key, method, &path, body.as_ref()).await;
            assert_eq!(
                (r.status, r.body["code"].clone()),
                (401, json!("unauthenticated")),
                "{method} {path} with {who}: {}",
                r.body
            );
            assert!(
                !r.body.to_string().contains(&revoked[20..]),
                "the key is echoed: {}",
                r.body
            );
        }
        // A known key without the scope: 403 (reads need `read`, writes
        // `transfer`, the feed and resolve `admin`).
        let r = call(&t, Some(&globex_read), method, &path, body.as_ref()).await;
        let read_only_may = method == "GET" && !path.starts_with("/v1/wallet/events");
        if read_only_may {
            // It may read, but not another tenant's: 404, as if absent.
            assert_eq!(
                r.status, 404,
                "{method} {path} with a read key of another tenant: {}",
                r.body
            );
        } else {
            assert_eq!(
                (r.status, r.body["code"].clone()),
                (403, json!("forbidden")),
                "{method} {path} with a read-only key: {}",
                r.body
            );
        }
        if method == "POST" {
            // The scope is checked before the body is read: a body that
            // would be 400 is still 403 for a key without the scope.
            let junk = json!({"not": "a valid body"});
            let r = call(&t, Some(&globex_read), method, &path, Some(&junk)).await;
            assert_eq!(
                (r.status, r.body["code"].clone()),
                (403, json!("forbidden")),
                "{method} {path} with a read-only key and a bad body: {}",
                r.body
            );
        }
        // Another tenant's key with both scopes.
        let r = call(&t, Some(&globex), method, &path, body.as_ref()).await;
        let expected = if path.contains("/resolve") || path.starts_with("/v1/wallet/events") {
            (403, "forbidden")
        } else if path == "/v1/wallet/accounts" {
            // The id is taken; nothing about whose it is.
            (409, "account_exists")
        } else if method == "GET" && path.contains("/transfers/") {
            (404, "transfer_not_found")
        } else if method == "GET" {
            (404, "account_not_found")
        } else {
            (403, "forbidden")
        };
        assert_eq!(
            (r.status, r.body["code"].clone()),
            (expected.0, json!(expected.1)),
            "{method} {path} with another tenant's key: {}",
            r.body
        );
        let text = r.body.to_string();
        assert!(
            !text.contains("acme") && !text.contains("90.00"),
            "{method} {path} leaks: {text}"
        );
    }
    // The 401 names the scheme.
    let r = reqwest::Client::new()
        .get(format!(
            "{}/v1/wallet/accounts/{victim}/balance",
            t.cluster.coordinator_url(0)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    // Probes and metrics stay open.
    for path in ["/livez", "/readyz", "/metrics"] {
        let r = call(&t, None, "GET", path, None).await;
        assert_eq!(r.status, 200, "{path}");
    }
    assert_eq!(
        money(&t, victim).await,
        before,
        "a refused request changed balances or events"
    );
    let (acme_balance, _) = t.balance(victim).await;
    assert_eq!(acme_balance, "90.00");

    // Globex's debit of Acme's account was refused on the debit's node, and
    // a retry of it gets the same answer; nothing is held.
    let stolen = json!({"transaction_id": uuid::Uuid::new_v4(), "from_account": victim, "to_account": mine, "amount": "5.00", "currency": "USD"});
    for _ in 0..2 {
        let r = call(
            &t,
            Some(&globex),
            "POST",
            "/v1/wallet/balance_transfer",
            Some(&stolen),
        )
        .await;
        assert_eq!(
            (r.status, r.body["code"].clone()),
            (403, json!("forbidden")),
            "{}",
            r.body
        );
    }
    let audit = t.wait_settled().await;
    assert_eq!(audit.prepared_legs, 0);
    assert_eq!(
        t.balance(victim).await,
        ("90.00".to_string(), "90.00".to_string())
    );

    // Acme's transaction id, reused by Globex with the very same body: 422,
    // as a different body would be, and nothing about Acme's transfer.
    let reuse = json!({"transaction_id": victim_tx, "from_account": victim, "to_account": mine, "amount": "10.00", "currency": "USD"});
    let r = call(
        &t,
        Some(&globex),
        "POST",
        "/v1/wallet/balance_transfer",
        Some(&reuse),
    )
    .await;
    assert_eq!(
        (r.status, r.body["code"].clone()),
        (422, json!("idempotency_key_reused")),
        "{}",
        r.body
    );
    let reuse_own = json!({"transaction_id": victim_tx, "from_account": mine, "to_account": victim, "amount": "1.00", "currency": "USD"});
    let r2 = call(
        &t,
        Some(&globex),
        "POST",
        "/v1/wallet/balance_transfer",
        Some(&reuse_own),
    )
    .await;
    assert_eq!(r2.status, 422, "{}", r2.body);
    assert_eq!(
        r.body["message"], r2.body["message"],
        "the two refusals differ"
    );
    for text in [r.body.to_string(), r2.body.to_string()] {
        assert!(
            !text.contains("committed") && !text.contains("acme"),
            "{text}"
        );
    }
    // Acme's own retry still gets its outcome.
    let again = call(&t, Some(&acme), "POST", "/v1/wallet/balance_transfer", Some(&json!({"transaction_id": victim_tx, "from_account": victim, "to_account": mine, "amount": "10.00", "currency": "USD"}))).await;
    assert_eq!(
        (again.status, again.body["status"].clone()),
        (200, json!("committed"))
    );

    // A tenant may pay into another's account (credit any account).
    let pay = call(&t, Some(&globex), "POST", "/v1/wallet/balance_transfer", Some(&json!({"transaction_id": uuid::Uuid::new_v4(), "from_account": mine, "to_account": victim, "amount": "2.00", "currency": "USD"}))).await;
    assert_eq!(pay.status, 200, "{}", pay.body);
    assert_eq!(t.balance(victim).await.0, "92.00");
    assert_eq!(t.balance(mine).await.0, "8.00");

    // No key reached a log, whole or in part.
    let mut logs = String::new();
    for s in t
        .cluster
        .coordinators()
        .iter()
        .chain(t.cluster.participants())
    {
        logs.push_str(&std::fs::read_to_string(s.log_path()).unwrap_or_default());
    }
    assert!(
        logs.contains("admin action"),
        "the operator's calls are logged"
    );
    for key in [
        &acme,
        &globex,
        &globex_read,
        &revoked,
        &t.cluster.admin_key().to_string(),
    ] {
        let secret = &key[20..];
        assert!(!logs.contains(secret), "a key's secret is in a log");
    }
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after() {
    let t = TestCluster::start().await;
    let key = t
        .cluster
        .create_key("slow", &[Scope::Read], Some(2))
        .await
        .unwrap();
    // A burst well past 2 a second: some served, the rest 429 with
    // Retry-After, none with another answer.
    let http = reqwest::Client::new();
    let url = format!(
        "{}/v1/wallet/transfers/{}",
        t.cluster.coordinator_url(0),
        uuid::Uuid::new_v4()
    );
    let (mut served, mut limited) = (0, 0);
    for _ in 0..10 {
        let r = http.get(&url).bearer_auth(&key).send().await.unwrap();
        match r.status().as_u16() {
            404 => served += 1,
            429 => {
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["code"], "rate_limited");
                limited += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        served >= 1 && limited >= 5,
        "served {served}, limited {limited}"
    );
    // Another key is not slowed by it.
    let r = t
        .get(&format!("/v1/wallet/transfers/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn walletctl_creates_lists_and_revokes_keys() {
    let t = TestCluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let created = t
        .walletctl(
            &[
                "--output",
                "json",
                "keys",
                "create",
                "--tenant",
                "initech",
                "--scopes",
                "transfer,read",
                "--rate",
                "50",
            ],
            &[],
        )
        .await;
    created.expect(0);
    let created = created.json();
    let key = created["key"].as_str().unwrap().to_string();
    let key_id = created["key_id"].as_str().unwrap().to_string();
    assert!(key.starts_with(&format!("wk_{key_id}_")));
    assert_eq!(created["scopes"], json!(["transfer", "read"]));
    assert_eq!(created["rate"], 50);
    t.cluster.await_key(&key, true).await.unwrap();

    // It works, for its tenant.
    let r = call(
        &t,
        Some(&key),
        "POST",
        "/v1/wallet/accounts",
        Some(&json!({"account_id": "initech-1", "currency": "USD"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // --write-to: the key goes to a file (0600), not to stdout.
    let file = dir.path().join("ops-key");
    let ops = t
        .walletctl(
            &[
                "keys",
                "create",
                "--tenant",
                "ops",
                "--scopes",
                "admin",
                "--write-to",
                file.to_str().unwrap(),
            ],
            &[],
        )
        .await;
    ops.expect(0);
    let ops_key = std::fs::read_to_string(&file).unwrap();
    assert!(!ops.stdout.contains(&ops_key[20..]) && !ops.stderr.contains(&ops_key[20..]));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // list: every key, never a secret or a hash.
    let list = t
        .walletctl(&["--output", "json", "keys", "list"], &[])
        .await;
    list.expect(0);
    let rows = list.json();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key_id"] == key_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["tenant"], "initech");
    assert!(row["revoked_at"].is_null());
    assert!(row.get("hash").is_none());
    assert!(!list.stdout.contains(&key[20..]));
    assert_eq!(
        rows.as_array().unwrap().len(),
        3,
        "operator, initech, ops: {rows}"
    );
    t.walletctl(&["keys", "list"], &[]).await.expect(0);

    // revoke: refused from then on (once the coordinators' watch has it).
    t.walletctl(&["keys", "revoke", &key_id], &[])
        .await
        .expect(0);
    t.cluster.await_key(&key, false).await.unwrap();
    let r = call(
        &t,
        Some(&key),
        "GET",
        "/v1/wallet/accounts/initech-1/balance",
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.body["code"].clone()),
        (401, json!("unauthenticated"))
    );
    let list = t
        .walletctl(&["--output", "json", "keys", "list"], &[])
        .await;
    let rows = list.json();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key_id"] == key_id.as_str())
        .unwrap()
        .clone();
    assert!(row["revoked_at"].is_string());
    t.walletctl(&["keys", "revoke", "0000000000000000"], &[])
        .await
        .expect(4);
    // Bad input is a usage error.
    t.walletctl(
        &["keys", "create", "--tenant", "a b", "--scopes", "read"],
        &[],
    )
    .await
    .expect(2);
    t.walletctl(
        &["keys", "create", "--tenant", "x", "--scopes", "write"],
        &[],
    )
    .await
    .expect(2);
}
