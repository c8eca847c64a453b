//! Several managers on one etcd: a real 3-member etcd cluster on loopback ports, three
//! `infrakit serve` processes with their own data directories, and `instance-file` granted one
//! shared directory, so that every manager sees the same instances.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use infrakit::controller::{Controller, EventSink, Options};
use infrakit::event::{Event, EventKind};
use infrakit::leader::Fence;
use infrakit::plugin::{Registry, RegistryConfig};
use infrakit::spec::GroupSpec;
use infrakit::store::{EmbeddedStore, Store};

use serde_json::{Value, json};

use crate::support::daemon::Daemon;
use crate::support::etcd::Etcd;
use crate::support::group::{instances_in, write_spec};
use crate::support::{Env, shared_cache_dir};

/// The lease TTL the tests run with: failover is expected within TTL + 2 s.
const TTL: Duration = Duration::from_secs(2);

struct Manager {
    env: Env,
    daemon: Daemon,
}

impl Manager {
    fn status(&self) -> Option<Value> {
        let (code, body) = self.daemon.http("GET", "/v1/status", b"");
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// Writes group `id` (see `write_spec`) and commits it through this manager, with `args`
    /// after the file; the command's output.
    fn commit(&self, id: &str, allocation: Value, extra: Value, args: &[&str]) -> String {
        let spec = self.env.data_dir().join(format!("{id}.json"));
        write_spec(&spec, id, allocation, extra);
        let mut all = vec!["group", "commit", spec.to_str().unwrap()];
        all.extend(args);
        self.env.ok(&all, None)
    }

    /// `Some(term)` if this manager says it leads.
    fn term(&self) -> Option<i64> {
        let s = self.status()?;
        (s["leadership"]["role"] == "leader").then(|| s["leadership"]["term"].as_i64())?
    }
}

struct Cluster {
    etcd: Etcd,
    shared: tempfile::TempDir,
    managers: Vec<Option<Manager>>,
}

impl Cluster {
    /// A 3-member etcd and `n` managers under `prefix`. `None` when etcd is not installed
    /// (and not under CI).
    fn start(n: usize, prefix: &str) -> Option<Cluster> {
        let etcd = Etcd::start(3)?;
        let shared = tempfile::Builder::new()
            .prefix("infrakit-shared-")
            .tempdir()
            .unwrap();
        let mut c = Cluster {
            etcd,
            shared,
            managers: Vec::new(),
        };
        for i in 0..n {
            let m = c.manager(i, prefix);
            c.managers.push(Some(m));
        }
        Some(c)
    }

    fn manager(&self, i: usize, prefix: &str) -> Manager {
        let env = Env::new();
        let config = env.data_dir().join("infrakit.toml");
        std::fs::write(
            &config,
            format!(
                "[plugins.instance-file]\nconfig = {{ dir = \"/instances\" }}\n\
                 [[plugins.instance-file.files]]\nhost = {:?}\nguest = \"/instances\"\nmode = \"read-write\"\n",
                self.shared.path().display().to_string()
            ),
        )
        .unwrap();
        let url = self.etcd.url();
        let ttl = format!("{}s", TTL.as_secs());
        let node = format!("m{i}");
        let daemon = Daemon::start(
            &env,
            &[
                "--config",
                config.to_str().unwrap(),
                "--store",
                &url,
                "--store-prefix",
                prefix,
                "--lease-ttl",
                &ttl,
                "--node",
                &node,
            ],
        );
        Manager { env, daemon }
    }

    fn running(&self) -> impl Iterator<Item = (usize, &Manager)> {
        self.managers
            .iter()
            .enumerate()
            .filter_map(|(i, m)| Some((i, m.as_ref()?)))
    }

