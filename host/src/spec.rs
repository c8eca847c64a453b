//! Group specs: what a user declares. JSON or YAML, compatible with InfraKit's group JSON
//! (`{"ID", "Properties": {"Allocation", "Instance", "Flavor"}}`) plus our optional `Updating`,
//! `Health` and `Drain` sections. Parsing is strict: an unknown field, a wrong type or a missing
//! plugin name is an error naming the file, the field path and the accepted form.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::Allocation;

/// A spec that cannot be used, and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{file}: cannot read spec")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Syntax, an unknown field or a wrong type.
    #[error("{file}: {}{position}: {message}", at_field(field))]
    Parse {
        /// The file (or `<stdin>`, `<request>`).
        file: String,
        /// The field path, e.g. `Properties.Allocation.Size`; empty for the document.
        field: String,
        /// ` (line L, column C)` when known.
        position: String,
        /// What is wrong and, where serde knows it, what is accepted.
        message: String,
    },
    /// Well-formed but not acceptable.
    #[error("{file}: {}: {message}", at_field(field))]
    Invalid {
        /// The file.
        file: String,
        /// The field path.
        field: String,
        /// What is wrong and the accepted form.
        message: String,
    },
}

fn at_field(field: &str) -> String {
    if field.is_empty() || field == "." {
        "the document".to_string()
    } else {
        format!("at `{field}`")
    }
}

/// A duration written as text: `"500ms"`, `"30s"`, `"5m"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "{text:?} is not a duration ({e}); write e.g. \"500ms\", \"30s\", \"5m\""
                ))
            })
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // Exactly what the parser takes (up to four terms of at most nine digits, which cannot
        // overflow), so that a request valid by the schema is never refused as unparsable.
        let term = format!(" *[0-9]{{1,9}} *({})", DURATION_UNITS.join("|"));
        schemars::json_schema!({
            "type": "string",
            "description": "A duration such as \"500ms\", \"30s\", \"5m\" or \"1h 30m\".",
            "pattern": format!("^{term}({term}){{0,3}} *$")
        })
    }
}

/// In the OpenAPI document a spec is its JSON Schema (from schemars, the one source): this
/// names it there, and the API puts the schema in place when it builds the document.
impl utoipa::PartialSchema for GroupSpec {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::Object::new().into()
    }
}

impl utoipa::ToSchema for GroupSpec {
    fn name() -> std::borrow::Cow<'static, str> {
        "GroupSpec".into()
    }
}

/// Group and logical ids (what [`valid_id`] accepts).
const ID_PATTERN: &str = r"^(?!\.\.?$)[A-Za-z0-9_.-]{1,63}$";

/// The units humantime reads, longest first.
const DURATION_UNITS: &[&str] = &[
    "nanos", "nsec", "ns", "usec", "us", "µs", "millis", "msec", "ms", "seconds", "second", "secs",
    "sec", "s", "minutes", "minute", "mins", "min", "m", "hours", "hour", "hrs", "hr", "h", "days",
    "day", "d", "weeks", "week", "wks", "wk", "w", "months", "month", "M", "years", "year", "yrs",
    "yr", "y",
];

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A group: InfraKit's group spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// The group's id: 1-63 letters, digits, `-`, `_`, `.` (not `.` or `..`).
    #[serde(rename = "ID")]
    #[schemars(extend("pattern" = ID_PATTERN))]
    pub id: String,
    /// What the group is made of.
    #[serde(rename = "Properties")]
    pub properties: GroupProperties,
}

/// The body of a group spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct GroupProperties {
    /// How many instances (cattle) or which named members (pets).
    pub allocation: AllocationSpec,
    /// The instance plugin that provisions members, and its properties.
    pub instance: PluginRef,
    /// The flavor plugin that shapes members and judges their health, and its properties.
    pub flavor: PluginRef,
    /// How a configuration change rolls out.
    #[serde(default)]
    pub updating: Updating,
    /// How health is judged and remediated.
    #[serde(default)]
    pub health: HealthSpec,
    /// How members are drained before they are destroyed.
    #[serde(default)]
    pub drain: DrainSpec,
    /// How many plugin calls of one pass may run at once: health checks, and provisions and
    /// destroys (within what `Updating` allows). 1 makes a pass serial.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 1000))]
    pub parallelism: u32,
}

/// Enough to provision a typical group in one round of a slow cloud API, few enough that one
/// group's pass does not flood a plugin (or the host's threads).
pub const DEFAULT_PARALLELISM: u32 = 32;

/// The most instances one group may have: the planner is linear in them (100,000 plan in
/// tens of milliseconds, `cargo bench`), but a `Size` of 10⁹ would hold the daemon for
/// minutes and its memory for good.
pub const MAX_GROUP_SIZE: u32 = 100_000;

fn default_parallelism() -> u32 {
    DEFAULT_PARALLELISM
}

