//! Traces: with `WALLET_OTLP_ENDPOINT` set, one cross-node transfer sent
//! with a W3C `traceparent` is one trace, the coordinator's spans and every
//! participant's under the client's trace id, each span's parent one of
//! them (or the client's span). The test is the collector: a small OTLP/HTTP
//! receiver decoding the protobuf the services post to `/v1/traces`.
//! Probes, scrapes and internal calls without a trace export nothing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use devcluster::ClusterOptions;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;

use crate::support::{quick_recovery, TestCluster};

/// One exported span, with the service and instance that sent it.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    instance: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
    /// (trace id, span id) of each link.
    links: Vec<(String, String)>,
    /// Start, in nanoseconds since the Unix epoch.
    start: u64,
}

type Received = Arc<Mutex<Vec<Got>>>;

async fn receive(State(got): State<Received>, body: Bytes) -> &'static str {
    let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let mut got = got.lock().unwrap();
    for rs in req.resource_spans {
        let attr = |key: &str| {
            rs.resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == key))
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Any::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default()
        };
        let (service, instance) = (attr("service.name"), attr("service.instance.id"));
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            got.push(Got {
                service: service.clone(),
                instance: instance.clone(),
                name: span.name,
                trace: hex(&span.trace_id),
                id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                links: span
                    .links
                    .iter()
                    .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                    .collect(),
                start: span.start_time_unix_nano,
            });
        }
    }
    ""
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A receiver on a free port; its base URL and what it got.
async fn collector() -> (String, Received) {
    let got = Received::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(receive))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

/// The spans under `root` as an indented tree (the README's sample).
fn tree(spans: &[Got], root: &str, depth: usize) -> String {
    let Some(s) = spans.iter().find(|s| s.id == root) else {
        return String::new();
    };
    let node = if s.instance.is_empty() || s.service == "coordinator" {
        s.service.clone()
    } else {
        format!("{} {}", s.service, s.instance)
    };
    let links = if s.links.is_empty() {
        String::new()
    } else {
        format!("  (links {})", s.links.len())
    };
    let mut out = format!(
        "{}{node}: {} [{}]{links}\n",
        "  ".repeat(depth),
        s.name,
        s.id
    );
    let mut children: Vec<&Got> = spans.iter().filter(|c| c.parent == root).collect();
    children.sort_by_key(|c| c.start);
    for c in children {
        out.push_str(&tree(spans, &c.id, depth + 1));
    }
    out
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect()
}

/// The spans of `trace` so far.
fn of_trace(got: &Received, trace: &str) -> Vec<Got> {
    got.lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace == trace)
        .cloned()
        .collect()
}

