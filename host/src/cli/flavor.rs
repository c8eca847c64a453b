//! `infrakit flavor ...`: call a flavor plugin directly.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::Cli;
use super::input;
use super::output::{self, Format};
use crate::plugin::{Allocation, Description, Health, Index, InstanceSpec};

/// Flavor commands.
#[derive(Debug, Subcommand)]
pub enum FlavorCommand {
    /// Check flavor properties against an allocation.
    Validate {
        /// The flavor plugin.
        #[arg(long)]
        plugin: String,
        /// The flavor properties file (`-` or none: stdin).
        file: Option<PathBuf>,
        #[command(flatten)]
        allocation: AllocationArgs,
    },
    /// Show what the flavor makes of an instance spec before it is provisioned.
    Prepare {
        /// The flavor plugin.
        #[arg(long)]
        plugin: String,
        /// The flavor properties: a file, or inline JSON starting with `{`.
        #[arg(long, default_value = "{}")]
        properties: String,
        /// The instance spec file (`-` or none: stdin).
        file: Option<PathBuf>,
        #[command(flatten)]
        allocation: AllocationArgs,
        /// The group the instance belongs to.
        #[arg(long, default_value = "")]
        group: String,
        /// The instance's sequence number in the group.
        #[arg(long, default_value_t = 0)]
        index: u32,
        /// Output format (the spec is JSON either way).
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Judge an instance's health. Exit code: 0 healthy, 3 unhealthy, 4 unknown.
    Healthy {
        /// The flavor plugin.
        #[arg(long)]
        plugin: String,
        /// The flavor properties: a file, or inline JSON starting with `{`.
        #[arg(long, default_value = "{}")]
        properties: String,
        /// The instance description file, as `instance describe -o json` prints one element.
        file: Option<PathBuf>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Drain an instance before it is destroyed.
    Drain {
        /// The flavor plugin.
        #[arg(long)]
        plugin: String,
        /// The flavor properties: a file, or inline JSON starting with `{`.
        #[arg(long, default_value = "{}")]
        properties: String,
        /// The instance description file.
        file: Option<PathBuf>,
    },
}

/// `--size N` or `--logical-id ID...`.
#[derive(Debug, Args)]
#[group(required = false, multiple = false)]
pub struct AllocationArgs {
    /// A group of this many cattle.
    #[arg(long)]
    size: Option<u32>,
    /// A group of pets with these logical ids (repeatable).
    #[arg(long = "logical-id", value_name = "ID")]
    logical_ids: Vec<String>,
}

impl AllocationArgs {
    fn allocation(&self) -> Allocation {
        if self.logical_ids.is_empty() {
            Allocation::Size(self.size.unwrap_or(1))
        } else {
            Allocation::LogicalIds(self.logical_ids.clone())
        }
    }
}

pub async fn run(cli: &Cli, cmd: &FlavorCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        FlavorCommand::Validate {
            plugin,
            file,
            allocation,
        } => {
            let props: serde_json::Value = input::read_json(file.as_deref(), "flavor properties")?;
            let registry = cli.registry_for(plugin).await?;
            registry
                .flavor(plugin)?
                .validate(&props, &allocation.allocation())
                .await?;
            println!("valid");
        }
        FlavorCommand::Prepare {
            plugin,
            properties,
            file,
            allocation,
            group,
            index,
            output: _,
        } => {
            let props = input::json_arg(properties, "flavor properties")?;
            let spec: InstanceSpec = input::read_json(file.as_deref(), "instance spec")?;
            let registry = cli.registry_for(plugin).await?;
            let index = Index {
                group: group.clone(),
                sequence: *index,
            };
            let out = registry
                .flavor(plugin)?
                .prepare(&props, &spec, &allocation.allocation(), &index)
                .await?;
            output::json(&out)?;
        }
        FlavorCommand::Healthy {
            plugin,
            properties,
            file,
            output,
        } => {
            let props = input::json_arg(properties, "flavor properties")?;
            let instance: Description = input::read_json(file.as_deref(), "instance description")?;
            let registry = cli.registry_for(plugin).await?;
            let health = registry.flavor(plugin)?.healthy(&props, &instance).await?;
            match output {
                Format::Table => println!("{health}"),
                other => output::value(*other, &serde_json::json!({ "Health": health }))?,
            }
            return Ok(match health {
                Health::Healthy => ExitCode::SUCCESS,
                Health::Unhealthy => ExitCode::from(3),
                Health::Unknown => ExitCode::from(4),
            });
        }
        FlavorCommand::Drain {
            plugin,
            properties,
            file,
        } => {
            let props = input::json_arg(properties, "flavor properties")?;
            let instance: Description = input::read_json(file.as_deref(), "instance description")?;
            let registry = cli.registry_for(plugin).await?;
            registry.flavor(plugin)?.drain(&props, &instance).await?;
            println!("drained {}", instance.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}