/// Either `Size` or `LogicalIDs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllocationSpec {
    /// Cattle: this many interchangeable instances (at most 100,000).
    #[serde(rename = "Size", default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100_000))]
    pub size: Option<u32>,
    /// Pets: one instance per logical id (at most 100,000).
    #[schemars(length(max = 100_000))]
    #[serde(
        rename = "LogicalIDs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub logical_ids: Option<Vec<String>>,
    /// Which healthy, current instances go first when the group shrinks. Unhealthy, then
    /// outdated instances always go before them, and protected ones never do.
    #[serde(
        rename = "ScaleDownPolicy",
        default,
        skip_serializing_if = "ScaleDownPolicy::is_default"
    )]
    pub scale_down_policy: ScaleDownPolicy,
}

/// Who goes first on scale-in among healthy, current instances (an Auto Scaling group's
/// termination policy, Cluster API's delete policy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ScaleDownPolicy {
    /// The instance with the highest index (the last added slot), as a StatefulSet does.
    #[default]
    HighestIndex,
    /// The longest-running instance.
    Oldest,
    /// The most recently provisioned instance.
    Newest,
}

impl ScaleDownPolicy {
    fn is_default(&self) -> bool {
        *self == ScaleDownPolicy::default()
    }
}

/// A plugin and the properties passed to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct PluginRef {
    /// The plugin's name, as `infrakit plugin ls` shows it.
    pub plugin: String,
    /// The plugin's own properties; it validates them.
    #[serde(default)]
    pub properties: serde_json::Value,
}

/// Rolling-update policy (as a Kubernetes Deployment's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "PascalCase", default)]
pub struct Updating {
    /// Instances that may exist above the allocation during an update.
    pub max_surge: u32,
    /// Healthy instances that may be missing below the allocation during an update.
    pub max_unavailable: u32,
    /// Wait for each new instance to be healthy before replacing more.
    pub wait_for_healthy: bool,
    /// How long new instances may take to become healthy before the update pauses.
    pub batch_timeout: HumanDuration,
    /// InfraKit's `Updating.Count`: a new instance must be judged healthy this many checks in
    /// a row before it counts towards the update's availability (so before the next old one
    /// goes). Not with `Duration`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// InfraKit's `Updating.Duration`: a new instance must stay healthy this long before it
    /// counts towards the update's availability. Not with `Count`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<HumanDuration>,
}

impl Default for Updating {
    fn default() -> Self {
        Updating {
            max_surge: 1,
            max_unavailable: 0,
            wait_for_healthy: true,
            batch_timeout: HumanDuration(Duration::from_secs(300)),
            count: None,
            duration: None,
        }
    }
}

/// A count (`2`) or a share of the group (`"40%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Threshold {
    /// An absolute number of instances.
    Count(u32),
    /// A percentage of the allocation, as `"N%"`.
    Percent(Percent),
}

/// `"N%"`, N in 0..=100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percent(pub u8);

impl JsonSchema for Percent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Percent".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "`\"N%\"`, N in 0..=100.",
            "pattern": "^ *(100|[1-9]?[0-9]) *% *$"
        })
    }
}

impl Serialize for Percent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}%", self.0))
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<u8>().ok())
            .filter(|n| *n <= 100)
            .map(Percent)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{text:?} is not a count or a percentage such as \"40%\""
                ))
            })
    }
}

impl Threshold {
    /// The number of instances this allows in a group of `size` (a percentage rounds down but
    /// allows at least one, so small groups can still heal).
    pub fn resolve(self, size: usize) -> u32 {
        match self {
            Threshold::Count(n) => n,
            Threshold::Percent(Percent(p)) => ((size * p as usize) / 100).max(1) as u32,
        }
    }
}

