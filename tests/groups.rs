//! Groups (issue 4): the real binary reconciling real `instance-file` instances with the
//! real `flavor-vanilla` flavor.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use crate::support::Env;
use crate::support::group::{GroupRun, instances, tag, write_spec};

const LONG: Duration = Duration::from_secs(60);

fn ids(env: &Env) -> BTreeSet<String> {
    instances(env)
        .iter()
        .map(|i| i["ID"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_group_converges_and_heals_a_deleted_instance() {
    let env = Env::new();
    let spec = env.data_dir().join("workers.json");
    write_spec(&spec, "workers", json!({"Size": 3}), json!({}));
    let mut run = GroupRun::start(&env, &spec);
    run.wait_for("3 instances", LONG, || instances(&env).len() == 3);
    // Converged: the controller has listed them (until then it still expects them, and a
    // file deleted before its first listing counts as there until ProvisionTimeout).
    run.wait_for_output(&["converged"], LONG);

    let all = instances(&env);
    for i in &all {
        assert_eq!(tag(i, "infrakit.group"), "workers");
        assert!(!tag(i, "infrakit.config_sha").is_empty());
        assert_eq!(i["Init"], "echo workers", "the flavor prepared it");
    }
    let victim = all[1]["ID"].as_str().unwrap().to_string();
    let before = ids(&env);
    std::fs::remove_file(env.scratch("instance-file").join(format!("{victim}.json"))).unwrap();
    run.wait_for("a replacement", LONG, || {
        let now = ids(&env);
        now.len() == 3 && !now.contains(&victim)
    });
    let after = ids(&env);
    assert_eq!(
        before.intersection(&after).count(),
        2,
        "only the lost one was replaced"
    );
    run.wait_for_output(&["instance-provisioned", "2 of 3 instances exist"], LONG);
}

#[test]
fn editing_the_spec_scales_up_and_down() {
    let env = Env::new();
    let spec = env.data_dir().join("web.json");
    write_spec(&spec, "web", json!({"Size": 3}), json!({}));
    let mut run = GroupRun::start(&env, &spec);
    run.wait_for("3 instances", LONG, || instances(&env).len() == 3);
    let first = ids(&env);

    write_spec(&spec, "web", json!({"Size": 5}), json!({}));
    run.wait_for("5 instances", LONG, || instances(&env).len() == 5);
    assert!(
        first.is_subset(&ids(&env)),
        "scaling up keeps the existing ones"
    );

    write_spec(&spec, "web", json!({"Size": 2}), json!({}));
    run.wait_for("2 instances", LONG, || instances(&env).len() == 2);
    // The newest went first: the two survivors are among the first three.
    assert!(
        ids(&env).is_subset(&first),
        "{:?} vs {:?}",
        ids(&env),
        first
    );
    run.wait_passes("web", 3);
    assert_eq!(instances(&env).len(), 2, "and it stays there");
}

#[test]
fn a_lost_pet_comes_back_with_its_logical_id() {
    let env = Env::new();
    let spec = env.data_dir().join("zk.json");
    write_spec(
        &spec,
        "zk",
        json!({"LogicalIDs": ["zk1", "zk2", "zk3"]}),
        json!({}),
    );
    let mut run = GroupRun::start(&env, &spec);
    run.wait_for("3 pets", LONG, || instances(&env).len() == 3);
    run.wait_for_output(&["converged"], LONG);
    let lids = |env: &Env| -> Vec<String> {
        let mut l: Vec<String> = instances(env)
            .iter()
            .map(|i| i["LogicalID"].as_str().unwrap_or("").to_string())
            .collect();
        l.sort();
        l
    };
    assert_eq!(lids(&env), vec!["zk1", "zk2", "zk3"]);

    let zk2 = instances(&env)
        .into_iter()
        .find(|i| i["LogicalID"] == "zk2")
        .unwrap();
    let old_id = zk2["ID"].as_str().unwrap().to_string();
    std::fs::remove_file(env.scratch("instance-file").join(format!("{old_id}.json"))).unwrap();
    run.wait_for("zk2 back", LONG, || {
        instances(&env)
            .iter()
            .any(|i| i["LogicalID"] == "zk2" && i["ID"] != old_id.as_str())
    });
    assert_eq!(lids(&env), vec!["zk1", "zk2", "zk3"]);
    let back = instances(&env)
        .into_iter()
        .find(|i| i["LogicalID"] == "zk2")
        .unwrap();
    assert_eq!(tag(&back, "infrakit.logical_id"), "zk2");
    assert_eq!(tag(&back, "infrakit.index"), "1");
}

#[test]
fn a_rolling_update_keeps_at_least_size_minus_max_unavailable() {
    let env = Env::new();
    let spec = env.data_dir().join("app.json");
    let policy = json!({"Updating": {"MaxSurge": 0, "MaxUnavailable": 1}});
    write_spec(&spec, "app", json!({"Size": 4}), policy.clone());
    let mut run = GroupRun::start(&env, &spec);
    run.wait_for("4 instances", LONG, || instances(&env).len() == 4);
    let v1 = tag(&instances(&env)[0], "infrakit.config_sha");

    let mut v2 = policy.clone();
    v2["Flavor"] = json!({"Plugin": "flavor-vanilla", "Properties": {"Init": ["echo v2"]}});
    write_spec(&spec, "app", json!({"Size": 4}), v2);
    let mut min_seen = usize::MAX;
    let mut max_seen = 0;
    run.wait_for("all on the new configuration", LONG, || {
        let now = instances(&env);
        // vanilla judges every existing instance healthy: present = healthy.
        min_seen = min_seen.min(now.len());
        max_seen = max_seen.max(now.len());
        now.len() == 4 && now.iter().all(|i| tag(i, "infrakit.config_sha") != v1)
    });
    assert!(min_seen >= 3, "dropped to {min_seen} healthy");
    assert!(max_seen <= 4, "surged to {max_seen} with MaxSurge 0");
    assert!(instances(&env).iter().all(|i| i["Init"] == "echo v2"));
    run.wait_for_output(&["rolling update"], LONG);
}

#[test]
fn an_unhealthy_instance_is_kept_through_its_grace_period_then_replaced() {
    let env = Env::new();
    let spec = env.data_dir().join("svc.json");
    let grace_ms = 5_000;
    let health =
        json!({"Health": {"CheckInterval": "100ms", "GracePeriod": "5s", "MaxUnhealthy": 1}});
    write_spec(&spec, "svc", json!({"Size": 3}), health);
    let mut run = GroupRun::start(&env, &spec);
    run.wait_for("3 instances", LONG, || instances(&env).len() == 3);
    let first = instances(&env).remove(0);
    let sick = first["ID"].as_str().unwrap().to_string();
    let created: u64 = tag(&first, "infrakit.created").parse().unwrap();
    env.ok(
        &[
            "instance",
            "label",
            "--plugin",
            "instance-file",
            &sick,
            "--tag",
            "health=bad",
        ],
        None,
    );
    // The controller sees it unhealthy while it is still within its grace period...
    let changed = format!("health-changed {sick}: ");
    run.wait_for_output(&[&changed, "-> unhealthy"], LONG);
    let seen_ms = now_ms();
    assert!(
        seen_ms < created + grace_ms,
        "the verdict came {} ms after provisioning, past the grace period: the test cannot \
         show the instance was kept",
        seen_ms - created
    );
    // ...keeps it for the rest of that period, and replaces it once the period is over.
    let mut gone_ms = 0;
    run.wait_for("the sick one replaced", LONG, || {
        let now = ids(&env);
        if now.contains(&sick) {
            return false;
        }
        if gone_ms == 0 {
            gone_ms = now_ms();
        }
        now.len() >= 2
    });
    assert!(
        gone_ms >= created + grace_ms,
        "destroyed {} ms after provisioning, within the grace period of {grace_ms} ms",
        gone_ms - created
    );
    run.wait_for("3 instances again", LONG, || ids(&env).len() == 3);
    let replaced = format!("instance-replaced {sick}");
    run.wait_for_output(&[&replaced], LONG);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn too_many_unhealthy_at_once_pauses_remediation() {
    let env = Env::new();
    let spec = env.data_dir().join("net.json");
    let health =
        json!({"Health": {"CheckInterval": "100ms", "GracePeriod": "0s", "MaxUnhealthy": 1}});
    write_spec(&spec, "net", json!({"Size": 3}), health);
    {
        let mut run = GroupRun::start(&env, &spec);
        run.wait_for("3 instances", LONG, || instances(&env).len() == 3);
        run.terminate();
    }
    // Two of three go bad at the same moment (a network partition, say).
    let before = ids(&env);
    let two: Vec<String> = before.iter().take(2).cloned().collect();
    for id in &two {
        env.ok(
            &[
                "instance",
                "label",
                "--plugin",
                "instance-file",
                id,
                "--tag",
                "health=bad",
            ],
            None,
        );
    }
    let mut run = GroupRun::start(&env, &spec);
    run.wait_for_output(&["remediation paused", "more than MaxUnhealthy 1"], LONG);
    run.wait_passes("net", 5);
    assert_eq!(
        ids(&env),
        before,
        "nothing replaced while over MaxUnhealthy"
    );

    // One recovers: the other is now within the limit and gets replaced.
    env.ok(
        &[
            "instance",
            "label",
            "--plugin",
            "instance-file",
            &two[0],
            "--tag",
            "health=ok",
        ],
        None,
    );
    run.wait_for("the remaining sick one replaced", LONG, || {
        let now = ids(&env);
        now.len() == 3 && now.contains(&two[0]) && !now.contains(&two[1])
    });
}

#[test]
fn a_controller_killed_mid_update_finishes_it_without_duplicates() {
    let env = Env::new();
    let spec = env.data_dir().join("db.json");
    let size = 6;
    let policy = json!({"Updating": {"MaxSurge": 1, "MaxUnavailable": 0}});
    write_spec(&spec, "db", json!({"Size": size}), policy.clone());
    {
        let mut run = GroupRun::start(&env, &spec);
        run.wait_for("6 instances", LONG, || instances(&env).len() == size);
        run.terminate();
    }
    let v1 = tag(&instances(&env)[0], "infrakit.config_sha");
    let mut v2 = policy.clone();
    v2["Instance"] = json!({"Plugin": "instance-file", "Properties": {"Prefix": "dbv2"}});
    write_spec(&spec, "db", json!({"Size": size}), v2);
    let updated = |now: &[serde_json::Value]| {
        now.iter()
            .filter(|i| tag(i, "infrakit.config_sha") != v1)
            .count()
    };

    let mut max_seen = 0;
    for round in 0..3 {
        let before = updated(&instances(&env));
        let mut run = GroupRun::start(&env, &spec);
        // Kill without warning the moment the update makes progress: a new-configuration
        // instance appears. That lands in the middle of the update, not at a fixed delay.
        run.wait_for("the update to make progress", LONG, || {
            let now = instances(&env);
            max_seen = max_seen.max(now.len());
            updated(&now) > before
        });
        run.kill();
        let now = instances(&env);
        max_seen = max_seen.max(now.len());
        assert!(
            updated(&now) < size,
            "round {round}: the kill landed after the update had finished, so it interrupted \
             nothing"
        );
    }
    let mut run = GroupRun::start(&env, &spec);
    run.wait_for("all on v2", LONG, || {
        let now = instances(&env);
        max_seen = max_seen.max(now.len());
        now.len() == size && updated(&now) == size
    });
    run.wait_passes("db", 3);
    let last = instances(&env);
    assert_eq!(last.len(), size, "no duplicates after convergence");
    let indexes: BTreeSet<String> = last.iter().map(|i| tag(i, "infrakit.index")).collect();
    assert_eq!(indexes.len(), size, "distinct indexes: {indexes:?}");
    assert!(
        max_seen <= size + 1,
        "never more than size + surge: saw {max_seen}"
    );
    assert!(
        last.iter()
            .all(|i| i["ID"].as_str().unwrap().starts_with("dbv2-"))
    );
}

#[test]
fn instances_of_other_groups_and_untagged_ones_are_left_alone() {
    let env = Env::new();
    let stranger = env.ok(
        &["instance", "provision", "--plugin", "instance-file"],
        Some(r#"{"Tags": {"infrakit.group": "someone-else"}}"#),
    );
    let untagged = env.ok(
        &["instance", "provision", "--plugin", "instance-file"],
        Some("{}"),
    );
    let spec = env.data_dir().join("mine.json");
    write_spec(&spec, "mine", json!({"Size": 0}), json!({}));
    let mut run = GroupRun::start(&env, &spec);
    run.wait_for_output(&["converged"], LONG);
    run.wait_passes("mine", 3);
    let left = ids(&env);
    assert!(
        left.contains(stranger.trim()) && left.contains(untagged.trim()),
        "{left:?}"
    );
}

#[test]
fn group_plan_shows_what_would_happen_and_does_nothing() {
    let env = Env::new();
    let spec = env.data_dir().join("p.json");
    write_spec(&spec, "p", json!({"Size": 2}), json!({}));
    let out = env.ok(&["group", "plan", spec.to_str().unwrap()], None);
    assert!(
        out.contains("Plan: 2 to provision, 0 to destroy, 0 to replace"),
        "{out}"
    );
    let plan = env
        .run(
            &["group", "plan", spec.to_str().unwrap(), "-o", "json"],
            None,
        )
        .json();
    assert_eq!(plan["steps"].as_array().unwrap().len(), 2);
    assert!(instances(&env).is_empty(), "a plan changes nothing");
}

#[test]
fn group_destroy_drains_and_destroys_every_instance() {
    let env = Env::new();
    let spec = env.data_dir().join("gone.json");
    write_spec(&spec, "gone", json!({"Size": 3}), json!({}));
    {
        let mut run = GroupRun::start(&env, &spec);
        run.wait_for("3 instances", LONG, || instances(&env).len() == 3);
    }
    let out = env.ok(&["group", "destroy", spec.to_str().unwrap()], None);
    assert!(instances(&env).is_empty(), "{out}");
    assert_eq!(out.matches("instance-drained").count(), 3, "{out}");
    assert!(out.contains("group-destroyed"), "{out}");
}

#[test]
fn invalid_specs_are_rejected_with_file_field_and_accepted_form() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/specs/invalid");
    let env = Env::new();
    let mut cases = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.extension().is_some_and(|e| e == "err") {
            continue;
        }
        cases += 1;
        let expected = std::fs::read_to_string(path.with_extension("err"))
            .unwrap_or_else(|_| panic!("{} has no .err file", path.display()));
        let stderr = env
            .run(&["group", "validate", path.to_str().unwrap()], None)
            .assert_failure();
        for line in expected.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                stderr.contains(line.trim()),
                "{}: expected {:?} in:\n{stderr}",
                path.display(),
                line.trim()
            );
        }
    }
    assert!(cases >= 10, "only {cases} cases");
}

#[test]
fn an_update_to_a_broken_configuration_pauses_and_rolling_back_recovers() {
    let env = Env::new();
    let spec = env.data_dir().join("api.json");
    let policy = json!({
        "Updating": {"MaxSurge": 1, "MaxUnavailable": 0, "BatchTimeout": "1s"},
        "Health": {"CheckInterval": "100ms", "GracePeriod": "200ms", "MaxUnhealthy": 1}
    });
    write_spec(&spec, "api", json!({"Size": 3}), policy.clone());
    let mut run = GroupRun::start(&env, &spec);
    run.wait_for("3 instances", LONG, || instances(&env).len() == 3);
    let v1_ids = ids(&env);
    let v1 = tag(&instances(&env)[0], "infrakit.config_sha");

    // v2's instances are born unhealthy: the flavor tags them with the tag it judges bad.
    let mut broken = policy.clone();
    broken["Flavor"] = json!({"Plugin": "flavor-vanilla", "Properties": {
        "Tags": {"health": "bad"}, "UnhealthyTags": {"health": "bad"}}});
    write_spec(&spec, "api", json!({"Size": 3}), broken);
    run.wait_for_output(
        &["update paused", "not healthy within the batch timeout"],
        LONG,
    );
    run.wait_passes("api", 5);
    let now = instances(&env);
    assert_eq!(now.len(), 4, "one surge instance, no more: {now:?}");
    assert!(
        v1_ids.is_subset(&ids(&env)),
        "no old instance was taken away"
    );

    // Rolling back: the old configuration is current again, the broken one is replaced.
    write_spec(&spec, "api", json!({"Size": 3}), policy);
    run.wait_for("back on v1", LONG, || {
        let now = instances(&env);
        now.len() == 3 && now.iter().all(|i| tag(i, "infrakit.config_sha") == v1)
    });
    assert_eq!(
        ids(&env),
        v1_ids,
        "the original instances were kept throughout"
    );
}

/// Destroys a converged group in the foreground with a flavor whose drain misbehaves as
/// `drain` says; returns what `group destroy` printed.
fn destroy_with_drain(id: &str, drain: serde_json::Value) -> String {
    let env = Env::new();
    env.install_plugin("fixture-flavor-tag", None);
    let spec = env.data_dir().join(format!("{id}.json"));
    let mut flavor = json!({"Tag": id});
    for (k, v) in drain.as_object().unwrap() {
        flavor[k] = v.clone();
    }
    write_spec(
        &spec,
        id,
        json!({"Size": 2}),
        json!({
            "Flavor": {"Plugin": "fixture-flavor-tag", "Properties": flavor},
            "Drain": {"Timeout": "300ms"}
        }),
    );
    {
        let mut run = GroupRun::start(&env, &spec);
        run.wait_for("2 instances", LONG, || instances(&env).len() == 2);
    }
    let out = env.ok(&["group", "destroy", spec.to_str().unwrap()], None);
    assert!(instances(&env).is_empty(), "destroyed anyway: {out}");
    assert!(out.contains("group-destroyed"), "{out}");
    out
}

#[test]
fn a_drain_that_outlasts_its_timeout_is_abandoned_and_the_destroy_goes_ahead() {
    let started = std::time::Instant::now();
    let out = destroy_with_drain("slow", json!({"DrainSleepMs": 20_000}));
    assert_eq!(
        out.matches("drain did not finish within 300ms, destroying anyway")
            .count(),
        2,
        "{out}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the 20 s drains were not cut short"
    );
}

#[test]
fn a_failed_drain_is_reported_and_the_destroy_goes_ahead() {
    let out = destroy_with_drain("fails", json!({"DrainFails": true}));
    assert_eq!(
        out.matches("drain failed, destroying anyway").count(),
        2,
        "{out}"
    );
    assert!(out.contains("refusing to drain, as asked"), "{out}");
}

#[test]
fn a_slow_plugin_provisions_in_parallel_not_one_after_another() {
    let env = Env::new();
    env.install_plugin("fixture-flavor-tag", None);
    let spec = env.data_dir().join("slow.json");
    // Each new instance takes 1 s to prepare: one after another, 20 would take 20 s.
    write_spec(
        &spec,
        "slow",
        json!({"Size": 20}),
        json!({
            "Flavor": {"Plugin": "fixture-flavor-tag", "Properties": {"Tag": "slow", "PrepareSleepMs": 1000}},
            "Parallelism": 10
        }),
    );
    let mut run = GroupRun::start(&env, &spec);
    run.wait_for("the first instance", LONG, || !instances(&env).is_empty());
    let started = std::time::Instant::now();
    run.wait_for("20 instances", LONG, || instances(&env).len() == 20);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "20 provisions of 1 s each at Parallelism 10 took {took:?}"
    );
    run.wait_passes("slow", 2);
    assert_eq!(instances(&env).len(), 20, "and no more");
}

