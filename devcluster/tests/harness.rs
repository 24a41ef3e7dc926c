//! devcluster against the real thing: Postgres and etcd processes, killed
//! with SIGKILL and restarted; services and whole clusters with a stand-in
//! binary (`examples/fake_service.rs`) in place of the participant and
//! coordinator.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use devcluster::service::find_binary_from;
use devcluster::{
    free_port, write_partition_map, Cluster, ClusterOptions, Etcd, Postgres, Service, ServiceConfig,
};
use sqlx::{Connection, PgConnection, Row};
use wallet_shared::map::MapError;
use wallet_shared::MapStore;

/// A temporary directory the postgres OS user can reach.
fn tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("devcluster-test-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat[stat.rfind(')').unwrap() + 1..]
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url).await.unwrap()
}

async fn show(conn: &mut PgConnection, setting: &str) -> String {
    sqlx::query(&format!("SHOW {setting}"))
        .fetch_one(conn)
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn postgres_survives_kill9_with_committed_rows_and_restarts_on_the_same_port() {
    let dir = tempdir();
    let port = free_port().unwrap();
    let started = Instant::now();
    let mut pg = Postgres::start(dir.path().join("pg"), port).await.unwrap();
    eprintln!("postgres started in {:?}", started.elapsed());
    assert_eq!(
        pg.url(),
        format!("postgres://postgres@127.0.0.1:{port}/wallet")
    );
    assert!(pg.data_dir().join("PG_VERSION").exists());

    let mut conn = connect(&pg.url()).await;
    let one: i32 = sqlx::query_scalar("select 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    assert_eq!(show(&mut conn, "fsync").await, "on");
    assert_eq!(show(&mut conn, "synchronous_commit").await, "on");
    assert_eq!(show(&mut conn, "max_connections").await, "200");
    assert_eq!(show(&mut conn, "shared_buffers").await, "128MB");
    assert_ne!(show(&mut conn, "max_prepared_transactions").await, "0");
    let db: String = sqlx::query_scalar("select current_database()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(db, "wallet");
    sqlx::query("create table t (id int primary key)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("insert into t values (1), (2)")
        .execute(&mut conn)
        .await
        .unwrap();
    // A prepared transaction must survive a crash too.
    sqlx::query("begin").execute(&mut conn).await.unwrap();
    sqlx::query("insert into t values (3)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("prepare transaction 'tx-3'")
        .execute(&mut conn)
        .await
        .unwrap();

    let pid = pg.pid().unwrap();
    if nix::unistd::Uid::effective().is_root() {
        let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        assert_eq!(
            uid_of(pid),
            postgres.uid.as_raw(),
            "the postmaster runs as postgres"
        );
    }
    let backends = pg
        .psql("select count(*) from pg_stat_activity where backend_type = 'client backend'")
        .await
        .unwrap();
    assert!(backends.parse::<u32>().unwrap() >= 1);

    let family: Vec<u32> = pg
        .psql("select pid from pg_stat_activity")
        .await
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(
        family.len() >= 4,
        "backends and background workers: {family:?}"
    );
    pg.kill9().await.unwrap();
    assert!(!alive(pid), "the postmaster is gone");
    for p in family {
        assert!(!alive(p), "backend {p} outlived kill9");
    }
    assert_eq!(pg.pid(), None);
    assert!(devcluster::ports::port_is_free(port));
    assert!(conn.ping().await.is_err(), "the old connection is dead");

    let started = Instant::now();
    pg.restart().await.unwrap();
    eprintln!("postgres recovered in {:?}", started.elapsed());
    assert_ne!(pg.pid(), Some(pid));
    assert_eq!(pg.port(), port);
    let mut conn = connect(&pg.url()).await;
    let ids: Vec<i32> = sqlx::query_scalar("select id from t order by id")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(
        pg.psql("select gid from pg_prepared_xacts").await.unwrap(),
        "tx-3"
    );
    pg.psql("commit prepared 'tx-3'").await.unwrap();
    assert_eq!(pg.psql("select count(*) from t").await.unwrap(), "3");

    // A graceful stop, then a new start on the same directory reuses the data.
    pg.stop().await.unwrap();
    assert!(devcluster::ports::port_is_free(port));
    drop(pg);
    let pg = Postgres::start(dir.path().join("pg"), port).await.unwrap();
    assert_eq!(pg.psql("select count(*) from t").await.unwrap(), "3");

    // Dropping kills the server and its backends.
    let _conn = connect(&pg.url()).await;
    let pid = pg.pid().unwrap();
    drop(pg);
    assert!(!alive(pid));
    assert!(devcluster::ports::port_is_free(port));
}

#[tokio::test]
async fn etcd_holds_the_partition_map_across_kill9() {
    let dir = tempdir();
    let mut etcd = Etcd::start(
        dir.path().join("etcd"),
        free_port().unwrap(),
        free_port().unwrap(),
    )
    .await
    .unwrap();
    let store = MapStore::connect(&etcd.endpoints(), "/wallet/", Duration::from_secs(5))
        .await
        .unwrap();
    let nodes = vec![
        ("node-1".to_string(), "http://127.0.0.1:1".to_string()),
        ("node-2".to_string(), "http://127.0.0.1:2".to_string()),
    ];
    assert!(matches!(store.load().await, Err(MapError::Missing(_))));
    let endpoints = etcd.endpoints();
    let written = write_partition_map(&endpoints, "/wallet/", 8, &nodes)
        .await
        .unwrap();
    assert_eq!(written.partition_count(), 8);
    assert_eq!(written.owners[0], "node-1");
    assert_eq!(written.owners[1], "node-2");
    assert_eq!(store.load().await.unwrap(), written);
    // A second write keeps the first map.
    let other = vec![("node-7".to_string(), "http://127.0.0.1:7".to_string())];
    let kept = write_partition_map(&endpoints, "/wallet/", 4, &other)
        .await
        .unwrap();
    assert_eq!(kept, written);
    // Kept data, other ports (`--free-ports`): the same map, this run's
    // addresses for the nodes it names.
    let moved = vec![
        ("node-1".to_string(), "http://127.0.0.1:11".to_string()),
        ("node-2".to_string(), "http://127.0.0.1:2".to_string()),
    ];
    let readdressed = write_partition_map(&endpoints, "/wallet/", 8, &moved)
        .await
        .unwrap();
    assert_eq!(readdressed.owners, written.owners);
    assert_eq!(readdressed.url("node-1"), Some("http://127.0.0.1:11"));
    assert_eq!(readdressed.url("node-2"), Some("http://127.0.0.1:2"));
    assert_eq!(store.load().await.unwrap(), readdressed);
    // Larger than etcd's 128 operations per transaction.
    let big = write_partition_map(&endpoints, "/big/", 300, &nodes)
        .await
        .unwrap();
    assert_eq!(big.partition_count(), 300);
    assert_eq!(big.owners[299], "node-2");

    let pid = etcd.pid().unwrap();
    etcd.kill9().await.unwrap();
    assert!(!alive(pid));
    assert!(store.load().await.is_err(), "etcd is down");
    etcd.restart().await.unwrap();

    let store = MapStore::connect(&etcd.endpoints(), "/wallet/", Duration::from_secs(5))
        .await
        .unwrap();
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.owners, written.owners);
    assert_eq!(loaded.nodes, readdressed.nodes);

    etcd.stop().await.unwrap();
    assert_eq!(etcd.pid(), None);
}

/// `MapStore::init` against a real etcd: a first map; a second refused
/// without `force`; replaced with it; and a change prepared against the
/// replaced map refused by `update`'s compare-and-set.
#[tokio::test]
async fn map_init_against_real_etcd() {
    let dir = tempdir();
    let etcd = Etcd::start(
        dir.path().join("etcd"),
        free_port().unwrap(),
        free_port().unwrap(),
    )
    .await
    .unwrap();
    let store = MapStore::connect(&etcd.endpoints(), "/init/", Duration::from_secs(5))
        .await
        .unwrap();
    let two = vec![
        ("a".to_string(), "http://127.0.0.1:1".to_string()),
        ("b".to_string(), "http://127.0.0.1:2".to_string()),
    ];
    let first = store.init(200, &two, false).await.unwrap();
    assert_eq!(first.partition_count(), 200);
    assert_eq!(
        (first.owners[0].as_str(), first.owners[199].as_str()),
        ("a", "b")
    );
    assert!(matches!(
        store.init(4, &two, false).await,
        Err(MapError::AlreadyExists(_))
    ));
    assert_eq!(store.load().await.unwrap(), first);

    let one = vec![("c".to_string(), "http://127.0.0.1:3".to_string())];
    let replaced = store.init(4, &one, true).await.unwrap();
    assert_eq!(replaced.owners, vec!["c"; 4]);
    assert_eq!(replaced.nodes.len(), 1, "the old nodes are gone");
    let stale = store
        .update(
            first.revision,
            &[("nodes/d".into(), "http://d".into())],
            &[],
        )
        .await;
    assert!(matches!(stale, Err(MapError::Changed(_))), "{stale:?}");
    let added = store
        .update(
            replaced.revision,
            &[("nodes/d".into(), "http://d".into())],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(added.url("d"), Some("http://d"));
}

/// The stand-in service binary, built by `cargo test` with the examples.
fn fake_service() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    find_binary_from(&exe, "examples/fake_service")
        .expect("target/*/examples/fake_service (built by cargo test / cargo build --all-targets)")
}

/// A directory with `participant` and `coordinator` pointing at the stand-in.
fn fake_bin_dir(root: &Path) -> PathBuf {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["participant", "coordinator"] {
        std::os::unix::fs::symlink(fake_service(), bin.join(name)).unwrap();
    }
    bin
}

async fn get_json(url: &str) -> serde_json::Value {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_service_is_started_killed_restarted_and_its_early_death_explained() {
    let dir = tempdir();
    let addr = devcluster::ports::local(free_port().unwrap());
    let config = ServiceConfig::new("fake-1", fake_service(), dir.path().join("fake-1"), addr)
        .env("WALLET_LISTEN_ADDR", addr.to_string())
        .env("WALLET_NODE_ID", "node-9");
    let mut service = Service::start(config.clone()).await.unwrap();
    assert_eq!(service.url(), format!("http://{addr}"));
    let env = get_json(&format!("{}/env", service.url())).await;
    assert_eq!(env["WALLET_NODE_ID"], "node-9");

    let pid = service.pid().unwrap();
    service.kill9().await.unwrap();
    assert!(!alive(pid));
    service.restart().await.unwrap();
    assert_ne!(service.pid(), Some(pid));
    assert_eq!(
        get_json(&format!("{}/health", service.url())).await["status"],
        "ok"
    );
    service.stop().await.unwrap();
    let log = std::fs::read_to_string(service.log_path()).unwrap();
    assert_eq!(
        log.matches("devcluster: starting fake-1").count(),
        2,
        "{log}"
    );

    let failing = config.env("FAKE_EXIT_AT_START", "3");
    let err = Service::start(failing).await.unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("exited during startup"), "{message}");
    assert!(message.contains("failing at start as asked"), "{message}");
}

#[tokio::test]
async fn a_cluster_wires_every_component_and_cleans_up_on_drop() {
    let bins = tempdir();
    let started = Instant::now();
    let mut cluster = Cluster::start(ClusterOptions {
        bin_dir: Some(fake_bin_dir(bins.path())),
        coordinator_env: vec![("WALLET_TEST_FLAG".into(), "base".into())],
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    eprintln!("3-participant cluster started in {:?}", started.elapsed());
    let root = cluster.root().to_path_buf();

    // Participants: node ids, databases, etcd.
    for i in 0..3 {
        let env = get_json(&format!("{}/env", cluster.participant_url(i))).await;
        assert_eq!(env["WALLET_NODE_ID"], format!("node-{}", i + 1));
        assert_eq!(env["WALLET_DATABASE_URL"], cluster.postgres_url(i));
        assert_eq!(env["WALLET_ETCD_ENDPOINTS"], cluster.etcd().url());
        assert_eq!(env["WALLET_ETCD_PREFIX"], "/wallet/");
        assert_eq!(
            env["WALLET_LISTEN_ADDR"],
            cluster.participant(i).addr().to_string()
        );
        assert_eq!(cluster.postgres(i).psql("select 1").await.unwrap(), "1");
    }
    // The partition map names them.
    let map = cluster.map_store().await.unwrap().load().await.unwrap();
    assert_eq!(map.partition_count(), 64);
    for i in 0..3 {
        assert_eq!(
            map.url(&cluster.node_id(i)),
            Some(cluster.participant_url(i).as_str())
        );
    }
    // A later coordinator gets the base env plus its own.
    let env = get_json(&format!("{}/env", cluster.coordinator_url(0))).await;
    assert_eq!(env["WALLET_TEST_FLAG"], "base");
    let second = cluster
        .start_coordinator(vec![(
            "WALLET_TEST_FLAG".into(),
            "crash-after-prepare".into(),
        )])
        .await
        .unwrap();
    assert_eq!(second, 1);
    let env = get_json(&format!("{}/env", cluster.coordinator_url(1))).await;
    assert_eq!(env["WALLET_TEST_FLAG"], "crash-after-prepare");
    assert_eq!(cluster.coordinator(1).name(), "coordinator-2");

    // The manifest lists everything.
    let manifest_path = bins.path().join("cluster.json");
    cluster.write_manifest(&manifest_path).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    assert_eq!(manifest["coordinator_url"], cluster.coordinator_url(0));
    assert_eq!(manifest["etcd_endpoints"][0], cluster.etcd().url());
    let components = manifest["components"].as_array().unwrap();
    assert_eq!(components.len(), 1 + 3 + 3 + 2);
    let pg1 = components
        .iter()
        .find(|c| c["name"] == "postgres-1")
        .unwrap();
    assert_eq!(pg1["kind"], "postgres");
    assert_eq!(pg1["url"], cluster.postgres_url(0));
    assert_eq!(pg1["pid"], cluster.postgres(0).pid().unwrap());
    let pids: Vec<u32> = components
        .iter()
        .map(|c| c["pid"].as_u64().unwrap() as u32)
        .collect();
    assert!(pids.iter().all(|&p| alive(p)));

    drop(cluster);
    for pid in pids {
        assert!(!alive(pid), "pid {pid} outlived the cluster");
    }
    assert!(!root.exists(), "the temporary root is removed");
}
