//! The connection pool, migrations, and the one way to run a local
//! transaction: retried (bounded) on deadlocks and lost connections.
//! Retrying a whole transaction is safe because every operation in it is
//! idempotent on its transaction id.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use wallet_shared::retry;

use crate::config::ParticipantConfig;
use crate::error::StoreError;

pub async fn connect(cfg: &ParticipantConfig) -> anyhow::Result<PgPool> {
    let timeout = format!("{}ms", cfg.statement_timeout_ms);
    let options: PgConnectOptions = cfg.database_url.parse()?;
    let options = options.options([
        ("statement_timeout", timeout.as_str()),
        ("lock_timeout", timeout.as_str()),
    ]);
    let pool = retry::with_backoff("connect to Postgres", retry::Policy::startup(), || {
        PgPoolOptions::new()
            .max_connections(cfg.db_pool_size)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
    })
    .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// Runs `work` in one transaction and commits it.
pub async fn transaction<T, F>(pool: &PgPool, what: &str, work: F) -> Result<T, StoreError>
where
    F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T, StoreError>>,
{
    let work = &work;
    retry::when(
        what,
        retry::Policy::request(),
        || async move {
            let mut tx = pool.begin().await?;
            let out = work(&mut tx).await?;
            tx.commit().await?;
            Ok(out)
        },
        StoreError::is_transient,
    )
    .await
}
