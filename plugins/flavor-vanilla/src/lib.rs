//! `flavor-vanilla`: InfraKit's vanilla flavor. It adds init script lines, tags and per-pet
//! attachments from its properties, and judges every instance that still exists healthy.
//!
//! Init lines may use `{{group}}`, `{{index}}` and `{{logical_id}}`, filled in at `prepare`.
//! `UnhealthyTags` marks instances carrying any of the given tags unhealthy, for deployments
//! whose health is decided by something that labels instances (and for testing remediation).

use std::collections::BTreeMap;

use infrakit_sdk::{
    Allocation, Attachment, Description, Error, FlavorPlugin, Health, Index, InstanceSpec,
    Properties, Result,
};
use serde::Deserialize;

/// Properties accepted by this flavor.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "PascalCase")]
pub struct VanillaProperties {
    /// Lines appended to the instance's init script.
    pub init: Vec<String>,
    /// Tags added to every instance.
    pub tags: BTreeMap<String, String>,
    /// Attachments per logical id (pets only).
    pub attachments: BTreeMap<String, Vec<AttachmentProperty>>,
    /// Instances carrying any of these tags are reported unhealthy.
    pub unhealthy_tags: BTreeMap<String, String>,
}

/// One attachment of a pet.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentProperty {
    /// The attachment's id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its kind (`volume`, `address`...).
    #[serde(rename = "Type")]
    pub kind: String,
}

/// The plugin; stateless.
#[derive(Debug, Default)]
pub struct Vanilla;

const PLACEHOLDERS: [&str; 3] = ["group", "index", "logical_id"];

fn render(line: &str, index: &Index, logical_id: Option<&str>) -> String {
    line.replace("{{group}}", &index.group)
        .replace("{{index}}", &index.sequence.to_string())
        .replace("{{logical_id}}", logical_id.unwrap_or(""))
}

impl FlavorPlugin for Vanilla {
    fn validate(&self, properties: &Properties, allocation: &Allocation) -> Result<()> {
        let props: VanillaProperties = properties.parse()?;
        for (i, line) in props.init.iter().enumerate() {
            let mut rest = line.as_str();
            while let Some(start) = rest.find("{{") {
                let after = &rest[start + 2..];
                let Some(end) = after.find("}}") else {
                    return Err(Error::invalid(format!(
                        "properties at `Init[{i}]`: unclosed `{{{{`"
                    )));
                };
                let name = after[..end].trim();
                if !PLACEHOLDERS.contains(&name) {
                    return Err(Error::invalid(format!(
                        "properties at `Init[{i}]`: unknown placeholder `{{{{{name}}}}}`; \
                         expected one of {PLACEHOLDERS:?}"
                    )));
                }
                rest = &after[end + 2..];
            }
        }
        if !props.attachments.is_empty() {
            let Allocation::LogicalIds(ids) = allocation else {
                return Err(Error::invalid(
                    "properties at `Attachments`: attachments need a group of pets \
                     (Allocation.LogicalIDs), this one is sized",
                ));
            };
            if let Some(unknown) = props.attachments.keys().find(|k| !ids.contains(k)) {
                return Err(Error::invalid(format!(
                    "properties at `Attachments.{unknown}`: {unknown:?} is not one of the \
                     group's logical ids {ids:?}"
                )));
            }
        }
        Ok(())
    }

    fn prepare(
        &self,
        properties: &Properties,
        mut spec: InstanceSpec,
        _allocation: &Allocation,
        index: &Index,
    ) -> Result<InstanceSpec> {
        let props: VanillaProperties = properties.parse()?;
        let logical_id = spec.logical_id.clone();
        let lines: Vec<String> = props
            .init
            .iter()
            .map(|l| render(l, index, logical_id.as_deref()))
            .collect();
        if !lines.is_empty() {
            if !spec.init.is_empty() && !spec.init.ends_with('\n') {
                spec.init.push('\n');
            }
            spec.init.push_str(&lines.join("\n"));
        }
        for (k, v) in props.tags {
            spec = spec.with_tag(k, v);
        }
        if let Some(id) = &logical_id {
            for a in props.attachments.get(id).into_iter().flatten() {
                spec.attachments.push(Attachment {
                    id: a.id.clone(),
                    kind: a.kind.clone(),
                });
            }
        }
        Ok(spec)
    }

    fn healthy(&self, properties: &Properties, instance: &Description) -> Result<Health> {
        let props: VanillaProperties = properties.parse()?;
        let marked = props
            .unhealthy_tags
            .iter()
            .any(|(k, v)| instance.tag(k) == Some(v.as_str()));
        Ok(if marked {
            Health::Unhealthy
        } else {
            Health::Healthy
        })
    }

    fn drain(&self, _properties: &Properties, instance: &Description) -> Result<()> {
        infrakit_sdk::debug!("drain {}: nothing to move", instance.id);
        Ok(())
    }
}

infrakit_sdk::export_flavor!(Vanilla);

#[cfg(test)]
mod tests {
    use super::*;

    fn props(json: &str) -> Properties {
        Properties::new(json)
    }

    #[test]
    fn prepare_renders_init_and_tags() {
        let spec = InstanceSpec {
            init: "#!/bin/sh".into(),
            logical_id: Some("zk1".into()),
            ..Default::default()
        };
        let index = Index {
            group: "zk".into(),
            sequence: 1,
        };
        let p = props(
            r#"{"Init": ["echo {{group}}-{{index}}", "start {{logical_id}}"],
                "Tags": {"role": "zk"},
                "Attachments": {"zk1": [{"ID": "vol-1", "Type": "volume"}]}}"#,
        );
        let alloc = Allocation::LogicalIds(vec!["zk1".into()]);
        Vanilla.validate(&p, &alloc).unwrap();
        let out = Vanilla.prepare(&p, spec, &alloc, &index).unwrap();
        assert_eq!(out.init, "#!/bin/sh\necho zk-1\nstart zk1");
        assert_eq!(out.tag("role"), Some("zk"));
        assert_eq!(out.attachments.len(), 1);
        assert_eq!(out.attachments[0].id, "vol-1");
    }

    #[test]
    fn validate_names_the_field() {
        let alloc = Allocation::Size(3);
        let err = Vanilla
            .validate(&props(r#"{"Init": "echo"}"#), &alloc)
            .unwrap_err();
        assert!(err.to_string().contains("`Init`"), "{err}");
        let err = Vanilla
            .validate(&props(r#"{"Init": ["{{nope}}"]}"#), &alloc)
            .unwrap_err();
        assert!(err.to_string().contains("`Init[0]`"), "{err}");
        let err = Vanilla
            .validate(
                &props(r#"{"Attachments": {"zk9": []}}"#),
                &Allocation::LogicalIds(vec!["zk1".into()]),
            )
            .unwrap_err();
        assert!(err.to_string().contains("`Attachments.zk9`"), "{err}");
    }

    #[test]
    fn unhealthy_tags_mark_instances() {
        let p = props(r#"{"UnhealthyTags": {"health": "bad"}}"#);
        let mut d = Description {
            id: "i-1".into(),
            ..Default::default()
        };
        assert_eq!(Vanilla.healthy(&p, &d).unwrap(), Health::Healthy);
        d.tags.push(("health".into(), "bad".into()));
        assert_eq!(Vanilla.healthy(&p, &d).unwrap(), Health::Unhealthy);
    }
}
