//! One supervisor task per component: it owns the component's instances and service ports and
//! makes them match the desired state, level-triggered: on every change, every message from
//! an instance, every timer it set itself (back-off, schedule) and at least once a second.
//!
//! - long-running components (webservice, worker): keep `replicas` instances of the current
//!   spec; roll out a new spec one instance at a time (start new, wait ready, move traffic,
//!   stop old); restart crashed instances with exponential back-off;
//! - task: run `count` instances to success, retrying up to `backoffLimit`;
//! - cron-task: start a run (a task) at each scheduled time, honouring `concurrencyPolicy`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use yun_model::{Component, ComponentKind, ConcurrencyPolicy, Probe, RestartPolicy};

use crate::process::{self, PidFiles};
use crate::{LogHub, RuntimeEvent};
use yun_proxy::ServicePort;

/// Desired state of one component, computed by the app actor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Desired {
    pub revision: u64,
    pub component: Component,
    pub hash: String,
    pub replicas: u32,
    /// Variables shared by the whole app (addresses of every webservice), shared, not copied.
    pub platform_env: Arc<Vec<(String, String)>>,
    /// The component's own variables; they win over `platform_env`.
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    /// The manifest's directory, for paths in traits (gateway certificates).
    pub base_dir: PathBuf,
    /// Service port of the component that receives mirrored traffic.
    pub mirror_port: Option<u16>,
    /// Service ports of the components that traffic splits and routes name.
    pub backend_ports: std::collections::BTreeMap<String, u16>,
    pub service_ports: Vec<u16>,
    pub deps_ready: bool,
    pub stopped: bool,
    /// Spec hash of a task that already completed (persisted by the control plane).
    pub completed: Option<String>,
}

/// Observed state of one component.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ComponentStatus {
    /// Component name.
    pub name: String,
    /// KubeVela type.
    pub kind: String,
    /// Waiting, Starting, Running, Progressing, CrashLoopBackOff, Failed, Completed, Scheduled,
    /// Stopped.
    pub phase: String,
    /// Why it is in that phase, for people.
    pub message: String,
    /// Instances wanted.
    pub desired: u32,
    /// Instances passing readiness.
    pub ready: u32,
    /// Instances running the current spec.
    pub updated: u32,
    /// Restarts of all current instances.
    pub restarts: u32,
    /// Revision whose spec this component is converging to.
    pub revision: u64,
    /// Stable service addresses (webservice).
    pub addresses: Vec<String>,
    /// Instances.
    pub instances: Vec<InstanceStatus>,
    /// Recent runs (task and cron-task).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<RunStatus>,
    /// Last error seen, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Whether dependants may start: ready instances, a completed task, or a live schedule.
    pub available: bool,
}

/// Observed state of one instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceStatus {
    /// Instance id.
    pub id: String,
    /// OS process id (also its process group id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Starting, Running, BackOff, Stopping, Succeeded, Failed.
    pub state: String,
    /// Passing readiness.
    pub ready: bool,
    /// Restarts of this instance.
    pub restarts: u32,
    /// Failed readiness and liveness probes of this instance.
    #[serde(default)]
    pub probe_failures: u64,
    /// CPU time of its processes in milliseconds, when measured (the daemon's status API does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    /// Resident memory of its processes, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// Instance ports (`PORT` first).
    pub ports: Vec<u16>,
    /// Spec hash it runs.
    pub hash: String,
    /// When the current process started.
    pub started_at: String,
    /// How the last process ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// Last probe or start error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One run of a task or cron-task.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunStatus {
    /// Run id.
    pub id: u64,
    /// Running, Succeeded, Failed, Stopped.
    pub state: String,
    /// Successful completions.
    pub succeeded: u32,
    /// Failed attempts.
    pub failed: u32,
    /// Start time.
    pub started_at: String,
    /// End time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

pub(crate) struct Shared {
    pub app: String,
    pub logs: LogHub,
    pub pidfiles: PidFiles,
    pub events: mpsc::UnboundedSender<RuntimeEvent>,
    /// Data-plane metrics.
    pub metrics: Arc<yun_proxy::Metrics>,
    /// Instance process groups, so the data plane knows who calls.
    pub callers: Arc<yun_proxy::Callers>,
    /// The daemon's north–south gateway, when it listens.
    pub gateway: Option<Arc<yun_proxy::Gateway>>,
    /// Variables the daemon gives every instance (the OTLP endpoint, for one).
    pub instance_env: Arc<Vec<(String, String)>>,
    /// Pinged when a component's availability changes, so dependants start at once.
    pub availability: tokio::sync::Notify,
}

enum Msg {
    Started { id: String, generation: u64, pid: u32 },
    Exited { id: String, generation: u64, success: bool, how: String },
    Probe { id: String, generation: u64, liveness: bool, result: Result<(), String> },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Starting,
    Running,
    BackOff(Instant),
    Stopping,
    Succeeded,
}

struct Instance {
    id: String,
    hash: String,
    run: u64,
    generation: u64,
    ports: Vec<(u16, u16)>,
    pid: Option<u32>,
    phase: Phase,
    ready: bool,
    restarts: u32,
    probe_failures: u64,
    streak: u32,
    started: Instant,
    started_at: String,
    last_exit: Option<String>,
    last_error: Option<String>,
    ready_ok: u32,
    ready_fail: u32,
    live_fail: u32,
    stop: Option<oneshot::Sender<()>>,
    probes: Option<tokio::task::AbortHandle>,
    retiring: bool,
    /// When the instance left the endpoint set.
    drain_since: Option<Instant>,
}

struct Run {
    id: u64,
    hash: String,
    succeeded: u32,
    failed: u32,
    state: &'static str,
    started_at: String,
    finished_at: Option<String>,
}

