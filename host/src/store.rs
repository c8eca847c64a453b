//! Durable state: committed group specs with their history, and the event log.
//!
//! Behind the [`Store`] trait so a distributed backend (etcd) can take the place of the
//! embedded one without touching the controller. [`EmbeddedStore`] keeps everything in one
//! redb file: ACID, fsynced at every commit, so a daemon killed at any moment loses no
//! committed spec. A state change and the event describing it are written in one transaction.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use tokio::sync::watch;

use crate::event::{Event, EventKind, now_ms};
use crate::spec::GroupSpec;

/// A store that cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened or used.
    #[error("store {path}: {operation}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// redb's error (boxed: it is large, and errors travel by value).
        #[source]
        source: Box<redb::Error>,
    },
    /// A stored record could not be decoded.
    #[error("store {path}: record {key} is damaged")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// Which record.
        key: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// No such group.
    #[error("no group {0:?}")]
    UnknownGroup(String),
    /// Rollback asked for with nothing to roll back to.
    #[error("group {0:?} has no earlier revision to roll back to")]
    NoEarlierRevision(String),
    /// A commit of a group whose destroy has not finished.
    #[error("group {0:?} is being destroyed; commit it again once it is gone")]
    BeingDestroyed(String),
}

/// Whether a group is being kept or taken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    /// Reconciled towards its spec.
    Managed,
    /// Its instances are being drained and destroyed; then it is forgotten.
    Destroying,
}

/// A committed group as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredGroup {
    /// The current spec.
    pub spec: GroupSpec,
    /// Its revision number (1 for the first commit).
    pub revision: u64,
    /// Managed or being destroyed.
    pub lifecycle: Lifecycle,
}

/// One entry of a group's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Revision {
    /// Revision number.
    pub revision: u64,
    /// When it was committed (Unix ms).
    pub time_ms: u64,
    /// How it came about: `commit` or `rollback to N`.
    pub cause: String,
    /// The spec.
    pub spec: GroupSpec,
}

/// The durable state the daemon needs. Every method is one transaction.
///
/// The store is the only owner of desired state: writers (the API, `group run`) change it
/// here, and the controller follows [`Store::watch`] (as Kubernetes' reflectors follow the API
/// server), so that no write can leave the controller on another revision than the store's.
pub trait Store: Send + Sync + 'static {
    /// Records a new revision of a group and makes it current (managed), with its event.
    /// Returns the stored group and the event as logged (with its sequence number).
    fn commit(&self, spec: &GroupSpec, event: Event) -> Result<(StoredGroup, Event), Error>;
    /// Makes the previous revision current again, as a new revision.
    fn rollback(&self, id: &str) -> Result<(StoredGroup, Event), Error>;
    /// Marks a group as being destroyed.
    fn mark_destroying(&self, id: &str, event: Event) -> Result<(StoredGroup, Event), Error>;
    /// Forgets a group (freed, or destroyed once empty); its history is kept.
    fn forget(&self, id: &str, event: Event) -> Result<Event, Error>;
    /// A group.
    fn group(&self, id: &str) -> Result<Option<StoredGroup>, Error>;
    /// Every group.
    fn groups(&self) -> Result<Vec<StoredGroup>, Error>;
    /// A group's revisions, oldest first.
    fn history(&self, id: &str) -> Result<Vec<Revision>, Error>;
    /// Appends an event; returns it with its sequence number.
    fn append(&self, event: Event) -> Result<Event, Error>;
    /// Events after `after`, oldest first, at most `limit`, optionally of one group.
    fn events(&self, after: u64, group: Option<&str>, limit: usize) -> Result<Vec<Event>, Error>;
    /// The sequence number of the newest event (0 when there is none).
    fn last_event(&self) -> Result<u64, Error>;
    /// The generation of the desired state: it grows at every change of a group (commit,
    /// rollback, destroy, forget). Level-triggered: on a change, read [`Store::groups`]. A
    /// distributed backend maps its own watch (etcd's revision) onto it.
    fn watch(&self) -> watch::Receiver<u64>;
}