/// Health policy (the lessons of Cluster API's MachineHealthCheck).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "PascalCase", default)]
pub struct HealthSpec {
    /// How often the flavor is asked about each instance.
    pub check_interval: HumanDuration,
    /// After provisioning, how long an instance may look unhealthy before it counts as such.
    pub grace_period: HumanDuration,
    /// Above this many unhealthy instances at once, remediation pauses: a broken network must
    /// not trigger a cascade of replacements.
    pub max_unhealthy: Threshold,
    /// How long a provisioned instance may take to appear in the instance plugin's listing
    /// (cloud listings lag their create calls). Until then it counts as there; after that, as
    /// lost.
    pub provision_timeout: HumanDuration,
    /// How long an instance that was listed may be missing from the listing before it counts
    /// as lost. Listings page, lag and drop entries for a moment (EC2's is eventually
    /// consistent); during this window the group re-lists twenty times and the instance
    /// counts as there, so a flaky listing never causes a replacement and then a surplus.
    pub lost_after: HumanDuration,
    /// Instances of one configuration lost within their grace period, or never listed within
    /// `ProvisionTimeout`, before the group pauses (a crash loop). Each loss first delays the
    /// next provisions with growing back-off. 0: never pause.
    pub crash_loop_limit: u32,
    /// Replace protected instances (`infrakit group protect`) when they are unhealthy. Off by
    /// default: an unhealthy protected instance is reported and left alone.
    pub replace_protected: bool,
    /// Checks in a row that must find an instance unhealthy (past its grace period) before it
    /// counts as unhealthy: one flapping probe does not cost an instance. 1: the first one.
    pub unhealthy_threshold: u32,
    /// How long an instance must have been found unhealthy without a break before it counts
    /// as unhealthy (with `UnhealthyThreshold`, both must be met).
    pub unhealthy_for: HumanDuration,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            check_interval: HumanDuration(Duration::from_secs(10)),
            grace_period: HumanDuration(Duration::from_secs(60)),
            max_unhealthy: Threshold::Percent(Percent(40)),
            provision_timeout: HumanDuration(Duration::from_secs(60)),
            lost_after: HumanDuration(Duration::from_millis(200)),
            crash_loop_limit: 5,
            replace_protected: false,
            unhealthy_threshold: 1,
            unhealthy_for: HumanDuration(Duration::ZERO),
        }
    }
}

/// Drain policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "PascalCase", default)]
pub struct DrainSpec {
    /// How long the flavor's drain may take before the instance is destroyed anyway.
    pub timeout: HumanDuration,
}

impl Default for DrainSpec {
    fn default() -> Self {
        DrainSpec {
            timeout: HumanDuration(Duration::from_secs(60)),
        }
    }
}

/// The tags through which a group recognises its instances. A restarted controller derives
/// everything from them; instances without the group tag are never touched.
pub mod tags {
    /// The group id.
    pub const GROUP: &str = "infrakit.group";
    /// Hash of the instance + flavor configuration the instance was made from.
    pub const CONFIG_SHA: &str = "infrakit.config_sha";
    /// A pet's logical id.
    pub const LOGICAL_ID: &str = "infrakit.logical_id";
    /// When the controller provisioned it (Unix milliseconds).
    pub const CREATED: &str = "infrakit.created";
    /// Its index in the group.
    pub const INDEX: &str = "infrakit.index";
    /// The leadership term (etcd election revision) of the manager that made it, when
    /// several managers share a store.
    pub const TERM: &str = "infrakit.term";
    /// `"true"`: protected from scale-in and from a rolling update's removals
    /// (`infrakit group protect`; `"false"` once unprotected, as labels only merge).
    pub const PROTECTED: &str = "infrakit.protected";
    /// Removal requested by `infrakit group destroy-instances`: [`REMOVE_REPLACE`] or
    /// [`REMOVE_DECREMENT`].
    pub const REMOVE: &str = "infrakit.remove";
    /// Remove the instance and provision a successor.
    pub const REMOVE_REPLACE: &str = "replace";
    /// Remove the instance; the group shrinks by one (its new revision follows the label).
    pub const REMOVE_DECREMENT: &str = "decrement";
}

impl GroupSpec {
    /// Reads a spec file (JSON, or YAML for `.yaml`/`.yml`).
    pub fn load(path: &Path) -> Result<GroupSpec, Error> {
        Self::load_form(path).map(|(spec, _)| spec)
    }

