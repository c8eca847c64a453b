//! The shared store: everything under one key prefix in etcd, so that several managers see
//! the same desired state and event log.
//!
//! Keys, under the prefix:
//! - `groups/ID`: the current [`StoredGroup`];
//! - `history/ID/REVISION` (20 digits, so that keys sort by revision): each [`Revision`];
//! - `events/SEQ` (20 digits) and `events-seq`, the last sequence number given out.
//!
//! Every write is one etcd transaction guarded by the revisions of what it read (optimistic
//! concurrency): a commit compares the group's key, the next history key and the event
//! counter, so two managers committing at once cannot both take a revision number or a
//! sequence number; the loser re-reads and tries again.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::watch;

use super::{
    EVENTS_KEPT, Error, Lifecycle, Revision, Store, StoredGroup, committed, encode,
    rollback_target, rolled_back,
};
use crate::event::{Event, now_ms};
use crate::spec::GroupSpec;

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// `http://HOST:PORT` or `https://HOST:PORT` URLs.
    pub endpoints: Vec<String>,
    /// Every key lives under it (ends with `/`).
    pub prefix: String,
    /// User and password, when etcd has authentication on.
    pub user: Option<(String, String)>,
    /// PEM files: the CA to trust, and the client's certificate and key (mutual TLS).
    pub tls: Option<TlsFiles>,
    /// A request that takes longer fails.
    pub timeout: Duration,
    /// Revisions kept per group (at least 1).
    pub revisions_kept: u64,
}

/// PEM files for TLS to etcd.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// The CA certificate that signed etcd's.
    pub ca: Option<std::path::PathBuf>,
    /// The client certificate and its key.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl EtcdOptions {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...]` (plain) or `etcds://...` (TLS).
    pub fn from_url(url: &str, prefix: &str) -> Result<EtcdOptions, String> {
        let (scheme, hosts) = url
            .split_once("://")
            .ok_or_else(|| format!("store {url:?}: expected etcd://HOST:PORT[,HOST:PORT...]"))?;
        let http = match scheme {
            "etcd" => "http",
            "etcds" => "https",
            other => {
                return Err(format!(
                    "store {url:?}: unknown scheme {other:?} (etcd:// or etcds://)"
                ));
            }
        };
        let mut endpoints = Vec::new();
        for host in hosts.trim_end_matches('/').split(',') {
            let ok = host
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok || host.contains('/') || host.contains('@') {
                return Err(format!(
                    "store {url:?}: {host:?} is not HOST:PORT (give the user with --store-user)"
                ));
            }
            endpoints.push(format!("{http}://{host}"));
        }
        if !prefix.starts_with('/') {
            return Err(format!("store prefix {prefix:?} must start with /"));
        }
        let prefix = if prefix.ends_with('/') {
            prefix.to_string()
        } else {
            format!("{prefix}/")
        };
        Ok(EtcdOptions {
            tls: (http == "https").then(TlsFiles::default),
            endpoints,
            prefix,
            user: None,
            timeout: Duration::from_secs(5),
            revisions_kept: super::REVISIONS_KEPT,
        })
    }
}

/// Attempts of an optimistic write before it gives up as contended.
const ATTEMPTS: u32 = 32;

/// The leader's election key and its creation revision while this manager leads; `None`
/// otherwise. A fenced store's writes hold only while that key is still the same one.
pub type Guard = Arc<dyn Fn() -> Option<(Vec<u8>, i64)> + Send + Sync>;

/// The store in etcd.
pub struct EtcdStore {
    client: Client,
    prefix: String,
    location: String,
    changes: watch::Sender<u64>,
    watcher: Arc<Watcher>,
    guard: Option<Guard>,
    revisions_kept: u64,
}

/// The task following the groups, shared by the fenced views of one store.
struct Watcher(tokio::task::JoinHandle<()>);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a write read first: a key's value and the revision to compare against.
struct Seen {
    kv: Option<KeyValue>,
}

impl Seen {
    /// The comparison that holds only if the key is still as read.
    fn unchanged(&self, key: &str) -> Compare {
        match &self.kv {
            Some(kv) => Compare::mod_revision(key, CompareOp::Equal, kv.mod_revision()),
            None => Compare::version(key, CompareOp::Equal, 0),
        }
    }
}

