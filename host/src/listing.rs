//! One `describe` per instance plugin per poll, shared by the idle groups on it.
//!
//! Left to itself every group lists its own instances on every pass: with a thousand groups on
//! one plugin that is a thousand sandboxed calls a poll, and a plugin that keeps its instances
//! in files reads all of them for each (it filters by tag after reading). Instead, where
//! several groups use one plugin, an idle group's pass (its previous one found nothing to do)
//! takes the plugin's whole listing (no tag filter) and picks its instances by the group tag on
//! the host, from an index made once per listing; passes that start close together share one.
//!
//! What stays a group's own `describe`, filtered by its tag: a group at work (its previous pass
//! acted or waited: it wants its own changes seen at once and the filtered call is the cheaper
//! one), a group alone on its plugin, and for a minute at a time a group found holding more
//! than a quarter of a shared listing (the whole listing costs it several times its own).
//!
//! A pass only accepts a listing that started after its own previous pass ended, so whatever
//! the group did itself is in it just as in a listing of its own; and no older than one poll
//! interval, so an instance deleted behind the manager's back is still noticed within two
//! polls. A listing that fails is not shared: each group then lists on its own, and its error
//! is its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use crate::plugin::{Description, InstanceClient, Tags};
use crate::spec::tags;

/// A whole-plugin listing; `None` if it failed.
type Listing = Shared<BoxFuture<'static, Option<Arc<ByGroup>>>>;

/// A whole listing, indexed by the group tag's value.
#[derive(Debug, Default)]
struct ByGroup {
    groups: HashMap<String, Vec<Description>>,
    /// Instances listed, tagged with a group or not.
    total: usize,
}

/// The shared listings of the instance plugins, and how many groups use each.
#[derive(Default)]
pub struct Listings {
    slots: Mutex<HashMap<String, Slot>>,
    /// Groups per instance plugin (as their specs name it), from the store.
    users: Mutex<HashMap<String, usize>>,
    /// Groups that held more than a quarter of a shared listing, and until when they list on
    /// their own.
    dominant: Mutex<HashMap<String, Instant>>,
}

/// How long a group found to dominate its plugin's listing lists on its own before it looks
/// at a shared listing again.
const RECHECK_DOMINANT: Duration = Duration::from_secs(60);

struct Slot {
    /// Which plugin made it: a reloaded plugin starts afresh.
    plugin: InstanceClient,
    started: Instant,
    listing: Listing,
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

    /// The instances of `plugin` in `group` (by the group tag), from a whole-plugin listing
    /// that started no earlier than `not_before` (made now if there is none). `None` when the
    /// group should list on its own: that listing failed (to get its own error), or the group
    /// held more than a quarter of the plugin's instances in a recent one.
    pub async fn members(
        &self,
        plugin: &InstanceClient,
        group: &str,
        not_before: Instant,
    ) -> Option<Vec<Description>> {
        let now = Instant::now();
        if self
            .dominant
            .lock()
            .expect("listing dominant lock")
            .get(group)
            .is_some_and(|until| now < *until)
        {
            return None;
        }
        let listing = {
            let mut slots = self.slots.lock().expect("listing slots lock");
            match slots.get(plugin.name()) {
                Some(s) if s.started >= not_before && s.plugin.same(plugin) => s.listing.clone(),
                _ => {
                    let listing = whole(plugin.clone());
                    slots.insert(
                        plugin.name().to_string(),
                        Slot {
                            plugin: plugin.clone(),
                            started: now,
                            listing: listing.clone(),
                        },
                    );
                    listing
                }
            }
        };
        let by_group = listing.await?;
        let mine = by_group.groups.get(group).cloned().unwrap_or_default();
        if mine.len().saturating_mul(4) > by_group.total {
            // Its own filtered listing costs it less; it tries sharing again later, as the
            // other groups grow.
            self.dominant
                .lock()
                .expect("listing dominant lock")
                .insert(group.to_string(), now + RECHECK_DOMINANT);
        }
        Some(mine)
    }
}

/// The plugin's whole listing, indexed by group, as a future any number of passes can await.
fn whole(plugin: InstanceClient) -> Listing {
    async move {
        let all = match plugin.describe(&Tags::new(), false).await {
            Ok(all) => all,
            Err(e) => {
                tracing::debug!(plugin = %plugin.name(), error = %crate::error_chain(&e), "a shared listing failed; the groups on the plugin list on their own");
                return None;
            }
        };
        let mut by_group = ByGroup {
            total: all.len(),
            ..ByGroup::default()
        };
        for d in all {
            if let Some(g) = d.tags.get(tags::GROUP) {
                by_group.groups.entry(g.clone()).or_default().push(d);
            }
        }
        Some(Arc::new(by_group))
    }
    .boxed()
    .shared()
}
