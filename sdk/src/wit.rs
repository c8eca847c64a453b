//! The generated component bindings and the glue between them and the SDK's own types.
//! Nothing here is for plugin authors: the export macros use it.
//!
//! wit-bindgen's ABI glue is `unsafe` by nature (raw pointers across the component boundary);
//! it is generated, not written here, hence the `allow`.
#![allow(unsafe_code, missing_docs)]

use std::marker::PhantomData;

#[allow(unused_imports)]
use crate::{
    Allocation, Attachment, Capability, Description, DestroyContext, FlavorPlugin, Health, Index,
    InstancePlugin, InstanceSpec, Level, Properties,
};

#[cfg(all(target_arch = "wasm32", feature = "instance", feature = "flavor"))]
compile_error!(
    "infrakit-sdk: a component is either an instance or a flavor plugin; enable only one of the \
     `instance` and `flavor` features (build each plugin with its own `cargo build -p`)"
);

#[cfg(feature = "instance")]
pub mod instance {
    wit_bindgen::generate!({
        path: "../wit",
        world: "instance-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_instance_world",
        default_bindings_module: "::infrakit_sdk::wit::instance",
        runtime_path: "::infrakit_sdk::__private::wit_bindgen::rt",
    });
}

#[cfg(feature = "flavor")]
pub mod flavor {
    wit_bindgen::generate!({
        path: "../wit",
        world: "flavor-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_flavor_world",
        default_bindings_module: "::infrakit_sdk::wit::flavor",
        runtime_path: "::infrakit_sdk::__private::wit_bindgen::rt",
    });
}

/// Name, version and description of the exported plugin, filled in by the export macros from
/// the plugin crate's `Cargo.toml`.
pub trait MetadataSource {
    const NAME: &'static str;
    const VERSION: &'static str;
    const DESCRIPTION: &'static str;
}

/// Implements the generated `Guest` traits for an [`InstancePlugin`].
pub struct InstanceAdapter<P, M>(PhantomData<(P, M)>);

/// Implements the generated `Guest` traits for a [`FlavorPlugin`].
pub struct FlavorAdapter<P, M>(PhantomData<(P, M)>);

// Host imports. On wasm they go to whichever world this build carries (the host import is the
// same in both); natively they go to the testing shim.
pub(crate) fn log(level: Level, message: &str) {
    #[cfg(all(target_arch = "wasm32", feature = "instance"))]
    {
        use instance::infrakit::plugin::host;
        host::log(instance_level(level), message)
    }
    #[cfg(all(target_arch = "wasm32", feature = "flavor", not(feature = "instance")))]
    {
        use flavor::infrakit::plugin::host;
        host::log(flavor_level(level), message)
    }
    #[cfg(not(all(target_arch = "wasm32", any(feature = "instance", feature = "flavor"))))]
    {
        crate::testing::record_log(level, message)
    }
}

pub(crate) fn get_config(key: &str) -> Option<String> {
    #[cfg(all(target_arch = "wasm32", feature = "instance"))]
    {
        instance::infrakit::plugin::host::get_config(key)
    }
    #[cfg(all(target_arch = "wasm32", feature = "flavor", not(feature = "instance")))]
    {
        flavor::infrakit::plugin::host::get_config(key)
    }
    #[cfg(not(all(target_arch = "wasm32", any(feature = "instance", feature = "flavor"))))]
    {
        crate::testing::config_value(key)
    }
}

/// The conversions are the same for both worlds: each world's bindings define their own copies
/// of the shared types, so the glue is stamped out once per world.
macro_rules! glue {
    ($m:ident, $level_fn:ident) => {
        #[allow(dead_code)]
        pub(crate) fn $level_fn(level: Level) -> $m::infrakit::plugin::host::Level {
            use $m::infrakit::plugin::host::Level as L;
            match level {
                Level::Trace => L::Trace,
                Level::Debug => L::Debug,
                Level::Info => L::Info,
                Level::Warn => L::Warn,
                Level::Error => L::Error,
            }
        }

        impl From<crate::Error> for $m::infrakit::plugin::types::Error {
            fn from(e: crate::Error) -> Self {
                use $m::infrakit::plugin::types::Error as E;
                match e {
                    crate::Error::Invalid(m) => E::Invalid(m),
                    crate::Error::NotFound(m) => E::NotFound(m),
                    crate::Error::Transient(m) => E::Transient(m),
                    crate::Error::Other(m) => E::Other(m),
                }
            }
        }

        impl From<$m::infrakit::plugin::types::InstanceSpec> for InstanceSpec {
            fn from(s: $m::infrakit::plugin::types::InstanceSpec) -> Self {
                InstanceSpec {
                    properties: Properties::new(s.properties),
                    tags: s.tags,
                    init: s.init,
                    logical_id: s.logical_id,
                    attachments: s
                        .attachments
                        .into_iter()
                        .map(|a| Attachment {
                            id: a.id,
                            kind: a.type_,
                        })
                        .collect(),
                }
            }
        }

        impl From<InstanceSpec> for $m::infrakit::plugin::types::InstanceSpec {
            fn from(s: InstanceSpec) -> Self {
                $m::infrakit::plugin::types::InstanceSpec {
                    properties: s.properties.as_str().to_string(),
                    tags: s.tags,
                    init: s.init,
                    logical_id: s.logical_id,
                    attachments: s
                        .attachments
                        .into_iter()
                        .map(|a| $m::infrakit::plugin::types::Attachment {
                            id: a.id,
                            type_: a.kind,
                        })
                        .collect(),
                }
            }
        }

        impl From<$m::infrakit::plugin::types::Description> for Description {
            fn from(d: $m::infrakit::plugin::types::Description) -> Self {
                Description {
                    id: d.id,
                    logical_id: d.logical_id,
                    tags: d.tags,
                    properties: d.properties.map(Properties::new),
                }
            }
        }

        impl From<Description> for $m::infrakit::plugin::types::Description {
            fn from(d: Description) -> Self {
                $m::infrakit::plugin::types::Description {
                    id: d.id,
                    logical_id: d.logical_id,
                    tags: d.tags,
                    properties: d.properties.map(|p| p.as_str().to_string()),
                }
            }
        }

        #[allow(dead_code)]
        fn metadata_of<S: MetadataSource>(
            kind: $m::infrakit::plugin::types::PluginKind,
            capabilities: Vec<Capability>,
        ) -> $m::infrakit::plugin::types::PluginMetadata {
            use $m::infrakit::plugin::types as pi;
            pi::PluginMetadata {
                name: S::NAME.to_string(),
                version: S::VERSION.to_string(),
                kind,
                description: S::DESCRIPTION.to_string(),
                capabilities: capabilities
                    .into_iter()
                    .map(|c| match c {
                        Capability::Files {
                            guest_path,
                            writable,
                        } => pi::Capability::Files(pi::FileRequest {
                            guest_path,
                            writable,
                        }),
                        Capability::Http(target) => pi::Capability::Http(target),
                        Capability::Config(key) => pi::Capability::Config(key),
                    })
                    .collect(),
            }
        }
    };
}

