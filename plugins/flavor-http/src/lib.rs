//! `flavor-http`: an instance is healthy when an HTTP probe of it answers as expected.
//!
//! The probe's URL is a template filled from the instance's description:
//!
//! - `{port}`: the first host port the instance published (`Ports` in its properties, as
//!   `instance-docker` reports them), `{port:80}` or `{port:53/udp}` the one for that port;
//! - `{tag:KEY}`: a tag's value (percent-encoded); `{id}`, `{logical_id}`.
//!
//! An instance is unhealthy after `FailureThreshold` consecutive failed probes (a wrong status,
//! a timeout, a refused connection, a port not published yet) and `unknown` before that, so one
//! slow answer does not get a machine replaced. The count is kept per instance in the plugin's
//! scratch directory, since every call runs in a fresh sandbox. Like `flavor-vanilla` it can add
//! `Init` lines and `Tags`, so one flavor both starts the service and judges it.
//!
//! The probe's targets must be granted (e.g. `allow = ["http://127.0.0.1:*"]`).

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use infrakit_sdk::{
    Allocation, Capability, Description, Error, FlavorPlugin, Health, Index, InstanceSpec,
    Properties, Result, http,
};
use serde::Deserialize;

/// Where failure counts are kept unless the `state_dir` config value says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/data";

/// Properties of the probe.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct HttpProperties {
    /// The URL template, e.g. `http://127.0.0.1:{port}/health`.
    pub url: String,
    /// Statuses that mean healthy (default: any 2xx).
    #[serde(default)]
    pub expected_status: Vec<u16>,
    /// How long a probe may take: `500ms`, `2s` (default 2s).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Consecutive failures before the instance is unhealthy (default 3).
    #[serde(default)]
    pub failure_threshold: Option<u32>,
    /// Lines appended to the init script.
    #[serde(default)]
    pub init: Vec<String>,
    /// Tags added to every instance.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |i| text.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as \"500ms\" or \"2s\""))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        _ => return Err(format!("{text:?}: the unit must be ms or s")),
    };
    if d.is_zero() || d > Duration::from_secs(20) {
        return Err(format!("{text:?} is not between 1ms and 20s"));
    }
    Ok(d)
}

impl HttpProperties {
    fn parse(properties: &Properties) -> Result<Self> {
        let p: HttpProperties = properties.parse()?;
        let invalid = |field: &str, why: String| {
            Err(Error::invalid(format!("properties at `{field}`: {why}")))
        };
        if !(p.url.starts_with("http://") || p.url.starts_with("https://")) {
            return invalid(
                "Url",
                format!("{:?} is not an http:// or https:// URL", p.url),
            );
        }
        if let Err(why) = placeholders(&p.url) {
            return invalid("Url", why);
        }
        if let Some(t) = &p.timeout
            && let Err(why) = parse_duration(t)
        {
            return invalid("Timeout", why);
        }
        if p.failure_threshold == Some(0) {
            return invalid("FailureThreshold", "must be at least 1".into());
        }
        if let Some(s) = p.expected_status.iter().find(|s| !(100..600).contains(*s)) {
            return invalid("ExpectedStatus", format!("{s} is not an HTTP status"));
        }
        Ok(p)
    }

    fn timeout(&self) -> Duration {
        self.timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .unwrap_or(Duration::from_secs(2))
    }

    fn threshold(&self) -> u32 {
        self.failure_threshold.unwrap_or(3)
    }

    fn expected(&self, status: u16) -> bool {
        if self.expected_status.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expected_status.contains(&status)
        }
    }
}

/// The placeholders of a template, checked.
fn placeholders(template: &str) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in {template:?}"))?;
        let name = &after[..end];
        let known = matches!(name, "port" | "id" | "logical_id")
            || name.strip_prefix("port:").is_some_and(|p| {
                let (n, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                n.parse::<u16>().is_ok() && matches!(proto, "tcp" | "udp" | "sctp")
            })
            || name.strip_prefix("tag:").is_some_and(|k| !k.is_empty());
        if !known {
            return Err(format!(
                "unknown placeholder `{{{name}}}`; expected {{port}}, {{port:N}}, {{tag:KEY}}, {{id}} or {{logical_id}}"
            ));
        }
        out.push(name.to_string());
        rest = &after[end + 1..];
    }
    Ok(out)
}

