//! The history of a chaos run: the model shared with the simulation
//! ([`wallet_history::history`]: every operation a client sent, every fault
//! the nemesis injected), the chaos suite's clock for its timestamps, and
//! `history.jsonl`, one JSON object a line, `"type": "op"` or
//! `"type": "fault"`, in invoke order.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

pub use wallet_history::history::*;

/// Milliseconds since the start of the run, for every timestamp.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// When the run started.
    start: Instant,
}

impl Clock {
    /// A clock whose zero is now.
    pub fn start() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    /// Milliseconds since the zero, to the microsecond.
    pub fn now_ms(&self) -> f64 {
        (self.start.elapsed().as_micros() as f64) / 1000.0
    }
}

/// Writes `history` as JSON lines to `path`, operations and faults merged
/// in the order they started.
pub fn write_jsonl(history: &History, path: &Path) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    history
        .write_jsonl_to(&mut out)
        .with_context(|| format!("writing {}", path.display()))
}
