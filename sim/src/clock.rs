//! Simulated time. Tokio's clock is paused, so time moves only when every
//! task waits, straight to the next timer: the run is fast and exactly
//! repeatable. Each node reads wall time through its own offset, which the
//! nemesis makes jump.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use tokio::time::Instant;

#[derive(Clone)]
pub struct NodeClock {
    start: Instant,
    epoch: DateTime<Utc>,
    /// How far this node's wall clock is off, in milliseconds.
    offset_ms: Arc<AtomicI64>,
}

impl NodeClock {
    pub fn new(start: Instant) -> Self {
        NodeClock {
            start,
            epoch: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            offset_ms: Arc::default(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::Duration::from_std(self.start.elapsed()).unwrap_or_default();
        self.epoch
            + elapsed
            + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    pub fn jump(&self, by_ms: i64) {
        self.offset_ms.fetch_add(by_ms, Ordering::Relaxed);
    }

    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }
}
