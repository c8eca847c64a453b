//! `infrakit instance ...`: call an instance plugin directly.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};

use super::Cli;
use super::input::{self, key_value};
use super::output::{self, Format};
use crate::plugin::{DestroyContext, InstanceSpec, Tags};

/// Instance commands. Specs are InfraKit instance specs: `{"Properties": ..., "Tags": {...},
/// "Init": "...", "LogicalID": "...", "Attachments": [{"ID": ..., "Type": ...}]}`.
#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// Check the `Properties` of an instance spec.
    Validate {
        /// The instance plugin.
        #[arg(long)]
        plugin: String,
        /// The spec file (`-` or none: stdin).
        file: Option<PathBuf>,
    },
    /// Provision an instance; prints its id.
    Provision {
        /// The instance plugin.
        #[arg(long)]
        plugin: String,
        /// The spec file (`-` or none: stdin).
        file: Option<PathBuf>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// List instances, optionally only those carrying every `--tag`.
    Describe {
        /// The instance plugin.
        #[arg(long)]
        plugin: String,
        /// Only instances with this tag (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = key_value)]
        tags: Vec<(String, String)>,
        /// Include each instance's properties.
        #[arg(long)]
        properties: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Add or change tags of an instance.
    Label {
        /// The instance plugin.
        #[arg(long)]
        plugin: String,
        /// The instance.
        id: String,
        /// A tag to set (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = key_value, required = true)]
        tags: Vec<(String, String)>,
    },
    /// Destroy instances.
    Destroy {
        /// The instance plugin.
        #[arg(long)]
        plugin: String,
        /// The instances.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Why they are destroyed.
        #[arg(long, value_enum, default_value = "terminate")]
        context: ContextArg,
    },
}

/// `--context` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ContextArg {
    /// For good.
    Terminate,
    /// Replaced by a newer instance.
    RollingUpdate,
}

pub async fn run(cli: &Cli, cmd: &InstanceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        InstanceCommand::Validate { plugin, file } => {
            let spec: InstanceSpec = input::read_json(file.as_deref(), "instance spec")?;
            let registry = cli.registry_for(plugin).await?;
            registry
                .instance(plugin)?
                .validate(&spec.properties)
                .await?;
            println!("valid");
        }
        InstanceCommand::Provision {
            plugin,
            file,
            output,
        } => {
            let spec: InstanceSpec = input::read_json(file.as_deref(), "instance spec")?;
            let registry = cli.registry_for(plugin).await?;
            let id = registry.instance(plugin)?.provision(&spec).await?;
            match output {
                Format::Table => println!("{id}"),
                other => output::value(*other, &serde_json::json!({ "ID": id }))?,
            }
        }
        InstanceCommand::Describe {
            plugin,
            tags,
            properties,
            output,
        } => {
            let registry = cli.registry_for(plugin).await?;
            let filter: Tags = tags.iter().cloned().collect();
            let found = registry
                .instance(plugin)?
                .describe(&filter, *properties)
                .await?;
            match output {
                Format::Table => {
                    let mut t = output::table(&["id", "logical id", "tags"]);
                    for d in &found {
                        let tags = d
                            .tags
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(",");
                        t.add_row(vec![
                            d.id.clone(),
                            d.logical_id.clone().unwrap_or_else(|| "-".into()),
                            tags,
                        ]);
                    }
                    output::print_table(&t);
                }
                other => output::value(*other, &found)?,
            }
        }
        InstanceCommand::Label { plugin, id, tags } => {
            let registry = cli.registry_for(plugin).await?;
            let labels: Tags = tags.iter().cloned().collect();
            registry.instance(plugin)?.label(id, &labels).await?;
        }
        InstanceCommand::Destroy {
            plugin,
            ids,
            context,
        } => {
            let registry = cli.registry_for(plugin).await?;
            let plugin = registry.instance(plugin)?;
            let context = match context {
                ContextArg::Terminate => DestroyContext::Terminate,
                ContextArg::RollingUpdate => DestroyContext::RollingUpdate,
            };
            for id in ids {
                plugin.destroy(id, context).await?;
                println!("destroyed {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
