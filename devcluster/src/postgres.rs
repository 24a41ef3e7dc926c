//! One real PostgreSQL server in a directory of its own.
//!
//! Layout of `dir`: `data/` (the data directory, owned by the OS user that
//! runs Postgres, with the Unix socket in it) and `postgres.log` (the
//! server's output, appended across restarts).
//!
//! A new data directory is a copy of a template made once per machine and
//! major version (initdb plus `CREATE DATABASE wallet`, in the system temp
//! dir, published by an atomic rename): copying takes ~0.1 s where initdb
//! takes ~0.7 s. initdb runs with `--no-sync`; the server itself always runs
//! with `fsync=on` and `synchronous_commit=on`.
//!
//! As root, initdb and the server run as the `postgres` OS user, and the PID
//! we hold is the postmaster's own.
//!
//! Its lifecycle is the one of every child ([`Supervised`]), with the
//! backends as the postmaster's workers: `kill9` SIGKILLs the postmaster and
//! every backend (a crash of the database machine), `pause`/`resume`
//! freeze and thaw them all, `stop` is a fast shutdown (SIGINT), and a
//! `restart` after `kill9` runs crash recovery.

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use tokio::sync::OnceCell;

use crate::ports::local;
use crate::process::{numbered_entries, Launch, Ready, RunAs, Supervised, Workers};

/// Name of the database every server gets.
pub const DATABASE: &str = "wallet";

/// How long a start (including crash recovery) may take.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before we SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Bump when the template's content changes.
const TEMPLATE_VERSION: u32 = 1;

/// A PostgreSQL server we started.
#[derive(Debug)]
pub struct Postgres {
    /// The directory that holds `data/` and `postgres.log`.
    dir: PathBuf,
    /// The data directory (`dir/data`).
    data_dir: PathBuf,
    /// TCP port on 127.0.0.1.
    port: u16,
    /// Where the Postgres binaries are.
    bin: PathBuf,
    /// The postmaster, its backends as workers: `pid`, `kill9`, `pause`,
    /// `resume`, `stop`, `restart` and the log, through `Deref`.
    process: Supervised,
}

impl Postgres {
    /// Starts a server on 127.0.0.1:`port` with its data in `dir/data`,
    /// creating (copying) the data directory unless it already holds one.
    /// Returns once it accepts connections.
    pub async fn start(dir: impl AsRef<Path>, port: u16) -> Result<Postgres> {
        Postgres::start_with(dir, port, None).await
    }

    /// The same, serving TLS (`ssl=on`) with the PEM certificate `cert` and
    /// its key `key`, copied into `dir/tls` for the server's user.
    pub async fn start_tls(
        dir: impl AsRef<Path>,
        port: u16,
        cert: &Path,
        key: &Path,
    ) -> Result<Postgres> {
        Postgres::start_with(dir, port, Some((cert, key))).await
    }

