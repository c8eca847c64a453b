//! Plugins: loading WebAssembly components, sandboxing them, and calling them.
//!
//! - [`registry`] finds plugins (built-in and in the plugin directory), compiles them once
//!   (with an on-disk cache), checks their world and reads their metadata.
//! - [`Plugin`] is a loaded plugin; each of its methods is one sandboxed call in a fresh store.
//! - [`sandbox`] builds what a call may touch from the plugin's grants.
//! - `bindings` is the only place that sees generated WIT types.

mod bindings;
pub mod builtin;
pub mod cache;
pub mod combo;
pub mod disk;
pub mod engine;
mod outbound;
pub mod preopens;
pub mod process;
pub mod registry;
pub mod sandbox;
mod signing;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use wasmtime::Store;

pub use crate::model::{
    Allocation, Attachment, Capability, Description, DestroyContext, GuestError, Health, Index,
    InstanceSpec, Metadata, PluginKind, Tags,
};
pub use registry::{Change, Installed, LoadFailure, Registry, RegistryConfig};

use bindings::{FlavorPluginPre, InstancePluginPre};
use sandbox::{Sandbox, State};

/// Where a plugin came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Embedded in the binary.
    Builtin,
    /// A `.wasm` file in the plugin directory.
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Builtin => f.write_str("built-in"),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Why a call did not complete: the plugin misbehaved (as opposed to returning an error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// A wasm trap: a panic, `unreachable`, an out-of-bounds access...
    #[error("trapped: {0}")]
    Trap(String),
    /// Ran past its compute budget (epoch deadline).
    #[error("exceeded its CPU time limit of {}", humantime::format_duration(*.0))]
    CpuDeadline(Duration),
    /// Ran past its wall-clock budget, e.g. blocked on a server that never answers.
    #[error("exceeded its wall-clock limit of {}", humantime::format_duration(*.0))]
    WallClock(Duration),
    /// Tried to grow its memories past the limit.
    #[error("exceeded its memory limit of {}", bytesize::ByteSize(*.0))]
    Memory(u64),
    /// Held more host resources at once than its limit.
    #[error(
        "held more than its limit of {0} host resources at once (open files, HTTP requests, \
         header maps, streams; `limits.resources` of its grant)"
    )]
    Resources(usize),
    /// Answered something the host cannot keep (an instance id that is empty, too long or
    /// holds control characters).
    #[error("answered what the host cannot accept: {0}")]
    BadAnswer(String),
    /// Too many of its earlier calls are still blocked in the kernel past their wall-clock
    /// limit (a FIFO, a hung network filesystem), each holding a host thread.
    #[error(
        "was not called: {0} of its calls are still blocked past their wall-clock limit (e.g. \
         reading a FIFO or a hung network filesystem in a granted directory)"
    )]
    Blocked(usize),
}

/// What went wrong with a plugin, with where: plugin, source, phase.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{path}: cannot read plugin file")]
    Read {
        /// The `.wasm` file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a valid component (corrupt, a core module, a wasm feature we do not enable...).
    #[error("{origin}: not a valid WebAssembly component: {reason}")]
    Compile {
        /// Where the bytes came from.
        origin: Source,
        /// wasmtime's explanation.
        reason: String,
    },
    /// A valid component that is not an infrakit plugin of a known world.
    #[error("{origin}: not an infrakit plugin: {reason}")]
    WrongWorld {
        /// Where it came from.
        origin: Source,
        /// What it exports instead, or which type does not match.
        reason: String,
    },
    /// Imports something the host does not provide.
    #[error("{origin}: cannot be linked: {reason}")]
    Link {
        /// Where it came from.
        origin: Source,
        /// The missing or mismatched import.
        reason: String,
    },
    /// Its grant file is unusable.
    #[error(transparent)]
    Grants(#[from] crate::grants::Error),
    /// Its metadata is unusable (bad name, kind not matching its world, name taken).
    #[error("{origin}: {reason}")]
    Metadata {
        /// Where it came from.
        origin: Source,
        /// What is wrong.
        reason: String,
    },
    /// No plugin of that name is loaded.
    #[error("no plugin named {name:?} (loaded: {known})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names that exist.
        known: String,
    },
    /// A plugin of that name exists but did not load; the reason is its load failure.
    #[error("plugin {name:?} did not load: {reason}")]
    NotLoaded {
        /// The name asked for.
        name: String,
        /// Why it did not load (as `plugin ls` shows it).
        reason: String,
    },
    /// The plugin is still being loaded (compiled, or answering `metadata`); try again soon.
    #[error("plugin {name:?} is still loading")]
    Loading {
        /// The name asked for.
        name: String,
    },
    /// The plugin exists but implements the other SPI.
    #[error("plugin {name} is a {actual} plugin, not a {expected} plugin")]
    WrongKind {
        /// The plugin.
        name: String,
        /// What was needed.
        expected: PluginKind,
        /// What it is.
        actual: PluginKind,
    },
    /// The sandbox for a call could not be set up (e.g. a granted directory is missing).
    #[error("plugin {plugin} ({origin}): cannot set up the sandbox for {export}: {reason}")]
    Sandbox {
        /// The plugin.
        plugin: String,
        /// Where it came from.
        origin: Source,
        /// The call.
        export: &'static str,
        /// Why.
        reason: String,
    },
    /// The call was stopped: the plugin misbehaved. Its instance was thrown away.
    #[error("plugin {plugin} ({origin}): {export} {cause}")]
    Faulted {
        /// The plugin.
        plugin: String,
        /// Where it came from.
        origin: Source,
        /// The export being called.
        export: &'static str,
        /// What happened.
        cause: Fault,
    },
    /// The plugin answered with an error: data for the caller.
    #[error("plugin {plugin}: {export} failed")]
    Guest {
        /// The plugin.
        plugin: String,
        /// The export called.
        export: &'static str,
        /// What it said.
        #[source]
        error: GuestError,
    },
}

