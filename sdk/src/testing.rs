//! Run plugin logic natively, in ordinary `#[test]`s, without a host.
//!
//! Outside wasm, [`config`](crate::config) reads from the [`Host`] installed on the current
//! thread and log lines are captured by it (or printed to stderr when no host is installed).
//!
//! ```
//! use infrakit_sdk::testing::Host;
//!
//! let host = Host::new().with_config("dir", "/tmp/instances");
//! let _guard = host.install();
//! assert_eq!(infrakit_sdk::config("dir").as_deref(), Some("/tmp/instances"));
//! infrakit_sdk::info!("hello");
//! assert_eq!(host.logs(), vec![(infrakit_sdk::Level::Info, "hello".to_string())]);
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::Level;
use crate::http::{HttpError, Request, Response};

type HttpHandler = Box<dyn Fn(&Request) -> Result<Response, HttpError>>;

#[derive(Default)]
struct State {
    config: BTreeMap<String, String>,
    logs: Vec<(Level, String)>,
    http: Option<HttpHandler>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<RefCell<State>>>> = const { RefCell::new(None) };
}

/// A stand-in for the infrakit host in native tests: configuration values and a log capture.
///
/// ```
/// let host = infrakit_sdk::testing::Host::new().with_config("region", "eu");
/// let _g = host.install();
/// assert_eq!(infrakit_sdk::config("region").as_deref(), Some("eu"));
/// ```
#[derive(Clone, Default)]
pub struct Host {
    state: Rc<RefCell<State>>,
}

impl Host {
    /// A host with no configuration.
    ///
    /// ```
    /// let _host = infrakit_sdk::testing::Host::new();
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a configuration value, as a grant file's `config` section would.
    ///
    /// ```
    /// let _host = infrakit_sdk::testing::Host::new().with_config("dir", "/tmp");
    /// ```
    pub fn with_config(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.state
            .borrow_mut()
            .config
            .insert(key.into(), value.into());
        self
    }

    /// Answers the plugin's HTTP requests with `handler` (natively there is no network).
    ///
    /// ```
    /// use infrakit_sdk::http::{self, HttpError, Response};
    /// let host = infrakit_sdk::testing::Host::new().with_http(|req| {
    ///     if req.url.starts_with("https://api.test/") {
    ///         Ok(Response { status: 200, headers: vec![], body: b"{}".to_vec() })
    ///     } else {
    ///         Err(HttpError::Denied { url: req.url.clone() })
    ///     }
    /// });
    /// let _g = host.install();
    /// assert!(http::get("https://api.test/x").send().is_ok());
    /// assert!(matches!(http::get("https://evil.test/").send(), Err(HttpError::Denied { .. })));
    /// ```
    pub fn with_http(
        self,
        handler: impl Fn(&Request) -> Result<Response, HttpError> + 'static,
    ) -> Self {
        self.state.borrow_mut().http = Some(Box::new(handler));
        self
    }

    /// Makes this the host of the current thread until the guard is dropped.
    ///
    /// ```
    /// let host = infrakit_sdk::testing::Host::new();
    /// {
    ///     let _g = host.install();
    ///     infrakit_sdk::warn!("captured");
    /// }
    /// assert_eq!(host.logs().len(), 1);
    /// ```
    pub fn install(&self) -> Guard {
        let previous = CURRENT.with(|c| c.replace(Some(self.state.clone())));
        Guard { previous }
    }

    /// The log lines captured so far.
    ///
    /// ```
    /// assert!(infrakit_sdk::testing::Host::new().logs().is_empty());
    /// ```
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.state.borrow().logs.clone()
    }
}

/// Restores the previous host of the thread when dropped. See [`Host::install`].
#[must_use = "the host is uninstalled when the guard is dropped"]
pub struct Guard {
    previous: Option<Rc<RefCell<State>>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

#[allow(dead_code)] // unused in wasm builds, where the real host answers
pub(crate) fn record_log(level: Level, message: &str) {
    let captured = CURRENT.with(|c| {
        c.borrow().as_ref().map(|state| {
            state.borrow_mut().logs.push((level, message.to_string()));
        })
    });
    if captured.is_none() {
        eprintln!("[{level:?}] {message}");
    }
}

#[allow(dead_code)]
pub(crate) fn config_value(key: &str) -> Option<String> {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .and_then(|state| state.borrow().config.get(key).cloned())
    })
}

#[allow(dead_code)]
pub(crate) fn http_request(req: &Request) -> Result<Response, HttpError> {
    let state = CURRENT.with(|c| c.borrow().clone());
    match state {
        Some(state) => match &state.borrow().http {
            Some(handler) => handler(req),
            None => Err(HttpError::Unsupported),
        },
        None => Err(HttpError::Unsupported),
    }
}
