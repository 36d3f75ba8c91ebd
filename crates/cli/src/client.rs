//! Talking to the daemon: finding it through `YUN_HOME`, starting it when `yun up` needs one,
//! and authenticated JSON requests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use yun_server::{DAEMON_FILE, DaemonInfo, TOKEN_FILE};

/// How long `yun up` waits for a daemon it started to answer.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(15);

/// `YUN_HOME`, or `~/.yun`.
pub fn home(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(h) = flag {
        return Ok(h);
    }
    let base = std::env::var_os("HOME").ok_or_else(|| anyhow!("neither YUN_HOME nor HOME is set"))?;
    Ok(PathBuf::from(base).join(".yun"))
}

/// An authenticated API client; clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    http: HttpClient<HttpConnector, Full<Bytes>>,
    base: String,
    token: String,
}

/// A non-2xx answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Value,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let msg = self.body.get("error").and_then(Value::as_str).unwrap_or("request failed");
        write!(f, "{msg} ({})", self.status)
    }
}

impl std::error::Error for ApiError {}

impl Client {
    /// Connects to the daemon of `home`, failing with a hint when none runs.
    pub async fn connect(home: &Path) -> Result<Client> {
        let info = read_info(home).with_context(|| {
            format!(
                "no yun server is running for YUN_HOME {} (start one with `yun server` or `yun up`)",
                home.display()
            )
        })?;
        let client = Client::new(home, &info)?;
        client.health().await.with_context(|| {
            format!(
                "the yun server recorded in {} (pid {}) does not answer at {}",
                home.join(DAEMON_FILE).display(),
                info.pid,
                info.addr
            )
        })?;
        Ok(client)
    }

    fn new(home: &Path, info: &DaemonInfo) -> Result<Client> {
        let token = std::fs::read_to_string(home.join(TOKEN_FILE))
            .with_context(|| format!("cannot read the API token in {}", home.join(TOKEN_FILE).display()))?
            .trim()
            .to_string();
        let base = match std::env::var("YUN_ADDR") {
            Ok(a) if !a.is_empty() => format!("http://{a}"),
            _ => format!("http://{}", info.addr),
        };
        let http = HttpClient::builder(TokioExecutor::new()).build(HttpConnector::new());
        Ok(Client { http, base, token })
    }

    async fn health(&self) -> Result<()> {
        let req = Request::get(format!("{}/healthz", self.base)).body(Full::new(Bytes::new()))?;
        let resp = tokio::time::timeout(Duration::from_secs(3), self.http.request(req)).await??;
        if resp.status() != StatusCode::OK {
            bail!("health check returned {}", resp.status());
        }
        Ok(())
    }

    fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Request<Full<Bytes>>> {
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        Ok(Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .header("x-yun-actor", user)
            .body(Full::new(bytes))?)
    }

    /// Sends a request and decodes the JSON answer; non-2xx becomes [`ApiError`].
    /// The dashboard's address, with the token in the fragment (which browsers never send).
    pub fn dashboard_url(&self) -> String {
        format!("{}/dashboard#token={}", self.base.trim_end_matches('/'), self.token)
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let resp = self
            .http
            .request(self.request(method, path, body)?)
            .await
            .context("cannot reach the yun server")?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        if !status.is_success() {
            let body = if value.is_object() { value } else { serde_json::json!({"error": value}) };
            return Err(ApiError { status, body }.into());
        }
        Ok(value)
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// Streams newline-delimited JSON, calling `each` per value until the stream ends or
    /// `each` returns false.
    pub async fn stream(&self, path: &str, mut each: impl FnMut(Value) -> bool) -> Result<()> {
        let resp = self
            .http
            .request(self.request(Method::GET, path, None)?)
            .await
            .context("cannot reach the yun server")?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body.collect().await?.to_bytes();
            let value: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(ApiError { status, body: value }.into());
        }
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            let Some(data) = frame.data_ref() else { continue };
            buf.extend_from_slice(data);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if let Ok(v) = serde_json::from_slice(&line)
                    && !each(v)
                {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

fn read_info(home: &Path) -> Result<DaemonInfo> {
    let text = std::fs::read_to_string(home.join(DAEMON_FILE))?;
    Ok(serde_json::from_str(&text)?)
}

/// Connects to the daemon, starting one in the background when none answers.
pub async fn connect_or_start(home: &Path) -> Result<Client> {
    if let Ok(c) = Client::connect(home).await {
        return Ok(c);
    }
    std::fs::create_dir_all(home).with_context(|| format!("cannot create {}", home.display()))?;
    let log_path = home.join("daemon.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("server").arg("--home").arg(home);
    cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // Its own session: Ctrl-C in this terminal must not reach the daemon.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("cannot start `yun server`")?;
    let deadline = tokio::time::Instant::now() + DAEMON_START_TIMEOUT;
    loop {
        if let Ok(c) = Client::connect(home).await {
            return Ok(c);
        }
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = tail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
            bail!("the yun server exited at start ({status}): {last} (log: {})", log_path.display());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the yun server did not answer within {}s (log: {})",
                DAEMON_START_TIMEOUT.as_secs(),
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
