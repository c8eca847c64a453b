//! Leadership among several managers sharing one etcd.
//!
//! etcd's election API does the consensus: each manager holds a lease (TTL, renewed at a third
//! of it) and campaigns on `PREFIX/leader` with it; the winner's election key carries a
//! revision that is unique to its term. Only the leader runs the controller.
//!
//! Plugin calls cannot be fenced by etcd, so the leader fences them itself with its monotonic
//! clock: it starts no plugin call once `last renewal sent + TTL - margin` has passed (the
//! lease could have expired and another manager won), and steps down. A manager paused
//! (SIGSTOP, a long GC-like stall) past its TTL wakes with that deadline behind it, so its
//! first check refuses before any call; it rejoins as a candidate with a new lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Whether this manager may call plugins now. A lone manager (the embedded store) always
/// may; one of several only while its leadership lease is surely held.
#[derive(Clone, Default)]
pub struct Fence(Option<Arc<Clock>>);

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Fence(always open)"),
            Some(c) => write!(f, "Fence(term {})", c.term.load(Ordering::SeqCst)),
        }
    }
}

/// The leader's lease as its own clock sees it.
struct Clock {
    base: Instant,
    /// Milliseconds since `base` until which calls may start; 0 when not leading.
    until_ms: AtomicU64,
    /// The election key's revision while leading; 0 otherwise.
    term: AtomicI64,
    ttl: Duration,
}

impl Clock {
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn at_ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_millis() as u64
    }
}

/// Refused: this manager is not (or no longer surely) the leader.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not the leader (or its lease may have lapsed): no plugin call is started")]
pub struct Fenced;

impl Fence {
    /// A leader's fence whose lease has lapsed by its clock: what a manager paused past its
    /// TTL holds when it wakes. For tests of what such a manager does (nothing).
    pub fn lapsed(term: i64) -> Fence {
        Fence(Some(Arc::new(Clock {
            base: Instant::now(),
            until_ms: AtomicU64::new(0),
            term: AtomicI64::new(term),
            ttl: Duration::from_secs(1),
        })))
    }

    /// `Ok(Some(term))` for a leader inside its lease, `Ok(None)` for a lone manager.
    pub fn check(&self) -> Result<Option<i64>, Fenced> {
        let Some(c) = &self.0 else { return Ok(None) };
        let term = c.term.load(Ordering::SeqCst);
        if term == 0 || c.now_ms() >= c.until_ms.load(Ordering::SeqCst) {
            return Err(Fenced);
        }
        Ok(Some(term))
    }
}

/// What `status` shows about leadership.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Leadership {
    /// This manager's name in the election.
    pub node: String,
    /// `leader`, or `follower` (campaigning).
    pub role: String,
    /// The current leader's name, when one is known.
    pub leader: Option<String>,
    /// This manager's term (the election key's revision) while it leads.
    pub term: Option<i64>,
    /// The lease's time to live.
    pub lease_ttl_ms: u64,
    /// Since this manager's lease was last renewed (absent before the first renewal).
    pub since_renewal_ms: Option<u64>,
}

/// One manager's part in the election.
pub struct Elector {
    client: Client,
    name: String,
    node: String,
    clock: Arc<Clock>,
    /// `Some(term)` while leading.
    leading: watch::Sender<Option<i64>>,
    /// When the last successful renewal (or grant) was asked for, in `clock` ms; 0 = never.
    renewed_ms: AtomicU64,
    /// The election key and its creation revision while leading.
    key: std::sync::Mutex<Option<(Vec<u8>, i64)>>,
}

impl Elector {
    /// An elector for the managers under `prefix`, with a lease of `ttl` (whole seconds,
    /// at least 1, as etcd counts them).
    pub fn new(client: Client, prefix: &str, node: String, ttl: Duration) -> Arc<Elector> {
        let ttl = Duration::from_secs(ttl.as_secs().max(1));
        Arc::new(Elector {
            client,
            name: format!("{prefix}leader"),
            node,
            clock: Arc::new(Clock {
                base: Instant::now(),
                until_ms: AtomicU64::new(0),
                term: AtomicI64::new(0),
                ttl,
            }),
            leading: watch::Sender::new(None),
            renewed_ms: AtomicU64::new(0),
            key: std::sync::Mutex::new(None),
        })
    }

