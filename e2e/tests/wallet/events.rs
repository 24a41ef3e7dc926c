//! The event model end to end: `as_of` from snapshots, the change feed read
//! by a consumer that is killed and restarted, the projector's read models
//! and their rebuild, and `walletctl replay`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use devcluster::ClusterOptions;
use futures::future::join_all;
use participant::bulk::append_deposits;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, Row};

use wallet_shared::protocol::{EventKind, FeedEntry, FeedKind};
use wallet_shared::{routes, AccountId, Currency};

use crate::support::{quick_recovery, Api, TestCluster};

fn with_env(participant_env: &[(&str, &str)], projector: bool) -> ClusterOptions {
    ClusterOptions {
        coordinator_env: quick_recovery(),
        participant_env: participant_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        projector,
        ..ClusterOptions::default()
    }
}

/// The balance at `as_of` as the API rebuilds it, with or without snapshots.
async fn as_of(t: &TestCluster, account: &str, at: DateTime<Utc>, snapshots: bool) -> Value {
    let at = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let r = t
        .get(&format!(
            "/v1/wallet/accounts/{account}/balance?as_of={}&snapshots={snapshots}",
            urlencode(&at)
        ))
        .await;
    assert_eq!(r.status, 200, "as_of {at} of {account}: {}", r.body);
    r.body
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

/// The status and error code of an answer.
async fn code_of(t: &TestCluster, path: &str) -> (u16, String) {
    let r = t.get(path).await;
    let code = r.body["code"].as_str().unwrap_or_default().to_string();
    (r.status, code)
}

/// One string field of every event in an events page.
fn field<'a>(page: &'a Value, name: &str) -> Vec<&'a str> {
    page["events"]
        .as_array()
        .expect("an events page")
        .iter()
        .map(|e| e[name].as_str().unwrap_or_default())
        .collect()
}

async fn movement(t: &TestCluster, account: &str, kind: &str, amount: &str) -> u16 {
    let body = json!({"transaction_id": uuid::Uuid::new_v4(), "amount": amount, "currency": "USD"});
    t.post(&format!("/v1/wallet/accounts/{account}/{kind}"), body)
        .await
        .status
}

/// `walletctl ARGS --output json` against the cluster, the projector's
/// database named: its exit code and stdout.
pub(crate) async fn walletctl(t: &TestCluster, args: &[&str]) -> (i32, String) {
    let db = t.cluster.projector_database_url().unwrap_or_default();
    let args: Vec<&str> = args.iter().copied().chain(["--output", "json"]).collect();
    let ctl = t
        .walletctl(&args, &[("WALLET_PROJECTOR_DATABASE_URL", &db)])
        .await;
    (ctl.code.unwrap_or(-1), ctl.stdout)
}

