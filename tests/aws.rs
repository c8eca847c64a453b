//! instance-aws against a real EC2 emulator (moto) on loopback, with the host signing every
//! request (issue 13): passive calls checked against the emulator's own view, paging, real
//! signatures (moto's authentication on), credentials that never reach a guest, and a group that
//! converges, heals, rolls and is destroyed.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::daemon::Daemon;
use crate::support::http::Recorder;
use crate::support::moto::Moto;
use crate::support::{Env, guest, wait_until};

/// An environment whose commands sign with `secret` for moto's key, through a credentials
/// file and profile (the host's environment has no AWS variables).
fn signing_env(moto: &Moto, secret: &str, page_size: u32) -> (Env, String) {
    let env = Env::new();
    let file = env.data_dir().join("aws-credentials");
    std::fs::write(
        &file,
        format!(
            "[default]\naws_access_key_id = AKIDUNUSED\naws_secret_access_key = unused\n\n\
             [infrakit-test]\naws_access_key_id = {}\naws_secret_access_key = {secret}\n",
            moto.key
        ),
    )
    .unwrap();
    env.set_var("AWS_SHARED_CREDENTIALS_FILE", file.to_str().unwrap());
    let config = env.data_dir().join("infrakit.toml");
    std::fs::write(&config, moto.config("infrakit-test", page_size)).unwrap();
    (env, config.display().to_string())
}

fn cli(env: &Env, config: &str, args: &[&str], stdin: Option<&str>) -> crate::support::Run {
    let mut all = vec!["--config", config];
    all.extend(args);
    env.run(&all, stdin)
}

/// `instance describe --plugin instance-aws --tag TAG -o json`.
fn describe(env: &Env, config: &str, tag: &str) -> Value {
    cli(
        env,
        config,
        &[
            "instance",
            "describe",
            "--plugin",
            "instance-aws",
            "--tag",
            tag,
            "-o",
            "json",
        ],
        None,
    )
    .json()
}

#[test]
fn passive_calls_are_signed_by_the_host_and_seen_by_the_emulator() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(moto) = Moto::start(scratch.path(), true) else {
        return;
    };
    let (env, config) = signing_env(&moto, &moto.secret.clone(), 10);

    // plugin inspect says who signs, never the secret.
    let view = cli(
        &env,
        &config,
        &["plugin", "inspect", "instance-aws", "-o", "json"],
        None,
    )
    .json();
    let signed = view["granted"]["http_signed"].to_string();
    assert!(signed.contains("profile infrakit-test"), "{signed}");
    assert!(
        !view.to_string().contains(&moto.secret),
        "inspect shows the secret"
    );

    // provision: tags at launch, init as UserData.
    let spec = json!({
        "Properties": {"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"},
        "Tags": {"infrakit.group": "passive", "role": "db"},
        "Init": "#!/bin/sh\necho hello",
    })
    .to_string();
    let id = cli(
        &env,
        &config,
        &["instance", "provision", "--plugin", "instance-aws"],
        Some(&spec),
    )
    .stdout()
    .trim()
    .to_string();
    assert!(id.starts_with("i-"), "{id}");
    let seen = moto.boto(&format!(
        r#"
i = ec2.describe_instances(InstanceIds=["{id}"])["Reservations"][0]["Instances"][0]
ud = ec2.describe_instance_attribute(InstanceId="{id}", Attribute="userData")["UserData"]["Value"]
import base64
print(json.dumps({{"tags": {{t["Key"]: t["Value"] for t in i["Tags"]}}, "type": i["InstanceType"], "user_data": base64.b64decode(ud).decode()}}))
"#
    ));
    let seen: Value = serde_json::from_str(seen.trim()).unwrap();
    assert_eq!(seen["tags"]["infrakit.group"], "passive");
    assert_eq!(seen["tags"]["role"], "db");
    assert_eq!(seen["type"], "t3.micro");
    assert_eq!(seen["user_data"], "#!/bin/sh\necho hello");

    // describe by tag, label, destroy.
    let described = describe(&env, &config, "role=db");
    assert_eq!(described.as_array().unwrap().len(), 1, "{described}");
    assert_eq!(described[0]["ID"], id.as_str());
    cli(
        &env,
        &config,
        &[
            "instance",
            "label",
            "--plugin",
            "instance-aws",
            &id,
            "--tag",
            "color=blue",
        ],
        None,
    )
    .assert_success();
    let color = moto.boto(&format!(
        r#"
i = ec2.describe_instances(InstanceIds=["{id}"])["Reservations"][0]["Instances"][0]
print({{t["Key"]: t["Value"] for t in i["Tags"]}}["color"])
"#
    ));
    assert_eq!(color.trim(), "blue");
    cli(
        &env,
        &config,
        &["instance", "destroy", "--plugin", "instance-aws", &id],
        None,
    )
    .assert_success();
    let state = moto.instances("role", "db");
    assert!(
        state
            .iter()
            .all(|(_, s, _)| s == "terminated" || s == "shutting-down"),
        "{state:?}"
    );
    let described = describe(&env, &config, "role=db");
    assert_eq!(described, json!([]), "terminated instances are not listed");

    // More than a page: 120 instances, 10 a page.
    moto.boto(
        r#"
ec2.run_instances(ImageId="ami-12c6146b", InstanceType="t3.nano", MinCount=120, MaxCount=120,
    TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "infrakit.group", "Value": "paged"}]}])
