//! Python plugins (issue 15): the example flavor in `examples/python-flavor`, on the Python SDK
//! in `sdk/python`, built into a component by componentize-py and loaded by the real host.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::support::Env;
use crate::support::http::Recorder;
use crate::support::scaffold::{check_generated_flavor, check_generated_instance};

/// The componentize-py executable: `INFRAKIT_COMPONENTIZE_PY`, or `componentize-py` on the PATH.
fn componentize_py() -> Option<String> {
    crate::support::external_tool(
        "INFRAKIT_COMPONENTIZE_PY",
        "componentize-py",
        "pip install componentize-py",
    )
}

/// The example built once per test run (componentize-py bundles CPython: ~18 MB).
fn component(tool: &str) -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = root.join("target").join("python").join("py-flavor.wasm");
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        crate::support::tools::build_python_example(tool, &out);
        out
    })
}

#[test]
fn the_python_example_installs_and_answers_every_call_with_errors_and_faults_contained() {
    let Some(tool) = componentize_py() else {
        return;
    };
    let wasm = component(&tool);
    let env = Env::new();
    // A real HTTP server for `Notify`, the only target granted.
    let (hooks, port) = Recorder::tcp();
    let grants = env.data_dir().join("py-flavor.toml");
    std::fs::write(
        &grants,
        format!("[http]\nallow = [\"http://127.0.0.1:{port}\"]\n"),
    )
    .unwrap();
    env.install_built(wasm, &grants, "py-flavor", "flavor");
    let props = r#"{"Init": ["systemctl start app"], "Tags": {"role": "web"}, "MinUptime": 30}"#;
    let flavor = |args: &[&str], stdin: Option<&str>| {
        let mut all = vec!["flavor"];
        all.extend_from_slice(args);
        env.run(&all, stdin)
    };

    // validate: accepted, and a typo refused naming the field.
    flavor(
        &["validate", "--plugin", "py-flavor", "-", "--size", "3"],
        Some(props),
    )
    .assert_success();
    let typo = flavor(
        &["validate", "--plugin", "py-flavor", "-", "--size", "3"],
        Some(r#"{"MinUptme": 30}"#),
    )
    .assert_failure();
    assert!(
        typo.contains("properties at `MinUptme`: unknown field"),
        "{typo}"
    );

    // prepare: the SDK's types both ways.
    let prepared = flavor(
        &[
            "prepare",
            "--plugin",
            "py-flavor",
            "--properties",
            props,
            "--group",
            "web",
            "-",
        ],
        Some(r#"{"Init": "echo boot", "Tags": {"tier": "front"}}"#),
    )
    .json();
    assert_eq!(prepared["Init"], "echo boot\nsystemctl start app");
    assert_eq!(prepared["Tags"]["role"], "web");
    assert_eq!(prepared["Tags"]["tier"], "front");

    // healthy: each verdict, by its exit code.
    for (tags, code, word) in [
        (r#"{"uptime": "45"}"#, 0, "healthy"),
        (r#"{"uptime": "10"}"#, 3, "unhealthy"),
        ("{}", 4, "unknown"),
    ] {
        let run = flavor(
            &["healthy", "--plugin", "py-flavor", "--properties", props],
            Some(&format!(r#"{{"ID": "i-1", "Tags": {tags}}}"#)),
        );
        assert_eq!(run.code(), Some(code), "{tags}: {}", run.stderr());
        assert_eq!(run.stdout().trim(), word);
    }

    // An uncaught exception is a fault of that call only; the next call answers.
    let fault = flavor(
        &["healthy", "--plugin", "py-flavor", "--properties", props],
        Some(r#"{"ID": "i-1", "Tags": {"uptime": "soon"}}"#),
    )
    .assert_failure();
    assert!(
        fault.contains("py-flavor") && fault.contains("healthy") && fault.contains("trapped"),
        "{fault}"
    );
    flavor(
        &["drain", "--plugin", "py-flavor"],
        Some(r#"{"ID": "i-1"}"#),
    )
    .assert_success();

    // HTTP through the host (`infrakit_plugin.http` over wasi:http): the granted target
    // receives the POST with its JSON body (sent with a content-length), ...
    let notify = |url: &str| {
        let props = format!(r#"{{"Notify": "{url}"}}"#);
        flavor(
            &["drain", "--plugin", "py-flavor", "--properties", &props],
            Some(r#"{"ID": "i-9"}"#),
        )
    };
    notify(&format!("http://127.0.0.1:{port}/drained?from=py")).assert_success();
    let seen = hooks.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].request, "POST /drained?from=py");
    assert!(
        seen[0]
            .head
            .to_ascii_lowercase()
            .contains("content-length: 37"),
        "{}",
        seen[0].head
    );
    let body: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"event": "drain", "instance": "i-9"})
    );
    // ... and a target outside the grant is refused by the host: the error answer names the
    // URL (an `http.Denied`, a PluginError: not a trap), and nothing is sent.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let elsewhere = format!("http://{}/drained", other.local_addr().unwrap());
    let denied = notify(&elsewhere).assert_failure();
    assert!(
        denied.contains(&format!("HTTP request POST {elsewhere} denied by the host"))
            && !denied.contains("trapped"),
        "{denied}"
    );
    other.set_nonblocking(true).unwrap();
    assert!(
        other.accept().is_err(),
        "the refused request reached its target"
    );
    assert_eq!(hooks.seen.lock().unwrap().len(), 1);

    let rows = env.run(&["plugin", "ls", "-o", "json"], None).json();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "py-flavor")
        .expect("py-flavor listed")
        .clone();
    assert_eq!(row["kind"], "flavor");
    assert_eq!(row["status"], "ok");
    assert_eq!(row["code"], "optimized", "install compiles optimised code");

    // Dropped into a plugin directory instead (no install), the first load compiles baseline
    // code (Winch), several times faster than the optimised compile `install` did; it answers
    // the same, and a passive command keeps it (only a daemon compiles on in the background).
    let dropped = Env::new();
    let own_cache = dropped.data_dir().join("cache");
    dropped.set_var("INFRAKIT_CACHE_DIR", own_cache.to_str().unwrap());
    std::fs::copy(wasm, dropped.plugins_dir().join("py-flavor.wasm")).unwrap();
    let run = dropped.run(
        &[
            "flavor",
            "healthy",
            "--plugin",
            "py-flavor",
            "--properties",
            props,
        ],
        Some(r#"{"ID": "i-1", "Tags": {"uptime": "45"}}"#),
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr());
    let row = dropped.plugin_row(&[], "py-flavor");
    assert_eq!(row["code"], "baseline", "{row}");
    assert_eq!(row["cached"], true, "{row}");
}

/// The Python SDK's own tests and the example's, natively under pytest (no wasm): how a plugin
/// author tests a Python plugin.
#[test]
fn the_python_sdk_and_the_example_pass_their_pytest_suites() {
    let python = std::env::var("INFRAKIT_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_pytest = std::process::Command::new(&python)
        .args(["-m", "pytest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_pytest {
        assert!(
            std::env::var("CI").is_err(),
            "{python} has no pytest; .ci/run installs it"
        );
        eprintln!("skipping: no pytest for {python} (pip install pytest, or set INFRAKIT_PYTHON)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = std::process::Command::new(&python)
        .current_dir(root)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .args(["sdk/python/tests", "examples/python-flavor"])
        .env("PYTHONPATH", root.join("sdk/python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "pytest failed:\n{out}");
    assert!(out.contains("27 passed"), "{out}");
}

/// `plugin new --lang python` for both kinds: the generated project passes its pytest suite,
/// builds with the componentize-py line of its README, installs and answers through the host.
#[test]
fn plugin_new_python_projects_test_build_install_and_answer_as_generated() {
    let Some(tool) = componentize_py() else {
        return;
    };
    let python = std::env::var("INFRAKIT_PYTHON").unwrap_or_else(|_| "python3".into());
    let env = Env::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sdk = root.join("sdk");
    let new = |kind: &str, name: &str| -> PathBuf {
        let dir = env.data_dir().join("projects").join(name);
        env.ok(
            &[
                "plugin",
                "new",
                name,
                "--kind",
                kind,
                "--lang",
                "python",
                "--dir",
                dir.to_str().unwrap(),
                "--sdk",
                sdk.to_str().unwrap(),
            ],
            None,
        );
        let tested = std::process::Command::new(&python)
            .current_dir(&dir)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&tested.stdout).to_string();
        assert!(tested.status.success() && out.contains("2 passed"), "{out}");
        let world = format!("{kind}-plugin-http");
        let wasm = format!("{name}.wasm");
        let built = std::process::Command::new(&tool)
            .current_dir(&dir)
            .args([
                "-d",
                "wit",
                "-w",
                &world,
                "componentize",
                "app",
                "-p",
                ".",
                "-p",
            ])
            .arg(sdk.join("python"))
            .args(["-o", &wasm])
            .output()
            .unwrap();
        assert!(
            built.status.success(),
            "{}",
            String::from_utf8_lossy(&built.stderr)
        );
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        assert!(
            readme.contains(&format!("-w {world} componentize app -p . -p")),
            "the README's build line is the one tested:\n{readme}"
        );
        let grants = dir.join(format!("{name}.toml"));
        env.install_built(&dir.join(&wasm), &grants, name, kind);
        dir
    };

    new("instance", "py-machines");
    let id = check_generated_instance(&env, "py-machines");
    env.ok(
        &[
            "instance",
            "label",
            "--plugin",
            "py-machines",
            &id,
            "--tag",
            "role=db",
        ],
        None,
    );
    env.ok(
        &["instance", "destroy", "--plugin", "py-machines", &id],
        None,
    );
    let gone = env
        .run(
            &["instance", "destroy", "--plugin", "py-machines", &id],
            None,
        )
        .assert_failure();
    assert!(
        gone.contains("not found") || gone.contains("not-found"),
        "{gone}"
    );

    new("flavor", "py-role");
    check_generated_flavor(&env, "py-role");
}
