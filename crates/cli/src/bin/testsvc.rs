//! A small service for Yun's end-to-end tests and benchmarks: HTTP/1.1 and HTTP/2 (h2c) on
//! `$PORT`, reporting who it is, and able to be told to fail, slow down or exit.
//!
//! - `GET /` (and any other GET path not below) → `{"instance", "revision", "version", "pid", "http"}`
//! - `GET /healthz` → 200, or 503 after `POST /unhealthy`
//! - `GET /env/NAME` → the value of an environment variable
//! - `GET /header/NAME` → the value of a request header
//! - `GET /status/CODE` → an empty response with that status
//! - `GET /sleep/MS` → answers after MS milliseconds
//! - `POST /echo` → the request body, streamed back
//! - `GET /drip/N` → N chunks `tick\n`, 200 ms apart (a response that streams)
//! - `GET /upgrade` with `Connection: upgrade` and `Upgrade: echo` → 101, then echoes bytes
//! - `GET /trailers` → a body with an HTTP/2 trailer `x-checksum: done`
//! - `GET /call/VAR/PATH` → calls `$VAR` (a service URL such as `$CATALOGUE_URL`) + `/PATH`,
//!   passing `traceparent` and `tracestate` on as an instrumented service would, and answers
//!   with the callee's status and body
//! - `GET /log/TEXT` → prints a JSON log line `{"msg": TEXT, "traceparent": …}` to stdout, as a
//!   service that logs with its trace context would
//! - `POST /exit` → the process exits with code 3
//! - `POST /break` → from now on every request but `/healthz` and `/count` answers 500
//! - `POST /fix` → undoes `/break`
//! - `GET /count` → how many requests this instance has received (`/count`, `/max-inflight`
//!   and `/healthz` themselves are not counted)
//! - `GET /max-inflight` → the most requests it has handled at once
//!
//! Environment: `PORT` (required), `VERSION`, `STARTUP_DELAY_MS`, `FAIL_AT_START` (exit 1),
//! `FAIL_EVERY=N` (every Nth request answers 500), `DELAY_MS` (every request waits),
//! `MODE=garbage` (answer every connection with bytes that are not HTTP), `MODE=echo` (plain
//! TCP: echo every byte, prefixed once per connection with `$YUN_INSTANCE\n`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Body = BoxBody<Bytes, hyper::Error>;

struct State {
    unhealthy: AtomicBool,
    broken: AtomicBool,
    requests: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    fail_every: u64,
    delay: Duration,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::var_os("FAIL_AT_START").is_some() {
        eprintln!("failing at start as asked");
        std::process::exit(1);
    }
    if let Ok(ms) = env("STARTUP_DELAY_MS").parse() {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await.expect("bind");
    println!("testsvc listening on {port}");
    let state = Arc::new(State {
        unhealthy: AtomicBool::new(false),
        broken: AtomicBool::new(false),
        requests: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        max_in_flight: AtomicU64::new(0),
        fail_every: env("FAIL_EVERY").parse().unwrap_or(0),
        delay: Duration::from_millis(env("DELAY_MS").parse().unwrap_or(0)),
    });
    let garbage = env("MODE") == "garbage";
    let echo = env("MODE") == "echo";
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        if echo {
            tokio::spawn(async move {
                let _ = stream.write_all(format!("{}\n", env("YUN_INSTANCE")).as_bytes()).await;
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
            continue;
        }
        if garbage {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(b"\x00\x01 this is not HTTP \xff\xfe\r\n\r\n").await;
            });
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(req, &state).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// `VAR/PATH`: a GET to `$VAR/PATH` with the trace context passed on.
async fn call(target: &str, headers: &hyper::HeaderMap) -> Response<Body> {
    let (var, path) = target.split_once('/').unwrap_or((target, ""));
    let base = env(var);
    let Some(addr) = base.strip_prefix("http://") else {
        return text(500, format!("${var} is not an http:// URL"));
    };
    let stream = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return text(502, format!("connecting to {addr}: {e}")),
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
        return text(502, "handshake failed");
    };
    tokio::spawn(conn);
    let mut req = Request::get(format!("/{path}")).header("host", addr);
    for h in ["traceparent", "tracestate"] {
        if let Some(v) = headers.get(h) {
            req = req.header(h, v);
        }
    }
    let Ok(req) = req.body(http_body_util::Empty::<Bytes>::new()) else {
        return text(400, "invalid path");
    };
    match sender.send_request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            text(status, body)
        }
        Err(e) => text(502, format!("calling {addr}: {e}")),
    }
}

fn text(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).map_err(|n| match n {}).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

