//! The load generator: sends a scenario's requests to a coordinator in a
//! closed loop (N clients, each sends its next request when the last one
//! is answered) or an open loop (a fixed rate, whatever the answers), and
//! records every answer by outcome and its latency in an HDR histogram.
//!
//! In the open loop a request's latency runs from the instant it was due to
//! be sent, not from when it was sent, so a generator or a system that falls
//! behind shows up in the percentiles (no coordinated omission). In-flight
//! requests are capped; a request due while the cap is reached is not sent
//! and counts as `dropped`, one sent more than [`LATE`] after it was due
//! counts as `late`. Nothing is hidden: every answer that is not a commit is
//! counted by its status and error code.
//!
//! The first `warmup` of a run is not recorded; a request counts in the
//! measurement if it was due (open loop) or sent (closed loop) within the
//! measured window.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use super::scenario::{Op, OpKind, Scenario};

/// An open-loop request sent this much after it was due is `late`.
pub const LATE: Duration = Duration::from_millis(5);

/// How the load is offered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Load {
    /// `clients` concurrent loops, each waiting for its answer.
    Closed { clients: usize },
    /// `rate` requests per second, at most `max_in_flight` unanswered.
    Open { rate: f64, max_in_flight: usize },
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Load::Closed { clients } => write!(f, "closed, {clients} clients"),
            Load::Open {
                rate,
                max_in_flight,
            } => write!(f, "open, {rate:.0}/s, cap {max_in_flight}"),
        }
    }
}

/// One run of the generator.
#[derive(Debug, Clone)]
pub struct Plan {
    pub load: Load,
    /// Not recorded, before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub measure: Duration,
}

/// Where the requests go.
#[derive(Clone)]
pub struct Target {
    pub http: reqwest::Client,
    /// Coordinator base URL, e.g. `http://127.0.0.1:8080`.
    pub base: String,
    /// Every coordinator's base URL (`base` first): the generator's
    /// requests take turns among them.
    bases: Arc<[String]>,
    turn: Arc<AtomicUsize>,
}

impl Target {
    /// A client whose every request carries the API key `api_key` and
    /// times out after `timeout`.
    pub fn new(
        base: impl Into<String>,
        api_key: &str,
        timeout: Duration,
    ) -> anyhow::Result<Target> {
        Target::spread(vec![base.into()], api_key, timeout)
    }

    /// Like [`Target::new`], the generator's requests taking turns among
    /// several coordinators (`bases`, at least one).
    pub fn spread(bases: Vec<String>, api_key: &str, timeout: Duration) -> anyhow::Result<Target> {
        let base = bases
            .first()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no coordinator to send to"))?;
        let http = reqwest::Client::builder()
            .default_headers(devcluster::bearer(api_key))
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()?;
        Ok(Target {
            http,
            base,
            bases: bases.into(),
            turn: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The coordinator the next request goes to.
    fn next_base(&self) -> &str {
        let i = self.turn.fetch_add(1, Ordering::Relaxed);
        &self.bases[i % self.bases.len()]
    }
}

/// Answers by kind. `committed` is `200`; `refused` is `422` and `404`
/// (a definite no: insufficient funds, unknown account, ...); `conflict` is
/// `409` (`in_progress`, or aborted for a reason outside the request);
/// `pending` is `202`; `server_error` is any `5xx`; `other` any other status
/// (`400`, `429`, ...); `timeouts` had no answer within the client timeout,
/// `transport_errors` no answer for another reason (connection refused or
/// reset).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outcomes {
    pub committed: u64,
    pub refused: u64,
    pub conflict: u64,
    pub pending: u64,
    pub server_error: u64,
    pub other: u64,
    pub timeouts: u64,
    pub transport_errors: u64,
    /// Every answer by HTTP status.
    pub by_status: BTreeMap<u16, u64>,
    /// Error `code`s of the answers that were not `200`, with counts.
    pub codes: BTreeMap<String, u64>,
}

impl Outcomes {
    /// Every request that did not commit.
    pub fn errors(&self) -> u64 {
        self.total() - self.committed
    }

    /// Every request that got an answer or gave up.
    pub fn total(&self) -> u64 {
        self.committed
            + self.refused
            + self.conflict
            + self.pending
            + self.server_error
            + self.other
            + self.timeouts
            + self.transport_errors
    }

    fn add_status(&mut self, status: u16, code: Option<String>) {
        *self.by_status.entry(status).or_default() += 1;
        match status {
            200 => self.committed += 1,
            404 | 422 => self.refused += 1,
            409 => self.conflict += 1,
            202 => self.pending += 1,
            500..=599 => self.server_error += 1,
            _ => self.other += 1,
        }
        if status != 200 {
            let code = code.unwrap_or_else(|| format!("http_{status}"));
            *self.codes.entry(code).or_default() += 1;
        }
    }
}

/// Money moved in or out by committed deposits and withdrawals, in minor
/// units, over the whole run, warmup included (a transfer moves none in or
/// out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Moved {
    pub deposited: i64,
    pub withdrawn: i64,
    /// Deposits or withdrawals whose outcome is unknown (no answer, 202,
    /// 5xx): money conservation can only be checked when this is 0.
    pub unknown: u64,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    /// From a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// A histogram of latencies in microseconds, 1 µs to 1 hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub load: Load,
    /// Length of the measured window, seconds.
    pub seconds: f64,
    /// Requests sent in the window.
    pub sent: u64,
    pub outcomes: Outcomes,
    /// Committed operations per second in the window.
    pub committed_per_s: f64,
    /// Latency of every request in the window that got an answer or timed
    /// out (whatever the answer), from when it was due.
    pub latency: Latency,
    /// Latency of the committed ones only.
    pub committed_latency: Latency,
    /// Open loop: requests due while `max_in_flight` were unanswered, not sent.
    pub dropped: u64,
    /// Open loop: requests sent more than [`LATE`] after they were due.
    pub late: u64,
    /// Largest number of unanswered requests seen.
    pub in_flight_max: usize,
    /// Mean number of unanswered requests (sampled every 50 ms in the window).
    pub in_flight_mean: f64,
    pub moved: Moved,
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

/// What the workers record into, shared.
struct Recorder {
    all: Histogram<u64>,
    committed: Histogram<u64>,
    outcomes: Outcomes,
    moved: Moved,
    sent: u64,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            all: histogram(),
            committed: histogram(),
            outcomes: Outcomes::default(),
            moved: Moved::default(),
            sent: 0,
        }
    }