    /// The fence the controller checks before every plugin call.
    pub fn fence(&self) -> Fence {
        Fence(Some(self.clock.clone()))
    }

    /// For the leader's store writes ([`crate::store::EtcdStore::fenced`]): the election key
    /// while this manager leads and its clock says the lease holds.
    pub fn guard(self: &Arc<Self>) -> crate::store::Guard {
        let this = self.clone();
        Arc::new(move || {
            this.fence().check().ok()??;
            this.key.lock().expect("key lock").clone()
        })
    }

    /// `Some(term)` while this manager leads.
    pub fn leading(&self) -> watch::Receiver<Option<i64>> {
        self.leading.subscribe()
    }

    /// This manager's term while it leads.
    pub fn term(&self) -> Option<i64> {
        Some(self.clock.term.load(Ordering::SeqCst)).filter(|t| *t != 0)
    }

    /// What `status` shows; asks etcd who leads (within a second).
    pub async fn status(&self) -> Leadership {
        let term = *self.leading.borrow();
        let leader = tokio::time::timeout(
            Duration::from_secs(1),
            self.client.election_client().leader(self.name.as_str()),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|r| {
            r.kv()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        });
        let renewed = self.renewed_ms.load(Ordering::SeqCst);
        Leadership {
            node: self.node.clone(),
            role: if term.is_some() { "leader" } else { "follower" }.into(),
            leader,
            term,
            lease_ttl_ms: self.clock.ttl.as_millis() as u64,
            since_renewal_ms: (renewed > 0).then(|| self.clock.now_ms().saturating_sub(renewed)),
        }
    }

    /// The deadline for starting calls: the renewal asked for at `asked` keeps the lease
    /// until `asked + TTL` at the earliest; a fifth of the TTL is kept as margin for clock
    /// rate differences and the time a started call takes to reach the plugin.
    fn deadline_ms(&self, asked_ms: u64) -> u64 {
        let ttl = self.clock.ttl.as_millis() as u64;
        asked_ms + ttl - ttl / 5
    }

    fn renewed(&self, asked: Instant) {
        let asked_ms = self.clock.at_ms(asked).max(1);
        self.renewed_ms.store(asked_ms, Ordering::SeqCst);
        if self.clock.term.load(Ordering::SeqCst) != 0 {
            self.clock
                .until_ms
                .store(self.deadline_ms(asked_ms), Ordering::SeqCst);
        }
    }

    fn step_down(&self, why: &str) {
        *self.key.lock().expect("key lock") = None;
        let was = self.clock.term.swap(0, Ordering::SeqCst);
        self.clock.until_ms.store(0, Ordering::SeqCst);
        if was != 0 {
            tracing::warn!(node = %self.node, term = was, "stepping down: {why}");
        }
        self.leading.send_replace(None);
    }

