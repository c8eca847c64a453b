//! Running `infrakit serve` as a real child process on a test's data directory, and talking
//! raw HTTP to its unix socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::Env;
use super::process::Process;

/// A daemon; killed (SIGKILL) when dropped.
pub struct Daemon {
    process: Process,
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts a daemon and waits until it serves and has loaded its plugins.
    pub fn start(env: &Env, extra: &[&str]) -> Daemon {
        let mut d = Daemon::start_serving(env, extra);
        d.wait_for_log("plugins loaded");
        d
    }

    /// Starts a daemon and waits only until it serves (plugins may still be loading).
    pub fn start_serving(env: &Env, extra: &[&str]) -> Daemon {
        let n = std::fs::read_dir(env.data_dir())
            .map(|d| d.count())
            .unwrap_or(0);
        let log = env.data_dir().join(format!("serve-{n}.log"));
        let mut cmd = env.command();
        cmd.env(
            "INFRAKIT_LOG",
            std::env::var("TEST_DAEMON_LOG").unwrap_or("info".into()),
        )
        .arg("serve");
        // Fast defaults for tests, unless the test gives its own.
        for (flag, value) in [
            ("--poll-interval", "100ms"),
            ("--plugin-scan-interval", "100ms"),
        ] {
            if !extra.contains(&flag) {
                cmd.args([flag, value]);
            }
        }
        cmd.args(extra);
        let mut d = Daemon {
            process: Process::spawn(cmd, log, "infrakit serve"),
            socket: env.data_dir().join("infrakit.sock"),
        };
        d.wait_ready();
        d
    }

    fn wait_for_log(&mut self, needle: &str) {
        let start = Instant::now();
        while !self.output().contains(needle) {
            self.process
                .assert_running(&format!("waiting for {needle:?}"));
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "no {needle:?} in the daemon's log:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        while !(self.output().contains("daemon ready") && UnixStream::connect(&self.socket).is_ok())
        {
            self.process.assert_running("starting");
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "daemon not ready:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn output(&self) -> String {
        self.process.output()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The address of the TCP listener, from the daemon's log (it may have bound port 0).
    pub fn tcp_address(&self) -> Option<String> {
        let out = self.output();
        let line = out.lines().find(|l| l.contains("serving on TCP"))?;
        let rest = line.split("address=").nth(1)?;
        Some(rest.split_whitespace().next()?.to_string())
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM and a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.process.terminate()
    }

    /// One raw HTTP/1.1 request on the unix socket: (status, body).
    pub fn http(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        http_unix(&self.socket, method, path, body, &[])
    }
}

pub fn http_unix(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> (u16, String) {
    let stream = UnixStream::connect(socket).expect("connect to the daemon");
    exchange(stream, method, path, body, headers)
}

pub fn http_tcp(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> (u16, String) {
    let stream = std::net::TcpStream::connect(addr).expect("connect to the daemon");
    exchange(stream, method, path, body, headers)
}

fn exchange<S: Read + Write>(
    mut stream: S,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: infrakit\r\nconnection: close\r\ncontent-length: {}\r\ncontent-type: application/json\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body; a broken pipe then is fine.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, dechunk(&body))
}

/// Undoes chunked transfer encoding when the body uses it.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if n == 0 {
            return out;
        }
        if after.len() < n {
            return body.to_string();
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}
