//! A group's flavor: one flavor plugin, or `combo`, InfraKit's flavor that composes flavors.
//!
//! `combo` is built into the host rather than being a plugin: it calls each listed flavor in
//! that flavor's own sandbox, with that flavor's own grants, so composing flavors never widens
//! what any one of them may do. Its properties are InfraKit's:
//! `{"Flavors": [{"Plugin": "...", "Properties": {...}}, ...]}` (a bare list is read too).
//!
//! - `prepare` gives each flavor the instance spec as it came in, with no init script, and
//!   merges their answers in order: init scripts concatenated, tags merged (a later flavor's
//!   value wins), attachments added, instance properties as the last flavor that changed them.
//!   No flavor sees or undoes another's work, as in InfraKit.
//! - `healthy` is the worst verdict of all: unhealthy over an error over unknown over healthy.
//! - `drain` drains through each in order; every one is asked even when one fails.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{Error, FlavorClient, GuestError};
use crate::model::{Allocation, Description, Health, Index, InstanceSpec};

/// The names a spec gives the combo flavor: ours, and InfraKit's.
pub const NAMES: [&str; 2] = ["flavor-combo", "combo"];

/// Whether a spec's flavor plugin name means the combo flavor (`combo/...` too).
pub fn is_combo(name: &str) -> bool {
    let base = name.split_once('/').map_or(name, |(base, _)| base);
    NAMES.contains(&base)
}

