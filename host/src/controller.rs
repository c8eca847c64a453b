//! The controller: keeps every committed group reconciled.
//!
//! Each group has one task, so one group is never reconciled twice at once (its queue slot);
//! a semaphore bounds how many groups reconcile concurrently. A pass observes the group through
//! its instance plugin (`describe` by the group tag) and flavor (`healthy`), plans with the pure
//! [`crate::plan::plan`], executes the steps, and records an event for each. The task requeues
//! at once while there is work, at the poll interval otherwise (the safety net that notices a
//! deleted instance), and with exponential back-off after an error. It never gives up.
//! Between passes a group remembers only what a restart may forget: a health cache, the
//! [`crate::expectations`] of what it just provisioned and destroyed (so a lagging listing is
//! not acted on twice), and the instances it lost soon after provisioning (a crash loop: back-off,
//! then a pause). A restarted controller re-derives everything else from the instances' tags.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};

use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

use crate::event::{Event, EventKind, now_ms};
use crate::expectations::{Expectations, Loss, Windows};
use crate::leader::Fence;
use crate::listing::Listings;
use crate::plan::{self, Desired, Member, Phase, Plan, Step};
use crate::plugin::combo::{self, GroupFlavor};
use crate::plugin::{
    self, Allocation, Description, DestroyContext, Health, Index, InstanceClient, InstanceSpec,
    Plugin, Tags,
};
use crate::spec::{GroupSpec, tags};
use crate::store::{self, Lifecycle, Store, StoredGroup};

/// Where the controller finds plugins by name (the registry, or a live view of it).
pub trait PluginSource: Send + Sync + 'static {
    /// The plugin called `name`.
    fn plugin(&self, name: &str) -> Result<Arc<Plugin>, plugin::Error>;
}

impl PluginSource for plugin::Registry {
    fn plugin(&self, name: &str) -> Result<Arc<Plugin>, plugin::Error> {
        self.get(name)
    }
}

/// Where events go (the terminal, the event log, subscribers).
pub trait EventSink: Send + Sync + 'static {
    /// Records one event.
    fn record(&self, event: Event);
    /// Announces an event already stored with the state change it describes (a destroyed
    /// group's end is written with its removal, in one transaction).
    fn stored(&self, event: Event);
}

/// A failed reconcile step: which group, which instance, what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A plugin call failed or faulted.
    #[error("group {group}{}: {action}", instance.as_deref().map(|i| format!(", instance {i}")).unwrap_or_default())]
    Plugin {
        /// The group.
        group: String,
        /// The instance, when the step concerned one.
        instance: Option<String>,
        /// What was being done.
        action: String,
        /// The plugin's error (behind a pointer: it is large and errors travel by value).
        #[source]
        source: Arc<plugin::Error>,
    },
    /// Instances named for an operation are not members of the group (as its instance
    /// plugin lists them now).
    #[error("group {group}: not a member of the group: {}", instances.join(", "))]
    NotMember {
        /// The group.
        group: String,
        /// The ids that are not members.
        instances: Vec<String>,
    },
    /// This manager may not act: it is not the leader, or its lease may have lapsed.
    #[error("group {group}: {source}")]
    NotLeader {
        /// The group.
        group: String,
        /// Why.
        #[source]
        source: crate::leader::Fenced,
    },
}

impl Error {
    /// Whether retrying can help: a plugin's `invalid` answer says it cannot (the same spec
    /// will be refused again), everything else (transient errors, faults, a missing plugin)
    /// is retried with back-off.
    fn refused_as_invalid(&self) -> bool {
        match self {
            Error::Plugin { source, .. } => {
                matches!(source.guest_error(), Some(plugin::GuestError::Invalid(_)))
            }
            Error::NotLeader { .. } | Error::NotMember { .. } => false,
        }
    }

    /// A plugin the group needs is still being loaded (right after start): retried, not news.
    fn is_loading(&self) -> bool {
        match self {
            Error::Plugin { source, .. } => matches!(**source, plugin::Error::Loading { .. }),
            Error::NotLeader { .. } | Error::NotMember { .. } => false,
        }
    }

    /// Not news for the event log: a plugin still loading, or a manager that stopped leading
    /// (it records nothing more; the new leader takes over).
    fn is_quiet(&self) -> bool {
        self.is_loading() || matches!(self, Error::NotLeader { .. })
    }

    fn event_kind(&self) -> EventKind {
        match self {
            Error::Plugin { source, .. } if matches!(**source, plugin::Error::Faulted { .. }) => {
                EventKind::PluginFault
            }
            Error::Plugin { .. } | Error::NotLeader { .. } | Error::NotMember { .. } => {
                EventKind::StepFailed
            }
        }
    }

    fn instance(&self) -> Option<&str> {
        match self {
            Error::Plugin { instance, .. } => instance.as_deref(),
            Error::NotLeader { .. } | Error::NotMember { .. } => None,
        }
    }
}

/// The delay before retry number `attempt` (from 1): exponential from `base`, capped at `max`,
/// with "equal jitter" (half fixed, half random) so that many groups behind one broken plugin
/// do not retry in lockstep. `random` is in [0, 1).
pub fn backoff(attempt: u32, base: Duration, max: Duration, random: f64) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
    exp / 2 + exp.mul_f64(random.clamp(0.0, 1.0) / 2.0)
}

/// A number in [0, 1) that differs between calls and processes.
fn random_unit() -> f64 {
    use std::hash::BuildHasher;
    let n = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    (n >> 11) as f64 / (1u64 << 53) as f64
}

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often a group is observed when nothing is happening.
    pub poll_interval: Duration,
    /// How many groups may reconcile at the same time.
    pub max_concurrent: usize,
    /// The longest back-off after repeated errors.
    pub max_backoff: Duration,
    /// Checked before every plugin call of a pass: one of several managers calls plugins only
    /// while it surely leads (always open for a lone manager).
    pub fence: Fence,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            poll_interval: Duration::from_secs(1),
            max_concurrent: 8,
            max_backoff: Duration::from_secs(30),
            fence: Fence::default(),
        }
    }
}

/// One member as the controller last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceStatus {
    /// Instance id.
    pub id: String,
    /// The pet's logical id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logical_id: Option<String>,
    /// The flavor's verdict.
    pub health: Health,
    /// The configuration it was made from.
    pub config_sha: String,
    /// Whether that is the group's current configuration.
    pub current: bool,
    /// When it was provisioned (Unix ms; 0 when unknown).
    pub created_ms: u64,
    /// Protected from scale-in and from a rolling update's removals.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protected: bool,
    /// An operator asked for its removal (`destroy-instances`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removal_requested: bool,
}

/// Where a group stands, as of its last pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupStatus {
    /// The group id.
    pub group: String,
    /// Converged, converging, updating or paused as of the last pass; failing when that pass
    /// failed (see `last_error`).
    pub phase: Phase,
    /// The revision of the spec the last pass reconciled (0 before the first pass).
    pub revision: u64,
    /// Why it is paused or waiting.
    pub messages: Vec<String>,
    /// The allocation's size.
    pub size: usize,
    /// Members on the current configuration.
    pub current: usize,
    /// The current configuration hash.
    pub config_sha: String,
    /// The members.
    pub instances: Vec<InstanceStatus>,
    /// The last pass's error, if it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Number of passes so far.
    pub passes: u64,
    /// When the last pass ended (Unix ms).
    pub updated_ms: u64,
    /// The group is being destroyed.
    pub destroying: bool,
    /// How long the last pass took (ms).
    pub last_pass_ms: u64,
    /// Time spent in passes so far (ms).
    pub pass_ms_total: u64,
}

impl GroupStatus {
    fn initial(spec: &GroupSpec) -> GroupStatus {
        GroupStatus {
            group: spec.id.clone(),
            phase: Phase::Converging,
            revision: 0,
            messages: Vec::new(),
            size: spec.size(),
            current: 0,
            config_sha: spec.config_sha(),
            instances: Vec::new(),
            last_error: None,
            passes: 0,
            updated_ms: now_ms(),
            destroying: false,
            last_pass_ms: 0,
            pass_ms_total: 0,
        }
    }
}

