//! Yun's local runtime: runs each component instance as an OS process in its own process group,
//! captures its output, probes it, restarts it with back-off, rolls out new specs one instance
//! at a time, and serves every webservice on a stable loopback address.
//!
//! Read [`LocalRuntime`] first: the control plane hands it a [`Deployment`] per application
//! (level-triggered: the latest one wins) and reads back [`ComponentStatus`]es and
//! [`RuntimeEvent`]s. The runtime knows nothing of YAML or of the store.

mod logs;
mod probe;
mod process;
mod supervisor;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use yun_model::{App, ComponentKind, service_env_prefix};

pub use logs::{LogHub, LogLine, LogQuery, MAX_LOG_BYTES, trace_id_of};
pub use supervisor::{ComponentStatus, InstanceStatus, RunStatus};
pub use yun_proxy::{Metrics as ProxyMetrics, NO_ENDPOINT_WAIT};

use supervisor::{Desired, Shared, Supervisor};

/// The desired state of one application, as the runtime needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    /// Application name.
    pub app: String,
    /// Revision number of `spec`.
    pub revision: u64,
    /// The validated spec.
    pub spec: App,
    /// Directory relative `workdir`s and programs are resolved against.
    pub base_dir: PathBuf,
    /// Replica overrides by component (from `yun scale`).
    pub replicas: BTreeMap<String, u32>,
    /// Service ports for webservices that declare none, by component.
    pub service_ports: BTreeMap<String, u16>,
    /// Run nothing, keep the app.
    pub stopped: bool,
    /// Tasks already completed, by component: the spec hash they completed.
    pub completed_tasks: BTreeMap<String, String>,
}

impl Deployment {
    /// The stable service ports of a component: its declared ports, or its allocated one.
    pub fn service_ports_of(&self, component: &str) -> Vec<u16> {
        let Some(c) = self.spec.component(component) else { return Vec::new() };
        if c.kind != ComponentKind::Webservice {
            return Vec::new();
        }
        // An allocated port wins: components without ports, and earlier revisions run beside
        // the current one (whose declared ports the current one holds).
        match self.service_ports.get(component) {
            Some(p) => vec![*p],
            None => c.ports.iter().map(|p| p.port).collect(),
        }
    }
}

/// Something the runtime did or saw, for the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEvent {
    /// Application.
    pub app: String,
    /// Component, when about one.
    pub component: Option<String>,
    /// Whether it is a warning.
    pub warning: bool,
    /// Short reason, e.g. `Started`, `CrashLoopBackOff`.
    pub reason: String,
    /// Detail.
    pub message: String,
    /// Set when a task finished successfully: the spec hash it completed. The control plane
    /// persists it so that a restarted daemon does not run the task again.
    pub task_completed: Option<String>,
}

struct AppHandle {
    desired: watch::Sender<Option<Deployment>>,
    statuses: Arc<Mutex<Vec<watch::Receiver<ComponentStatus>>>>,
    task: JoinHandle<()>,
}

/// The local process runtime.
#[derive(Clone)]
pub struct LocalRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    logs: LogHub,
    pidfiles: process::PidFiles,
    events: mpsc::UnboundedSender<RuntimeEvent>,
    metrics: Arc<yun_proxy::Metrics>,
    callers: Arc<yun_proxy::Callers>,
    gateway: Option<Arc<yun_proxy::Gateway>>,
    instance_env: Arc<Vec<(String, String)>>,
    apps: Mutex<HashMap<String, AppHandle>>,
}

impl LocalRuntime {
    /// Starts the runtime with state under `home` (`run/` and `logs/`). Process groups left by
    /// a previous daemon that died are stopped first, so instances are never duplicated.
    /// Returns the runtime and the number of leftover groups stopped. Every instance gets
    /// `instance_env` (below the app's own variables).
    pub async fn start(
        home: &Path,
        events: mpsc::UnboundedSender<RuntimeEvent>,
        metrics: Arc<yun_proxy::Metrics>,
        gateway: Option<Arc<yun_proxy::Gateway>>,
        instance_env: Vec<(String, String)>,
    ) -> std::io::Result<(LocalRuntime, usize)> {
        let pidfiles = process::PidFiles::new(home.join("run").join("instances"))?;
        let reaped = pidfiles.reap_leftovers(Duration::from_secs(10)).await;
        let inner = Inner {
            logs: LogHub::new(home.join("logs")),
            pidfiles,
            events,
            metrics,
            callers: Arc::new(yun_proxy::Callers::default()),
            gateway,
            instance_env: Arc::new(instance_env),
            apps: Mutex::new(HashMap::new()),
        };
        Ok((LocalRuntime { inner: Arc::new(inner) }, reaped))
    }

