//! Yun's telemetry. The data plane records a [`Span`] per hop and passes W3C trace context on
//! ([`context`]); services may send their own spans over OTLP ([`otlp`]); all of them land in
//! a bounded [`TraceStore`] that keeps head-sampled traces and always keeps errors and slow
//! traces, and can be queried by the API, the CLI and the dashboard.
//!
//! The crate knows nothing of HTTP servers or the store of applications: the daemon feeds it
//! and serves what it holds.

pub mod context;
pub mod otlp;
pub mod quick_hash;
pub mod series;
pub mod slo;
mod store;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

pub use context::{SpanId, TraceContext, TraceId};
pub use series::MetricsStore;
pub use store::{Limits, Sampling, TraceQuery, TraceStore, TraceSummary, flush_hops};

/// The longest attribute value kept; longer ones are cut (and marked with "…").
pub const MAX_ATTRIBUTE_LEN: usize = 1024;
/// The most attributes kept per span.
pub const MAX_ATTRIBUTES: usize = 64;
/// The longest span name, service or application name kept.
pub const MAX_NAME_LEN: usize = 256;

/// What a span describes, as in OpenTelemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

/// One operation in a trace: a hop through the data plane, or a span a service sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    #[serde(serialize_with = "display")]
    pub trace_id: TraceId,
    #[serde(serialize_with = "display")]
    pub span_id: SpanId,
    #[serde(serialize_with = "display_opt")]
    pub parent_id: Option<SpanId>,
    /// The Yun application, when known.
    pub app: String,
    /// The component (data-plane spans) or the sender's `service.name`.
    pub service: String,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub error: bool,
    /// Why it failed, when it did.
    pub status_message: String,
    pub attributes: BTreeMap<String, Value>,
}

impl Span {
    /// Duration in nanoseconds (0 when the clock went backwards).
    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nanos.saturating_sub(self.start_unix_nanos)
    }

    /// Cuts names and attributes to the limits, so that no sender can make a span large.
    pub fn sanitize(&mut self) {
        truncate(&mut self.app, MAX_NAME_LEN);
        truncate(&mut self.service, MAX_NAME_LEN);
        truncate(&mut self.name, MAX_NAME_LEN);
        truncate(&mut self.status_message, MAX_ATTRIBUTE_LEN);
        while self.attributes.len() > MAX_ATTRIBUTES {
            self.attributes.pop_last();
        }
        let long: Vec<String> = self.attributes.keys().filter(|k| k.len() > MAX_NAME_LEN).cloned().collect();
        for k in long {
            self.attributes.remove(&k);
        }
        for v in self.attributes.values_mut() {
            if let Value::Str(s) = v {
                truncate(s, MAX_ATTRIBUTE_LEN);
            }
        }
    }

    /// Roughly how many bytes the span holds in memory (allocations rounded up as an allocator
    /// does), for the store's memory budget.
    pub fn approx_bytes(&self) -> usize {
        // A B-tree entry and its share of a node, plus the key's and the value's allocations.
        let attrs: usize = self
            .attributes
            .iter()
            .map(|(k, v)| 96 + heap(k.len()) + if let Value::Str(s) = v { heap(s.len()) } else { 0 })
            .sum();
        std::mem::size_of::<Span>()
            + heap(self.app.len())
            + heap(self.service.len())
            + heap(self.name.len())
            + heap(self.status_message.len())
            + attrs
    }
}

/// Bytes an allocation of `n` bytes takes: rounded to 16, plus the allocator's header.
fn heap(n: usize) -> usize {
    if n == 0 { 0 } else { n.next_multiple_of(16) + 16 }
}

/// Where hops happen: the component called, the route that applied and the caller. Many hops
/// share one (the data plane keeps it per connection), so a hop holds one pointer, not four.
#[derive(Debug, PartialEq)]
pub struct HopPlace {
    pub app: Arc<str>,
    pub component: Arc<str>,
    /// The `resilience` route that applied.
    pub route: Arc<str>,
    /// The caller: `app/component` or `external`.
    pub source: Arc<str>,
}

