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
        scale_down: ScaleDownPolicy::HighestIndex,
        replace_protected: false,
        settle_checks: 0,
        settle_ms: 0,
        unhealthy_threshold: 1,
        unhealthy_for_ms: 0,
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
        ..Default::default()
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
    let reasons: std::collections::BTreeSet<String> = p
        .steps
        .iter()
        .map(|s| match s {
            Step::Provision { reason, .. } => reason.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        reasons.len(),
        3,
        "each step has its own reason: {reasons:?}"
    );
    assert!(
        reasons.contains("0 of 3 instances exist; adding 3 of 3"),
        "{reasons:?}"
    );
}

#[test]
fn new_instances_fill_the_holes_in_the_indexes_first() {
    let ms: Vec<Member> = [0u32, 2, 5]
        .iter()
        .map(|i| Member {
            index: Some(*i),
            ..member(&format!("i{i}"), SHA, Health::Healthy, OLD_AGE)
        })
        .collect();
    let p = plan(&desired(Allocation::Size(7)), &ms, NOW);
    let idx: Vec<u32> = p
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Provision { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(idx, vec![1, 3, 4, 6]);
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

fn indexed(id: &str, index: u32, age_ms: u64) -> Member {
    Member {
        index: Some(index),
        ..member(id, SHA, Health::Healthy, age_ms)
    }
}

fn provisions(p: &Plan) -> usize {
    p.steps
        .iter()
        .filter(|s| matches!(s, Step::Provision { .. } | Step::Replace { .. }))
        .count()
}

#[test]
fn each_scale_down_policy_picks_its_instances_after_the_unavailable_ones() {
    // Index order and age order differ on purpose.
    let ms = vec![
        indexed("i0", 0, OLD_AGE / 2),
        indexed("i1", 1, OLD_AGE),
        indexed("i2", 2, OLD_AGE / 8),
        indexed("i3", 3, OLD_AGE / 4),
        Member {
            health: Health::Unknown,
            ..indexed("i4", 4, OLD_AGE)
        },
    ];
    for (policy, expected) in [
        (ScaleDownPolicy::HighestIndex, ["i4", "i3"]),
        (ScaleDownPolicy::Oldest, ["i4", "i1"]),
        (ScaleDownPolicy::Newest, ["i4", "i2"]),
    ] {
        let d = Desired {
            scale_down: policy,
            ..desired(Allocation::Size(3))
        };
        let p = plan(&d, &ms, NOW);
        assert_eq!(destroyed(&p), expected, "{policy:?}");
        assert_eq!(provisions(&p), 0);
    }
}

#[test]
fn a_protected_instance_is_never_chosen_for_scale_in() {
    let mut ms: Vec<Member> = (0..3)
        .map(|i| indexed(&format!("i{i}"), i, OLD_AGE))
        .collect();
    ms[2].protected = true;
    let p = plan(&desired(Allocation::Size(1)), &ms, NOW);
    assert_eq!(destroyed(&p), vec!["i1", "i0"]);
    assert_ne!(p.phase, Phase::Paused);
    // To 0, the protected one stays and the group says why.
    let p = plan(&desired(Allocation::Size(0)), &ms, NOW);
    assert_eq!(destroyed(&p), vec!["i1", "i0"]);
    assert_eq!(p.phase, Phase::Paused);
    assert!(
        p.messages[0].contains("scale-in held back") && p.messages[0].contains("i2"),
        "{:?}",
        p.messages
    );
}

#[test]
fn a_rolling_update_holds_back_a_protected_instance_and_keeps_its_slot() {
    let mut world: Vec<Member> = (0..3)
        .map(|i| Member {
            config_sha: "old".into(),
            ..indexed(&format!("o{i}"), i, OLD_AGE)
        })
        .collect();
    world[1].protected = true;
    let d = desired(Allocation::Size(3));
    let mut now = NOW;
    let mut last = None;
    for round in 0..20 {
        let p = plan(&d, &world, now);
        world.retain(|m| !destroyed(&p).contains(&m.id));
        for (k, s) in p.steps.iter().enumerate() {
            if let Step::Provision { index, .. } | Step::Replace { index, .. } = s {
                world.push(Member {
                    index: Some(*index),
                    ..member(&format!("n{round}-{k}"), SHA, Health::Healthy, 0)
                });
            }
        }
        assert!(world.len() <= 4, "never past size + surge: {world:?}");
        now += 10_000;
        last = Some(p);
    }
    let p = last.unwrap();
    assert_eq!(world.len(), 3, "{world:?}");
    assert!(world.iter().any(|m| m.id == "o1" && m.config_sha == "old"));
    assert_eq!(world.iter().filter(|m| m.config_sha == SHA).count(), 2);
    assert_eq!(p.phase, Phase::Paused);
    assert!(
        p.messages
            .iter()
            .any(|m| m.contains("rolling update held back") && m.contains("o1")),
        "{:?}",
        p.messages
    );
    // Unprotected, it is replaced (a successor first: MaxSurge 1, MaxUnavailable 0).
    world.iter_mut().for_each(|m| m.protected = false);
    let p = plan(&d, &world, now);
    assert!(
        matches!(&p.steps[..], [Step::Provision { .. }]),
        "{:?}",
        p.steps
    );
    world.push(member("n-last", SHA, Health::Healthy, 0));
    let p = plan(&d, &world, now);
    assert_eq!(destroyed(&p), vec!["o1"]);
}

#[test]
fn an_unhealthy_protected_instance_is_reported_unless_the_spec_says_replace() {
    let mut ms: Vec<Member> = (0..3)
        .map(|i| indexed(&format!("i{i}"), i, OLD_AGE))
        .collect();
    ms[0].health = Health::Unhealthy;
    ms[0].protected = true;
    let p = plan(&desired(Allocation::Size(3)), &ms, NOW);
    assert!(p.steps.is_empty(), "{:?}", p.steps);
    assert_eq!(p.phase, Phase::Paused);
    assert!(p.messages[0].contains("unhealthy but protected") && p.messages[0].contains("i0"));
    let d = Desired {
        replace_protected: true,
        ..desired(Allocation::Size(3))
    };
    let p = plan(&d, &ms, NOW);
    assert!(matches!(&p.steps[0], Step::Replace { id, index: 0, .. } if id == "i0"));
}

#[test]
fn requested_removals_go_first_and_are_replaced_unless_they_shrink_the_group() {
    let mut ms: Vec<Member> = (0..3)
        .map(|i| indexed(&format!("i{i}"), i, OLD_AGE))
        .collect();
    // Protection does not stand in the way of an explicit request.
    ms[0].protected = true;
    ms[0].removal = Some(Removal::Replace);
    let p = plan(&desired(Allocation::Size(3)), &ms, NOW);
    assert_eq!(destroyed(&p), vec!["i0"]);
    assert!(
        matches!(&p.steps[0], Step::Drain { id, reason } if id == "i0" && reason.contains("destroy-instances"))
    );
    assert_eq!(provisions(&p), 1, "{:?}", p.steps);
    // Decrement: no successor, before the smaller revision lands and after.
    ms[0].removal = Some(Removal::Decrement);
    for size in [3, 2] {
        let p = plan(&desired(Allocation::Size(size)), &ms, NOW);
        assert_eq!(destroyed(&p), vec!["i0"], "size {size}");
        assert_eq!(provisions(&p), 0, "size {size}: {:?}", p.steps);
    }
}

#[test]
fn a_pet_removed_on_request_keeps_its_logical_id_or_gives_it_up() {
    let ids: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let mut ms: Vec<Member> = ids
        .iter()
        .map(|l| pet(&format!("x{l}"), l, SHA, Health::Healthy, OLD_AGE))
        .collect();
    ms[1].removal = Some(Removal::Replace);
    let p = plan(&desired(Allocation::LogicalIds(ids.clone())), &ms, NOW);
    assert!(
        matches!(&p.steps[..], [Step::Replace { id, logical_id: Some(l), index: 1, .. }] if id == "xb" && l == "b"),
        "{:?}",
        p.steps
    );
    ms[1].removal = Some(Removal::Decrement);
    let p = plan(&desired(Allocation::LogicalIds(ids.clone())), &ms, NOW);
    assert_eq!(destroyed(&p), vec!["xb"]);
    assert_eq!(provisions(&p), 0, "{:?}", p.steps);
}

#[test]
fn a_protected_pet_stays_when_its_logical_id_goes() {
    let mut ms = vec![
        pet("xa", "a", SHA, Health::Healthy, OLD_AGE),
        pet("xb", "b", SHA, Health::Healthy, OLD_AGE),
    ];
    ms[1].protected = true;
    let p = plan(&desired(Allocation::LogicalIds(vec!["a".into()])), &ms, NOW);
    assert!(p.steps.is_empty(), "{:?}", p.steps);
    assert_eq!(p.phase, Phase::Paused);
    assert!(p.messages[0].contains("xb"), "{:?}", p.messages);
}

#[test]
fn updating_count_and_duration_hold_the_next_replacement_until_the_new_one_proved_itself() {
    let mut ms: Vec<Member> = (0..2)
        .map(|i| Member {
            config_sha: "old".into(),
            ..indexed(&format!("o{i}"), i, OLD_AGE)
        })
        .collect();
    ms.push(Member {
        healthy_checks: 2,
        healthy_since_ms: NOW - 20_000,
        ..indexed("n0", 2, 30_000)
    });
    // Surge 1 is used by n0; the next old one goes once n0 counts as available.
    let counted = |d: &Desired| destroyed(&plan(d, &ms, NOW));
    let base = desired(Allocation::Size(2));
    assert_eq!(counted(&base), vec!["o0"], "no gate: healthy is enough");
    let by_count = |n| Desired {
        settle_checks: n,
        ..base.clone()
    };
    assert_eq!(counted(&by_count(2)), vec!["o0"]);
    let p = plan(&by_count(3), &ms, NOW);
    assert!(destroyed(&p).is_empty(), "{:?}", p.steps);
    assert!(
        p.messages[0].contains("for 3 checks in a row (Updating.Count)"),
        "{:?}",
        p.messages
    );
    let by_time = |ms| Desired {
        settle_ms: ms,
        ..base.clone()
    };
    assert_eq!(counted(&by_time(20_000)), vec!["o0"]);
    assert!(counted(&by_time(60_000)).is_empty());
}

#[test]
fn one_flapping_check_costs_nothing_under_an_unhealthy_threshold() {
    let mut ms: Vec<Member> = (0..3)
        .map(|i| indexed(&format!("i{i}"), i, OLD_AGE))
        .collect();
    ms[0].health = Health::Unhealthy;
    ms[0].unhealthy_checks = 1;
    ms[0].unhealthy_since_ms = NOW - 1_000;
    let d = Desired {
        unhealthy_threshold: 3,
        ..desired(Allocation::Size(3))
    };
    let p = plan(&d, &ms, NOW);
    assert!(p.steps.is_empty(), "{:?}", p.steps);
    ms[0].unhealthy_checks = 3;
    let p = plan(&d, &ms, NOW);
    match &p.steps[..] {
        [Step::Replace { id, reason, .. }] => {
            assert_eq!(id, "i0");
            assert_eq!(
                reason,
                "found unhealthy in 3 checks in a row (UnhealthyThreshold 3), past its grace \
                 period of 60s"
            );
        }
        other => panic!("{other:?}"),
    }
    // A duration too: unhealthy for 1 s is not yet 30 s.
    let d = Desired {
        unhealthy_for_ms: 30_000,
        ..d
    };
    assert!(plan(&d, &ms, NOW).steps.is_empty());
    ms[0].unhealthy_since_ms = NOW - 31_000;
    assert_eq!(destroyed(&plan(&d, &ms, NOW)), vec!["i0"]);
    // The default is the first check, and says so.
    ms[0].unhealthy_checks = 1;
    let p = plan(&desired(Allocation::Size(3)), &ms, NOW);
    assert!(
        matches!(&p.steps[0], Step::Replace { reason, .. }
            if reason == "found unhealthy in 1 check in a row, past its grace period of 60s"),
        "{:?}",
        p.steps
    );
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
    // Neither the old instances (the update is paused) nor the broken new one (replacing it
    // would loop on a broken configuration) are touched, and nothing more is provisioned.
    assert!(destroyed(&p).is_empty(), "{:?}", p.steps);
    assert_eq!(p.counts(), (0, 0, 0), "{:?}", p.steps);
    assert_eq!(p.phase, Phase::Paused);
    assert!(
        p.messages.iter().any(|m| m.contains("update paused")),
        "{:?}",
        p.messages
    );
}

#[test]
fn issue_19_an_update_without_wait_for_healthy_pauses_on_a_broken_new_instance() {
    let mut d = desired(Allocation::Size(2));
    d.wait_for_healthy = false;
    d.grace_period_ms = 0;
    let ms = vec![
        member("o1", "old", Health::Healthy, OLD_AGE),
        member("n1", SHA, Health::Healthy, OLD_AGE),
        member("n2", SHA, Health::Unhealthy, 400_000),
    ];
    let p = plan(&d, &ms, NOW);
    assert_eq!(p.phase, Phase::Paused, "{:?}", p.messages);
    assert!(
        p.messages.iter().any(|m| m.contains("update paused")),
        "{:?}",
        p.messages
    );
    assert!(destroyed(&p).is_empty(), "{:?}", p.steps);
}

#[test]
fn an_update_never_takes_away_old_instances_the_flavor_could_not_judge() {
    // A round of health checks that timed out (unknown) must not read as "already down".
    let d = desired(Allocation::Size(3)); // surge 1, unavailable 0
    let ms: Vec<Member> = (0..3)
        .map(|i| member(&format!("o{i}"), "old", Health::Unknown, OLD_AGE))
        .collect();
    let p = plan(&d, &ms, NOW);
    assert!(destroyed(&p).is_empty(), "{:?}", p.steps);
    assert_eq!(p.counts(), (1, 0, 0), "only the surge: {:?}", p.steps);
    // Judged unhealthy, they go first.
    let sick: Vec<Member> = (0..3)
        .map(|i| member(&format!("o{i}"), "old", Health::Unhealthy, OLD_AGE))
        .collect();
    assert_eq!(destroyed(&plan(&d, &sick, NOW)).len(), 3);
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

/// Configurations a member may carry: the current one and two older ones.
const SHAS: [&str; 3] = [SHA, "old", "older"];

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
            0usize..3,
            arb_health(),
            0u64..600_000,
            0usize..6,
            prop::bool::weighted(0.1),
            // Indexes as a restarted controller finds them: missing, with gaps, duplicated.
            prop::option::weighted(0.8, 0u32..8),
            // Protected by an operator, or marked for removal by one.
            (
                prop::bool::weighted(0.1),
                prop::option::weighted(
                    0.08,
                    prop_oneof![Just(Removal::Replace), Just(Removal::Decrement)],
                ),
            ),
        ),
        0..12,
    )
    .prop_map(move |raw| {
        raw.into_iter()
            .enumerate()
            .map(
                |(i, (sha, health, age, lid, foreign, index, (protected, removal)))| Member {
                    id: format!("m{i}"),
                    group: if foreign { "other".into() } else { "g".into() },
                    logical_id: pets.then(|| format!("p{lid}")),
                    config_sha: SHAS[sha].into(),
                    created_ms: NOW - age,
                    index,
                    health,
                    protected,
                    removal,
                    ..Default::default()
                },
            )
            .collect()
    })
}

