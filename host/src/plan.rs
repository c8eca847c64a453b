//! The planner: a pure function from what is desired and what is observed to an ordered list
//! of named steps. No wasm, no I/O, no clock: `now` is an argument. The controller executes a
//! plan, observes again and plans again, so a plan only has to make progress safely; it never
//! has to finish the job in one go.
//!
//! Safety rules, each property-tested below:
//! - at most `MaxUnavailable` healthy instances are taken away at once (a rolling update never
//!   drops below `size - MaxUnavailable` healthy);
//! - the group never grows past `size + MaxSurge` (pets never surge: a logical id exists at most
//!   once);
//! - instances of other groups are never touched;
//! - unhealthy instances are replaced only past their grace period, and not at all when more
//!   than `MaxUnhealthy` are unhealthy at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{Allocation, Description, DestroyContext, Health};
use crate::spec::{GroupSpec, ScaleDownPolicy, tags};

/// What the group should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The group id.
    pub group: String,
    /// Hash of the configuration current instances are made from.
    pub config_sha: String,
    /// Cattle or pets.
    pub allocation: Allocation,
    /// Instances allowed above the allocation during an update.
    pub max_surge: u32,
    /// Healthy instances allowed missing during an update.
    pub max_unavailable: u32,
    /// New instances must be healthy before more are replaced.
    pub wait_for_healthy: bool,
    /// How long a new instance may stay unhealthy before the update pauses (ms).
    pub batch_timeout_ms: u64,
    /// How long after provisioning an instance cannot be judged unhealthy (ms).
    pub grace_period_ms: u64,
    /// Above this many unhealthy instances, remediation pauses.
    pub max_unhealthy: u32,
    /// Who goes first on scale-in among healthy, current instances.
    pub scale_down: ScaleDownPolicy,
    /// Replace protected instances when they are unhealthy.
    pub replace_protected: bool,
    /// Healthy checks in a row before a new instance counts towards an update's availability
    /// (`Updating.Count`; 0: none asked).
    pub settle_checks: u32,
    /// How long a new instance must stay healthy before it counts (`Updating.Duration`, ms).
    pub settle_ms: u64,
    /// Unhealthy verdicts in a row before an instance counts as unhealthy.
    pub unhealthy_threshold: u32,
    /// How long it must have been unhealthy without a break (ms).
    pub unhealthy_for_ms: u64,
}

impl Desired {
    /// The desired state a spec describes.
    pub fn from_spec(spec: &GroupSpec) -> Desired {
        Desired::from_spec_with_sha(spec, spec.config_sha())
    }

    /// [`Desired::from_spec`] with the spec's [`GroupSpec::config_sha`] already computed.
    pub fn from_spec_with_sha(spec: &GroupSpec, config_sha: String) -> Desired {
        let p = &spec.properties;
        Desired {
            group: spec.id.clone(),
            config_sha,
            allocation: spec.allocation(),
            max_surge: p.updating.max_surge,
            max_unavailable: p.updating.max_unavailable,
            wait_for_healthy: p.updating.wait_for_healthy,
            batch_timeout_ms: p.updating.batch_timeout.0.as_millis() as u64,
            grace_period_ms: p.health.grace_period.0.as_millis() as u64,
            max_unhealthy: p.health.max_unhealthy.resolve(spec.size()),
            scale_down: p.allocation.scale_down_policy,
            replace_protected: p.health.replace_protected,
            settle_checks: p.updating.count.unwrap_or(0),
            settle_ms: p.updating.duration.map_or(0, |d| d.0.as_millis() as u64),
            unhealthy_threshold: p.health.unhealthy_threshold.max(1),
            unhealthy_for_ms: p.health.unhealthy_for.0.as_millis() as u64,
        }
    }

    /// How many members the allocation wants.
    pub fn size(&self) -> usize {
        match &self.allocation {
            Allocation::Size(n) => *n as usize,
            Allocation::LogicalIds(ids) => ids.len(),
        }
    }
}