    /// [`GroupSpec::load`], and which form the file was written in.
    pub fn load_form(path: &Path) -> Result<(GroupSpec, Form), Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            file: path.to_path_buf(),
            source,
        })?;
        let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        Self::parse_form(&text, &path.display().to_string(), yaml)
    }

    /// Parses and checks a spec; `origin` names it in errors. Text that does not start with
    /// `{` is read as YAML when `yaml` is false too, so piped YAML works.
    pub fn parse(text: &str, origin: &str, yaml: bool) -> Result<GroupSpec, Error> {
        Self::parse_form(text, origin, yaml).map(|(spec, _)| spec)
    }

    /// [`GroupSpec::parse`], and which form the text was written in.
    pub fn parse_form(text: &str, origin: &str, yaml: bool) -> Result<(GroupSpec, Form), Error> {
        let as_yaml = yaml || !text.trim_start().starts_with('{');
        let normalized;
        let text = if as_yaml {
            if let Err((line, depth)) = yaml_nesting(text) {
                return Err(Error::Parse {
                    file: origin.to_string(),
                    field: String::new(),
                    position: format!(" (line {line})"),
                    message: format!(
                        "nesting deeper than {MAX_YAML_DEPTH} levels ({depth}); specs are \
                         bounded as JSON ones are"
                    ),
                });
            }
            text
        } else {
            // JSON Schema counts `3.0` as an integer; serde does not. Integral numbers written
            // with a fraction are rewritten as integers (rarely: the original text, with its
            // error positions, is parsed whenever there are none).
            normalized = integral_floats_as_integers(text);
            normalized.as_deref().unwrap_or(text)
        };
        read::<NoDuplicateKeys>(text, as_yaml, origin)?;
        // InfraKit's later specs wrap a group in an envelope (`kind: group`, `metadata.name`,
        // `properties`); a spec with a top-level `kind` is read as one.
        let envelope = read::<Peek>(text, as_yaml, origin).is_ok_and(|p| p.kind.is_some());
        let (spec, form) = if envelope {
            let e: Envelope = read(text, as_yaml, origin)?;
            if !e.kind.eq_ignore_ascii_case("group") {
                return Err(Error::Invalid {
                    file: origin.to_string(),
                    field: "kind".into(),
                    message: format!(
                        "{:?} is not a group; only `kind: group` specs are read here",
                        e.kind
                    ),
                });
            }
            let ignored: Vec<String> = match &e.options {
                serde_json::Value::Object(m) => m.keys().cloned().collect(),
                _ => Vec::new(),
            };
            let spec = GroupSpec {
                id: e.metadata.name,
                properties: e.properties,
            };
            (spec, Form::Envelope { ignored })
        } else {
            (read(text, as_yaml, origin)?, Form::Native)
        };
        spec.check(origin)?;
        Ok((spec, form))
    }

    /// Checks what the types cannot express.
    pub fn check(&self, origin: &str) -> Result<(), Error> {
        let invalid = |field: &str, message: String| Error::Invalid {
            file: origin.to_string(),
            field: field.to_string(),
            message,
        };
        if !valid_id(&self.id) {
            return Err(invalid(
                "ID",
                format!(
                    "{:?} is not a group id; use 1-63 letters, digits, `-`, `_` or `.`",
                    self.id
                ),
            ));
        }
        let p = &self.properties;
        if let Some(n) = p.allocation.size.filter(|n| *n > MAX_GROUP_SIZE) {
            return Err(invalid(
                "Properties.Allocation.Size",
                format!(
                    "{n} is over the bound of {MAX_GROUP_SIZE} instances per group; split the \
                     group"
                ),
            ));
        }
        if let Some(ids) = p
            .allocation
            .logical_ids
            .as_ref()
            .filter(|ids| ids.len() > MAX_GROUP_SIZE as usize)
        {
            return Err(invalid(
                "Properties.Allocation.LogicalIDs",
                format!(
                    "{} logical ids are over the bound of {MAX_GROUP_SIZE} per group",
                    ids.len()
                ),
            ));
        }
        match (&p.allocation.size, &p.allocation.logical_ids) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(invalid(
                    "Properties.Allocation",
                    "give exactly one of `Size` (a number of cattle) or `LogicalIDs` (a list of \
                     pet names)"
                        .into(),
                ));
            }
            (None, Some(ids)) => {
                if ids.is_empty() {
                    return Err(invalid(
                        "Properties.Allocation.LogicalIDs",
                        "the list is empty; use `Size: 0` for an empty group".into(),
                    ));
                }
                for (i, id) in ids.iter().enumerate() {
                    if !valid_id(id) {
                        return Err(invalid(
                            &format!("Properties.Allocation.LogicalIDs[{i}]"),
                            format!(
                                "{id:?} is not a logical id; use letters, digits, `-`, `_` or `.`"
                            ),
                        ));
                    }
                    if ids[..i].contains(id) {
                        return Err(invalid(
                            &format!("Properties.Allocation.LogicalIDs[{i}]"),
                            format!("{id:?} appears twice; logical ids are unique"),
                        ));
                    }
                }
            }
            (Some(_), None) => {}
        }
        for (field, plugin) in [("Instance", &p.instance), ("Flavor", &p.flavor)] {
            if plugin.plugin.trim().is_empty() {
                return Err(invalid(
                    &format!("Properties.{field}.Plugin"),
                    "the plugin name is empty; see `infrakit plugin ls`".into(),
                ));
            }
        }
        if !(1..=1000).contains(&p.parallelism) {
            return Err(invalid(
                "Properties.Parallelism",
                format!(
                    "{} is out of range; give 1 (one call at a time) to 1000",
                    p.parallelism
                ),
            ));
        }
        if p.updating.max_surge == 0 && p.updating.max_unavailable == 0 {
            return Err(invalid(
                "Properties.Updating",
                "`MaxSurge` and `MaxUnavailable` are both 0, so no update could ever proceed; \
                 allow at least one"
                    .into(),
            ));
        }
        match (p.updating.count, p.updating.duration) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "Properties.Updating",
                    "give `Count` (healthy checks in a row) or `Duration` (healthy for how \
                     long), not both, as in InfraKit"
                        .into(),
                ));
            }
            (Some(0), None) => {
                return Err(invalid(
                    "Properties.Updating.Count",
                    "must be at least 1 (checks in a row)".into(),
                ));
            }
            _ => {}
        }
        if p.updating.batch_timeout.0.is_zero() {
            return Err(invalid(
                "Properties.Updating.BatchTimeout",
                "must be longer than 0s".into(),
            ));
        }
        if p.health.unhealthy_threshold == 0 {
            return Err(invalid(
                "Properties.Health.UnhealthyThreshold",
                "must be at least 1 (checks in a row)".into(),
            ));
        }
        if p.health.check_interval.0.is_zero() {
            return Err(invalid(
                "Properties.Health.CheckInterval",
                "must be longer than 0s".into(),
            ));
        }
        Ok(())
    }

    /// The allocation in plugin terms.
    pub fn allocation(&self) -> Allocation {
        let a = &self.properties.allocation;
        match &a.logical_ids {
            Some(ids) => Allocation::LogicalIds(ids.clone()),
            None => Allocation::Size(a.size.unwrap_or(0)),
        }
    }

    /// The number of instances the allocation asks for.
    pub fn size(&self) -> usize {
        match self.allocation() {
            Allocation::Size(n) => n as usize,
            Allocation::LogicalIds(ids) => ids.len(),
        }
    }

    /// The hash of the instance and flavor configuration: instances made from another
    /// configuration are replaced by a rolling update. Scaling or changing policies does not
    /// change it.
    pub fn config_sha(&self) -> String {
        // serde_json's map is ordered by key, so equal configurations hash equally.
        let canonical = serde_json::json!({
            "Instance": self.properties.instance,
            "Flavor": self.properties.flavor,
        });
        let digest = crate::plugin::cache::sha256_hex(canonical.to_string().as_bytes());
        digest[..16].to_string()
    }

    /// The JSON Schema of a group spec.
    pub fn schema() -> serde_json::Value {
        let mut schema =
            serde_json::to_value(schemars::schema_for!(GroupSpec)).expect("schema serialises");
        bound_uint32(&mut schema);
        schema
    }
}

