//! A small shop to show what Yun does for an application: four components, no platform code.
//!
//! - `shop frontend`  — web page and JSON API on `$PORT`; reads the catalogue through
//!   `$YUN_SVC_CATALOGUE_URL`, the stable address Yun gives it.
//! - `shop catalogue` — product list on `$PORT`.
//! - `shop worker`    — restocks: every few seconds it checks the catalogue for low stock.
//! - `shop report`    — a cron job: prints a one-line stock report and exits.
//!
//! The frontend passes the W3C `traceparent` it receives on to the catalogue, as any
//! OpenTelemetry-instrumented service does, so Yun's traces connect the two; that is the only
//! concession to the platform. Only the standard library is used, so the example builds in
//! seconds.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

const PRODUCTS: &str = r#"[
  {"id": 1, "name": "Green tea", "price": 4.5, "stock": 120},
  {"id": 2, "name": "Oolong", "price": 7.0, "stock": 8},
  {"id": 3, "name": "Pu-erh", "price": 12.0, "stock": 35},
  {"id": 4, "name": "Jasmine", "price": 5.5, "stock": 3}
]"#;

fn main() {
    let role = std::env::args().nth(1).unwrap_or_default();
    match role.as_str() {
        "frontend" => serve(frontend),
        "catalogue" => serve(catalogue),
        "worker" => worker(),
        "report" => report(),
        _ => {
            eprintln!("usage: shop frontend|catalogue|worker|report");
            std::process::exit(2);
        }
    }
}

/// (method, path, incoming traceparent or "") → (status, content type, body).
type Handler = fn(&str, &str, &str) -> (u16, &'static str, String);

fn catalogue(method: &str, path: &str, _trace: &str) -> (u16, &'static str, String) {
    match (method, path) {
        ("GET", "/healthz") => (200, "text/plain", "ok".into()),
        ("GET", "/products") => (200, "application/json", PRODUCTS.into()),
        _ => (404, "text/plain", "not found".into()),
    }
}

fn frontend(method: &str, path: &str, trace: &str) -> (u16, &'static str, String) {
    match (method, path) {
        ("GET", "/healthz") => (200, "text/plain", "ok".into()),
        ("GET", "/api/products") => match fetch_products(trace) {
            Ok(body) => (200, "application/json", body),
            Err(e) => (502, "text/plain", format!("catalogue unavailable: {e}")),
        },
        ("GET", "/") => match fetch_products(trace) {
            Ok(body) => (200, "text/html; charset=utf-8", page(&body)),
            Err(e) => (502, "text/plain", format!("catalogue unavailable: {e}")),
        },
        _ => (404, "text/plain", "not found".into()),
    }
}

fn page(products: &str) -> String {
    let rows: String = products
        .lines()
        .filter(|l| l.contains("\"name\""))
        .map(|l| format!("<li><code>{}</code></li>", l.trim().trim_end_matches(',').replace('<', "&lt;")))
        .collect();
    let instance = std::env::var("YUN_INSTANCE").unwrap_or_default();
    format!(
        "<!doctype html><title>Yun tea shop</title><h1>Tea shop</h1><ul>{rows}</ul><p>served by {instance}</p>"
    )
}

fn fetch_products(trace: &str) -> Result<String, String> {
    let base =
        std::env::var("YUN_SVC_CATALOGUE_URL").map_err(|_| "YUN_SVC_CATALOGUE_URL is not set".to_string())?;
    http_get(&base, "/products", trace)
}

fn worker() {
    println!("worker started; watching stock every 5s");
    loop {
        match fetch_products("") {
            Ok(body) => {
                let low = body.lines().filter(|l| stock_of(l).is_some_and(|s| s < 10)).count();
                println!("stock check: {low} product(s) below 10 units");
            }
            Err(e) => eprintln!("stock check failed: {e}"),
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

fn report() {
    match fetch_products("") {
        Ok(body) => {
            let total: u64 = body.lines().filter_map(stock_of).sum();
            println!("report: {total} units in stock");
        }
        Err(e) => {
            eprintln!("report failed: {e}");
            std::process::exit(1);
        }
    }
}

fn stock_of(line: &str) -> Option<u64> {
    let rest = &line[line.find("\"stock\":")? + 8..];
    rest.trim().trim_end_matches(['}', ',', ' ']).parse().ok()
}

fn serve(handler: Handler) {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).unwrap_or_else(|e| {
        eprintln!("cannot listen on {port}: {e}");
        std::process::exit(1);
    });
    println!("listening on 127.0.0.1:{port}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || handle(stream, handler));
    }
}

fn handle(mut stream: TcpStream, handler: Handler) {
    let Ok(clone) = stream.try_clone() else { return };
    let mut reader = BufReader::new(clone);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0usize;
        let mut trace = String::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim().is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if let Some(v) = lower.strip_prefix("traceparent:") {
                trace = v.trim().to_string();
            }
        }
        let mut body = vec![0; len.min(1 << 20)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        let (status, kind, text) = handler(method, path, &trace);
        let head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n\r\n",
            reason(status),
            text.len()
        );
        if stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(text.as_bytes())).is_err() {
            return;
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Bad Gateway",
    }
}

fn http_get(base: &str, path: &str, trace: &str) -> Result<String, String> {
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(host).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let trace = if trace.is_empty() { String::new() } else { format!("traceparent: {trace}\r\n") };
    write!(s, "GET {path} HTTP/1.1\r\nhost: {host}\r\n{trace}connection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or("malformed response")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_string());
    }
    Ok(body.to_string())
}
