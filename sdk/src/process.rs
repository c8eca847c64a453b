//! Local processes, started by the host on the plugin's behalf (instance plugins only).
//!
//! The operator grants executables by exact path in the plugin's grant file (`[process]
//! executables = [...]`); anything else is refused with [`Error::Invalid`]. Paths (`dir`,
//! `stdout`, `stderr`) are guest paths inside the scratch directory (`/data`) or a granted
//! directory. A process runs in its own process group, outlives a restart of the host, and is
//! named by a [`ProcessId`] (pid and start time) that a plugin keeps in its own state.
//!
//! ```no_run
//! use std::time::Duration;
//! use infrakit_sdk::process::{self, Command};
//!
//! # fn main() -> infrakit_sdk::Result<()> {
//! let id = Command::new("/bin/sh")
//!     .args(["-c", "exec sleep 600"])
//!     .env("PATH", "/usr/bin:/bin")
//!     .dir("/data")
//!     .stdout("/data/out.log")
//!     .spawn()?;
//! assert!(process::alive(id));
//! process::stop(id, Duration::from_secs(5))?;
//! # Ok(())
//! # }
//! ```
//!
//! Natively (in a plugin's unit tests) the same calls start real processes with
//! `std::process`, treating the paths as host paths.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One process for good: its pid and its start time (clock ticks since boot). A pid reused by
/// another program has another start time, so it never matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessId {
    /// The process id.
    pub pid: u32,
    /// When it started, in clock ticks since boot (field 22 of `/proc/PID/stat`).
    pub start_time: u64,
}

/// A signal to send with [`signal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `SIGTERM`: please stop.
    Term,
    /// `SIGKILL`: stop now.
    Kill,
    /// `SIGHUP`.
    Hup,
    /// `SIGINT`.
    Int,
}

/// What to start: a granted executable, its arguments, its whole environment (nothing is
/// inherited), a working directory and where its output goes.
///
/// ```
/// let cmd = infrakit_sdk::process::Command::new("/usr/bin/java")
///     .arg("-version")
///     .dir("/data")
///     .stderr("/data/java.log");
/// assert_eq!(cmd.program(), "/usr/bin/java");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: String,
    stdout: Option<String>,
    stderr: Option<String>,
}

impl Command {
    /// A command running `program` (an absolute path, as granted) in `/data`, output discarded.
    pub fn new(program: impl Into<String>) -> Self {
        Command {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            dir: "/data".to_string(),
            stdout: None,
            stderr: None,
        }
    }

    /// The program.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The working directory (a guest path).
    pub fn dir(mut self, dir: impl Into<String>) -> Self {
        self.dir = dir.into();
        self
    }

    /// Appends standard output to this file (a guest path in a writable directory).
    pub fn stdout(mut self, path: impl Into<String>) -> Self {
        self.stdout = Some(path.into());
        self
    }

    /// Appends standard error to this file (a guest path in a writable directory).
    pub fn stderr(mut self, path: impl Into<String>) -> Self {
        self.stderr = Some(path.into());
        self
    }

    /// Starts the process. Errors: [`Error::Invalid`] when the grant does not allow it (the
    /// message says why), [`Error::Transient`] at the grant's process limit.
    pub fn spawn(&self) -> Result<ProcessId> {
        imp::spawn(self)
    }
}

/// Whether the process still runs. False once it exited (even before it is reaped), when its
/// pid now belongs to another program, and for a process this plugin did not start.
pub fn alive(id: ProcessId) -> bool {
    imp::alive(id)
}

/// Sends `sig` to the process and its group. `Ok(false)` when it was no longer running.
pub fn signal(id: ProcessId, sig: Signal) -> Result<bool> {
    imp::signal(id, sig)
}

/// Stops a process the way service managers do: `SIGTERM`, up to `grace` for it to exit, then
/// `SIGKILL`. Returns once it is gone (or 5 s after the kill, as an error).
pub fn stop(id: ProcessId, grace: Duration) -> Result<()> {
    if !signal(id, Signal::Term)? {
        return Ok(());
    }
    if wait_gone(id, grace) {
        return Ok(());
    }
    signal(id, Signal::Kill)?;
    if wait_gone(id, Duration::from_secs(5)) {
        Ok(())
    } else {
        Err(Error::Transient(format!(
            "process {} is still running 5 s after SIGKILL",
            id.pid
        )))
    }
}