pub(crate) struct Supervisor {
    shared: Arc<Shared>,
    name: String,
    desired: watch::Receiver<Desired>,
    /// The latest desired state, shared cheaply with handlers.
    current: Arc<Desired>,
    status: watch::Sender<ComponentStatus>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    instances: Vec<Instance>,
    ports: Vec<ServicePort>,
    port_error: Option<String>,
    next_id: u64,
    started_once: bool,
    runs: VecDeque<Run>,
    next_run: u64,
    next_fire: Option<jiff::Zoned>,
    last_error: Option<String>,
    rolled_out_hash: Option<String>,
    /// Gateway certificate served for this component: (domain, cert file, key file).
    certificate: Option<(String, PathBuf, PathBuf)>,
    /// The certificate files last asked for, loaded or not.
    cert_attempt: Option<(String, PathBuf, PathBuf)>,
    cert_error: Option<String>,
}

/// Longest back-off between restarts of a crashing instance.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A process that ran this long before exiting starts a fresh back-off streak.
const STABLE_RUN: Duration = Duration::from_secs(60);
/// Probe interval until an instance is first ready, so start-up is detected quickly.
const STARTUP_PROBE_INTERVAL: Duration = Duration::from_millis(100);

fn port_config(desired: &Desired) -> yun_proxy::PortConfig {
    yun_proxy::PortConfig {
        resilience: desired.component.resilience.clone(),
        traffic: desired.component.traffic.clone(),
        mirror_addr: desired.mirror_port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
        backends: desired
            .backend_ports
            .iter()
            .map(|(c, p)| (c.clone(), SocketAddr::from(([127, 0, 0, 1], *p))))
            .collect(),
    }
}

fn backoff(streak: u32) -> Duration {
    if streak <= 1 {
        return Duration::from_millis(200);
    }
    let ms = 500u64.saturating_mul(1 << streak.saturating_sub(2).min(10));
    Duration::from_millis(ms).min(MAX_BACKOFF)
}

