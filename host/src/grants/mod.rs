//! What the operator grants a plugin: directories, outbound HTTP targets, configuration,
//! environment variables and resource limits. Deny by default: a plugin with no grant file gets
//! its private scratch directory, the default limits, and nothing else.
//!
//! A grant file sits next to the plugin (`NAME.toml` beside `NAME.wasm`):
//!
//! ```toml
//! [[files]]
//! host = "/srv/instances"      # a host directory...
//! guest = "/instances"         # ...seen by the plugin here
//! mode = "read-write"          # or "read-only", the default
//!
//! [http]
//! allow = ["https://api.example.com", "https://*.example.net", "http://127.0.0.1:*"]
//! block_private = true         # default: on when a pattern has a wildcard host
//!
//! [http.unix]                  # requests to http://docker go to this unix socket (and
//! docker = "/var/run/docker.sock"  # nowhere else); the name is granted by being here
//!
//! [[http.rules]]               # optional: what a plugin may do on a target (see `rules`)
//! target = "http://docker"
//! requests = ["GET /containers/json", "POST /containers/*/start"]
//!
//! [[http.sign]]                # the host signs requests to this target (AWS Signature V4)
//! target = "https://*.amazonaws.com"  # with credentials the plugin never sees: the host's
//! profile = "prod"             # AWS_* environment, or this profile of its credentials file
//! credentials_file = "/etc/infrakit/aws"  # optional: the file (default ~/.aws/credentials)
//!
//! [process]                  # local processes the plugin may start (see `plugin::process`)
//! executables = ["/bin/sh"]    # exact paths; nothing else can be spawned
//! max = 16                     # live processes at once (default 32)
//!
//! [config]
//! dir = "/instances"
//!
//! [env]
//! REGION = "eu-west-1"
//!
//! [limits]
//! memory = "64 MiB"            # over all the plugin's linear memories
//! cpu = "2s"                   # compute per call (epoch deadline)
//! wall = "30s"                 # wall-clock time per call, host I/O included
//! http_response = "4 MiB"      # largest response body the plugin may read
//! metadata = "5s"              # compute and wall-clock time of the metadata call at load
//! resources = 256              # open files, HTTP requests, header maps... held at once
//! disk = "1 GiB"               # bytes its writable directories may hold (scratch + rw grants)
//! disk_entries = 100000        # files, directories and links they may hold
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod rules;
pub use rules::HttpRule;

/// A grant file that cannot be used: which file, which key, what is accepted there.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{path}: cannot read grant file")]
    Read {
        /// The grant file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a value of the wrong type.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The grant file.
        path: PathBuf,
        /// 1-based line of the offending key.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser says (names the key and the expected keys or type).
        message: String,
    },
    /// A value of the right type that is still not acceptable.
    #[error("{path}: `{key}`: {problem}; accepted: {accepted}")]
    Value {
        /// The grant file.
        path: PathBuf,
        /// The key, e.g. `http.allow[1]`.
        key: String,
        /// What is wrong.
        problem: String,
        /// The accepted form.
        accepted: &'static str,
    },
}

/// Access to a granted directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Read only (the default).
    #[default]
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

/// One granted directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the plugin sees it.
    pub guest: String,
    /// Read-only or read-write.
    #[serde(default)]
    pub mode: Mode,
}

/// Limits on one plugin call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Bytes over all linear memories of one instance.
    pub memory: u64,
    /// Compute time per call, enforced with epoch ticks.
    #[serde(with = "humantime_serde_compat")]
    pub cpu: Duration,
    /// Wall-clock time per call, including time blocked in host I/O.
    #[serde(with = "humantime_serde_compat")]
    pub wall: Duration,
    /// Largest HTTP response body a call may read.
    pub http_response: u64,
    /// Time (compute and wall-clock) for the `metadata` call at load: short, since loading
    /// waits for it.
    #[serde(with = "humantime_serde_compat")]
    pub metadata: Duration,
    /// Host resources a call may hold at once: open files and directories, HTTP requests,
    /// header maps, streams. Each open file is a host descriptor, each header map up to
    /// 64 KiB of host memory, so this bounds both.
    pub resources: usize,
    /// Bytes the directories the plugin may write (its scratch directory and read-write
    /// grants) may hold, sparse files at their apparent size.
    pub disk: u64,
    /// Files, directories and links those directories may hold.
    pub disk_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 128 << 20,
            cpu: Duration::from_secs(5),
            wall: Duration::from_secs(30),
            http_response: 8 << 20,
            metadata: Duration::from_secs(5),
            resources: 256,
            disk: 1 << 30,
            disk_entries: 100_000,
        }
    }
}

