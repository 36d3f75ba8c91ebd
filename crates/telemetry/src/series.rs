//! The short-term metrics store: golden signals per component and per caller → component
//! edge, and CPU/memory per component, one point per sampling step for the last hour. It is fed
//! cumulative counters and keeps the differences, so the CLI and the dashboard can show rates
//! and percentiles with nothing else installed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Time between points.
pub const STEP: Duration = Duration::from_secs(5);
/// Points kept per series: one hour.
pub const POINTS: usize = 720;
/// Most series kept; traffic on further edges is not charted (it still counts on `/metrics`).
pub const MAX_SERIES: usize = 2000;

/// Cumulative traffic of one edge, as the data plane counts it.
#[derive(Debug, Clone)]
pub struct TrafficSample {
    /// The caller: `app/component` or `external`.
    pub source: String,
    pub app: String,
    pub component: String,
    pub requests: u64,
    pub errors: u64,
    /// Requests per latency bucket; `bounds[i]` is bucket i's upper bound in seconds, the last
    /// bucket has none.
    pub buckets: Vec<u64>,
}

/// Cumulative resource use of one component's instances.
#[derive(Debug, Clone)]
pub struct UsageSample {
    pub app: String,
    pub component: String,
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub ready: u32,
    pub desired: u32,
}

/// A component's traffic in one step.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentStep {
    pub app: String,
    pub component: String,
    pub requests: u64,
    pub errors: u64,
    pub buckets: Vec<u64>,
}

/// Golden signals over one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// End of the step, Unix seconds.
    pub t: u64,
    pub rps: f64,
    /// Failed share of the step's requests (0 when there were none).
    pub error_ratio: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Resource use over one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct UsagePoint {
    pub t: u64,
    /// CPU used, in percent of one core.
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    pub ready: u32,
    pub desired: u32,
}

type EdgeKey = (String, String, String); // app, component, source
type ComponentKey = (String, String); // app, component

#[derive(Default)]
struct Inner {
    last_traffic: HashMap<EdgeKey, (u64, u64, Vec<u64>)>,
    last_cpu: HashMap<ComponentKey, f64>,
    edges: HashMap<EdgeKey, VecDeque<Point>>,
    components: HashMap<ComponentKey, VecDeque<Point>>,
    usage: HashMap<ComponentKey, VecDeque<UsagePoint>>,
}

/// See the module documentation.
pub struct MetricsStore {
    bounds: Vec<f64>,
    inner: Mutex<Inner>,
}

impl MetricsStore {
    /// A store for latency buckets with these upper bounds (seconds).
    pub fn new(bounds: &[f64]) -> MetricsStore {
        MetricsStore { bounds: bounds.to_vec(), inner: Mutex::default() }
    }

    /// Adds one step: `now` in Unix seconds, `elapsed` the time since the previous step.
    /// Returns each component's traffic in the step (for service level objectives).
    pub fn record(
        &self,
        now: u64,
        elapsed: Duration,
        traffic: &[TrafficSample],
        usage: &[UsageSample],
    ) -> Vec<ComponentStep> {
        let secs = elapsed.as_secs_f64().max(0.001);
        let Ok(mut inner) = self.inner.lock() else { return Vec::new() };
        let inner = &mut *inner;
        let mut per_component: HashMap<ComponentKey, (u64, u64, Vec<u64>)> = HashMap::new();
        for s in traffic {
            let key = (s.app.clone(), s.component.clone(), s.source.clone());
            let (dreq, derr, dbuckets) = match inner.last_traffic.get(&key) {
                // Counters only grow; a smaller value means they were reset.
                Some((r, e, b)) if s.requests >= *r && b.len() == s.buckets.len() => (
                    s.requests - r,
                    s.errors.saturating_sub(*e),
                    s.buckets.iter().zip(b).map(|(n, o)| n.saturating_sub(*o)).collect(),
                ),
                _ => (s.requests, s.errors, s.buckets.clone()),
            };
            inner.last_traffic.insert(key.clone(), (s.requests, s.errors, s.buckets.clone()));
            let c = per_component.entry((s.app.clone(), s.component.clone())).or_insert((
                0,
                0,
                vec![0; dbuckets.len()],
            ));
            c.0 += dreq;
            c.1 += derr;
            for (sum, d) in c.2.iter_mut().zip(&dbuckets) {
                *sum += d;
            }
            let point = self.point(now, secs, dreq, derr, &dbuckets);
            push(&mut inner.edges, key, point, POINTS);
        }
        let mut steps = Vec::new();
        for (key, (dreq, derr, dbuckets)) in per_component {
            let point = self.point(now, secs, dreq, derr, &dbuckets);
            push(&mut inner.components, key.clone(), point, POINTS);
            steps.push(ComponentStep {
                app: key.0,
                component: key.1,
                requests: dreq,
                errors: derr,
                buckets: dbuckets,
            });
        }
        for u in usage {
            let key = (u.app.clone(), u.component.clone());
            let last = inner.last_cpu.insert(key.clone(), u.cpu_seconds);
            // Instances come and go, so the sum can drop; a drop counts as no use.
            let used = last.map(|l| (u.cpu_seconds - l).max(0.0)).unwrap_or(0.0);
            let point = UsagePoint {
                t: now,
                cpu_percent: used / secs * 100.0,
                rss_bytes: u.rss_bytes,
                ready: u.ready,
                desired: u.desired,
            };
            push(&mut inner.usage, key, point, POINTS);
        }
        // Series with no traffic over the whole window go.
        inner.edges.retain(|_, p| p.iter().any(|p| p.rps > 0.0));
        inner.components.retain(|_, p| p.iter().any(|p| p.rps > 0.0));
        let live: std::collections::HashSet<ComponentKey> =
            usage.iter().map(|u| (u.app.clone(), u.component.clone())).collect();
        inner.usage.retain(|k, _| live.contains(k));
        inner.last_cpu.retain(|k, _| live.contains(k));
        steps
    }

