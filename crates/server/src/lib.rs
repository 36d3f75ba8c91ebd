//! Yun's control plane, `yun server`: the composition root. It opens the store, starts the
//! local runtime, runs the reconciler and serves the HTTP/JSON API on loopback.
//!
//! Read [`run`] first, then `api.rs` (the routes) and `reconcile.rs` (desired → observed).

mod api;
mod dashboard;
mod openapi;
mod reconcile;
mod runtime_metrics;
mod status;
mod telemetry;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;
use yun_runtime::LocalRuntime;
use yun_store::{NewEvent, Store};

pub use openapi::openapi_spec;
pub use status::{AppStatus, app_phase};

/// Default API address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";
/// Default gateway address (the `gateway` trait's north–south entry).
pub const DEFAULT_GATEWAY: &str = "127.0.0.1:7480";
/// Default gateway HTTPS address.
pub const DEFAULT_GATEWAY_TLS: &str = "127.0.0.1:7443";
/// Default OTLP/HTTP receiver address (the OpenTelemetry standard port).
pub const DEFAULT_OTLP: &str = "127.0.0.1:4318";
/// Name of the token file in `YUN_HOME`.
pub const TOKEN_FILE: &str = "token";
/// Name of the file that tells clients where the daemon listens.
pub const DAEMON_FILE: &str = "daemon.json";

/// Server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// State directory (`YUN_HOME`).
    pub home: PathBuf,
    /// API listen address.
    pub listen: SocketAddr,
    /// Gateway listen address; `None` runs no gateway.
    pub gateway: Option<SocketAddr>,
    /// Gateway HTTPS listen address; `None` serves no HTTPS.
    pub gateway_tls: Option<SocketAddr>,
    /// Tracing: sampling, the OTLP receiver and exporter.
    pub tracing: TracingConfig,
}

