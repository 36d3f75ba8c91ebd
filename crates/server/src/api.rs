//! The control-plane HTTP/JSON API, `/api/v1/...`. Every route requires the bearer token;
//! errors are JSON `{"error": "...", ...}` with a fitting status. A refused request changes
//! nothing: validation runs before the store is touched.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use yun_model::{Target, parse_manifest};
use yun_store::{NewEvent, Source};

use crate::status::{AppStatus, app_phase};
use crate::{Ctx, openapi};

type Shared = State<Arc<Ctx>>;

/// An API error: status plus JSON body.
pub(crate) struct ApiError(StatusCode, Value);

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError(status, json!({"error": message.into()}))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<yun_store::Error> for ApiError {
    fn from(e: yun_store::Error) -> ApiError {
        use yun_store::Error as E;
        let status = match &e {
            E::AppNotFound(_) | E::RevisionNotFound { .. } | E::ComponentNotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            E::Deleting(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

pub(crate) type ApiResult<T = Json<Value>> = Result<T, ApiError>;

pub(crate) fn router(ctx: Arc<Ctx>) -> Router {
    let api = Router::new()
        .route("/api/v1/version", get(version))
        .route("/api/v1/apply", post(apply))
        .route("/api/v1/diff", post(diff))
        .route("/api/v1/apps", get(list_apps))
        .route("/api/v1/apps/{name}", get(get_app).delete(delete_app))
        .route("/api/v1/apps/{name}/revisions", get(revisions))
        .route("/api/v1/apps/{name}/revisions/{number}", get(revision))
        .route("/api/v1/apps/{name}/rollback", post(rollback))
        .route("/api/v1/apps/{name}/scale", post(scale))
        .route("/api/v1/apps/{name}/stop", post(stop))
        .route("/api/v1/apps/{name}/logs", get(logs))
        .route("/api/v1/apps/{name}/metrics", get(app_metrics))
        .route("/api/v1/apps/{name}/slo", get(app_slo))
        .route("/api/v1/events", get(events))
        .route("/api/v1/traces", get(crate::telemetry::search))
        .route("/api/v1/traces/{id}", get(crate::telemetry::trace))
        .route("/openapi.json", get(|| async { Json(openapi::openapi_spec()) }))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(ctx.clone(), auth));
    Router::new()
        .merge(api)
        .merge(crate::dashboard::router())
        // Liveness of the daemon itself; reveals nothing.
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(yun_model::MAX_MANIFEST_BYTES * 2))
        .layer(middleware::from_fn(json_errors))
        .with_state(ctx)
}

/// Every error is JSON, including those produced before a handler runs (malformed JSON or
/// query, unknown route, body too large), so clients need one error format only.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status.as_u16() < 400 || json {
        return resp;
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    let message =
        if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    (status, Json(json!({"error": message}))).into_response()
}

async fn auth(State(ctx): Shared, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !constant_time_eq(presented.as_bytes(), ctx.token.as_bytes()) {
        let mut resp = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or invalid bearer token (the CLI reads it from YUN_HOME/token)",
        )
        .into_response();
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return resp;
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An audit event for a change a user made through the API.
fn user_event(
    headers: &HeaderMap,
    app: &str,
    component: Option<&str>,
    reason: &str,
    message: String,
) -> NewEvent {
    NewEvent {
        app: Some(app.to_string()),
        component: component.map(str::to_string),
        warning: false,
        reason: reason.into(),
        actor: actor(headers),
        message,
    }
}

/// `user:<name>` from the client's `X-Yun-Actor` header, sanitised.
fn actor(headers: &HeaderMap) -> String {
    let name: String = headers
        .get("x-yun-actor")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        .take(64)
        .collect();
    format!("user:{}", if name.is_empty() { "unknown" } else { &name })
}

/// The daemon's metrics: OpenMetrics when the scraper asks for it, else the classic Prometheus
/// text format (0.0.4), which `promtool check metrics` and older scrapers read.
async fn metrics(State(ctx): Shared, headers: HeaderMap) -> ApiResult<Response> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &ctx.registry)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}")))?;
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if openmetrics {
        return Ok((
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            text,
        )
            .into_response());
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], classic_text(&text))
        .into_response())
}

