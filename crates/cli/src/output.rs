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

/// A duration in nanoseconds, in the unit that reads best.
pub fn nanos(n: u64) -> String {
    match n {
        0..1_000_000 => format!("{:.0}µs", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}ms", n as f64 / 1e6),
        _ => format!("{:.2}s", n as f64 / 1e9),
    }
}

/// A trace search result as a table, newest first.
pub fn print_traces(out: &Value) {
    let rows: Vec<Vec<String>> = out["traces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let start = t["start_unix_nanos"].as_u64().unwrap_or(0);
            let when = jiff::Timestamp::from_nanosecond(start.into())
                .map(|ts| ts.strftime("%H:%M:%S%.3f").to_string())
                .unwrap_or_default();
            vec![
                s(t, "trace_id"),
                when,
                nanos(t["duration_nanos"].as_u64().unwrap_or(0)),
                t["spans"].to_string(),
                if t["errors"].as_u64().unwrap_or(0) > 0 {
                    format!("{} errors", t["errors"])
                } else {
                    "ok".into()
                },
                format!("{} {}", s(t, "root_service"), s(t, "root_name")),
            ]
        })
        .collect();
    table(&["TRACE", "START", "DURATION", "SPANS", "STATUS", "ROOT"], &rows);
}

/// One trace as a tree: each span indented under its parent, with its offset from the start
/// of the trace, duration, service, name and outcome.
pub fn print_trace(out: &Value) {
    let spans: Vec<&Value> = out["spans"].as_array().into_iter().flatten().collect();
    let start = spans.iter().filter_map(|s| s["start_unix_nanos"].as_u64()).min().unwrap_or(0);
    let ids: std::collections::HashSet<String> = spans.iter().map(|sp| s(sp, "span_id")).collect();
    println!("trace {}  {} spans", s(out, "traceId"), spans.len());
    fn walk(
        spans: &[&Value],
        parent: Option<&str>,
        depth: usize,
        start: u64,
        ids: &std::collections::HashSet<String>,
    ) {
        // Spans sent by services could form a cycle; a real trace is never this deep.
        if depth > 64 {
            return;
        }
        for sp in spans.iter().filter(|sp| {
            let p = sp["parent_id"].as_str();
            match parent {
                Some(parent) => p == Some(parent),
                // Roots: no parent, or a parent this trace does not hold (a span not sent).
                None => p.is_none_or(|p| !ids.contains(p)),
            }
        }) {
            let offset = sp["start_unix_nanos"].as_u64().unwrap_or(0).saturating_sub(start);
            let duration = sp["end_unix_nanos"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(sp["start_unix_nanos"].as_u64().unwrap_or(0));
            let status = sp["attributes"]["http.response.status_code"].as_i64().map(|c| c.to_string());
            let outcome = match (sp["error"].as_bool().unwrap_or(false), status) {
                (true, _) => format!("ERROR {}", s(sp, "status_message")),
                (false, Some(code)) => code,
                (false, None) => "ok".into(),
            };
            let service = match s(sp, "app").as_str() {
                "" => s(sp, "service"),
                app => format!("{app}/{}", s(sp, "service")),
            };
            println!(
                "{:indent$}+{:<9} {:>9}  {}  {}  {}",
                "",
                nanos(offset),
                nanos(duration),
                service,
                s(sp, "name"),
                outcome,
                indent = depth * 2
            );
            walk(spans, Some(&s(sp, "span_id")), depth + 1, start, ids);
        }
    }
    walk(&spans, None, 0, start, &ids);
}

/// One row of `yun top` per component: the latest point of its series and its instances.
pub fn top_rows(status: &Value, series: &Value) -> Vec<Value> {
    let last = |v: &Value| v.as_array().and_then(|a| a.last()).cloned().unwrap_or(Value::Null);
    status["components"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let name = s(c, "name");
            let traffic = last(&series["components"][&name]);
            let usage = last(&series["usage"][&name]);
            serde_json::json!({
                "component": name,
                "ready": c["ready"],
                "desired": c["desired"],
                "rps": traffic["rps"].as_f64().unwrap_or(0.0),
                "error_ratio": traffic["error_ratio"].as_f64().unwrap_or(0.0),
                "p50_ms": traffic["p50_ms"],
                "p99_ms": traffic["p99_ms"],
                "cpu_percent": usage["cpu_percent"].as_f64().unwrap_or(0.0),
                "rss_bytes": usage["rss_bytes"].as_u64().unwrap_or(0),
            })
        })
        .collect()
}

/// `yun top`'s table.
pub fn print_top(app: &str, rows: &[Value]) {
    let ms = |v: &Value| v.as_f64().map(|x| format!("{x:.1}ms")).unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                s(r, "component"),
                format!("{}/{}", r["ready"], r["desired"]),
                format!("{:.1}", r["rps"].as_f64().unwrap_or(0.0)),
                format!("{:.1}%", r["error_ratio"].as_f64().unwrap_or(0.0) * 100.0),
                ms(&r["p50_ms"]),
                ms(&r["p99_ms"]),
                format!("{:.1}%", r["cpu_percent"].as_f64().unwrap_or(0.0)),
                format!("{:.1} MiB", r["rss_bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0),
            ]
        })
        .collect();
    println!("{app} — last 5 s of each component");
    table(&["COMPONENT", "READY", "REQ/S", "ERRORS", "P50", "P99", "CPU", "MEMORY"], &rows);
}

/// `yun slo`'s table.
pub fn print_slo(out: &Value) {
    let rows: Vec<Vec<String>> = out["objectives"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            let objective = match o["threshold_ms"].as_f64() {
                Some(ms) => format!("latency ≤ {ms}ms"),
                None => s(o, "objective"),
            };
            let days = o["window_seconds"].as_u64().unwrap_or(0) as f64 / 86_400.0;
            let window = if days >= 1.0 { format!("{days:.0}d") } else { format!("{:.0}h", days * 24.0) };
            vec![
                s(o, "component"),
                objective,
                format!("{}%", o["target_percent"]),
                window,
                o["compliance_percent"].as_f64().map(|c| format!("{c:.3}%")).unwrap_or_else(|| "-".into()),
                format!("{:.1}%", o["budget_remaining"].as_f64().unwrap_or(1.0) * 100.0),
                format!("{:.1}", o["burn_rate_5m"].as_f64().unwrap_or(0.0)),
                format!("{:.1}", o["burn_rate_1h"].as_f64().unwrap_or(0.0)),
                if o["fast_burn"].as_bool() == Some(true) { "FAST BURN".into() } else { "ok".into() },
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no objectives: add an `slo` trait to a webservice");
        return;
    }
    table(
        &[
            "COMPONENT",
            "OBJECTIVE",
            "TARGET",
            "WINDOW",
            "COMPLIANCE",
            "BUDGET LEFT",
            "BURN 5M",
            "BURN 1H",
            "STATUS",
        ],
        &rows,
    );
}
