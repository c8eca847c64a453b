//! A child process of a test (the daemon, `group run`): its combined output goes to a log file,
//! it can be crashed (SIGKILL) or stopped (SIGTERM), and it is killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct Process {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Process {
    /// Spawns `cmd` with stdout and stderr into `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf, what: &str) -> Process {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Process {
            child: Some(child),
            log,
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self, while_: &str) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!(
                "process exited ({status}) while {while_}:\n{}",
                self.output()
            );
        }
    }

    /// SIGKILL: no chance to clean up, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        c.wait().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
