//! The `resilience` trait: timeouts, retries with a budget, circuit breaking, rate limiting and
//! a concurrency limit, for a whole component and optionally per route. Semantics follow
//! Sentinel (flow and degrade rules), Envoy (retry back-off, per-try timeout) and Linkerd (retry
//! budget). Defaults are documented on each field and in docs/manifest.md.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as `250ms`, `2s`, `1m` or `1h` (integers, or decimals such as `1.5s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

impl Dur {
    /// Parses `250ms`, `2s`, `1.5s`, `1m`, `1h`.
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().map_err(|_| format!("invalid duration \"{s}\": use e.g. 250ms, 2s, 1m"))?;
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return Err(format!("invalid duration \"{s}\": the unit must be ms, s, m or h")),
        };
        if !secs.is_finite() || secs > 86_400.0 {
            return Err(format!("invalid duration \"{s}\": at most 24h"));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) { write!(f, "{}s", ms / 1000) } else { write!(f, "{ms}ms") }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?(ms|s|m|h)$"})
    }
}

/// Policies for one route (or the whole component). Every part is optional; an absent part
/// is not applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    /// Overall time for a request, all retries included; on expiry the caller gets 504.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Time for one attempt (default: the overall timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Dur>,
    /// Retries of failed attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Stops sending to a failing component for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Requests per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Requests in flight at once (bulkhead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
}

/// What makes an attempt worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The connection to the instance failed; the request was never sent.
    ConnectFailure,
    /// Any 5xx answer.
    #[serde(rename = "5xx")]
    ServerError,
    /// 502, 503 or 504.
    GatewayError,
    /// The attempt exceeded `perTryTimeout`.
    Timeout,
    /// The connection broke before an answer.
    Reset,
}

/// Retry policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retries {
    /// Retries after the first attempt (default 2, at most 10).
    #[serde(default = "two")]
    pub attempts: u32,
    /// When to retry (default: connect-failure, gateway-error).
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    /// Further status codes to retry on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status_codes: Vec<u16>,
    /// First back-off (default 25ms); each retry doubles it, with full jitter.
    #[serde(default = "ms25")]
    pub backoff_base: Dur,
    /// Longest back-off (default 250ms).
    #[serde(default = "ms250")]
    pub backoff_max: Dur,
    /// Also retry methods that are not idempotent (POST, PATCH). Default false.
    #[serde(default)]
    pub non_idempotent: bool,
    /// Retries may add at most this fraction of the requests of the last 10 s (default 0.2).
    #[serde(default = "ratio20")]
    pub budget_ratio: f64,
    /// Retries always allowed per second whatever the ratio (default 10).
    #[serde(default = "ten")]
    pub budget_min_per_second: u32,
}

/// Circuit-breaking strategy (Sentinel's degrade rule grades).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BreakerStrategy {
    /// Trips when errors / requests in the window exceed `threshold` (0..1).
    ErrorRatio,
    /// Trips when slow calls / requests exceed `threshold` (0..1); slow means longer than
    /// `slowCallThreshold`.
    SlowRatio,
    /// Trips when errors in the window exceed `threshold`.
    ErrorCount,
}

/// Circuit breaker: closed → open (everything refused for `openDuration`) → half-open (one
/// probe request) → closed on success, open again on failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// What trips it.
    pub strategy: BreakerStrategy,
    /// Ratio (0..1) or count, depending on the strategy.
    pub threshold: f64,
    /// A call slower than this is slow (required for slowRatio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_call_threshold: Option<Dur>,
    /// Requests in the window before it may trip (default 5).
    #[serde(default = "five")]
    pub min_requests: u32,
    /// Statistics window (default 1s).
    #[serde(default = "s1")]
    pub window: Dur,
    /// How long it stays open before a probe (default 5s).
    #[serde(default = "s5")]
    pub open_duration: Dur,
}

/// What a rate limit does with excess requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RateBehavior {
    /// Refuse at once with 429 (the default).
    #[default]
    Reject,
    /// Start at `qps / coldFactor` after idleness and rise to `qps` over `warmUpPeriod`.
    WarmUp,
    /// Space requests evenly at `qps`, queueing each for at most `maxQueueingTime`.
    Queue,
}