impl Error {
    /// The plugin's own error, when this is one.
    pub fn guest_error(&self) -> Option<&GuestError> {
        match self {
            Error::Guest { error, .. } => Some(error),
            _ => None,
        }
    }
}

#[derive(Clone)]
enum Pre {
    Instance(InstancePluginPre<State>),
    Flavor(FlavorPluginPre<State>),
}

enum Bound {
    Instance(bindings::instance_world::InstancePlugin),
    Flavor(bindings::flavor_world::FlavorPlugin),
}

type WitError = bindings::instance_world::infrakit::plugin::types::Error;

/// Counters of a plugin's calls, for metrics.
#[derive(Debug, Default)]
pub struct CallStats {
    /// Calls made.
    pub calls: std::sync::atomic::AtomicU64,
    /// Calls that faulted (trap, deadline, memory).
    pub faults: std::sync::atomic::AtomicU64,
    /// Time spent in calls, instantiation included (ns).
    pub nanos: std::sync::atomic::AtomicU64,
}

/// A loaded plugin. Cheap to share; every call runs in a fresh sandboxed instance.
pub struct Plugin {
    stats: CallStats,
    /// See [`Plugin::check_time`] (ns; 0 before the first check).
    check_nanos: std::sync::atomic::AtomicU64,
    metadata: Metadata,
    sha256: String,
    core: Arc<Core>,
    load: LoadStats,
}

/// How a plugin's component was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// The component's size in bytes.
    pub size: u64,
    /// Time to have it compiled: compiling, or reading the cached artifact.
    pub compile: std::time::Duration,
    /// Whether the compiled artifact came from the cache.
    pub cached: bool,
    /// Which compiler made the code it runs.
    pub tier: Tier,
}

/// Which compiler made a plugin's code. A large component first runs baseline code (fast to
/// compile, slower to run) while its optimised code is compiled in the background.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Tier {
    /// Cranelift, optimising: what every plugin runs in the end.
    #[default]
    Optimized,
    /// Winch, wasmtime's single-pass compiler.
    Baseline,
}

impl Tier {
    /// `optimized` or `baseline`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Optimized => "optimized",
            Tier::Baseline => "baseline",
        }
    }
}

/// What a call needs. Shared with the calls in flight: each runs on a thread of its own and may
/// outlive its caller (one blocked in the kernel past its wall-clock limit).
struct Core {
    engine: wasmtime::Engine,
    pre: Pre,
    sandbox: Sandbox,
    source: Source,
    /// Calls abandoned at their wall-clock limit whose threads are still blocked.
    blocked: AtomicUsize,
}

impl Core {
    fn fault(&self, export: &'static str, cause: Fault) -> Error {
        Error::Faulted {
            plugin: self.sandbox.plugin.to_string(),
            origin: self.source.clone(),
            export,
            cause,
        }
    }
}

/// What a call runs inside its fresh instance. It owns its arguments, so the call can run on a
/// thread of its own.
type Body<R> = Box<
    dyn for<'a> FnOnce(
            &'a mut Store<State>,
            &'a Bound,
        ) -> Pin<
            Box<dyn Future<Output = wasmtime::Result<Result<R, WitError>>> + Send + 'a>,
        > + Send,