/// What the controller should do with a group: reconcile it to `spec` (revision `revision` of
/// the group, 0 when nothing numbers revisions), or destroy everything it has.
#[derive(Debug, Clone)]
struct Intent {
    spec: Arc<GroupSpec>,
    revision: u64,
    destroying: bool,
}

/// The members a group's last successful pass planned from, with the spec it observed them
/// for: a commit's preview plans from them instead of listing and health-checking inside the
/// request.
struct LastObserved {
    spec: Arc<GroupSpec>,
    members: Arc<Vec<Member>>,
    at: Instant,
}

type ObservedSlot = Arc<Mutex<Option<LastObserved>>>;

struct Handle {
    intent: watch::Sender<Intent>,
    status: watch::Receiver<GroupStatus>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// Wakes the task for a pass now.
    wake: Arc<tokio::sync::Notify>,
    /// What its last successful pass planned from.
    observed: ObservedSlot,
    /// The group left the store: the task was told to stop and ends after its current step.
    retired: bool,
}

/// Keeps groups reconciled. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

struct Inner {
    plugins: Arc<dyn PluginSource>,
    store: Arc<dyn Store>,
    events: Arc<dyn EventSink>,
    options: Options,
    permits: Semaphore,
    groups: Mutex<BTreeMap<String, Handle>>,
    /// The store generation the group tasks were last brought in line with.
    applied: watch::Sender<u64>,
    /// Stops the reflector (at shutdown).
    stop_reflector: watch::Sender<bool>,
    reflector: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Whole-plugin listings shared by the groups on a plugin (see `crate::listing`).
    listings: Listings,
    /// Where the grid of idle polls starts (see [`on_poll_grid`]).
    origin: tokio::time::Instant,
}

impl Controller {
    /// A controller that keeps the groups of `store` reconciled, with `plugins`, reporting to
    /// `events`. Nothing runs until [`Controller::start`].
    pub fn new(
        plugins: Arc<dyn PluginSource>,
        store: Arc<dyn Store>,
        events: Arc<dyn EventSink>,
        options: Options,
    ) -> Self {
        Controller {
            inner: Arc::new(Inner {
                plugins,
                store,
                events,
                permits: Semaphore::new(options.max_concurrent.max(1)),
                options,
                groups: Mutex::new(BTreeMap::new()),
                applied: watch::Sender::new(0),
                stop_reflector: watch::Sender::new(false),
                reflector: Mutex::new(None),
                listings: Listings::default(),
                origin: tokio::time::Instant::now(),
            }),
        }
    }

    /// Starts following the store: one task per stored group, started, switched to a new
    /// revision, turned to destroying, or stopped (freed) as the store says. The store is the
    /// only input: whoever writes it (the API, `group run`) never hands the controller a spec.
    pub fn start(&self) {
        let mut reflector = self.inner.reflector.lock().expect("reflector lock");
        if reflector.is_none() {
            // Startable again after a shutdown (a manager that stepped down and won again).
            self.inner.stop_reflector.send_replace(false);
            let this = self.clone();
            *reflector = Some(tokio::spawn(async move { this.reflect().await }));
        }
    }

