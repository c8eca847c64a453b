//! The command line. `main` parses [`Cli`] and hands it to [`run`]; each subcommand lives in
//! its own module. Errors are `anyhow` here, printed by `main` with their whole chain.

mod client;
mod daemon_cmds;
mod flavor;
mod group;
mod input;
mod instance;
mod output;
mod plugin;
mod scaffold;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

pub use client::{Client, EXIT_UNREACHABLE, Unreachable};
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

    /// The daemon's unix socket. [default: DATA_DIR/infrakit.sock]
    #[arg(long, global = true, env = "INFRAKIT_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Talk to a daemon over TCP instead, e.g. http://127.0.0.1:7070 (needs --token).
    #[arg(long, global = true, env = "INFRAKIT_URL", value_name = "URL")]
    pub url: Option<String>,

    /// The bearer token for --url (and for `serve --tcp`).
    #[arg(long, global = true, env = "INFRAKIT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Where compiled plugins are cached. [default: DATA_DIR/cache]
    #[arg(
        long,
        global = true,
        env = "INFRAKIT_CACHE_DIR",
        value_name = "DIR",
        hide = true
    )]
    pub cache_dir: Option<PathBuf>,

    /// Components at least this large (e.g. `4MiB`) whose optimised code is not cached yet
    /// start on baseline code, compiled several times faster; the daemon then compiles the
    /// optimised code in the background and swaps it in. `off`: always compile optimised.
    #[arg(
        long,
        global = true,
        env = "INFRAKIT_BASELINE_ABOVE",
        value_name = "SIZE",
        default_value = "4MiB",
        value_parser = parse_size_or_off
    )]
    pub baseline_above: SizeOrOff,

    /// Memory each idle sandbox slot keeps resident between calls (e.g. `2MiB`), where the
    /// kernel can find the pages a call wrote: a fresh call then starts without page faults.
    /// `off`: give every slot's memory back after each call (less resident memory when many
    /// calls run at once, slower calls).
    #[arg(
        long,
        global = true,
        env = "INFRAKIT_KEEP_RESIDENT",
        value_name = "SIZE",
        default_value = "2MiB",
        value_parser = parse_size_or_off
    )]
    pub keep_resident: SizeOrOff,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--baseline-above`, `--keep-resident`: a size in bytes, or `None` for `off`.
#[derive(Debug, Clone, Copy)]
pub struct SizeOrOff(pub Option<u64>);

fn parse_size_or_off(text: &str) -> Result<SizeOrOff, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(SizeOrOff(None));
    }
    text.parse::<bytesize::ByteSize>()
        .map(|b| SizeOrOff(Some(b.as_u64())))
        .map_err(|e| format!("{text:?} is not a size (like 4MiB) or `off`: {e}"))
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line, with group, instance and plugin fields.
    Json,
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
    /// Run the daemon: keep every committed group reconciled, serve the control API.
    Serve(daemon_cmds::ServeArgs),
    /// Show the daemon's events (add --follow to keep watching).
    Events(daemon_cmds::EventsArgs),
    /// Show the daemon's status.
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Print shell completions.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
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

    /// The daemon's socket path.
    pub fn socket_path(&self) -> anyhow::Result<PathBuf> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        let file = self.file_config()?;
        match &file.serve.socket {
            Some(s) => Ok(s.clone()),
            None => Ok(client::default_socket(&self.data_dir(&file)?)),
        }
    }

    /// A client of the daemon (which must be running).
    pub fn daemon(&self) -> anyhow::Result<Client> {
        match &self.url {
            Some(url) => Client::tcp(url, self.token.clone()),
            None => Client::unix(&self.socket_path()?),
        }
    }

    /// A client of the daemon when one is listening, else `None` (commands that can also
    /// work without one then do the work themselves).
    pub fn daemon_if_running(&self) -> anyhow::Result<Option<Client>> {
        if self.url.is_some() {
            return self.daemon().map(Some);
        }
        let socket = self.socket_path()?;
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return Client::unix(&socket).map(Some);
        }
        Ok(None)
    }

    pub(crate) fn registry_config(&self) -> anyhow::Result<RegistryConfig> {
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
        config.baseline_above = self.baseline_above.0;
        config.keep_resident = self.keep_resident.0.unwrap_or(0);
        Ok(config)
    }

    /// A registry with only the plugin `name` loaded (see [`Registry::load_named`]).
    async fn registry_for(&self, name: &str) -> anyhow::Result<Registry> {
        let config = self.registry_config()?;
        Registry::load_named(config, name)
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("cannot start the WebAssembly engine")
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
        Command::Serve(args) => daemon_cmds::serve(&cli, args).await,
        Command::Events(args) => daemon_cmds::events(&cli, args).await,
        Command::Status { output } => daemon_cmds::status(&cli, *output).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "infrakit",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
