//! What a change of spec changes: field by field (old → new, by path), and the course the
//! whole change takes from what is observed now, in words and counts. Pure, like the planner:
//! `group plan`, `group commit` and `group history --diff` show it.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::Allocation;
use crate::plan::{self, Desired, Member, Step};
use crate::spec::GroupSpec;

/// One changed field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SpecChange {
    /// The field path, e.g. `Properties.Allocation.Size` or `Properties.Flavor.Properties.Init[1]`.
    pub path: String,
    /// Its value before (absent when the field is new).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    /// Its value after (absent when the field is gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
}

/// The fields that differ between two specs, in document order. Objects are compared key by
/// key and lists of the same length item by item; anything else that differs is one change.
pub fn spec_changes(old: &GroupSpec, new: &GroupSpec) -> Vec<SpecChange> {
    let old = serde_json::to_value(old).expect("specs serialise");
    let new = serde_json::to_value(new).expect("specs serialise");
    let mut out = Vec::new();
    walk("", Some(&old), Some(&new), &mut out);
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn walk(path: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<SpecChange>) {
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            for (k, v) in a {
                walk(&join(path, k), Some(v), b.get(k), out);
            }
            for (k, v) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
                walk(&join(path, k), None, Some(v), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                walk(&format!("{path}[{i}]"), Some(x), Some(y), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(SpecChange {
            path: path.to_string(),
            old: a.cloned(),
            new: b.cloned(),
        }),
    }
}

/// The course of a whole change, from what is observed now to the new spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Course {
    /// Instances made from another configuration, to be replaced by the rolling update.
    pub replaced: usize,
    /// Instances to be added (cattle), or pets whose logical ids are new.
    pub added: usize,
    /// Instances to be removed: their ids, as far as this first pass chooses them.
    pub removed: Vec<String>,
    /// How many will be removed in all (more than `removed` when later passes choose).
    pub removing: usize,
    /// Instances kept as they are.
    pub kept: usize,
    /// The course in words.
    pub summary: String,
}

impl fmt::Display for Course {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary)
    }
}

/// What it will take to get from `members` (the group's instances, as observed) to `desired`.
pub fn course(desired: &Desired, members: &[Member], now_ms: u64) -> Course {
    let mine: Vec<&Member> = members
        .iter()
        .filter(|m| m.group == desired.group)
        .collect();
    let outdated = |m: &&&Member| m.config_sha != desired.config_sha;
    // The first pass's scale-in choices say which instances go.
    let first = plan::plan(desired, members, now_ms);
    let chosen: Vec<String> = first
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Destroy { id, reason, .. }
                if reason.starts_with("scaling down")
                    || reason.contains("no longer in the group") =>
            {
                Some(id.clone())
            }
            _ => None,
        })
        .collect();
    let (replaced, added, removing) = match &desired.allocation {
        Allocation::Size(n) => {
            let n = *n as usize;
            let have = mine.len();
            let kept_slots = have.min(n);
            // Outdated ones go first on scale-in, so only those within the new size are
            // replaced.
            let outdated_total = mine.iter().filter(outdated).count();
            let removing = have.saturating_sub(n);
            let replaced = outdated_total.saturating_sub(removing).min(kept_slots);
            (replaced, n.saturating_sub(have), removing)
        }
        Allocation::LogicalIds(ids) => {
            let listed = |m: &&&Member| {
                m.logical_id
                    .as_ref()
                    .is_some_and(|l| ids.iter().any(|i| i == l))
            };
            let staying: Vec<&&Member> = mine.iter().filter(listed).collect();
            let present: std::collections::BTreeSet<&str> = staying
                .iter()
                .filter_map(|m| m.logical_id.as_deref())
                .collect();
            let replaced = staying.iter().filter(|m| outdated(m)).count();
            (
                replaced,
                ids.iter().filter(|l| !present.contains(l.as_str())).count(),
                mine.len() - staying.len(),
            )
        }
    };
    let kept = mine.len().saturating_sub(removing).saturating_sub(replaced);
    let mut parts = Vec::new();
    if replaced > 0 {
        parts.push(match &desired.allocation {
            Allocation::Size(_) => format!(
                "{replaced} replaced by rolling update (batches of MaxSurge {}, MaxUnavailable {})",
                desired.max_surge, desired.max_unavailable
            ),
            Allocation::LogicalIds(_) => format!(
                "{replaced} replaced by rolling update, one pet at a time (MaxUnavailable {})",
                desired.max_unavailable.max(1)
            ),
        });
    }
    if added > 0 {
        parts.push(format!("{added} added"));
    }
    if removing > 0 {
        let which = if chosen.is_empty() {
            String::new()
        } else {
            let shown: Vec<&str> = chosen.iter().take(10).map(String::as_str).collect();
            let more = chosen.len().saturating_sub(shown.len());
            format!(
                ": {}{} ({:?} first, after unhealthy and outdated ones; protected ones stay)",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                },
                desired.scale_down
            )
        };
        parts.push(format!("{removing} removed{which}"));
    }
    if kept > 0 {
        parts.push(format!("{kept} kept as they are"));
    }
    let summary = if parts.is_empty() {
        "nothing to change".to_string()
    } else {
        parts.join(", ")
    };
    Course {
        replaced,
        added,
        removed: chosen,
        removing,
        kept,
        summary,
    }
}