fn arb_desired(pets: bool) -> impl Strategy<Value = Desired> {
    (
        (0u32..8, 0u32..3, 0u32..3, any::<bool>(), 0u32..4),
        // Timings: grace from none to two minutes; batch timeouts longer than the two
        // simulated rounds a new instance needs to report healthy.
        (0u64..120_000, 20_000u64..600_000),
        (0usize..3, any::<bool>()),
    )
        .prop_map(
            move |((n, surge, unavail, wait, max_unhealthy), (grace, batch), (policy, rp))| {
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
                    grace_period_ms: grace,
                    batch_timeout_ms: batch,
                    scale_down: [
                        ScaleDownPolicy::HighestIndex,
                        ScaleDownPolicy::Oldest,
                        ScaleDownPolicy::Newest,
                    ][policy],
                    replace_protected: rp,
                    ..desired(allocation)
                }
            },
        )
}

fn arb_case() -> impl Strategy<Value = (Desired, Vec<Member>)> {
    any::<bool>().prop_flat_map(|p| (arb_desired(p), arb_members(p)))
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
            ..Default::default()
        });
    }
    out
}

/// Availability as the documentation defines it, written independently of the planner's own
/// view: a healthy member; or, when an update does not wait for health, a member on the
/// current configuration that has not been judged unhealthy past its grace period.
fn oracle_available(d: &Desired, m: &Member, now: u64) -> bool {
    if m.health == Health::Healthy {
        return true;
    }
    if d.wait_for_healthy || m.config_sha != d.config_sha {
        return false;
    }
    let past_grace = now.saturating_sub(m.created_ms) >= d.grace_period_ms;
    !(m.health == Health::Unhealthy && past_grace)
}