const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
const HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("history");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// Events kept; older ones are trimmed as new ones arrive.
const EVENTS_KEPT: u64 = 100_000;

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
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|source| {
                StoreFail::Store(Error::Corrupt {
                    path: self.path.clone(),
                    key: id.to_string(),
                    source,
                })
            })
    }

    fn decode<T: for<'de> Deserialize<'de>>(
        &self,
        key: impl ToString,
        bytes: &[u8],
    ) -> Result<T, Error> {
        serde_json::from_slice(bytes).map_err(|source| Error::Corrupt {
            path: self.path.clone(),
            key: key.to_string(),
            source,
        })
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

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records serialise")
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

impl Store for EmbeddedStore {
    fn commit(&self, spec: &GroupSpec, event: Event) -> Result<(StoredGroup, Event), Error> {
        self.write_desired("commit", |txn| {
            if self
                .stored_in(txn, &spec.id)?
                .is_some_and(|g| g.lifecycle == Lifecycle::Destroying)
            {
                return Err(StoreFail::Store(Error::BeingDestroyed(spec.id.clone())));
            }
            let revision = next_revision(txn, &spec.id)?;
            let stored = StoredGroup {
                spec: spec.clone(),
                revision,
                lifecycle: Lifecycle::Managed,
            };
            let rev = Revision {
                revision,
                time_ms: now_ms(),
                cause: "commit".into(),
                spec: spec.clone(),
            };
            txn.open_table(HISTORY)?
                .insert((spec.id.as_str(), revision), encode(&rev).as_slice())?;
            txn.open_table(GROUPS)?
                .insert(spec.id.as_str(), encode(&stored).as_slice())?;
            let event = append_in(txn, event)?;
            Ok((stored, event))
        })
    }

    fn rollback(&self, id: &str) -> Result<(StoredGroup, Event), Error> {
        self.write_desired("rollback", |txn| {
            let current = self
                .stored_in(txn, id)?
                .ok_or_else(|| StoreFail::Store(Error::UnknownGroup(id.into())))?;
            if current.lifecycle == Lifecycle::Destroying {
                return Err(StoreFail::Store(Error::BeingDestroyed(id.into())));
            }
            // The newest revision whose configuration differs from the current one: rolling
            // back twice returns to where one started, like `kubectl rollout undo`.
            let mut target = None;
            {
                let history = txn.open_table(HISTORY)?;
                for entry in history.range((id, 0)..(id, current.revision))?.rev() {
                    let (k, v) = entry?;
                    let rev: Revision = serde_json::from_slice(v.value()).map_err(|source| {
                        StoreFail::Store(Error::Corrupt {
                            path: self.path.clone(),
                            key: format!("{id}@{}", k.value().1),
                            source,
                        })
                    })?;
                    if rev.spec != current.spec {
                        target = Some(rev);
                        break;
                    }
                }
            }
            let target =
                target.ok_or_else(|| StoreFail::Store(Error::NoEarlierRevision(id.into())))?;
            let revision = next_revision(txn, id)?;
            let stored = StoredGroup {
                spec: target.spec.clone(),
                revision,
                lifecycle: Lifecycle::Managed,
            };
            let rev = Revision {
                revision,
                time_ms: now_ms(),
                cause: format!("rollback to revision {}", target.revision),
                spec: target.spec.clone(),
            };
            txn.open_table(HISTORY)?
                .insert((id, revision), encode(&rev).as_slice())?;
            txn.open_table(GROUPS)?
                .insert(id, encode(&stored).as_slice())?;
            let event = append_in(
                txn,
                Event::now(
                    id,
                    EventKind::GroupCommitted,
                    None,
                    format!(
                        "revision {revision}: rolled back to revision {} (config {})",
                        target.revision,
                        target.spec.config_sha()
                    ),
                ),
            )?;
            Ok((stored, event))
        })
    }

    fn mark_destroying(&self, id: &str, event: Event) -> Result<(StoredGroup, Event), Error> {
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

    fn forget(&self, id: &str, event: Event) -> Result<Event, Error> {
        self.write_desired("forget", |txn| {
            let removed = txn.open_table(GROUPS)?.remove(id)?.is_some();
            if !removed {
                return Err(StoreFail::Store(Error::UnknownGroup(id.into())));
            }
            append_in(txn, event)
        })
    }

    fn group(&self, id: &str) -> Result<Option<StoredGroup>, Error> {
        let txn = self.db.begin_read().map_err(|e| self.db_error("read", e))?;
        let table = txn
            .open_table(GROUPS)
            .map_err(|e| self.db_error("read", e))?;
        match table.get(id).map_err(|e| self.db_error("read", e))? {
            Some(v) => Ok(Some(self.decode(id, v.value())?)),
            None => Ok(None),
        }
    }

    fn groups(&self) -> Result<Vec<StoredGroup>, Error> {
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

    fn history(&self, id: &str) -> Result<Vec<Revision>, Error> {
        let txn = self.db.begin_read().map_err(|e| self.db_error("read", e))?;
        let table = txn
            .open_table(HISTORY)
            .map_err(|e| self.db_error("read", e))?;
        let mut out = Vec::new();
        for entry in table
            .range((id, 0)..=(id, u64::MAX))
            .map_err(|e| self.db_error("read", e))?
        {
            let (k, v) = entry.map_err(|e| self.db_error("read", e))?;
            out.push(self.decode(format!("{id}@{}", k.value().1), v.value())?);
        }
        Ok(out)
    }

    fn append(&self, event: Event) -> Result<Event, Error> {
        self.write("append event", |txn| append_in(txn, event))
    }

    fn last_event(&self) -> Result<u64, Error> {
        let txn = self.db.begin_read().map_err(|e| self.db_error("read", e))?;
        let table = txn
            .open_table(EVENTS)
            .map_err(|e| self.db_error("read", e))?;
        let last = table.last().map_err(|e| self.db_error("read", e))?;
        Ok(last.map(|(k, _)| k.value()).unwrap_or(0))
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn events(&self, after: u64, group: Option<&str>, limit: usize) -> Result<Vec<Event>, Error> {
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

    fn committed(id: &str) -> Event {
        Event::now(id, EventKind::GroupCommitted, None, "committed")
    }

    #[test]
    fn commits_survive_reopening_with_history_and_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store.commit(&spec("a", 1), committed("a")).unwrap();
            store.commit(&spec("a", 2), committed("a")).unwrap();
            store.commit(&spec("b", 1), committed("b")).unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        let a = store.group("a").unwrap().unwrap();
        assert_eq!(a.revision, 2);
        assert_eq!(a.spec.size(), 2);
        assert_eq!(store.history("a").unwrap().len(), 2);
        assert_eq!(store.groups().unwrap().len(), 2);
        let events = store.events(0, None, 100).unwrap();
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(store.events(1, Some("b"), 100).unwrap().len(), 1);
    }

    #[test]
    fn rollback_restores_the_previous_configuration_as_a_new_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        assert!(matches!(store.rollback("x"), Err(Error::UnknownGroup(_))));
        store.commit(&spec("a", 1), committed("a")).unwrap();
        assert!(matches!(
            store.rollback("a"),
            Err(Error::NoEarlierRevision(_))
        ));
        store.commit(&spec("a", 3), committed("a")).unwrap();
        let (back, _) = store.rollback("a").unwrap();
        assert_eq!((back.revision, back.spec.size()), (3, 1));
        let (again, _) = store.rollback("a").unwrap();
        assert_eq!(
            (again.revision, again.spec.size()),
            (4, 3),
            "undo of the undo"
        );
        assert!(
            store.history("a").unwrap()[2]
                .cause
                .contains("rollback to revision 1")
        );
    }

    #[test]
    fn forgetting_keeps_history_and_refuses_unknown_groups() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        store.commit(&spec("a", 1), committed("a")).unwrap();
        store.mark_destroying("a", committed("a")).unwrap();
        assert_eq!(
            store.group("a").unwrap().unwrap().lifecycle,
            Lifecycle::Destroying
        );
        store.forget("a", committed("a")).unwrap();
        assert!(store.group("a").unwrap().is_none());
        assert_eq!(store.history("a").unwrap().len(), 1);
        assert!(matches!(
            store.forget("a", committed("a")),
            Err(Error::UnknownGroup(_))
        ));
    }
}
