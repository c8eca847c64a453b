//! `instance-docker`: every instance is a container of a Docker Engine.
//!
//! The plugin speaks the Engine's HTTP API to `http://docker` (the `endpoint` config value),
//! which the operator maps to the engine's unix socket in the plugin's grant, with rules on the
//! methods, paths and request bodies it may use (see `examples/docker/instance-docker.toml`).
//! The plugin never sees the socket itself.
//!
//! - **Identity**: the instance's tags become container labels at create; `describe` filters on
//!   them, so a restarted daemon finds its containers again without touching them. Labels cannot
//!   change after a container is created, so `label` answers `invalid`.
//! - **Init**: the flavor's init script is passed in the environment as `INFRAKIT_INIT`; with
//!   `"InitAs": "command"` it also becomes the command, run as `/bin/sh -c INIT`.
//! - **Liveness**: created, running, paused and restarting containers are listed; an exited one
//!   counts as lost (the group replaces it). Exited containers of a group are kept for
//!   `docker logs` until the group's next provision removes them.
//! - **Ports** are published on 127.0.0.1 only; `describe` reports the host ports it got under
//!   `Ports` in the instance's properties (always: they come with the listing), which is what
//!   `flavor-http` probes.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use infrakit_sdk::http::{self, HttpError};
use infrakit_sdk::{
    Capability, Description, DestroyContext, Error, InstancePlugin, InstanceSpec, Properties,
    Result, Tags,
};
use serde::Deserialize;
use serde_json::{Value, json};

/// Where the Engine's API is, unless the `endpoint` config value says otherwise.
pub const DEFAULT_ENDPOINT: &str = "http://docker";
/// Label holding a pet's logical id.
pub const LOGICAL_ID_LABEL: &str = "infrakit-docker.logical-id";
/// Environment variable carrying the flavor's init script.
pub const INIT_ENV: &str = "INFRAKIT_INIT";
/// Longest `StopTimeout`: a destroy must finish within the call's wall-clock limit (30 s by
/// default), stop and remove included.
pub const MAX_STOP_TIMEOUT: u32 = 20;
const PAGE: usize = 100;

/// Container properties, after InfraKit's Docker plugin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct DockerProperties {
    /// The image, which must already be on the engine (the plugin never pulls).
    pub image: String,
    /// The command (Docker's `Cmd`).
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// The entrypoint.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Environment, as `NAME=value`.
    #[serde(default)]
    pub env: Vec<String>,
    /// Container ports published on 127.0.0.1: `"80"`, `"53/udp"`, or `"8080:80"` for a fixed
    /// host port (otherwise the engine picks one).
    #[serde(default)]
    pub ports: Vec<String>,
    /// Bind mounts (the grant decides which host directories are allowed).
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// The network (`bridge` by default).
    #[serde(default)]
    pub network: Option<String>,
    /// Memory limit in bytes.
    #[serde(default)]
    pub memory: Option<u64>,
    /// CPU limit, in CPUs (e.g. 0.5).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// The user to run as.
    #[serde(default)]
    pub user: Option<String>,
    /// The working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Seconds between SIGTERM and SIGKILL at destroy (default 10, at most 20).
    #[serde(default)]
    pub stop_timeout: Option<u32>,
    /// How the flavor's init reaches the container: `env` (default) or `command`.
    #[serde(default)]
    pub init_as: InitAs,
    /// Extra labels (identity tags win over them).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// One bind mount.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Mount {
    /// The host directory.
    pub source: String,
    /// Where the container sees it.
    pub target: String,
    /// Read-only (default false).
    #[serde(default)]
    pub read_only: bool,
}

/// How the init script is passed.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InitAs {
    /// In `INFRAKIT_INIT` only.
    #[default]
    Env,
    /// In `INFRAKIT_INIT`, and as the command `/bin/sh -c INIT`.
    Command,
}

