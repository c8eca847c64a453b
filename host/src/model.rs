//! The domain: instances, their descriptions and tags, health, allocations, and what a plugin
//! says about itself. Plain Rust types, serialisable in InfraKit's JSON shapes (`Properties`,
//! `Tags`, `Init`, `LogicalID`, `Attachments`), used by the planner, the controller, the API
//! and the plugin runtime alike; the generated WIT types never leave `plugin::bindings`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Tags of an instance. A map, as in InfraKit: a key has one value.
pub type Tags = BTreeMap<String, String>;

/// Which SPI a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// Provisions and tracks instances.
    Instance,
    /// Shapes instances and judges their health.
    Flavor,
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PluginKind::Instance => "instance",
            PluginKind::Flavor => "flavor",
        })
    }
}

/// A capability a plugin asks for in its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// A directory mapped at a guest path.
    Files {
        /// Where the plugin expects it.
        guest_path: String,
        /// Whether it wants to write there.
        writable: bool,
    },
    /// An outbound HTTP target.
    Http(String),
    /// A configuration key.
    Config(String),
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Capability::Files {
                guest_path,
                writable,
            } => write!(
                f,
                "files:{guest_path}:{}",
                if *writable { "rw" } else { "ro" }
            ),
            Capability::Http(target) => write!(f, "http:{target}"),
            Capability::Config(key) => write!(f, "config:{key}"),
        }
    }
}

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Unique name, used to refer to the plugin.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Instance or flavor.
    pub kind: PluginKind,
    /// One line.
    pub description: String,
    /// What it asks for.
    pub capabilities: Vec<Capability>,
}

/// Something attached to an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// Its id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its kind.
    #[serde(rename = "Type")]
    pub kind: String,
}

/// InfraKit's instance spec: what to provision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct InstanceSpec {
    /// Instance-plugin properties.
    #[serde(default)]
    pub properties: serde_json::Value,
    /// Tags to store with the instance.
    #[serde(default)]
    pub tags: Tags,
    /// Init script.
    #[serde(default)]
    pub init: String,
    /// A pet's stable name.
    #[serde(rename = "LogicalID", default, skip_serializing_if = "Option::is_none")]
    pub logical_id: Option<String>,
    /// Attachments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// InfraKit's instance description: what a plugin observes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Description {
    /// Instance id.
    #[serde(rename = "ID")]
    pub id: String,
    /// A pet's stable name.
    #[serde(rename = "LogicalID", default, skip_serializing_if = "Option::is_none")]
    pub logical_id: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Tags,
    /// Properties, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<serde_json::Value>,
}

/// How a group is allocated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Allocation {
    /// Cattle.
    Size(u32),
    /// Pets.
    #[serde(rename = "LogicalIDs")]
    LogicalIds(Vec<String>),
}

/// An instance's place in its group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Index {
    /// Group id.
    pub group: String,
    /// Sequence number in the group.
    pub sequence: u32,
}

/// Health as judged by a flavor (unknown until one has).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Doing its job.
    Healthy,
    /// Not doing its job.
    Unhealthy,
    /// Cannot tell.
    #[default]
    Unknown,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Unknown => "unknown",
        })
    }
}

/// Why an instance is destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DestroyContext {
    /// For good.
    Terminate,
    /// Replaced by a newer one.
    RollingUpdate,
}

/// An error a plugin returned (a WIT `error`): data for the caller, not a fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "message", rename_all = "kebab-case")]
pub enum GuestError {
    /// Bad input; retrying will not help.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// No such thing.
    #[error("not found: {0}")]
    NotFound(String),
    /// Temporary; retry later.
    #[error("transient failure: {0}")]
    Transient(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}