    /// Instance output.
    pub fn logs(&self) -> &LogHub {
        &self.inner.logs
    }

    /// Makes `deployment` the desired state of its app. Idempotent.
    pub fn deploy(&self, deployment: Deployment) {
        let mut apps = self.inner.apps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = apps.get(&deployment.app)
            && !h.task.is_finished()
        {
            h.desired.send_if_modified(|d| {
                if d.as_ref() != Some(&deployment) {
                    *d = Some(deployment.clone());
                    true
                } else {
                    false
                }
            });
            return;
        }
        let name = deployment.app.clone();
        let (tx, rx) = watch::channel(Some(deployment));
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            app: name.clone(),
            logs: self.inner.logs.clone(),
            pidfiles: self.inner.pidfiles.clone(),
            events: self.inner.events.clone(),
            metrics: self.inner.metrics.clone(),
            callers: self.inner.callers.clone(),
            gateway: self.inner.gateway.clone(),
            instance_env: self.inner.instance_env.clone(),
            availability: tokio::sync::Notify::new(),
        });
        let task = tokio::spawn(app_actor(shared, rx, statuses.clone()));
        apps.insert(name, AppHandle { desired: tx, statuses, task });
    }

    /// Stops every instance of `app` and closes its service ports; returns when all are gone.
    pub async fn remove(&self, app: &str) {
        let handle = self.inner.apps.lock().unwrap_or_else(|e| e.into_inner()).remove(app);
        if let Some(h) = handle {
            let _ = h.desired.send(None);
            let _ = h.task.await;
        }
    }

    /// Stops everything (daemon shutdown). Desired state is untouched; a restart brings it back.
    pub async fn shutdown(&self) {
        let handles: Vec<AppHandle> =
            self.inner.apps.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, h)| h).collect();
        for h in &handles {
            let _ = h.desired.send(None);
        }
        for h in handles {
            let _ = h.task.await;
        }
    }

    /// The applications the runtime runs.
    pub fn apps(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.inner.apps.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        names.sort();
        names
    }

    /// Observed status of each component of `app`, in manifest order.
    pub fn status(&self, app: &str) -> Option<Vec<ComponentStatus>> {
        let apps = self.inner.apps.lock().unwrap_or_else(|e| e.into_inner());
        let h = apps.get(app)?;
        let statuses = h.statuses.lock().unwrap_or_else(|e| e.into_inner());
        Some(statuses.iter().map(|s| s.borrow().clone()).collect())
    }

    /// Waits until any status of `app` changes, or `timeout` passes.
    pub async fn changed(&self, app: &str, timeout: Duration) {
        let receivers: Vec<_> = {
            let apps = self.inner.apps.lock().unwrap_or_else(|e| e.into_inner());
            match apps.get(app) {
                Some(h) => h.statuses.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                None => Vec::new(),
            }
        };
        if receivers.is_empty() {
            tokio::time::sleep(timeout.min(Duration::from_millis(200))).await;
            return;
        }
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let waiters: Vec<_> = receivers
            .into_iter()
            .map(|mut r| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    if r.changed().await.is_ok() {
                        let _ = tx.try_send(());
                    }
                })
            })
            .collect();
        let _ = tokio::time::timeout(timeout, rx.recv()).await;
        for w in waiters {
            w.abort();
        }
    }
}

type SharedEnv = Arc<Vec<(String, String)>>;

struct Running {
    desired: watch::Sender<Desired>,
    status: watch::Receiver<ComponentStatus>,
    task: JoinHandle<()>,
}