/// A published port: (container port with protocol, fixed host port or none).
fn parse_port(text: &str) -> std::result::Result<(String, Option<u16>), String> {
    let (host, container) = match text.split_once(':') {
        Some((h, c)) => (Some(h), c),
        None => (None, text),
    };
    let (number, proto) = container.split_once('/').unwrap_or((container, "tcp"));
    if !matches!(proto, "tcp" | "udp" | "sctp") {
        return Err(format!("protocol {proto:?} is not tcp, udp or sctp"));
    }
    let port: u16 = number
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{number:?} is not a port 1-65535"))?;
    let host = host
        .map(|h| {
            h.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("host port {h:?} is not 1-65535"))
        })
        .transpose()?;
    Ok((format!("{port}/{proto}"), host))
}

impl DockerProperties {
    fn parse(properties: &Properties) -> Result<Self> {
        let p: DockerProperties = properties.parse()?;
        let invalid = |field: &str, why: String| {
            Err(Error::invalid(format!("properties at `{field}`: {why}")))
        };
        if p.image.trim().is_empty() {
            return invalid("Image", "an image is required".into());
        }
        for (i, e) in p.env.iter().enumerate() {
            if !e.contains('=') || e.starts_with('=') {
                return invalid(&format!("Env[{i}]"), format!("{e:?} is not NAME=value"));
            }
        }
        for (i, port) in p.ports.iter().enumerate() {
            if let Err(why) = parse_port(port) {
                return invalid(&format!("Ports[{i}]"), why);
            }
        }
        for (i, m) in p.mounts.iter().enumerate() {
            if !m.source.starts_with('/') || !m.target.starts_with('/') {
                return invalid(
                    &format!("Mounts[{i}]"),
                    "Source and Target must be absolute paths".into(),
                );
            }
        }
        if let Some(t) = p.stop_timeout
            && t > MAX_STOP_TIMEOUT
        {
            return invalid(
                "StopTimeout",
                format!(
                    "{t}s is more than {MAX_STOP_TIMEOUT}s (a destroy must end within the call's time limit)"
                ),
            );
        }
        if let Some(c) = p.cpus
            && !(c > 0.0 && c <= 1024.0)
        {
            return invalid("Cpus", format!("{c} is not a CPU count above 0"));
        }
        Ok(p)
    }

    /// The body of `POST /containers/create`.
    fn create_body(&self, spec: &InstanceSpec) -> Value {
        let mut labels: BTreeMap<String, String> = self.labels.clone();
        for (k, v) in &spec.tags {
            labels.insert(k.clone(), v.clone());
        }
        if let Some(id) = &spec.logical_id {
            labels.insert(LOGICAL_ID_LABEL.into(), id.clone());
        }
        let mut env = self.env.clone();
        if !spec.init.is_empty() {
            env.push(format!("{INIT_ENV}={}", spec.init));
        }
        let cmd = if self.init_as == InitAs::Command && !spec.init.is_empty() {
            Some(vec!["/bin/sh".to_string(), "-c".into(), spec.init.clone()])
        } else {
            self.cmd.clone()
        };
        let mut exposed = serde_json::Map::new();
        let mut bindings = serde_json::Map::new();
        for port in &self.ports {
            let (container, host) = parse_port(port).expect("validated");
            exposed.insert(container.clone(), json!({}));
            bindings.insert(
                container,
                json!([{"HostIp": "127.0.0.1", "HostPort": host.map(|p| p.to_string()).unwrap_or_default()}]),
            );
        }
        let mounts: Vec<Value> = self
            .mounts
            .iter()
            .map(|m| json!({"Type": "bind", "Source": m.source, "Target": m.target, "ReadOnly": m.read_only}))
            .collect();
        let mut host_config = json!({
            "PortBindings": bindings,
            "Mounts": mounts,
            "NetworkMode": self.network.clone().unwrap_or_else(|| "bridge".into()),
        });
        if let Some(m) = self.memory {
            host_config["Memory"] = json!(m);
        }
        if let Some(c) = self.cpus {
            host_config["NanoCpus"] = json!((c * 1e9) as u64);
        }
        let mut body = json!({
            "Image": self.image,
            "Env": env,
            "Labels": labels,
            "ExposedPorts": exposed,
            "HostConfig": host_config,
            "StopTimeout": self.stop_timeout.unwrap_or(10),
        });
        if let Some(cmd) = cmd {
            body["Cmd"] = json!(cmd);
        }
        if let Some(e) = &self.entrypoint {
            body["Entrypoint"] = json!(e);
        }
        if let Some(u) = &self.user {
            body["User"] = json!(u);
        }
        if let Some(w) = &self.working_dir {
            body["WorkingDir"] = json!(w);
        }
        body
    }
}

