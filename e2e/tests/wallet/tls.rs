//! TLS by configuration, with certificates the test makes (the `openssl`
//! command): a CA, and a server certificate it signs for `localhost` and
//! 127.0.0.1.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use sqlx::Connection;

use crate::support::TestCluster;

/// A CA and a server certificate it signed, as PEM files.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

impl Certs {
    pub fn make(dir: &Path) -> Certs {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca = [
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ];
        let ca: Vec<&str> = ca.concat();
        openssl(
            dir,
            &[&ca[..], &["-days", "2", "-subj", "/CN=wallet test CA"]].concat(),
        );
        let req: Vec<&str> = [
            &["req"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat();
        openssl(dir, &[&req[..], &["-subj", "/CN=localhost"]].concat());
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        );
        Certs {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }

    /// A client that trusts this CA (and no other), sending API key `key`.
    pub fn client(&self, key: &str) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.ca).unwrap()).unwrap();
        reqwest::Client::builder()
            .default_headers(devcluster::bearer(key))
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_listener_serves_https_when_configured() {
    let t = TestCluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(dir.path());
    let port = devcluster::ports::free_port().unwrap();
    let log = std::fs::File::create(dir.path().join("coordinator.log")).unwrap();
    let _coordinator = tokio::process::Command::new(
        devcluster::find_binary("coordinator").expect("cargo build --workspace"),
    )
    .env("WALLET_LISTEN_ADDR", format!("127.0.0.1:{port}"))
    .env(
        "WALLET_ETCD_ENDPOINTS",
        t.cluster.etcd_endpoints().join(","),
    )
    .env("WALLET_ETCD_PREFIX", t.cluster.etcd_prefix())
    .env(
        "WALLET_CLUSTER_SECRET_FILE",
        t.cluster.cluster_secret_file(),
    )
    .env("WALLET_TLS_CERT_FILE", &certs.cert)
    .env("WALLET_TLS_KEY_FILE", &certs.key)
    .stdout(log.try_clone().unwrap())
    .stderr(log)
    .kill_on_drop(true)
    .spawn()
    .unwrap();

    let https = certs.client(t.cluster.admin_key());
    let base = format!("https://localhost:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match https.get(format!("{base}/readyz")).send().await {
            Ok(r) if r.status() == 200 => break,
            other => {
                let log = std::fs::read_to_string(dir.path().join("coordinator.log"));
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no HTTPS readiness: {other:?}\n{log:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    // Money moves over HTTPS.
    let account = t.accounts_on(0, "tls", 1).remove(0);
    let r = https
        .post(format!("{base}/v1/wallet/accounts"))
        .json(&json!({"account_id": account, "currency": "USD"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = https
        .post(format!("{base}/v1/wallet/accounts/{account}/deposit"))
        .json(&json!({"transaction_id": uuid::Uuid::new_v4(), "amount": "3.00", "currency": "USD"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert_eq!(t.balance(&account).await.0, "3.00");

    // Plain HTTP gets no answer; nor does a client that does not trust the CA.
    let plain = t
        .http
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    let stranger = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let untrusted = stranger.get(format!("{base}/readyz")).send().await;
    assert!(untrusted.is_err(), "an untrusted certificate was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_by_the_database_url() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(dir.path());
    let port = devcluster::free_port().unwrap();
    let pg = devcluster::Postgres::start_tls(dir.path().join("pg"), port, &certs.cert, &certs.key)
        .await
        .expect("postgres with ssl=on");
    let url = |mode: &str, ca: &Path| {
        format!(
            "postgres://postgres@127.0.0.1:{port}/wallet?sslmode={mode}&sslrootcert={}",
            ca.display()
        )
    };

    // The participant's own connection (and its migrations) over verified TLS.
    let cfg: participant::config::ParticipantConfig = wallet_shared::config::from_toml(
        participant::config::DEFAULTS,
        &format!(
            "node_id = \"node-tls\"\ndatabase_url = \"{}\"",
            url("verify-full", &certs.ca)
        ),
    )
    .unwrap();
    let store = participant::pg::PgStore::connect(&cfg)
        .await
        .expect("a participant connects with sslmode=verify-full");
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert!(ssl, "the connection is not encrypted");

    // A server certificate from another CA is refused.
    let other = tempfile::tempdir().unwrap();
    let stranger = Certs::make(other.path());
    let refused = sqlx::PgConnection::connect(&url("verify-full", &stranger.ca)).await;
    let e = refused.expect_err("a certificate from an unknown CA was trusted");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    drop(pg);

    // sslmode=require against a server without TLS fails, saying so.
    let port = devcluster::free_port().unwrap();
    let _plain = devcluster::Postgres::start(dir.path().join("plain"), port)
        .await
        .unwrap();
    let plain = format!("postgres://postgres@127.0.0.1:{port}/wallet?sslmode=require");
    let e = sqlx::PgConnection::connect(&plain)
        .await
        .expect_err("sslmode=require took a server without TLS");
    assert!(
        e.to_string().contains("TLS") || e.to_string().contains("SSL"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_and_with_a_user() {
    use wallet_shared::map::{EtcdAccess, MapError, MapStore};
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(dir.path());
    let timeout = Duration::from_secs(5);
    let port = || devcluster::free_port().unwrap();
    // An answer from etcd: no map under this prefix (nothing else failed).
    let answers = |r: &Result<_, MapError>| matches!(r, Err(MapError::Missing(_)));

    // TLS: trusting its CA, the map store reads; without it, nothing.
    let tls = devcluster::Etcd::start_tls(
        dir.path().join("etcd-tls"),
        port(),
        port(),
        port(),
        &certs.cert,
        &certs.key,
    )
    .await
    .expect("etcd with TLS");
    let endpoints = tls.endpoints();
    assert!(endpoints[0].starts_with("https://"), "{endpoints:?}");
    let access = EtcdAccess::from_settings(Some(&certs.ca), None, None, None, None).unwrap();
    let store = MapStore::connect_with(&endpoints, &access, "/tls/", timeout)
        .await
        .expect("connects over TLS");
    let read = store.load().await;
    assert!(answers(&read), "{read:?}");
    let plain = match MapStore::connect(&endpoints, "/tls/", timeout).await {
        Ok(store) => store.load().await,
        Err(e) => Err(e),
    };
    assert!(plain.is_err() && !answers(&plain), "{plain:?}");

    // A user: with its password the store reads; without, or with another, not.
    let auth = devcluster::Etcd::start(dir.path().join("etcd-auth"), port(), port())
        .await
        .unwrap();
    let mut admin = etcd_client::Client::connect(auth.endpoints(), None)
        .await
        .unwrap();
    admin
        .user_add("root", "root-password-1", None)
        .await
        .unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();
    let password = dir.path().join("etcd-password");
    std::fs::write(&password, "root-password-1\n").unwrap();
    let access =
        EtcdAccess::from_settings(None, None, None, Some("root"), Some(&password)).unwrap();
    assert!(!format!("{access:?}").contains("root-password-1"));
    let store = MapStore::connect_with(&auth.endpoints(), &access, "/auth/", timeout)
        .await
        .expect("connects with the password");
    let read = store.load().await;
    assert!(answers(&read), "{read:?}");
    let anonymous = match MapStore::connect(&auth.endpoints(), "/auth/", timeout).await {
        Ok(store) => store.load().await,
        Err(e) => Err(e),
    };
    assert!(anonymous.is_err() && !answers(&anonymous), "{anonymous:?}");
    std::fs::write(&password, "not-the-password").unwrap();
    let wrong = EtcdAccess::from_settings(None, None, None, Some("root"), Some(&password)).unwrap();
    let refused = MapStore::connect_with(&auth.endpoints(), &wrong, "/auth/", timeout).await;
    assert!(refused.is_err(), "a wrong password was taken");
}
