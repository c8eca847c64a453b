//! What a project written by `infrakit plugin new` must answer as generated, in either language
//! (`plugin_cli` builds the Rust ones, `python_plugin` the Python ones).

use super::Env;

/// A generated instance plugin `name`, installed in `env`: provisions an instance tagged with
/// group `demo` (its id prefixed with the plugin's name, its file in the scratch directory),
/// lists exactly it by that tag, and refuses a typo in its properties naming the field. Returns
/// the instance's id, for the caller to label and destroy.
pub fn check_generated_instance(env: &Env, name: &str) -> String {
    let id = env
        .ok(
            &["instance", "provision", "--plugin", name],
            Some(r#"{"Properties": {"Note": "hi"}, "Tags": {"infrakit.group": "demo"}}"#),
        )
        .trim()
        .to_string();
    assert!(id.starts_with(&format!("{name}-")), "{id}");
    assert!(env.scratch(name).join(format!("{id}.json")).exists());
    let listed = env
        .run(
            &[
                "instance",
                "describe",
                "--plugin",
                name,
                "--tag",
                "infrakit.group=demo",
                "-o",
                "json",
            ],
            None,
        )
        .json();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["ID"].as_str())
        .collect();
    assert_eq!(ids, [id.as_str()], "{listed}");
    let typo = env
        .run(
            &["instance", "validate", "--plugin", name],
            Some(r#"{"Properties": {"Nte": "hi"}}"#),
        )
        .assert_failure();
    assert!(typo.contains("`Nte`"), "{typo}");
    id
}

/// A generated flavor plugin `name`, installed in `env`: `prepare` appends its `Init` lines and
/// adds its `Tags`, and `healthy` finds an instance with another role unhealthy (exit code 3).
pub fn check_generated_flavor(env: &Env, name: &str) {
    let props = r#"{"Init": ["systemctl start app"], "Tags": {"role": "web"}}"#;
    let prepared = env
        .run(
            &[
                "flavor",
                "prepare",
                "--plugin",
                name,
                "--properties",
                props,
                "--group",
                "demo",
                "-",
            ],
            Some(r#"{"Init": "echo boot"}"#),
        )
        .json();
    assert_eq!(prepared["Init"], "echo boot\nsystemctl start app");
    assert_eq!(prepared["Tags"]["role"], "web");
    let sick = env.run(
        &["flavor", "healthy", "--plugin", name, "--properties", props],
        Some(r#"{"ID": "i-1", "Tags": {"role": "db"}}"#),
    );
    assert_eq!(sick.code(), Some(3), "{}", sick.stderr());
}
