//! The command line. `main` parses [`Cli`] and hands it to [`run`]; each subcommand lives in
//! its own module. Errors are `anyhow` here, printed by `main` with their whole chain.

mod flavor;
mod group;
mod input;
mod instance;
mod output;
mod plugin;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

pub use output::Format;

use crate::config::Config;
use crate::plugin::{Registry, RegistryConfig};

/// Declarative, self-healing infrastructure with sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "infrakit", version, about, propagate_version = true)]
pub struct Cli {
    /// The host's configuration file (TOML): data and plugin directories, grants of built-in
    /// plugins (`[plugins.NAME]`). Flags win over it.
    #[arg(long, global = true, env = "INFRAKIT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where infrakit keeps its state: plugin scratch directories, compiled-plugin cache.
    #[arg(long, global = true, env = "INFRAKIT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// The plugin directory: every NAME.wasm in it is loaded, with NAME.toml as its grants.
    /// [default: DATA_DIR/plugins]
    #[arg(long, global = true, env = "INFRAKIT_PLUGINS_DIR", value_name = "DIR")]
    pub plugins_dir: Option<PathBuf>,

    /// Where compiled plugins are cached. [default: DATA_DIR/cache]
    #[arg(
        long,
        global = true,
        env = "INFRAKIT_CACHE_DIR",
        value_name = "DIR",
        hide = true
    )]
    pub cache_dir: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List and inspect plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Call an instance plugin directly (InfraKit's passive mode).
    #[command(subcommand)]
    Instance(instance::InstanceCommand),
    /// Call a flavor plugin directly.
    #[command(subcommand)]
    Flavor(flavor::FlavorCommand),
    /// Reconcile groups of instances.
    #[command(subcommand)]
    Group(group::GroupCommand),
}

impl Cli {
    /// The configuration file's contents, or the defaults when none was given.
    pub fn file_config(&self) -> anyhow::Result<Config> {
        match &self.config {
            Some(path) => Ok(Config::load(path)?),
            None => Ok(Config::default()),
        }
    }

    /// The data directory: `--data-dir`, else the config file's, else the user's data
    /// directory.
    pub fn data_dir(&self, file: &Config) -> anyhow::Result<PathBuf> {
        match self.data_dir.as_ref().or(file.data_dir.as_ref()) {
            Some(d) => Ok(d.clone()),
            None => dirs::data_dir()
                .map(|d| d.join("infrakit"))
                .context("no --data-dir given and no user data directory (is HOME set?)"),
        }
    }

    fn registry_config(&self) -> anyhow::Result<RegistryConfig> {
        let file = self.file_config()?;
        let data_dir = self.data_dir(&file)?;
        let mut config = RegistryConfig::under(&data_dir);
        if let Some(p) = self.plugins_dir.as_ref().or(file.plugins_dir.as_ref()) {
            config.plugins_dir = Some(p.clone());
        }
        config.builtin_grants = file.plugins;
        if let Some(c) = &self.cache_dir {
            config.cache_dir = Some(c.clone());
        }
        Ok(config)
    }

    async fn registry(&self) -> anyhow::Result<Registry> {
        let config = self.registry_config()?;
        let registry = Registry::load(config)
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("cannot start the WebAssembly engine")?;
        Ok(registry)
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Plugin(cmd) => plugin::run(&cli, cmd).await,
        Command::Instance(cmd) => instance::run(&cli, cmd).await,
        Command::Flavor(cmd) => flavor::run(&cli, cmd).await,
        Command::Group(cmd) => group::run(&cli, cmd).await,
    }
}
