//! Grants and fault containment (issue 3): the real host library loading the real
//! `fixture-misbehave` component from a plugin directory, with a real grant file.

use std::path::Path;

use infrakit::plugin::{Error, Fault, InstanceSpec, Registry, RegistryConfig};
use serde_json::json;

use crate::support::http::{Behavior, Recorder, TestServer};
use crate::support::{Env, make_fifo, release_fifo, shared_cache_dir};

const PLUGIN: &str = "fixture-misbehave";

/// A registry whose plugin directory holds the misbehaving plugin with `grants` as its
/// grant file.
async fn registry(env: &Env, grants: &str) -> Registry {
    env.install_plugin(PLUGIN, Some(grants));
    let mut config = RegistryConfig::under(env.data_dir());
    config.cache_dir = Some(shared_cache_dir());
    let registry = Registry::load(config).await.expect("engine");
    assert!(
        registry.failures().is_empty(),
        "load failures: {:?}",
        registry.failures()
    );
    registry
}

async fn attempt(registry: &Registry, action: serde_json::Value) -> Result<String, Error> {
    let spec = InstanceSpec {
        properties: action,
        ..Default::default()
    };
    registry.instance(PLUGIN).unwrap().provision(&spec).await
}

fn message(e: &Error) -> String {
    infrakit::error_chain(e)
}

/// The plugin still answers normally (in a fresh instance) after whatever came before.
async fn still_works(registry: &Registry) {
    assert_eq!(
        attempt(registry, json!({"Do": "ok"})).await.unwrap(),
        "ok:fine"
    );
}

