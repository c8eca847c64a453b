/// Severity of a log line sent to the host.
///
/// ```
/// infrakit_sdk::log(infrakit_sdk::Level::Warn, "disk nearly full");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed.
    Trace,
    /// For whoever debugs the plugin.
    Debug,
    /// Normal operation.
    Info,
    /// Something looks wrong but the call goes on.
    Warn,
    /// The call is failing.
    Error,
}

/// Sends one log line to the host, which records it with the plugin's name. Natively (in unit
/// tests) the line goes to the [`testing`](crate::testing) host, or to stderr when none is set.
///
/// ```
/// infrakit_sdk::log(infrakit_sdk::Level::Info, "hello");
/// ```
pub fn log(level: Level, message: &str) {
    crate::wit::log(level, message);
}

/// Logs at a given level with `format!` arguments.
///
/// ```
/// infrakit_sdk::log!(infrakit_sdk::Level::Debug, "{} + {} = {}", 1, 1, 2);
/// ```
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {
        $crate::log($level, &::std::format!($($arg)+))
    };
}

/// Logs at [`Level::Trace`](crate::Level::Trace).
///
/// ```
/// infrakit_sdk::trace!("entering {}", "describe");
/// ```
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log!($crate::Level::Trace, $($arg)+) };
}

/// Logs at [`Level::Debug`](crate::Level::Debug).
///
/// ```
/// infrakit_sdk::debug!("{} instances", 3);
/// ```
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log!($crate::Level::Debug, $($arg)+) };
}

/// Logs at [`Level::Info`](crate::Level::Info).
///
/// ```
/// infrakit_sdk::info!("provisioned {}", "i-1");
/// ```
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log!($crate::Level::Info, $($arg)+) };
}

/// Logs at [`Level::Warn`](crate::Level::Warn).
///
/// ```
/// infrakit_sdk::warn!("retrying {}", "i-1");
/// ```
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log!($crate::Level::Warn, $($arg)+) };
}

/// Logs at [`Level::Error`](crate::Level::Error).
///
/// ```
/// infrakit_sdk::error!("cannot reach {}", "api");
/// ```
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log!($crate::Level::Error, $($arg)+) };
}
