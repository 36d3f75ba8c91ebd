//! The data plane's metrics: one place for their names, labels and buckets. They are registered
//! in the daemon's Prometheus registry and served on its `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a route's series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub app: String,
    pub component: String,
    pub route: String,
}

/// Labels of a request count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub app: String,
    pub component: String,
    pub route: String,
    /// The calling component (`app/component`), or `external`.
    pub source: String,
    /// The instance that answered, or `none` when the proxy answered itself.
    pub instance: String,
    /// `2xx` … `5xx`.
    pub class: String,
}

/// Labels of a refusal by a policy.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub app: String,
    pub component: String,
    pub route: String,
    /// `rateLimit`, `concurrency`, `circuitBreaker` or `timeout`.
    pub policy: String,
}

/// Labels of a component's series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    pub app: String,
    pub component: String,
}

/// Labels of an instance's series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub app: String,
    pub component: String,
    pub instance: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The data plane's metric families.
pub struct Metrics {
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) duration: HistogramFamily,
    pub(crate) in_flight: Family<ComponentLabels, Gauge>,
    pub(crate) retries: Family<RouteLabels, Counter>,
    pub(crate) breaker: Family<RouteLabels, Gauge>,
    pub(crate) rejections: Family<RejectLabels, Counter>,
    pub(crate) ejections: Family<InstanceLabels, Counter>,
    /// Where each hop's span goes; no spans are made without it.
    pub(crate) traces: Option<std::sync::Arc<yun_telemetry::TraceStore>>,
    /// Cumulative traffic per caller → component edge.
    pub(crate) traffic: crate::traffic::TrafficStats,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    /// Creates the families and registers them under the `yun_proxy` prefix.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            in_flight: Family::default(),
            retries: Family::default(),
            breaker: Family::default(),
            rejections: Family::default(),
            ejections: Family::default(),
            traces: None,
            traffic: Default::default(),
        };
        let r = registry.sub_registry_with_prefix("yun_proxy");
        r.register(
            "requests",
            "Requests through service addresses, by answering instance and status class",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from receiving a request to its response head",
            m.duration.clone(),
        );
        r.register("requests_in_flight", "Requests being handled", m.in_flight.clone());
        r.register("retries", "Attempts sent again after a failure", m.retries.clone());
        r.register(
            "circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open",
            m.breaker.clone(),
        );
        r.register("rejections", "Requests refused by a policy", m.rejections.clone());
        r.register("ejections", "Instances ejected after consecutive failures", m.ejections.clone());
        m
    }

    /// Traffic per edge, for the daemon's short-term store and topology.
    pub fn traffic(&self) -> &crate::traffic::TrafficStats {
        &self.traffic
    }

    /// Records a span for every request through the data plane into `traces`, and passes
    /// W3C trace context on.
    pub fn with_traces(mut self, traces: std::sync::Arc<yun_telemetry::TraceStore>) -> Metrics {
        self.traces = Some(traces);
        self
    }
}

/// Which of the request counters by status class counts `status` (1xx to 5xx).
pub(crate) fn status_class(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

/// One route's series, looked up once so that a request touches no label strings.
pub(crate) struct RouteSeries {
    pub duration: Histogram,
    pub retries: Counter,
    breaker: std::sync::OnceLock<Gauge>,
    breaker_family: Family<RouteLabels, Gauge>,
    labels: RouteLabels,
    /// Counters by source, then instance, then status class.
    by_caller:
        std::sync::RwLock<std::collections::HashMap<String, std::collections::HashMap<String, [Counter; 5]>>>,
    family: Family<RequestLabels, Counter>,
}

impl RouteSeries {
    /// The request counters from `source` answered by `instance`, by status class (see
    /// [`status_class`]).
    pub(crate) fn requests(&self, source: &str, instance: &str) -> [Counter; 5] {
        let cached = self.by_caller.read().ok().and_then(|m| m.get(source)?.get(instance).cloned());
        if let Some(c) = cached {
            return c;
        }
        let counters: [Counter; 5] = std::array::from_fn(|k| {
            self.family
                .get_or_create(&RequestLabels {
                    app: self.labels.app.clone(),
                    component: self.labels.component.clone(),
                    route: self.labels.route.clone(),
                    source: source.to_string(),
                    instance: instance.to_string(),
                    class: format!("{}xx", k + 1),
                })
                .clone()
        });
        if let Ok(mut m) = self.by_caller.write() {
            // Instances come and go; a bounded cache keeps memory flat over many rollouts.
            if m.values().map(|i| i.len()).sum::<usize>() > 4096 {
                m.clear();
            }
            m.entry(source.to_string()).or_default().insert(instance.to_string(), counters.clone());
        }
        counters
    }

    /// The breaker-state gauge, created on first use so routes without a breaker export none.
    pub(crate) fn breaker(&self) -> &Gauge {
        self.breaker.get_or_init(|| self.breaker_family.get_or_create(&self.labels).clone())
    }
}

impl Metrics {
    /// The series of one route of a component.
    pub(crate) fn route(&self, labels: RouteLabels) -> RouteSeries {
        RouteSeries {
            duration: self.duration.get_or_create(&labels).clone(),
            retries: self.retries.get_or_create(&labels).clone(),
            breaker: std::sync::OnceLock::new(),
            breaker_family: self.breaker.clone(),
            by_caller: Default::default(),
            family: self.requests.clone(),
            labels,
        }
    }
}
