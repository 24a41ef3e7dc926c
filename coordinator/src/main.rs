//! The coordinator binary: see the library's documentation.

use std::time::Duration;

use anyhow::Context;

use coordinator::config::CoordinatorConfig;
use coordinator::{auth, batch, client, http, resolver, transfer};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg: CoordinatorConfig =
        wallet_shared::config::load_from_args(coordinator::config::DEFAULTS)
            .context("loading coordinator config")?;
    let traces = wallet_shared::telemetry::init_service(
        "coordinator",
        &cfg.listen_addr,
        cfg.log_format,
        cfg.otlp_endpoint.as_deref(),
    )?;
    transfer::check_crash_hook(&cfg.crash_at)?;
    let secret = wallet_shared::signing::required(cfg.cluster_secret()?, "coordinator")?;
    let tls =
        wallet_shared::tls::settings(cfg.tls_cert_file.as_deref(), cfg.tls_key_file.as_deref())
            .context("the public listener's TLS settings")?;
    wallet_shared::metrics::install().context("installing the metrics recorder")?;
    let etcd_timeout = Duration::from_millis(cfg.etcd_timeout_ms);
    let map = wallet_shared::map::follow_map(
        &cfg.etcd_endpoints,
        &cfg.etcd_access()?,
        &cfg.etcd_prefix,
        etcd_timeout,
    )
    .await
    .context("following the partition map in etcd")?;
    let mut participants = client::Participants::http(
        map,
        Duration::from_millis(cfg.participant_timeout_ms),
        secret,
    )?;
    participants.move_wait = Duration::from_millis(cfg.move_wait_ms);
    let limits = batch::Limits {
        max_batch: cfg.max_batch.max(1),
        max_in_flight: cfg.max_in_flight.max(1),
        max_queued: cfg.max_queued_per_node.max(1),
        linger: Duration::from_millis(cfg.complete_linger_ms),
    };
    let coordinator = transfer::Coordinator::new(
        participants,
        Duration::from_millis(cfg.lease_ms),
        limits,
        cfg.crash_at.clone(),
    );
    // A burst of connections leaves its freed memory in the allocator's
    // arenas; give it back when they close.
    wallet_shared::memory::spawn_trimmer(wallet_shared::memory::TRIM_EVERY);
    tokio::spawn(resolver::run(
        coordinator.clone(),
        Duration::from_millis(cfg.resolver_interval_ms),
        Duration::from_millis(cfg.resolver_grace_ms),
    ));
    // The API keys: their hashes are keyed with the cluster secret, so
    // without one no key could be checked.
    let cluster_secret = cfg.cluster_secret()?.context(
        "no cluster secret: set cluster_secret_file (WALLET_CLUSTER_SECRET_FILE) or \
         WALLET_CLUSTER_SECRET; it keys the hash of the API keys",
    )?;
    let key_store = wallet_shared::auth::KeyStore::new(
        wallet_shared::MapStore::connect_with(
            &cfg.etcd_endpoints,
            &cfg.etcd_access()?,
            &cfg.etcd_prefix,
            etcd_timeout,
        )
        .await
        .context("connecting to etcd for the API keys")?,
    );
    let keys = auth::Keys::follow(&cluster_secret, key_store)
        .await
        .context("loading the API keys from etcd")?;
    tracing::info!(keys = keys.len(), "API keys loaded");
    let edge = http::EdgeLimits {
        max_body_bytes: cfg.max_body_bytes,
        max_requests_in_flight: cfg.max_requests_in_flight,
        request_timeout: Duration::from_millis(cfg.request_timeout_ms),
    };
    let router = http::router(coordinator, keys, edge).layer(axum::middleware::from_fn(
        wallet_shared::telemetry::request_span,
    ));
    let listener = tokio::net::TcpListener::bind(&cfg.listen_addr)
        .await
        .with_context(|| format!("binding {}", cfg.listen_addr))?;
    let https = if tls.is_some() { " (HTTPS)" } else { "" };
    tracing::info!(addr = %cfg.listen_addr, "coordinator ready{https}");
    let (stop, deadline) = wallet_shared::telemetry::shutdown_with_deadline(Duration::from_millis(
        cfg.shutdown_grace_ms,
    ));
    let limits = wallet_shared::server::ConnectionLimits {
        max_connections: cfg.max_connections,
        header_read_timeout: Duration::from_millis(cfg.header_read_timeout_ms),
        connection_buffer_bytes: cfg.connection_buffer_bytes,
    };
    wallet_shared::server::serve(listener, router, limits, tls, stop, deadline).await;
    tracing::info!("stopped");
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    Ok(())
}
