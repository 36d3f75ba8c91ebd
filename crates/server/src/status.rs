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
    // Settled means done converging for the kind: tasks complete, schedules are armed,
    // long-running components run all their instances ready.
    let settled = |c: &ComponentStatus| {
        let done = match c.kind.as_str() {
            "task" => "Completed",
            "cron-task" => "Scheduled",
            _ => "Running",
        };
        c.phase == done && c.revision == record.current_revision
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AppRecord {
        AppRecord {
            name: "a".into(),
            current_revision: 2,
            latest_revision: 2,
            scale: Default::default(),
            stopped: false,
            deleting: false,
            completed_tasks: Default::default(),
            service_ports: Default::default(),
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn comp(kind: &str, phase: &str, revision: u64) -> ComponentStatus {
        ComponentStatus {
            name: kind.into(),
            kind: kind.into(),
            phase: phase.into(),
            revision,
            ..Default::default()
        }
    }

    #[test]
    fn phases() {
        let r = record();
        let settled = [
            comp("webservice", "Running", 2),
            comp("task", "Completed", 2),
            comp("cron-task", "Scheduled", 2),
        ];
        assert_eq!(app_phase(&r, &settled).0, "running");
        // A running task is not done yet.
        assert_eq!(app_phase(&r, &[comp("task", "Running", 2)]).0, "progressing");
        // An old revision still running is progressing.
        assert_eq!(app_phase(&r, &[comp("webservice", "Running", 1)]).0, "progressing");
        assert_eq!(app_phase(&r, &[comp("worker", "CrashLoopBackOff", 2)]).0, "degraded");
        assert_eq!(
            app_phase(&r, &[comp("task", "Failed", 2), comp("worker", "CrashLoopBackOff", 2)]).0,
            "failed"
        );
        assert_eq!(app_phase(&r, &[]).0, "progressing");
        let stopped = AppRecord { stopped: true, ..record() };
        assert_eq!(app_phase(&stopped, &settled).0, "stopped");
        let deleting = AppRecord { deleting: true, ..record() };
        assert_eq!(app_phase(&deleting, &settled).0, "deleting");
    }
}