fn fault_of(result: Result<String, Error>) -> (Fault, String) {
    match result {
        Err(e @ Error::Faulted { .. }) => {
            let msg = message(&e);
            let Error::Faulted {
                cause,
                plugin,
                export,
                ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!(plugin, PLUGIN);
            assert_eq!(export, "provision");
            (cause, msg)
        }
        other => panic!("expected a fault, got {other:?}"),
    }
}

fn denied(result: Result<String, Error>) -> String {
    match result {
        Err(e @ Error::Guest { .. }) => message(&e),
        other => panic!("expected the plugin to be refused, got {other:?}"),
    }
}

fn grant_dir(host: &Path, guest: &str, mode: &str) -> String {
    format!(
        "[[files]]\nhost = {:?}\nguest = {guest:?}\nmode = {mode:?}\n",
        host.display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_outside_the_grant_are_denied() {
    let env = Env::new();
    let granted = env.data_dir().join("granted");
    let outside = env.data_dir().join("outside");
    std::fs::create_dir_all(&granted).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(granted.join("inside.txt"), "inside").unwrap();
    std::fs::write(outside.join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), granted.join("link.txt")).unwrap();
    let registry = registry(&env, &grant_dir(&granted, "/granted", "read-only")).await;

    // The grant itself works.
    assert_eq!(
        attempt(
            &registry,
            json!({"Do": "read", "Path": "/granted/inside.txt"})
        )
        .await
        .unwrap(),
        "ok:inside"
    );
    // An absolute host path, `..` out of the grant, a symlink pointing out: all refused.
    let secret = outside.join("secret.txt");
    for path in [
        secret.to_str().unwrap(),
        "/granted/../outside/secret.txt",
        "/granted/link.txt",
        "/etc/passwd",
    ] {
        let msg = denied(attempt(&registry, json!({"Do": "read", "Path": path})).await);
        assert!(msg.contains("io:"), "{path}: {msg}");
        assert!(!msg.contains("secret"), "{path} leaked: {msg}");
    }
    // Writing to a read-only grant.
    let msg = denied(
        attempt(
            &registry,
            json!({"Do": "write", "Path": "/granted/new.txt"}),
        )
        .await,
    );
    assert!(msg.contains("io:"), "{msg}");
    assert!(!granted.join("new.txt").exists());
    // Its own scratch directory is writable.
    assert_eq!(
        attempt(&registry, json!({"Do": "write", "Path": "/data/mine.txt"}))
            .await
            .unwrap(),
        "ok:written"
    );
    assert!(env.scratch(PLUGIN).join("mine.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_plugins_scratch_directory_is_out_of_reach() {
    let env = Env::new();
    let registry = registry(&env, "").await;
    // instance-file keeps its instances in its own scratch directory.
    let file_plugin = registry.instance("instance-file").unwrap();
    let id = file_plugin
        .provision(&InstanceSpec::default())
        .await
        .unwrap();
    let theirs = env.scratch("instance-file").join(format!("{id}.json"));
    assert!(theirs.exists());

    for path in [
        theirs.to_str().unwrap().to_string(),
        format!("/data/../instance-file/{id}.json"),
        format!("/data/../../scratch/instance-file/{id}.json"),
    ] {
        let msg = denied(attempt(&registry, json!({"Do": "read", "Path": path})).await);
        assert!(msg.contains("io:"), "{path}: {msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_is_allowed_only_where_granted_read_write() {
    let env = Env::new();
    let rw = env.data_dir().join("rw");
    std::fs::create_dir_all(&rw).unwrap();
    let registry = registry(&env, &grant_dir(&rw, "/rw", "read-write")).await;
    assert_eq!(
        attempt(&registry, json!({"Do": "write", "Path": "/rw/out.txt"}))
            .await
            .unwrap(),
        "ok:written"
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("out.txt")).unwrap(),
        "written by a plugin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_reaches_only_granted_targets() {
    let env = Env::new();
    let server = TestServer::start(Behavior::Respond("pong".into()));
    let other = TestServer::start(Behavior::Respond("other".into()));
    let grants = format!("[http]\nallow = [\"http://127.0.0.1:{}\"]\n", server.port());
    let registry = registry(&env, &grants).await;

    // The granted server answers.
    let got = attempt(&registry, json!({"Do": "http", "Url": server.url("/ping")}))
        .await
        .unwrap();
    assert_eq!(got, "ok:200:pong");

    // The same host on another port, and a host never granted: refused by the host, and the
    // plugin sees the real reason.
    for url in [other.url("/"), "http://example.invalid/".to_string()] {
        let msg = denied(attempt(&registry, json!({"Do": "http", "Url": url})).await);
        assert!(msg.contains("HttpRequestDenied"), "{url}: {msg}");
    }
    assert_eq!(other.requests.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Raw sockets are not a way around the policy.
    let msg = denied(
        attempt(
            &registry,
            json!({"Do": "tcp", "Addr": other.addr.to_string()}),
        )
        .await,
    );
    assert!(msg.contains("io:"), "{msg}");
    assert_eq!(other.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_grant_does_not_reach_private_addresses() {
    let env = Env::new();
    let server = TestServer::start(Behavior::Respond("private".into()));
    let registry = registry(&env, "[http]\nallow = [\"http://*:*\"]\n").await;
    for url in [
        server.url("/"),
        format!("http://localhost:{}/", server.port()),
    ] {
        let msg = denied(attempt(&registry, json!({"Do": "http", "Url": url})).await);
        assert!(msg.contains("HttpRequestDenied"), "{url}: {msg}");
    }
    assert_eq!(server.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_environment_is_not_inherited_but_grants_are_passed() {
    let env = Env::new();
    let registry = registry(
        &env,
        "[env]\nREGION = \"eu\"\n[config]\ngreeting = \"hello\"\n",
    )
    .await;
    assert!(std::env::var("PATH").is_ok(), "the test host has a PATH");
    for name in ["PATH", "HOME", "CARGO_MANIFEST_DIR"] {
        assert_eq!(
            attempt(&registry, json!({"Do": "env", "Name": name}))
                .await
                .unwrap(),
            "ok:<absent>",
            "{name}"
        );
    }
    assert_eq!(
        attempt(&registry, json!({"Do": "env", "Name": "REGION"}))
            .await
            .unwrap(),
        "ok:eu"
    );
    assert_eq!(
        attempt(&registry, json!({"Do": "config", "Key": "greeting"}))
            .await
            .unwrap(),
        "ok:hello"
    );
    assert_eq!(
        attempt(&registry, json!({"Do": "config", "Key": "other"}))
            .await
            .unwrap(),
        "ok:<absent>"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_by_the_cpu_deadline() {
    let env = Env::new();
    let registry = registry(&env, "[limits]\ncpu = \"200ms\"\nwall = \"20s\"\n").await;
    let started = std::time::Instant::now();
    let (cause, msg) = fault_of(attempt(&registry, json!({"Do": "loop"})).await);
    assert_eq!(
        cause,
        Fault::CpuDeadline(std::time::Duration::from_millis(200)),
        "{msg}"
    );
    assert!(
        msg.contains("CPU time limit") && msg.contains(PLUGIN),
        "{msg}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    still_works(&registry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_blocked_on_a_silent_server_is_stopped_by_the_wall_clock() {
    let env = Env::new();
    let server = TestServer::start(Behavior::Hang);
    let grants = format!(
        "[http]\nallow = [\"http://127.0.0.1:{}\"]\n[limits]\nwall = \"1s\"\n",
        server.port()
    );
    let registry = registry(&env, &grants).await;
    let (cause, msg) =
        fault_of(attempt(&registry, json!({"Do": "http", "Url": server.url("/")})).await);
    assert_eq!(
        cause,
        Fault::WallClock(std::time::Duration::from_secs(1)),
        "{msg}"
    );
    assert!(msg.contains("wall-clock limit"), "{msg}");
    still_works(&registry).await;
}

/// A FIFO in a granted directory: opening it for reading blocks in the kernel until a writer
/// comes, as a hung network filesystem would.
fn fifo(env: &Env) -> (std::path::PathBuf, String) {
    let dir = env.data_dir().join("pipes");
    make_fifo(&dir.join("pipe"));
    let grants = format!(
        "{}[limits]\nwall = \"1s\"\n",
        grant_dir(&dir, "/pipes", "read-only")
    );
    (dir.join("pipe"), grants)
}

/// One call of the misbehaving plugin in a task of its own, as the controller makes them.
fn spawn_attempt(
    registry: &std::sync::Arc<Registry>,
    action: serde_json::Value,
) -> tokio::task::JoinHandle<Result<String, Error>> {
    let registry = registry.clone();
    tokio::spawn(async move { attempt(&registry, action).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_blocked_in_the_kernel_is_stopped_by_the_wall_clock_and_holds_no_worker() {
    let env = Env::new();
    let (pipe, grants) = fifo(&env);
    let registry = std::sync::Arc::new(registry(&env, &grants).await);
    let read = json!({"Do": "read", "Path": "/pipes/pipe"});
    // As many blocked calls as the runtime has workers, and one more.
    let started = std::time::Instant::now();
    let blocked: Vec<_> = (0..3)
        .map(|_| spawn_attempt(&registry, read.clone()))
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t = std::time::Instant::now();
    still_works(&registry).await;
    assert!(
        t.elapsed() < std::time::Duration::from_millis(500),
        "a well-behaved call took {:?} next to three blocked ones",
        t.elapsed()
    );
    for b in blocked {
        let (cause, msg) = fault_of(b.await.unwrap());
        assert_eq!(
            cause,
            Fault::WallClock(std::time::Duration::from_secs(1)),
            "{msg}"
        );
    }
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(3),
        "the wall-clock fault came after {took:?}, though the calls stayed blocked"
    );
    release_fifo(&pipe);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_with_too_many_calls_stuck_in_the_kernel_is_refused_until_they_return() {
    let env = Env::new();
    let (pipe, grants) = fifo(&env);
    let registry = std::sync::Arc::new(registry(&env, &grants).await);
    let read = json!({"Do": "read", "Path": "/pipes/pipe"});
    let calls: Vec<_> = (0..4)
        .map(|_| spawn_attempt(&registry, read.clone()))
        .collect();
    for c in calls {
        assert!(matches!(fault_of(c.await.unwrap()).0, Fault::WallClock(_)));
    }
    // Four threads are still blocked: the next call is refused without taking a fifth.
    let (cause, msg) = fault_of(attempt(&registry, json!({"Do": "ok"})).await);
    assert_eq!(cause, Fault::Blocked(4), "{msg}");
    assert!(
        msg.contains("still blocked past their wall-clock limit"),
        "{msg}"
    );
    // Once they return, the plugin is called again.
    release_fifo(&pipe);
    let start = std::time::Instant::now();
    loop {
        match attempt(&registry, json!({"Do": "ok"})).await {
            Ok(v) => {
                assert_eq!(v, "ok:fine");
                break;
            }
            Err(e) => assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "still refused: {}",
                message(&e)
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cpu_limit_counts_guest_execution_and_the_wall_limit_counts_waiting() {
    let env = Env::new();
    let registry = registry(&env, "[limits]\ncpu = \"300ms\"\nwall = \"3s\"\n").await;
    // Idle for three times its CPU limit: no CPU spent, within the wall clock.
    assert_eq!(
        attempt(&registry, json!({"Do": "sleep", "Ms": 900}))
            .await
            .unwrap(),
        "ok:slept"
    );
    // Busy: stopped by the CPU limit, and the error says which limit.
    let (cause, msg) = fault_of(attempt(&registry, json!({"Do": "loop"})).await);
    assert_eq!(
        cause,
        Fault::CpuDeadline(std::time::Duration::from_millis(300)),
        "{msg}"
    );
    assert!(msg.contains("CPU time limit"), "{msg}");
    // Idle past the wall clock: stopped by the wall-clock limit.
    let (cause, msg) = fault_of(attempt(&registry, json!({"Do": "sleep", "Ms": 5000})).await);
    assert_eq!(
        cause,
        Fault::WallClock(std::time::Duration::from_secs(3)),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_flood_is_stopped_at_the_limit() {
    let env = Env::new();
    let registry = registry(&env, "[limits]\nmemory = \"32 MiB\"\n").await;
    let (cause, msg) = fault_of(attempt(&registry, json!({"Do": "flood"})).await);
    assert_eq!(cause, Fault::Memory(32 << 20), "{msg}");
    assert!(msg.contains("memory limit of 32.0 MiB"), "{msg}");
    still_works(&registry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_ends_only_its_call() {
    let env = Env::new();
    let registry = registry(&env, "").await;
    let (cause, msg) = fault_of(attempt(&registry, json!({"Do": "panic"})).await);
    assert!(matches!(cause, Fault::Trap(_)), "{msg}");
    assert!(msg.contains("deliberate panic in provision"), "{msg}");
    still_works(&registry).await;
    // The other plugins never noticed.
    let id = registry
        .instance("instance-file")
        .unwrap()
        .provision(&InstanceSpec::default())
        .await
        .unwrap();
    assert!(!id.is_empty());
}

/// Memory slots are reused and kept resident between calls (see `plugin::engine`): every call
/// must still start from the component's initial memory, whatever the last one wrote to its
/// data segment, heap or stack region, however large it grew, and whether it trapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_starts_from_the_initial_memory_whatever_the_last_one_left() {
    let env = Env::new();
    let registry = registry(&env, "").await;
    let fresh = "ok:7:0:0";
    for (mib, trap) in [
        (1, false),
        (1, false),
        (12, false),
        (1, true),
        (1, false),
        (24, true),
    ] {
        let answer = attempt(
            &registry,
            json!({"Do": "remember", "MiB": mib, "Trap": trap}),
        )
        .await;
        if trap {
            let (cause, msg) = fault_of(answer);
            assert!(matches!(cause, Fault::Trap(_)), "{msg}");
        } else {
            assert_eq!(answer.unwrap(), fresh, "after {mib} MiB");
        }
    }
    // In parallel, so that slots are taken and given back in every order.
    let calls = (0..16).map(|i| attempt(&registry, json!({"Do": "remember", "MiB": 1 + i % 3})));
    for answer in futures_util::future::join_all(calls).await {
        assert_eq!(answer.unwrap(), fresh);
    }
    assert_eq!(
        attempt(&registry, json!({"Do": "remember"})).await.unwrap(),
        fresh
    );
}

/// `keep_resident` (`--keep-resident`): with it, an idle slot keeps the pages its call wrote;
/// with 0 (`off`) it gives them back, and calls answer the same either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slots_keep_what_calls_wrote_resident_only_when_asked() {
    let env = Env::new();
    env.install_plugin(PLUGIN, Some(""));
    let mut resident = Vec::new();
    for keep in [0, 2 << 20] {
        let mut config = RegistryConfig::under(env.data_dir());
        config.cache_dir = Some(shared_cache_dir());
        config.keep_resident = keep;
        let registry = Registry::load(config).await.unwrap();
        assert_eq!(
            attempt(&registry, json!({"Do": "remember"})).await.unwrap(),
            "ok:7:0:0"
        );
        let pool = registry
            .engine()
            .pooling_allocator_metrics()
            .expect("pooled");
        assert!(pool.unused_warm_memories() >= 1);
        resident.push(pool.unused_memory_bytes_resident());
    }
    assert_eq!(resident[0], 0, "off keeps nothing");
    if wasmtime::PoolingAllocationConfig::is_pagemap_scan_available() {
        // The call wrote 32 KiB low in memory and a MiB of heap from above its data (the part
        // of it inside the 2 MiB window stays).
        assert!(resident[1] > 256 << 10, "{resident:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_in_parallel_calls_do_not_disturb_each_other() {
    let env = Env::new();
    let cpu = std::time::Duration::from_secs(2);
    let registry =
        std::sync::Arc::new(registry(&env, "[limits]\ncpu = \"2s\"\nmemory = \"32 MiB\"\n").await);
    // Each call is its own task, as the controller's calls are. Two loopers: as many as the
    // runtime has workers, so a guest that held its worker until its deadline would leave
    // nothing for the others.
    let spawn = |action: serde_json::Value| {
        let registry = registry.clone();
        // Timed from the moment the call is made, so waiting for a worker counts.
        let started = std::time::Instant::now();
        tokio::spawn(async move {
            let outcome = attempt(&registry, action).await;
            (outcome, started.elapsed())
        })
    };
    let loops = [spawn(json!({"Do": "loop"})), spawn(json!({"Do": "loop"}))];
    // Let both loopers get going before the other calls arrive. The test body runs on the
    // main thread, not on a runtime worker, so it can wait without a timer: runtime timers
    // would themselves stall if the loopers held both workers.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(loops.iter().all(|l| !l.is_finished()));
    let flood = spawn(json!({"Do": "flood"}));
    let panic = spawn(json!({"Do": "panic"}));
    let ok = spawn(json!({"Do": "ok"}));

    let (outcome, took) = ok.await.unwrap();
    assert_eq!(outcome.unwrap(), "ok:fine");
    assert!(
        took < cpu / 4,
        "a well-behaved call took {took:?} next to two looping ones: it waited for them"
    );
    let (outcome, took) = panic.await.unwrap();
    assert!(matches!(fault_of(outcome).0, Fault::Trap(_)));
    assert!(took < cpu / 4, "a panicking call took {took:?}");
    let (outcome, _) = flood.await.unwrap();
    assert!(matches!(fault_of(outcome).0, Fault::Memory(_)));
    for l in loops {
        let (outcome, took) = l.await.unwrap();
        assert_eq!(fault_of(outcome).0, Fault::CpuDeadline(cpu));
        assert!(took >= cpu, "stopped after {took:?}, before its CPU limit");
    }
}

#[test]
fn a_grant_file_with_a_typo_is_rejected_with_file_key_and_accepted_form() {
    let env = Env::new();
    env.install_plugin(
        PLUGIN,
        Some("[limits]\nmemory = \"32 MiB\"\nwal = \"1s\"\n"),
    );
    let row = env.plugin_row(&[], PLUGIN);
    assert_eq!(row["status"], "error");
    let msg = row["error"].as_str().unwrap();
    assert!(msg.contains(&format!("{PLUGIN}.toml:3:")), "{msg}");
    assert!(msg.contains("wal") && msg.contains("`wall`"), "{msg}");

    std::fs::write(
        env.plugins_dir().join(format!("{PLUGIN}.toml")),
        "[http]\nallow = [\"127.0.0.1:8080\"]\n",
    )
    .unwrap();
    let msg = env.plugin_row(&[], PLUGIN)["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains(&format!("{PLUGIN}.toml"))
            && msg.contains("`http.allow[0]`")
            && msg.contains("accepted:"),
        "{msg}"
    );
}

/// `infrakit instance provision` of the misbehaving plugin with `action`, logging at info: its
/// stdout and stderr kept apart.
fn provision_with_logs(env: &Env, action: serde_json::Value) -> std::process::Output {
    let mut cmd = env.command();
    cmd.env("INFRAKIT_LOG", "info")
        .args(["instance", "provision", "--plugin", PLUGIN])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json!({ "Properties": action }).to_string().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn plugin_stdout_never_reaches_the_command_output_and_becomes_log_lines() {
    let env = Env::new();
    env.install_plugin(PLUGIN, None);
    let run = provision_with_logs(&env, json!({"Do": "log"}));
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    // The guest's stdout is captured, not mixed into the command's output.
    assert_eq!(stdout.trim(), "ok:logged");
    for line in [
        "a log line through the host",
        "a line on stdout",
        "a line on stderr",
    ] {
        let found = stderr
            .lines()
            .find(|l| l.contains(line))
            .unwrap_or_else(|| panic!("{line:?} not logged:\n{stderr}"));
        assert!(found.contains(&format!("plugin={PLUGIN}")), "{found}");
    }
}

#[test]
fn plugin_ls_shows_what_was_asked_for_but_not_granted() {
    let env = Env::new();
    env.install_plugin(PLUGIN, Some("[config]\ngreeting = \"hi\"\n"));
    let row = env.plugin_row(&[], PLUGIN);
    assert_eq!(row["status"], "ok");
    assert_eq!(row["capabilities"].as_array().unwrap().len(), 2);
    assert_eq!(row["not_granted"], json!([{"http": "http://127.0.0.1:*"}]));

    let text = env.ok(&["plugin", "inspect", PLUGIN], None);
    assert!(
        text.contains("http:http://127.0.0.1:* (NOT GRANTED)"),
        "{text}"
    );
    assert!(text.contains("config:greeting (granted)"), "{text}");

    // A narrower grant than the pattern asked for is shown as what it is, not as nothing.
    env.install_plugin(
        PLUGIN,
        Some("[config]\ngreeting = \"hi\"\n[http]\nallow = [\"http://127.0.0.1:18931\"]\n"),
    );
    let row = env.plugin_row(&[], PLUGIN);
    assert_eq!(row["not_granted"], json!([]));
    assert_eq!(
        row["narrowed"],
        json!(["http:http://127.0.0.1:* -> http://127.0.0.1:18931"])
    );
    let text = env.ok(&["plugin", "inspect", PLUGIN], None);
    assert!(
        text.contains("http:http://127.0.0.1:* (narrowed to http://127.0.0.1:18931)"),
        "{text}"
    );
    let table = env.ok(&["plugin", "ls"], None);
    assert!(
        table.contains("(narrowed: http:http://127.0.0.1:* -> http://127.0.0.1:18931)"),
        "{table}"
    );
}

#[test]
fn builtin_plugins_get_their_grants_from_the_config_file() {
    let env = Env::new();
    let instances = env.data_dir().join("instances");
    std::fs::create_dir_all(&instances).unwrap();
    let config = env.data_dir().join("infrakit.toml");
    std::fs::write(
        &config,
        format!(
            "[plugins.instance-file]\nconfig = {{ dir = \"/instances\" }}\n[[plugins.instance-file.files]]\nhost = {:?}\nguest = \"/instances\"\nmode = \"read-write\"\n",
            instances.display().to_string()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let id = env
        .ok(
            &[
                "--config",
                config,
                "instance",
                "provision",
                "--plugin",
                "instance-file",
            ],
            Some("{}"),
        )
        .trim()
        .to_string();
    assert!(instances.join(format!("{id}.json")).exists());
    let row = env.plugin_row(&["--config", config], "instance-file");
    assert_eq!(row["not_granted"], json!([]));

    // A bad section is reported with the file and key, and nothing runs.
    std::fs::write(
        env.data_dir().join("bad.toml"),
        "[plugins.instance-file.limits]\nwall = \"later\"\n",
    )
    .unwrap();
    let bad = env.data_dir().join("bad.toml");
    let err = env
        .run(&["--config", bad.to_str().unwrap(), "plugin", "ls"], None)
        .assert_failure();
    assert!(
        err.contains("bad.toml") && err.contains("`plugins.instance-file.limits.wall`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_larger_than_granted_is_cut_off() {
    let env = Env::new();
    let server = TestServer::start(Behavior::Respond("x".repeat(64 * 1024)));
    let grants = format!(
        "[http]\nallow = [\"http://127.0.0.1:{}\"]\n[limits]\nhttp_response = \"1 KiB\"\n",
        server.port()
    );
    let registry = registry(&env, &grants).await;
    let msg = denied(attempt(&registry, json!({"Do": "http", "Url": server.url("/big")})).await);
    assert!(msg.contains("over the limit of 1024 bytes"), "{msg}");
}

#[test]
fn control_characters_from_a_plugin_never_reach_the_terminal_raw() {
    let env = Env::new();
    env.install_plugin(PLUGIN, None);
    let out = provision_with_logs(&env, json!({"Do": "forge"}));
    assert!(!out.status.success());
    let all = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
    assert!(!all.contains(&0x1b), "a raw escape reached the terminal");
    let text = String::from_utf8_lossy(&all);
    // The forged text is there, escaped, on the plugin's own lines; never a line of its own.
    assert!(text.contains("\\u{1b}[2J"), "{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("2026-01-01T00:00:00Z ERROR infrakit: FORGED")),
        "a forged log line: {text}"
    );
}

/// Health checks in one `healthy-many` call: a batch answers in one instance; when a check in
/// it traps or loops, each instance is asked about on its own, so only that check's verdict
/// is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_health_checks_answer_in_one_call_and_a_fault_spoils_only_its_own_verdict() {
    let env = Env::new();
    env.install_plugin("fixture-flavor-tag", Some("[limits]\ncpu = \"300ms\"\n"));
    let mut config = RegistryConfig::under(env.data_dir());
    config.cache_dir = Some(shared_cache_dir());
    let registry = Registry::load(config).await.expect("engine");
    let flavor = registry.flavor("fixture-flavor-tag").unwrap();
    let instance = |id: &str, health: &str| infrakit::plugin::Description {
        id: id.into(),
        logical_id: None,
        tags: [("fixture.health".to_string(), health.to_string())].into(),
        properties: None,
    };
    let check = |batch: Vec<infrakit::plugin::Description>| {
        let flavor = flavor.clone();
        async move {
            let refs: Vec<&infrakit::plugin::Description> = batch.iter().collect();
            flavor
                .healthy_many(&json!({}), &refs)
                .await
                .iter()
                .map(|r| match r {
                    Ok(h) => h.to_string(),
                    Err(Error::Faulted { cause, .. }) => format!("fault: {cause}"),
                    Err(e) => message(e),
                })
                .collect::<Vec<String>>()
        }
    };

    // One call, one instance: the checks count up.
    let calls = flavor
        .stats()
        .calls
        .load(std::sync::atomic::Ordering::Relaxed);
    let shown = check(vec![
        instance("a", "calls"),
        instance("b", "calls"),
        instance("c", "ok"),
    ])
    .await;
    assert!(
        shown[0].ends_with("call 1") && shown[1].ends_with("call 2"),
        "{shown:?}"
    );
    assert_eq!(shown[2], "healthy");
    let after = flavor
        .stats()
        .calls
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(after - calls, 1, "three checks in one call");
    let many: Vec<_> = (0..256).map(|i| instance(&format!("i{i}"), "ok")).collect();
    let shown = check(many).await;
    assert!(shown.iter().all(|s| s == "healthy"), "{shown:?}");
    let last = flavor
        .stats()
        .calls
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(last - after, 1, "256 checks in one call");

    // A panic and a loop in the batch: every other instance still gets its verdict.
    let shown = check(vec![
        instance("a", "ok"),
        instance("b", "calls"),
        instance("c", "panic"),
        instance("d", "loop"),
        instance("e", "unhealthy"),
    ])
    .await;
    assert_eq!(shown[0], "healthy", "{shown:?}");
    assert!(
        shown[1].ends_with("call 1"),
        "asked on its own, in a fresh instance: {shown:?}"
    );
    assert!(
        shown[2].starts_with("fault: ") && shown[2].contains("panics"),
        "{shown:?}"
    );
    assert!(
        shown[3].starts_with("fault: ") && shown[3].contains("CPU"),
        "{shown:?}"
    );
    assert_eq!(shown[4], "unhealthy", "{shown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_grant_routes_requests_and_its_rules_stop_the_rest_before_they_leave() {
    let env = Env::new();
    let socket = env.data_dir().join("engine.sock");
    let engine = Recorder::unix(&socket);
    let grants = format!(
        r#"
[http.unix]
docker = {socket:?}

[[http.rules]]
target = "http://docker"
requests = ["GET /containers/json", "POST /containers/*/start", "DELETE /containers/*"]

[[http.rules]]
target = "http://docker"
requests = ["POST /containers/create"]
deny_fields = ["/HostConfig/Privileged", "/HostConfig/Binds"]
allow_values = {{ "/HostConfig/Mounts/*/Source" = ["/srv/www/**"] }}
"#,
        socket = socket.display().to_string()
    );
    let granted = registry(&env, &grants).await;
    let call = |method: &str, path: &str, body: Option<serde_json::Value>| {
        let mut action =
            json!({"Do": "http", "Method": method, "Url": format!("http://docker{path}")});
        if let Some(b) = body {
            action["Body"] = b;
        }
        attempt(&granted, action)
    };

    // Allowed requests reach the socket, body and all.
    assert_eq!(
        call("GET", "/containers/json?all=1", None).await.unwrap(),
        "ok:200:{}"
    );
    assert_eq!(
        call("POST", "/containers/abc/start", None).await.unwrap(),
        "ok:200:{}"
    );
    let ok_body = json!({"Image": "web", "HostConfig": {"Mounts": [{"Type": "bind", "Source": "/srv/www/site"}]}});
    assert_eq!(
        call("POST", "/containers/create?name=x", Some(ok_body.clone()))
            .await
            .unwrap(),
        "ok:200:{}"
    );
    let reached = engine.requests();
    assert_eq!(
        reached,
        [
            "GET /containers/json?all=1",
            "POST /containers/abc/start",
            "POST /containers/create?name=x"
        ]
    );
    let body = engine.seen.lock().unwrap()[2].body.clone();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        ok_body
    );

    // Outside the rules: other routes, path tricks, forbidden body fields (in any case), mounts
    // outside the allowed tree. All refused by the host; none reaches the socket.
    for (method, path, body) in [
        ("POST", "/images/create?fromImage=evil", None),
        ("POST", "/containers/abc/exec", Some(json!({"Cmd": ["sh"]}))),
        ("POST", "/containers/abc/../../images/create", None),
        ("POST", "/containers/abc%2F..%2Fexec/start", None),
        ("GET", "/containers/abc/json", None),
        (
            "POST",
            "/containers/create",
            Some(json!({"HostConfig": {"Privileged": true}})),
        ),
        (
            "POST",
            "/containers/create",
            Some(json!({"hostconfig": {"privileged": true}})),
        ),
        (
            "POST",
            "/containers/create",
            Some(json!({"HostConfig": {"Binds": ["/:/host"]}})),
        ),
        (
            "POST",
            "/containers/create",
            Some(
                json!({"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/srv/www/../../etc"}]}}),
            ),
        ),
    ] {
        let msg = denied(call(method, path, body).await);
        assert!(msg.contains("HttpRequestDenied"), "{method} {path}: {msg}");
    }
    assert_eq!(
        engine.requests(),
        reached,
        "a refused request reached the socket"
    );

    // A plugin without the socket grant cannot reach it at all, by name or otherwise.
    let env2 = Env::new();
    let bare = registry(&env2, "").await;
    let msg = denied(
        attempt(
            &bare,
            json!({"Do": "http", "Url": "http://docker/containers/json"}),
        )
        .await,
    );
    assert!(msg.contains("HttpRequestDenied"), "{msg}");
    assert_eq!(engine.requests(), reached);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_directory_scan_that_fails_changes_nothing() {
    let env = Env::new();
    let registry = registry(&env, "").await;
    let dir = env.plugins_dir();
    // The directory replaced by a file: reading it fails (ENOTDIR), as it would out of
    // descriptors (EMFILE). Root ignores permissions, so this is the failure a test can cause.
    std::fs::rename(&dir, env.data_dir().join("plugins-aside")).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
    for _ in 0..2 {
        assert!(registry.rescan().await.is_empty());
    }
    assert!(
        registry.instance(PLUGIN).is_ok(),
        "a failed scan unloaded the plugin in service"
    );
    // No directory at all is an answer: its plugins go.
    std::fs::remove_file(&dir).unwrap();
    registry.rescan().await;
    assert!(registry.instance(PLUGIN).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_named_exactly_stays_reachable_next_to_a_wildcard() {
    let env = Env::new();
    let named = TestServer::start(Behavior::Respond("named".into()));
    let other = TestServer::start(Behavior::Respond("other".into()));
    // The wildcard turns private-address blocking on; it must not take away the loopback
    // target the operator named.
    let grants = format!(
        "[http]\nallow = [\"http://127.0.0.1:{}\", \"http://*:*\"]\n",
        named.port()
    );
    let registry = registry(&env, &grants).await;
    let got = attempt(&registry, json!({"Do": "http", "Url": named.url("/")}))
        .await
        .unwrap();
    assert_eq!(got, "ok:200:named");
    let msg = denied(attempt(&registry, json!({"Do": "http", "Url": other.url("/")})).await);
    assert!(msg.contains("HttpRequestDenied"), "{msg}");
    assert_eq!(other.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_errors_are_clipped_and_unusable_instance_ids_are_refused() {
    let env = Env::new();
    let registry = registry(&env, "").await;
    // A 4 MiB error reaches the caller (and so logs and events) cut to a few KiB, saying so.
    let err = attempt(
        &registry,
        json!({"Do": "huge", "What": "error", "Bytes": 4 << 20}),
    )
    .await
    .unwrap_err();
    let msg = message(&err);
    assert!(msg.len() < 8 << 10, "{} bytes", msg.len());
    assert!(
        msg.contains("more bytes cut]"),
        "{}",
        &msg[msg.len() - 100..]
    );
    // An instance id of 100 KB is a fault of the plugin, not a name the group keeps.
    let (cause, msg) = fault_of(
        attempt(
            &registry,
            json!({"Do": "huge", "What": "id", "Bytes": 100_000}),
        )
        .await,
    );
    assert!(matches!(cause, Fault::BadAnswer(_)), "{msg}");
    assert!(msg.contains("100000 bytes (at most 512)"), "{msg}");
    still_works(&registry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_hoarding_files_is_stopped_at_its_resource_limit() {
    let env = Env::new();
    let registry = registry(&env, "[limits]\nresources = 64\n").await;
    // Within the limit, files are files.
    assert_eq!(
        attempt(&registry, json!({"Do": "hoard", "Count": 20}))
            .await
            .unwrap(),
        "ok:20"
    );
    // Past it, the call fails there: the host holds 64 entries of this call at most, not
    // the 20,000 descriptors a guest once opened.
    let err = attempt(&registry, json!({"Do": "hoard", "Count": 20_000}))
        .await
        .unwrap_err();
    let (cause, msg) = fault_of(Err(err));
    assert!(matches!(cause, Fault::Resources(64)), "{msg}");
    assert!(msg.contains("limits.resources"), "{msg}");
    still_works(&registry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_cannot_plant_symlinks() {
    let env = Env::new();
    let registry = registry(&env, "").await;
    for target in ["/etc/passwd", "../../..", "inside"] {
        let err = attempt(
            &registry,
            json!({"Do": "symlink", "Path": "/data/link", "Target": target}),
        )
        .await
        .unwrap_err();
        assert!(
            message(&err).contains("not-permitted"),
            "{target}: {}",
            message(&err)
        );
        assert!(
            std::fs::symlink_metadata(env.scratch(PLUGIN).join("link")).is_err(),
            "a link to {target} was made"
        );
    }
    still_works(&registry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_filling_the_disk_is_stopped_at_its_quota() {
    let env = Env::new();
    let registry = registry(&env, "[limits]\ndisk = \"8 MiB\"\ndisk_entries = 50\n").await;
    let scratch = env.scratch(PLUGIN);
    let held = |dir: &std::path::Path| -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| {
                let m = e.metadata().unwrap();
                m.len().max(m.blocks() * 512)
            })
            .sum()
    };
    // Within the quota, writing works.
    assert_eq!(
        attempt(&registry, json!({"Do": "fill", "MiB": 4}))
            .await
            .unwrap(),
        "ok:filled"
    );
    // Past it, the write that would cross it fails: the file is rewritten from nothing, so
    // 8 of the 100 MiB fit, and nothing beyond the quota reaches the disk. (Through a stream
    // the guest's libc reports "I/O error"; the host's log names the quota.)
    let err = attempt(&registry, json!({"Do": "fill", "MiB": 100}))
        .await
        .unwrap_err();
    let msg = message(&err);
    assert!(msg.contains("fill stopped after 8:"), "{msg}");
    assert!(
        held(&scratch) <= 8 << 20,
        "{} bytes on disk",
        held(&scratch)
    );
    // A 1 TiB hole counts as 1 TiB.
    let err = attempt(&registry, json!({"Do": "fill", "Sparse": 1u64 << 40}))
        .await
        .unwrap_err();
    assert!(
        message(&err).contains("sparse stopped"),
        "{}",
        message(&err)
    );
    assert!(
        std::fs::metadata(scratch.join("sparse")).unwrap().len() < 1 << 40,
        "the hole was made"
    );
    // And entries are counted too.
    let err = attempt(&registry, json!({"Do": "fill", "Files": 200}))
        .await
        .unwrap_err();
    assert!(
        message(&err).contains("files stopped after"),
        "{}",
        message(&err)
    );
    let entries = std::fs::read_dir(&scratch).unwrap().count();
    assert!(entries <= 50, "{entries} entries");
    // Space freed on the host is found again.
    for e in std::fs::read_dir(&scratch).unwrap().flatten() {
        std::fs::remove_file(e.path()).unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    assert_eq!(
        attempt(&registry, json!({"Do": "fill", "MiB": 2, "Files": 10}))
            .await
            .unwrap(),
        "ok:filled"
    );
    still_works(&registry).await;
}

/// Granted directories are opened once per plugin and handed to a call only when its guest
/// touches a file (`plugin::preopens`): a call that does no file I/O runs even while a granted
/// directory is missing; one that does fails as a sandbox that could not be set up, naming the
/// directory; a directory replaced on the host is followed, not the old one kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_directories_are_opened_when_used_and_follow_the_host() {
    let env = Env::new();
    let granted = env.data_dir().join("granted");
    std::fs::create_dir_all(&granted).unwrap();
    std::fs::write(granted.join("f.txt"), "first").unwrap();
    let registry = registry(&env, &grant_dir(&granted, "/g", "read-only")).await;
    let read = json!({"Do": "read", "Path": "/g/f.txt"});
    assert_eq!(attempt(&registry, read.clone()).await.unwrap(), "ok:first");

    // Replaced: the new directory is what the guest reads.
    std::fs::rename(&granted, env.data_dir().join("old")).unwrap();
    std::fs::create_dir_all(&granted).unwrap();
    std::fs::write(granted.join("f.txt"), "second").unwrap();
    assert_eq!(attempt(&registry, read.clone()).await.unwrap(), "ok:second");

    // Removed: no file touched, no failure; a file touched (even in /data), a clear one.
    std::fs::remove_dir_all(&granted).unwrap();
    still_works(&registry).await;
    let err = attempt(&registry, json!({"Do": "read", "Path": "/data/x"}))
        .await
        .unwrap_err();
    let msg = message(&err);
    assert!(matches!(err, Error::Sandbox { .. }), "{err:?}");
    assert!(
        msg.contains("cannot set up the sandbox for provision")
            && msg.contains(&format!("granted directory {}", granted.display()))
            && msg.contains("(guest /g)"),
        "{msg}"
    );

    // Back: the next call finds it.
    std::fs::create_dir_all(&granted).unwrap();
    std::fs::write(granted.join("f.txt"), "third").unwrap();
    assert_eq!(attempt(&registry, read).await.unwrap(), "ok:third");
}

/// A large component first runs baseline code (Winch) while its optimised code compiles in
/// the background (issue 15: first load of a Python plugin within seconds). Baseline code must
/// keep every limit: the CPU deadline (epoch interruption), the memory limit, trap containment;
/// and a rescan after the background compile swaps the plugin onto optimised code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_code_keeps_every_limit_until_optimised_code_replaces_it() {
    use infrakit::plugin::Tier;
    use infrakit::plugin::registry::Change;

    let env = Env::new();
    env.install_plugin(
        PLUGIN,
        Some("[limits]\ncpu = \"200ms\"\nwall = \"20s\"\nmemory = \"32 MiB\"\n"),
    );
    let mut config = RegistryConfig::under(env.data_dir());
    // Its own cache: the shared one may hold the optimised code already, which is used first.
    config.cache_dir = Some(env.data_dir().join("cache"));
    config.baseline_above = Some(0); // every component counts as large
    config.optimize_in_background = true;
    let registry = Registry::load(config).await.expect("engine");
    let tier = || registry.get(PLUGIN).unwrap().load_stats().tier;
    assert_eq!(tier(), Tier::Baseline);

    let (cause, msg) = fault_of(attempt(&registry, json!({"Do": "loop"})).await);
    assert_eq!(
        cause,
        Fault::CpuDeadline(std::time::Duration::from_millis(200)),
        "{msg}"
    );
    let (cause, msg) = fault_of(attempt(&registry, json!({"Do": "flood"})).await);
    assert_eq!(cause, Fault::Memory(32 << 20), "{msg}");
    let (cause, msg) = fault_of(attempt(&registry, json!({"Do": "panic"})).await);
    assert!(matches!(cause, Fault::Trap(_)), "{msg}");
    still_works(&registry).await;

    // The background compile finishes; the next rescan swaps the plugin, and only it.
    let started = std::time::Instant::now();
    let mut swapped = Vec::new();
    while !swapped
        .iter()
        .any(|c| matches!(c, Change::Optimized { name, .. } if name == PLUGIN))
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "no swap onto optimised code: {swapped:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        swapped.extend(registry.rescan().await);
    }
    assert_eq!(tier(), Tier::Optimized);
    assert!(
        swapped
            .iter()
            .all(|c| matches!(c, Change::Optimized { .. })),
        "{swapped:?}"
    );
    let (cause, msg) = fault_of(attempt(&registry, json!({"Do": "loop"})).await);
    assert!(matches!(cause, Fault::CpuDeadline(_)), "{msg}");
    still_works(&registry).await;

    // Both codes are cached now (two engines, two artifacts of the same bytes); a new load
    // takes the optimised one at once.
    let artifacts = crate::support::compiled_artifacts(&env.data_dir().join("cache"));
    assert!(artifacts >= 2, "{artifacts} artifacts");
    let mut config = RegistryConfig::under(env.data_dir());
    config.cache_dir = Some(env.data_dir().join("cache"));
    config.baseline_above = Some(0);
    let again = Registry::load_named(config, PLUGIN).await.unwrap();
    let load = again.get(PLUGIN).unwrap().load_stats();
    assert_eq!((load.tier, load.cached), (Tier::Optimized, true));
}
