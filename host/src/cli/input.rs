//! Reading JSON documents from files or stdin, with errors that say which file, which field
//! and where.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use serde::de::DeserializeOwned;

/// Reads a document from `path` (`-` or `None`: stdin).
pub fn read_text(path: Option<&Path>) -> anyhow::Result<(String, String)> {
    match path {
        None => read_stdin(),
        Some(p) if p.as_os_str() == "-" => read_stdin(),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            Ok((p.display().to_string(), text))
        }
    }
}

fn read_stdin() -> anyhow::Result<(String, String)> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read stdin")?;
    Ok(("<stdin>".to_string(), text))
}

/// Parses JSON strictly into `T`; the error names the origin, the field path and the position.
pub fn parse_json<T: DeserializeOwned>(origin: &str, text: &str, what: &str) -> anyhow::Result<T> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = if path == "." {
            String::new()
        } else {
            format!(" at `{path}`")
        };
        anyhow::anyhow!("{origin}: invalid {what}{at}: {inner}")
    })
}

/// Reads and parses a JSON document.
pub fn read_json<T: DeserializeOwned>(path: Option<&Path>, what: &str) -> anyhow::Result<T> {
    let (origin, text) = read_text(path)?;
    parse_json(&origin, &text, what)
}

/// A JSON value given inline (starting with `{`) or as a file path.
pub fn json_arg(arg: &str, what: &str) -> anyhow::Result<serde_json::Value> {
    if arg.trim_start().starts_with('{') {
        parse_json("--properties", arg, what)
    } else {
        read_json(Some(Path::new(arg)), what)
    }
}

/// Parses `key=value`.
pub fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}
