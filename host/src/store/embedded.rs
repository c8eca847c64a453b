//! The default store: one redb file in the data directory. ACID and fsynced at every commit,
//! so a daemon killed at any moment loses no committed spec.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

use super::{
    EVENTS_BYTES_KEPT, EVENTS_KEPT, Error, Lifecycle, Revision, Store, StoredGroup, committed,
    encode, rollback_target, rolled_back,
};
use crate::event::{Event, now_ms};
use crate::spec::GroupSpec;

const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
const HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("history");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Running totals kept with the tables they count (`event-bytes`).
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// The default store: one redb file in the data directory.
pub struct EmbeddedStore {
    db: Database,
    path: PathBuf,
    changes: watch::Sender<u64>,
    /// Events kept: at most this many, of at most this many bytes in all.
    events_kept: (u64, u64),
    /// Revisions kept per group (at least 1).
    revisions_kept: u64,
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<EmbeddedStore, Error> {
        let db = Database::create(path).map_err(|e| Error::Database {
            path: path.to_path_buf(),
            operation: "open",
            source: Box::new(e.into()),
        })?;
        EmbeddedStore::init(db, path.to_path_buf())
    }

    /// Keeps the last `n` revisions of each group (at least 1).
    pub fn with_revisions_kept(mut self, n: u64) -> EmbeddedStore {
        self.revisions_kept = n.max(1);
        self
    }

    /// A store that lives in memory only: `group run` keeps its desired state there, so that
    /// it drives the controller exactly as the daemon does.
    pub fn in_memory() -> Result<EmbeddedStore, Error> {
        let path = PathBuf::from("(memory)");
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| Error::Database {
                path: path.clone(),
                operation: "open",
                source: Box::new(e.into()),
            })?;
        EmbeddedStore::init(db, path)
    }

    fn init(db: Database, path: PathBuf) -> Result<EmbeddedStore, Error> {
        let store = EmbeddedStore {
            db,
            path,
            changes: watch::Sender::new(0),
            events_kept: (EVENTS_KEPT, EVENTS_BYTES_KEPT),
            revisions_kept: super::REVISIONS_KEPT,
        };
        // Create the tables so that readers never meet a missing one.
        store.write("create tables", |txn| {
            txn.open_table(GROUPS)?;
            txn.open_table(HISTORY)?;
            txn.open_table(EVENTS)?;
            Ok(())
        })?;
        Ok(store)
    }

    fn db_error(&self, operation: &'static str, e: impl Into<redb::Error>) -> Error {
        Error::Database {
            path: self.path.clone(),
            operation,
            source: Box::new(e.into()),
        }
    }

    fn write<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreFail>,
    ) -> Result<T, Error> {
        let txn = self
            .db
            .begin_write()
            .map_err(|e| self.db_error(operation, e))?;
        let out = match f(&txn) {
            Ok(v) => v,
            Err(StoreFail::Redb(e)) => return Err(self.db_error(operation, e)),
            Err(StoreFail::Store(e)) => return Err(e),
        };
        txn.commit().map_err(|e| self.db_error(operation, e))?;
        Ok(out)
    }

    /// A write of desired state: watchers see it once it is durable.
    fn write_desired<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreFail>,
    ) -> Result<T, Error> {
        let out = self.write(operation, f)?;
        self.changes.send_modify(|g| *g += 1);
        Ok(out)
    }

    fn stored_in(
        &self,
        txn: &redb::WriteTransaction,
        id: &str,
    ) -> Result<Option<StoredGroup>, StoreFail> {
        let groups = txn.open_table(GROUPS)?;
        let Some(v) = groups.get(id)? else {
            return Ok(None);
        };
        self.decode(id, v.value())
            .map(Some)
            .map_err(StoreFail::Store)
    }

    fn history_in(
        &self,
        table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
        id: &str,
    ) -> Result<Vec<Revision>, StoreFail> {
        let mut out = Vec::new();
        for entry in table.range((id, 0)..=(id, u64::MAX))? {
            let (k, v) = entry?;
            out.push(
                self.decode(format!("{id}@{}", k.value().1), v.value())
                    .map_err(StoreFail::Store)?,
            );
        }
        Ok(out)
    }

    fn decode<T: for<'de> serde::Deserialize<'de>>(
        &self,
        key: impl ToString,
        bytes: &[u8],
    ) -> Result<T, Error> {
        super::decode(&|| self.location(), key, bytes)
    }
}