/// The probe URL for `instance`, or why it cannot be made yet.
fn probe_url(template: &str, instance: &Description) -> std::result::Result<String, String> {
    let ports: BTreeMap<String, u16> = instance
        .properties
        .as_ref()
        .and_then(|p| serde_json::from_str::<serde_json::Value>(p.as_str()).ok())
        .and_then(|v| serde_json::from_value(v.get("Ports")?.clone()).ok())
        .unwrap_or_default();
    let mut url = template.to_string();
    for name in placeholders(template)? {
        let value = match name.as_str() {
            "port" => ports
                .values()
                .next()
                .map(u16::to_string)
                .ok_or("no published port yet")?,
            "id" => http::encode(&instance.id),
            "logical_id" => http::encode(instance.logical_id.as_deref().ok_or("no logical id")?),
            other => match (other.strip_prefix("port:"), other.strip_prefix("tag:")) {
                (Some(p), _) => {
                    let key = if p.contains('/') {
                        p.to_string()
                    } else {
                        format!("{p}/tcp")
                    };
                    ports
                        .get(&key)
                        .map(u16::to_string)
                        .ok_or_else(|| format!("port {key} is not published"))?
                }
                (_, Some(k)) => {
                    http::encode(instance.tag(k).ok_or_else(|| format!("no tag {k:?}"))?)
                }
                _ => unreachable!("placeholders() checked the names"),
            },
        };
        url = url.replacen(&format!("{{{name}}}"), &value, 1);
    }
    Ok(url)
}

/// The plugin: where failure counts live.
#[derive(Debug)]
pub struct HttpFlavor {
    state_dir: PathBuf,
}

impl Default for HttpFlavor {
    fn default() -> Self {
        let dir =
            infrakit_sdk::config("state_dir").unwrap_or_else(|| DEFAULT_STATE_DIR.to_string());
        HttpFlavor::new(dir)
    }
}

impl HttpFlavor {
    /// A flavor keeping its failure counts under `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        HttpFlavor {
            state_dir: state_dir.into(),
        }
    }

    fn count_file(&self, id: &str) -> PathBuf {
        // Ids come from an instance plugin: hex-encode them into a safe file name.
        let name: String = id.bytes().map(|b| format!("{b:02x}")).collect();
        self.state_dir.join("failures").join(name)
    }

    fn failures(&self, id: &str) -> u32 {
        fs::read_to_string(self.count_file(id))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Removes counts untouched for an hour: those of instances that went away without a
    /// drain (lost ones). A failing instance's count is rewritten at every check.
    fn prune_stale(&self) {
        let Ok(entries) = fs::read_dir(self.state_dir.join("failures")) else {
            return;
        };
        let hour = Duration::from_secs(3600);
        for entry in entries.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > hour);
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    fn set_failures(&self, id: &str, n: u32) {
        let path = self.count_file(id);
        let result = if n == 0 {
            match fs::remove_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        } else {
            fs::create_dir_all(path.parent().expect("has a parent"))
                .and_then(|()| fs::write(&path, n.to_string()))
        };
        if let Err(e) = result {
            infrakit_sdk::warn!("keeping the failure count of {id}: {e}");
        }
    }
}

impl FlavorPlugin for HttpFlavor {
    fn capabilities(&self) -> Vec<Capability> {
        vec![
            Capability::Http("http://127.0.0.1:*".to_string()),
            Capability::Config("state_dir".to_string()),
        ]
    }

    fn validate(&self, properties: &Properties, _allocation: &Allocation) -> Result<()> {
        HttpProperties::parse(properties).map(|_| ())
    }

    fn prepare(
        &self,
        properties: &Properties,
        mut spec: InstanceSpec,
        _allocation: &Allocation,
        _index: &Index,
    ) -> Result<InstanceSpec> {
        let props = HttpProperties::parse(properties)?;
        if !props.init.is_empty() {
            if !spec.init.is_empty() && !spec.init.ends_with('\n') {
                spec.init.push('\n');
            }
            spec.init.push_str(&props.init.join("\n"));
        }
        for (k, v) in props.tags {
            spec = spec.with_tag(k, v);
        }
        Ok(spec)
    }