    /// How many of `buckets`' requests took longer than `threshold` seconds (the bucket that
    /// holds the threshold counts in proportion, as its requests are taken to be spread evenly).
    pub fn count_above(&self, threshold: f64, buckets: &[u64]) -> u64 {
        let mut above = 0.0;
        for (i, &n) in buckets.iter().enumerate() {
            let lower = if i == 0 { 0.0 } else { self.bounds.get(i - 1).copied().unwrap_or(f64::MAX) };
            let upper = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            if lower >= threshold {
                above += n as f64;
            } else if upper > threshold && upper.is_finite() {
                above += n as f64 * (upper - threshold) / (upper - lower);
            } else if upper > threshold {
                above += n as f64;
            }
        }
        above.round() as u64
    }

    fn point(&self, t: u64, secs: f64, requests: u64, errors: u64, buckets: &[u64]) -> Point {
        Point {
            t,
            rps: requests as f64 / secs,
            error_ratio: if requests == 0 { 0.0 } else { errors as f64 / requests as f64 },
            p50_ms: quantile(0.5, buckets, &self.bounds).map(|s| s * 1000.0),
            p99_ms: quantile(0.99, buckets, &self.bounds).map(|s| s * 1000.0),
        }
    }

    /// Golden signals of each component of `app` that had traffic.
    pub fn components(&self, app: &str) -> BTreeMap<String, Vec<Point>> {
        let Ok(inner) = self.inner.lock() else { return BTreeMap::new() };
        inner
            .components
            .iter()
            .filter(|(k, _)| k.0 == app)
            .map(|(k, v)| (k.1.clone(), v.iter().copied().collect()))
            .collect()
    }

