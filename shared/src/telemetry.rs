//! Logs: `tracing`, one line per event, level from `RUST_LOG` (default info).

pub fn init(component: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sqlx=warn,h2=warn,tower=warn,hyper=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .compact()
        .try_init();
    tracing::info!(component, version = env!("CARGO_PKG_VERSION"), "starting");
}
