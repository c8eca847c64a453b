//! `infrakit plugin ls|inspect`.

use std::process::ExitCode;

use clap::Subcommand;
use serde::Serialize;

use super::Cli;
use super::output::{self, Format};
use crate::plugin::{Capability, PluginKind, Registry};

/// Plugin commands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// List every plugin: built-ins, the plugin directory, and files that failed to load.
    Ls {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Show one plugin: metadata, source, capabilities asked for and granted.
    Inspect {
        /// The plugin's name.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
}

#[derive(Serialize)]
struct Row {
    name: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<PluginKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    capabilities: Option<Vec<Capability>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_granted: Option<Vec<Capability>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn rows(registry: &Registry) -> Vec<Row> {
    let mut rows: Vec<Row> = registry
        .plugins()
        .map(|p| Row {
            name: p.name().to_string(),
            status: "ok",
            kind: Some(p.kind()),
            version: Some(p.metadata().version.clone()),
            source: p.source().to_string(),
            description: Some(p.metadata().description.clone()),
            capabilities: Some(p.metadata().capabilities.clone()),
            not_granted: Some(p.ungranted()),
            error: None,
        })
        .collect();
    rows.extend(registry.failures().iter().map(|f| Row {
        name: f.name.clone(),
        status: "error",
        kind: None,
        version: None,
        source: f.path.display().to_string(),
        description: None,
        capabilities: None,
        not_granted: None,
        error: Some(crate::error_chain(&f.error)),
    }));
    rows
}

pub async fn run(cli: &Cli, cmd: &PluginCommand) -> anyhow::Result<ExitCode> {
    let registry = cli.registry().await?;
    match cmd {
        PluginCommand::Ls { output } => {
            let rows = rows(&registry);
            match output {
                Format::Json => output::json(&rows)?,
                Format::Table => {
                    let mut t = output::table(&[
                        "name",
                        "kind",
                        "version",
                        "source",
                        "asked for",
                        "not granted",
                    ]);
                    for r in rows.iter().filter(|r| r.error.is_none()) {
                        let caps = r
                            .capabilities
                            .iter()
                            .flatten()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(" ");
                        let missing = r
                            .not_granted
                            .iter()
                            .flatten()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(" ");
                        t.add_row(vec![
                            r.name.clone(),
                            r.kind.map(|k| k.to_string()).unwrap_or_default(),
                            r.version.clone().unwrap_or_default(),
                            r.source.clone(),
                            caps,
                            missing,
                        ]);
                    }
                    output::print_table(&t);
                    let failed: Vec<&Row> = rows.iter().filter(|r| r.error.is_some()).collect();
                    if !failed.is_empty() {
                        println!();
                        println!("Not loaded:");
                        for r in failed {
                            println!("  {}", r.error.as_deref().unwrap_or(""));
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Inspect { name, output } => {
            if let Some(f) = registry.failures().iter().find(|f| &f.name == name) {
                anyhow::bail!(
                    "plugin {name} is not loaded: {}",
                    crate::error_chain(&f.error)
                );
            }
            let plugin = registry.get(name)?;
            #[derive(Serialize)]
            struct Inspect<'a> {
                #[serde(flatten)]
                metadata: &'a crate::plugin::Metadata,
                source: String,
                sha256: &'a str,
                scratch_dir: String,
                not_granted: Vec<Capability>,
                granted: Granted,
            }
            #[derive(Serialize)]
            struct Granted {
                files: Vec<String>,
                http: Vec<String>,
                block_private: bool,
                config: Vec<String>,
                env: Vec<String>,
                limits: crate::grants::Limits,
            }
            let g = plugin.grants();
            let view = Inspect {
                metadata: plugin.metadata(),
                source: plugin.source().to_string(),
                sha256: plugin.sha256(),
                scratch_dir: plugin.scratch_dir().display().to_string(),
                not_granted: plugin.ungranted(),
                granted: Granted {
                    files: g
                        .files
                        .iter()
                        .map(|f| {
                            let mode = match f.mode {
                                crate::grants::Mode::ReadOnly => "ro",
                                crate::grants::Mode::ReadWrite => "rw",
                            };
                            format!("{} -> {} ({mode})", f.host.display(), f.guest)
                        })
                        .collect(),
                    http: g.http.allow.iter().map(ToString::to_string).collect(),
                    block_private: g.http.block_private,
                    config: g.config.keys().cloned().collect(),
                    env: g.env.keys().cloned().collect(),
                    limits: g.limits,
                },
            };
            match output {
                Format::Json => output::json(&view)?,
                Format::Table => {
                    let m = plugin.metadata();
                    println!("Name:         {}", m.name);
                    println!("Kind:         {}", m.kind);
                    println!("Version:      {}", m.version);
                    println!("Description:  {}", m.description);
                    println!("Source:       {}", view.source);
                    println!("SHA-256:      {}", view.sha256);
                    println!("Scratch dir:  {} (as /data)", view.scratch_dir);
                    println!("Asked for:");
                    for c in &m.capabilities {
                        let mark = if view.not_granted.contains(c) {
                            "NOT GRANTED"
                        } else {
                            "granted"
                        };
                        println!("  {c} ({mark})");
                    }
                    println!("Granted:");
                    for f in &view.granted.files {
                        println!("  files: {f}");
                    }
                    for h in &view.granted.http {
                        println!("  http: {h}");
                    }
                    for k in &view.granted.config {
                        println!("  config: {k}");
                    }
                    for k in &view.granted.env {
                        println!("  env: {k}");
                    }
                    let l = view.granted.limits;
                    println!(
                        "  limits: memory {}, cpu {}, wall {}, http response {}",
                        bytesize::ByteSize(l.memory),
                        humantime::format_duration(l.cpu),
                        humantime::format_duration(l.wall),
                        bytesize::ByteSize(l.http_response)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
