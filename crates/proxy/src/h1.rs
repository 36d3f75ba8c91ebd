//! A lean HTTP/1.1 codec for the data plane's common case: a request whose body is known and
//! small, answered by a response that is streamed back. The service port's connection loop
//! (`h1_server.rs`) and the upstream client (`upstream.rs`) use it instead of hyper's general
//! connection machinery, which costs a task, channels and wake-ups per request. Everything else
//! (HTTP/2, upgrades, streamed or chunked uploads, HTTP/1.0, `Expect`) still goes through hyper.
//!
//! Messages are read into `http` types, so policies, metrics and tracing see one representation
//! whichever way a request came in.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::Frame;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode, Uri, Version};
use smallvec::SmallVec;
use tokio::io::AsyncRead;

use crate::HOP_HEADER;
use crate::forward::Present;

/// Largest message head (request or response line plus headers) read.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in one message head (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// Room made for a read when a buffer has less than a quarter of it spare. Every connection
/// keeps a buffer this size between messages, so it is kept small (nginx's proxy buffer is a
/// memory page or two); a large body grows its buffer as it comes.
const READ_CHUNK: usize = 8 * 1024;

/// A message that is not valid HTTP/1.1 or not acceptable here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid(pub &'static str);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Invalid {}

/// A request head over [`MAX_HEAD`] bytes.
pub(crate) const HEAD_TOO_LARGE: Invalid = Invalid("request head too large");
/// A request head with more than [`MAX_HEADERS`] fields.
pub(crate) const TOO_MANY_FIELDS: Invalid = Invalid("too many header fields");

/// Reads what the socket has into `buf`; `Ok(0)` is the end of the stream.
pub(crate) fn poll_fill<R: AsyncRead + Unpin>(
    io: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// A parsed request head.
pub(crate) struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    /// The head as received; the target and field values share its bytes.
    pub raw: Bytes,
    /// What its fields say about the message and the connection, read while parsing.
    pub framing: RequestFraming,
    /// Which of the fields the proxy looks up are there.
    pub present: Present,
}

/// What a request's fields say about how its body is delimited and what it asks of the
/// connection, so that no one looks these up in the map again.
#[derive(Debug, PartialEq)]
pub(crate) struct RequestFraming {
    /// `Content-Length`: none, one length (repeated equal values count as one), or invalid.
    pub length: Result<Option<u64>, Invalid>,
    pub transfer_encoding: bool,
    pub upgrade: bool,
    pub expect: bool,
    /// `Connection` lists `close`.
    pub close: bool,
}

impl RequestFraming {
    fn read<'a>(fields: impl Iterator<Item = (FieldKind, &'a [u8])> + Clone) -> RequestFraming {
        let values = |kind: FieldKind| fields.clone().filter(move |(k, _)| *k == kind).map(|(_, v)| v);
        let has = |kind: FieldKind| values(kind).next().is_some();
        RequestFraming {
            length: length_of(values(FieldKind::ContentLength)),
            transfer_encoding: has(FieldKind::TransferEncoding),
            upgrade: has(FieldKind::Upgrade),
            expect: has(FieldKind::Expect),
            close: lists_token(values(FieldKind::Connection), "close"),
        }
    }
}

/// Which of the fields the proxy looks up are among `kinds`.
fn present(kinds: impl Iterator<Item = FieldKind>) -> Present {
    let mut p = Present::default();
    for kind in kinds {
        match kind {
            FieldKind::YunHop => p.hop = true,
            FieldKind::TraceParent => p.traceparent = true,
            FieldKind::TraceState => p.tracestate = true,
            k => p.hop_by_hop |= k.hop_by_hop(),
        }
    }
    p
}

/// Where a field's name and value lie in a head (start and end of each; heads are at most
/// [`MAX_HEAD`] bytes).
type FieldSpan = (u32, u32, u32, u32);
/// A request's field spans with what each is: on the stack for the usual few fields, and never
/// zeroed first (a zeroed array for [`MAX_HEADERS`] fields cost more than the parse).
type FieldSpans = SmallVec<[(FieldSpan, FieldKind); 32]>;