mod humantime_serde_compat {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// One allowed outbound HTTP target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// `http` or `https`.
    pub scheme: String,
    /// A host name or address; `*.` prefix matches any subdomain; `*` alone matches any host.
    pub host: String,
    /// A port; `None` means the scheme's default; `Some(0)` (written `*`) means any.
    pub port: Option<u16>,
}

impl HttpTarget {
    /// Parses `scheme://host[:port]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("{text:?} has no scheme"))?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("scheme {scheme:?} is not http or https"));
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(format!("{text:?} has a path, query or user part"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => {
                let port = if p == "*" {
                    Some(0)
                } else {
                    Some(
                        p.parse::<u16>()
                            .ok()
                            .filter(|p| *p != 0)
                            .ok_or_else(|| format!("port {p:?} is not 1-65535 or *"))?,
                    )
                };
                (h, port)
            }
            _ => (rest, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{text:?} has no host"));
        }
        let wildcard_ok =
            host == "*" || !host[host.strip_prefix("*.").map_or(0, |_| 2)..].contains('*');
        if !wildcard_ok {
            return Err(format!(
                "host {host:?}: `*` may only be the whole host or a leading `*.`"
            ));
        }
        Ok(HttpTarget {
            scheme: scheme.to_string(),
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether the pattern's host part contains a wildcard.
    pub fn has_wildcard_host(&self) -> bool {
        self.host.starts_with('*')
    }

    /// Whether a request to `scheme://host:port` matches this pattern.
    pub fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        if !self.scheme.eq_ignore_ascii_case(scheme) {
            return false;
        }
        let wanted_port = match self.port {
            Some(0) => true,
            Some(p) => p == port,
            None => port == if self.scheme == "https" { 443 } else { 80 },
        };
        if !wanted_port {
            return false;
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        match self.host.strip_prefix("*.") {
            _ if self.host == "*" => true,
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
            None => self.host == host,
        }
    }
}

impl fmt::Display for HttpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            None => write!(f, "{}://{host}", self.scheme),
            Some(0) => write!(f, "{}://{host}:*", self.scheme),
            Some(p) => write!(f, "{}://{host}:{p}", self.scheme),
        }
    }
}

/// Outbound HTTP grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpGrant {
    /// Allowed targets; empty means no outbound HTTP at all.
    pub allow: Vec<HttpTarget>,
    /// Refuse private, loopback and link-local addresses after DNS resolution.
    pub block_private: bool,
    /// Names routed to unix sockets instead of the network: `http://NAME` → the socket.
    pub unix: BTreeMap<String, PathBuf>,
    /// Method, path and body rules per target; a target without rules admits any request.
    pub rules: Vec<HttpRule>,
    /// Targets whose requests the host signs.
    pub sign: Vec<SignGrant>,
}

/// Requests to `target` are signed by the host with AWS Signature V4. The plugin builds the
/// request; the credentials stay in the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignGrant {
    /// The granted target whose requests are signed.
    pub target: HttpTarget,
    /// The service name in the signature; default: the first label of the host
    /// (`ec2` of `ec2.eu-west-1.amazonaws.com`).
    pub service: Option<String>,
    /// The region; default: the second label of an `*.amazonaws.com` host.
    pub region: Option<String>,
    /// A profile of the shared credentials file; default: the host's `AWS_ACCESS_KEY_ID` /
    /// `AWS_SECRET_ACCESS_KEY` (`AWS_SESSION_TOKEN`), else `AWS_PROFILE` or `default`.
    pub profile: Option<String>,
    /// The shared credentials file to read the profile from; default:
    /// `AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`.
    pub credentials_file: Option<PathBuf>,
}

