//! The one way to retry: bounded exponential backoff with jitter (backon).
//! An operation that still fails after its last attempt returns its error;
//! nothing here retries forever in a tight loop.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder, Retryable};

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub first_delay: Duration,
    pub max_delay: Duration,
    pub attempts: usize,
}

impl Policy {
    /// Waiting for a dependency at start-up (etcd, Postgres): about a minute.
    pub fn startup() -> Self {
        Policy {
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            attempts: 40,
        }
    }

    /// Inside a client request: a few quick tries, then "unknown".
    pub fn request() -> Self {
        Policy {
            first_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(250),
            attempts: 3,
        }
    }

    /// Background loops (watch, resolver) that pause between rounds.
    pub fn background() -> Self {
        Policy {
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            attempts: usize::MAX,
        }
    }

    fn builder(self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.first_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.attempts)
            .with_jitter()
    }

    /// The delays themselves, for loops that pace their own rounds.
    pub fn backoff(self) -> ExponentialBackoff {
        self.builder().build()
    }
}

/// Retries `op` on every error.
pub async fn with_backoff<T, E, F, Fut>(what: &str, policy: Policy, op: F) -> Result<T, E>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    when(what, policy, op, |_| true).await
}

/// Retries `op` while `retryable` says the error is worth another try.
pub async fn when<T, E, F, Fut>(
    what: &str,
    policy: Policy,
    op: F,
    retryable: impl FnMut(&E) -> bool,
) -> Result<T, E>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    op.retry(policy.builder())
        .sleep(tokio::time::sleep)
        .when(retryable)
        .notify(|e, delay| tracing::debug!(error = %e, ?delay, "{what}: retrying"))
        .await
}
