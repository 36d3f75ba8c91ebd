//! OTLP traces over HTTP (<https://opentelemetry.io/docs/specs/otlp/>): decoding what SDKs send
//! (protobuf or JSON) into [`Span`]s, and encoding spans for an external collector.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status, span, status};
use prost::Message;

use crate::{Span, SpanId, SpanKind, TraceId, Value};

/// Resource attribute naming the Yun application a service belongs to (Yun sets it in
/// instances' `OTEL_RESOURCE_ATTRIBUTES`).
pub const APP_ATTRIBUTE: &str = "yun.app";

/// How an export request body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// From a `Content-Type` header; None for anything OTLP/HTTP does not define.
    pub fn from_content_type(ct: &str) -> Option<Encoding> {
        match ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
            "application/x-protobuf" => Some(Encoding::Protobuf),
            "application/json" => Some(Encoding::Json),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// The spans of an export request; spans with invalid ids are rejected and counted.
#[derive(Debug)]
pub struct Decoded {
    pub spans: Vec<Span>,
    pub rejected: usize,
}

/// Decodes an export request. Errors say what is wrong with the payload as a whole.
pub fn decode(body: &[u8], encoding: Encoding) -> Result<Decoded, String> {
    let req = match encoding {
        Encoding::Protobuf => {
            ExportTraceServiceRequest::decode(body).map_err(|e| format!("invalid OTLP protobuf: {e}"))?
        }
        Encoding::Json => serde_json::from_slice::<ExportTraceServiceRequest>(body)
            .map_err(|e| format!("invalid OTLP JSON: {e}"))?,
    };
    let mut out = Decoded { spans: Vec::new(), rejected: 0 };
    for rs in req.resource_spans {
        let attrs = rs.resource.map(|r| r.attributes).unwrap_or_default();
        let find = |key: &str| {
            attrs
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.as_ref())
                .map(text)
                .unwrap_or_default()
        };
        let service = find("service.name");
        let app = find(APP_ATTRIBUTE);
        for ss in rs.scope_spans {
            for s in ss.spans {
                match convert(s, &app, &service) {
                    Some(span) => out.spans.push(span),
                    None => out.rejected += 1,
                }
            }
        }
    }
    Ok(out)
}

fn convert(s: opentelemetry_proto::tonic::trace::v1::Span, app: &str, service: &str) -> Option<Span> {
    let trace_id = TraceId(s.trace_id.as_slice().try_into().ok()?);
    let span_id = SpanId(s.span_id.as_slice().try_into().ok()?);
    if trace_id.0 == [0; 16] || span_id.0 == [0; 8] {
        return None;
    }
    let parent_id = match s.parent_span_id.len() {
        0 => None,
        _ => Some(SpanId(s.parent_span_id.as_slice().try_into().ok()?)).filter(|p| p.0 != [0; 8]),
    };
    let kind = match span::SpanKind::try_from(s.kind).unwrap_or(span::SpanKind::Unspecified) {
        span::SpanKind::Server => SpanKind::Server,
        span::SpanKind::Client => SpanKind::Client,
        span::SpanKind::Producer => SpanKind::Producer,
        span::SpanKind::Consumer => SpanKind::Consumer,
        _ => SpanKind::Internal,
    };
    let status = s.status.unwrap_or_default();
    let mut attributes = BTreeMap::new();
    for kv in s.attributes.into_iter().take(crate::MAX_ATTRIBUTES * 2) {
        if let Some(v) = kv.value.as_ref().map(value) {
            attributes.insert(kv.key, v);
        }
    }
    let mut span = Span {
        trace_id,
        span_id,
        parent_id,
        app: app.to_string(),
        service: if service.is_empty() { "unknown_service".into() } else { service.to_string() },
        name: s.name,
        kind,
        start_unix_nanos: s.start_time_unix_nano,
        end_unix_nanos: s.end_time_unix_nano.max(s.start_time_unix_nano),
        error: status.code == status::StatusCode::Error as i32,
        status_message: status.message,
        attributes,
    };
    span.sanitize();
    Some(span)
}