/// A value as one short line, for the terminal.
pub fn show(v: &Option<Value>) -> String {
    match v {
        None => "(absent)".to_string(),
        Some(v) => {
            let text = v.to_string();
            if text.chars().count() > 120 {
                format!("{}…", text.chars().take(119).collect::<String>())
            } else {
                text
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Health;

    fn spec(json: &str) -> GroupSpec {
        GroupSpec::parse(json, "t", false).unwrap()
    }

    const BASE: &str = r#"{"ID": "web", "Properties": {
        "Allocation": {"Size": 3},
        "Instance": {"Plugin": "instance-file", "Properties": {"Prefix": "web"}},
        "Flavor": {"Plugin": "flavor-vanilla", "Properties": {"Init": ["a", "b"]}}}}"#;

    #[test]
    fn changes_name_each_field_with_its_old_and_new_value() {
        let old = spec(BASE);
        let new = spec(
            &BASE
                .replace(r#""Size": 3"#, r#""Size": 5"#)
                .replace(r#"["a", "b"]"#, r#"["a", "c"]"#)
                .replace(
                    r#""Prefix": "web""#,
                    r#""Prefix": "web", "Metadata": {"x": 1}"#,
                ),
        );
        let changes = spec_changes(&old, &new);
        let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "Properties.Allocation.Size",
                "Properties.Flavor.Properties.Init[1]",
                "Properties.Instance.Properties.Metadata",
            ]
        );
        assert_eq!(changes[0].old, Some(3.into()));
        assert_eq!(changes[0].new, Some(5.into()));
        assert_eq!(changes[2].old, None);
        assert!(spec_changes(&old, &old).is_empty());
        // A list that changes length is one change.
        let longer = spec(&BASE.replace(r#"["a", "b"]"#, r#"["a", "b", "c"]"#));
        let c = spec_changes(&old, &longer);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].path, "Properties.Flavor.Properties.Init");
    }

    fn member(id: &str, sha: &str, index: u32) -> Member {
        Member {
            id: id.into(),
            group: "web".into(),
            logical_id: None,
            config_sha: sha.into(),
            created_ms: 1,
            index: Some(index),
            health: Health::Healthy,
            ..Default::default()
        }
    }

    #[test]
    fn the_course_of_a_grow_with_a_new_configuration_is_three_replaced_two_added() {
        let new = spec(
            &BASE
                .replace(r#""Size": 3"#, r#""Size": 5"#)
                .replace(r#"["a", "b"]"#, r#"["a", "c"]"#),
        );
        let d = Desired::from_spec(&new);
        let members: Vec<Member> = (0..3).map(|i| member(&format!("w{i}"), "old", i)).collect();
        let c = course(&d, &members, 1_000_000);
        assert_eq!((c.replaced, c.added, c.removing, c.kept), (3, 2, 0, 0));
        assert_eq!(
            c.summary,
            "3 replaced by rolling update (batches of MaxSurge 1, MaxUnavailable 0), 2 added"
        );
        // A scale-down names who goes, by the policy.
        let small = spec(&BASE.replace(r#""Size": 3"#, r#""Size": 1"#));
        let d = Desired::from_spec(&small);
        let sha = small.config_sha();
        let members: Vec<Member> = (0..3).map(|i| member(&format!("w{i}"), &sha, i)).collect();
        let c = course(&d, &members, 1_000_000);
        assert_eq!(c.removed, ["w2", "w1"]);
        assert!(
            c.summary
                .starts_with("2 removed: w2, w1 (HighestIndex first"),
            "{}",
            c.summary
        );
        assert!(c.summary.ends_with("1 kept as they are"), "{}", c.summary);
    }
}
