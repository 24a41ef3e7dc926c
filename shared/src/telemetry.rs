//! Logs: `tracing`, one line per event, level from `RUST_LOG` (default
//! info), as text or as JSON (`log_format`); traces by configuration
//! (`otlp_endpoint`, see [`crate::traces`]); the span every request runs in
//! (its request id and trace id); and the shutdown signal both services stop
//! on.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use tracing::Instrument;

/// How a service writes its log lines (config key `log_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One compact human-readable line per event, span fields inline.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, the event's fields
    /// (`message` among them) at the top level, and `spans`, every span the
    /// event is in with its fields (`request_id`, `trace_id`,
    /// `transaction_id`, ...), outermost first.
    Json,
}

/// Text logs (tools and harnesses).
pub fn init(component: &str) {
    init_as(component, LogFormat::Text)
}

/// Logs in the format of the service's `log_format`.
pub fn init_as(component: &str, format: LogFormat) {
    let _ = init_service(component, component, format, None);
}

/// The default log filter when `RUST_LOG` is not set; the spans exported as
/// traces always follow it, whatever `RUST_LOG` says of the log lines.
const DEFAULT_FILTER: &str = "info,sqlx=warn,h2=warn,tower=warn,hyper=warn";

/// A service's logs in its `log_format`, and its spans exported as traces
/// to `otlp_endpoint` when it is set (see [`crate::traces`]; `instance`
/// names this process among the service's, e.g. a participant's node id).
/// The exporter returned flushes the last spans on
/// [`crate::traces::Exporter::shutdown`]. Must run inside the service's
/// Tokio runtime when `otlp_endpoint` is set.
pub fn init_service(
    component: &str,
    instance: &str,
    format: LogFormat,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<Option<crate::traces::Exporter>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let logs: Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync> = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_target(false)
            .compact()
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_target(false)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_filter(filter)
            .boxed(),
    };
    let (exporter, tracer) = match otlp_endpoint.filter(|e| !e.trim().is_empty()) {
        Some(endpoint) => {
            let (exporter, tracer) = crate::traces::exporter(component, instance, endpoint)?;
            (Some(exporter), Some(tracer))
        }
        None => (None, None),
    };
    let spans = tracer.map(|tracer| {
        let targets: tracing_subscriber::filter::Targets =
            DEFAULT_FILTER.parse().expect("a valid filter");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(targets)
    });
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    tracing::info!(component, version = env!("CARGO_PKG_VERSION"), "starting");
    if let Some(endpoint) = otlp_endpoint.filter(|_| exporter.is_some()) {
        tracing::info!(
            endpoint = %crate::traces::traces_url(endpoint),
            "exporting traces over OTLP/HTTP"
        );
    }
    let ignored = crate::config::ignored_env();
    if !ignored.is_empty() {
        tracing::warn!(
            variables = %ignored.join(", "),
            "WALLET_* environment variables that are no setting of this service are ignored"
        );
    }
    Ok(exporter)
}

/// The header carrying a request's id, taken from the client when it sends
/// one (up to 128 visible ASCII characters), else made here; every
/// response carries it back.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request's id, as a request extension (set by [`request_span`]), for
/// what puts it in a response body.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Middleware (`axum::middleware::from_fn`): runs the request in a
/// `request` span with its `request_id` and `trace_id` (the W3C
/// `traceparent` header's trace id when the client sends a valid one, else a
/// new one), so every log line of the request carries both, and answers
/// with the request id in `x-request-id`.
pub async fn request_span(mut req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let traceparent = req
        .headers()
        .get(crate::traces::TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    let span = tracing::info_span!(
        "request",
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        method = %req.method(),
        path = %req.uri().path(),
        // Filled in by a handler that learns it (a transfer's).
        transaction_id = tracing::field::Empty,
    );
    // With traces on, the span continues the client's trace (or starts
    // one) and its trace id is the one exported; else the client's trace
    // id, or a new one, only marks the log lines.
    if crate::traces::is_on() {
        // Before the span is started: its name and kind are fixed then.
        let name = format!("{} {}", req.method(), req.uri().path());
        span.record("otel.name", name.as_str());
        span.record("otel.kind", "server");
    }
    // Only the public API's requests start a trace; probes, scrapes and
    // internal calls join the caller's or are not exported.
    let path = req.uri().path();
    let may_start = !crate::signing::OPEN_PATHS.contains(&path) && !path.starts_with("/internal/");
    let trace_id = match crate::traces::continue_trace(&span, traceparent, may_start) {
        Some(id) => id,
        None => traceparent
            .and_then(trace_id_of)
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
    };
    span.record("trace_id", tracing::field::display(&trace_id));
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let started = std::time::Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request finished"
        )
    });
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if
/// it is well formed and not all zeros.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    crate::traces::parse_traceparent(traceparent).map(|(trace, _, _)| trace.to_ascii_lowercase())
}

/// For command-line tools: warnings and errors only on stderr (level from
/// `RUST_LOG`), so their own output stays readable.
pub fn init_cli() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .compact()
        .try_init();
}

/// Graceful shutdown with a deadline. `stop` resolves on Ctrl-C or SIGTERM:
/// give it to `with_graceful_shutdown` (stop accepting, finish what is in
/// flight). `deadline` resolves `grace` after that: a server still busy
/// then is dropped (recovery settles whatever it left undecided).
pub fn shutdown_with_deadline(
    grace: std::time::Duration,
) -> (
    impl std::future::Future<Output = ()> + Send + 'static,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = tx.send(true);
    });
    let mut stop_rx = rx.clone();
    let mut deadline_rx = rx;
    let stop = async move {
        let _ = stop_rx.wait_for(|stopping| *stopping).await;
    };
    let deadline = async move {
        if deadline_rx.wait_for(|stopping| *stopping).await.is_ok() {
            tokio::time::sleep(grace).await;
            tracing::warn!(?grace, "shutdown deadline passed with requests in flight");
        } else {
            std::future::pending::<()>().await;
        }
    };
    (stop, deadline)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_of(tp).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id_of("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-00").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(trace_id_of(bad), None, "{bad}");
        }
        // A later version may append fields.
        assert!(
            trace_id_of("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz").is_some()
        );
    }

    #[test]
    fn log_format_from_config() {
        #[derive(Deserialize)]
        struct C {
            log_format: LogFormat,
        }
        let c: C =
            crate::config::from_toml("log_format = \"text\"", "log_format = \"json\"").unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        let err = crate::config::from_toml::<C>("log_format = \"text\"", "log_format = \"xml\"")
            .err()
            .expect("xml is no log format");
        assert!(format!("{err:#}").contains("xml"), "{err:#}");
    }
}