fn now_text() -> String {
    jiff::Timestamp::now().to_string()
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Supervisor {
    pub(crate) fn new(
        shared: Arc<Shared>,
        desired: watch::Receiver<Desired>,
        status: watch::Sender<ComponentStatus>,
    ) -> Supervisor {
        let (tx, rx) = mpsc::unbounded_channel();
        let current = Arc::new(desired.borrow().clone());
        let name = current.component.name.clone();
        Supervisor {
            shared,
            name,
            desired,
            current,
            status,
            tx,
            rx,
            instances: Vec::new(),
            ports: Vec::new(),
            port_error: None,
            next_id: 0,
            started_once: false,
            runs: VecDeque::new(),
            next_run: 1,
            next_fire: None,
            last_error: None,
            rolled_out_hash: None,
            certificate: None,
            cert_attempt: None,
            cert_error: None,
        }
    }

    /// Runs until the desired state says stopped-for-removal (sender dropped) and every
    /// instance is gone.
    pub(crate) async fn run(mut self) {
        let mut closed = false;
        loop {
            while let Ok(msg) = self.rx.try_recv() {
                self.handle(msg);
            }
            let desired = self.current.clone();
            self.reconcile(&desired, closed).await;
            if closed && self.instances.is_empty() {
                if let Some(gw) = &self.shared.gateway {
                    gw.set_routes(&self.shared.app, &self.name, Vec::new());
                    if let Some((domain, _, _)) = &self.certificate {
                        gw.remove_certificate(domain);
                    }
                }
                self.ports.clear();
                self.publish(&desired);
                return;
            }
            let wake = self.next_wake();
            tokio::select! {
                changed = self.desired.changed(), if !closed => {
                    match changed {
                        Ok(()) => self.current = Arc::new(self.desired.borrow_and_update().clone()),
                        Err(_) => closed = true,
                    }
                }
                Some(msg) = self.rx.recv() => self.handle(msg),
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// When the supervisor must look again even if nothing happens: the earliest back-off
    /// expiry or scheduled run, and at least once a second (level-triggered resync).
    fn next_wake(&self) -> tokio::time::Instant {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(1);
        if self.instances.iter().any(|i| i.retiring && i.stop.is_some()) {
            // Draining: look again soon.
            wake = now + Duration::from_millis(20);
        }
        for i in &self.instances {
            if let Phase::BackOff(until) = i.phase {
                wake = wake.min(until);
            }
        }
        if let Some(due) = &self.next_fire {
            let ms = due.timestamp().as_millisecond() - jiff::Timestamp::now().as_millisecond();
            wake = wake.min(now + Duration::from_millis(ms.max(0) as u64 + 1));
        }
        tokio::time::Instant::from_std(wake)
    }

    fn event(&self, warning: bool, reason: &str, message: String) {
        self.send_event(warning, reason, message, None);
    }

    fn send_event(&self, warning: bool, reason: &str, message: String, task_completed: Option<String>) {
        let _ = self.shared.events.send(RuntimeEvent {
            app: self.shared.app.clone(),
            component: Some(self.name.clone()),
            warning,
            reason: reason.into(),
            message,
            task_completed,
        });
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Started { id, generation, pid } => {
                if let Some(i) = self.instances.iter_mut().find(|i| i.id == id && i.generation == generation)
                {
                    i.pid = Some(pid);
                }
            }
            Msg::Probe { id, generation, liveness, result } => {
                let desired = self.desired.borrow().clone();
                let Some(i) = self.instances.iter_mut().find(|i| i.id == id && i.generation == generation)
                else {
                    return;
                };
                if i.phase != Phase::Running {
                    return;
                }
                let probe = if liveness {
                    desired.component.liveness_probe.as_ref()
                } else {
                    desired.component.readiness_probe.as_ref()
                };
                let (success_threshold, failure_threshold) =
                    probe.map(|p| (p.success_threshold, p.failure_threshold)).unwrap_or((1, 3));
                match (liveness, result) {
                    (false, Ok(())) => {
                        i.ready_fail = 0;
                        i.ready_ok += 1;
                        if !i.ready && i.ready_ok >= success_threshold {
                            i.ready = true;
                            i.last_error = None;
                        }
                    }
                    (false, Err(e)) => {
                        i.ready_ok = 0;
                        i.ready_fail += 1;
                        i.probe_failures += 1;
                        i.last_error = Some(format!("readiness probe failed: {e}"));
                        if i.ready && i.ready_fail >= failure_threshold {
                            i.ready = false;
                            let msg = format!("instance {} is not ready: {e}", i.id);
                            self.event(true, "Unready", msg);
                        }
                    }
                    (true, Ok(())) => i.live_fail = 0,
                    (true, Err(e)) => {
                        i.live_fail += 1;
                        i.probe_failures += 1;
                        i.last_error = Some(format!("liveness probe failed: {e}"));
                        if i.live_fail >= failure_threshold {
                            i.live_fail = 0;
                            i.ready = false;
                            let msg = format!(
                                "instance {} failed its liveness probe {} times, restarting: {e}",
                                i.id, failure_threshold
                            );
                            if let Some(stop) = i.stop.take() {
                                let _ = stop.send(());
                            }
                            self.event(true, "LivenessFailed", msg);
                        }
                    }
                }
            }
            Msg::Exited { id, generation, success, how } => {
                let desired = self.current.clone();
                let Some(pos) = self.instances.iter().position(|i| i.id == id && i.generation == generation)
                else {
                    return;
                };
                self.shared.pidfiles.remove(&id);
                if let Some(pid) = self
                    .instances
                    .iter()
                    .find(|i| i.id == id && i.generation == generation)
                    .and_then(|i| i.pid)
                {
                    self.shared.callers.remove(pid);
                }
                let kind = desired.component.kind;
                let i = &mut self.instances[pos];
                if let Some(p) = i.probes.take() {
                    p.abort();
                }
                i.ready = false;
                i.pid = None;
                i.last_exit = Some(how.clone());
                if i.retiring {
                    self.instances.remove(pos);
                    return;
                }
                if kind.is_long_running() {
                    if i.started.elapsed() > STABLE_RUN {
                        i.streak = 0;
                    }
                    i.streak += 1;
                    i.restarts += 1;
                    let delay = backoff(i.streak);
                    i.phase = Phase::BackOff(Instant::now() + delay);
                    let msg = format!(
                        "instance {} exited ({how}); restarting in {:.1}s (restart {})",
                        i.id,
                        delay.as_secs_f64(),
                        i.restarts
                    );
                    let reason = if i.streak >= 3 { "CrashLoopBackOff" } else { "Restarting" };
                    self.last_error = Some(format!("instance {} exited: {how}", i.id));
                    self.event(true, reason, msg);
                } else {
                    self.job_exit(pos, success, how, &desired);
                }
            }
        }
    }

    fn job_exit(&mut self, pos: usize, success: bool, how: String, desired: &Desired) {
        let job = desired.component.job.clone().unwrap_or(yun_model::JobSpec {
            count: 1,
            restart: RestartPolicy::Never,
            backoff_limit: 0,
            active_deadline_seconds: None,
        });
        let run_id = self.instances[pos].run;
        let Some(run) = self.runs.iter_mut().find(|r| r.id == run_id) else {
            self.instances.remove(pos);
            return;
        };
        if success {
            run.succeeded += 1;
            self.instances[pos].phase = Phase::Succeeded;
            self.instances.remove(pos);
        } else {
            run.failed += 1;
            self.last_error = Some(format!("run {run_id}: instance exited: {how}"));
            let retry = run.failed <= job.backoff_limit;
            let i = &mut self.instances[pos];
            if retry && job.restart == RestartPolicy::OnFailure {
                i.restarts += 1;
                i.streak += 1;
                i.phase = Phase::BackOff(Instant::now() + backoff(i.streak));
            } else {
                self.instances.remove(pos);
            }
            if !retry && run.state == "Running" {
                run.state = "Failed";
                run.finished_at = Some(now_text());
                let msg = format!("run {run_id} failed after {} attempts: {how}", run.failed);
                self.event(true, "RunFailed", msg);
            }
        }
        if let Some(run) = self.runs.iter_mut().find(|r| r.id == run_id)
            && run.state == "Running"
            && run.succeeded >= job.count
        {
            run.state = "Succeeded";
            run.finished_at = Some(now_text());
            let msg = format!("run {run_id} succeeded ({} of {})", run.succeeded, job.count);
            let hash = run.hash.clone();
            let completed = (desired.component.kind == ComponentKind::Task).then_some(hash);
            self.send_event(false, "RunSucceeded", msg, completed);
        }
    }

    async fn reconcile(&mut self, desired: &Desired, closed: bool) {
        let stopping = closed || desired.stopped;
        if !stopping {
            self.sync_ports(desired).await;
        }
        if desired.deps_ready {
            self.started_once = true;
        }
        let may_start = !stopping && self.started_once;
        // An instance waiting out its back-off is dropped when it should not run any more, or
        // when it belongs to an older spec (the rollout replaces it with a new one); the others
        // restart once their back-off has passed.
        let long_running = desired.component.kind.is_long_running();
        self.instances.retain(|i| {
            !matches!(i.phase, Phase::BackOff(_))
                || (may_start && !i.retiring && (!long_running || i.hash == desired.hash))
        });
        let now = Instant::now();
        for idx in 0..self.instances.len() {
            if matches!(self.instances[idx].phase, Phase::BackOff(until) if now >= until) {
                self.spawn_process(idx, desired);
            }
        }
        match desired.component.kind {
            ComponentKind::Webservice | ComponentKind::Worker => {
                let target = if may_start { desired.replicas } else { 0 };
                self.reconcile_long_running(desired, target);
            }
            ComponentKind::Task => {
                if may_start {
                    self.reconcile_task(desired);
                } else {
                    self.retire_where(|_| true);
                }
            }
            ComponentKind::CronTask => {
                if may_start {
                    self.reconcile_cron(desired);
                } else {
                    self.retire_where(|_| true);
                }
            }
        }
        self.enforce_deadlines(desired);
        self.finish_retirements(desired);
        self.publish(desired);
    }

    async fn sync_ports(&mut self, desired: &Desired) {
        let want = &desired.service_ports;
        self.ports.retain(|p| want.contains(&p.port));
        let mut errors = Vec::new();
        for port in want {
            if self.ports.iter().any(|p| p.port == *port) {
                continue;
            }
            let (app, name, metrics) =
                (self.shared.app.clone(), self.name.clone(), self.shared.metrics.clone());
            let callers = self.shared.callers.clone();
            // Ports named `tcp` or `tcp-…` pass plain TCP through; the others speak HTTP.
            let tcp = desired
                .component
                .ports
                .iter()
                .find(|p| p.port == *port)
                .and_then(|p| p.name.as_deref())
                .is_some_and(|n| n == "tcp" || n.starts_with("tcp-"));
            let bound = if tcp {
                yun_proxy::bind_tcp(*port, app, name, port_config(desired), metrics).await
            } else {
                yun_proxy::bind(*port, app, name, port_config(desired), metrics, callers).await
            };
            match bound {
                Ok(p) => self.ports.push(p),
                Err(e) => errors.push(format!("cannot listen on service port {port}: {e}")),
            }
        }
        self.ports.sort_by_key(|p| want.iter().position(|w| *w == p.port));
        // Policy changes apply in place, without touching instances.
        let config = port_config(desired);
        for p in &self.ports {
            p.configure(config.clone());
        }
        if let Some(gw) = self.shared.gateway.clone() {
            gw.set_routes(&self.shared.app, &self.name, self.gateway_routes(desired));
            self.sync_certificate(&gw, desired);
        }
        let err = (!errors.is_empty()).then(|| errors.join("; "));
        if err.is_some() && err != self.port_error {
            self.event(true, "PortUnavailable", err.clone().unwrap_or_default());
        }
        self.port_error = err;
    }

    /// Loads the gateway certificate of the component's domain when its files change names.
    /// A certificate that cannot be used fails the component with the reason, and the one
    /// served before stays in place.
    fn sync_certificate(&mut self, gw: &yun_proxy::Gateway, desired: &Desired) {
        let want = desired.component.gateway.as_ref().and_then(|g| {
            let tls = g.tls.as_ref()?;
            Some((
                g.domain.clone()?,
                desired.base_dir.join(&tls.cert_file),
                desired.base_dir.join(&tls.key_file),
            ))
        });
        if want == self.cert_attempt {
            return;
        }
        self.cert_attempt = want.clone();
        let Some((domain, cert, key)) = want else {
            if let Some((old, _, _)) = self.certificate.take() {
                gw.remove_certificate(&old);
            }
            self.cert_error = None;
            return;
        };
        match gw.set_certificate(&domain, &cert, &key) {
            Ok(()) => {
                if let Some((old, _, _)) = self.certificate.take().filter(|(old, _, _)| *old != domain) {
                    gw.remove_certificate(&old);
                }
                self.certificate = Some((domain, cert, key));
                self.cert_error = None;
            }
            Err(e) => {
                let msg = format!("gateway TLS for {domain}: {e}");
                self.event(true, "CertificateInvalid", msg.clone());
                self.cert_error = Some(msg);
            }
        }
    }

    /// The component's gateway routes: each `http` entry goes to the service port of the
    /// declared port it names (or the only one, for a component that declares none).
    fn gateway_routes(&self, desired: &Desired) -> Vec<yun_proxy::GatewayRoute> {
        let Some(g) = &desired.component.gateway else { return Vec::new() };
        let declared = &desired.component.ports;
        g.http
            .iter()
            .filter_map(|(prefix, port)| {
                let idx =
                    if declared.is_empty() { 0 } else { declared.iter().position(|p| p.port == *port)? };
                let sp = self.ports.get(idx)?;
                Some(yun_proxy::GatewayRoute {
                    host: g.domain.clone(),
                    prefix: prefix.clone(),
                    target: sp.handle(),
                })
            })
            .collect()
    }

    fn reconcile_long_running(&mut self, desired: &Desired, target: u32) {
        let hash = &desired.hash;
        let live = |i: &Instance| !i.retiring;
        let current: Vec<usize> = (0..self.instances.len())
            .filter(|&k| live(&self.instances[k]) && self.instances[k].hash == *hash)
            .collect();
        let old: Vec<usize> = (0..self.instances.len())
            .filter(|&k| live(&self.instances[k]) && self.instances[k].hash != *hash)
            .collect();
        let current_ready = current.iter().filter(|&&k| self.instances[k].ready).count() as u32;
        let all_current_ready = current_ready as usize == current.len();
        let have = current.len() as u32;
        if have < target {
            // A rollout surges one at a time; a plain scale-up starts all missing at once.
            let n = if old.is_empty() || target == 0 {
                target - have
            } else if all_current_ready {
                1
            } else {
                0
            };
            for _ in 0..n {
                self.start_instance(desired, 0);
            }
        } else if have > target {
            let mut extra: Vec<usize> = current.clone();
            // Retire not-ready and newest instances first.
            extra.sort_by_key(|&k| (self.instances[k].ready, std::cmp::Reverse(self.instances[k].started)));
            for &k in extra.iter().take((have - target) as usize) {
                self.retire(k);
            }
        }
        // Old instances go as new ones become ready.
        let keep_old = target.saturating_sub(current_ready) as usize;
        if old.len() > keep_old {
            let mut by_pref = old.clone();
            by_pref.sort_by_key(|&k| self.instances[k].ready);
            for &k in by_pref.iter().take(old.len() - keep_old) {
                self.retire(k);
            }
        }
        if old.is_empty()
            && target > 0
            && current_ready >= target
            && self.rolled_out_hash.as_deref() != Some(hash)
        {
            if self.rolled_out_hash.is_some() {
                self.event(
                    false,
                    "RolledOut",
                    format!("revision {} is running on all {target} instances", desired.revision),
                );
            }
            self.rolled_out_hash = Some(hash.clone());
        }
    }

    fn reconcile_task(&mut self, desired: &Desired) {
        // A task runs once per spec: a new spec hash starts a new run. One that completed
        // before a daemon restart is remembered as such.
        if self.runs.is_empty() && desired.completed.as_deref() == Some(desired.hash.as_str()) {
            self.runs.push_back(Run {
                id: 0,
                hash: desired.hash.clone(),
                succeeded: desired.component.job.as_ref().map(|j| j.count).unwrap_or(1),
                failed: 0,
                state: "Succeeded",
                started_at: String::new(),
                finished_at: None,
            });
        }
        if self.runs.back().is_none_or(|r| r.hash != desired.hash) {
            self.retire_where(|_| true);
            self.begin_run(desired);
        }
        self.drive_runs(desired);
    }

    fn reconcile_cron(&mut self, desired: &Desired) {
        let Some(schedule) = &desired.component.schedule else { return };
        let now = jiff::Zoned::now();
        if schedule.suspend {
            self.next_fire = None;
        } else {
            let Ok(cron) = yun_model::cron::parse(&schedule.cron) else { return };
            match &self.next_fire {
                None => self.next_fire = cron.find_next_occurrence(&now, false).ok(),
                Some(due) if *due <= now => {
                    let late = now.timestamp().as_second() - due.timestamp().as_second();
                    let active = self.runs.iter().any(|r| r.state == "Running");
                    let too_late = schedule.starting_deadline_seconds.is_some_and(|d| late > d as i64);
                    if too_late {
                        self.event(true, "MissedSchedule", format!("run due at {due} skipped: {late}s late"));
                    } else if active && schedule.concurrency_policy == ConcurrencyPolicy::Forbid {
                        self.event(
                            false,
                            "Skipped",
                            "previous run still active (concurrencyPolicy Forbid)".into(),
                        );
                    } else {
                        if active && schedule.concurrency_policy == ConcurrencyPolicy::Replace {
                            for r in self.runs.iter_mut().filter(|r| r.state == "Running") {
                                r.state = "Stopped";
                                r.finished_at = Some(now_text());
                            }
                            self.retire_where(|_| true);
                        }
                        self.begin_run(desired);
                    }
                    self.next_fire = cron.find_next_occurrence(&now, false).ok();
                }
                Some(_) => {}
            }
        }
        self.drive_runs(desired);
        // Trim finished runs to the history limits.
        let (ok_limit, fail_limit) =
            (schedule.successful_jobs_history_limit as usize, schedule.failed_jobs_history_limit as usize);
        let mut ok_seen = 0;
        let mut fail_seen = 0;
        let mut keep = VecDeque::new();
        while let Some(r) = self.runs.pop_back() {
            let keep_it = match r.state {
                "Succeeded" => {
                    ok_seen += 1;
                    ok_seen <= ok_limit
                }
                "Failed" | "Stopped" => {
                    fail_seen += 1;
                    fail_seen <= fail_limit
                }
                _ => true,
            };
            if keep_it {
                keep.push_front(r);
            }
        }
        self.runs = keep;
    }

    fn begin_run(&mut self, desired: &Desired) {
        let id = self.next_run;
        self.next_run += 1;
        self.runs.push_back(Run {
            id,
            hash: desired.hash.clone(),
            succeeded: 0,
            failed: 0,
            state: "Running",
            started_at: now_text(),
            finished_at: None,
        });
        if desired.component.kind == ComponentKind::CronTask {
            self.event(false, "RunStarted", format!("scheduled run {id} started"));
        }
        while self.runs.len() > 50 {
            self.runs.pop_front();
        }
    }

    fn drive_runs(&mut self, desired: &Desired) {
        let count = desired.component.job.as_ref().map(|j| j.count).unwrap_or(1);
        let running: Vec<u64> = self.runs.iter().filter(|r| r.state == "Running").map(|r| r.id).collect();
        for run_id in running {
            let active = self.instances.iter().filter(|i| i.run == run_id && !i.retiring).count() as u32;
            let Some(run) = self.runs.iter().find(|r| r.id == run_id) else { continue };
            let need = count.saturating_sub(run.succeeded + active);
            for _ in 0..need {
                self.start_instance(desired, run_id);
            }
        }
        // Instances of finished runs are stopped.
        let finished: Vec<u64> = self.runs.iter().filter(|r| r.state != "Running").map(|r| r.id).collect();
        self.retire_where(|i| finished.contains(&i.run));
    }

    fn enforce_deadlines(&mut self, desired: &Desired) {
        let Some(deadline) = desired.component.job.as_ref().and_then(|j| j.active_deadline_seconds) else {
            return;
        };
        let mut expired = Vec::new();
        for r in self.runs.iter_mut().filter(|r| r.state == "Running") {
            let started: Option<jiff::Timestamp> = r.started_at.parse().ok();
            if started.is_some_and(|s| jiff::Timestamp::now().as_second() - s.as_second() > deadline as i64) {
                r.state = "Failed";
                r.finished_at = Some(now_text());
                expired.push(r.id);
            }
        }
        for id in expired {
            self.event(
                true,
                "DeadlineExceeded",
                format!("run {id} exceeded activeDeadlineSeconds {deadline}"),
            );
            self.retire_where(|i| i.run == id);
        }
    }

    fn retire_where(&mut self, pred: impl Fn(&Instance) -> bool) {
        let ks: Vec<usize> = (0..self.instances.len())
            .filter(|&k| !self.instances[k].retiring && pred(&self.instances[k]))
            .collect();
        for k in ks {
            self.retire(k);
        }
    }

    /// Takes an instance out of traffic; [`Supervisor::finish_retirements`] stops it once its
    /// in-flight requests have drained.
    fn retire(&mut self, k: usize) {
        let i = &mut self.instances[k];
        i.retiring = true;
        i.ready = false;
        i.drain_since = Some(Instant::now());
        if let Some(p) = i.probes.take() {
            p.abort();
        }
    }

    /// Stops retiring instances whose requests have drained (or whose drain time, the
    /// termination grace period, is up), and forgets those that were not running.
    fn finish_retirements(&mut self, desired: &Desired) {
        // Endpoint removals are published before anything is signalled.
        self.publish_endpoints();
        let drain = Duration::from_secs(desired.component.termination_grace_period_seconds as u64);
        let ports = &self.ports;
        for i in self.instances.iter_mut().filter(|i| i.retiring && i.stop.is_some()) {
            let drained = i
                .ports
                .iter()
                .zip(ports)
                .all(|((_, p), sp)| sp.endpoints.in_flight(&SocketAddr::from(([127, 0, 0, 1], *p))) == 0);
            let overdue = i.drain_since.is_none_or(|t| t.elapsed() >= drain);
            if drained || overdue {
                i.phase = Phase::Stopping;
                if let Some(stop) = i.stop.take() {
                    let _ = stop.send(());
                }
            }
        }
        self.instances.retain(|i| !(i.retiring && i.stop.is_none() && i.pid.is_none()));
    }

    fn start_instance(&mut self, desired: &Desired, run: u64) {
        self.next_id += 1;
        let short = &desired.hash[..6.min(desired.hash.len())];
        let id = format!("{}-{short}-{}", self.name, self.next_id);
        self.instances.push(Instance {
            id,
            hash: desired.hash.clone(),
            run,
            generation: 0,
            ports: Vec::new(),
            pid: None,
            phase: Phase::Starting,
            ready: false,
            restarts: 0,
            probe_failures: 0,
            streak: 0,
            started: Instant::now(),
            started_at: now_text(),
            last_exit: None,
            last_error: None,
            ready_ok: 0,
            ready_fail: 0,
            live_fail: 0,
            stop: None,
            probes: None,
            retiring: false,
            drain_since: None,
        });
        let idx = self.instances.len() - 1;
        self.spawn_process(idx, desired);
    }

    fn spawn_process(&mut self, idx: usize, desired: &Desired) {
        let c = &desired.component;
        let shared = self.shared.clone();
        let i = &mut self.instances[idx];
        i.generation += 1;
        i.phase = Phase::Starting;
        i.ready = false;
        i.ready_ok = 0;
        i.ready_fail = 0;
        i.live_fail = 0;
        i.started = Instant::now();
        i.started_at = now_text();
        // Fresh instance ports per process: a restarted process must not race its old socket.
        let declared: Vec<u16> = if c.kind == ComponentKind::Webservice {
            if c.ports.is_empty() { vec![0] } else { c.ports.iter().map(|p| p.port).collect() }
        } else {
            Vec::new()
        };
        let mut ports = Vec::new();
        for d in declared {
            match free_port() {
                Ok(p) => ports.push((d, p)),
                Err(e) => {
                    i.last_error = Some(format!("no free port: {e}"));
                    i.phase = Phase::BackOff(Instant::now() + Duration::from_secs(1));
                    return;
                }
            }
        }
        i.ports = ports.clone();
        // OpenTelemetry SDKs name the service after the component unless the spec says otherwise.
        let service_name = [("OTEL_SERVICE_NAME".to_string(), self.name.clone())];
        let mut env: Vec<(String, String)> =
            desired.platform_env.iter().chain(&service_name).chain(&desired.env).cloned().collect();
        env.push(("YUN_INSTANCE".into(), i.id.clone()));
        if let Some((_, p)) = ports.first() {
            env.push(("PORT".into(), p.to_string()));
        }
        for (d, p) in &ports {
            if *d != 0 {
                env.push((format!("YUN_PORT_{d}"), p.to_string()));
            }
        }
        for (port, (_, p)) in c.ports.iter().zip(&ports) {
            if let Some(name) = &port.name {
                let var: String = name
                    .chars()
                    .map(|ch| if ch.is_ascii_alphanumeric() { ch.to_ascii_uppercase() } else { '_' })
                    .collect();
                env.push((format!("PORT_{var}"), p.to_string()));
            }
        }
        let (program, args) = match c.cmd.split_first() {
            Some((p, rest)) => (p.clone(), rest.iter().chain(&c.args).cloned().collect()),
            None => (String::new(), Vec::new()),
        };
        let spec = process::Spec { program, args, env: env.clone(), workdir: desired.workdir.clone() };
        let child = match process::spawn(&spec) {
            Ok(child) => child,
            Err(e) => {
                let msg = e.to_string();
                i.streak += 1;
                i.restarts += 1;
                i.last_error = Some(msg.clone());
                i.last_exit = Some("failed to start".into());
                i.phase = Phase::BackOff(Instant::now() + backoff(i.streak));
                self.last_error = Some(msg.clone());
                let id = i.id.clone();
                let streak = i.streak;
                if streak <= 1 || streak.is_power_of_two() {
                    self.event(true, "StartFailed", format!("instance {id}: {msg}"));
                }
                return;
            }
        };
        let Some(pid) = child.id() else { return };
        i.pid = Some(pid);
        i.phase = Phase::Running;
        shared.pidfiles.write(&i.id, pid);
        shared.callers.insert(pid, format!("{}/{}", shared.app, self.name));
        let (stop_tx, stop_rx) = oneshot::channel();
        i.stop = Some(stop_tx);
        let generation = i.generation;
        let id = i.id.clone();
        let grace = Duration::from_secs(c.termination_grace_period_seconds as u64);
        let tx = self.tx.clone();
        let _ = tx.send(Msg::Started { id: id.clone(), generation, pid });
        tokio::spawn(watch_process(
            child,
            pid,
            stop_rx,
            grace,
            shared.clone(),
            self.name.clone(),
            id.clone(),
            generation,
            tx.clone(),
        ));
        // Probes: readiness (explicit, or implicitly the first port for webservices) and liveness.
        let readiness = c.readiness_probe.clone().or_else(|| {
            (c.kind == ComponentKind::Webservice).then_some(Probe {
                exec: None,
                http_get: None,
                tcp_socket: Some(yun_model::TcpSocketAction { port: None }),
                initial_delay_seconds: 0,
                // Kubernetes' default period; until first ready it probes every 100 ms.
                period_seconds: 10,
                timeout_seconds: 1,
                success_threshold: 1,
                failure_threshold: 3,
            })
        });
        let liveness = c.liveness_probe.clone();
        if readiness.is_none() {
            // Without a readiness check an instance is ready once its process runs.
            i.ready = true;
        }
        let workdir = desired.workdir.clone();
        let handle = tokio::spawn(probe_loop(readiness, liveness, ports, workdir, env, id, generation, tx));
        i.probes = Some(handle.abort_handle());
        self.event(false, "Started", format!("instance {} started (pid {pid})", self.instances[idx].id));
    }

    fn publish_endpoints(&self) {
        for (k, port) in self.ports.iter().enumerate() {
            let addrs: Vec<(SocketAddr, String)> = self
                .instances
                .iter()
                .filter(|i| i.ready && !i.retiring && i.phase == Phase::Running)
                .filter_map(|i| {
                    i.ports.get(k).map(|(_, p)| (SocketAddr::from(([127, 0, 0, 1], *p)), i.id.clone()))
                })
                .collect();
            port.endpoints.set(addrs);
        }
    }

    /// Service addresses, then gateway URLs.
    fn addresses(&self, c: &Component) -> Vec<String> {
        let mut out: Vec<String> = self.ports.iter().map(|p| format!("127.0.0.1:{}", p.port)).collect();
        if let (Some(g), Some(gw)) = (&c.gateway, &self.shared.gateway) {
            let host = g.domain.clone().unwrap_or_else(|| gw.addr().ip().to_string());
            out.extend(g.http.keys().map(|prefix| format!("http://{host}:{}{prefix}", gw.addr().port())));
        }
        out
    }

    fn publish(&mut self, desired: &Desired) {
        self.publish_endpoints();
        let c = &desired.component;
        let live: Vec<&Instance> = self.instances.iter().filter(|i| !i.retiring).collect();
        let ready = live.iter().filter(|i| i.ready).count() as u32;
        let updated = live.iter().filter(|i| i.hash == desired.hash).count() as u32;
        let restarts = live.iter().map(|i| i.restarts).sum();
        let crashloop = live.iter().find(|i| matches!(i.phase, Phase::BackOff(_)) && i.streak >= 3);
        let current_ready = live.iter().filter(|i| i.ready && i.hash == desired.hash).count() as u32;
        let (phase, message, available) = if desired.stopped {
            ("Stopped", "application is stopped".to_string(), false)
        } else if !self.started_once {
            ("Waiting", format!("waiting for dependencies: {}", c.depends_on.join(", ")), false)
        } else if let Some(err) = self.port_error.as_ref().or(self.cert_error.as_ref()) {
            ("Failed", err.clone(), ready > 0)
        } else {
            match c.kind {
                ComponentKind::Webservice | ComponentKind::Worker => {
                    if let Some(i) = crashloop {
                        let why = i.last_error.clone().or(i.last_exit.clone()).unwrap_or_default();
                        (
                            "CrashLoopBackOff",
                            format!("instance {} keeps failing ({} restarts): {why}", i.id, i.restarts),
                            ready > 0,
                        )
                    } else if current_ready >= desired.replicas && live.len() as u32 == desired.replicas {
                        ("Running", format!("{ready}/{} ready", desired.replicas), true)
                    } else {
                        let waiting = live
                            .iter()
                            .find(|i| !i.ready)
                            .and_then(|i| i.last_error.clone().map(|e| format!("; {}: {e}", i.id)))
                            .unwrap_or_default();
                        (
                            "Progressing",
                            format!("{ready}/{} ready, {updated} updated{waiting}", desired.replicas),
                            ready > 0 || desired.replicas == 0,
                        )
                    }
                }
                ComponentKind::Task => match self.runs.back() {
                    Some(r) if r.state == "Succeeded" => (
                        "Completed",
                        format!(
                            "{} of {} succeeded",
                            r.succeeded,
                            c.job.as_ref().map(|j| j.count).unwrap_or(1)
                        ),
                        true,
                    ),
                    Some(r) if r.state == "Failed" => (
                        "Failed",
                        format!("failed {} times: {}", r.failed, self.last_error.clone().unwrap_or_default()),
                        false,
                    ),
                    Some(r) => {
                        ("Running", format!("{} succeeded, {} failed so far", r.succeeded, r.failed), false)
                    }
                    None => ("Starting", String::new(), false),
                },
                ComponentKind::CronTask => {
                    let next = self
                        .next_fire
                        .as_ref()
                        .map(|t| t.timestamp().to_string())
                        .unwrap_or_else(|| "suspended".into());
                    ("Scheduled", format!("next run: {next}"), true)
                }
            }
        };
        let instances = self
            .instances
            .iter()
            .map(|i| InstanceStatus {
                id: i.id.clone(),
                pid: i.pid,
                state: match i.phase {
                    Phase::Starting => "Starting",
                    Phase::Running if i.retiring => "Stopping",
                    Phase::Running => "Running",
                    Phase::BackOff(_) => "BackOff",
                    Phase::Stopping => "Stopping",
                    Phase::Succeeded => "Succeeded",
                }
                .into(),
                ready: i.ready,
                restarts: i.restarts,
                probe_failures: i.probe_failures,
                cpu_millis: None,
                rss_bytes: None,
                ports: i.ports.iter().map(|p| p.1).collect(),
                hash: i.hash.clone(),
                started_at: i.started_at.clone(),
                last_exit: i.last_exit.clone(),
                last_error: i.last_error.clone(),
            })
            .collect();
        let status = ComponentStatus {
            name: c.name.clone(),
            kind: c.kind.as_str().into(),
            phase: phase.into(),
            message,
            desired: if c.kind.is_long_running() {
                desired.replicas
            } else {
                c.job.as_ref().map(|j| j.count).unwrap_or(1)
            },
            ready,
            updated,
            restarts,
            revision: desired.revision,
            addresses: self.addresses(c),
            instances,
            runs: self
                .runs
                .iter()
                .map(|r| RunStatus {
                    id: r.id,
                    state: r.state.into(),
                    succeeded: r.succeeded,
                    failed: r.failed,
                    started_at: r.started_at.clone(),
                    finished_at: r.finished_at.clone(),
                })
                .collect(),
            last_error: self.last_error.clone(),
            available,
        };
        let flipped = self.status.borrow().available != status.available;
        if flipped {
            self.shared.availability.notify_waiters();
        }
        self.status.send_if_modified(|s| {
            if *s != status {
                *s = status;
                true
            } else {
                false
            }
        });
    }
}

#[allow(clippy::too_many_arguments)]
async fn watch_process(
    mut child: tokio::process::Child,
    pid: u32,
    stop: oneshot::Receiver<()>,
    grace: Duration,
    shared: Arc<Shared>,
    component: String,
    id: String,
    generation: u64,
    tx: mpsc::UnboundedSender<Msg>,
) {
    let log = shared.logs.writer(&shared.app, &component, &id);
    if let Some(out) = child.stdout.take() {
        log.capture("stdout", out);
    }
    if let Some(err) = child.stderr.take() {
        log.capture("stderr", err);
    }
    let status = tokio::select! {
        status = child.wait() => status,
        _ = stop => {
            process::signal_group(pid, Signal::SIGTERM);
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    process::signal_group(pid, Signal::SIGKILL);
                    child.wait().await
                }
            }
        }
    };
    // Whatever the leader left behind in its group goes with it.
    process::signal_group(pid, Signal::SIGKILL);
    let (success, how) = match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            match (s.code(), s.signal()) {
                (Some(0), _) => (true, "exit code 0".to_string()),
                (Some(c), _) => (false, format!("exit code {c}")),
                (None, Some(sig)) => (false, format!("killed by signal {sig}")),
                _ => (false, "unknown exit".into()),
            }
        }
        Err(e) => (false, format!("wait failed: {e}")),
    };
    let _ = tx.send(Msg::Exited { id, generation, success, how });
}

