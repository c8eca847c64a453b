//! instance-docker and flavor-http against the machine's real Docker Engine (issue 12), with the
//! example's recommended grants (`examples/docker/infrakit.toml`) as they ship.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::docker::{self, Cleanup, containers, docker, inspect, running};
use crate::support::manager::Manager;
use crate::support::{Env, wait_until};

/// The daemon's poll interval: long enough that the fixed cost of a replacement (plugin calls,
/// the engine's create) on two busy cores is small next to it.
const POLL: Duration = Duration::from_secs(2);

fn example_grants() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/docker/infrakit.toml")
}

fn web_spec(id: &str, image: &str, env: &[&str]) -> Value {
    json!({
        "ID": id,
        "Properties": {
            "Allocation": {"Size": 3},
            "Instance": {"Plugin": "instance-docker", "Properties": {
                "Image": image,
                "Ports": ["80"],
                "InitAs": "command",
                "Env": env,
                "StopTimeout": 1,
            }},
            "Flavor": {"Plugin": "flavor-http", "Properties": {
                // httpd in the background and a sleeping PID 1: the container outlives its
                // server, which is what an application-aware check must notice.
                "Init": ["httpd -p 80 -h /www && exec sleep 2147483647"],
                "Url": "http://127.0.0.1:{port:80}/",
                "Timeout": "500ms",
                "FailureThreshold": 2,
            }},
            "Health": {"CheckInterval": "250ms", "GracePeriod": "3s"},
            "Updating": {"MaxSurge": 1, "MaxUnavailable": 0},
        }
    })
}

/// Converged with every instance healthy and current.
fn healthy(m: &Manager, id: &str) -> bool {
    let st = m.status(id);
    st["phase"] == "converged"
        && st["instances"].as_array().is_some_and(|i| {
            i.len() == 3
                && i.iter()
                    .all(|i| i["health"] == "healthy" && i["current"] == true)
        })
}

#[test]
fn a_group_of_containers_converges_heals_rolls_survives_a_restart_and_is_destroyed() {
    if docker::engine().is_none() {
        return;
    }
    let image = docker::image();
    let env = Env::new();
    let group = format!("web-{}", std::process::id());
    let label = format!("infrakit.group={group}");
    let other = format!("other-{}", std::process::id());
    let stranger = format!("stranger-{}", std::process::id());
    let _cleanup = Cleanup(vec![
        label.clone(),
        format!("infrakit.group={other}"),
        format!("test.stranger={stranger}"),
    ]);
    let m = Manager::new(&env, &example_grants(), POLL);
    let mut daemon = m.serve();

    // Two containers that are not ours: no group label, and another group's label. Started by
    // hand, their start also measures what the engine takes for `docker run -d`.
    let started = Instant::now();
    docker(&[
        "run",
        "-d",
        "--label",
        &format!("test.stranger={stranger}"),
        image,
        "sleep",
        "600",
    ]);
    let docker_run = started.elapsed();
    docker(&[
        "run",
        "-d",
        "--label",
        &format!("test.stranger={stranger}"),
        "--label",
        &format!("infrakit.group={other}"),
        image,
        "sleep",
        "600",
    ]);

    m.commit(&web_spec(&group, image, &["VERSION=1"]));
    wait_until("3 healthy containers", Duration::from_secs(60), || {
        healthy(&m, &group)
    });
    let first = running(&label);
    assert_eq!(first.len(), 3, "{:?}", containers(&label));
    for id in &first {
        assert_eq!(inspect(id, "{{.HostConfig.Privileged}}"), "false");
        let ports = inspect(id, "{{json .NetworkSettings.Ports}}");
        assert!(
            ports.contains("\"HostIp\":\"127.0.0.1\""),
            "published on loopback only: {ports}"
        );
    }

    // A container removed behind our back is replaced within two poll intervals: the engine's
    // own record of the replacement's create is the measure (the test's polling of `docker ps`
    // competes for the same two cores).
    docker(&["rm", "-f", &first[0]]);
    let removed = std::time::SystemTime::now();
    wait_until("a replacement", Duration::from_secs(30), || {
        running(&label).len() == 3
    });
    let since = removed.duration_since(std::time::UNIX_EPOCH).unwrap();
    let created = docker(&[
        "events",
        "--since",
        &format!("{}.{:09}", since.as_secs(), since.subsec_nanos()),
        "--until",
        &format!(
            "{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 1
        ),
        "--filter",
        &format!("label={label}"),
        "--filter",
        "event=create",
        "--format",
        "{{.TimeNano}}",
    ]);
    let created: u128 = created
        .lines()
        .next()
        .expect("a create event")
        .parse()
        .unwrap();
    let took = Duration::from_nanos((created - since.as_nanos()) as u64);
    eprintln!(
        "lost container replaced (created) {took:?} after its removal; docker run -d takes {docker_run:?}"
    );
    assert!(
        took <= 2 * POLL,
        "replacement created {took:?} after the removal; allowed 2 poll intervals"
    );
    assert!(!running(&label).contains(&first[0]));
    wait_until("healthy again", Duration::from_secs(30), || {
        healthy(&m, &group)
    });

    // A container whose server dies while the container lives on is judged by flavor-http:
    // unhealthy after its threshold, then replaced.
    let victim = running(&label)[1].clone();
    docker(&["exec", &victim, "killall", "httpd"]);
    wait_until(
        "the unhealthy container replaced",
        Duration::from_secs(60),
        || !running(&label).contains(&victim) && healthy(&m, &group),
    );
    let events = m.cli(&["events", "-o", "json"]);
    assert!(
        events.contains(&victim[..12]) && events.contains("unhealthy"),
        "no event says why {victim} went: {events}"
    );

    // A rolling update (new Env) never runs fewer than 3 or more than 3 + MaxSurge containers,
    // and ends with all 3 on the new configuration.
    m.commit(&web_spec(&group, image, &["VERSION=2"]));
    let (mut low, mut high) = (usize::MAX, 0);
    wait_until("the rolling update", Duration::from_secs(120), || {
        let n = running(&label).len();
        low = low.min(n);
        high = high.max(n);
        healthy(&m, &group)
            && running(&label)
                .iter()
                .all(|id| inspect(id, "{{json .Config.Env}}").contains("VERSION=2"))
    });
    assert!(
        low >= 3 && high <= 4,
        "running containers ranged {low}..={high}; allowed 3..=4"
    );
    eprintln!("rolling update: {low}..={high} containers running");
    let rolled = running(&label);
    assert_eq!(rolled.len(), 3);

    // A restarted daemon finds its containers by label and leaves them alone.
    let started_at: Vec<String> = rolled
        .iter()
        .map(|id| inspect(id, "{{.State.StartedAt}}"))
        .collect();
    daemon.terminate();
    let _daemon = m.serve();
    std::thread::sleep(3 * POLL);
    assert!(healthy(&m, &group), "{}", m.status(&group));
    assert_eq!(
        running(&label),
        rolled,
        "the restart touched the containers"
    );
    let again: Vec<String> = rolled
        .iter()
        .map(|id| inspect(id, "{{.State.StartedAt}}"))
        .collect();
    assert_eq!(again, started_at);

    // Destroying the group removes its containers and no one else's.
    m.cli(&["group", "destroy", &group, "--wait"]);
    wait_until("no container of the group", Duration::from_secs(30), || {
        containers(&label).is_empty()
    });
    let strangers = running(&format!("test.stranger={stranger}"));
    assert_eq!(strangers.len(), 2, "a stranger container was touched");
}

