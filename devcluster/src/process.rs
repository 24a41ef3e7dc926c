//! Child processes: spawning them so that they never outlive us, signalling
//! them, waiting for them with a deadline, and reading the tail of their logs.
//!
//! [`Supervised`] is the one lifecycle every long-lived child of the cluster
//! has (etcd, each Postgres server, each service): spawned from a fixed
//! command with its output appended to a log, ready once a check says so,
//! then `kill9`, `pause`/`resume` (SIGSTOP/SIGCONT), a graceful `stop`,
//! `wait_exit`, and `restart` with the same command. [`crate::Etcd`],
//! [`crate::Postgres`] and [`crate::Service`] each wrap one and add only what
//! is their own (ports, URLs, data directories, how to tell it is ready).
//!
//! Every long-lived child is spawned from one dedicated thread that lives as
//! long as the process, with `PR_SET_PDEATHSIG = SIGKILL`: if the test binary
//! or `devcluster run` dies (even by `kill -9`), the kernel kills its children
//! too, so no stray Postgres or etcd survives a killed test run. (The parent
//! death signal fires when the *thread* that forked exits, hence the thread.)
//! Each child also gets its own process group, so the Ctrl-C a terminal sends
//! to `devcluster run` does not reach the children, which `devcluster` then
//! stops in order.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::future::BoxFuture;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid, User};

use crate::ports::wait_port_free;

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
fn spawn(mut cmd: Command) -> Result<Child> {
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
fn open_log(path: &Path, what: &str) -> Result<File> {
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
fn log_stdio(log: &File) -> Result<(Stdio, Stdio)> {
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
struct Proc {
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

/// How to start a child: program, arguments, environment, working
/// directory and OS user. The same at every (re)start.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    /// The executable.
    program: PathBuf,
    /// Command-line arguments.
    args: Vec<OsString>,
    /// Environment variables set on top of ours (later entries win).
    env: Vec<(OsString, OsString)>,
    /// Working directory.
    dir: PathBuf,
    /// Who the child runs as (`None`: as ourselves).
    run_as: Option<RunAs>,
}

impl Launch {
    /// `program` in `dir`, with no arguments or extra environment.
    pub fn new(program: impl Into<PathBuf>, dir: impl Into<PathBuf>) -> Self {
        Launch {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            dir: dir.into(),
            run_as: None,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Adds environment variables.
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.env.extend(
            vars.into_iter()
                .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned())),
        );
        self
    }

    /// Runs the child as `run_as` (`None`: as ourselves).
    pub fn run_as(mut self, run_as: Option<RunAs>) -> Self {
        self.run_as = run_as;
        self
    }

    /// The command, its output appended to `log`.
    fn command(&self, log: &File) -> Result<Command> {
        let (out, err) = log_stdio(log)?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some(run_as) = &self.run_as {
            run_as.apply(&mut cmd);
        }
        Ok(cmd)
    }
}

/// The check that a freshly started child serves: `Ok(true)` once it does,
/// `Ok(false)` while not yet; an error ends the start.
pub(crate) struct Ready {
    /// What it waits for, for the error when that never comes.
    what: String,
    /// The check, run every [`POLL`] until it passes.
    check: Box<dyn Fn() -> BoxFuture<'static, Result<bool>> + Send + Sync>,
}

impl Ready {
    /// A check named `what` (e.g. `GET http://.../health answers 200`).
    pub fn new<F, Fut>(what: impl Into<String>, check: F) -> Ready
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<bool>> + Send + 'static,
    {
        Ready {
            what: what.into(),
            check: Box::new(move || Box::pin(check())),
        }
    }
}

impl fmt::Debug for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Ready").field(&self.what).finish()
    }
}

/// The processes a child forks to do its work (a postmaster's backends),
/// which die, freeze and thaw with it: those running `exe` whose parent is
/// the child or whose working directory is `dir`.
#[derive(Debug, Clone)]
pub(crate) struct Workers {
    /// Their executable.
    pub exe: PathBuf,
    /// Their working directory (it outlives the parent's PID).
    pub dir: PathBuf,
}

