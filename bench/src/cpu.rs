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
    let table = process_table();
    let ours = descendants(&table, &[std::process::id()]);
    Snapshot {
        at: std::time::Instant::now(),
        busy,
        ours: ours
            .into_iter()
            .filter_map(|p| Some((p, table.get(&p)?.1)))
            .collect(),
    }
}

/// Every process of the machine: pid -> (ppid, ticks used with its ended
/// children).
fn process_table() -> BTreeMap<u32, (u32, u64)> {
    let mut table = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(row) = proc_stat(pid) {
                table.insert(pid, row);
            }
        }
    }
    table
}

/// `roots` and every process below them in `table`.
fn descendants(table: &BTreeMap<u32, (u32, u64)>, roots: &[u32]) -> BTreeSet<u32> {
    let mut found: BTreeSet<u32> = roots.iter().copied().collect();
    // Repeat until no new child is found.
    loop {
        let before = found.len();
        for (pid, (ppid, _)) in table {
            if found.contains(ppid) {
                found.insert(*pid);
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

/// The pids of `root` and of every process below it (a Postgres server's
/// backends), now.
pub fn tree_pids(root: u32) -> BTreeSet<u32> {
    let table = process_table();
    descendants(&table, &[root])
        .into_iter()
        .filter(|p| table.contains_key(p))
        .collect()
}

/// CPU time of named process trees (a service, a Postgres server with its
/// backends, etcd), read at one instant. A tree's count is the sum over its
/// live processes of their own time and that of their ended, waited-for
/// children: a backend that ends moves, whole, into its postmaster's count,
/// so the sum only grows while the root lives.
#[derive(Debug, Clone)]
pub struct Trees {
    at: std::time::Instant,
    /// Ticks by tree name.
    ticks: BTreeMap<String, u64>,
}

/// What named process trees used between two [`Trees`] readings.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TreesUsage {
    /// Length of the interval, seconds.
    pub seconds: f64,
    /// CPU seconds of every tree together.
    pub cpu_seconds: f64,
    /// Percent of one CPU, by tree name (100 = one CPU busy all the time).
    pub pct_by_process: BTreeMap<String, f64>,
}

impl TreesUsage {
    /// CPU microseconds per unit of work (`None` when there was none).
    pub fn us_per(&self, units: u64) -> Option<f64> {
        (units > 0).then(|| self.cpu_seconds * 1e6 / units as f64)
    }
}

impl Trees {
    /// Reads the CPU time of each `(name, root pid)` tree now; trees that
    /// share a name add up (two coordinators' trees as "coordinator").
    pub fn read(roots: &[(String, u32)]) -> Trees {
        let table = process_table();
        let mut ticks: BTreeMap<String, u64> = BTreeMap::new();
        for (name, root) in roots {
            let sum: u64 = descendants(&table, &[*root])
                .iter()
                .filter_map(|p| Some(table.get(p)?.1))
                .sum();
            *ticks.entry(name.clone()).or_default() += sum;
        }
        Trees {
            at: std::time::Instant::now(),
            ticks,
        }
    }

    /// What each tree used from `self` until `later`.
    pub fn usage_until(&self, later: &Trees) -> TreesUsage {
        let seconds = later.at.duration_since(self.at).as_secs_f64().max(0.001);
        let mut total = 0u64;
        let mut pct_by_process = BTreeMap::new();
        for (name, t) in &later.ticks {
            let used = t.saturating_sub(self.ticks.get(name).copied().unwrap_or(0));
            total += used;
            pct_by_process.insert(name.clone(), used as f64 / TICKS / seconds * 100.0);
        }
        TreesUsage {
            seconds,
            cpu_seconds: total as f64 / TICKS,
            pct_by_process,
        }
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
        // The machine was at least as busy as our processes were: its
        // counter (/proc/stat) may lag theirs by a tick or more.
        let busy = busy.max(ours);
        Usage {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            busy_pct: pct(busy),
            ours_pct: pct(ours),
            other_pct: pct(busy - ours),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each test counts this process's CPU time, children included: one at
    /// a time, or a child another test reaps lands in this one's count
    /// (seen: the burn loop below ended at once on a reaped child's ticks).
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn alone() -> std::sync::MutexGuard<'static, ()> {
        ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[test]
    fn our_own_work_counts_as_ours() {
        let _alone = alone();
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
        let _alone = alone();
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

    #[test]
    fn a_tree_counts_its_ended_children() {
        let _alone = alone();
        let roots = vec![("me".to_string(), std::process::id())];
        let before = Trees::read(&roots);
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        let u = before.usage_until(&Trees::read(&roots));
        assert!(u.cpu_seconds >= 0.05, "{u:?}");
        assert!(u.pct_by_process["me"] > 0.0, "{u:?}");
        assert_eq!(u.us_per(0), None);
        assert!(u.us_per(10).unwrap() >= 5_000.0, "{u:?}");
        assert!(tree_pids(std::process::id()).contains(&std::process::id()));
    }
}
