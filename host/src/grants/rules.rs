//! Request rules of an HTTP grant: which methods and paths a plugin may use on a target, and
//! what the JSON body of a request may contain. They exist for targets where reaching the
//! server is not enough to bound what a plugin can do: a Docker socket is root on the host, so
//! its grant says `POST /containers/create` (without `Privileged`, with bind mounts only under
//! `/srv/www`) and `POST /containers/*/start`, and not `/exec` or `/images/create`.
//!
//! ```toml
//! [[http.rules]]
//! target = "http://docker"
//! requests = ["POST /containers/create"]
//! deny_fields = ["/HostConfig/Privileged", "/HostConfig/Binds"]
//! require_fields = ["/HostConfig/PortBindings/*/*/HostIp"]
//! allow_values = { "/HostConfig/Mounts/*/Source" = ["/srv/www/**"] }
//! ```
//!
//! A target with rules admits a request only when one rule's `requests` matches it and that
//! rule's body constraints hold; a target without rules admits any request. Paths are matched
//! segment by segment after percent-decoding: `*` is one segment, `**` one or more; a path with
//! `.` or `..` segments, an empty segment or an encoded `/` is refused outright, so no spelling
//! reaches a route the rules did not name. Field paths are JSON pointers with `*` for any key or
//! index; keys compare case-insensitively because Go's `encoding/json` (Docker's decoder) matches
//! them that way, and a rule that compared exactly could be bypassed by `"privileged": true`.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// Largest request body the host reads to check a rule's body constraints.
pub const MAX_CHECKED_BODY: usize = 1 << 20;

/// `METHOD /path/pattern`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPattern {
    /// An upper-case method, or `*` for any.
    pub method: String,
    /// Path segments: literal, `*` or `**`.
    pub segments: Vec<String>,
}

impl RequestPattern {
    /// Parses `"GET /containers/*/json"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (method, path) = text
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("{text:?} is not `METHOD /path`"))?;
        let method_ok =
            method == "*" || (!method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase()));
        if !method_ok {
            return Err(format!(
                "method {method:?} is not an upper-case HTTP method or `*`"
            ));
        }
        let path = path.trim();
        let segments = path_segments(path).ok_or_else(|| {
            format!("path {path:?} must start with `/` and have no empty, `.` or `..` segments")
        })?;
        if let Some(bad) = segments
            .iter()
            .find(|s| s.contains('*') && s.as_str() != "*" && s.as_str() != "**")
        {
            return Err(format!(
                "segment {bad:?}: `*` and `**` stand for whole segments only"
            ));
        }
        Ok(RequestPattern {
            method: method.to_string(),
            segments,
        })
    }

    fn matches(&self, method: &str, segments: &[String]) -> bool {
        (self.method == "*" || self.method == method) && glob(&self.segments, segments)
    }
}

impl fmt::Display for RequestPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} /{}", self.method, self.segments.join("/"))
    }
}

/// Segment glob: `*` matches one segment, `**` one or more.
fn glob(pattern: &[String], path: &[String]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => (1..=path.len()).any(|n| glob(rest, &path[n..])),
        Some((p, rest)) => {
            !path.is_empty() && (p == "*" || *p == path[0]) && glob(rest, &path[1..])
        }
    }
}

/// The segments of an absolute path, or `None` when it has an empty, `.` or `..` segment. The
/// root `/` has no segments.
fn path_segments(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix('/')?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let segments: Vec<String> = rest.split('/').map(str::to_string).collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return None;
    }
    Some(segments)
}