/// Waits until `done` holds of the spans of `trace` (they leave every
/// 100 ms; a bound, not a timing assertion), and returns them.
async fn spans_when(got: &Received, trace: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let spans = of_trace(got, trace);
        if done(&spans) {
            return spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spans of trace {trace} never came complete: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn traced_transfer(
    t: &TestCluster,
    id: uuid::Uuid,
    from: &str,
    to: &str,
) -> (String, String) {
    let (trace, client_span) = (random_hex(16), random_hex(8));
    let api = t.api();
    let body = TestCluster::transfer_body(id, from, to, "1.00", "USD");
    let r = api
        .send(
            api.http
                .post(format!("{}/v1/wallet/balance_transfer", api.base))
                .header("traceparent", format!("00-{trace}-{client_span}-01"))
                .json(&body),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "committed", "{}", r.body);
    (trace, client_span)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transfer_is_one_trace_across_the_coordinator_and_every_participant() {
    let (endpoint, got) = collector().await;
    let otlp = vec![
        ("WALLET_OTLP_ENDPOINT".to_string(), endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string()),
    ];
    let mut coordinator_env = quick_recovery();
    coordinator_env.extend(otlp.clone());
    // One request out per lane at once: concurrent transfers share batches.
    coordinator_env.push(("WALLET_MAX_IN_FLIGHT".to_string(), "1".to_string()));
    let t = TestCluster::start_with(ClusterOptions {
        coordinator_env,
        participant_env: otlp,
        ..ClusterOptions::default()
    })
    .await;
    let a = t.accounts_on(0, "trace-a", 1).remove(0);
    let b = t.accounts_on(1, "trace-b", 1).remove(0);
    t.open(&a, "USD").await;
    t.open(&b, "USD").await;
    t.deposit(&a, "100.00", "USD").await;

    // Debit on node 0, credit on node 1, the decision record on node 2:
    // every participant takes part.
    let id = t.transaction_id_homed_on(2);
    let (trace, client_span) = traced_transfer(&t, id, &a, &b).await;
    let nodes: Vec<String> = (0..3).map(|i| t.cluster.node_id(i)).collect();
    let item = |s: &Got, lane: &str, node: &str| {
        s.service == "participant" && s.instance == node && s.name == format!("{lane} item")
    };
    let spans = spans_when(&got, &trace, |spans| {
        let has = |lane: &str, node: &str| spans.iter().any(|s| item(s, lane, node));
        spans
            .iter()
            .any(|s| s.name == "POST /v1/wallet/balance_transfer")
            && has("begin", &nodes[2])
            && has("prepare", &nodes[0])
            && has("prepare", &nodes[1])
            && has("decide", &nodes[2])
            && has("commit", &nodes[0])
            && has("commit", &nodes[1])
            && has("complete", &nodes[2])
    })
    .await;
    let by_id: HashMap<&str, &Got> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let parent = |s: &Got| -> &Got {
        by_id
            .get(s.parent.as_str())
            .unwrap_or_else(|| panic!("the parent of {s:?} is not in the trace"))
    };

    // The coordinator's request span continues the client's.
    let request = spans
        .iter()
        .find(|s| s.service == "coordinator" && s.name == "POST /v1/wallet/balance_transfer")
        .unwrap();
    assert_eq!(request.parent, client_span);
    eprintln!("trace {trace}:\n{}", tree(&spans, &request.id, 0));
    // Every other span's parent is in the trace: nothing is orphaned.
    for s in spans.iter().filter(|s| s.id != request.id) {
        parent(s);
    }
    // Each participant call is a batch span of the coordinator (under the
    // transfer), and the participant's request span is its child.
    let participant_requests: Vec<&Got> = spans
        .iter()
        .filter(|s| s.service == "participant" && s.name.starts_with("POST /internal/"))
        .collect();
    for node in &nodes {
        assert!(
            participant_requests.iter().any(|s| &s.instance == node),
            "no request span of {node}: {spans:#?}"
        );
    }
    for r in &participant_requests {
        let batch = parent(r);
        assert_eq!(batch.service, "coordinator", "{r:?} under {batch:?}");
        assert!(batch.name.starts_with("batch "), "{batch:?}");
        assert!(
            batch.links.iter().any(|(tr, _)| tr == &trace),
            "a batch links its items' spans: {batch:?}"
        );
        // The batch is under the coordinator's work on the transfer, which
        // is under its request span.
        let mut up = parent(batch);
        while up.id != request.id {
            assert_eq!(up.service, "coordinator", "{up:?}");
            up = parent(up);
        }
    }
    // Each participant's work on an item is a child of the coordinator span
    // that submitted it, linked to the participant request that carried it.
    for s in spans.iter().filter(|s| s.name.ends_with(" item")) {
        let submitter = parent(s);
        assert_eq!(
            submitter.service, "coordinator",
            "{s:?} under {submitter:?}"
        );
        let carrier = s
            .links
            .iter()
            .find_map(|(_, id)| by_id.get(id.as_str()))
            .unwrap_or_else(|| panic!("{s:?} links no request span of the trace"));
        assert_eq!(carrier.service, "participant");
        assert_eq!(carrier.instance, s.instance);
        assert!(carrier.name.starts_with("POST /internal/"), "{carrier:?}");
    }

    // Many transfers at once share batches: each still gets its own
    // trace with each participant's work on it, and a batch carrying
    // several links all their spans.
    let mut wave = Vec::new();
    for _ in 0..24 {
        let (t, a, b) = (&t, a.clone(), b.clone());
        wave.push(async move { traced_transfer(t, uuid::Uuid::new_v4(), &a, &b).await });
    }
    let traces: Vec<String> = futures::future::join_all(wave)
        .await
        .into_iter()
        .map(|(trace, _)| trace)
        .collect();
    for trace in &traces {
        // A leg on the decision partition's node travels with `begin` and
        // `decide` (docs/protocol.md): its work is in those items there.
        spans_when(&got, trace, |spans| {
            let has = |lanes: [&str; 2], node: &str| {
                spans
                    .iter()
                    .any(|s| lanes.iter().any(|lane| item(s, lane, node)))
            };
            nodes[..2]
                .iter()
                .all(|node| has(["prepare", "begin"], node) && has(["commit", "decide"], node))
        })
        .await;
    }
    let wave_traces: HashSet<&String> = traces.iter().collect();
    let shared = got
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.name.starts_with("batch "))
        .map(|s| {
            s.links
                .iter()
                .filter(|(tr, _)| wave_traces.contains(tr))
                .map(|(tr, _)| tr.clone())
                .collect::<HashSet<_>>()
                .len()
        })
        .max()
        .unwrap_or(0);
    assert!(
        shared >= 2,
        "24 concurrent transfers between two nodes never shared a batch"
    );

    // Probes and scrapes start no trace, nor do internal calls that come
    // without one (recovery's scans, every 200 ms here): every exported
    // participant span is in a trace a coordinator began (a public request,
    // or recovery's work on one transfer).
    for url in [t.cluster.coordinator_url(0), t.cluster.participant_url(0)] {
        for path in ["/readyz", "/livez", "/metrics"] {
            let r = t.http.get(format!("{url}{path}")).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200, "{url}{path}");
        }
    }
    // Past a few export rounds (every 100 ms), what would have come.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = got.lock().unwrap().clone();
    // A coordinator span ends after the participant spans under it: read
    // them a few export rounds later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = got.lock().unwrap().clone();
    let coordinated: HashSet<&str> = later
        .iter()
        .filter(|s| s.service == "coordinator")
        .map(|s| s.trace.as_str())
        .collect();
    for s in &all {
        assert!(
            !["/readyz", "/livez", "/metrics", "/health"]
                .iter()
                .any(|p| s.name.ends_with(p)),
            "a probe was traced: {s:?}"
        );
        if s.service == "participant" {
            assert!(
                coordinated.contains(s.trace.as_str()),
                "a participant span in no coordinator's trace: {s:?}"
            );
        }
    }
}