impl fmt::Display for SignGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: signed with AWS SigV4", self.target)?;
        match &self.service {
            Some(s) => write!(f, ", service {s}")?,
            None => write!(f, ", service from the host name")?,
        }
        match &self.region {
            Some(r) => write!(f, ", region {r}")?,
            None => write!(f, ", region from the host name")?,
        }
        match &self.profile {
            Some(p) => write!(f, ", credentials of profile {p}"),
            None => write!(
                f,
                ", credentials from the host's AWS environment or default profile"
            ),
        }
    }
}

impl HttpGrant {
    /// The signer of a request to `scheme://host:port`, if one is granted.
    pub fn signer(&self, scheme: &str, host: &str, port: u16) -> Option<&SignGrant> {
        self.sign
            .iter()
            .find(|s| s.target.matches(scheme, host, port))
    }
}

impl HttpGrant {
    /// Whether `target` is granted: a concrete target when a pattern admits it, a pattern only
    /// by an identical pattern.
    /// The granted targets narrower than a pattern a plugin asked for (`http://127.0.0.1:7000`
    /// for `http://127.0.0.1:*`): part of what it asked is granted.
    pub fn narrowings(&self, asked: &HttpTarget) -> Vec<&HttpTarget> {
        self.allow
            .iter()
            .filter(|t| !t.has_wildcard_host() && t.port != Some(0) && *t != asked)
            .filter(|t| {
                let port = t.port.unwrap_or(if t.scheme == "https" { 443 } else { 80 });
                asked.matches(&t.scheme, &t.host, port)
            })
            .collect()
    }

    pub fn admits(&self, target: &HttpTarget) -> bool {
        if target.has_wildcard_host() || target.port == Some(0) {
            return self.allow.contains(target);
        }
        let port = target
            .port
            .unwrap_or(if target.scheme == "https" { 443 } else { 80 });
        self.allow
            .iter()
            .any(|t| t.matches(&target.scheme, &target.host, port))
    }

    /// The unix socket a request to `scheme://host:port` goes to, if the host is a socket name.
    pub fn unix_socket(&self, scheme: &str, host: &str, port: u16) -> Option<&Path> {
        if scheme != "http" || port != 80 {
            return None;
        }
        self.unix
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(host))
            .map(|(_, p)| p.as_path())
    }
}

/// Local processes a plugin may start. Denied (no executables) by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessGrant {
    /// The only executables the plugin may start, by exact absolute path.
    pub executables: Vec<PathBuf>,
    /// Live processes of the plugin at once.
    pub max: u32,
}

impl Default for ProcessGrant {
    fn default() -> Self {
        ProcessGrant {
            executables: Vec::new(),
            max: 32,
        }
    }
}

impl ProcessGrant {
    /// Whether `program`, as the plugin wrote it, names a granted executable. Exact text only:
    /// `/bin/../bin/sh` or `/bin//sh` name nothing granted, however they resolve.
    pub fn grants(&self, program: &str) -> bool {
        self.executables
            .iter()
            .any(|e| e.as_os_str() == std::ffi::OsStr::new(program))
    }
}

/// Everything granted to one plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Granted directories (besides the private scratch directory).
    pub files: Vec<FileGrant>,
    /// Outbound HTTP.
    pub http: HttpGrant,
    /// Configuration values.
    pub config: BTreeMap<String, String>,
    /// Environment variables, passed explicitly (the host's own are never inherited).
    pub env: BTreeMap<String, String>,
    /// Local processes.
    pub process: ProcessGrant,
    /// Per-call limits.
    pub limits: Limits,
}

