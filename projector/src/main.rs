//! The projector binary: see the library's documentation.

use std::time::Duration;

use anyhow::Context;
use projector::config::ProjectorConfig;
use projector::{status, Follower, Projections};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg: ProjectorConfig = wallet_shared::config::load_from_args(projector::config::DEFAULTS)
        .context("loading projector config")?;
    let traces = wallet_shared::telemetry::init_service(
        "projector",
        &cfg.listen_addr,
        cfg.log_format,
        cfg.otlp_endpoint.as_deref(),
    )?;
    let secret = wallet_shared::signing::required(cfg.cluster_secret()?, "projector")?;
    wallet_shared::metrics::install().context("installing the metrics recorder")?;
    let projections = Projections::connect(
        &cfg.database_url,
        Duration::from_millis(cfg.statement_timeout_ms),
    )
    .await
    .context("connecting to the projector's Postgres")?;
    let map = wallet_shared::map::follow_map(
        &cfg.etcd_endpoints,
        &cfg.etcd_access()?,
        &cfg.etcd_prefix,
        Duration::from_millis(cfg.etcd_timeout_ms),
    )
    .await
    .context("following the partition map in etcd")?;
    let follower = Follower::new(
        projections.clone(),
        map.clone(),
        Duration::from_millis(cfg.participant_timeout_ms),
        cfg.page,
        secret,
    )?
    .registered_as(&cfg.consumer_name);
    let listener = tokio::net::TcpListener::bind(&cfg.listen_addr)
        .await
        .with_context(|| format!("binding {}", cfg.listen_addr))?;
    tracing::info!(addr = %cfg.listen_addr, "projector ready");
    let idle = Duration::from_millis(cfg.poll_interval_ms);
    let following = tokio::spawn(async move {
        follower
            .run(idle, wallet_shared::telemetry::shutdown_signal())
            .await
    });
    let router = status::router(projections, map).layer(axum::middleware::from_fn(
        wallet_shared::telemetry::request_span,
    ));
    // into_make_service: the routes are built once, not per connection.
    axum::serve(listener, router.into_make_service())
        .with_graceful_shutdown(wallet_shared::telemetry::shutdown_signal())
        .await?;
    following.await?;
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    Ok(())
}
