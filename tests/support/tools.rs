//! External tools the tests drive (servers, checkers), found or skipped the same way.

use std::path::Path;
use std::process::Command;

/// An external tool a test drives: the path in `env_var`, or `default` on the PATH, if it
/// answers `--version`. Under CI (`CI` set) it must be there, since `.ci/run` installs it;
/// elsewhere the test skips, printing `install` as the way to get it.
pub fn external_tool(env_var: &str, default: &str, install: &str) -> Option<String> {
    let candidate = std::env::var(env_var).unwrap_or_else(|_| default.into());
    let found = Command::new(&candidate)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some(candidate);
    }
    assert!(
        std::env::var("CI").is_err(),
        "{candidate} is not installed; .ci/run installs it"
    );
    eprintln!("skipping: {candidate} not found ({install}, or set {env_var})");
    None
}

/// Builds the Python example (`examples/python-flavor` on `sdk/python`, against the world
/// with `wasi:http`) into `out` with the componentize-py at `tool`.
pub fn build_python_example(tool: &str, out: &Path) {
    let run = Command::new(tool)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "-d",
            "wit",
            "-w",
            "flavor-plugin-http",
            "componentize",
            "app",
        ])
        .args(["-p", "examples/python-flavor", "-p", "sdk/python", "-o"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "componentize-py failed:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}