/// Inside a write transaction: a redb failure, or a store-level refusal.
enum StoreFail {
    Redb(redb::Error),
    Store(Error),
}

impl<E: Into<redb::Error>> From<E> for StoreFail {
    fn from(e: E) -> Self {
        StoreFail::Redb(e.into())
    }
}

fn append_in(
    txn: &redb::WriteTransaction,
    mut event: Event,
    (count_kept, bytes_kept): (u64, u64),
) -> Result<Event, StoreFail> {
    let mut events = txn.open_table(EVENTS)?;
    let last = events.last()?.map(|(k, _)| k.value()).unwrap_or(0);
    event.seq = last + 1;
    let bytes = encode(&event);
    events.insert(event.seq, bytes.as_slice())?;
    // Bounded by count and by bytes: many events of long messages must not fill the disk.
    // Sequence numbers are contiguous (trimmed from the front only), so the count is the
    // span. The byte total starts at the first append of a store that had none; an older
    // store's events weigh nothing until the count trims them.
    let mut counters = txn.open_table(COUNTERS)?;
    let mut total = counters.get("event-bytes")?.map_or(0, |v| v.value()) + bytes.len() as u64;
    loop {
        let oldest = events
            .first()?
            .map(|(k, v)| (k.value(), v.value().len() as u64));
        let Some((first, len)) = oldest else {
            break;
        };
        let count = event.seq - first + 1;
        if first == event.seq || (count <= count_kept && total <= bytes_kept) {
            break;
        }
        events.remove(first)?;
        total = total.saturating_sub(len);
    }
    counters.insert("event-bytes", total)?;
    Ok(event)
}

fn next_revision(txn: &redb::WriteTransaction, id: &str) -> Result<u64, StoreFail> {
    let history = txn.open_table(HISTORY)?;
    let last = history
        .range((id, 0)..=(id, u64::MAX))?
        .next_back()
        .transpose()?
        .map(|(k, _)| k.value().1)
        .unwrap_or(0);
    Ok(last + 1)
}

/// Writes a new current revision, trimming the history to the newest `kept` in the same
/// transaction.
fn put_group(
    txn: &redb::WriteTransaction,
    stored: &StoredGroup,
    rev: &Revision,
    kept: u64,
) -> Result<(), StoreFail> {
    let id = stored.spec.id.as_str();
    let mut history = txn.open_table(HISTORY)?;
    history.insert((id, rev.revision), encode(rev).as_slice())?;
    trim_history(&mut history, id, rev.revision, kept)?;
    txn.open_table(GROUPS)?
        .insert(id, encode(stored).as_slice())?;
    Ok(())
}