/// Rate limit (Sentinel flow rule, QPS grade).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    /// Requests per second.
    pub qps: f64,
    /// Reject, warm-up or queue.
    #[serde(default)]
    pub behavior: RateBehavior,
    /// Warm-up duration (warmUp only; default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_up_period: Option<Dur>,
    /// Cold factor, > 1 (warmUp only; default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_factor: Option<f64>,
    /// Longest wait in the queue (queue only; default 500ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queueing_time: Option<Dur>,
}

/// Concurrency limit (bulkhead) with a bounded queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Concurrency {
    /// Requests in flight at once.
    pub limit: u32,
    /// Requests that may wait for a slot (default 0: refuse at once).
    #[serde(default)]
    pub queue: u32,
    /// Longest wait for a slot (default 1s; only with a queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<Dur>,
}

/// Which requests a route policy applies to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteMatch {
    /// Path prefix, e.g. `/api/orders`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Methods, e.g. `[GET, HEAD]`; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Calling components (`app/component`, or `external` for callers that are not
    /// instances); empty means any caller. Sentinel's `limitApp`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
}

/// A route-specific policy; the first matching route wins, otherwise the component's policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Route {
    /// Which requests.
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    /// Its policy (replaces the component's; it is not merged).
    pub policy: Policy,
}

/// The validated `resilience` trait.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Resilience {
    /// The component-wide policy.
    pub policy: Policy,
    /// Route-specific policies, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

/// The trait's properties as users write them, for the JSON schema only: the component policy's
/// fields, plus `routes`, each a `match` plus a policy's fields.
#[derive(JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct ResilienceProperties {
    #[serde(flatten)]
    policy: Policy,
    /// Route-specific policies; the first whose `match` fits a request applies instead.
    routes: Vec<RouteProperties>,
}

#[derive(JsonSchema)]
#[allow(dead_code)]
struct RouteProperties {
    /// Which requests.
    #[serde(rename = "match")]
    matches: RouteMatch,
    #[serde(flatten)]
    policy: Policy,
}

fn two() -> u32 {
    2
}
fn five() -> u32 {
    5
}
fn ten() -> u32 {
    10
}
fn ratio20() -> f64 {
    0.2
}
fn ms25() -> Dur {
    Dur(Duration::from_millis(25))
}
fn ms250() -> Dur {
    Dur(Duration::from_millis(250))
}
fn s1() -> Dur {
    Dur(Duration::from_secs(1))
}
fn s5() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectFailure, RetryOn::GatewayError]
}

