//! Traces: the W3C trace context follows a request from the client through
//! the coordinator to every participant call, and spans go out over
//! OTLP/HTTP (protobuf) when a service is given `otlp_endpoint`
//! (`WALLET_OTLP_ENDPOINT`). Off by default, and then nothing here runs on
//! the hot path: no OpenTelemetry layer is installed, no context is read,
//! nothing is propagated.
//!
//! What a cross-node transfer looks like, under the client's trace id:
//!
//! ```text
//! coordinator  request POST /v1/transfers      parent: the client's traceparent
//!   coordinator  transfer                      the protocol's run
//!     coordinator  batch begin|prepare|...     one per request to a participant;
//!                                              its parent is its first item's
//!                                              span, and it links every item's
//!       participant  request POST /internal/…  parent: the batch (traceparent header)
//!     participant  prepare item ...            one per item: its parent is the
//!                                              span that submitted the item (its
//!                                              traceparent travels in the body,
//!                                              `Routed::traces`), linked to the
//!                                              participant's request span
//! ```
//!
//! A batch carries the items of many transfers: each item's own span on
//! the participant sits in that item's trace, so every transfer's trace
//! shows each participant's work on it, whoever's batch carried it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// Whether this process exports traces (set once by [`exporter`]).
static ON: AtomicBool = AtomicBool::new(false);

/// Whether spans are being exported; everything below is a no-op when not.
pub fn is_on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The export pipeline of a service; [`Exporter::shutdown`] sends what is
/// still buffered before the process ends.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Flushes the spans still buffered (bounded by the exporter's
    /// timeout) and stops exporting.
    pub async fn shutdown(self) {
        let provider = self.provider;
        // The batch processor's thread hands each export to this runtime
        // (see `OnTokio`): wait for it from a thread that is not a worker.
        let done = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(Duration::from_secs(5))
        })
        .await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "the last traces could not be exported");
        }
    }
}

/// The URL spans are posted to: `endpoint` as given when it names the
/// traces path already, else `endpoint` + `/v1/traces` (as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is read).
pub fn traces_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim();
    if endpoint.ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    }
}

/// An OpenTelemetry pipeline exporting the spans of `service` (its
/// `instance`, e.g. a participant's node id, as `service.instance.id`) to
/// `endpoint`, and the tracer to give the tracing layer. Must be called
/// inside the service's Tokio runtime. Batches of spans leave every
/// `OTEL_BSP_SCHEDULE_DELAY` ms (5000 by default), each export bounded by
/// 10 s; a collector that is down costs dropped spans, never requests.
pub fn exporter(
    service: &str,
    instance: &str,
    endpoint: &str,
) -> anyhow::Result<(Exporter, opentelemetry_sdk::trace::SdkTracer)> {
    const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
    let http = reqwest::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .connect_timeout(EXPORT_TIMEOUT)
        .build()?;
    let client = OnTokio {
        http,
        runtime: tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow::anyhow!("trace export needs the service's Tokio runtime"))?,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(traces_url(endpoint))
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| anyhow::anyhow!("the OTLP exporter for {endpoint}: {e}"))?;
    let resource = Resource::builder()
        .with_service_name(service.to_string())
        .with_attribute(KeyValue::new("service.instance.id", instance.to_string()))
        .with_attribute(KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION").to_string(),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(service.to_string());
    ON.store(true, Ordering::Relaxed);
    Ok((Exporter { provider }, tracer))
}

/// The exporter's HTTP client: the workspace's reqwest, each export run on
/// the service's runtime (the SDK's batch processor calls it from its own
/// thread, where no runtime is).
#[derive(Debug)]
struct OnTokio {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OnTokio {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let http = self.http.clone();
        let task = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let resp = http
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let mut answer = http::Response::new(resp.bytes().await?);
            *answer.status_mut() = status;
            *answer.headers_mut() = headers;
            Ok::<_, reqwest::Error>(answer)
        });
        Ok(task.await??)
    }
}

/// The parts of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`): trace
/// id, parent span id and flags, if it is well formed and neither id is all
/// zeros.
pub fn parse_traceparent(traceparent: &str) -> Option<(&str, &str, &str)> {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if parts.len() < 4 || !hex(parts[0], 2) || parts[0] == "ff" {
        return None;
    }
    if parts[0] == "00" && parts.len() != 4 {
        return None;
    }
    let (trace, parent, flags) = (parts[1], parts[2], parts[3]);
    if !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2) {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    Some((trace, parent, flags))
}

