//! HTTP/1.1 connections to instances, pooled per address and given back when a response body
//! ends. Requests whose body is in memory (nearly all: the proxy buffers small bodies so it can
//! resend them) go over inline connections: this task writes head and body in one write and
//! reads the answer itself with the lean codec in `h1.rs` — no connection task, no channels.
//! Streamed bodies and upgrades go over connections driven by hyper's connection API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderMap, HeaderName};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::forward::{Body, BoxError};
use crate::h1;
use yun_telemetry::quick_hash::QuickHashing;

/// How long connecting to an instance may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections are closed between one and one and a half of this after their last use:
/// a purge runs every half of it and counts rounds, so giving a connection back reads no clock.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Purge rounds an idle connection survives.
const IDLE_ROUNDS: u64 = 3;
/// Idle connections kept per instance; more are closed when they come back.
const MAX_IDLE_PER_ADDR: usize = 512;

/// Largest write buffer an idle connection keeps.
const KEPT_BUFFER: usize = 16 * 1024;

/// Why a request could not be sent or answered.
pub(crate) enum SendError {
    /// No connection could be made: the request never left.
    Connect(String),
    /// The connection failed while the request was sent or the answer read.
    Http(hyper::Error),
    /// The same, on an inline connection.
    Broken(String),
}

/// A connection this task drives itself, with what it has read past the last message and a
/// buffer for the next request it writes.
struct RawConn {
    stream: TcpStream,
    buf: BytesMut,
    wire: Vec<u8>,
}

struct IdleRaw {
    conn: RawConn,
    /// The pool's purge round when it became idle.
    since_round: u64,
}

struct Idle {
    sender: SendRequest<Body>,
    since_round: u64,
}

