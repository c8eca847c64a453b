//! `infrakit group ...` in the foreground: reconcile a spec file until interrupted, show what a
//! spec would do, destroy a group's instances, print the spec's JSON Schema.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

use super::Cli;
use super::output::{self, Format};
use crate::controller::{Controller, EventSink, Options};
use crate::event::Event;
use crate::plan::{Phase, Plan};
use crate::spec::GroupSpec;

/// Group commands.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Reconcile a group in the foreground until interrupted. The spec file is re-read when it
    /// changes, so editing it scales or rolls the group.
    Run {
        /// The group spec (JSON or YAML).
        spec: PathBuf,
        /// How often the group is observed when nothing is happening.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        poll_interval: Duration,
    },
    /// Show what reconciling a spec would do now, and do nothing (a dry run).
    Plan {
        /// The group spec (JSON or YAML).
        spec: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Check a spec: syntax, fields, and its plugins' verdict on their properties.
    Validate {
        /// The group spec (JSON or YAML).
        spec: PathBuf,
    },
    /// Drain and destroy every instance of a group, in the foreground.
    Destroy {
        /// The group spec (JSON or YAML).
        spec: PathBuf,
    },
    /// Print the JSON Schema of group specs.
    Schema,
}

/// Prints events as they happen.
struct Printer;

impl EventSink for Printer {
    fn record(&self, event: Event) {
        println!("{event}");
    }
}

async fn load_spec(path: &Path) -> anyhow::Result<GroupSpec> {
    Ok(GroupSpec::load(path)?)
}

/// Prints a plan as a readable diff.
pub fn print_plan(plan: &Plan) {
    let (p, d, r) = plan.counts();
    println!(
        "Plan: {p} to provision, {d} to destroy, {r} to replace ({}, {} of {} current)",
        plan.phase, plan.current, plan.size
    );
    for step in &plan.steps {
        let sign = match step {
            crate::plan::Step::Provision { .. } => "+",
            crate::plan::Step::Destroy { .. } => "-",
            crate::plan::Step::Replace { .. } => "~",
            crate::plan::Step::Drain { .. } => " ",
            crate::plan::Step::Wait { .. } => ".",
        };
        println!("  {sign} {step}");
    }
    for m in &plan.messages {
        println!("  ! {m}");
    }
}

pub async fn run(cli: &Cli, cmd: &GroupCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        GroupCommand::Schema => {
            output::json(&GroupSpec::schema())?;
            Ok(ExitCode::SUCCESS)
        }
        GroupCommand::Validate { spec } => {
            let spec = load_spec(spec).await?;
            let registry = Arc::new(cli.registry().await?);
            let controller = Controller::new(registry, Arc::new(Printer), Options::default());
            controller.validate(&spec).await?;
            println!(
                "valid: group {} ({} instances, config {})",
                spec.id,
                spec.size(),
                spec.config_sha()
            );
            Ok(ExitCode::SUCCESS)
        }
        GroupCommand::Plan { spec, output } => {
            let spec = load_spec(spec).await?;
            let registry = Arc::new(cli.registry().await?);
            let controller = Controller::new(registry, Arc::new(Printer), Options::default());
            controller.validate(&spec).await?;
            let plan = controller.plan(&spec).await?;
            match output {
                Format::Json => output::json(&plan)?,
                Format::Table => print_plan(&plan),
            }
            Ok(ExitCode::SUCCESS)
        }
        GroupCommand::Destroy { spec } => {
            let spec = load_spec(spec).await?;
            let registry = Arc::new(cli.registry().await?);
            let options = Options {
                poll_interval: Duration::from_millis(200),
                ..Options::default()
            };
            let controller = Controller::new(registry, Arc::new(Printer), options);
            let id = spec.id.clone();
            controller.destroy(spec);
            let mut status = controller.watch(&id).context("group task")?;
            // The task ends once every instance is gone.
            while status.changed().await.is_ok() {}
            println!("group {id} destroyed");
            Ok(ExitCode::SUCCESS)
        }
        GroupCommand::Run {
            spec: path,
            poll_interval,
        } => {
            let spec = load_spec(path).await?;
            let registry = Arc::new(cli.registry().await?);
            let options = Options {
                poll_interval: *poll_interval,
                ..Options::default()
            };
            let controller = Controller::new(registry, Arc::new(Printer), options);
            controller.validate(&spec).await?;
            print_plan(&controller.plan(&spec).await?);
            let mut current_text = std::fs::read_to_string(path).unwrap_or_default();
            let id = spec.id.clone();
            controller.commit(spec);

            let mut last_phase = Phase::Converging;
            let mut ticker = tokio::time::interval(*poll_interval);
            let shutdown = shutdown_signal();
            tokio::pin!(shutdown);
            loop {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = ticker.tick() => {}
                }
                // Follow edits of the spec file.
                if let Ok(text) = std::fs::read_to_string(path)
                    && text != current_text
                {
                    current_text = text;
                    match load_spec(path).await {
                        Ok(new) if new.id != id => eprintln!(
                            "error: {}: the group id changed from {id} to {}; ignoring the edit",
                            path.display(),
                            new.id
                        ),
                        Ok(new) => match controller.validate(&new).await {
                            Ok(()) => {
                                print_plan(&controller.plan(&new).await?);
                                controller.commit(new);
                            }
                            Err(e) => eprintln!("error: {e:#}; keeping the previous spec"),
                        },
                        Err(e) => eprintln!("error: {e:#}; keeping the previous spec"),
                    }
                }
                if let Some(status) = controller.status(&id)
                    && status.phase != last_phase
                {
                    last_phase = status.phase;
                    tracing::info!(group = %id, phase = %status.phase, "phase");
                }
            }
            controller.shutdown().await;
            println!("stopped; instances left as they are");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
