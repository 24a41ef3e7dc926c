//! What every test shares: a running cluster, an HTTP client for the public
//! API, account ids placed on chosen nodes, and the audit
//! (`chaos::audit`) that reads every participant's Postgres
//! directly and checks what can be checked at rest.

use std::time::Duration;

use chaos::audit::Audit;
pub use chaos::quick_recovery;
use chaos::workload::accounts_on;
use devcluster::{Cluster, ClusterOptions};
use serde_json::{json, Value};
use wallet_shared::secret::Secret;
use wallet_shared::{signing, AccountId, PartitionMap};

pub struct TestCluster {
    pub cluster: Cluster,
    pub http: reqwest::Client,
    pub map: PartitionMap,
    /// Which coordinator the helpers talk to.
    pub coordinator: usize,
    /// The cluster secret, to sign calls made straight to participants.
    pub secret: Secret,
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
        let map = read_map(&cluster).await;
        // Every request of the tests carries the operator's key (scope
        // admin); `auth.rs` tests the others.
        let http = reqwest::Client::builder()
            .default_headers(devcluster::bearer(cluster.admin_key()))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        let secret = Secret::from_file(cluster.cluster_secret_file()).expect("the cluster secret");
        TestCluster {
            cluster,
            http,
            map,
            coordinator: 0,
            secret,
        }
    }

    /// Sends a call straight to a participant, signed as the cluster's own
    /// services sign theirs.
    pub async fn internal(&self, req: reqwest::RequestBuilder) -> reqwest::Response {
        signing::send(Some(&self.secret), req)
            .await
            .expect("participant answers")
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
        accounts_on(&self.map, &self.cluster.node_id(node), prefix, n)
    }

    /// `n` account ids that live in partition `p`.
    pub fn accounts_in(
        &self,
        p: wallet_shared::PartitionId,
        prefix: &str,
        n: usize,
    ) -> Vec<String> {
        (0..)
            .map(|i| format!("{prefix}-{i}"))
            .filter(|a| self.partition_of(a) == p)
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

    /// Registers a feed consumer `name` at position 0 on every node: their
    /// outboxes are kept whole while it stays there.
    pub async fn hold_feeds(&self, name: &str) {
        for i in 0..self.cluster.participants().len() {
            let url = format!(
                "{}{}",
                self.cluster.participant_url(i),
                wallet_shared::routes::FEED_CONSUMER.with(name)
            );
            let ack = wallet_shared::protocol::FeedAck { position: 0 };
            let resp = self.internal(self.http.put(url).json(&ack)).await;
            assert!(resp.status().is_success(), "{}", resp.status());
        }
    }

    /// URLs of every participant's database.
    pub fn databases(&self) -> Vec<String> {
        (0..self.cluster.participants().len())
            .map(|i| self.cluster.postgres_url(i))
            .collect()
    }

    /// Reads every participant's database.
    pub async fn audit(&self) -> Audit {
        Audit::read(&self.databases()).await.expect("audit")
    }

    /// Waits (up to 30 s) until nothing is in flight, then checks the
    /// databases at rest.
    pub async fn wait_settled(&self) -> Audit {
        let (audit, _) = Audit::wait_settled(&self.databases(), Duration::from_secs(30))
            .await
            .expect("audit");
        audit.assert_settled();
        audit
    }
}

/// What a `walletctl` run printed, and how it ended.
#[derive(Debug)]
pub struct Ctl {
    /// The exit code; `None` if a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ctl {
    /// Stdout, parsed (for `--output json`).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }

    #[track_caller]
    pub fn expect(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "exit code\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs the real `walletctl` binary with exactly `args` (no endpoints from
/// the environment or a manifest) and `env` added, for at most 60 s.
pub async fn run_walletctl(args: &[&str], env: &[(&str, &str)]) -> Ctl {
    let program =
        devcluster::find_binary("walletctl").expect("target/debug/walletctl (cargo build)");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(program)
            .args(args)
            .env_remove("WALLET_ETCD_ENDPOINTS")
            .env_remove("WALLET_ETCD_PREFIX")
            .env_remove("WALLET_COORDINATOR_URL")
            .env_remove("WALLET_MANIFEST")
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("walletctl finishes within 60 s")
    .expect("walletctl runs");
    let ctl = Ctl {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "walletctl {}: {:?}\n{}{}",
        args.join(" "),
        ctl.code,
        ctl.stdout,
        ctl.stderr
    );
    ctl
}

impl TestCluster {
    /// Runs `walletctl` against this cluster (its etcd, map prefix and
    /// coordinator), with `env` added to its environment.
    pub async fn walletctl(&self, args: &[&str], env: &[(&str, &str)]) -> Ctl {
        let coordinator = self.cluster.coordinator_url(self.coordinator);
        self.walletctl_at(self.cluster.etcd_prefix(), &coordinator, args, env)
            .await
    }

    /// Runs `walletctl` against this cluster's etcd with another map prefix
    /// and coordinator.
    pub async fn walletctl_at(
        &self,
        prefix: &str,
        coordinator: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Ctl {
        let endpoints = self.cluster.etcd_endpoints().join(",");
        let secret = self.cluster.cluster_secret_file().display().to_string();
        let key = self.cluster.api_key_file().display().to_string();
        let mut all = vec![
            "--etcd-endpoints",
            &endpoints,
            "--etcd-prefix",
            prefix,
            "--coordinator",
            coordinator,
            "--manifest",
            "/nonexistent/cluster.json",
            "--cluster-secret-file",
            &secret,
            "--api-key-file",
            &key,
        ];
        all.extend_from_slice(args);
        run_walletctl(&all, env).await
    }

    /// Re-reads the partition map from etcd into `self.map`.
    pub async fn reload_map(&mut self) {
        self.map = read_map(&self.cluster).await;
    }
}

/// The partition map as etcd has it now.
async fn read_map(cluster: &Cluster) -> PartitionMap {
    let store = cluster.map_store().await.expect("etcd");
    store.load().await.expect("partition map")
}

/// One sample of a Prometheus text exposition: name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text format (what `/metrics` serves): every
/// sample line, comments skipped. Panics on a line it cannot read, so a
/// malformed exposition fails the test that reads it.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("metric line without a value: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("metric value not a number: {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("labels not closed: {line:?}"));
                let labels = body
                    .split("\",")
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv
                            .split_once("=\"")
                            .unwrap_or_else(|| panic!("bad label {kv:?} in {line:?}"));
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
            None => (series.to_string(), Default::default()),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The sum of the samples named `name` whose labels include every one of
/// `labels`; `None` when there is no such sample.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// GETs `url` (a service's `/metrics`) and parses it; checks the content type.
pub async fn scrape(http: &reqwest::Client, url: &str) -> Vec<Sample> {
    let resp = http.get(url).send().await.expect("metrics answer");
    assert_eq!(resp.status().as_u16(), 200, "{url}");
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{url}: content type {content_type}"
    );
    parse_metrics(&resp.text().await.expect("metrics body"))
}
