//! Resident memory of the cluster's services while a scenario runs: VmRSS
//! from `/proc/PID/status`, sampled every [`EVERY`], peak per process.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::oneshot;

/// Sampling period.
pub const EVERY: Duration = Duration::from_millis(200);

/// VmRSS of `pid`, in kB (`None` if the process is gone).
pub fn vm_rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS:")
}

/// VmHWM of `pid` (its peak resident memory so far), in kB (`None` if
/// the process is gone).
pub fn vm_hwm_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM:")
}

/// A `kB` field of `/proc/PID/status`.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(field)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// VmRSS of each `(name, pid)` now, in MB (processes gone are left out).
pub fn now_mb(processes: &[(String, u32)]) -> BTreeMap<String, f64> {
    processes
        .iter()
        .filter_map(|(name, pid)| Some((name.clone(), vm_rss_kb(*pid)? as f64 / 1024.0)))
        .collect()
}

/// A running sampler; [`Sampler::stop`] returns the peaks.
pub struct Sampler {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<BTreeMap<String, u64>>,
}

impl Sampler {
    /// Samples each `(name, pid)` until stopped.
    pub fn start(processes: Vec<(String, u32)>) -> Sampler {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peak: BTreeMap<String, u64> = BTreeMap::new();
            let mut tick = tokio::time::interval(EVERY);
            loop {
                for (name, pid) in &processes {
                    if let Some(kb) = vm_rss_kb(*pid) {
                        let p = peak.entry(name.clone()).or_default();
                        *p = (*p).max(kb);
                    }
                }
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => break,
                }
            }
            peak
        });
        Sampler { stop, task }
    }

    /// Peak VmRSS per process name, in MB (1 MB = 1,048,576 bytes).
    pub async fn stop(self) -> BTreeMap<String, f64> {
        let _ = self.stop.send(());
        self.task
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(k, kb)| (k, kb as f64 / 1024.0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn samples_our_own_memory() {
        let me = std::process::id();
        assert!(vm_rss_kb(me).unwrap() > 0);
        assert!(vm_hwm_kb(me).unwrap() > 0);
        assert!(now_mb(&[("me".into(), me)])["me"] > 0.0);
        let s = Sampler::start(vec![("me".into(), me)]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let peaks = s.stop().await;
        assert!(peaks["me"] > 0.0);
    }
}