"#,
    );
    let described = describe(&env, &config, "infrakit.group=paged");
    assert_eq!(described.as_array().unwrap().len(), 120);

    // A malformed property is refused at validate, with its path.
    let err = cli(
        &env,
        &config,
        &["instance", "validate", "--plugin", "instance-aws"],
        Some(r#"{"Properties": {"ImageId": "ami-12c6146b", "InstanceType": 42}}"#),
    )
    .assert_failure();
    assert!(err.contains("InstanceType"), "{err}");

    // A wrong secret in the host's credentials: AWS's own refusal comes back.
    let (wrong, wrong_config) = signing_env(&moto, "not-the-secret", 10);
    let err = cli(
        &wrong,
        &wrong_config,
        &["instance", "describe", "--plugin", "instance-aws"],
        None,
    )
    .assert_failure();
    assert!(err.contains("AuthFailure"), "{err}");
}

#[test]
fn a_guest_finds_no_credentials_and_unsigned_targets_get_no_signature() {
    let env = Env::new();
    let (signed, signed_port) = Recorder::tcp();
    let (plain, plain_port) = Recorder::tcp();
    let credentials = env.data_dir().join("aws-credentials");
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = AKIDHOSTONLY\naws_secret_access_key = host-secret\n",
    )
    .unwrap();
    env.set_var("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap());
    env.set_var("AWS_ACCESS_KEY_ID", "AKIDHOSTONLY");
    env.set_var("AWS_SECRET_ACCESS_KEY", "host-secret");
    env.install_plugin(
        "fixture-misbehave",
        Some(&format!(
            r#"
[http]
allow = ["http://127.0.0.1:{signed_port}", "http://127.0.0.1:{plain_port}"]

[[http.sign]]
target = "http://127.0.0.1:{signed_port}"
service = "ec2"
region = "us-east-1"
"#
        )),
    );
    let attempt = |action: Value| {
        let spec = json!({"Properties": action}).to_string();
        env.run(
            &["instance", "provision", "--plugin", "fixture-misbehave"],
            Some(&spec),
        )
    };
    for name in [
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SHARED_CREDENTIALS_FILE",
    ] {
        let out = attempt(json!({"Do": "env", "Name": name}));
        assert_eq!(out.stdout().trim(), "ok:<absent>", "{name}");
    }
    for key in ["aws_secret_access_key", "secret"] {
        let out = attempt(json!({"Do": "config", "Key": key}));
        assert_eq!(out.stdout().trim(), "ok:<absent>", "{key}");
    }
    let out = attempt(json!({"Do": "read", "Path": credentials.to_str().unwrap()}));
    assert!(!out.stdout().contains("host-secret") && !out.stderr().contains("host-secret"));

    // A request to the signed target leaves with the host's signature; the plugin's own
    // Authorization is not what arrives. A request elsewhere carries none.
    let url = format!("http://127.0.0.1:{signed_port}/");
    attempt(json!({"Do": "http", "Url": url, "Method": "POST", "Body": {"Action": "DescribeInstances"}}))
        .assert_success();
    attempt(json!({"Do": "http", "Url": format!("http://127.0.0.1:{plain_port}/"), "Method": "POST", "Body": {}}))
        .assert_success();
    let head = signed.seen.lock().unwrap()[0].head.to_ascii_lowercase();
    assert!(
        head.contains("authorization: aws4-hmac-sha256 credential=akidhostonly/"),
        "{head}"
    );
    assert!(!head.contains("host-secret"));
    let head = plain.seen.lock().unwrap()[0].head.to_ascii_lowercase();
    assert!(
        !head.contains("authorization") && !head.contains("x-amz-"),
        "{head}"
    );
    let _ = guest("fixture-misbehave");
}

