//! # infrakit-sdk
//!
//! Write [infrakit](https://example.invalid/infrakit-rs) instance and flavor plugins in Rust and
//! compile them to WebAssembly components (`cargo build --target wasm32-wasip2`).
//!
//! A plugin is one type implementing [`InstancePlugin`] or [`FlavorPlugin`] and one macro line,
//! [`export_instance!`] or [`export_flavor!`]. Enable the matching cargo feature of this crate
//! (`instance` or `flavor`). Properties arrive as JSON and are read into your own serde types
//! with [`Properties::parse`], whose errors name the offending field. Log through
//! [`info!`], [`warn!`] and friends: lines reach the host's logs tagged with your plugin's name.
//!
//! ```no_run
//! use infrakit_sdk::{Description, DestroyContext, InstancePlugin, InstanceSpec, Properties, Tags};
//!
//! #[derive(Default)]
//! struct Echo;
//!
//! impl InstancePlugin for Echo {
//!     fn validate(&self, properties: &Properties) -> infrakit_sdk::Result<()> {
//!         properties.parse::<serde_json::Value>().map(|_| ())
//!     }
//!     fn provision(&self, spec: InstanceSpec) -> infrakit_sdk::Result<String> {
//!         infrakit_sdk::info!("provisioning with {} tags", spec.tags.len());
//!         Ok("echo-1".to_string())
//!     }
//!     fn label(&self, _id: &str, _labels: Tags) -> infrakit_sdk::Result<()> {
//!         Ok(())
//!     }
//!     fn destroy(&self, id: &str, _context: DestroyContext) -> infrakit_sdk::Result<()> {
//!         Err(infrakit_sdk::Error::NotFound(id.to_string()))
//!     }
//!     fn describe(&self, _tags: &Tags, _include_properties: bool) -> infrakit_sdk::Result<Vec<Description>> {
//!         Ok(Vec::new())
//!     }
//! }
//!
//! infrakit_sdk::export_instance!(Echo);
//! ```
//!
//! Plugin logic is ordinary Rust, so it can be unit-tested natively; [`testing`] stands in for
//! the host (configuration values, captured logs).
#![deny(missing_docs)]

// The generated bindings refer to this crate by name, so that plugin crates need no
// dependency on wit-bindgen themselves.
extern crate self as infrakit_sdk;

mod error;
pub mod http;
mod log;
mod plugin;
pub mod process;
mod properties;
pub mod testing;
mod types;

#[doc(hidden)]
pub mod wit;

pub use error::{Error, Result};
pub use log::{Level, log};
pub use plugin::{Capability, FlavorPlugin, InstancePlugin, Metadata};
pub use properties::Properties;
pub use types::{
    Allocation, Attachment, Description, DestroyContext, Health, Index, InstanceSpec, Tags,
};

/// Reads a configuration value the operator granted to this plugin (`config` in its grant
/// file); `None` when it was not granted.
///
/// ```no_run
/// let dir = infrakit_sdk::config("dir").unwrap_or_else(|| "/data".to_string());
/// ```
pub fn config(key: &str) -> Option<String> {
    wit::get_config(key)
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}