/// One observed instance, as derived from its description (tags) and its flavor's verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Member {
    /// Instance id.
    pub id: String,
    /// The group tag.
    pub group: String,
    /// The pet's logical id.
    pub logical_id: Option<String>,
    /// The configuration hash it was made from (empty when untagged).
    pub config_sha: String,
    /// When it was provisioned (Unix ms; 0 when unknown: counted as old).
    pub created_ms: u64,
    /// Its index in the group.
    pub index: Option<u32>,
    /// The flavor's verdict.
    pub health: Health,
    /// Protected from scale-in and from a rolling update's removals.
    pub protected: bool,
    /// Removal requested by an operator (`destroy-instances`).
    pub removal: Option<Removal>,
    /// Healthy verdicts in a row, as far as this manager has seen.
    pub healthy_checks: u32,
    /// Since when it has been judged healthy without a break (Unix ms; 0: not healthy).
    pub healthy_since_ms: u64,
    /// Unhealthy verdicts in a row (0 when unknown: a verdict alone counts as one).
    pub unhealthy_checks: u32,
    /// Since when it has been judged unhealthy without a break (Unix ms; 0: unknown).
    pub unhealthy_since_ms: u64,
}

/// An operator's request to remove one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// A successor takes its place.
    Replace,
    /// The group shrinks: it keeps its slot until the smaller revision lands, so nothing is
    /// provisioned in its place meanwhile.
    Decrement,
}

impl Member {
    /// Reads identity from an instance's tags.
    pub fn from_description(d: &Description, health: Health) -> Member {
        let tag = |k: &str| d.tags.get(k).cloned();
        Member {
            id: d.id.clone(),
            group: tag(tags::GROUP).unwrap_or_default(),
            logical_id: d.logical_id.clone().or_else(|| tag(tags::LOGICAL_ID)),
            config_sha: tag(tags::CONFIG_SHA).unwrap_or_default(),
            created_ms: tag(tags::CREATED).and_then(|v| v.parse().ok()).unwrap_or(0),
            index: tag(tags::INDEX).and_then(|v| v.parse().ok()),
            health,
            protected: tag(tags::PROTECTED).is_some_and(|v| v == "true"),
            removal: match tag(tags::REMOVE).as_deref() {
                Some(tags::REMOVE_REPLACE) => Some(Removal::Replace),
                Some(tags::REMOVE_DECREMENT) => Some(Removal::Decrement),
                _ => None,
            },
            healthy_checks: 0,
            healthy_since_ms: 0,
            unhealthy_checks: 0,
            unhealthy_since_ms: 0,
        }
    }
}

/// One thing to do, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "step", rename_all = "lowercase")]
pub enum Step {
    /// Provision a new instance with the current configuration.
    Provision {
        /// The pet's logical id.
        #[serde(skip_serializing_if = "Option::is_none")]
        logical_id: Option<String>,
        /// Its index in the group.
        index: u32,
        /// Why.
        reason: String,
    },
    /// Ask the flavor to move work off an instance (always followed by its `Destroy`).
    Drain {
        /// The instance.
        id: String,
        /// Why.
        reason: String,
    },
    /// Destroy an instance.
    Destroy {
        /// The instance.
        id: String,
        /// Terminate or rolling update.
        context: DestroyContext,
        /// Why.
        reason: String,
    },
    /// Drain and destroy an instance, then provision its successor (same logical id / index).
    Replace {
        /// The instance replaced.
        id: String,
        /// The pet's logical id, kept by the successor.
        #[serde(skip_serializing_if = "Option::is_none")]
        logical_id: Option<String>,
        /// The index, kept by the successor.
        index: u32,
        /// Terminate (remediation) or rolling update.
        context: DestroyContext,
        /// Why.
        reason: String,
    },
    /// Nothing can be done now; the next observation decides.
    Wait {
        /// What is awaited.
        reason: String,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Provision {
                logical_id, reason, ..
            } => match logical_id {
                Some(l) => write!(f, "provision {l}: {reason}"),
                None => write!(f, "provision: {reason}"),
            },
            Step::Drain { id, reason } => write!(f, "drain {id}: {reason}"),
            Step::Destroy { id, reason, .. } => write!(f, "destroy {id}: {reason}"),
            Step::Replace { id, reason, .. } => write!(f, "replace {id}: {reason}"),
            Step::Wait { reason } => write!(f, "wait: {reason}"),
        }
    }
}

/// Where the group stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Every member is there, current and healthy; nothing to do.
    Converged,
    /// Provisioning, destroying or remediating towards the allocation.
    Converging,
    /// Replacing members made from an older configuration.
    Updating,
    /// A safety limit stopped remediation or the update; see the messages.
    Paused,
    /// The last pass failed (a plugin error or fault): set by the controller, never by the
    /// planner.
    Failing,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Converged => "converged",
            Phase::Converging => "converging",
            Phase::Updating => "updating",
            Phase::Paused => "paused",
            Phase::Failing => "failing",
        })
    }
}

