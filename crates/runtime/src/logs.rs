//! Instance output: every line is timestamped, appended to a size-capped per-instance file and
//! broadcast to live followers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::broadcast;

/// Size at which an instance's log file is rotated (one previous file is kept).
pub const MAX_LOG_BYTES: u64 = 8 * 1024 * 1024;
/// Longest line kept; longer lines are cut and marked.
const MAX_LINE_BYTES: usize = 16 * 1024;

/// One line of output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogLine {
    /// RFC 3339 time the line was read.
    pub time: String,
    /// Application.
    pub app: String,
    /// Component.
    pub component: String,
    /// Instance id.
    pub instance: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The text, without the newline.
    pub line: String,
    /// The trace the line belongs to, when it names one (`trace_id`, `traceId`, `trace.id`,
    /// `otelTraceID` or `traceparent` in a JSON line; `trace_id=` or `traceId=` in text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// Which stored or live lines a reader wants.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub component: Option<String>,
    pub instance: Option<String>,
    /// Lines at or after this time.
    pub since: Option<jiff::Timestamp>,
    /// Lines containing this text.
    pub grep: Option<String>,
    /// Lines of this trace.
    pub trace_id: Option<String>,
    /// The last this many matching stored lines.
    pub tail: usize,
}

impl LogQuery {
    /// Whether `line` (of the queried app) matches everything but `since` and `tail`.
    pub fn matches(&self, line: &LogLine) -> bool {
        self.component.as_deref().is_none_or(|c| c == line.component)
            && self.instance.as_deref().is_none_or(|i| i == line.instance)
            && self.grep.as_deref().is_none_or(|g| line.line.contains(g))
            && self.trace_id.as_deref().is_none_or(|t| line.trace_id.as_deref() == Some(t))
    }
}

/// The trace id a log line names, lowercased; see [`LogLine::trace_id`].
pub fn trace_id_of(text: &str) -> Option<String> {
    let valid = |s: &str| {
        let s = s.to_ascii_lowercase();
        (s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0'))
            .then_some(s)
    };
    let trimmed = text.trim_start();
    if trimmed.starts_with('{')
        && let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(trimmed)
    {
        for key in ["trace_id", "traceId", "trace.id", "otelTraceID", "traceID"] {
            if let Some(id) = map.get(key).and_then(|v| v.as_str()).and_then(valid) {
                return Some(id);
            }
        }
        if let Some(tp) = map.get("traceparent").and_then(|v| v.as_str()) {
            return tp.split('-').nth(1).and_then(valid);
        }
        return None;
    }
    for key in ["trace_id=", "traceId="] {
        if let Some(at) = text.find(key) {
            let rest = text[at + key.len()..].trim_start_matches('"');
            if let Some(id) = rest.get(..32).and_then(valid) {
                return Some(id);
            }
        }
    }
    None
}

/// Where logs live and who follows them.
#[derive(Clone)]
pub struct LogHub {
    root: PathBuf,
    live: broadcast::Sender<LogLine>,
}

impl LogHub {
    pub fn new(root: PathBuf) -> LogHub {
        let (live, _) = broadcast::channel(4096);
        LogHub { root, live }
    }

    /// Follows every new line.
    pub fn subscribe(&self) -> broadcast::Receiver<LogLine> {
        self.live.subscribe()
    }

    fn dir(&self, app: &str, component: &str) -> PathBuf {
        self.root.join(app).join(component)
    }

    /// Removes an application's logs.
    pub fn remove_app(&self, app: &str) {
        let _ = std::fs::remove_dir_all(self.root.join(app));
    }

    /// Opens the log of one instance; both output streams share it.
    pub fn writer(&self, app: &str, component: &str, instance: &str) -> LogWriter {
        LogWriter {
            hub: self.clone(),
            path: self.dir(app, component).join(format!("{instance}.log")),
            file: Arc::new(tokio::sync::Mutex::new(None)),
            app: app.into(),
            component: component.into(),
            instance: instance.into(),
        }
    }
    /// Reads stored lines of an app that match `q`, in time order, the last `q.tail` of them.
    pub fn read(&self, app: &str, q: &LogQuery) -> Vec<LogLine> {
        let (component, instance, since) = (q.component.as_deref(), q.instance.as_deref(), q.since);
        let mut files = Vec::new();
        let app_dir = self.root.join(app);
        let comps: Vec<PathBuf> = match component {
            Some(c) => vec![app_dir.join(c)],
            None => read_dir(&app_dir),
        };
        for dir in comps {
            for f in read_dir(&dir) {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
                let inst = name.trim_end_matches(".1").trim_end_matches(".log");
                if instance.is_none_or(|i| i == inst) {
                    files.push(f);
                }
            }
        }
        let mut out = Vec::new();
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else { continue };
            for l in text.lines() {
                if let Ok(line) = serde_json::from_str::<LogLine>(l) {
                    let keep = q.matches(&line)
                        && since.is_none_or(|s| line.time.parse::<jiff::Timestamp>().is_ok_and(|t| t >= s));
                    if keep {
                        out.push(line);
                    }
                }
            }
        }
        out.sort_by(|a, b| a.time.cmp(&b.time));
        let skip = out.len().saturating_sub(q.tail);
        out.split_off(skip)
    }
}

