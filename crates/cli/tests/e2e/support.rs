//! Support for whole-binary tests: a daemon in a temporary YUN_HOME on a free port, the CLI,
//! a keep-alive HTTP client, and waiting on conditions with deadlines.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const YUN: &str = env!("CARGO_BIN_EXE_yun");
pub const TESTSVC: &str = env!("CARGO_BIN_EXE_yun-testsvc");

/// Multiplies every deadline, for slow machines.
fn patience() -> u32 {
    std::env::var("YUN_TEST_PATIENCE").ok().and_then(|v| v.parse().ok()).unwrap_or(1)
}

/// Polls `cond` until it returns `Some`, panicking with `what` after `secs` seconds.
pub fn eventually<T>(secs: u64, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs) * patience();
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `yun server` in its own temporary YUN_HOME; stopped (and its instances with it) on drop.
pub struct Daemon {
    pub home: tempfile::TempDir,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// Runs the daemon on one worker thread (tokio's current-thread scheduler).
    one_worker: bool,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    /// A daemon with more `yun server` flags.
    pub fn start_with(args: &[&str]) -> Daemon {
        Daemon::launch(args, false)
    }

    /// A daemon on one worker thread, as on a one-core machine (the current-thread scheduler).
    pub fn start_one_worker() -> Daemon {
        Daemon::launch(&[], true)
    }

    fn launch(args: &[&str], one_worker: bool) -> Daemon {
        let home = tempfile::tempdir().unwrap();
        let extra_args = args.iter().map(|a| a.to_string()).collect();
        let mut d = Daemon { home, child: None, extra_args, one_worker };
        d.spawn();
        d
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.home().join("daemon.json"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home().join("daemon.log"))
            .unwrap();
        let child = Command::new(YUN)
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--gateway",
                "127.0.0.1:0",
                "--gateway-tls",
                "127.0.0.1:0",
                "--otlp",
                "127.0.0.1:0",
            ])
            .args(&self.extra_args)
            .env("YUN_HOME", self.home())
            .env("YUN_LOG", "debug")
            .env("TOKIO_WORKER_THREADS", if self.one_worker { "1" } else { "2" })
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        eventually(20, "daemon answers", || {
            let v: Value = serde_json::from_str(&self.yun_ok(&["version", "-o", "json"])).ok()?;
            v["server"].is_string().then_some(())
        });
    }

    /// `kill -9` of the daemon, reaped.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Graceful stop (SIGTERM), waiting for the process to end.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn yun(&self, args: &[&str]) -> Output {
        Command::new(YUN)
            .args(args)
            .env("YUN_HOME", self.home())
            .env_remove("YUN_ADDR")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs the CLI and returns stdout, panicking with stderr on failure.
    pub fn yun_ok(&self, args: &[&str]) -> String {
        let out = self.yun(args);
        assert!(
            out.status.success(),
            "yun {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.yun_ok(&a)).unwrap()
    }

    pub fn status(&self, app: &str) -> Value {
        self.json(&["status", app])
    }

    /// The app's status, or `None` while it does not exist.
    pub fn try_status(&self, app: &str) -> Option<Value> {
        let out = self.yun(&["status", app, "-o", "json"]);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    /// Writes `manifest` to a file in the home and applies it.
    pub fn apply(&self, name: &str, manifest: &str) -> Value {
        let path = self.write(name, manifest);
        self.json(&["apply", "-f", path.to_str().unwrap()])
    }

    pub fn write(&self, name: &str, manifest: &str) -> PathBuf {
        let path = self.home().join(name);
        std::fs::write(&path, manifest).unwrap();
        path
    }

    pub fn wait_phase(&self, app: &str, phase: &str, secs: u64) -> Value {
        eventually(secs, &format!("{app} phase {phase}"), || {
            let st = self.status(app);
            (st["phase"] == phase).then_some(st)
        })
    }

    pub fn api_addr(&self) -> String {
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(self.home().join("daemon.json")).unwrap()).unwrap();
        info["addr"].as_str().unwrap().to_string()
    }

    pub fn gateway_addr(&self) -> String {
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(self.home().join("daemon.json")).unwrap()).unwrap();
        info["gateway"].as_str().expect("the daemon runs a gateway").to_string()
    }

    pub fn otlp_addr(&self) -> String {
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(self.home().join("daemon.json")).unwrap()).unwrap();
        info["otlp"].as_str().expect("the daemon runs an OTLP receiver").to_string()
    }

    pub fn gateway_tls_addr(&self) -> String {
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(self.home().join("daemon.json")).unwrap()).unwrap();
        info["gateway_tls"].as_str().expect("the daemon runs an HTTPS gateway").to_string()
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.home().join("token")).unwrap().trim().to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Pids of live processes whose environment has `YUN_APP=<app>` and this daemon's instance
/// marker, i.e. the app's instances.
pub fn app_processes(app: &str, marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        let has = |needle: &str| vars.contains(&needle.as_bytes());
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z'));
        if has(&format!("YUN_APP={app}")) && has(&format!("TEST_MARKER={marker}")) && !zombie {
            out.push(pid);
        }
    }
    out
}