/// The plan: steps in execution order, and the group's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Plan {
    /// What to do, in order.
    pub steps: Vec<Step>,
    /// Where the group stands.
    pub phase: Phase,
    /// Why it is paused or waiting, for people.
    pub messages: Vec<String>,
    /// Members made from the current configuration (not being removed).
    pub current: usize,
    /// The allocation's size.
    pub size: usize,
    /// What the spec changes, field by field (previews of a commit only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<crate::diff::SpecChange>,
    /// The course of the whole change from what is observed now (previews only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub course: Option<crate::diff::Course>,
}

impl Plan {
    /// Whether executing it changes anything.
    pub fn has_work(&self) -> bool {
        self.steps.iter().any(|s| !matches!(s, Step::Wait { .. }))
    }

    /// Counts of (provisions, destroys, replaces), for summaries.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for s in &self.steps {
            match s {
                Step::Provision { .. } => c.0 += 1,
                Step::Destroy { .. } => c.1 += 1,
                Step::Replace { .. } => c.2 += 1,
                _ => {}
            }
        }
        c
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Healthy,
    /// Unhealthy past the grace period.
    Unhealthy,
    /// Within its grace period and not (yet) healthy.
    Starting,
    /// The flavor cannot tell.
    Unknown,
}

struct View<'a> {
    m: &'a Member,
    state: State,
    current: bool,
}

impl View<'_> {
    fn available(&self, d: &Desired) -> bool {
        self.state == State::Healthy
            || (!d.wait_for_healthy && self.current && self.state != State::Unhealthy)
    }

    /// A new-configuration member that is still not available past the batch timeout: the
    /// update pauses on it. Without `WaitForHealthy` only a member judged unhealthy counts
    /// (an undecided one is available then); it must still pause, or an update whose new
    /// instance is broken would wait for ever with no message (found by the multi-round
    /// property).
    fn stuck(&self, d: &Desired, now: u64) -> bool {
        !self.available(d) && self.age(now) > d.batch_timeout_ms
    }

    /// Counts towards an update's availability: available, and a member on the new
    /// configuration healthy for as many checks in a row and as long as `Updating` asks.
    fn proven(&self, d: &Desired, now: u64) -> bool {
        if !self.available(d) {
            return false;
        }
        if !self.current || (d.settle_checks == 0 && d.settle_ms == 0) {
            return true;
        }
        self.m.healthy_checks >= d.settle_checks
            && (d.settle_ms == 0
                || (self.m.healthy_since_ms > 0
                    && now.saturating_sub(self.m.healthy_since_ms) >= d.settle_ms))
    }

    fn age(&self, now: u64) -> u64 {
        now.saturating_sub(self.m.created_ms)
    }
}

fn view<'a>(m: &'a Member, d: &Desired, now: u64) -> View<'a> {
    let in_grace = now.saturating_sub(m.created_ms) < d.grace_period_ms;
    // Past its grace period, an unhealthy verdict counts once it has held for
    // `UnhealthyThreshold` checks and `UnhealthyFor`; until then the instance is suspect
    // (undecided), so one flapping probe costs nothing.
    let confirmed = m.unhealthy_checks.max(1) >= d.unhealthy_threshold
        && (d.unhealthy_for_ms == 0
            || (m.unhealthy_since_ms > 0
                && now.saturating_sub(m.unhealthy_since_ms) >= d.unhealthy_for_ms));
    let state = match m.health {
        Health::Healthy => State::Healthy,
        Health::Unhealthy if !in_grace && confirmed => State::Unhealthy,
        Health::Unhealthy | Health::Unknown if in_grace => State::Starting,
        Health::Unknown | Health::Unhealthy => State::Unknown,
    };
    View {
        m,
        state,
        current: m.config_sha == d.config_sha,
    }
}

/// Plans the next steps for a group. Pure: the same inputs give the same plan.
pub fn plan(desired: &Desired, observed: &[Member], now_ms: u64) -> Plan {
    let mut mine: Vec<View> = observed
        .iter()
        .filter(|m| m.group == desired.group)
        .map(|m| view(m, desired, now_ms))
        .collect();
    // Deterministic order: oldest first, then id.
    mine.sort_by(|a, b| (a.m.created_ms, &a.m.id).cmp(&(b.m.created_ms, &b.m.id)));
    match &desired.allocation {
        Allocation::Size(n) => plan_cattle(desired, mine, *n as usize, now_ms),
        Allocation::LogicalIds(ids) => plan_pets(desired, mine, ids, now_ms),
    }
}

