use crate::{
    Allocation, Description, DestroyContext, Health, Index, InstanceSpec, Properties, Result, Tags,
};

/// A capability a plugin asks for. Asking grants nothing: the operator's grant file decides,
/// and `infrakit plugin inspect` shows what was asked for next to what was granted.
///
/// ```
/// let caps = vec![
///     infrakit_sdk::Capability::Files { guest_path: "/data".into(), writable: true },
///     infrakit_sdk::Capability::Http("https://*.example.com".into()),
///     infrakit_sdk::Capability::Config("region".into()),
/// ];
/// assert_eq!(caps.len(), 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// A directory mapped at `guest_path`, writable or not.
    Files {
        /// Where the plugin expects the directory.
        guest_path: String,
        /// Whether it needs to write there.
        writable: bool,
    },
    /// An outbound HTTP target, `scheme://host[:port]`, `*` allowed.
    Http(String),
    /// A configuration key the plugin reads.
    Config(String),
}

/// What the host learns about a plugin when it loads it. [`export_instance!`](crate::export_instance)
/// and [`export_flavor!`](crate::export_flavor) fill the name, version and description from the
/// plugin crate's `Cargo.toml`; the capabilities come from the trait's `capabilities()`.
///
/// ```
/// let m = infrakit_sdk::Metadata {
///     name: "instance-demo".into(),
///     version: "0.1.0".into(),
///     description: "demo".into(),
///     capabilities: vec![],
/// };
/// assert_eq!(m.name, "instance-demo");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Unique plugin name, e.g. `instance-file`.
    pub name: String,
    /// Semantic version.
    pub version: String,
    /// One line for `infrakit plugin ls`.
    pub description: String,
    /// What the plugin asks for.
    pub capabilities: Vec<Capability>,
}

/// An instance plugin: provisions, labels, destroys and describes instances (InfraKit's
/// Instance SPI). The host makes a fresh plugin value (through `Default`) for every call, so keep
/// state where it survives: in files of a granted directory or in the infrastructure itself.
///
/// ```no_run
/// use infrakit_sdk::*;
///
/// #[derive(Default)]
/// struct Nothing;
///
/// impl InstancePlugin for Nothing {
///     fn validate(&self, _: &Properties) -> Result<()> { Ok(()) }
///     fn provision(&self, _: InstanceSpec) -> Result<String> { Err(Error::other("read-only")) }
///     fn label(&self, id: &str, _: Tags) -> Result<()> { Err(Error::NotFound(id.into())) }
///     fn destroy(&self, id: &str, _: DestroyContext) -> Result<()> { Err(Error::NotFound(id.into())) }
///     fn describe(&self, _: &Tags, _: bool) -> Result<Vec<Description>> { Ok(vec![]) }
/// }
/// ```
pub trait InstancePlugin {
    /// What the plugin asks the operator for. Defaults to nothing.
    fn capabilities(&self) -> Vec<Capability> {
        Vec::new()
    }

    /// Checks the instance properties of a spec without side effects.
    fn validate(&self, properties: &Properties) -> Result<()>;

    /// Creates an instance, storing `spec.tags` with it, and returns its id.
    fn provision(&self, spec: InstanceSpec) -> Result<String>;

    /// Merges `labels` into an instance's tags.
    fn label(&self, id: &str, labels: Tags) -> Result<()>;

    /// Destroys an instance; [`Error::NotFound`](crate::Error::NotFound) when there is none.
    fn destroy(&self, id: &str, context: DestroyContext) -> Result<()>;

    /// Lists the instances carrying every tag of `tags`.
    fn describe(&self, tags: &Tags, include_properties: bool) -> Result<Vec<Description>>;
}

/// A flavor plugin: shapes what runs on an instance and judges its health (InfraKit's Flavor
/// SPI). A fresh value is made for every call, as for [`InstancePlugin`].
///
/// ```
/// use infrakit_sdk::*;
///
/// #[derive(Default)]
/// struct AlwaysFine;
///
/// impl FlavorPlugin for AlwaysFine {
///     fn validate(&self, _: &Properties, _: &Allocation) -> Result<()> { Ok(()) }
///     fn healthy(&self, _: &Properties, _: &Description) -> Result<Health> { Ok(Health::Healthy) }
///     // `prepare` leaves the spec as it is and `drain` does nothing, unless overridden.
/// }
///
/// let spec = InstanceSpec { init: "echo hi".into(), ..Default::default() };
/// let index = Index { group: "g".into(), sequence: 0 };
/// let same = AlwaysFine
///     .prepare(&Properties::new("{}"), spec.clone(), &Allocation::Size(1), &index)
///     .unwrap();
/// assert_eq!(same.init, spec.init);
/// ```
pub trait FlavorPlugin {
    /// What the plugin asks the operator for. Defaults to nothing.
    fn capabilities(&self) -> Vec<Capability> {
        Vec::new()
    }

    /// Checks the flavor properties against the group's allocation.
    fn validate(&self, properties: &Properties, allocation: &Allocation) -> Result<()>;

    /// Adds what this flavor contributes (init lines, tags...) to a spec before provisioning.
    /// Defaults to the spec as it is, for flavors that only judge health.
    fn prepare(
        &self,
        properties: &Properties,
        spec: InstanceSpec,
        allocation: &Allocation,
        index: &Index,
    ) -> Result<InstanceSpec> {
        let _ = (properties, allocation, index);
        Ok(spec)
    }

