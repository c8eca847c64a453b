//! One `describe` per instance plugin per poll, shared by the groups on it.
//!
//! Left to itself every group lists its own instances on every pass: with a thousand groups on
//! one plugin that is a thousand sandboxed calls a poll, and a plugin that keeps its instances
//! in files reads all of them for each (it filters by tag after reading). Instead, where
//! several groups use one plugin, a pass takes the plugin's whole listing (no tag filter) and
//! picks its group's instances by the group tag on the host (indexed once per listing); listings are shared between passes that
//! start close together.
//!
//! A pass only accepts a listing that started after its own previous pass ended, so whatever
//! the group did itself (provision, destroy, label) is in it just as in a listing of its own;
//! and no older than one poll interval, so an instance deleted behind the manager's back is
//! still noticed within two polls. A listing that fails is not shared: each group then
//! lists on its own, and its error is its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use crate::plugin::{Description, InstanceClient, Tags};
use crate::spec::tags;

/// A whole-plugin listing, its instances by group (the group tag's value); `None` if it failed.
type Listing = Shared<BoxFuture<'static, Option<Arc<ByGroup>>>>;
type ByGroup = HashMap<String, Vec<Description>>;

/// The shared listings of the instance plugins, and how many groups use each.
#[derive(Default)]
pub struct Listings {
    slots: Mutex<HashMap<String, Slot>>,
    /// Groups per instance plugin (as their specs name it), from the store.
    users: Mutex<HashMap<String, usize>>,
}

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

    /// Whether groups naming `plugin` share its listings: only when more than one does (a
    /// lone group's own filtered listing is cheaper than the plugin's whole one).
    pub fn shares(&self, plugin: &str) -> bool {
        self.users
            .lock()
            .expect("listing users lock")
            .get(plugin)
            .is_some_and(|&n| n > 1)
    }

    /// The instances of `plugin` in `group` (by the group tag), from a whole-plugin listing
    /// that started no earlier than `not_before` (made now if there is none); `None` when that
    /// listing failed (the caller lists on its own, to get its own error).
    pub async fn members(
        &self,
        plugin: &InstanceClient,
        group: &str,
        not_before: Instant,
    ) -> Option<Vec<Description>> {
        let listing = {
            let mut slots = self.slots.lock().expect("listing slots lock");
            match slots.get(plugin.name()) {
                Some(s) if s.started >= not_before && s.plugin.same(plugin) => s.listing.clone(),
                _ => {
                    let p = plugin.clone();
                    let listing = async move {
                        let all = p.describe(&Tags::new(), false).await.ok()?;
                        let mut by_group = ByGroup::new();
                        for d in all {
                            if let Some(g) = d.tags.get(tags::GROUP) {
                                by_group.entry(g.clone()).or_default().push(d);
                            }
                        }
                        Some(Arc::new(by_group))
                    }
                    .boxed()
                    .shared();
                    slots.insert(
                        plugin.name().to_string(),
                        Slot {
                            plugin: plugin.clone(),
                            started: Instant::now(),
                            listing: listing.clone(),
                        },
                    );
                    listing
                }
            }
        };
        let by_group = listing.await?;
        Some(by_group.get(group).cloned().unwrap_or_default())
    }
}
