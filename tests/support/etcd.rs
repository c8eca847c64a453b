//! Real etcd servers on 127.0.0.1 (Debian's `etcd-server`), started by a test in their own
//! data directories and killed when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::process::Process;

/// The etcd executable: `INFRAKIT_ETCD`, or `etcd` on the PATH (Debian's `etcd-server`).
pub fn etcd_binary() -> Option<String> {
    super::tools::external_tool("INFRAKIT_ETCD", "etcd", "apt-get install etcd-server")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One member of a cluster.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    process: Option<Process>,
}

/// A cluster of `n` members on loopback ports.
pub struct Etcd {
    pub members: Vec<Member>,
    binary: String,
    dir: tempfile::TempDir,
    cluster: String,
}

impl Etcd {
    /// Starts `n` members and waits until the cluster answers. `None` when etcd is not
    /// installed (and not under CI).
    pub fn start(n: usize) -> Option<Etcd> {
        let binary = etcd_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("infrakit-etcd-")
            .tempdir()
            .unwrap();
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                process: None,
            })
            .collect();
        let cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            members,
            binary,
            dir,
            cluster,
        };
        for i in 0..n {
            etcd.start_member(i);
        }
        etcd.wait_healthy(Duration::from_secs(30));
        Some(etcd)
    }

    /// (Re)starts member `i` on its data directory.
    pub fn start_member(&mut self, i: usize) {
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new(&self.binary);
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "infrakit-test"])
            // Fast elections on loopback: failover tests measure our protocol, not etcd's.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--log-level", "warn"]);
        let log = self.dir.path().join(format!("{}.log", m.name));
        let process = Process::spawn(cmd, log, "etcd");
        self.members[i].process = Some(process);
    }

    /// SIGKILL member `i`.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].process.take() {
            p.kill();
        }
    }

    /// `etcd://127.0.0.1:A,127.0.0.1:B,...`
    pub fn url(&self) -> String {
        format!(
            "etcd://{}",
            self.members
                .iter()
                .map(|m| format!("127.0.0.1:{}", m.client_port))
                .collect::<Vec<_>>()
                .join(",")
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The members' logs, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .filter_map(|m| m.process.as_ref())
            .map(|p| p.output())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until every running member says it is healthy (it has a leader).
    pub fn wait_healthy(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        for i in 0..self.members.len() {
            if self.members[i].process.is_none() {
                continue;
            }
            loop {
                if let Some(p) = self.members[i].process.as_mut() {
                    p.assert_running("starting etcd");
                }
                if health(self.members[i].client_port) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd did not become healthy:\n{}",
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// etcd's `/health` on the client port: `{"health":"true"}` once the member has a leader.
fn health(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}