impl EtcdStore {
    /// Connects, checks that etcd answers, and starts following the groups.
    pub async fn connect(options: EtcdOptions) -> Result<Arc<EtcdStore>, Error> {
        let location = format!("{} under {}", options.endpoints.join(","), options.prefix);
        let fail = |operation, e| Error::Etcd {
            store: location.clone(),
            operation,
            source: Box::new(e),
        };
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.timeout)
            .with_timeout(options.timeout)
            .with_keep_alive(Duration::from_secs(5), options.timeout);
        if let Some((user, password)) = &options.user {
            connect = connect.with_user(user.clone(), password.clone());
        }
        if let Some(files) = &options.tls {
            connect = connect.with_tls(tls_options(files).map_err(|e| fail("read TLS files", e))?);
        }
        let client = Client::connect(&options.endpoints, Some(connect))
            .await
            .map_err(|e| fail("connect", e))?;
        let groups = format!("{}groups/", options.prefix);
        let start = client
            .kv_client()
            .get(
                groups.as_str(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map_err(|e| fail("connect", e))?
            .header()
            .map_or(0, |h| h.revision());
        let changes = watch::Sender::new(start as u64);
        let watcher = tokio::spawn(follow(
            client.clone(),
            groups,
            start,
            changes.clone(),
            location.clone(),
        ));
        Ok(Arc::new(EtcdStore {
            client,
            prefix: options.prefix,
            location,
            changes,
            watcher: Arc::new(Watcher(watcher)),
            guard: None,
            revisions_kept: options.revisions_kept.max(1),
        }))
    }

    /// The same store, whose every write is an etcd transaction that holds only while
    /// `guard`'s election key is unchanged (the writer still leads): the leader's controller
    /// writes through it, so a deposed leader's late write is refused by etcd itself.
    pub fn fenced(&self, guard: Guard) -> Arc<EtcdStore> {
        Arc::new(EtcdStore {
            client: self.client.clone(),
            prefix: self.prefix.clone(),
            location: self.location.clone(),
            changes: self.changes.clone(),
            watcher: self.watcher.clone(),
            guard: Some(guard),
            revisions_kept: self.revisions_kept,
        })
    }

    /// The client, for leader election on the same etcd.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The key prefix (ends with `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn group_key(&self, id: &str) -> String {
        self.key(&format!("groups/{id}"))
    }

    /// Deletes a group's revisions numbered below `end`.
    fn delete_history_before(&self, id: &str, end: u64) -> TxnOp {
        TxnOp::delete(
            self.history_key(id, 0),
            Some(DeleteOptions::new().with_range(self.history_key(id, end))),
        )
    }

    fn history_key(&self, id: &str, revision: u64) -> String {
        self.key(&format!("history/{id}/{revision:020}"))
    }

    fn event_key(&self, seq: u64) -> String {
        self.key(&format!("events/{seq:020}"))
    }

    fn fail(&self, operation: &'static str, e: etcd_client::Error) -> Error {
        Error::Etcd {
            store: self.location.clone(),
            operation,
            source: Box::new(e),
        }
    }

    fn decode<T: for<'de> serde::Deserialize<'de>>(&self, kv: &KeyValue) -> Result<T, Error> {
        super::decode(
            &|| self.location.clone(),
            String::from_utf8_lossy(kv.key()),
            kv.value(),
        )
    }

