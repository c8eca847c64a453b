//! Prometheus metrics, served at `/metrics` on the TCP listener. Built from the live state at
//! each scrape (group statuses, plugin call counters), so nothing here can drift from it.

use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::controller::Controller;
use crate::plugin;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabel {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    group: String,
    health: String,
    config: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    group: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

/// The metrics in Prometheus' text format.
pub fn render(controller: &Controller, plugins: &plugin::Registry) -> impl IntoResponse + use<> {
    let mut reg = Registry::with_prefix("infrakit");
    let groups = Gauge::<i64>::default();
    let instances = Family::<InstanceLabels, Gauge<i64>>::default();
    let phase = Family::<PhaseLabels, Gauge<i64>>::default();
    let current = Family::<GroupLabel, Gauge<i64>>::default();
    let size = Family::<GroupLabel, Gauge<i64>>::default();
    let passes = Family::<GroupLabel, Counter<u64>>::default();
    let pass_seconds = Family::<GroupLabel, Counter<f64, std::sync::atomic::AtomicU64>>::default();
    let calls = Family::<PluginLabel, Counter<u64>>::default();
    let faults = Family::<PluginLabel, Counter<u64>>::default();
    let call_seconds = Family::<PluginLabel, Counter<f64, std::sync::atomic::AtomicU64>>::default();

    let ids = controller.groups();
    groups.set(ids.len() as i64);
    for id in ids {
        let Some(s) = controller.status(&id) else {
            continue;
        };
        let g = GroupLabel { group: id.clone() };
        for i in &s.instances {
            instances
                .get_or_create(&InstanceLabels {
                    group: id.clone(),
                    health: i.health.to_string(),
                    config: if i.current { "current" } else { "outdated" }.into(),
                })
                .inc();
        }
        phase
            .get_or_create(&PhaseLabels {
                group: id.clone(),
                phase: s.phase.to_string(),
            })
            .set(1);
        current.get_or_create(&g).set(s.current as i64);
        size.get_or_create(&g).set(s.size as i64);
        passes.get_or_create(&g).inc_by(s.passes);
        pass_seconds
            .get_or_create(&g)
            .inc_by(s.pass_ms_total as f64 / 1000.0);
    }
    for p in plugins.plugins() {
        use std::sync::atomic::Ordering::Relaxed;
        let l = PluginLabel {
            plugin: p.name().to_string(),
        };
        calls
            .get_or_create(&l)
            .inc_by(p.stats().calls.load(Relaxed));
        faults
            .get_or_create(&l)
            .inc_by(p.stats().faults.load(Relaxed));
        call_seconds
            .get_or_create(&l)
            .inc_by(p.stats().nanos.load(Relaxed) as f64 / 1e9);
    }
    reg.register("groups", "Managed groups", groups);
    reg.register(
        "instances",
        "Instances by group, health and configuration",
        instances,
    );
    reg.register("group_phase", "1 for the phase each group is in", phase);
    reg.register(
        "group_current_instances",
        "Instances on the current configuration (update progress)",
        current,
    );
    reg.register("group_size", "The allocation's size", size);
    reg.register("reconcile_passes", "Reconcile passes", passes);
    reg.register("reconcile_seconds", "Time spent reconciling", pass_seconds);
    // Between calls the sandbox pool keeps the pages calls dirtied resident (see
    // `plugin::engine`): how many slots and how much memory that is.
    if let Some(pool) = plugins.engine().pooling_allocator_metrics() {
        let warm = Gauge::<i64>::default();
        warm.set(i64::from(pool.unused_warm_memories()));
        let resident = Gauge::<i64>::default();
        resident
            .set((pool.unused_memory_bytes_resident() + pool.unused_table_bytes_resident()) as i64);
        reg.register(
            "sandbox_pool_warm_slots",
            "Memory slots of the sandbox pool idle and ready for a call",
            warm,
        );
        reg.register(
            "sandbox_pool_resident_bytes",
            "Memory the idle slots of the sandbox pool keep resident",
            resident,
        );
    }
    reg.register("plugin_calls", "Plugin calls", calls);
    reg.register(
        "plugin_faults",
        "Plugin calls that faulted (trap, deadline, memory)",
        faults,
    );
    reg.register(
        "plugin_call_seconds",
        "Time spent in plugin calls",
        call_seconds,
    );
    let mut text = String::new();
    let _ = encode(&mut text, &reg);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}
