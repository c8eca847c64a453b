//! What the controller expects to see, as Kubernetes' ReplicaSet controller keeps it: an instance
//! it provisioned counts as there until a listing shows it or `ProvisionTimeout` passes, and one
//! it destroyed counts as gone until a listing stops showing it or the timeout passes. Cloud
//! listings lag their create and delete calls; without this, a lagging `describe` would make
//! the planner provision again (past `Size + MaxSurge`) or see a destroyed instance twice.
//!
//! An instance that was listed and is missing from one listing is not lost yet: it counts as
//! there for `LostAfter`, while the group re-lists, because listings page, lag and drop entries
//! for a moment. Without this a flaky listing would cause a replacement, then a surplus, then
//! the destroy of a healthy instance.
//!
//! It also notices a crash loop: instances of the current configuration that were lost within
//! their grace period of being provisioned, or never listed at all. Pure: the clock is an
//! argument, and the state lives in one group task (a restarted controller starts empty, which
//! is safe: it then trusts the listing, as before).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::plan::Member;

/// One instance lost soon after it was provisioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// The instance.
    pub id: String,
    /// What happened, for people.
    pub why: String,
}

/// The expectations of one group.
#[derive(Debug, Default)]
pub struct Expectations {
    /// Provisioned, not yet listed: the member as it will be, and when (Unix ms).
    adds: BTreeMap<String, (Member, u64)>,
    /// Destroyed, still listed: when (Unix ms).
    dels: BTreeMap<String, u64>,
    /// The members the last pass planned with (shared with the group's status, not copied).
    last: Arc<Vec<Member>>,
    /// Members of `last` missing from the listing: since when (Unix ms), and from how many
    /// listings in a row.
    missing: HashMap<String, (u64, u32)>,
}

/// Listings in a row an instance must be missing from (besides `LostAfter`) to be lost; the
/// controller re-lists every `LostAfter / 20` meanwhile.
pub const LOST_AFTER_LISTINGS: u32 = 20;

/// The time windows of [`Expectations::apply`], in ms (from the group's `Health`).
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    /// How long a provisioned instance may stay unlisted (`ProvisionTimeout`).
    pub provision_timeout_ms: u64,
    /// A loss this soon after creation counts towards a crash loop (`GracePeriod`).
    pub grace_ms: u64,
    /// How long a listed instance may be missing before it is lost (`LostAfter`).
    pub lost_after_ms: u64,
}

/// What [`Expectations::apply`] found.
#[derive(Debug, Default)]
pub struct Applied {
    /// Instances lost soon after they were provisioned.
    pub losses: Vec<Loss>,
    /// Instances missing from this listing that still count as there: re-list soon.
    pub unconfirmed: usize,
}

impl Expectations {
    /// The controller provisioned `member` at `now`. A plugin that answers with an id it gave
    /// before does not restart that id's clock.
    pub fn provisioned(&mut self, member: Member, now: u64) {
        self.adds.entry(member.id.clone()).or_insert((member, now));
    }

    /// The controller destroyed `id` at `now`.
    pub fn destroyed(&mut self, id: &str, now: u64) {
        self.adds.remove(id);
        self.missing.remove(id);
        self.dels.insert(id.to_string(), now);
    }

    /// The members a pass planned with (what [`Expectations::apply`] left in its listing):
    /// the next listing is compared with them.
    pub fn remember(&mut self, members: Arc<Vec<Member>>) {
        self.last = members;
    }

    /// Nothing provisioned or destroyed is still awaited and nothing listed before is missing:
    /// the same listing would leave the members as they are.
    pub fn is_settled(&self) -> bool {
        self.adds.is_empty() && self.dels.is_empty() && self.missing.is_empty()
    }

    /// How many provisions are still unlisted.
    pub fn pending(&self) -> usize {
        self.adds.len()
    }