/// Room for the fields of one head, left uninitialised: httparse fills what it parses.
fn field_slots<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Takes a request head off the front of `buf`: `None` (and `buf` untouched) while it is
/// incomplete. Field values and the target are slices of the head, not copies.
pub(crate) fn parse_request(buf: &mut BytesMut) -> Result<Option<RequestHead>, Invalid> {
    let mut fields = field_slots();
    // Filled where it lies: moving it would copy all its room.
    let mut spans = FieldSpans::new();
    let (len, method, target, version) = {
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(HEAD_TOO_LARGE),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(TOO_MANY_FIELDS),
            Err(_) => return Err(Invalid("malformed request head")),
        };
        if len > MAX_HEAD {
            return Err(HEAD_TOO_LARGE);
        }
        let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
            .map_err(|_| Invalid("invalid method"))?;
        let target = span(buf, req.path.unwrap_or_default().as_bytes())?;
        let version = if req.version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };
        for f in field_spans(buf, req.headers) {
            let f = f?;
            spans.push((f, FieldKind::of(&buf[f.0 as usize..f.1 as usize])));
        }
        (len, method, target, version)
    };
    let raw = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(raw.slice(target.0..target.1))
        .map_err(|_| Invalid("invalid request target"))?;
    let framing = RequestFraming::read(spans.iter().map(|(f, k)| (*k, &raw[f.2 as usize..f.3 as usize])));
    let present = present(spans.iter().map(|(_, k)| *k));
    let headers = shared_header_map(&raw, spans.iter().map(|(f, _)| *f), REQUEST_FIELDS_ADDED)?;
    Ok(Some(RequestHead { method, uri, version, headers, raw, framing, present }))
}

/// The fields that belong to one connection (RFC 9110 §7.6.1); never passed on.
pub(crate) static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// A parsed response head. Its fields stay where they arrived until they are wanted as a map,
/// or are passed on as they are.
pub(crate) struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    raw: Bytes,
    /// Each field, with what it is to the proxy (found once).
    fields: Vec<(FieldSpan, FieldKind)>,
}

/// What a field is to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldKind {
    Other,
    Date,
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    Expect,
    /// Any other field of [`HOP_BY_HOP`].
    HopByHop,
    /// [`HOP_HEADER`].
    YunHop,
    TraceParent,
    TraceState,
}

impl FieldKind {
    fn of(name: &[u8]) -> FieldKind {
        let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
        match name.len() {
            2 if is("te") => FieldKind::HopByHop,
            4 if is("date") => FieldKind::Date,
            6 if is("expect") => FieldKind::Expect,
            7 if is("upgrade") => FieldKind::Upgrade,
            7 if is("trailer") => FieldKind::HopByHop,
            9 if is(HOP_HEADER) => FieldKind::YunHop,
            10 if is("connection") => FieldKind::Connection,
            10 if is("keep-alive") => FieldKind::HopByHop,
            10 if is("tracestate") => FieldKind::TraceState,
            11 if is("traceparent") => FieldKind::TraceParent,
            14 if is("content-length") => FieldKind::ContentLength,
            16 if is("proxy-connection") => FieldKind::HopByHop,
            17 if is("transfer-encoding") => FieldKind::TransferEncoding,
            18 if is("proxy-authenticate") => FieldKind::HopByHop,
            19 if is("proxy-authorization") => FieldKind::HopByHop,
            _ => FieldKind::Other,
        }
    }

    fn hop_by_hop(self) -> bool {
        matches!(
            self,
            FieldKind::Connection | FieldKind::TransferEncoding | FieldKind::Upgrade | FieldKind::HopByHop
        )
    }
}

impl ResponseHead {
    /// The values of the fields of `kind`, in order.
    fn values(&self, kind: FieldKind) -> impl DoubleEndedIterator<Item = &[u8]> + '_ {
        self.fields
            .iter()
            .filter(move |(_, k)| *k == kind)
            .map(|(f, _)| &self.raw[f.2 as usize..f.3 as usize])
    }

    /// The fields as a map, with room for the ones the proxy adds.
    pub(crate) fn header_map(&self) -> Result<HeaderMap, Invalid> {
        shared_header_map(&self.raw, self.fields.iter().map(|(f, _)| *f), RESPONSE_FIELDS_ADDED)
    }

    /// Whether `Connection` lists `close`.
    pub(crate) fn closes(&self) -> bool {
        lists_token(self.values(FieldKind::Connection), "close")
    }

    /// The fields to pass to the client as they arrived: all but the hop-by-hop and framing
    /// ones, `Content-Length` kept when `keep_length` (see [`write_fields`]). The head comes
    /// back when it needs the general path: `Connection` names other fields, or a field is
    /// one of `read_by_proxy`.
    pub(crate) fn passed(
        self,
        keep_length: bool,
        read_by_proxy: &[HeaderName],
    ) -> Result<PassedFields, Self> {
        let read = self.fields.iter().any(|(f, k)| {
            let name = &self.raw[f.0 as usize..f.1 as usize];
            *k == FieldKind::Other
                && read_by_proxy.iter().any(|n| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
        });
        let only_standard = self
            .values(FieldKind::Connection)
            .flat_map(|v| v.split(|b| *b == b','))
            .map(|t| t.trim_ascii())
            .all(|t| t.is_empty() || FieldKind::of(t).hop_by_hop());
        if read || !only_standard {
            return Err(self);
        }
        let has_date = self.fields.iter().any(|(_, k)| *k == FieldKind::Date);
        let mut fields = self.fields;
        fields.retain(|(_, k)| match k {
            FieldKind::ContentLength => keep_length,
            k => !k.hop_by_hop(),
        });
        Ok(PassedFields { raw: self.raw, fields, has_date, added: None })
    }
}

