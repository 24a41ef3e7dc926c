//! Logs: `tracing`, one line per event, level from `RUST_LOG` (default
//! info); and the shutdown signal both services stop on.

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
