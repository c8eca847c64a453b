//! The one `bindgen!` site of the host, and the conversions between generated types and
//! [`crate::model`]. Nothing outside this module names a generated type.

use crate::model::{
    Allocation, Attachment, Capability, Description, DestroyContext, GuestError, Health, Index,
    InstanceSpec, Metadata, PluginKind,
};

/// Bindings of the `instance-plugin` world.
pub(crate) mod instance_world {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "instance-plugin",
        imports: { default: trappable },
        exports: { default: async },
    });
}

/// Bindings of the `flavor-plugin` world. The shared interfaces (`types`, `host`) are reused
/// from the instance world so that both worlds share one set of types and one host impl.
pub(crate) mod flavor_world {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "flavor-plugin",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "infrakit:plugin/types": super::instance_world::infrakit::plugin::types,
            "infrakit:plugin/host": super::instance_world::infrakit::plugin::host,
        },
    });
}

pub(crate) use instance_world::infrakit::plugin::host;
use instance_world::infrakit::plugin::types as wit;

pub(crate) use flavor_world::FlavorPluginPre;
pub(crate) use instance_world::InstancePluginPre;

/// The fully qualified export names, used to recognise a component's world before binding it.
pub(crate) const INSTANCE_EXPORT: &str = "infrakit:plugin/instance@0.1.0";
pub(crate) const FLAVOR_EXPORT: &str = "infrakit:plugin/flavor@0.1.0";

fn json_text(value: &serde_json::Value) -> String {
    if value.is_null() {
        "{}".to_string()
    } else {
        value.to_string()
    }
}

/// Properties a guest hands back must be JSON; anything else is kept as a JSON string so that
/// nothing a plugin says is lost.
fn json_value(text: String) -> serde_json::Value {
    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
}

fn tags_to_wit(tags: &crate::model::Tags) -> wit::Tags {
    tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub(crate) fn spec_to_wit(spec: &InstanceSpec) -> wit::InstanceSpec {
    wit::InstanceSpec {
        properties: json_text(&spec.properties),
        tags: tags_to_wit(&spec.tags),
        init: spec.init.clone(),
        logical_id: spec.logical_id.clone(),
        attachments: spec
            .attachments
            .iter()
            .map(|a| wit::Attachment {
                id: a.id.clone(),
                type_: a.kind.clone(),
            })
            .collect(),
    }
}

pub(crate) fn spec_from_wit(spec: wit::InstanceSpec) -> InstanceSpec {
    InstanceSpec {
        properties: json_value(spec.properties),
        tags: spec.tags.into_iter().collect(),
        init: spec.init,
        logical_id: spec.logical_id,
        attachments: spec
            .attachments
            .into_iter()
            .map(|a| Attachment {
                id: a.id,
                kind: a.type_,
            })
            .collect(),
    }
}

pub(crate) fn description_to_wit(d: &Description) -> wit::Description {
    wit::Description {
        id: d.id.clone(),
        logical_id: d.logical_id.clone(),
        tags: tags_to_wit(&d.tags),
        properties: d.properties.as_ref().map(json_text),
    }
}

pub(crate) fn description_from_wit(d: wit::Description) -> Description {
    Description {
        id: d.id,
        logical_id: d.logical_id,
        tags: d.tags.into_iter().collect(),
        properties: d.properties.map(json_value),
    }
}

pub(crate) fn tags_list(tags: &crate::model::Tags) -> wit::Tags {
    tags_to_wit(tags)
}

pub(crate) fn allocation_to_wit(a: &Allocation) -> wit::Allocation {
    match a {
        Allocation::Size(n) => wit::Allocation::Size(*n),
        Allocation::LogicalIds(ids) => wit::Allocation::LogicalIds(ids.clone()),
    }
}

pub(crate) fn index_to_wit(i: &Index) -> wit::Index {
    wit::Index {
        group: i.group.clone(),
        sequence: i.sequence,
    }
}

pub(crate) fn health_from_wit(h: wit::Health) -> Health {
    match h {
        wit::Health::Healthy => Health::Healthy,
        wit::Health::Unhealthy => Health::Unhealthy,
        wit::Health::Unknown => Health::Unknown,
    }
}

pub(crate) fn destroy_context_to_wit(c: DestroyContext) -> wit::DestroyContext {
    match c {
        DestroyContext::Terminate => wit::DestroyContext::Terminate,
        DestroyContext::RollingUpdate => wit::DestroyContext::RollingUpdate,
    }
}

/// Longest error message kept from a plugin.
const GUEST_MESSAGE_MAX: usize = 4096;

pub(crate) fn error_from_wit(e: wit::Error) -> GuestError {
    // A plugin's message ends up in terminals, logs and the event log: no control characters.
    // And bounded: a plugin may answer every call with megabytes of error text.
    let p = |m: String| super::printable(&crate::event::clip(&m, GUEST_MESSAGE_MAX)).into_owned();
    match e {
        wit::Error::Invalid(m) => GuestError::Invalid(p(m)),
        wit::Error::NotFound(m) => GuestError::NotFound(p(m)),
        wit::Error::Transient(m) => GuestError::Transient(p(m)),
        wit::Error::Other(m) => GuestError::Other(p(m)),
    }
}

pub(crate) fn metadata_from_wit(m: wit::PluginMetadata) -> Metadata {
    Metadata {
        name: m.name,
        version: m.version,
        kind: match m.kind {
            wit::PluginKind::Instance => PluginKind::Instance,
            wit::PluginKind::Flavor => PluginKind::Flavor,
        },
        description: m.description,
        capabilities: m
            .capabilities
            .into_iter()
            .map(|c| match c {
                wit::Capability::Files(f) => Capability::Files {
                    guest_path: f.guest_path,
                    writable: f.writable,
                },
                wit::Capability::Http(t) => Capability::Http(t),
                wit::Capability::Config(k) => Capability::Config(k),
            })
            .collect(),
    }
}