/// Collects steps and status while planning.
struct Builder {
    removals: Vec<Step>,
    provisions: Vec<Step>,
    messages: Vec<String>,
    paused: bool,
    used_indexes: BTreeSet<u32>,
    /// No index below this is free: indexes are only ever taken while planning, so the search
    /// for the next free one resumes here instead of from 0 (from 0 made a scale-up quadratic:
    /// 10,000 new instances planned in 17 s).
    free_from: u32,
}

impl Builder {
    fn new(members: &[View]) -> Builder {
        Builder {
            removals: Vec::new(),
            provisions: Vec::new(),
            messages: Vec::new(),
            paused: false,
            used_indexes: members.iter().filter_map(|v| v.m.index).collect(),
            free_from: 0,
        }
    }

    fn next_index(&mut self) -> u32 {
        let i = (self.free_from..)
            .find(|i| !self.used_indexes.contains(i))
            .unwrap_or(0);
        self.used_indexes.insert(i);
        self.free_from = i.saturating_add(1);
        i
    }

    /// Of the unhealthy members, those that may be replaced: protected ones are reported and
    /// kept, unless the spec says to replace them too.
    fn replaceable<'v, 'a>(
        &mut self,
        d: &Desired,
        unhealthy: Vec<&'v View<'a>>,
    ) -> Vec<&'v View<'a>> {
        let (replace, kept): (Vec<&View>, Vec<&View>) = unhealthy
            .into_iter()
            .partition(|v| !v.m.protected || d.replace_protected);
        if !kept.is_empty() {
            self.paused = true;
            self.messages.push(format!(
                "unhealthy but protected, so not replaced: {}; unprotect (infrakit group \
                 unprotect) or set Health.ReplaceProtected",
                ids(&kept)
            ));
        }
        replace
    }

    fn destroy(&mut self, id: &str, context: DestroyContext, reason: String) {
        self.removals.push(Step::Drain {
            id: id.to_string(),
            reason: reason.clone(),
        });
        self.removals.push(Step::Destroy {
            id: id.to_string(),
            context,
            reason,
        });
    }

    /// `fallback` is the index when the member has none (a pet's place in the allocation).
    fn replace(&mut self, v: &View, context: DestroyContext, reason: String) {
        self.replace_at(v, None, context, reason);
    }

    fn replace_at(
        &mut self,
        v: &View,
        fallback: Option<u32>,
        context: DestroyContext,
        reason: String,
    ) {
        let index = match v.m.index.or(fallback) {
            Some(i) => i,
            None => self.next_index(),
        };
        self.removals.push(Step::Replace {
            id: v.m.id.clone(),
            logical_id: v.m.logical_id.clone(),
            index,
            context,
            reason,
        });
    }

    fn provision(&mut self, logical_id: Option<String>, index: Option<u32>, reason: String) {
        let index = match index {
            Some(i) => {
                self.used_indexes.insert(i);
                i
            }
            None => self.next_index(),
        };
        self.provisions.push(Step::Provision {
            logical_id,
            index,
            reason,
        });
    }

    fn finish(
        mut self,
        desired: &Desired,
        updating: bool,
        current: usize,
        settled: bool,
        waiting: Option<String>,
    ) -> Plan {
        let size = desired.size();
        let mut steps = self.removals;
        steps.append(&mut self.provisions);
        let has_work = !steps.is_empty();
        if !has_work && let Some(reason) = waiting.clone() {
            steps.push(Step::Wait { reason });
        }
        let phase = if self.paused {
            Phase::Paused
        } else if updating {
            Phase::Updating
        } else if has_work || !settled || waiting.is_some() {
            Phase::Converging
        } else {
            Phase::Converged
        };
        if let Some(w) = waiting
            && phase != Phase::Converged
        {
            self.messages.push(w);
        }
        Plan {
            steps,
            phase,
            messages: self.messages,
            current,
            size,
            changes: Vec::new(),
            course: None,
        }
    }
}

