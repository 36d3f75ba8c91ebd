//! Traces in the daemon: the search API over the trace store, the OTLP/HTTP receiver that
//! services' OpenTelemetry SDKs send spans to, and the exporter to an external collector.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use yun_telemetry::otlp::{self, Encoding};
use yun_telemetry::{TraceId, TraceQuery, TraceStore};

use crate::Ctx;
use crate::api::{ApiError, ApiResult};

/// Largest OTLP export request accepted.
pub const MAX_OTLP_BODY: usize = 4 << 20;
/// Spans waiting to be exported; when the collector cannot keep up, newer spans are dropped.
const EXPORT_QUEUE: usize = 8192;
/// Spans per export request.
const EXPORT_BATCH: usize = 512;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct TracesQuery {
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    service: Option<String>,
    /// `error` for traces with a failed span, `any` (the default) for all.
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    min_duration: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /api/v1/traces`: kept traces, newest first.
pub(crate) async fn search(State(ctx): State<Arc<Ctx>>, Query(q): Query<TracesQuery>) -> ApiResult {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let errors_only = match q.status.as_deref() {
        None | Some("any") => false,
        Some("error") => true,
        Some(other) => return Err(bad(format!("invalid status \"{other}\": use error or any"))),
    };
    let min_duration = match &q.min_duration {
        Some(d) => {
            Some(yun_model::Dur::parse(d).map_err(|e| bad(format!("invalid minDuration \"{d}\": {e}")))?.0)
        }
        None => None,
    };
    let since_unix_nanos = match &q.since {
        Some(s) => Some(
            crate::api::parse_since(s)
                .ok_or_else(|| {
                    bad(format!("invalid since \"{s}\": use a duration like 10m or an RFC 3339 time"))
                })?
                .as_nanosecond()
                .max(0) as u64,
        ),
        None => None,
    };
    let query = TraceQuery {
        app: q.app,
        service: q.service,
        errors_only,
        min_duration,
        since_unix_nanos,
        limit: q.limit.unwrap_or(50).clamp(1, 1000),
    };
    Ok(Json(json!({"traces": ctx.traces.query(&query)})))
}

/// `GET /api/v1/traces/{id}`: every span of one trace, earliest first.
pub(crate) async fn trace(State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> ApiResult {
    let trace_id = TraceId::parse(&id.to_ascii_lowercase()).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("invalid trace id \"{id}\": expected 32 hex digits"))
    })?;
    let spans = ctx
        .traces
        .trace(&trace_id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("trace {trace_id} not found")))?;
    Ok(Json(json!({"traceId": trace_id.to_string(), "spans": spans})))
}

/// The OTLP/HTTP receiver (`POST /v1/traces`, protobuf or JSON). It listens on loopback
/// without a token, like a local OpenTelemetry Collector, so instances need no secret.
pub(crate) fn otlp_router(traces: Arc<TraceStore>) -> Router {
    Router::new()
        .route("/v1/traces", post(receive))
        .layer(DefaultBodyLimit::max(MAX_OTLP_BODY))
        .with_state(traces)
}

async fn receive(State(traces): State<Arc<TraceStore>>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some(encoding) = Encoding::from_content_type(content_type) else {
        let message = format!(
            "unsupported content type \"{content_type}\": send application/x-protobuf or application/json"
        );
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Json(json!({"error": message}))).into_response();
    };
    let body = match headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()) {
        None => body,
        Some(enc) if enc.eq_ignore_ascii_case("identity") => body,
        Some(enc) if enc.eq_ignore_ascii_case("gzip") => match gunzip(&body) {
            Ok(b) => b,
            Err((status, message)) => return (status, Json(json!({"error": message}))).into_response(),
        },
        Some(enc) => {
            let message = format!("unsupported content encoding \"{enc}\": send gzip or uncompressed");
            return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Json(json!({"error": message}))).into_response();
        }
    };
    let decoded = match otlp::decode(&body, encoding) {
        Ok(d) => d,
        Err(message) => return (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response(),
    };
    let reply = otlp::response(&decoded, encoding);
    for span in decoded.spans {
        // SDKs export sampled spans only.
        traces.record(span, true);
    }
    ([(header::CONTENT_TYPE, encoding.content_type())], reply).into_response()
}

/// A gzip body, unpacked within the same size limit as a plain one (so a small bomb cannot
/// take memory).
fn gunzip(body: &[u8]) -> Result<Bytes, (StatusCode, String)> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut reader = flate2::read::GzDecoder::new(body).take(MAX_OTLP_BODY as u64 + 1);
    reader.read_to_end(&mut out).map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid gzip body: {e}")))?;
    if out.len() > MAX_OTLP_BODY {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the unpacked body is larger than {} MiB", MAX_OTLP_BODY >> 20),
        ));
    }
    Ok(Bytes::from(out))
}

/// Starts the OTLP receiver on `addr`; returns the bound address.
pub(crate) async fn serve_otlp(addr: SocketAddr, traces: Arc<TraceStore>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, otlp_router(traces)).await {
            tracing::warn!(error = %e, "OTLP receiver stopped.");
        }
    });
    Ok(bound)
}

/// Sends kept spans to an external OTLP/HTTP endpoint in batches, in the background.
pub(crate) struct Exporter {
    queue: tokio::sync::mpsc::Sender<yun_telemetry::Span>,
    /// Spans dropped because the queue was full or the collector kept failing.
    pub dropped: Arc<AtomicU64>,
}

impl Exporter {
    /// Starts exporting to `endpoint` (`http://host:port/v1/traces`; a bare `http://host:port`
    /// gets `/v1/traces` appended).
    pub(crate) fn start(endpoint: &str) -> Result<Exporter, String> {
        let mut uri: hyper::Uri =
            endpoint.parse().map_err(|e| format!("invalid OTLP endpoint \"{endpoint}\": {e}"))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(format!("invalid OTLP endpoint \"{endpoint}\": expected http://host:port[/path]"));
        }
        if uri.path() == "/" {
            uri = format!("{}/v1/traces", endpoint.trim_end_matches('/'))
                .parse()
                .map_err(|e| format!("invalid OTLP endpoint \"{endpoint}\": {e}"))?;
        }
        let (queue, rx) = tokio::sync::mpsc::channel(EXPORT_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(export_loop(uri, rx, dropped.clone()));
        Ok(Exporter { queue, dropped })
    }

    /// Queues a span without waiting.
    pub(crate) fn offer(&self, span: yun_telemetry::Span) {
        if self.queue.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn export_loop(
    uri: hyper::Uri,
    mut rx: tokio::sync::mpsc::Receiver<yun_telemetry::Span>,
    dropped: Arc<AtomicU64>,
) {
    use http_body_util::Full;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut batch = Vec::with_capacity(EXPORT_BATCH);
    loop {
        // Wait for a first span, then gather more for up to a second.
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while batch.len() < EXPORT_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let body = Bytes::from(otlp::encode(&batch));
        let mut sent = false;
        for attempt in 0..3u32 {
            let req = hyper::Request::post(uri.clone())
                .header(header::CONTENT_TYPE, "application/x-protobuf")
                .body(Full::new(body.clone()));
            let Ok(req) = req else { break };
            match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                Ok(Ok(resp)) if resp.status().is_success() => {
                    sent = true;
                    break;
                }
                // Only throttling and unavailability are worth another try (the OTLP rules).
                Ok(Ok(resp)) if !matches!(resp.status().as_u16(), 429 | 502 | 503 | 504) => {
                    tracing::warn!(status = %resp.status(), %uri, "OTLP export refused.");
                    break;
                }
                Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        if !sent {
            dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
            tracing::debug!(spans = batch.len(), %uri, "OTLP export failed; spans dropped.");
        }
        batch.clear();
    }
}

/// The trace store's figures on `/metrics`, read at each scrape.
#[derive(Debug)]
pub(crate) struct TraceCollector {
    pub traces: Arc<TraceStore>,
    pub export_dropped: Option<Arc<AtomicU64>>,
}

impl prometheus_client::collector::Collector for TraceCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let s = self.traces.stats();
        let gauges = [
            ("yun_traces_stored", "Traces kept in the trace store", s.traces as i64),
            ("yun_trace_spans_stored", "Spans kept in the trace store", s.spans as i64),
            (
                "yun_trace_spans_pending",
                "Spans of unsampled traces awaiting a keep decision",
                s.pending_spans as i64,
            ),
            ("yun_trace_store_bytes", "Approximate memory held by the trace store", s.bytes as i64),
        ];
        for (name, help, v) in gauges {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let mut counters =
            vec![("yun_trace_spans_dropped", "Spans dropped by the trace store's limits", s.dropped_spans)];
        if let Some(d) = &self.export_dropped {
            counters.push((
                "yun_trace_export_dropped",
                "Spans not exported: queue full or the collector kept failing",
                d.load(Ordering::Relaxed),
            ));
        }
        for (name, help, v) in counters {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_bodies_unpack_within_the_limit() {
        assert_eq!(gunzip(&gzip(b"spans")).unwrap(), Bytes::from_static(b"spans"));
        // 64 MiB of zeros packs into a few kilobytes; it is refused, not unpacked.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 1 << 20);
        assert_eq!(gunzip(&bomb).unwrap_err().0, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(gunzip(b"not gzip").unwrap_err().0, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn export_endpoints_are_checked() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            assert!(Exporter::start("http://127.0.0.1:4318").is_ok());
            assert!(Exporter::start("http://127.0.0.1:4318/v1/traces").is_ok());
            for bad in ["", "not a url", "https://collector:4318", "ftp://x", "/v1/traces"] {
                assert!(Exporter::start(bad).is_err(), "{bad}");
            }
        });
    }
}