/// OpenMetrics → Prometheus 0.0.4 text: counter families take their `_total` sample name in
/// HELP and TYPE, and the `# EOF` marker goes.
fn classic_text(openmetrics: &str) -> String {
    let lines: Vec<&str> = openmetrics.lines().collect();
    let mut out = String::with_capacity(openmetrics.len());
    for (i, line) in lines.iter().enumerate() {
        if *line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let family_of = |l: &str| l.split_whitespace().nth(2).map(str::to_string);
        let is_counter = |name: &str| {
            lines[i..].iter().take(3).any(|l| {
                l.starts_with("# TYPE ")
                    && l.split_whitespace().nth(2) == Some(name)
                    && l.ends_with(" counter")
            })
        };
        match family_of(line) {
            Some(name)
                if (line.starts_with("# HELP ") || line.starts_with("# TYPE ")) && is_counter(&name) =>
            {
                out.push_str(&line.replacen(&format!(" {name} "), &format!(" {name}_total "), 1));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

async fn version(State(ctx): Shared) -> Json<Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION"), "api": "v1", "gateway": ctx.gateway}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestBody {
    manifest: String,
    #[serde(default)]
    file: Option<String>,
    /// Absolute directory for relative paths (the manifest's directory).
    base_dir: String,
}

fn parse(body: &ManifestBody) -> ApiResult<yun_model::Parsed> {
    if !std::path::Path::new(&body.base_dir).is_absolute() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "base_dir must be an absolute path"));
    }
    parse_manifest(&body.manifest, body.file.as_deref(), Target::Local).map_err(|e| {
        let first = e.diagnostics.first().map(ToString::to_string).unwrap_or_default();
        ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": format!("invalid manifest: {first}"), "diagnostics": e.diagnostics}),
        )
    })
}

async fn apply(State(ctx): Shared, headers: HeaderMap, Json(body): Json<ManifestBody>) -> ApiResult {
    let parsed = parse(&body)?;
    // Refuse the whole manifest before changing anything if any app is being deleted.
    for app in &parsed.apps {
        if ctx.store.app(&app.name)?.is_some_and(|r| r.deleting) {
            return Err(yun_store::Error::Deleting(app.name.clone()).into());
        }
    }
    // Traffic may only be split to revisions that exist already.
    for app in &parsed.apps {
        let latest = ctx.store.app(&app.name)?.map(|r| r.latest_revision).unwrap_or(0);
        for c in &app.components {
            for r in c.traffic.as_ref().map(|t| t.revisions()).unwrap_or_default() {
                if r > latest {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!(
                            "{}: component \"{}\" sends traffic to revision {r}, but the app's latest revision is {latest}",
                            app.name, c.name
                        ),
                    ));
                }
            }
        }
    }
    let mut results = Vec::new();
    let who = actor(&headers);
    for app in &parsed.apps {
        let applied = ctx.store.apply(
            app,
            Source {
                actor: who.clone(),
                message: format!("apply {}", body.file.as_deref().unwrap_or("manifest")),
                base_dir: body.base_dir.clone(),
                manifest: body.manifest.clone(),
            },
        )?;
        let _ = ctx.reconcile.send(app.name.clone());
        results.push(json!({"name": app.name, "revision": applied.revision, "created": applied.created}));
    }
    Ok(Json(json!({"apps": results, "warnings": parsed.warnings})))
}