>;

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.metadata.name)
            .field("kind", &self.metadata.kind)
            .field("source", &self.core.source)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// How its component was loaded: size, compile (or cache read) time.
    pub fn load_stats(&self) -> LoadStats {
        self.load
    }

    /// Instance or flavor.
    pub fn kind(&self) -> PluginKind {
        self.metadata.kind
    }

    /// What it said about itself when loaded.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Where it came from.
    pub fn source(&self) -> &Source {
        &self.core.source
    }

    /// The sha256 of its component bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Its call counters.
    pub fn stats(&self) -> &CallStats {
        &self.stats
    }

    /// What it was granted.
    pub fn grants(&self) -> &crate::grants::Grants {
        &self.core.sandbox.grants
    }

    /// Its private scratch directory on the host.
    pub fn scratch_dir(&self) -> &std::path::Path {
        &self.core.sandbox.scratch
    }

    /// How many processes the plugin started are running now.
    pub fn running_processes(&self) -> usize {
        if self.core.sandbox.grants.process.executables.is_empty() {
            0
        } else {
            self.core.sandbox.processes.live()
        }
    }

    /// What the plugin asked for in its metadata that its grants do not give it, not even in
    /// part (see [`Plugin::narrowed`]). Such a plugin still loads (asking grants nothing); the
    /// operator sees the gap in `plugin ls`.
    pub fn ungranted(&self) -> Vec<Capability> {
        let grants = &self.core.sandbox.grants;
        let narrowed: Vec<Capability> = self.narrowed().into_iter().map(|(c, _)| c).collect();
        self.metadata
            .capabilities
            .iter()
            .filter(|c| !granted(grants, c) && !narrowed.contains(c))
            .cloned()
            .collect()
    }

    /// What the plugin asked for that is granted only in part, each with what is granted of
    /// it: an HTTP pattern such as `http://127.0.0.1:*` where the grant names one port.
    pub fn narrowed(&self) -> Vec<(Capability, Vec<String>)> {
        let grants = &self.core.sandbox.grants;
        self.metadata
            .capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Http(target) if !granted(grants, c) => {
                    let asked = crate::grants::HttpTarget::parse(target).ok()?;
                    let narrower: Vec<String> = grants
                        .http
                        .narrowings(&asked)
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    (!narrower.is_empty()).then(|| (c.clone(), narrower))
                }
                _ => None,
            })
            .collect()
    }

    fn expect_kind(&self, expected: PluginKind) -> Result<(), Error> {
        if self.kind() == expected {
            Ok(())
        } else {
            Err(Error::WrongKind {
                name: self.name().to_string(),
                expected,
                actual: self.kind(),
            })
        }
    }

    /// Runs one export in a fresh store under the plugin's limits and classifies the outcome.
    async fn run<R: Send + 'static>(
        &self,
        export: &'static str,
        body: Body<R>,
    ) -> Result<R, Error> {
        self.run_timed(export, body).await.0
    }

    /// [`Plugin::run`], and how long the call took on its own thread (instantiation included,
    /// waiting for a thread not): the time a batch of such calls will take, however busy the
    /// machine is with other calls.
    async fn run_timed<R: Send + 'static>(
        &self,
        export: &'static str,
        body: Body<R>,
    ) -> (Result<R, Error>, Duration) {
        let started = std::time::Instant::now();
        let took = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let on_thread = took.clone();
        let work: Work<Result<R, Error>> = Box::new(move |core| {
            Box::pin(async move {
                let t = std::time::Instant::now();
                let outcome = call(&core, export, body).await;
                on_thread.store(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                outcome
            })
        });
        let outcome = run_isolated(&self.core, export, work, Err).await;
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.stats
            .nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if matches!(outcome, Err(Error::Faulted { .. })) {
            self.stats.faults.fetch_add(1, Ordering::Relaxed);
        }
        let took = match took.load(Ordering::Relaxed) {
            // Abandoned at its limit: it took at least that long.
            0 => started.elapsed(),
            n => Duration::from_nanos(n),
        };
        (outcome, took)
    }

    /// The recent time of one health check, instantiation included (an average that favours
    /// the latest; None before the first check).
    pub fn check_time(&self) -> Option<Duration> {
        match self.check_nanos.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    fn record_check_time(&self, per_check: Duration) {
        let new = per_check.as_nanos().max(1) as u64;
        let _ = self
            .check_nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 { new } else { (old * 3 + new) / 4 })
            });
    }

    /// This plugin as an instance plugin: the kind is checked here, once.
    pub fn as_instance(self: &Arc<Self>) -> Result<InstanceClient, Error> {
        self.expect_kind(PluginKind::Instance)?;
        Ok(InstanceClient(self.clone()))
    }

    /// This plugin as a flavor plugin: the kind is checked here, once.
    pub fn as_flavor(self: &Arc<Self>) -> Result<FlavorClient, Error> {
        self.expect_kind(PluginKind::Flavor)?;
        Ok(FlavorClient(self.clone()))
    }
}

/// An instance plugin: the instance SPI. Made by [`Plugin::as_instance`] (or the registry's
/// `instance`), which checks the kind.
#[derive(Clone, Debug)]
pub struct InstanceClient(Arc<Plugin>);

/// A flavor plugin: the flavor SPI. Made by [`Plugin::as_flavor`] (or the registry's
/// `flavor`), which checks the kind.
#[derive(Clone, Debug)]
pub struct FlavorClient(Arc<Plugin>);

impl InstanceClient {
    /// Whether both are the same loaded plugin (not a reloaded one under the same name).
    pub fn same(&self, other: &InstanceClient) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::ops::Deref for InstanceClient {
    type Target = Plugin;
    fn deref(&self) -> &Plugin {
        &self.0
    }
}

impl std::ops::Deref for FlavorClient {
    type Target = Plugin;
    fn deref(&self) -> &Plugin {
        &self.0
    }
}

impl InstanceClient {
    /// Checks instance properties.
    pub async fn validate(&self, properties: &serde_json::Value) -> Result<(), Error> {
        let props = props_text(properties);
        self.run(
            "validate",
            Box::new(move |store, bound| {
                Box::pin(async move { instance_of(bound)?.call_validate(store, &props).await })
            }),
        )
        .await
    }

