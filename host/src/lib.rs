//! # infrakit
//!
//! A declarative, self-healing infrastructure manager whose plugins are sandboxed WebAssembly
//! components.
//!
//! A short tour (imports run one way: `cli` → `api`/`daemon` → `controller` → `plan`/`spec`/
//! `store` → `plugin` → `grants`, and everyone may use [`model`], the domain types):
//! - [`plugin`] loads components (built-in and from the plugin directory), sandboxes them with
//!   their [`grants`], and calls them: every call runs in a fresh instance, so a plugin that traps,
//!   loops or floods memory costs only that call.
//! - [`grants`] parses and validates what an operator allows each plugin; [`config`] is the
//!   host's own file (grants of built-ins among other settings).
//! - [`spec`] parses group specs; [`plan`] is the pure planner, `plan(desired, observed, now)`,
//!   property-tested without wasm; [`diff`] says what a new spec changes and the course the
//!   change takes; [`controller`] follows the [`store`] (the only owner of
//!   desired state) and runs one task per group that observes through
//!   typed instance and flavor clients, plans, executes (`Parallelism` calls at a time) and records [`event`]s;
//!   [`expectations`] (pure) keeps what a group just provisioned and destroyed until a listing
//!   shows it, and notices a crash loop.
//! - Guest code never runs on the threads that serve the API and run the controller: each call
//!   gets a thread of its own (see `plugin::run_isolated`).
//! - [`daemon`] is `infrakit serve`: [`store`] (redb) keeps committed specs, history and the
//!   event log; [`api`] serves the control API on a unix socket (and TCP with a token);
//!   [`metrics`] renders Prometheus metrics.
//! - [`cli`] is the command line: passive use of plugins, like a conventional tool.

pub mod api;
pub mod cli;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod diff;
pub mod event;
pub mod expectations;
pub mod grants;
pub mod leader;
pub mod listing;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod plugin;
pub mod spec;
pub mod store;

/// An error and its causes on one line, as anyhow's `{:#}` prints them.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let next = c.to_string();
        // `#[error(transparent)]` and wrappers that repeat their cause add nothing.
        if !s.ends_with(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = c.source();
    }
    s
}