async fn diff(State(ctx): Shared, Json(body): Json<ManifestBody>) -> ApiResult {
    let parsed = parse(&body)?;
    let mut out = Vec::new();
    for app in &parsed.apps {
        let current = match ctx.store.app(&app.name)? {
            Some(r) => ctx.store.revision(&app.name, r.current_revision)?.map(|r| r.spec),
            None => None,
        };
        let mut changes = Vec::new();
        let old = current.as_ref().map(|a| a.components.as_slice()).unwrap_or_default();
        for c in &app.components {
            match old.iter().find(|o| o.name == c.name) {
                None => changes.push(json!({"component": c.name, "change": "added"})),
                Some(o) => {
                    let (a, b) = (
                        serde_json::to_value(o).unwrap_or_default(),
                        serde_json::to_value(c).unwrap_or_default(),
                    );
                    let fields: Vec<Value> = field_changes(&a, &b);
                    let change = if fields.is_empty() { "unchanged" } else { "changed" };
                    changes.push(json!({"component": c.name, "change": change, "fields": fields}));
                }
            }
        }
        for o in old.iter().filter(|o| app.component(&o.name).is_none()) {
            changes.push(json!({"component": o.name, "change": "removed"}));
        }
        let unchanged = current.as_ref().is_some_and(|c| c.content_hash() == app.content_hash());
        out.push(json!({"name": app.name, "exists": current.is_some(), "unchanged": unchanged, "components": changes}));
    }
    Ok(Json(json!({"apps": out, "warnings": parsed.warnings})))
}

fn field_changes(a: &Value, b: &Value) -> Vec<Value> {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else { return Vec::new() };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| json!({"field": k, "from": a.get(k), "to": b.get(k)}))
        .collect()
}

fn status_of(ctx: &Ctx, record: yun_store::AppRecord) -> AppStatus {
    let components = ctx.runtime.status(&record.name).unwrap_or_default();
    let (phase, message) = app_phase(&record, &components);
    AppStatus {
        name: record.name,
        phase,
        message,
        revision: record.current_revision,
        latest_revision: record.latest_revision,
        scale: record.scale,
        created_at: record.created_at,
        updated_at: record.updated_at,
        components,
    }
}

async fn list_apps(State(ctx): Shared) -> ApiResult {
    let apps: Vec<AppStatus> = ctx.store.apps()?.into_iter().map(|r| status_of(&ctx, r)).collect();
    Ok(Json(json!({"apps": apps})))
}

async fn get_app(State(ctx): Shared, Path(name): Path<String>) -> ApiResult<Json<AppStatus>> {
    let record = ctx.store.app(&name)?.ok_or(yun_store::Error::AppNotFound(name))?;
    let mut status = status_of(&ctx, record);
    // Each instance's CPU time and memory, from /proc (a few milliseconds: off the workers).
    let groups =
        tokio::task::spawn_blocking(crate::runtime_metrics::process_groups).await.unwrap_or_default();
    for i in status.components.iter_mut().flat_map(|c| c.instances.iter_mut()) {
        if let Some(u) = i.pid.and_then(|p| groups.get(&p)) {
            i.cpu_millis = Some((u.cpu_seconds * 1000.0) as u64);
            i.rss_bytes = Some(u.rss_bytes);
        }
    }
    Ok(Json(status))
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default)]
    wait: bool,
}

async fn delete_app(
    State(ctx): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let event = user_event(&headers, &name, None, "DeleteRequested", "application deletion requested".into());
    ctx.store.update_app(&name, Some(event), |r| {
        r.deleting = true;
        Ok(())
    })?;
    let _ = ctx.reconcile.send(name.clone());
    if q.wait {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while ctx.store.app(&name)?.is_some() {
            if tokio::time::Instant::now() > deadline {
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "deletion still in progress after 120s",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        return Ok((StatusCode::OK, Json(json!({"name": name, "deleted": true}))));
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"name": name, "deleting": true}))))
}

async fn revisions(State(ctx): Shared, Path(name): Path<String>) -> ApiResult {
    let record = ctx.store.app(&name)?.ok_or(yun_store::Error::AppNotFound(name.clone()))?;
    let revs: Vec<Value> = ctx
        .store
        .revisions(&name)?
        .into_iter()
        .map(|r| {
            json!({"number": r.number, "hash": r.hash, "created_at": r.created_at, "actor": r.actor,
                   "message": r.message, "current": r.number == record.current_revision})
        })
        .collect();
    Ok(Json(json!({"name": name, "current": record.current_revision, "revisions": revs})))
}