    /// Reads several keys (or prefixes) at one revision, in one round trip.
    async fn read(
        &self,
        operation: &'static str,
        gets: Vec<TxnOp>,
    ) -> Result<Vec<Vec<KeyValue>>, Error> {
        let resp = self
            .client
            .kv_client()
            .txn(Txn::new().and_then(gets))
            .await
            .map_err(|e| self.fail(operation, e))?;
        Ok(resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(mut g) => g.take_kvs(),
                _ => Vec::new(),
            })
            .collect())
    }

    /// The group, the last history revision and the event counter, as a write sees them.
    async fn read_for_write(
        &self,
        operation: &'static str,
        id: &str,
        with_history: bool,
    ) -> Result<(Seen, Vec<KeyValue>, Seen), Error> {
        let history = if with_history {
            GetOptions::new().with_prefix()
        } else {
            GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Key, SortOrder::Descend)
                .with_limit(1)
        };
        let mut read = self
            .read(
                operation,
                vec![
                    TxnOp::get(self.group_key(id), None),
                    TxnOp::get(self.key(&format!("history/{id}/")), Some(history)),
                    TxnOp::get(self.key("events-seq"), None),
                ],
            )
            .await?
            .into_iter();
        let group = Seen {
            kv: read.next().unwrap_or_default().pop(),
        };
        let history = read.next().unwrap_or_default();
        let seq = Seen {
            kv: read.next().unwrap_or_default().pop(),
        };
        Ok((group, history, seq))
    }

    fn last_revision(&self, history: &[KeyValue]) -> u64 {
        history
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                key.rsplit('/').next()?.parse::<u64>().ok()
            })
            .max()
            .unwrap_or(0)
    }

    fn seq_of(&self, seen: &Seen) -> Result<u64, Error> {
        match &seen.kv {
            Some(kv) => self.decode(kv),
            None => Ok(0),
        }
    }

    /// The compares and puts that append `event` as the next one after `seen`.
    fn append_ops(
        &self,
        seen: &Seen,
        mut event: Event,
    ) -> Result<(Compare, Vec<TxnOp>, Event), Error> {
        let seq = self.seq_of(seen)? + 1;
        event.seq = seq;
        let counter = self.key("events-seq");
        let mut ops = vec![
            TxnOp::put(counter.as_str(), encode(&seq), None),
            TxnOp::put(self.event_key(seq), encode(&event), None),
        ];
        // Trim in steps of 100, so that most appends carry no range delete.
        if seq > EVENTS_KEPT && seq % 100 == 0 {
            ops.push(TxnOp::delete(
                self.event_key(0),
                Some(DeleteOptions::new().with_range(self.event_key(seq - EVENTS_KEPT))),
            ));
        }
        Ok((seen.unchanged(&counter), ops, event))
    }

    /// Runs a write transaction; `Ok(None)` when a comparison failed (someone else wrote).
    async fn try_write(
        &self,
        operation: &'static str,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<Option<u64>, Error> {
        let mut compares = compares;
        let mut otherwise = Vec::new();
        let mut fence = None;
        if let Some(guard) = &self.guard {
            let (key, revision) = guard().ok_or_else(|| self.not_leader(operation))?;
            compares.push(Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            ));
            // On failure, tell a lost leadership from contention.
            otherwise.push(TxnOp::get(key, None));
            fence = Some(revision);
        }
        let resp = self
            .client
            .kv_client()
            .txn(Txn::new().when(compares).and_then(ops).or_else(otherwise))
            .await
            .map_err(|e| self.fail(operation, e))?;
        if resp.succeeded() {
            return Ok(Some(resp.header().map_or(0, |h| h.revision()) as u64));
        }
        if let Some(revision) = fence {
            let held = resp.op_responses().into_iter().any(|r| {
                matches!(r, TxnOpResponse::Get(g)
                    if g.kvs().first().is_some_and(|kv| kv.create_revision() == revision))
            });
            if !held {
                return Err(self.not_leader(operation));
            }
        }
        Ok(None)
    }

    fn not_leader(&self, operation: &'static str) -> Error {
        Error::NotLeader {
            store: self.location.clone(),
            operation,
        }
    }

    /// A write of desired state: this writer sees its generation at once.
    fn advanced(&self, revision: u64) {
        advance(&self.changes, revision);
    }

    fn contended(&self, operation: &'static str) -> Error {
        Error::Contended {
            store: self.location.clone(),
            operation,
            attempts: ATTEMPTS,
        }
    }

    /// Writes a new current revision of a group (commit or rollback), retrying on contention.
    async fn write_revision(
        &self,
        operation: &'static str,
        id: &str,
        rollback: bool,
        make: impl Fn(
            &Option<StoredGroup>,
            &[KeyValue],
            u64,
        ) -> Result<(StoredGroup, Revision, Event), Error>,
    ) -> Result<(StoredGroup, Event), Error> {
        for _ in 0..ATTEMPTS {
            // A rollback needs the group to exist, and its whole history to choose from.
            let (group, history, seq) = self.read_for_write(operation, id, rollback).await?;
            let current: Option<StoredGroup> =
                group.kv.as_ref().map(|kv| self.decode(kv)).transpose()?;
            match &current {
                None if rollback => return Err(Error::UnknownGroup(id.into())),
                Some(g) if g.lifecycle == Lifecycle::Destroying => {
                    return Err(Error::BeingDestroyed(id.into()));
                }
                _ => {}
            }
            let next = self.last_revision(&history) + 1;
            let (stored, rev, event) = make(&current, &history, next)?;
            let (seq_cmp, mut ops, event) = self.append_ops(&seq, event)?;
            let group_key = self.group_key(id);
            let history_key = self.history_key(id, next);
            let compares = vec![
                group.unchanged(&group_key),
                Compare::version(history_key.as_str(), CompareOp::Equal, 0),
                seq_cmp,
            ];
            ops.push(TxnOp::put(group_key, encode(&stored), None));
            ops.push(TxnOp::put(history_key, encode(&rev), None));
            // The history is trimmed to the newest revisions in the same transaction.
            if let Some(end) = (next + 1).checked_sub(self.revisions_kept) {
                ops.push(self.delete_history_before(id, end));
            }
            if let Some(generation) = self.try_write(operation, compares, ops).await? {
                self.advanced(generation);
                return Ok((stored, event));
            }
        }
        Err(self.contended(operation))
    }
}