    /// Campaigns, leads, steps down and campaigns again, until `stop`; then resigns.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut failures = 0u32;
        while !*stop.borrow() {
            let outcome = self.one_lease(&mut stop).await;
            if let Err(e) = outcome {
                self.step_down(&e);
                failures += 1;
                tracing::warn!(node = %self.node, error = %e, "leadership: campaigning again");
                let delay = Duration::from_millis(200 * 2u64.pow(failures.min(5)));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            } else {
                failures = 0;
            }
        }
        self.step_down("the daemon is stopping");
    }

    /// One lease: campaign with it and lead while it holds. Returns when it is lost (`Err`)
    /// or at `stop` (`Ok`); either way the lease is revoked (best effort), so that the next
    /// manager need not wait out the TTL.
    async fn one_lease(&self, stop: &mut watch::Receiver<bool>) -> Result<(), String> {
        let ttl_s = self.clock.ttl.as_secs() as i64;
        let asked = Instant::now();
        let lease = self
            .client
            .lease_client()
            .grant(ttl_s, None)
            .await
            .map_err(|e| format!("cannot get a lease: {e}"))?
            .id();
        self.renewed(asked);
        let outcome = tokio::select! {
            o = self.hold(lease) => o,
            _ = stop.wait_for(|s| *s) => Ok(()),
        };
        // Stop acting before letting go, then let go.
        self.step_down(
            outcome
                .as_ref()
                .err()
                .map_or("the daemon is stopping", String::as_str),
        );
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.client.lease_client().revoke(lease),
        )
        .await;
        outcome
    }

    /// Keeps `lease` alive, campaigns with it, and leads until it is lost.
    async fn hold(&self, lease: i64) -> Result<(), String> {
        let ttl = self.clock.ttl;
        // A broken renewal stream (the etcd member it went to died) is opened again, on any
        // member: only the deadline, or etcd saying the lease is gone, ends the term.
        let keepalive = async {
            let mut stream = None;
            loop {
                let (keeper, replies) = match &mut stream {
                    Some(s) => s,
                    // Opening can hang on a member that just died (the client's connect
                    // timeout is longer than a short lease): give up on it in time to retry.
                    None => match tokio::time::timeout(
                        ttl / 3,
                        self.client.lease_client().keep_alive(lease),
                    )
                    .await
                    {
                        Ok(Ok(s)) => stream.insert(s),
                        outcome => {
                            let why = match outcome {
                                Ok(Err(e)) => e.to_string(),
                                _ => "no answer".into(),
                            };
                            tracing::warn!(node = %self.node, error = %why, "cannot open the lease renewal stream; retrying");
                            tokio::time::sleep(ttl / 10).await;
                            continue;
                        }
                    },
                };
                let asked = Instant::now();
                let renewal = async {
                    keeper.keep_alive().await?;
                    replies.message().await
                };
                match tokio::time::timeout(ttl / 3, renewal).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {
                        self.renewed(asked);
                        tokio::time::sleep(ttl / 3).await;
                    }
                    Ok(Ok(Some(_))) => return Err::<(), String>("the lease expired".into()),
                    outcome => {
                        let why = match outcome {
                            Ok(Err(e)) => e.to_string(),
                            Err(_) => "no answer".into(),
                            _ => "the stream ended".into(),
                        };
                        tracing::warn!(node = %self.node, error = %why, "lease renewal failed; retrying on a new stream");
                        stream = None;
                        tokio::time::sleep(ttl / 10).await;
                    }
                }
            }
        };
        tokio::pin!(keepalive);
        let campaign = async {
            self.client
                .election_client()
                .campaign(self.name.as_str(), self.node.as_str(), lease)
                .await
        };
        let won = tokio::select! {
            r = campaign => r.map_err(|e| format!("campaign failed: {e}"))?,
            e = &mut keepalive => return e,
        };
        let Some(key) = won.leader().filter(|k| k.rev() > 0) else {
            return Err("etcd elected this manager without a leader key".into());
        };
        let term = key.rev();
        *self.key.lock().expect("key lock") = Some((key.key().to_vec(), term));
        // Leading: the deadline comes from the newest renewal (a campaign can wait long).
        self.clock.term.store(term, Ordering::SeqCst);
        self.clock.until_ms.store(
            self.deadline_ms(self.renewed_ms.load(Ordering::SeqCst)),
            Ordering::SeqCst,
        );
        tracing::info!(node = %self.node, term, "elected leader");
        self.leading.send_replace(Some(term));
        let expired = async {
            loop {
                let until = self.clock.until_ms.load(Ordering::SeqCst);
                let now = self.clock.now_ms();
                if now >= until {
                    return;
                }
                tokio::time::sleep(Duration::from_millis((until - now).min(100))).await;
            }
        };
        tokio::select! {
            e = &mut keepalive => e,
            _ = expired => Err("the lease could have lapsed by this manager's clock".into()),
        }
    }
}