async fn revision(State(ctx): Shared, Path((name, number)): Path<(String, u64)>) -> ApiResult {
    let rev = ctx
        .store
        .revision(&name, number)?
        .ok_or(yun_store::Error::RevisionNotFound { app: name, revision: number })?;
    Ok(Json(serde_json::to_value(rev).unwrap_or_default()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default)]
    to: Option<u64>,
}

async fn rollback(
    State(ctx): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<RollbackBody>,
) -> ApiResult {
    let applied = ctx.store.rollback(&name, body.to, &actor(&headers))?;
    let _ = ctx.reconcile.send(name.clone());
    Ok(Json(json!({"name": name, "revision": applied.revision, "created": applied.created})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    component: String,
    replicas: u32,
}

async fn scale(
    State(ctx): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<ScaleBody>,
) -> ApiResult {
    if body.replicas > yun_model::MAX_REPLICAS {
        let msg = format!("replicas must be at most {}", yun_model::MAX_REPLICAS);
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, msg));
    }
    let record = ctx.store.app(&name)?.ok_or(yun_store::Error::AppNotFound(name.clone()))?;
    let rev = ctx
        .store
        .revision(&name, record.current_revision)?
        .ok_or(yun_store::Error::AppNotFound(name.clone()))?;
    let component = rev.spec.component(&body.component).ok_or(yun_store::Error::ComponentNotFound {
        app: name.clone(),
        component: body.component.clone(),
    })?;
    if !component.kind.is_long_running() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "component \"{}\" is a {}; only webservice and worker components scale",
                component.name,
                component.kind.as_str()
            ),
        ));
    }
    let message = format!("scaled to {} replicas", body.replicas);
    let event = user_event(&headers, &name, Some(&body.component), "Scaled", message);
    ctx.store.update_app(&name, Some(event), |r| {
        r.scale.insert(body.component.clone(), body.replicas);
        Ok(())
    })?;
    let _ = ctx.reconcile.send(name.clone());
    Ok(Json(json!({"name": name, "component": body.component, "replicas": body.replicas})))
}