    /// Application-aware health of one instance.
    fn healthy(&self, properties: &Properties, instance: &Description) -> Result<Health>;

    /// The health of many instances, in order: what [`FlavorPlugin::healthy`] says of each,
    /// by default. The host asks this of a fast flavor to spare an instantiation per check;
    /// override it when one query answers for many instances (one cloud API call for a page
    /// of machines, one status request to a cluster).
    ///
    /// ```no_run
    /// use infrakit_sdk::*;
    ///
    /// #[derive(Default)]
    /// struct Quorum;
    ///
    /// impl FlavorPlugin for Quorum {
    ///     fn validate(&self, _: &Properties, _: &Allocation) -> Result<()> { Ok(()) }
    ///     fn prepare(&self, _: &Properties, spec: InstanceSpec, _: &Allocation, _: &Index) -> Result<InstanceSpec> {
    ///         Ok(spec)
    ///     }
    ///     fn healthy(&self, p: &Properties, i: &Description) -> Result<Health> {
    ///         self.healthy_many(p, std::slice::from_ref(i)).remove(0)
    ///     }
    ///     fn healthy_many(&self, _: &Properties, instances: &[Description]) -> Vec<Result<Health>> {
    ///         // One request for the members' states, then a verdict per instance.
    ///         instances.iter().map(|_| Ok(Health::Healthy)).collect()
    ///     }
    ///     fn drain(&self, _: &Properties, _: &Description) -> Result<()> { Ok(()) }
    /// }
    /// ```
    fn healthy_many(
        &self,
        properties: &Properties,
        instances: &[Description],
    ) -> Vec<Result<Health>> {
        instances
            .iter()
            .map(|i| self.healthy(properties, i))
            .collect()
    }

    /// Moves work off an instance before it is destroyed. Defaults to nothing to move.
    fn drain(&self, properties: &Properties, instance: &Description) -> Result<()> {
        let _ = (properties, instance);
        Ok(())
    }
}

/// Exports a type implementing [`InstancePlugin`] + `Default` as the plugin of this component.
/// Requires the SDK's `instance` feature; write it once, at the crate root.
///
/// ```no_run
/// # use infrakit_sdk::*;
/// # #[derive(Default)] struct Mine;
/// # impl InstancePlugin for Mine {
/// #     fn validate(&self, _: &Properties) -> Result<()> { Ok(()) }
/// #     fn provision(&self, _: InstanceSpec) -> Result<String> { Ok("x".into()) }
/// #     fn label(&self, _: &str, _: Tags) -> Result<()> { Ok(()) }
/// #     fn destroy(&self, _: &str, _: DestroyContext) -> Result<()> { Ok(()) }
/// #     fn describe(&self, _: &Tags, _: bool) -> Result<Vec<Description>> { Ok(vec![]) }
/// # }
/// infrakit_sdk::export_instance!(Mine);
/// ```
#[macro_export]
macro_rules! export_instance {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            /// Carries the plugin crate's own name, version and description.
            struct __InfrakitMetadata;
            impl $crate::wit::MetadataSource for __InfrakitMetadata {
                const NAME: &'static str = ::core::env!("CARGO_PKG_NAME");
                const VERSION: &'static str = ::core::env!("CARGO_PKG_VERSION");
                const DESCRIPTION: &'static str = ::core::env!("CARGO_PKG_DESCRIPTION");
            }
            type __InfrakitInstanceExport = $crate::wit::InstanceAdapter<$plugin, __InfrakitMetadata>;
            $crate::wit::instance::__export_instance_world!(__InfrakitInstanceExport with_types_in $crate::wit::instance);
        };
    };
}

/// Exports a type implementing [`FlavorPlugin`] + `Default` as the plugin of this component.
/// Requires the SDK's `flavor` feature; write it once, at the crate root.
///
/// ```no_run
/// # use infrakit_sdk::*;
/// # #[derive(Default)] struct Mine;
/// # impl FlavorPlugin for Mine {
/// #     fn validate(&self, _: &Properties, _: &Allocation) -> Result<()> { Ok(()) }
/// #     fn prepare(&self, _: &Properties, s: InstanceSpec, _: &Allocation, _: &Index) -> Result<InstanceSpec> { Ok(s) }
/// #     fn healthy(&self, _: &Properties, _: &Description) -> Result<Health> { Ok(Health::Healthy) }
/// #     fn drain(&self, _: &Properties, _: &Description) -> Result<()> { Ok(()) }
/// # }
/// infrakit_sdk::export_flavor!(Mine);
/// ```
#[macro_export]
macro_rules! export_flavor {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            /// Carries the plugin crate's own name, version and description.
            struct __InfrakitMetadata;
            impl $crate::wit::MetadataSource for __InfrakitMetadata {
                const NAME: &'static str = ::core::env!("CARGO_PKG_NAME");
                const VERSION: &'static str = ::core::env!("CARGO_PKG_VERSION");
                const DESCRIPTION: &'static str = ::core::env!("CARGO_PKG_DESCRIPTION");
            }
            type __InfrakitFlavorExport = $crate::wit::FlavorAdapter<$plugin, __InfrakitMetadata>;
            $crate::wit::flavor::__export_flavor_world!(__InfrakitFlavorExport with_types_in $crate::wit::flavor);
        };
    };
}
