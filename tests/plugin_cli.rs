//! Passive use of plugins from the CLI (issue 2): the real binary, the real built-in plugins.

use serde_json::{Value, json};

use crate::support::scaffold::{check_generated_flavor, check_generated_instance};
use crate::support::{Env, guest};

fn ids(described: &Value) -> Vec<String> {
    let mut ids: Vec<String> = described
        .as_array()
        .expect("describe -o json prints an array")
        .iter()
        .map(|d| d["ID"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn plugin_ls_lists_both_builtins_with_kind_and_version() {
    let env = Env::new();
    let rows = env.run(&["plugin", "ls", "-o", "json"], None).json();
    let rows = rows.as_array().unwrap();
    let find = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {rows:?}"))
            .clone()
    };
    let file = find("instance-file");
    assert_eq!(file["kind"], "instance");
    assert_eq!(file["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(file["source"], "built-in");
    assert_eq!(file["status"], "ok");
    let vanilla = find("flavor-vanilla");
    assert_eq!(vanilla["kind"], "flavor");
    assert_eq!(vanilla["status"], "ok");

    let table = env.ok(&["plugin", "ls"], None);
    assert!(
        table.contains("instance-file") && table.contains("flavor-vanilla"),
        "{table}"
    );
}

#[test]
fn provision_describe_and_destroy_through_instance_file() {
    let env = Env::new();
    let web = env
        .ok(
            &["instance", "provision", "--plugin", "instance-file"],
            Some(r#"{"Properties": {"Prefix": "web"}, "Tags": {"group": "web", "tier": "front"}, "Init": "echo hi"}"#),
        )
        .trim()
        .to_string();
    let db = env
        .run(
            &[
                "instance",
                "provision",
                "--plugin",
                "instance-file",
                "-o",
                "json",
            ],
            Some(r#"{"Tags": {"group": "db"}, "LogicalID": "db1"}"#),
        )
        .json()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(web.starts_with("web-"), "{web}");
    assert_ne!(web, db);

    // The instance is a real file in the plugin's directory, holding the spec.
    let file = env.scratch("instance-file").join(format!("{web}.json"));
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(stored["Init"], "echo hi");
    assert_eq!(stored["Tags"]["tier"], "front");

    let all = env
        .run(
            &[
                "instance",
                "describe",
                "--plugin",
                "instance-file",
                "-o",
                "json",
            ],
            None,
        )
        .json();
    let mut expected = vec![web.clone(), db.clone()];
    expected.sort();
    assert_eq!(ids(&all), expected);

    let only_db = env
        .run(
            &[
                "instance",
                "describe",
                "--plugin",
                "instance-file",
                "--tag",
                "group=db",
                "-o",
                "json",
            ],
            None,
        )
        .json();
    assert_eq!(ids(&only_db), vec![db.clone()]);
    assert_eq!(only_db[0]["LogicalID"], "db1");

    let none = env
        .run(
            &[
                "instance",
                "describe",
                "--plugin",
                "instance-file",
                "--tag",
                "group=web",
                "--tag",
                "tier=back",
                "-o",
                "json",
            ],
            None,
        )
        .json();
    assert!(ids(&none).is_empty());

    env.ok(
        &["instance", "destroy", "--plugin", "instance-file", &web],
        None,
    );
    assert!(!file.exists());
    let left = env
        .run(
            &[
                "instance",
                "describe",
                "--plugin",
                "instance-file",
                "-o",
                "json",
            ],
            None,
        )
        .json();
    assert_eq!(ids(&left), vec![db]);

    let err = env
        .run(
            &["instance", "destroy", "--plugin", "instance-file", &web],
            None,
        )
        .assert_failure();
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn label_merges_tags() {
    let env = Env::new();
    let id = env
        .ok(
            &["instance", "provision", "--plugin", "instance-file"],
            Some(r#"{"Tags": {"a": "1"}}"#),
        )
        .trim()
        .to_string();
    env.ok(
        &[
            "instance",
            "label",
            "--plugin",
            "instance-file",
            &id,
            "--tag",
            "b=2",
        ],
        None,
    );
    let found = env
        .run(
            &[
                "instance",
                "describe",
                "--plugin",
                "instance-file",
                "--tag",
                "b=2",
                "-o",
                "json",
            ],
            None,
        )
        .json();
    assert_eq!(found[0]["Tags"]["a"], "1");
    assert_eq!(found[0]["ID"], Value::String(id));
}

#[test]
fn validate_rejects_bad_properties_naming_the_field() {
    let env = Env::new();
    env.ok(
        &["instance", "validate", "--plugin", "instance-file"],
        Some(r#"{"Properties": {"Prefix": "ok"}}"#),
    );
    let err = env
        .run(
            &["instance", "validate", "--plugin", "instance-file"],
            Some(r#"{"Properties": {"Prefix": 42}}"#),
        )
        .assert_failure();
    assert!(
        err.contains("instance-file") && err.contains("`Prefix`"),
        "{err}"
    );

    let err = env
        .run(
            &["instance", "validate", "--plugin", "instance-file"],
            Some(r#"{"Properties": {"Prefx": "a"}}"#),
        )
        .assert_failure();
    assert!(err.contains("Prefx"), "{err}");

    let err = env
        .run(
            &[
                "flavor",
                "validate",
                "--plugin",
                "flavor-vanilla",
                "--size",
                "2",
            ],
            Some(r#"{"Init": "not a list"}"#),
        )
        .assert_failure();
    assert!(
        err.contains("flavor-vanilla") && err.contains("`Init`"),
        "{err}"
    );
}

#[test]
fn malformed_specs_name_the_field_and_the_input() {
    let env = Env::new();
    let err = env
        .run(
            &["instance", "provision", "--plugin", "instance-file"],
            Some(r#"{"Tags": {"a": 1}}"#),
        )
        .assert_failure();
    assert!(err.contains("<stdin>") && err.contains("`Tags.a`"), "{err}");

    let spec = env.data_dir().join("spec.json");
    std::fs::write(&spec, r#"{"Tgas": {}}"#).unwrap();
    let err = env
        .run(
            &[
                "instance",
                "provision",
                "--plugin",
                "instance-file",
                spec.to_str().unwrap(),
            ],
            None,
        )
        .assert_failure();
    assert!(
        err.contains("spec.json") && err.contains("Tgas") && err.contains("expected one of"),
        "{err}"
    );

    let err = env
        .run(&["instance", "describe", "--plugin", "instance-nope"], None)
        .assert_failure();
    assert!(
        err.contains("instance-nope") && err.contains("instance-file"),
        "{err}"
    );

    let err = env
        .run(
            &["instance", "describe", "--plugin", "flavor-vanilla"],
            None,
        )
        .assert_failure();
    assert!(err.contains("is a flavor plugin"), "{err}");
}

#[test]
fn flavor_prepare_healthy_and_drain() {
    let env = Env::new();
    let props = r#"{"Init": ["start {{logical_id}} in {{group}}"], "Tags": {"role": "zk"}, "UnhealthyTags": {"health": "bad"}}"#;
    let prepared = env
        .run(
            &[
                "flavor",
                "prepare",
                "--plugin",
                "flavor-vanilla",
                "--properties",
                props,
                "--logical-id",
                "zk1",
                "--logical-id",
                "zk2",
                "--group",
                "zk",
            ],
            Some(r##"{"Init": "#!/bin/sh", "LogicalID": "zk1"}"##),
        )
        .json();
    assert_eq!(prepared["Init"], "#!/bin/sh\nstart zk1 in zk");
    assert_eq!(prepared["Tags"]["role"], "zk");

    let healthy = env.run(
        &[
            "flavor",
            "healthy",
            "--plugin",
            "flavor-vanilla",
            "--properties",
            props,
        ],
        Some(r#"{"ID": "i-1", "Tags": {"health": "ok"}}"#),
    );
    healthy.assert_success();
    assert_eq!(healthy.stdout().trim(), "healthy");

    let sick = env.run(
        &[
            "flavor",
            "healthy",
            "--plugin",
            "flavor-vanilla",
            "--properties",
            props,
        ],
        Some(r#"{"ID": "i-1", "Tags": {"health": "bad"}}"#),
    );
    assert_eq!(sick.code(), Some(3), "unhealthy exits 3: {}", sick.stderr());
    assert_eq!(sick.stdout().trim(), "unhealthy");

    env.ok(
        &["flavor", "drain", "--plugin", "flavor-vanilla"],
        Some(r#"{"ID": "i-1"}"#),
    );
}

#[test]
fn corrupt_and_wrong_world_plugins_are_reported_and_builtins_keep_working() {
    let env = Env::new();
    let dir = env.plugins_dir();
    std::fs::write(dir.join("corrupt.wasm"), b"\0asm\x0d\0\x01\0garbage").unwrap();
    std::fs::copy(guest("fixture-wrong-world"), dir.join("greeter.wasm")).unwrap();

    let rows = env.run(&["plugin", "ls", "-o", "json"], None).json();
    let rows = rows.as_array().unwrap();
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap().clone();

    let corrupt = row("corrupt");
    assert_eq!(corrupt["status"], "error");
    let msg = corrupt["error"].as_str().unwrap();
    assert!(
        msg.contains("corrupt.wasm") && msg.contains("not a valid WebAssembly component"),
        "{msg}"
    );

    let wrong = row("greeter");
    assert_eq!(wrong["status"], "error");
    let msg = wrong["error"].as_str().unwrap();
    assert!(
        msg.contains("greeter.wasm")
            && msg.contains("not an infrakit plugin")
            && msg.contains("fixture:wrong/greeter"),
        "{msg}"
    );

    assert_eq!(row("instance-file")["status"], "ok");
    assert_eq!(row("flavor-vanilla")["status"], "ok");
    let id = env.ok(
        &["instance", "provision", "--plugin", "instance-file"],
        Some("{}"),
    );
    assert!(!id.trim().is_empty());

    let table = env.ok(&["plugin", "ls"], None);
    assert!(
        table.contains("Not loaded") && table.contains("corrupt.wasm"),
        "{table}"
    );
}

#[test]
fn a_plugin_file_named_unlike_its_metadata_is_refused() {
    let env = Env::new();
    let dir = env.plugins_dir();
    // The built-in under its own name in the directory would clash; under another it must
    // be refused because its metadata names it differently.
    std::fs::copy(guest("instance-file"), dir.join("instance-copy.wasm")).unwrap();
    let copy = env.plugin_row(&[], "instance-copy");
    assert_eq!(copy["status"], "error");
    assert!(
        copy["error"]
            .as_str()
            .unwrap()
            .contains("instance-file.wasm"),
        "{copy}"
    );
}

/// Issue 9: a describe racing deletions of other files in the same directory must never return
/// a partial list (the controller would provision the "missing" instances again). Either every
/// stable instance is listed, or the call fails (transient) and the controller retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_never_returns_a_partial_list_while_files_come_and_go() {
    use infrakit::plugin::{InstanceSpec, Registry, RegistryConfig, Tags};

    let env = Env::new();
    let mut config = RegistryConfig::under(env.data_dir());
    config.cache_dir = Some(crate::support::shared_cache_dir());
    let registry = Registry::load(config).await.unwrap();
    let plugin = registry.instance("instance-file").unwrap();
    let tags: Tags = [("infrakit.group".to_string(), "stable".to_string())].into();
    let mut stable = Vec::new();
    for _ in 0..40 {
        let spec = InstanceSpec {
            tags: tags.clone(),
            ..Default::default()
        };
        stable.push(plugin.provision(&spec).await.unwrap());
    }
    stable.sort();

    // Another writer creates and deletes files in the same directory all the while.
    let dir = env.scratch("instance-file");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for i in 0..20 {
                    let _ = std::fs::write(dir.join(format!("churn-{i}.json")), "{}");
                }
                for i in 0..20 {
                    let _ = std::fs::remove_file(dir.join(format!("churn-{i}.json")));
                }
                n += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            n
        })
    };
    let (mut complete, mut refused) = (0, 0);
    for _ in 0..300 {
        match plugin.describe(&tags, false).await {
            Ok(found) => {
                let mut ids: Vec<String> = found.into_iter().map(|d| d.id).collect();
                ids.sort();
                assert_eq!(ids, stable, "a partial or padded listing");
                complete += 1;
            }
            Err(e) => {
                let msg = infrakit::error_chain(&e);
                assert!(msg.contains("transient"), "{msg}");
                refused += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = churn.join().unwrap();
    assert!(rounds > 10, "the churn hardly ran ({rounds} rounds)");
    // Under this churn some listings may be refused (transient); most succeed.
    eprintln!("{complete} complete listings, {refused} refused, {rounds} churn rounds");
    assert!(
        complete > 200,
        "{complete} complete listings, {refused} refused"
    );
}

#[test]
fn a_plugin_whose_metadata_hangs_fails_its_load_and_passive_commands_name_why() {
    let env = Env::new();
    // Metadata that takes a minute: over the default 5 s metadata limit, however long the
    // plugin's per-call limits.
    env.install_plugin(
        "fixture-misbehave",
        Some("[config]\nslow_metadata_ms = \"60000\"\n[limits]\nwall = \"2m\"\ncpu = \"2m\"\n"),
    );
    let row = env.plugin_row(&[], "fixture-misbehave");
    assert_eq!(row["status"], "error", "{row}");
    let msg = row["error"].as_str().unwrap();
    assert!(
        msg.contains("metadata") && msg.contains("limit of 5s"),
        "{msg}"
    );
    // A passive command on another plugin loads that plugin alone.
    let out = env.ok(
        &[
            "instance",
            "describe",
            "--plugin",
            "instance-file",
            "-o",
            "json",
        ],
        None,
    );
    assert_eq!(out.trim(), "[]");
    // One on the failed plugin says why it is not there, not just "no plugin named".
    let err = env
        .run(
            &["instance", "describe", "--plugin", "fixture-misbehave"],
            None,
        )
        .assert_failure();
    assert!(
        err.contains("did not load") && err.contains("metadata exceeded its wall-clock limit"),
        "{err}"
    );

    // A plugin whose metadata answers has it cached with its compiled artifact: the next load
    // does not ask again.
    let env = Env::new();
    env.install_plugin("fixture-misbehave", None);
    env.set_var("INFRAKIT_LOG", "infrakit=debug");
    let first = env.run(&["plugin", "ls"], None);
    first.assert_success();
    let second = env.run(&["plugin", "ls"], None);
    assert!(
        second
            .stderr()
            .lines()
            .any(|l| l.contains("metadata read from the cache") && l.contains("fixture-misbehave")),
        "no cached metadata on the second load: {}",
        second.stderr()
    );
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let env = Env::new();
    // `infrakit plugin ls | head -0`: the reader is gone before the first line is printed
    // (loading the plugins takes longer than closing our end).
    let mut child = env
        .command()
        .args(["plugin", "ls"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}

#[test]
fn a_plugin_built_against_the_earlier_wit_still_loads_and_works() {
    let env = Env::new();
    env.install_plugin("fixture-compat-wit-0-1", None);
    let row = env.plugin_row(&[], "fixture-compat-wit-0-1");
    assert_eq!(row["status"], "ok", "{row}");
    let spec = json!({"Properties": {}, "Tags": {"a": "1", "b": "2"}}).to_string();
    let id = env.ok(
        &[
            "instance",
            "provision",
            "--plugin",
            "fixture-compat-wit-0-1",
        ],
        Some(&spec),
    );
    assert_eq!(id.trim(), "compat-2");
}

#[test]
fn plugin_install_checks_the_component_and_places_it_precompiled_under_its_own_name() {
    let env = Env::new();
    let work = env.data_dir().join("build");
    std::fs::create_dir_all(&work).unwrap();
    let dir = env.plugins_dir();
    let placed = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    };
    // Refused, with nothing placed: a corrupt file, a component of another world, a name that
    // is not its own, a grant file with a mistake.
    let corrupt = work.join("corrupt.wasm");
    std::fs::write(&corrupt, b"\0asm\x0d\0\x01\0garbage").unwrap();
    let err = env
        .run(&["plugin", "install", corrupt.to_str().unwrap()], None)
        .assert_failure();
    assert!(err.contains("not a valid WebAssembly component"), "{err}");
    let wrong = work.join("greeter.wasm");
    std::fs::copy(guest("fixture-wrong-world"), &wrong).unwrap();
    let err = env
        .run(&["plugin", "install", wrong.to_str().unwrap()], None)
        .assert_failure();
    assert!(err.contains("not an infrakit plugin"), "{err}");
    // As Cargo names the file: with underscores.
    let built = work.join("fixture_flavor_tag.wasm");
    std::fs::copy(guest("fixture-flavor-tag"), &built).unwrap();
    let err = env
        .run(
            &[
                "plugin",
                "install",
                built.to_str().unwrap(),
                "--name",
                "other",
            ],
            None,
        )
        .assert_failure();
    assert!(
        err.contains("calls itself \"fixture-flavor-tag\", not \"other\""),
        "{err}"
    );
    let grants = work.join("grants.toml");
    std::fs::write(&grants, "[limits]\nwall = \"later\"\n").unwrap();
    let err = env
        .run(
            &[
                "plugin",
                "install",
                built.to_str().unwrap(),
                "--grants",
                grants.to_str().unwrap(),
            ],
            None,
        )
        .assert_failure();
    assert!(err.contains("limits.wall"), "{err}");
    assert!(placed().is_empty(), "{:?}", placed());

    // A good one: named as it names itself, its grants beside it, compiled into the cache the
    // daemon reads, nothing half-written left behind.
    std::fs::write(&grants, "[config]\ngreeting = \"hi\"\n").unwrap();
    let out = env.ok(
        &[
            "plugin",
            "install",
            built.to_str().unwrap(),
            "--grants",
            grants.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        out.contains("installed fixture-flavor-tag (flavor plugin"),
        "{out}"
    );
    assert_eq!(
        placed(),
        ["fixture-flavor-tag.toml", "fixture-flavor-tag.wasm"]
    );
    assert!(
        std::fs::read_dir(env.data_dir().join("scratch"))
            .map(|d| d
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().starts_with("install-")))
            .unwrap_or(true),
        "the trial load's scratch directory was left behind"
    );
    let row = env.plugin_row(&[], "fixture-flavor-tag");
    assert_eq!(row["status"], "ok");
    assert_eq!(row["cached"], true, "{row}");
    assert_eq!(
        row["size"].as_u64().unwrap(),
        std::fs::metadata(&built).unwrap().len()
    );
    let table = env.ok(&["plugin", "ls"], None);
    assert!(table.contains("(cached)"), "{table}");
}

/// Cargo, for a generated project: the one running these tests, without what the outer
/// invocation set for its own compilation.
fn nested_cargo(dir: &std::path::Path, target: &std::path::Path, args: &[&str]) -> String {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(dir)
        .args(args)
        .env("CARGO_TARGET_DIR", target);
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "cargo {args:?} in {}:\n{text}",
        dir.display()
    );
    text
}

/// `plugin new` writes a project per kind that passes its own native tests, builds to a
/// component, installs and answers through the real host as generated; it refuses a bad name
/// and a directory that is not empty.
#[test]
fn plugin_new_projects_build_test_install_and_answer_as_generated() {
    let env = Env::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = env.data_dir().join("projects");
    // Shared by both projects and kept between runs (their dependencies build once).
    let target = root.join("target").join("scaffold");
    let sdk = root.join("sdk");
    let new = |kind: &str, name: &str| -> std::path::PathBuf {
        let dir = work.join(name);
        let out = env.ok(
            &[
                "plugin",
                "new",
                name,
                "--kind",
                kind,
                "--dir",
                dir.to_str().unwrap(),
                "--sdk",
                sdk.to_str().unwrap(),
            ],
            None,
        );
        assert!(
            out.contains("src/lib.rs") && out.contains(&format!("{name}.toml")),
            "{out}"
        );
        // The workspace's lock: the same dependency versions, nothing to fetch.
        std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
        let tested = nested_cargo(&dir, &target, &["test", "--quiet"]);
        assert!(tested.contains("2 passed"), "{tested}");
        nested_cargo(
            &dir,
            &target,
            &["build", "--quiet", "--release", "--target", "wasm32-wasip2"],
        );
        let artifact = target
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        let grants = dir.join(format!("{name}.toml"));
        env.install_built(&artifact, &grants, name, kind);
        dir
    };

    new("instance", "my-machines");
    let id = check_generated_instance(&env, "my-machines");
    env.ok(
        &["instance", "destroy", "--plugin", "my-machines", &id],
        None,
    );

    new("flavor", "my-role");
    check_generated_flavor(&env, "my-role");

    // Refused, with nothing written: a name that is not a plugin name, a directory in use.
    let err = env
        .run(&["plugin", "new", "My_Plugin", "--kind", "flavor"], None)
        .assert_failure();
    assert!(err.contains("is not a plugin name"), "{err}");
    let used = work.join("my-role");
    let err = env
        .run(
            &[
                "plugin",
                "new",
                "again",
                "--kind",
                "flavor",
                "--dir",
                used.to_str().unwrap(),
            ],
            None,
        )
        .assert_failure();
    assert!(err.contains("is not empty; nothing was written"), "{err}");
}