    /// Waits until exactly one running manager leads; (its index, its term).
    fn leader(&self, within: Duration) -> (usize, i64) {
        let deadline = Instant::now() + within;
        loop {
            let leaders: Vec<(usize, i64)> = self
                .running()
                .filter_map(|(i, m)| Some((i, m.term()?)))
                .collect();
            if let [one] = leaders[..] {
                return one;
            }
            assert!(
                Instant::now() < deadline,
                "no single leader within {within:?}: {leaders:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        self.running()
            .map(|(i, m)| format!("--- manager {i}:\n{}", m.daemon.output()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn instances(&self) -> Vec<Value> {
        instances_in(self.shared.path())
    }
}

/// Whether `m`'s controller reports group `id` converged with `n` healthy instances.
fn converged(m: &Manager, id: &str, n: usize) -> bool {
    let (code, body) = m.daemon.http("GET", &format!("/v1/groups/{id}"), b"");
    let Ok(g) = serde_json::from_str::<Value>(&body) else {
        return false;
    };
    let healthy = g["status"]["instances"]
        .as_array()
        .map_or(0, |i| i.iter().filter(|i| i["health"] == "healthy").count());
    code == 200 && g["status"]["phase"] == "converged" && healthy == n
}

fn tag(v: &Value, key: &str) -> String {
    v["Tags"][key].as_str().unwrap_or("").to_string()
}

fn file_of(dir: &Path, v: &Value) -> PathBuf {
    dir.join(format!("{}.json", v["ID"].as_str().unwrap()))
}

fn wait_until(what: &str, within: Duration, c: &Cluster, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn a_commit_on_a_follower_converges_under_the_leader_and_a_killed_leader_is_replaced() {
    let Some(mut c) = Cluster::start(3, "/ha-failover/") else {
        return;
    };
    let (leader, term) = c.leader(Duration::from_secs(20));
    let follower = (leader + 1) % 3;

    // Committed on a follower: written to etcd, reconciled by the leader.
    let m = c.managers[follower].as_ref().unwrap();
    // A follower's event stream shows what the leader records.
    let mut follow = m.env.command();
    follow.args(["events", "--follow", "--group", "web", "-o", "json"]);
    let follower_events = crate::support::process::Process::spawn(
        follow,
        m.env.data_dir().join("events.log"),
        "infrakit events --follow",
    );
    // `--wait` on the follower follows the status the leader publishes in etcd.
    let out = m.commit(
        "web",
        json!({"Size": 3}),
        json!({}),
        &["--wait", "--timeout", "60s"],
    );
    assert!(out.contains("converged"), "{out}");
    assert_eq!(c.instances().len(), 3);
    for i in c.instances() {
        assert_eq!(tag(&i, "infrakit.term"), term.to_string(), "{i}");
    }
    wait_until(
        "the leader's events on a follower's stream",
        Duration::from_secs(5),
        &c,
        || {
            follower_events
                .output()
                .matches("instance-provisioned")
                .count()
                == 3
        },
    );
    drop(follower_events);
    // Every manager answers reads from etcd, the status included.
    for (_, m) in c.running() {
        let ls: Value =
            serde_json::from_str(&m.env.ok(&["group", "ls", "-o", "json"], None)).unwrap();
        assert_eq!(ls[0]["id"], "web", "{ls}");
        assert_eq!(ls[0]["status"]["phase"], "converged", "{ls}");
        assert_eq!(ls[0]["status"]["revision"], 1, "{ls}");
    }

    // The leader crashes: another takes over within TTL + 2 s and heals.
    c.managers[leader].as_mut().unwrap().daemon.kill();
    c.managers[leader] = None;
    let killed = Instant::now();
    let (new_leader, new_term) = c.leader(TTL + Duration::from_secs(2));
    let failover = killed.elapsed();
    eprintln!("failover after SIGKILL of the leader: {failover:?}");
    assert_ne!(new_leader, leader);
    assert!(new_term > term, "{new_term} > {term}");

    let victim = c.instances().pop().unwrap();
    std::fs::remove_file(file_of(c.shared.path(), &victim)).unwrap();
    wait_until(
        "the new leader replaces a lost instance",
        Duration::from_secs(10),
        &c,
        || {
            let now = c.instances();
            now.len() == 3
                && now
                    .iter()
                    .any(|i| tag(i, "infrakit.term") == new_term.to_string())
        },
    );
    let ids: Vec<String> = c.instances().iter().map(|i| i["ID"].to_string()).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids.len(), unique.len());

    // A manager that stops resigns: the last one leads at once, without waiting out the TTL.
    let stopping = Instant::now();
    let status = c.managers[new_leader].as_mut().unwrap().daemon.terminate();
    assert!(status.success(), "{status}");
    c.managers[new_leader] = None;
    let (_, last_term) = c.leader(Duration::from_secs(5));
    assert!(last_term > new_term);
    eprintln!(
        "handover after SIGTERM of the leader: {:?}",
        stopping.elapsed()
    );
}

/// The leader dies in the middle of a rolling update of pets: the next leader finishes it from
/// what it observes. Sampled all along, the group never has more than Size + MaxSurge
/// instances, and no logical id is ever held twice at the end.
#[test]
fn a_rolling_update_in_flight_when_the_leader_dies_is_finished_by_the_next() {
    let Some(mut c) = Cluster::start(3, "/ha-rolling/") else {
        return;
    };
    let (leader, _) = c.leader(Duration::from_secs(20));
    let m = c.managers[leader].as_ref().unwrap();
    let pets = json!({"LogicalIDs": ["zk1", "zk2", "zk3", "zk4"]});
    let policy = json!({"Updating": {"MaxSurge": 1, "MaxUnavailable": 0}});
    m.commit("zk", pets.clone(), policy.clone(), &[]);
    wait_until("4 pets, converged", Duration::from_secs(20), &c, || {
        converged(c.managers[leader].as_ref().unwrap(), "zk", 4)
    });
    let old_sha = tag(&c.instances()[0], "infrakit.config_sha");

    // Count the instances all along, from another thread.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, dir) = (stop.clone(), c.shared.path().to_path_buf());
        std::thread::spawn(move || {
            let mut most = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                most = most.max(instances_in(&dir).len());
                std::thread::sleep(Duration::from_millis(2));
            }
            most
        })
    };
    let mut v2 = policy.clone();
    v2["Flavor"] = json!({"Plugin": "flavor-vanilla", "Properties": {"Init": ["echo v2"]}});
    c.managers[leader]
        .as_ref()
        .unwrap()
        .commit("zk", pets, v2, &[]);
    wait_until("the update under way", Duration::from_secs(20), &c, || {
        c.instances()
            .iter()
            .any(|i| tag(i, "infrakit.config_sha") != old_sha)
    });
    c.managers[leader].as_mut().unwrap().daemon.kill();
    c.managers[leader] = None;
    let killed = Instant::now();
    assert!(
        c.instances()
            .iter()
            .any(|i| tag(i, "infrakit.config_sha") == old_sha),
        "the update had finished before the leader died"
    );
    let (next, _) = c.leader(TTL + Duration::from_secs(2));
    eprintln!("failover during a rolling update: {:?}", killed.elapsed());
    wait_until(
        "the next leader finishes the update",
        Duration::from_secs(30),
        &c,
        || {
            let all = c.instances();
            all.len() == 4 && all.iter().all(|i| tag(i, "infrakit.config_sha") != old_sha)
        },
    );
    wait_until(
        "converged under the next leader",
        Duration::from_secs(10),
        &c,
        || converged(c.managers[next].as_ref().unwrap(), "zk", 4),
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let most = sampler.join().unwrap();
    assert!(
        most <= 5,
        "{most} instances at once, above Size 4 + MaxSurge 1"
    );
    let mut ids: Vec<String> = c
        .instances()
        .iter()
        .map(|i| tag(i, "infrakit.logical_id"))
        .collect();
    ids.sort();
    assert_eq!(ids, ["zk1", "zk2", "zk3", "zk4"]);

    // Every manager restarts (new data directories: nothing the cluster needs is on a node's
    // disk): the group and its instances are all still there, none made again.
    let mut before: Vec<String> = c.instances().iter().map(|i| i["ID"].to_string()).collect();
    before.sort();
    for i in 0..3 {
        if let Some(mut m) = c.managers[i].take() {
            assert!(m.daemon.terminate().success());
        }
    }
    for i in 0..3 {
        let m = c.manager(i, "/ha-rolling/");
        c.managers[i] = Some(m);
    }
    let (l, _) = c.leader(Duration::from_secs(20));
    wait_until(
        "converged after a full restart",
        Duration::from_secs(20),
        &c,
        || converged(c.managers[l].as_ref().unwrap(), "zk", 4),
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut after: Vec<String> = c.instances().iter().map(|i| i["ID"].to_string()).collect();
    after.sort();
    assert_eq!(after, before, "nothing lost, nothing duplicated");
    let g = c.managers[l]
        .as_ref()
        .unwrap()
        .env
        .ok(&["group", "describe", "zk", "-o", "json"], None);
    let g: Value = serde_json::from_str(&g).unwrap();
    assert_eq!(g["revision"], 2, "{g}");
}

/// A leader paused past its lease (SIGSTOP) in the middle of a scale-up wakes to find another
/// in charge: it must start no plugin call. The shared directory is the plugin's record: an
/// instance the old term made after the pause, or one too many, would show there.
#[test]
fn a_paused_leader_that_wakes_after_its_lease_makes_no_plugin_call_and_follows() {
    let Some(c) = Cluster::start(2, "/ha-pause/") else {
        return;
    };
    let (leader, term) = c.leader(Duration::from_secs(20));
    let other = 1 - leader;
    // One provision at a time: the old leader always has its next call ready when it wakes.
    c.managers[leader].as_ref().unwrap().commit(
        "big",
        json!({"Size": 150}),
        json!({"Parallelism": 1}),
        &[],
    );
    wait_until(
        "the scale-up under way",
        Duration::from_secs(20),
        &c,
        || c.instances().len() >= 10,
    );

    let pid = c.managers[leader].as_ref().unwrap().daemon.pid();
    signal(pid, "-STOP");
    let paused_ms = infrakit::event::now_ms();
    // Only the other manager can answer now.
    let new_term = {
        let deadline = Instant::now() + TTL + Duration::from_secs(4);
        loop {
            if let Some(t) = c.managers[other].as_ref().unwrap().term() {
                break t;
            }
            assert!(Instant::now() < deadline, "no takeover:\n{}", c.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(new_term > term);
    let before_wake = c.instances().len();
    assert!(
        before_wake < 150,
        "the scale-up finished before the pause ended"
    );
    signal(pid, "-CONT");
    wait_until(
        "the new leader finishes the scale-up",
        Duration::from_secs(60),
        &c,
        || c.instances().len() >= 150,
    );
    std::thread::sleep(Duration::from_secs(1));

    let all = c.instances();
    let made_by_old_after_pause: Vec<&Value> = all
        .iter()
        .filter(|i| {
            tag(i, "infrakit.term") == term.to_string()
                && tag(i, "infrakit.created").parse::<u64>().unwrap_or(0) > paused_ms
        })
        .collect();
    assert!(
        made_by_old_after_pause.is_empty(),
        "the old leader acted after its lease: {made_by_old_after_pause:?}\n{}",
        c.logs()
    );
    assert_eq!(all.len(), 150, "exactly Size: nobody provisioned twice");
    assert!(
        all.iter()
            .any(|i| tag(i, "infrakit.term") == new_term.to_string())
    );
    // etcd's record agrees: every event the old term logged was made before the pause (a
    // late one would have been refused by etcd: its election key is gone).
    let log = c.managers[other]
        .as_ref()
        .unwrap()
        .env
        .ok(&["events", "-o", "json"], None);
    let events: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let late: Vec<&Value> = events
        .iter()
        .filter(|e| e["term"] == term && e["time_ms"].as_u64().unwrap() > paused_ms)
        .collect();
    assert!(
        late.is_empty(),
        "the old term wrote after the pause: {late:?}"
    );
    assert!(events.iter().any(|e| e["term"] == term));
    assert!(events.iter().any(|e| e["term"] == new_term));
    // It follows now: one leader, the new one.
    assert_eq!(c.leader(Duration::from_secs(5)), (other, new_term));
    let old = c.managers[leader].as_ref().unwrap();
    assert_eq!(old.status().unwrap()["leadership"]["role"], "follower");
    assert!(
        old.daemon.output().contains("stepping down"),
        "{}",
        old.daemon.output()
    );
}

/// etcd keeps working with one member of three gone, and so does the leader; with two gone
/// there is no quorum: the leader's lease cannot be renewed, it steps down, and nothing is
/// provisioned or destroyed until quorum returns.
#[test]
#[ignore = "flaky on 2 busy cores: the leader sometimes loses its 2 s lease when an etcd member is killed (3 of ~12 full runs); root cause open, run with --ignored"]
fn losing_one_etcd_member_changes_nothing_and_losing_quorum_stops_all_action() {
    let _heavy = crate::support::heavy();
    let Some(mut c) = Cluster::start(2, "/ha-quorum/") else {
        return;
    };
    let (leader, term) = c.leader(Duration::from_secs(20));
    c.managers[leader]
        .as_ref()
        .unwrap()
        .commit("q", json!({"Size": 3}), json!({}), &[]);
    // Seen listed by the leader: an instance deleted before any listing showed it would count
    // as there until its ProvisionTimeout (an eventually consistent cloud listing lags).
    wait_until(
        "3 instances, converged",
        Duration::from_secs(20),
        &c,
        || converged(c.managers[leader].as_ref().unwrap(), "q", 3),
    );

    // One member of three down: the same leader goes on healing.
    c.etcd.kill_member(2);
    let victim = c.instances().pop().unwrap();
    std::fs::remove_file(file_of(c.shared.path(), &victim)).unwrap();
    wait_until(
        "healed with one etcd member down",
        Duration::from_secs(10),
        &c,
        || c.instances().len() == 3,
    );
    std::thread::sleep(TTL * 2);
    assert_eq!(
        c.leader(Duration::from_secs(1)),
        (leader, term),
        "nothing changes"
    );

    // Two down: no quorum. Within TTL + 2 s nobody leads, and a lost instance stays lost.
    c.etcd.kill_member(1);
    let lost_quorum = Instant::now();
    // Each status asks etcd with a bound of about a second each way, so allow for them.
    wait_until(
        "the leader steps down",
        TTL + Duration::from_secs(4),
        &c,
        || {
            c.running().all(|(_, m)| {
                m.status()
                    .is_some_and(|s| s["leadership"]["role"] == "follower")
            })
        },
    );
    eprintln!("step-down after quorum loss: {:?}", lost_quorum.elapsed());
    let victim = c.instances().pop().unwrap();
    std::fs::remove_file(file_of(c.shared.path(), &victim)).unwrap();
    std::thread::sleep(TTL * 2);
    assert_eq!(c.instances().len(), 2, "nothing provisioned without quorum");

    // Quorum back: a leader again, and the work resumes.
    c.etcd.start_member(1);
    c.etcd.start_member(2);
    c.etcd.wait_healthy(Duration::from_secs(30));
    let (_, after) = c.leader(Duration::from_secs(30));
    assert!(after > term);
    wait_until(
        "healed once quorum returned",
        Duration::from_secs(20),
        &c,
        || c.instances().len() == 3,
    );
}

struct Quiet;
impl EventSink for Quiet {
    fn record(&self, _: Event) {}
    fn stored(&self, _: Event) {}
}

/// The fence itself, deterministically (the SIGSTOP test above depends on which task runs
/// first after the wake): a controller whose lease has lapsed by its clock starts no plugin
/// call at all, and says why; the same controller with an open fence converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_whose_lease_lapsed_starts_no_plugin_call() {
    let env = Env::new();
    let mut config = RegistryConfig::under(env.data_dir());
    config.cache_dir = Some(shared_cache_dir());
    let registry = Arc::new(Registry::load(config).await.unwrap());
    let calls = |name: &str| {
        registry
            .get(name)
            .unwrap()
            .stats()
            .calls
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    for (fence, lapsed) in [(Fence::lapsed(7), true), (Fence::default(), false)] {
        let before = (calls("instance-file"), calls("flavor-vanilla"));
        let store = Arc::new(EmbeddedStore::in_memory().unwrap());
        let controller = Controller::new(
            registry.clone(),
            store.clone(),
            Arc::new(Quiet),
            Options {
                poll_interval: Duration::from_millis(50),
                fence,
                ..Options::default()
            },
        );
        let spec = GroupSpec::parse(
            &json!({"ID": "g", "Properties": {
                "Allocation": {"Size": 3},
                "Instance": {"Plugin": "instance-file", "Properties": {"Prefix": "g"}},
                "Flavor": {"Plugin": "flavor-vanilla"}}})
            .to_string(),
            "test",
            false,
        )
        .unwrap();
        store
            .commit(&spec, Event::now("g", EventKind::GroupCommitted, None, "c"))
            .await
            .unwrap();
        controller.start();
        controller.applied(*store.watch().borrow()).await;
        let mut status = controller.watch("g").expect("a task for g");
        let s = tokio::time::timeout(
            Duration::from_secs(30),
            status.wait_for(|s| {
                if lapsed {
                    s.last_error.is_some()
                } else {
                    s.instances.len() == 3
                }
            }),
        )
        .await
        .expect("a verdict")
        .unwrap()
        .clone();
        // A few retries (back-off from 100 ms) happen meanwhile.
        tokio::time::sleep(Duration::from_secs(1)).await;
        controller.shutdown().await;
        let after = (calls("instance-file"), calls("flavor-vanilla"));
        if lapsed {
            assert_eq!(after, before, "no plugin call after the lease lapsed");
            let error = s.last_error.unwrap_or_default();
            assert!(error.contains("not the leader"), "{error}");
        } else {
            assert!(
                after.0 > before.0 && after.1 > before.1,
                "{before:?} {after:?}"
            );
        }
    }
}