    /// Records one answer: money moved in or out always (warmup included,
    /// so the sum of balances can be checked afterwards); outcome and
    /// latency only when the request counts in the measured window.
    fn record(&mut self, op: &Op, answer: &Answer, latency: Duration, measured: bool) {
        let committed = matches!(answer, Answer::Status(200, _));
        // 2xx other than 202, and 4xx other than 409, are final answers.
        let known = matches!(answer, Answer::Status(s, _) if *s < 500 && *s != 202 && *s != 409);
        match op.kind {
            OpKind::Deposit if committed => self.moved.deposited += op.minor,
            OpKind::Withdraw if committed => self.moved.withdrawn += op.minor,
            OpKind::Deposit | OpKind::Withdraw if !known => self.moved.unknown += 1,
            _ => {}
        }
        if !measured {
            return;
        }
        self.sent += 1;
        let us = (latency.as_micros() as u64).max(1);
        self.all.saturating_record(us);
        if committed {
            self.committed.saturating_record(us);
        }
        match answer {
            Answer::Status(status, code) => self.outcomes.add_status(*status, code.clone()),
            Answer::Timeout => self.outcomes.timeouts += 1,
            Answer::Transport => self.outcomes.transport_errors += 1,
        }
    }
}

/// What one request got: a status and its error `code`, or no answer.
#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16, Option<String>),
    Timeout,
    Transport,
}

/// Sends one request and reads its answer (and its error `code`, if any).
pub async fn send(target: &Target, op: &Op) -> Answer {
    let req = target
        .http
        .post(format!("{}{}", target.next_base(), op.path))
        .header("content-type", "application/json")
        .body(op.body.clone());
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Answer::Timeout,
        Err(_) => return Answer::Transport,
    };
    let status = resp.status().as_u16();
    match resp.bytes().await {
        Ok(body) => {
            let code = (status != 200)
                .then(|| {
                    serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("code")?.as_str().map(str::to_string))
                })
                .flatten();
            Answer::Status(status, code)
        }
        Err(e) if e.is_timeout() => Answer::Timeout,
        Err(_) => Answer::Transport,
    }
}

