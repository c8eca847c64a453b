//! `infrakit plugin ls|inspect`: from the daemon when one is running on the data directory,
//! else by loading the plugins here.

use std::process::ExitCode;

use clap::Subcommand;
use serde::Serialize;
use serde_json::Value;

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
    /// The digest of the component in service (absent for a file that failed to load).
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    capabilities: Option<Vec<Capability>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_granted: Option<Vec<Capability>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `plugin ls` as JSON: loaded plugins, then files that failed (an entry with `status: error`;
/// when an earlier version stays in service, both appear).
pub fn plugin_rows(registry: &Registry) -> Value {
    let mut rows: Vec<Row> = registry
        .plugins()
        .iter()
        .map(|p| Row {
            name: p.name().to_string(),
            status: "ok",
            kind: Some(p.kind()),
            version: Some(p.metadata().version.clone()),
            source: p.source().to_string(),
            sha256: Some(p.sha256().to_string()),
            description: Some(p.metadata().description.clone()),
            capabilities: Some(p.metadata().capabilities.clone()),
            not_granted: Some(p.ungranted()),
            error: None,
        })
        .collect();
    let loaded: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    rows.extend(
        registry
            .loading()
            .into_iter()
            .filter(|n| !loaded.contains(n))
            .map(|name| Row {
                name,
                status: "loading",
                kind: None,
                version: None,
                source: String::new(),
                sha256: None,
                description: None,
                capabilities: None,
                not_granted: None,
                error: None,
            }),
    );
    rows.extend(registry.failures().iter().map(|f| Row {
        name: f.name.clone(),
        status: "error",
        kind: None,
        version: None,
        source: f.path.display().to_string(),
        sha256: None,
        description: None,
        capabilities: None,
        not_granted: None,
        error: Some(if f.previous_kept {
            format!("{} (the previous version stays in service)", f.message)
        } else {
            f.message.clone()
        }),
    }));
    serde_json::to_value(rows).unwrap_or_default()
}

/// `plugin inspect` as JSON.
pub fn plugin_inspect(registry: &Registry, name: &str) -> anyhow::Result<Value> {
    let plugin = match registry.get(name) {
        Ok(p) => p,
        Err(e) => match registry.failures().iter().find(|f| f.name == name) {
            Some(f) => anyhow::bail!("plugin {name} is not loaded: {}", f.message),
            None => return Err(e.into()),
        },
    };
    let g = plugin.grants();
    let mode = |m: crate::grants::Mode| match m {
        crate::grants::Mode::ReadOnly => "ro",
        crate::grants::Mode::ReadWrite => "rw",
    };
    let mut view = serde_json::to_value(plugin.metadata())?;
    let extra = serde_json::json!({
        "source": plugin.source().to_string(),
        "sha256": plugin.sha256(),
        "scratch_dir": plugin.scratch_dir().display().to_string(),
        "not_granted": plugin.ungranted(),
        "granted": {
            "files": g.files.iter().map(|f| format!("{} -> {} ({})", f.host.display(), f.guest, mode(f.mode))).collect::<Vec<_>>(),
            "http": g.http.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "block_private": g.http.block_private,
            "config": g.config.keys().collect::<Vec<_>>(),
            "env": g.env.keys().collect::<Vec<_>>(),
            "limits": g.limits,
        }
    });
    if let (Value::Object(v), Value::Object(e)) = (&mut view, extra) {
        v.extend(e);
    }
    Ok(view)
}

fn caps(v: &Value) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| serde_json::from_value::<Capability>(c.clone()).ok())
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_rows(rows: &Value) {
    let rows = rows.as_array().cloned().unwrap_or_default();
    let s = |r: &Value, k: &str| r[k].as_str().unwrap_or("").to_string();
    let mut t = output::table(&[
        "name",
        "kind",
        "version",
        "source",
        "asked for",
        "not granted",
    ]);
    for r in rows.iter().filter(|r| r["status"] == "ok") {
        t.add_row(vec![
            s(r, "name"),
            s(r, "kind"),
            s(r, "version"),
            s(r, "source"),
            caps(&r["capabilities"]),
            caps(&r["not_granted"]),
        ]);
    }
    output::print_table(&t);
    let failed: Vec<&Value> = rows.iter().filter(|r| r["status"] == "error").collect();
    if !failed.is_empty() {
        println!();
        println!("Not loaded:");
        for r in failed {
            println!("  {}", s(r, "error"));
        }
    }
}

fn print_inspect(v: &Value) {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    println!("Name:         {}", s("name"));
    println!("Kind:         {}", s("kind"));
    println!("Version:      {}", s("version"));
    println!("Description:  {}", s("description"));
    println!("Source:       {}", s("source"));
    println!("SHA-256:      {}", s("sha256"));
    println!("Scratch dir:  {} (as /data)", s("scratch_dir"));
    println!("Asked for:");
    let missing = &v["not_granted"];
    for c in v["capabilities"].as_array().into_iter().flatten() {
        let mark = if missing.as_array().is_some_and(|m| m.contains(c)) {
            "NOT GRANTED"
        } else {
            "granted"
        };
        if let Ok(c) = serde_json::from_value::<Capability>(c.clone()) {
            println!("  {c} ({mark})");
        }
    }
    println!("Granted:");
    let g = &v["granted"];
    for (key, label) in [
        ("files", "files"),
        ("http", "http"),
        ("config", "config"),
        ("env", "env"),
    ] {
        for item in g[key].as_array().into_iter().flatten() {
            println!("  {label}: {}", item.as_str().unwrap_or(""));
        }
    }
    let l = &g["limits"];
    println!(
        "  limits: memory {}, cpu {}, wall {}, http response {}",
        bytesize::ByteSize(l["memory"].as_u64().unwrap_or(0)),
        l["cpu"].as_str().unwrap_or(""),
        l["wall"].as_str().unwrap_or(""),
        bytesize::ByteSize(l["http_response"].as_u64().unwrap_or(0)),
    );
}

pub async fn run(cli: &Cli, cmd: &PluginCommand) -> anyhow::Result<ExitCode> {
    let client = cli.daemon_if_running()?;
    match cmd {
        PluginCommand::Ls { output } => {
            let rows = match &client {
                Some(c) => c.get("/v1/plugins").await?,
                None => plugin_rows(&cli.registry().await?),
            };
            match output {
                Format::Table => print_rows(&rows),
                other => output::value(*other, &rows)?,
            }
        }
        PluginCommand::Inspect { name, output } => {
            let view = match &client {
                Some(c) => c.get(&format!("/v1/plugins/{name}")).await?,
                None => plugin_inspect(&cli.registry().await?, name)?,
            };
            match output {
                Format::Table => print_inspect(&view),
                other => output::value(*other, &view)?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
