//! External tools the tests drive (servers, checkers), found or skipped the same way.

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