#[test]
fn a_group_of_five_converges_heals_rolls_and_is_destroyed() {
    let scratch = tempfile::tempdir().unwrap();
    let Some(moto) = Moto::start(scratch.path(), false) else {
        return;
    };
    let (env, config) = signing_env(&moto, &moto.secret.clone(), 100);
    let _daemon = Daemon::start(&env, &["--config", &config, "--poll-interval", "500ms"]);
    let spec_path = env.data_dir().join("group.json");
    let spec = |instance_type: &str| {
        json!({
            "ID": "fleet",
            "Properties": {
                "Allocation": {"Size": 5},
                "Instance": {"Plugin": "instance-aws", "Properties": {
                    "RunInstancesInput": {"ImageId": "ami-12c6146b", "InstanceType": instance_type},
                    "Tags": {"project": "infrakit"},
                }},
                "Flavor": {"Plugin": "flavor-vanilla", "Properties": {"Init": ["echo {{index}}"]}},
                "Health": {"CheckInterval": "250ms", "GracePeriod": "0s"},
                "Updating": {"MaxSurge": 1, "MaxUnavailable": 0},
            }
        })
    };
    let commit = |s: Value| {
        std::fs::write(&spec_path, s.to_string()).unwrap();
        cli(
            &env,
            &config,
            &["group", "commit", spec_path.to_str().unwrap()],
            None,
        )
        .assert_success();
    };
    moto.boto(
        r#"
ec2.run_instances(ImageId="ami-12c6146b", InstanceType="t3.nano", MinCount=1, MaxCount=1,
    TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "project", "Value": "infrakit"}]}])
"#,
    );
    let stranger = moto.live("project", "infrakit");
    assert_eq!(stranger.len(), 1);

    commit(spec("t3.micro"));
    let converged = |n: usize, instance_type: &str| {
        let st = &cli(
            &env,
            &config,
            &["group", "describe", "fleet", "-o", "json"],
            None,
        )
        .json()["status"];
        let live = moto.instances("infrakit.group", "fleet");
        st["phase"] == "converged"
            && live
                .iter()
                .filter(|(_, s, _)| s != "terminated" && s != "shutting-down")
                .filter(|(_, _, t)| t == instance_type)
                .count()
                == n
    };
    wait_until("5 instances", Duration::from_secs(60), || {
        converged(5, "t3.micro")
    });
    let first = moto.live("infrakit.group", "fleet");
    assert_eq!(first.len(), 5);

    // Terminated behind the manager's back: replaced.
    moto.boto(&format!(
        r#"ec2.terminate_instances(InstanceIds=["{}"])"#,
        first[0]
    ));
    wait_until("a replacement", Duration::from_secs(30), || {
        let live = moto.live("infrakit.group", "fleet");
        live.len() == 5 && !live.contains(&first[0])
    });

    // A rolling update of InstanceType never has fewer than 5 or more than 6 live.
    commit(spec("t3.small"));
    let (mut low, mut high) = (usize::MAX, 0);
    wait_until("the rolling update", Duration::from_secs(120), || {
        let n = moto.live("infrakit.group", "fleet").len();
        low = low.min(n);
        high = high.max(n);
        converged(5, "t3.small")
    });
    assert!(
        low >= 5 && high <= 6,
        "live instances ranged {low}..={high}; allowed 5..=6"
    );

    // Destroy terminates exactly the group's instances.
    cli(
        &env,
        &config,
        &["group", "destroy", "fleet", "--wait"],
        None,
    )
    .assert_success();
    wait_until("the group gone", Duration::from_secs(30), || {
        moto.live("infrakit.group", "fleet").is_empty()
    });
    assert_eq!(
        moto.live("project", "infrakit"),
        stranger,
        "the stranger was touched"
    );
}