    /// Provisions an instance; returns its id.
    pub async fn provision(&self, spec: &InstanceSpec) -> Result<String, Error> {
        let spec = bindings::spec_to_wit(spec);
        let id = self
            .run(
                "provision",
                Box::new(move |store, bound| {
                    Box::pin(async move { instance_of(bound)?.call_provision(store, &spec).await })
                }),
            )
            .await?;
        // The id is stored with the group, shown in every listing and event, and passed back
        // to the plugin: it must be a short, printable name.
        let problem = if id.is_empty() {
            Some("an empty instance id".to_string())
        } else if id.len() > MAX_INSTANCE_ID {
            Some(format!(
                "an instance id of {} bytes (at most {MAX_INSTANCE_ID})",
                id.len()
            ))
        } else if id.chars().any(char::is_control) {
            Some(format!(
                "the instance id {:?} with control characters",
                printable(&id)
            ))
        } else {
            None
        };
        match problem {
            Some(p) => Err(self.core.fault("provision", Fault::BadAnswer(p))),
            None => Ok(id),
        }
    }

    /// Merges labels into an instance's tags.
    pub async fn label(&self, id: &str, labels: &Tags) -> Result<(), Error> {
        let labels = bindings::tags_list(labels);
        let id = id.to_string();
        self.run(
            "label",
            Box::new(move |store, bound| {
                Box::pin(async move { instance_of(bound)?.call_label(store, &id, &labels).await })
            }),
        )
        .await
    }

    /// Destroys an instance.
    pub async fn destroy(&self, id: &str, context: DestroyContext) -> Result<(), Error> {
        let context = bindings::destroy_context_to_wit(context);
        let id = id.to_string();
        self.run(
            "destroy",
            Box::new(move |store, bound| {
                Box::pin(async move { instance_of(bound)?.call_destroy(store, &id, context).await })
            }),
        )
        .await
    }

    /// Lists instances carrying all of `tags`.
    pub async fn describe(
        &self,
        tags: &Tags,
        include_properties: bool,
    ) -> Result<Vec<Description>, Error> {
        let tags = bindings::tags_list(tags);
        let found = self
            .run(
                "describe",
                Box::new(move |store, bound| {
                    Box::pin(async move {
                        instance_of(bound)?
                            .call_describe(store, &tags, include_properties)
                            .await
                    })
                }),
            )
            .await?;
        Ok(found
            .into_iter()
            .map(bindings::description_from_wit)
            .collect())
    }
}

impl FlavorClient {
    /// Checks flavor properties against an allocation.
    pub async fn validate(
        &self,
        properties: &serde_json::Value,
        allocation: &Allocation,
    ) -> Result<(), Error> {
        let props = props_text(properties);
        let allocation = bindings::allocation_to_wit(allocation);
        self.run(
            "validate",
            Box::new(move |store, bound| {
                Box::pin(async move {
                    flavor_of(bound)?
                        .call_validate(store, &props, &allocation)
                        .await
                })
            }),
        )
        .await
    }

    /// Lets the flavor shape a spec before it is provisioned.
    pub async fn prepare(
        &self,
        properties: &serde_json::Value,
        spec: &InstanceSpec,
        allocation: &Allocation,
        index: &Index,
    ) -> Result<InstanceSpec, Error> {
        let props = props_text(properties);
        let spec = bindings::spec_to_wit(spec);
        let allocation = bindings::allocation_to_wit(allocation);
        let index = bindings::index_to_wit(index);
        let out = self
            .run(
                "prepare",
                Box::new(move |store, bound| {
                    Box::pin(async move {
                        flavor_of(bound)?
                            .call_prepare(store, &props, &spec, &allocation, &index)
                            .await
                    })
                }),
            )
            .await?;
        Ok(bindings::spec_from_wit(out))
    }

    /// Application-aware health of one instance.
    pub async fn healthy(
        &self,
        properties: &serde_json::Value,
        instance: &Description,
    ) -> Result<Health, Error> {
        let props = props_text(properties);
        let instance = bindings::description_to_wit(instance);
        let (health, took) = self
            .run_timed(
                "healthy",
                Box::new(move |store, bound| {
                    Box::pin(async move {
                        flavor_of(bound)?
                            .call_healthy(store, &props, &instance)
                            .await
                    })
                }),
            )
            .await;
        self.record_check_time(took);
        Ok(bindings::health_from_wit(health?))
    }

