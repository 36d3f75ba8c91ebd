//! An application's observed status and the phase derived from it.

use serde::{Deserialize, Serialize};
use yun_runtime::ComponentStatus;
use yun_store::AppRecord;

/// What `GET /api/v1/apps/{name}` returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppStatus {
    /// Application name.
    pub name: String,
    /// running, progressing, degraded, failed, stopped, deleting.
    pub phase: String,
    /// Why, when not running.
    pub message: String,
    /// Revision the app should run.
    pub revision: u64,
    /// Highest revision.
    pub latest_revision: u64,
    /// Scale overrides.
    pub scale: std::collections::BTreeMap<String, u32>,
    /// First applied.
    pub created_at: String,
    /// Last changed.
    pub updated_at: String,
    /// Per-component status, in manifest order.
    pub components: Vec<ComponentStatus>,
}

/// The app's phase and a reason, from its record and component statuses.
pub fn app_phase(record: &AppRecord, components: &[ComponentStatus]) -> (String, String) {
    if record.deleting {
        return ("deleting".into(), "stopping all instances".into());
    }
    if record.stopped {
        return ("stopped".into(), "stopped by user".into());
    }
    let first = |phase: &str| components.iter().find(|c| c.phase == phase);
    if let Some(c) = first("Failed") {
        return ("failed".into(), format!("{}: {}", c.name, c.message));
    }
    if let Some(c) = first("CrashLoopBackOff") {
        return ("degraded".into(), format!("{}: {}", c.name, c.message));
    }
    let settled = |c: &ComponentStatus| {
        matches!(c.phase.as_str(), "Running" | "Completed" | "Scheduled")
            && c.revision == record.current_revision
    };
    if !components.is_empty() && components.iter().all(settled) {
        return ("running".into(), String::new());
    }
    // Fully rolled out but short of ready instances: something broke after start.
    if let Some(c) = components
        .iter()
        .find(|c| c.phase == "Progressing" && c.updated >= c.desired && c.ready < c.desired && c.restarts > 0)
    {
        return ("degraded".into(), format!("{}: {}", c.name, c.message));
    }
    let waiting = components.iter().find(|c| !settled(c));
    let msg = waiting
        .map(|c| format!("{}: {} {}", c.name, c.phase, c.message))
        .unwrap_or_else(|| "starting".into());
    ("progressing".into(), msg)
}
