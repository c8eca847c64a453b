//! What happened to a group, for people and for the event log: every state change the
//! controller makes is recorded as one event.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kinds of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A spec was committed (created or changed).
    GroupCommitted,
    /// The group is no longer managed; its instances were left alone.
    GroupFreed,
    /// The group's instances were destroyed and the group forgotten.
    GroupDestroyed,
    /// A plan was made with work in it.
    Planned,
    /// An instance was provisioned.
    InstanceProvisioned,
    /// An instance was drained before destruction.
    InstanceDrained,
    /// An instance was destroyed.
    InstanceDestroyed,
    /// An instance was replaced (drained, destroyed, and its successor provisioned).
    InstanceReplaced,
    /// An instance's health changed.
    HealthChanged,
    /// A plugin faulted (trap, deadline, memory).
    PluginFault,
    /// A step failed; the controller backs off and tries again.
    StepFailed,
    /// A rolling update or remediation paused.
    Paused,
    /// Every member is there, current and healthy.
    Converged,
    /// A plugin was loaded, replaced or failed to load.
    PluginChanged,
    /// An instance the controller provisioned was lost soon after, or never appeared.
    InstanceLost,
    /// An operator protected or unprotected instances, or asked for their removal.
    InstanceLabelled,
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).ok();
        f.write_str(s.as_ref().and_then(|v| v.as_str()).unwrap_or("?"))
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Sequence number in the event log (0 until stored).
    #[serde(default)]
    pub seq: u64,
    /// Unix milliseconds.
    pub time_ms: u64,
    /// The group concerned.
    pub group: String,
    /// What happened.
    pub kind: EventKind,
    /// The instance concerned, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Details for people.
    pub message: String,
    /// With several managers: the leadership term of the manager that recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<i64>,
}

/// Longest event message kept; the rest is cut, with a marker saying how much. A plugin's
/// error text ends up here, and a plugin may answer every call with megabytes.
pub const MESSAGE_MAX: usize = 2048;

/// `text` cut to at most `max` bytes (on a character boundary), with a marker saying how much
/// was cut.
pub fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!(
        "{}… [{} more bytes cut]",
        &text[..end],
        text.len() - end
    ))
}

impl Event {
    /// An event happening now.
    pub fn now(
        group: &str,
        kind: EventKind,
        instance: Option<&str>,
        message: impl Into<String>,
    ) -> Event {
        Event {
            seq: 0,
            time_ms: now_ms(),
            group: group.to_string(),
            kind,
            instance: instance.map(str::to_string),
            message: {
                let message = message.into();
                match clip(&message, MESSAGE_MAX) {
                    std::borrow::Cow::Borrowed(_) => message,
                    std::borrow::Cow::Owned(cut) => cut,
                }
            },
            term: None,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = format_time(self.time_ms);
        write!(f, "{time} {} {}", self.group, self.kind)?;
        if let Some(i) = &self.instance {
            write!(f, " {i}")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// RFC 3339 time (UTC, milliseconds) of a Unix-millisecond timestamp.
pub fn format_time(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