impl Workers {
    /// Their PIDs: the children of `parent` and every process in `dir`.
    fn list(&self, parent: Option<u32>) -> Vec<u32> {
        find_processes(&self.exe, parent, &self.dir)
    }
}

/// One long-lived child of the cluster, from its start to its death, as
/// many times as it is restarted. Dropping it SIGKILLs the child (and its
/// workers).
#[derive(Debug)]
pub struct Supervised {
    /// What it is, in logs and errors: `etcd on port 2379`,
    /// `participant-1 on 127.0.0.1:7001`.
    what: String,
    /// How it is (re)started.
    launch: Launch,
    /// Its output, appended across restarts, each start behind a header line.
    log: PathBuf,
    /// When a start is done.
    ready: Ready,
    /// How long a start may take before it counts as failed.
    start_timeout: Duration,
    /// The signal that asks it to stop (SIGTERM; Postgres: SIGINT, a fast
    /// shutdown).
    stop_signal: Signal,
    /// How long a graceful stop may take before SIGKILL.
    stop_timeout: Duration,
    /// Ports it listens on: `kill9` and `stop` return once they are free
    /// again, so that a restart can bind them at once.
    ports: Vec<u16>,
    /// The processes it forks, which share its fate.
    workers: Option<Workers>,
    /// A PID file the program refuses to start over while the PID in it
    /// lives (Postgres: `postmaster.pid`).
    pid_file: Option<PathBuf>,
    /// The process, once started.
    proc: Option<Proc>,
}

impl Supervised {
    /// A child that is not started yet: a 30 s start timeout, stopped by
    /// SIGTERM with 10 s of grace, no ports, no workers.
    pub(crate) fn new(
        what: impl Into<String>,
        launch: Launch,
        log: impl Into<PathBuf>,
        ready: Ready,
    ) -> Self {
        Supervised {
            what: what.into(),
            launch,
            log: log.into(),
            ready,
            start_timeout: Duration::from_secs(30),
            stop_signal: Signal::SIGTERM,
            stop_timeout: Duration::from_secs(10),
            ports: Vec::new(),
            workers: None,
            pid_file: None,
            proc: None,
        }
    }

    /// How long a start may take.
    pub(crate) fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// How a graceful stop asks, and how long it waits before SIGKILL.
    pub(crate) fn stop_with(mut self, signal: Signal, timeout: Duration) -> Self {
        self.stop_signal = signal;
        self.stop_timeout = timeout;
        self
    }

    /// The ports it listens on.
    pub(crate) fn ports(mut self, ports: impl IntoIterator<Item = u16>) -> Self {
        self.ports = ports.into_iter().collect();
        self
    }

    /// The processes it forks.
    pub(crate) fn workers(mut self, workers: Workers) -> Self {
        self.workers = Some(workers);
        self
    }