    /// [`FlavorClient::healthy`] for many instances in one call (`healthy-many`): a fresh
    /// instance costs more than the check of a fast flavor. If the call faults, fails, or
    /// answers with a list of another length, each instance is asked about on its own, so a
    /// check that traps or loops spoils only its own verdict. Results are in the order of
    /// `instances`.
    pub async fn healthy_many(
        &self,
        properties: &serde_json::Value,
        instances: &[&Description],
    ) -> Vec<Result<Health, Error>> {
        if instances.len() == 1 {
            return vec![self.healthy(properties, instances[0]).await];
        }
        let props = props_text(properties);
        let wit: Vec<_> = instances
            .iter()
            .map(|d| bindings::description_to_wit(d))
            .collect();
        let n = instances.len();
        let (batch, took) = self
            .run_timed(
                "healthy-many",
                Box::new(move |store, bound| {
                    Box::pin(async move {
                        let verdicts = flavor_of(bound)?
                            .call_healthy_many(store, &props, &wit)
                            .await?;
                        Ok(Ok(verdicts))
                    })
                }),
            )
            .await;
        match batch {
            Ok(verdicts) if verdicts.len() == n => {
                self.record_check_time(took / n as u32);
                verdicts
                    .into_iter()
                    .map(|v| {
                        v.map(bindings::health_from_wit).map_err(|e| Error::Guest {
                            plugin: self.name().to_string(),
                            export: "healthy-many",
                            error: bindings::error_from_wit(e),
                        })
                    })
                    .collect()
            }
            other => {
                let why = match other {
                    Ok(v) => format!("{} verdicts for {n} instances", v.len()),
                    Err(e) => crate::error_chain(&e),
                };
                tracing::warn!(plugin = %self.name(), instances = n, error = %why, "a batched health check failed; checking each instance on its own");
                let mut out = Vec::with_capacity(n);
                for d in instances {
                    out.push(self.healthy(properties, d).await);
                }
                out
            }
        }
    }