    async fn reflect(&self) {
        let mut changes = self.inner.store.watch();
        let mut stop = self.inner.stop_reflector.subscribe();
        let mut failures = 0;
        loop {
            let generation = *changes.borrow_and_update();
            let retry = match self.inner.store.groups().await {
                Ok(groups) => {
                    failures = 0;
                    self.sync(groups);
                    self.inner.applied.send_replace(generation);
                    None
                }
                Err(e) => {
                    failures += 1;
                    tracing::error!(error = %crate::error_chain(&e), "cannot read the groups from the store; retrying");
                    Some(backoff(
                        failures,
                        Duration::from_millis(100),
                        Duration::from_secs(5),
                        random_unit(),
                    ))
                }
            };
            let retry = async {
                match retry {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = retry => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Brings the group tasks in line with what the store holds.
    fn sync(&self, stored: Vec<StoredGroup>) {
        self.inner.listings.set_users(
            stored
                .iter()
                .map(|g| g.spec.properties.instance.plugin.as_str()),
        );
        let ids: std::collections::HashSet<String> =
            stored.iter().map(|g| g.spec.id.clone()).collect();
        for g in stored {
            self.direct(Intent {
                destroying: g.lifecycle == Lifecycle::Destroying,
                spec: Arc::new(g.spec),
                revision: g.revision,
            });
        }
        let mut groups = self.inner.groups.lock().expect("groups lock");
        groups.retain(|_, h| !h.task.is_finished());
        for (id, h) in groups.iter_mut() {
            if !ids.contains(id) && !h.retired {
                // Freed (or destroyed and forgotten): stop after the current step, instances
                // left as they are.
                h.retired = true;
                h.stop.send_replace(true);
                self.inner.listings.forget(id);
            }
        }
    }

    /// Waits until the group tasks follow the store at `generation` (a writer's own write, so
    /// that what it reads next reflects it), or 10 s: the write is durable either way.
    pub async fn applied(&self, generation: u64) {
        if self
            .inner
            .reflector
            .lock()
            .expect("reflector lock")
            .is_none()
        {
            return; // not running here (a follower): the leader applies it
        }
        let mut applied = self.inner.applied.subscribe();
        let wait = applied.wait_for(|g| *g >= generation);
        if tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .is_err()
        {
            tracing::warn!(
                generation,
                "the controller has not caught up with the store after 10 s"
            );
        }
    }

    /// Waits until a group that left the store has no task running any more (its current
    /// step, if any, finished).
    pub async fn stopped(&self, id: &str) {
        let status = {
            let groups = self.inner.groups.lock().expect("groups lock");
            match groups.get(id) {
                Some(h) if h.retired => h.status.clone(),
                _ => return,
            }
        };
        let mut status = status;
        // The sender goes with the task.
        while status.changed().await.is_ok() {}
    }

    /// Checks a spec against its plugins: both exist, are of the right kind, and accept their
    /// properties.
    pub async fn validate(&self, spec: &GroupSpec) -> Result<(), Error> {
        let (instance, flavor) = self.loaded_plugins_of(spec).await?;
        let fail = |action: &str, source| Error::Plugin {
            group: spec.id.clone(),
            instance: None,
            action: action.to_string(),
            source: Arc::new(source),
        };
        instance
            .validate(&spec.properties.instance.properties)
            .await
            .map_err(|e| fail("validating Properties.Instance.Properties", e))?;
        flavor
            .validate(&spec.properties.flavor.properties, &spec.allocation())
            .await
            .map_err(|e| fail("validating Properties.Flavor.Properties", e))?;
        Ok(())
    }

    /// The spec's plugins, waiting (up to a minute) for one that is still being loaded: right
    /// after the daemon starts, a commit should wait for the plugin, not be refused.
    async fn loaded_plugins_of(
        &self,
        spec: &GroupSpec,
    ) -> Result<(InstanceClient, GroupFlavor), Error> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.plugins_of(spec) {
                Err(e) if e.is_loading() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    fn plugins_of(&self, spec: &GroupSpec) -> Result<(InstanceClient, GroupFlavor), Error> {
        plugins_of(&*self.inner.plugins, spec)
    }

    /// What committing `spec` would do now, without doing it: the first steps, the course of
    /// the whole change, and (given the spec it replaces) the fields it changes.
    pub async fn plan(&self, spec: &GroupSpec, current: Option<&GroupSpec>) -> Result<Plan, Error> {
        let desired = Desired::from_spec(spec);
        let members = self.members_for(spec).await?;
        let now = now_ms();
        let mut plan = plan::plan(&desired, &members, now);
        plan.course = Some(crate::diff::course(&desired, &members, now));
        if let Some(current) = current {
            plan.changes = crate::diff::spec_changes(current, spec);
        }
        Ok(plan)
    }

    /// The members to plan `spec` from: the group's last observation when that is recent and
    /// was made by the same instance plugin and flavor (same properties); otherwise observed
    /// now.
    async fn members_for(&self, spec: &GroupSpec) -> Result<Arc<Vec<Member>>, Error> {
        let recent = self.inner.options.poll_interval * 2 + Duration::from_secs(1);
        let last = {
            let groups = self.inner.groups.lock().expect("groups lock");
            groups.get(&spec.id).and_then(|h| {
                let slot = h.observed.lock().expect("observed lock");
                slot.as_ref()
                    .filter(|o| o.at.elapsed() < recent && same_observers(&o.spec, spec))
                    .map(|o| o.members.clone())
            })
        };
        if let Some(members) = last {
            return Ok(members);
        }
        let (instance, flavor) = self.loaded_plugins_of(spec).await?;
        let found = list(spec, &instance, &Fence::default(), None).await?;
        let mut cache = HealthCache::default();
        let observed = observe(spec, found, &flavor, &mut cache, None, &Fence::default()).await?;
        Ok(Arc::new(observed.members))
    }

    /// Sets tags on members of a group through its instance plugin (protection, removal
    /// requests), after checking that each is one of the group's instances as the plugin lists
    /// them now. Answers their descriptions as listed before the change. The tags are where
    /// the planner reads them, so they survive a restart and every manager sees them.
    pub async fn label_members(
        &self,
        spec: &GroupSpec,
        ids: &[String],
        labels: &Tags,
    ) -> Result<Vec<Description>, Error> {
        let (instance, _) = self.loaded_plugins_of(spec).await?;
        let filter: Tags = [(tags::GROUP.to_string(), spec.id.clone())].into();
        let fail = |instance: Option<&str>, action: String, source| Error::Plugin {
            group: spec.id.clone(),
            instance: instance.map(str::to_string),
            action,
            source: Arc::new(source),
        };
        let found = instance
            .describe(&filter, false)
            .await
            .map_err(|e| fail(None, "listing its instances (describe)".into(), e))?;
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !found.iter().any(|d| &d.id == *id))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(Error::NotMember {
                group: spec.id.clone(),
                instances: missing,
            });
        }
        for id in ids {
            instance.label(id, labels).await.map_err(|e| {
                let what: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                fail(Some(id), format!("labelling ({})", what.join(", ")), e)
            })?;
        }
        self.wake(&spec.id);
        Ok(found.into_iter().filter(|d| ids.contains(&d.id)).collect())
    }

    /// Hands a group's task its intent, starting the task if none runs. An unchanged intent is
    /// not handed over (it would cancel the pass in progress); one that would go backwards is
    /// ignored (the store's revisions only grow, so that is a stale read).
    fn direct(&self, intent: Intent) {
        let spec = intent.spec.clone();
        let mut groups = self.inner.groups.lock().expect("groups lock");
        let previous = match groups.remove(&spec.id) {
            Some(h) if !h.task.is_finished() && !h.retired => {
                let current = h.intent.borrow().clone();
                let same =
                    intent.revision == current.revision && intent.destroying == current.destroying;
                if same || intent.revision < current.revision {
                    groups.insert(spec.id.clone(), h);
                    return;
                }
                h.intent.send_replace(intent);
                groups.insert(spec.id.clone(), h);
                return;
            }
            // A freed group committed again while its old task finishes its step: the new
            // task starts once the old one is gone, so that two never act on one group.
            Some(h) if !h.task.is_finished() => Some(h.task),
            _ => None,
        };
        let handle = self.spawn(intent, &spec, previous);
        groups.insert(spec.id.clone(), handle);
    }

    /// Runs a group's next pass now rather than when it is due (a no-op for an unknown group).
    pub fn wake(&self, id: &str) {
        let groups = self.inner.groups.lock().expect("groups lock");
        if let Some(h) = groups.get(id) {
            h.wake.notify_one();
        }
    }

    /// The status of a group as of its last pass.
    pub fn status(&self, id: &str) -> Option<GroupStatus> {
        let groups = self.inner.groups.lock().expect("groups lock");
        groups.get(id).map(|h| h.status.borrow().clone())
    }

    /// A receiver that sees every new status of a group.
    pub fn watch(&self, id: &str) -> Option<watch::Receiver<GroupStatus>> {
        let groups = self.inner.groups.lock().expect("groups lock");
        groups.get(id).map(|h| h.status.clone())
    }

    /// The ids of the managed groups (a destroyed group disappears once its instances are gone).
    pub fn groups(&self) -> Vec<String> {
        let mut groups = self.inner.groups.lock().expect("groups lock");
        groups.retain(|_, h| !h.task.is_finished());
        groups
            .iter()
            .filter(|(_, h)| !h.retired)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Stops following the store and every group task after its current step; instances are
    /// left as they are.
    pub async fn shutdown(&self) {
        self.inner.stop_reflector.send_replace(true);
        let reflector = self.inner.reflector.lock().expect("reflector lock").take();
        if let Some(r) = reflector {
            let _ = r.await;
        }
        let handles: Vec<Handle> = {
            let mut groups = self.inner.groups.lock().expect("groups lock");
            std::mem::take(&mut *groups).into_values().collect()
        };
        for h in &handles {
            h.stop.send_replace(true);
        }
        for h in handles {
            let _ = h.task.await;
        }
    }

    fn spawn(
        &self,
        intent: Intent,
        spec: &GroupSpec,
        previous: Option<tokio::task::JoinHandle<()>>,
    ) -> Handle {
        let (intent_tx, intent_rx) = watch::channel(intent);
        let (status_tx, status_rx) = watch::channel(GroupStatus::initial(spec));
        let (stop_tx, stop_rx) = watch::channel(false);
        let inner = self.inner.clone();
        let wake = Arc::new(tokio::sync::Notify::new());
        let observed = ObservedSlot::default();
        let channels = TaskChannels {
            intent: intent_rx,
            status: status_tx,
            stop: stop_rx,
            wake: wake.clone(),
            observed: observed.clone(),
        };
        let task = tokio::spawn(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            run_group(inner, channels).await
        });
        Handle {
            intent: intent_tx,
            status: status_rx,
            stop: stop_tx,
            task,
            wake,
            observed,
            retired: false,
        }
    }
}

/// Health verdicts, reused for `CheckInterval`.
#[derive(Default)]
struct HealthCache {
    verdicts: HashMap<String, (Health, Instant)>,
    /// The last verdict, how many in a row and since when (Unix ms): for
    /// `Updating.Count`/`Duration` (healthy) and `Health.UnhealthyThreshold`/`UnhealthyFor`.
    streaks: HashMap<String, (Health, u32, u64)>,
}

/// What a group task keeps between passes. None of it is needed after a restart: a new task
/// starts empty and trusts the listing.
#[derive(Default)]
struct Memory {
    health: HealthCache,
    expected: Expectations,
    /// Instances of the current configuration lost soon after provisioning (the crash loop).
    losses: Vec<Loss>,
    /// The configuration `losses` are about.
    losses_config: String,
    /// No provisions before this: the back-off after a loss.
    hold_until: Option<Instant>,
    /// When the previous pass ended (or the task started): a shared listing must be younger
    /// (see `crate::listing`).
    last_pass_end: Option<Instant>,
    /// The previous pass found the group converged: an idle group may take its members from
    /// a shared listing (see `crate::listing`).
    last_pass_idle: bool,
    /// What the last pass found, when it found the group settled.
    settled: Option<Settled>,
}

/// What one pass did, and when the group wants its next one.
struct Pass {
    plan: Plan,
    members: Arc<Vec<Member>>,
    /// Other than the usual requeue, when the pass says so.
    requeue: Option<Requeue>,
    /// The pass found what the previous one found and reused its plan (see [`Settled`]).
    unchanged: bool,
}

/// A converged group with nothing to do and nothing expected, as its last pass found it. A
/// pass that lists the same instances for the same spec, with every health verdict still
/// fresh, would plan the same: all members are healthy and current, and time only proves them
/// further. It reuses this instead of rebuilding members, expectations, plan and status, which
/// was most of an idle group's pass.
struct Settled {
    spec: Arc<GroupSpec>,
    listing: Arc<Vec<Description>>,
    members: Arc<Vec<Member>>,
    plan: Plan,
}

impl Settled {
    fn holds(
        &self,
        spec: &Arc<GroupSpec>,
        found: &Arc<Vec<Description>>,
        health: &HealthCache,
        check_interval: Duration,
    ) -> bool {
        let now = Instant::now();
        Arc::ptr_eq(&self.spec, spec)
            && (Arc::ptr_eq(&self.listing, found) || *self.listing == **found)
            && found
                .iter()
                .all(|d| health.fresh(&d.id, Some(check_interval), now).is_some())
    }
}

/// When a group's next pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requeue {
    /// After this long (or at once on a new spec or a stop).
    After(Duration),
    /// Only on a new spec or a stop: the same spec would meet the same refusal.
    WhenSpecChanges,
}

/// What the executor did, for the expectations.
enum Done {
    Provisioned(Member),
    Destroyed(String),
}

impl HealthCache {
    /// The verdict on `id` if it is younger than `every` (never, without an interval).
    fn fresh(&self, id: &str, every: Option<Duration>, now: Instant) -> Option<Health> {
        match (self.verdicts.get(id), every) {
            (Some((h, at)), Some(every)) if now.saturating_duration_since(*at) < every => Some(*h),
            _ => None,
        }
    }
}

struct Observed {
    members: Vec<Member>,
    /// The listing the members came from.
    found: Arc<Vec<Description>>,
    /// (instance, old, new) for verdicts that changed.
    changes: Vec<(String, Option<Health>, Health)>,
}

/// A pass's use of the shared listings (see `crate::listing`).
struct Sharing<'a> {
    listings: &'a Listings,
    /// A listing that started earlier does not show all the group did.
    not_before: Instant,
    /// The group's previous pass found it converged.
    idle: bool,
}

/// The group's instances as its plugin lists them now (its part of a shared listing where
/// that applies), each once.
async fn list(
    spec: &GroupSpec,
    instance: &InstanceClient,
    fence: &Fence,
    shared: Option<Sharing<'_>>,
) -> Result<Arc<Vec<Description>>, Error> {
    fence.check().map_err(|source| Error::NotLeader {
        group: spec.id.clone(),
        source,
    })?;
    let filter: Tags = [(tags::GROUP.to_string(), spec.id.clone())].into();
    let shared = shared.filter(|s| s.listings.shares(&spec.properties.instance.plugin));
    let listed = match &shared {
        Some(s) => {
            s.listings
                .members(instance, &spec.id, s.idle, s.not_before)
                .await
        }
        None => None,
    };
    let found = match listed {
        Some(found) => found,
        None => {
            let started = Instant::now();
            let found =
                instance
                    .describe(&filter, false)
                    .await
                    .map_err(|source| Error::Plugin {
                        group: spec.id.clone(),
                        instance: None,
                        action: "observing instances (describe)".into(),
                        source: Arc::new(source),
                    })?;
            if let Some(s) = &shared {
                s.listings.note_own(&spec.id, started.elapsed());
            }
            Arc::new(found)
        }
    };
    // An instance listed twice (a plugin's bug, a listing racing a writer) would count twice
    // towards availability and let the planner take away more than it may.
    let mut seen = std::collections::HashSet::with_capacity(found.len());
    if found.iter().all(|d| seen.insert(d.id.as_str())) {
        return Ok(found);
    }
    seen.clear();
    let once: Vec<Description> = found
        .iter()
        .filter(|d| seen.insert(d.id.as_str()))
        .cloned()
        .collect();
    tracing::warn!(group = %spec.id, plugin = %instance.name(), duplicates = found.len() - once.len(), "describe listed instances more than once; counting each once");
    Ok(Arc::new(once))
}

/// The members of a listing, with their health: verdicts younger than `check_interval` are
/// reused, the rest asked of the flavor.
async fn observe(
    spec: &GroupSpec,
    found: Arc<Vec<Description>>,
    flavor: &GroupFlavor,
    cache: &mut HealthCache,
    check_interval: Option<Duration>,
    fence: &Fence,
) -> Result<Observed, Error> {
    let fenced = |source| Error::NotLeader {
        group: spec.id.clone(),
        source,
    };
    // Verdicts still fresh are reused, read once: one must not expire (and read as unknown)
    // while the checks below run, which once made healthy instances unavailable mid-update.
    // The rest are asked for concurrently, `Parallelism` at a time (a probe of a real service
    // takes milliseconds to seconds).
    let checked_at = Instant::now();
    let fresh: Vec<Option<Health>> = found
        .iter()
        .map(|d| cache.fresh(&d.id, check_interval, checked_at))
        .collect();
    let due: Vec<&Description> = found
        .iter()
        .zip(&fresh)
        .filter(|(_, f)| f.is_none())
        .map(|(d, _)| d)
        .collect();
    let parallelism = spec.properties.parallelism.max(1) as usize;
    let batch = health_batch(flavor.check_time(), due.len(), parallelism);
    // Indexes, not references, go through the stream: a closure taking a reference trips the
    // compiler's higher-ranked lifetime check once the future must be `Send`.
    let due = &due;
    let checked: HashMap<String, Health> = stream::iter((0..due.len()).step_by(batch))
        .map(|start| async move {
            let chunk = &due[start..(start + batch).min(due.len())];
            if fence.check().is_err() {
                // No call once the lease may have lapsed; the pass ends below.
                return Vec::new();
            }
            let verdicts = flavor
                .healthy_many(&spec.properties.flavor.properties, chunk)
                .await;
            chunk
                .iter()
                .zip(verdicts)
                .map(|(d, v)| {
                    let h = v.unwrap_or_else(|e| {
                        tracing::warn!(group = %spec.id, instance = %d.id, error = %crate::error_chain(&e), "health check failed");
                        Health::Unknown
                    });
                    (d.id.clone(), h)
                })
                .collect::<Vec<_>>()
        })
        .buffer_unordered(parallelism)
        .flat_map(stream::iter)
        .collect()
        .await;
    fence.check().map_err(fenced)?;
    let mut members = Vec::with_capacity(found.len());
    let mut changes = Vec::new();
    for (d, fresh) in found.iter().zip(fresh) {
        let health = match checked.get(&d.id) {
            Some(&h) => {
                let before = cache.verdicts.get(&d.id).map(|c| c.0);
                if before != Some(h) {
                    changes.push((d.id.clone(), before, h));
                }
                cache.verdicts.insert(d.id.clone(), (h, Instant::now()));
                let streak = cache
                    .streaks
                    .entry(d.id.clone())
                    .or_insert((h, 0, now_ms()));
                *streak = match *streak {
                    (last, n, since) if last == h && n > 0 => (h, n.saturating_add(1), since),
                    _ => (h, 1, now_ms()),
                };
                h
            }
            None => fresh.expect("every instance is either fresh or checked"),
        };
        let mut member = Member::from_description(d, health);
        match cache.streaks.get(&d.id) {
            Some(&(Health::Healthy, n, since)) => {
                member.healthy_checks = n;
                member.healthy_since_ms = since;
            }
            Some(&(Health::Unhealthy, n, since)) => {
                member.unhealthy_checks = n;
                member.unhealthy_since_ms = since;
            }
            _ => {}
        }
        members.push(member);
    }
    // Every listed instance now has a verdict and a streak, so either map holds more entries
    // than the listing only if it still holds some of instances gone since: only then is a
    // set of the listed ids worth building.
    if cache.verdicts.len() > found.len() || cache.streaks.len() > found.len() {
        let listed: std::collections::HashSet<&str> = found.iter().map(|d| d.id.as_str()).collect();
        cache.verdicts.retain(|id, _| listed.contains(id.as_str()));
        cache.streaks.retain(|id, _| listed.contains(id.as_str()));
    }
    Ok(Observed {
        members,
        found,
        changes,
    })
}

/// How many health checks go in one `healthy-many` call: a fresh instance costs more than the
/// check of a fast flavor (some 70 µs against a few), so checks are batched to take about
/// 20 ms a call by the plugin's recent time per check, one at a time until it has one (a slow
/// probe stays at one: its checks run side by side), and never so many that fewer than
/// `parallelism` calls would run side by side.
fn health_batch(check_time: Option<Duration>, due: usize, parallelism: usize) -> usize {
    let by_time = match check_time {
        Some(t) if !t.is_zero() => (Duration::from_millis(20).as_nanos() / t.as_nanos()) as usize,
        _ => 1,
    };
    by_time
        .clamp(1, 256)
        .min(due.div_ceil(parallelism.max(1)))
        .max(1)
}

/// The spec's instance and flavor plugins, each checked for its kind once (for `combo`, each
/// flavor it lists).
fn plugins_of(
    plugins: &dyn PluginSource,
    spec: &GroupSpec,
) -> Result<(InstanceClient, GroupFlavor), Error> {
    let fail = |action: String, source: plugin::Error| Error::Plugin {
        group: spec.id.clone(),
        instance: None,
        action,
        source: Arc::new(source),
    };
    let instance = plugins
        .plugin(&spec.properties.instance.plugin)
        .and_then(|p| p.as_instance())
        .map_err(|e| fail("looking up Properties.Instance.Plugin".into(), e))?;
    let flavor = &spec.properties.flavor;
    let flavor = if combo::is_combo(&flavor.plugin) {
        let parts = combo::parts(&flavor.properties)
            .map_err(|e| fail("reading Properties.Flavor.Properties (combo)".into(), e))?;
        let mut clients = Vec::with_capacity(parts.len());
        for (i, part) in parts.into_iter().enumerate() {
            let client = plugins
                .plugin(&part.plugin)
                .and_then(|p| p.as_flavor())
                .map_err(|e| {
                    fail(
                        format!("looking up Properties.Flavor.Properties.Flavors[{i}].Plugin"),
                        e,
                    )
                })?;
            clients.push((client, part.properties));
        }
        GroupFlavor::Combo(Arc::new(clients))
    } else {
        GroupFlavor::One(
            plugins
                .plugin(&flavor.plugin)
                .and_then(|p| p.as_flavor())
                .map_err(|e| fail("looking up Properties.Flavor.Plugin".into(), e))?,
        )
    };
    Ok((instance, flavor))
}

/// Whether two specs observe their instances the same way: same instance plugin, same flavor
/// with the same properties (health verdicts depend on them).
fn same_observers(a: &GroupSpec, b: &GroupSpec) -> bool {
    a.properties.instance.plugin == b.properties.instance.plugin
        && a.properties.flavor == b.properties.flavor
}

/// What a group task is handed: its intent and stop, its wake-up, where it reports.
struct TaskChannels {
    intent: watch::Receiver<Intent>,
    status: watch::Sender<GroupStatus>,
    stop: watch::Receiver<bool>,
    wake: Arc<tokio::sync::Notify>,
    observed: ObservedSlot,
}

async fn run_group(inner: Arc<Inner>, channels: TaskChannels) {
    let TaskChannels {
        mut intent,
        status,
        mut stop,
        wake,
        observed,
    } = channels;
    let mut memory = Memory {
        last_pass_end: Some(Instant::now()),
        ..Memory::default()
    };
    let mut attempts: u32 = 0;
    let mut last_phase: Option<Phase> = None;
    let mut last_messages: Vec<String> = Vec::new();
    let mut config_sha: Option<(Arc<GroupSpec>, String)> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let Intent {
            spec,
            revision,
            destroying,
        } = intent.borrow_and_update().clone();
        // Hashing the configuration is a serialisation and a SHA-256: once per revision, not
        // once per pass. The cache holds the spec it was computed for, so a new spec cannot
        // take its place at the same address.
        let sha = match &config_sha {
            Some((hashed, sha)) if Arc::ptr_eq(hashed, &spec) => sha.clone(),
            _ => {
                let sha = spec.config_sha();
                config_sha = Some((spec.clone(), sha.clone()));
                sha
            }
        };

        let pass_started = Instant::now();
        let outcome = {
            let _permit = inner
                .permits
                .acquire()
                .await
                .expect("semaphore never closed");
            let span = tracing::info_span!("reconcile", group = %spec.id);
            // Between steps, a pass gives way to a new revision or a stop.
            let cancelled = || *stop.borrow() || intent.has_changed().unwrap_or(true);
            reconcile(&inner, &spec, &sha, destroying, &mut memory, &cancelled)
                .instrument(span)
                .await
        };
        memory.last_pass_end = Some(Instant::now());
        memory.last_pass_idle = matches!(&outcome, Ok(pass) if pass.plan.phase == Phase::Converged);
        let pass_ms = pass_started.elapsed().as_millis() as u64;

        if matches!(&outcome, Ok(pass) if pass.unchanged) {
            // What the last pass found: only the counters move, and the status is not copied.
            let mut passes = 0;
            status.send_modify(|s| {
                s.revision = revision;
                s.passes += 1;
                s.updated_ms = now_ms();
                s.last_pass_ms = pass_ms;
                s.pass_ms_total += pass_ms;
                passes = s.passes;
            });
            if let Some(o) = observed.lock().expect("observed lock").as_mut() {
                o.at = Instant::now();
            }
            tracing::debug!(group = %spec.id, passes, phase = %Phase::Converged, "pass finished");
            let requeue = Requeue::After(inner.options.poll_interval);
            if !next_pass(&inner, requeue, &mut intent, &mut stop, &wake).await {
                return;
            }
            continue;
        }

        let mut requeue = Requeue::After(inner.options.poll_interval);
        let mut next = status.borrow().clone();
        next.passes += 1;
        next.updated_ms = now_ms();
        next.last_pass_ms = pass_ms;
        next.pass_ms_total += pass_ms;
        next.destroying = destroying;
        next.revision = revision;
        match outcome {
            Ok(Pass {
                plan,
                members,
                requeue: wanted,
                ..
            }) => {
                attempts = 0;
                next.phase = plan.phase;
                next.messages = plan.messages.clone();
                next.size = plan.size;
                next.current = plan.current;
                next.config_sha = sha;
                next.last_error = None;
                memory.expected.remember(members.clone());
                next.instances = members
                    .iter()
                    .map(|m| InstanceStatus {
                        id: m.id.clone(),
                        logical_id: m.logical_id.clone(),
                        health: m.health,
                        config_sha: m.config_sha.clone(),
                        current: m.config_sha == next.config_sha,
                        created_ms: m.created_ms,
                        protected: m.protected,
                        removal_requested: m.removal.is_some(),
                    })
                    .collect();
                if (plan.phase != last_phase.unwrap_or(Phase::Converging)
                    || plan.messages != last_messages)
                    && !destroying
                {
                    match plan.phase {
                        Phase::Paused => inner.events.record(Event::now(
                            &spec.id,
                            EventKind::Paused,
                            None,
                            plan.messages.join("; "),
                        )),
                        Phase::Converged => inner.events.record(Event::now(
                            &spec.id,
                            EventKind::Converged,
                            None,
                            format!(
                                "{} of {} instances, all current and healthy",
                                plan.current, plan.size
                            ),
                        )),
                        _ => {}
                    }
                }
                last_phase = Some(plan.phase);
                last_messages = plan.messages.clone();
                if plan.has_work() {
                    // Re-observe promptly to see what the steps did.
                    requeue =
                        Requeue::After(inner.options.poll_interval.min(Duration::from_millis(50)));
                }
                requeue = match (wanted, requeue) {
                    (Some(Requeue::After(a)), Requeue::After(b)) => Requeue::After(a.min(b)),
                    (Some(w), _) => w,
                    (None, r) => r,
                };
                if destroying
                    && members.is_empty()
                    && !plan.has_work()
                    && finalize(&inner, &spec.id).await
                {
                    status.send_replace(next);
                    return;
                }
                *observed.lock().expect("observed lock") = Some(LastObserved {
                    spec: spec.clone(),
                    members,
                    at: Instant::now(),
                });
            }
            Err(e) => {
                let message = crate::error_chain(&e);
                // Recorded once per distinct failure, not at every retry.
                let new = next.last_error.as_deref() != Some(message.as_str()) && !e.is_quiet();
                if new {
                    inner.events.record(Event::now(
                        &spec.id,
                        e.event_kind(),
                        e.instance(),
                        message.clone(),
                    ));
                }
                next.last_error = Some(message.clone());
                if e.refused_as_invalid() {
                    // The same spec would be refused again: wait for a new one.
                    tracing::warn!(group = %spec.id, error = %message, "the plugin refused the spec as invalid; paused until the spec changes");
                    next.phase = Phase::Paused;
                    next.messages = vec![format!(
                        "paused until the spec changes: the plugin refused it as invalid ({message}); \
                         fix the spec and commit it again"
                    )];
                    if new {
                        inner.events.record(Event::now(
                            &spec.id,
                            EventKind::Paused,
                            None,
                            next.messages[0].clone(),
                        ));
                    }
                    last_phase = Some(Phase::Paused);
                    last_messages = next.messages.clone();
                    requeue = Requeue::WhenSpecChanges;
                } else {
                    attempts = attempts.saturating_add(1);
                    next.phase = Phase::Failing;
                    let delay = backoff(
                        attempts,
                        Duration::from_millis(100),
                        inner.options.max_backoff,
                        random_unit(),
                    );
                    tracing::warn!(group = %spec.id, error = %message, attempt = attempts, retry_in_ms = delay.as_millis() as u64, "reconcile failed; retrying after back-off");
                    requeue = Requeue::After(delay);
                }
            }
        }
        // Tests and operators can count passes (e.g. to show that nothing happened over
        // several of them, rather than over a fixed sleep).
        tracing::debug!(group = %spec.id, passes = next.passes, phase = %next.phase, "pass finished");
        status.send_replace(next);

        if !next_pass(&inner, requeue, &mut intent, &mut stop, &wake).await {
            return;
        }
    }
}

