//! instance-process and the host's process capability on their own (issue 14): the exec grant
//! is enforced exactly, a dead process is a lost instance, a pid reused by another program is
//! never taken for an instance, and a restarted daemon re-adopts running processes.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::daemon::Daemon;
use crate::support::{Env, wait_until};

/// A grant config for instance-process with `body` under `[plugins.instance-process]`.
fn config(env: &Env, body: &str) -> String {
    let n = std::fs::read_dir(env.data_dir()).unwrap().count();
    let path = env.data_dir().join(format!("config-{n}.toml"));
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

fn provision(env: &Env, config: &str, properties: Value) -> Result<String, String> {
    let spec = json!({"Properties": properties, "Tags": {"group": "t"}, "Init": "exec sleep 300"});
    let run = env.run(
        &[
            "--config",
            config,
            "instance",
            "provision",
            "--plugin",
            "instance-process",
        ],
        Some(&spec.to_string()),
    );
    if run.output.status.success() {
        Ok(run.stdout().trim().to_string())
    } else {
        Err(run.stderr())
    }
}

fn describe(env: &Env, config: &str) -> Vec<String> {
    let out = env.ok(
        &[
            "--config",
            config,
            "instance",
            "describe",
            "--plugin",
            "instance-process",
            "-o",
            "json",
        ],
        None,
    );
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {out}"))
        .iter()
        .map(|d| d["ID"].as_str().unwrap().to_string())
        .collect()
}

fn destroy(env: &Env, config: &str, id: &str) -> crate::support::Run {
    env.run(
        &[
            "--config",
            config,
            "instance",
            "destroy",
            "--plugin",
            "instance-process",
            id,
        ],
        None,
    )
}

fn record_path(env: &Env, id: &str) -> std::path::PathBuf {
    env.scratch("instance-process")
        .join("instances")
        .join(id)
        .join("instance.json")
}

fn record(env: &Env, id: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(record_path(env, id)).unwrap()).unwrap()
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s[s.rfind(')').unwrap() + 1..].trim_start().starts_with('Z'))
}

fn kill9(pid: u64) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
}

/// Kills every process that was started for the instances of this data directory.
struct Cleanup<'a>(&'a Env);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let dir = self.0.scratch("instance-process").join("instances");
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            for name in ["instance.json", "exited.json"] {
                if let Ok(text) = std::fs::read_to_string(entry.path().join(name))
                    && let Ok(r) = serde_json::from_str::<Value>(&text)
                    && let Some(pid) = r["Process"]["pid"].as_u64()
                {
                    kill9(pid);
                }
            }
        }
    }
}