    /// Moves work off an instance before it is destroyed.
    pub async fn drain(
        &self,
        properties: &serde_json::Value,
        instance: &Description,
    ) -> Result<(), Error> {
        let props = props_text(properties);
        let instance = bindings::description_to_wit(instance);
        self.run(
            "drain",
            Box::new(move |store, bound| {
                Box::pin(
                    async move { flavor_of(bound)?.call_drain(store, &props, &instance).await },
                )
            }),
        )
        .await
    }
}

fn granted(grants: &crate::grants::Grants, capability: &Capability) -> bool {
    match capability {
        Capability::Files {
            guest_path,
            writable,
        } => {
            guest_path.trim_end_matches('/') == sandbox::SCRATCH_GUEST_PATH
                || grants.files.iter().any(|f| {
                    f.guest.trim_end_matches('/') == guest_path.trim_end_matches('/')
                        && (!writable || f.mode == crate::grants::Mode::ReadWrite)
                })
        }
        Capability::Http(target) => {
            crate::grants::HttpTarget::parse(target).is_ok_and(|asked| grants.http.admits(&asked))
        }
        Capability::Config(key) => grants.config.contains_key(key),
    }
}

/// Text from a plugin made safe for terminals and logs: control characters (newlines that would
/// forge log lines, ANSI escapes that would rewrite a terminal) are shown escaped, as `\n` or
/// `\u{1b}`.
pub(crate) fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// Collapses a multi-line message (wasmtime prints some byte dumps over many lines).
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One instance kept alive across calls. The host never does this (every call gets a fresh
/// instance, so a fault cannot leak into the next); it exists so the benchmarks can measure
/// the cost of a call alone, without instantiation.
#[doc(hidden)]
pub struct LiveInstance {
    store: Store<State>,
    bound: bindings::instance_world::InstancePlugin,
    cpu_ticks: u64,
}

impl InstanceClient {
    #[doc(hidden)]
    pub async fn live_instance(&self) -> Result<LiveInstance, Error> {
        let core = &self.core;
        let fail = |reason: String| Error::Sandbox {
            plugin: self.name().to_string(),
            origin: core.source.clone(),
            export: "instantiate",
            reason,
        };
        let state = State::new(&core.sandbox).map_err(|e| fail(format!("{e:#}")))?;
        let mut store = Store::new(&core.engine, state);
        store.limiter(|s| &mut s.limiter);
        let cpu_ticks = deadline_ticks(core.sandbox.grants.limits.cpu);
        store.set_epoch_deadline(cpu_ticks);
        let bound = match &core.pre {
            Pre::Instance(p) => p
                .instantiate_async(&mut store)
                .await
                .map_err(|e| fail(format!("{e:#}")))?,
            Pre::Flavor(_) => return Err(fail("not an instance plugin".into())),
        };
        Ok(LiveInstance {
            store,
            bound,
            cpu_ticks,
        })
    }
}

impl LiveInstance {
    #[doc(hidden)]
    pub async fn describe(&mut self, tags: &Tags) -> Result<usize, String> {
        self.store.set_epoch_deadline(self.cpu_ticks);
        let tags = bindings::tags_list(tags);
        match self
            .bound
            .infrakit_plugin_instance()
            .call_describe(&mut self.store, &tags, false)
            .await
        {
            Ok(Ok(found)) => Ok(found.len()),
            Ok(Err(e)) => Err(bindings::error_from_wit(e).to_string()),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    #[doc(hidden)]
    pub async fn provision(&mut self, spec: &InstanceSpec) -> Result<String, String> {
        self.store.set_epoch_deadline(self.cpu_ticks);
        let spec = bindings::spec_to_wit(spec);
        match self
            .bound
            .infrakit_plugin_instance()
            .call_provision(&mut self.store, &spec)
            .await
        {
            Ok(Ok(id)) => Ok(id),
            Ok(Err(e)) => Err(bindings::error_from_wit(e).to_string()),
            Err(e) => Err(format!("{e:#}")),
        }
    }
}

fn props_text(value: &serde_json::Value) -> String {
    if value.is_null() {
        "{}".to_string()
    } else {
        value.to_string()
    }
}

type InstanceGuest = bindings::instance_world::exports::infrakit::plugin::instance::Guest;
type FlavorGuest = bindings::flavor_world::exports::infrakit::plugin::flavor::Guest;

/// The instance exports of a bound component. The clients check the kind before any call, so
/// a mismatch is a host bug; it fails the call rather than the process.
fn instance_of(bound: &Bound) -> wasmtime::Result<&InstanceGuest> {
    match bound {
        Bound::Instance(b) => Ok(b.infrakit_plugin_instance()),
        Bound::Flavor(_) => Err(wasmtime::Error::msg("an instance call on a flavor plugin")),
    }
}

fn flavor_of(bound: &Bound) -> wasmtime::Result<&FlavorGuest> {
    match bound {
        Bound::Flavor(b) => Ok(b.infrakit_plugin_flavor()),
        Bound::Instance(_) => Err(wasmtime::Error::msg("a flavor call on an instance plugin")),
    }
}

/// Epoch ticks for a CPU budget, rounded up, plus one so a budget is never cut short by the
/// phase of the ticker.
fn deadline_ticks(cpu: Duration) -> u64 {
    cpu.as_nanos().div_ceil(engine::EPOCH_TICK.as_nanos()) as u64 + 1
}

/// Counts the CPU budget in epoch ticks spent executing guest code, yielding to the executor at
/// every tick. A guest that loops is then preempted every 10 ms instead of holding its worker
/// thread for its whole budget (which stalled the API and other plugins' calls), and time the
/// call spends blocked in host I/O is not charged as CPU (the wall-clock limit covers that).
fn meter_cpu(store: &mut Store<State>, cpu: Duration) {
    store.data_mut().cpu_ticks_left = deadline_ticks(cpu);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut cx| {
        let state = cx.data_mut();
        if state.cpu_ticks_left <= 1 {
            return Ok(wasmtime::UpdateDeadline::Interrupt);
        }
        state.cpu_ticks_left -= 1;
        Ok(wasmtime::UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    });
}

/// Longest instance id the host accepts from a plugin.
const MAX_INSTANCE_ID: usize = 512;

/// A call still running this long after its wall-clock limit is abandoned by its caller: its
/// own timer could not fire, so its thread is blocked in the kernel.
const WALL_GRACE: Duration = Duration::from_millis(250);

/// Calls of one plugin that may be abandoned while still blocked, each holding a host thread,
/// before further calls are refused (so a plugin cannot pile up threads call after call).
const MAX_BLOCKED_CALLS: usize = 4;

/// How much less CPU priority plugin threads get than the daemon's own (a `nice` value). At 5
/// a plugin thread weighs a third of a daemon thread: `status` next to 4 looping plugins went
/// from 3.8 ms to 0.56 ms (release bench, 2 cores). At 10 (a tenth) the same held, but the
/// daemon's own background work (events, store) starved the health checks of a first pass
/// over 10,000 instances (94 ms became 455 ms).
const PLUGIN_NICENESS: i32 = 5;

/// The runtime whose threads run guest code: its own, at a lower CPU priority, so that plugins
/// spinning on every core still leave the API and the controller (on the caller's runtime) the
/// CPU they need. Linux keeps the nice value per thread.
fn plugin_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1024)
            .thread_name("infrakit-plugin")
            .on_thread_start(|| {
                let tid = rustix::thread::gettid();
                if let Err(e) = rustix::process::setpriority_process(Some(tid), PLUGIN_NICENESS) {
                    tracing::debug!(error = %e, "plugin thread keeps the daemon's CPU priority");
                }
            })
            .enable_all()
            .build()
            .expect("a runtime for plugin calls")
    })
}

