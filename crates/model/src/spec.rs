//! The properties Yun accepts, as typed structs: the source of the published JSON schema and
//! of the per-field checks. Names follow KubeVela's component and trait definitions.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The component types Yun runs, in KubeVela's spelling.
pub const COMPONENT_TYPES: &[&str] = &["webservice", "worker", "task", "cron-task"];

/// The traits Yun runs.
pub const TRAIT_TYPES: &[&str] =
    &["scaler", "env", "labels", "annotations", "resilience", "traffic", "gateway", "slo"];

/// KubeVela component types that Yun recognises but does not run yet.
pub const UNSUPPORTED_COMPONENT_TYPES: &[&str] = &[
    "daemon",
    "statefulset",
    "statefulservice",
    "helm",
    "helmchart",
    "k8s-objects",
    "ref-objects",
    "raw",
    "kustomize",
    "addon",
    "module",
    "cloneset",
    "config-image-registry",
    "config-dex-connector",
];

/// KubeVela traits that Yun recognises but does not run yet.
pub const UNSUPPORTED_TRAIT_TYPES: &[&str] = &[
    "cpuscaler",
    "hpa",
    "expose",
    "sidecar",
    "init-container",
    "resource",
    "command",
    "storage",
    "affinity",
    "container-image",
    "container-ports",
    "hostalias",
    "json-patch",
    "json-merge-patch",
    "k8s-update-strategy",
    "lifecycle",
    "podsecuritycontext",
    "securitycontext",
    "service-account",
    "startup-probe",
    "topologyspreadconstraints",
    "kruise-rollout",
    "pure-ingress",
    "nocalhost",
    "ingress",
    "cronhpa",
    "volumes",
];

/// Component properties, the union over all component types. Which ones a type accepts is
/// listed in [`allowed_properties`]; every field is optional here so a single field can be
/// checked on its own, and required ones are enforced by validation.
// Kubernetes-only fields are read by the schema and the Kubernetes driver, not locally.
#[allow(dead_code)]
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Properties {
    /// Container image; used on Kubernetes. Locally a component runs `cmd` instead.
    pub image: Option<String>,
    /// Image pull policy (Kubernetes only).
    pub image_pull_policy: Option<PullPolicy>,
    /// Image pull secrets (Kubernetes only).
    pub image_pull_secrets: Option<Vec<String>>,
    /// The program and its leading arguments, e.g. `["python3", "app.py"]`.
    pub cmd: Option<Vec<String>>,
    /// Further arguments appended to `cmd`.
    pub args: Option<Vec<String>>,
    /// Environment variables for every instance.
    pub env: Option<Vec<EnvVar>>,
    /// Working directory of the process; relative paths are resolved against the manifest's
    /// directory, which is also the default.
    pub workdir: Option<String>,
    /// CPU request/limit (Kubernetes only; not enforced locally).
    pub cpu: Option<String>,
    /// Memory request/limit (Kubernetes only; not enforced locally).
    pub memory: Option<String>,
    /// Ports the service listens on. Each becomes a stable service address on loopback.
    pub ports: Option<Vec<Port>>,
    /// Legacy single port; the same as `ports: [{port: N, expose: true}]`.
    pub port: Option<u16>,
    /// Kubernetes Service type (Kubernetes only).
    pub expose_type: Option<ExposeType>,
    /// Labels on the workload.
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations on the workload.
    pub annotations: Option<BTreeMap<String, String>>,
    /// Probe that gates traffic to an instance.
    pub readiness_probe: Option<Probe>,
    /// Probe whose repeated failure restarts an instance.
    pub liveness_probe: Option<Probe>,
    /// Seconds between SIGTERM and SIGKILL when an instance is stopped (default 10).
    #[schemars(range(max = 3600))]
    pub termination_grace_period_seconds: Option<u32>,
    /// Number of successful completions a task needs, run in parallel (default 1).
    #[schemars(range(min = 1, max = 1000))]
    pub count: Option<u32>,
    /// What a task does when its process fails: `Never` (default) or `OnFailure`.
    pub restart: Option<RestartPolicy>,
    /// Retries of a failed task before it is marked failed (default 6).
    #[schemars(range(max = 1000))]
    pub backoff_limit: Option<u32>,
    /// Seconds a task run may take before it is stopped and counted as failed.
    pub active_deadline_seconds: Option<u64>,
    /// Cron schedule of a cron-task: five fields (minute hour day month weekday), or six with
    /// seconds first; `@hourly`-style macros too.
    pub schedule: Option<String>,
    /// What a cron-task does when a run is due while the previous one still runs.
    pub concurrency_policy: Option<ConcurrencyPolicy>,
    /// Pauses a cron-task's schedule.
    pub suspend: Option<bool>,
    /// A run missed by more than this many seconds is skipped.
    pub starting_deadline_seconds: Option<u64>,
    /// Finished successful runs kept in status (default 3).
    pub successful_jobs_history_limit: Option<u32>,
    /// Finished failed runs kept in status (default 1).
    pub failed_jobs_history_limit: Option<u32>,
}

/// The properties each component type accepts (empty for unknown types).
pub fn allowed_properties(component_type: &str) -> Vec<&'static str> {
    const COMMON: &[&str] = &[
        "image",
        "imagePullPolicy",
        "imagePullSecrets",
        "cmd",
        "args",
        "env",
        "workdir",
        "cpu",
        "memory",
        "readinessProbe",
        "livenessProbe",
        "terminationGracePeriodSeconds",
    ];
    const JOB: &[&str] =
        &["labels", "annotations", "count", "restart", "backoffLimit", "activeDeadlineSeconds"];
    const SCHEDULE: &[&str] = &[
        "schedule",
        "concurrencyPolicy",
        "suspend",
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ];
    let extra: &[&[&str]] = match component_type {
        "webservice" => &[&["ports", "port", "exposeType", "labels", "annotations"]],
        "worker" => &[],
        "task" => &[JOB],
        "cron-task" => &[JOB, SCHEDULE],
        _ => return Vec::new(),
    };
    COMMON.iter().chain(extra.iter().flat_map(|e| e.iter())).copied().collect()
}