    /// Its PID file.
    pub(crate) fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// Spawns it and waits until it is ready. If it exits first, or the
    /// start timeout passes, the error carries the end of its log.
    pub(crate) async fn start(&mut self) -> Result<()> {
        if let Some(pid_file) = &self.pid_file {
            clear_stale_pid_file(pid_file, &self.launch.program)?;
        }
        let log = open_log(&self.log, &self.what)?;
        let cmd = self.launch.command(&log)?;
        let started = Instant::now();
        self.proc = Some(Proc::new(
            spawn(cmd).with_context(|| format!("starting {}", self.what))?,
        ));
        self.wait_ready().await?;
        tracing::info!(what = %self.what, pid = self.pid(), elapsed = ?started.elapsed(), "ready");
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let timeout = self.start_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.proc.as_mut().and_then(Proc::exited) {
                bail!(
                    "{} exited during startup ({status}); end of {}:\n{}",
                    self.what,
                    self.log.display(),
                    self.log_tail(40)
                );
            }
            if (self.ready.check)().await? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready within {timeout:?} (waiting until {}); end of {}:\n{}",
                    self.what,
                    self.ready.what,
                    self.log.display(),
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Its PID, unless it is known to have exited.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::live_pid)
    }

    /// Whether it is alive.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// Its log (stdout and stderr, appended across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Waits up to `timeout` for it to exit on its own (a crash hook, say)
    /// and returns how it exited.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let proc = self
            .proc
            .as_mut()
            .ok_or_else(|| anyhow!("{} was never started", self.what))?;
        proc.wait_exit(timeout)
            .await
            .ok_or_else(|| anyhow!("{} still running after {timeout:?}", self.what))
    }

    /// Crashes it: SIGKILL to it and every worker it had (for Postgres, what
    /// a crash of the database machine looks like to clients: nothing more
    /// is committed). Returns once all are gone and its ports are free, so
    /// that [`Supervised::restart`] can follow at once.
    pub async fn kill9(&mut self) -> Result<()> {
        let Some(proc) = self.proc.as_mut() else {
            return Ok(());
        };
        let pid = proc.pid();
        let workers = match &self.workers {
            Some(workers) if proc.exited().is_none() => {
                // Freeze it so that it cannot fork while we list its workers.
                proc.signal(Signal::SIGSTOP)?;
                workers.list(Some(pid))
            }
            Some(workers) => workers.list(None),
            None => Vec::new(),
        };
        proc.signal(Signal::SIGKILL)?;
        kill_pids(&workers);
        if proc.wait_exit(Duration::from_secs(10)).await.is_none() {
            bail!("{} (pid {pid}) survived SIGKILL for 10 s", self.what);
        }
        wait_pids_gone(&workers, Duration::from_secs(10))
            .await
            .with_context(|| format!("waiting for the workers of {} to die", self.what))?;
        self.wait_ports_free().await?;
        tracing::info!(what = %self.what, pid, "killed (SIGKILL)");
        Ok(())
    }

    /// SIGSTOP to it and its workers: it freezes with its sockets and
    /// connections open and its callers wait, as when a machine stalls.
    /// [`Supervised::resume`] undoes it.
    pub fn pause(&mut self) -> Result<()> {
        self.signal_all(Signal::SIGSTOP)
    }

    /// SIGCONT to it and its workers after [`Supervised::pause`].
    pub fn resume(&mut self) -> Result<()> {
        self.signal_all(Signal::SIGCONT)
    }

    fn signal_all(&mut self, signal: Signal) -> Result<()> {
        let Some(proc) = self.proc.as_mut() else {
            return Ok(());
        };
        let Some(workers) = &self.workers else {
            return proc.signal(signal);
        };
        if proc.exited().is_some() {
            return Ok(());
        }
        // The parent stops first and continues last, so it cannot fork a
        // worker we did not list.
        let stop = signal == Signal::SIGSTOP;
        if stop {
            proc.signal(signal)?;
        }
        signal_pids(&workers.list(Some(proc.pid())), signal);
        if !stop {
            proc.signal(signal)?;
        }
        Ok(())
    }

    /// Asks it to stop (the stop signal), SIGKILLs it if it has not exited
    /// after the stop timeout, and any worker left; returns once its ports
    /// are free.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(proc) = self.proc.as_mut() else {
            return Ok(());
        };
        let status = proc.terminate(self.stop_signal, self.stop_timeout).await?;
        if let Some(workers) = &self.workers {
            let left = workers.list(None);
            kill_pids(&left);
            wait_pids_gone(&left, Duration::from_secs(10)).await?;
        }
        self.wait_ports_free().await?;
        tracing::info!(what = %self.what, %status, "stopped");
        Ok(())
    }

    /// Starts it again with the same command (after [`Supervised::kill9`],
    /// Postgres runs crash recovery first), stopping it first if it still
    /// runs; returns once it is ready.
    pub async fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            self.stop().await?;
        }
        self.start().await
    }

    async fn wait_ports_free(&self) -> Result<()> {
        for &port in &self.ports {
            wait_port_free(port, Duration::from_secs(10)).await?;
        }
        Ok(())
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let Some(proc) = self.proc.as_mut() else {
            return;
        };
        let workers = match &self.workers {
            Some(workers) if proc.exited().is_none() => {
                let _ = proc.signal(Signal::SIGSTOP);
                workers.list(Some(proc.pid()))
            }
            Some(workers) => workers.list(None),
            None => Vec::new(),
        };
        proc.kill_blocking();
        kill_pids(&workers);
        wait_pids_gone_blocking(&workers, Duration::from_secs(5));
    }
}