    /// Adjusts a fresh listing by what is expected, and returns the instances lost since the
    /// last one: provisioned and never listed within the provision timeout, or listed and then
    /// gone (not destroyed by us) within the grace period of being created.
    pub fn apply(&mut self, observed: &mut Vec<Member>, now: u64, w: Windows) -> Applied {
        let listed: HashSet<&str> = observed.iter().map(|m| m.id.as_str()).collect();
        let mut out = Applied::default();

        // Planned with last time, missing now, and not by our hand (nor a provision still
        // expected, below): there until `LostAfter`, then lost.
        let mut presumed = Vec::new();
        let mut missing = HashMap::new();
        for m in self.last.iter() {
            let id = m.id.as_str();
            if listed.contains(id) || self.adds.contains_key(id) || self.dels.contains_key(id) {
                continue;
            }
            let (since, misses) = self.missing.get(id).copied().unwrap_or((now, 0));
            let misses = misses + 1;
            // Both the time and the listings: on a starved machine two listings can lie
            // further apart than `LostAfter`, and a listing that drops entries at random would
            // then cost a healthy instance.
            // `LostAfter: 0s` turns the window off.
            let within = now.saturating_sub(since) < w.lost_after_ms
                || (w.lost_after_ms > 0 && misses < LOST_AFTER_LISTINGS);
            if within {
                presumed.push(m.clone());
                missing.insert(m.id.clone(), (since, misses));
                continue;
            }
            let age = now.saturating_sub(m.created_ms);
            if m.created_ms > 0 && age < w.grace_ms {
                out.losses.push(Loss {
                    why: format!(
                        "lost {} after it was provisioned, within its grace period",
                        secs(age)
                    ),
                    id: m.id.clone(),
                });
            }
        }

        // Provisioned: listed now (done), overdue (lost), or still expected (counted as there).
        let mut pending = Vec::new();
        let adds = std::mem::take(&mut self.adds);
        for (id, (member, at)) in adds {
            if listed.contains(id.as_str()) {
                continue;
            }
            if now.saturating_sub(at) > w.provision_timeout_ms {
                out.losses.push(Loss {
                    why: format!(
                        "provisioned {} ago and never listed by the instance plugin",
                        secs(now.saturating_sub(at))
                    ),
                    id,
                });
            } else {
                pending.push(member.clone());
                self.adds.insert(id, (member, at));
            }
        }

        // Destroyed: still listed within the timeout counts as gone.
        self.dels.retain(|id, at| {
            listed.contains(id.as_str()) && now.saturating_sub(*at) <= w.provision_timeout_ms
        });
        out.unconfirmed = presumed.len();
        self.missing = missing;
        observed.extend(presumed);
        observed.extend(pending);
        observed.retain(|m| !self.dels.contains_key(&m.id));
        out
    }
}

fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Health;

    fn member(id: &str, created: u64) -> Member {
        Member {
            id: id.into(),
            group: "g".into(),
            logical_id: None,
            config_sha: "c".into(),
            created_ms: created,
            index: Some(0),
            health: Health::Healthy,
            ..Default::default()
        }
    }

    /// A pass as the controller makes it: apply, then plan with (and remember) the result.
    fn run(e: &mut Expectations, listing: &mut Vec<Member>, now: u64, w: Windows) -> Applied {
        let applied = e.apply(listing, now, w);
        e.remember(Arc::new(listing.clone()));
        applied
    }

    const T: u64 = 10_000;
    const GRACE: u64 = 60_000;
    const W: Windows = Windows {
        provision_timeout_ms: T,
        grace_ms: GRACE,
        lost_after_ms: 0,
    };

    #[test]
    fn a_provisioned_instance_counts_as_there_until_listed_or_overdue() {
        let mut e = Expectations::default();
        e.provisioned(member("a", 1_000), 1_000);
        let mut seen = vec![];
        assert!(run(&mut e, &mut seen, 2_000, W).losses.is_empty());
        assert_eq!(seen.len(), 1, "expected, so counted");
        let mut listed = vec![member("a", 1_000)];
        assert!(run(&mut e, &mut listed, 3_000, W).losses.is_empty());
        assert_eq!(listed.len(), 1, "listed once, not twice");
        assert_eq!(e.pending(), 0);

        e.provisioned(member("b", 4_000), 4_000);
        let mut none = vec![member("a", 1_000)];
        let lost = run(&mut e, &mut none, 4_000 + T + 1, W).losses;
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].id, "b");
        assert!(lost[0].why.contains("never listed"), "{}", lost[0].why);
        assert_eq!(none.len(), 1, "an overdue one no longer counts");
    }

    #[test]
    fn a_destroyed_instance_counts_as_gone_while_still_listed() {
        let mut e = Expectations::default();
        let mut listed = vec![member("a", 0), member("b", 0)];
        run(&mut e, &mut listed, 1_000, W);
        e.destroyed("a", 1_000);
        let mut lagging = vec![member("a", 0), member("b", 0)];
        assert!(run(&mut e, &mut lagging, 2_000, W).losses.is_empty());
        assert_eq!(lagging.len(), 1);
        assert_eq!(lagging[0].id, "b");
        // Our own destroy is not a loss when it finally disappears.
        let mut gone = vec![member("b", 0)];
        assert!(run(&mut e, &mut gone, 3_000, W).losses.is_empty());
    }

    #[test]
    fn an_instance_lost_within_its_grace_period_is_a_loss_an_old_one_is_not() {
        let mut e = Expectations::default();
        let mut listed = vec![member("young", 50_000), member("old", 1)];
        run(&mut e, &mut listed, 60_000, W);
        let mut after = vec![];
        let lost = run(&mut e, &mut after, 70_000, W).losses;
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_eq!(lost[0].id, "young");
        assert!(lost[0].why.contains("20.0s"), "{}", lost[0].why);
    }

    #[test]
    fn a_listed_instance_missing_for_less_than_lost_after_still_counts() {
        let w = Windows {
            lost_after_ms: 200,
            ..W
        };
        let mut e = Expectations::default();
        let mut listed = vec![member("a", 1), member("b", 1)];
        run(&mut e, &mut listed, 1_000, w);
        // Left out of two listings within the window: still there, re-list soon.
        for now in [1_050, 1_150] {
            let mut flaky = vec![member("b", 1)];
            let got = run(&mut e, &mut flaky, now, w);
            assert!(got.losses.is_empty());
            assert_eq!(got.unconfirmed, 1);
            assert_eq!(flaky.len(), 2, "a counts as there at {now}");
        }
        // Listed again: the window starts over at the next miss.
        let mut back = vec![member("a", 1), member("b", 1)];
        assert_eq!(run(&mut e, &mut back, 1_190, w).unconfirmed, 0);
        let mut flaky = vec![member("b", 1)];
        assert_eq!(run(&mut e, &mut flaky, 1_300, w).unconfirmed, 1);
        assert_eq!(
            run(&mut e, &mut vec![member("b", 1)], 1_450, w).unconfirmed,
            1
        );
        // Missing for the whole window, but from too few listings (a starved machine whose
        // listings lie far apart): still there.
        assert_eq!(
            run(&mut e, &mut vec![member("b", 1)], 1_900, w).unconfirmed,
            1
        );
        // Missing for the whole window and from twenty listings: gone.
        for now in 1_901..1_917 {
            assert_eq!(
                run(&mut e, &mut vec![member("b", 1)], now, w).unconfirmed,
                1
            );
        }
        let mut gone = vec![member("b", 1)];
        let got = run(&mut e, &mut gone, 1_917, w);
        assert_eq!((got.unconfirmed, gone.len()), (0, 1));
        // Our own destroy is never presumed present.
        e.destroyed("b", 1_920);
        let mut none = vec![];
        assert_eq!(run(&mut e, &mut none, 1_930, w).unconfirmed, 0);
        assert!(none.is_empty());
    }
}
