//! The default store: one redb file in the data directory. ACID and fsynced at every commit,
//! so a daemon killed at any moment loses no committed spec.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

use super::{
    EVENTS_KEPT, Error, Lifecycle, Revision, Store, StoredGroup, committed, encode,
    rollback_target, rolled_back,
};
use crate::event::{Event, now_ms};
use crate::spec::GroupSpec;

const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
const HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("history");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// The default store: one redb file in the data directory.
pub struct EmbeddedStore {
    db: Database,
    path: PathBuf,
    changes: watch::Sender<u64>,
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

fn append_in(txn: &redb::WriteTransaction, mut event: Event) -> Result<Event, StoreFail> {
    let mut events = txn.open_table(EVENTS)?;
    let last = events.last()?.map(|(k, _)| k.value()).unwrap_or(0);
    event.seq = last + 1;
    events.insert(event.seq, encode(&event).as_slice())?;
    if event.seq > EVENTS_KEPT {
        let cutoff = event.seq - EVENTS_KEPT;
        events.retain_in(..cutoff, |_, _| false)?;
    }
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

fn put_group(
    txn: &redb::WriteTransaction,
    stored: &StoredGroup,
    rev: &Revision,
) -> Result<(), StoreFail> {
    let id = stored.spec.id.as_str();
    txn.open_table(HISTORY)?
        .insert((id, rev.revision), encode(rev).as_slice())?;
    txn.open_table(GROUPS)?
        .insert(id, encode(stored).as_slice())?;
    Ok(())
}

// redb calls are short, local and fsync-bound (about a millisecond), so they run inline.
#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn commit(&self, spec: &GroupSpec, event: Event) -> Result<(StoredGroup, Event), Error> {
        self.write_desired("commit", |txn| {
            if self
                .stored_in(txn, &spec.id)?
                .is_some_and(|g| g.lifecycle == Lifecycle::Destroying)
            {
                return Err(StoreFail::Store(Error::BeingDestroyed(spec.id.clone())));
            }
            let (stored, rev) = committed(spec, next_revision(txn, &spec.id)?, now_ms());
            put_group(txn, &stored, &rev)?;
            let event = append_in(txn, event)?;
            Ok((stored, event))
        })
    }

    async fn rollback(&self, id: &str) -> Result<(StoredGroup, Event), Error> {
        self.write_desired("rollback", |txn| {
            let current = self
                .stored_in(txn, id)?
                .ok_or_else(|| StoreFail::Store(Error::UnknownGroup(id.into())))?;
            if current.lifecycle == Lifecycle::Destroying {
                return Err(StoreFail::Store(Error::BeingDestroyed(id.into())));
            }
            let history = self.history_in(&txn.open_table(HISTORY)?, id)?;
            let target = rollback_target(&current, &history).map_err(StoreFail::Store)?;
            let (stored, rev, event) = rolled_back(id, next_revision(txn, id)?, &target, now_ms());
            put_group(txn, &stored, &rev)?;
            let event = append_in(txn, event)?;
            Ok((stored, event))
        })
    }

    async fn mark_destroying(&self, id: &str, event: Event) -> Result<(StoredGroup, Event), Error> {
        self.write_desired("mark destroying", |txn| {
            let mut stored = self
                .stored_in(txn, id)?
                .ok_or_else(|| StoreFail::Store(Error::UnknownGroup(id.into())))?;
            stored.lifecycle = Lifecycle::Destroying;
            txn.open_table(GROUPS)?
                .insert(id, encode(&stored).as_slice())?;
            let event = append_in(txn, event)?;
            Ok((stored, event))
        })
    }

    async fn forget(&self, id: &str, event: Event) -> Result<Event, Error> {
        self.write_desired("forget", |txn| {
            let removed = txn.open_table(GROUPS)?.remove(id)?.is_some();
            if !removed {
                return Err(StoreFail::Store(Error::UnknownGroup(id.into())));
            }
            append_in(txn, event)
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
        self.write("append event", |txn| append_in(txn, event))
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