/// Waits for a group's next pass: `requeue`, a new intent, a stop or a wake-up, whichever comes
/// first. False when the intent's sender is gone (the task ends).
async fn next_pass(
    inner: &Inner,
    requeue: Requeue,
    intent: &mut watch::Receiver<Intent>,
    stop: &mut watch::Receiver<bool>,
    wake: &tokio::sync::Notify,
) -> bool {
    let poll = inner.options.poll_interval;
    let timer = async {
        match requeue {
            Requeue::After(delay) if delay == poll => {
                let deadline = tokio::time::Instant::now() + delay;
                tokio::time::sleep_until(on_poll_grid(deadline, inner.origin, poll)).await
            }
            Requeue::After(delay) => tokio::time::sleep(delay).await,
            Requeue::WhenSpecChanges => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = timer => true,
        changed = intent.changed() => changed.is_ok(),
        _ = stop.changed() => true,
        _ = wake.notified() => true,
    }
}

/// When an idle group's next poll starts: `deadline` put off to the next step of a grid of a
/// tenth of the poll interval from `origin`, shared by every group. Groups due within one
/// step then run together, and the daemon wakes ten times a poll rather than once per group
/// (with 1,000 idle groups that was some 7% of the daemon's idle CPU). A poll is at most a
/// tenth of an interval late.
fn on_poll_grid(
    deadline: tokio::time::Instant,
    origin: tokio::time::Instant,
    poll: Duration,
) -> tokio::time::Instant {
    let step = (poll / 10).max(Duration::from_millis(1)).as_nanos();
    let since = deadline.saturating_duration_since(origin).as_nanos();
    let steps = since.div_ceil(step);
    origin + Duration::from_nanos(u64::try_from(steps * step).unwrap_or(u64::MAX))
}

/// The destroy's finalizer: once a destroying group has no instance left, it is removed from
/// the store with its last event, in one transaction. Returns whether the task is done (false:
/// the store could not be written, and the next pass tries again).
async fn finalize(inner: &Inner, id: &str) -> bool {
    let event = Event::now(
        id,
        EventKind::GroupDestroyed,
        None,
        "all instances destroyed; group forgotten",
    );
    match inner.store.forget(id, event).await {
        Ok(stored) => {
            inner.events.stored(stored);
            true
        }
        // Freed meanwhile: nothing left to finalize.
        Err(store::Error::UnknownGroup(_)) => true,
        Err(e) => {
            tracing::error!(group = %id, error = %crate::error_chain(&e), "cannot forget a destroyed group; retrying");
            false
        }
    }
}

/// One pass: observe, plan, execute. Returns the plan and what was observed before it ran.
async fn reconcile(
    inner: &Inner,
    spec: &Arc<GroupSpec>,
    config_sha: &str,
    destroying: bool,
    memory: &mut Memory,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Pass, Error> {
    let group = &spec.id;
    let (instance, flavor) = plugins_of(&*inner.plugins, spec)?;
    let check_interval = spec.properties.health.check_interval.0;
    // A shared listing must have started after this group's previous pass ended (it then
    // shows all the group did) and within the poll interval (see `crate::listing`).
    let now = Instant::now();
    let shared = memory.last_pass_end.map(|end| Sharing {
        listings: &inner.listings,
        not_before: end.max(now.checked_sub(inner.options.poll_interval).unwrap_or(now)),
        idle: memory.last_pass_idle,
    });
    // Taken first: a pass that fails on the way leaves nothing to reuse.
    let settled = memory.settled.take();
    let found = list(spec, &instance, &inner.options.fence, shared).await?;
    if !destroying
        && let Some(mut settled) = settled
        && settled.holds(spec, &found, &memory.health, check_interval)
    {
        settled.listing = found;
        let pass = Pass {
            plan: settled.plan.clone(),
            members: settled.members.clone(),
            requeue: None,
            unchanged: true,
        };
        memory.settled = Some(settled);
        return Ok(pass);
    }
    let mut observed = observe(
        spec,
        found,
        &flavor,
        &mut memory.health,
        Some(check_interval),
        &inner.options.fence,
    )
    .await?;
    for (id, old, new) in &observed.changes {
        if old.is_some() || *new != Health::Healthy {
            let from = old.map(|h| h.to_string()).unwrap_or_else(|| "new".into());
            inner.events.record(Event::now(
                group,
                EventKind::HealthChanged,
                Some(id),
                format!("{from} -> {new}"),
            ));
        }
    }
    let mut desired = Desired::from_spec_with_sha(spec, config_sha.to_string());
    if destroying {
        desired.allocation = Allocation::Size(0);
        // Destroying is not an update: everything goes, as fast as drains allow.
        desired.max_unavailable = u32::MAX;
    }
    let now = now_ms();
    let health = &spec.properties.health;
    let applied = memory.expected.apply(
        &mut observed.members,
        now,
        Windows {
            provision_timeout_ms: health.provision_timeout.0.as_millis() as u64,
            grace_ms: health.grace_period.0.as_millis() as u64,
            lost_after_ms: health.lost_after.0.as_millis() as u64,
        },
    );
    // An instance missing from this listing is confirmed lost only after `LostAfter`, over
    // twenty re-listings.
    let relist =
        (applied.unconfirmed > 0).then(|| (health.lost_after.0 / 20).max(Duration::from_millis(5)));
    if let Some(braked) = crash_loop(inner, spec, &desired, destroying, memory, applied.losses) {
        return Ok(Pass {
            plan: braked,
            members: Arc::new(observed.members),
            requeue: Some(Requeue::WhenSpecChanges),
            unchanged: false,
        });
    }
    let mut plan = plan::plan(&desired, &observed.members, now);
    let mut requeue = relist.map(Requeue::After);
    if let Some(until) = memory.hold_until
        && !destroying
    {
        let left = until.saturating_duration_since(Instant::now());
        let held = plan
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Provision { .. }))
            .count();
        if !left.is_zero() && held > 0 {
            plan.steps.retain(|s| !matches!(s, Step::Provision { .. }));
            plan.messages.push(format!(
                "crash-loop back-off: {} instance(s) lost soon after provisioning; {held} \
                 provision(s) held for {:.1}s",
                memory.losses.len(),
                left.as_secs_f64()
            ));
            requeue = Some(Requeue::After(relist.map_or(left, |r| r.min(left))));
        }
    }
    if plan.has_work() {
        let (p, d, r) = plan.counts();
        inner.events.record(Event::now(
            group,
            EventKind::Planned,
            None,
            format!(
                "{p} to provision, {d} to destroy, {r} to replace ({})",
                plan.phase
            ),
        ));
    }
    let executor = Executor {
        inner,
        spec,
        config_sha: &desired.config_sha,
        instance: &instance,
        flavor: &flavor,
        // Only steps look descriptions up.
        observed: if plan.has_work() {
            observed.found.iter().map(|d| (d.id.as_str(), d)).collect()
        } else {
            HashMap::new()
        },
        done: Mutex::new(Vec::new()),
    };
    let outcome = executor.execute(&plan, cancelled).await;
    // What was done is expected, whether or not a later step failed.
    let now = now_ms();
    for d in executor.done.into_inner().expect("done lock") {
        match d {
            Done::Provisioned(m) => memory.expected.provisioned(m, now),
            Done::Destroyed(id) => memory.expected.destroyed(&id, now),
        }
    }
    outcome?;
    let members = Arc::new(observed.members);
    if !destroying
        && plan.phase == Phase::Converged
        && plan.steps.is_empty()
        && requeue.is_none()
        && memory.expected.is_settled()
    {
        memory.settled = Some(Settled {
            spec: spec.clone(),
            listing: observed.found,
            members: members.clone(),
            plan: plan.clone(),
        });
    }
    Ok(Pass {
        plan,
        members,
        requeue,
        unchanged: false,
    })
}