/// An attribute value; arrays and maps become their JSON text.
fn value(v: &AnyValue) -> Value {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => Value::Str(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(n)) => Value::Int(*n),
        Some(any_value::Value::DoubleValue(d)) => Value::Double(*d),
        _ => Value::Str(text(v)),
    }
}

fn text(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(n)) => n.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => format!("{} bytes", b.len()),
        Some(any_value::Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().take(64).map(text).collect();
            format!("[{}]", items.join(","))
        }
        Some(any_value::Value::KvlistValue(l)) => {
            let items: Vec<String> = l
                .values
                .iter()
                .take(64)
                .map(|kv| format!("{}={}", kv.key, kv.value.as_ref().map(text).unwrap_or_default()))
                .collect();
            format!("{{{}}}", items.join(","))
        }
        _ => String::new(),
    }
}

/// The response to an export request, in the request's encoding, reporting rejected spans.
pub fn response(decoded: &Decoded, encoding: Encoding) -> Vec<u8> {
    let partial_success = (decoded.rejected > 0).then(|| ExportTracePartialSuccess {
        rejected_spans: decoded.rejected as i64,
        error_message: "spans need a 16-byte trace id and an 8-byte span id, not all zeros".into(),
    });
    let resp = ExportTraceServiceResponse { partial_success };
    match encoding {
        Encoding::Protobuf => resp.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&resp).unwrap_or_else(|_| b"{}".to_vec()),
    }
}

