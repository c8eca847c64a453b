//! Output: a table for people, JSON or YAML for scripts (as kubectl's `-o`).

use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;

/// How results are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    #[default]
    Table,
    /// JSON, one document.
    Json,
    /// YAML, one document.
    Yaml,
}

/// A table with the house style: no borders, header row.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| h.to_uppercase()));
    t
}

/// Prints `value` as pretty JSON.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints `value` as JSON or YAML (tables are the caller's).
pub fn value<T: Serialize>(format: Format, value: &T) -> anyhow::Result<()> {
    match format {
        Format::Yaml => print!("{}", yaml_serde::to_string(value)?),
        _ => json(value)?,
    }
    Ok(())
}

/// Prints a table, trimming the trailing spaces comfy-table leaves.
pub fn print_table(t: &Table) {
    for line in t.to_string().lines() {
        println!("{}", line.trim_end());
    }
}