/// `text` with integral floats (`3.0`, `1e2`) written as integers, when it is JSON that has
/// any; `None` otherwise.
fn integral_floats_as_integers(text: &str) -> Option<String> {
    fn fix(v: &mut serde_json::Value) -> bool {
        match v {
            serde_json::Value::Number(n) if n.is_f64() => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    *v = if f < 0.0 {
                        (f as i64).into()
                    } else {
                        (f as u64).into()
                    };
                    true
                } else {
                    false
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().fold(false, |c, i| fix(i) | c),
            serde_json::Value::Object(map) => map.values_mut().fold(false, |c, i| fix(i) | c),
            _ => false,
        }
    }
    let mut value: serde_json::Value = serde_json::from_str(text).ok()?;
    // The plugins' own properties are theirs, and part of the configuration hash: untouched.
    let mut kept = Vec::new();
    for section in ["Instance", "Flavor"] {
        if let Some(p) = value
            .pointer_mut(&format!("/Properties/{section}"))
            .and_then(|s| s.as_object_mut())
            .and_then(|s| s.remove("Properties"))
        {
            kept.push((section, p));
        }
    }
    let changed = fix(&mut value);
    for (section, p) in kept {
        if let Some(s) = value
            .pointer_mut(&format!("/Properties/{section}"))
            .and_then(|s| s.as_object_mut())
        {
            s.insert("Properties".into(), p);
        }
    }
    changed.then(|| value.to_string())
}

/// schemars marks `u32` fields with `format: uint32`, which validators and generators ignore;
/// the bound makes a larger number invalid by the schema, as it is to the parser.
fn bound_uint32(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            if map.get("format").and_then(|f| f.as_str()) == Some("uint32") {
                map.entry("maximum").or_insert(u32::MAX.into());
            }
            map.values_mut().for_each(bound_uint32);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(bound_uint32),
        _ => {}
    }
}

fn valid_id(id: &str) -> bool {
    // `.` and `..` would name directories, not groups, in paths and URLs.
    !matches!(id, "" | "." | "..")
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Deepest YAML nesting accepted (serde_json stops JSON at 128).
pub const MAX_YAML_DEPTH: usize = 128;

/// Which form a spec was written in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Form {
    /// `{"ID", "Properties"}`: InfraKit's group JSON, ours too.
    Native,
    /// InfraKit's later envelope: `kind: group`, `metadata.name`, `properties`, `options`.
    Envelope {
        /// The `options` given, which InfraKit's group plugin read and this host does not.
        ignored: Vec<String>,
    },
}

impl fmt::Display for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Form::Native => f.write_str("a group spec (ID, Properties)"),
            Form::Envelope { ignored } => {
                f.write_str(
                    "InfraKit's `kind: group` envelope (metadata.name as ID, properties as \
                     Properties)",
                )?;
                if !ignored.is_empty() {
                    write!(f, "; options not used here: {}", ignored.join(", "))?;
                }
                Ok(())
            }
        }
    }
}

