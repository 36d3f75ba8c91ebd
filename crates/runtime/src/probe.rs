//! Running one probe against one instance.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use yun_model::Probe;

/// How to reach the instance: its real ports by declared port.
pub struct Target<'a> {
    /// (declared port, instance port) pairs; the first is the default.
    pub ports: &'a [(u16, u16)],
    /// Working directory for exec probes.
    pub workdir: &'a Path,
    /// Environment for exec probes.
    pub env: &'a [(String, String)],
}

impl Target<'_> {
    fn port(&self, declared: Option<u16>) -> Option<u16> {
        match declared {
            None => self.ports.first().map(|p| p.1),
            Some(d) => Some(self.ports.iter().find(|p| p.0 == d).map(|p| p.1).unwrap_or(d)),
        }
    }
}

/// Runs the probe once. `Err` carries what a person needs to see in status.
pub async fn run(probe: &Probe, target: &Target<'_>) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.max(1) as u64);
    let fut = async {
        if let Some(h) = &probe.http_get {
            let port = target.port(h.port).ok_or("no port to probe")?;
            let host = h.host.clone().unwrap_or_else(|| "127.0.0.1".into());
            http_get(&host, port, &h.path, &h.http_headers).await
        } else if let Some(t) = &probe.tcp_socket {
            let port = target.port(t.port).ok_or("no port to probe")?;
            tcp(port).await
        } else if let Some(e) = &probe.exec {
            exec(&e.command, target).await
        } else {
            Err("probe has no action".into())
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {}s", timeout.as_secs())),
    }
}

/// Connects to `127.0.0.1:port`.
pub async fn tcp(port: u16) -> Result<(), String> {
    tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .map(|_| ())
        .map_err(|e| format!("tcp connect to port {port}: {e}"))
}

async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[yun_model::HttpHeader],
) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("GET http://{host}:{port}{path}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("GET http://{host}:{port}{path}: {e}"))?;
    tokio::spawn(conn);
    let mut req =
        Request::get(path).header("host", format!("{host}:{port}")).header("user-agent", "yun-probe");
    for h in headers {
        req = req.header(h.name.as_str(), h.value.as_str());
    }
    let req = req.body(Empty::<bytes::Bytes>::new()).map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| format!("GET {path}: {e}"))?;
    let status = resp.status();
    if (200..400).contains(&status.as_u16()) { Ok(()) } else { Err(format!("GET {path} returned {status}")) }
}

async fn exec(command: &[String], target: &Target<'_>) -> Result<(), String> {
    let (program, args) = command.split_first().ok_or("empty command")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(target.workdir)
        .envs(target.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("exec {program}: {e}"))?;
    let mut out = Vec::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = (&mut s).take(4096).read_to_end(&mut out).await;
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = (&mut s).take(4096).read_to_end(&mut out).await;
    }
    let status = child.wait().await.map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&out);
        let text = text.trim();
        Err(format!("exec {program} exited with {status}{}{text}", if text.is_empty() { "" } else { ": " }))
    }
}
