//! The `process` interface: local processes a plugin starts through the host, from the
//! executables its grant lists and nowhere else (WASI gives guests no way to spawn).
//!
//! A process is named by its pid and its start time, so a pid the kernel reuses for another
//! program is never taken for it. The host keeps a ledger of what each plugin started, outside
//! the plugin's reach, so a plugin can only query and signal its own processes, and so the
//! processes are re-adopted after a restart (they run in their own process group and outlive
//! the daemon).

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::bindings::instance_world::infrakit::plugin::process as wit;
use super::bindings::instance_world::infrakit::plugin::types::Error as WitError;
use super::sandbox::{SCRATCH_GUEST_PATH, State};
use crate::grants::{Grants, Mode};

/// The processes one plugin started, persisted as JSON next to (not inside) its scratch
/// directory.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    lock: Mutex<()>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    pid: u32,
    start_time: u64,
    program: String,
}

impl Ledger {
    /// The ledger kept at `path` (created on the first spawn).
    pub fn new(path: PathBuf) -> Self {
        Ledger {
            path,
            lock: Mutex::new(()),
        }
    }

    fn read(&self) -> Vec<Entry> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(ledger = %self.path.display(), error = %e, "process ledger unreadable; its processes are no longer the plugin's");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        }
    }

    fn write(&self, entries: &[Entry]) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(entries).map_err(io::Error::other)?)?;
        std::fs::rename(&tmp, &self.path)
    }

    fn owns(&self, id: &wit::ProcessId) -> bool {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.read()
            .iter()
            .any(|e| e.pid == id.pid && e.start_time == id.start_time)
    }

    /// The live processes recorded, dead ones dropped from the ledger.
    pub fn live(&self) -> usize {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.prune().len()
    }

    /// Drops entries whose process is gone; the caller holds the lock.
    fn prune(&self) -> Vec<Entry> {
        let entries = self.read();
        let live: Vec<Entry> = entries
            .iter()
            .filter(|e| is_alive(e.pid, e.start_time))
            .cloned()
            .collect();
        if live.len() != entries.len()
            && let Err(e) = self.write(&live)
        {
            tracing::warn!(ledger = %self.path.display(), error = %e, "cannot update the process ledger");
        }
        live
    }
}

/// Environment variables that make a granted program load or run code of the caller's choosing
/// (the dynamic loader's, glibc's own list for setuid programs, and common interpreters'
/// start-up hooks). With them, granting `/usr/bin/java` would grant everything.
const UNSAFE_ENV: &[&str] = &[
    "GCONV_PATH",
    "GETCONF_DIR",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "MALLOC_TRACE",
    "NIS_PATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "PS4",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "CLASSPATH",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONHOME",
    "PERL5LIB",
    "PERL5OPT",
    "RUBYOPT",
    "RUBYLIB",
    "NODE_OPTIONS",
];

fn unsafe_env(key: &str) -> bool {
    key.starts_with("LD_") || key.starts_with("BASH_FUNC_") || UNSAFE_ENV.contains(&key)
}

/// State (one letter, `Z` for a zombie) and start time of a process, from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself hold spaces and parentheses: the
    // fields proper start after the last `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 22 of the whole line is the start time; `state` was field 3.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Whether `pid` is still the process that started at `start_time` and has not exited.
pub fn is_alive(pid: u32, start_time: u64) -> bool {
    matches!(stat(pid), Some((state, start)) if start == start_time && !matches!(state, 'Z' | 'X' | 'x'))
}

