//! Forwarding one request: choose an instance, send, retry what was never sent, stream the
//! response back. HTTP/2 requests go to instances over HTTP/2 (h2c, so gRPC with trailers
//! passes), HTTP/1.1 upgrades (WebSocket) are spliced through, bodies stream both ways.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::endpoints::{Endpoints, Lease};
use crate::{NO_ENDPOINT_WAIT, PortConfig};

pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

/// Bodies up to this size are buffered so that the request can be sent again to another
/// instance when the first one could not take it.
const RETRY_BUFFER_BYTES: u64 = 256 * 1024;
/// Attempts on distinct instances for a request that could not be sent.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Headers that belong to one connection and are not forwarded.
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

pub(crate) struct Proxy {
    component: String,
    endpoints: Arc<Endpoints>,
    config: Arc<RwLock<Arc<PortConfig>>>,
    http1: Client<HttpConnector, Body>,
    http2: Client<HttpConnector, Body>,
}

impl Proxy {
    pub(crate) fn new(
        component: String,
        endpoints: Arc<Endpoints>,
        config: Arc<RwLock<Arc<PortConfig>>>,
    ) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .http2_only(true)
            .build(connector);
        Proxy { component, endpoints, config, http1, http2 }
    }

    fn config(&self) -> Arc<PortConfig> {
        self.config.read().map(|c| c.clone()).unwrap_or_default()
    }

    pub(crate) async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let config = self.config();
        let upgrade = is_upgrade(&req);
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let upgrade_headers = upgrade.then(|| {
            (parts.headers.get(header::CONNECTION).cloned(), parts.headers.get(header::UPGRADE).cloned())
        });
        for h in HOP_BY_HOP {
            parts.headers.remove(*h);
        }
        if let Some((conn, up)) = upgrade_headers {
            parts.headers.insert(header::CONNECTION, conn.unwrap_or(HeaderValue::from_static("upgrade")));
            if let Some(up) = up {
                parts.headers.insert(header::UPGRADE, up);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
            parts.headers.append("x-forwarded-for", v);
        }
        let h2 = parts.version == Version::HTTP_2;
        // Small bodies are buffered so a request that could not be sent can go elsewhere.
        let len = body_len(&parts.headers);
        let small = len.is_some_and(|n| n <= RETRY_BUFFER_BYTES)
            || (len.is_none()
                && !h2
                && !parts.headers.contains_key(header::TRANSFER_ENCODING)
                && !upgrade
                && bodyless(&parts.method));
        let (buffered, mut streaming) = if small {
            match body.collect().await {
                Ok(c) => (Some(c.to_bytes()), None),
                Err(e) => return error(StatusCode::BAD_REQUEST, &format!("reading request body: {e}")),
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
            let Some(lease) = self.endpoints.pick(config.balancer, &tried) else {
                return error(StatusCode::BAD_GATEWAY, "every instance refused the connection");
            };
            let addr = lease.addr();
            tried.push(addr);
            let mut out = Request::from_parts(parts.clone(), empty());
            let uri =
                format!("http://{addr}{}", parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
            *out.uri_mut() = match uri.parse() {
                Ok(u) => u,
                Err(_) => return error(StatusCode::BAD_REQUEST, "invalid request target"),
            };
            *out.version_mut() = if h2 { Version::HTTP_2 } else { Version::HTTP_11 };
            *out.body_mut() = match (&buffered, streaming.take()) {
                (Some(b), _) => Full::new(b.clone()).map_err(|n| match n {}).boxed(),
                (None, Some(s)) => s.boxed(),
                (None, None) => {
                    return error(StatusCode::BAD_GATEWAY, "upstream failed while the body was sent");
                }
            };
            let client = if h2 { &self.http2 } else { &self.http1 };
            match client.request(out).await {
                Ok(mut resp) => {
                    lease.record(!resp.status().is_server_error());
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                        && let Some(down) = downstream_upgrade
                    {
                        let up = hyper::upgrade::on(&mut resp);
                        tokio::spawn(splice(down, up, lease));
                        return resp.map(|b| b.boxed());
                    }
                    let (mut p, b) = resp.into_parts();
                    for h in HOP_BY_HOP {
                        p.headers.remove(*h);
                    }
                    return Response::from_parts(p, Tracked { inner: b.boxed(), _lease: lease }.boxed());
                }
                Err(e) => {
                    lease.record(false);
                    // Only a request that never reached the instance may be sent again.
                    if e.is_connect() && buffered.is_some() && tried.len() < MAX_CONNECT_ATTEMPTS {
                        continue;
                    }
                    tracing::debug!(component = %self.component, %addr, error = %e, "Upstream request failed.");
                    return error(StatusCode::BAD_GATEWAY, &format!("upstream {addr}: {}", describe(&e)));
                }
            }
        }
    }
}

/// Joins an upgraded client connection with the upgraded instance connection.
async fn splice(down: hyper::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade, _lease: Lease) {
    let (Ok(down), Ok(up)) = (down.await, up.await) else { return };
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

fn bodyless(method: &hyper::Method) -> bool {
    use hyper::Method;
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE)
}

fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// A response body that keeps its request counted in flight until it is finished or dropped.
struct Tracked {
    inner: Body,
    _lease: Lease,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn body_len(headers: &hyper::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|n| match n {}).boxed()
}

/// A response made by the proxy itself: JSON naming the proxy as its source.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({"error": message, "source": "yun"}).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
