//! Compiles every guest crate (the built-in plugins under `plugins/` and the test fixtures under
//! `tests/fixtures/plugins/`) to a `wasm32-wasip2` component, so that one `cargo build` or
//! `cargo test` builds everything and the binary can embed its built-ins.
//!
//! Each guest gets its own nested `cargo build -p`: the SDK's `instance` and `flavor` features
//! decide which world a component carries, and building guests together would unify them.
//! The nested builds use their own target directory, so they never wait on the outer build's lock.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const WASM_TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "guest";

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    for watched in [
        "wit",
        "sdk",
        "plugins",
        "tests/fixtures/plugins",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=INFRAKIT_SKIP_GUEST_BUILD");

    let target_dir = root.join("target").join("guest");
    let out_dir = target_dir.join(WASM_TARGET).join(PROFILE);
    println!("cargo:rustc-env=INFRAKIT_GUEST_DIR={}", out_dir.display());

    let mut guests = Vec::new();
    for parent in ["plugins", "tests/fixtures/plugins"] {
        guests.extend(guest_packages(&root.join(parent)));
    }
    guests.sort();

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for package in &guests {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&root)
            .args([
                "build",
                "--quiet",
                "--target",
                WASM_TARGET,
                "--profile",
                PROFILE,
            ])
            .args(["-p", package])
            .arg("--target-dir")
            .arg(&target_dir);
        // What the outer invocation set for *its* compilation must not leak into the guests':
        // clippy's wrapper, coverage or sanitizer flags, a host target override.
        for var in [
            "RUSTC_WORKSPACE_WRAPPER",
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_RUSTFLAGS",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "CARGO_BUILD_TARGET_DIR",
            "CARGO_PROFILE_RELEASE_DEBUG",
        ] {
            cmd.env_remove(var);
        }
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo to build guest {package}: {e}"));
        if !status.success() {
            panic!(
                "building guest plugin `{package}` for {WASM_TARGET} failed (see above). \
                 If the target is missing: rustup target add {WASM_TARGET}"
            );
        }
        let artifact = out_dir.join(format!("{}.wasm", package.replace('-', "_")));
        if !artifact.exists() {
            panic!(
                "guest `{package}` built but {} is missing",
                artifact.display()
            );
        }
    }
}

/// The package names of the crates directly under `dir`.
fn guest_packages(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for entry in entries.flatten() {
        let manifest = entry.path().join("Cargo.toml");
        let Ok(text) = fs::read_to_string(&manifest) else {
            continue;
        };
        let name = text
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix("name = \"")?.strip_suffix('"'))
            .unwrap_or_else(|| panic!("{}: no package name", manifest.display()));
        names.push(name.to_string());
    }
    names
}
