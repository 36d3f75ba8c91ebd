//! Yun's telemetry. The data plane records a [`Span`] per hop and passes W3C trace context on
//! ([`context`]); services may send their own spans over OTLP ([`otlp`]); all of them land in
//! a bounded [`TraceStore`] that keeps head-sampled traces and always keeps errors and slow
//! traces, and can be queried by the API, the CLI and the dashboard.
//!
//! The crate knows nothing of HTTP servers or the store of applications: the daemon feeds it
//! and serves what it holds.

pub mod context;
pub mod otlp;
pub mod series;
mod store;

use std::collections::BTreeMap;

use serde::Serialize;

pub use context::{SpanId, TraceContext, TraceId};
pub use series::MetricsStore;
pub use store::{Limits, Sampling, TraceQuery, TraceStore, TraceSummary};

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

    /// Roughly how many bytes the span holds, for the store's memory budget.
    pub fn approx_bytes(&self) -> usize {
        let attrs: usize = self
            .attributes
            .iter()
            .map(|(k, v)| 48 + k.len() + if let Value::Str(s) = v { s.len() } else { 0 })
            .sum();
        160 + self.app.len() + self.service.len() + self.name.len() + self.status_message.len() + attrs
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
