//! A profile of the cluster while it runs one scenario: where the CPU of a
//! transfer goes, written beside the table as `profile.txt`.
//!
//! With `perf` (Debian's `linux-perf`; `scripts/ensure-deps.sh --bench`
//! installs it) it samples every process of the cluster on the `cpu-clock`
//! software event (virtual machines rarely expose hardware counters), and
//! the summary is `perf report` by process and shared object, then by
//! symbol. Without a working `perf`, the file says why and holds only the
//! CPU per process tree from `/proc`, which every row of the report has.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::cpu::{tree_pids, TreesUsage};

/// Samples per second and CPU.
const FREQUENCY: &str = "499";
/// How long `perf report` may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(300);

/// A `perf record` under way, or the reason there is none.
pub struct Profiler {
    child: Option<tokio::process::Child>,
    data: PathBuf,
    /// Why there is no `perf` profile, if there is none.
    missing: Option<String>,
}

/// Whether `perf record` works here: `None` if it does, else why not.
pub async fn perf_unavailable() -> Option<String> {
    let probe = tokio::process::Command::new("perf")
        .args([
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-o",
            "/dev/null",
            "--",
            "true",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(30), probe).await {
        Err(_) => Some("perf record did not finish a probe in 30 s".into()),
        Ok(Err(e)) => Some(format!("perf is not installed ({e})")),
        Ok(Ok(out)) if !out.status.success() => Some(format!(
            "perf record fails here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(Ok(_)) => None,
    }
}

impl Profiler {
    /// Starts sampling every process below each of `roots` (PIDs) into
    /// `out_dir/perf.data`.
    pub async fn start(roots: &[u32], out_dir: &Path) -> Profiler {
        let data = out_dir.join("perf.data");
        if let Some(why) = perf_unavailable().await {
            return Profiler {
                child: None,
                data,
                missing: Some(why),
            };
        }
        let pids: Vec<String> = roots
            .iter()
            .flat_map(|r| tree_pids(*r))
            .map(|p| p.to_string())
            .collect();
        let child = tokio::process::Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-F", FREQUENCY, "-p"])
            .arg(pids.join(","))
            .arg("-o")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        match child {
            Ok(child) => Profiler {
                child: Some(child),
                data,
                missing: None,
            },
            Err(e) => Profiler {
                child: None,
                data,
                missing: Some(format!("perf record did not start: {e}")),
            },
        }
    }

    /// Stops sampling and writes `out_dir/profile.txt`: `title`, the CPU
    /// per process tree, then perf's summary. Returns the file's path.
    pub async fn finish(
        mut self,
        title: &str,
        usage: &TreesUsage,
        out_dir: &Path,
    ) -> Result<PathBuf> {
        let mut text = String::new();
        let _ = writeln!(text, "{title}\n");
        let _ = writeln!(
            text,
            "CPU per process tree (from /proc; 100% = one CPU), {:.1} s:",
            usage.seconds
        );
        for (name, pct) in &usage.pct_by_process {
            let _ = writeln!(text, "  {name:<16} {pct:>6.1}%");
        }
        text.push('\n');
        match self.child.take() {
            None => {
                let _ = writeln!(
                    text,
                    "No perf profile: {}",
                    self.missing.as_deref().unwrap_or("unknown reason")
                );
            }
            Some(mut child) => {
                if let Some(pid) = child.id() {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGINT);
                }
                let stopped = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
                if stopped.is_err() {
                    let _ = child.kill().await;
                }
                for (what, sort) in [
                    ("by process and shared object", "comm,dso"),
                    ("by process and symbol (0.3% or more)", "comm,dso,sym"),
                ] {
                    let _ = writeln!(text, "perf report, {what}:");
                    text.push_str(&self.report(sort).await?);
                    text.push('\n');
                }
            }
        }
        let path = out_dir.join("profile.txt");
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    async fn report(&self, sort: &str) -> Result<String> {
        let out = tokio::process::Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--percent-limit",
                "0.3",
            ])
            .args(["--sort", sort, "-i"])
            .arg(&self.data)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(REPORT_TIMEOUT, out)
            .await
            .context("perf report did not finish")?
            .context("running perf report")?;
        let text = String::from_utf8_lossy(&out.stdout);
        // Keep the table, not perf's comment header.
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| format!("{l}\n"))
            .collect())
    }
}