/// Contradictions and out-of-range values in a policy: (field path under `at`, message).
pub fn check_policy(p: &Policy) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut err = |field: &str, msg: String| out.push((field.to_string(), msg));
    if let (Some(t), Some(pt)) = (p.timeout, p.per_try_timeout)
        && pt > t
    {
        err("perTryTimeout", format!("perTryTimeout {pt} is longer than timeout {t}"));
    }
    for (field, d) in [("timeout", p.timeout), ("perTryTimeout", p.per_try_timeout)] {
        if d.is_some_and(|d| d.0.is_zero()) {
            err(field, "must be longer than 0".into());
        }
    }
    if let Some(r) = &p.retries {
        if r.attempts > 10 {
            err("retries.attempts", "at most 10 retries".into());
        }
        if r.backoff_base > r.backoff_max {
            err(
                "retries.backoffBase",
                format!("backoffBase {} is longer than backoffMax {}", r.backoff_base, r.backoff_max),
            );
        }
        if !(0.0..=1.0).contains(&r.budget_ratio) {
            err("retries.budgetRatio", "must be between 0 and 1".into());
        }
        if r.on.is_empty() && r.status_codes.is_empty() {
            err("retries.on", "give at least one retry condition or status code".into());
        }
        for (i, c) in r.status_codes.iter().enumerate() {
            if !(100..=599).contains(c) {
                err(&format!("retries.statusCodes[{i}]"), format!("{c} is not an HTTP status"));
            }
        }
        if r.on.contains(&RetryOn::Timeout) && p.per_try_timeout.is_none() {
            err(
                "retries.on",
                "retrying on timeout needs perTryTimeout (else the overall timeout has already expired)"
                    .into(),
            );
        }
    }
    if let Some(b) = &p.circuit_breaker {
        match b.strategy {
            BreakerStrategy::ErrorRatio | BreakerStrategy::SlowRatio
                if !(0.0..=1.0).contains(&b.threshold) =>
            {
                err("circuitBreaker.threshold", "a ratio must be between 0 and 1".into())
            }
            BreakerStrategy::ErrorCount if b.threshold < 1.0 || b.threshold.fract() != 0.0 => {
                err("circuitBreaker.threshold", "an error count must be a whole number of at least 1".into())
            }
            _ => {}
        }
        match (b.strategy, b.slow_call_threshold) {
            (BreakerStrategy::SlowRatio, None) => {
                err("circuitBreaker.slowCallThreshold", "slowRatio needs slowCallThreshold".into())
            }
            (BreakerStrategy::ErrorRatio | BreakerStrategy::ErrorCount, Some(_)) => err(
                "circuitBreaker.slowCallThreshold",
                "slowCallThreshold only applies to the slowRatio strategy".into(),
            ),
            _ => {}
        }
        if b.window.0.is_zero() || b.open_duration.0.is_zero() {
            err("circuitBreaker", "window and openDuration must be longer than 0".into());
        }
    }
    if let Some(r) = &p.rate_limit {
        if !(r.qps > 0.0 && r.qps <= 1_000_000.0) {
            err("rateLimit.qps", "must be above 0 and at most 1000000".into());
        }
        let warm = r.warm_up_period.is_some() || r.cold_factor.is_some();
        if warm && r.behavior != RateBehavior::WarmUp {
            err("rateLimit", "warmUpPeriod and coldFactor need behavior: warmUp".into());
        }
        if r.max_queueing_time.is_some() && r.behavior != RateBehavior::Queue {
            err("rateLimit.maxQueueingTime", "maxQueueingTime needs behavior: queue".into());
        }
        if r.cold_factor.is_some_and(|c| c <= 1.0 || c > 100.0) {
            err("rateLimit.coldFactor", "must be above 1 and at most 100".into());
        }
        if r.warm_up_period.is_some_and(|d| d.0.is_zero()) {
            err("rateLimit.warmUpPeriod", "must be longer than 0".into());
        }
    }
    if let Some(c) = &p.concurrency {
        if c.limit == 0 || c.limit > 100_000 {
            err("concurrency.limit", "must be between 1 and 100000".into());
        }
        if c.queue == 0 && c.queue_timeout.is_some() {
            err("concurrency.queueTimeout", "queueTimeout needs a queue above 0".into());
        }
        if c.queue > 100_000 {
            err("concurrency.queue", "at most 100000".into());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(Dur::parse("1.5s").unwrap().0, Duration::from_millis(1500));
        assert_eq!(Dur::parse("2m").unwrap().0, Duration::from_secs(120));
        for bad in ["", "5", "1d", "-1s", "ms", "1e9h", "25h"] {
            assert!(Dur::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Dur::parse("2s").unwrap().to_string(), "2s");
        assert_eq!(Dur::parse("1500ms").unwrap().to_string(), "1500ms");
    }
}

/// How a service address picks an instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancer {
    /// Power of two choices over peak-EWMA latency × outstanding requests (the default).
    #[default]
    #[serde(rename = "p2c-ewma")]
    P2cEwma,
    /// Power of two choices over outstanding requests.
    LeastRequest,
    /// In turn.
    RoundRobin,
}

/// A delay injected into a share of requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultDelay {
    /// How long.
    pub duration: Dur,
    /// Share of requests, 0–100.
    pub percent: f64,
}

/// An error answered instead of forwarding, for a share of requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultAbort {
    /// Status answered (400–599).
    pub status: u16,
    /// Share of requests, 0–100.
    pub percent: f64,
}

/// Fault injection for testing resilience: delay and/or abort a share of matching requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fault {
    /// Which requests (default: all).
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<RouteMatch>,
    /// Delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Abort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// The `traffic` trait: how requests to a webservice are spread and what faults they meet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Traffic {
    /// Instance choice (default p2c-ewma).
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// Injected faults, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<Fault>,
    /// Copies a share of requests to another component of the app; its answers are discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    /// Weighted split to other webservices of the app (canary, as SMI's TrafficSplit); the
    /// weight left over (100 − sum) stays with this component.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<Backend>,
    /// Requests matching a header or cookie go to another webservice (gray release to chosen
    /// users); checked before the split, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<TrafficRoute>,
}

/// A share of traffic for another component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backend {
    /// Another webservice of the same app …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// … or an earlier revision of this component (run beside the current one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Percent of requests, 0–100.
    pub weight: u32,
}

