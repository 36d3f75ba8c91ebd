//! Runtime metrics on `/metrics`, read at each scrape: instances per component, readiness and
//! restarts per instance, and each instance's CPU time and memory from `/proc` (summed over its
//! process group, so a shell script's children count too).

use std::collections::HashMap;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use yun_runtime::LocalRuntime;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabels {
    app: String,
    component: String,
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    app: String,
    component: String,
    instance: String,
}

/// Collects from the runtime on every scrape.
pub(crate) struct RuntimeCollector {
    pub runtime: LocalRuntime,
}

impl std::fmt::Debug for RuntimeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RuntimeCollector")
    }
}

/// CPU seconds and resident bytes of a process group.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct Usage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

/// Usage of every process group, from `/proc/*/stat`.
pub(crate) fn process_groups() -> HashMap<u32, Usage> {
    use nix::unistd::{SysconfVar, sysconf};
    let ticks = sysconf(SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1) as f64;
    let page = sysconf(SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096).max(1) as u64;
    let mut groups: HashMap<u32, Usage> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return groups };
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        if let Some((pgrp, cpu_ticks, rss_pages)) = parse_stat(&stat) {
            let u = groups.entry(pgrp).or_default();
            u.cpu_seconds += cpu_ticks as f64 / ticks;
            u.rss_bytes += rss_pages * page;
        }
    }
    groups
}

/// (process group, utime + stime ticks, rss pages) from a `/proc/PID/stat` line. The command
/// name may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<(u32, u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): field N is f[N - 3].
    let pgrp = f.get(2)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let rss: i64 = f.get(21)?.parse().ok()?;
    Some((pgrp, utime + stime, rss.max(0) as u64))
}

