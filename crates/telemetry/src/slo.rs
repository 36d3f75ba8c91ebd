//! Service level objectives: per component, the good and bad requests of every step for the
//! last hour (for burn rates) and of every hour over the objective's window (for the error
//! budget). A fast burn — the budget spent 14.4 times as fast as the objective allows, over both
//! the last hour and the last five minutes (the multi-window rule of Google's SRE workbook) — is
//! reported once when it starts.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Burn rate at which a burn counts as fast.
pub const FAST_BURN: f64 = 14.4;

/// What a component promises.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Objective {
    /// Percent of requests that must not fail.
    pub availability: Option<f64>,
    /// (threshold in seconds, percent of requests within it).
    pub latency: Option<(f64, f64)>,
    pub window: Duration,
}

/// One step's requests of a component.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Step {
    pub requests: u64,
    pub errors: u64,
    /// Requests slower than the latency threshold.
    pub slow: u64,
}

/// How one objective stands.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SloReport {
    pub component: String,
    /// `availability` or `latency`.
    pub objective: &'static str,
    pub target_percent: f64,
    /// The latency threshold in milliseconds, for latency objectives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold_ms: Option<f64>,
    pub window_seconds: u64,
    /// Requests counted in the window (since the daemon started, when that is later).
    pub requests: u64,
    pub bad: u64,
    /// Good share in percent; none without requests.
    pub compliance_percent: Option<f64>,
    /// Share of the error budget left (1 untouched, 0 spent, below 0 overspent).
    pub budget_remaining: f64,
    pub burn_rate_5m: f64,
    pub burn_rate_1h: f64,
    pub fast_burn: bool,
}

/// A fast burn that just started.
#[derive(Debug, Clone, PartialEq)]
pub struct BurnStart {
    pub app: String,
    pub component: String,
    pub objective: &'static str,
    pub target_percent: f64,
    pub burn_rate_1h: f64,
    pub burn_rate_5m: f64,
}

#[derive(Default)]
struct Tally {
    /// (Unix seconds, step) for the last hour.
    steps: VecDeque<(u64, Step)>,
    /// (hour since the epoch, totals) over the window.
    hours: VecDeque<(u64, Step)>,
    burning: [bool; 2],
}

impl Tally {
    fn sum_since(&self, since: u64) -> Step {
        let mut s = Step::default();
        for (_, st) in self.steps.iter().filter(|(t, _)| *t > since) {
            s.requests += st.requests;
            s.errors += st.errors;
            s.slow += st.slow;
        }
        s
    }

    fn window(&self, now: u64, window: Duration) -> Step {
        let first_hour = now.saturating_sub(window.as_secs()) / 3600;
        let mut s = Step::default();
        for (_, st) in self.hours.iter().filter(|(h, _)| *h >= first_hour) {
            s.requests += st.requests;
            s.errors += st.errors;
            s.slow += st.slow;
        }
        s
    }
}

/// See the module documentation.
#[derive(Default)]
pub struct SloTracker {
    tallies: Mutex<HashMap<(String, String), Tally>>,
}

fn burn(bad: u64, total: u64, target_percent: f64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    (bad as f64 / total as f64) / (1.0 - target_percent / 100.0)
}

impl SloTracker {
    /// Adds a component's step at `now` (Unix seconds); returns the fast burns that started.
    pub fn record(
        &self,
        now: u64,
        app: &str,
        component: &str,
        step: Step,
        objective: &Objective,
    ) -> Vec<BurnStart> {
        let Ok(mut tallies) = self.tallies.lock() else { return Vec::new() };
        let t = tallies.entry((app.to_string(), component.to_string())).or_default();
        t.steps.push_back((now, step));
        while t.steps.front().is_some_and(|(at, _)| *at + 3600 <= now) {
            t.steps.pop_front();
        }
        let hour = now / 3600;
        match t.hours.back_mut() {
            Some((h, s)) if *h == hour => {
                s.requests += step.requests;
                s.errors += step.errors;
                s.slow += step.slow;
            }
            _ => t.hours.push_back((hour, step)),
        }
        let keep_hours = objective.window.as_secs() / 3600 + 1;
        while t.hours.front().is_some_and(|(h, _)| *h + keep_hours <= hour) {
            t.hours.pop_front();
        }
        let (h1, m5) = (t.sum_since(now.saturating_sub(3600)), t.sum_since(now.saturating_sub(300)));
        let mut started = Vec::new();
        for (i, (name, target, bad)) in objectives(objective).into_iter().enumerate() {
            let Some(target) = target else { continue };
            let (b1, b5) = (burn(bad(&h1), h1.requests, target), burn(bad(&m5), m5.requests, target));
            let fast = b1 >= FAST_BURN && b5 >= FAST_BURN;
            if fast && !t.burning[i] {
                started.push(BurnStart {
                    app: app.into(),
                    component: component.into(),
                    objective: name,
                    target_percent: target,
                    burn_rate_1h: b1,
                    burn_rate_5m: b5,
                });
            }
            t.burning[i] = fast;
        }
        started
    }

