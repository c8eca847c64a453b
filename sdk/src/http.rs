//! Outbound HTTP for plugins, over `wasi:http`.
//!
//! The host allows only the targets granted to the plugin (`[http] allow` in its grant file).
//! A refused request fails with [`HttpError::Denied`], naming the URL, so a plugin author sees
//! *why* instead of a generic connection error.
//!
//! ```no_run
//! use infrakit_sdk::http;
//!
//! #[derive(serde::Deserialize)]
//! struct Server { id: String }
//!
//! # fn demo() -> Result<(), http::HttpError> {
//! let created: Server = http::post("https://api.example.com/servers")
//!     .header("authorization", "Bearer t0ken")
//!     .json(&serde_json::json!({"size": "small"}))
//!     .timeout(std::time::Duration::from_secs(10))
//!     .send()?
//!     .error_for_status()?
//!     .json()?;
//! # Ok(()) }
//! ```
//!
//! In native unit tests requests go to the handler of the installed
//! [`testing::Host`](crate::testing::Host), or fail with [`HttpError::Unsupported`].

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// An HTTP method.
///
/// ```
/// assert_eq!(infrakit_sdk::http::Method::Get.as_str(), "GET");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
}

impl Method {
    /// The method's name.
    ///
    /// ```
    /// assert_eq!(infrakit_sdk::http::Method::Delete.as_str(), "DELETE");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// Why a request failed.
///
/// ```
/// let e = infrakit_sdk::http::HttpError::Denied { url: "https://x.test/".into() };
/// assert!(e.to_string().contains("not granted"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL cannot be used (no scheme, unsupported scheme, no host).
    InvalidUrl(String),
    /// The host refused the request: the target is not granted to this plugin, the grant's
    /// rules do not admit its method, path or body, or it resolves to a private address the
    /// grant blocks.
    Denied {
        /// The URL that was refused.
        url: String,
    },
    /// Connecting, or waiting for the response, took too long.
    Timeout(String),
    /// The name did not resolve.
    Dns(String),
    /// The connection failed or broke.
    Connection(String),
    /// The response body was larger than the plugin's grant allows.
    TooLarge(Option<u64>),
    /// The response was not what the caller expected (status, JSON).
    Response {
        /// The HTTP status.
        status: u16,
        /// What was wrong.
        message: String,
    },
    /// No HTTP in this environment (native code without a testing handler).
    Unsupported,
    /// Anything else the host reported.
    Other(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::InvalidUrl(m) => write!(f, "invalid URL: {m}"),
            HttpError::Denied { url } => write!(
                f,
                "HTTP request to {url} denied by the host (HttpRequestDenied): the target, or \
                 this method, path or body, is not granted to this plugin, or the name resolves \
                 to an address the grant blocks (the host's log says which)"
            ),
            HttpError::Timeout(m) => write!(f, "HTTP timeout: {m}"),
            HttpError::Dns(m) => write!(f, "DNS failure: {m}"),
            HttpError::Connection(m) => write!(f, "connection failed: {m}"),
            HttpError::TooLarge(Some(n)) => write!(f, "response body over the limit of {n} bytes"),
            HttpError::TooLarge(None) => write!(f, "response body over the granted limit"),
            HttpError::Response { status, message } => write!(f, "HTTP {status}: {message}"),
            HttpError::Unsupported => write!(f, "HTTP is not available here"),
            HttpError::Other(m) => write!(f, "HTTP error: {m}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// Timeouts and connection failures are worth a retry; the rest are not.
impl From<HttpError> for crate::Error {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::Timeout(_) | HttpError::Connection(_) | HttpError::Dns(_) => {
                crate::Error::Transient(e.to_string())
            }
            HttpError::Response { status, .. } if status >= 500 || status == 429 => {
                crate::Error::Transient(e.to_string())
            }
            HttpError::Response { status: 404, .. } => crate::Error::NotFound(e.to_string()),
            _ => crate::Error::Other(e.to_string()),
        }
    }
}

/// Percent-encodes `text` for use as one path segment or query value: everything but ASCII
/// letters, digits and `-_.~` is escaped, so a value can never add a `/`, `?`, `&` or `#`.
///
/// ```
/// assert_eq!(infrakit_sdk::http::encode("a b/c=d"), "a%20b%2Fc%3Dd");
/// ```
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A request being built. Start with [`get`], [`post`], [`put`] or [`delete`].
///
/// ```no_run
/// let resp = infrakit_sdk::http::get("http://127.0.0.1:8080/health").send();
/// ```
#[derive(Debug, Clone)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The full URL.
    pub url: String,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Connect and first-byte timeout (the host caps it at the call's wall-clock limit).
    pub timeout: Option<Duration>,
}

/// A received response, body read in full.
///
/// ```
/// let r = infrakit_sdk::http::Response { status: 200, headers: vec![], body: b"{\"a\":1}".to_vec() };
/// let v: serde_json::Value = r.json().unwrap();
/// assert_eq!(v["a"], 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers (names lowercase).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// Starts a GET request.
///
/// ```no_run
/// let body = infrakit_sdk::http::get("https://api.example.com/x").send()?.text();
/// # Ok::<(), infrakit_sdk::http::HttpError>(())
/// ```
pub fn get(url: impl Into<String>) -> Request {
    Request::new(Method::Get, url)
}

/// Starts a POST request.
///
/// ```no_run
/// infrakit_sdk::http::post("https://api.example.com/x").json(&[1, 2]).send()?;
/// # Ok::<(), infrakit_sdk::http::HttpError>(())
/// ```
pub fn post(url: impl Into<String>) -> Request {
    Request::new(Method::Post, url)
}

/// Starts a PUT request.
///
/// ```no_run
/// infrakit_sdk::http::put("https://api.example.com/x/1").body("data").send()?;
/// # Ok::<(), infrakit_sdk::http::HttpError>(())
/// ```
pub fn put(url: impl Into<String>) -> Request {
    Request::new(Method::Put, url)
}

/// Starts a DELETE request.
///
/// ```no_run
/// infrakit_sdk::http::delete("https://api.example.com/x/1").send()?;
/// # Ok::<(), infrakit_sdk::http::HttpError>(())
/// ```
pub fn delete(url: impl Into<String>) -> Request {
    Request::new(Method::Delete, url)
}

impl Request {
    /// A request with no headers and no body.
    ///
    /// ```
    /// let r = infrakit_sdk::http::Request::new(infrakit_sdk::http::Method::Get, "http://x.test/");
    /// assert!(r.body.is_empty());
    /// ```
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Request {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
        }
    }