/// Response fields passed to the client as received, with no map built or taken apart; see
/// [`ResponseHead::passed`].
pub(crate) struct PassedFields {
    raw: Bytes,
    fields: Vec<(FieldSpan, FieldKind)>,
    has_date: bool,
    /// A field the proxy adds, written after them: the response's map then stays empty (a
    /// map allocates on its first field).
    added: Option<(HeaderName, HeaderValue)>,
}

impl PassedFields {
    /// Adds `name: value` after the passed fields (once: a second call replaces the first).
    pub(crate) fn add(&mut self, name: HeaderName, value: HeaderValue) {
        self.added = Some((name, value));
    }

    fn write(&self, out: &mut Vec<u8>) {
        for &((ns, ne, vs, ve), _) in &self.fields {
            out.extend_from_slice(&self.raw[ns as usize..ne as usize]);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&self.raw[vs as usize..ve as usize]);
            out.extend_from_slice(b"\r\n");
        }
        if let Some((name, value)) = &self.added {
            write_field(name, value, out);
        }
    }
}

/// Takes a response head off the front of `buf`: `None` (and `buf` untouched) while it is
/// incomplete. Field values are slices of the head, not copies.
pub(crate) fn parse_response(buf: &mut BytesMut) -> Result<Option<ResponseHead>, Invalid> {
    let mut fields = field_slots();
    let (len, code, version, classified) = {
        let mut resp = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(Invalid("response head too large"));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Invalid("too many header fields in the response"));
            }
            Err(_) => return Err(Invalid("malformed response head")),
        };
        let version = if resp.version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };
        let mut classified = Vec::with_capacity(resp.headers.len());
        for f in field_spans(buf, resp.headers) {
            let f = f?;
            classified.push((f, FieldKind::of(&buf[f.0 as usize..f.1 as usize])));
        }
        (len, resp.code.unwrap_or_default(), version, classified)
    };
    let raw = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| Invalid("invalid status code"))?;
    Ok(Some(ResponseHead { status, version, raw, fields: classified }))
}

/// The range `part` takes within `base`.
fn span(base: &[u8], part: &[u8]) -> Result<(usize, usize), Invalid> {
    let start = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
    if part.is_empty() {
        return Ok((0, 0));
    }
    match start.checked_add(part.len()) {
        Some(end) if end <= base.len() => Ok((start, end)),
        _ => Err(Invalid("malformed head")),
    }
}

/// Where each of `fields` lies in `base`.
fn field_spans<'a>(
    base: &'a [u8],
    fields: &'a [httparse::Header<'_>],
) -> impl Iterator<Item = Result<FieldSpan, Invalid>> + 'a {
    let offset = |n: usize| u32::try_from(n).map_err(|_| Invalid("malformed head"));
    fields.iter().map(move |f| {
        let (ns, ne) = span(base, f.name.as_bytes())?;
        let (vs, ve) = span(base, f.value)?;
        Ok((offset(ns)?, offset(ne)?, offset(vs)?, offset(ve)?))
    })
}

/// Room for the fields the proxy adds to a request (caller, forwarded-for, trace context), so
/// the map does not grow on the way. More would push a small request's map past the size
/// glibc serves from its per-thread cache.
const REQUEST_FIELDS_ADDED: usize = 3;
/// The same for a response (trace response, retries).
const RESPONSE_FIELDS_ADDED: usize = 2;