/// Only whether a document has a top-level `kind`.
#[derive(Deserialize)]
struct Peek {
    #[serde(default)]
    kind: Option<serde::de::IgnoredAny>,
}

/// InfraKit's spec envelope around a group.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    kind: String,
    #[serde(default)]
    #[allow(dead_code)] // read so that it is accepted; there is one version of the group form
    version: Option<String>,
    metadata: EnvelopeMetadata,
    properties: GroupProperties,
    #[serde(default)]
    options: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeMetadata {
    name: String,
    #[serde(default)]
    #[allow(dead_code)] // InfraKit's tags of the spec itself, not of instances
    tags: Option<serde_json::Value>,
}

/// Deserializes `text` as JSON or YAML, naming the field path and position of an error.
fn read<T: serde::de::DeserializeOwned>(
    text: &str,
    as_yaml: bool,
    origin: &str,
) -> Result<T, Error> {
    if as_yaml {
        let de = yaml_serde::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let position = inner
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            // The YAML library names the path itself in some messages; it is shown once.
            let message = strip_position(&inner.to_string());
            let message = message
                .strip_prefix(&format!("{field}: "))
                .map_or(message.clone(), str::to_string);
            Error::Parse {
                file: origin.to_string(),
                field,
                position,
                message,
            }
        })
    } else {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            Error::Parse {
                file: origin.to_string(),
                field,
                position: format!(" (line {}, column {})", inner.line(), inner.column()),
                message: strip_position(&inner.to_string()),
            }
        })
    }
}

/// A document walked only to refuse a key given twice in one object, anywhere (plugin
/// `Properties` included, which are free-form JSON to the host): JSON and YAML parsers keep the
/// last one silently, so `{"Prefix": "a", "Prefix": "b"}` would mean `b` without a word.
struct NoDuplicateKeys;

impl<'de> Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeys)
    }
}

/// A map key of any scalar type, as text.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Ok(KeyText(match value {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        }))
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeys {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(KeyText(key)) = map.next_key()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "duplicate key {key:?}: it is given twice in this object (the last one would \
                     silently win)"
                )));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(NoDuplicateKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(NoDuplicateKeys)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        NoDuplicateKeys::deserialize(d)
    }

    fn visit_newtype_struct<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> Result<Self::Value, D::Error> {
        NoDuplicateKeys::deserialize(d)
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        // A YAML tag (`!Foo value`): check the value under it.
        use serde::de::VariantAccess;
        let (_, variant) = data.variant::<KeyText>()?;
        variant.newtype_variant::<NoDuplicateKeys>()
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_i128<E>(self, _: i128) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_u128<E>(self, _: u128) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
}

/// Checks a YAML text's nesting before it is parsed: the parser's time grows faster than
/// linearly with depth (100,000 levels of `[` took 45 s, holding a thread of the API). Counts
/// flow brackets outside quotes and comments, plus, on each line, the block markers (`- `,
/// `? `) that open a level without indentation; indentation itself bounds the rest, since a
/// level needs at least one more space. `Err((line, depth))` names the first line too deep.
fn yaml_nesting(text: &str) -> Result<(), (usize, usize)> {
    let mut flow = 0usize;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start_matches(' ');
        let indent = line.len() - trimmed.len();
        let mut markers = 0;
        let mut rest = trimmed;
        while let Some(r) = rest.strip_prefix("- ").or_else(|| rest.strip_prefix("? ")) {
            markers += 1;
            rest = r.trim_start_matches(' ');
        }
        let mut quote: Option<char> = None;
        let mut previous = ' ';
        for c in rest.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') if previous == ' ' => break,
                (None, '[' | '{') => {
                    flow += 1;
                    if flow + markers + indent / 2 > MAX_YAML_DEPTH {
                        return Err((n + 1, flow + markers + indent / 2));
                    }
                }
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
            previous = c;
        }
        let depth = flow + markers + indent / 2;
        if depth > MAX_YAML_DEPTH || flow > MAX_YAML_DEPTH {
            return Err((n + 1, depth));
        }
    }
    Ok(())
}