/// Keeps one app's supervisors in line with its deployment: creates and removes them, computes
/// each one's environment, and releases components whose dependencies became available.
async fn app_actor(
    shared: Arc<Shared>,
    mut desired: watch::Receiver<Option<Deployment>>,
    statuses: Arc<Mutex<Vec<watch::Receiver<ComponentStatus>>>>,
) {
    let mut running: Vec<(String, Running)> = Vec::new();
    let shared_for_notify = shared.clone();
    let mut availability = std::pin::pin!(shared_for_notify.availability.notified());
    // Changes and availability wake the actor at once; the tick is only a safety resync.
    let mut cached_env: Option<(u64, BTreeMap<String, u16>, SharedEnv)> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let current = desired.borrow_and_update().clone();
        let Some(d) = current else {
            // Removal: dropping the senders tells supervisors to stop everything.
            let tasks: Vec<JoinHandle<()>> = running.drain(..).map(|(_, r)| r.task).collect();
            for t in tasks {
                let _ = t.await;
            }
            statuses.lock().unwrap_or_else(|e| e.into_inner()).clear();
            return;
        };
        let available: HashMap<String, bool> =
            running.iter().map(|(n, r)| (n.clone(), r.status.borrow().available)).collect();
        if cached_env.as_ref().is_none_or(|(rev, ports, _)| *rev != d.revision || *ports != d.service_ports) {
            cached_env =
                Some((d.revision, d.service_ports.clone(), Arc::new(platform_env(&d, &shared.instance_env))));
        }
        let base_env = cached_env.as_ref().map(|c| c.2.clone()).unwrap_or_default();
        let mut next: Vec<(String, Running)> = Vec::new();
        for c in &d.spec.components {
            let deps_ready = c.depends_on.iter().all(|dep| available.get(dep).copied().unwrap_or(false));
            let mut env = vec![("YUN_COMPONENT".to_string(), c.name.clone())];
            env.extend(c.env.iter().map(|(k, v)| (k.clone(), v.clone())));
            let want = Desired {
                revision: d.revision,
                component: c.clone(),
                hash: c.spec_hash(),
                replicas: d.replicas.get(&c.name).copied().unwrap_or(c.replicas),
                platform_env: base_env.clone(),
                env,
                workdir: d.base_dir.join(c.workdir.as_deref().unwrap_or(".")),
                base_dir: d.base_dir.clone(),
                mirror_port: c
                    .traffic
                    .as_ref()
                    .and_then(|t| t.mirror.as_ref())
                    .and_then(|m| d.service_ports_of(&m.component).first().copied()),
                backend_ports: c
                    .traffic
                    .iter()
                    .flat_map(|t| {
                        t.split
                            .iter()
                            .map(|b| b.target(&c.name))
                            .chain(t.routes.iter().map(|r| r.target(&c.name)))
                    })
                    .filter_map(|name| {
                        let port = *d.service_ports_of(&name).first()?;
                        Some((name, port))
                    })
                    .collect(),
                service_ports: d.service_ports_of(&c.name),
                deps_ready,
                stopped: d.stopped,
                completed: d.completed_tasks.get(&c.name).cloned(),
            };
            let pos = running.iter().position(|(n, _)| *n == c.name);
            match pos {
                Some(p) => {
                    let (name, r) = running.remove(p);
                    r.desired.send_if_modified(|cur| {
                        // deps_ready only ever releases a component; it never holds back one
                        // that already started.
                        if *cur != want {
                            *cur = want;
                            true
                        } else {
                            false
                        }
                    });
                    next.push((name, r));
                }
                None => {
                    let (dtx, drx) = watch::channel(want);
                    let (stx, srx) = watch::channel(ComponentStatus {
                        name: c.name.clone(),
                        kind: c.kind.as_str().into(),
                        phase: "Starting".into(),
                        ..Default::default()
                    });
                    let sup = Supervisor::new(shared.clone(), drx, stx);
                    let task = tokio::spawn(sup.run());
                    next.push((c.name.clone(), Running { desired: dtx, status: srx, task }));
                }
            }
        }
        // Components no longer in the spec: stop them by dropping their sender.
        for (name, r) in running.drain(..) {
            let Running { desired, task, .. } = r;
            drop(desired);
            tracing::info!(app = %shared.app, component = %name, "Component removed from spec; stopping it.");
            let _ = task.await;
        }
        running = next;
        *statuses.lock().unwrap_or_else(|e| e.into_inner()) =
            running.iter().map(|(_, r)| r.status.clone()).collect();
        // Statuses are read after this point; the notification is armed before, so none is lost.
        tokio::select! {
            _ = desired.changed() => {}
            _ = availability.as_mut() => {}
            _ = tick.tick() => {}
        }
        availability.set(shared.availability.notified());
    }
}

/// Variables every instance of the app gets: the daemon's (`instance_env`), identity, the
/// OpenTelemetry resource, and the address of every webservice.
fn platform_env(d: &Deployment, instance_env: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = instance_env.to_vec();
    env.push(("YUN_APP".to_string(), d.app.clone()));
    env.push(("YUN_REVISION".to_string(), d.revision.to_string()));
    env.push(("OTEL_RESOURCE_ATTRIBUTES".to_string(), format!("yun.app={}", d.app)));
    for c in &d.spec.components {
        if let Some(port) = d.service_ports_of(&c.name).first() {
            let prefix = service_env_prefix(&c.name);
            env.push((format!("{prefix}_URL"), format!("http://127.0.0.1:{port}")));
            env.push((format!("{prefix}_ADDR"), format!("127.0.0.1:{port}")));
            env.push((format!("{prefix}_HOST"), "127.0.0.1".into()));
            env.push((format!("{prefix}_PORT"), port.to_string()));
        }
    }
    env
}