/// The remote span a `traceparent` names.
fn remote(traceparent: &str) -> Option<SpanContext> {
    let (trace, parent, flags) = parse_traceparent(traceparent)?;
    Some(SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(parent).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & 1),
        true,
        TraceState::default(),
    ))
}

fn format(cx: &SpanContext) -> String {
    format!(
        "00-{:032x}-{:016x}-{:02x}",
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags()
    )
}

fn span_context(span: &Span) -> Option<SpanContext> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// The `traceparent` naming `span`, when traces are on.
pub fn traceparent(span: &Span) -> Option<String> {
    if !is_on() {
        return None;
    }
    span_context(span).map(|cx| format(&cx))
}

/// The `traceparent` naming the current span, when traces are on: what a
/// call to another service carries.
pub fn current_traceparent() -> Option<String> {
    traceparent(&Span::current())
}

/// Makes `span` (not yet entered) continue the trace of an incoming
/// `traceparent`, and returns the trace id it is in, when traces are on.
/// Without one it starts a trace only if `may_start`: else it is in a
/// trace of its own that is not exported (nor is anything under it), so
/// probes, scrapes and internal calls that come without a trace (a feed's
/// polls, recovery's scans) do not fill the collector.
pub fn continue_trace(span: &Span, traceparent: Option<&str>, may_start: bool) -> Option<String> {
    if !is_on() {
        return None;
    }
    let parent = match traceparent.and_then(remote) {
        Some(parent) => Some(parent),
        None if !may_start => Some(unsampled()),
        None => None,
    };
    if let Some(parent) = parent {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
    span_context(span).map(|cx| format!("{:032x}", cx.trace_id()))
}

/// A remote parent in a new trace, not sampled: what is under it is not
/// exported (the SDK's default sampler follows the parent).
fn unsampled() -> SpanContext {
    let trace = uuid::Uuid::new_v4().as_u128();
    let span = uuid::Uuid::new_v4().as_u64_pair().0;
    SpanContext::new(
        TraceId::from(trace),
        SpanId::from(span),
        TraceFlags::default(),
        true,
        TraceState::default(),
    )
}

/// The span of one request carrying many items to a participant (a
/// batch): its parent is the first item's span, and it links the span of
/// every item (`traces`, their `traceparent`s in order, "" for an item
/// without one). Not entered; [`Span::none`] when traces are off.
pub fn batch_span(lane: &str, node: &str, traces: &[String]) -> Span {
    if !is_on() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "batch",
        otel.name = %format_args!("batch {lane}"),
        otel.kind = "client",
        lane,
        node,
        items = traces.len(),
    );
    let items: Vec<SpanContext> = traces.iter().filter_map(|t| remote(t)).collect();
    if let Some(first) = items.first() {
        let parent = opentelemetry::Context::new().with_remote_span_context(first.clone());
        let _ = span.set_parent(parent);
    }
    for item in items {
        span.add_link(item);
    }
    span
}

/// On a participant: one span per item of a batch (`traces`, as in
/// [`batch_span`]), each a child of the span that submitted its item and
/// linked to the current (request) span. Hold them while the items are
/// worked on; empty when traces are off or the caller sent none.
pub fn item_spans(lane: &str, traces: &[String]) -> Vec<Span> {
    if !is_on() || traces.is_empty() {
        return Vec::new();
    }
    let request = span_context(&Span::current());
    traces
        .iter()
        .enumerate()
        .filter_map(|(index, t)| {
            let parent = remote(t)?;
            let span = tracing::info_span!(
                "item",
                otel.name = %format_args!("{lane} item"),
                lane,
                index,
            );
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
            if let Some(request) = &request {
                span.add_link(request.clone());
            }
            Some(span)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_once() {
        assert_eq!(
            traces_url("http://c:4318"),
            "http://c:4318/v1/traces".to_string()
        );
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }

    #[test]
    fn a_traceparent_reads_back_as_written() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = remote(tp).expect("valid");
        assert!(cx.is_sampled() && cx.is_remote());
        assert_eq!(format(&cx), tp);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!remote(unsampled).unwrap().is_sampled());
        assert!(remote("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
    }

    #[test]
    fn off_by_default_nothing_is_made() {
        assert!(!is_on());
        assert_eq!(current_traceparent(), None);
        assert!(batch_span("prepare", "n1", &["x".into()]).is_none());
        assert!(item_spans("prepare", &["x".into()]).is_empty());
    }
}
