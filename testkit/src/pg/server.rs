//! The processes behind a [`Cluster`](super::Cluster): finding Debian's binaries, `initdb`,
//! the postmaster (started, waited for, stopped) and the watchdog that outlives the test process.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use super::Error;

/// Where Debian installs each major version's server binaries, one `<version>/bin` each.
pub(super) const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// How long a start may take before it is an error (a cold start takes well under a second).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fast shutdown may take before the postmaster is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of the server log quoted in an error.
const LOG_TAIL_LINES: usize = 30;

/// The watchdog, run by `sh` as `sh -c WATCHDOG sh DIR`: it blocks on its standard input
/// (with the `read` builtin, so killing `sh` leaves no child behind), a pipe whose only
/// writer is the process that started the cluster. When that process ends
/// (exits, panics, SIGKILL) the pipe closes, and the watchdog fast-shuts down whatever
/// postmaster runs in `DIR/data` (SIGINT, then SIGKILL after 10 s) and removes `DIR`. A
/// cluster dropped in order stops its server itself, then kills the watchdog. It ignores the
/// terminal's signals, so a Ctrl-C to the test's process group still leaves it to clean up.
const WATCHDOG: &str = r#"trap '' INT TERM HUP QUIT
while read -r _; do :; done
pidfile="$1/data/postmaster.pid"
if [ -f "$pidfile" ]; then
    pid=$(head -n 1 "$pidfile")
    kill -INT "$pid" 2>/dev/null
    i=0
    while [ -f "$pidfile" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    if [ -f "$pidfile" ]; then kill -KILL "$pid" 2>/dev/null; sleep 0.2; fi
fi
rm -rf "$1"
"#;

/// The user the server runs as: `None` for the current user, or the `postgres` account
/// when the current user is root (initdb and postgres refuse to run as root).
#[derive(Debug, Clone, Copy)]
pub(super) struct Owner {
    uid: u32,
    gid: u32,
}

/// The directory holding `initdb` and `postgres`: `$ERRSCOPE_PG_BIN` if set, else the highest
/// version under [`DEBIAN_ROOT`].
pub(super) fn find_bin_dir(env: Option<OsString>, debian_root: &Path) -> Result<PathBuf, Error> {
    if let Some(dir) = env.filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_server(&dir) {
            Ok(dir)
        } else {
            Err(Error::NotInstalled {
                searched: format!("{} (ERRSCOPE_PG_BIN)", dir.display()),
            })
        };
    }
    let mut best: Option<(Vec<u64>, PathBuf)> = None;
    for entry in fs::read_dir(debian_root).into_iter().flatten().flatten() {
        let Some(version) = entry.file_name().to_str().and_then(parse_version) else {
            continue;
        };
        let bin = entry.path().join("bin");
        if has_server(&bin) && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin).ok_or_else(|| Error::NotInstalled {
        searched: format!("{}/*/bin", debian_root.display()),
    })
}

/// `"15"` → `[15]`, `"9.6"` → `[9, 6]`: compared numerically, so 15 beats 9.6.
fn parse_version(name: &str) -> Option<Vec<u64>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

fn has_server(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("postgres").is_file()
}

/// Root runs the server as `postgres`; anyone else as themselves.
pub(super) fn owner() -> Result<Option<Owner>, Error> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32, Error> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .map_err(|source| Error::Io {
                what: "run `id postgres`".into(),
                source,
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text.trim().parse() {
            Ok(n) if out.status.success() => Ok(n),
            _ => Err(Error::NoServerUser {
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            }),
        }
    };
    Ok(Some(Owner {
        uid: id("-u")?,
        gid: id("-g")?,
    }))
}

/// A command run as the server's owner, in `cwd` (a directory that owner can read: the
/// caller's own may be root's), its standard input closed.
fn command(program: &Path, owner: Option<Owner>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd).stdin(Stdio::null());
    if let Some(owner) = owner {
        // std drops root's supplementary groups (setgroups(0)) before setuid.
        cmd.gid(owner.gid).uid(owner.uid);
    }
    cmd
}

/// Hands the cluster's directory to the server's owner.
pub(super) fn chown(dir: &Path, owner: Option<Owner>) -> Result<(), Error> {
    let Some(owner) = owner else { return Ok(()) };
    std::os::unix::fs::chown(dir, Some(owner.uid), Some(owner.gid)).map_err(|source| Error::Io {
        what: format!("chown {} to postgres", dir.display()),
        source,
    })
}

/// The flags every cluster is made with (see [`initdb`]); part of the template's key.
const INITDB_ARGS: [&str; 8] = [
    "-A",
    "trust",
    "-U",
    "postgres",
    "-E",
    "UTF8",
    "--locale=C.UTF-8",
    "--no-sync",
];

