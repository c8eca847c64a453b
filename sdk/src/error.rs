use std::fmt;

/// The result of every plugin operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a plugin reports when an operation fails. The host acts on the case: `Invalid` is not
/// retried, `NotFound` is an answer, `Transient` is retried with back-off, `Other` is reported.
///
/// ```
/// use infrakit_sdk::Error;
/// let e = Error::invalid("`Size` must be positive");
/// assert_eq!(e.to_string(), "invalid input: `Size` must be positive");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The input (properties, spec, id) is wrong; retrying will not help.
    Invalid(String),
    /// The thing asked for does not exist.
    NotFound(String),
    /// A temporary failure (rate limit, timeout): the host retries later.
    Transient(String),
    /// Anything else.
    Other(String),
}

impl Error {
    /// An [`Error::Invalid`] with the given message.
    ///
    /// ```
    /// let e = infrakit_sdk::Error::invalid("bad");
    /// assert!(matches!(e, infrakit_sdk::Error::Invalid(_)));
    /// ```
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid(message.into())
    }

    /// An [`Error::Other`] with the given message.
    ///
    /// ```
    /// let e = infrakit_sdk::Error::other("disk full");
    /// assert_eq!(e.to_string(), "disk full");
    /// ```
    pub fn other(message: impl Into<String>) -> Self {
        Error::Other(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(m) => write!(f, "invalid input: {m}"),
            Error::NotFound(m) => write!(f, "not found: {m}"),
            Error::Transient(m) => write!(f, "transient failure: {m}"),
            Error::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

/// File errors map onto the plugin error cases, keeping the OS message.
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(e.to_string()),
            std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::WouldBlock => Error::Transient(e.to_string()),
            _ => Error::Other(e.to_string()),
        }
    }
}
