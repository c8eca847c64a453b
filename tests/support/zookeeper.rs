//! Debian's real ZooKeeper for the ensemble tests: is it installed, free ports for members on
//! 127.0.0.1, ZooKeeper's own four-letter words over TCP, and its processes killed when a test
//! ends however it ends.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Files the tests need from the `zookeeper`, `libjetty9-java` and `libservlet-api-java`
/// packages and a Java runtime.
const NEEDED: &[&str] = &[
    "/usr/bin/java",
    "/usr/share/java/zookeeper.jar",
    "/usr/share/java/jetty9-server.jar",
    "/usr/share/java/servlet-api.jar",
];

/// Whether ZooKeeper is installed; under CI a missing one fails the test (`.ci/run` installs
/// it), elsewhere the test prints why it skips.
pub fn installed() -> bool {
    let missing: Vec<&str> = NEEDED
        .iter()
        .copied()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "ZooKeeper is not installed ({missing:?} missing); .ci/run installs it"
    );
    eprintln!(
        "skipping: {missing:?} missing (apt-get install zookeeper libjetty9-java libservlet-api-java)"
    );
    false
}

/// The first port of `count` consecutive ports free on 127.0.0.1, from a start that differs
/// per test process.
pub fn free_ports(count: u16) -> u16 {
    let mut base = 20_000 + (std::process::id() % 1000) as u16 * 20;
    loop {
        let free = (base..base + count).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return base;
        }
        base = if base > 60_000 { 20_000 } else { base + count };
    }
}

/// ZooKeeper's answer to a four-letter word (`srvr`, `ruok`...) on a client port.
pub fn four_letter(port: u16, word: &str) -> Option<String> {
    let addr = ("127.0.0.1", port);
    let mut s = TcpStream::connect_timeout(
        &std::net::ToSocketAddrs::to_socket_addrs(&addr)
            .ok()?
            .next()?,
        Duration::from_secs(1),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(word.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// `leader`, `follower`, `standalone`... from `srvr`; none when the member does not serve.
pub fn mode(port: u16) -> Option<String> {
    four_letter(port, "srvr")?
        .lines()
        .find_map(|l| l.strip_prefix("Mode: "))
        .map(|m| m.trim().to_string())
}

/// Pids of processes whose command line mentions `needle`.
pub fn pids_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// Kills (SIGKILL) every process whose command line mentions the directory when dropped: the
/// members are detached from the daemon by design, so a failed test would leave them running.
pub struct Cleanup(pub PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in pids_with(&self.0.display().to_string()) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}