    async fn start_with(
        dir: impl AsRef<Path>,
        port: u16,
        tls: Option<(&Path, &Path)>,
    ) -> Result<Postgres> {
        let dir = absolute(dir.as_ref())?;
        let bin = bin_dir()?;
        let run_as = RunAs::postgres()?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if let Some(run_as) = &run_as {
            check_traversable(&dir)?;
            run_as.chown(&dir)?;
        }
        let data_dir = dir.join("data");
        if !data_dir.join("PG_VERSION").exists() {
            if data_dir.exists() {
                // A half-made data directory from an interrupted start.
                std::fs::remove_dir_all(&data_dir)
                    .with_context(|| format!("removing {}", data_dir.display()))?;
            }
            let template = template(&bin, run_as).await?;
            let copying = Instant::now();
            run(
                tokio::process::Command::new("cp")
                    .arg("-a")
                    .arg(template)
                    .arg(&data_dir),
                "copying the template data directory",
            )
            .await?;
            tracing::debug!(dir = %data_dir.display(), elapsed = ?copying.elapsed(), "data directory copied");
        }
        let mut launch = launch(&bin, &dir, &data_dir, port, run_as);
        if let Some((cert, key)) = tls {
            let tls_dir = dir.join("tls");
            std::fs::create_dir_all(&tls_dir)?;
            for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
                let to = tls_dir.join(name);
                std::fs::copy(from, &to)
                    .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
                // Postgres refuses a key others can read.
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))?;
                if let Some(run_as) = &run_as {
                    run_as.chown(&to)?;
                }
                launch = launch.arg("-c").arg(format!(
                    "ssl_{}_file={}",
                    if name == "server.crt" { "cert" } else { "key" },
                    to.display()
                ));
            }
            if let Some(run_as) = &run_as {
                run_as.chown(&tls_dir)?;
            }
            launch = launch.arg("-c").arg("ssl=on");
        }
        let mut process = Supervised::new(
            format!("postgres on port {port}"),
            launch,
            dir.join("postgres.log"),
            ready(&bin, port),
        )
        .start_timeout(START_TIMEOUT)
        .stop_with(Signal::SIGINT, STOP_TIMEOUT)
        .ports([port])
        .workers(Workers {
            exe: bin.join("postgres"),
            dir: data_dir.clone(),
        })
        .pid_file(data_dir.join("postmaster.pid"));
        process.start().await?;
        Ok(Postgres {
            dir,
            data_dir,
            port,
            bin,
            process,
        })
    }

    /// `postgres://postgres@127.0.0.1:PORT/wallet`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// `postgres://postgres@127.0.0.1:PORT/{database}`: another database
    /// on this server (see [`Postgres::create_database`]).
    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates the database `name` on this server unless it exists.
    pub async fn create_database(&self, name: &str) -> Result<()> {
        if !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            bail!("database name {name:?}: lower-case letters and _ only");
        }
        let exists = self
            .psql(&format!(
                "SELECT 1 FROM pg_database WHERE datname = '{name}'"
            ))
            .await?;
        if exists.is_empty() {
            self.psql(&format!("CREATE DATABASE {name}")).await?;
        }
        Ok(())
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        local(self.port)
    }

    /// The directory given to [`Postgres::start`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Runs `sql` with `psql` (unaligned, tuples only) and returns its output,
    /// trimmed. Handy in tests.
    pub async fn psql(&self, sql: &str) -> Result<String> {
        let out = tokio::process::Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url())
            .arg("-c")
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .await
            .context("running psql")?;
        if !out.status.success() {
            bail!(
                "psql -c {sql:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Deref for Postgres {
    type Target = Supervised;
    fn deref(&self) -> &Supervised {
        &self.process
    }
}

impl DerefMut for Postgres {
    fn deref_mut(&mut self) -> &mut Supervised {
        &mut self.process
    }
}

/// The postmaster's command line.
fn launch(bin: &Path, dir: &Path, data_dir: &Path, port: u16, run_as: Option<RunAs>) -> Launch {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "postgres".into());
    let mut launch = Launch::new(bin.join("postgres"), data_dir)
        .arg("-D")
        .arg(data_dir)
        .arg("-p")
        .arg(port.to_string())
        .arg("-c")
        .arg(format!("unix_socket_directories={}", data_dir.display()));
    for setting in [
        "listen_addresses=127.0.0.1",
        "max_connections=200",
        // Participants hold prepared transactions (two-phase commit).
        "max_prepared_transactions=200",
        "shared_buffers=128MB",
        "fsync=on",
        "synchronous_commit=on",
        "full_page_writes=on",
        "huge_pages=off",
        "logging_collector=off",
        "log_line_prefix=%m [%p] ",
    ] {
        launch = launch.arg("-c").arg(setting);
    }
    launch
        .arg("-c")
        .arg(format!("cluster_name={name}"))
        .run_as(run_as)
}

/// `pg_isready`: the server accepts connections.
fn ready(bin: &Path, port: u16) -> Ready {
    let pg_isready = bin.join("pg_isready");
    Ready::new("pg_isready", move || {
        let mut cmd = tokio::process::Command::new(&pg_isready);
        cmd.args(["-q", "-t", "1", "-h", "127.0.0.1", "-U", "postgres", "-d"])
            .arg(DATABASE)
            .arg("-p")
            .arg(port.to_string())
            .stdin(Stdio::null());
        async move {
            let status = cmd.status().await.context("running pg_isready")?;
            Ok(status.success())
        }
    })
}

