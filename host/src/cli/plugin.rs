//! `infrakit plugin ls|inspect`: from the daemon when one is running on the data directory,
//! else by loading the plugins here.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::Cli;
use super::output::{self, Format};
use crate::api::{PluginDetail, PluginRow, PluginState, plugin_detail, plugin_rows};
use crate::plugin::Capability;

/// Plugin commands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// List every plugin: built-ins, the plugin directory, and files that failed to load.
    Ls {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Check a component (world, metadata, name), compile it into the cache and place it in the
    /// plugin directory under the name it gives itself, so a running daemon picks it up at
    /// once without compiling.
    Install {
        /// The component (`.wasm`), e.g. `target/wasm32-wasip2/release/my_plugin.wasm`.
        file: std::path::PathBuf,
        /// The name it must give itself (refused if it gives another).
        #[arg(long)]
        name: Option<String>,
        /// Its grant file, checked and placed beside it as `NAME.toml`.
        #[arg(long, value_name = "FILE")]
        grants: Option<std::path::PathBuf>,
    },
    /// Write a new plugin project that builds, tests and loads as generated: in Rust,
    /// Cargo.toml and src/lib.rs with native tests; in Python, app.py with a pytest suite and
    /// the WIT; both with a grant file and a README.
    New {
        /// The plugin's name (lowercase letters, digits, `-`); also its crate's.
        name: String,
        /// What it is.
        #[arg(long, value_enum)]
        kind: NewKind,
        /// Its language: Rust (the SDK crate) or Python (sdk/python, built with componentize-py).
        #[arg(long, value_enum, default_value = "rust")]
        lang: NewLang,
        /// Where to write it (default: ./NAME); must not exist or be empty.
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
        /// The SDK directory to depend on (default: the checkout this binary was built from,
        /// when it is there; else the published crate).
        #[arg(long, value_name = "DIR")]
        sdk: Option<std::path::PathBuf>,
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

fn caps(caps: &Option<Vec<Capability>>) -> String {
    caps.iter()
        .flatten()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_rows(rows: &[PluginRow]) {
    let mut t = output::table(&[
        "name",
        "kind",
        "version",
        "source",
        "asked for",
        "not granted",
        "size",
        "compiled",
    ]);
    for r in rows.iter().filter(|r| r.status == PluginState::Ok) {
        t.add_row(vec![
            r.name.clone(),
            r.kind.map(|k| k.to_string()).unwrap_or_default(),
            r.version.clone().unwrap_or_default(),
            r.source.clone(),
            caps(&r.capabilities),
            {
                let mut gaps: Vec<String> = r
                    .not_granted
                    .iter()
                    .flatten()
                    .map(ToString::to_string)
                    .collect();
                gaps.extend(
                    r.narrowed
                        .iter()
                        .flatten()
                        .map(|n| format!("(narrowed: {n})")),
                );
                gaps.join(" ")
            },
            r.size
                .map(|b| bytesize::ByteSize(b).to_string())
                .unwrap_or_default(),
            match (r.compile_ms, r.cached) {
                (Some(ms), Some(true)) => format!("{ms} ms (cached)"),
                (Some(ms), _) => format!("{ms} ms"),
                _ => String::new(),
            } + if r.code.as_deref() == Some("baseline") {
                " baseline"
            } else {
                ""
            },
        ]);
    }
    output::print_table(&t);
    let failed: Vec<&PluginRow> = rows
        .iter()
        .filter(|r| r.status == PluginState::Error)
        .collect();
    if !failed.is_empty() {
        println!();
        println!("Not loaded:");
        for r in failed {
            println!("  {}", r.error.as_deref().unwrap_or(""));
        }
    }
}

fn print_inspect(v: &PluginDetail) {
    println!("Name:         {}", v.name);
    println!("Kind:         {}", v.kind);
    println!("Version:      {}", v.version);
    println!("Description:  {}", v.description);
    println!("Source:       {}", v.source);
    println!("SHA-256:      {}", v.sha256);
    println!("Scratch dir:  {} (as /data)", v.scratch_dir);
    println!("Asked for:");
    for c in &v.capabilities {
        let narrowed = v
            .narrowed
            .iter()
            .find_map(|n| n.strip_prefix(&format!("{c} -> ")));
        let mark = match narrowed {
            Some(to) => format!("narrowed to {to}"),
            None if v.not_granted.contains(c) => "NOT GRANTED".to_string(),
            None => "granted".to_string(),
        };
        println!("  {c} ({mark})");
    }
    println!("Granted:");
    let g = &v.granted;
    for (label, items) in [
        ("files", &g.files),
        ("http", &g.http),
        ("http unix socket", &g.http_unix),
        ("http rule", &g.http_rules),
        ("http signed", &g.http_signed),
        ("process", &g.process),
        ("config", &g.config),
        ("env", &g.env),
    ] {
        for item in items {
            println!("  {label}: {item}");
        }
    }
    if !g.process.is_empty() {
        println!("  processes running: {}", g.processes_running);
    }
    let l = &g.limits;
    println!(
        "  limits: memory {}, cpu {}, wall {}, http response {}, metadata {}, resources {}, \
         disk {} in {} entries",
        bytesize::ByteSize(l.memory),
        l.cpu,
        l.wall,
        bytesize::ByteSize(l.http_response),
        l.metadata,
        l.resources,
        bytesize::ByteSize(l.disk),
        l.disk_entries,
    );
}

/// The languages `plugin new` writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum NewLang {
    /// A Rust crate.
    Rust,
    /// A Python module.
    Python,
}

/// The kinds `plugin new` writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum NewKind {
    /// An instance plugin (provision, describe, label, destroy).
    Instance,
    /// A flavor plugin (validate, prepare, healthy, drain).
    Flavor,
}

fn new_project(
    name: &str,
    kind: NewKind,
    lang: NewLang,
    dir: Option<&std::path::Path>,
    sdk: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use super::scaffold::{Lang, SdkSource, generate};
    let dir = dir
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| std::path::PathBuf::from(name));
    let sdk = match sdk {
        Some(p) => {
            let p = std::path::absolute(p)?;
            anyhow::ensure!(
                p.join("Cargo.toml").is_file(),
                "{}: no SDK here (no Cargo.toml)",
                p.display()
            );
            SdkSource::Path(p)
        }
        None => SdkSource::default_for_this_build(),
    };
    let kind = match kind {
        NewKind::Instance => crate::plugin::PluginKind::Instance,
        NewKind::Flavor => crate::plugin::PluginKind::Flavor,
    };
    let lang = match lang {
        NewLang::Rust => Lang::Rust,
        NewLang::Python => Lang::Python,
    };
    let done = generate(name, kind, lang, &dir, &sdk)?;
    println!("wrote {} plugin {name} in {}:", kind, done.dir.display());
    for f in done.files.iter().filter(|f| !f.starts_with("wit")) {
        println!("  {}", f.display());
    }
    if lang == Lang::Python {
        println!(
            "  wit/ (the interfaces it is built against)\nnext: cd {} && pytest, then the \
             componentize-py line of its README, then infrakit plugin install {name}.wasm \
             --grants {name}.toml",
            done.dir.display()
        );
        return Ok(());
    }
    println!(
        "next: cd {} && cargo test && cargo build --target wasm32-wasip2 --release\n      \
         infrakit plugin install {} --grants {name}.toml",
        done.dir.display(),
        done.artifact
            .strip_prefix(&done.dir)
            .unwrap_or(&done.artifact)
            .display()
    );
    Ok(())
}

