//! What the clients saw of a partition move (`move-bench`): every request
//! of the load is kept as a [`Sample`] (when it was sent, how long it took,
//! what it got, whether it touched the moved partition), and [`analyze`]
//! compares the move's window with the window before it.
//!
//! The freeze as the clients see it is the longest time no write touching
//! the moved partition committed: from one such commit's answer to the
//! next one's, over the move. Coordinators hold new work on a partition
//! that is cutting over (up to `move_wait_ms`), so a freeze shows up as
//! that gap and as latency rather than as refusals; refusals are counted
//! too.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::generator::{histogram, Answer, Latency};

/// One request of the load.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was sent, from the start of the load.
    pub sent: Duration,
    pub latency: Duration,
    pub answer: Answer,
    /// It touched the moved partition.
    pub moved: bool,
}

impl Sample {
    fn committed(&self) -> bool {
        matches!(self.answer, Answer::Status(200, _))
    }

    fn answered(&self) -> Duration {
        self.sent + self.latency
    }

    fn outcome(&self) -> String {
        match &self.answer {
            Answer::Status(s, Some(code)) => format!("{s} {code}"),
            Answer::Status(s, None) => s.to_string(),
            Answer::Timeout => "timeout".into(),
            Answer::Transport => "transport error".into(),
        }
    }
}

/// One class of requests in one window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Window {
    pub sent: u64,
    pub committed: u64,
    pub committed_per_s: f64,
    /// Latency of every request sent in the window, whatever its answer.
    pub latency: Latency,
    /// Answers other than 200, by status and code.
    pub not_committed: BTreeMap<String, u64>,
}

/// The clients' view of one move.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Seen {
    /// Requests touching the moved partition, before and during the move.
    pub moved_before: Window,
    pub moved_during: Window,
    /// Requests that did not touch it.
    pub others_before: Window,
    pub others_during: Window,
    /// Committed transfers per second of the others during the move over
    /// before it (1.0: unchanged).
    pub others_throughput_ratio: f64,
    /// Longest time in which no write touching the moved partition
    /// committed, during the move (the freeze as the clients see it) and
    /// before it (the noise floor), seconds.
    pub moved_longest_gap_during_s: f64,
    pub moved_longest_gap_before_s: f64,
}

/// Splits `samples` into before (`[move_start - before, move_start)`) and
/// during (`[move_start, move_end)`) by when they were sent.
pub fn analyze(
    samples: &[Sample],
    before: Duration,
    move_start: Duration,
    move_end: Duration,
) -> Seen {
    let before_start = move_start.saturating_sub(before);
    let window = |moved: bool, from: Duration, to: Duration| {
        let mut w = Window::default();
        let mut h = histogram();
        for s in samples
            .iter()
            .filter(|s| s.moved == moved && s.sent >= from && s.sent < to)
        {
            w.sent += 1;
            h.saturating_record((s.latency.as_micros() as u64).max(1));
            if s.committed() {
                w.committed += 1;
            } else {
                *w.not_committed.entry(s.outcome()).or_default() += 1;
            }
        }
        w.latency = Latency::of(&h);
        w.committed_per_s = w.committed as f64 / (to - from).as_secs_f64().max(1e-9);
        w
    };
    let others_before = window(false, before_start, move_start);
    let others_during = window(false, move_start, move_end);
    let mut commits: Vec<Duration> = samples
        .iter()
        .filter(|s| s.moved && s.committed())
        .map(Sample::answered)
        .collect();
    commits.sort();
    Seen {
        moved_before: window(true, before_start, move_start),
        moved_during: window(true, move_start, move_end),
        others_throughput_ratio: others_during.committed_per_s
            / others_before.committed_per_s.max(1e-9),
        others_before,
        others_during,
        moved_longest_gap_during_s: longest_gap(&commits, move_start, move_end),
        moved_longest_gap_before_s: longest_gap(&commits, before_start, move_start),
    }
}

/// Longest time between consecutive `commits` (sorted) over `[from, to]`:
/// a gap counts if it overlaps the window, and one still open at `to`
/// runs to the next commit after it (or to the last sample, if none).
fn longest_gap(commits: &[Duration], from: Duration, to: Duration) -> f64 {
    commits
        .windows(2)
        .filter(|w| w[1] >= from && w[0] <= to)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn sample(sent: u64, latency: u64, status: u16, moved: bool) -> Sample {
        Sample {
            sent: ms(sent),
            latency: ms(latency),
            answer: Answer::Status(status, (status != 200).then(|| "partition_moving".into())),
            moved,
        }
    }

    #[test]
    fn the_freeze_is_the_longest_gap_between_commits_on_the_moved_partition() {
        let mut samples = Vec::new();
        // Before the move (0..1000 ms): a commit every 10 ms on each side.
        for t in (0..1000).step_by(10) {
            samples.push(sample(t, 5, 200, true));
            samples.push(sample(t, 5, 200, false));
        }
        // During (1000..2000 ms): the others go on at half the rate; the
        // moved partition commits until 1300 ms, then one request is held
        // 400 ms and one is refused.
        for t in (1000..2000).step_by(20) {
            samples.push(sample(t, 5, 200, false));
        }
        for t in (1000..1300).step_by(10) {
            samples.push(sample(t, 5, 200, true));
        }
        samples.push(sample(1300, 400, 200, true));
        samples.push(sample(1310, 1, 503, true));
        for t in (1700..2000).step_by(10) {
            samples.push(sample(t, 5, 200, true));
        }
        let seen = analyze(&samples, ms(1000), ms(1000), ms(2000));
        // Last commit before the hold answered at 1295 ms, the held one at 1700.
        assert!(
            (seen.moved_longest_gap_during_s - 0.405).abs() < 1e-9,
            "{seen:?}"
        );
        assert!(
            (seen.moved_longest_gap_before_s - 0.010).abs() < 1e-9,
            "{seen:?}"
        );
        assert!(
            (seen.others_throughput_ratio - 0.5).abs() < 1e-9,
            "{seen:?}"
        );
        assert_eq!(seen.moved_during.not_committed["503 partition_moving"], 1);
        assert_eq!(seen.others_before.committed, 100);
        assert!(seen.moved_during.latency.max_ms >= 400.0);
    }
}
