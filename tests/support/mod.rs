//! Helpers shared by the integration tests: a temp dir per test, running the real binary,
//! paths of the compiled guest fixtures.

#![allow(dead_code)]

pub mod daemon;
pub mod docker;
pub mod etcd;
pub mod group;
pub mod http;
pub mod manager;
pub mod moto;
pub mod process;
pub mod scaffold;
pub mod tools;
pub mod zookeeper;

pub use tools::external_tool;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Held by the tests that load the machine hardest (three JVMs) or need its timing most (an
/// etcd quorum lost and regained under a 2 s lease), so the two never run side by side on 2 cores.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits until `cond` holds, checking every 250 ms (checks that run a CLI such as `docker`
/// share the two cores with the daemon under test), failing with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// The compiled guests (plugins and fixtures), built by the build script.
pub fn guest(name: &str) -> PathBuf {
    let path =
        Path::new(env!("INFRAKIT_GUEST_DIR")).join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.exists(),
        "guest {name} was not built: {}",
        path.display()
    );
    path
}

/// Makes a FIFO at `path`: opening it for reading blocks in the kernel until a writer comes,
/// as a hung network filesystem would.
pub fn make_fifo(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {} failed", path.display());
}

/// Lets every reader blocked on the FIFO at `path` go: a writer opens it (without blocking if
/// none is there; O_NONBLOCK on Linux) and closes it at once, so the readers see end-of-file.
pub fn release_fifo(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(0o4000)
        .open(path);
}

/// One compiled-artifact cache for every test process: compiling a component in a debug host
/// takes seconds, loading it from the cache well under one.
pub fn shared_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("infrakit-test-cache")
}

/// How many compiled artifacts (`*.cwasm`) a cache directory holds.
pub fn compiled_artifacts(cache: &Path) -> usize {
    std::fs::read_dir(cache)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        })
        .count()
}

/// A private data directory and a way to run the binary against it.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// Extra environment variables for every command run (the rest is cleared).
    vars: std::cell::RefCell<Vec<(String, String)>>,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::Builder::new()
                .prefix("infrakit-test-")
                .tempdir()
                .expect("temp dir"),
            vars: Default::default(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn plugins_dir(&self) -> PathBuf {
        let p = self.dir.path().join("plugins");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// The host directory behind a plugin's `/data`.
    pub fn scratch(&self, plugin: &str) -> PathBuf {
        self.dir.path().join("scratch").join(plugin)
    }

    /// `infrakit plugin install WASM --grants GRANTS`, checked to have placed `name` as a
    /// `kind` plugin.
    pub fn install_built(&self, wasm: &Path, grants: &Path, name: &str, kind: &str) {
        let installed = self.ok(
            &[
                "plugin",
                "install",
                wasm.to_str().unwrap(),
                "--grants",
                grants.to_str().unwrap(),
            ],
            None,
        );
        assert!(
            installed.contains(&format!("installed {name} ({kind} plugin")),
            "{installed}"
        );
    }

    /// Drops the compiled guest `name` into the plugin directory as `NAME.wasm`, with `grants`
    /// as its `NAME.toml` when given.
    pub fn install_plugin(&self, name: &str, grants: Option<&str>) {
        let dir = self.plugins_dir();
        std::fs::copy(guest(name), dir.join(format!("{name}.wasm"))).unwrap();
        if let Some(g) = grants {
            std::fs::write(dir.join(format!("{name}.toml")), g).unwrap();
        }
    }

    /// The first row named `name` in `plugin ls -o json` (run with `args` before `plugin`).
    pub fn plugin_row(&self, args: &[&str], name: &str) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["plugin", "ls", "-o", "json"]);
        let rows = self.run(&all, None).json();
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no plugin {name} in {rows}"))
            .clone()
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_infrakit"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("INFRAKIT_DATA_DIR", self.data_dir())
            .env("INFRAKIT_CACHE_DIR", shared_cache_dir())
            .env("INFRAKIT_LOG", "warn");
        cmd.envs(self.vars.borrow().iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Sets an environment variable for every command run from now on.
    pub fn set_var(&self, key: &str, value: &str) {
        self.vars.borrow_mut().push((key.into(), value.into()));
    }

    /// Runs the binary with `args`, feeding `stdin`.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut cmd = self.command();
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn infrakit");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let output = child.wait_with_output().expect("wait for infrakit");
        Run {
            args: args.iter().map(|s| s.to_string()).collect(),
            output,
        }
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let run = self.run(args, stdin);
        run.assert_success();
        run.stdout()
    }
}

pub struct Run {
    pub args: Vec<String>,
    pub output: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    pub fn assert_success(&self) {
        assert!(
            self.output.status.success(),
            "infrakit {:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.output.status,
            self.stdout(),
            self.stderr()
        );
    }

    pub fn assert_failure(&self) -> String {
        assert!(
            !self.output.status.success(),
            "infrakit {:?} should have failed\nstdout:\n{}",
            self.args,
            self.stdout()
        );
        self.stderr()
    }

    pub fn json(&self) -> serde_json::Value {
        self.assert_success();
        serde_json::from_str(&self.stdout())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout()))
    }
}