/// Maps a guest path to the host, through the scratch directory and the granted directories,
/// and checks that what it resolves to (symlinks followed) is still inside that grant.
/// `must_exist`: the path itself must resolve; otherwise only its parent must (a file to create).
fn host_path(
    state: &State,
    guest: &str,
    writable: bool,
    must_exist: bool,
) -> Result<PathBuf, String> {
    let path = Path::new(guest);
    if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!(
            "{guest:?} is not an absolute guest path without `..`"
        ));
    }
    let mut mounts: Vec<(&str, &Path, bool)> = vec![(SCRATCH_GUEST_PATH, state.scratch(), true)];
    mounts.extend(state.grants().files.iter().map(|f| {
        (
            f.guest.as_str(),
            f.host.as_path(),
            f.mode == Mode::ReadWrite,
        )
    }));
    let (root, rest, rw) = mounts
        .iter()
        .filter_map(|(g, h, rw)| {
            path.strip_prefix(g)
                .ok()
                .map(|rest| (*h, rest, *rw, g.len()))
        })
        .max_by_key(|m| m.3)
        .map(|(h, rest, rw, _)| (h, rest, rw))
        .ok_or_else(|| {
            format!("{guest:?} is not inside the scratch directory or a granted directory")
        })?;
    if writable && !rw {
        return Err(format!("{guest:?} is in a read-only grant"));
    }
    let root = root
        .canonicalize()
        .map_err(|e| format!("{guest:?}: its grant {}: {e}", root.display()))?;
    let joined = root.join(rest);
    let resolved = if must_exist {
        joined.canonicalize()
    } else {
        let name = joined
            .file_name()
            .ok_or_else(|| format!("{guest:?} names no file"))?
            .to_owned();
        joined
            .parent()
            .unwrap_or(&root)
            .canonicalize()
            .map(|p| p.join(name))
    }
    .map_err(|e| format!("{guest:?}: {e}"))?;
    if !resolved.starts_with(&root) {
        return Err(format!("{guest:?} leads outside its grant (a symlink)"));
    }
    Ok(resolved)
}

/// Opens a granted output file for appending, refusing a symlink in its place.
fn output_file(state: &State, guest: &Option<String>) -> Result<std::process::Stdio, String> {
    let Some(guest) = guest else {
        return Ok(std::process::Stdio::null());
    };
    let path = host_path(state, guest, true, false)?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .map(Into::into)
        .map_err(|e| format!("{guest:?}: {e}"))
}

/// Whether `exe` (symlinks followed) lies where the plugin can write, so it could have been
/// replaced by the plugin itself.
fn writable_by_plugin(state: &State, exe: &Path) -> bool {
    let Ok(real) = exe.canonicalize() else {
        return false;
    };
    let scratch = std::iter::once(state.scratch());
    let rw = state
        .grants()
        .files
        .iter()
        .filter(|f| f.mode == Mode::ReadWrite)
        .map(|f| f.host.as_path());
    scratch
        .chain(rw)
        .filter_map(|d| d.canonicalize().ok())
        .any(|d| real.starts_with(d))
}