/// A grant section as written, before validation. Embedded by the daemon's config file
/// (`[plugins.NAME]`) so both places accept exactly the same keys.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawGrants {
    #[serde(default)]
    files: Vec<FileGrant>,
    #[serde(default)]
    http: Option<RawHttp>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    process: Option<RawProcess>,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    executables: Vec<PathBuf>,
    max: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default)]
    allow: Vec<String>,
    block_private: Option<bool>,
    #[serde(default)]
    unix: BTreeMap<String, PathBuf>,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    sign: Vec<RawSign>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSign {
    target: String,
    /// The signature scheme; `aws-sigv4`, the only one, is the default.
    #[serde(default)]
    with: Option<String>,
    service: Option<String>,
    region: Option<String>,
    profile: Option<String>,
    credentials_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    target: String,
    requests: Vec<String>,
    #[serde(default)]
    deny_fields: Vec<String>,
    #[serde(default)]
    require_fields: Vec<String>,
    #[serde(default)]
    allow_values: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<String>,
    cpu: Option<String>,
    wall: Option<String>,
    http_response: Option<String>,
    metadata: Option<String>,
    resources: Option<usize>,
    disk: Option<String>,
    disk_entries: Option<u64>,
}

const SIZE_FORM: &str = "a size such as \"64 MiB\" or \"512KiB\"";
const DURATION_FORM: &str = "a duration such as \"500ms\", \"2s\" or \"1m\"";
const HTTP_FORM: &str =
    "\"http://host\", \"https://host:port\", \"https://*.example.com\", \"http://127.0.0.1:*\"";