    /// Adds a header.
    ///
    /// ```
    /// let r = infrakit_sdk::http::get("http://x.test/").header("accept", "text/plain");
    /// assert_eq!(r.headers.len(), 1);
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    ///
    /// ```
    /// let r = infrakit_sdk::http::post("http://x.test/").body("hi");
    /// assert_eq!(r.body, b"hi");
    /// ```
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets a JSON body and its content type.
    ///
    /// ```
    /// let r = infrakit_sdk::http::post("http://x.test/").json(&serde_json::json!({"a": 1}));
    /// assert_eq!(r.body, br#"{"a":1}"#);
    /// ```
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_default();
        self.header("content-type", "application/json").body(body)
    }

    /// Sets the connect and first-byte timeout.
    ///
    /// ```
    /// let r = infrakit_sdk::http::get("http://x.test/").timeout(std::time::Duration::from_secs(1));
    /// assert!(r.timeout.is_some());
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends the request and reads the whole response.
    ///
    /// ```no_run
    /// let status = infrakit_sdk::http::get("http://127.0.0.1:8080/").send()?.status;
    /// # Ok::<(), infrakit_sdk::http::HttpError>(())
    /// ```
    pub fn send(self) -> Result<Response, HttpError> {
        let url = Url::parse(&self.url)?;
        transport::send(&self, &url)
    }
}

impl Response {
    /// The body as text (invalid UTF-8 replaced).
    ///
    /// ```
    /// let r = infrakit_sdk::http::Response { status: 200, headers: vec![], body: b"ok".to_vec() };
    /// assert_eq!(r.text(), "ok");
    /// ```
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    ///
    /// ```
    /// let r = infrakit_sdk::http::Response { status: 200, headers: vec![], body: b"[1]".to_vec() };
    /// assert_eq!(r.json::<Vec<u8>>().unwrap(), vec![1]);
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| HttpError::Response {
            status: self.status,
            message: format!("body is not the expected JSON: {e}"),
        })
    }

    /// A header's value (name compared case-insensitively).
    ///
    /// ```
    /// let r = infrakit_sdk::http::Response { status: 200, headers: vec![("content-type".into(), "a/b".into())], body: vec![] };
    /// assert_eq!(r.header("Content-Type"), Some("a/b"));
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The response itself when its status is 2xx, else [`HttpError::Response`].
    ///
    /// ```
    /// let r = infrakit_sdk::http::Response { status: 503, headers: vec![], body: b"busy".to_vec() };
    /// assert!(r.error_for_status().is_err());
    /// ```
    pub fn error_for_status(self) -> Result<Response, HttpError> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            Err(HttpError::Response {
                status: self.status,
                message: self.text().chars().take(200).collect(),
            })
        }
    }
}

