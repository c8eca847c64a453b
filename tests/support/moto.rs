//! A real EC2 emulator on loopback: moto's server (PyPI `moto[server]`), started by a test and
//! killed when dropped, and boto3 (which moto brings) as a second client that checks the
//! emulator's own view.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::etcd::free_port;
use super::process::Process;

/// The region every test uses.
pub const REGION: &str = "us-east-1";

/// A moto server.
pub struct Moto {
    _process: Process,
    pub port: u16,
    python: String,
    /// Credentials moto accepts (with authentication on, an IAM user's access key).
    pub key: String,
    pub secret: String,
}

fn tool(env_var: &str, default: &str, check: &[&str]) -> Option<String> {
    let candidate = std::env::var(env_var).unwrap_or_else(|_| default.into());
    let ok = Command::new(&candidate)
        .args(check)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(candidate);
    }
    assert!(
        std::env::var("CI").is_err(),
        "{candidate} is not usable; .ci/run installs moto[server] in its venv and sets {env_var}"
    );
    eprintln!(
        "skipping: {candidate} not usable (pip install 'moto[server]' in a venv, and set \
         INFRAKIT_MOTO_SERVER and INFRAKIT_PYTHON to its moto_server and python)"
    );
    None
}

impl Moto {
    /// Starts moto on a free port. With `auth`, moto checks signatures: the first three calls
    /// (creating an IAM user, its access key and its policy) go unchecked, every later one must
    /// be signed with that key.
    pub fn start(log_dir: &std::path::Path, auth: bool) -> Option<Moto> {
        let server = tool("INFRAKIT_MOTO_SERVER", "moto_server", &["--help"])?;
        let python = tool("INFRAKIT_PYTHON", "python3", &["-c", "import boto3"])?;
        let port = free_port();
        let mut cmd = Command::new(&server);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        if auth {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "3");
        }
        let mut process =
            Process::spawn(cmd, log_dir.join(format!("moto-{port}.log")), "moto_server");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            process.assert_running("starting");
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "moto did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut moto = Moto {
            _process: process,
            port,
            python,
            key: "AKIDINFRAKITTEST".into(),
            secret: "not-checked".into(),
        };
        if auth {
            let out = moto.boto(
                r#"
iam = session.client("iam", endpoint_url=endpoint)
iam.create_user(UserName="infrakit")
key = iam.create_access_key(UserName="infrakit")["AccessKey"]
iam.put_user_policy(UserName="infrakit", PolicyName="all", PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}')
print(key["AccessKeyId"], key["SecretAccessKey"])
"#,
            );
            let (key, secret) = out.trim().split_once(' ').expect("key and secret");
            moto.key = key.into();
            moto.secret = secret.into();
        }
        Some(moto)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs a Python snippet with `session` (boto3, this moto's credentials), `endpoint` and
    /// `ec2` (a client) defined; returns its stdout.
    pub fn boto(&self, script: &str) -> String {
        let prelude = format!(
            "import boto3, json, sys\nendpoint = {:?}\nsession = boto3.Session(aws_access_key_id={:?}, aws_secret_access_key={:?}, region_name={:?})\nec2 = session.client('ec2', endpoint_url=endpoint)\n",
            self.endpoint(),
            self.key,
            self.secret,
            REGION
        );
        let out = Command::new(&self.python)
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "boto3 script failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Instances carrying `tag:KEY=VALUE`, as moto sees them: (id, state, instance type).
    pub fn instances(&self, key: &str, value: &str) -> Vec<(String, String, String)> {
        let out = self.boto(&format!(
            r#"
pages = ec2.get_paginator("describe_instances").paginate(Filters=[{{"Name": "tag:{key}", "Values": ["{value}"]}}])
for page in pages:
    for r in page["Reservations"]:
        for i in r["Instances"]:
            print(i["InstanceId"], i["State"]["Name"], i["InstanceType"])
"#
        ));
        let mut found: Vec<(String, String, String)> = out
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                Some((
                    parts.next()?.to_string(),
                    parts.next()?.to_string(),
                    parts.next()?.to_string(),
                ))
            })
            .collect();
        found.sort();
        found
    }

    /// Ids of the instances carrying the tag that are neither shutting down nor terminated.
    pub fn live(&self, key: &str, value: &str) -> Vec<String> {
        self.instances(key, value)
            .into_iter()
            .filter(|(_, state, _)| state != "terminated" && state != "shutting-down")
            .map(|(id, _, _)| id)
            .collect()
    }

    /// The daemon config granting `instance-aws` this emulator, signed with `profile`.
    pub fn config(&self, profile: &str, page_size: u32) -> String {
        let endpoint = self.endpoint();
        format!(
            r#"[plugins.instance-aws]
config = {{ endpoint = "{endpoint}", region = "{REGION}", page_size = "{page_size}" }}

[plugins.instance-aws.http]
allow = ["{endpoint}"]

[[plugins.instance-aws.http.sign]]
target = "{endpoint}"
service = "ec2"
region = "{REGION}"
profile = "{profile}"
"#
        )
    }
}
