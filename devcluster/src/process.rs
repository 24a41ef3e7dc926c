//! Child processes: spawning them so that they never outlive us, signalling
//! them, waiting for them with a deadline, and reading the tail of their logs.
//!
//! Every long-lived child is spawned from one dedicated thread that lives as
//! long as the process, with `PR_SET_PDEATHSIG = SIGKILL`: if the test binary
//! or `devcluster run` dies (even by `kill -9`), the kernel kills its children
//! too, so no stray Postgres or etcd survives a killed test run. (The parent
//! death signal fires when the *thread* that forked exits, hence the thread.)
//! Each child also gets its own process group, so the Ctrl-C a terminal sends
//! to `devcluster run` does not reach the children, which `devcluster` then
//! stops in order.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid, User};

/// How often the wait loops look again.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// The OS user a child runs as (Postgres refuses to run as root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunAs {
    /// User id the child gets.
    pub uid: Uid,
    /// Group id the child gets.
    pub gid: Gid,
}

impl RunAs {
    /// The `postgres` user when we are root; `None` (run as ourselves) otherwise.
    pub fn postgres() -> Result<Option<RunAs>> {
        if !Uid::effective().is_root() {
            return Ok(None);
        }
        let user = User::from_name("postgres")
            .context("looking up the `postgres` OS user")?
            .context(
                "running as root, but there is no `postgres` OS user to run Postgres as \
                 (install Debian's `postgresql` package, or run as a normal user)",
            )?;
        Ok(Some(RunAs {
            uid: user.uid,
            gid: user.gid,
        }))
    }

    /// Gives `path` to this user.
    pub fn chown(&self, path: &Path) -> Result<()> {
        nix::unistd::chown(path, Some(self.uid), Some(self.gid))
            .with_context(|| format!("chown {} to uid {}", path.display(), self.uid))
    }

    /// Makes `cmd` run as this user.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.uid(self.uid.as_raw()).gid(self.gid.as_raw());
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` from the long-lived spawner thread, in its own process group,
/// with SIGKILL as its parent-death signal.
pub(crate) fn spawn(mut cmd: Command) -> Result<Child> {
    static SPAWNER: Mutex<Option<mpsc::Sender<SpawnRequest>>> = Mutex::new(None);
    let parent = std::process::id();
    cmd.process_group(0);
    // SAFETY: the closure runs in the forked child before exec; it only makes
    // two system calls (prctl, getppid), both async-signal-safe, and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // We may have died between fork and prctl: then nobody would kill
            // this child later.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(io::Error::from(nix::errno::Errno::ESRCH));
            }
            Ok(())
        });
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    let (reply_tx, reply_rx) = mpsc::channel();
    {
        let mut sender = SPAWNER.lock().unwrap_or_else(|p| p.into_inner());
        if sender.is_none() {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("devcluster-spawner".into())
                .spawn(move || {
                    for (mut cmd, reply) in rx {
                        let _ = reply.send(cmd.spawn());
                    }
                })
                .context("starting the devcluster spawner thread")?;
            *sender = Some(tx);
        }
        sender
            .as_ref()
            .and_then(|tx| tx.send((cmd, reply_tx)).ok())
            .ok_or_else(|| anyhow::anyhow!("the devcluster spawner thread is gone"))?;
    }
    reply_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the devcluster spawner thread is gone"))?
        .with_context(|| format!("spawning {program}"))
}

/// Opens `path` for appending (creating it) and writes a header line, so that
/// each start of a component is easy to find in its log.
pub(crate) fn open_log(path: &Path, what: &str) -> Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening log {}", path.display()))?;
    let now = chrono_like_now();
    writeln!(file, "===== devcluster: starting {what} at {now} =====")
        .with_context(|| format!("writing log {}", path.display()))?;
    Ok(file)
}

/// Seconds since the epoch; enough to tell starts apart without a date crate.
fn chrono_like_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("unix time {}.{:03}", now.as_secs(), now.subsec_millis())
}

/// Both of the child's output streams, appended to `log`.
pub(crate) fn log_stdio(log: &File) -> Result<(Stdio, Stdio)> {
    let out = log.try_clone().context("duplicating a log file handle")?;
    let err = log.try_clone().context("duplicating a log file handle")?;
    Ok((Stdio::from(out), Stdio::from(err)))
}

/// The last `lines` lines of a log file (at most the last 64 KiB of it).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let start = len.saturating_sub(64 * 1024);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A running (or exited) child we spawned.
#[derive(Debug)]
pub(crate) struct Proc {
    /// The OS handle; it knows whether the child was already reaped, so we
    /// never signal a PID that may have been reused.
    child: Child,
    /// Set once the child has been reaped.
    status: Option<ExitStatus>,
}

impl Proc {
    pub fn new(child: Child) -> Self {
        Proc {
            child,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The PID unless we have seen the child exit.
    pub fn live_pid(&self) -> Option<u32> {
        self.status.is_none().then(|| self.child.id())
    }

    /// The exit status if the child has exited (reaping it), `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            match self.child.try_wait() {
                Ok(status) => self.status = status,
                // ECHILD: someone else reaped it; it is gone all the same.
                Err(_) => self.status = Some(ExitStatus::default()),
            }
        }
        self.status
    }

    /// Sends `signal` unless the child has already exited.
    pub fn signal(&mut self, signal: Signal) -> Result<()> {
        if self.exited().is_some() {
            return Ok(());
        }
        let pid = Pid::from_raw(self.pid() as i32);
        match kill(pid, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("kill -{signal} {pid}")),
        }
    }

    /// Waits up to `timeout` for the child to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILL and reap, blocking; for `Drop`.
    pub fn kill_blocking(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.status = Some(status);
            }
        }
    }

    /// Sends `signal`, waits up to `grace` for an exit, then SIGKILLs.
    /// Returns the exit status.
    pub async fn terminate(&mut self, signal: Signal, grace: Duration) -> Result<ExitStatus> {
        self.signal(signal)?;
        if let Some(status) = self.wait_exit(grace).await {
            return Ok(status);
        }
        tracing::warn!(pid = self.pid(), ?grace, "did not exit in time; SIGKILL");
        self.signal(Signal::SIGKILL)?;
        match self.wait_exit(Duration::from_secs(10)).await {
            Some(status) => Ok(status),
            None => bail!("pid {} survived SIGKILL for 10 s", self.pid()),
        }
    }
}