/// KubeVela properties Yun recognises but refuses, with the reason.
pub fn unsupported_property(name: &str) -> Option<&'static str> {
    match name {
        "volumeMounts" | "volumes" => Some("volumes are not supported by the local runtime yet"),
        "hostAliases" => Some("host aliases are not supported by the local runtime yet"),
        "addRevisionLabel" => Some("revision labels are not supported yet"),
        "ttlSecondsAfterFinished" => Some("finished runs are kept per history limits instead"),
        _ => None,
    }
}

/// An environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Value (empty when absent).
    #[serde(default)]
    pub value: Option<String>,
    /// Value taken from a Secret or ConfigMap (Kubernetes only; refused locally).
    #[serde(default)]
    pub value_from: Option<serde_json::Value>,
}

/// A port a webservice listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Port {
    /// The service port: Yun listens on `127.0.0.1:<port>` and forwards to ready instances.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Optional name, used in the per-port environment variable.
    #[serde(default)]
    pub name: Option<String>,
    /// Transport protocol.
    #[serde(default)]
    pub protocol: Protocol,
    /// Whether the port is exposed outside the app (Kubernetes Service). Locally every port
    /// gets a loopback service address.
    #[serde(default)]
    pub expose: bool,
    /// Kubernetes node port (Kubernetes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
}

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP (refused locally).
    Udp,
    /// SCTP (refused locally).
    Sctp,
}

/// Image pull policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Never pull.
    Never,
    /// Pull when missing.
    IfNotPresent,
}

/// Kubernetes Service type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ExposeType {
    /// Cluster-internal address.
    ClusterIP,
    /// Port on every node.
    NodePort,
    /// External load balancer.
    LoadBalancer,
}

/// Restart policy of a task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RestartPolicy {
    /// A failed run is replaced by a new one, up to `backoffLimit` times (the default).
    #[default]
    Never,
    /// A failed process is restarted in place, up to `backoffLimit` times.
    OnFailure,
}

/// What a cron-task does when a run is due while the previous one still runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Start the new run anyway (the default).
    #[default]
    Allow,
    /// Skip the new run.
    Forbid,
    /// Stop the running one and start the new one.
    Replace,
}

/// A health probe: exactly one of `exec`, `httpGet` or `tcpSocket`, with Kubernetes timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Probe {
    /// Run a command; exit code 0 is success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    /// An HTTP GET; a status in 200..400 is success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    /// A TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    /// Seconds after start before the first probe (default 0).
    #[serde(default)]
    pub initial_delay_seconds: u32,
    /// Seconds between probes (default 10).
    #[serde(default = "ten")]
    #[schemars(range(min = 1))]
    pub period_seconds: u32,
    /// Seconds before a probe counts as failed (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: u32,
    /// Consecutive successes to count as passing (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub success_threshold: u32,
    /// Consecutive failures to count as failing (default 3).
    #[serde(default = "three")]
    #[schemars(range(min = 1))]
    pub failure_threshold: u32,
}

fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}
fn ten() -> u32 {
    10
}

/// Probe by command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecAction {
    /// The command and its arguments, run in the component's working directory.
    pub command: Vec<String>,
}

/// Probe by HTTP GET.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpGetAction {
    /// Request path (default `/`).
    #[serde(default = "root_path")]
    pub path: String,
    /// A declared port (mapped to the instance's real port); default the first port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Host to connect to (default 127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Only `HTTP` is supported locally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Extra request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<HttpHeader>,
}

fn root_path() -> String {
    "/".into()
}

/// A request header of an HTTP probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpHeader {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// Probe by TCP connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpSocketAction {
    /// A declared port (mapped to the instance's real port); default the first port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// `scaler` trait.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScalerTrait {
    /// Number of instances (default 1).
    #[schemars(range(max = 1000))]
    pub replicas: Option<u32>,
}

/// `env` trait: set or unset variables on the component.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvTrait {
    /// Variables to set.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Variables to remove.
    #[serde(default)]
    pub unset: Vec<String>,
    /// Replace all variables from the component with `env`.
    #[serde(default)]
    pub replace: bool,
    /// Container to patch; locally only the component itself ("").
    #[serde(default)]
    pub container_name: String,
}

/// Properties of the `labels` and `annotations` traits: a key with `null` removes it.
pub type MetadataTrait = BTreeMap<String, Option<String>>;

/// Upper bound for `scaler.replicas`.
pub const MAX_REPLICAS: u32 = 1000;

/// `gateway` trait: north–south entry through the daemon's gateway port. KubeVela's own
/// properties are accepted as they are, so real manifests run unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayTrait {
    /// Host name requests must carry (`Host` header); without it, any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Path prefix → declared port of the component, e.g. `{"/": 8080}`.
    pub http: BTreeMap<String, u16>,
    /// Ingress class (Kubernetes only; accepted and not used locally).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Whether the class goes in the Ingress spec (Kubernetes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_in_spec: Option<bool>,
    /// TLS secret (Kubernetes only; locally use `tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Host of the gateway (Kubernetes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_host: Option<String>,
    /// TLS for `domain` on the gateway's HTTPS port, from PEM files (paths relative to the
    /// manifest's directory). A Yun extension; on Kubernetes use `secretName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<GatewayTls>,
}

/// Certificate and key of a gateway domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
}
