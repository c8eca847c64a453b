use serde::{Deserialize, Serialize};

use crate::Properties;

/// Tags stored with an instance, in order. Keys are unique by convention; [`InstanceSpec::tag`]
/// and friends treat the last value of a key as the one that counts.
pub type Tags = Vec<(String, String)>;

/// Something attached to an instance when it is provisioned (a volume, an address...).
///
/// ```
/// let a = infrakit_sdk::Attachment { id: "vol-1".into(), kind: "volume".into() };
/// assert_eq!(a.kind, "volume");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The attachment's id.
    pub id: String,
    /// What kind of thing it is.
    pub kind: String,
}

/// What to provision (InfraKit's `instance.Spec`).
///
/// ```
/// let spec = infrakit_sdk::InstanceSpec::default().with_tag("role", "worker");
/// assert_eq!(spec.tag("role"), Some("worker"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceSpec {
    /// The instance plugin's own properties.
    pub properties: Properties,
    /// Tags to store with the instance.
    pub tags: Tags,
    /// The init script the instance runs when it boots.
    pub init: String,
    /// The stable name of a pet; `None` for cattle.
    pub logical_id: Option<String>,
    /// Things to attach.
    pub attachments: Vec<Attachment>,
}

impl InstanceSpec {
    /// The value of a tag, if set.
    ///
    /// ```
    /// let spec = infrakit_sdk::InstanceSpec::default();
    /// assert_eq!(spec.tag("missing"), None);
    /// ```
    pub fn tag(&self, key: &str) -> Option<&str> {
        tag(&self.tags, key)
    }

    /// Sets a tag, replacing an earlier value of the same key.
    ///
    /// ```
    /// let spec = infrakit_sdk::InstanceSpec::default().with_tag("a", "1").with_tag("a", "2");
    /// assert_eq!(spec.tags, vec![("a".to_string(), "2".to_string())]);
    /// ```
    pub fn with_tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        set_tag(&mut self.tags, key.into(), value.into());
        self
    }
}

/// What a plugin observes about one instance (InfraKit's `instance.Description`).
///
/// ```
/// let d = infrakit_sdk::Description { id: "i-1".into(), ..Default::default() };
/// assert!(d.matches(&[]));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Description {
    /// The instance id, as returned by `provision`.
    pub id: String,
    /// The pet's logical id, if any.
    pub logical_id: Option<String>,
    /// The instance's tags.
    pub tags: Tags,
    /// The properties it was made from, when asked for.
    pub properties: Option<Properties>,
}

impl Description {
    /// Whether every `(key, value)` in `filter` is among this instance's tags.
    ///
    /// ```
    /// let d = infrakit_sdk::Description {
    ///     tags: vec![("group".into(), "web".into())],
    ///     ..Default::default()
    /// };
    /// assert!(d.matches(&[("group".into(), "web".into())]));
    /// assert!(!d.matches(&[("group".into(), "db".into())]));
    /// ```
    pub fn matches(&self, filter: &[(String, String)]) -> bool {
        filter
            .iter()
            .all(|(k, v)| tag(&self.tags, k) == Some(v.as_str()))
    }

    /// The value of a tag, if set.
    ///
    /// ```
    /// let d = infrakit_sdk::Description::default();
    /// assert_eq!(d.tag("x"), None);
    /// ```
    pub fn tag(&self, key: &str) -> Option<&str> {
        tag(&self.tags, key)
    }
}

/// How a group is allocated: a number of cattle, or a list of named pets.
///
/// ```
/// let a = infrakit_sdk::Allocation::LogicalIds(vec!["zk1".into(), "zk2".into()]);
/// assert_eq!(a.len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allocation {
    /// This many interchangeable instances.
    Size(u32),
    /// One instance per logical id.
    LogicalIds(Vec<String>),
}

impl Allocation {
    /// How many instances the allocation asks for.
    ///
    /// ```
    /// assert_eq!(infrakit_sdk::Allocation::Size(3).len(), 3);
    /// ```
    pub fn len(&self) -> usize {
        match self {
            Allocation::Size(n) => *n as usize,
            Allocation::LogicalIds(ids) => ids.len(),
        }
    }

    /// Whether the allocation asks for no instance at all.
    ///
    /// ```
    /// assert!(infrakit_sdk::Allocation::Size(0).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for Allocation {
    fn default() -> Self {
        Allocation::Size(0)
    }
}

/// Where an instance sits in its group (InfraKit's `group.Index`).
///
/// ```
/// let i = infrakit_sdk::Index { group: "web".into(), sequence: 2 };
/// assert_eq!(i.sequence, 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    /// The group id.
    pub group: String,
    /// A sequence number unique within the group.
    pub sequence: u32,
}

/// Application-aware health as judged by a flavor.
///
/// ```
/// assert_ne!(infrakit_sdk::Health::Healthy, infrakit_sdk::Health::Unknown);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Doing its job.
    Healthy,
    /// Not doing its job; the group may replace it.
    Unhealthy,
    /// Cannot tell (yet).
    Unknown,
}

/// Why an instance is destroyed.
///
/// ```
/// let c = infrakit_sdk::DestroyContext::RollingUpdate;
/// assert_ne!(c, infrakit_sdk::DestroyContext::Terminate);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestroyContext {
    /// The instance is going away for good.
    Terminate,
    /// The instance is being replaced by a newer one.
    RollingUpdate,
}

fn tag<'a>(tags: &'a [(String, String)], key: &str) -> Option<&'a str> {
    tags.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

pub(crate) fn set_tag(tags: &mut Tags, key: String, value: String) {
    match tags.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => tags.push((key, value)),
    }
}