#[test]
fn a_missing_image_is_invalid_and_an_unreachable_engine_transient() {
    if docker::engine().is_none() {
        return;
    }
    let env = Env::new();
    let config = example_grants().display().to_string();
    let spec = json!({"Properties": {"Image": "infrakit-no-such-image:404"}, "Tags": {"infrakit.group": "nope"}})
        .to_string();
    let run = env.run(
        &[
            "--config",
            &config,
            "instance",
            "provision",
            "--plugin",
            "instance-docker",
        ],
        Some(&spec),
    );
    let err = run.assert_failure();
    assert!(
        err.contains("infrakit-no-such-image:404") && err.contains("invalid"),
        "{err}"
    );

    // `plugin inspect` shows the socket and the rules the host enforces.
    let view = env
        .run(
            &[
                "--config",
                &config,
                "plugin",
                "inspect",
                "instance-docker",
                "-o",
                "json",
            ],
            None,
        )
        .json();
    let granted = &view["granted"];
    assert_eq!(
        granted["http_unix"],
        json!(["http://docker -> /var/run/docker.sock"])
    );
    let rules = granted["http_rules"].to_string();
    assert!(
        rules.contains("POST /containers/create") && rules.contains("/HostConfig/Privileged"),
        "{rules}"
    );
    assert!(
        !rules.contains("/exec") && !rules.contains("/images/create"),
        "{rules}"
    );

    // The same grants pointing at a socket where no engine listens.
    let text = std::fs::read_to_string(example_grants()).unwrap();
    let gone = env.data_dir().join("no-engine.sock");
    let moved = text.replace("/var/run/docker.sock", gone.to_str().unwrap());
    let moved_path = env.data_dir().join("moved.toml");
    std::fs::write(&moved_path, moved).unwrap();
    let run = env.run(
        &[
            "--config",
            moved_path.to_str().unwrap(),
            "instance",
            "describe",
            "--plugin",
            "instance-docker",
        ],
        None,
    );
    let err = run.assert_failure();
    assert!(err.contains("transient"), "{err}");
}
