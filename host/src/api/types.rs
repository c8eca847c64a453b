//! What crosses the control API, in both directions: the handlers answer with these types, the
//! CLI reads them back, and the OpenAPI document shows their schemas. Nothing between our own
//! parts travels as untyped JSON.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::controller::GroupStatus;
use crate::plan::Plan;
use crate::plugin::{Capability, PluginKind, Registry};
use crate::spec::GroupSpec;
use crate::store::Lifecycle;

/// An error answer: what was wrong, and where.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What was wrong, and where.
    pub error: String,
}

/// Daemon status.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusResponse {
    /// infrakit's version.
    pub version: String,
    /// The daemon's process id.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// The data directory.
    pub data_dir: String,
    /// Managed groups (absent when the store did not answer within a second).
    pub groups: Option<usize>,
    /// Loaded plugins.
    pub plugins: usize,
    /// Plugin files that failed to load.
    pub plugin_failures: usize,
    /// The sequence number of the newest event (follow from here with `/v1/events?after=`;
    /// absent when the store did not answer within a second).
    pub last_event: Option<u64>,
    /// Why the store did not answer (etcd without quorum, unreachable).
    pub store_error: Option<String>,
    /// Where durable state lives (a redb file, or etcd endpoints and prefix).
    pub store: String,
    /// With several managers on etcd: this one's role, the current leader, the lease.
    pub leadership: Option<crate::leader::Leadership>,
}

/// A group as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupView {
    /// The group id.
    pub id: String,
    /// The revision of its current spec.
    pub revision: u64,
    /// Managed or being destroyed.
    pub lifecycle: Lifecycle,
    /// The current spec.
    pub spec: GroupSpec,
    /// Where it stands as of its last pass (absent until the controller has taken it up).
    #[serde(default)]
    pub status: Option<GroupStatus>,
}

/// The answer to a commit or a rollback.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CommitResponse {
    /// The group id.
    pub id: String,
    /// Whether the spec was stored and is being applied (false for a dry run).
    pub committed: bool,
    /// The new revision, when committed.
    #[serde(default)]
    pub revision: Option<u64>,
    /// The configuration hash of the spec.
    pub config_sha: String,
    /// What reconciling it does next, as of now (a preview; absent when it could not be made).
    #[serde(default)]
    pub plan: Option<Plan>,
    /// Why there is no preview (observing the group failed, e.g. its plugin's API is down).
    /// The commit went through all the same: the controller retries.
    #[serde(default)]
    pub plan_error: Option<String>,
}

/// Instances of a group to remove (`destroy-instances`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DestroyInstancesRequest {
    /// Instance ids, as `group describe` shows them (1 to 1,000).
    #[schema(min_items = 1, max_items = 1000)]
    pub instances: Vec<String>,
    /// Shrink the group by as many (a new revision; pets lose their logical ids) instead of
    /// replacing them.
    #[serde(default)]
    pub decrement: bool,
}

/// Instances of a group to protect or unprotect.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstancesRequest {
    /// Instance ids, as `group describe` shows them (1 to 1,000).
    #[schema(min_items = 1, max_items = 1000)]
    pub instances: Vec<String>,
}

/// The answer to `destroy-instances`, `protect` and `unprotect`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InstancesChanged {
    /// The group id.
    pub id: String,
    /// The instances concerned.
    pub instances: Vec<String>,
    /// The new revision, when the group shrank.
    #[serde(default)]
    pub revision: Option<u64>,
    /// The group's size after the change.
    pub size: usize,
}

/// The answer to `free`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Freed {
    /// The group no longer managed.
    pub freed: String,
}

/// The answer to `destroy`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Destroying {
    /// The group being destroyed.
    pub destroying: String,
}

/// Query of a commit.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CommitQuery {
    /// Only show the plan; store nothing, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Query of the event log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events with a sequence number above this.
    #[serde(default)]
    pub after: u64,
    /// Only events of this group.
    pub group: Option<String>,
    /// Keep the response open and stream new events as they happen (until the daemon stops).
    #[serde(default)]
    pub follow: bool,
    /// At most this many past events (default 1000; the log keeps the last 100,000).
    #[param(maximum = 100000)]
    pub limit: Option<u32>,
    /// The newest this many past events (of `group`, when given) instead of the oldest after
    /// `after`.
    #[param(maximum = 100000)]
    pub tail: Option<u32>,
    /// Only events recorded at or after this time (Unix ms).
    pub since_ms: Option<u64>,
}

/// Whether a plugin is in service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PluginState {
    /// Loaded and in service.
    Ok,
    /// Being compiled or asked for its metadata.
    Loading,
    /// The file could not be loaded.
    Error,
}

