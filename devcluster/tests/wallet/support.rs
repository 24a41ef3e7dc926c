//! What every test shares: a running cluster, an HTTP client for the public
//! API, account ids placed on chosen nodes, and an audit that reads every
//! participant's Postgres directly and checks what can be checked at rest.

use std::collections::BTreeMap;
use std::time::Duration;

use devcluster::{Cluster, ClusterOptions};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use wallet_shared::protocol::EventKind;
use wallet_shared::{AccountId, PartitionMap};

/// Recovery settings short enough for tests to watch it work.
pub fn quick_recovery() -> Vec<(String, String)> {
    [
        ("WALLET_LEASE_MS", "1500"),
        ("WALLET_RESOLVER_INTERVAL_MS", "200"),
        ("WALLET_RESOLVER_GRACE_MS", "500"),
        ("WALLET_PARTICIPANT_TIMEOUT_MS", "1500"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub struct TestCluster {
    pub cluster: Cluster,
    pub http: reqwest::Client,
    pub map: PartitionMap,
    /// Which coordinator the helpers talk to.
    pub coordinator: usize,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
}

/// A client of one coordinator's public API; cheap to clone into tasks.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

impl Api {
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let resp = req.send().await.expect("coordinator answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply { status, body }
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }
}

impl TestCluster {
    pub async fn start() -> Self {
        Self::start_with(ClusterOptions {
            coordinator_env: quick_recovery(),
            ..ClusterOptions::default()
        })
        .await
    }

    pub async fn start_with(options: ClusterOptions) -> Self {
        let cluster = Cluster::start(options).await.expect("cluster starts");
        let map = cluster
            .map_store()
            .await
            .expect("etcd")
            .load()
            .await
            .expect("partition map");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        TestCluster {
            cluster,
            http,
            map,
            coordinator: 0,
        }
    }

    pub fn api(&self) -> Api {
        Api {
            http: self.http.clone(),
            base: self.cluster.coordinator_url(self.coordinator),
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.api().post(path, body).await
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        let api = self.api();
        let req = api
            .http
            .post(format!("{}{path}", api.base))
            .header("content-type", "application/json")
            .body(body);
        api.send(req).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.api().get(path).await
    }

    pub async fn open(&self, account: &str, currency: &str) {
        let r = self
            .post(
                "/v1/wallet/accounts",
                json!({"account_id": account, "currency": currency}),
            )
            .await;
        assert_eq!(r.status, 200, "open {account}: {}", r.body);
    }

    pub async fn deposit(&self, account: &str, amount: &str, currency: &str) {
        let body =
            json!({"transaction_id": uuid::Uuid::new_v4(), "amount": amount, "currency": currency});
        let r = self
            .post(&format!("/v1/wallet/accounts/{account}/deposit"), body)
            .await;
        assert_eq!(r.status, 200, "deposit into {account}: {}", r.body);
    }

    pub fn transfer_body(
        id: uuid::Uuid,
        from: &str,
        to: &str,
        amount: &str,
        currency: &str,
    ) -> Value {
        json!({"transaction_id": id, "from_account": from, "to_account": to, "amount": amount, "currency": currency})
    }

    pub async fn transfer(&self, from: &str, to: &str, amount: &str) -> Reply {
        let body = Self::transfer_body(uuid::Uuid::new_v4(), from, to, amount, "USD");
        self.post("/v1/wallet/balance_transfer", body).await
    }

    /// (balance, available) as the API shows them.
    pub async fn balance(&self, account: &str) -> (String, String) {
        let r = self
            .get(&format!("/v1/wallet/accounts/{account}/balance"))
            .await;
        assert_eq!(r.status, 200, "balance of {account}: {}", r.body);
        (
            r.body["balance"].as_str().unwrap().to_string(),
            r.body["available"].as_str().unwrap().to_string(),
        )
    }

    /// Index of the participant that owns `account`.
    pub fn node_of(&self, account: &str) -> usize {
        let id = AccountId::parse(account).unwrap();
        let owner = self.map.owner(self.map.account_partition(&id)).unwrap();
        (0..self.cluster.participants().len())
            .find(|&i| &self.cluster.node_id(i) == owner)
            .unwrap()
    }

    pub fn partition_of(&self, account: &str) -> u32 {
        self.map
            .account_partition(&AccountId::parse(account).unwrap())
    }

    /// `n` account ids that live on participant `node`.
    pub fn accounts_on(&self, node: usize, prefix: &str, n: usize) -> Vec<String> {
        (0..)
            .map(|i| format!("{prefix}-{i}"))
            .filter(|a| self.node_of(a) == node)
            .take(n)
            .collect()
    }

    /// A transaction id whose decision record lives on participant `node`.
    pub fn transaction_id_homed_on(&self, node: usize) -> uuid::Uuid {
        let owner = self.cluster.node_id(node);
        std::iter::repeat_with(uuid::Uuid::new_v4)
            .find(|id| {
                self.map.owner(
                    self.map
                        .decision_partition(wallet_shared::TransactionId(*id)),
                ) == Some(&owner)
            })
            .unwrap()
    }

    /// Two account ids in the same partition.
    pub fn same_partition_pair(&self, prefix: &str) -> (String, String) {
        let first = format!("{prefix}-0");
        let p = self.partition_of(&first);
        let second = (1..)
            .map(|i| format!("{prefix}-{i}"))
            .find(|a| self.partition_of(a) == p)
            .unwrap();
        (first, second)
    }

    /// Polls the transfer's status until it is no longer pending.
    pub async fn settled(&self, id: uuid::Uuid, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let r = self.get(&format!("/v1/wallet/transfers/{id}")).await;
            if r.status == 200 && r.body["status"] != "pending" {
                return r.body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "transfer {id} still unsettled: {} {}",
                r.status,
                r.body
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn pools(&self) -> Vec<PgPool> {
        let mut pools = Vec::new();
        for i in 0..self.cluster.participants().len() {
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(Duration::from_secs(10))
                .connect(&self.cluster.postgres_url(i))
                .await
                .expect("postgres");
            pools.push(pool);
        }
        pools
    }

    /// Reads every participant's accounts and events.
    pub async fn audit(&self) -> Audit {
        let mut audit = Audit::default();
        for pool in self.pools().await {
            for row in sqlx::query(
                "SELECT account_id, currency, posted, held, pending_credit FROM accounts",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
            {
                audit.accounts.insert(
                    row.get("account_id"),
                    Stored {
                        currency: row.get("currency"),
                        posted: row.get("posted"),
                        held: row.get("held"),
                        pending_credit: row.get("pending_credit"),
                    },
                );
            }
            for row in sqlx::query("SELECT account_id, seq, kind, amount, transaction_id FROM events ORDER BY account_id, seq")
                .fetch_all(&pool)
                .await
                .unwrap()
            {
                audit.events.push(AuditEvent {
                    account: row.get("account_id"),
                    seq: row.get("seq"),
                    kind: EventKind::parse(row.get("kind")).expect("known event kind"),
                    amount: row.get("amount"),
                    transaction_id: row.get("transaction_id"),
                });
            }
            let prepared: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_prepared_xacts")
                .fetch_one(&pool)
                .await
                .unwrap();
            audit.prepared_xacts += prepared;
            let legs: i64 =
                sqlx::query_scalar("SELECT count(*) FROM legs WHERE state = 'prepared'")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            audit.prepared_legs += legs;
        }
        audit
    }
}

#[derive(Debug)]
pub struct Stored {
    pub currency: String,
    pub posted: i64,
    pub held: i64,
    pub pending_credit: i64,
}

#[derive(Debug)]
pub struct AuditEvent {
    pub account: String,
    pub seq: i64,
    pub kind: EventKind,
    pub amount: i64,
    pub transaction_id: Option<uuid::Uuid>,
}

#[derive(Debug, Default)]
pub struct Audit {
    pub accounts: BTreeMap<String, Stored>,
    pub events: Vec<AuditEvent>,
    pub prepared_xacts: i64,
    pub prepared_legs: i64,
}

impl Audit {
    /// Promises checkable at rest once everything has settled: every
    /// balance is the fold of its events (with gapless sequence numbers),
    /// nothing is negative, held or pending, no prepared transaction is left.
    pub fn assert_settled(&self) {
        let mut folded: BTreeMap<&str, (i64, i64, i64, i64)> = BTreeMap::new();
        for e in &self.events {
            let f = folded.entry(&e.account).or_default();
            assert_eq!(
                e.seq,
                f.3 + 1,
                "events of {} have a gap or a repeat at {}",
                e.account,
                e.seq
            );
            let (dp, dh, dc) = e.kind.effect(e.amount);
            *f = (f.0 + dp, f.1 + dh, f.2 + dc, e.seq);
        }
        for (id, s) in &self.accounts {
            let (p, h, c, _) = folded.get(id.as_str()).copied().unwrap_or_default();
            assert_eq!(
                (s.posted, s.held, s.pending_credit),
                (p, h, c),
                "account {id}: stored balance differs from its events"
            );
            assert!(s.posted >= 0, "account {id} is negative");
            assert_eq!(s.held, 0, "account {id} still has funds held");
            assert_eq!(
                s.pending_credit, 0,
                "account {id} still has a pending credit"
            );
        }
        assert_eq!(self.prepared_xacts, 0, "rows left in pg_prepared_xacts");
        assert_eq!(self.prepared_legs, 0, "legs left prepared");
    }

    pub fn total(&self, currency: &str) -> i64 {
        self.accounts
            .values()
            .filter(|s| s.currency == currency)
            .map(|s| s.posted)
            .sum()
    }

    pub fn posted(&self, account: &str) -> i64 {
        self.accounts[account].posted
    }

    /// How many times the transfer moved money out of and into accounts.
    pub fn applied(&self, id: uuid::Uuid) -> (usize, usize) {
        let mine = self.events.iter().filter(|e| e.transaction_id == Some(id));
        let (mut out, mut inn) = (0, 0);
        for e in mine {
            match e.kind {
                EventKind::DebitPosted | EventKind::TransferredOut => out += 1,
                EventKind::CreditPosted | EventKind::TransferredIn => inn += 1,
                _ => {}
            }
        }
        (out, inn)
    }
}