/// The decoded segments of a request's path, or why the path is refused.
pub fn request_segments(raw_path: &str) -> Result<Vec<String>, String> {
    let refuse = |why: &str| Err(format!("path {raw_path:?} refused: {why}"));
    if raw_path.contains('\\') {
        return refuse("it contains a backslash");
    }
    let mut out = Vec::new();
    let Some(rest) = raw_path.strip_prefix('/') else {
        return refuse("it is not absolute");
    };
    if rest.is_empty() {
        return Ok(out);
    }
    for raw in rest.split('/') {
        let Some(decoded) = percent_decode(raw) else {
            return refuse("bad percent-encoding");
        };
        if decoded.is_empty() || decoded == "." || decoded == ".." {
            return refuse("empty, `.` or `..` segment");
        }
        if decoded.contains('/') || decoded.contains('\\') {
            return refuse("an encoded `/` or `\\`");
        }
        out.push(decoded);
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A JSON pointer with `*` for any key or index, e.g. `/HostConfig/Mounts/*/Source`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    /// Parses `/A/b/*/c` (`~1` and `~0` escape `/` and `~`, as in JSON pointers).
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text.strip_prefix('/').ok_or_else(|| {
            format!("{text:?} is not a JSON pointer such as \"/HostConfig/Privileged\"")
        })?;
        if rest.is_empty() {
            return Err(format!("{text:?} names the whole body, not a field"));
        }
        Ok(FieldPath(
            rest.split('/')
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect(),
        ))
    }

    /// Every value at this path in `root`, with where it was found.
    fn values<'a>(&self, root: &'a Value) -> Vec<(String, &'a Value)> {
        let mut found = Vec::new();
        collect(root, &self.0, String::new(), &mut found);
        found
    }

    /// Every object or array that holds (or could hold) the last segment.
    fn parents<'a>(&self, root: &'a Value) -> Vec<(String, &'a Value)> {
        let mut found = Vec::new();
        collect(root, &self.0[..self.0.len() - 1], String::new(), &mut found);
        found
    }

    fn last(&self) -> &str {
        &self.0[self.0.len() - 1]
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.0 {
            write!(f, "/{}", s.replace('~', "~0").replace('/', "~1"))?;
        }
        Ok(())
    }
}

/// Go's `encoding/json` folds case when it matches keys (ASCII, plus the Kelvin sign and the
/// long s, which fold to `k` and `s`).
fn fold(key: &str) -> String {
    key.chars()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            '\u{212a}' => 'k',
            '\u{17f}' => 's',
            c => c,
        })
        .collect()
}

fn children<'a>(value: &'a Value, segment: &str) -> Vec<(String, &'a Value)> {
    match value {
        Value::Object(map) => {
            let want = fold(segment);
            map.iter()
                .filter(|(k, _)| segment == "*" || fold(k) == want)
                .map(|(k, v)| (k.clone(), v))
                .collect()
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .filter(|(i, _)| segment == "*" || segment.parse::<usize>().ok() == Some(*i))
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => Vec::new(),
    }
}

fn collect<'a>(value: &'a Value, path: &[String], at: String, out: &mut Vec<(String, &'a Value)>) {
    match path.split_first() {
        None => out.push((at, value)),
        Some((segment, rest)) => {
            for (key, child) in children(value, segment) {
                collect(child, rest, format!("{at}/{key}"), out);
            }
        }
    }
}

/// An allowed value: exact text, `*` for anything, or `DIR/**` for `DIR` and any path beneath
/// it (component-wise, never through `..`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValuePattern(String);

impl ValuePattern {
    /// A pattern as written.
    pub fn new(text: String) -> Self {
        ValuePattern(text)
    }

    fn matches(&self, value: &Value) -> bool {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(_) | Value::Bool(_) => value.to_string(),
            Value::Null => return true,
            Value::Array(_) | Value::Object(_) => return self.0 == "*",
        };
        if self.0 == "*" {
            return true;
        }
        match self.0.strip_suffix("/**") {
            Some(dir) => {
                let under = text == dir
                    || text
                        .strip_prefix(dir)
                        .is_some_and(|rest| rest.starts_with('/'));
                under
                    && !text
                        .split('/')
                        .skip(1)
                        .any(|c| c.is_empty() || c == "." || c == "..")
            }
            None => text == self.0,
        }
    }
}

impl fmt::Display for ValuePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One rule of an HTTP grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRule {
    /// The granted target it applies to.
    pub target: super::HttpTarget,
    /// The requests it admits.
    pub requests: Vec<RequestPattern>,
    /// Fields the JSON body must not set (absent, `null`, `false`, `0`, `""`, `[]` or `{}`).
    pub deny_fields: Vec<FieldPath>,
    /// Fields that must be present and not `null` wherever their parent object is.
    pub require_fields: Vec<FieldPath>,
    /// Fields whose every value must match one of the patterns (absent is fine).
    pub allow_values: BTreeMap<FieldPath, Vec<ValuePattern>>,
}