/// Available members the allocation wants: for pets, logical ids of the allocation with an
/// available member; for cattle, available members up to the size.
/// Members whose removal an operator asked for do not count: taking them away is the point.
fn available(d: &Desired, ms: &[Member], now: u64) -> usize {
    let avail = ms
        .iter()
        .filter(|m| m.group == d.group && m.removal.is_none())
        .filter(|m| oracle_available(d, m, now));
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

fn mine(d: &Desired, ms: &[Member]) -> usize {
    ms.iter().filter(|m| m.group == d.group).count()
}

/// The safety rules that must hold for any one plan; `Err` says which broke.
fn check_safety(d: &Desired, ms: &[Member], p: &Plan, now: u64) -> Result<(), String> {
    let after = apply(p, ms, now);
    // Availability: never fewer than `size - MaxUnavailable` (pets: at least one may go).
    let before = available(d, ms, now);
    let allowed = if is_pets(d) {
        d.max_unavailable.max(1)
    } else {
        d.max_unavailable
    } as usize;
    let floor = before.min(d.size().saturating_sub(allowed));
    if available(d, &after, now) < floor {
        return Err(format!(
            "available {before} -> {}, floor {floor}",
            available(d, &after, now)
        ));
    }
    // Size: cattle never past size + surge, pets never past their logical ids.
    // Protected members stay even where the allocation has no room for them.
    let protected = ms
        .iter()
        .filter(|m| m.group == d.group && m.protected)
        .count();
    let limit = if is_pets(d) {
        d.size() + protected
    } else {
        (d.size() + d.max_surge as usize).max(mine(d, ms))
    };
    if mine(d, &after) > limit {
        return Err(format!("{} -> {} > {limit}", mine(d, ms), mine(d, &after)));
    }
    // Pets: each logical id of the allocation at most once (protected pets whose ids left
    // the allocation stay as they are).
    if let Allocation::LogicalIds(ids) = &d.allocation {
        let mut seen = BTreeSet::new();
        for m in after.iter().filter(|m| m.group == d.group) {
            let lid = m.logical_id.clone().unwrap_or_default();
            if m.protected && !ids.contains(&lid) {
                continue;
            }
            if !seen.insert(lid.clone()) {
                return Err(format!("{lid} twice"));
            }
        }
    }
    // Other groups: never touched.
    for s in &p.steps {
        if let Step::Destroy { id, .. } | Step::Replace { id, .. } | Step::Drain { id, .. } = s {
            match ms.iter().find(|m| &m.id == id) {
                Some(m) if m.group == d.group => {}
                other => return Err(format!("step on {id}: {other:?}")),
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_plan_is_safe((d, ms) in arb_case()) {
        let p = plan(&d, &ms, NOW);
        if let Err(broken) = check_safety(&d, &ms, &p, NOW) {
            prop_assert!(false, "{}: steps {:?}", broken, p.steps);
        }
    }

    #[test]
    fn new_indexes_never_collide_with_kept_ones((d, ms) in arb_case()) {
        let p = plan(&d, &ms, NOW);
        let gone: BTreeSet<&str> = p.steps.iter().filter_map(|s| match s {
            Step::Destroy { id, .. } | Step::Replace { id, .. } => Some(id.as_str()),
            _ => None,
        }).collect();
        let taken: BTreeSet<u32> = ms.iter()
            .filter(|m| m.group == d.group && !gone.contains(m.id.as_str()))
            .filter_map(|m| m.index)
            .collect();
        let mut fresh = BTreeSet::new();
        for s in &p.steps {
            match (s, &d.allocation) {
                // A pet's index is its place in the allocation, whatever else exists.
                (Step::Provision { logical_id, index, .. }, Allocation::LogicalIds(ids)) => {
                    let lid = logical_id.as_deref().unwrap_or_default();
                    prop_assert_eq!(Some(*index as usize), ids.iter().position(|l| l == lid));
                }
                (Step::Provision { index, .. }, Allocation::Size(_)) => {
                    prop_assert!(!taken.contains(index), "index {} is kept by another", index);
                    prop_assert!(fresh.insert(*index), "index {} given twice", index);
                }
                // A replacement inherits the index of the member it replaces.
                (Step::Replace { id, index, logical_id, .. }, alloc) => {
                    let old = ms.iter().find(|m| &m.id == id).unwrap();
                    if let Some(i) = old.index {
                        prop_assert_eq!(*index, i);
                    } else if let (Allocation::LogicalIds(ids), Some(l)) = (alloc, logical_id) {
                        // A pet without an index gets its place in the allocation.
                        prop_assert_eq!(Some(*index as usize), ids.iter().position(|x| x == l));
                    } else {
                        prop_assert!(!taken.contains(index) && fresh.insert(*index));
                    }
                }
                _ => {}
            }
        }
    }

    #[test]
    fn rounds_stay_safe_and_end_converged_or_paused_for_a_reason(
        (d, ms) in arb_case(),
        sticky_every in 1usize..5,
    ) {
        // Several rounds of plan, execute, observe. Some of the members that start unhealthy
        // stay unhealthy for ever (a broken machine); every new instance reports healthy one
        // round after it appears, and undecided ones settle to healthy.
        const STEP: u64 = 10_000;
        let sticky: BTreeSet<String> = ms.iter()
            .filter(|m| m.health == Health::Unhealthy)
            .enumerate()
            .filter(|(i, _)| i % sticky_every == 0)
            .map(|(_, m)| m.id.clone())
            .collect();
        let mut world: Vec<Member> = ms.into_iter().map(|mut m| {
            if m.health == Health::Unhealthy && !sticky.contains(&m.id) {
                m.health = Health::Healthy;
            }
            m
        }).collect();
        let mut now = NOW;
        let bound = 4 * (d.size() + 12) + (d.grace_period_ms / STEP) as usize + 4;
        let mut last = None;
        for _ in 0..bound {
            let p = plan(&d, &world, now);
            if let Err(broken) = check_safety(&d, &world, &p, now) {
                prop_assert!(false, "{}: steps {:?}", broken, p.steps);
            }
            let done = p.phase == Phase::Converged;
            world = apply(&p, &world, now);
            for m in world.iter_mut() {
                if m.health == Health::Unknown && m.created_ms < now {
                    m.health = Health::Healthy;
                }
            }
            last = Some(p);
            if done {
                break;
            }
            now += STEP;
        }
        let p = last.unwrap();
        let sick_left = world.iter()
            .filter(|m| m.group == d.group && sticky.contains(&m.id))
            .count();
        match p.phase {
            Phase::Converged => {
                let mine: Vec<&Member> = world.iter().filter(|m| m.group == d.group).collect();
                prop_assert_eq!(mine.len(), d.size());
                prop_assert!(mine.iter().all(|m| m.config_sha == SHA && m.health == Health::Healthy));
            }
            Phase::Paused => {
                // The lasting reasons here: more broken members than MaxUnhealthy, or an update
                // held up by a broken member on the new configuration (which is not replaced:
                // that would loop on a broken configuration).
                let remediation = p.messages.iter().any(|m| m.contains("remediation paused"));
                let update = p.messages.iter().any(|m| m.contains("update paused"));
                let broken_new = world.iter().any(|m| {
                    m.group == d.group && sticky.contains(&m.id) && m.config_sha == SHA
                });
                // Or a protected member that would otherwise go: unhealthy, outdated, or past
                // the allocation.
                let held = p.messages.iter().any(|m| m.contains("protected"));
                let protected_in_the_way = world.iter().any(|m| {
                    m.group == d.group
                        && m.protected
                        && (sticky.contains(&m.id)
                            || m.config_sha != SHA
                            || mine(&d, &world) > d.size()
                            || m.logical_id.as_ref().is_some_and(|l| match &d.allocation {
                                Allocation::LogicalIds(ids) => !ids.contains(l),
                                Allocation::Size(_) => false,
                            }))
                });
                prop_assert!(
                    (remediation && sick_left > d.max_unhealthy as usize)
                        || (update && broken_new)
                        || (held && protected_in_the_way),
                    "{} sick, MaxUnhealthy {}: {:?}", sick_left, d.max_unhealthy, p.messages
                );
            }
            other => prop_assert!(false, "{:?} after {} rounds: {:?}", other, bound, p.messages),
        }
    }
}