/// Removes `pid_file` when its PID belongs to some other live process (PID
/// reuse after a kill), which `program` would take for a running copy of
/// itself. Refuses if `program` itself still runs under that PID.
fn clear_stale_pid_file(pid_file: &Path, program: &Path) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return Ok(());
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
    else {
        return Ok(());
    };
    if pid_gone(pid) {
        // The program handles a dead PID itself (Postgres frees the old
        // shared memory).
        return Ok(());
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let ours = std::fs::canonicalize(program).ok();
    if exe.is_some() && exe == ours {
        bail!(
            "{} (pid {pid}) is already running, by {}; stop it first (kill {pid})",
            program.display(),
            pid_file.display()
        );
    }
    std::fs::remove_file(pid_file).with_context(|| format!("removing stale {}", pid_file.display()))
}

/// Whether a process is gone (no such PID, or a zombie waiting to be reaped
/// by someone else: it holds no memory, sockets or files any more).
fn pid_gone(pid: u32) -> bool {
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
fn find_processes(exe: &Path, parent: Option<u32>, cwd: &Path) -> Vec<u32> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let exe = canon(exe);
    let cwd = canon(cwd);
    let mut found = Vec::new();
    for (pid, base) in numbered_entries(Path::new("/proc")) {
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

/// The entries of `dir` named by a number, with that number: PIDs in
/// `/proc`, major versions in `/usr/lib/postgresql`. None if `dir` cannot be
/// read.
pub(crate) fn numbered_entries(dir: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let n = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((n, entry.path()))
        })
        .collect()
}

fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// SIGKILLs `pids` (ignoring the ones already gone).
fn kill_pids(pids: &[u32]) {
    signal_pids(pids, Signal::SIGKILL);
}

/// Sends `signal` to `pids` (ignoring the ones already gone).
fn signal_pids(pids: &[u32], signal: Signal) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid as i32), signal);
    }
}

/// Waits until every one of `pids` is gone.
async fn wait_pids_gone(pids: &[u32], timeout: Duration) -> Result<()> {
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
fn wait_pids_gone_blocking(pids: &[u32], timeout: Duration) {
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

    /// Whether `pid` is stopped (`T` in `/proc/PID/stat`), once a signal
    /// sent to it has had up to a second to land.
    async fn stopped(pid: u32, expected: bool) -> bool {
        let state = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            stat[stat.rfind(')').unwrap() + 1..]
                .trim_start()
                .starts_with('T')
        };
        let deadline = Instant::now() + Duration::from_secs(1);
        while state() != expected && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        state()
    }

    #[tokio::test]
    async fn a_supervised_child_is_paused_killed_and_restarted_with_the_same_command() {
        let dir = tempfile::tempdir().unwrap();
        let launch = Launch::new("sleep", dir.path()).arg("30");
        let ready = Ready::new("always", || async { Ok(true) });
        let mut child = Supervised::new("sleep 30", launch, dir.path().join("sleep.log"), ready);
        child.start().await.unwrap();
        let pid = child.pid().unwrap();
        child.pause().unwrap();
        assert!(stopped(pid, true).await);
        child.resume().unwrap();
        assert!(!stopped(pid, false).await);
        child.kill9().await.unwrap();
        assert!(pid_gone(pid));
        assert_eq!(child.pid(), None);
        assert!(!child.is_running());
        child.restart().await.unwrap();
        let again = child.pid().unwrap();
        assert_ne!(again, pid);
        child.stop().await.unwrap();
        assert!(pid_gone(again));
        let log = std::fs::read_to_string(child.log_path()).unwrap();
        assert_eq!(log.matches("devcluster: starting sleep 30").count(), 2);
    }

    #[tokio::test]
    async fn a_start_that_never_gets_ready_fails_with_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let launch = Launch::new("sh", dir.path()).args(["-c", "echo waiting; sleep 30"]);
        let ready = Ready::new("never", || async { Ok(false) });
        let mut child = Supervised::new("sh", launch, dir.path().join("sh.log"), ready)
            .start_timeout(Duration::from_millis(300));
        let message = format!("{:#}", child.start().await.unwrap_err());
        assert!(message.contains("not ready within"), "{message}");
        assert!(message.contains("waiting"), "{message}");
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