/// Runs one call on a thread of the plugins' blocking pool, never on a worker of the caller's runtime:
/// guest code and the file I/O it does on its own thread (a FIFO, a hung network filesystem)
/// can then never hold up the API or the controller. The wall-clock limit is enforced twice:
/// inside the call by its own timer, and here, by the caller's runtime, which a thread blocked
/// in a system call cannot hold up.
async fn run_isolated<T: Send + 'static>(
    core: &Arc<Core>,
    export: &'static str,
    work: Work<T>,
    fail: impl Fn(Error) -> T,
) -> T {
    const RUNNING: u8 = 0;
    const DONE: u8 = 1;
    const ABANDONED: u8 = 2;
    let blocked = core.blocked.load(Ordering::SeqCst);
    if blocked >= MAX_BLOCKED_CALLS {
        return fail(core.fault(export, Fault::Blocked(blocked)));
    }
    let wall = core.sandbox.grants.limits.wall;
    let state = Arc::new(AtomicU8::new(RUNNING));
    let task = {
        let core = core.clone();
        let state = state.clone();
        let runtime = plugin_runtime().handle().clone();
        runtime.clone().spawn_blocking(move || {
            let outcome = runtime.block_on(work(core.clone()));
            if state
                .compare_exchange(RUNNING, DONE, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                // Abandoned at its limit, and now unblocked: its thread is free again.
                core.blocked.fetch_sub(1, Ordering::SeqCst);
            }
            outcome
        })
    };
    match tokio::time::timeout(wall + WALL_GRACE, task).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(join)) => fail(core.fault(
            export,
            Fault::Trap(format!("the host's thread for the call failed: {join}")),
        )),
        Err(_) => {
            core.blocked.fetch_add(1, Ordering::SeqCst);
            if state
                .compare_exchange(RUNNING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                tracing::warn!(
                    plugin = %core.sandbox.plugin,
                    export,
                    "call blocked in the kernel past its wall-clock limit; abandoned on its thread"
                );
            } else {
                // It finished just now; nothing is left blocked.
                core.blocked.fetch_sub(1, Ordering::SeqCst);
            }
            fail(core.fault(export, Fault::WallClock(wall)))
        }
    }
}

/// What runs on a call's own thread: one call, or a batch.
type Work<T> = Box<dyn FnOnce(Arc<Core>) -> Pin<Box<dyn Future<Output = T> + Send>> + Send>;

/// A fresh store, metered and limited, for one instance.
fn new_store(core: &Core, export: &'static str) -> Result<Store<State>, Error> {
    let sandbox = &core.sandbox;
    let state = State::new(sandbox).map_err(|e| Error::Sandbox {
        plugin: sandbox.plugin.to_string(),
        origin: core.source.clone(),
        export,
        reason: format!("{e:#}"),
    })?;
    let mut store = Store::new(&core.engine, state);
    store.limiter(|s| &mut s.limiter);
    meter_cpu(&mut store, sandbox.grants.limits.cpu);
    Ok(store)
}

async fn instantiate(core: &Core, store: &mut Store<State>) -> wasmtime::Result<Bound> {
    Ok(match &core.pre {
        Pre::Instance(p) => Bound::Instance(p.instantiate_async(store).await?),
        Pre::Flavor(p) => Bound::Flavor(p.instantiate_async(store).await?),
    })
}

/// What a call's outcome means: the value, the guest's own error, or a fault (which one, from
/// the store's state).
fn classify<R>(
    core: &Core,
    export: &'static str,
    outcome: Result<wasmtime::Result<Result<R, WitError>>, tokio::time::error::Elapsed>,
    state: &State,
) -> Result<R, Error> {
    let limits = core.sandbox.grants.limits;
    match outcome {
        Err(_elapsed) => Err(core.fault(export, Fault::WallClock(limits.wall))),
        Ok(Err(_)) if state.setup_failed.is_some() => Err(Error::Sandbox {
            plugin: core.sandbox.plugin.to_string(),
            origin: core.source.clone(),
            export,
            reason: state.setup_failed.clone().unwrap_or_default(),
        }),
        Ok(Err(trap)) => {
            let cause = if state.limiter.exceeded.is_some() {
                Fault::Memory(limits.memory)
            } else if trap.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
                Fault::CpuDeadline(limits.cpu)
            } else if trap.chain().any(|e| {
                e.downcast_ref::<wasmtime::component::ResourceTableError>()
                    .is_some()
            }) {
                Fault::Resources(limits.resources)
            } else {
                Fault::Trap(describe_trap(&trap, &state.stderr.contents()))
            };
            Err(core.fault(export, cause))
        }
        Ok(Ok(Err(guest))) => Err(Error::Guest {
            plugin: core.sandbox.plugin.to_string(),
            export,
            error: bindings::error_from_wit(guest),
        }),
        Ok(Ok(Ok(value))) => Ok(value),
    }
}

/// One sandboxed call: fresh state and store, instantiate, run `body`, classify the outcome.
async fn call<R>(core: &Core, export: &'static str, body: Body<R>) -> Result<R, Error> {
    let mut store = new_store(core, export)?;
    let wall = core.sandbox.grants.limits.wall;
    let run = async {
        let bound = instantiate(core, &mut store).await?;
        body(&mut store, &bound).await
    };
    let outcome = tokio::time::timeout(wall, run).await;
    let state = store.data();
    sandbox::flush_output(&core.sandbox.plugin, &state.stdout, &state.stderr);
    classify(core, export, outcome, state)
}

