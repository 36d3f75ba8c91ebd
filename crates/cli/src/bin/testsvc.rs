//! A small HTTP service for Yun's end-to-end tests: it answers on `$PORT`, reports who it is,
//! and can be told to fail, slow down or exit.
//!
//! - `GET /` → `{"instance": $YUN_INSTANCE, "revision": $YUN_REVISION, "version": $VERSION}`
//! - `GET /healthz` → 200, or 503 after `POST /unhealthy`
//! - `GET /env/NAME` → the value of an environment variable
//! - `POST /exit` → the process exits with code 3
//!
//! Environment: `PORT` (required), `VERSION`, `STARTUP_DELAY_MS` (sleep before listening),
//! `FAIL_AT_START` (exit 1 at once).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn main() {
    if std::env::var_os("FAIL_AT_START").is_some() {
        eprintln!("failing at start as asked");
        std::process::exit(1);
    }
    if let Some(ms) = std::env::var("STARTUP_DELAY_MS").ok().and_then(|v| v.parse().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).expect("bind");
    println!("testsvc listening on {port}");
    let unhealthy = Arc::new(AtomicBool::new(false));
    // SIGTERM: the default action ends the process; in-flight requests are short.
    for stream in listener.incoming().flatten() {
        let unhealthy = unhealthy.clone();
        std::thread::spawn(move || serve(stream, &unhealthy));
    }
}

fn serve(mut stream: TcpStream, unhealthy: &AtomicBool) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut content_length = 0usize;
        let mut close = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            if lower == "connection: close" {
                close = true;
            }
        }
        let mut body = vec![0u8; content_length];
        let _ = reader.read_exact(&mut body);
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("");
        let path = parts.next().unwrap_or("/");
        let (status, text) = match (method, path) {
            ("GET", "/healthz") if unhealthy.load(Ordering::SeqCst) => (503, "unhealthy".to_string()),
            ("GET", "/healthz") => (200, "ok".to_string()),
            ("POST", "/unhealthy") => {
                unhealthy.store(true, Ordering::SeqCst);
                (200, "ok".into())
            }
            ("POST", "/exit") => {
                let _ = respond(&mut stream, 200, "bye", true);
                std::process::exit(3);
            }
            ("GET", p) if p.starts_with("/env/") => (200, std::env::var(&p[5..]).unwrap_or_default()),
            ("GET", "/") => {
                let v = |k: &str| std::env::var(k).unwrap_or_default();
                (
                    200,
                    format!(
                        "{{\"instance\":\"{}\",\"revision\":\"{}\",\"version\":\"{}\",\"pid\":{}}}",
                        v("YUN_INSTANCE"),
                        v("YUN_REVISION"),
                        v("VERSION"),
                        std::process::id()
                    ),
                )
            }
            _ => (404, "not found".into()),
        };
        if respond(&mut stream, status, &text, close).is_err() || close {
            return;
        }
    }
}

fn respond(stream: &mut TcpStream, status: u16, body: &str, close: bool) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let conn = if close { "close" } else { "keep-alive" };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\ncontent-length: {}\r\nconnection: {conn}\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
