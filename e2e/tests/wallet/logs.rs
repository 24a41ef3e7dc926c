//! JSON logs (`log_format = "json"`): every line a service writes is one
//! JSON object, and the lines of a request carry its request id, its trace
//! id (from the client's `traceparent`) and its transfer's `transaction_id`.

use std::path::Path;

use devcluster::ClusterOptions;
use serde_json::Value;

use crate::support::TestCluster;

/// The service's own log lines (not the harness's `===== devcluster: ...` ones),
/// each parsed as JSON: a line that does not parse fails the test.
fn json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("reading a service log");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("===== devcluster: "))
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l}", path.display()))
        })
        .collect()
}

/// The value of `field` in any span of a JSON log line, or in the event.
fn field<'a>(line: &'a Value, name: &str) -> Option<&'a str> {
    line.get(name).and_then(Value::as_str).or_else(|| {
        line.get("spans")?
            .as_array()?
            .iter()
            .rev()
            .find_map(|s| s.get(name).and_then(Value::as_str))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_trace_and_transaction_ids() {
    let json = || ("WALLET_LOG_FORMAT".to_string(), "json".to_string());
    let debug = (
        "RUST_LOG".to_string(),
        "info,sqlx=warn,h2=warn,tower=warn,hyper=warn,coordinator=debug,wallet_shared=debug"
            .to_string(),
    );
    let t = TestCluster::start_with(ClusterOptions {
        coordinator_env: vec![json(), debug],
        participant_env: vec![json()],
        ..ClusterOptions::default()
    })
    .await;
    let a = t.accounts_on(0, "logs-a", 1).remove(0);
    let b = t.accounts_on(1, "logs-b", 1).remove(0);
    t.open(&a, "USD").await;
    t.open(&b, "USD").await;
    t.deposit(&a, "10.00", "USD").await;

    let id = uuid::Uuid::new_v4();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let request_id = format!("req-{id}");
    let body = TestCluster::transfer_body(id, &a, &b, "2.50", "USD");
    let response = t
        .http
        .post(format!(
            "{}/v1/wallet/balance_transfer",
            t.cluster.coordinator_url(0)
        ))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("x-request-id", &request_id)
        .json(&body)
        .send()
        .await
        .expect("sending the transfer");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-request-id"].to_str().unwrap(),
        request_id,
        "the response names the request"
    );
    // A request without an id gets one made up, and is told it.
    let r = t
        .http
        .get(format!("{}/livez", t.cluster.coordinator_url(0)))
        .send()
        .await
        .unwrap();
    let made = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");

    // Each line of the coordinator's log is JSON; the request's lines carry
    // its request id and trace id, and the transfer's its transaction id.
    let lines = json_lines(t.cluster.coordinator(0).log_path());
    assert!(lines
        .iter()
        .any(|l| field(l, "message") == Some("starting")));
    let mine: Vec<&Value> = lines
        .iter()
        .filter(|l| field(l, "request_id") == Some(request_id.as_str()))
        .collect();
    assert!(!mine.is_empty(), "no line of request {request_id}");
    for l in &mine {
        assert_eq!(field(l, "trace_id"), Some(trace), "{l}");
        assert_eq!(
            field(l, "transaction_id"),
            Some(id.to_string().as_str()),
            "{l}"
        );
    }
    let finished = |message: &str| {
        mine.iter()
            .find(|l| field(l, "message") == Some(message))
            .unwrap_or_else(|| panic!("no {message:?} line of the request: {mine:?}"))
    };
    assert_eq!(finished("transfer finished")["outcome"], "committed");
    assert_eq!(finished("request finished")["status"], 200);
    // The participants write JSON too.
    for i in 0..t.cluster.participants().len() {
        let lines = json_lines(t.cluster.participant(i).log_path());
        assert!(
            lines
                .iter()
                .any(|l| field(l, "message") == Some("participant ready")),
            "participant {i}"
        );
    }
}