/// Runs `plan` against `target` with requests from `scenario`; `seed`
/// makes the request sequence repeatable.
pub async fn run(target: &Target, scenario: &Scenario, plan: &Plan, seed: u64) -> RunResult {
    let recorder = Arc::new(Mutex::new(Recorder::new()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let in_flight_max = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let window_start = start + plan.warmup;
    let end = window_start + plan.measure;

    // In-flight sampler: mean over the window.
    let sampler = {
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            let (mut sum, mut n) = (0u64, 0u64);
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                let now = tick.tick().await;
                if now >= end {
                    break;
                }
                if now >= window_start {
                    sum += in_flight.load(Ordering::Relaxed) as u64;
                    n += 1;
                }
            }
            if n == 0 {
                0.0
            } else {
                sum as f64 / n as f64
            }
        })
    };

    let (mut dropped, mut late) = (0u64, 0u64);
    match plan.load {
        Load::Closed { clients } => {
            let workers: Vec<_> = (0..clients)
                .map(|c| {
                    let (target, scenario) = (target.clone(), scenario.clone());
                    let (recorder, in_flight, in_flight_max) =
                        (recorder.clone(), in_flight.clone(), in_flight_max.clone());
                    tokio::spawn(async move {
                        let mut rng = fastrand::Rng::with_seed(seed ^ ((c as u64 + 1) * 0x9e37));
                        loop {
                            let t0 = Instant::now();
                            if t0 >= end {
                                break;
                            }
                            let op = scenario.next(&mut rng);
                            let n = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                            in_flight_max.fetch_max(n, Ordering::Relaxed);
                            let answer = send(&target, &op).await;
                            in_flight.fetch_sub(1, Ordering::Relaxed);
                            let measured = t0 >= window_start;
                            let mut r = recorder.lock().expect("recorder");
                            r.record(&op, &answer, t0.elapsed(), measured);
                        }
                    })
                })
                .collect();
            for w in workers {
                let _ = w.await;
            }
        }
        Load::Open {
            rate,
            max_in_flight,
        } => {
            let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut tasks = tokio::task::JoinSet::new();
            let mut i: u32 = 0;
            loop {
                let due = start + interval * i;
                if due >= end {
                    break;
                }
                i += 1;
                tokio::time::sleep_until(due).await;
                // Reap what finished, so the set does not grow.
                while tasks.try_join_next().is_some() {}
                let measured = due >= window_start;
                if in_flight.load(Ordering::Relaxed) >= max_in_flight {
                    if measured {
                        dropped += 1;
                    }
                    continue;
                }
                if measured && Instant::now().duration_since(due) > LATE {
                    late += 1;
                }
                let op = scenario.next(&mut rng);
                let n = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                in_flight_max.fetch_max(n, Ordering::Relaxed);
                let (target, recorder, in_flight) =
                    (target.clone(), recorder.clone(), in_flight.clone());
                tasks.spawn(async move {
                    let answer = send(&target, &op).await;
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    let mut r = recorder.lock().expect("recorder");
                    r.record(&op, &answer, due.elapsed(), measured);
                });
            }
            // Every request has the client timeout, so this ends.
            while tasks.join_next().await.is_some() {}
        }
    }
    let in_flight_mean = sampler.await.unwrap_or(0.0);
    let r = recorder.lock().expect("recorder");
    let seconds = plan.measure.as_secs_f64();
    RunResult {
        load: plan.load,
        seconds,
        sent: r.sent,
        outcomes: r.outcomes.clone(),
        committed_per_s: r.outcomes.committed as f64 / seconds,
        latency: Latency::of(&r.all),
        committed_latency: Latency::of(&r.committed),
        dropped,
        late,
        in_flight_max: in_flight_max.load(Ordering::Relaxed),
        in_flight_mean,
        moved: r.moved,
        histogram: r.all.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_classified_by_status() {
        let mut o = Outcomes::default();
        for (s, c) in [
            (200, None),
            (422, Some("insufficient_funds")),
            (404, Some("account_not_found")),
            (409, Some("in_progress")),
            (202, None),
            (503, Some("unavailable")),
            (429, Some("overloaded")),
        ] {
            o.add_status(s, c.map(str::to_string));
        }
        o.timeouts += 1;
        assert_eq!(
            (
                o.committed,
                o.refused,
                o.conflict,
                o.pending,
                o.server_error,
                o.other
            ),
            (1, 2, 1, 1, 1, 1)
        );
        assert_eq!(o.total(), 8);
        assert_eq!(o.errors(), 7);
        assert_eq!(o.codes["http_202"], 1);
        assert_eq!(o.codes["insufficient_funds"], 1);
    }

    #[test]
    fn latency_percentiles_come_from_the_histogram() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let l = Latency::of(&h);
        assert!((l.p50_ms - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_ms - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max_ms - 1000.0).abs() < 1.0, "{l:?}");
    }
}
