//! A real HTTP/1.1 server on 127.0.0.1, started by a test and stopped when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the server does with each request.
#[derive(Clone)]
pub enum Behavior {
    /// Answer 200 with this body.
    Respond(String),
    /// Read the request and never answer (the connection stays open until the server stops).
    Hang,
}

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub requests: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start(behavior: Behavior) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let (stop2, requests2) = (stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                requests2.fetch_add(1, Ordering::SeqCst);
                match &behavior {
                    Behavior::Respond(body) => {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                            body.len(),
                            body
                        );
                    }
                    Behavior::Hang => held.push(stream),
                }
            }
        });
        TestServer {
            addr,
            stop,
            requests,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An HTTP/1.1 server that records every request that reaches it (the request line, the
/// head and the body) and answers 200 `{}`: on a unix socket, a stand-in for the Docker socket
/// where a test must prove a request never arrived; on TCP, a target whose requests a test
/// inspects (an `Authorization` header that must or must not be there).
pub struct Recorder {
    wake: Box<dyn Fn() + Send>,
    pub seen: Arc<std::sync::Mutex<Vec<Recorded>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `"METHOD /path?query"`.
    pub request: String,
    /// The request line and headers as received.
    pub head: String,
    pub body: String,
}

impl Recorder {
    /// Records on a unix socket at `path`.
    pub fn unix(path: &std::path::Path) -> Recorder {
        let listener = std::os::unix::net::UnixListener::bind(path).expect("bind unix socket");
        let path = path.to_path_buf();
        Recorder::serve(
            std::iter::from_fn(move || Some(listener.accept().map(|(s, _)| s))),
            Box::new(move || {
                let _ = std::os::unix::net::UnixStream::connect(&path);
            }),
        )
    }

    /// Records on 127.0.0.1; the port is [`Recorder::port`].
    pub fn tcp() -> (Recorder, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
        let addr = listener.local_addr().unwrap();
        let recorder = Recorder::serve(
            std::iter::from_fn(move || Some(listener.accept().map(|(s, _)| s))),
            Box::new(move || {
                let _ = TcpStream::connect(addr);
            }),
        );
        (recorder, addr.port())
    }

    fn serve<S, I>(incoming: I, wake: Box<dyn Fn() + Send>) -> Recorder
    where
        S: Read + Write,
        I: Iterator<Item = std::io::Result<S>> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            for stream in incoming {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                if let Some(r) = read_request(&mut stream) {
                    seen2.lock().unwrap().push(r);
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                    );
                }
            }
        });
        Recorder {
            wake,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// The requests seen so far, as `"METHOD /path?query"`.
    pub fn requests(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.request.clone())
            .collect()
    }
}

fn read_request(stream: &mut impl Read) -> Option<Recorded> {
    let mut buf = [0u8; 8192];
    let mut data = Vec::new();
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while data.len() < head_end + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    let line = head.lines().next().unwrap_or("").to_string();
    let request = line
        .rsplit_once(' ')
        .map_or(line.clone(), |(r, _)| r.to_string());
    let body = String::from_utf8_lossy(&data[head_end..]).to_string();
    Some(Recorded {
        request,
        head,
        body,
    })
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        (self.wake)();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
