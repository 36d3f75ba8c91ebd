//! HTTP/1.1 connections to instances: a pool of idle keep-alive connections per address,
//! driven through hyper's connection API. Compared with a general-purpose client this costs no
//! task and no pool round trip per request: a connection goes back to the pool when its
//! response body ends, and is checked for readiness when it is taken again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::forward::Body;

/// How long connecting to an instance may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections older than this are closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per instance; more are closed when they come back.
const MAX_IDLE_PER_ADDR: usize = 512;

/// Why a request could not be sent or answered.
pub(crate) enum SendError {
    /// No connection could be made: the request never left.
    Connect(String),
    /// The connection failed while the request was sent or the answer read.
    Http(hyper::Error),
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// Idle connections by instance address.
#[derive(Default)]
pub(crate) struct Http1Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
}

impl Http1Pool {
    /// A pool that closes idle connections past their time in the background, for as long as
    /// the pool lives.
    pub(crate) fn new() -> Arc<Http1Pool> {
        let pool = Arc::new(Http1Pool::default());
        let weak = Arc::downgrade(&pool);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(IDLE_TIMEOUT / 2);
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                pool.purge(Instant::now());
            }
        });
        pool
    }

    fn purge(&self, now: Instant) {
        let Ok(mut idle) = self.idle.lock() else { return };
        idle.retain(|_, conns| {
            conns.retain(|c| now.duration_since(c.since) < IDLE_TIMEOUT && !c.sender.is_closed());
            !conns.is_empty()
        });
    }

    /// Sends `req` (origin-form URI, `Host` set) to `addr` on an idle connection or a new one.
    /// A request that a reused connection could not take (the instance closed it while it sat
    /// idle) is sent again on a fresh connection; nothing is sent twice.
    pub(crate) async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        let mut req = req;
        let mut reused = true;
        loop {
            let mut sender = match self.checkout(addr).await {
                Some(s) => s,
                None => {
                    reused = false;
                    connect(addr).await?
                }
            };
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.returning(addr, sender, resp)),
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => req = back,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// An idle connection to `addr` that is ready for a request.
    async fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<Body>> {
        loop {
            let idle = {
                let mut map = self.idle.lock().ok()?;
                let conns = map.get_mut(&addr)?;
                let c = conns.pop();
                if conns.is_empty() {
                    map.remove(&addr);
                }
                c?
            };
            if idle.since.elapsed() >= IDLE_TIMEOUT {
                continue;
            }
            let mut sender = idle.sender;
            // Usually immediate; it waits only while the connection finishes the previous
            // exchange, and fails if the instance closed it.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn put_back(&self, addr: SocketAddr, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let Ok(mut map) = self.idle.lock() else { return };
        let conns = map.entry(addr).or_default();
        if conns.len() < MAX_IDLE_PER_ADDR {
            conns.push(Idle { sender, since: Instant::now() });
        }
    }

    /// The response, with a body that gives the connection back when it has been read to the
    /// end (a connection whose answer was cut short, or upgraded, is not reused).
    fn returning(
        self: &Arc<Self>,
        addr: SocketAddr,
        sender: SendRequest<Body>,
        resp: Response<Incoming>,
    ) -> Response<Body> {
        let reusable = resp.status() != StatusCode::SWITCHING_PROTOCOLS;
        resp.map(|inner| {
            let back = reusable.then(|| (Arc::downgrade(self), addr, sender));
            http_body_util::BodyExt::boxed(Returning { inner, back })
        })
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Body>, SendError> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(SendError::Connect(format!("connecting: {e}"))),
        Err(_) => {
            return Err(SendError::Connect(format!("connecting: no answer within {CONNECT_TIMEOUT:?}")));
        }
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| SendError::Connect(format!("handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::trace!(%addr, error = %e, "Upstream connection ended.");
        }
    });
    Ok(sender)
}

/// A response body that returns its connection to the pool once read to the end.
struct Returning {
    inner: Incoming,
    back: Option<(Weak<Http1Pool>, SocketAddr, SendRequest<Body>)>,
}

impl Returning {
    fn give_back(&mut self) {
        if let Some((pool, addr, sender)) = self.back.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.put_back(addr, sender);
        }
    }
}

impl hyper::body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        // A body that ends without being polled to `None` (empty, or its length reached).
        if hyper::body::Body::is_end_stream(&self.inner) {
            self.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A raw HTTP/1.1 server answering each request with "ok"; it closes a connection after
    /// each answer when `close_after_each` (as an instance whose idle timeout expired would).
    async fn server(close_after_each: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let counted = accepts.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let Ok(n) = s.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                            if close_after_each {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepts)
    }

    async fn get(pool: &Arc<Http1Pool>, addr: SocketAddr) -> Result<String, String> {
        let req = Request::builder()
            .uri("/")
            .header("host", "test")
            .body(Empty::<Bytes>::new().map_err(|n| match n {}).boxed())
            .unwrap();
        let resp = pool.send(addr, req).await.map_err(|e| match e {
            SendError::Connect(e) => e,
            SendError::Http(e) => e.to_string(),
        })?;
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (addr, accepts) = server(false).await;
        let pool = Http1Pool::new();
        for _ in 0..5 {
            assert_eq!(get(&pool, addr).await.unwrap(), "ok");
        }
        assert_eq!(accepts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced_without_failing_the_request() {
        let (addr, accepts) = server(true).await;
        let pool = Http1Pool::new();
        for _ in 0..5 {
            assert_eq!(get(&pool, addr).await.unwrap(), "ok");
        }
        assert_eq!(accepts.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let pool = Http1Pool::new();
        let req = Request::builder()
            .uri("/")
            .header("host", "x")
            .body(Empty::<Bytes>::new().map_err(|n| match n {}).boxed())
            .unwrap();
        assert!(matches!(pool.send(addr, req).await, Err(SendError::Connect(_))));
    }
}