impl Grants {
    /// Reads and validates a grant file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates grant text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let raw: RawGrants = toml::from_str(text).map_err(|e| syntax_error(text, path, e))?;
        Self::from_raw(raw, path, "")
    }

    /// Validates a parsed section; error keys are prefixed with `prefix` (e.g.
    /// `plugins.instance-file.`) so they point into the file they came from.
    pub fn from_raw(raw: RawGrants, path: &Path, prefix: &str) -> Result<Self, Error> {
        let value_error = |key: String, problem: String, accepted: &'static str| Error::Value {
            path: path.to_path_buf(),
            key: format!("{prefix}{key}"),
            problem,
            accepted,
        };

        for (i, f) in raw.files.iter().enumerate() {
            if !f.host.is_absolute() {
                return Err(value_error(
                    format!("files[{i}].host"),
                    format!("{:?} is not an absolute path", f.host),
                    "an absolute host directory such as \"/srv/data\"",
                ));
            }
            if !f.guest.starts_with('/') || f.guest.split('/').any(|c| c == "..") {
                return Err(value_error(
                    format!("files[{i}].guest"),
                    format!("{:?} is not an absolute guest path without `..`", f.guest),
                    "an absolute guest path such as \"/data\"",
                ));
            }
        }

        let mut http = HttpGrant::default();
        if let Some(raw_http) = raw.http {
            for (i, t) in raw_http.allow.iter().enumerate() {
                let target = HttpTarget::parse(t).map_err(|problem| {
                    value_error(format!("http.allow[{i}]"), problem, HTTP_FORM)
                })?;
                http.allow.push(target);
            }
            http.block_private = raw_http
                .block_private
                .unwrap_or_else(|| http.allow.iter().any(HttpTarget::has_wildcard_host));
            for (name, socket) in raw_http.unix {
                let key = format!("http.unix.{name}");
                let plain = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !plain {
                    return Err(value_error(
                        key,
                        format!("{name:?} is not a plain name"),
                        "a name of letters, digits, `-` and `_`, used as http://NAME",
                    ));
                }
                if !socket.is_absolute() {
                    return Err(value_error(
                        key,
                        format!("{:?} is not an absolute path", socket),
                        "the absolute path of a unix socket such as \"/var/run/docker.sock\"",
                    ));
                }
                let target = HttpTarget {
                    scheme: "http".into(),
                    host: name.to_ascii_lowercase(),
                    port: None,
                };
                if !http.allow.contains(&target) {
                    http.allow.push(target);
                }
                http.unix.insert(name.to_ascii_lowercase(), socket);
            }
            for (i, r) in raw_http.rules.into_iter().enumerate() {
                http.rules
                    .push(rule_from_raw(r).map_err(|(field, problem, accepted)| {
                        value_error(format!("http.rules[{i}].{field}"), problem, accepted)
                    })?);
            }
            for (i, raw) in raw_http.sign.into_iter().enumerate() {
                let key = |field: &str| format!("http.sign[{i}].{field}");
                let target = HttpTarget::parse(&raw.target)
                    .map_err(|p| value_error(key("target"), p, HTTP_FORM))?;
                if let Some(with) = raw.with.as_deref().filter(|w| *w != "aws-sigv4") {
                    return Err(value_error(
                        key("with"),
                        format!("{with:?} is not a known signature"),
                        "\"aws-sigv4\"",
                    ));
                }
                let loopback = matches!(target.host.as_str(), "localhost" | "127.0.0.1" | "::1");
                if target.scheme != "https" && !loopback {
                    return Err(value_error(
                        key("target"),
                        format!(
                            "{target} is not https: signed requests would cross the network in the clear"
                        ),
                        "an https:// target, or http:// on loopback (an emulator)",
                    ));
                }
                if !http.allow.contains(&target) {
                    return Err(value_error(
                        key("target"),
                        format!("{target} is not in http.allow"),
                        "a target listed, exactly, in http.allow",
                    ));
                }
                let amazon = target.host.ends_with(".amazonaws.com");
                if raw.region.is_none() && !amazon {
                    return Err(value_error(
                        key("region"),
                        format!("{target} is not an *.amazonaws.com host to take the region from"),
                        "a region such as \"us-east-1\"",
                    ));
                }
                if raw.service.is_none() && !amazon {
                    return Err(value_error(
                        key("service"),
                        format!("{target} is not an *.amazonaws.com host to take the service from"),
                        "a service name such as \"ec2\"",
                    ));
                }
                if let Some(file) = raw.credentials_file.as_ref().filter(|f| !f.is_absolute()) {
                    return Err(value_error(
                        key("credentials_file"),
                        format!("{file:?} is not an absolute path"),
                        "the absolute path of an AWS shared credentials file",
                    ));
                }
                http.sign.push(SignGrant {
                    target,
                    service: raw.service,
                    region: raw.region,
                    profile: raw.profile,
                    credentials_file: raw.credentials_file,
                });
            }
            if let Some((i, r)) = http
                .rules
                .iter()
                .enumerate()
                .find(|(_, r)| !http.admits(&r.target))
            {
                return Err(value_error(
                    format!("http.rules[{i}].target"),
                    format!("{} is not granted by http.allow or http.unix", r.target),
                    "a target listed in http.allow or named in http.unix",
                ));
            }
        }

        let mut process = ProcessGrant::default();
        if let Some(raw_process) = raw.process {
            for (i, exe) in raw_process.executables.iter().enumerate() {
                let text = exe.to_string_lossy();
                let plain = exe.is_absolute()
                    && !text.ends_with('/')
                    && text[1..]
                        .split('/')
                        .all(|c| !c.is_empty() && c != "." && c != "..");
                if !plain {
                    return Err(value_error(
                        format!("process.executables[{i}]"),
                        format!("{exe:?} is not a plain absolute path"),
                        "the absolute path of an executable, without `.`, `..` or `//`, such as \"/bin/sh\"",
                    ));
                }
                if let Some(f) = raw
                    .files
                    .iter()
                    .find(|f| f.mode == Mode::ReadWrite && exe.starts_with(&f.host))
                {
                    return Err(value_error(
                        format!("process.executables[{i}]"),
                        format!(
                            "{} is inside the read-write grant {}: the plugin could replace it",
                            exe.display(),
                            f.host.display()
                        ),
                        "an executable outside every read-write grant",
                    ));
                }
            }
            process.executables = raw_process.executables;
            if let Some(max) = raw_process.max {
                if max == 0 {
                    return Err(value_error(
                        "process.max".into(),
                        "0 would refuse every spawn".into(),
                        "a count of 1 or more (leave [process] out to grant none)",
                    ));
                }
                process.max = max;
            }
        }

        let mut limits = Limits::default();
        let size = |key: &str, v: &str| {
            v.parse::<bytesize::ByteSize>()
                .map(|b| b.as_u64())
                .map_err(|e| value_error(format!("limits.{key}"), format!("{v:?}: {e}"), SIZE_FORM))
        };
        let duration = |key: &str, v: &str| {
            humantime::parse_duration(v).map_err(|e| {
                value_error(
                    format!("limits.{key}"),
                    format!("{v:?}: {e}"),
                    DURATION_FORM,
                )
            })
        };
        if let Some(v) = &raw.limits.memory {
            limits.memory = size("memory", v)?;
        }
        if let Some(v) = &raw.limits.http_response {
            limits.http_response = size("http_response", v)?;
        }
        if let Some(v) = &raw.limits.cpu {
            limits.cpu = duration("cpu", v)?;
        }
        if let Some(v) = &raw.limits.wall {
            limits.wall = duration("wall", v)?;
        }
        if let Some(v) = &raw.limits.metadata {
            limits.metadata = duration("metadata", v)?;
        }
        if let Some(n) = raw.limits.resources {
            if !(16..=65_536).contains(&n) {
                return Err(value_error(
                    "limits.resources".into(),
                    format!("{n} is out of range"),
                    "a count from 16 to 65536",
                ));
            }
            limits.resources = n;
        }
        if let Some(v) = &raw.limits.disk {
            limits.disk = size("disk", v)?;
        }
        if let Some(n) = raw.limits.disk_entries {
            if n == 0 {
                return Err(value_error(
                    "limits.disk_entries".into(),
                    "0 leaves no room for a single file".into(),
                    "a count of at least 1",
                ));
            }
            limits.disk_entries = n;
        }

        Ok(Grants {
            files: raw.files,
            http,
            config: raw.config,
            env: raw.env,
            process,
            limits,
        })
    }

    /// What in these grants an operator should look at twice, one sentence each: read-write
    /// access to the daemon's own data, a grant hiding the scratch directory, private-address
    /// blocking turned off next to a wildcard.
    pub fn warnings(&self, data_dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for (i, f) in self.files.iter().enumerate() {
            if f.mode == Mode::ReadWrite
                && (f.host == Path::new("/") || data_dir.starts_with(&f.host))
            {
                out.push(format!(
                    "files[{i}]: read-write access to {}, which holds the daemon's data \
                     directory (its store, every plugin's scratch directory)",
                    f.host.display()
                ));
            }
            if f.guest.trim_end_matches('/') == "/data" {
                out.push(format!(
                    "files[{i}]: guest path /data hides the plugin's own scratch directory"
                ));
            }
        }
        for exe in &self.process.executables {
            let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if matches!(
                name,
                "sh" | "bash" | "dash" | "zsh" | "busybox" | "env" | "python3"
            ) {
                out.push(format!(
                    "process: {} runs whatever it is given: the plugin can start any program \
                     the daemon's user can",
                    exe.display()
                ));
            }
        }
        if !self.http.block_private && self.http.allow.iter().any(HttpTarget::has_wildcard_host) {
            out.push(
                "http: block_private = false next to a wildcard host: the plugin can reach \
                 loopback, the private network and the cloud's metadata address"
                    .to_string(),
            );
        }
        out
    }

    /// Whether a resolved address may be contacted under `block_private`.
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        !self.http.block_private || is_public(ip)
    }
}