    fn healthy(&self, properties: &Properties, instance: &Description) -> Result<Health> {
        let props = HttpProperties::parse(properties)?;
        let failure = match probe_url(&props.url, instance) {
            Err(why) => Some(why),
            Ok(url) => match http::get(&url).timeout(props.timeout()).send() {
                Ok(r) if props.expected(r.status) => None,
                Ok(r) => Some(format!("{url} answered {}", r.status)),
                Err(e @ http::HttpError::Denied { .. }) => {
                    // The operator's grant, not the instance, is wrong: do not condemn it.
                    return Err(Error::other(e.to_string()));
                }
                Err(e) => Some(e.to_string()),
            },
        };
        match failure {
            None => {
                self.set_failures(&instance.id, 0);
                Ok(Health::Healthy)
            }
            Some(why) => {
                self.prune_stale();
                let n = self.failures(&instance.id).saturating_add(1);
                self.set_failures(&instance.id, n);
                infrakit_sdk::debug!(
                    "probe of {} failed ({n} of {}): {why}",
                    instance.id,
                    props.threshold()
                );
                Ok(if n >= props.threshold() {
                    Health::Unhealthy
                } else {
                    Health::Unknown
                })
            }
        }
    }

    fn drain(&self, _properties: &Properties, instance: &Description) -> Result<()> {
        self.set_failures(&instance.id, 0);
        Ok(())
    }
}

infrakit_sdk::export_flavor!(HttpFlavor);

#[cfg(test)]
mod tests {
    use super::*;
    use infrakit_sdk::http::{HttpError, Response};
    use infrakit_sdk::testing::Host;
    use std::cell::Cell;
    use std::rc::Rc;

    fn instance(ports: serde_json::Value) -> Description {
        Description {
            id: "c1/../x".into(),
            logical_id: Some("web1".into()),
            tags: vec![("role".into(), "a b".into())],
            properties: Some(Properties::new(
                serde_json::json!({"Ports": ports}).to_string(),
            )),
        }
    }

    #[test]
    fn urls_are_filled_from_the_description() {
        let i = instance(serde_json::json!({"80/tcp": 32768, "53/udp": 32769}));
        assert_eq!(
            probe_url(
                "http://127.0.0.1:{port:80}/h?r={tag:role}&n={logical_id}",
                &i
            )
            .unwrap(),
            "http://127.0.0.1:32768/h?r=a%20b&n=web1"
        );
        assert_eq!(
            probe_url("http://127.0.0.1:{port:53/udp}/", &i).unwrap(),
            "http://127.0.0.1:32769/"
        );
        assert!(probe_url("http://127.0.0.1:{port:81}/", &i).is_err());
        assert!(probe_url("http://127.0.0.1:{port}/", &instance(serde_json::json!({}))).is_err());
        assert_eq!(
            probe_url("http://x/{id}", &i).unwrap(),
            "http://x/c1%2F..%2Fx"
        );
    }

    #[test]
    fn bad_properties_name_the_field() {
        let f = HttpFlavor::new("/nowhere");
        for (props, field) in [
            (r#"{"Url": "ftp://x"}"#, "Url"),
            (r#"{"Url": "http://x/{nope}"}"#, "Url"),
            (r#"{"Url": "http://x/{port"}"#, "Url"),
            (r#"{"Url": "http://x/", "Timeout": "2h"}"#, "Timeout"),
            (
                r#"{"Url": "http://x/", "FailureThreshold": 0}"#,
                "FailureThreshold",
            ),
            (
                r#"{"Url": "http://x/", "ExpectedStatus": [999]}"#,
                "ExpectedStatus",
            ),
        ] {
            let err = f
                .validate(&Properties::new(props), &Allocation::Size(1))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{props}: {err}");
        }
    }

    #[test]
    fn unhealthy_only_after_the_threshold_and_reset_by_success() {
        let dir = tempfile::tempdir().unwrap();
        let up = Rc::new(Cell::new(false));
        let state = up.clone();
        let host = Host::new().with_http(move |req| {
            assert_eq!(req.url, "http://127.0.0.1:32768/health");
            if state.get() {
                Ok(Response {
                    status: 200,
                    headers: vec![],
                    body: vec![],
                })
            } else {
                Err(HttpError::Connection("refused".into()))
            }
        });
        let _g = host.install();
        let f = HttpFlavor::new(dir.path());
        let props =
            Properties::new(r#"{"Url": "http://127.0.0.1:{port}/health", "FailureThreshold": 2}"#);
        let i = instance(serde_json::json!({"80/tcp": 32768}));
        assert_eq!(f.healthy(&props, &i), Ok(Health::Unknown));
        up.set(true);
        assert_eq!(f.healthy(&props, &i), Ok(Health::Healthy));
        up.set(false);
        assert_eq!(
            f.healthy(&props, &i),
            Ok(Health::Unknown),
            "success reset the count"
        );
        assert_eq!(f.healthy(&props, &i), Ok(Health::Unhealthy));
        f.drain(&props, &i).unwrap();
        assert_eq!(f.failures(&i.id), 0);
    }
}