/// serde_json and yaml_serde append " at line L column C"; the position is reported separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"ID": "web", "Properties": {
        "Allocation": {"Size": 3},
        "Instance": {"Plugin": "instance-file", "Properties": {"Prefix": "web"}},
        "Flavor": {"Plugin": "flavor-vanilla"}}}"#;

    #[test]
    fn infrakit_envelope_is_read_as_the_group_it_wraps() {
        let yaml = "kind: group\nmetadata:\n  name: workers\nproperties:\n  Allocation:\n    Size: 2\n  Instance:\n    Plugin: instance-file\n    Properties:\n      Note: hello\n  Flavor:\n    Plugin: vanilla\n    Properties:\n      Init: [echo hi]\noptions:\n  PollInterval: 10s\n";
        let (spec, form) = GroupSpec::parse_form(yaml, "w.yml", true).unwrap();
        assert_eq!(spec.id, "workers");
        assert_eq!(spec.size(), 2);
        assert_eq!(spec.properties.flavor.plugin, "vanilla");
        assert_eq!(
            form,
            Form::Envelope {
                ignored: vec!["PollInterval".into()]
            }
        );
        assert!(form.to_string().contains("kind: group"), "{form}");
        let native = GroupSpec::parse_form(MINIMAL, "m.json", false).unwrap().1;
        assert_eq!(native, Form::Native);
        // Strict inside as outside, with the path as written.
        let e = GroupSpec::parse(&yaml.replace("Size: 2", "Sise: 2"), "w.yml", true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("properties.Allocation") && e.contains("Sise"),
            "{e}"
        );
        let e = GroupSpec::parse(&yaml.replace("kind: group", "kind: ingress"), "w.yml", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`kind`") && e.contains("ingress"), "{e}");
        let e = GroupSpec::parse(
            &yaml.replace("  name: workers", "  nmae: workers"),
            "w.yml",
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("metadata") && e.contains("nmae"), "{e}");
    }

    #[test]
    fn updating_count_and_duration_are_infrakits_and_exclusive() {
        let with = |updating: &str| {
            MINIMAL.replace(
                r#""Flavor": {"Plugin": "flavor-vanilla"}"#,
                &format!(r#""Flavor": {{"Plugin": "flavor-vanilla"}}, "Updating": {updating}"#),
            )
        };
        let spec = GroupSpec::parse(&with(r#"{"Count": 3}"#), "c.json", false).unwrap();
        assert_eq!(spec.properties.updating.count, Some(3));
        let spec = GroupSpec::parse(&with(r#"{"Duration": "30s"}"#), "d.json", false).unwrap();
        assert_eq!(
            spec.properties.updating.duration,
            Some(HumanDuration(Duration::from_secs(30)))
        );
        let e = GroupSpec::parse(&with(r#"{"Count": 3, "Duration": "30s"}"#), "b.json", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Properties.Updating") && e.contains("not both"),
            "{e}"
        );
        let e = GroupSpec::parse(&with(r#"{"Count": 0}"#), "z.json", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Updating.Count"), "{e}");
    }

    #[test]
    fn a_key_given_twice_anywhere_is_refused_with_its_path() {
        let json = r#"{"ID": "d", "Properties": {"Allocation": {"Size": 1},
            "Instance": {"Plugin": "instance-file", "Properties": {"Prefix": "a", "Prefix": "b"}},
            "Flavor": {"Plugin": "flavor-vanilla"}}}"#;
        let e = GroupSpec::parse(json, "d.json", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Properties.Instance.Properties") && e.contains("duplicate key \"Prefix\""),
            "{e}"
        );
        assert!(e.contains("line 2"), "{e}");
        let yaml = "ID: d\nProperties:\n  Allocation: {Size: 1}\n  Instance:\n    Plugin: instance-file\n    Properties:\n      Tags: [{a: 1, a: 2}]\n  Flavor: {Plugin: flavor-vanilla}\n";
        let e = GroupSpec::parse(yaml, "d.yaml", true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("duplicate key \"a\"") && e.contains("Tags"),
            "{e}"
        );
        // The same key in sibling objects is no duplicate.
        let fine = r#"{"ID": "d", "Properties": {"Allocation": {"Size": 1},
            "Instance": {"Plugin": "instance-file", "Properties": {"Metadata": [{"k": 1}, {"k": 2}]}},
            "Flavor": {"Plugin": "flavor-vanilla", "Properties": {}}}}"#;
        GroupSpec::parse(fine, "d.json", false).unwrap();
    }

    #[test]
    fn infrakit_group_json_parses_with_defaults() {
        let spec = GroupSpec::parse(MINIMAL, "web.json", false).unwrap();
        assert_eq!(spec.size(), 3);
        assert_eq!(spec.properties.updating, Updating::default());
        assert_eq!(spec.properties.health.max_unhealthy.resolve(3), 1);
    }

    #[test]
    fn deeply_nested_yaml_is_refused_before_parsing() {
        for (deep, line) in [
            (
                format!(
                    "ID: x\nProperties:\n  A: {}{}\n",
                    "[".repeat(100_000),
                    "]".repeat(100_000)
                ),
                3,
            ),
            (format!("ID: x\nP:\n{}1\n", "- ".repeat(200)), 3),
            (format!("ID: x\nP:\n  - {{\n{}\n", "{ ".repeat(300)), 4),
        ] {
            let err = GroupSpec::parse(&deep, "deep.yaml", true)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("nesting deeper than 128") && err.contains(&format!("line {line}")),
                "{err}"
            );
        }
        // Brackets in strings and comments do not count.
        let text = format!(
            "ID: x # {}\nProperties: {{Allocation: {{Size: 1}}}}\nX: \"{}\"\n",
            "[".repeat(500),
            "{".repeat(500)
        );
        assert!(yaml_nesting(&text).is_ok());
    }

    #[test]
    fn yaml_is_accepted() {
        let yaml = "ID: zk\nProperties:\n  Allocation:\n    LogicalIDs: [zk1, zk2, zk3]\n  Instance:\n    Plugin: instance-file\n  Flavor:\n    Plugin: flavor-vanilla\n  Health:\n    GracePeriod: 2s\n    MaxUnhealthy: 1\n";
        let spec = GroupSpec::parse(yaml, "zk.yaml", true).unwrap();
        assert_eq!(spec.size(), 3);
        assert_eq!(
            spec.properties.health.grace_period.0,
            Duration::from_secs(2)
        );
        assert_eq!(spec.properties.health.max_unhealthy, Threshold::Count(1));
    }

    #[test]
    fn config_sha_ignores_scale_and_policy_but_not_configuration() {
        let a = GroupSpec::parse(MINIMAL, "a", false).unwrap();
        let mut b = a.clone();
        b.properties.allocation.size = Some(7);
        b.properties.updating.max_surge = 3;
        assert_eq!(a.config_sha(), b.config_sha());
        let mut c = a.clone();
        c.properties.instance.properties = serde_json::json!({"Prefix": "other"});
        assert_ne!(a.config_sha(), c.config_sha());
    }

    #[test]
    fn errors_name_the_file_the_field_and_the_position() {
        let err = GroupSpec::parse(
            &MINIMAL.replace("\"Size\": 3", "\"Size\": \"three\""),
            "web.json",
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("web.json: at `Properties.Allocation.Size` (line 2"),
            "{err}"
        );
        assert!(err.contains("expected u32"), "{err}");
    }

    #[test]
    fn percentages_resolve_with_a_floor_of_one() {
        assert_eq!(Threshold::Percent(Percent(40)).resolve(10), 4);
        assert_eq!(Threshold::Percent(Percent(40)).resolve(2), 1);
        assert_eq!(Threshold::Count(0).resolve(10), 0);
    }

    #[test]
    fn the_shipped_schema_is_the_generated_one() {
        let shipped: serde_json::Value =
            serde_json::from_str(include_str!("../../examples/group.schema.json")).unwrap();
        assert_eq!(
            shipped,
            GroupSpec::schema(),
            "regenerate: infrakit group schema > examples/group.schema.json"
        );
    }

    #[test]
    fn integral_floats_count_as_integers_outside_plugin_properties() {
        let text = r#"{"ID": "g", "Properties": {"Allocation": {"Size": 3.0},
            "Instance": {"Plugin": "i", "Properties": {"Weight": 1.0}},
            "Flavor": {"Plugin": "f"}, "Parallelism": 4e0}}"#;
        let spec = GroupSpec::parse(text, "t", false).unwrap();
        assert_eq!(spec.size(), 3);
        assert_eq!(spec.properties.parallelism, 4);
        assert!(spec.properties.instance.properties["Weight"].is_f64());
        let half = text.replace("3.0", "3.5");
        let e = GroupSpec::parse(&half, "t", false).unwrap_err().to_string();
        assert!(e.contains("Allocation.Size") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn every_duration_the_schema_admits_parses() {
        let pattern = GroupSpec::schema()["$defs"]["Duration"]["pattern"]
            .as_str()
            .unwrap()
            .to_string();
        for unit in DURATION_UNITS {
            for text in [format!("999999999{unit}"), format!(" 1 {unit} 2{unit}\n")] {
                assert!(
                    [
                        format!("|{unit}|"),
                        format!("({unit}|"),
                        format!("|{unit})")
                    ]
                    .iter()
                    .any(|t| pattern.contains(t.as_str())),
                    "{unit} in {pattern}"
                );
                let json = format!("{{\"t\": {text:?}}}");
                let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
                let d: Result<HumanDuration, _> = serde_json::from_value(parsed["t"].clone());
                assert!(d.is_ok(), "{text:?}: {d:?}");
            }
        }
        // Four terms of the largest value do not overflow.
        let most = format!("{0} {0} {0} {0}", "999999999y");
        assert!(humantime::parse_duration(&most).is_ok());
    }

    #[test]
    fn the_schema_names_every_section() {
        let schema = GroupSpec::schema().to_string();
        for name in [
            "Allocation",
            "LogicalIDs",
            "MaxSurge",
            "GracePeriod",
            "MaxUnhealthy",
            "Drain",
        ] {
            assert!(schema.contains(name), "{name}");
        }
    }
}