type RuleError = (&'static str, String, &'static str);

fn rule_from_raw(raw: RawRule) -> Result<HttpRule, RuleError> {
    const REQUEST_FORM: &str = "\"METHOD /path\" with `*` for one segment and `**` for several, e.g. \"POST /containers/*/start\"";
    const FIELD_FORM: &str =
        "a JSON pointer with `*` for any key or index, e.g. \"/HostConfig/Mounts/*/Source\"";
    let target = HttpTarget::parse(&raw.target).map_err(|p| ("target", p, HTTP_FORM))?;
    if raw.requests.is_empty() {
        return Err((
            "requests",
            "no request pattern: the rule would refuse everything".into(),
            REQUEST_FORM,
        ));
    }
    let requests = raw
        .requests
        .iter()
        .map(|r| rules::RequestPattern::parse(r))
        .collect::<Result<_, _>>()
        .map_err(|p| ("requests", p, REQUEST_FORM))?;
    let fields = |list: &[String], key| {
        list.iter()
            .map(|f| rules::FieldPath::parse(f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|p| (key, p, FIELD_FORM))
    };
    let deny_fields = fields(&raw.deny_fields, "deny_fields")?;
    let require_fields = fields(&raw.require_fields, "require_fields")?;
    let mut allow_values = BTreeMap::new();
    for (field, values) in raw.allow_values {
        let path = rules::FieldPath::parse(&field).map_err(|p| ("allow_values", p, FIELD_FORM))?;
        allow_values.insert(
            path,
            values.into_iter().map(rules::ValuePattern::new).collect(),
        );
    }
    Ok(HttpRule {
        target,
        requests,
        deny_fields,
        require_fields,
        allow_values,
    })
}

/// Not loopback, private, link-local, unspecified, multicast or otherwise special.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // 100.64/10 CGNAT
                || v4.octets()[0] == 0)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let seg = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg & 0xfe00) == 0xfc00 // unique local
                || (seg & 0xffc0) == 0xfe80) // link local
        }
    }
}