fn ids(vs: &[&View]) -> String {
    vs.iter()
        .map(|v| v.m.id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The order in which healthy, current instances go on scale-in: the not-available first,
/// then as the policy says, then by id (so a plan is deterministic).
fn scale_in_order(d: &Desired, a: &View, b: &View) -> std::cmp::Ordering {
    let by_policy = match d.scale_down {
        // An instance without an index (made by something else) goes before indexed ones.
        ScaleDownPolicy::HighestIndex => {
            let key = |v: &View| std::cmp::Reverse(v.m.index.map_or(u64::MAX, u64::from));
            key(a)
                .cmp(&key(b))
                .then(b.m.created_ms.cmp(&a.m.created_ms))
        }
        ScaleDownPolicy::Oldest => a.m.created_ms.cmp(&b.m.created_ms),
        ScaleDownPolicy::Newest => b.m.created_ms.cmp(&a.m.created_ms),
    };
    a.available(d)
        .cmp(&b.available(d))
        .then(by_policy)
        .then_with(|| a.m.id.cmp(&b.m.id))
}

/// Why an unhealthy instance is replaced, as it is: how many checks, for how long, past its
/// grace period.
fn unhealthy_reason(d: &Desired, m: &Member) -> String {
    let checks = m.unhealthy_checks.max(1);
    let mut reason = format!(
        "found unhealthy in {checks} check{} in a row",
        if checks == 1 { "" } else { "s" }
    );
    if d.unhealthy_threshold > 1 {
        reason.push_str(&format!(" (UnhealthyThreshold {})", d.unhealthy_threshold));
    }
    if d.unhealthy_for_ms > 0 {
        reason.push_str(&format!(
            ", for over {}s (UnhealthyFor)",
            d.unhealthy_for_ms / 1000
        ));
    }
    reason.push_str(&format!(
        ", past its grace period of {}s",
        d.grace_period_ms / 1000
    ));
    reason
}

/// What `Updating.Count`/`Duration` add to "healthy" in messages.
fn settle_words(d: &Desired) -> String {
    match (d.settle_checks, d.settle_ms) {
        (0, 0) => String::new(),
        (n, 0) => format!(" for {n} checks in a row (Updating.Count)"),
        (_, ms) => format!(" for {}s (Updating.Duration)", ms / 1000),
    }
}

/// The reason of a removal an operator asked for.
fn requested_reason(r: Removal) -> String {
    match r {
        Removal::Replace => "removal requested (destroy-instances): a successor takes its place",
        Removal::Decrement => {
            "removal requested (destroy-instances --decrement): the group shrinks"
        }
    }
    .to_string()
}

fn plan_cattle(d: &Desired, mine: Vec<View>, n: usize, now: u64) -> Plan {
    let mut b = Builder::new(&mine);
    let min_available = n.saturating_sub(d.max_unavailable as usize);
    let max_total = n + d.max_surge as usize;

    // 0. Removals an operator asked for go first, whatever their health or protection. One
    //    that shrinks the group holds its slot (nothing is provisioned for it) until the
    //    smaller revision lands; it never makes another instance look excess.
    let requested: Vec<&View> = mine.iter().filter(|v| v.m.removal.is_some()).collect();
    let held_slots = requested
        .iter()
        .filter(|v| v.m.removal == Some(Removal::Decrement))
        .count();
    let rest: Vec<&View> = mine.iter().filter(|v| v.m.removal.is_none()).collect();

    // 1. Remediation: unhealthy past grace, unless too many are unhealthy at once. During an
    //    update, new-configuration members are not remediated: replacing them would loop on a
    //    broken configuration; the batch timeout pauses the update instead. Protected ones
    //    are reported, not replaced, unless the spec says otherwise.
    let updating = rest.iter().any(|v| !v.current);
    let unhealthy = b.replaceable(
        d,
        rest.iter()
            .filter(|v| v.state == State::Unhealthy && !(updating && v.current))
            .copied()
            .collect(),
    );
    let remediate = unhealthy.len() <= d.max_unhealthy as usize;
    if !unhealthy.is_empty() && !remediate {
        b.paused = true;
        b.messages.push(format!(
            "remediation paused: {} instances unhealthy at once ({}), more than MaxUnhealthy {}; \
             check what they share (network, a dependency) before raising the limit",
            unhealthy.len(),
            ids(&unhealthy),
            d.max_unhealthy
        ));
    }
    let removed_unhealthy: Vec<&View> = if remediate { unhealthy } else { Vec::new() };
    let gone = |v: &View| removed_unhealthy.iter().any(|u| u.m.id == v.m.id);
    let mut cur: Vec<&View> = rest
        .iter()
        .filter(|v| v.current && !gone(v))
        .copied()
        .collect();
    // Protected old-configuration members stay (and keep their slot) until unprotected.
    let (old_protected, old): (Vec<&View>, Vec<&View>) = rest
        .iter()
        .filter(|v| !v.current && !gone(v))
        .partition(|v| v.m.protected);
    if !old_protected.is_empty() {
        b.paused = true;
        b.messages.push(format!(
            "rolling update held back: protected instance(s) {} stay on the older configuration \
             until unprotected",
            ids(&old_protected)
        ));
    }
    let n_keep = n.saturating_sub(old_protected.len());

    // 2. Current members beyond the allocation, in the policy's order; protected ones stay.
    let mut excess_cur = Vec::new();
    if cur.len() > n_keep {
        let need = cur.len() - n_keep;
        let mut victims: Vec<&View> = cur.iter().filter(|v| !v.m.protected).copied().collect();
        victims.sort_by(|a, b| scale_in_order(d, a, b));
        // Protected members that are not available must not make scale-in take away the
        // available ones below what the group needs.
        let mut available = cur
            .iter()
            .chain(old.iter())
            .chain(old_protected.iter())
            .filter(|v| v.available(d))
            .count();
        let floor = available.min(n.saturating_sub(d.max_unavailable as usize));
        for v in victims {
            if excess_cur.len() == need {
                break;
            }
            if v.available(d) {
                if available <= floor {
                    break;
                }
                available -= 1;
            }
            excess_cur.push(v);
        }
        let take = excess_cur.len();
        if take < need {
            b.paused = true;
            let protected: Vec<&View> = cur.iter().filter(|v| v.m.protected).copied().collect();
            b.messages.push(format!(
                "scale-in held back: {} more instance(s) should go to reach {n}, but the rest are \
                 protected ({}) or needed for availability",
                need - take,
                ids(&protected)
            ));
        }
        cur.retain(|v| !excess_cur.iter().any(|x| x.m.id == v.m.id));
    }

    // 3. Old-configuration members: removed as availability allows (the rolling update).
    let mut old_removed: Vec<&View> = Vec::new();
    let mut update_paused = false;
    let mut waiting = None;
    if !old.is_empty() {
        let stuck: Vec<&&View> = cur.iter().filter(|v| v.stuck(d, now)).collect();
        if !stuck.is_empty() {
            update_paused = true;
            b.paused = true;
            b.messages.push(format!(
                "update paused: new instance {} not healthy within the batch timeout of {}s; \
                 fix the new configuration or roll back",
                stuck[0].m.id,
                d.batch_timeout_ms / 1000
            ));
        } else {
            let available = cur
                .iter()
                .chain(old.iter())
                .chain(old_protected.iter())
                .filter(|v| v.proven(d, now))
                .count();
            let mut budget = available.saturating_sub(min_available);
            // Old members judged unhealthy cost no availability: they go first. Undecided ones
            // (the flavor could not tell: a probe that timed out) may well be serving, so they
            // wait for the budget like healthy ones; otherwise one flaky round of health checks
            // could take a whole group down at once.
            for v in old.iter().filter(|v| v.state == State::Unhealthy) {
                old_removed.push(v);
            }
            let mut healthy_old: Vec<&View> = old
                .iter()
                .filter(|v| v.state != State::Unhealthy)
                .copied()
                .collect();
            // Undecided before healthy, then the oldest first.
            healthy_old.sort_by(|a, b| {
                (a.available(d), a.m.created_ms, &a.m.id).cmp(&(
                    b.available(d),
                    b.m.created_ms,
                    &b.m.id,
                ))
            });
            // Once the new configuration is fully there, the rest of the old ones are excess.
            for v in healthy_old {
                if budget == 0 {
                    break;
                }
                old_removed.push(v);
                budget -= 1;
            }
            if old_removed.len() < old.len() {
                waiting = Some(format!(
                    "rolling update: {} of {} instances on the new configuration; waiting for new \
                     instances to become healthy{} before replacing more",
                    cur.len(),
                    n,
                    settle_words(d)
                ));
            }
        }
    }

    // 4. Provisioning: up to the allocation, never past size + surge (after the removals above,
    //    which the executor performs first).
    let remaining_total = cur.len() + old.len() - old_removed.len() + old_protected.len();
    let want = n_keep.saturating_sub(cur.len() + held_slots);
    let room = if old.len() > old_removed.len() {
        max_total.saturating_sub(remaining_total + held_slots)
    } else {
        // No update in flight: fill to the allocation.
        want
    };
    let add = want.min(room);

    // Emit: requested removals, then unhealthy current members paired with a provision become
    // Replace steps.
    for v in &requested {
        let r = v.m.removal.expect("requested removals have one");
        b.destroy(&v.m.id, DestroyContext::Terminate, requested_reason(r));
    }
    let mut adds_left = add;
    for v in &removed_unhealthy {
        let reason = unhealthy_reason(d, v.m);
        if v.current && adds_left > 0 {
            adds_left -= 1;
            b.replace(v, DestroyContext::Terminate, reason);
        } else {
            b.destroy(&v.m.id, DestroyContext::Terminate, reason);
        }
    }
    for v in &excess_cur {
        b.destroy(
            &v.m.id,
            DestroyContext::Terminate,
            format!("scaling down to {n} ({:?} first)", d.scale_down),
        );
    }
    for v in &old_removed {
        b.destroy(
            &v.m.id,
            DestroyContext::RollingUpdate,
            "rolling update: made from an older configuration".to_string(),
        );
    }
    for k in 0..adds_left {
        // Each step says which one it is, so the events of a scale-up tell them apart.
        let reason = if !old.is_empty() {
            format!(
                "rolling update: new configuration ({} of {adds_left})",
                k + 1
            )
        } else {
            format!(
                "{} of {n} instances exist; adding {} of {adds_left}",
                cur.len(),
                k + 1
            )
        };
        b.provision(None, None, reason);
    }

    if waiting.is_none() && old.is_empty() {
        let starting: Vec<&&View> = cur.iter().filter(|v| v.state == State::Starting).collect();
        if !starting.is_empty() {
            waiting = Some(format!(
                "waiting for {} new instance(s) to become healthy",
                starting.len()
            ));
        }
    }
    let settled = cur.len() == n
        && old.is_empty()
        && requested.is_empty()
        && excess_cur.is_empty()
        && cur.iter().all(|v| v.state == State::Healthy);
    let updating = updating && !update_paused;
    b.finish(d, updating, cur.len(), settled, waiting)
}

fn plan_pets(d: &Desired, mine: Vec<View>, logical_ids: &[String], now: u64) -> Plan {
    let mut b = Builder::new(&mine);
    // Index of a pet = its position in the allocation.
    let index_of = |lid: &str| logical_ids.iter().position(|l| l == lid).map(|i| i as u32);

    let listed = |l: &str| logical_ids.iter().any(|x| x == l);

    // 0. Removals an operator asked for go first. The pet's logical id is taken care of: a
    //    successor under it (replace), or nothing until the revision without it lands
    //    (decrement).
    //    Where another member holds the same logical id (a duplicate), it simply stays.
    let others: BTreeSet<&str> = mine
        .iter()
        .filter(|v| v.m.removal.is_none())
        .filter_map(|v| v.m.logical_id.as_deref())
        .collect();
    let mut handled: BTreeSet<&str> = BTreeSet::new();
    for v in mine.iter().filter(|v| v.m.removal.is_some()) {
        let r = v.m.removal.expect("filtered");
        match v.m.logical_id.as_deref() {
            Some(l) if listed(l) && !others.contains(l) && handled.insert(l) => {
                if r == Removal::Replace {
                    b.replace_at(
                        v,
                        index_of(l),
                        DestroyContext::Terminate,
                        requested_reason(r),
                    );
                } else {
                    b.destroy(&v.m.id, DestroyContext::Terminate, requested_reason(r));
                }
            }
            _ => b.destroy(&v.m.id, DestroyContext::Terminate, requested_reason(r)),
        }
    }

    // 1. Members that are no longer (or never were) one of the logical ids, and duplicates.
    //    A protected pet whose logical id went stays until unprotected.
    let mut by_lid: BTreeMap<&str, Vec<&View>> = BTreeMap::new();
    let mut held: Vec<&View> = Vec::new();
    for v in mine.iter().filter(|v| v.m.removal.is_none()) {
        match v.m.logical_id.as_deref() {
            Some(l) if listed(l) => by_lid.entry(l).or_default().push(v),
            Some(_) if v.m.protected => held.push(v),
            Some(l) => b.destroy(
                &v.m.id,
                DestroyContext::Terminate,
                format!("logical id {l} is no longer in the group"),
            ),
            None => b.destroy(
                &v.m.id,
                DestroyContext::Terminate,
                "a member of a group of pets without a logical id".to_string(),
            ),
        }
    }
    let mut pets: BTreeMap<&str, &View> = BTreeMap::new();
    for (lid, mut vs) in by_lid {
        // Keep the best: available (never trade a working pet for a hopeful one), then the
        // current configuration, then the oldest.
        vs.sort_by(|a, b| {
            (!a.available(d), !a.current, a.m.created_ms, &a.m.id).cmp(&(
                !b.available(d),
                !b.current,
                b.m.created_ms,
                &b.m.id,
            ))
        });
        for dup in &vs[1..] {
            b.destroy(
                &dup.m.id,
                DestroyContext::Terminate,
                format!("duplicate of logical id {lid} (keeping {})", vs[0].m.id),
            );
        }
        pets.insert(lid, vs[0]);
    }
    if !held.is_empty() {
        b.paused = true;
        b.messages.push(format!(
            "scale-in held back: protected pet(s) {} stay though their logical ids are no longer \
             in the group, until unprotected",
            ids(&held)
        ));
    }

    // 2. Missing pets come back under the same logical id, whatever else is going on.
    // Pets being removed on request are unavailable too.
    let mut unavailable = handled.len();
    for lid in logical_ids {
        if !pets.contains_key(lid.as_str()) && !handled.contains(lid.as_str()) {
            unavailable += 1;
            b.provision(
                Some(lid.clone()),
                index_of(lid),
                format!("pet {lid} is missing"),
            );
        }
    }

    // 3. Remediation of unhealthy pets (not of new-configuration ones during an update, as for
    //    cattle).
    let updating = pets.values().any(|v| !v.current);
    let unhealthy = b.replaceable(
        d,
        pets.values()
            .filter(|v| v.state == State::Unhealthy && !(updating && v.current))
            .copied()
            .collect(),
    );
    let remediate = unhealthy.len() <= d.max_unhealthy as usize;
    if !unhealthy.is_empty() && !remediate {
        b.paused = true;
        b.messages.push(format!(
            "remediation paused: {} pets unhealthy at once ({}), more than MaxUnhealthy {}",
            unhealthy.len(),
            ids(&unhealthy),
            d.max_unhealthy
        ));
    }
    let mut replaced: BTreeSet<&str> = BTreeSet::new();
    if remediate {
        for v in &unhealthy {
            replaced.insert(v.m.id.as_str());
            b.replace_at(
                v,
                v.m.logical_id.as_deref().and_then(index_of),
                DestroyContext::Terminate,
                unhealthy_reason(d, v.m),
            );
        }
    }
    unavailable += pets.values().filter(|v| !v.proven(d, now)).count();

    // 4. Rolling update, one logical id at a time within MaxUnavailable (at least one: pets
    //    cannot surge).
    let outdated: Vec<&View> = logical_ids
        .iter()
        .filter_map(|l| pets.get(l.as_str()).copied())
        .filter(|v| !v.current && !replaced.contains(v.m.id.as_str()))
        .collect();
    let (held_back, outdated): (Vec<&View>, Vec<&View>) =
        outdated.into_iter().partition(|v| v.m.protected);
    if !held_back.is_empty() {
        b.paused = true;
        b.messages.push(format!(
            "rolling update held back: protected pet(s) {} stay on the older configuration until \
             unprotected",
            ids(&held_back)
        ));
    }
    let current = pets.values().filter(|v| v.current).count();
    let mut waiting = None;
    let mut update_paused = false;
    if !outdated.is_empty() {
        let stuck: Vec<&View> = pets
            .values()
            .filter(|v| v.current && v.stuck(d, now))
            .copied()
            .collect();
        if !stuck.is_empty() {
            update_paused = true;
            b.paused = true;
            b.messages.push(format!(
                "update paused: pet {} not healthy within the batch timeout of {}s; fix the new \
                 configuration or roll back",
                stuck[0].m.logical_id.as_deref().unwrap_or(&stuck[0].m.id),
                d.batch_timeout_ms / 1000
            ));
        } else {
            let mut budget = (d.max_unavailable.max(1) as usize).saturating_sub(unavailable);
            let mut done = 0;
            for v in &outdated {
                // A pet judged unhealthy costs no availability to replace; an undecided one may
                // be serving, so it waits for the budget like a healthy one.
                if v.state != State::Unhealthy {
                    if budget == 0 {
                        continue;
                    }
                    budget -= 1;
                }
                done += 1;
                b.replace_at(
                    v,
                    v.m.logical_id.as_deref().and_then(index_of),
                    DestroyContext::RollingUpdate,
                    "rolling update: made from an older configuration".to_string(),
                );
            }
            if done < outdated.len() {
                waiting = Some(format!(
                    "rolling update: {} of {} pets on the new configuration; waiting for \
                     replaced pets to become healthy{}",
                    current,
                    logical_ids.len(),
                    settle_words(d)
                ));
            }
        }
    }
    if waiting.is_none() {
        let starting = pets.values().filter(|v| v.state == State::Starting).count();
        if starting > 0 {
            waiting = Some(format!("waiting for {starting} pet(s) to become healthy"));
        }
    }
    let settled = pets.len() == logical_ids.len()
        && pets
            .values()
            .all(|v| v.current && v.state == State::Healthy)
        && mine.len() == logical_ids.len()
        && handled.is_empty();
    let updating = updating && !update_paused;
    b.finish(d, updating, current, settled, waiting)
}

#[cfg(test)]
mod tests;