/// One row of `plugin ls`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PluginRow {
    /// The plugin's name.
    pub name: String,
    /// In service, loading, or failed.
    pub status: PluginState,
    /// Instance or flavor (when loaded).
    #[serde(default)]
    pub kind: Option<PluginKind>,
    /// Its version (when loaded).
    #[serde(default)]
    pub version: Option<String>,
    /// Built-in, or the file it came from.
    pub source: String,
    /// The digest of the component in service (absent for a file that failed to load).
    #[serde(default)]
    pub sha256: Option<String>,
    /// One line about it.
    #[serde(default)]
    pub description: Option<String>,
    /// What it asks for.
    #[serde(default)]
    pub capabilities: Option<Vec<Capability>>,
    /// What it asks for and was not granted.
    #[serde(default)]
    pub not_granted: Option<Vec<Capability>>,
    /// What it asks for and was granted only in part: `ASKED -> GRANTED[, GRANTED...]`.
    #[serde(default)]
    pub narrowed: Option<Vec<String>>,
    /// The component's size in bytes.
    #[serde(default)]
    pub size: Option<u64>,
    /// Time to have it compiled when it was loaded (ms): compiling, or reading the cache.
    #[serde(default)]
    pub compile_ms: Option<u64>,
    /// Whether the compiled artifact came from the cache.
    #[serde(default)]
    pub cached: Option<bool>,
    /// Which compiler made the code it runs: `optimized`, or `baseline` while a large
    /// component's optimised code is compiled in the background.
    #[serde(default)]
    pub code: Option<String>,
    /// Why it failed to load.
    #[serde(default)]
    pub error: Option<String>,
}

/// One plugin in detail: what it says, what it asked for, what it was granted.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PluginDetail {
    /// The plugin's name.
    pub name: String,
    /// Instance or flavor.
    pub kind: PluginKind,
    /// Its version.
    pub version: String,
    /// One line about it.
    pub description: String,
    /// What it asks for.
    pub capabilities: Vec<Capability>,
    /// What it asks for and was not granted.
    pub not_granted: Vec<Capability>,
    /// What it asks for and was granted only in part: `ASKED -> GRANTED[, GRANTED...]`.
    #[serde(default)]
    pub narrowed: Vec<String>,
    /// Built-in, or the file it came from.
    pub source: String,
    /// The digest of the component in service.
    pub sha256: String,
    /// Its private directory on the host (`/data` to the plugin).
    pub scratch_dir: String,
    /// What it was granted.
    pub granted: GrantedView,
}

/// A plugin's grants, for people.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GrantedView {
    /// `host -> guest (ro|rw)` per directory.
    pub files: Vec<String>,
    /// Allowed outbound HTTP targets.
    pub http: Vec<String>,
    /// Whether private and loopback addresses are refused.
    pub block_private: bool,
    /// `http://NAME -> /path/to.sock` per granted unix socket.
    #[serde(default)]
    pub http_unix: Vec<String>,
    /// One line per request rule: the target, the requests it admits and its body constraints.
    #[serde(default)]
    pub http_rules: Vec<String>,
    /// One line per signed target: how, and whose credentials (never the secret).
    #[serde(default)]
    pub http_signed: Vec<String>,
    /// Executables the plugin may start as local processes, with the limit on how many run.
    #[serde(default)]
    pub process: Vec<String>,
    /// Processes the plugin started that are running now.
    #[serde(default)]
    pub processes_running: usize,
    /// Configuration keys.
    pub config: Vec<String>,
    /// Environment variables.
    pub env: Vec<String>,
    /// Limits per call.
    pub limits: LimitsView,
}

/// Limits per call.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LimitsView {
    /// Bytes over all linear memories.
    pub memory: u64,
    /// Compute time, e.g. `5s`.
    pub cpu: String,
    /// Wall-clock time, e.g. `30s`.
    pub wall: String,
    /// Largest HTTP response body, in bytes.
    pub http_response: u64,
    /// Time for the `metadata` call at load, e.g. `5s`.
    #[serde(default)]
    pub metadata: String,
    /// Host resources (open files, HTTP requests, header maps...) a call may hold at once.
    #[serde(default)]
    pub resources: usize,
    /// Bytes its writable directories (scratch and read-write grants) may hold.
    #[serde(default)]
    pub disk: u64,
    /// Files, directories and links they may hold.
    #[serde(default)]
    pub disk_entries: u64,
}