/// A minimal HTTP/1.1 keep-alive client, so tests see exactly what a plain client sees.
pub struct Http {
    addr: String,
    conn: Option<(TcpStream, BufReader<TcpStream>)>,
    /// The fields of the last answer, names in lowercase, in order.
    pub fields: Vec<(String, String)>,
}

impl Http {
    pub fn new(addr: &str) -> Http {
        Http { addr: addr.to_string(), conn: None, fields: Vec::new() }
    }

    /// The values of the last answer's fields named `name` (lowercase).
    pub fn field(&self, name: &str) -> Vec<&str> {
        self.fields.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }

    /// Sends a request; any transport error is returned (and the connection dropped).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<(u16, String), String> {
        let r = self.try_request(method, path, headers, body);
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    pub fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        self.request("GET", path, &[], "")
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<(u16, String), String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
            let r = BufReader::new(s.try_clone().unwrap());
            self.conn = Some((s, r));
        }
        let (w, r) = self.conn.as_mut().unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\ncontent-length: {}\r\n", body.len());
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str("host: test\r\n");
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        // A server may answer before it has read the whole body (413) and close; like curl,
        // read the answer that came before the write failed.
        let written = w.write_all(req.as_bytes());
        let mut status_line = String::new();
        match (r.read_line(&mut status_line), written) {
            (Ok(n), _) if n > 0 => {}
            (_, Err(e)) => return Err(format!("write: {e}")),
            (Ok(_), Ok(())) => return Err("connection closed".into()),
            (Err(e), Ok(())) => return Err(format!("read: {e}")),
        }
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or(format!("bad status line {status_line:?}"))?;
        let mut len = 0usize;
        let mut chunked = false;
        self.fields.clear();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).map_err(|e| format!("read: {e}"))?;
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                self.fields.push((name.to_string(), value.trim().to_string()));
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if h == "transfer-encoding: chunked" {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                r.read_line(&mut size).map_err(|e| format!("read: {e}"))?;
                let n = usize::from_str_radix(size.trim(), 16).map_err(|e| format!("chunk: {e}"))?;
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk).map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            body.resize(len, 0);
            r.read_exact(&mut body).map_err(|e| format!("read: {e}"))?;
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// A webservice manifest running the test service.
pub fn webservice_app(app: &str, marker: &str, port: u16, version: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: {app}
spec:
  components:
    - name: api
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        ports:
          - port: {port}
            expose: true
        env:
          - name: VERSION
            value: "{version}"
          - name: TEST_MARKER
            value: "{marker}"
        readinessProbe:
          httpGet:
            path: /healthz
            port: {port}
          periodSeconds: 1
        terminationGracePeriodSeconds: 5
      traits:
        - type: scaler
          properties:
            replicas: {replicas}
"#
    )
}

/// A marker no other test (or concurrent test run) uses, to find an app's processes.
pub fn unique(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}
