//! The public API held to its own OpenAPI document (`GET /openapi.json`):
//! schemathesis (PyPI) generates requests from it, valid and not, and
//! checks that no answer is a server error or falls outside the document;
//! then the cluster must settle with its books balanced.
//! `SCHEMATHESIS_EXAMPLES` sets the cases per operation (`make fuzz` runs
//! many more).

use support::TestCluster;

use crate::support;

/// The schemathesis version the test runs (installed once into a venv
/// under target/ by `scripts/py-tool.sh`).
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

async fn schemathesis(args: &[String]) -> std::process::Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/py-tool.sh");
    tokio::process::Command::new(script)
        .args([SCHEMATHESIS, "schemathesis"])
        .args(args)
        .env("NO_COLOR", "1")
        // It keeps a cache in its working directory.
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .output()
        .await
        .expect("scripts/py-tool.sh runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_requests_get_no_server_error_and_no_answer_outside_the_document() {
    let t = TestCluster::start().await;
    let base = t.cluster.coordinator_url(0);
    let doc = t.get("/openapi.json").await;
    assert_eq!(doc.status, 200, "{}", doc.body);
    assert_eq!(doc.body["openapi"], "3.1.0");

    let examples = std::env::var("SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "15".into());
    let mut args: Vec<String> = vec![
        "run".into(),
        format!("{base}/openapi.json"),
        "--checks".into(),
        "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance".into(),
        "--max-examples".into(),
        examples,
        "--seed".into(),
        "20261130".into(),
        "--request-timeout".into(),
        "30".into(),
        // One worker: with two, hypothesis (under schemathesis) parses
        // source in both threads at once, and Debian's Python 3.11 fails
        // that now and then ("AST constructor recursion depth mismatch",
        // CPython gh-106905): a failure of the tool, not of the API.
        "--workers".into(),
        "1".into(),
    ];
    // The operator's key (scope admin): every operation is open to it, the
    // global feed included. The refusals of other keys are auth.rs's.
    args.push("--header".into());
    args.push(format!("Authorization: Bearer {}", t.cluster.admin_key()));
    let out = schemathesis(&args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // "Test cases:\n  751 generated, 751 passed"
    let summary = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Test cases:"))
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_string();
    println!("schemathesis: {summary}");
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{stdout}\n{stderr}"
    );
    let generated: u64 = summary
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no case count in schemathesis' summary:\n{stdout}"));
    assert!(generated >= 100, "only {generated} cases:\n{stdout}");

    // Whatever it sent, nothing is left half done and money is conserved.
    t.wait_settled().await;
}
