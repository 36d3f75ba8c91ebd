//! The Yun application model: KubeVela `Application` manifests (OAM, `core.oam.dev/v1beta1`)
//! parsed, validated and normalised into an immutable [`App`].
//!
//! Start with [`parse_manifest`]; it reports every problem at once as [`Diagnostic`]s with
//! file, line, column and field path. The model does no I/O.

mod app;
pub mod cron;
mod resilience;
mod schema;
mod slo;
mod spec;
mod validate;
mod yaml;

pub use app::{App, Component, ComponentKind, JobSpec, ScheduleSpec, service_env_prefix};
pub use resilience::{
    Backend, BreakerStrategy, CircuitBreaker, Concurrency, Dur, Fault, FaultAbort, FaultDelay, LoadBalancer,
    Mirror, Policy, RateBehavior, RateLimit, Resilience, Retries, RetryOn, Route, RouteMatch, Traffic,
    TrafficMatch, TrafficRoute, revision_component,
};
pub use schema::application_schema;
pub use slo::{LatencyObjective, Slo};
pub use spec::{
    ConcurrencyPolicy, ExecAction, GatewayTls, GatewayTrait, HttpGetAction, HttpHeader, MAX_REPLICAS, Port,
    Probe, Protocol, RestartPolicy, TcpSocketAction,
};
pub use validate::{
    API_VERSION, Diagnostic, ManifestError, Parsed, Severity, Target, did_you_mean, parse_manifest,
};
pub use yaml::MAX_MANIFEST_BYTES;

#[cfg(test)]
mod tests;
