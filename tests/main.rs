//! The one integration test binary (every extra one costs a link of a large debug executable).
//! Tests drive the real `infrakit` binary and the real host library with the real plugins
//! compiled from `plugins/` and `tests/fixtures/plugins/`.

mod support;

mod api;
mod aws;
mod daemon;
mod docker;
mod groups;
mod ha;
mod instance_process;
mod plugin_cli;
mod python_plugin;
mod sandbox;
mod store;
mod ui;
mod zookeeper;
