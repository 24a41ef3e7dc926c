//! How busy the machine was during a measurement, and how much of that was
//! not the benchmark: on a shared machine another build or cluster takes
//! CPU from the one being measured, and the report says so.
//!
//! From `/proc/stat` (all CPUs) and `/proc/PID/stat` of this process and
//! every descendant (the cluster's services, Postgres and its backends,
//! pgbench). A process's count includes its children that ended and were
//! waited for (a pgbench run, a Postgres backend), so they count as ours.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// Clock ticks per second of `/proc` times (`USER_HZ`, 100 on Linux).
const TICKS: f64 = 100.0;

/// A reading of the counters.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: std::time::Instant,
    /// Busy ticks of all CPUs (everything but idle and iowait).
    busy: u64,
    /// Ticks used so far by each of our processes, with their ended children.
    ours: BTreeMap<u32, u64>,
}

/// CPU use between two snapshots, in percent of one CPU (200% = two CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Number of CPUs of the machine.
    pub cpus: usize,
    /// Everything that ran.
    pub busy_pct: f64,
    /// This benchmark and its descendants.
    pub ours_pct: f64,
    /// Every other process: noise in the measurement.
    pub other_pct: f64,
}

/// Reads the counters now.
pub fn snapshot() -> Snapshot {
    let busy = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_string();
            let f: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal ...
            let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
            Some(f.iter().take(8).sum::<u64>() - idle)
        })
        .unwrap_or(0);
    let mut parents: BTreeMap<u32, u32> = BTreeMap::new();
    let mut ticks: BTreeMap<u32, u64> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, t)) = proc_stat(pid) {
                parents.insert(pid, ppid);
                ticks.insert(pid, t);
            }
        }
    }
    let mut ours: BTreeSet<u32> = [std::process::id()].into();
    // Descendants: repeat until no new child is found.
    loop {
        let before = ours.len();
        for (pid, ppid) in &parents {
            if ours.contains(ppid) {
                ours.insert(*pid);
            }
        }
        if ours.len() == before {
            break;
        }
    }
    Snapshot {
        at: std::time::Instant::now(),
        busy,
        ours: ours
            .into_iter()
            .filter_map(|p| Some((p, *ticks.get(&p)?)))
            .collect(),
    }
}

/// (ppid, utime + stime + cutime + cstime) of a process: its own CPU time
/// and that of its children that ended and were waited for.
fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let cutime: u64 = f.get(13)?.parse().ok()?;
    let cstime: u64 = f.get(14)?.parse().ok()?;
    Some((ppid, utime + stime + cutime + cstime))
}

impl Snapshot {
    /// CPU use from `self` until `later`.
    pub fn usage_until(&self, later: &Snapshot) -> Usage {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(0.001);
        let pct = |ticks: u64| ticks as f64 / TICKS / secs * 100.0;
        let busy = later.busy.saturating_sub(self.busy);
        // A process of ours that ended went, whole, into its parent's count:
        // take off what it had used before this interval.
        let grown: i64 = later
            .ours
            .iter()
            .map(|(pid, t)| *t as i64 - self.ours.get(pid).copied().unwrap_or(0) as i64)
            .sum();
        let ended: i64 = self
            .ours
            .iter()
            .filter(|(pid, _)| !later.ours.contains_key(pid))
            .map(|(_, t)| *t as i64)
            .sum();
        let ours = (grown - ended).max(0) as u64;
        Usage {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            busy_pct: pct(busy),
            ours_pct: pct(ours.min(busy)),
            other_pct: pct(busy.saturating_sub(ours)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_work_counts_as_ours() {
        let me = std::process::id();
        let before = snapshot();
        let start = before.ours[&me];
        // Burn 100 ms of CPU (ticks are 10 ms), however busy the machine is.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while proc_stat(me).unwrap().1 < start + 10 && std::time::Instant::now() < deadline {
            for i in 0..100_000u64 {
                std::hint::black_box(i);
            }
        }
        let after = snapshot();
        assert!(after.ours[&me] >= start + 10);
        let u = before.usage_until(&after);
        assert!(u.ours_pct > 0.0, "{u:?}");
        assert!(u.busy_pct >= u.ours_pct && u.other_pct >= 0.0, "{u:?}");
    }

    #[test]
    fn a_child_that_ended_counts_as_ours() {
        let before = snapshot();
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        let after = snapshot();
        let me = std::process::id();
        let grown = after.ours[&me] - before.ours[&me];
        assert!(
            grown >= 5,
            "the child's CPU time is not ours: {grown} ticks"
        );
        assert!(before.usage_until(&after).ours_pct > 0.0);
    }
}