#[test]
fn only_the_granted_executables_run_exactly_as_granted() {
    let env = Env::new();
    let _cleanup = Cleanup(&env);
    let tmp = env.data_dir().join("bin");
    std::fs::create_dir_all(&tmp).unwrap();
    // A symlink to a granted binary is another name, not granted.
    let link = tmp.join("sh-link");
    std::os::unix::fs::symlink("/bin/sh", &link).unwrap();
    // A granted name that leads into the plugin's own scratch directory, which it can rewrite.
    let scratch = env.scratch("instance-process");
    std::fs::create_dir_all(&scratch).unwrap();
    let planted = scratch.join("planted");
    std::fs::write(&planted, "#!/bin/sh\necho planted\n").unwrap();
    let tool = tmp.join("tool");
    std::os::unix::fs::symlink(&planted, &tool).unwrap();
    let cfg = config(
        &env,
        &format!(
            "[plugins.instance-process.process]\nexecutables = [\"/bin/sh\", \"{}\"]\n",
            tool.display()
        ),
    );

    for (cmd, why) in [
        (
            json!(["/bin/bash", "-c", "true"]),
            "not a granted executable",
        ),
        (
            json!(["/bin/../bin/sh", "-c", "true"]),
            "not a granted executable",
        ),
        (
            json!(["/bin//sh", "-c", "true"]),
            "not a granted executable",
        ),
        (
            json!([link.display().to_string(), "-c", "true"]),
            "not a granted executable",
        ),
        (json!([tool.display().to_string()]), "can write"),
    ] {
        let err = provision(&env, &cfg, json!({"Cmd": cmd})).unwrap_err();
        assert!(err.contains(why), "{cmd}: {err}");
        assert!(err.contains("invalid"), "{cmd}: {err}");
    }
    for var in ["LD_PRELOAD", "JAVA_TOOL_OPTIONS", "BASH_ENV"] {
        let err = provision(&env, &cfg, json!({"Env": {var: "/data/evil"}})).unwrap_err();
        assert!(err.contains(var) && err.contains("loads"), "{var}: {err}");
    }
    for (dir, why) in [
        (
            "/etc",
            "not inside the scratch directory or a granted directory",
        ),
        ("/data/../../..", "without `..`"),
        ("/data/missing", "No such file"),
    ] {
        let err = provision(&env, &cfg, json!({"Dir": dir})).unwrap_err();
        assert!(err.contains(why), "{dir}: {err}");
    }
    // A working directory that is a symlink out of the scratch directory.
    std::os::unix::fs::symlink("/etc", scratch.join("out")).unwrap();
    let err = provision(&env, &cfg, json!({"Dir": "/data/out"})).unwrap_err();
    assert!(err.contains("leads outside its grant"), "{err}");
    assert!(describe(&env, &cfg).is_empty(), "nothing ran");

    // Without a [process] grant nothing can be started at all.
    let none = config(&env, "");
    let err = provision(&env, &none, json!({})).unwrap_err();
    assert!(err.contains("granted: none"), "{err}");

    // An executable inside a read-write grant is refused when the grant is read.
    let rw = env.data_dir().join("rw");
    std::fs::create_dir_all(&rw).unwrap();
    let bad = config(
        &env,
        &format!(
            "[[plugins.instance-process.files]]\nhost = \"{rw}\"\nguest = \"/rw\"\nmode = \"read-write\"\n\
             [plugins.instance-process.process]\nexecutables = [\"{rw}/tool\"]\n",
            rw = rw.display()
        ),
    );
    let err = provision(&env, &bad, json!({})).unwrap_err();
    assert!(
        err.contains("process.executables[0]") && err.contains("read-write grant"),
        "{err}"
    );

    // The granted shell runs, with the instance's identity in its environment.
    let id = provision(
        &env,
        &cfg,
        json!({"Cmd": ["/bin/sh", "-c", "echo $INFRAKIT_INSTANCE_ID; exec sleep 300"]}),
    )
    .unwrap();
    let out = scratch.join("instances").join(&id).join("stdout.log");
    wait_until("the process's output", Duration::from_secs(10), || {
        std::fs::read_to_string(&out).is_ok_and(|o| o.trim() == id)
    });
    let inspect = env.ok(
        &["--config", &cfg, "plugin", "inspect", "instance-process"],
        None,
    );
    assert!(inspect.contains("processes running: 1"), "{inspect}");
}