    /// Golden signals of each edge into a component of `app`: (source, component, points).
    pub fn edges(&self, app: &str) -> Vec<(String, String, Vec<Point>)> {
        let Ok(inner) = self.inner.lock() else { return Vec::new() };
        let mut out: Vec<_> = inner
            .edges
            .iter()
            .filter(|(k, _)| k.0 == app)
            .map(|(k, v)| (k.2.clone(), k.1.clone(), v.iter().copied().collect()))
            .collect();
        out.sort_by(|a: &(String, String, Vec<Point>), b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// Resource use of each component of `app`.
    pub fn usage(&self, app: &str) -> BTreeMap<String, Vec<UsagePoint>> {
        let Ok(inner) = self.inner.lock() else { return BTreeMap::new() };
        inner
            .usage
            .iter()
            .filter(|(k, _)| k.0 == app)
            .map(|(k, v)| (k.1.clone(), v.iter().copied().collect()))
            .collect()
    }

    /// How many series are kept (for the limit and `/metrics`).
    pub fn series(&self) -> usize {
        self.inner.lock().map(|i| i.edges.len() + i.components.len() + i.usage.len()).unwrap_or(0)
    }
}

fn push<K: std::hash::Hash + Eq, P>(map: &mut HashMap<K, VecDeque<P>>, key: K, point: P, cap: usize) {
    if !map.contains_key(&key) && map.len() >= MAX_SERIES {
        return;
    }
    let ring = map.entry(key).or_default();
    if ring.len() == cap {
        ring.pop_front();
    }
    ring.push_back(point);
}

/// The q-quantile of requests counted per bucket, in seconds, interpolating linearly within the
/// bucket as Prometheus's `histogram_quantile` does; the open last bucket answers its lower
/// bound. None when there were no requests.
pub fn quantile(q: f64, buckets: &[u64], bounds: &[f64]) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut seen = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && (seen + n) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { bounds.get(i - 1).copied().unwrap_or(0.0) };
            let Some(&upper) = bounds.get(i) else { return Some(lower) };
            return Some(lower + (upper - lower) * ((rank - seen as f64) / n as f64));
        }
        seen += n;
    }
    bounds.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: [f64; 3] = [0.01, 0.1, 1.0];

    fn sample(source: &str, requests: u64, errors: u64, buckets: [u64; 4]) -> TrafficSample {
        TrafficSample {
            source: source.into(),
            app: "shop".into(),
            component: "web".into(),
            requests,
            errors,
            buckets: buckets.to_vec(),
        }
    }

    #[test]
    fn requests_above_a_threshold_are_counted_from_buckets() {
        let store = MetricsStore::new(&BOUNDS);
        assert_eq!(store.count_above(0.1, &[5, 5, 10, 3]), 13);
        // 0.055 s is half-way through (0.01, 0.1]: half of that bucket is slower.
        assert_eq!(store.count_above(0.055, &[0, 10, 0, 0]), 5);
        assert_eq!(store.count_above(0.0, &[1, 1, 1, 1]), 4);
        assert_eq!(store.count_above(5.0, &[1, 1, 1, 1]), 1, "the open bucket is above any bound");
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        assert_eq!(quantile(0.5, &[0, 0, 0, 0], &BOUNDS), None);
        // 100 requests all in (0.01, 0.1]: the median is half-way through that bucket.
        let median = quantile(0.5, &[0, 100, 0, 0], &BOUNDS).unwrap();
        assert!((median - 0.055).abs() < 1e-9, "{median}");
        assert_eq!(quantile(0.99, &[0, 0, 0, 5], &BOUNDS), Some(1.0));
        assert!(quantile(0.99, &[99, 0, 1, 0], &BOUNDS).unwrap() <= 0.01);
    }

    #[test]
    fn steps_hold_rates_errors_and_percentiles_of_the_difference() {
        let store = MetricsStore::new(&BOUNDS);
        let step = Duration::from_secs(5);
        store.record(
            100,
            step,
            &[sample("external", 100, 0, [100, 0, 0, 0]), sample("shop/api", 10, 0, [10, 0, 0, 0])],
            &[],
        );
        store.record(
            105,
            step,
            &[sample("external", 150, 5, [100, 50, 0, 0]), sample("shop/api", 10, 0, [10, 0, 0, 0])],
            &[],
        );
        let web = &store.components("shop")["web"];
        assert_eq!(web.len(), 2);
        let p = web[1];
        assert_eq!(p.t, 105);
        assert!((p.rps - 10.0).abs() < 1e-9, "{p:?}");
        assert!((p.error_ratio - 0.1).abs() < 1e-9);
        assert!(p.p50_ms.unwrap() > 10.0, "this step's requests were all slower than 10 ms: {p:?}");
        let edges = store.edges("shop");
        assert_eq!(edges.len(), 2);
        assert_eq!(edges[1].0, "shop/api");
        assert_eq!(edges[1].2[1].rps, 0.0);
        assert!(store.components("other").is_empty());
    }

    #[test]
    fn an_hour_is_kept_and_idle_series_go() {
        let store = MetricsStore::new(&BOUNDS);
        for i in 0..(POINTS as u64 + 50) {
            let n = if i < 10 { i * 10 } else { 100 };
            store.record(i * 5, STEP, &[sample("external", n, 0, [n, 0, 0, 0])], &[]);
        }
        // The first points had traffic; after an hour without any the series is dropped.
        assert!(store.components("shop").is_empty());
        store.record(10_000, STEP, &[sample("external", 200, 0, [200, 0, 0, 0])], &[]);
        assert_eq!(store.components("shop")["web"].len(), 1);
    }

    #[test]
    fn counters_that_restart_do_not_make_negative_rates() {
        let store = MetricsStore::new(&BOUNDS);
        store.record(5, STEP, &[sample("external", 1000, 0, [1000, 0, 0, 0])], &[]);
        store.record(10, STEP, &[sample("external", 20, 0, [20, 0, 0, 0])], &[]);
        let web = &store.components("shop")["web"];
        assert!((web[1].rps - 4.0).abs() < 1e-9, "{:?}", web[1]);
    }

    #[test]
    fn cpu_use_is_a_percentage_of_one_core() {
        let store = MetricsStore::new(&BOUNDS);
        let u = |cpu: f64| UsageSample {
            app: "shop".into(),
            component: "web".into(),
            cpu_seconds: cpu,
            rss_bytes: 1 << 20,
            ready: 1,
            desired: 2,
        };
        store.record(5, STEP, &[], &[u(10.0)]);
        store.record(10, STEP, &[], &[u(12.5)]);
        let points = &store.usage("shop")["web"];
        assert!((points[1].cpu_percent - 50.0).abs() < 1e-9, "{points:?}");
        assert_eq!((points[1].ready, points[1].desired, points[1].rss_bytes), (1, 2, 1 << 20));
        store.record(15, STEP, &[], &[]);
        assert!(store.usage("shop").is_empty(), "components that went away are forgotten");
    }
}