#[cfg(feature = "instance")]
mod instance_glue {
    use super::*;
    use instance::exports::infrakit::plugin::instance as wi;
    use instance::infrakit::plugin::types as wt;

    glue!(instance, instance_level);

    impl<P: InstancePlugin + Default + 'static, M: MetadataSource + 'static> wi::Guest
        for InstanceAdapter<P, M>
    {
        fn metadata() -> wt::PluginMetadata {
            metadata_of::<M>(wt::PluginKind::Instance, P::default().capabilities())
        }

        fn validate(properties: String) -> Result<(), wt::Error> {
            Ok(P::default().validate(&Properties::new(properties))?)
        }

        fn provision(spec: wt::InstanceSpec) -> Result<String, wt::Error> {
            Ok(P::default().provision(spec.into())?)
        }

        fn label(id: String, labels: wt::Tags) -> Result<(), wt::Error> {
            Ok(P::default().label(&id, labels)?)
        }

        fn destroy(id: String, context: wt::DestroyContext) -> Result<(), wt::Error> {
            let context = match context {
                wt::DestroyContext::Terminate => DestroyContext::Terminate,
                wt::DestroyContext::RollingUpdate => DestroyContext::RollingUpdate,
            };
            Ok(P::default().destroy(&id, context)?)
        }

        fn describe(
            tags: wt::Tags,
            include_properties: bool,
        ) -> Result<Vec<wt::Description>, wt::Error> {
            let found = P::default().describe(&tags, include_properties)?;
            Ok(found.into_iter().map(Into::into).collect())
        }
    }
}
#[cfg(feature = "instance")]
#[allow(unused_imports)]
use instance_glue::instance_level;

#[cfg(feature = "flavor")]
mod flavor_glue {
    use super::*;
    use flavor::exports::infrakit::plugin::flavor as wf;
    use flavor::infrakit::plugin::types as wt;

    glue!(flavor, flavor_level);

    fn allocation(a: wt::Allocation) -> Allocation {
        match a {
            wt::Allocation::Size(n) => Allocation::Size(n),
            wt::Allocation::LogicalIds(ids) => Allocation::LogicalIds(ids),
        }
    }

    fn health_to_wit(h: Health) -> wt::Health {
        match h {
            Health::Healthy => wt::Health::Healthy,
            Health::Unhealthy => wt::Health::Unhealthy,
            Health::Unknown => wt::Health::Unknown,
        }
    }

    impl<P: FlavorPlugin + Default + 'static, M: MetadataSource + 'static> wf::Guest
        for FlavorAdapter<P, M>
    {
        fn metadata() -> wt::PluginMetadata {
            metadata_of::<M>(wt::PluginKind::Flavor, P::default().capabilities())
        }

        fn validate(properties: String, alloc: wt::Allocation) -> Result<(), wt::Error> {
            Ok(P::default().validate(&Properties::new(properties), &allocation(alloc))?)
        }

        fn prepare(
            properties: String,
            spec: wt::InstanceSpec,
            alloc: wt::Allocation,
            index: wt::Index,
        ) -> Result<wt::InstanceSpec, wt::Error> {
            let index = Index {
                group: index.group,
                sequence: index.sequence,
            };
            let spec = P::default().prepare(
                &Properties::new(properties),
                spec.into(),
                &allocation(alloc),
                &index,
            )?;
            Ok(spec.into())
        }

        fn healthy(properties: String, instance: wt::Description) -> Result<wt::Health, wt::Error> {
            let health = P::default().healthy(&Properties::new(properties), &instance.into())?;
            Ok(health_to_wit(health))
        }

        fn healthy_many(
            properties: String,
            instances: Vec<wt::Description>,
        ) -> Vec<Result<wt::Health, wt::Error>> {
            let instances: Vec<Description> = instances.into_iter().map(Into::into).collect();
            P::default()
                .healthy_many(&Properties::new(properties), &instances)
                .into_iter()
                .map(|h| h.map(health_to_wit).map_err(Into::into))
                .collect()
        }

        fn drain(properties: String, instance: wt::Description) -> Result<(), wt::Error> {
            Ok(P::default().drain(&Properties::new(properties), &instance.into())?)
        }
    }
}
#[cfg(feature = "flavor")]
#[allow(unused_imports)]
use flavor_glue::flavor_level;