#[test]
fn a_dead_process_is_lost_and_a_reused_pid_is_not_an_instance() {
    let env = Env::new();
    let _cleanup = Cleanup(&env);
    let cfg = config(
        &env,
        "[plugins.instance-process.process]\nexecutables = [\"/bin/sh\"]\nmax = 2\n",
    );
    let a = provision(&env, &cfg, json!({"StopTimeout": 2})).unwrap();
    let b = provision(&env, &cfg, json!({"StopTimeout": 2})).unwrap();
    assert_eq!(describe(&env, &cfg).len(), 2);
    // The grant's count holds.
    let err = provision(&env, &cfg, json!({})).unwrap_err();
    assert!(err.contains("max"), "{err}");

    // kill -9: the instance is lost (and its record kept beside its logs).
    let pid_a = record(&env, &a)["Process"]["pid"].as_u64().unwrap();
    kill9(pid_a);
    wait_until("a lost", Duration::from_secs(10), || {
        describe(&env, &cfg) == vec![b.clone()]
    });
    assert!(record_path(&env, &a).with_file_name("exited.json").exists());

    // Another program now holds the pid of b's record (as a reused pid would): b is not alive,
    // whether the record keeps b's start time or is rewritten with the stranger's, and
    // destroying b does not signal the stranger.
    let mut stranger = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let spid = stranger.id() as u64;
    let stat = std::fs::read_to_string(format!("/proc/{spid}/stat")).unwrap();
    let stranger_start: u64 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let real_b = record(&env, &b);
    let pid_b = real_b["Process"]["pid"].as_u64().unwrap();
    for start in [
        real_b["Process"]["start_time"].clone(),
        json!(stranger_start),
    ] {
        let mut forged = real_b.clone();
        forged["Process"] = json!({"pid": spid, "start_time": start});
        std::fs::write(record_path(&env, &b), forged.to_string()).unwrap();
        assert!(describe(&env, &cfg).is_empty(), "pid {spid} taken for b");
        std::fs::rename(
            record_path(&env, &b).with_file_name("exited.json"),
            record_path(&env, &b),
        )
        .unwrap();
    }
    let run = destroy(&env, &cfg, &b);
    assert!(
        !run.output.status.success(),
        "a stranger's process was 'destroyed'"
    );
    assert!(alive(spid), "the stranger was signalled");
    assert!(alive(pid_b), "b itself still runs (its record was forged)");
    let _ = stranger.kill();
    let _ = stranger.wait();

    // With its true record, b is destroyed: TERM, and it is gone.
    std::fs::write(record_path(&env, &b), real_b.to_string()).unwrap();
    assert_eq!(describe(&env, &cfg), vec![b.clone()]);
    destroy(&env, &cfg, &b).assert_success();
    assert!(!alive(pid_b));
    assert!(describe(&env, &cfg).is_empty());
}

#[test]
fn a_restarted_daemon_re_adopts_running_processes() {
    let env = Env::new();
    let _cleanup = Cleanup(&env);
    let cfg = config(
        &env,
        "[plugins.instance-process.process]\nexecutables = [\"/bin/sh\"]\n",
    );
    let spec = env.data_dir().join("sleepers.json");
    std::fs::write(
        &spec,
        json!({"ID": "sleepers", "Properties": {
            "Allocation": {"Size": 2},
            "Instance": {"Plugin": "instance-process", "Properties": {"StopTimeout": 1}},
            "Flavor": {"Plugin": "flavor-vanilla", "Properties": {"Init": ["exec sleep 300"]}},
        }})
        .to_string(),
    )
    .unwrap();
    let mut daemon = Daemon::start(&env, &["--config", &cfg]);
    env.ok(
        &["--config", &cfg, "group", "commit", spec.to_str().unwrap()],
        None,
    );
    wait_until("2 processes", Duration::from_secs(30), || {
        describe(&env, &cfg).len() == 2
    });
    let ids = describe(&env, &cfg);
    let pids: Vec<u64> = ids
        .iter()
        .map(|id| record(&env, id)["Process"]["pid"].as_u64().unwrap())
        .collect();

    daemon.kill();
    assert!(
        pids.iter().all(|p| alive(*p)),
        "processes died with the daemon"
    );
    let _daemon = Daemon::start(&env, &["--config", &cfg]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(describe(&env, &cfg), ids, "the restart replaced processes");
    assert!(pids.iter().all(|p| alive(*p)));

    env.ok(
        &["--config", &cfg, "group", "destroy", "sleepers", "--wait"],
        None,
    );
    assert!(pids.iter().all(|p| !alive(*p)), "destroy left processes");
}