/// The map of the fields at `spans` in `head`, with room for `extra` more.
fn shared_header_map(
    head: &Bytes,
    spans: impl ExactSizeIterator<Item = FieldSpan>,
    extra: usize,
) -> Result<HeaderMap, Invalid> {
    let mut map = HeaderMap::with_capacity(spans.len() + extra);
    for (ns, ne, vs, ve) in spans {
        let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
        let name = HeaderName::from_bytes(&head[ns..ne]).map_err(|_| Invalid("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| Invalid("invalid header value"))?;
        map.append(name, value);
    }
    Ok(map)
}

fn header_map(fields: &[httparse::Header<'_>]) -> Result<HeaderMap, Invalid> {
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| Invalid("invalid header name"))?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| Invalid("invalid header value"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the connection closes.
    Close,
}

/// The single value of `Content-Length`; repeated equal values count as one, differing ones or
/// a non-number are invalid.
fn length_of<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<u64>, Invalid> {
    let mut found: Option<u64> = None;
    for v in values {
        for part in std::str::from_utf8(v).map_err(|_| Invalid("invalid content-length"))?.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Invalid("invalid content-length"));
            }
            let n: u64 = part.parse().map_err(|_| Invalid("invalid content-length"))?;
            if found.is_some_and(|f| f != n) {
                return Err(Invalid("conflicting content-length values"));
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// Whether the last transfer coding is `chunked`.
fn chunked<'a>(mut codings: impl DoubleEndedIterator<Item = &'a [u8]>) -> bool {
    codings
        .next_back()
        .and_then(|v| v.rsplit(|b| *b == b',').next())
        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Whether a response with `status` to `method` has no body, whatever its fields say.
pub(crate) fn bodyless(method: &Method, status: StatusCode) -> bool {
    let s = status.as_u16();
    *method == Method::HEAD || (100..200).contains(&s) || s == 204 || s == 304
}

/// How the body of a response to `method` is delimited.
pub(crate) fn response_framing(method: &Method, head: &ResponseHead) -> Result<Framing, Invalid> {
    if bodyless(method, head.status) {
        return Ok(Framing::Empty);
    }
    let mut codings = head.values(FieldKind::TransferEncoding).peekable();
    if codings.peek().is_some() {
        return Ok(if chunked(codings) { Framing::Chunked } else { Framing::Close });
    }
    Ok(match length_of(head.values(FieldKind::ContentLength))? {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

fn lists_token<'a>(values: impl Iterator<Item = &'a [u8]>, token: &str) -> bool {
    values
        .flat_map(|v| v.split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Appends `name: value\r\n` for every field except the framing ones, which the writer of a
/// message decides — but `Content-Length` is kept when `keep_length` (the answer to HEAD, or a
/// 304, tells the length of what GET would send).
fn write_fields(headers: &HeaderMap, keep_length: bool, out: &mut Vec<u8>) {
    for (name, value) in headers {
        if (name == header::CONTENT_LENGTH && !keep_length) || name == header::TRANSFER_ENCODING {
            continue;
        }
        write_field(name, value, out);
    }
}

fn write_field(name: &HeaderName, value: &HeaderValue, out: &mut Vec<u8>) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes a request head for an instance: origin-form target, HTTP/1.1, `Host` kept (or set to
/// `authority`), and `Content-Length` for a body of `body_len` bytes when there is a body or the
/// client sent a length. Framing fields of the client's are replaced.
pub(crate) fn encode_request_head(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    authority: &str,
    body_len: usize,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let fields_start = out.len();
    // One pass writes the fields and finds out whether `Host` and a length were among them.
    let (mut host, mut length) = (false, false);
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH {
            length = true;
        } else if name != header::TRANSFER_ENCODING {
            host |= name == header::HOST;
            write_field(name, value, out);
        }
    }
    if !host {
        // Rare (HTTP/1.1 requires it); put first, where it is expected.
        let line = [b"host: ", authority.as_bytes(), b"\r\n"].concat();
        out.splice(fields_start..fields_start, line);
    }
    if body_len > 0 || length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a response head. `framing` is how the body will be sent (`Length` adds the field,
/// `Chunked` the transfer coding, `Empty` — no body whatever the fields say — keeps a given
/// `Content-Length`); `close` announces that the connection ends after it.
pub(crate) fn encode_response_head(
    status: StatusCode,
    passed: Option<&PassedFields>,
    headers: &HeaderMap,
    framing: Framing,
    close: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(p) = passed {
        p.write(out);
    }
    write_fields(headers, framing == Framing::Empty, out);
    if !passed.is_some_and(|p| p.has_date) && !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::Close => {}
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes one chunk of chunked transfer coding.
pub(crate) fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Writes the last chunk, with trailer fields if any.
pub(crate) fn encode_last_chunk(trailers: Option<&HeaderMap>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n");
    if let Some(t) = trailers {
        write_fields(t, false, out);
    }
    out.extend_from_slice(b"\r\n");
}

/// Reads a body delimited by `framing` out of a connection's buffer, frame by frame.
#[derive(Debug)]
pub(crate) struct BodyDecoder {
    state: State,
}

#[derive(Debug)]
enum State {
    Length(u64),
    /// Before a chunk-size line.
    ChunkSize,
    /// Inside a chunk, with this many bytes left.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer fields after the last chunk.
    Trailers,
    Close,
    Done,
}

/// What decoding produced.
pub(crate) enum Decoded {
    /// A frame of the body.
    Frame(Frame<Bytes>),
    /// More bytes are needed.
    More,
    /// The body is complete.
    End,
}

impl BodyDecoder {
    pub(crate) fn new(framing: Framing) -> BodyDecoder {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        BodyDecoder { state }
    }

    /// Whether the body is complete.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Bytes still expected, when known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Decodes what `buf` holds; `eof` says the connection has closed (which ends a
    /// close-delimited body and cuts short any other).
    pub(crate) fn decode(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Decoded, Invalid> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(n) | State::ChunkData(n) if !buf.is_empty() => {
                    let take = (buf.len() as u64).min(n) as usize;
                    let data = buf.split_to(take).freeze();
                    let left = n - take as u64;
                    self.state = match self.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    return Ok(Decoded::Frame(Frame::data(data)));
                }
                State::Length(_) | State::ChunkData(_) => {
                    return if eof {
                        Err(Invalid("connection closed before the body ended"))
                    } else {
                        Ok(Decoded::More)
                    };
                }
                State::Close if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Ok(Decoded::Frame(Frame::data(data)));
                }
                State::Close => {
                    if eof {
                        self.state = State::Done;
                        return Ok(Decoded::End);
                    }
                    return Ok(Decoded::More);
                }
                State::ChunkSize => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE, "chunk size line too long")? else {
                        return more(eof);
                    };
                    let size = line[..].split(|b| *b == b';').next().unwrap_or_default();
                    let size = std::str::from_utf8(size).map_err(|_| Invalid("invalid chunk size"))?.trim();
                    if size.is_empty() || size.len() > 15 {
                        return Err(Invalid("invalid chunk size"));
                    }
                    let n = u64::from_str_radix(size, 16).map_err(|_| Invalid("invalid chunk size"))?;
                    self.state = if n == 0 { State::Trailers } else { State::ChunkData(n) };
                }
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return more(eof);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Invalid("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let Some(end) = find_blank_line(buf) else {
                        if buf.len() > MAX_HEAD {
                            return Err(Invalid("trailer fields too large"));
                        }
                        return more(eof);
                    };
                    let block = buf.split_to(end);
                    self.state = State::Done;
                    if block.len() == 2 {
                        return Ok(Decoded::End);
                    }
                    return Ok(Decoded::Frame(Frame::trailers(parse_trailers(&block)?)));
                }
            }
        }
    }
}

fn more(eof: bool) -> Result<Decoded, Invalid> {
    if eof { Err(Invalid("connection closed before the body ended")) } else { Ok(Decoded::More) }
}

/// Takes one CRLF-terminated line (without the CRLF) off the front of `buf`.
fn take_line(buf: &mut BytesMut, max: usize, too_long: &'static str) -> Result<Option<BytesMut>, Invalid> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(i) => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i);
            if line.last() == Some(&b'\r') {
                line.truncate(i - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > max => Err(Invalid(too_long)),
        None => Ok(None),
    }
}

/// The length of the trailer section up to and including its final empty line.
fn find_blank_line(buf: &[u8]) -> Option<usize> {
    if buf.starts_with(b"\r\n") {
        return Some(2);
    }
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn parse_trailers(block: &[u8]) -> Result<HeaderMap, Invalid> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(block, &mut fields) {
        Ok(httparse::Status::Complete((_, parsed))) => header_map(parsed),
        _ => Err(Invalid("malformed trailer fields")),
    }
}

/// Polls `decoder` over a connection: frames from the buffer first, then reads.
pub(crate) fn poll_body<R: AsyncRead + Unpin>(
    decoder: &mut BodyDecoder,
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<Result<Option<Frame<Bytes>>, crate::forward::BoxError>> {
    let mut eof = false;
    loop {
        match decoder.decode(buf, eof)? {
            Decoded::Frame(f) => return Poll::Ready(Ok(Some(f))),
            Decoded::End => return Poll::Ready(Ok(None)),
            Decoded::More => {
                let n = ready!(poll_fill(io, cx, buf))?;
                eof = n == 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(
        framing: Framing,
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>), Invalid> {
        let mut d = BodyDecoder::new(framing);
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut fed = 0;
        loop {
            match d.decode(&mut buf, fed >= wire.len())? {
                Decoded::Frame(f) => match f.into_data() {
                    Ok(b) => data.extend_from_slice(&b),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Decoded::End => return Ok((data, trailers)),
                Decoded::More => {
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\ngrpc-status: 0\r\nx-sum: 12\r\n\r\n";
        for step in [1, 2, 3, 7, 1000] {
            let (data, trailers) = decode_all(Framing::Chunked, wire, step).unwrap();
            assert_eq!(data, b"hello, world", "step {step}");
            let t = trailers.expect("trailers");
            assert_eq!(t["grpc-status"], "0");
            assert_eq!(t["x-sum"], "12");
        }
        let (data, trailers) = decode_all(Framing::Chunked, b"3\r\nabc\r\n0\r\n\r\n", 2).unwrap();
        assert_eq!((data.as_slice(), trailers), (&b"abc"[..], None));
    }

    #[test]
    fn bad_chunked_bodies_are_errors() {
        for wire in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"\r\n",
            b"ffffffffffffffffff\r\n",
            b"5\r\nhel",
            b"0\r\nbad trailer\r\n\r\n",
        ] {
            assert!(decode_all(Framing::Chunked, wire, 4).is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(decode_all(Framing::Chunked, &long, 100_000).is_err());
    }

    #[test]
    fn length_and_close_delimited_bodies() {
        assert_eq!(decode_all(Framing::Length(5), b"hello", 2).unwrap().0, b"hello");
        assert!(decode_all(Framing::Length(6), b"hello", 2).is_err(), "cut short");
        assert_eq!(decode_all(Framing::Close, b"until the end", 4).unwrap().0, b"until the end");
        assert_eq!(decode_all(Framing::Empty, b"", 4).unwrap().0, b"");
        // Bytes after a length-delimited body are left for the next message.
        let mut d = BodyDecoder::new(Framing::Length(2));
        let mut buf = BytesMut::from(&b"okHTTP/1.1"[..]);
        assert!(matches!(d.decode(&mut buf, false).unwrap(), Decoded::Frame(_)));
        assert!(d.is_done());
        assert_eq!(&buf[..], b"HTTP/1.1");
    }

    #[test]
    fn request_heads_parse_into_http_types() {
        let wire = b"POST /a/b?c=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\nbody";
        let mut buf = BytesMut::from(&wire[..]);
        let head = parse_request(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..], b"body", "the head is taken off the buffer");
        assert_eq!(head.raw.len(), wire.len() - "body".len());
        assert_eq!((head.method, head.version), (Method::POST, Version::HTTP_11));
        assert_eq!(head.uri.path_and_query().unwrap().as_str(), "/a/b?c=1");
        assert_eq!(head.headers.get_all("x-a").iter().count(), 2);
        let incomplete = b"GET / HTTP/1.1\r\nHost: x\r\n";
        let mut partial = BytesMut::from(&incomplete[..]);
        assert!(parse_request(&mut partial).unwrap().is_none(), "incomplete");
        assert_eq!(partial.len(), incomplete.len(), "an incomplete head stays in the buffer");
        let mut empty_value = BytesMut::from(&b"GET / HTTP/1.1\r\nx-empty:\r\nx-b: b\r\n\r\n"[..]);
        let head = parse_request(&mut empty_value).unwrap().unwrap();
        assert_eq!(head.headers["x-empty"], "");
        assert_eq!(head.headers["x-b"], "b");
    }

    #[test]
    fn request_framing_is_read_while_parsing() {
        let framing = |fields: &str| {
            let wire = format!("POST / HTTP/1.1\r\nHost: x\r\n{fields}\r\n");
            parse_request(&mut BytesMut::from(wire.as_bytes())).unwrap().unwrap().framing
        };
        let plain = RequestFraming {
            length: Ok(None),
            transfer_encoding: false,
            upgrade: false,
            expect: false,
            close: false,
        };
        assert_eq!(framing(""), plain);
        assert_eq!(framing("Content-Length: 5\r\ncontent-length: 5, 5\r\n").length, Ok(Some(5)));
        assert!(framing("Content-Length: 5\r\nContent-Length: 6\r\n").length.is_err());
        assert!(framing("Content-Length: five\r\n").length.is_err());
        assert!(framing("Transfer-Encoding: chunked\r\n").transfer_encoding);
        assert!(framing("UPGRADE: websocket\r\n").upgrade);
        assert!(framing("Expect: 100-continue\r\n").expect);
        assert!(framing("Connection: keep-alive, Close\r\n").close);
        assert!(!framing("Connection: keep-alive\r\nX-Close: close\r\n").close);
    }

    #[test]
    fn the_fields_the_proxy_looks_up_are_found_while_parsing() {
        let present = |fields: &str| {
            let wire = format!("GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n{fields}\r\n");
            parse_request(&mut BytesMut::from(wire.as_bytes())).unwrap().unwrap().present
        };
        let none = Present::default();
        assert_eq!(present(""), none);
        assert_eq!(present("X-Yun-Hop-Other: 1\r\nTraceparents: 1\r\nx-tracestate: 1\r\n"), none);
        assert_eq!(present("X-YUN-HOP: t\r\n"), Present { hop: true, ..none });
        assert_eq!(present("TraceParent: 00-x\r\n"), Present { traceparent: true, ..none });
        assert_eq!(present("tracestate: a=b\r\n"), Present { tracestate: true, ..none });
        for field in ["Connection: keep-alive", "Upgrade: h2c", "TE: trailers", "Keep-Alive: 5", "Trailer: x"]
        {
            assert_eq!(present(&format!("{field}\r\n")), Present { hop_by_hop: true, ..none }, "{field}");
        }
    }

    #[test]
    fn hostile_request_heads_are_refused() {
        for wire in [
            &b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"[..],
            b"GET / HTTP/9.9\r\n\r\n",
            b"\x00\x01\x02 / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            b"GET /\x7f HTTP/1.1\r\n\r\n",
        ] {
            assert!(parse_request(&mut BytesMut::from(wire)).is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..(MAX_HEADERS + 1) {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&mut BytesMut::from(&many[..])).err(), Some(TOO_MANY_FIELDS));
        let mut huge = b"GET / HTTP/1.1\r\nx: ".to_vec();
        huge.resize(MAX_HEAD + 10, b'a');
        assert_eq!(parse_request(&mut BytesMut::from(&huge[..])).err(), Some(HEAD_TOO_LARGE));
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let head = |status: u16, fields: &[(&str, &str)]| {
            let mut raw = format!("HTTP/1.1 {status} X\r\n");
            for (k, v) in fields {
                raw.push_str(&format!("{k}: {v}\r\n"));
            }
            raw.push_str("\r\n");
            parse_response(&mut BytesMut::from(raw.as_bytes())).unwrap().unwrap()
        };
        let get = Method::GET;
        assert_eq!(response_framing(&get, &head(200, &[("content-length", "12")])), Ok(Framing::Length(12)));
        assert_eq!(
            response_framing(&Method::HEAD, &head(200, &[("content-length", "12")])),
            Ok(Framing::Empty)
        );
        assert_eq!(response_framing(&get, &head(204, &[])), Ok(Framing::Empty));
        assert_eq!(response_framing(&get, &head(304, &[("content-length", "9")])), Ok(Framing::Empty));
        assert_eq!(response_framing(&get, &head(200, &[])), Ok(Framing::Close));
        assert_eq!(
            response_framing(
                &get,
                &head(200, &[("transfer-encoding", "gzip, chunked"), ("content-length", "3")])
            ),
            Ok(Framing::Chunked)
        );
        assert_eq!(response_framing(&get, &head(200, &[("transfer-encoding", "gzip")])), Ok(Framing::Close));
        assert_eq!(response_framing(&get, &head(200, &[("content-length", "5, 5")])), Ok(Framing::Length(5)));
        assert!(
            response_framing(&get, &head(200, &[("content-length", "5"), ("content-length", "6")])).is_err()
        );
        assert!(response_framing(&get, &head(200, &[("content-length", "-1")])).is_err());
        assert!(response_framing(&get, &head(200, &[("content-length", "+5")])).is_err());
    }

    #[test]
    fn heads_encode_as_http_1_1() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        let mut out = Vec::new();
        encode_request_head(&Method::POST, &"/p?q".parse().unwrap(), &headers, "127.0.0.1:9", 3, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q HTTP/1.1\r\nhost: 127.0.0.1:9\r\nx-a: 1\r\ncontent-length: 3\r\n\r\n"
        );
        // A client's Host stays where it was; a length it sent is kept (as the body's).
        let mut sent = HeaderMap::new();
        sent.insert("x-b", HeaderValue::from_static("2"));
        sent.insert("host", HeaderValue::from_static("svc"));
        sent.insert("content-length", HeaderValue::from_static("0"));
        let mut out = Vec::new();
        encode_request_head(&Method::GET, &"/".parse().unwrap(), &sent, "127.0.0.1:9", 0, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nx-b: 2\r\nhost: svc\r\ncontent-length: 0\r\n\r\n"
        );
        let mut out = Vec::new();
        headers.insert("date", HeaderValue::from_static("Thu, 26 Nov 2026 10:00:00 GMT"));
        encode_response_head(StatusCode::NOT_FOUND, None, &headers, Framing::Chunked, true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nx-a: 1\r\ndate: Thu, 26 Nov 2026 10:00:00 GMT\r\n\
             transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
    }

    fn response(head: &str) -> ResponseHead {
        parse_response(&mut BytesMut::from(head.as_bytes())).unwrap().unwrap()
    }

    #[test]
    fn passed_fields_leave_out_hop_by_hop_and_framing_ones() {
        let head = "HTTP/1.1 200 OK\r\nServer: up\r\nDate: Thu, 26 Nov 2026 10:00:00 GMT\r\n\
                    Content-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
                    X-Thing: a\r\nX-Thing: b\r\n\r\n";
        let reads = [HeaderName::from_static("x-yun-policy")];
        let passed = response(head).passed(false, &reads).ok().unwrap();
        let mut added = HeaderMap::new();
        added.insert("traceresponse", HeaderValue::from_static("00-1"));
        let mut out = Vec::new();
        encode_response_head(StatusCode::OK, Some(&passed), &added, Framing::Length(5), false, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: up\r\nDate: Thu, 26 Nov 2026 10:00:00 GMT\r\nX-Thing: a\r\n\
             X-Thing: b\r\ntraceresponse: 00-1\r\ncontent-length: 5\r\n\r\n"
        );

        // The answer to HEAD keeps its length; no date is made up when the instance sent one.
        let passed = response(head).passed(true, &reads).ok().unwrap();
        let mut out = Vec::new();
        encode_response_head(
            StatusCode::OK,
            Some(&passed),
            &HeaderMap::new(),
            Framing::Empty,
            false,
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Content-Length: 5\r\n") && text.matches("ate:").count() == 1, "{text}");
    }

    #[test]
    fn every_hop_by_hop_field_is_known_as_one_in_any_case() {
        for name in &HOP_BY_HOP {
            assert!(FieldKind::of(name.as_str().as_bytes()).hop_by_hop(), "{name}");
            assert!(FieldKind::of(name.as_str().to_ascii_uppercase().as_bytes()).hop_by_hop(), "{name}");
        }
        for other in ["date", "content-length", "x-te", "server", "connections", ""] {
            assert!(!FieldKind::of(other.as_bytes()).hop_by_hop(), "{other}");
        }
    }

    #[test]
    fn heads_the_proxy_must_read_or_rewrite_take_the_general_path() {
        let reads = [HeaderName::from_static("x-yun-policy")];
        // A field the proxy reads.
        let head = response("HTTP/1.1 429 X\r\nX-Yun-Policy: rateLimit\r\n\r\n");
        assert!(head.passed(false, &reads).is_err());
        // `Connection` naming a field that must then be dropped as well.
        let head = response("HTTP/1.1 200 OK\r\nConnection: x-secret, close\r\nX-Secret: 1\r\n\r\n");
        let head = head.passed(false, &reads).err().unwrap();
        assert!(head.closes());
        assert_eq!(head.header_map().unwrap().len(), 2);
    }
}
