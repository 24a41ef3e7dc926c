//! The participant binary: see the library's documentation.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use participant::config::ParticipantConfig;
use participant::store::Store;
use participant::{app, fence, history, moves, pg::PgStore, retention};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg: ParticipantConfig =
        wallet_shared::config::load_from_args(participant::config::DEFAULTS)
            .context("loading participant config")?;
    let traces = wallet_shared::telemetry::init_service(
        "participant",
        &cfg.node_id,
        cfg.log_format,
        cfg.otlp_endpoint.as_deref(),
    )?;
    // No open participant by accident: without the secret, nothing starts.
    let secret = wallet_shared::signing::required(cfg.cluster_secret()?, "participant")?;
    let verifier = wallet_shared::signing::Verifier::new(
        secret,
        Duration::from_millis(cfg.signature_window_ms),
    );
    wallet_shared::metrics::install().context("installing the metrics recorder")?;
    let store = PgStore::connect(&cfg)
        .await
        .context("connecting to Postgres")?;
    let etcd_timeout = Duration::from_millis(cfg.etcd_timeout_ms);
    let map = wallet_shared::map::follow_map(
        &cfg.etcd_endpoints,
        &cfg.etcd_access()?,
        &cfg.etcd_prefix,
        etcd_timeout,
    )
    .await
    .context("following the partition map in etcd")?;
    let fences = store.fences().await.context("reading partition fences")?;
    // Give back what a burst of requests freed (see wallet_shared::memory).
    wallet_shared::memory::spawn_trimmer(wallet_shared::memory::TRIM_EVERY);
    tokio::spawn(publish_feed(
        store.clone(),
        Duration::from_millis(cfg.publish_interval_ms),
    ));
    let app = app::App {
        node_id: Arc::from(cfg.node_id.as_str()),
        store,
        map,
        fences: fence::Fences::new(fences),
        max_fold_events: cfg.max_fold_events,
    };
    let body_limit = axum::extract::DefaultBodyLimit::max(8 * 1024 * 1024);
    let mover = moves::Mover {
        app: app.clone(),
        cutover_deadline: Duration::from_millis(cfg.move_cutover_deadline_ms),
    };
    tokio::spawn(moves::expire_cutovers(
        mover.app.clone(),
        mover.cutover_deadline,
    ));
    tokio::spawn(retention::run(mover.app.clone(), cfg.retention()));
    let routes = app::router(app.clone())
        .merge(moves::router(mover))
        .merge(history::router(app));
    // Around the whole router, once (see `wallet_shared::server::around`);
    // the first layer is the outermost.
    let router = wallet_shared::server::around(
        routes,
        tower::ServiceBuilder::new()
            .layer(axum::middleware::from_fn(
                wallet_shared::telemetry::request_span,
            ))
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                Duration::from_secs(30),
            ))
            .layer(axum::middleware::from_fn_with_state(
                verifier,
                wallet_shared::signing::Verifier::layer,
            ))
            .layer(body_limit),
    );
    let listener = tokio::net::TcpListener::bind(&cfg.listen_addr)
        .await
        .with_context(|| format!("binding {}", cfg.listen_addr))?;
    tracing::info!(node_id = %cfg.node_id, addr = %cfg.listen_addr, "participant ready");
    let (stop, deadline) = wallet_shared::telemetry::shutdown_with_deadline(Duration::from_millis(
        cfg.shutdown_grace_ms,
    ));
    let limits = wallet_shared::server::ConnectionLimits {
        max_connections: cfg.max_connections,
        header_read_timeout: Duration::from_millis(cfg.header_read_timeout_ms),
        connection_buffer_bytes: cfg.connection_buffer_bytes,
    };
    wallet_shared::server::serve(listener, router, limits, None, stop, deadline).await;
    tracing::info!("stopped");
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    Ok(())
}

/// The feed's publisher: numbers newly committed outbox rows, round after
/// round (see [`PgStore::publish`]). A failed round is logged and retried
/// after a bounded, jittered pause.
async fn publish_feed(store: PgStore, interval: Duration) {
    // Outbox rows (one per local transaction) numbered per round.
    const ROUND: i64 = 1_000;
    let mut failures = wallet_shared::retry::Policy::background().backoff();
    loop {
        match store.publish(ROUND).await {
            Ok(n) => {
                failures = wallet_shared::retry::Policy::background().backoff();
                if n as i64 == ROUND {
                    continue;
                }
                tokio::time::sleep(interval).await;
            }
            Err(e) => {
                let pause = failures.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e, ?pause, "feed publisher round failed");
                tokio::time::sleep(pause).await;
            }
        }
    }
}