async fn handle(req: Request<Incoming>, state: &State) -> Response<Body> {
    let path = req.uri().path().to_string();
    let counted = !matches!(path.as_str(), "/count" | "/max-inflight" | "/healthz");
    if counted {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    }
    let resp = serve(req, state).await;
    if counted {
        state.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
    resp
}

async fn serve(mut req: Request<Incoming>, state: &State) -> Response<Body> {
    // Observation requests are not counted, so tests can poll them.
    let observing = matches!(req.uri().path(), "/count" | "/max-inflight" | "/healthz");
    let n = if observing {
        state.requests.load(Ordering::SeqCst)
    } else {
        state.requests.fetch_add(1, Ordering::SeqCst) + 1
    };
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    let path = req.uri().path().to_string();
    // HEAD is answered as GET (hyper leaves the body out).
    let method = if req.method() == hyper::Method::HEAD { hyper::Method::GET } else { req.method().clone() };
    let exempt = matches!(path.as_str(), "/healthz" | "/count" | "/max-inflight" | "/fix");
    if !exempt
        && (state.broken.load(Ordering::SeqCst)
            || (state.fail_every > 0 && n.is_multiple_of(state.fail_every)))
    {
        return text(500, "failing as asked");
    }
    match (method.as_str(), path.as_str()) {
        ("GET", "/healthz") if state.unhealthy.load(Ordering::SeqCst) => text(503, "unhealthy"),
        ("GET", "/healthz") => text(200, "ok"),
        ("GET", "/count") => text(200, n.to_string()),
        ("GET", "/max-inflight") => text(200, state.max_in_flight.load(Ordering::SeqCst).to_string()),
        ("POST", "/fix") => {
            state.broken.store(false, Ordering::SeqCst);
            text(200, "fixed")
        }
        ("POST", "/break") => {
            state.broken.store(true, Ordering::SeqCst);
            text(200, "broken")
        }
        ("POST", "/unhealthy") => {
            state.unhealthy.store(true, Ordering::SeqCst);
            text(200, "ok")
        }
        ("POST", "/exit") => {
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                std::process::exit(3);
            });
            text(200, "bye")
        }
        ("GET", p) if p.starts_with("/env/") => text(200, env(&p[5..])),
        ("GET", p) if p.starts_with("/call/") => call(&p[6..], req.headers()).await,
        ("GET", p) if p.starts_with("/log/") => {
            let traceparent = req.headers().get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("");
            println!("{}", serde_json::json!({"msg": &p[5..], "traceparent": traceparent}));
            text(200, "logged")
        }
        ("GET", p) if p.starts_with("/header/") => {
            let value = req.headers().get(&p[8..]).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            text(200, value)
        }
        ("GET", p) if p.starts_with("/status/") => text(p[8..].parse().unwrap_or(500), ""),
        ("GET", p) if p.starts_with("/sleep/") => {
            tokio::time::sleep(Duration::from_millis(p[7..].parse().unwrap_or(0))).await;
            text(200, "slept")
        }
        ("POST", "/echo") => Response::new(req.into_body().boxed()),
        ("GET", p) if p.starts_with("/drip/") => {
            let n: u32 = p[6..].parse().unwrap_or(3);
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tokio::spawn(async move {
                for _ in 0..n {
                    if tx.send(Ok(Frame::data(Bytes::from_static(b"tick\n")))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            Response::new(StreamBody::new(Channel(rx)).boxed())
        }
        ("GET", "/trailers") => {
            let mut trailers = hyper::HeaderMap::new();
            trailers.insert("x-checksum", hyper::header::HeaderValue::from_static("done"));
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            let _ = tx.try_send(Ok(Frame::data(Bytes::from_static(b"payload"))));
            let _ = tx.try_send(Ok(Frame::trailers(trailers)));
            Response::new(StreamBody::new(Channel(rx)).boxed())
        }
        ("GET", "/upgrade") => {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut r = text(101, "");
            r.headers_mut().insert("connection", "upgrade".parse().expect("static"));
            r.headers_mut().insert("upgrade", "echo".parse().expect("static"));
            r
        }
        ("GET", _) => {
            let body = serde_json::json!({
                "instance": env("YUN_INSTANCE"),
                "revision": env("YUN_REVISION"),
                "version": env("VERSION"),
                "pid": std::process::id(),
                "http": format!("{:?}", req.version()),
            });
            text(200, body.to_string())
        }
        _ => text(404, "not found"),
    }
}

/// Frames from a channel, as a stream.
struct Channel(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, hyper::Error>>);

impl futures_core::Stream for Channel {
    type Item = Result<Frame<Bytes>, hyper::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}