pub async fn run(cli: &Cli, cmd: &PluginCommand) -> anyhow::Result<ExitCode> {
    if let PluginCommand::New {
        name,
        kind,
        lang,
        dir,
        sdk,
    } = cmd
    {
        new_project(name, *kind, *lang, dir.as_deref(), sdk.as_deref())?;
        return Ok(ExitCode::SUCCESS);
    }
    let client = cli.daemon_if_running()?;
    match cmd {
        PluginCommand::Ls { output } => {
            let rows = match &client {
                Some(c) => c.get::<Vec<PluginRow>>("/v1/plugins").await?,
                None => plugin_rows(&cli.registry().await?),
            };
            match output {
                Format::Table => print_rows(&rows),
                other => output::value(*other, &rows)?,
            }
        }
        PluginCommand::Install { file, name, grants } => {
            let registry = crate::plugin::Registry::empty(cli.registry_config()?)
                .map_err(|e| anyhow::anyhow!("{e:#}"))
                .context("cannot start the WebAssembly engine")?;
            let done = registry
                .install(file, name.as_deref(), grants.as_deref())
                .await
                .map_err(|e| anyhow::anyhow!(crate::error_chain(&e)))?;
            println!(
                "installed {} ({} plugin {}) as {}{}: {}, compiled in {} ms{}",
                done.name,
                done.kind,
                done.version,
                done.path.display(),
                done.grants
                    .as_ref()
                    .map(|g| format!(" with grants {}", g.display()))
                    .unwrap_or_default(),
                bytesize::ByteSize(done.load.size),
                done.load.compile.as_millis(),
                if done.load.cached {
                    " (already in the cache)"
                } else {
                    ""
                }
            );
            if client.is_some() {
                println!("the running daemon picks it up at its next scan");
            }
        }
        PluginCommand::New { .. } => unreachable!("handled above"),
        PluginCommand::Inspect { name, output } => {
            let view = match &client {
                Some(c) => {
                    c.get::<PluginDetail>(&format!("/v1/plugins/{name}"))
                        .await?
                }
                None => plugin_detail(&cli.registry().await?, name).map_err(anyhow::Error::msg)?,
            };
            match output {
                Format::Table => print_inspect(&view),
                other => output::value(*other, &view)?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