#[allow(clippy::too_many_arguments)]
async fn probe_loop(
    readiness: Option<Probe>,
    liveness: Option<Probe>,
    ports: Vec<(u16, u16)>,
    workdir: PathBuf,
    env: Vec<(String, String)>,
    id: String,
    generation: u64,
    tx: mpsc::UnboundedSender<Msg>,
) {
    let target = crate::probe::Target { ports: &ports, workdir: &workdir, env: &env };
    let start = tokio::time::Instant::now();
    let mut ever_ready = false;
    let mut next_ready =
        readiness.as_ref().map(|p| start + Duration::from_secs(p.initial_delay_seconds as u64));
    let mut next_live =
        liveness.as_ref().map(|p| start + Duration::from_secs(p.initial_delay_seconds as u64));
    loop {
        let due = match (next_ready, next_live) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return,
        };
        tokio::time::sleep_until(due).await;
        let now = tokio::time::Instant::now();
        if let (Some(at), Some(p)) = (next_ready, &readiness)
            && at <= now
        {
            let result = crate::probe::run(p, &target).await;
            ever_ready |= result.is_ok();
            let period = Duration::from_secs(p.period_seconds.max(1) as u64);
            next_ready = Some(
                tokio::time::Instant::now()
                    + if ever_ready { period } else { STARTUP_PROBE_INTERVAL.min(period) },
            );
            if tx.send(Msg::Probe { id: id.clone(), generation, liveness: false, result }).is_err() {
                return;
            }
        }
        if let (Some(at), Some(p)) = (next_live, &liveness)
            && at <= now
        {
            let result = crate::probe::run(p, &target).await;
            next_live =
                Some(tokio::time::Instant::now() + Duration::from_secs(p.period_seconds.max(1) as u64));
            if tx.send(Msg::Probe { id: id.clone(), generation, liveness: true, result }).is_err() {
                return;
            }
        }
    }
}
