//! Instance output: every line is timestamped, appended to a size-capped per-instance file and
//! broadcast to live followers.

use std::path::{Path, PathBuf};

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

    /// Copies `reader` line by line into the instance's log.
    pub fn capture(
        &self,
        app: &str,
        component: &str,
        instance: &str,
        stream: &'static str,
        reader: impl AsyncRead + Unpin + Send + 'static,
    ) {
        let hub = self.clone();
        let dir = self.dir(app, component);
        let (app, component, instance) = (app.to_string(), component.to_string(), instance.to_string());
        tokio::spawn(async move {
            if let Err(e) = tokio::fs::create_dir_all(&dir).await {
                tracing::warn!(error = %e, "Cannot create log directory.");
                return;
            }
            let path = dir.join(format!("{instance}.log"));
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
                    time: jiff::Timestamp::now().to_string(),
                    app: app.clone(),
                    component: component.clone(),
                    instance: instance.clone(),
                    stream: stream.to_string(),
                    line: text,
                };
                append(&path, &line).await;
                let _ = hub.live.send(line);
            }
        });
    }

    /// Reads stored lines of an app (optionally one component/instance), in time order,
    /// at or after `since` (RFC 3339), the last `tail` of them.
    pub fn read(
        &self,
        app: &str,
        component: Option<&str>,
        instance: Option<&str>,
        since: Option<jiff::Timestamp>,
        tail: usize,
    ) -> Vec<LogLine> {
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
                    let keep =
                        since.is_none_or(|s| line.time.parse::<jiff::Timestamp>().is_ok_and(|t| t >= s));
                    if keep {
                        out.push(line);
                    }
                }
            }
        }
        out.sort_by(|a, b| a.time.cmp(&b.time));
        let skip = out.len().saturating_sub(tail);
        out.split_off(skip)
    }
}

fn read_dir(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

async fn append(path: &Path, line: &LogLine) {
    if tokio::fs::metadata(path).await.is_ok_and(|m| m.len() > MAX_LOG_BYTES) {
        let _ = tokio::fs::rename(path, path.with_extension("log.1")).await;
    }
    let Ok(mut json) = serde_json::to_string(line) else { return };
    json.push('\n');
    match tokio::fs::OpenOptions::new().create(true).append(true).open(path).await {
        Ok(mut f) => {
            let _ = f.write_all(json.as_bytes()).await;
        }
        Err(e) => tracing::warn!(error = %e, path = %path.display(), "Cannot write log."),
    }
}
