//! Between services: a participant obeys only the cluster's own services.
//! Every internal route refuses a call that is not signed with the cluster
//! secret, signed with another secret, or signed outside the replay window,
//! and nothing changes; the cluster's own signed calls go on working; the
//! secret appears in no log; no service starts without it.

use reqwest::Method;
use serde_json::{json, Value};
use wallet_shared::protocol::{Movement, MovementKind, Routed};
use wallet_shared::secret::Secret;
use wallet_shared::{routes, signing, AccountId, Amount, Currency, TransactionId};

use crate::support::TestCluster;

/// The methods a route is served with.
fn methods(r: routes::Route) -> &'static [Method] {
    use routes::*;
    const GETS: [Route; 13] = [
        TRANSFER,
        UNRESOLVED,
        BALANCE,
        EVENTS,
        FEED,
        FEED_CONSUMERS,
        HISTORY_EVENTS,
        HISTORY_ABORTED,
        REPLAY,
        PARTITIONS,
        ROWS,
        SUMMARY,
        LEGS_OF,
    ];
    if GETS.contains(&r) {
        &[Method::GET]
    } else if r == FENCE {
        &[Method::POST, Method::DELETE]
    } else if r == FEED_CONSUMER {
        &[Method::PUT, Method::DELETE]
    } else {
        &[Method::POST]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_internal_route_refuses_unsigned_forged_and_stale_calls() {
    let t = TestCluster::start().await;
    let account = t.accounts_on(0, "sig", 1).remove(0);
    t.open(&account, "USD").await;
    t.deposit(&account, "10.00", "USD").await;
    let before = t.balance(&account).await;
    let node = t.cluster.participant_url(t.node_of(&account));
    let partition = t.partition_of(&account);
    let usd = Currency::parse("USD").unwrap();
    let id = AccountId::parse(&account).unwrap();
    let stranger = t.accounts_on(0, "sig-new", 1).remove(0);

    // What a forger would send: a credit of 1,000,000.00 out of nowhere, a
    // new account, a partition frozen then dropped.
    let forged_body = |r: routes::Route| -> Value {
        if r == routes::MOVEMENTS {
            json!(Routed {
                map_revision: t.map.revision,
                traces: Vec::new(),
                body: Movement {
                    transaction_id: TransactionId(uuid::Uuid::new_v4()),
                    kind: MovementKind::Deposit,
                    partition,
                    account_id: id.clone(),
                    amount: Amount::parse("1000000.00", usd).unwrap(),
                    currency: usd,
                    tenant: None,
                },
            })
        } else if r == routes::ACCOUNTS {
            json!({"map_revision": t.map.revision, "account_id": stranger,
                   "partition": t.partition_of(&stranger), "currency": "USD"})
        } else if r == routes::FENCE {
            json!({"state": "moved", "to": "node-2"})
        } else {
            json!({"map_revision": t.map.revision})
        }
    };
    let path_of = |r: routes::Route| -> String {
        let p = r.pattern();
        let path = if p.contains("/accounts/{") {
            r.with(&account)
        } else if p.contains("{p}") {
            r.with(partition)
        } else {
            r.with(uuid::Uuid::new_v4())
        };
        if methods(r) == [Method::GET] {
            format!(
                "{path}?map_revision={}&partition={partition}",
                t.map.revision
            )
        } else {
            path
        }
    };

    let other_secret = Secret::generate();
    let mut refused = 0;
    let mut sent_signatures = Vec::new();
    for r in routes::ALL {
        for method in methods(r) {
            let path = path_of(r);
            let body = if *method == Method::POST || *method == Method::PUT {
                serde_json::to_vec(&forged_body(r)).unwrap()
            } else {
                Vec::new()
            };
            let now = chrono::Utc::now().timestamp_millis();
            let variants = [
                ("unsigned", None),
                (
                    "another secret",
                    Some(signing::headers(
                        &other_secret,
                        method.as_str(),
                        &path,
                        &body,
                    )),
                ),
                (
                    "stale",
                    Some(signing::headers_at(
                        &t.secret,
                        method.as_str(),
                        &path,
                        &body,
                        now - 5 * 60_000,
                    )),
                ),
            ];
            for (what, headers) in variants {
                let mut req = t
                    .http
                    .request(method.clone(), format!("{node}{path}"))
                    .header("content-type", "application/json")
                    .body(body.clone());
                if let Some(h) = headers {
                    sent_signatures.push(h[signing::SIGNATURE].to_str().unwrap().to_string());
                    req = req.headers(h);
                }
                let resp = req.send().await.expect("participant answers");
                let status = resp.status().as_u16();
                let answer: Value = resp.json().await.unwrap_or(Value::Null);
                assert_eq!(status, 401, "{method} {path} ({what}): {answer}");
                assert_eq!(
                    answer["code"], "unauthenticated",
                    "{method} {path}: {answer}"
                );
                refused += 1;
            }
        }
    }
    // FENCE and FEED_CONSUMER are served with two methods each.
    assert_eq!(refused, 3 * (routes::ALL.len() + 2));

    // Nothing changed: the balance, no new account, no fence, the partition
    // still served (by the cluster's own signed calls).
    assert_eq!(t.balance(&account).await, before);
    let r = t
        .get(&format!("/v1/wallet/accounts/{stranger}/balance"))
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let held: Value = t
        .internal(t.http.get(format!("{node}{}", routes::PARTITIONS)))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(held["fences"], json!({}), "{held}");
    t.deposit(&account, "1.00", "USD").await;
    assert_eq!(t.balance(&account).await.0, "11.00");
    let audit = t.walletctl(&["audit"], &[]).await;
    assert_eq!(audit.code, Some(0), "{}{}", audit.stdout, audit.stderr);

    // A signed operator call that must not run twice is accepted once.
    let discard = routes::DISCARD.with(partition);
    let h = signing::headers(&t.secret, "POST", &discard, b"");
    let send = || {
        t.http
            .post(format!("{node}{discard}"))
            .headers(h.clone())
            .send()
    };
    // The first is judged (this node owns the partition: nothing to discard).
    let first = send().await.unwrap();
    let status = first.status().as_u16();
    let body = first.text().await.unwrap();
    assert!(
        (400..500).contains(&status) && status != 401,
        "{status} {body}"
    );
    // The same request again is refused unread.
    let again = send().await.unwrap();
    let status = again.status().as_u16();
    let body = again.text().await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("replayed"), "{body}");
    assert_eq!(t.balance(&account).await.0, "11.00");

    // The refusals are logged, without the secret or any signature.
    let secret = std::fs::read_to_string(t.cluster.cluster_secret_file()).unwrap();
    let secret = secret.trim();
    let mut refusals = 0;
    for c in t.cluster.manifest().components {
        let log = std::fs::read_to_string(&c.log).unwrap_or_default();
        assert!(!log.contains(secret), "{} logs the cluster secret", c.name);
        for s in &sent_signatures {
            assert!(!log.contains(s.as_str()), "{} logs a signature", c.name);
        }
        refusals += log.matches("refused an internal request").count();
    }
    assert!(
        refusals >= refused,
        "{refusals} refusals logged of {refused}"
    );
}

#[tokio::test]
async fn no_service_starts_without_the_cluster_secret() {
    for service in ["participant", "coordinator", "projector"] {
        let binary = devcluster::find_binary(service).expect("cargo build --workspace");
        let out = tokio::process::Command::new(binary)
            .env_clear()
            .env("WALLET_NODE_ID", "node-1")
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{service} started without a secret");
        assert!(
            stderr.contains("no cluster secret") && stderr.contains("WALLET_CLUSTER_SECRET_FILE"),
            "{service}: {stderr}"
        );
    }
}
