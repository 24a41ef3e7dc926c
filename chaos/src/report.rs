//! The report of a chaos run: what was done, what was injected, what the
//! checker found, how long it all took; as JSON (`report.json`) and as a
//! summary that fits one screen (`report.txt`, and what `chaos` prints).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::audit::Audit;
use super::checker::{Anomaly, Settling};
use super::history::{FaultKind, History, Known, Outcome, Phase, Request};
use super::Config;

/// How many anomalies the report lists one by one (it counts them all).
const LISTED: usize = 1000;

/// Operations of one kind, by outcome.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Counts {
    /// Succeeded.
    pub ok: u64,
    /// Definitely not done.
    pub fail: u64,
    /// Maybe done.
    pub unknown: u64,
    /// Of all three, how many were retries of an earlier request.
    pub retries: u64,
}

impl Counts {
    fn add(&mut self, outcome: Outcome, retry: bool) {
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Fail => self.fail += 1,
            Outcome::Unknown => self.unknown += 1,
        }
        self.retries += u64::from(retry);
    }

    /// All of them.
    pub fn total(&self) -> u64 {
        self.ok + self.fail + self.unknown
    }
}

/// Faults of one kind.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FaultCount {
    /// How many.
    pub count: u64,
    /// Their total duration, injection to healing.
    pub seconds: f64,
}

/// How the unknown outcomes were settled after healing.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Resolution {
    /// Transfers whose every answer during the chaos was unknown.
    pub unknown_transfers: u64,
    /// Of those, found committed.
    pub committed: u64,
    /// Of those, found aborted, or never recorded.
    pub not_applied: u64,
    /// Deposits and withdrawals whose every answer was unknown.
    pub unknown_movements: u64,
    /// Status lookups sent to resolve them.
    pub status_lookups: u64,
    /// Retries of movements sent to resolve them.
    pub movement_retries: u64,
    /// Seconds from healing to everything resolved and settled (`None`:
    /// not by the end of waiting).
    pub settled_after_s: Option<f64>,
    /// The limit on it.
    pub limit_s: f64,
}

/// Phases' durations, in seconds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Timings {
    /// Starting the cluster, opening and funding the accounts.
    pub setup_s: f64,
    /// Clients against the nemesis.
    pub chaos_s: f64,
    /// Healing, resolving, settling, fresh operations, final audit and reads.
    pub after_s: f64,
    /// The whole run.
    pub total_s: f64,
    /// New transfers sent per second of chaos.
    pub transfers_per_s: f64,
    /// Latency of the transfers during the chaos (ms): p50, p99, max.
    pub transfer_latency_ms: [f64; 3],
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Seed of every random choice (clients, nemesis, ids).
    pub seed: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Where the history and this report are.
    pub out: String,
    /// Operations during the chaos, by kind.
    pub operations: BTreeMap<String, Counts>,
    /// New transfers sent during the chaos (retries not counted).
    pub transfers: u64,
    /// Answers to transfers during the chaos: `"200 committed"`,
    /// `"422 insufficient_funds"`, `"no answer"`...
    pub transfer_answers: BTreeMap<String, u64>,
    /// Faults, by kind.
    pub faults: BTreeMap<String, FaultCount>,
    /// All faults.
    pub fault_total: u64,
    /// After healing.
    pub resolution: Resolution,
    /// Fresh operations after settling.
    pub fresh: Counts,
    /// Final balances per currency, in minor units.
    pub totals: BTreeMap<String, i64>,
    /// Anomalies by kind.
    pub anomalies: BTreeMap<String, u64>,
    /// The anomalies themselves (the first thousand).
    pub anomaly_list: Vec<Anomaly>,
    /// How long.
    pub timings: Timings,
}