impl HttpRule {
    /// Whether the rule constrains the body (so the host must read it before sending).
    pub fn checks_body(&self) -> bool {
        !self.deny_fields.is_empty()
            || !self.require_fields.is_empty()
            || !self.allow_values.is_empty()
    }

    /// Checks a body against the constraints; the error names the field and the value.
    pub fn check_body(&self, body: &[u8]) -> Result<(), String> {
        if !self.checks_body() {
            return Ok(());
        }
        let root: Value = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON ({e})"))?
        };
        for field in &self.deny_fields {
            if let Some((at, v)) = field.values(&root).into_iter().find(|(_, v)| !is_empty(v)) {
                return Err(format!("field {at} = {} is not allowed", short(v)));
            }
        }
        for field in &self.require_fields {
            for (at, parent) in field.parents(&root) {
                if parent.is_object()
                    && children(parent, field.last())
                        .iter()
                        .all(|(_, v)| v.is_null())
                {
                    return Err(format!("field {at}/{} is required", field.last()));
                }
            }
        }
        for (field, allowed) in &self.allow_values {
            for (at, v) in field.values(&root) {
                if !allowed.iter().any(|p| p.matches(v)) {
                    let allowed: Vec<String> = allowed.iter().map(ToString::to_string).collect();
                    return Err(format!(
                        "field {at} = {} is not one of {allowed:?}",
                        short(v)
                    ));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for HttpRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |items: Vec<String>| items.join(", ");
        write!(
            f,
            "{}: {}",
            self.target,
            list(self.requests.iter().map(ToString::to_string).collect())
        )?;
        if !self.deny_fields.is_empty() {
            let fields = list(self.deny_fields.iter().map(ToString::to_string).collect());
            write!(f, "; body must not set {fields}")?;
        }
        if !self.require_fields.is_empty() {
            let fields = list(
                self.require_fields
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            );
            write!(f, "; body must set {fields}")?;
        }
        for (field, values) in &self.allow_values {
            let values = list(values.iter().map(ToString::to_string).collect());
            write!(f, "; {field} only {values}")?;
        }
        Ok(())
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}

/// What the rules of a grant say about a request's method and path.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// No rule applies to the target: the allow list alone decides.
    Unruled,
    /// These rules admit the method and path; the body must satisfy one of them.
    Admitted(Vec<&'a HttpRule>),
    /// Refused, with why.
    Refused(String),
}

/// Applies `rules` to a request to `target` (already known to be granted).
pub fn judge<'a>(
    rules: &'a [HttpRule],
    scheme: &str,
    host: &str,
    port: u16,
    method: &str,
    path: &str,
) -> Verdict<'a> {
    let applicable: Vec<&HttpRule> = rules
        .iter()
        .filter(|r| r.target.matches(scheme, host, port))
        .collect();
    if applicable.is_empty() {
        return Verdict::Unruled;
    }
    let segments = match request_segments(path) {
        Ok(s) => s,
        Err(why) => return Verdict::Refused(why),
    };
    let admitted: Vec<&HttpRule> = applicable
        .into_iter()
        .filter(|r| r.requests.iter().any(|p| p.matches(method, &segments)))
        .collect();
    if admitted.is_empty() {
        Verdict::Refused(format!("{method} {path} matches no rule of the grant"))
    } else {
        Verdict::Admitted(admitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(requests: &[&str]) -> HttpRule {
        HttpRule {
            target: super::super::HttpTarget::parse("http://docker").unwrap(),
            requests: requests
                .iter()
                .map(|r| RequestPattern::parse(r).unwrap())
                .collect(),
            deny_fields: Vec::new(),
            require_fields: Vec::new(),
            allow_values: BTreeMap::new(),
        }
    }

    fn verdict(rules: &[HttpRule], method: &str, path: &str) -> bool {
        matches!(
            judge(rules, "http", "docker", 80, method, path),
            Verdict::Admitted(_)
        )
    }

    #[test]
    fn methods_and_segment_globs() {
        let rules = [rule(&[
            "GET /containers/json",
            "POST /containers/*/start",
            "DELETE /containers/*",
            "GET /images/**/json",
        ])];
        assert!(verdict(&rules, "GET", "/containers/json"));
        assert!(verdict(&rules, "POST", "/containers/abc/start"));
        assert!(verdict(&rules, "DELETE", "/containers/abc"));
        assert!(verdict(&rules, "GET", "/images/library/busybox/json"));
        assert!(!verdict(&rules, "POST", "/containers/json"));
        assert!(!verdict(&rules, "POST", "/containers/abc/exec"));
        assert!(!verdict(&rules, "POST", "/images/create"));
        assert!(!verdict(&rules, "DELETE", "/containers/abc/def"));
        assert!(!verdict(&rules, "GET", "/images/json"));
    }

    #[test]
    fn path_tricks_are_refused() {
        let rules = [rule(&["POST /containers/*/start", "GET /**"])];
        for path in [
            "/containers/a/../../exec",
            "/containers/%2e%2e/start",
            "/containers/a%2Fb/start",
            "/containers//start",
            "/containers/./start",
            "/containers\\a/start",
            "/containers/%zz/start",
        ] {
            assert!(!verdict(&rules, "POST", path), "{path}");
        }
        assert!(verdict(&rules, "POST", "/containers/a%20b/start"));
        assert!(matches!(
            judge(&rules, "http", "other", 80, "POST", "/x"),
            Verdict::Unruled
        ));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "get /x",
            "GET x",
            "GET /a/b*",
            "GET /a//b",
            "/x",
            "GET /a/../b",
        ] {
            assert!(RequestPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(FieldPath::parse("HostConfig").is_err());
        assert!(FieldPath::parse("/").is_err());
    }

    #[test]
    fn body_constraints() {
        let mut r = rule(&["POST /containers/create"]);
        r.deny_fields = vec![
            FieldPath::parse("/HostConfig/Privileged").unwrap(),
            FieldPath::parse("/HostConfig/CapAdd").unwrap(),
        ];
        r.require_fields = vec![FieldPath::parse("/HostConfig/PortBindings/*/*/HostIp").unwrap()];
        r.allow_values.insert(
            FieldPath::parse("/HostConfig/Mounts/*/Source").unwrap(),
            vec![ValuePattern("/srv/www/**".into())],
        );
        r.allow_values.insert(
            FieldPath::parse("/HostConfig/Mounts/*/Type").unwrap(),
            vec![ValuePattern("bind".into())],
        );
        let ok = json!({"Image": "web", "HostConfig": {
            "Privileged": false, "CapAdd": [],
            "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]},
            "Mounts": [{"Type": "bind", "Source": "/srv/www/site"}]}});
        assert_eq!(r.check_body(ok.to_string().as_bytes()), Ok(()));
        assert_eq!(r.check_body(b""), Ok(()));
        let bad = [
            json!({"HostConfig": {"Privileged": true}}),
            json!({"hostconfig": {"privileged": true}}),
            json!({"HostConfig": {"PRIVILEGED": 1}}),
            json!({"HostConfig": {"CapAdd": ["SYS_ADMIN"]}}),
            json!({"HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "80"}]}}}),
            json!({"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/etc"}]}}),
            json!({"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/srv/www/../../etc"}]}}),
            json!({"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/srv/wwwx"}]}}),
            json!({"HostConfig": {"Mounts": [{"Type": "volume", "Source": "/srv/www"}]}}),
        ];
        for body in bad {
            assert!(r.check_body(body.to_string().as_bytes()).is_err(), "{body}");
        }
        // Go folds the long s to `s` (and the Kelvin sign to `k`): so does the check.
        r.deny_fields
            .push(FieldPath::parse("/HostConfig/SecurityOpt").unwrap());
        let long_s = "{\"HostConfig\": {\"\u{17f}ecurityopt\": [\"seccomp=unconfined\"]}}";
        assert!(r.check_body(long_s.as_bytes()).is_err());
        assert!(r.check_body(b"not json").is_err());
        let msg = r
            .check_body(
                json!({"HostConfig": {"Privileged": true}})
                    .to_string()
                    .as_bytes(),
            )
            .unwrap_err();
        assert!(msg.contains("/HostConfig/Privileged"), "{msg}");
    }
}