/// How the daemon traces requests.
#[derive(Debug, Clone, Default)]
pub struct TracingConfig {
    /// No spans and no trace headers from the data plane (the OTLP receiver still runs).
    pub disabled: bool,
    /// Head sampling and the slow-trace threshold.
    pub sampling: yun_telemetry::Sampling,
    /// Memory bounds of the trace store.
    pub limits: yun_telemetry::Limits,
    /// OTLP/HTTP receiver address; `None` runs none.
    pub otlp: Option<SocketAddr>,
    /// External OTLP/HTTP endpoint that receives every kept span.
    pub export: Option<String>,
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// State directory problem.
    #[error("cannot use YUN_HOME {path}: {source}")]
    Home {
        /// Directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Store problem.
    #[error(transparent)]
    Store(#[from] yun_store::Error),
    /// Port problem.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Invalid configuration.
    #[error("{0}")]
    Config(String),
    /// Runtime problem.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// What the daemon tells clients about itself, in `YUN_HOME/daemon.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DaemonInfo {
    /// API address.
    pub addr: SocketAddr,
    /// Daemon process id.
    pub pid: u32,
    /// Daemon version.
    pub version: String,
    /// Gateway address, when one listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<SocketAddr>,
    /// Gateway HTTPS address, when one listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_tls: Option<SocketAddr>,
    /// OTLP/HTTP receiver address, when one listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<SocketAddr>,
}

pub(crate) struct Ctx {
    pub store: Store,
    pub runtime: LocalRuntime,
    pub token: String,
    pub reconcile: mpsc::UnboundedSender<String>,
    pub registry: prometheus_client::registry::Registry,
    pub gateway: Option<SocketAddr>,
    pub traces: Arc<yun_telemetry::TraceStore>,
    pub series: Arc<yun_telemetry::MetricsStore>,
    pub slos: yun_telemetry::slo::SloTracker,
}

/// Runs the daemon until `shutdown` resolves, then stops all instances gracefully.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let home = &config.home;
    let home_err = |source| ServerError::Home { path: home.clone(), source };
    std::fs::create_dir_all(home).map_err(home_err)?;
    set_mode(home, 0o700).map_err(home_err)?;
    // The store's file lock makes this the only daemon for this YUN_HOME.
    let store = Store::open(&home.join("state.redb"))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Listen { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Listen { addr: config.listen, source })?;
    let token = ensure_token(home).map_err(home_err)?;
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let mut registry = prometheus_client::registry::Registry::default();
    let exporter = match &config.tracing.export {
        Some(url) => Some(telemetry::Exporter::start(url).map_err(ServerError::Config)?),
        None => None,
    };
    let export_dropped = exporter.as_ref().map(|e| e.dropped.clone());
    let mut traces = yun_telemetry::TraceStore::new(config.tracing.sampling, config.tracing.limits);
    if let Some(exporter) = exporter {
        traces = traces.on_keep(move |span| exporter.offer(span));
    }
    let traces = Arc::new(traces);
    registry
        .register_collector(Box::new(telemetry::TraceCollector { traces: traces.clone(), export_dropped }));
    // Like the gateway, a receiver that cannot bind (another collector holds the port) is
    // reported, not fatal.
    let otlp = match config.tracing.otlp {
        Some(addr) => match telemetry::serve_otlp(addr, traces.clone()).await {
            Ok(bound) => Some(bound),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "OTLP receiver not started.");
                let _ = store.record(NewEvent {
                    app: None,
                    component: None,
                    warning: true,
                    reason: "OtlpReceiverUnavailable".into(),
                    actor: "reconciler".into(),
                    message: format!("cannot listen on OTLP address {addr}: {e}"),
                });
                None
            }
        },
        None => None,
    };
    let instance_env = match otlp {
        Some(addr) => vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), format!("http://{addr}")),
            ("OTEL_EXPORTER_OTLP_PROTOCOL".to_string(), "http/protobuf".to_string()),
        ],
        None => Vec::new(),
    };
    let mut proxy_metrics = yun_proxy::Metrics::register(&mut registry);
    if !config.tracing.disabled {
        proxy_metrics = proxy_metrics.with_traces(traces.clone());
    }
    let proxy_metrics = Arc::new(proxy_metrics);
    // A gateway that cannot bind is reported, not fatal: everything else still works.
    let gateway = match config.gateway {
        Some(addr) => match yun_proxy::Gateway::bind(addr, config.gateway_tls).await {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "Gateway not started.");
                let _ = store.record(NewEvent {
                    app: None,
                    component: None,
                    warning: true,
                    reason: "GatewayUnavailable".into(),
                    actor: "reconciler".into(),
                    message: format!("cannot listen on gateway address {addr}: {e}"),
                });
                None
            }
        },
        None => None,
    };
    let gateway_addr = gateway.as_ref().map(|g| g.addr());
    let gateway_tls = gateway.as_ref().and_then(|g| g.tls_addr());
    let (runtime, reaped) =
        LocalRuntime::start(home, events_tx, proxy_metrics.clone(), gateway, instance_env)
            .await
            .map_err(ServerError::Runtime)?;
    if reaped > 0 {
        let _ = store.record(NewEvent {
            app: None,
            component: None,
            warning: true,
            reason: "Recovered".into(),
            actor: "reconciler".into(),
            message: format!("stopped {reaped} instance(s) left by a previous daemon; they will be replaced"),
        });
    }
    registry.register_collector(Box::new(runtime_metrics::RuntimeCollector { runtime: runtime.clone() }));
    let reconcile_metrics = reconcile::Metrics::register(&mut registry);
    let (reconcile_tx, reconcile_rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        store,
        runtime,
        token,
        reconcile: reconcile_tx,
        registry,
        gateway: gateway_addr,
        traces,
        series: Arc::new(yun_telemetry::MetricsStore::new(&yun_proxy::LATENCY_BOUNDS)),
        slos: Default::default(),
    });
    tokio::spawn(runtime_metrics::sample(ctx.clone(), proxy_metrics));

    // Runtime events go to the event log.
    let ev_ctx = ctx.clone();
    tokio::spawn(async move {
        while let Some(e) = events_rx.recv().await {
            let event = NewEvent {
                app: Some(e.app.clone()),
                component: e.component.clone(),
                warning: e.warning,
                reason: e.reason,
                actor: "reconciler".into(),
                message: e.message,
            };
            // A completed task is desired-state-relevant: persist it with its event.
            let persisted = match (&e.component, e.task_completed) {
                (Some(c), Some(hash)) => ev_ctx
                    .store
                    .update_app(&e.app, Some(event.clone()), |r| {
                        r.completed_tasks.insert(c.clone(), hash);
                        Ok(())
                    })
                    .is_ok(),
                _ => false,
            };
            if !persisted {
                let _ = ev_ctx.store.record(event);
            }
        }
    });
    tokio::spawn(reconcile::run(ctx.clone(), reconcile_rx, reconcile_metrics));

    let info = DaemonInfo {
        addr,
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
        gateway: gateway_addr,
        gateway_tls,
        otlp,
    };
    write_private(&home.join(DAEMON_FILE), &serde_json::to_vec_pretty(&info).unwrap_or_default())
        .map_err(home_err)?;
    tracing::info!(%addr, home = %home.display(), "Yun server listening.");

    let app = api::router(ctx.clone());
    let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    let result = serve.await;
    tracing::info!("Shutting down: stopping all instances.");
    ctx.runtime.shutdown().await;
    let _ = std::fs::remove_file(home.join(DAEMON_FILE));
    result.map_err(|source| ServerError::Listen { addr, source })
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

/// Reuses the token across restarts (clients keep working) unless it is missing or readable by
/// others, in which case a fresh one is written with mode 0600.
fn ensure_token(home: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = home.join(TOKEN_FILE);
    if let Ok(meta) = std::fs::metadata(&path)
        && meta.permissions().mode() & 0o077 == 0
    {
        let t = std::fs::read_to_string(&path)?.trim().to_string();
        if t.len() >= 32 {
            return Ok(t);
        }
    }
    let bytes: [u8; 32] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, token.as_bytes())?;
    Ok(token)
}