#[tokio::test]
async fn as_of_equals_what_was_observed_at_each_instant_with_and_without_snapshots() {
    // Snapshots every 3 events, so the traffic below writes several.
    let t = TestCluster::start_with(with_env(&[("WALLET_SNAPSHOT_EVERY", "3")], false)).await;
    let alice = t.accounts_on(0, "alice", 1).remove(0);
    let bob = t.accounts_on(1, "bob", 1).remove(0);
    let before_anything = Utc::now();
    t.open(&alice, "USD").await;
    t.open(&bob, "USD").await;

    let mut observed: Vec<(DateTime<Utc>, String, String)> = Vec::new();
    let steps: [(&str, &str); 8] = [
        ("deposit", "100.00"),
        ("transfer", "12.34"),
        ("withdraw", "7.66"),
        ("transfer", "30.00"),
        ("deposit", "0.01"),
        ("transfer", "500.00"), // refused: insufficient funds
        ("withdraw", "10.00"),
        ("transfer", "0.50"),
    ];
    for (kind, amount) in steps {
        match kind {
            "transfer" => {
                t.transfer(&alice, &bob, amount).await;
            }
            _ => assert_eq!(movement(&t, &alice, kind, amount).await, 200),
        }
        let (a, _) = t.balance(&alice).await;
        let (b, _) = t.balance(&bob).await;
        observed.push((Utc::now(), a, b));
    }
    assert_eq!(observed.last().unwrap().1, "39.51");

    let mut from_snapshots = 0;
    for (at, a, b) in &observed {
        for (account, want) in [(&alice, a), (&bob, b)] {
            let with = as_of(&t, account, *at, true).await;
            let without = as_of(&t, account, *at, false).await;
            assert_eq!(&with["balance"], want.as_str(), "{account} at {at}: {with}");
            assert_eq!(with["balance"], without["balance"]);
            assert_eq!(with["available"], without["available"]);
            assert_eq!(with["last_seq"], without["last_seq"]);
            assert_eq!(without["snapshot"], Value::Null);
            let replayed = with["events_replayed"].as_u64().unwrap();
            assert!(replayed < 3, "{with}");
            if let Some(seq) = with["snapshot"]["seq"].as_i64() {
                from_snapshots += 1;
                assert_eq!(seq % 3, 0);
                assert_eq!(
                    seq + replayed as i64,
                    with["last_seq"].as_i64().unwrap(),
                    "{with}"
                );
            }
        }
    }
    assert!(from_snapshots > 0, "no answer started from a snapshot");

    // The snapshot rows are the fold of the events up to each (the replay
    // check compares them), one every 3 events.
    let (code, out) = walletctl(&t, &["replay", "--all"]).await;
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!(report["snapshots"].as_u64().unwrap() >= 4, "{report}");

    // Before the account existed: 404; not an instant: 400.
    let at = urlencode(&before_anything.to_rfc3339());
    let balance = format!("/v1/wallet/accounts/{alice}/balance");
    assert_eq!(
        code_of(&t, &format!("{balance}?as_of={at}")).await,
        (404, "account_not_found".into())
    );
    for bad in [
        "as_of=yesterday",
        "as_of=2026-13-01T00:00:00Z",
        "as_of=",
        "as_of=2026-01-01T00:00:00Z&snapshots=maybe",
        "snapshots=false",
    ] {
        assert_eq!(
            code_of(&t, &format!("{balance}?{bad}")).await,
            (400, "invalid_request".into()),
            "{bad}"
        );
    }

    // The events, paged and filtered by type.
    let events = format!("/v1/wallet/accounts/{alice}/events?types=deposited,withdrawn");
    let r = t.get(&format!("{events}&limit=2")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(field(&r.body, "type"), ["deposited", "withdrawn"]);
    let next = r.body["next_after"].as_i64().unwrap();
    let r = t.get(&format!("{events}&after={next}")).await;
    assert_eq!(field(&r.body, "amount"), ["0.01", "10.00"]);
    assert_eq!(r.body["next_after"], Value::Null);
    for bad in ["types=gifted", "limit=0", "limit=1001", "after=-1"] {
        assert_eq!(
            code_of(&t, &format!("/v1/wallet/accounts/{alice}/events?{bad}")).await,
            (400, "invalid_request".into()),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn as_of_on_an_account_with_100_000_events_folds_at_most_one_snapshot_interval() {
    // The default interval: a snapshot every 1,000 events. Folding 100,000
    // events without snapshots is slow on a busy machine, and this test is
    // about what is folded, not how fast: the coordinator waits longer for
    // the participant than the quick-recovery setting's 1.5 s.
    let mut options = with_env(&[], false);
    options
        .coordinator_env
        .push(("WALLET_PARTICIPANT_TIMEOUT_MS".into(), "15000".into()));
    let t = TestCluster::start_with(options).await;
    let big = t.accounts_on(2, "big", 1).remove(0);
    t.open(&big, "USD").await;
    assert_eq!(movement(&t, &big, "deposit", "1.00").await, 200);

    // 100,000 more deposits of 0.01, written set-based the way the
    // participant writes them (events, the snapshot every 1,000th, the
    // balance row), one microsecond apart after the real ones.
    const N: i64 = 100_000;
    let mut db = PgConnection::connect(&t.cluster.postgres_url(2))
        .await
        .unwrap();
    let history = append_deposits(&mut db, &big, N, 1_000).await.unwrap();
    assert_eq!(history.first_seq, 3);
    // Another real deposit on top, through the API.
    assert_eq!(movement(&t, &big, "deposit", "1.00").await, 200);
    assert_eq!(t.balance(&big).await.0, "1002.00");

    for k in [1, 999, 1_000, 1_001, 50_500, 99_999, N] {
        let at = history.at(k);
        let with = as_of(&t, &big, at, true).await;
        let without = as_of(&t, &big, at, false).await;
        let want = format!("{}.{:02}", 1 + k / 100, k % 100);
        assert_eq!(with["balance"], want.as_str(), "after {k}: {with}");
        assert_eq!(without["balance"], want.as_str(), "after {k}: {without}");
        assert_eq!(without["events_replayed"].as_i64(), Some(k + 2));
        let replayed = with["events_replayed"].as_i64().unwrap();
        assert!(replayed < 1_000, "after {k}: {with}");
    }
    // The replay check agrees, snapshots included; and catches a broken row.
    let (code, out) = walletctl(&t, &["replay", "--account", &big]).await;
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["events"], json!(N + 3));
    assert_eq!(report["snapshots"], json!(100));
    let mut db = PgConnection::connect(&t.cluster.postgres_url(2))
        .await
        .unwrap();
    sqlx::query("UPDATE snapshots SET posted = posted + 1 WHERE account_id = $1 AND seq = 42000")
        .bind(&big)
        .execute(&mut db)
        .await
        .unwrap();
    let (code, out) = walletctl(&t, &["replay", "--all"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("snapshot at event 42000"), "{out}");
}

/// A consumer of `GET /v1/wallet/events` whose durable state (entries and
/// cursor, saved together per page) survives it being killed.
#[derive(Default)]
struct Consumed {
    cursor: String,
    entries: Vec<Value>,
}

async fn consume(api: Api, state: Arc<Mutex<Consumed>>, pages: usize) {
    for _ in 0..pages {
        let cursor = state.lock().unwrap().cursor.clone();
        let r = api
            .get(&format!("/v1/wallet/events?after={cursor}&limit=7"))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let mut s = state.lock().unwrap();
        s.entries
            .extend(r.body["events"].as_array().unwrap().iter().cloned());
        s.cursor = r.body["next_after"].as_str().unwrap().to_string();
    }
}

/// Each node's events as their databases hold them: (node, account, seq).
async fn stored_events(t: &TestCluster) -> Vec<(String, String, i64)> {
    let mut out = Vec::new();
    for i in 0..3 {
        let mut db = PgConnection::connect(&t.cluster.postgres_url(i))
            .await
            .unwrap();
        for row in sqlx::query("SELECT account_id, seq FROM events ORDER BY account_id, seq")
            .fetch_all(&mut db)
            .await
            .unwrap()
        {
            out.push((t.cluster.node_id(i), row.get(0), row.get(1)));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_feed_consumer_killed_and_restarted_mid_stream_gets_every_event_once_in_order() {
    let t = TestCluster::start().await;
    let accounts: Vec<String> = (0..3)
        .flat_map(|node| t.accounts_on(node, "feed", 2))
        .collect();
    for a in &accounts {
        t.open(a, "USD").await;
        t.deposit(a, "50.00", "USD").await;
    }
    // Writers: concurrent transfers among the accounts (some refused).
    let writers = (0..4).map(|w| {
        let t = t.api();
        let accounts = accounts.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                let from = &accounts[(w + i) % accounts.len()];
                let to = &accounts[(w * 3 + i * 5 + 1) % accounts.len()];
                if from == to {
                    continue;
                }
                let body =
                    TestCluster::transfer_body(uuid::Uuid::new_v4(), from, to, "3.00", "USD");
                let r = t.post("/v1/wallet/balance_transfer", body).await;
                assert!([200, 422].contains(&r.status), "{}", r.body);
            }
        })
    });
    let writers: Vec<_> = writers.collect();

    // The consumer runs a few pages at a time and is killed (its task
    // aborted, possibly mid-request) between runs, while writes go on.
    let state = Arc::new(Mutex::new(Consumed::default()));
    for round in 0..6 {
        let task = tokio::spawn(consume(t.api(), state.clone(), 1_000));
        tokio::time::sleep(Duration::from_millis(150 + 40 * round)).await;
        task.abort();
        let _ = task.await;
    }
    for w in join_all(writers).await {
        w.unwrap();
    }
    let want = stored_events(&t).await;
    // Restarted once more, it reads until it has caught up with every head.
    let api = t.api();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        consume(api.clone(), state.clone(), 1).await;
        let s = state.lock().unwrap();
        let events = s.entries.iter().filter(|e| e["seq"].is_i64()).count();
        if events >= want.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed has {events} events, the databases {}",
            want.len()
        );
    }

    let s = std::mem::take(&mut *state.lock().unwrap());
    // Positions per node: 1, 2, 3, ... once each.
    let mut by_node: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for e in &s.entries {
        by_node
            .entry(e["node"].as_str().unwrap().to_string())
            .or_default()
            .push(e["position"].as_i64().unwrap());
    }
    for (node, positions) in &by_node {
        let expected: Vec<i64> = (1..=positions.len() as i64).collect();
        assert_eq!(positions, &expected, "{node}'s positions");
    }
    // Exactly the stored events, each account's in sequence order.
    let mut got: Vec<(String, String, i64)> = s
        .entries
        .iter()
        .filter(|e| e["seq"].is_i64())
        .map(|e| {
            (
                e["node"].as_str().unwrap().to_string(),
                e["account_id"].as_str().unwrap().to_string(),
                e["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut last_seq: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, account, seq) in &got {
        let last = last_seq.entry(account).or_insert(0);
        assert_eq!(*seq, *last + 1, "{account}: event {seq} after {last}");
        *last = *seq;
    }
    got.sort();
    assert_eq!(got, want);
    // Refused transfers are in the feed too, once each.
    let aborted: Vec<&Value> = s
        .entries
        .iter()
        .filter(|e| e["type"] == "transfer_aborted")
        .collect();
    let audit = t.wait_settled().await;
    let decided_aborted = audit
        .transfers
        .values()
        .filter(|x| x.state == "aborted")
        .count();
    assert_eq!(aborted.len(), decided_aborted);
    assert!(aborted
        .iter()
        .all(|e| e["reason"] == "insufficient_funds" && e["amount"] == "3.00"));

    assert_eq!(
        code_of(&t, "/v1/wallet/events?after=node-1:x").await,
        (400, "invalid_request".into())
    );

    // The classic outbox bug, staged: a transaction that wrote its outbox
    // row before others but commits after them. A reader whose cursor has
    // passed the others' entries must still get its entry, after them.
    let mut slow = PgConnection::connect(&t.cluster.postgres_url(0))
        .await
        .unwrap();
    let mut slow_tx = slow.begin().await.unwrap();
    let late = FeedEntry {
        position: 0,
        kind: FeedKind::Event(EventKind::Opened),
        account_id: AccountId::parse("late-writer").unwrap(),
        seq: Some(1),
        amount: 0,
        currency: Currency::parse("USD").unwrap(),
        transaction_id: None,
        counterparty: None,
        reason: None,
        partition: 0,
        at: Utc::now(),
    };
    sqlx::query("INSERT INTO outbox (entries, body) VALUES (1, $1::json)")
        .bind(serde_json::to_string(&[&late]).unwrap())
        .execute(&mut *slow_tx)
        .await
        .unwrap();
    let on_first = &accounts[0];
    assert_eq!(t.node_of(on_first), 0);
    t.deposit(on_first, "1.00", "USD").await;
    let state = Arc::new(Mutex::new(Consumed {
        cursor: s.cursor.clone(),
        entries: Vec::new(),
    }));
    let seen = |state: &Arc<Mutex<Consumed>>, what: &dyn Fn(&Value) -> bool| {
        state.lock().unwrap().entries.iter().position(what)
    };
    let deposited = |e: &Value| e["account_id"] == on_first.as_str() && e["type"] == "deposited";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen(&state, &deposited).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deposit never showed"
        );
        consume(api.clone(), state.clone(), 1).await;
    }
    slow_tx.commit().await.unwrap();
    let is_late = |e: &Value| e["account_id"] == "late-writer";
    while seen(&state, &is_late).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the late transaction's entry was skipped"
        );
        consume(api.clone(), state.clone(), 1).await;
    }
    let entries = state.lock().unwrap().entries.clone();
    let position = |what: &dyn Fn(&Value) -> bool| {
        entries.iter().find(|e| what(e)).unwrap()["position"].as_i64()
    };
    assert!(position(&is_late) > position(&deposited));
}

/// The projector's database, once it has projected every node's feed up to
/// the head the node has now.
pub(crate) async fn projected(t: &TestCluster) -> projector::Projections {
    let projections = projector::Projections::connect(
        &t.cluster.projector_database_url().unwrap(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let mut heads = BTreeMap::new();
    for i in 0..3 {
        let url = t.cluster.participant_url(i);
        // The consumers' route: it answers even when the feed's start is
        // pruned.
        let feed: Value = t
            .internal(t.http.get(format!("{url}{}", routes::FEED_CONSUMERS)))
            .await
            .json()
            .await
            .unwrap();
        heads.insert(t.cluster.node_id(i), feed["head"].as_i64().unwrap());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let cursors = projections.cursors().await.unwrap();
        let caught_up = heads.iter().all(|(node, head)| {
            cursors
                .iter()
                .any(|c| &c.node_id == node && c.position >= *head)
        });
        if caught_up {
            return projections;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "projector behind: {cursors:?}, heads {heads:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn projections_add_up_after_random_traffic_and_a_rebuild_gives_the_same_tables() {
    let mut t = TestCluster::start_with(with_env(&[], true)).await;
    let mut accounts: Vec<(String, &str)> = Vec::new();
    for node in 0..3 {
        for (i, a) in t.accounts_on(node, "proj", 4).into_iter().enumerate() {
            accounts.push((a, if i % 2 == 0 { "USD" } else { "JPY" }));
        }
    }
    for (a, c) in &accounts {
        t.open(a, c).await;
    }
    // Random deposits, withdrawals and transfers (some overdraw, some cross
    // currencies); what committed is tallied per currency.
    let tally: Arc<Mutex<BTreeMap<&str, i64>>> = Arc::default();
    let api = t.api();
    let traffic = |seed: u64| {
        let api = api.clone();
        let accounts = accounts.clone();
        let tally = tally.clone();
        async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            for _ in 0..60 {
                let (a, c) = &accounts[rng.usize(..accounts.len())];
                let minor = rng.i64(1..5_000);
                let amount = if *c == "JPY" {
                    minor.to_string()
                } else {
                    format!("{}.{:02}", minor / 100, minor % 100)
                };
                let id = uuid::Uuid::new_v4();
                match rng.u8(..4) {
                    0 | 1 => {
                        let kind = if rng.bool() { "deposit" } else { "withdraw" };
                        let body = json!({"transaction_id": id, "amount": amount, "currency": c});
                        let r = api
                            .post(&format!("/v1/wallet/accounts/{a}/{kind}"), body)
                            .await;
                        if r.status == 200 {
                            let sign = if kind == "deposit" { 1 } else { -1 };
                            *tally.lock().unwrap().entry(c).or_default() += sign * minor;
                        }
                    }
                    _ => {
                        let (b, _) = &accounts[rng.usize(..accounts.len())];
                        if a != b {
                            let body = TestCluster::transfer_body(id, a, b, &amount, c);
                            api.post("/v1/wallet/balance_transfer", body).await;
                        }
                    }
                }
            }
        }
    };
    let first = join_all((0..3).map(|s| tokio::spawn(traffic(s))));
    // The projector is killed and restarted while it follows the traffic.
    tokio::time::sleep(Duration::from_millis(800)).await;
    t.cluster.projector_mut().unwrap().kill9().await.unwrap();
    for r in first.await {
        r.unwrap();
    }
    t.cluster.projector_mut().unwrap().restart().await.unwrap();
    for r in join_all((3..5).map(|s| tokio::spawn(traffic(s)))).await {
        r.unwrap();
    }
    let audit = t.wait_settled().await;
    let projections = projected(&t).await;

    // The ledger: deposits minus withdrawals per currency, and the sum of
    // every balance; nothing held once settled.
    let ledger = projections.ledger().await.unwrap();
    let tally = tally.lock().unwrap().clone();
    for (currency, net) in &tally {
        let row = &ledger[*currency];
        assert_eq!(row.posted, *net as i128, "{currency}: {row:?}");
        assert_eq!(row.deposited - row.withdrawn, *net as i128, "{currency}");
        assert_eq!(row.posted, audit.total(currency) as i128, "{currency}");
        assert_eq!((row.held, row.pending_credit), (0, 0));
    }
    assert_eq!(
        ledger.values().map(|r| r.accounts).sum::<i64>(),
        accounts.len() as i64
    );
    // The account view: every balance as stored.
    assert_account_view(&projections, &audit).await;
    // Rejected transfers: one per aborted decision.
    let rejected: i64 =
        sqlx::query_scalar("SELECT COALESCE(sum(transfers), 0)::int8 FROM rejected_transfers")
            .fetch_one(&projections.pool)
            .await
            .unwrap();
    let aborted = audit
        .transfers
        .values()
        .filter(|x| x.kind == "transfer" && x.state == "aborted")
        .count();
    assert_eq!(rejected, aborted as i64);
    assert!(
        aborted > 0,
        "the traffic should have overdrawn at least once"
    );
    let status: Value = t
        .http
        .get(format!("{}/status", t.cluster.projector().unwrap().url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["feeds"].as_array().unwrap().len(), 3, "{status}");
    assert_projector_reads(&t, &ledger, &audit, aborted as i64).await;

    // A rebuild, with the projector still running, gives the same tables.
    let before = projections.dump().await.unwrap();
    let (code, out) = walletctl(&t, &["projections", "rebuild"]).await;
    assert_eq!(code, 0, "{out}");
    let projections = projected(&t).await;
    assert_eq!(projections.dump().await.unwrap(), before);
}

/// The projector's read endpoints say what its tables and the stores hold:
/// `/v1/ledger` per currency, `/v1/accounts/{id}` per account (and 404 for
/// one it never saw), `/v1/rejected_transfers` one per aborted transfer.
async fn assert_projector_reads(
    t: &TestCluster,
    ledger: &BTreeMap<String, projector::models::LedgerRow>,
    audit: &chaos::audit::Audit,
    aborted: i64,
) {
    let base = t.cluster.projector().unwrap().url();
    let get = |path: String| {
        let http = t.http.clone();
        let url = format!("{base}{path}");
        async move {
            let r = http.get(&url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let money = |currency: &str, minor: i128| {
        Currency::parse(currency)
            .unwrap()
            .format(i64::try_from(minor).unwrap())
    };
    let (status, body) = get("/v1/ledger".into()).await;
    assert_eq!(status, 200, "{body}");
    let rows = body["ledger"].as_array().unwrap();
    assert_eq!(rows.len(), ledger.len(), "{body}");
    for row in rows {
        let currency = row["currency"].as_str().unwrap();
        let want = &ledger[currency];
        assert_eq!(row["total"], json!(money(currency, want.posted)), "{row}");
        assert_eq!(row["held"], json!(money(currency, want.held)), "{row}");
        assert_eq!(
            (&row["deposited"], &row["withdrawn"]),
            (
                &json!(money(currency, want.deposited)),
                &json!(money(currency, want.withdrawn))
            ),
            "{row}"
        );
        assert_eq!(row["accounts"], json!(want.accounts), "{row}");
    }
    for (id, stored) in &audit.accounts {
        let (status, body) = get(format!("/v1/accounts/{id}")).await;
        assert_eq!(status, 200, "{id}: {body}");
        let c = &stored.currency;
        assert_eq!(
            (&body["balance"], &body["available"], &body["last_seq"]),
            (
                &json!(money(c, stored.posted.into())),
                &json!(money(c, (stored.posted - stored.held).into())),
                &json!(stored.last_seq)
            ),
            "{id}: {body}"
        );
    }
    let (status, body) = get("/v1/accounts/never-opened".into()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("account_not_found")),
        "{body}"
    );
    let (status, body) = get("/v1/rejected_transfers".into()).await;
    assert_eq!(status, 200, "{body}");
    let listed: i64 = body["rejected_transfers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["transfers"].as_i64().unwrap())
        .sum();
    assert_eq!(listed, aborted, "{body}");
}

/// The account view holds every stored balance, each account's every event
/// counted once (events = last sequence number).
async fn assert_account_view(projections: &projector::Projections, audit: &chaos::audit::Audit) {
    let view: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT account_id, posted, last_seq, events FROM account_view ORDER BY account_id",
    )
    .fetch_all(&projections.pool)
    .await
    .unwrap();
    let stored: Vec<(String, i64, i64, i64)> = audit
        .accounts
        .iter()
        .map(|(id, s)| (id.clone(), s.posted, s.last_seq, s.last_seq))
        .collect();
    assert_eq!(view, stored);
}

#[tokio::test]
async fn a_partition_move_neither_repeats_nor_loses_events_in_the_feed_and_projections() {
    let mut t = TestCluster::start_with(with_env(&[], true)).await;
    // It reads the feed from its start at the end: a reader that does so
    // registers, or the projector's progress lets the nodes prune it.
    t.hold_feeds("feed-reader").await;
    let (a, b) = t.same_partition_pair("mover");
    let from = t.node_of(&a);
    let others: Vec<String> = (0..3)
        .filter(|&n| n != from)
        .map(|n| t.accounts_on(n, "stay", 1).remove(0))
        .collect();
    for x in [&a, &b].into_iter().chain(&others) {
        t.open(x, "USD").await;
        t.deposit(x, "100.00", "USD").await;
    }
    let traffic = |t: &TestCluster| {
        let pairs = [
            (&a, &others[0]),
            (&others[1], &b),
            (&a, &b),
            (&others[0], &a),
        ];
        let api = t.api();
        async move {
            for (x, y) in pairs {
                let body = TestCluster::transfer_body(uuid::Uuid::new_v4(), x, y, "7.00", "USD");
                let r = api.post("/v1/wallet/balance_transfer", body).await;
                assert_eq!(r.status, 200, "{}", r.body);
            }
        }
    };
    traffic(&t).await;
    let p = t.partition_of(&a).to_string();
    let to = t.cluster.node_id((from + 1) % 3);
    let ctl = t
        .walletctl(&["partitions", "move", &p, "--to", &to], &[])
        .await;
    assert_eq!(ctl.code, Some(0), "{}", ctl.stderr);
    t.reload_map().await;
    assert_ne!(t.node_of(&a), from);
    traffic(&t).await;
    t.deposit(&a, "1.00", "USD").await;

    let audit = t.wait_settled().await;
    let projections = projected(&t).await;
    assert_account_view(&projections, &audit).await;
    let ledger = projections.ledger().await.unwrap();
    // Four accounts with 100.00 each, and 1.00 more: 401.00 in minor units.
    assert_eq!(ledger["USD"].posted, 40_100);
    assert_eq!(ledger["USD"].posted, audit.total("USD") as i128);
    // The feed through the coordinator: each event once, moved ones included.
    let events: i64 = audit.accounts.values().map(|s| s.last_seq).sum();
    let state = Arc::new(Mutex::new(Consumed::default()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        consume(t.api(), state.clone(), 1).await;
        let s = state.lock().unwrap();
        if s.entries.iter().filter(|e| e["seq"].is_i64()).count() as i64 >= events {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the feed is short");
    }
    let mut seen: BTreeMap<(String, i64), usize> = BTreeMap::new();
    for e in &state.lock().unwrap().entries {
        if let Some(seq) = e["seq"].as_i64() {
            *seen
                .entry((e["account_id"].as_str().unwrap().to_string(), seq))
                .or_default() += 1;
        }
    }
    assert_eq!(seen.len() as i64, events);
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
}