/// One entry of `GET /containers/json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Listed {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    image: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    state: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    ports: Vec<ListedPort>,
    #[serde(default)]
    created: i64,
}

#[derive(Debug, Deserialize)]
struct ListedPort {
    #[serde(rename = "PrivatePort")]
    private: u16,
    #[serde(rename = "PublicPort", default)]
    public: Option<u16>,
    #[serde(rename = "Type", default)]
    kind: String,
}

impl Listed {
    fn description(self) -> Description {
        let mut labels = self.labels.unwrap_or_default();
        let logical_id = labels.remove(LOGICAL_ID_LABEL);
        let tags: Tags = labels
            .into_iter()
            .filter(|(k, _)| !k.starts_with("infrakit-docker."))
            .collect();
        let ports: serde_json::Map<String, Value> = self
            .ports
            .iter()
            .filter_map(|p| Some((format!("{}/{}", p.private, p.kind), json!(p.public?))))
            .collect();
        let properties = json!({
            "Name": self.names.first().map(|n| n.trim_start_matches('/')).unwrap_or_default(),
            "Image": self.image,
            "State": self.state,
            "Status": self.status,
            "Ports": ports,
            "Created": self.created,
        });
        Description {
            id: self.id,
            logical_id,
            tags,
            properties: Some(Properties::new(properties.to_string())),
        }
    }
}

/// The plugin: where the engine is. The containers are the state.
#[derive(Debug)]
pub struct DockerPlugin {
    endpoint: String,
}

impl Default for DockerPlugin {
    fn default() -> Self {
        let endpoint =
            infrakit_sdk::config("endpoint").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        DockerPlugin::new(endpoint)
    }
}