/// Feeds the short-term metrics store every step, for as long as the daemon runs.
pub(crate) async fn sample(ctx: std::sync::Arc<crate::Ctx>, proxy: std::sync::Arc<yun_proxy::Metrics>) {
    use yun_telemetry::series::{STEP, TrafficSample, UsageSample};
    let mut tick = tokio::time::interval(STEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last = std::time::Instant::now();
    loop {
        tick.tick().await;
        let elapsed = last.elapsed();
        last = std::time::Instant::now();
        let traffic: Vec<TrafficSample> = proxy
            .traffic()
            .snapshot()
            .into_iter()
            .map(|s| TrafficSample {
                source: s.edge.source,
                app: s.edge.app,
                component: s.edge.component,
                requests: s.requests,
                errors: s.errors,
                buckets: s.buckets,
            })
            .collect();
        // Reading /proc for every process takes a few milliseconds: off the workers.
        let runtime = ctx.runtime.clone();
        let usage = tokio::task::spawn_blocking(move || {
            let groups = process_groups();
            let mut out = Vec::new();
            for app in runtime.apps() {
                for c in runtime.status(&app).unwrap_or_default() {
                    let (cpu, rss) = c
                        .instances
                        .iter()
                        .filter_map(|i| i.pid.and_then(|p| groups.get(&p)))
                        .fold((0.0, 0), |(cpu, rss), u| (cpu + u.cpu_seconds, rss + u.rss_bytes));
                    out.push(UsageSample {
                        app: app.clone(),
                        component: c.name.clone(),
                        cpu_seconds: cpu,
                        rss_bytes: rss,
                        ready: c.ready,
                        desired: c.desired,
                    });
                }
            }
            out
        })
        .await
        .unwrap_or_default();
        let now = jiff::Timestamp::now().as_second().max(0) as u64;
        let steps = ctx.series.record(now, elapsed, &traffic, &usage);
        track_slos(&ctx, now, &steps);
    }
}

/// The objectives of every running app's components (from their current revision).
pub(crate) fn objectives(ctx: &crate::Ctx, app: &str) -> Vec<(String, yun_telemetry::slo::Objective)> {
    let Ok(Some(record)) = ctx.store.app(app) else { return Vec::new() };
    let Ok(Some(revision)) = ctx.store.revision(app, record.current_revision) else { return Vec::new() };
    revision
        .spec
        .components
        .iter()
        .filter_map(|c| {
            let s = c.slo.as_ref()?;
            Some((
                c.name.clone(),
                yun_telemetry::slo::Objective {
                    availability: s.availability,
                    latency: s.latency.as_ref().map(|l| (l.threshold.0.as_secs_f64(), l.percent)),
                    window: s.window(),
                },
            ))
        })
        .collect()
}

/// Feeds each component's step to its objectives, and records an event when a fast burn starts.
fn track_slos(ctx: &crate::Ctx, now: u64, steps: &[yun_telemetry::series::ComponentStep]) {
    use yun_telemetry::slo::Step;
    let mut live = std::collections::HashSet::new();
    for app in ctx.runtime.apps() {
        for (component, objective) in objectives(ctx, &app) {
            let step = steps
                .iter()
                .find(|s| s.app == app && s.component == component)
                .map(|s| Step {
                    requests: s.requests,
                    errors: s.errors,
                    slow: objective.latency.map(|(t, _)| ctx.series.count_above(t, &s.buckets)).unwrap_or(0),
                })
                .unwrap_or_default();
            for burn in ctx.slos.record(now, &app, &component, step, &objective) {
                let _ = ctx.store.record(yun_store::NewEvent {
                    app: Some(burn.app.clone()),
                    component: Some(burn.component.clone()),
                    warning: true,
                    reason: "SLOFastBurn".into(),
                    actor: "reconciler".into(),
                    message: format!(
                        "{} objective {}%: error budget burning {:.0}× as fast as allowed over the last hour ({:.0}× over 5 minutes)",
                        burn.objective, burn.target_percent, burn.burn_rate_1h, burn.burn_rate_5m
                    ),
                });
            }
            live.insert((app.clone(), component));
        }
    }
    ctx.slos.retain(|a, c| live.contains(&(a.to_string(), c.to_string())));
}

impl prometheus_client::collector::Collector for RuntimeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let apps: Vec<(String, Vec<yun_runtime::ComponentStatus>)> = self
            .runtime
            .apps()
            .into_iter()
            .filter_map(|app| self.runtime.status(&app).map(|s| (app, s)))
            .collect();
        let usage = process_groups();
        let mut instances = Vec::new();
        for (app, components) in &apps {
            for c in components {
                for i in &c.instances {
                    let labels = InstanceLabels {
                        app: app.clone(),
                        component: c.name.clone(),
                        instance: i.id.clone(),
                    };
                    let u = i.pid.and_then(|p| usage.get(&p)).copied().unwrap_or_default();
                    instances.push((labels, i, u));
                }
            }
        }

        let g = ConstGauge::new(0i64);
        let mut m = encoder.encode_descriptor(
            "yun_component_instances",
            "Instances of a component: desired, and ready (passing readiness)",
            None,
            g.metric_type(),
        )?;
        for (app, components) in &apps {
            for c in components {
                for (state, n) in [("desired", c.desired), ("ready", c.ready)] {
                    let labels =
                        ComponentLabels { app: app.clone(), component: c.name.clone(), state: state.into() };
                    ConstGauge::new(i64::from(n)).encode(m.encode_family(&labels)?)?;
                }
            }
        }

        let mut m = encoder.encode_descriptor(
            "yun_instance_ready",
            "1 when the instance passes readiness",
            None,
            g.metric_type(),
        )?;
        for (labels, i, _) in &instances {
            ConstGauge::new(i64::from(i.ready)).encode(m.encode_family(labels)?)?;
        }

        let c = ConstCounter::new(0u64);
        let mut m = encoder.encode_descriptor(
            "yun_instance_restarts",
            "Restarts of the instance",
            None,
            c.metric_type(),
        )?;
        for (labels, i, _) in &instances {
            ConstCounter::new(u64::from(i.restarts)).encode(m.encode_family(labels)?)?;
        }

        let mut m = encoder.encode_descriptor(
            "yun_instance_probe_failures",
            "Failed readiness and liveness probes of the instance",
            None,
            c.metric_type(),
        )?;
        for (labels, i, _) in &instances {
            ConstCounter::new(i.probe_failures).encode(m.encode_family(labels)?)?;
        }

        let mut m = encoder.encode_descriptor(
            "yun_instance_cpu_seconds",
            "CPU time used by the instance's current processes",
            None,
            ConstCounter::new(0f64).metric_type(),
        )?;
        for (labels, _, u) in &instances {
            ConstCounter::new(u.cpu_seconds).encode(m.encode_family(labels)?)?;
        }

        let mut m = encoder.encode_descriptor(
            "yun_instance_memory_rss_bytes",
            "Resident memory of the instance's processes",
            None,
            g.metric_type(),
        )?;
        for (labels, _, u) in &instances {
            ConstGauge::new(u.rss_bytes as i64).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line = "4242 (my (odd) cmd) S 1 4240 4240 0 -1 4194560 500 0 0 0 150 50 0 0 20 0 1 0 100 10000000 321 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat(line), Some((4240, 200, 321)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn this_process_group_is_measured() {
        let me = nix::unistd::getpgrp().as_raw() as u32;
        let groups = process_groups();
        let u = groups.get(&me).expect("own process group");
        assert!(u.rss_bytes > 0);
    }
}
