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

/// One step of a batch: what to do with one item inside the transaction.
pub type Step<I, T> =
    for<'a> fn(&'a mut PgConnection, &'a I) -> BoxFuture<'a, Result<T, StoreError>>;

/// Applies `step` to every item in one transaction, in `key` order (so
/// concurrent batches take row locks in one order and never deadlock), and
/// answers in request order.
pub async fn batch<I, K, T>(
    pool: &PgPool,
    what: &str,
    items: Vec<I>,
    key: impl Fn(&I) -> K,
    step: Step<I, T>,
) -> Result<Vec<T>, StoreError>
where
    I: Clone + Send + Sync + 'static,
    K: Ord,
    T: Send + 'static,
{
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| key(&items[a]).cmp(&key(&items[b])));
    transaction(pool, what, |conn| {
        let (items, order) = (items.clone(), order.clone());
        Box::pin(async move {
            let mut out: Vec<Option<T>> = (0..items.len()).map(|_| None).collect();
            for i in order {
                out[i] = Some(step(conn, &items[i]).await?);
            }
            Ok(out.into_iter().flatten().collect())
        })
    })
    .await
}
