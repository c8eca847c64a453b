//! Durable state: committed group specs with their history, and the event log.
//!
//! Behind the [`Store`] trait so that the controller, the API and `group run` do not know
//! where it lives. [`EmbeddedStore`] (the default) keeps everything in one redb file;
//! [`EtcdStore`] keeps it in etcd under one key prefix, so that several managers share it.
//! In both, a state change and the event describing it are written in one transaction.

mod embedded;
mod etcd;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::event::{Event, EventKind};
use crate::spec::GroupSpec;

pub use embedded::EmbeddedStore;
pub use etcd::{EtcdOptions, EtcdStore, Guard, TlsFiles};

/// Revisions kept per group by default: older ones are trimmed in the transaction that writes
/// a new one (20 commits of a 900 KB spec made 35 MB when nothing was trimmed).
pub const REVISIONS_KEPT: u64 = 50;

/// Events kept; older ones are trimmed as new ones arrive.
const EVENTS_KEPT: u64 = 100_000;
/// Bytes of events kept by the embedded store; older ones are trimmed as new ones arrive.
/// (etcd bounds its own database with its space quota.)
const EVENTS_BYTES_KEPT: u64 = 64 << 20;

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
    /// etcd could not be reached or refused a request.
    #[error("store {store}: {operation}")]
    Etcd {
        /// The endpoints and key prefix.
        store: String,
        /// What was being done.
        operation: &'static str,
        /// The client's error.
        #[source]
        source: Box<etcd_client::Error>,
    },
    /// Other writers kept changing what a write depends on.
    #[error("store {store}: {operation}: still contended after {attempts} attempts")]
    Contended {
        /// The endpoints and key prefix.
        store: String,
        /// What was being done.
        operation: &'static str,
        /// How many times it was tried.
        attempts: u32,
    },
    /// A fenced write by a manager that no longer leads.
    #[error("store {store}: {operation}: refused, this manager no longer leads")]
    NotLeader {
        /// The endpoints and key prefix.
        store: String,
        /// What was being done.
        operation: &'static str,
    },
    /// A stored record could not be decoded.
    #[error("store {store}: record {key} is damaged")]
    Corrupt {
        /// The database file, or the etcd endpoints and prefix.
        store: String,
        /// Which record.
        key: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// No such group.
    #[error("no group {0:?}")]
    UnknownGroup(String),
    /// Rollback asked for to a revision that cannot be used.
    #[error("group {id:?} cannot go back to revision {revision}: {problem}")]
    NoSuchRevision {
        /// The group.
        id: String,
        /// The revision asked for.
        revision: u64,
        /// Why not.
        problem: String,
    },
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
/// Async because a distributed backend answers over the network; a call that cannot reach it
/// fails with [`Error::Etcd`] within the backend's request timeout.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records a new revision of a group and makes it current (managed), with its event.
    /// Returns the stored group and the event as logged (with its sequence number).
    async fn commit(&self, spec: &GroupSpec, event: Event) -> Result<(StoredGroup, Event), Error>;
    /// Makes the previous revision current again, as a new revision.
    async fn rollback(&self, id: &str, to: Option<u64>) -> Result<(StoredGroup, Event), Error>;
    /// Marks a group as being destroyed.
    async fn mark_destroying(&self, id: &str, event: Event) -> Result<(StoredGroup, Event), Error>;
    /// Forgets a group (freed, or destroyed once empty); its history is kept.
    async fn forget(&self, id: &str, event: Event) -> Result<Event, Error>;
    /// A group.
    async fn group(&self, id: &str) -> Result<Option<StoredGroup>, Error>;
    /// Every group, ordered by id.
    async fn groups(&self) -> Result<Vec<StoredGroup>, Error>;
    /// A group's revisions, oldest first.
    async fn history(&self, id: &str) -> Result<Vec<Revision>, Error>;
    /// Appends an event; returns it with its sequence number.
    async fn append(&self, event: Event) -> Result<Event, Error>;
    /// Events after `after`, oldest first, at most `limit`, optionally of one group.
    async fn events(
        &self,
        after: u64,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>, Error>;
    /// The sequence number of the newest event (0 when there is none).
    async fn last_event(&self) -> Result<u64, Error>;
    /// The generation of the desired state: it grows at every change of a group (commit,
    /// rollback, destroy, forget), and a writer sees its own write's generation here as soon
    /// as the write returns. Level-triggered: on a change, read [`Store::groups`]. The etcd
    /// backend uses etcd's revision.
    fn watch(&self) -> watch::Receiver<u64>;
    /// Where the state lives, for messages and `status`.
    fn location(&self) -> String;
    /// Publishes a group's status (as JSON) for the other managers to show. Only a shared
    /// store keeps it: with the embedded one, the only reader is this process's controller.
    async fn publish_status(&self, _id: &str, _status: &serde_json::Value) -> Result<(), Error> {
        Ok(())
    }
    /// The last published status of every group.
    async fn published_statuses(
        &self,
    ) -> Result<std::collections::HashMap<String, serde_json::Value>, Error> {
        Ok(Default::default())
    }
}

/// The revision a rollback returns to: the newest one before `current` whose configuration
/// differs from it, so that rolling back twice returns to where one started, like
/// `kubectl rollout undo`. `history` is oldest first.
fn rollback_target(
    current: &StoredGroup,
    history: &[Revision],
    to: Option<u64>,
) -> Result<Revision, Error> {
    if let Some(n) = to {
        if n == current.revision {
            return Err(Error::NoSuchRevision {
                id: current.spec.id.clone(),
                revision: n,
                problem: "it is the current revision".into(),
            });
        }
        return history
            .iter()
            .find(|r| r.revision == n)
            .cloned()
            .ok_or_else(|| Error::NoSuchRevision {
                id: current.spec.id.clone(),
                revision: n,
                problem: format!(
                    "it is not in its history (revisions {})",
                    history
                        .iter()
                        .map(|r| r.revision.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
    }
    history
        .iter()
        .rev()
        .filter(|r| r.revision < current.revision)
        .find(|r| r.spec != current.spec)
        .cloned()
        .ok_or_else(|| Error::NoEarlierRevision(current.spec.id.clone()))
}

/// The group, its new history entry and the event of a rollback to `target`.
fn rolled_back(
    id: &str,
    revision: u64,
    target: &Revision,
    time_ms: u64,
) -> (StoredGroup, Revision, Event) {
    let stored = StoredGroup {
        spec: target.spec.clone(),
        revision,
        lifecycle: Lifecycle::Managed,
    };
    let rev = Revision {
        revision,
        time_ms,
        cause: format!("rollback to revision {}", target.revision),
        spec: target.spec.clone(),
    };
    let event = Event::now(
        id,
        EventKind::GroupCommitted,
        None,
        format!(
            "revision {revision}: rolled back to revision {} (config {})",
            target.revision,
            target.spec.config_sha()
        ),
    );
    (stored, rev, event)
}

/// The group and its new history entry of a commit.
fn committed(spec: &GroupSpec, revision: u64, time_ms: u64) -> (StoredGroup, Revision) {
    (
        StoredGroup {
            spec: spec.clone(),
            revision,
            lifecycle: Lifecycle::Managed,
        },
        Revision {
            revision,
            time_ms,
            cause: "commit".into(),
            spec: spec.clone(),
        },
    )
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records serialise")
}

fn decode<T: for<'de> Deserialize<'de>>(
    store: &dyn Fn() -> String,
    key: impl ToString,
    bytes: &[u8],
) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::Corrupt {
        store: store(),
        key: key.to_string(),
        source,
    })
}
