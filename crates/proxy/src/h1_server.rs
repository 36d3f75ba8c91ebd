//! The service port's connection loop for HTTP/1.1 requests with a known, small body — what
//! services send each other nearly always. The loop parses with the lean codec in `h1.rs`,
//! hands each request to the proxy and writes the answer itself, so a request costs no
//! connection state machine, body channel or extra wake-up. The first request it does not take
//! on (HTTP/2, HTTP/1.0, upgrades, `Expect`, chunked or large uploads, `CONNECT`) hands the
//! connection, with everything read so far, to hyper for the rest of its life.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Body as _;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::forward::{Body, Downstream, Proxy, RETRY_BUFFER_BYTES};
use crate::h1::{self, Framing, PassedFields};

/// The start of the HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Largest buffer a connection keeps between requests.
const KEPT_BUFFER: usize = 64 * 1024;
/// What a connection's response buffer starts with: a small answer's head and body; it grows
/// for larger ones.
const OUT_BUFFER: usize = 2 * 1024;
/// Response bytes gathered before they are written even though more are ready.
const WRITE_BATCH: usize = 64 * 1024;

/// A connection for hyper to serve from here on: its socket and the bytes already read.
pub(crate) struct Handoff {
    pub stream: TcpStream,
    pub read: Bytes,
}

/// Serves requests on `stream` until it closes, or returns it to be served by hyper.
pub(crate) async fn serve(mut stream: TcpStream, proxy: &Proxy, client: &Downstream) -> Option<Handoff> {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(OUT_BUFFER);
    loop {
        // A whole request head, or the reason not to read one here.
        let head = loop {
            let preface = buf.len().min(H2_PREFACE.len());
            if preface > 0 && buf[..preface] == H2_PREFACE[..preface] {
                if preface == H2_PREFACE.len() {
                    return Some(Handoff { stream, read: buf.freeze() });
                }
            } else {
                match h1::parse_request(&mut buf) {
                    Ok(Some(parsed)) => break parsed,
                    Ok(None) => {}
                    Err(e) => {
                        let status = if e == h1::HEAD_TOO_LARGE || e == h1::TOO_MANY_FIELDS {
                            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                        } else {
                            StatusCode::BAD_REQUEST
                        };
                        let _ = write_refusal(&mut stream, status, e.0).await;
                        return None;
                    }
                }
            }
            if fill(&mut stream, &mut buf).await.ok()? == 0 {
                return None;
            }
        };
        let body_len = match inline_body_len(&head) {
            Some(n) => n,
            None => {
                // hyper reads the head again, then what followed it.
                let mut read = BytesMut::with_capacity(head.raw.len() + buf.len());
                read.extend_from_slice(&head.raw);
                read.extend_from_slice(&buf);
                return Some(Handoff { stream, read: read.freeze() });
            }
        };
        while buf.len() < body_len {
            if fill(&mut stream, &mut buf).await.ok()? == 0 {
                return None;
            }
        }
        let body = buf.split_to(body_len).freeze();
        let close = head.framing.close;
        let method = head.method.clone();
        let mut req = Request::new(if body.is_empty() {
            Empty::new().map_err(|n| match n {}).boxed()
        } else {
            Full::new(body).map_err(|n| match n {}).boxed()
        });
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = head.headers;

        // The answer; a client that goes away meanwhile cancels the request, as with hyper.
        let mut handling = std::pin::pin!(proxy.handle_passing(req, client, head.present));
        let resp = loop {
            if buf.len() >= h1::MAX_HEAD {
                break handling.await;
            }
            tokio::select! {
                biased;
                resp = &mut handling => break resp,
                read = fill(&mut stream, &mut buf) => {
                    if read.ok()? == 0 {
                        return None;
                    }
                }
            }
        };
        if !write_response(&mut stream, &mut out, resp, &method, close).await.ok()? || close {
            return None;
        }
        // Idle connections keep small buffers, whatever the last exchange needed.
        if out.capacity() > KEPT_BUFFER {
            out = Vec::with_capacity(OUT_BUFFER);
        }
        if buf.is_empty() && buf.capacity() > KEPT_BUFFER {
            buf = BytesMut::with_capacity(8 * 1024);
        }
    }
}