/// An export request (protobuf) for `spans`, grouped by application and service into
/// resources.
pub fn encode(spans: &[Span]) -> Vec<u8> {
    let mut by_service: BTreeMap<(&str, &str), Vec<&Span>> = BTreeMap::new();
    for s in spans {
        by_service.entry((&s.app, &s.service)).or_default().push(s);
    }
    let resource_spans = by_service
        .into_iter()
        .map(|((app, service), spans)| {
            let mut attributes = vec![kv("service.name", Value::from(service))];
            if !app.is_empty() {
                attributes.push(kv(APP_ATTRIBUTE, Value::from(app)));
            }
            ResourceSpans {
                resource: Some(Resource { attributes, ..Default::default() }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "yun".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: spans.into_iter().map(to_proto).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }.encode_to_vec()
}

fn kv(key: &str, v: Value) -> KeyValue {
    let value = match v {
        Value::Str(s) => any_value::Value::StringValue(s),
        Value::Int(n) => any_value::Value::IntValue(n),
        Value::Double(d) => any_value::Value::DoubleValue(d),
        Value::Bool(b) => any_value::Value::BoolValue(b),
    };
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn to_proto(s: &Span) -> opentelemetry_proto::tonic::trace::v1::Span {
    let kind = match s.kind {
        SpanKind::Internal => span::SpanKind::Internal,
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Client => span::SpanKind::Client,
        SpanKind::Producer => span::SpanKind::Producer,
        SpanKind::Consumer => span::SpanKind::Consumer,
    };
    let code = if s.error { status::StatusCode::Error } else { status::StatusCode::Unset };
    opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: s.trace_id.0.to_vec(),
        span_id: s.span_id.0.to_vec(),
        parent_span_id: s.parent_id.map(|p| p.0.to_vec()).unwrap_or_default(),
        // W3C trace flags: everything exported was sampled.
        flags: 1 | 0x100,
        name: s.name.clone(),
        kind: kind as i32,
        start_time_unix_nano: s.start_unix_nanos,
        end_time_unix_nano: s.end_unix_nanos,
        attributes: s.attributes.iter().map(|(k, v)| kv(k, v.clone())).collect(),
        status: Some(Status { message: s.status_message.clone(), code: code as i32 }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Span {
        let mut s = Span {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_id: Some(SpanId::random()),
            app: "shop".into(),
            service: "catalogue".into(),
            name: "GET /products".into(),
            kind: SpanKind::Server,
            start_unix_nanos: 1_700_000_000_000_000_000,
            end_unix_nanos: 1_700_000_000_005_000_000,
            error: true,
            status_message: "HTTP 503".into(),
            attributes: Default::default(),
        };
        s.attributes.insert("http.response.status_code".into(), Value::Int(503));
        s.attributes.insert("http.request.method".into(), Value::from("GET"));
        s.attributes.insert("yun.retried".into(), Value::Bool(true));
        s
    }

    #[test]
    fn encoded_spans_decode_to_the_same_spans() {
        let spans = vec![sample(), sample()];
        let d = decode(&encode(&spans), Encoding::Protobuf).unwrap();
        assert_eq!(d.rejected, 0);
        assert_eq!(d.spans, spans);
    }

    #[test]
    fn json_from_the_specification_shape_is_accepted() {
        let body = r#"{"resourceSpans":[{"resource":{"attributes":[
            {"key":"service.name","value":{"stringValue":"checkout"}},
            {"key":"yun.app","value":{"stringValue":"shop"}}]},
          "scopeSpans":[{"scope":{"name":"manual"},"spans":[{
            "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
            "parentSpanId":"eee19b7ec3c1b173","name":"pay","kind":2,
            "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000",
            "attributes":[{"key":"amount","value":{"intValue":"42"}},
                          {"key":"tags","value":{"arrayValue":{"values":[{"stringValue":"a"},{"stringValue":"b"}]}}}],
            "status":{"code":2,"message":"card declined"}}]}]}]}"#;
        let d = decode(body.as_bytes(), Encoding::Json).unwrap();
        let s = &d.spans[0];
        assert_eq!((s.app.as_str(), s.service.as_str(), s.name.as_str()), ("shop", "checkout", "pay"));
        assert_eq!(s.trace_id.to_string(), "5b8efff798038103d269b633813fc60c");
        assert_eq!(s.parent_id.unwrap().to_string(), "eee19b7ec3c1b173");
        assert_eq!(s.kind, SpanKind::Server);
        assert!(s.error);
        assert_eq!(s.duration_nanos(), 1_000_000_000);
        assert_eq!(s.attributes["amount"], Value::Int(42));
        assert_eq!(s.attributes["tags"], Value::from("[a,b]"));
    }

    #[test]
    fn malformed_payloads_are_refused_and_bad_spans_counted() {
        assert!(decode(b"\xff\xff\xff\xff", Encoding::Protobuf).is_err());
        assert!(decode(b"{\"resourceSpans\": 3}", Encoding::Json).is_err());
        assert!(decode(b"not json", Encoding::Json).is_err());
        let deep = "[".repeat(100_000);
        assert!(decode(deep.as_bytes(), Encoding::Json).is_err());
        let body = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[
            {"traceId":"00000000000000000000000000000000","spanId":"eee19b7ec3c1b174","name":"zero"},
            {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"ee","name":"short"},
            {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"ok"}]}]}]}"#;
        let d = decode(body.as_bytes(), Encoding::Json).unwrap();
        assert_eq!(d.rejected, 2);
        assert_eq!(d.spans.len(), 1);
        assert_eq!(d.spans[0].service, "unknown_service");
        let resp = ExportTraceServiceResponse::decode(response(&d, Encoding::Protobuf).as_slice()).unwrap();
        assert_eq!(resp.partial_success.unwrap().rejected_spans, 2);
    }

    #[test]
    fn huge_attributes_are_cut() {
        let mut s = sample();
        s.attributes.insert("big".into(), Value::from("x".repeat(1 << 20)));
        let d = decode(&encode(&[s]), Encoding::Protobuf).unwrap();
        assert!(
            matches!(&d.spans[0].attributes["big"], Value::Str(v) if v.len() <= crate::MAX_ATTRIBUTE_LEN)
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(Encoding::from_content_type("application/x-protobuf"), Some(Encoding::Protobuf));
        assert_eq!(Encoding::from_content_type("Application/JSON; charset=utf-8"), Some(Encoding::Json));
        assert_eq!(Encoding::from_content_type("text/plain"), None);
    }
}