/// Removes a group's revisions older than the newest `kept` up to `last`.
fn trim_history(
    history: &mut redb::Table<(&'static str, u64), &'static [u8]>,
    id: &str,
    last: u64,
    kept: u64,
) -> Result<(), StoreFail> {
    let Some(end) = (last + 1).checked_sub(kept.max(1)) else {
        return Ok(());
    };
    history.retain_in((id, 0)..(id, end), |_, _| false)?;
    Ok(())
}

// redb calls are short, local and fsync-bound (about a millisecond), so they run inline.
#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn commit(&self, spec: &GroupSpec, event: Event) -> Result<(StoredGroup, Event), Error> {
        let kept = self.events_kept;
        let revisions_kept = self.revisions_kept;
        self.write_desired("commit", |txn| {
            if self
                .stored_in(txn, &spec.id)?
                .is_some_and(|g| g.lifecycle == Lifecycle::Destroying)
            {
                return Err(StoreFail::Store(Error::BeingDestroyed(spec.id.clone())));
            }
            let (stored, rev) = committed(spec, next_revision(txn, &spec.id)?, now_ms());
            put_group(txn, &stored, &rev, revisions_kept)?;
            let event = append_in(txn, event, kept)?;
            Ok((stored, event))
        })
    }

    async fn rollback(&self, id: &str, to: Option<u64>) -> Result<(StoredGroup, Event), Error> {
        let kept = self.events_kept;
        let revisions_kept = self.revisions_kept;
        self.write_desired("rollback", |txn| {
            let current = self
                .stored_in(txn, id)?
                .ok_or_else(|| StoreFail::Store(Error::UnknownGroup(id.into())))?;
            if current.lifecycle == Lifecycle::Destroying {
                return Err(StoreFail::Store(Error::BeingDestroyed(id.into())));
            }
            let history = self.history_in(&txn.open_table(HISTORY)?, id)?;
            let target = rollback_target(&current, &history, to).map_err(StoreFail::Store)?;
            let (stored, rev, event) = rolled_back(id, next_revision(txn, id)?, &target, now_ms());
            put_group(txn, &stored, &rev, revisions_kept)?;
            let event = append_in(txn, event, kept)?;
            Ok((stored, event))
        })
    }

    async fn mark_destroying(&self, id: &str, event: Event) -> Result<(StoredGroup, Event), Error> {
        let kept = self.events_kept;
        self.write_desired("mark destroying", |txn| {
            let mut stored = self
                .stored_in(txn, id)?
                .ok_or_else(|| StoreFail::Store(Error::UnknownGroup(id.into())))?;
            stored.lifecycle = Lifecycle::Destroying;
            txn.open_table(GROUPS)?
                .insert(id, encode(&stored).as_slice())?;
            let event = append_in(txn, event, kept)?;
            Ok((stored, event))
        })
    }

    async fn forget(&self, id: &str, event: Event) -> Result<Event, Error> {
        let kept = self.events_kept;
        self.write_desired("forget", |txn| {
            let removed = txn.open_table(GROUPS)?.remove(id)?.is_some();
            if !removed {
                return Err(StoreFail::Store(Error::UnknownGroup(id.into())));
            }
            // Only the last revision stays: the numbering of a group committed again goes on
            // from it.
            let last = next_revision(txn, id)? - 1;
            trim_history(&mut txn.open_table(HISTORY)?, id, last, 1)?;
            append_in(txn, event, kept)
        })
    }

    async fn group(&self, id: &str) -> Result<Option<StoredGroup>, Error> {
        let txn = self.db.begin_read().map_err(|e| self.db_error("read", e))?;
        let table = txn
            .open_table(GROUPS)
            .map_err(|e| self.db_error("read", e))?;
        match table.get(id).map_err(|e| self.db_error("read", e))? {
            Some(v) => Ok(Some(self.decode(id, v.value())?)),
            None => Ok(None),
        }
    }

    async fn groups(&self) -> Result<Vec<StoredGroup>, Error> {
        let txn = self.db.begin_read().map_err(|e| self.db_error("read", e))?;
        let table = txn
            .open_table(GROUPS)
            .map_err(|e| self.db_error("read", e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.db_error("read", e))? {
            let (k, v) = entry.map_err(|e| self.db_error("read", e))?;
            out.push(self.decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    async fn history(&self, id: &str) -> Result<Vec<Revision>, Error> {
        let txn = self.db.begin_read().map_err(|e| self.db_error("read", e))?;
        let table = txn
            .open_table(HISTORY)
            .map_err(|e| self.db_error("read", e))?;
        match self.history_in(&table, id) {
            Ok(h) => Ok(h),
            Err(StoreFail::Redb(e)) => Err(self.db_error("read", e)),
            Err(StoreFail::Store(e)) => Err(e),
        }
    }

    async fn append(&self, event: Event) -> Result<Event, Error> {
        let kept = self.events_kept;
        self.write("append event", |txn| append_in(txn, event, kept))
    }

    async fn last_event(&self) -> Result<u64, Error> {
        let txn = self.db.begin_read().map_err(|e| self.db_error("read", e))?;
        let table = txn
            .open_table(EVENTS)
            .map_err(|e| self.db_error("read", e))?;
        let last = table.last().map_err(|e| self.db_error("read", e))?;
        Ok(last.map(|(k, _)| k.value()).unwrap_or(0))
    }

    async fn events(
        &self,
        after: u64,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>, Error> {
        let txn = self.db.begin_read().map_err(|e| self.db_error("read", e))?;
        let table = txn
            .open_table(EVENTS)
            .map_err(|e| self.db_error("read", e))?;
        let mut out = Vec::new();
        for entry in table
            .range(after.saturating_add(1)..)
            .map_err(|e| self.db_error("read", e))?
        {
            let (k, v) = entry.map_err(|e| self.db_error("read", e))?;
            let event: Event = self.decode(format!("event {}", k.value()), v.value())?;
            if group.is_none_or(|g| g == event.group) {
                out.push(event);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, size: u32) -> GroupSpec {
        GroupSpec::parse(
            &format!(
                r#"{{"ID": "{id}", "Properties": {{"Allocation": {{"Size": {size}}},
                "Instance": {{"Plugin": "instance-file"}}, "Flavor": {{"Plugin": "flavor-vanilla"}}}}}}"#
            ),
            "test",
            false,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn the_event_log_is_bounded_by_count_and_by_bytes() {
        let event = |n: usize| {
            Event::now(
                "g",
                crate::event::EventKind::StepFailed,
                None,
                format!("{n} {}", "x".repeat(1 << 20)),
            )
        };
        let mut store = EmbeddedStore::in_memory().unwrap();
        store.events_kept = (1000, 64 << 10);
        for n in 0..200 {
            store.append(event(n)).await.unwrap();
        }
        let kept = store.events(0, None, 10_000).await.unwrap();
        // Each message was clipped to its bound, with a marker.
        assert!(
            kept.iter()
                .all(|e| e.message.len() < crate::event::MESSAGE_MAX + 64)
        );
        assert!(
            kept[0].message.ends_with("more bytes cut]"),
            "{}",
            kept[0].message
        );
        let bytes: usize = kept.iter().map(|e| encode(e).len()).sum();
        assert!(bytes <= 64 << 10, "{bytes} bytes kept");
        assert!(kept.len() > 20, "only {} kept", kept.len());
        let seqs: Vec<u64> = kept.iter().map(|e| e.seq).collect();
        assert_eq!(*seqs.last().unwrap(), 200, "the newest stay");
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

        store.events_kept = (10, 64 << 10);
        store.append(event(200)).await.unwrap();
        let kept = store.events(0, None, 10_000).await.unwrap();
        assert_eq!(
            kept.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (192..=201).collect::<Vec<_>>()
        );
    }

    // The behaviour both backends share is checked in tests/store.rs; this is what only a
    // file can show.
    #[tokio::test]
    async fn commits_survive_reopening_with_history_and_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let event = |id: &str| Event::now(id, crate::event::EventKind::GroupCommitted, None, "c");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store.commit(&spec("a", 1), event("a")).await.unwrap();
            store.commit(&spec("a", 2), event("a")).await.unwrap();
            store.commit(&spec("b", 1), event("b")).await.unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        let a = store.group("a").await.unwrap().unwrap();
        assert_eq!((a.revision, a.spec.size()), (2, 2));
        assert_eq!(store.history("a").await.unwrap().len(), 2);
        assert_eq!(store.groups().await.unwrap().len(), 2);
        let events = store.events(0, None, 100).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }
}