/// Records `losses`, and brakes a crash loop: each loss holds further provisions back with
/// growing back-off; `CrashLoopLimit` losses of one configuration pause the group until its
/// spec changes (the paused plan is returned then).
fn crash_loop(
    inner: &Inner,
    spec: &GroupSpec,
    desired: &Desired,
    destroying: bool,
    memory: &mut Memory,
    losses: Vec<Loss>,
) -> Option<Plan> {
    if memory.losses_config != desired.config_sha {
        memory.losses.clear();
        memory.hold_until = None;
        memory.losses_config = desired.config_sha.clone();
    }
    for loss in &losses {
        inner.events.record(Event::now(
            &spec.id,
            EventKind::InstanceLost,
            Some(&loss.id),
            loss.why.clone(),
        ));
    }
    if destroying {
        return None;
    }
    let new = !losses.is_empty();
    memory.losses.extend(losses);
    let limit = spec.properties.health.crash_loop_limit as usize;
    if limit > 0 && memory.losses.len() >= limit {
        let last = memory.losses.last().expect("at least one");
        let ids: Vec<&str> = memory.losses.iter().map(|l| l.id.as_str()).collect();
        return Some(Plan {
            steps: Vec::new(),
            phase: Phase::Paused,
            messages: vec![format!(
                "crash loop: {} instances of this configuration were lost soon after \
                 provisioning ({}; the last one {}); paused until the spec changes: check what \
                 the instance plugin and the instances say, fix the configuration and commit it \
                 again",
                ids.len(),
                ids.join(", "),
                last.why
            )],
            current: 0,
            size: desired.size(),
            changes: Vec::new(),
            course: None,
        });
    }
    if new {
        let wait = backoff(
            memory.losses.len() as u32,
            Duration::from_secs(1),
            Duration::from_secs(60),
            random_unit(),
        );
        memory.hold_until = Some(Instant::now() + wait);
    }
    None
}