/// The trap's first line, plus the guest's panic message when it printed one: a Rust guest
/// panics by writing to stderr and then trapping on `unreachable`.
fn describe_trap(trap: &wasmtime::Error, stderr: &[u8]) -> String {
    let trap_text = format!("{trap:#}");
    let mut first = trap_text.lines().next().unwrap_or("").trim().to_string();
    // With a wasm backtrace the first line is only its header; the cause is the innermost
    // error (`wasm trap: call stack exhausted`, say).
    if first.starts_with("error while executing") {
        let root = trap.root_cause().to_string();
        first = root.lines().next().unwrap_or("").trim().to_string();
    }
    let stderr = String::from_utf8_lossy(stderr);
    match stderr.lines().find(|l| l.contains("panicked at")).map(|l| {
        let rest: Vec<&str> = stderr.lines().skip_while(|x| *x != l).take(2).collect();
        rest.join(" ")
    }) {
        Some(panic) => format!("{first} ({panic})"),
        None => first,
    }
}

/// Binds a component to the world it exports and reads its metadata in a throwaway instance;
/// the plugin built from them.
async fn bind(
    engine: &wasmtime::Engine,
    linker: &wasmtime::component::Linker<State>,
    component: &wasmtime::component::Component,
    source: &Source,
    sandbox: Sandbox,
    sha256: String,
    metadata_cache: Option<PathBuf>,
) -> Result<Plugin, Error> {
    let exports: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let instance_pre = linker.instantiate_pre(component).map_err(|e| Error::Link {
        origin: source.clone(),
        reason: format!("{e:#}"),
    })?;
    let wrong = |reason: String| Error::WrongWorld {
        origin: source.clone(),
        reason,
    };
    let pre = if exports.iter().any(|e| e == bindings::INSTANCE_EXPORT) {
        Pre::Instance(InstancePluginPre::new(instance_pre).map_err(|e| {
            wrong(format!(
                "its `{}` export does not match: {e:#}",
                bindings::INSTANCE_EXPORT
            ))
        })?)
    } else if exports.iter().any(|e| e == bindings::FLAVOR_EXPORT) {
        Pre::Flavor(FlavorPluginPre::new(instance_pre).map_err(|e| {
            wrong(format!(
                "its `{}` export does not match: {e:#}",
                bindings::FLAVOR_EXPORT
            ))
        })?)
    } else {
        let found = if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports.join(", ")
        };
        return Err(wrong(format!(
            "it exports {found}, but a plugin exports `{}` (world instance-plugin) or `{}` (world flavor-plugin)",
            bindings::INSTANCE_EXPORT,
            bindings::FLAVOR_EXPORT
        )));
    };

    let cached: Option<Metadata> = metadata_cache
        .as_deref()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let from_cache = cached.is_some();
    if from_cache {
        tracing::debug!(plugin = %sandbox.plugin, "metadata read from the cache");
    }
    let metadata = match cached {
        Some(m) => m,
        None => {
            // Loading waits for this call (a passive command loads every plugin first), so it
            // runs under the plugin's short `metadata` limit, not its per-call ones.
            let mut grants = (*sandbox.grants).clone();
            let limit = grants.limits.metadata;
            grants.limits.cpu = grants.limits.cpu.min(limit);
            grants.limits.wall = grants.limits.wall.min(limit);
            let probe = Arc::new(Core {
                engine: engine.clone(),
                pre: pre.clone(),
                sandbox: Sandbox {
                    grants: Arc::new(grants),
                    ..sandbox.clone()
                },
                source: source.clone(),
                blocked: AtomicUsize::new(0),
            });
            let body: Body<_> = Box::new(|store, bound| {
                Box::pin(async move {
                    let m = match bound {
                        Bound::Instance(b) => {
                            b.infrakit_plugin_instance().call_metadata(store).await?
                        }
                        Bound::Flavor(b) => b.infrakit_plugin_flavor().call_metadata(store).await?,
                    };
                    Ok(Ok::<_, WitError>(m))
                })
            });
            let work: Work<Result<_, Error>> =
                Box::new(move |core| Box::pin(async move { call(&core, "metadata", body).await }));
            let metadata = run_isolated(&probe, "metadata", work, Err).await?;
            bindings::metadata_from_wit(metadata)
        }
    };
    let core = Arc::new(Core {
        engine: engine.clone(),
        pre,
        sandbox,
        source: source.clone(),
        blocked: AtomicUsize::new(0),
    });
    let world_kind = match core.pre {
        Pre::Instance(_) => PluginKind::Instance,
        Pre::Flavor(_) => PluginKind::Flavor,
    };
    if metadata.kind != world_kind {
        return Err(Error::Metadata {
            origin: source.clone(),
            reason: format!(
                "its metadata says kind {} but it implements the {world_kind} world",
                metadata.kind
            ),
        });
    }
    if !from_cache && let Some(path) = &metadata_cache {
        // Best effort: without it the next load asks again.
        let written = serde_json::to_vec(&metadata)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path))
            });
        if let Err(e) = written {
            tracing::debug!(path = %path.display(), error = %e, "metadata not cached");
        }
    }
    Ok(Plugin {
        stats: CallStats::default(),
        check_nanos: std::sync::atomic::AtomicU64::new(0),
        metadata,
        sha256,
        core,
        load: LoadStats::default(),
    })
}