/// The body length of a request this loop takes on: HTTP/1.1, no transfer coding, upgrade or
/// `Expect`, and a body small enough to be kept for a resend. `None` for anything else.
fn inline_body_len(head: &h1::RequestHead) -> Option<usize> {
    let f = &head.framing;
    if head.version != Version::HTTP_11
        || head.method == Method::CONNECT
        || f.transfer_encoding
        || f.upgrade
        || f.expect
    {
        return None;
    }
    match f.length {
        Ok(None) => Some(0),
        Ok(Some(n)) if n <= RETRY_BUFFER_BYTES => Some(n as usize),
        _ => None,
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    std::future::poll_fn(|cx| h1::poll_fill(stream, cx, buf)).await
}

/// Writes `resp`, gathering its frames into as few writes as they allow: bytes are written
/// when the body has nothing more ready, so streamed answers reach the client as they come.
/// Returns whether the connection can carry another request.
async fn write_response(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    (resp, passed): (Response<Body>, Option<PassedFields>),
    method: &Method,
    close: bool,
) -> io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    let bodyless = h1::bodyless(method, parts.status);
    let framing = if bodyless {
        Framing::Empty
    } else {
        match body.size_hint().exact() {
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        }
    };
    out.clear();
    h1::encode_response_head(parts.status, passed.as_ref(), &parts.headers, framing, close, out);
    if bodyless {
        stream.write_all(out).await?;
        return Ok(true);
    }
    let mut sent: u64 = 0;
    loop {
        let frame = match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                stream.write_all(out).await?;
                out.clear();
                body.frame().await
            }
        };
        match frame {
            None => break,
            Some(Err(e)) => {
                // The answer cannot be completed; closing tells the client it is cut short.
                stream.write_all(out).await?;
                tracing::debug!(error = %e, "Response body failed; closing the client connection.");
                return Ok(false);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    sent += data.len() as u64;
                    match framing {
                        Framing::Chunked => h1::encode_chunk(&data, out),
                        _ => out.extend_from_slice(&data),
                    }
                }
                Err(frame) => {
                    if framing == Framing::Chunked
                        && let Ok(trailers) = frame.into_trailers()
                    {
                        h1::encode_last_chunk(Some(&trailers), out);
                        stream.write_all(out).await?;
                        return Ok(true);
                    }
                }
            },
        }
        if out.len() >= WRITE_BATCH {
            stream.write_all(out).await?;
            out.clear();
        }
    }
    if framing == Framing::Chunked {
        h1::encode_last_chunk(None, out);
    }
    stream.write_all(out).await?;
    // A body shorter or longer than its length leaves the client unable to find the next answer.
    Ok(match framing {
        Framing::Length(n) => sent == n,
        _ => true,
    })
}

/// Answers a request that cannot be read, then the connection is closed.
async fn write_refusal(stream: &mut TcpStream, status: StatusCode, message: &str) -> io::Result<()> {
    let body = serde_json::json!({"error": message, "source": "yun"}).to_string();
    let mut headers = hyper::HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut out = Vec::new();
    h1::encode_response_head(status, None, &headers, Framing::Length(body.len() as u64), true, &mut out);
    out.extend_from_slice(body.as_bytes());
    stream.write_all(&out).await?;
    stream.shutdown().await
}

/// A socket whose first bytes were already read.
pub(crate) struct Prefixed {
    read: Bytes,
    stream: TcpStream,
}

impl From<Handoff> for Prefixed {
    fn from(h: Handoff) -> Prefixed {
        Prefixed { read: h.read, stream: h.stream }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