/// Moves the generation up to `revision` (never down: the watch and a local write may report
/// the same change in either order).
fn advance(changes: &watch::Sender<u64>, revision: u64) {
    changes.send_if_modified(|g| {
        let newer = revision > *g;
        if newer {
            *g = revision;
        }
        newer
    });
}

fn tls_options(files: &TlsFiles) -> Result<etcd_client::TlsOptions, etcd_client::Error> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| {
            etcd_client::Error::InvalidArgs(format!("cannot read {}: {e}", p.display()))
        })
    };
    let mut tls = etcd_client::TlsOptions::new();
    if let Some(ca) = &files.ca {
        tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    }
    if let Some((cert, key)) = &files.identity {
        tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(tls)
}

/// Follows the groups' keys and publishes etcd's revision at every change. When the watch
/// breaks (etcd restarted, a partition), it starts again from the last revision it saw, so
/// that no change is missed; if that revision was compacted away, it bumps the generation
/// anyway, since readers re-read every group on a change.
async fn follow(
    client: Client,
    groups: String,
    start: i64,
    changes: watch::Sender<u64>,
    location: String,
) {
    let mut seen = start;
    let mut failures = 0u32;
    loop {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(seen + 1);
        let outcome = async {
            let mut stream = client
                .watch_client()
                .watch(groups.as_str(), Some(options))
                .await?;
            while let Some(resp) = stream.message().await? {
                if resp.compact_revision() > 0 {
                    seen = resp.compact_revision() - 1;
                    return Err(etcd_client::Error::WatchError(format!(
                        "revision {} was compacted",
                        seen + 1
                    )));
                }
                failures = 0;
                if let Some(h) = resp.header()
                    && !resp.events().is_empty()
                {
                    seen = seen.max(h.revision());
                    advance(&changes, seen as u64);
                }
            }
            Err::<(), _>(etcd_client::Error::WatchError("the watch ended".into()))
        }
        .await;
        if let Err(e) = outcome {
            failures += 1;
            tracing::warn!(store = %location, error = %e, "watch of the groups broke; restarting it");
            // Readers re-read on any change: a bump makes them catch up with what the break
            // may have hidden.
            changes.send_modify(|g| *g += 1);
            let delay = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
            tokio::time::sleep(delay).await;
        }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn commit(&self, spec: &GroupSpec, event: Event) -> Result<(StoredGroup, Event), Error> {
        self.write_revision("commit", &spec.id, false, |_, _, next| {
            let (stored, rev) = committed(spec, next, now_ms());
            Ok((stored, rev, event.clone()))
        })
        .await
    }

    async fn rollback(&self, id: &str, to: Option<u64>) -> Result<(StoredGroup, Event), Error> {
        self.write_revision("rollback", id, true, |current, history, next| {
            let current = current.as_ref().expect("checked by write_revision");
            let history: Vec<Revision> = history
                .iter()
                .map(|kv| self.decode(kv))
                .collect::<Result<_, _>>()?;
            let target = rollback_target(current, &history, to)?;
            Ok(rolled_back(id, next, &target, now_ms()))
        })
        .await
    }

    async fn mark_destroying(&self, id: &str, event: Event) -> Result<(StoredGroup, Event), Error> {
        for _ in 0..ATTEMPTS {
            let (group, _, seq) = self.read_for_write("mark destroying", id, false).await?;
            let Some(kv) = &group.kv else {
                return Err(Error::UnknownGroup(id.into()));
            };
            let mut stored: StoredGroup = self.decode(kv)?;
            stored.lifecycle = Lifecycle::Destroying;
            let key = self.group_key(id);
            let (seq_cmp, mut ops, event) = self.append_ops(&seq, event.clone())?;
            ops.push(TxnOp::put(key.as_str(), encode(&stored), None));
            let compares = vec![group.unchanged(&key), seq_cmp];
            if let Some(generation) = self.try_write("mark destroying", compares, ops).await? {
                self.advanced(generation);
                return Ok((stored, event));
            }
        }
        Err(self.contended("mark destroying"))
    }

    async fn forget(&self, id: &str, event: Event) -> Result<Event, Error> {
        for _ in 0..ATTEMPTS {
            let (group, history, seq) = self.read_for_write("forget", id, false).await?;
            if group.kv.is_none() {
                return Err(Error::UnknownGroup(id.into()));
            }
            let key = self.group_key(id);
            let (seq_cmp, mut ops, event) = self.append_ops(&seq, event.clone())?;
            ops.push(TxnOp::delete(key.as_str(), None));
            // Only the last revision stays: the numbering of a group committed again goes on
            // from it.
            ops.push(self.delete_history_before(id, self.last_revision(&history)));
            ops.push(TxnOp::delete(self.key(&format!("status/{id}")), None));
            let compares = vec![group.unchanged(&key), seq_cmp];
            if let Some(generation) = self.try_write("forget", compares, ops).await? {
                self.advanced(generation);
                return Ok(event);
            }
        }
        Err(self.contended("forget"))
    }

    async fn group(&self, id: &str) -> Result<Option<StoredGroup>, Error> {
        let mut resp = self
            .client
            .kv_client()
            .get(self.group_key(id), None)
            .await
            .map_err(|e| self.fail("read a group", e))?;
        resp.take_kvs()
            .first()
            .map(|kv| self.decode(kv))
            .transpose()
    }

    async fn groups(&self) -> Result<Vec<StoredGroup>, Error> {
        let mut resp = self
            .client
            .kv_client()
            .get(self.key("groups/"), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.fail("read the groups", e))?;
        resp.take_kvs().iter().map(|kv| self.decode(kv)).collect()
    }

    async fn history(&self, id: &str) -> Result<Vec<Revision>, Error> {
        let mut resp = self
            .client
            .kv_client()
            .get(
                self.key(&format!("history/{id}/")),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(|e| self.fail("read a history", e))?;
        resp.take_kvs().iter().map(|kv| self.decode(kv)).collect()
    }

    async fn append(&self, event: Event) -> Result<Event, Error> {
        for _ in 0..ATTEMPTS {
            let mut read = self
                .read(
                    "append an event",
                    vec![TxnOp::get(self.key("events-seq"), None)],
                )
                .await?;
            let seq = Seen {
                kv: read.pop().unwrap_or_default().pop(),
            };
            let (cmp, ops, event) = self.append_ops(&seq, event.clone())?;
            if self
                .try_write("append an event", vec![cmp], ops)
                .await?
                .is_some()
            {
                return Ok(event);
            }
        }
        Err(self.contended("append an event"))
    }

    async fn events(
        &self,
        after: u64,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>, Error> {
        // Pages of keys in sequence order; the group filter is applied here, as in redb.
        const PAGE: i64 = 1000;
        let end = self.key("events0"); // '0' follows '/': the end of the `events/` range
        let mut from = self.event_key(after.saturating_add(1));
        let mut out = Vec::new();
        loop {
            let mut resp = self
                .client
                .kv_client()
                .get(
                    from.as_str(),
                    Some(GetOptions::new().with_range(end.as_str()).with_limit(PAGE)),
                )
                .await
                .map_err(|e| self.fail("read events", e))?;
            let more = resp.more();
            let kvs = resp.take_kvs();
            let Some(last) = kvs.last() else {
                return Ok(out);
            };
            let mut next = last.key().to_vec();
            next.push(0);
            for kv in &kvs {
                let event: Event = self.decode(kv)?;
                if group.is_none_or(|g| g == event.group) {
                    out.push(event);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            if !more {
                return Ok(out);
            }
            from = String::from_utf8(next).expect("event keys are ASCII");
        }
    }

    async fn last_event(&self) -> Result<u64, Error> {
        let mut resp = self
            .client
            .kv_client()
            .get(self.key("events-seq"), None)
            .await
            .map_err(|e| self.fail("read the event counter", e))?;
        resp.take_kvs().first().map_or(Ok(0), |kv| self.decode(kv))
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn location(&self) -> String {
        format!("etcd {}", self.location)
    }

    async fn publish_status(&self, id: &str, status: &serde_json::Value) -> Result<(), Error> {
        let ops = vec![TxnOp::put(
            self.key(&format!("status/{id}")),
            encode(status),
            None,
        )];
        self.try_write("publish a status", Vec::new(), ops)
            .await
            .map(|_| ())
    }

    async fn published_statuses(
        &self,
    ) -> Result<std::collections::HashMap<String, serde_json::Value>, Error> {
        let prefix = self.key("status/");
        let mut resp = self
            .client
            .kv_client()
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.fail("read the statuses", e))?;
        resp.take_kvs()
            .iter()
            .map(|kv| {
                let id = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
                Ok((id, self.decode(kv)?))
            })
            .collect()
    }
}