/// Fills `layout.data` with a new cluster: a copy of the template these binaries and this
/// owner made before (`$TMPDIR/errscope-pg-template-<hash>`, a few hundred ms instead of
/// initdb's seconds), else `initdb`, whose result then becomes the template. Returns whether
/// it came from the template.
pub(super) fn init_data(layout: &Layout) -> Result<bool, Error> {
    let template = template_path(layout);
    if let Some(template) = template
        .as_deref()
        .filter(|t| usable_template(t, layout.owner))
    {
        let copied = command(Path::new("cp"), layout.owner, &layout.dir)
            .arg("-a")
            .arg(template)
            .arg(&layout.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if copied.is_ok_and(|s| s.success()) {
            return Ok(true);
        }
        let _ = fs::remove_dir_all(&layout.data);
    }
    initdb(&layout.bin, layout.owner, &layout.dir, &layout.data)?;
    if let Some(template) = template {
        save_template(layout, &template);
    }
    Ok(false)
}

/// Forgets a template that did not start, so the next cluster runs initdb again.
pub(super) fn discard_template(layout: &Layout) {
    if let Some(template) = template_path(layout) {
        let _ = fs::remove_dir_all(template);
    }
}

/// The template's place, keyed by the binaries (path, size, modification time: a package
/// upgrade makes a new one), the owner and the initdb flags.
fn template_path(layout: &Layout) -> Option<PathBuf> {
    let mut hasher = std::hash::DefaultHasher::new();
    for program in ["initdb", "postgres"] {
        let path = layout.bin.join(program);
        let meta = fs::metadata(&path).ok()?;
        (path, meta.len(), meta.modified().ok()).hash(&mut hasher);
    }
    (owner_uid(layout.owner), INITDB_ARGS).hash(&mut hasher);
    Some(parent_dir().join(format!("errscope-pg-template-{:016x}", hasher.finish())))
}

/// Where clusters and the template go: `$ERRSCOPE_PG_TMPDIR`; else `/dev/shm` when it is
/// a tmpfs with [`SHM_MIN_FREE`] to spare (creating a file took up to 1.5 ms on this
/// machine's busy disk, and a cluster is a thousand files: a start takes 0.3 s there, 0.4 to
/// 1.6 s on that disk); else the system's temp dir.
pub(super) fn parent_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(super::TMPDIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    let roomy = rustix::fs::statvfs(shm)
        .is_ok_and(|s| s.f_bavail.saturating_mul(s.f_frsize) >= SHM_MIN_FREE);
    let writable = rustix::fs::access(
        shm,
        rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
    )
    .is_ok();
    if roomy && writable {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// What `/dev/shm` must have free to be used: room for a few hundred test databases.
const SHM_MIN_FREE: u64 = 4 << 30;

/// The file in a cluster's directory naming the process it belongs to: `PID STARTTIME`.
const OWNER_FILE: &str = "owner";

/// Marks `dir` as this process's, for [`sweep`].
pub(super) fn write_owner(dir: &Path) -> Result<(), Error> {
    let me = std::process::id();
    let start = process_start(me).unwrap_or(0);
    fs::write(dir.join(OWNER_FILE), format!("{me} {start}\n")).map_err(|source| Error::Io {
        what: format!("write {}", dir.join(OWNER_FILE).display()),
        source,
    })
}

/// Removes what clusters of processes now gone left in `parent` when their watchdog could
/// not clean up either (both killed at once): their directories, any postmaster still
/// running in them (found through `postmaster.pid` and confirmed by its working directory),
/// and half-saved templates.
pub(super) fn sweep(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        if let Some(rest) = name.strip_prefix("errscope-pg-template-") {
            // `<key>.<pid>.partial`: a template being saved by <pid>.
            let pid = rest
                .strip_suffix(".partial")
                .and_then(|r| r.rsplit('.').next());
            if let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok())
                && process_start(pid).is_none()
            {
                let _ = fs::remove_dir_all(&path);
            }
            continue;
        }
        if !name.starts_with("errscope-pg-") {
            continue;
        }
        let Ok(owner) = fs::read_to_string(path.join(OWNER_FILE)) else {
            continue;
        };
        let mut fields = owner.split_whitespace().map(|f| f.parse::<u64>().ok());
        let (Some(Some(pid)), Some(Some(start))) = (fields.next(), fields.next()) else {
            continue;
        };
        let alive = u32::try_from(pid)
            .ok()
            .and_then(process_start)
            .is_some_and(|s| s == start);
        if alive {
            continue;
        }
        let data = path.join("data");
        if let Ok(pid_file) = fs::read_to_string(data.join("postmaster.pid"))
            && let Some(pid) = pid_file
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<i32>().ok())
            && fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == data)
            && let Some(pid) = Pid::from_raw(pid)
        {
            // Fast shutdown first, so the server releases its System V segment itself.
            let _ = kill_process(pid, Signal::INT);
            let deadline = Instant::now() + Duration::from_secs(5);
            while data.join("postmaster.pid").exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if data.join("postmaster.pid").exists() {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
        let _ = fs::remove_dir_all(&path);
    }
}

/// A process's start time (clock ticks after boot, `/proc/PID/stat` field 22), `None` when
/// there is no such process or it is a zombie.
fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// The major version a data directory was made by (`PG_VERSION`: `15`; `9.6` is 9), 0 if
/// unreadable.
pub(super) fn major_version(data: &Path) -> u32 {
    let text = fs::read_to_string(data.join("PG_VERSION")).unwrap_or_default();
    text.trim()
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// A template is used only if it is a whole data directory that the server's own user made
/// (another user's directory under /tmp is never trusted) and nobody else can write.
fn usable_template(template: &Path, owner: Option<Owner>) -> bool {
    let Ok(meta) = fs::symlink_metadata(template) else {
        return false;
    };
    meta.is_dir()
        && meta.uid() == owner_uid(owner)
        && meta.mode() & 0o077 == 0
        && template.join("PG_VERSION").is_file()
        && template.join("global/pg_control").is_file()
}

/// Copies a fresh (never started) data directory to `template`, atomically: a copy beside
/// it, then a rename, which fails harmlessly when another process got there first.
fn save_template(layout: &Layout, template: &Path) {
    let mut partial = template.as_os_str().to_owned();
    partial.push(format!(".{}.partial", std::process::id()));
    let partial = PathBuf::from(partial);
    let _ = fs::remove_dir_all(&partial);
    let copied = command(Path::new("cp"), layout.owner, &layout.dir)
        .arg("-a")
        .arg(&layout.data)
        .arg(&partial)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !copied.is_ok_and(|s| s.success()) || fs::rename(&partial, template).is_err() {
        let _ = fs::remove_dir_all(&partial);
    }
}

fn owner_uid(owner: Option<Owner>) -> u32 {
    match owner {
        Some(owner) => owner.uid,
        None => rustix::process::geteuid().as_raw(),
    }
}

/// `initdb`: trust authentication, superuser `postgres`, UTF-8 under the C.UTF-8 locale
/// (English messages, Unicode case mapping, no dependence on installed locales), no fsync.
fn initdb(bin: &Path, owner: Option<Owner>, dir: &Path, data: &Path) -> Result<(), Error> {
    let program = bin.join("initdb");
    let out = command(&program, owner, dir)
        .arg("-D")
        .arg(data)
        .args(INITDB_ARGS)
        .output()
        .map_err(|source| Error::Io {
            what: format!("run {}", program.display()),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Err(Error::Initdb {
        status: out.status,
        output: output.trim().to_owned(),
    })
}

/// A port that was free a moment ago (bound with port 0 and released).
pub(super) fn free_port() -> Result<u16, Error> {
    let io = |source| Error::Io {
        what: "pick a free port on 127.0.0.1".into(),
        source,
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io)?;
    Ok(listener.local_addr().map_err(io)?.port())
}

/// The watchdog (see [`WATCHDOG`]); its standard input is the pipe to keep open.
pub(super) fn spawn_watchdog(dir: &Path) -> Result<(Child, ChildStdin), Error> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("sh")
        .arg(dir)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Io {
            what: "start the watchdog (sh)".into(),
            source,
        })?;
    let pipe = child.stdin.take().expect("stdin was piped");
    Ok((child, pipe))
}

/// Why a postmaster did not come up.
pub(super) enum StartFailure {
    /// Another process took the port between [`free_port`] and the bind: try another.
    PortInUse,
    Failed(Error),
}

impl From<Error> for StartFailure {
    fn from(error: Error) -> Self {
        StartFailure::Failed(error)
    }
}

/// Everything needed to start the postmaster again on the same port and data directory.
#[derive(Debug)]
pub(super) struct Layout {
    pub(super) bin: PathBuf,
    pub(super) owner: Option<Owner>,
    /// The cluster's temporary directory: holds `data/`, the Unix socket and the log.
    pub(super) dir: PathBuf,
    pub(super) data: PathBuf,
    pub(super) log: PathBuf,
}

impl Layout {
    /// Starts a postmaster on `port` and waits until it accepts connections (`ready`
    /// checks that with a real one).
    pub(super) fn start(&self, port: u16, ready: &dyn Fn() -> bool) -> Result<Child, StartFailure> {
        let io = |what: String| move |source| Error::Io { what, source };
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io(format!("open {}", self.log.display())))?;
        let log_start = log
            .seek(SeekFrom::End(0))
            .map_err(io(format!("seek {}", self.log.display())))?;
        let stderr = log
            .try_clone()
            .map_err(io(format!("dup {}", self.log.display())))?;
        let program = self.bin.join("postgres");
        let mut child = command(&program, self.owner, &self.dir)
            .arg("-D")
            .arg(&self.data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(["-c", "max_connections=200"])
            // Dynamic shared memory as files in data/pg_dynshmem rather than /dev/shm: what a
            // killed server leaves goes with its directory.
            .args(["-c", "dynamic_shared_memory_type=mmap"])
            .stdout(log)
            .stderr(stderr)
            // Not in the test's process group: a Ctrl-C reaches the test, which stops it.
            .process_group(0)
            .spawn()
            .map_err(io(format!("run {}", program.display())))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let tail = log_tail(&self.log, log_start);
                    if tail.contains("Address already in use") {
                        return Err(StartFailure::PortInUse);
                    }
                    return Err(self
                        .start_error(port, format!("postgres exited ({status})"), log_start)
                        .into());
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(Error::Io {
                        what: "wait for postgres".into(),
                        source,
                    }
                    .into());
                }
            }
            if self.pid_file_status().as_deref() == Some("ready") && ready() {
                return Ok(child);
            }
            if Instant::now() >= deadline {
                let _ = stop(&mut child);
                let reason = format!("no connection within {} s", START_TIMEOUT.as_secs());
                return Err(self.start_error(port, reason, log_start).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start_error(&self, port: u16, reason: String, log_start: u64) -> Error {
        Error::Start {
            port,
            reason,
            log_path: self.log.clone(),
            log: log_tail(&self.log, log_start),
        }
    }

    /// The postmaster's own account of itself: the status line of `postmaster.pid`
    /// (`starting`, `ready`, `stopping`).
    fn pid_file_status(&self) -> Option<String> {
        let text = fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().nth(7).map(|s| s.trim().to_owned())
    }
}

/// Fast shutdown (SIGINT: disconnect clients, checkpoint, exit), bounded, then SIGKILL.
pub(super) fn stop(child: &mut Child) -> Result<ExitStatus, Error> {
    let io = |source| Error::Io {
        what: "stop postgres".into(),
        source,
    };
    if let Some(status) = child.try_wait().map_err(io)? {
        return Ok(status);
    }
    let _ = kill_process(Pid::from_child(child), Signal::INT);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().map_err(io)? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    child.wait().map_err(io)
}

/// The last lines the server logged since `from`.
fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.seek(SeekFrom::Start(from));
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_install(root: &Path, version: &str) -> PathBuf {
        let bin = root.join(version).join("bin");
        fs::create_dir_all(&bin).unwrap();
        fs::write(bin.join("initdb"), "").unwrap();
        fs::write(bin.join("postgres"), "").unwrap();
        bin
    }

    #[test]
    fn the_highest_version_wins_numerically() {
        let root = tempfile::tempdir().unwrap();
        fake_install(root.path(), "9.6");
        let v15 = fake_install(root.path(), "15");
        fake_install(root.path(), "13");
        // A version without a server (client only) is passed over.
        fs::create_dir_all(root.path().join("17/bin")).unwrap();
        fs::create_dir_all(root.path().join("notaversion/bin")).unwrap();
        assert_eq!(find_bin_dir(None, root.path()).unwrap(), v15);
    }

    #[test]
    fn the_environment_names_the_directory() {
        let root = tempfile::tempdir().unwrap();
        fake_install(root.path(), "15");
        let other = fake_install(root.path(), "11");
        assert_eq!(
            find_bin_dir(Some(other.clone().into()), root.path()).unwrap(),
            other
        );
        let empty = tempfile::tempdir().unwrap();
        let err = find_bin_dir(Some(empty.path().into()), root.path()).unwrap_err();
        assert!(matches!(err, Error::NotInstalled { .. }), "{err}");
        assert!(err.to_string().contains("ERRSCOPE_PG_BIN"), "{err}");
    }

    #[test]
    fn nothing_installed_says_what_to_install() {
        let root = tempfile::tempdir().unwrap();
        let err = find_bin_dir(None, &root.path().join("missing")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`apt-get install postgresql`"), "{text}");
        assert!(text.contains("scripts/setup"), "{text}");
    }
}