/// The parts of a URL wasi:http needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    pub https: bool,
    pub authority: String,
    pub path_and_query: String,
}

impl Url {
    pub(crate) fn parse(url: &str) -> Result<Url, HttpError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| HttpError::InvalidUrl(format!("{url:?} has no scheme")))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            other => {
                return Err(HttpError::InvalidUrl(format!(
                    "{url:?}: scheme {other:?} is not http or https"
                )));
            }
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() {
            return Err(HttpError::InvalidUrl(format!("{url:?} has no host")));
        }
        let path_and_query = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Ok(Url {
            https,
            authority: authority.to_string(),
            path_and_query,
        })
    }
}

#[cfg(target_arch = "wasm32")]
mod transport {
    use super::{HttpError, Request, Response, Url};
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{
        ErrorCode, Fields, IncomingBody, Method as WasiMethod, OutgoingBody, OutgoingRequest,
        RequestOptions, Scheme,
    };
    use wasip2::io::streams::StreamError;

    fn from_code(code: ErrorCode, url: &str) -> HttpError {
        match code {
            ErrorCode::HttpRequestDenied => HttpError::Denied {
                url: url.to_string(),
            },
            ErrorCode::DnsTimeout => HttpError::Timeout(format!("resolving {url}")),
            ErrorCode::DnsError(p) => HttpError::Dns(format!("{url}: {:?}", p.rcode)),
            ErrorCode::DestinationNotFound => HttpError::Dns(format!("{url}: no such host")),
            ErrorCode::ConnectionTimeout => HttpError::Timeout(format!("connecting to {url}")),
            ErrorCode::ConnectionReadTimeout | ErrorCode::HttpResponseTimeout => {
                HttpError::Timeout(format!("waiting for {url}"))
            }
            ErrorCode::ConnectionWriteTimeout => HttpError::Timeout(format!("sending to {url}")),
            ErrorCode::ConnectionRefused => HttpError::Connection(format!("{url}: refused")),
            ErrorCode::ConnectionTerminated | ErrorCode::DestinationUnavailable => {
                HttpError::Connection(format!("{url}: {code:?}"))
            }
            ErrorCode::DestinationIpProhibited | ErrorCode::DestinationIpUnroutable => {
                HttpError::Denied {
                    url: url.to_string(),
                }
            }
            ErrorCode::HttpResponseBodySize(limit) => HttpError::TooLarge(limit),
            other => HttpError::Other(format!("{url}: {other:?}")),
        }
    }

    /// The error of a request that already failed, if it did.
    fn pending_error(
        pending: &wasip2::http::types::FutureIncomingResponse,
        url: &str,
    ) -> Option<HttpError> {
        pending.subscribe().block();
        match pending.get()? {
            Ok(Err(code)) => Some(from_code(code, url)),
            _ => None,
        }
    }

