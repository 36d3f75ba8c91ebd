//! The `slo` trait: service level objectives of a webservice — availability (the share of
//! requests that do not fail) and latency (the share answered within a threshold) — over a
//! rolling window. Yun measures them from the data plane and reports the error budget left and
//! burn rates.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::resilience::Dur;

/// The trait's properties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Slo {
    /// Percent of requests that must not fail (answered with a status below 500), e.g. 99.9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<f64>,
    /// Percent of requests that must be answered within a threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyObjective>,
    /// The rolling period the objectives hold over: `30d` (the default), `7d`, `24h`, `1h`.
    #[serde(default = "default_window")]
    pub window: String,
}

/// A latency objective: `percent` of requests answered within `threshold`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LatencyObjective {
    /// e.g. `300ms`.
    pub threshold: Dur,
    /// e.g. 99 (the default).
    #[serde(default = "default_percent")]
    pub percent: f64,
}

fn default_window() -> String {
    "30d".into()
}

fn default_percent() -> f64 {
    99.0
}

impl Slo {
    /// The window as a duration (checked by [`check_slo`]).
    pub fn window(&self) -> Duration {
        parse_window(&self.window).unwrap_or(Duration::from_secs(30 * 86_400))
    }
}

/// `30d`, `12h`, `90m`: from one hour to 90 days.
fn parse_window(s: &str) -> Result<Duration, String> {
    let days = s.strip_suffix('d').and_then(|n| n.parse::<u64>().ok());
    let d = match days {
        Some(n) => Duration::from_secs(n.saturating_mul(86_400)),
        None => Dur::parse(s).map_err(|_| format!("invalid window \"{s}\": use e.g. 30d, 7d or 24h"))?.0,
    };
    if d < Duration::from_secs(3600) || d > Duration::from_secs(90 * 86_400) {
        return Err(format!("invalid window \"{s}\": from 1h to 90d"));
    }
    Ok(d)
}

/// Problems with an `slo` trait, as (field, message).
pub fn check_slo(s: &Slo) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let percent = |v: f64| v.is_finite() && v > 0.0 && v < 100.0;
    if s.availability.is_none() && s.latency.is_none() {
        out.push((String::new(), "name at least one objective: availability or latency".into()));
    }
    if let Some(a) = s.availability
        && !percent(a)
    {
        out.push((
            "availability".into(),
            format!("{a} is not a percentage above 0 and below 100 (100 leaves no error budget)"),
        ));
    }
    if let Some(l) = &s.latency {
        if !percent(l.percent) {
            out.push((
                "latency.percent".into(),
                format!("{} is not a percentage above 0 and below 100", l.percent),
            ));
        }
        if l.threshold.0.is_zero() || l.threshold.0 > Duration::from_secs(60) {
            out.push(("latency.threshold".into(), "must be above 0 and at most 60s".into()));
        }
    }
    if let Err(e) = parse_window(&s.window) {
        out.push(("window".into(), e));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slo(yaml: serde_json::Value) -> Result<Slo, String> {
        serde_json::from_value(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn objectives_and_windows_are_checked() {
        let ok = slo(serde_json::json!({"availability": 99.9, "latency": {"threshold": "300ms"}})).unwrap();
        assert!(check_slo(&ok).is_empty());
        assert_eq!(ok.window(), Duration::from_secs(30 * 86_400));
        assert_eq!(ok.latency.as_ref().unwrap().percent, 99.0);
        let fields = |v| check_slo(&slo(v).unwrap()).into_iter().map(|(f, _)| f).collect::<Vec<_>>();
        assert_eq!(fields(serde_json::json!({})), [""]);
        assert_eq!(fields(serde_json::json!({"availability": 100})), ["availability"]);
        assert_eq!(fields(serde_json::json!({"availability": -1})), ["availability"]);
        assert_eq!(
            fields(serde_json::json!({"latency": {"threshold": "0s", "percent": 120}})),
            ["latency.percent", "latency.threshold"]
        );
        assert_eq!(fields(serde_json::json!({"availability": 99, "window": "10m"})), ["window"]);
        assert_eq!(fields(serde_json::json!({"availability": 99, "window": "91d"})), ["window"]);
        assert_eq!(fields(serde_json::json!({"availability": 99, "window": "soon"})), ["window"]);
        assert!(fields(serde_json::json!({"availability": 99, "window": "24h"})).is_empty());
        assert!(
            slo(serde_json::json!({"availability": 99, "target": 1})).is_err(),
            "unknown fields are refused"
        );
    }
}