/// InfraKit #331: a plugin whose instances never show up in describe made the controller
/// provision again at every pass (364 instances for a Size-2 group in 15 s).
#[test]
fn instances_that_never_appear_are_provisioned_a_bounded_number_of_times_then_the_group_pauses() {
    let env = Env::new();
    // Its provision succeeds; its describe never lists anything.
    env.install_plugin("fixture-misbehave", None);
    let spec = env.data_dir().join("ghost.json");
    write_spec(
        &spec,
        "ghost",
        json!({"Size": 2}),
        json!({
            "Instance": {"Plugin": "fixture-misbehave", "Properties": {"Do": "vanish"}},
            "Health": {"CheckInterval": "100ms", "GracePeriod": "0s",
                       "ProvisionTimeout": "1s", "CrashLoopLimit": 4}
        }),
    );
    let mut run = GroupRun::start(&env, &spec);
    run.wait_for_output(&["crash loop: 4 instances", "never listed"], LONG);
    run.wait_passes("ghost", 0);
    let out = run.output();
    let provisions = out.matches("instance-provisioned").count();
    assert_eq!(provisions, 4, "{out}");
    assert_eq!(out.matches("instance-lost").count(), 4, "{out}");
}

#[test]
fn instances_lost_soon_after_provisioning_back_off_then_pause_the_group() {
    let env = Env::new();
    let spec = env.data_dir().join("crashy.json");
    write_spec(
        &spec,
        "crashy",
        json!({"Size": 1}),
        json!({"Health": {"CheckInterval": "100ms", "GracePeriod": "30s", "CrashLoopLimit": 3}}),
    );
    let mut run = GroupRun::start(&env, &spec);
    // Each instance dies right after it starts (its file is deleted), three times.
    let mut killed = Vec::new();
    let mut when = Vec::new();
    for _ in 0..3 {
        run.wait_for("an instance to kill", LONG, || {
            instances(&env)
                .iter()
                .any(|i| !killed.contains(&i["ID"].as_str().unwrap().to_string()))
        });
        let victim = instances(&env)[0]["ID"].as_str().unwrap().to_string();
        // Once the controller has listed it: then it was up, and died.
        run.wait_passes("crashy", 2);
        std::fs::remove_file(env.scratch("instance-file").join(format!("{victim}.json"))).unwrap();
        when.push(std::time::Instant::now());
        killed.push(victim);
    }
    run.wait_for_output(
        &["crash loop: 3 instances", "within its grace period"],
        LONG,
    );
    // Backed off between the losses, and nothing provisioned once paused.
    assert!(
        when[2] - when[1] >= Duration::from_millis(900),
        "no back-off after the second loss: {:?}",
        when[2] - when[1]
    );
    run.wait_passes("crashy", 0);
    let out = run.output();
    assert_eq!(out.matches("instance-provisioned").count(), 3, "{out}");
    assert!(instances(&env).is_empty());
}