/// What few hops have, kept behind one pointer so that the others stay small.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HopDetails {
    /// The policy that refused the request.
    pub policy: Option<Cow<'static, str>>,
    /// Why the request failed, when the proxy could not get an answer.
    pub failure: Option<Box<str>>,
    /// The method as sent, when it is none of HTTP's own (`method` is then `_OTHER`).
    pub method_original: Option<Box<str>>,
}

/// One request through a data-plane hop, kept compact (the hot path makes one of these per
/// request and the store keeps them by the ten thousand); it becomes a [`Span`] only when read
/// or exported.
#[derive(Debug, Clone, PartialEq)]
pub struct Hop {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_id: Option<SpanId>,
    pub place: Arc<HopPlace>,
    /// One of HTTP's own methods, or `_OTHER` (as OpenTelemetry names the rest).
    pub method: &'static str,
    /// Shared with the hops before it that had the same path (the data plane keeps the last
    /// one per connection); counted whole by every hop all the same.
    pub path: Arc<str>,
    pub status: u16,
    /// The instance that answered.
    pub instance: Option<Arc<str>>,
    pub retries: u32,
    pub details: Option<Box<HopDetails>>,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
}

/// The name OpenTelemetry gives methods that are none of HTTP's own.
pub const OTHER_METHOD: &str = "_OTHER";

impl Hop {
    pub fn error(&self) -> bool {
        self.status >= 500
    }

    /// Bytes the hop holds besides what it shares with other hops.
    pub fn approx_bytes(&self) -> usize {
        let details = self.details.as_deref().map_or(0, |d| {
            heap(std::mem::size_of::<HopDetails>())
                + d.failure.as_ref().map_or(0, |f| heap(f.len()))
                + d.method_original.as_ref().map_or(0, |m| heap(m.len()))
                + match &d.policy {
                    Some(Cow::Owned(p)) => heap(p.len()),
                    _ => 0,
                }
        });
        // An `Arc`'s allocation holds its two counts before the text.
        std::mem::size_of::<Hop>() + heap(16 + self.path.len()) + details
    }

    fn policy(&self) -> Option<&str> {
        self.details.as_deref().and_then(|d| d.policy.as_deref())
    }

    /// The method as the client sent it.
    pub fn method_sent(&self) -> &str {
        self.details.as_deref().and_then(|d| d.method_original.as_deref()).unwrap_or(self.method)
    }

