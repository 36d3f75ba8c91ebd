//! The validated, normalised application: what the store keeps and the runtime runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::spec::{ConcurrencyPolicy, Port, Probe, RestartPolicy};

/// A validated application. Build one with [`crate::parse_manifest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct App {
    /// Application name (DNS label).
    pub name: String,
    /// Labels from `metadata.labels`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations from `metadata.annotations`.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Components, in manifest order.
    pub components: Vec<Component>,
}

/// What kind of workload a component is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComponentKind {
    /// Long-running, serves on ports behind a stable address.
    Webservice,
    /// Long-running, no address.
    Worker,
    /// Runs to completion.
    Task,
    /// Runs to completion on a schedule.
    CronTask,
}

impl ComponentKind {
    /// KubeVela's name for the type.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Webservice => "webservice",
            ComponentKind::Worker => "worker",
            ComponentKind::Task => "task",
            ComponentKind::CronTask => "cron-task",
        }
    }

    /// Whether instances are expected to keep running.
    pub fn is_long_running(self) -> bool {
        matches!(self, ComponentKind::Webservice | ComponentKind::Worker)
    }
}

/// One component, with its traits applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    /// Component name, unique in the app (DNS label).
    pub name: String,
    /// Workload kind.
    pub kind: ComponentKind,
    /// Container image (Kubernetes mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Program and leading arguments; empty when only `image` is given.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Further arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment, after the `env` trait.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory as written (relative to the manifest's directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Declared ports (webservice only).
    #[serde(default)]
    pub ports: Vec<Port>,
    /// Readiness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// Liveness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// Desired instances (from `scaler`; 1 by default).
    pub replicas: u32,
    /// Labels, after the `labels` trait.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations, after the `annotations` trait.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Components that must be ready before this one starts.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Seconds between SIGTERM and SIGKILL.
    pub termination_grace_period_seconds: u32,
    /// Run-to-completion settings (task and cron-task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobSpec>,
    /// Schedule (cron-task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// Traffic policies of the service address (from the `resilience` trait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resilience: Option<crate::resilience::Resilience>,
    /// Balancing and fault injection of the service address (from the `traffic` trait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<crate::resilience::Traffic>,
    /// North–south routes through the daemon's gateway (from the `gateway` trait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<crate::spec::GatewayTrait>,
    /// Service level objectives (from the `slo` trait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<crate::slo::Slo>,
}

impl Component {
    /// A hash of everything that affects how instances run. Replicas and traffic policies are
    /// left out: scaling and policy changes apply without replacing instances.
    pub fn spec_hash(&self) -> String {
        let mut c = self.clone();
        c.replicas = 0;
        c.resilience = None;
        c.traffic = None;
        c.gateway = None;
        c.slo = None;
        content_hash(&c)
    }
}

/// Run-to-completion settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    /// Successful completions needed, run in parallel.
    pub count: u32,
    /// What to do with a failed process.
    pub restart: RestartPolicy,
    /// Retries before the task fails.
    pub backoff_limit: u32,
    /// Deadline of one run, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<u64>,
}

/// A cron-task's schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSpec {
    /// Cron expression as written.
    pub cron: String,
    /// Overlap policy.
    pub concurrency_policy: ConcurrencyPolicy,
    /// Schedule paused.
    pub suspend: bool,
    /// Skip runs missed by more than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_deadline_seconds: Option<u64>,
    /// Successful runs kept.
    pub successful_jobs_history_limit: u32,
    /// Failed runs kept.
    pub failed_jobs_history_limit: u32,
}

impl App {
    /// A content hash of the whole normalised app: equal apps hash equally.
    pub fn content_hash(&self) -> String {
        content_hash(self)
    }

    /// Looks up a component by name.
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }
}

/// SHA-256 of the value's JSON form. Maps are `BTreeMap`s, so the form is canonical.
fn content_hash<T: Serialize>(value: &T) -> String {
    // Serialising these plain data types cannot fail: no maps with non-string keys.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The environment variable prefix for a component's address: `YUN_SVC_<NAME>`, with the
/// name upper-cased and `-` turned into `_`.
pub fn service_env_prefix(component: &str) -> String {
    let upper: String = component
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
        .collect();
    format!("YUN_SVC_{upper}")
}
