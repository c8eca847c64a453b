//! instance-process and flavor-zookeeper keep a real ZooKeeper ensemble (Debian's) alive as
//! pets (issue 14), with the example's grants as they ship (`examples/zookeeper/infrakit.toml`).
//! What the ensemble is doing is checked with ZooKeeper's own words (`srvr`) and a ZooKeeper
//! client, not only through our flavor.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::manager::Manager;
use crate::support::zookeeper::{self, Cleanup, mode, pids_with};
use crate::support::{Env, wait_until};

const MEMBERS: [&str; 3] = ["zk1", "zk2", "zk3"];

fn example_grants() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/zookeeper/infrakit.toml")
}

/// Ports of the ensemble: member n (1-based) uses `base + offset + n - 1`.
struct Ports {
    base: u16,
}

impl Ports {
    fn client(&self, n: u16) -> u16 {
        self.base + n - 1
    }
}

fn spec(data_dir: &Path, ports: &Ports, tick: u32) -> Value {
    json!({
        "ID": "zk",
        "Properties": {
            "Allocation": {"LogicalIDs": MEMBERS},
            "Instance": {"Plugin": "instance-process", "Properties": {"StopTimeout": 5}},
            "Flavor": {"Plugin": "flavor-zookeeper", "Properties": {
                "DataDir": data_dir,
                "ClientPort": ports.base,
                "PeerPort": ports.base + 3,
                "ElectionPort": ports.base + 6,
                "AdminPort": ports.base + 9,
                "TickTime": tick,
                "InitLimit": 20,
                "SyncLimit": 10,
                "JvmFlags": ["-Xmx96m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"],
            }},
            "Health": {"CheckInterval": "500ms", "GracePeriod": "90s"},
            "Updating": {"MaxSurge": 0, "MaxUnavailable": 1},
        }
    })
}

/// Converged: three members, healthy and current.
fn healthy(m: &Manager) -> bool {
    let i = m.instances("zk");
    i.len() == 3
        && i.iter()
            .all(|i| i["health"] == "healthy" && i["current"] == true)
}

fn id_of(m: &Manager, logical_id: &str) -> Option<String> {
    m.instances("zk")
        .iter()
        .find(|i| i["logical_id"] == logical_id)
        .and_then(|i| i["id"].as_str().map(str::to_string))
}

/// The modes `srvr` reports for the three members, sorted.
fn modes(ports: &Ports) -> Vec<String> {
    let mut m: Vec<String> = (1..=3)
        .map(|n| mode(ports.client(n)).unwrap_or_else(|| "down".into()))
        .collect();
    m.sort();
    m
}

fn quorum(ports: &Ports) -> bool {
    modes(ports) == ["follower", "follower", "leader"]
}

async fn connect(port_list: &str) -> zookeeper_client::Client {
    zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_secs(20))
        .connect(port_list)
        .await
        .unwrap_or_else(|e| panic!("connect to {port_list}: {e}"))
}