async fn stop(State(ctx): Shared, headers: HeaderMap, Path(name): Path<String>) -> ApiResult {
    let event = user_event(&headers, &name, None, "Stopped", "application stopped".into());
    ctx.store.update_app(&name, Some(event), |r| {
        r.stopped = true;
        Ok(())
    })?;
    let _ = ctx.reconcile.send(name.clone());
    Ok(Json(json!({"name": name, "stopped": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    #[serde(default)]
    component: Option<String>,
    #[serde(default)]
    instance: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
    /// Lines containing this text.
    #[serde(default)]
    grep: Option<String>,
    /// Lines naming this trace id.
    #[serde(default)]
    trace: Option<String>,
}

/// Newline-delimited JSON `LogLine`s; with `follow` the stream stays open for new lines.
async fn logs(
    State(ctx): Shared,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    if ctx.store.app(&name)?.is_none() {
        return Err(yun_store::Error::AppNotFound(name).into());
    }
    let since = match &q.since {
        Some(s) => Some(parse_since(s).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("invalid since \"{s}\": use a duration like 10m or an RFC 3339 time"),
            )
        })?),
        None => None,
    };
    // Subscribe before reading history so no line falls between the two.
    let mut live = ctx.runtime.logs().subscribe();
    if q.grep.as_ref().is_some_and(|g| g.is_empty() || g.len() > 1024) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "grep must be 1 to 1024 bytes of text"));
    }
    let trace_id = match &q.trace {
        Some(t) => Some(
            yun_telemetry::TraceId::parse(&t.to_ascii_lowercase())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("invalid trace id \"{t}\": expected 32 hex digits"),
                    )
                })?
                .to_string(),
        ),
        None => None,
    };
    let query = yun_runtime::LogQuery {
        component: q.component.clone(),
        instance: q.instance.clone(),
        since,
        grep: q.grep.clone(),
        trace_id,
        tail: q.tail.unwrap_or(10_000),
    };
    let history = ctx.runtime.logs().read(&name, &query);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(256);
    let last_time = history.last().map(|l| l.time.clone());
    tokio::spawn(async move {
        for line in history {
            if tx.send(Ok(ndjson(&line))).await.is_err() {
                return;
            }
        }
        if !q.follow {
            return;
        }
        loop {
            match live.recv().await {
                Ok(line) => {
                    let matches = line.app == name
                        && query.matches(&line)
                        && last_time.as_deref().is_none_or(|t| line.time.as_str() > t);
                    if matches && tx.send(Ok(ndjson(&line))).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(skipped = n, "Log follower lagged.");
                }
                Err(_) => return,
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

fn ndjson(line: &yun_runtime::LogLine) -> bytes::Bytes {
    let mut s = serde_json::to_string(line).unwrap_or_default();
    s.push('\n');
    bytes::Bytes::from(s)
}

/// `10m`, `2h`, `30s`, `1d` ago, or an RFC 3339 time.
pub(crate) fn parse_since(s: &str) -> Option<jiff::Timestamp> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Some(t);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86400)?,
        _ => return None,
    };
    jiff::Timestamp::now().checked_sub(jiff::SignedDuration::from_secs(secs)).ok()
}

/// How each service level objective of the app stands: error budget left and burn rates.
async fn app_slo(State(ctx): Shared, Path(name): Path<String>) -> ApiResult {
    if ctx.store.app(&name)?.is_none() {
        return Err(yun_store::Error::AppNotFound(name).into());
    }
    let objectives = crate::runtime_metrics::objectives(&ctx, &name);
    let now = jiff::Timestamp::now().as_second().max(0) as u64;
    Ok(Json(json!({"objectives": ctx.slos.report(now, &name, &objectives)})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsQuery {
    /// How far back: 30s, 15m, 1h (the default and the most kept).
    #[serde(default)]
    window: Option<String>,
}

/// Golden signals per component and per caller → component edge, and resource use per
/// component, one point per step, from the short-term store.
async fn app_metrics(
    State(ctx): Shared,
    Path(name): Path<String>,
    Query(q): Query<MetricsQuery>,
) -> ApiResult {
    if ctx.store.app(&name)?.is_none() {
        return Err(yun_store::Error::AppNotFound(name).into());
    }
    let bad = |w: &str| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("invalid window \"{w}\": use a duration like 15m"))
    };
    let from = match &q.window {
        Some(w) if w.contains('T') => return Err(bad(w)),
        Some(w) => parse_since(w).ok_or_else(|| bad(w))?,
        None => jiff::Timestamp::now() - jiff::SignedDuration::from_secs(3600),
    };
    let from = from.as_second().max(0) as u64;
    let recent = |points: Vec<yun_telemetry::series::Point>| -> Vec<yun_telemetry::series::Point> {
        points.into_iter().filter(|p| p.t > from).collect()
    };
    let components: serde_json::Map<String, Value> =
        ctx.series.components(&name).into_iter().map(|(c, p)| (c, json!(recent(p)))).collect();
    let usage: serde_json::Map<String, Value> = ctx
        .series
        .usage(&name)
        .into_iter()
        .map(|(c, p)| (c, json!(p.into_iter().filter(|p| p.t > from).collect::<Vec<_>>())))
        .collect();
    let edges: Vec<Value> = ctx
        .series
        .edges(&name)
        .into_iter()
        .map(|(source, target, p)| json!({"source": source, "target": target, "points": recent(p)}))
        .collect();
    Ok(Json(json!({
        "stepSeconds": yun_telemetry::series::STEP.as_secs(),
        "components": components,
        "edges": edges,
        "usage": usage,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
}

async fn events(State(ctx): Shared, Query(q): Query<EventsQuery>) -> ApiResult {
    let events = ctx.store.events(q.app.as_deref(), q.after, q.limit.unwrap_or(100).min(10_000))?;
    Ok(Json(json!({"events": events})))
}