/// What a plugin was granted in part, as `ASKED -> GRANTED, ...` lines.
fn narrowed_lines(plugin: &crate::plugin::Plugin) -> Vec<String> {
    plugin
        .narrowed()
        .into_iter()
        .map(|(asked, granted)| format!("{asked} -> {}", granted.join(", ")))
        .collect()
}

/// `plugin ls`: loaded plugins, then those loading, then files that failed (when an earlier
/// version stays in service, both appear).
pub fn plugin_rows(registry: &Registry) -> Vec<PluginRow> {
    let mut rows: Vec<PluginRow> = registry
        .plugins()
        .iter()
        .map(|p| PluginRow {
            name: p.name().to_string(),
            status: PluginState::Ok,
            kind: Some(p.kind()),
            version: Some(p.metadata().version.clone()),
            source: p.source().to_string(),
            sha256: Some(p.sha256().to_string()),
            description: Some(p.metadata().description.clone()),
            capabilities: Some(p.metadata().capabilities.clone()),
            not_granted: Some(p.ungranted()),
            narrowed: Some(narrowed_lines(p)),
            size: Some(p.load_stats().size),
            compile_ms: Some(p.load_stats().compile.as_millis() as u64),
            cached: Some(p.load_stats().cached),
            code: Some(p.load_stats().tier.as_str().to_string()),
            error: None,
        })
        .collect();
    let loaded: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    let bare = |name: String, status, source: String, error| PluginRow {
        name,
        status,
        kind: None,
        version: None,
        source,
        sha256: None,
        description: None,
        capabilities: None,
        not_granted: None,
        narrowed: None,
        size: None,
        compile_ms: None,
        cached: None,
        code: None,
        error,
    };
    rows.extend(
        registry
            .loading()
            .into_iter()
            .filter(|n| !loaded.contains(n))
            .map(|name| bare(name, PluginState::Loading, String::new(), None)),
    );
    rows.extend(registry.failures().iter().map(|f| {
        let error = if f.previous_kept {
            format!("{} (the previous version stays in service)", f.message)
        } else {
            f.message.clone()
        };
        bare(
            f.name.clone(),
            PluginState::Error,
            f.path.display().to_string(),
            Some(error),
        )
    }));
    rows
}

/// `plugin inspect`. A plugin that failed to load is named with why.
pub fn plugin_detail(registry: &Registry, name: &str) -> Result<PluginDetail, String> {
    let plugin = match registry.get(name) {
        Ok(p) => p,
        Err(e) => {
            return Err(match registry.failures().iter().find(|f| f.name == name) {
                Some(f) => format!("plugin {name} is not loaded: {}", f.message),
                None => crate::error_chain(&e),
            });
        }
    };
    let g = plugin.grants();
    let mode = |m: crate::grants::Mode| match m {
        crate::grants::Mode::ReadOnly => "ro",
        crate::grants::Mode::ReadWrite => "rw",
    };
    let meta = plugin.metadata();
    Ok(PluginDetail {
        // The registry's name, not the one the plugin gives itself.
        name: plugin.name().to_string(),
        kind: meta.kind,
        version: meta.version.clone(),
        description: meta.description.clone(),
        capabilities: meta.capabilities.clone(),
        not_granted: plugin.ungranted(),
        narrowed: narrowed_lines(&plugin),
        source: plugin.source().to_string(),
        sha256: plugin.sha256().to_string(),
        scratch_dir: plugin.scratch_dir().display().to_string(),
        granted: GrantedView {
            files: g
                .files
                .iter()
                .map(|f| format!("{} -> {} ({})", f.host.display(), f.guest, mode(f.mode)))
                .collect(),
            http: g.http.allow.iter().map(ToString::to_string).collect(),
            block_private: g.http.block_private,
            http_unix: g
                .http
                .unix
                .iter()
                .map(|(name, path)| format!("http://{name} -> {}", path.display()))
                .collect(),
            http_rules: g.http.rules.iter().map(ToString::to_string).collect(),
            http_signed: g.http.sign.iter().map(ToString::to_string).collect(),
            process: crate::plugin::process::describe(g),
            processes_running: plugin.running_processes(),
            config: g.config.keys().cloned().collect(),
            env: g.env.keys().cloned().collect(),
            limits: LimitsView {
                memory: g.limits.memory,
                cpu: humantime::format_duration(g.limits.cpu).to_string(),
                wall: humantime::format_duration(g.limits.wall).to_string(),
                http_response: g.limits.http_response,
                metadata: humantime::format_duration(g.limits.metadata).to_string(),
                resources: g.limits.resources,
                disk: g.limits.disk,
                disk_entries: g.limits.disk_entries,
            },
        },
    })
}