#[test]
fn a_zookeeper_ensemble_of_pets_converges_heals_rolls_and_survives_a_restart() {
    if !zookeeper::installed() {
        return;
    }
    let _heavy = crate::support::heavy();
    let env = Env::new();
    let data_dir = env.data_dir().join("zookeeper");
    let _cleanup = Cleanup(data_dir.clone());
    let ports = Ports {
        base: zookeeper::free_ports(12),
    };
    let m = Manager::new(&env, &example_grants(), Duration::from_millis(500));
    let mut daemon = m.serve();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Converges: three healthy members, and ZooKeeper itself says one leads, two follow.
    let started = Instant::now();
    m.commit(&spec(&data_dir, &ports, 500));
    wait_until("3 healthy members", Duration::from_secs(120), || {
        healthy(&m)
    });
    eprintln!("ensemble converged in {:?}", started.elapsed());
    wait_until("one leader, two followers", Duration::from_secs(30), || {
        quorum(&ports)
    });
    for (n, lid) in MEMBERS.iter().enumerate() {
        let myid = std::fs::read_to_string(data_dir.join(lid).join("data/myid")).unwrap();
        assert_eq!(myid.trim(), (n + 1).to_string(), "{lid}");
    }

    // A znode written through member 1 is read through member 3.
    let c1 = format!("127.0.0.1:{}", ports.client(1));
    let c3 = format!("127.0.0.1:{}", ports.client(3));
    rt.block_on(async {
        let one = connect(&c1).await;
        let options = zookeeper_client::CreateMode::Persistent
            .with_acls(zookeeper_client::Acls::anyone_all());
        one.create("/infrakit", b"kept by pets", &options)
            .await
            .unwrap();
        let three = connect(&c3).await;
        three.sync("/infrakit").await.unwrap();
        let (data, _) = three.get_data("/infrakit").await.unwrap();
        assert_eq!(data, b"kept by pets");
    });

    // kill -9 of member 2: it comes back under its logical id and myid, rejoins the quorum,
    // and the znode is still there.
    let zk2 = data_dir.join("zk2").join("zoo.cfg").display().to_string();
    let victim = pids_with(&zk2);
    assert_eq!(victim.len(), 1, "one process runs member 2: {victim:?}");
    let before = id_of(&m, "zk2").unwrap();
    let status = std::process::Command::new("kill")
        .args(["-9", &victim[0].to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let killed = Instant::now();
    wait_until("zk2 replaced and healthy", Duration::from_secs(90), || {
        id_of(&m, "zk2").is_some_and(|id| id != before) && healthy(&m)
    });
    wait_until("zk2 back in the quorum", Duration::from_secs(30), || {
        quorum(&ports)
    });
    eprintln!(
        "killed member back in the quorum after {:?}",
        killed.elapsed()
    );
    let replacement = pids_with(&zk2);
    assert_eq!(replacement.len(), 1);
    assert_ne!(replacement, victim);
    let myid = std::fs::read_to_string(data_dir.join("zk2/data/myid")).unwrap();
    assert_eq!(myid.trim(), "2");
    let c2 = format!("127.0.0.1:{}", ports.client(2));
    rt.block_on(async {
        let two = connect(&c2).await;
        two.sync("/infrakit").await.unwrap();
        assert_eq!(two.get_data("/infrakit").await.unwrap().0, b"kept by pets");
    });

    // A rolling update (tickTime 500 -> 400) replaces one member at a time; a client reading
    // every 100 ms through the whole ensemble never fails for longer than a leader election.
    let all = (1..=3)
        .map(|n| format!("127.0.0.1:{}", ports.client(n)))
        .collect::<Vec<_>>()
        .join(",");
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut client = connect(&all).await;
                let (mut reads, mut failed_reads) = (0u32, 0u32);
                let mut longest = Duration::ZERO;
                let mut failing_since: Option<Instant> = None;
                while !stop.load(Ordering::SeqCst) {
                    let read =
                        tokio::time::timeout(Duration::from_secs(2), client.get_data("/infrakit"))
                            .await;
                    reads += 1;
                    match read {
                        Ok(Ok((data, _))) if data == b"kept by pets" => {
                            if let Some(since) = failing_since.take() {
                                longest = longest.max(since.elapsed());
                            }
                        }
                        other => {
                            failed_reads += 1;
                            failing_since.get_or_insert_with(Instant::now);
                            if matches!(other, Ok(Err(zookeeper_client::Error::SessionExpired))) {
                                client = connect(&all).await;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if let Some(since) = failing_since {
                    longest = longest.max(since.elapsed());
                }
                (reads, failed_reads, longest)
            })
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    m.commit(&spec(&data_dir, &ports, 400));
    // MaxUnavailable 1: never fewer than 2 members exist. (Their health in our status is not
    // the measure: right after a commit every verdict starts over. The reads below are.)
    let mut fewest = 3;
    wait_until("the rolling update", Duration::from_secs(180), || {
        fewest = fewest.min(m.instances("zk").len());
        healthy(&m)
            && MEMBERS.iter().all(|lid| {
                std::fs::read_to_string(data_dir.join(lid).join("zoo.cfg"))
                    .is_ok_and(|c| c.contains("tickTime=400"))
            })
    });
    wait_until(
        "the quorum after the update",
        Duration::from_secs(30),
        || quorum(&ports),
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let (reads, failed_reads, longest) = poller.join().unwrap();
    eprintln!(
        "rolling update: {reads} reads, {failed_reads} failed, longest outage {longest:?}, \
         fewest members {fewest}"
    );
    assert!(reads > 10, "the poller hardly ran: {reads} reads");
    assert!(
        fewest >= 2,
        "{fewest} members at one point; MaxUnavailable is 1"
    );
    assert!(
        longest < Duration::from_secs(10),
        "reads failed for {longest:?} in a row: longer than a leader election"
    );

    // The daemon dies (SIGKILL); the members run on, and a new daemon re-adopts them: same
    // instances, same processes, nothing provisioned.
    let ids: Vec<String> = MEMBERS.iter().map(|l| id_of(&m, l).unwrap()).collect();
    let pids: Vec<Vec<u32>> = MEMBERS
        .iter()
        .map(|l| pids_with(&data_dir.join(l).join("zoo.cfg").display().to_string()))
        .collect();
    daemon.kill();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        quorum(&ports),
        "the ensemble needs no daemon: {:?}",
        modes(&ports)
    );
    let _daemon = m.serve();
    std::thread::sleep(Duration::from_secs(3));
    assert!(healthy(&m), "{:?}", m.instances("zk"));
    let again: Vec<String> = MEMBERS.iter().map(|l| id_of(&m, l).unwrap()).collect();
    assert_eq!(again, ids, "the restart replaced members");
    for (l, p) in MEMBERS.iter().zip(&pids) {
        assert_eq!(
            &pids_with(&data_dir.join(l).join("zoo.cfg").display().to_string()),
            p
        );
    }
    let inspect = m.cli(&["plugin", "inspect", "instance-process"]);
    assert!(
        inspect.contains("process: /bin/sh") && inspect.contains("processes running: 3"),
        "{inspect}"
    );

    // Destroying the group stops every member.
    m.cli(&["group", "destroy", "zk", "--wait"]);
    wait_until("no member running", Duration::from_secs(30), || {
        pids_with(&data_dir.display().to_string()).is_empty()
    });
    assert!(mode(ports.client(1)).is_none());
}
