//! One `describe` per instance plugin per poll, shared by the groups on it.
//!
//! Left to itself every group lists its own instances on every pass: with a thousand groups on
//! one plugin that is a thousand sandboxed calls a poll, and a plugin that keeps its instances
//! in files reads all of them for each (it filters by tag after reading). Instead, where
//! several groups use one plugin, a pass may take the plugin's whole listing (no tag filter)
//! and pick its instances by the group tag on the host, from an index made once per listing;
//! passes that start close together share one.
//!
//! When that pays: an idle group's pass (its previous one found it converged) always shares.
//! A group at work shares only where the plugin's whole listing costs at most twice the
//! group's own filtered one (a plugin that reads everything to filter, like `instance-file`);
//! where filtering is cheap on the plugin's side (a cloud API's tag filter, a file per group),
//! a working group keeps its own call. A group found holding more than a quarter of a shared
//! listing of at least 50 instances lists on its own for a minute at a time (the whole listing
//! costs it several times its own), and so does a group alone on its plugin.
//!
//! A pass only accepts a listing that started after its own previous pass ended (or, for its
//! first, after its task started), so whatever the group did itself is in it just as in a
//! listing of its own; and no older than one poll interval, so an instance deleted behind the
//! manager's back is still noticed within two polls. A listing that fails is not shared: each
//! group then lists on its own, and its error is its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use crate::plugin::{Description, InstanceClient, Tags};
use crate::spec::tags;

/// A whole-plugin listing; `None` if it failed.
type Listing = Shared<BoxFuture<'static, Option<Arc<ByGroup>>>>;

/// A whole listing, indexed by the group tag's value. Each group's part is shared, not copied,
/// with the passes that take it.
#[derive(Debug, Default)]
struct ByGroup {
    groups: HashMap<String, Arc<Vec<Description>>>,
    /// Instances listed, tagged with a group or not.
    total: usize,
    /// How long the plugin took.
    took: Duration,
}

/// How long a group found to dominate its plugin's listing lists on its own before it looks
/// at a shared listing again.
const RECHECK_DOMINANT: Duration = Duration::from_secs(60);

/// Below this many instances a whole listing costs about what a filtered one does, so no
/// group is judged to dominate it. Without this floor the first groups committed on a plugin
/// (each holding all of a listing of a handful) listed on their own for a minute each.
const DOMINANT_FROM: usize = 50;

/// The shared listings of the instance plugins, and what decides who uses them.
#[derive(Default)]
pub struct Listings {
    slots: Mutex<HashMap<String, Slot>>,
    /// Groups per instance plugin (as their specs name it), from the store.
    users: Mutex<HashMap<String, usize>>,
    /// Per group: until when it lists on its own (it dominated a listing), and how long its
    /// own filtered listing last took.
    groups: Mutex<HashMap<String, GroupCosts>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct GroupCosts {
    dominant_until: Option<Instant>,
    own: Option<Duration>,
}

struct Slot {
    /// Which plugin made it: a reloaded plugin starts afresh.
    plugin: InstanceClient,
    started: Instant,
    listing: Listing,
    /// How long the last completed whole listing of this plugin took.
    last_took: Option<Duration>,
}

impl Listings {
    /// Records how many groups name each instance plugin (called whenever the stored groups
    /// change).
    pub fn set_users<'a>(&self, plugins: impl IntoIterator<Item = &'a str>) {
        let mut users = HashMap::new();
        for p in plugins {
            *users.entry(p.to_string()).or_insert(0) += 1;
        }
        *self.users.lock().expect("listing users lock") = users;
    }

    /// Whether groups naming `plugin` share its listings: only when more than one does.
    pub fn shares(&self, plugin: &str) -> bool {
        self.users
            .lock()
            .expect("listing users lock")
            .get(plugin)
            .is_some_and(|&n| n > 1)
    }

    /// Records how long `group`'s own filtered listing took.
    pub fn note_own(&self, group: &str, took: Duration) {
        self.groups
            .lock()
            .expect("listing groups lock")
            .entry(group.to_string())
            .or_default()
            .own = Some(took);
    }

    /// The instances of `plugin` in `group` (by the group tag), from a whole-plugin listing
    /// that started no earlier than `not_before` (made now if there is none). `None` when the
    /// group should list on its own (see the module's rules; `idle`: its previous pass found
    /// it converged), or when that listing failed (to get its own error).
    pub async fn members(
        &self,
        plugin: &InstanceClient,
        group: &str,
        idle: bool,
        not_before: Instant,
    ) -> Option<Arc<Vec<Description>>> {
        let now = Instant::now();
        let costs = self
            .groups
            .lock()
            .expect("listing groups lock")
            .get(group)
            .copied()
            .unwrap_or_default();
        if costs.dominant_until.is_some_and(|until| now < until) {
            return None;
        }
        let listing = {
            let mut slots = self.slots.lock().expect("listing slots lock");
            let slot = slots.get(plugin.name()).filter(|s| s.plugin.same(plugin));
            let last_took = slot.as_ref().and_then(|s| {
                s.listing
                    .peek()
                    .and_then(|done| done.as_ref().map(|d| d.took))
                    .or(s.last_took)
            });
            // A working group shares only if the whole listing is about as cheap as its own
            // (unknown costs: try, and learn them).
            if !idle
                && let (Some(whole), Some(own)) = (last_took, costs.own)
                && whole > own * 2
            {
                return None;
            }
            match slot {
                Some(s) if s.started >= not_before => s.listing.clone(),
                _ => {
                    let listing = whole(plugin.clone());
                    slots.insert(
                        plugin.name().to_string(),
                        Slot {
                            plugin: plugin.clone(),
                            started: now,
                            listing: listing.clone(),
                            last_took,
                        },
                    );
                    listing
                }
            }
        };
        let by_group = listing.await?;
        let mine = by_group.groups.get(group).cloned().unwrap_or_default();
        if by_group.total >= DOMINANT_FROM && mine.len().saturating_mul(4) > by_group.total {
            // Its own filtered listing costs it less; it tries sharing again later, as the
            // other groups grow.
            self.groups
                .lock()
                .expect("listing groups lock")
                .entry(group.to_string())
                .or_default()
                .dominant_until = Some(now + RECHECK_DOMINANT);
        }
        Some(mine)
    }

    /// Forgets what was learnt about a group that is no longer managed here.
    pub fn forget(&self, group: &str) {
        self.groups
            .lock()
            .expect("listing groups lock")
            .remove(group);
    }
}

/// The plugin's whole listing, indexed by group, as a future any number of passes can await.
fn whole(plugin: InstanceClient) -> Listing {
    async move {
        let started = Instant::now();
        let all = match plugin.describe(&Tags::new(), false).await {
            Ok(all) => all,
            Err(e) => {
                tracing::debug!(plugin = %plugin.name(), error = %crate::error_chain(&e), "a shared listing failed; the groups on the plugin list on their own");
                return None;
            }
        };
        let took = started.elapsed();
        let total = all.len();
        let mut groups: HashMap<String, Vec<Description>> = HashMap::new();
        for d in all {
            let Some(g) = d.tags.get(tags::GROUP) else {
                continue;
            };
            // The group's name is copied once per group, not once per instance.
            match groups.get_mut(g) {
                Some(mine) => mine.push(d),
                None => {
                    groups.insert(g.clone(), vec![d]);
                }
            }
        }
        Some(Arc::new(ByGroup {
            groups: groups.into_iter().map(|(g, ds)| (g, Arc::new(ds))).collect(),
            total,
            took,
        }))
    }
    .boxed()
    .shared()
}