/// Whether a process is gone (no such PID, or a zombie waiting to be reaped
/// by someone else: it holds no memory, sockets or files any more).
pub(crate) fn pid_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // Format: "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => false,
        },
    }
}

/// PIDs of processes running `exe` whose parent is `parent` or whose working
/// directory is `cwd`.
pub(crate) fn find_processes(exe: &Path, parent: Option<u32>, cwd: &Path) -> Vec<u32> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let exe = canon(exe);
    let cwd = canon(cwd);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let base = PathBuf::from(format!("/proc/{pid}"));
        if std::fs::read_link(base.join("exe")).ok().as_deref() != Some(exe.as_path()) {
            continue;
        }
        let by_parent = parent.is_some() && parent == parent_pid(pid);
        let by_cwd = std::fs::read_link(base.join("cwd")).ok().as_deref() == Some(cwd.as_path());
        if by_parent || by_cwd {
            found.push(pid);
        }
    }
    found
}

fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// SIGKILLs `pids` (ignoring the ones already gone).
pub(crate) fn kill_pids(pids: &[u32]) {
    signal_pids(pids, Signal::SIGKILL);
}

/// Sends `signal` to `pids` (ignoring the ones already gone).
pub(crate) fn signal_pids(pids: &[u32], signal: Signal) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid as i32), signal);
    }
}

/// Waits until every one of `pids` is gone.
pub(crate) async fn wait_pids_gone(pids: &[u32], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| !pid_gone(p)).collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("processes {left:?} still alive after {timeout:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Blocking variant of [`wait_pids_gone`], for `Drop`; gives up silently.
pub(crate) fn wait_pids_gone_blocking(pids: &[u32], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|&p| !pid_gone(p)) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_killed_child_is_reaped_and_reported_gone() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut proc = Proc::new(spawn(cmd).unwrap());
        let pid = proc.pid();
        assert!(!pid_gone(pid));
        assert!(proc.exited().is_none());
        let status = proc
            .terminate(Signal::SIGTERM, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!status.success());
        assert!(pid_gone(pid));
        // Signalling a reaped child is a no-op, never a stray kill.
        proc.signal(Signal::SIGKILL).unwrap();
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        std::fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(log_tail(&path, 2), "c\nd");
        assert_eq!(log_tail(&path, 10), "a\nb\nc\nd");
        assert!(log_tail(&dir.path().join("missing"), 3).contains("cannot read"));
    }
}