impl Report {
    /// Counts what the history holds.
    pub fn new(
        config: &Config,
        history: &History,
        audit: &Audit,
        anomalies: &[Anomaly],
        settling: Settling,
        mut timings: Timings,
    ) -> Report {
        let mut operations: BTreeMap<String, Counts> = BTreeMap::new();
        let mut transfer_answers: BTreeMap<String, u64> = BTreeMap::new();
        let mut fresh = Counts::default();
        let mut latencies = Vec::new();
        let mut transfers = 0;
        for op in &history.ops {
            match op.phase {
                Phase::Chaos => {}
                Phase::Fresh => {
                    fresh.add(op.outcome, op.retry);
                    continue;
                }
                _ => continue,
            }
            operations
                .entry(op.request.kind().to_string())
                .or_default()
                .add(op.outcome, op.retry);
            if let Request::Transfer { .. } = op.request {
                let answer = match (op.status, op.code(), op.state()) {
                    (None, _, _) if op.outcome == Outcome::Fail => "not sent".to_string(),
                    (None, _, _) => "no answer".to_string(),
                    (Some(s), Some(code), _) => format!("{s} {code}"),
                    (Some(s), None, Some(state)) => format!("{s} {state}"),
                    (Some(s), None, None) => s.to_string(),
                };
                *transfer_answers.entry(answer).or_default() += 1;
                latencies.push(op.latency_ms());
                transfers += u64::from(!op.retry);
            }
        }
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0.0)
        };
        timings.transfer_latency_ms = [
            pct(0.5),
            pct(0.99),
            latencies.last().copied().unwrap_or(0.0),
        ];
        timings.transfers_per_s = transfers as f64 / timings.chaos_s.max(0.001);

        let mut faults: BTreeMap<String, FaultCount> = BTreeMap::new();
        for f in &history.faults {
            let c = faults.entry(f.kind.as_str().to_string()).or_default();
            c.count += 1;
            c.seconds += (f.end_ms - f.start_ms) / 1000.0;
        }
        let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
        for a in anomalies {
            *by_kind.entry(a.kind.to_string()).or_default() += 1;
        }
        let mut resolution = Resolution::count(history);
        resolution.limit_s = settling.limit_ms / 1000.0;
        resolution.settled_after_s = settling
            .settled_ms
            .map(|t| (t - settling.healed_ms) / 1000.0);
        let mut totals: BTreeMap<String, i64> = BTreeMap::new();
        for s in audit.accounts.values() {
            *totals.entry(s.currency.clone()).or_default() += s.posted;
        }
        Report {
            seed: config.seed,
            clients: config.clients,
            out: config.out.display().to_string(),
            operations,
            transfers,
            transfer_answers,
            faults,
            fault_total: history.faults.len() as u64,
            resolution,
            fresh,
            totals,
            anomalies: by_kind,
            anomaly_list: anomalies.iter().take(LISTED).cloned().collect(),
            timings,
        }
    }

    /// How many anomalies were found.
    pub fn anomaly_count(&self) -> u64 {
        self.anomalies.values().sum()
    }

    /// The summary: one screen.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let t = &self.timings;
        let _ = writeln!(
            s,
            "chaos: seed {}, {} clients, {:.0} s of faults; history and report in {}",
            self.seed, self.clients, t.chaos_s, self.out
        );
        let _ = writeln!(
            s,
            "\noperations during the chaos      ok     fail  unknown  (retries)"
        );
        for (kind, c) in &self.operations {
            let _ = writeln!(
                s,
                "  {kind:<24} {:>9} {:>8} {:>8}  ({})",
                c.ok, c.fail, c.unknown, c.retries
            );
        }
        let mut answers: Vec<(&String, &u64)> = self.transfer_answers.iter().collect();
        answers.sort_by(|a, b| b.1.cmp(a.1));
        let answers: Vec<String> = answers
            .iter()
            .take(7)
            .map(|(a, n)| format!("{a} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "transfers: {} new ({:.0}/s); answers: {}",
            self.transfers,
            t.transfers_per_s,
            answers.join(", ")
        );
        let [p50, p99, max] = t.transfer_latency_ms;
        let _ = writeln!(
            s,
            "transfer latency: p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms"
        );
        let _ = writeln!(s, "\nfaults: {} in all", self.fault_total);
        let mut line = String::new();
        for (i, kind) in FaultKind::ALL.iter().enumerate() {
            let c = self.faults.get(kind.as_str()).cloned().unwrap_or_default();
            let _ = write!(
                line,
                "  {:<22}{:>4} ({:>5.1} s)",
                kind.as_str(),
                c.count,
                c.seconds
            );
            if i % 2 == 1 || i + 1 == FaultKind::ALL.len() {
                let _ = writeln!(s, "{line}");
                line.clear();
            }
        }
        let r = &self.resolution;
        let settled = match r.settled_after_s {
            Some(x) => format!("{x:.1} s after healing (limit {:.0} s)", r.limit_s),
            None => "NOT by the end of waiting".to_string(),
        };
        let _ = writeln!(
            s,
            "\nafter healing: {} unknown transfers resolved ({} committed, {} not applied; {} status lookups), {} unknown movements retried ({} retries)",
            r.unknown_transfers, r.committed, r.not_applied, r.status_lookups, r.unknown_movements, r.movement_retries
        );
        let _ = writeln!(
            s,
            "settled {settled}; fresh operations: {} ok of {}",
            self.fresh.ok,
            self.fresh.total()
        );
        let totals: Vec<String> = self
            .totals
            .iter()
            .map(|(c, v)| format!("{c} {v}"))
            .collect();
        let _ = writeln!(s, "final totals (minor units): {}", totals.join(", "));
        if self.anomalies.is_empty() {
            let _ = writeln!(s, "\nanomalies: none");
        } else {
            let _ = writeln!(s, "\nanomalies: {}", self.anomaly_count());
            for (kind, n) in &self.anomalies {
                let _ = writeln!(s, "  {kind:<24}{n:>6}");
            }
            for a in self.anomaly_list.iter().take(5) {
                let mut text = a.to_string();
                if text.len() > 300 {
                    let mut cut = 300;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                    text.push_str("...");
                }
                let _ = writeln!(s, "  - {text}");
            }
        }
        let _ = writeln!(
            s,
            "\ntimings: setup {:.1} s, chaos {:.1} s, after {:.1} s, total {:.1} s",
            t.setup_s, t.chaos_s, t.after_s, t.total_s
        );
        s
    }

    /// Writes `report.json` and `report.txt` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(dir.join("report.json"), json + "\n")
            .with_context(|| format!("writing {}", dir.join("report.json").display()))?;
        std::fs::write(dir.join("report.txt"), self.summary())
            .with_context(|| format!("writing {}", dir.join("report.txt").display()))
    }
}

impl Resolution {
    /// Counts the unknown outcomes of the chaos and how they were settled.
    pub fn count(history: &History) -> Resolution {
        let statuses = history.statuses();
        let mut r = Resolution::default();
        for (id, ops) in history.by_transaction() {
            let chaos: Vec<_> = ops
                .iter()
                .copied()
                .filter(|op| op.phase == Phase::Chaos)
                .collect();
            if chaos.is_empty() || Known::of(&chaos) != Known::Unknown {
                continue;
            }
            match ops[0].request {
                Request::Transfer { .. } => {
                    r.unknown_transfers += 1;
                    match statuses.get(&id) {
                        Some(s) if s.state() == Some("committed") => r.committed += 1,
                        Some(s) if s.is_final_status() => r.not_applied += 1,
                        _ => {}
                    }
                }
                _ => r.unknown_movements += 1,
            }
        }
        for op in history.ops.iter().filter(|op| op.phase == Phase::Resolve) {
            match op.request {
                Request::Status { .. } => r.status_lookups += 1,
                _ => r.movement_retries += 1,
            }
        }
        r
    }
}