    /// How every objective of `app` stands at `now`.
    pub fn report(&self, now: u64, app: &str, objectives_of: &[(String, Objective)]) -> Vec<SloReport> {
        let Ok(tallies) = self.tallies.lock() else { return Vec::new() };
        let empty = Tally::default();
        let mut out = Vec::new();
        for (component, objective) in objectives_of {
            let t = tallies.get(&(app.to_string(), component.clone())).unwrap_or(&empty);
            let (w, h1, m5) = (
                t.window(now, objective.window),
                t.sum_since(now.saturating_sub(3600)),
                t.sum_since(now.saturating_sub(300)),
            );
            for (name, target, bad) in objectives(objective) {
                let Some(target) = target else { continue };
                let bad_w = bad(&w);
                let allowed = (1.0 - target / 100.0) * w.requests as f64;
                let (b1, b5) = (burn(bad(&h1), h1.requests, target), burn(bad(&m5), m5.requests, target));
                out.push(SloReport {
                    component: component.clone(),
                    objective: name,
                    target_percent: target,
                    threshold_ms: (name == "latency")
                        .then(|| objective.latency.map(|l| l.0 * 1000.0))
                        .flatten(),
                    window_seconds: objective.window.as_secs(),
                    requests: w.requests,
                    bad: bad_w,
                    compliance_percent: (w.requests > 0)
                        .then(|| (w.requests - bad_w.min(w.requests)) as f64 / w.requests as f64 * 100.0),
                    budget_remaining: if w.requests == 0 { 1.0 } else { 1.0 - bad_w as f64 / allowed },
                    burn_rate_5m: b5,
                    burn_rate_1h: b1,
                    fast_burn: b1 >= FAST_BURN && b5 >= FAST_BURN,
                });
            }
        }
        out
    }

    /// Forgets components that no longer have an objective.
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        if let Ok(mut t) = self.tallies.lock() {
            t.retain(|(a, c), _| keep(a, c));
        }
    }
}

type BadOf = fn(&Step) -> u64;

fn objectives(o: &Objective) -> [(&'static str, Option<f64>, BadOf); 2] {
    [
        ("availability", o.availability, |s: &Step| s.errors),
        ("latency", o.latency.map(|l| l.1), |s: &Step| s.slow),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVAILABILITY: Objective = Objective {
        availability: Some(99.0),
        latency: Some((0.3, 90.0)),
        window: Duration::from_secs(86_400),
    };

    fn step(requests: u64, errors: u64, slow: u64) -> Step {
        Step { requests, errors, slow }
    }

    #[test]
    fn the_budget_and_burn_rates_follow_the_requests() {
        let t = SloTracker::default();
        let now = 1_000_000;
        // An hour of 1% errors: exactly the budget's pace.
        for i in 0..720 {
            assert!(t.record(now + i * 5, "shop", "web", step(100, 1, 5), &AVAILABILITY).is_empty());
        }
        let end = now + 719 * 5;
        let r = t.report(end, "shop", &[("web".into(), AVAILABILITY)]);
        let a = r.iter().find(|r| r.objective == "availability").unwrap();
        assert!((a.burn_rate_1h - 1.0).abs() < 1e-9, "{a:?}");
        assert!((a.compliance_percent.unwrap() - 99.0).abs() < 1e-9);
        assert!(a.budget_remaining.abs() < 1e-9, "all of the budget is spent: {a:?}");
        let l = r.iter().find(|r| r.objective == "latency").unwrap();
        assert!((l.burn_rate_5m - 0.5).abs() < 1e-9, "5% slow against 10% allowed: {l:?}");
        assert_eq!(l.threshold_ms, Some(300.0));
        assert!(!a.fast_burn && !l.fast_burn);
    }

    #[test]
    fn a_fast_burn_is_reported_once_when_it_starts() {
        let t = SloTracker::default();
        let now = 2_000_000;
        let started = t.record(now, "shop", "web", step(100, 50, 0), &AVAILABILITY);
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].objective, "availability");
        assert!(started[0].burn_rate_1h >= 49.0);
        assert!(
            t.record(now + 5, "shop", "web", step(100, 50, 0), &AVAILABILITY).is_empty(),
            "still burning"
        );
        // It stops; a later burn is reported again.
        for i in 2..100 {
            t.record(now + i * 5, "shop", "web", step(100_000, 0, 0), &AVAILABILITY);
        }
        assert_eq!(
            t.record(now + 600, "shop", "web", step(100, 100, 0), &AVAILABILITY).len(),
            0,
            "1h rate is low now"
        );
        let r = t.report(now + 600, "shop", &[("web".into(), AVAILABILITY)]);
        assert!(!r[0].fast_burn);
        assert!(r[0].budget_remaining > 0.0);
    }

    #[test]
    fn no_requests_leave_the_budget_whole() {
        let t = SloTracker::default();
        let r = t.report(5, "shop", &[("web".into(), AVAILABILITY)]);
        assert_eq!(r.len(), 2);
        assert!(
            r.iter().all(|r| r.budget_remaining == 1.0
                && r.compliance_percent.is_none()
                && r.burn_rate_1h == 0.0)
        );
        t.record(5, "shop", "web", step(1, 1, 1), &AVAILABILITY);
        t.retain(|_, _| false);
        assert!(t.report(5, "shop", &[("web".into(), AVAILABILITY)])[0].requests == 0);
    }
}