/// Appends one instance's output to its log file and to the live stream.
#[derive(Clone)]
pub struct LogWriter {
    hub: LogHub,
    path: PathBuf,
    /// The open file and the bytes written to it, shared by stdout and stderr.
    file: Arc<tokio::sync::Mutex<Option<(tokio::fs::File, u64)>>>,
    app: String,
    component: String,
    instance: String,
}

impl LogWriter {
    /// Copies `reader` line by line into the log, until it ends.
    pub fn capture(&self, stream: &'static str, reader: impl AsyncRead + Unpin + Send + 'static) {
        let w = self.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match (&mut lines).take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let truncated = buf.len() > MAX_LINE_BYTES && !buf.ends_with(b"\n");
                if truncated {
                    // Skip the rest of an over-long line.
                    let mut sink = Vec::new();
                    let _ = lines.read_until(b'\n', &mut sink).await;
                }
                let mut text = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
                if truncated {
                    text.push_str(" …[line truncated]");
                }
                let line = LogLine {
                    trace_id: trace_id_of(&text),
                    time: jiff::Timestamp::now().to_string(),
                    app: w.app.clone(),
                    component: w.component.clone(),
                    instance: w.instance.clone(),
                    stream: stream.to_string(),
                    line: text,
                };
                w.append(&line).await;
                let _ = w.hub.live.send(line);
            }
        });
    }

    async fn append(&self, line: &LogLine) {
        let Ok(mut json) = serde_json::to_string(line) else { return };
        json.push('\n');
        let mut guard = self.file.lock().await;
        if guard.as_ref().is_some_and(|(_, n)| *n > MAX_LOG_BYTES) {
            // Keep one previous file; the current one starts afresh.
            *guard = None;
            let _ = tokio::fs::rename(&self.path, self.path.with_extension("log.1")).await;
        }
        if guard.is_none() {
            if let Some(dir) = self.path.parent() {
                let _ = tokio::fs::create_dir_all(dir).await;
            }
            match tokio::fs::OpenOptions::new().create(true).append(true).open(&self.path).await {
                Ok(f) => {
                    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
                    *guard = Some((f, len));
                }
                Err(e) => {
                    tracing::warn!(error = %e, path = %self.path.display(), "Cannot write log.");
                    return;
                }
            }
        }
        if let Some((f, n)) = guard.as_mut()
            && f.write_all(json.as_bytes()).await.is_ok()
        {
            *n += json.len() as u64;
        }
    }
}

fn read_dir(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

#[cfg(test)]
mod trace_tests {
    use super::*;

    #[test]
    fn trace_ids_are_found_in_json_and_text_lines() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        for line in [
            format!(r#"{{"level":"info","msg":"paid","trace_id":"{id}"}}"#),
            format!(r#"{{"traceId":"{}"}}"#, id.to_uppercase()),
            format!(r#"{{"trace.id":"{id}","span.id":"x"}}"#),
            format!(r#"{{"traceparent":"00-{id}-00f067aa0ba902b7-01"}}"#),
            format!("level=info msg=paid trace_id={id} user=7"),
            format!(r#"time=1 traceId="{id}""#),
        ] {
            assert_eq!(trace_id_of(&line).as_deref(), Some(id), "{line}");
        }
        for line in [
            "plain text",
            r#"{"trace_id":"short"}"#,
            r#"{"trace_id":"00000000000000000000000000000000"}"#,
            r#"{"trace_id": 42}"#,
            "{not json trace_id=",
            "trace_id=zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
        ] {
            assert_eq!(trace_id_of(line), None, "{line}");
        }
    }

    #[test]
    fn queries_filter_by_text_and_trace() {
        let line = |text: &str, trace: Option<&str>| LogLine {
            time: String::new(),
            app: "a".into(),
            component: "web".into(),
            instance: "web-1".into(),
            stream: "stdout".into(),
            line: text.into(),
            trace_id: trace.map(str::to_string),
        };
        let q = LogQuery { grep: Some("paid".into()), ..Default::default() };
        assert!(q.matches(&line("order paid", None)) && !q.matches(&line("order failed", None)));
        let q = LogQuery { trace_id: Some("ab".into()), component: Some("web".into()), ..Default::default() };
        assert!(
            q.matches(&line("x", Some("ab")))
                && !q.matches(&line("x", Some("cd")))
                && !q.matches(&line("x", None))
        );
    }
}