/// One flavor of a combo, as written in the spec.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct PartSpec {
    /// The flavor plugin.
    pub plugin: String,
    /// Its properties.
    #[serde(default)]
    pub properties: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct ComboProperties {
    flavors: Vec<PartSpec>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Written {
    Object(ComboProperties),
    List(Vec<PartSpec>),
}

/// The most flavors one combo may list.
const MAX_PARTS: usize = 16;

fn invalid(export: &'static str, message: String) -> Error {
    Error::Guest {
        plugin: NAMES[0].to_string(),
        export,
        error: GuestError::Invalid(message),
    }
}

/// Reads a combo's properties: the flavors it lists, in order.
pub fn parts(properties: &serde_json::Value) -> Result<Vec<PartSpec>, Error> {
    let written: Written = serde_json::from_value(properties.clone()).map_err(|e| {
        invalid(
            "validate",
            format!(
                "properties: {e}; expected {{\"Flavors\": [{{\"Plugin\": NAME, \"Properties\": \
                 {{...}}}}, ...]}}"
            ),
        )
    })?;
    let parts = match written {
        Written::Object(c) => c.flavors,
        Written::List(l) => l,
    };
    if parts.is_empty() || parts.len() > MAX_PARTS {
        return Err(invalid(
            "validate",
            format!("properties at `Flavors`: list 1 to {MAX_PARTS} flavors"),
        ));
    }
    for (i, p) in parts.iter().enumerate() {
        if is_combo(&p.plugin) {
            return Err(invalid(
                "validate",
                format!("properties at `Flavors[{i}].Plugin`: a combo cannot list a combo"),
            ));
        }
    }
    Ok(parts)
}

/// The flavor of a group.
#[derive(Clone, Debug)]
pub enum GroupFlavor {
    /// One flavor plugin.
    One(FlavorClient),
    /// Flavors composed, each with its own properties.
    Combo(Arc<Vec<(FlavorClient, serde_json::Value)>>),
}

/// Labels an error of part `i` with where it is in the spec.
fn in_part(i: usize, client: &FlavorClient, export: &'static str, e: Error) -> Error {
    match e {
        Error::Guest { error, .. } => Error::Guest {
            plugin: format!("{} (combo Flavors[{i}]: {})", NAMES[0], client.name()),
            export,
            error,
        },
        other => other,
    }
}

/// The worse of two verdicts, an error counting between unhealthy and unknown.
fn worse(a: Result<Health, Error>, b: Result<Health, Error>) -> Result<Health, Error> {
    let rank = |r: &Result<Health, Error>| match r {
        Ok(Health::Unhealthy) => 3,
        Err(_) => 2,
        Ok(Health::Unknown) => 1,
        Ok(Health::Healthy) => 0,
    };
    if rank(&b) > rank(&a) { b } else { a }
}

impl GroupFlavor {
    /// For logs and messages.
    pub fn name(&self) -> String {
        match self {
            GroupFlavor::One(f) => f.name().to_string(),
            GroupFlavor::Combo(parts) => {
                let names: Vec<&str> = parts.iter().map(|(c, _)| c.name()).collect();
                format!("combo({})", names.join(" + "))
            }
        }
    }

    /// A recent time per health check: the sum of the parts' (each instance is checked by
    /// every one of them).
    pub fn check_time(&self) -> Option<Duration> {
        match self {
            GroupFlavor::One(f) => f.check_time(),
            GroupFlavor::Combo(parts) => parts
                .iter()
                .map(|(c, _)| c.check_time())
                .try_fold(Duration::ZERO, |sum, t| t.map(|t| sum + t)),
        }
    }

    /// Checks properties against an allocation (a combo's parts each check their own).
    pub async fn validate(
        &self,
        properties: &serde_json::Value,
        allocation: &Allocation,
    ) -> Result<(), Error> {
        match self {
            GroupFlavor::One(f) => f.validate(properties, allocation).await,
            GroupFlavor::Combo(parts) => {
                for (i, (c, props)) in parts.iter().enumerate() {
                    c.validate(props, allocation)
                        .await
                        .map_err(|e| in_part(i, c, "validate", e))?;
                }
                Ok(())
            }
        }
    }

    /// Shapes a spec before it is provisioned.
    pub async fn prepare(
        &self,
        properties: &serde_json::Value,
        spec: &InstanceSpec,
        allocation: &Allocation,
        index: &Index,
    ) -> Result<InstanceSpec, Error> {
        let parts = match self {
            GroupFlavor::One(f) => return f.prepare(properties, spec, allocation, index).await,
            GroupFlavor::Combo(parts) => parts,
        };
        let mut merged = spec.clone();
        let blank = InstanceSpec {
            init: String::new(),
            ..spec.clone()
        };
        for (i, (c, props)) in parts.iter().enumerate() {
            let out = c
                .prepare(props, &blank, allocation, index)
                .await
                .map_err(|e| in_part(i, c, "prepare", e))?;
            if !out.init.is_empty() {
                if !merged.init.is_empty() && !merged.init.ends_with('\n') {
                    merged.init.push('\n');
                }
                merged.init.push_str(&out.init);
            }
            merged.tags.extend(out.tags);
            for a in out.attachments {
                if !merged.attachments.contains(&a) {
                    merged.attachments.push(a);
                }
            }
            if out.properties != blank.properties {
                merged.properties = out.properties;
            }
        }
        Ok(merged)
    }

    /// Health of several instances, in their order (a combo: the worst verdict of its parts).
    pub async fn healthy_many(
        &self,
        properties: &serde_json::Value,
        instances: &[&Description],
    ) -> Vec<Result<Health, Error>> {
        let parts = match self {
            GroupFlavor::One(f) => return f.healthy_many(properties, instances).await,
            GroupFlavor::Combo(parts) => parts,
        };
        let mut verdicts: Vec<Result<Health, Error>> =
            instances.iter().map(|_| Ok(Health::Healthy)).collect();
        for (i, (c, props)) in parts.iter().enumerate() {
            let answers = c.healthy_many(props, instances).await;
            verdicts = verdicts
                .into_iter()
                .zip(answers)
                .map(|(v, a)| worse(v, a.map_err(|e| in_part(i, c, "healthy", e))))
                .collect();
        }
        verdicts
    }

    /// Moves work off an instance before it is destroyed (a combo: through every part, in
    /// order; the first failure is answered once all were asked).
    pub async fn drain(
        &self,
        properties: &serde_json::Value,
        instance: &Description,
    ) -> Result<(), Error> {
        let parts = match self {
            GroupFlavor::One(f) => return f.drain(properties, instance).await,
            GroupFlavor::Combo(parts) => parts,
        };
        let mut first = Ok(());
        for (i, (c, props)) in parts.iter().enumerate() {
            if let Err(e) = c.drain(props, instance).await
                && first.is_ok()
            {
                first = Err(in_part(i, c, "drain", e));
            }
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combo_properties_are_infrakits_list_of_flavors() {
        let p = parts(&serde_json::json!({"Flavors": [
            {"Plugin": "vanilla", "Properties": {"Init": ["a"]}},
            {"Plugin": "flavor-zookeeper"}
        ]}))
        .unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].plugin, "vanilla");
        assert_eq!(p[1].properties, serde_json::Value::Null);
        let bare = parts(&serde_json::json!([{"Plugin": "vanilla"}])).unwrap();
        assert_eq!(bare[0].plugin, "vanilla");
        for (bad, says) in [
            (serde_json::json!({"Flavors": []}), "1 to 16"),
            (
                serde_json::json!({"Flavors": [{"Plugin": "combo"}]}),
                "cannot list a combo",
            ),
            (serde_json::json!({"Flavours": []}), "expected"),
            (
                serde_json::json!({"Flavors": [{"Plugin": "x", "Props": 1}]}),
                "expected",
            ),
        ] {
            let e = parts(&bad).unwrap_err();
            assert!(
                matches!(e.guest_error(), Some(GuestError::Invalid(m)) if m.contains(says)),
                "{bad}: {e:?}"
            );
        }
        assert!(is_combo("combo") && is_combo("flavor-combo") && is_combo("combo/x"));
        assert!(!is_combo("flavor-vanilla"));
    }

    #[test]
    fn the_worst_verdict_wins() {
        let err = || Err(Error::Loading { name: "x".into() });
        assert_eq!(
            worse(Ok(Health::Healthy), Ok(Health::Unknown)).unwrap(),
            Health::Unknown
        );
        assert!(worse(Ok(Health::Unknown), err()).is_err());
        assert_eq!(
            worse(err(), Ok(Health::Unhealthy)).unwrap(),
            Health::Unhealthy
        );
        assert_eq!(
            worse(Ok(Health::Unhealthy), Ok(Health::Healthy)).unwrap(),
            Health::Unhealthy
        );
    }
}