/// An id as given to us, checked before it goes into a path.
fn container_id(id: &str) -> Result<&str> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !id.starts_with('.');
    if ok {
        Ok(id)
    } else {
        Err(Error::invalid(format!("{id:?} is not a container id")))
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// What the engine said, as the error kind the host acts on.
fn engine_error(action: &str, e: HttpError) -> Error {
    match e {
        HttpError::Denied { url } => Error::other(format!(
            "{action}: the host refused {url} (HttpRequestDenied): check the grant's [http.unix] \
             and [[http.rules]] for this plugin"
        )),
        HttpError::Response { status, message } => {
            let message = serde_json::from_str::<Value>(&message)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or(message);
            let text = format!("{action}: the engine answered {status}: {message}");
            match status {
                404 => Error::NotFound(text),
                400 | 409 => Error::Invalid(text),
                s if s >= 500 || s == 429 => Error::Transient(text),
                _ => Error::Other(text),
            }
        }
        // Unreachable socket, timeout: the engine may come back.
        other => Error::Transient(format!("{action}: {other}")),
    }
}

impl DockerPlugin {
    /// A plugin talking to the engine at `endpoint` (e.g. `http://docker`).
    pub fn new(endpoint: impl Into<String>) -> Self {
        DockerPlugin {
            endpoint: endpoint.into().trim_end_matches('/').to_string(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint)
    }

    fn list(&self, filters: &Value, before: Option<&str>) -> Result<Vec<Listed>> {
        let mut filters = filters.clone();
        if let Some(b) = before {
            filters["before"] = json!([b]);
        }
        let url = self.url(&format!(
            "/containers/json?all=1&limit={PAGE}&filters={}",
            http::encode(&filters.to_string())
        ));
        http::get(url)
            .send()
            .and_then(|r| r.error_for_status())
            .map_err(|e| engine_error("listing containers", e))?
            .json()
            .map_err(|e| engine_error("listing containers", e))
    }

    /// Every container matching `filters`, a page at a time (newest first, each page the ones
    /// created before the last of the previous page).
    fn list_all(&self, filters: &Value) -> Result<Vec<Listed>> {
        let mut all: Vec<Listed> = Vec::new();
        loop {
            let page = self.list(filters, all.last().map(|l| l.id.as_str()))?;
            let full = page.len() >= PAGE;
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    fn remove(&self, id: &str) -> std::result::Result<(), HttpError> {
        http::delete(self.url(&format!("/containers/{id}?force=1&v=1")))
            .send()?
            .error_for_status()
            .map(|_| ())
    }

    /// Removes the exited containers of a group (kept until now for `docker logs`).
    fn remove_exited(&self, group: &str) {
        let filters =
            json!({"label": [format!("infrakit.group={group}")], "status": ["exited", "dead"]});
        match self.list_all(&filters) {
            Ok(exited) => {
                for c in exited {
                    if let Err(e) = self.remove(&c.id) {
                        infrakit_sdk::warn!("removing exited container {}: {e}", c.id);
                    }
                }
            }
            Err(e) => infrakit_sdk::warn!("listing exited containers of {group}: {e}"),
        }
    }
}

impl InstancePlugin for DockerPlugin {
    fn capabilities(&self) -> Vec<Capability> {
        vec![
            Capability::Http(DEFAULT_ENDPOINT.to_string()),
            Capability::Config("endpoint".to_string()),
        ]
    }

    fn validate(&self, properties: &Properties) -> Result<()> {
        DockerProperties::parse(properties).map(|_| ())
    }

    fn provision(&self, spec: InstanceSpec) -> Result<String> {
        let props = DockerProperties::parse(&spec.properties)?;
        let group = spec.tag("infrakit.group").map(str::to_string);
        if let Some(group) = &group {
            self.remove_exited(group);
        }
        let stem: String = [group.as_deref(), spec.logical_id.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("-")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .take(48)
            .collect();
        let name = format!(
            "{}{}{:08x}",
            if stem.is_empty() { "infrakit" } else { &stem },
            "-",
            (now_nanos() as u64 ^ (now_nanos() >> 64) as u64) as u32
        );
        let body = props.create_body(&spec);
        let created: Value =
            http::post(self.url(&format!("/containers/create?name={}", http::encode(&name))))
                .json(&body)
                .send()
                .and_then(|r| r.error_for_status())
                .and_then(|r| r.json())
                .map_err(|e| match engine_error("creating the container", e) {
                    Error::NotFound(m) => Error::invalid(format!(
                        "image {:?} is not on the engine (the plugin never pulls; build or load it \
                     first): {m}",
                        props.image
                    )),
                    other => other,
                })?;
        let id = created["Id"]
            .as_str()
            .ok_or_else(|| {
                Error::other(format!("the engine's create answer has no Id: {created}"))
            })?
            .to_string();
        if let Err(e) = http::post(self.url(&format!("/containers/{id}/start")))
            .send()
            .and_then(|r| r.error_for_status())
        {
            // A container that cannot start is not an instance: do not leave it behind.
            let error = engine_error("starting the container", e);
            if let Err(e) = self.remove(&id) {
                infrakit_sdk::warn!("removing container {id} that failed to start: {e}");
            }
            return Err(error);
        }
        Ok(id)
    }

    fn label(&self, id: &str, _labels: Tags) -> Result<()> {
        container_id(id)?;
        Err(Error::invalid(
            "Docker labels cannot change once a container exists; instance-docker keeps \
             identity tags as labels set at create, so a change of tags needs a new container \
             (a rolling update)",
        ))
    }

    fn destroy(&self, id: &str, context: DestroyContext) -> Result<()> {
        let id = container_id(id)?;
        infrakit_sdk::debug!("destroying container {id} ({context:?})");
        // Stop with the container's own StopTimeout (SIGTERM, then SIGKILL), bounded so the
        // call ends inside its limit; then remove it with its anonymous volumes.
        let stop = http::post(self.url(&format!("/containers/{id}/stop")))
            .timeout(std::time::Duration::from_secs(
                u64::from(MAX_STOP_TIMEOUT) + 5,
            ))
            .send();
        let stopped_missing = match stop {
            Ok(r) if r.status == 404 => true,
            Ok(r) if r.status == 304 || (200..300).contains(&r.status) => false,
            Ok(r) => {
                infrakit_sdk::warn!(
                    "stopping {id}: engine answered {}; removing by force",
                    r.status
                );
                false
            }
            Err(e) => return Err(engine_error("stopping the container", e)),
        };
        match self.remove(id) {
            Ok(()) => Ok(()),
            Err(HttpError::Response { status: 404, .. }) if stopped_missing => {
                Err(Error::NotFound(format!("no container {id}")))
            }
            // Stopped and then gone: someone else removed it, which is what we wanted.
            Err(HttpError::Response { status: 404, .. }) => Ok(()),
            Err(e) => Err(engine_error("removing the container", e)),
        }
    }

    fn describe(&self, tags: &Tags, _include_properties: bool) -> Result<Vec<Description>> {
        let labels: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let filters = json!({
            "label": labels,
            "status": ["created", "running", "paused", "restarting"],
        });
        let mut found: Vec<Description> = self
            .list_all(&filters)?
            .into_iter()
            .map(Listed::description)
            // The engine's filter is the first check, ours the last word.
            .filter(|d| d.matches(tags))
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found.dedup_by(|a, b| a.id == b.id);
        Ok(found)
    }
}

infrakit_sdk::export_instance!(DockerPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use infrakit_sdk::http::Response;
    use infrakit_sdk::testing::Host;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn spec(props: Value) -> InstanceSpec {
        InstanceSpec {
            properties: Properties::new(props.to_string()),
            tags: vec![
                ("infrakit.group".into(), "web".into()),
                ("infrakit.config_sha".into(), "abc".into()),
            ],
            init: "httpd -f -p 80".into(),
            logical_id: Some("web1".into()),
            attachments: vec![],
        }
    }

    #[test]
    fn properties_are_checked_with_their_path() {
        let p = DockerPlugin::new("http://docker");
        for (props, field) in [
            (json!({}), "Image"),
            (json!({"Image": "x", "Ports": ["http"]}), "Ports[0]"),
            (json!({"Image": "x", "Ports": ["80/icmp"]}), "Ports[0]"),
            (json!({"Image": "x", "Env": ["NOVALUE"]}), "Env[0]"),
            (json!({"Image": "x", "StopTimeout": 60}), "StopTimeout"),
            (
                json!({"Image": "x", "Mounts": [{"Source": "rel", "Target": "/x"}]}),
                "Mounts[0]",
            ),
            (json!({"Image": "x", "Privileged": true}), "Privileged"),
        ] {
            let err = p
                .validate(&Properties::new(props.to_string()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{props}: {err}");
        }
        assert!(
            p.validate(&Properties::new(
                r#"{"Image": "web:1", "Ports": ["80", "8053:53/udp"]}"#
            ))
            .is_ok()
        );
    }

    #[test]
    fn create_body_carries_identity_init_and_loopback_ports() {
        let s =
            spec(json!({"Image": "web:1", "Ports": ["80"], "InitAs": "command", "Env": ["A=1"]}));
        let props = DockerProperties::parse(&s.properties).unwrap();
        let body = props.create_body(&s);
        assert_eq!(body["Labels"]["infrakit.group"], "web");
        assert_eq!(body["Labels"][LOGICAL_ID_LABEL], "web1");
        assert_eq!(body["Cmd"], json!(["/bin/sh", "-c", "httpd -f -p 80"]));
        assert_eq!(body["Env"], json!(["A=1", "INFRAKIT_INIT=httpd -f -p 80"]));
        assert_eq!(
            body["HostConfig"]["PortBindings"]["80/tcp"][0]["HostIp"],
            "127.0.0.1"
        );
        assert!(body["HostConfig"].get("Privileged").is_none());
    }

    #[test]
    fn describe_pages_and_reports_ports() {
        let calls = Rc::new(RefCell::new(Vec::new()));
        let seen = calls.clone();
        let host = Host::new().with_http(move |req| {
            seen.borrow_mut().push(req.url.clone());
            let page: Vec<Value> = if req.url.contains("before") {
                vec![]
            } else {
                (0..PAGE)
                    .map(|i| json!({"Id": format!("c{i:03}"), "Names": ["/web-x"], "State": "running",
                        "Labels": {"infrakit.group": "web", LOGICAL_ID_LABEL: "web1"},
                        "Ports": [{"PrivatePort": 80, "PublicPort": 32768, "Type": "tcp", "IP": "127.0.0.1"}]}))
                    .collect()
            };
            Ok(Response { status: 200, headers: vec![], body: serde_json::to_vec(&page).unwrap() })
        });
        let _g = host.install();
        let found = DockerPlugin::new("http://docker")
            .describe(&vec![("infrakit.group".into(), "web".into())], false)
            .unwrap();
        assert_eq!(found.len(), PAGE);
        assert_eq!(found[0].logical_id.as_deref(), Some("web1"));
        assert!(found[0].tag(LOGICAL_ID_LABEL).is_none());
        let props: Value =
            serde_json::from_str(found[0].properties.as_ref().unwrap().as_str()).unwrap();
        assert_eq!(props["Ports"]["80/tcp"], 32768);
        let calls = calls.borrow();
        assert_eq!(calls.len(), 2, "a full page asks for the next: {calls:?}");
        assert!(calls[1].contains("before"), "{}", calls[1]);
        assert!(calls[0].contains("infrakit.group%3Dweb"), "{}", calls[0]);
    }

    #[test]
    fn engine_errors_map_to_what_the_host_acts_on() {
        let host = Host::new().with_http(|req| {
            let (status, msg) = if req.url.contains("/create") {
                (404, "No such image: nope:1")
            } else {
                (500, "boom")
            };
            Ok(Response {
                status,
                headers: vec![],
                body: json!({"message": msg}).to_string().into_bytes(),
            })
        });
        let _g = host.install();
        let p = DockerPlugin::new("http://docker");
        let err = p.provision(spec(json!({"Image": "nope:1"}))).unwrap_err();
        assert!(
            matches!(&err, Error::Invalid(m) if m.contains("nope:1")),
            "{err}"
        );
        let err = p.describe(&vec![], false).unwrap_err();
        assert!(matches!(err, Error::Transient(_)), "{err}");
        let unreachable = Host::new().with_http(|_| Err(HttpError::Connection("refused".into())));
        let _g = unreachable.install();
        assert!(matches!(
            p.describe(&vec![], false),
            Err(Error::Transient(_))
        ));
        assert!(matches!(p.label("abc", vec![]), Err(Error::Invalid(_))));
        assert!(matches!(
            p.destroy("../x", DestroyContext::Terminate),
            Err(Error::Invalid(_))
        ));
    }
}
