//! Printing for people (aligned tables) and scripts (JSON, YAML).

use anyhow::Result;
use clap::ValueEnum;
use serde_json::Value;

/// Output format of read commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON, as the API returns it.
    Json,
    /// YAML.
    Yaml,
}

/// Prints `value` as JSON or YAML; returns false for `Table`, which the caller renders.
pub fn structured(format: Format, value: &Value) -> Result<bool> {
    match format {
        Format::Table => Ok(false),
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(value)?);
            Ok(true)
        }
        Format::Yaml => {
            print!("{}", serde_saphyr::to_string(value)?);
            Ok(true)
        }
    }
}

/// Prints rows under a header, columns padded to the widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// A JSON field as display text.
pub fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// Shortens an RFC 3339 time to `YYYY-MM-DD HH:MM:SS`.
pub fn time(v: &Value, key: &str) -> String {
    let t = s(v, key);
    t.get(..19).map(|x| x.replace('T', " ")).unwrap_or(t)
}
