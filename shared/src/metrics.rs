//! Metrics in the Prometheus text format, for `/metrics` on every service.
//!
//! The code records through the `metrics` facade (`metrics::counter!`,
//! `histogram!`, `gauge!`) wherever an event happens; a binary calls
//! [`install`] once at start, and its `/metrics` route serves [`render`].
//! Without [`install`] (the simulation, unit tests) every record is a no-op,
//! so instrumented code runs unchanged there.
//!
//! Names follow Prometheus conventions: `wallet_` prefix, `_total` for
//! counters, base units in the name (`_seconds`), labels for what varies.
//! The README lists every family.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The content type of [`render`]'s text (Prometheus exposition format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets of every `*_seconds` histogram: 0.5 ms to 10 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.5, 1.0, 2.0, 5.0, 10.0,
];
/// Buckets of every `*_items` histogram (batch sizes): 1 to the largest batch.
const SIZE_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs this process's recorder (once; later calls do nothing).
pub fn install() -> anyhow::Result<()> {
    if HANDLE.get().is_some() {
        return Ok(());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_items".into()), &SIZE_BUCKETS)?
        .install_recorder()?;
    let upkeep = handle.clone();
    // Histograms are summed up lazily; do it now and then so memory stays
    // flat between scrapes.
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let _ = HANDLE.set(handle);
    Ok(())
}

/// Every metric of this process in the Prometheus text format (empty when
/// [`install`] was not called).
pub fn render() -> String {
    HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// Sets the gauges of the partition map every service follows:
/// `wallet_map_revision` and `wallet_map_age_seconds` (since etcd last
/// confirmed it).
pub fn record_map(map: &crate::MapHandle) {
    metrics::gauge!("wallet_map_revision").set(map.current().revision as f64);
    metrics::gauge!("wallet_map_age_seconds").set(map.age().as_secs_f64());
}

/// A `/readyz` answer: each check by name, `ok` or why not; ready when all
/// are ok. The HTTP status is 200 when ready, 503 otherwise.
#[derive(Debug, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Result<serde_json::Value, String>)>,
}

impl Readiness {
    /// Adds one check's result (`Ok` with what it saw, or why it failed).
    pub fn check(&mut self, name: &'static str, result: Result<serde_json::Value, String>) {
        self.checks.push((name, result));
    }

    /// Whether every check passed.
    pub fn ready(&self) -> bool {
        self.checks.iter().all(|(_, r)| r.is_ok())
    }

    /// The HTTP status and body: `{"status":"ready"|"unready","checks":{name:{"ok":..}}}`.
    pub fn reply(&self) -> (u16, serde_json::Value) {
        let checks: serde_json::Map<String, serde_json::Value> = self
            .checks
            .iter()
            .map(|(name, r)| {
                let v = match r {
                    Ok(seen) => serde_json::json!({"ok": true, "seen": seen}),
                    Err(why) => serde_json::json!({"ok": false, "error": why}),
                };
                (name.to_string(), v)
            })
            .collect();
        let ready = self.ready();
        let status = if ready { "ready" } else { "unready" };
        metrics::gauge!("wallet_ready").set(if ready { 1.0 } else { 0.0 });
        (
            if ready { 200 } else { 503 },
            serde_json::json!({"status": status, "checks": checks}),
        )
    }
}

/// The map check every service's `/readyz` makes: re-read the map from etcd
/// (within `timeout`), and it must hold partitions.
pub async fn check_map(
    map: &crate::MapHandle,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let read = tokio::time::timeout(timeout, map.refresh()).await;
    let current = match read {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return Err(format!("etcd: {e}")),
        Err(_) => return Err(format!("etcd did not answer within {timeout:?}")),
    };
    record_map(map);
    if current.owners.is_empty() {
        return Err("no partition map".into());
    }
    Ok(serde_json::json!({"revision": current.revision, "partitions": current.owners.len()}))
}