    pub(super) fn send(req: &Request, url: &Url) -> Result<Response, HttpError> {
        let mut entries: Vec<(String, Vec<u8>)> = req
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
            .filter(|(k, _)| k != "content-length" && k != "transfer-encoding")
            .collect();
        // The body is in memory: say how long it is rather than sending it chunked, which
        // simple servers (Python's http.server) read as empty.
        if !req.body.is_empty() || matches!(req.method, super::Method::Post | super::Method::Put) {
            entries.push((
                "content-length".into(),
                req.body.len().to_string().into_bytes(),
            ));
        }
        let headers = Fields::from_list(&entries)
            .map_err(|e| HttpError::Other(format!("bad header: {e:?}")))?;
        let outgoing = OutgoingRequest::new(headers);
        let method = match req.method {
            super::Method::Get => WasiMethod::Get,
            super::Method::Post => WasiMethod::Post,
            super::Method::Put => WasiMethod::Put,
            super::Method::Delete => WasiMethod::Delete,
        };
        let invalid = |what: &str| HttpError::InvalidUrl(format!("{}: bad {what}", req.url));
        outgoing
            .set_method(&method)
            .map_err(|_| invalid("method"))?;
        outgoing
            .set_scheme(Some(if url.https {
                &Scheme::Https
            } else {
                &Scheme::Http
            }))
            .map_err(|_| invalid("scheme"))?;
        outgoing
            .set_authority(Some(&url.authority))
            .map_err(|_| invalid("host"))?;
        outgoing
            .set_path_with_query(Some(&url.path_and_query))
            .map_err(|_| invalid("path"))?;

        let body = outgoing
            .body()
            .map_err(|_| HttpError::Other("request body unavailable".into()))?;

        let options = RequestOptions::new();
        if let Some(t) = req.timeout {
            let ns = t.as_nanos().min(u64::MAX as u128) as u64;
            let _ = options.set_connect_timeout(Some(ns));
            let _ = options.set_first_byte_timeout(Some(ns));
            let _ = options.set_between_bytes_timeout(Some(ns));
        }
        // The request is handed over first and its body written after: the host reads the body
        // while the request is on its way (a body written before would have nowhere to go
        // beyond the stream's buffer, and a large one would block).
        let pending = outgoing_handler::handle(outgoing, Some(options))
            .map_err(|code| from_code(code, &req.url))?;
        if !req.body.is_empty() {
            let stream = body
                .write()
                .map_err(|_| HttpError::Other("request body stream unavailable".into()))?;
            for chunk in req.body.chunks(4096) {
                if let Err(e) = stream.blocking_write_and_flush(chunk) {
                    // A refused request closes the body: report why it was refused.
                    drop(stream);
                    return Err(match pending_error(&pending, &req.url) {
                        Some(refused) => refused,
                        None => stream_error(e, &req.url),
                    });
                }
            }
        }
        OutgoingBody::finish(body, None).map_err(|code| from_code(code, &req.url))?;

        pending.subscribe().block();
        let response = pending
            .get()
            .ok_or_else(|| HttpError::Other("response not ready".into()))?
            .map_err(|_| HttpError::Other("response already taken".into()))?
            .map_err(|code| from_code(code, &req.url))?;

        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let incoming = response
            .consume()
            .map_err(|_| HttpError::Other("response body unavailable".into()))?;
        let mut body = Vec::new();
        {
            let stream = incoming
                .stream()
                .map_err(|_| HttpError::Other("response body stream unavailable".into()))?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => body.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(e) => return Err(stream_error(e, &req.url)),
                }
            }
        }
        let _ = IncomingBody::finish(incoming);
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    fn stream_error(e: StreamError, url: &str) -> HttpError {
        match e {
            StreamError::Closed => HttpError::Connection(format!("{url}: stream closed")),
            StreamError::LastOperationFailed(err) => {
                match wasip2::http::types::http_error_code(&err) {
                    Some(code) => from_code(code, url),
                    // The host's message is the best description there is.
                    None => HttpError::Other(format!("{url}: {}", err.to_debug_string())),
                }
            }
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod transport {
    use super::{HttpError, Request, Response, Url};

    pub(super) fn send(req: &Request, _url: &Url) -> Result<Response, HttpError> {
        crate::testing::http_request(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let u = Url::parse("https://api.example.com:8443/v1/x?y=1").unwrap();
        assert!(u.https);
        assert_eq!(u.authority, "api.example.com:8443");
        assert_eq!(u.path_and_query, "/v1/x?y=1");
        let u = Url::parse("http://127.0.0.1:80").unwrap();
        assert_eq!(u.path_and_query, "/");
        let u = Url::parse("http://h?q").unwrap();
        assert_eq!(u.path_and_query, "/?q");
        assert!(Url::parse("ftp://x").is_err());
        assert!(Url::parse("no-scheme").is_err());
        assert!(Url::parse("http:///path").is_err());
    }

    #[test]
    fn native_requests_go_to_the_testing_handler() {
        assert_eq!(get("http://x.test/").send(), Err(HttpError::Unsupported));
        let host = crate::testing::Host::new().with_http(|req| {
            Ok(Response {
                status: 201,
                headers: vec![],
                body: format!("{} {}", req.method.as_str(), req.url).into_bytes(),
            })
        });
        let _g = host.install();
        let r = post("http://x.test/a").send().unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.text(), "POST http://x.test/a");
    }

    #[test]
    fn errors_map_to_plugin_errors() {
        let e: crate::Error = HttpError::Timeout("x".into()).into();
        assert!(matches!(e, crate::Error::Transient(_)));
        let e: crate::Error = HttpError::Denied { url: "u".into() }.into();
        assert!(matches!(e, crate::Error::Other(m) if m.contains("HttpRequestDenied")));
    }
}
