//! The application reconciler: level-triggered, idempotent. For each app it reads the desired
//! state from the store and hands the runtime a deployment, or tears the app down when it is
//! being deleted. It runs on every change (queued by the API) and on a periodic resync, so a
//! lost wake-up only delays convergence.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use yun_model::ComponentKind;
use yun_runtime::Deployment;
use yun_store::AppRecord;

use crate::Ctx;

/// Period of the full resync.
const RESYNC: Duration = Duration::from_secs(2);

/// The reconciler's own metrics.
pub(crate) struct Metrics {
    duration: prometheus_client::metrics::histogram::Histogram,
    queue: prometheus_client::metrics::gauge::Gauge,
    failures: prometheus_client::metrics::counter::Counter,
}

impl Metrics {
    pub(crate) fn register(registry: &mut prometheus_client::registry::Registry) -> Metrics {
        let m = Metrics {
            // 100 µs … ~3 s.
            duration: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16),
            ),
            queue: Default::default(),
            failures: Default::default(),
        };
        registry.register(
            "yun_reconcile_duration_seconds",
            "Time to reconcile one application",
            m.duration.clone(),
        );
        registry.register(
            "yun_reconcile_queue_depth",
            "Applications waiting to be reconciled",
            m.queue.clone(),
        );
        registry.register(
            "yun_reconcile_failures",
            "Reconciles that failed and will be retried",
            m.failures.clone(),
        );
        m
    }
}

pub(crate) async fn run(ctx: Arc<Ctx>, mut queue: mpsc::UnboundedReceiver<String>, metrics: Metrics) {
    let mut resync = tokio::time::interval(RESYNC);
    loop {
        let mut names = BTreeSet::new();
        tokio::select! {
            Some(name) = queue.recv() => { names.insert(name); }
            _ = resync.tick() => {
                match ctx.store.apps() {
                    Ok(apps) => names.extend(apps.into_iter().map(|a| a.name)),
                    Err(e) => tracing::error!(error = %e, "Cannot list applications."),
                }
            }
        }
        while let Ok(name) = queue.try_recv() {
            names.insert(name);
        }
        let mut waiting = names.len() as i64;
        for name in names {
            metrics.queue.set(waiting);
            let start = std::time::Instant::now();
            if let Err(e) = reconcile(&ctx, &name).await {
                metrics.failures.inc();
                tracing::warn!(app = %name, error = %e, "Reconcile failed; will retry.");
            }
            metrics.duration.observe(start.elapsed().as_secs_f64());
            waiting -= 1;
        }
        metrics.queue.set(0);
    }
}

async fn reconcile(ctx: &Ctx, name: &str) -> Result<(), yun_store::Error> {
    let Some(record) = ctx.store.app(name)? else {
        ctx.runtime.remove(name).await;
        return Ok(());
    };
    if record.deleting {
        // Every instance is stopped before the record goes: nothing outlives its app.
        ctx.runtime.remove(name).await;
        ctx.runtime.logs().remove_app(name);
        ctx.store.purge(name)?;
        return Ok(());
    }
    let revision = ctx
        .store
        .revision(name, record.current_revision)?
        .ok_or(yun_store::Error::RevisionNotFound { app: name.into(), revision: record.current_revision })?;
    let spec = with_revision_tracks(ctx, name, revision.spec.clone())?;
    let record = allocate_service_ports(ctx, record, &spec)?;
    ctx.runtime.deploy(Deployment {
        app: name.into(),
        revision: revision.number,
        spec,
        base_dir: PathBuf::from(revision.base_dir),
        replicas: record.scale.clone(),
        service_ports: record.service_ports.clone(),
        stopped: record.stopped,
        completed_tasks: record.completed_tasks.clone(),
    });
    Ok(())
}

/// Range service ports are allocated from. It sits below Linux's ephemeral range
/// (32768–60999), from which instance ports come, so the two never collide.
const SERVICE_PORTS: std::ops::Range<u16> = 20000..32000;

/// Adds, for every earlier revision that a component's traffic split or routes name, that
/// revision's spec of the component as an extra component (`name@rN`, one instance) to run
/// beside the current one.
fn with_revision_tracks(
    ctx: &Ctx,
    app: &str,
    mut spec: yun_model::App,
) -> Result<yun_model::App, yun_store::Error> {
    let mut extra = Vec::new();
    for c in &spec.components {
        for r in c.traffic.as_ref().map(|t| t.revisions()).unwrap_or_default() {
            let old = ctx.store.revision(app, r)?.and_then(|rev| rev.spec.component(&c.name).cloned());
            let Some(mut old) = old else {
                tracing::warn!(app, component = %c.name, revision = r, "Split to a revision without this component.");
                continue;
            };
            old.name = yun_model::revision_component(&c.name, r);
            old.traffic = None;
            old.gateway = None;
            old.depends_on.clear();
            old.replicas = 1;
            extra.push(old);
        }
    }
    spec.components.extend(extra);
    Ok(spec)
}

/// Webservices that declare no port, and revision tracks, get a loopback port, persisted so
/// that their address survives daemon restarts.
fn allocate_service_ports(
    ctx: &Ctx,
    record: AppRecord,
    spec: &yun_model::App,
) -> Result<AppRecord, yun_store::Error> {
    let missing: Vec<String> = spec
        .components
        .iter()
        .filter(|c| c.kind == ComponentKind::Webservice && (c.ports.is_empty() || c.name.contains('@')))
        .filter(|c| !record.service_ports.contains_key(&c.name))
        .map(|c| c.name.clone())
        .collect();
    if missing.is_empty() {
        return Ok(record);
    }
    let mut taken: BTreeSet<u16> =
        ctx.store.apps()?.iter().flat_map(|a| a.service_ports.values().copied()).collect();
    ctx.store.update_app(&record.name, None, |r| {
        for name in &missing {
            if let Some(port) = free_service_port(&taken) {
                taken.insert(port);
                r.service_ports.insert(name.clone(), port);
            }
        }
        Ok(())
    })
}

fn free_service_port(taken: &BTreeSet<u16>) -> Option<u16> {
    let span = SERVICE_PORTS.end - SERVICE_PORTS.start;
    let start = rand::random::<u16>() % span;
    (0..span)
        .map(|i| SERVICE_PORTS.start + (start + i) % span)
        .find(|p| !taken.contains(p) && std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
}