/// Carries out a plan's steps through the plugins: flavor `prepare` before `provision`, flavor
/// `drain` before `destroy`. Stops at the first failure: the next pass re-observes and re-plans.
struct Executor<'a> {
    inner: &'a Inner,
    spec: &'a GroupSpec,
    /// The spec's configuration hash, computed once per pass.
    config_sha: &'a str,
    instance: &'a InstanceClient,
    flavor: &'a GroupFlavor,
    /// The listing the plan was made from, by id.
    observed: HashMap<&'a str, &'a Description>,
    /// What was provisioned and destroyed, for the expectations.
    done: Mutex<Vec<Done>>,
}

impl Executor<'_> {
    /// Before each plugin call: the term to tag new instances with, or why no call starts.
    fn fence(&self) -> Result<Option<i64>, Error> {
        self.inner
            .options
            .fence
            .check()
            .map_err(|source| Error::NotLeader {
                group: self.spec.id.clone(),
                source,
            })
    }

    fn fail(
        &self,
        instance: Option<&str>,
        action: impl Into<String>,
        source: plugin::Error,
    ) -> Error {
        // The group loop records the failure (once per distinct message).
        Error::Plugin {
            group: self.spec.id.clone(),
            instance: instance.map(str::to_string),
            action: action.into(),
            source: Arc::new(source),
        }
    }

    /// Runs the plan's removals (drain then destroy, replace), then its provisions, each phase
    /// `Parallelism` steps at a time: the planner's surge and availability budgets assume the
    /// removals are done before anything new is added. After a failure no new step starts,
    /// and provisions are skipped when a removal failed (the group would be larger than
    /// planned). A pass that is `cancelled` (a new revision, a stop) starts no new step.
    async fn execute(
        &self,
        plan: &Plan,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<(), Error> {
        let mut removals: Vec<Vec<&Step>> = Vec::new();
        let mut provisions: Vec<Vec<&Step>> = Vec::new();
        for step in &plan.steps {
            match step {
                // A destroy follows its drain: one unit.
                Step::Destroy { id, .. }
                    if removals.last().is_some_and(
                        |u| matches!(u[..], [Step::Drain { id: d, .. }] if d == id),
                    ) =>
                {
                    removals.last_mut().expect("checked").push(step);
                }
                Step::Drain { .. } | Step::Destroy { .. } | Step::Replace { .. } => {
                    removals.push(vec![step])
                }
                Step::Provision { .. } => provisions.push(vec![step]),
                Step::Wait { .. } => {}
            }
        }
        self.run_phase(removals, cancelled).await?;
        self.run_phase(provisions, cancelled).await
    }

    async fn run_phase(
        &self,
        units: Vec<Vec<&Step>>,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<(), Error> {
        let failed = AtomicBool::new(false);
        let parallelism = self.spec.properties.parallelism.max(1) as usize;
        let units = &units;
        let outcomes: Vec<Result<(), Error>> = stream::iter(0..units.len())
            .map(|i| {
                let failed = &failed;
                async move {
                    for step in &units[i] {
                        if failed.load(Ordering::SeqCst) || cancelled() {
                            return Ok(());
                        }
                        if let Err(e) = self.step(step).await {
                            failed.store(true, Ordering::SeqCst);
                            return Err(e);
                        }
                    }
                    Ok(())
                }
            })
            .buffer_unordered(parallelism)
            .collect()
            .await;
        outcomes.into_iter().collect()
    }

    async fn step(&self, step: &Step) -> Result<(), Error> {
        match step {
            Step::Provision {
                logical_id,
                index,
                reason,
            } => {
                let id = self.provision(logical_id.as_deref(), *index).await?;
                self.inner.events.record(Event::now(
                    &self.spec.id,
                    EventKind::InstanceProvisioned,
                    Some(&id),
                    match logical_id {
                        Some(l) => format!("logical id {l}: {reason}"),
                        None => reason.clone(),
                    },
                ));
            }
            Step::Drain { id, reason } => self.drain(id, reason).await,
            Step::Destroy {
                id,
                context,
                reason,
            } => {
                self.destroy(id, *context).await?;
                self.inner.events.record(Event::now(
                    &self.spec.id,
                    EventKind::InstanceDestroyed,
                    Some(id),
                    reason.clone(),
                ));
            }
            Step::Replace {
                id,
                logical_id,
                index,
                context,
                reason,
            } => {
                self.drain(id, reason).await;
                self.destroy(id, *context).await?;
                let new = self.provision(logical_id.as_deref(), *index).await?;
                self.inner.events.record(Event::now(
                    &self.spec.id,
                    EventKind::InstanceReplaced,
                    Some(id),
                    format!("replaced by {new}: {reason}"),
                ));
            }
            Step::Wait { .. } => {}
        }
        Ok(())
    }

    async fn provision(&self, logical_id: Option<&str>, index: u32) -> Result<String, Error> {
        let spec = self.spec;
        let mut identity: Tags = [
            (tags::GROUP.to_string(), spec.id.clone()),
            (tags::CONFIG_SHA.to_string(), self.config_sha.to_string()),
            (tags::CREATED.to_string(), now_ms().to_string()),
            (tags::INDEX.to_string(), index.to_string()),
        ]
        .into();
        if let Some(l) = logical_id {
            identity.insert(tags::LOGICAL_ID.to_string(), l.to_string());
        }
        // Which leader made it, for audits across failovers.
        if let Some(term) = self.fence()? {
            identity.insert(tags::TERM.to_string(), term.to_string());
        }
        let draft = InstanceSpec {
            properties: spec.properties.instance.properties.clone(),
            tags: identity.clone(),
            init: String::new(),
            logical_id: logical_id.map(str::to_string),
            attachments: Vec::new(),
        };
        let index = Index {
            group: spec.id.clone(),
            sequence: index,
        };
        let mut prepared = self
            .flavor
            .prepare(
                &spec.properties.flavor.properties,
                &draft,
                &spec.allocation(),
                &index,
            )
            .await
            .map_err(|e| self.fail(None, "preparing a new instance (flavor prepare)", e))?;
        // The identity tags are the controller's: a flavor may add tags, never change these.
        prepared.tags.extend(identity);
        prepared.logical_id = logical_id.map(str::to_string);
        self.fence()?;
        let id = self
            .instance
            .provision(&prepared)
            .await
            .map_err(|e| self.fail(None, "provisioning", e))?;
        let expected = Description {
            id: id.clone(),
            logical_id: logical_id.map(str::to_string),
            tags: prepared.tags,
            properties: None,
        };
        self.done
            .lock()
            .expect("done lock")
            .push(Done::Provisioned(Member::from_description(
                &expected,
                Health::Unknown,
            )));
        Ok(id)
    }

    /// Drains with the spec's timeout; a failed or slow drain is reported and the destroy goes
    /// ahead, as with Cluster API's node drain timeout.
    async fn drain(&self, id: &str, reason: &str) {
        let Some(d) = self.observed.get(id) else {
            return;
        };
        if self.fence().is_err() {
            return; // the destroy that follows is refused too
        }
        let timeout = self.spec.properties.drain.timeout.0;
        let outcome = tokio::time::timeout(
            timeout,
            self.flavor
                .drain(&self.spec.properties.flavor.properties, d),
        )
        .await;
        let message = match outcome {
            Ok(Ok(())) => reason.to_string(),
            Ok(Err(e)) => format!(
                "drain failed, destroying anyway: {}",
                crate::error_chain(&e)
            ),
            Err(_) => format!(
                "drain did not finish within {}, destroying anyway",
                humantime::format_duration(timeout)
            ),
        };
        self.inner.events.record(Event::now(
            &self.spec.id,
            EventKind::InstanceDrained,
            Some(id),
            message,
        ));
    }

    async fn destroy(&self, id: &str, context: DestroyContext) -> Result<(), Error> {
        self.fence()?;
        match self.instance.destroy(id, context).await {
            Ok(()) => {}
            // Already gone is what we wanted.
            Err(e) if matches!(e.guest_error(), Some(plugin::GuestError::NotFound(_))) => {}
            Err(e) => return Err(self.fail(Some(id), "destroying", e)),
        }
        self.done
            .lock()
            .expect("done lock")
            .push(Done::Destroyed(id.to_string()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_within_equal_jitter_and_stops_at_the_cap() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(30));
        for attempt in 1..=12u32 {
            let exp = (base * 2u32.pow(attempt - 1)).min(max);
            assert_eq!(backoff(attempt, base, max, 0.0), exp / 2);
            assert_eq!(backoff(attempt, base, max, 0.5), exp.mul_f64(0.75));
            assert!(backoff(attempt, base, max, 0.999) < exp);
        }
        assert_eq!(
            backoff(1000, base, max, 0.0),
            max / 2,
            "no overflow far out"
        );
    }

    struct NoPlugins;
    impl PluginSource for NoPlugins {
        fn plugin(&self, name: &str) -> Result<Arc<Plugin>, plugin::Error> {
            Err(plugin::Error::Unknown {
                name: name.into(),
                known: String::new(),
            })
        }
    }
    struct NoEvents;
    impl EventSink for NoEvents {
        fn record(&self, _: Event) {}
        fn stored(&self, _: Event) {}
    }

    fn spec(size: u32) -> GroupSpec {
        GroupSpec::parse(
            &serde_json::json!({"ID": "g", "Properties": {"Allocation": {"Size": size},
                "Instance": {"Plugin": "i"}, "Flavor": {"Plugin": "f"}}})
            .to_string(),
            "test",
            false,
        )
        .unwrap()
    }

    fn committed(id: &str) -> Event {
        Event::now(id, EventKind::GroupCommitted, None, "test")
    }

    #[tokio::test]
    async fn the_controller_follows_the_store_and_nothing_else() {
        let store = Arc::new(store::EmbeddedStore::in_memory().unwrap());
        let c = Controller::new(
            Arc::new(NoPlugins),
            store.clone(),
            Arc::new(NoEvents),
            Options::default(),
        );
        // Written before the controller starts: picked up at start.
        store.commit(&spec(1), committed("g")).await.unwrap();
        c.start();
        store.commit(&spec(2), committed("g")).await.unwrap();
        c.applied(*store.watch().borrow()).await;
        let mut status = c.watch("g").unwrap();
        let s = status.wait_for(|s| s.revision == 2).await.unwrap().clone();
        assert_eq!(s.size, 2);
        // A stale revision never replaces a newer one.
        c.direct(Intent {
            spec: Arc::new(spec(1)),
            revision: 1,
            destroying: false,
        });
        assert_eq!(
            c.inner.groups.lock().unwrap()["g"].intent.borrow().revision,
            2
        );
        // Marked destroying in the store: the task is told so.
        store.mark_destroying("g", committed("g")).await.unwrap();
        c.applied(*store.watch().borrow()).await;
        assert!(
            c.inner.groups.lock().unwrap()["g"]
                .intent
                .borrow()
                .destroying
        );
        // Gone from the store: the task stops.
        store.forget("g", committed("g")).await.unwrap();
        c.applied(*store.watch().borrow()).await;
        tokio::time::timeout(Duration::from_secs(5), c.stopped("g"))
            .await
            .expect("the freed group's task stops");
        assert!(c.groups().is_empty());
        c.shutdown().await;
    }

    #[test]
    fn health_checks_are_batched_only_for_fast_plugins_and_never_below_the_parallelism() {
        let us = Duration::from_micros;
        assert_eq!(health_batch(None, 10_000, 32), 1, "no mean yet");
        assert_eq!(health_batch(Some(us(80)), 10_000, 32), 250);
        assert_eq!(health_batch(Some(us(10)), 10_000, 32), 256, "capped");
        assert_eq!(
            health_batch(Some(Duration::from_secs(1)), 10_000, 32),
            1,
            "a slow probe"
        );
        assert_eq!(
            health_batch(Some(us(80)), 20, 32),
            1,
            "20 checks: 20 side by side"
        );
        assert_eq!(health_batch(Some(us(80)), 640, 32), 20, "32 batches of 20");
        assert_eq!(health_batch(Some(us(80)), 0, 32), 1);
    }

    #[test]
    fn idle_polls_land_on_the_next_step_of_a_shared_grid() {
        let origin = tokio::time::Instant::now();
        let poll = Duration::from_secs(1);
        let at = |ms: u64| origin + Duration::from_millis(ms);
        // Put off to the next tenth of the interval, never earlier, at most a tenth later.
        assert_eq!(on_poll_grid(at(1_001), origin, poll), at(1_100));
        assert_eq!(on_poll_grid(at(1_099), origin, poll), at(1_100));
        assert_eq!(on_poll_grid(at(1_100), origin, poll), at(1_100));
        assert_eq!(on_poll_grid(at(0), origin, poll), at(0));
        // Groups due within one step share it.
        assert_eq!(
            on_poll_grid(at(5_230), origin, poll),
            on_poll_grid(at(5_290), origin, poll)
        );
        // A short interval keeps a step of at least a millisecond.
        let short = Duration::from_millis(5);
        assert_eq!(
            on_poll_grid(at(3) + Duration::from_micros(10), origin, short),
            at(4)
        );
    }

    #[test]
    fn random_units_are_in_range_and_vary() {
        let xs: Vec<f64> = (0..50).map(|_| random_unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let distinct: std::collections::BTreeSet<u64> = xs.iter().map(|x| x.to_bits()).collect();
        assert!(distinct.len() > 40);
    }
}
