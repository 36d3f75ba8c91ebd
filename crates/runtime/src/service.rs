//! Stable service addresses: a loopback port owned by the daemon that forwards each HTTP request
//! to a ready instance, round-robin. Requests survive rollouts because instances leave the
//! endpoint set before they are stopped, and a request that could not be sent (connection
//! refused, closed idle connection) is retried on another instance.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How long a request waits for a ready instance before it gets 503.
pub const NO_ENDPOINT_WAIT: Duration = Duration::from_secs(30);
/// Bodies up to this size are buffered so that the request can be retried on another instance.
const RETRY_BUFFER_BYTES: u64 = 256 * 1024;
/// Attempts on distinct instances for a request that could not be sent.
const MAX_ATTEMPTS: usize = 3;

type Body = BoxBody<Bytes, hyper::Error>;

/// The ready instances behind one service port, with the requests in flight to each, so that
/// an instance leaving the set can be drained before it is stopped.
#[derive(Default)]
pub struct Endpoints {
    set: RwLock<EndpointSet>,
    changed: Notify,
    next: AtomicUsize,
}

#[derive(Default)]
struct EndpointSet {
    addrs: Vec<SocketAddr>,
    /// Requests in flight by address; kept for removed addresses until they drain.
    in_flight: HashMap<SocketAddr, Arc<AtomicUsize>>,
}

/// A request in flight to one instance; dropping it (response finished) ends it.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Endpoints {
    /// Replaces the set. Once this returns, no new request can pick a removed address.
    pub fn set(&self, addrs: Vec<SocketAddr>) {
        if let Ok(mut s) = self.set.write()
            && s.addrs != addrs
        {
            s.in_flight.retain(|a, n| addrs.contains(a) || n.load(Ordering::Acquire) > 0);
            for a in &addrs {
                s.in_flight.entry(*a).or_default();
            }
            s.addrs = addrs;
        }
        self.changed.notify_waiters();
    }

    /// Requests in flight to `addr`.
    pub fn in_flight(&self, addr: &SocketAddr) -> usize {
        self.set
            .read()
            .ok()
            .and_then(|s| s.in_flight.get(addr).map(|n| n.load(Ordering::Acquire)))
            .unwrap_or(0)
    }

    fn is_empty(&self) -> bool {
        self.set.read().map(|s| s.addrs.is_empty()).unwrap_or(true)
    }

    /// Next address round-robin, avoiding `tried` when possible, counted in flight. Picking
    /// and counting happen under the same lock that [`Endpoints::set`] takes to remove.
    fn pick(&self, tried: &[SocketAddr]) -> Option<(SocketAddr, InFlight)> {
        let s = self.set.read().ok()?;
        if s.addrs.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let addr =
            (0..s.addrs.len()).map(|i| s.addrs[(start + i) % s.addrs.len()]).find(|a| !tried.contains(a))?;
        let counter = s.in_flight.get(&addr)?.clone();
        counter.fetch_add(1, Ordering::AcqRel);
        Some((addr, InFlight(counter)))
    }

    async fn wait_for_any(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if !self.is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return !self.is_empty();
            }
        }
    }
}

/// A response body that keeps its request counted in flight until it is finished or dropped.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A bound service port and its forwarding task; dropping it closes the port.
pub struct ServicePort {
    pub port: u16,
    pub endpoints: Arc<Endpoints>,
    task: JoinHandle<()>,
}

impl Drop for ServicePort {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `127.0.0.1:port` and starts forwarding to `endpoints`.
pub async fn bind(port: u16, component: String) -> std::io::Result<ServicePort> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let endpoints = Arc::new(Endpoints::default());
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client: Client<HttpConnector, Body> =
        Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
    let ctx = Arc::new(Ctx { endpoints: endpoints.clone(), client, component });
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, Infallible>(ctx.forward(req, peer).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(ServicePort { port, endpoints, task })
}

struct Ctx {
    endpoints: Arc<Endpoints>,
    client: Client<HttpConnector, Body>,
    component: String,
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

impl Ctx {
    async fn forward(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        for h in HOP_BY_HOP {
            parts.headers.remove(*h);
        }
        if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
            parts.headers.append("x-forwarded-for", v);
        }
        let small = body_len(&parts.headers).is_some_and(|n| n <= RETRY_BUFFER_BYTES)
            || (body_len(&parts.headers).is_none()
                && !parts.headers.contains_key(header::TRANSFER_ENCODING)
                && matches!(
                    parts.method,
                    hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS | hyper::Method::DELETE
                ));
        let (buffered, mut streaming) = if small {
            match body.collect().await {
                Ok(c) => (Some(c.to_bytes()), None),
                Err(e) => {
                    return error(StatusCode::BAD_REQUEST, &format!("reading request body: {e}"));
                }
            }
        } else {
            (None, Some(body))
        };
        let mut tried = Vec::new();
        loop {
            if self.endpoints.is_empty() && !self.endpoints.wait_for_any(NO_ENDPOINT_WAIT).await {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "no ready instance of component \"{}\" within {}s",
                        self.component,
                        NO_ENDPOINT_WAIT.as_secs()
                    ),
                );
            }
            let Some((addr, in_flight)) = self.endpoints.pick(&tried) else {
                return error(StatusCode::BAD_GATEWAY, "every instance refused the request");
            };
            tried.push(addr);
            let uri =
                format!("http://{addr}{}", parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
            let mut out = Request::from_parts(parts.clone(), empty());
            *out.uri_mut() = match uri.parse() {
                Ok(u) => u,
                Err(_) => return error(StatusCode::BAD_REQUEST, "invalid request target"),
            };
            *out.body_mut() = match (&buffered, streaming.take()) {
                (Some(b), _) => Full::new(b.clone()).map_err(|n| match n {}).boxed(),
                (None, Some(s)) => s.boxed(),
                (None, None) => {
                    return error(StatusCode::BAD_GATEWAY, "upstream failed while receiving the body");
                }
            };
            match self.client.request(out).await {
                Ok(resp) => {
                    let (mut p, b) = resp.into_parts();
                    for h in HOP_BY_HOP {
                        p.headers.remove(*h);
                    }
                    return Response::from_parts(
                        p,
                        Tracked { inner: b.boxed(), _in_flight: in_flight }.boxed(),
                    );
                }
                Err(e) => {
                    // Only a request that never reached the instance may be sent again.
                    let unsent = e.is_connect();
                    if unsent && buffered.is_some() && tried.len() < MAX_ATTEMPTS {
                        continue;
                    }
                    tracing::debug!(component = %self.component, %addr, error = %e, "Upstream request failed.");
                    return error(StatusCode::BAD_GATEWAY, &format!("upstream {addr}: {e}"));
                }
            }
        }
    }
}

fn body_len(headers: &hyper::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|n| match n {}).boxed()
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({"error": message, "source": "yun"}).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
