//! Running `infrakit group run` as a real child process, and reading the instance files of
//! `instance-file` to see what it did.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Env;
use super::process::Process;

/// A `group run` process; killed when dropped.
pub struct GroupRun {
    process: Process,
}

impl GroupRun {
    pub fn start(env: &Env, spec: &Path) -> GroupRun {
        GroupRun::start_polling(env, spec, "100ms")
    }

    /// `group run` with this `--poll-interval`.
    pub fn start_polling(env: &Env, spec: &Path, poll: &str) -> GroupRun {
        let n = std::fs::read_dir(env.data_dir())
            .map(|d| d.count())
            .unwrap_or(0);
        let log = env.data_dir().join(format!("run-{n}.log"));
        let mut cmd = env.command();
        // The controller's debug line "pass finished" lets tests count passes.
        cmd.env("INFRAKIT_LOG", "info,infrakit::controller=debug")
            .args([
                "group",
                "run",
                spec.to_str().unwrap(),
                "--poll-interval",
                poll,
            ]);
        GroupRun {
            process: Process::spawn(cmd, log, "group run"),
        }
    }

    pub fn output(&self) -> String {
        self.process.output()
    }

    /// SIGKILL: no chance to clean up, as a crash.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.process.terminate()
    }

    /// Waits until the process has printed every one of `needles`.
    pub fn wait_for_output(&mut self, needles: &[&str], timeout: Duration) {
        let log = self.process.log.clone();
        let what = format!("output {needles:?}");
        self.wait_for(&what, timeout, || {
            let out = std::fs::read_to_string(&log).unwrap_or_default();
            needles.iter().all(|n| out.contains(n))
        });
    }

    /// How many passes over `group` have finished so far.
    pub fn passes(&self, group: &str) -> usize {
        count_passes(&self.output(), group)
    }

    /// Waits until `n` more passes over `group` have finished: a check made after it saw the
    /// controller look at the group `n` times, where a fixed sleep could have seen none.
    pub fn wait_passes(&mut self, group: &str, n: usize) {
        let target = self.passes(group) + n;
        let log = self.process.log.clone();
        self.wait_for(
            &format!("{n} more passes over {group}"),
            Duration::from_secs(60),
            || count_passes(&std::fs::read_to_string(&log).unwrap_or_default(), group) >= target,
        );
    }

    /// Waits until `cond` holds, failing with the log when it does not within `timeout`.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            self.process.assert_running(&format!("waiting for {what}"));
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}; log:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn count_passes(log: &str, group: &str) -> usize {
    let needle = format!("pass finished group={group} ");
    log.lines().filter(|l| l.contains(&needle)).count()
}

/// The instances `instance-file` holds in `env`, as stored (ID, Tags, LogicalID, ...).
/// Files that vanish or are half-read while listing are skipped.
pub fn instances(env: &Env) -> Vec<Value> {
    instances_in(&env.scratch("instance-file"))
}

/// The instances `instance-file` holds in `dir` (a directory granted to it), as in
/// [`instances`].
pub fn instances_in(dir: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Value> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect();
    out.sort_by_key(|v| v["ID"].as_str().unwrap_or("").to_string());
    out
}

pub fn tag(instance: &Value, key: &str) -> String {
    instance["Tags"][key].as_str().unwrap_or("").to_string()
}

/// Writes a spec for `instance-file` + `flavor-vanilla`.
pub fn write_spec(path: &Path, id: &str, allocation: Value, extra: Value) {
    let mut spec = serde_json::json!({
        "ID": id,
        "Properties": {
            "Allocation": allocation,
            "Instance": {"Plugin": "instance-file", "Properties": {"Prefix": id}},
            "Flavor": {"Plugin": "flavor-vanilla", "Properties": {"Init": ["echo {{group}}"], "UnhealthyTags": {"health": "bad"}}},
            "Health": {"CheckInterval": "100ms", "GracePeriod": "0s"}
        }
    });
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            spec["Properties"][k] = v;
        }
    }
    // Write then rename, so `group run` never reads half a spec.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&spec).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