/// A TOML error with the file and the 1-based line and column it points at.
pub fn syntax_error(text: &str, path: &Path, e: toml::de::Error) -> Error {
    let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
    Error::Syntax {
        path: path.to_path_buf(),
        line,
        column,
        message: e.message().trim().to_string(),
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Grants, Error> {
        Grants::parse(text, Path::new("/plugins/p.toml"))
    }

    #[test]
    fn empty_file_grants_nothing() {
        let g = parse("").unwrap();
        assert_eq!(g, Grants::default());
    }

    #[test]
    fn full_file_parses() {
        let g = parse(
            r#"
            [[files]]
            host = "/srv"
            guest = "/data"
            mode = "read-write"
            [http]
            allow = ["https://api.example.com", "https://*.example.net", "http://127.0.0.1:*"]
            [config]
            dir = "/data"
            [env]
            A = "1"
            [limits]
            memory = "64 MiB"
            cpu = "500ms"
            wall = "2s"
            http_response = "1KiB"
            "#,
        )
        .unwrap();
        assert_eq!(g.files[0].mode, Mode::ReadWrite);
        assert_eq!(g.http.allow.len(), 3);
        assert!(g.http.block_private, "a wildcard turns private blocking on");
        assert_eq!(g.limits.memory, 64 << 20);
        assert_eq!(g.limits.cpu, Duration::from_millis(500));
        assert_eq!(g.limits.http_response, 1024);
        assert_eq!(g.config["dir"], "/data");
    }

    #[test]
    fn typo_names_file_key_and_accepted_keys() {
        let err = parse("[limits]\nmemroy = \"1 MiB\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/plugins/p.toml:2:"), "{err}");
        assert!(err.contains("memroy"), "{err}");
        assert!(err.contains("memory"), "lists accepted keys: {err}");
    }

    #[test]
    fn bad_values_name_key_and_form() {
        let err = parse("[http]\nallow = [\"https://ok.example\", \"ftp://x\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`http.allow[1]`") && err.contains("accepted:"),
            "{err}"
        );
        let err = parse("[limits]\ncpu = \"fast\"\n").unwrap_err().to_string();
        assert!(
            err.contains("`limits.cpu`") && err.contains("500ms"),
            "{err}"
        );
        let err = parse("[[files]]\nhost = \"rel\"\nguest = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`files[0].host`"), "{err}");
    }

    #[test]
    fn targets_match_scheme_host_and_port() {
        let t = HttpTarget::parse("https://api.example.com").unwrap();
        assert!(t.matches("https", "api.example.com", 443));
        assert!(t.matches("https", "API.example.com", 443));
        assert!(!t.matches("https", "api.example.com", 8443));
        assert!(!t.matches("http", "api.example.com", 80));
        assert!(!t.matches("https", "evil.com", 443));

        let w = HttpTarget::parse("https://*.example.com:*").unwrap();
        assert!(w.matches("https", "a.example.com", 1234));
        assert!(w.matches("https", "a.b.example.com", 443));
        assert!(!w.matches("https", "example.com", 443));
        assert!(!w.matches("https", "badexample.com", 443));

        let p = HttpTarget::parse("http://127.0.0.1:8080").unwrap();
        assert!(p.matches("http", "127.0.0.1", 8080));
        assert!(!p.matches("http", "127.0.0.1", 8081));
        assert_eq!(p.to_string(), "http://127.0.0.1:8080");

        for bad in [
            "api.example.com",
            "https://a.*.com",
            "https://x/path",
            "https://x:0",
            "https://",
        ] {
            assert!(HttpTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unix_sockets_and_rules_parse() {
        let g = parse(
            r#"
            [http.unix]
            docker = "/var/run/docker.sock"
            [[http.rules]]
            target = "http://docker"
            requests = ["GET /containers/json", "POST /containers/create"]
            deny_fields = ["/HostConfig/Privileged"]
            allow_values = { "/HostConfig/Mounts/*/Source" = ["/srv/**"] }
            "#,
        )
        .unwrap();
        assert_eq!(
            g.http.unix_socket("http", "docker", 80),
            Some(Path::new("/var/run/docker.sock"))
        );
        assert_eq!(g.http.unix_socket("https", "docker", 443), None);
        assert!(
            g.http.allow[0].matches("http", "docker", 80),
            "the name is granted"
        );
        assert_eq!(g.http.rules[0].requests.len(), 2);
        assert!(g.http.rules[0].checks_body());

        for (text, key) in [
            ("[http.unix]\n\"a.b\" = \"/s\"\n", "http.unix.a.b"),
            ("[http.unix]\nd = \"rel\"\n", "http.unix.d"),
            (
                "[http]\nallow = [\"http://x\"]\n[[http.rules]]\ntarget = \"http://x\"\nrequests = [\"get /\"]\n",
                "http.rules[0].requests",
            ),
            (
                "[http]\nallow = [\"http://x\"]\n[[http.rules]]\ntarget = \"http://y\"\nrequests = [\"GET /\"]\n",
                "http.rules[0].target",
            ),
            (
                "[http]\nallow = [\"http://x\"]\n[[http.rules]]\ntarget = \"http://x\"\nrequests = []\n",
                "http.rules[0].requests",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        }
    }

    #[test]
    fn signed_targets_are_https_or_loopback_and_granted() {
        let g = parse(
            "[http]\nallow = [\"https://*.amazonaws.com\", \"http://127.0.0.1:5000\"]\n\
             [[http.sign]]\ntarget = \"https://*.amazonaws.com\"\nprofile = \"prod\"\n\
             [[http.sign]]\ntarget = \"http://127.0.0.1:5000\"\nservice = \"ec2\"\nregion = \"us-east-1\"\n",
        )
        .unwrap();
        assert!(
            g.http
                .signer("https", "ec2.eu-west-1.amazonaws.com", 443)
                .is_some()
        );
        assert!(g.http.signer("https", "example.com", 443).is_none());
        assert!(g.http.sign[0].to_string().contains("profile prod"));
        for (text, key) in [
            (
                "[http]\nallow = [\"http://api.example.com\"]\n[[http.sign]]\ntarget = \"http://api.example.com\"\nservice = \"s\"\nregion = \"r\"\n",
                "http.sign[0].target",
            ),
            (
                "[http]\nallow = []\n[[http.sign]]\ntarget = \"https://ec2.us-east-1.amazonaws.com\"\n",
                "http.sign[0].target",
            ),
            (
                "[http]\nallow = [\"http://127.0.0.1:1\"]\n[[http.sign]]\ntarget = \"http://127.0.0.1:1\"\nservice = \"ec2\"\n",
                "http.sign[0].region",
            ),
            (
                "[http]\nallow = [\"https://x.amazonaws.com\"]\n[[http.sign]]\ntarget = \"https://x.amazonaws.com\"\nwith = \"basic\"\n",
                "http.sign[0].with",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        }
    }

    #[test]
    fn risky_grants_are_named() {
        let g = parse(
            "[[files]]\nhost = \"/\"\nguest = \"/host\"\nmode = \"read-write\"\n\
             [[files]]\nhost = \"/srv\"\nguest = \"/data/\"\n\
             [http]\nallow = [\"https://*.example.com\"]\nblock_private = false\n",
        )
        .unwrap();
        let w = g.warnings(Path::new("/var/lib/infrakit"));
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(
            w[0].contains("files[0]")
                && w[1].contains("files[1]")
                && w[2].contains("block_private")
        );
        assert!(parse("").unwrap().warnings(Path::new("/x")).is_empty());
    }

    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