/// The directory of the newest installed PostgreSQL's binaries:
/// `$WALLET_PG_BIN_DIR`, else the highest `/usr/lib/postgresql/*/bin`, else
/// the directory of `postgres` on `PATH`.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WALLET_PG_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let best = numbered_entries(Path::new("/usr/lib/postgresql"))
        .into_iter()
        .map(|(major, dir)| (major, dir.join("bin")))
        .filter(|(_, bin)| bin.join("postgres").exists())
        .max_by_key(|(major, _)| *major);
    if let Some((_, bin)) = best {
        return Ok(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find(|dir| dir.join("postgres").exists() && dir.join("initdb").exists())
        .ok_or_else(|| {
            anyhow!(
                "PostgreSQL not found (no /usr/lib/postgresql/*/bin, no postgres on PATH); \
                 run scripts/ensure-deps.sh or set WALLET_PG_BIN_DIR"
            )
        })
}

/// The data directory template (see the module docs), made on first use.
async fn template(bin: &Path, run_as: Option<RunAs>) -> Result<PathBuf> {
    static TEMPLATE: OnceCell<PathBuf> = OnceCell::const_new();
    TEMPLATE
        .get_or_try_init(|| make_template(bin, run_as))
        .await
        .cloned()
}

async fn make_template(bin: &Path, run_as: Option<RunAs>) -> Result<PathBuf> {
    let version = tokio::process::Command::new(bin.join("postgres"))
        .arg("--version")
        .output()
        .await
        .context("running postgres --version")?;
    let version = String::from_utf8_lossy(&version.stdout);
    let major = version
        .split_whitespace()
        .find_map(|w| w.split('.').next()?.parse::<u32>().ok())
        .ok_or_else(|| anyhow!("cannot read the Postgres version from {version:?}"))?;
    let owner = run_as.map_or_else(nix::unistd::Uid::effective, |r| r.uid);
    let key = format!("devcluster-pg{major}-template-v{TEMPLATE_VERSION}-uid{owner}");
    let home = std::env::temp_dir().join(&key);
    let data = home.join("data");
    let done = home.join("complete");
    if done.exists() {
        if data.join("PG_VERSION").exists() && data.join("global/pg_control").exists() {
            return Ok(data);
        }
        // Something (a temp cleaner) removed files from it: make it again.
        tracing::warn!(dir = %home.display(), "postgres template is damaged; rebuilding");
        std::fs::remove_dir_all(&home).with_context(|| format!("removing {}", home.display()))?;
    }
    let started = Instant::now();
    let staging = std::env::temp_dir().join(format!(
        "{key}.tmp-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    let made = build_template(bin, run_as, &staging).await;
    if let Err(e) = made {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    // Publish atomically; if another process won the race, use its copy.
    if std::fs::rename(&staging, &home).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
        if !done.exists() {
            bail!(
                "{} exists but is incomplete; remove it and try again",
                home.display()
            );
        }
    }
    tracing::info!(dir = %home.display(), elapsed = ?started.elapsed(), "postgres template ready");
    Ok(data)
}

async fn build_template(bin: &Path, run_as: Option<RunAs>, staging: &Path) -> Result<()> {
    std::fs::create_dir_all(staging).with_context(|| format!("creating {}", staging.display()))?;
    std::fs::set_permissions(staging, std::fs::Permissions::from_mode(0o755))?;
    if let Some(run_as) = &run_as {
        run_as.chown(staging)?;
    }
    let data = staging.join("data");
    let mut initdb = tokio::process::Command::new(bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
        .args(["--locale=C"])
        .current_dir(staging);
    if let Some(run_as) = &run_as {
        initdb.uid(run_as.uid.as_raw()).gid(run_as.gid.as_raw());
    }
    run(&mut initdb, "initdb").await?;

    // Single-user mode creates the database without a server or a port.
    let mut single = tokio::process::Command::new(bin.join("postgres"));
    single
        .args(["--single", "-D"])
        .arg(&data)
        .args(["-c", "fsync=off", "template1"])
        .current_dir(staging)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(run_as) = &run_as {
        single.uid(run_as.uid.as_raw()).gid(run_as.gid.as_raw());
    }
    let mut child = single.spawn().context("starting postgres --single")?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin
            .write_all(format!("CREATE DATABASE {DATABASE};\n").as_bytes())
            .await
            .context("writing to postgres --single")?;
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .context("postgres --single did not finish in 60 s")??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || text.contains("ERROR") {
        bail!(
            "creating database {DATABASE} failed ({}):\n{text}",
            out.status
        );
    }
    std::fs::write(staging.join("complete"), b"")?;
    Ok(())
}

/// Runs a short command, failing with its output if it fails.
async fn run(cmd: &mut tokio::process::Command, what: &str) -> Result<()> {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        cmd.stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .with_context(|| format!("{what} did not finish in 120 s"))?
    .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `path` made absolute (against the current directory), without resolving links.
pub(crate) fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// Fails with a clear message when another user (postgres) could not reach
/// `dir` because a parent directory is closed to others.
fn check_traversable(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            continue;
        };
        if meta.mode() & 0o001 == 0 {
            bail!(
                "{} is not traversable by the postgres user, who must reach {}: \
                 chmod o+x {} (or use another directory)",
                ancestor.display(),
                dir.display(),
                ancestor.display()
            );
        }
    }
    Ok(())
}