/// A listing that leaves out a third of the instances at random (as an eventually consistent
/// cloud API does) never makes the group replace one: it never goes above Size + MaxSurge and
/// never destroys a healthy instance, over hundreds of passes. With `LostAfter: 0s` the same
/// listing does cause replacements, which shows that the omissions are real.
#[test]
fn a_listing_that_randomly_omits_a_third_never_causes_a_replacement() {
    let env = Env::new();
    env.install_plugin("instance-bench", Some("[config]\nomit_percent = \"33\"\n"));
    let spec = env.data_dir().join("flaky.json");
    let write = |lost_after: &str| {
        write_spec(
            &spec,
            "flaky",
            json!({"Size": 5}),
            json!({
                "Instance": {"Plugin": "instance-bench", "Properties": {"Image": "debian-13"}},
                "Health": {"CheckInterval": "1h", "GracePeriod": "0s", "LostAfter": lost_after},
                "Updating": {"MaxSurge": 1}
            }),
        )
    };
    write("200ms");
    let file = env.scratch("instance-bench").join("flaky.jsonl");
    let count = || {
        std::fs::read_to_string(&file)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let mut run = GroupRun::start_polling(&env, &spec, "10ms");
    run.wait_for("5 instances", LONG, || count() == 5);
    let first = std::fs::read_to_string(&file).unwrap();
    // Hundreds of passes, sampling the real instance count all along.
    let mut most = 0;
    run.wait_for("300 passes", LONG, || {
        most = most.max(count());
        run_log(&env).matches("pass finished").count() >= 300
    });
    let out = run.output();
    assert!(most <= 6, "{most} instances against Size 5 + MaxSurge 1");
    assert_eq!(out.matches("instance-provisioned").count(), 5, "{out}");
    assert_eq!(out.matches("instance-destroyed").count(), 0, "{out}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), first);

    // The control: without the window, the same listing makes the group replace instances.
    write("0s");
    run.wait_for("a needless replacement", LONG, || {
        run_log(&env).matches("instance-provisioned").count() > 5
    });
}

/// What the `group run` processes of `env` printed.
fn run_log(env: &Env) -> String {
    std::fs::read_dir(env.data_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("run-"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect()
}

#[test]
fn a_flapping_check_costs_no_instance_under_an_unhealthy_threshold() {
    let env = Env::new();
    let spec = env.data_dir().join("flap.json");
    let health = json!({"Health": {"CheckInterval": "100ms", "GracePeriod": "0s",
                                   "UnhealthyThreshold": 20}});
    write_spec(&spec, "flap", json!({"Size": 2}), health);
    let mut run = GroupRun::start(&env, &spec);
    run.wait_for("2 instances", LONG, || ids(&env).len() == 2);
    let sick = ids(&env).into_iter().next().unwrap();
    let label = |value: &str| {
        env.ok(
            &[
                "instance",
                "label",
                "--plugin",
                "instance-file",
                &sick,
                "--tag",
                &format!("health={value}"),
            ],
            None,
        );
    };
    // One bad spell shorter than 20 checks: seen, and forgiven.
    label("bad");
    let changed = format!("health-changed {sick}: ");
    run.wait_for_output(&[&changed, "-> unhealthy"], LONG);
    label("good");
    run.wait_for_output(&["unhealthy -> healthy"], LONG);
    run.wait_passes("flap", 30);
    assert!(
        ids(&env).contains(&sick),
        "replaced after a short bad spell"
    );
    // Bad for good: replaced after 20 checks in a row, and the event says so.
    label("bad");
    run.wait_for("the sick one replaced", LONG, || !ids(&env).contains(&sick));
    run.wait_for_output(
        &["found unhealthy in 20 checks in a row (UnhealthyThreshold 20)"],
        LONG,
    );
}

/// A converged group whose listing and spec stay the same, with its verdicts still fresh,
/// reuses its last plan instead of re-planning (see `Settled` in the controller). Here every
/// pass after convergence would be such a pass (verdicts are kept for an hour), so only the
/// comparison of what is listed can let a change through: each must be acted on.
#[test]
fn a_group_left_settled_for_many_passes_still_sees_every_change() {
    let env = Env::new();
    let spec = env.data_dir().join("calm.json");
    let health = json!({"Health": {"CheckInterval": "1h", "GracePeriod": "0s"}});
    write_spec(&spec, "calm", json!({"Size": 3}), health.clone());
    let mut run = GroupRun::start(&env, &spec);
    run.wait_for("3 instances", LONG, || ids(&env).len() == 3);
    run.wait_for_output(&["converged"], LONG);
    run.wait_passes("calm", 30);
    let settled = ids(&env);
    assert_eq!(settled.len(), 3, "nothing happened over 30 passes");

    // A removal requested by tag (as `group destroy-instances` does): a tag changed.
    let removed = settled.iter().next().unwrap().clone();
    env.ok(
        &[
            "instance",
            "label",
            "--plugin",
            "instance-file",
            &removed,
            "--tag",
            "infrakit.remove=replace",
        ],
        None,
    );
    run.wait_for("the removed one replaced", LONG, || {
        let now = ids(&env);
        now.len() == 3 && !now.contains(&removed)
    });
    run.wait_passes("calm", 30);

    // An instance deleted behind the manager's back.
    let lost = ids(&env).into_iter().next_back().unwrap();
    std::fs::remove_file(env.scratch("instance-file").join(format!("{lost}.json"))).unwrap();
    run.wait_for("the lost one replaced", LONG, || {
        let now = ids(&env);
        now.len() == 3 && !now.contains(&lost)
    });
    run.wait_passes("calm", 30);

    // A new spec: the size goes up.
    write_spec(&spec, "calm", json!({"Size": 4}), health);
    run.wait_for("a fourth instance", LONG, || ids(&env).len() == 4);
}