fn spawn(state: &State, cmd: wit::Command) -> Result<wit::ProcessId, WitError> {
    let grant = &state.grants().process;
    let denied = |why: String| {
        tracing::warn!(plugin = %state.plugin(), program = %cmd.program, "process denied: {why}");
        WitError::Invalid(format!("process: {why}"))
    };
    if !grant.grants(&cmd.program) {
        let granted: Vec<String> = grant
            .executables
            .iter()
            .map(|e| e.display().to_string())
            .collect();
        return Err(denied(format!(
            "{:?} is not a granted executable (granted: {}); the operator lists them in the \
             grant's [process] executables",
            cmd.program,
            if granted.is_empty() {
                "none".to_string()
            } else {
                granted.join(", ")
            }
        )));
    }
    let program = Path::new(&cmd.program);
    if writable_by_plugin(state, program) {
        return Err(denied(format!(
            "{} resolves into a directory the plugin can write",
            cmd.program
        )));
    }
    if let Some((k, _)) = cmd
        .env
        .iter()
        .find(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0'))
    {
        return Err(denied(format!("environment variable {k:?} is not valid")));
    }
    if let Some((k, _)) = cmd.env.iter().find(|(k, _)| unsafe_env(k)) {
        return Err(denied(format!(
            "environment variable {k} would let the caller choose code the program loads"
        )));
    }
    let dir = host_path(state, &cmd.dir, false, true).map_err(|e| denied(format!("dir {e}")))?;
    if !dir.is_dir() {
        return Err(denied(format!("dir {:?} is not a directory", cmd.dir)));
    }
    let stdout = output_file(state, &cmd.stdout).map_err(|e| denied(format!("stdout {e}")))?;
    let stderr = output_file(state, &cmd.stderr).map_err(|e| denied(format!("stderr {e}")))?;

    let ledger = state.ledger();
    let _guard = ledger.lock.lock().unwrap_or_else(|p| p.into_inner());
    let mut entries = ledger.prune();
    if entries.len() >= grant.max as usize {
        return Err(WitError::Transient(format!(
            "process: {} processes of this plugin are running, the most its grant allows \
             ([process] max)",
            entries.len()
        )));
    }
    let mut child = std::process::Command::new(program)
        .args(&cmd.args)
        .env_clear()
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // Its own process group: signals go to everything it starts, and a Ctrl-C or a stop
        // of the daemon's group does not reach it.
        .process_group(0)
        .spawn()
        .map_err(|e| WitError::Other(format!("process: cannot start {}: {e}", cmd.program)))?;
    let pid = child.id();
    // The child is unreaped until the thread below waits for it, so its pid cannot have been
    // reused yet.
    let start_time = match stat(pid) {
        Some((_, start)) => start,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(WitError::Other(format!(
                "process: started {} but cannot read /proc/{pid}/stat",
                cmd.program
            )));
        }
    };
    // Plugin threads run at a lower priority; what they start should not inherit it.
    let _ = rustix::process::setpriority_process(
        rustix::process::Pid::from_raw(pid as i32),
        rustix::process::getpriority_process(None).unwrap_or(0) - super::PLUGIN_NICENESS,
    );
    entries.push(Entry {
        pid,
        start_time,
        program: cmd.program.clone(),
    });
    if let Err(e) = ledger.write(&entries) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(WitError::Other(format!(
            "process: cannot record the process in the ledger: {e}"
        )));
    }
    // While the daemon lives it reaps its children, so an exited one does not linger as a
    // zombie; after a restart they are the init process's to reap.
    let _ = std::thread::Builder::new()
        .name("infrakit-reaper".into())
        .spawn(move || {
            let _ = child.wait();
        });
    tracing::info!(plugin = %state.plugin(), program = %cmd.program, pid, "process started");
    Ok(wit::ProcessId { pid, start_time })
}

impl wit::Host for State {
    fn spawn(&mut self, cmd: wit::Command) -> wasmtime::Result<Result<wit::ProcessId, WitError>> {
        Ok(spawn(self, cmd))
    }

    fn alive(&mut self, id: wit::ProcessId) -> wasmtime::Result<bool> {
        Ok(is_alive(id.pid, id.start_time) && self.ledger().owns(&id))
    }

    fn send_signal(
        &mut self,
        id: wit::ProcessId,
        sig: wit::Signal,
    ) -> wasmtime::Result<Result<bool, WitError>> {
        if !self.ledger().owns(&id) {
            return Ok(Err(WitError::NotFound(format!(
                "process: pid {} (started at {}) was not started by this plugin",
                id.pid, id.start_time
            ))));
        }
        if !is_alive(id.pid, id.start_time) {
            return Ok(Ok(false));
        }
        use rustix::process::Signal;
        let signal = match sig {
            wit::Signal::Term => Signal::TERM,
            wit::Signal::Kill => Signal::KILL,
            wit::Signal::Hup => Signal::HUP,
            wit::Signal::Int => Signal::INT,
        };
        // The process is alive and leads its group (the pid is the group id), so the group id
        // cannot have been reused.
        let pid = rustix::process::Pid::from_raw(id.pid as i32).expect("a live pid is not 0");
        let sent = rustix::process::kill_process_group(pid, signal)
            .or_else(|_| rustix::process::kill_process(pid, signal));
        tracing::info!(plugin = %self.plugin(), pid = id.pid, signal = ?sig, "process signalled");
        Ok(match sent {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::SRCH) => Ok(false),
            Err(e) => Err(WitError::Other(format!(
                "process: cannot signal pid {}: {e}",
                id.pid
            ))),
        })
    }
}

/// Grants as shown by `plugin inspect`: executables and the process limit.
pub fn describe(grants: &Grants) -> Vec<String> {
    if grants.process.executables.is_empty() {
        return Vec::new();
    }
    grants
        .process
        .executables
        .iter()
        .map(|e| format!("{} (at most {} at once)", e.display(), grants.process.max))
        .collect()
}
