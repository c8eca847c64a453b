//! The real Docker Engine of the machine: the example's web image built from a static busybox
//! (never pulled), and containers looked up by label and removed when a test ends.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use super::external_tool;

/// The image the tests run: `examples/docker/build-image.sh` with a test tag.
pub const IMAGE: &str = "infrakit-test-web:1";

/// `docker` when the engine answers; `None` (skip) locally when it does not; a failure under CI.
pub fn engine() -> Option<()> {
    external_tool(
        "INFRAKIT_DOCKER",
        "docker",
        "install Docker Engine and its CLI",
    )?;
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .expect("run docker info");
    if info.status.success() {
        return Some(());
    }
    assert!(
        std::env::var("CI").is_err(),
        "the Docker Engine does not answer: {}",
        String::from_utf8_lossy(&info.stderr)
    );
    eprintln!("skipping: the Docker Engine does not answer");
    None
}

/// Builds the test image once per test process (the engine's cache makes later builds cheap).
pub fn image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/docker/build-image.sh");
        let out = Command::new(script)
            .arg(IMAGE)
            .output()
            .expect("run build-image.sh");
        assert!(
            out.status.success(),
            "building {IMAGE} failed (is busybox-static installed?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    IMAGE
}

/// Runs `docker ARGS`, returning stdout; panics with stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One container as `docker ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub state: String,
}

/// Containers (any state) carrying `label` (`KEY` or `KEY=VALUE`), sorted by id.
pub fn containers(label: &str) -> Vec<Container> {
    let filter = format!("label={label}");
    let out = docker(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &filter,
        "--format",
        "{{.ID}} {{.State}}",
    ]);
    let mut found: Vec<Container> = out
        .lines()
        .filter_map(|l| {
            let (id, state) = l.split_once(' ')?;
            Some(Container {
                id: id.to_string(),
                state: state.to_string(),
            })
        })
        .collect();
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found
}

/// Ids of the running containers carrying `label`.
pub fn running(label: &str) -> Vec<String> {
    containers(label)
        .into_iter()
        .filter(|c| c.state == "running")
        .map(|c| c.id)
        .collect()
}

/// `docker inspect -f FORMAT ID`.
pub fn inspect(id: &str, format: &str) -> String {
    docker(&["inspect", "-f", format, id])
}

/// Removes every container carrying one of the labels when dropped, so a failed test leaves
/// nothing running.
pub struct Cleanup(pub Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for label in &self.0 {
            let ids: Vec<String> = containers(label).into_iter().map(|c| c.id).collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.iter().map(String::as_str));
                let _ = Command::new("docker").args(&args).output();
            }
        }
    }
}
