//! Smoke test of the benchmark's machinery (not a measurement: no figure
//! is asserted): accounts loaded by SQL are what the participants would
//! have written, every scenario commits through the API without server
//! errors, the open loop honours its rate and its in-flight cap, the report
//! renders, and money is conserved afterwards.

use std::sync::Arc;
use std::time::Duration;

use bench::{self, report, setup, Accounts, Kind, Load, Plan, Report, Scenario, Target};
use devcluster::ClusterOptions;
use wallet_shared::auth::Scope;

use crate::support::TestCluster;

#[tokio::test]
async fn load_generator_smoke() {
    // Default timeouts: the machine may be busy with the other tests.
    let t = TestCluster::start_with(ClusterOptions::default()).await;
    let accounts = Arc::new(Accounts::new("smoke", 1000, &t.map).unwrap());
    let nodes = bench::nodes(&t.cluster);
    let loaded = setup::load(&t.map, &nodes, &accounts)
        .await
        .expect("accounts load");
    assert_eq!(loaded.per_node.values().sum::<usize>(), 1002);
    assert!(loaded.per_node.values().all(|&n| n > 200), "{loaded:?}");
    let key = t
        .cluster
        .create_key(setup::TENANT, &[Scope::Transfer, Scope::Read], None)
        .await
        .unwrap();
    let target = Target::new(t.cluster.coordinator_url(0), &key, Duration::from_secs(10)).unwrap();
    setup::verify(&target, &accounts, &loaded, 20)
        .await
        .expect("loaded accounts read back through the API");
    // Loading them again fails rather than doubling anything.
    assert!(setup::load(&t.map, &nodes, &accounts).await.is_err());
    // The loaded rows are consistent with their events.
    t.wait_settled().await;

    let watched = bench::Watched::cluster(&t.cluster);
    let processes = watched.rss.clone();
    assert_eq!(processes.len(), 4, "{processes:?}");
    // The whole cluster's CPU: services, three Postgres servers, etcd.
    assert_eq!(watched.cpu.len(), 8, "{:?}", watched.cpu);
    let mut rows = Vec::new();
    for (seed, kind) in Kind::ALL.into_iter().enumerate() {
        let plan = Plan {
            load: Load::Closed { clients: 4 },
            warmup: Duration::from_millis(200),
            measure: Duration::from_secs(2),
        };
        let scenario = Scenario::new(kind, accounts.clone());
        let row = bench::measure(
            kind.name(),
            &target,
            &scenario,
            &plan,
            seed as u64,
            &watched,
        )
        .await;
        let o = &row.result.outcomes;
        assert!(o.committed > 0, "{}: nothing committed: {o:?}", kind.name());
        assert_eq!(
            (o.server_error, o.timeouts, o.transport_errors, o.other),
            (0, 0, 0, 0),
            "{}: {o:?}",
            kind.name()
        );
        assert_eq!(row.result.sent, o.total());
        assert!(row.result.latency.p50_ms > 0.0);
        assert!(row.result.latency.p99_ms >= row.result.latency.p50_ms);
        assert!(row.result.in_flight_max <= 4);
        for (name, _) in &processes {
            assert!(
                row.rss_mb.get(name).is_some_and(|mb| *mb > 1.0),
                "{name}: {:?}",
                row.rss_mb
            );
        }
        if kind == Kind::Mixed {
            assert!(row.result.moved.deposited > 0 && row.result.moved.withdrawn > 0);
        }
        // Every committed operation cost the cluster some CPU, counted in
        // the window only, and the coordinator took part in each.
        let cpu = row.cpu_us_per_tx.expect("CPU per operation");
        assert!(cpu > 0.0, "{}: {:?}", kind.name(), row.cluster_cpu);
        assert!(
            (1.5..3.5).contains(&row.cluster_cpu.seconds),
            "{:?}",
            row.cluster_cpu
        );
        assert!(row.cluster_cpu.pct_by_process["coordinator-1"] > 0.0);
        rows.push(row);
    }

    // Open loop: about `rate` requests a second, none dropped under the cap...
    let open = |rate, max_in_flight| Plan {
        load: Load::Open {
            rate,
            max_in_flight,
        },
        warmup: Duration::ZERO,
        measure: Duration::from_secs(1),
    };
    let uniform = Scenario::new(Kind::Uniform, accounts.clone());
    let row = bench::measure(
        "open",
        &target,
        &uniform,
        &open(100.0, 1000),
        9,
        &Default::default(),
    )
    .await;
    let r = &row.result;
    assert_eq!(r.dropped, 0, "{r:?}");
    assert!((90..=101).contains(&r.sent), "sent {}", r.sent);
    assert!(r.outcomes.committed > 0, "{:?}", r.outcomes);
    assert_eq!(r.outcomes.server_error, 0, "{:?}", r.outcomes);
    rows.push(row);
    // ...and what the cap does not let through is counted, not hidden.
    let row = bench::measure(
        "capped",
        &target,
        &uniform,
        &open(2000.0, 1),
        10,
        &Default::default(),
    )
    .await;
    let r = &row.result;
    assert!(r.dropped > 0 && r.in_flight_max == 1, "{r:?}");
    assert!(r.sent + r.dropped >= 1900, "{r:?}");

    // The report renders every row.
    let mut report = Report {
        started_at: "smoke".into(),
        settings: Default::default(),
        reference: None,
        xa: None,
        rows,
        targets: Vec::new(),
    };
    report.finish();
    let dir = tempfile::tempdir().unwrap();
    report.write(dir.path()).unwrap();
    let table = std::fs::read_to_string(dir.path().join("table.md")).unwrap();
    for kind in Kind::ALL {
        assert!(table.contains(kind.name()), "{table}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), Kind::ALL.len() + 1);
    let svg = std::fs::read_to_string(dir.path().join("chart.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains(report::HOT_CREDIT));

    // Money: what was loaded, plus deposits, minus withdrawals.
    let audit = t.wait_settled().await;
    let (deposited, withdrawn, unknown) = report.rows.iter().fold((0, 0, 0), |a, r| {
        let m = r.result.moved;
        (a.0 + m.deposited, a.1 + m.withdrawn, a.2 + m.unknown)
    });
    assert_eq!(unknown, 0);
    assert_eq!(audit.total("USD"), accounts.total() + deposited - withdrawn);
    let (posted, prepared) = setup::settle(&nodes, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!((posted, prepared), (audit.total("USD"), 0));
}

/// The XA reference moves money between its two servers' tables and
/// nothing else: every committed transfer took one unit from the first and
/// gave it to the second, a rolled-back one changed nothing, and no
/// prepared transaction is left behind.
#[tokio::test]
async fn xa_reference_smoke() {
    let t = TestCluster::start_with(ClusterOptions::default()).await;
    let server = |i: usize| bench::xa::Server {
        name: format!("postgres-{}", i + 1),
        pid: t.cluster.postgres(i).pid().unwrap(),
        port: t.cluster.postgres(i).port(),
    };
    let servers = [server(0), server(1)];
    let accounts = 50;
    bench::xa::prepare(&servers, accounts).await.unwrap();
    let xa = bench::xa::run(&servers, accounts, &[1, 8], 2)
        .await
        .unwrap();
    assert_eq!(xa.runs.len(), 2);
    let committed: u64 = xa.runs.iter().map(|r| r.transactions).sum();
    assert!(committed > 0, "{xa:?}");
    assert!(xa.best.cpu_us_per_tx.is_some_and(|c| c > 0.0), "{xa:?}");
    assert!(xa.best.latency.p50_ms > 0.0);
    let total = |i: usize| {
        let url = format!(
            "postgres://postgres@127.0.0.1:{}/{}",
            servers[i].port,
            bench::xa::DATABASE
        );
        async move {
            let mut conn = setup::connect(&url, Duration::from_secs(10)).await.unwrap();
            let sum: i64 = sqlx::query_scalar("SELECT sum(balance)::bigint FROM accounts")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            let prepared: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_prepared_xacts WHERE database = $1")
                    .bind(bench::xa::DATABASE)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            (sum, prepared)
        }
    };
    let full = accounts as i64 * bench::reference::BALANCE;
    let (debited, left1) = total(0).await;
    let (credited, left2) = total(1).await;
    assert_eq!((left1, left2), (0, 0));
    assert_eq!(debited, full - committed as i64);
    assert_eq!(credited, full + committed as i64);
}