/// Idle connections by instance address.
#[derive(Default)]
pub(crate) struct Http1Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>, QuickHashing>>,
    raw: Mutex<HashMap<SocketAddr, Vec<IdleRaw>, QuickHashing>>,
    /// Purge rounds so far, one every half idle timeout.
    round: AtomicU64,
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
                pool.purge();
            }
        });
        pool
    }

    fn purge(&self) {
        let round = self.round.fetch_add(1, Ordering::Relaxed) + 1;
        let Ok(mut idle) = self.idle.lock() else { return };
        idle.retain(|_, conns| {
            conns.retain(|c| round - c.since_round < IDLE_ROUNDS && !c.sender.is_closed());
            !conns.is_empty()
        });
        drop(idle);
        let Ok(mut raw) = self.raw.lock() else { return };
        raw.retain(|_, conns| {
            conns.retain(|c| round - c.since_round < IDLE_ROUNDS && still_open(&c.conn.stream));
            !conns.is_empty()
        });
    }

    /// Sends a request whose body is in memory over an inline connection: the head (origin
    /// form, `Host` set from `authority` when missing) and body in one write, then the answer's
    /// head read here; its body is read as the caller polls it. A reused connection that the
    /// instance had closed is replaced, and the request sent again when nothing was sent or the
    /// method is idempotent. With `pass`, the answer's fields come back as [`h1::PassedFields`]
    /// (and the response's map holds none) unless one of `pass` is among them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send_whole(
        self: &Arc<Self>,
        addr: SocketAddr,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        authority: &str,
        body: &Bytes,
        pass: Option<&[HeaderName]>,
    ) -> Result<(Response<Body>, Option<h1::PassedFields>), SendError> {
        loop {
            let (mut conn, reused) = match self.checkout_raw(addr) {
                Some(c) => (c, true),
                None => (connect_raw(addr).await?, false),
            };
            conn.wire.clear();
            h1::encode_request_head(method, uri, headers, authority, body.len(), &mut conn.wire);
            conn.wire.extend_from_slice(body);
            let written = conn.stream.write_all(&conn.wire).await;
            if conn.wire.capacity() > KEPT_BUFFER {
                // A large body's buffer is not kept for the idle connection.
                conn.wire = Vec::new();
            }
            if let Err(e) = written {
                if reused {
                    continue;
                }
                return Err(SendError::Broken(format!("sending the request: {e}")));
            }
            match read_head(&mut conn).await {
                Ok(head) => {
                    // A length that cannot be trusted leaves no way to find where the body
                    // ends (RFC 9112 §6.3): the answer is unusable.
                    let framing = h1::response_framing(method, &head)
                        .map_err(|e| SendError::Broken(format!("invalid response: {e}")))?;
                    let keep_length = h1::bodyless(method, head.status);
                    return self
                        .respond(addr, conn, framing, head, pass.map(|p| (keep_length, p)))
                        .map_err(|e| SendError::Broken(format!("invalid response: {e}")));
                }
                Err(Unanswered::Closed) if reused && idempotent(method) => continue,
                Err(Unanswered::Closed) => {
                    return Err(SendError::Broken("connection closed before an answer".into()));
                }
                Err(Unanswered::Failed(e)) => return Err(SendError::Broken(e)),
            }
        }
    }

    fn checkout_raw(&self, addr: SocketAddr) -> Option<RawConn> {
        let mut map = self.raw.lock().ok()?;
        let conns = map.get_mut(&addr)?;
        while let Some(c) = conns.pop() {
            if still_open(&c.conn.stream) {
                return Some(c.conn);
            }
        }
        map.remove(&addr);
        None
    }

    fn put_back_raw(&self, addr: SocketAddr, conn: RawConn) {
        let Ok(mut map) = self.raw.lock() else { return };
        let conns = map.entry(addr).or_default();
        if conns.len() < MAX_IDLE_PER_ADDR {
            conns.push(IdleRaw { conn, since_round: self.round.load(Ordering::Relaxed) });
        }
    }

    /// The response with a body read from `conn`, which goes back to the pool when the body
    /// ends if the connection can carry another exchange; its fields passed as they are when
    /// `pass` allows (whether to keep the length, and the fields that need a map).
    fn respond(
        self: &Arc<Self>,
        addr: SocketAddr,
        conn: RawConn,
        framing: h1::Framing,
        head: h1::ResponseHead,
        pass: Option<(bool, &[HeaderName])>,
    ) -> Result<(Response<Body>, Option<h1::PassedFields>), h1::Invalid> {
        let reusable = head.version == Version::HTTP_11 && framing != h1::Framing::Close && !head.closes();
        let mut body = RawBody {
            decoder: h1::BodyDecoder::new(framing),
            conn: Some(conn),
            back: reusable.then(|| (Arc::downgrade(self), addr)),
        };
        if body.decoder.is_done() {
            body.give_back();
        }
        let mut resp = Response::new(body.boxed());
        *resp.status_mut() = head.status;
        let head = match pass {
            Some((keep_length, read_by_proxy)) => match head.passed(keep_length, read_by_proxy) {
                Ok(passed) => return Ok((resp, Some(passed))),
                Err(head) => head,
            },
            None => head,
        };
        *resp.headers_mut() = head.header_map()?;
        Ok((resp, None))
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
            conns.push(Idle { sender, since_round: self.round.load(Ordering::Relaxed) });
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

async fn open(addr: SocketAddr) -> Result<TcpStream, SendError> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(SendError::Connect(format!("connecting: {e}"))),
        Err(_) => {
            return Err(SendError::Connect(format!("connecting: no answer within {CONNECT_TIMEOUT:?}")));
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn connect_raw(addr: SocketAddr) -> Result<RawConn, SendError> {
    Ok(RawConn {
        stream: open(addr).await?,
        buf: BytesMut::with_capacity(8 * 1024),
        wire: Vec::with_capacity(1024),
    })
}

/// Whether an idle connection is still open, without a system call when nothing arrived on
/// it: the reactor marks it readable when the instance closes it (or sends something it
/// should not have, which also disqualifies it).
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Ok(())) => {
            matches!(stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
        Poll::Ready(Err(_)) => false,
    }
}

/// Why no response head was read.
enum Unanswered {
    /// The connection closed before a single byte of an answer.
    Closed,
    /// Anything else.
    Failed(String),
}

/// Reads the final response head (informational 1xx answers are skipped).
async fn read_head(conn: &mut RawConn) -> Result<h1::ResponseHead, Unanswered> {
    let mut received = false;
    loop {
        match h1::parse_response(&mut conn.buf) {
            Ok(Some(head)) => match head.status.as_u16() {
                101 => return Err(Unanswered::Failed("unexpected 101 Switching Protocols".into())),
                100..=199 => continue,
                _ => return Ok(head),
            },
            Ok(None) => {}
            Err(e) => return Err(Unanswered::Failed(format!("invalid response: {e}"))),
        }
        let n = std::future::poll_fn(|cx| h1::poll_fill(&mut conn.stream, cx, &mut conn.buf)).await.map_err(
            |e| {
                if received {
                    Unanswered::Failed(format!("reading the response: {e}"))
                } else {
                    Unanswered::Closed
                }
            },
        )?;
        if n == 0 {
            return Err(if received || !conn.buf.is_empty() {
                Unanswered::Failed("connection closed in the middle of the response head".into())
            } else {
                Unanswered::Closed
            });
        }
        received = true;
    }
}

/// Methods whose request may be sent again without changing what it does.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// A response body read from an inline connection by whoever polls it; the connection goes
/// back to the pool as soon as the body is complete.
struct RawBody {
    decoder: h1::BodyDecoder,
    conn: Option<RawConn>,
    back: Option<(Weak<Http1Pool>, SocketAddr)>,
}

impl RawBody {
    fn give_back(&mut self) {
        let conn = self.conn.take();
        if let (Some(conn), Some((pool, addr))) = (conn, self.back.take())
            && conn.buf.is_empty()
            && let Some(pool) = pool.upgrade()
        {
            pool.put_back_raw(addr, conn);
        }
    }
}

impl hyper::body::Body for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
        match h1::poll_body(&mut this.decoder, &mut conn.stream, &mut conn.buf, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(frame)) => {
                if this.decoder.is_done() {
                    this.give_back();
                }
                Poll::Ready(frame.map(Ok))
            }
            Poll::Ready(Err(e)) => {
                this.conn = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Body>, SendError> {
    let stream = open(addr).await?;
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
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled.map_err(Into::into)
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
            SendError::Connect(e) | SendError::Broken(e) => e,
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

    async fn get_whole(pool: &Arc<Http1Pool>, addr: SocketAddr, method: Method) -> Result<String, String> {
        let uri: Uri = "/".parse().unwrap();
        let (resp, _) = pool
            .send_whole(addr, &method, &uri, &HeaderMap::new(), "test", &Bytes::new(), None)
            .await
            .map_err(|e| match e {
                SendError::Connect(e) | SendError::Broken(e) => e,
                SendError::Http(e) => e.to_string(),
            })?;
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn inline_connections_are_reused_and_replaced_when_closed() {
        let (addr, accepts) = server(false).await;
        let pool = Http1Pool::new();
        for _ in 0..5 {
            assert_eq!(get_whole(&pool, addr, Method::GET).await.unwrap(), "ok");
        }
        assert_eq!(accepts.load(Ordering::SeqCst), 1);

        let (addr, accepts) = server(true).await;
        for _ in 0..5 {
            assert_eq!(get_whole(&pool, addr, Method::POST).await.unwrap(), "ok");
        }
        assert_eq!(accepts.load(Ordering::SeqCst), 5);
    }

    /// A server that answers every connection with `answer`, then closes it.
    async fn answering(answer: &'static [u8]) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(answer).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn inline_answers_are_decoded_or_refused() {
        let pool = Http1Pool::new();
        let chunked = answering(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n1\r\n!\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(get_whole(&pool, chunked, Method::GET).await.unwrap(), "ok!");
        let until_close = answering(b"HTTP/1.1 200 OK\r\n\r\nall of it").await;
        assert_eq!(get_whole(&pool, until_close, Method::GET).await.unwrap(), "all of it");
        for garbage in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
            b"",
        ] {
            let addr = answering(garbage).await;
            assert!(
                get_whole(&pool, addr, Method::GET).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(garbage)
            );
        }
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
