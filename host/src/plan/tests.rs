use proptest::prelude::*;

use super::*;

const NOW: u64 = 1_000_000_000;
const SHA: &str = "new";

fn desired(allocation: Allocation) -> Desired {
    Desired {
        group: "g".into(),
        config_sha: SHA.into(),
        allocation,
        max_surge: 1,
        max_unavailable: 0,
        wait_for_healthy: true,
        batch_timeout_ms: 300_000,
        grace_period_ms: 60_000,
        max_unhealthy: 1,
    }
}

fn member(id: &str, sha: &str, health: Health, age_ms: u64) -> Member {
    Member {
        id: id.into(),
        group: "g".into(),
        logical_id: None,
        config_sha: sha.into(),
        created_ms: NOW - age_ms,
        index: None,
        health,
    }
}

fn pet(id: &str, lid: &str, sha: &str, health: Health, age_ms: u64) -> Member {
    Member {
        logical_id: Some(lid.into()),
        ..member(id, sha, health, age_ms)
    }
}

const OLD_AGE: u64 = 3_600_000;

fn destroyed(p: &Plan) -> Vec<String> {
    p.steps
        .iter()
        .filter_map(|s| match s {
            Step::Destroy { id, .. } | Step::Replace { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_empty_group_is_provisioned_with_distinct_indexes() {
    let p = plan(&desired(Allocation::Size(3)), &[], NOW);
    let idx: Vec<u32> = p
        .steps
        .iter()
        .map(|s| match s {
            Step::Provision { index, .. } => *index,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(idx, vec![0, 1, 2]);
    assert_eq!(p.phase, Phase::Converging);
}

#[test]
fn a_healthy_group_is_converged_and_left_alone() {
    let ms: Vec<Member> = (0..3)
        .map(|i| member(&format!("i{i}"), SHA, Health::Healthy, OLD_AGE))
        .collect();
    let p = plan(&desired(Allocation::Size(3)), &ms, NOW);
    assert!(p.steps.is_empty(), "{:?}", p.steps);
    assert_eq!(p.phase, Phase::Converged);
}

#[test]
fn scaling_down_removes_unhealthy_first_then_the_newest() {
    let ms = vec![
        member("old", SHA, Health::Healthy, OLD_AGE),
        member("mid", SHA, Health::Healthy, OLD_AGE / 2),
        member("new", SHA, Health::Healthy, OLD_AGE / 4),
        member("sick", SHA, Health::Unknown, OLD_AGE),
    ];
    let p = plan(&desired(Allocation::Size(2)), &ms, NOW);
    assert_eq!(destroyed(&p), vec!["sick", "new"]);
    // Drain comes before destroy.
    assert!(matches!(&p.steps[0], Step::Drain { id, .. } if id == "sick"));
}

#[test]
fn a_lost_pet_comes_back_with_its_logical_id_and_index() {
    let ms = vec![
        pet("a", "zk1", SHA, Health::Healthy, OLD_AGE),
        pet("c", "zk3", SHA, Health::Healthy, OLD_AGE),
    ];
    let ids = vec!["zk1".to_string(), "zk2".to_string(), "zk3".to_string()];
    let p = plan(&desired(Allocation::LogicalIds(ids)), &ms, NOW);
    assert_eq!(
        p.steps,
        vec![Step::Provision {
            logical_id: Some("zk2".into()),
            index: 1,
            reason: "pet zk2 is missing".into()
        }]
    );
}

#[test]
fn duplicate_pets_are_reduced_to_the_best_one() {
    let ms = vec![
        pet("a", "zk1", SHA, Health::Healthy, OLD_AGE),
        pet("b", "zk1", SHA, Health::Unknown, 10),
        pet("x", "zk9", SHA, Health::Healthy, OLD_AGE),
    ];
    let p = plan(
        &desired(Allocation::LogicalIds(vec!["zk1".into()])),
        &ms,
        NOW,
    );
    let mut gone = destroyed(&p);
    gone.sort();
    assert_eq!(gone, vec!["b", "x"]);
}

#[test]
fn unhealthy_instances_are_replaced_only_after_the_grace_period() {
    let d = desired(Allocation::Size(2));
    let fresh = vec![
        member("a", SHA, Health::Healthy, OLD_AGE),
        member("b", SHA, Health::Unhealthy, 1_000),
    ];
    let p = plan(&d, &fresh, NOW);
    assert!(!p.has_work(), "{:?}", p.steps);
    let late = vec![
        member("a", SHA, Health::Healthy, OLD_AGE),
        member("b", SHA, Health::Unhealthy, OLD_AGE),
    ];
    let p = plan(&d, &late, NOW);
    assert!(
        matches!(&p.steps[..], [Step::Replace { id, context: DestroyContext::Terminate, .. }] if id == "b"),
        "{:?}",
        p.steps
    );
}

#[test]
fn too_many_unhealthy_pauses_remediation() {
    let ms: Vec<Member> = (0..4)
        .map(|i| {
            let h = if i == 0 {
                Health::Healthy
            } else {
                Health::Unhealthy
            };
            member(&format!("i{i}"), SHA, h, OLD_AGE)
        })
        .collect();
    let p = plan(&desired(Allocation::Size(4)), &ms, NOW);
    assert!(destroyed(&p).is_empty(), "{:?}", p.steps);
    assert_eq!(p.phase, Phase::Paused);
    assert!(
        p.messages[0].contains("remediation paused"),
        "{:?}",
        p.messages
    );
}

#[test]
fn rolling_update_without_surge_takes_one_down_and_brings_one_up() {
    let mut d = desired(Allocation::Size(4));
    d.max_surge = 0;
    d.max_unavailable = 1;
    let ms: Vec<Member> = (0..4)
        .map(|i| member(&format!("i{i}"), "old", Health::Healthy, OLD_AGE - i))
        .collect();
    let p = plan(&d, &ms, NOW);
    assert_eq!(p.counts(), (1, 1, 0), "{:?}", p.steps);
    assert_eq!(p.phase, Phase::Updating);
    // The oldest goes first, as a rolling-update destroy.
    assert!(p.steps.iter().any(|s| matches!(s,
        Step::Destroy { id, context: DestroyContext::RollingUpdate, .. } if id == "i0")));
}

#[test]
fn rolling_update_with_surge_adds_first_and_waits_for_health() {
    let d = desired(Allocation::Size(2)); // surge 1, unavailable 0
    let ms = vec![
        member("o1", "old", Health::Healthy, OLD_AGE),
        member("o2", "old", Health::Healthy, OLD_AGE),
    ];
    let p = plan(&d, &ms, NOW);
    assert_eq!(p.counts(), (1, 0, 0));

    let with_new = [ms.clone(), vec![member("n1", SHA, Health::Unknown, 1_000)]].concat();
    let p = plan(&d, &with_new, NOW);
    assert!(!p.has_work(), "waits for the new one: {:?}", p.steps);
    assert!(matches!(&p.steps[..], [Step::Wait { .. }]));

    let healthy_new = [ms, vec![member("n1", SHA, Health::Healthy, 1_000)]].concat();
    let p = plan(&d, &healthy_new, NOW);
    assert_eq!(destroyed(&p), vec!["o1"]);
    assert_eq!(p.counts().0, 1, "and the next new one in the freed room");
}

#[test]
fn an_update_whose_new_instances_never_get_healthy_pauses() {
    let d = desired(Allocation::Size(2));
    let ms = vec![
        member("o1", "old", Health::Healthy, OLD_AGE),
        member("o2", "old", Health::Healthy, OLD_AGE),
        member("n1", SHA, Health::Unhealthy, 400_000),
    ];
    let p = plan(&d, &ms, NOW);
    assert_eq!(p.phase, Phase::Paused);
    assert!(
        p.messages.iter().any(|m| m.contains("update paused")),
        "{:?}",
        p.messages
    );
    assert!(
        destroyed(&p).iter().all(|id| id == "n1"),
        "only remediation: {:?}",
        p.steps
    );
}

#[test]
fn pets_roll_one_at_a_time() {
    let d = desired(Allocation::LogicalIds(vec![
        "a".into(),
        "b".into(),
        "c".into(),
    ]));
    let ms = vec![
        pet("1", "a", "old", Health::Healthy, OLD_AGE),
        pet("2", "b", "old", Health::Healthy, OLD_AGE),
        pet("3", "c", "old", Health::Healthy, OLD_AGE),
    ];
    let p = plan(&d, &ms, NOW);
    assert_eq!(p.counts(), (0, 0, 1));
    assert!(matches!(&p.steps[0], Step::Replace { logical_id: Some(l), index: 0, .. } if l == "a"));
}

#[test]
fn instances_of_other_groups_are_never_touched() {
    let mut stranger = member("s", "x", Health::Unhealthy, OLD_AGE);
    stranger.group = "other".into();
    let p = plan(&desired(Allocation::Size(0)), &[stranger], NOW);
    assert!(p.steps.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Properties

fn arb_health() -> impl Strategy<Value = Health> {
    prop_oneof![
        4 => Just(Health::Healthy),
        1 => Just(Health::Unhealthy),
        1 => Just(Health::Unknown),
    ]
}

fn arb_members(pets: bool) -> impl Strategy<Value = Vec<Member>> {
    prop::collection::vec(
        (
            prop::bool::weighted(0.5),
            arb_health(),
            0u64..600_000,
            0usize..6,
            prop::bool::weighted(0.1),
        ),
        0..12,
    )
    .prop_map(move |raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (current, health, age, lid, foreign))| Member {
                id: format!("m{i}"),
                group: if foreign { "other".into() } else { "g".into() },
                logical_id: pets.then(|| format!("p{lid}")),
                config_sha: if current { SHA.into() } else { "old".into() },
                created_ms: NOW - age,
                index: None,
                health,
            })
            .collect()
    })
}

fn arb_desired(pets: bool) -> impl Strategy<Value = Desired> {
    (0u32..8, 0u32..3, 0u32..3, any::<bool>(), 0u32..4).prop_map(
        move |(n, surge, unavail, wait, max_unhealthy)| {
            let (surge, unavail) = if surge == 0 && unavail == 0 {
                (1, 0)
            } else {
                (surge, unavail)
            };
            let allocation = if pets {
                Allocation::LogicalIds((0..n.min(5)).map(|i| format!("p{i}")).collect())
            } else {
                Allocation::Size(n)
            };
            Desired {
                max_surge: surge,
                max_unavailable: unavail,
                wait_for_healthy: wait,
                max_unhealthy,
                grace_period_ms: 120_000,
                batch_timeout_ms: 300_000,
                ..desired(allocation)
            }
        },
    )
}

/// The world after a plan: destroyed members gone, new ones present (not yet healthy).
fn apply(p: &Plan, members: &[Member], now: u64) -> Vec<Member> {
    let removed: BTreeSet<&str> = p
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Destroy { id, .. } | Step::Replace { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let mut out: Vec<Member> = members
        .iter()
        .filter(|m| !removed.contains(m.id.as_str()))
        .cloned()
        .collect();
    for (i, s) in p.steps.iter().enumerate() {
        let (logical_id, index) = match s {
            Step::Provision {
                logical_id, index, ..
            }
            | Step::Replace {
                logical_id, index, ..
            } => (logical_id.clone(), *index),
            _ => continue,
        };
        out.push(Member {
            id: format!("new-{now}-{i}"),
            group: "g".into(),
            logical_id,
            config_sha: SHA.into(),
            created_ms: now,
            index: Some(index),
            health: Health::Unknown,
        });
    }
    out
}

/// Available members the allocation wants: for pets, logical ids of the allocation with an
/// available member; for cattle, available members up to the size.
fn available(d: &Desired, ms: &[Member], now: u64) -> usize {
    let avail = ms
        .iter()
        .filter(|m| m.group == d.group)
        .filter(|m| view(m, d, now).available(d));
    match &d.allocation {
        Allocation::Size(n) => avail.count().min(*n as usize),
        Allocation::LogicalIds(ids) => avail
            .filter_map(|m| m.logical_id.as_deref())
            .filter(|l| ids.iter().any(|i| i == l))
            .collect::<BTreeSet<_>>()
            .len(),
    }
}

fn is_pets(d: &Desired) -> bool {
    matches!(d.allocation, Allocation::LogicalIds(_))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_takes_away_more_healthy_than_max_unavailable(
        pets in any::<bool>(),
        (d, ms) in any::<bool>().prop_flat_map(|p| (arb_desired(p), arb_members(p))),
    ) {
        let _ = pets;
        let p = plan(&d, &ms, NOW);
        let before = available(&d, &ms, NOW);
        // Count only members still wanted (not duplicates, not foreign logical ids, not
        // beyond the allocation): those are the healthy instances an update must preserve.
        let after = apply(&p, &ms, NOW);
        let n = d.size();
        let allowed = if is_pets(&d) { d.max_unavailable.max(1) } else { d.max_unavailable } as usize;
        let floor = before.min(n.saturating_sub(allowed));
        prop_assert!(
            available(&d, &after, NOW) >= floor,
            "available {} -> {}, floor {}, steps {:?}", before, available(&d, &after, NOW), floor, p.steps
        );
    }

    #[test]
    fn never_grows_past_size_plus_surge(d in arb_desired(false), ms in arb_members(false)) {
        let p = plan(&d, &ms, NOW);
        let mine = |xs: &[Member]| xs.iter().filter(|m| m.group == d.group).count();
        let after = apply(&p, &ms, NOW);
        let limit = (d.size() + d.max_surge as usize).max(mine(&ms));
        prop_assert!(mine(&after) <= limit, "{} -> {} > {}", mine(&ms), mine(&after), limit);
    }

    #[test]
    fn pets_keep_each_logical_id_at_most_once(d in arb_desired(true), ms in arb_members(true)) {
        let p = plan(&d, &ms, NOW);
        let after = apply(&p, &ms, NOW);
        let mut seen = BTreeSet::new();
        for m in after.iter().filter(|m| m.group == d.group) {
            let lid = m.logical_id.clone().unwrap();
            prop_assert!(seen.insert(lid.clone()), "{} twice after {:?}", lid, p.steps);
        }
    }

    #[test]
    fn never_touches_other_groups(
        (d, ms) in any::<bool>().prop_flat_map(|p| (arb_desired(p), arb_members(p))),
    ) {
        let p = plan(&d, &ms, NOW);
        for s in &p.steps {
            if let Step::Destroy { id, .. } | Step::Replace { id, .. } | Step::Drain { id, .. } = s {
                let m = ms.iter().find(|m| &m.id == id).unwrap();
                prop_assert_eq!(&m.group, &d.group);
            }
        }
    }

    #[test]
    fn converges_in_a_bounded_number_of_rounds(
        (d, ms) in any::<bool>().prop_flat_map(|p| (arb_desired(p), arb_members(p))),
    ) {
        // A world where new instances become healthy one round after they appear and nothing
        // breaks: every group must reach `converged` within a bound linear in its size.
        let mut world: Vec<Member> = ms
            .into_iter()
            .map(|mut m| { if m.health == Health::Unhealthy { m.health = Health::Healthy } m })
            .collect();
        let mut now = NOW;
        let bound = 4 * (d.size() + 12) + 4;
        let mut rounds = 0;
        loop {
            let p = plan(&d, &world, now);
            if p.phase == Phase::Converged {
                break;
            }
            prop_assert!(rounds < bound, "not converged after {} rounds: {:?} {:?}", rounds, p.phase, p.messages);
            world = apply(&p, &world, now);
            for m in world.iter_mut() {
                if m.health == Health::Unknown && m.created_ms < now {
                    m.health = Health::Healthy;
                }
            }
            now += 1_000;
            rounds += 1;
        }
        let mine: Vec<&Member> = world.iter().filter(|m| m.group == d.group).collect();
        prop_assert_eq!(mine.len(), d.size());
        prop_assert!(mine.iter().all(|m| m.config_sha == SHA));
    }
}