fn wait_gone(id: ProcessId, within: Duration) -> bool {
    let until = Instant::now() + within;
    loop {
        if !alive(id) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[cfg(all(target_arch = "wasm32", feature = "instance"))]
mod imp {
    use super::{Command, ProcessId, Signal};
    use crate::wit::instance::infrakit::plugin::process as wit;
    use crate::{Error, Result};

    fn from_wit(e: crate::wit::instance::infrakit::plugin::types::Error) -> Error {
        use crate::wit::instance::infrakit::plugin::types::Error as E;
        match e {
            E::Invalid(m) => Error::Invalid(m),
            E::NotFound(m) => Error::NotFound(m),
            E::Transient(m) => Error::Transient(m),
            E::Other(m) => Error::Other(m),
        }
    }

    fn id_to_wit(id: ProcessId) -> wit::ProcessId {
        wit::ProcessId {
            pid: id.pid,
            start_time: id.start_time,
        }
    }

    pub(super) fn spawn(cmd: &Command) -> Result<ProcessId> {
        let id = wit::spawn(&wit::Command {
            program: cmd.program.clone(),
            args: cmd.args.clone(),
            env: cmd.env.clone(),
            dir: cmd.dir.clone(),
            stdout: cmd.stdout.clone(),
            stderr: cmd.stderr.clone(),
        })
        .map_err(from_wit)?;
        Ok(ProcessId {
            pid: id.pid,
            start_time: id.start_time,
        })
    }

    pub(super) fn alive(id: ProcessId) -> bool {
        wit::alive(id_to_wit(id))
    }

    pub(super) fn signal(id: ProcessId, sig: Signal) -> Result<bool> {
        let sig = match sig {
            Signal::Term => wit::Signal::Term,
            Signal::Kill => wit::Signal::Kill,
            Signal::Hup => wit::Signal::Hup,
            Signal::Int => wit::Signal::Int,
        };
        wit::send_signal(id_to_wit(id), sig).map_err(from_wit)
    }
}

#[cfg(all(target_arch = "wasm32", not(feature = "instance")))]
mod imp {
    use super::{Command, ProcessId, Signal};
    use crate::{Error, Result};

    fn unavailable() -> Error {
        Error::Invalid("process: only instance plugins can start processes".into())
    }

    pub(super) fn spawn(_: &Command) -> Result<ProcessId> {
        Err(unavailable())
    }

    pub(super) fn alive(_: ProcessId) -> bool {
        false
    }

    pub(super) fn signal(_: ProcessId, _: Signal) -> Result<bool> {
        Err(unavailable())
    }
}

/// Natively, for plugins' unit tests: real processes through `std::process`, paths as given.
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::{Command, ProcessId, Signal};
    use crate::{Error, Result};

    fn output(path: &Option<String>) -> Result<std::process::Stdio> {
        match path {
            None => Ok(std::process::Stdio::null()),
            Some(p) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map(Into::into)
                .map_err(|e| Error::Other(format!("{p}: {e}"))),
        }
    }

    fn start_time(pid: u32) -> Option<(char, u64)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &text[text.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        Some((state, fields.nth(18)?.parse().ok()?))
    }

    pub(super) fn spawn(cmd: &Command) -> Result<ProcessId> {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new(&cmd.program)
            .args(&cmd.args)
            .env_clear()
            .envs(cmd.env.iter().cloned())
            .current_dir(&cmd.dir)
            .stdin(std::process::Stdio::null())
            .stdout(output(&cmd.stdout)?)
            .stderr(output(&cmd.stderr)?)
            .process_group(0)
            .spawn()
            .map_err(|e| Error::Other(format!("cannot start {}: {e}", cmd.program)))?;
        let pid = child.id();
        let (_, start_time) =
            start_time(pid).ok_or_else(|| Error::Other(format!("cannot read /proc/{pid}/stat")))?;
        std::thread::spawn(move || child.wait());
        Ok(ProcessId { pid, start_time })
    }

    pub(super) fn alive(id: ProcessId) -> bool {
        matches!(start_time(id.pid), Some((s, t)) if t == id.start_time && !matches!(s, 'Z' | 'X' | 'x'))
    }

    pub(super) fn signal(id: ProcessId, sig: Signal) -> Result<bool> {
        if !alive(id) {
            return Ok(false);
        }
        let name = match sig {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
            Signal::Hup => "HUP",
            Signal::Int => "INT",
        };
        let status = std::process::Command::new("kill")
            .args(["-s", name, "--", &format!("-{}", id.pid)])
            .status()
            .map_err(|e| Error::Other(format!("kill: {e}")))?;
        Ok(status.success())
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_started_seen_alive_and_stopped_with_term() {
        let id = Command::new("/bin/sh")
            .args(["-c", "exec sleep 30"])
            .dir("/")
            .spawn()
            .unwrap();
        assert!(alive(id));
        stop(id, Duration::from_secs(5)).unwrap();
        assert!(!alive(id));
        // A stale id (same pid, another start time) is never alive.
        assert!(!alive(ProcessId {
            pid: id.pid,
            start_time: id.start_time + 1
        }));
        assert!(!signal(id, Signal::Term).unwrap());
    }
}