    /// The span this hop stands for.
    pub fn to_span(&self) -> Span {
        let mut attributes = BTreeMap::new();
        let mut put = |k: &str, v: Value| {
            attributes.insert(k.to_string(), v);
        };
        let place = &*self.place;
        put("http.request.method", Value::from(self.method));
        if self.method == OTHER_METHOD {
            put("http.request.method_original", Value::from(self.method_sent()));
        }
        put("url.path", Value::from(&*self.path));
        put("http.response.status_code", Value::Int(self.status.into()));
        put("yun.route", Value::from(&*place.route));
        put("yun.source", Value::from(&*place.source));
        if let Some(i) = &self.instance {
            put("yun.instance", Value::from(&**i));
        }
        if self.retries > 0 {
            put("yun.retries", Value::Int(self.retries.into()));
        }
        if let Some(p) = self.policy() {
            put("yun.policy", Value::from(p));
        }
        let failure = self.details.as_deref().and_then(|d| d.failure.as_deref());
        let status_message = match (failure, self.policy()) {
            (Some(f), _) => f.to_string(),
            (None, Some(p)) => format!("refused by policy {p}"),
            (None, None) if self.error() => format!("HTTP {}", self.status),
            _ => String::new(),
        };
        let mut span = Span {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_id: self.parent_id,
            app: place.app.to_string(),
            service: place.component.to_string(),
            name: format!("{} {}", self.method_sent(), self.path),
            kind: SpanKind::Server,
            start_unix_nanos: self.start_unix_nanos,
            end_unix_nanos: self.end_unix_nanos,
            error: self.error(),
            status_message,
            attributes,
        };
        span.sanitize();
        span
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, ending it with "…" when cut.
fn truncate(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
}

fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn display_opt<T: std::fmt::Display, S: serde::Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_bounds_every_part_of_a_span() {
        let mut s = Span {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_id: None,
            app: "a".repeat(10_000),
            service: "ü".repeat(10_000),
            name: "n".repeat(10_000),
            kind: SpanKind::Server,
            start_unix_nanos: 2,
            end_unix_nanos: 1,
            error: false,
            status_message: String::new(),
            attributes: (0..1000).map(|i| (format!("k{i:04}"), Value::from("v".repeat(100_000)))).collect(),
        };
        s.attributes.insert("x".repeat(10_000), Value::Int(1));
        s.sanitize();
        assert!(
            s.app.len() <= MAX_NAME_LEN && s.service.len() <= MAX_NAME_LEN && s.name.len() <= MAX_NAME_LEN
        );
        assert!(s.service.ends_with('…'));
        assert!(s.attributes.len() <= MAX_ATTRIBUTES);
        assert!(s.attributes.keys().all(|k| k.len() <= MAX_NAME_LEN));
        assert!(s.attributes.values().all(|v| matches!(v, Value::Str(v) if v.len() <= MAX_ATTRIBUTE_LEN)));
        assert_eq!(s.duration_nanos(), 0);
        assert!(s.approx_bytes() < 100_000);
    }
}

#[cfg(test)]
mod hop_tests {
    use super::*;

    #[test]
    fn a_hop_reads_as_a_server_span() {
        let place = Arc::new(HopPlace {
            app: "shop".into(),
            component: "web".into(),
            route: "default".into(),
            source: "external".into(),
        });
        let hop = Hop {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_id: None,
            place: place.clone(),
            method: "GET",
            path: "/cart".into(),
            status: 429,
            instance: None,
            retries: 2,
            details: Some(Box::new(HopDetails {
                policy: Some(Cow::Borrowed("rateLimit")),
                ..Default::default()
            })),
            start_unix_nanos: 10,
            end_unix_nanos: 25,
        };
        let s = hop.to_span();
        assert_eq!((s.app.as_str(), s.service.as_str(), s.name.as_str()), ("shop", "web", "GET /cart"));
        assert_eq!(s.kind, SpanKind::Server);
        assert!(!s.error, "a 429 is a refusal, not a failure of the service");
        assert_eq!(s.status_message, "refused by policy rateLimit");
        assert_eq!(s.attributes["http.response.status_code"], Value::Int(429));
        assert_eq!(s.attributes["yun.retries"], Value::Int(2));
        assert!(!s.attributes.contains_key("yun.instance"));
        assert_eq!(s.duration_nanos(), 15);
        assert!(hop.approx_bytes() >= std::mem::size_of::<Hop>());

        // A method of its own is reported as OpenTelemetry asks, and named as sent.
        let odd = Hop {
            method: OTHER_METHOD,
            status: 502,
            details: Some(Box::new(HopDetails {
                failure: Some("connection refused".into()),
                method_original: Some("PURGE".into()),
                ..Default::default()
            })),
            ..hop
        };
        let s = odd.to_span();
        assert_eq!(s.name, "PURGE /cart");
        assert_eq!(s.attributes["http.request.method"], Value::from("_OTHER"));
        assert_eq!(s.attributes["http.request.method_original"], Value::from("PURGE"));
        assert!(s.error);
        assert_eq!(s.status_message, "connection refused");
        assert!(!s.attributes.contains_key("yun.policy"));
    }

    #[test]
    fn a_hop_stays_small() {
        // The store keeps tens of thousands; each byte here is a byte per request in its ring.
        assert!(std::mem::size_of::<Hop>() <= 128, "{} bytes", std::mem::size_of::<Hop>());
    }
}