/// The name Yun gives the instances of `component` as it was in app revision `revision`,
/// when traffic is split to that revision. `@` cannot appear in component names, so it never
/// collides with one.
pub fn revision_component(component: &str, revision: u64) -> String {
    format!("{component}@r{revision}")
}

impl Backend {
    /// The component that receives this share, for a split on `owner`.
    pub fn target(&self, owner: &str) -> String {
        match (&self.component, self.revision) {
            (Some(c), _) => c.clone(),
            (None, Some(r)) => revision_component(owner, r),
            (None, None) => owner.to_string(),
        }
    }
}

impl TrafficRoute {
    /// The component that receives matching requests, for a route on `owner`.
    pub fn target(&self, owner: &str) -> String {
        match (&self.component, self.revision) {
            (Some(c), _) => c.clone(),
            (None, Some(r)) => revision_component(owner, r),
            (None, None) => owner.to_string(),
        }
    }
}

impl Traffic {
    /// Earlier revisions of the component that splits and routes send traffic to.
    pub fn revisions(&self) -> Vec<u64> {
        let mut r: Vec<u64> = self
            .split
            .iter()
            .filter_map(|b| b.revision)
            .chain(self.routes.iter().filter_map(|r| r.revision))
            .collect();
        r.sort_unstable();
        r.dedup();
        r
    }
}

/// Which requests a traffic route takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficMatch {
    /// Headers that must all be present with exactly these values (names case-insensitive).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
    /// A cookie that must be present with this value, as `name=value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// Routes matching requests to another component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficRoute {
    /// Which requests.
    #[serde(rename = "match")]
    pub matches: TrafficMatch,
    /// Another webservice of the same app that takes them …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// … or an earlier revision of this component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

/// Traffic mirroring (shadowing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mirror {
    /// The webservice component of the same app that receives the copies.
    pub component: String,
    /// Share of requests copied, 0–100.
    pub percent: f64,
}

/// Problems in a `traffic` trait: (field path, message).
pub fn check_traffic(t: &Traffic) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let total: u32 = t.split.iter().map(|b| b.weight).sum();
    if total > 100 {
        out.push(("split".into(), format!("weights add up to {total}; at most 100")));
    }
    let targets = t
        .split
        .iter()
        .enumerate()
        .map(|(i, b)| (format!("split[{i}]"), b.component.is_some(), b.revision))
        .chain(
            t.routes
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("routes[{i}]"), r.component.is_some(), r.revision)),
        );
    for (at, component, revision) in targets {
        if component == revision.is_some() {
            out.push((at.clone(), "give either component or revision".into()));
        }
        if revision == Some(0) {
            out.push((format!("{at}.revision"), "revisions count from 1".into()));
        }
    }
    for (i, r) in t.routes.iter().enumerate() {
        if r.matches.headers.is_empty() && r.matches.cookie.is_none() {
            out.push((format!("routes[{i}].match"), "give headers and/or cookie".into()));
        }
        for name in r.matches.headers.keys() {
            if hyper_safe_header(name).is_none() {
                out.push((format!("routes[{i}].match.headers"), format!("invalid header name \"{name}\"")));
            }
        }
        if r.matches.cookie.as_deref().is_some_and(|c| c.split_once('=').is_none_or(|(n, _)| n.is_empty())) {
            out.push((format!("routes[{i}].match.cookie"), "use name=value".into()));
        }
    }
    if let Some(m) = &t.mirror
        && !(0.0..=100.0).contains(&m.percent)
    {
        out.push(("mirror.percent".into(), "must be between 0 and 100".into()));
    }
    for (i, f) in t.faults.iter().enumerate() {
        let at = format!("faults[{i}]");
        if f.delay.is_none() && f.abort.is_none() {
            out.push((at.clone(), "a fault needs delay and/or abort".into()));
        }
        if let Some(d) = &f.delay
            && !(0.0..=100.0).contains(&d.percent)
        {
            out.push((format!("{at}.delay.percent"), "must be between 0 and 100".into()));
        }
        if let Some(a) = &f.abort {
            if !(0.0..=100.0).contains(&a.percent) {
                out.push((format!("{at}.abort.percent"), "must be between 0 and 100".into()));
            }
            if !(400..=599).contains(&a.status) {
                out.push((format!("{at}.abort.status"), "must be an error status, 400–599".into()));
            }
        }
    }
    out
}

/// A header name as HTTP allows it (token characters), lower-cased.
fn hyper_safe_header(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then(|| name.to_ascii_lowercase())
}
