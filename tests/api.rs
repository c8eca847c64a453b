//! The control API against its own OpenAPI document: schemathesis (PyPI) generates requests
//! from `/openapi.json` (examples, boundary cases, fuzzing, and chains that follow the
//! document's links) and checks every answer against it (`--checks all`).

use std::process::Command;

use crate::support::Env;
use crate::support::daemon::Daemon;
use crate::support::group::write_spec;

/// The schemathesis executable: `INFRAKIT_SCHEMATHESIS`, or `st` on the PATH.
fn schemathesis() -> Option<String> {
    crate::support::external_tool("INFRAKIT_SCHEMATHESIS", "st", "pip install schemathesis")
}

#[test]
fn schemathesis_finds_nothing_against_the_openapi_document() {
    let Some(st) = schemathesis() else { return };
    let env = Env::new();
    let token_file = env.data_dir().join("token");
    std::fs::write(&token_file, "schemathesis-token").unwrap();
    let daemon = Daemon::start(
        &env,
        &[
            "--tcp",
            "127.0.0.1:0",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let base = format!("http://{}", daemon.tcp_address().unwrap());
    // Groups with two revisions each, so that listing links lead to real groups that can roll
    // back, and still do after the generated calls have destroyed or freed some of them.
    for name in ["seeded", "seeded-b", "seeded-c", "seeded-d"] {
        for size in [1, 2] {
            let spec = env.data_dir().join(format!("{name}.json"));
            write_spec(
                &spec,
                name,
                serde_json::json!({"Size": size}),
                serde_json::json!({}),
            );
            env.ok(&["group", "commit", spec.to_str().unwrap()], None);
        }
    }
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/schemathesis.toml");
    let out = Command::new(&st)
        .current_dir(env.data_dir())
        .env("SCHEMATHESIS_HOOKS", "")
        .args(["--config-file", config, "run"])
        .arg(format!("{base}/openapi.json"))
        .args([
            "--checks",
            "all",
            "--max-examples",
            "25",
            "--seed",
            "20261201",
            "--request-timeout",
            "20",
            "--no-color",
            "-H",
            "Authorization: Bearer schemathesis-token",
        ])
        .output()
        .expect("run schemathesis");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}"
    );
    // Chains of calls followed the document's links (a commit's id to the group's own
    // operations), so those were reached with real ids, not only with made-up ones.
    let covered: u32 = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("API Links:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(covered >= 5, "only {covered} links followed:\n{report}");
}
