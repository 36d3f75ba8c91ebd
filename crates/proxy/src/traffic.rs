//! Cumulative traffic per edge — a caller (`app/component` or `external`) to a component —
//! kept in plain atomics so the daemon can sample rates, errors and latency percentiles for its
//! short-term store and the topology graph without parsing its own `/metrics`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Upper bounds of the latency buckets in seconds (0.5 ms … ~16 s, as on `/metrics`); one more
/// bucket counts everything slower.
pub const LATENCY_BOUNDS: [f64; 16] = {
    let mut b = [0.0; 16];
    let mut i = 0;
    let mut v = 0.0005;
    while i < 16 {
        b[i] = v;
        v *= 2.0;
        i += 1;
    }
    b
};

/// One caller → component edge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Edge {
    /// `app/component` of the caller, or `external`.
    pub source: String,
    pub app: String,
    pub component: String,
}

/// Counters of one edge since the daemon started.
#[derive(Debug, Default)]
pub(crate) struct EdgeCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
}

impl EdgeCounters {
    /// Counts one request: its latency and whether it failed (5xx or no answer).
    pub(crate) fn observe(&self, seconds: f64, error: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let i = LATENCY_BOUNDS.iter().position(|b| seconds <= *b).unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// An edge's counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeSnapshot {
    pub edge: Edge,
    pub requests: u64,
    pub errors: u64,
    /// Requests per latency bucket (not cumulative), the last one above every bound.
    pub buckets: Vec<u64>,
}

/// Every edge the data plane has carried traffic on.
#[derive(Debug, Default)]
pub struct TrafficStats {
    edges: RwLock<HashMap<Edge, Arc<EdgeCounters>>>,
}

impl TrafficStats {
    pub(crate) fn edge(&self, source: &str, app: &str, component: &str) -> Arc<EdgeCounters> {
        let key = Edge { source: source.into(), app: app.into(), component: component.into() };
        if let Some(c) = self.edges.read().ok().and_then(|m| m.get(&key).cloned()) {
            return c;
        }
        let mut m = self.edges.write().unwrap_or_else(|e| e.into_inner());
        m.entry(key).or_default().clone()
    }

    /// The counters of every edge, sorted.
    pub fn snapshot(&self) -> Vec<EdgeSnapshot> {
        let m = self.edges.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<EdgeSnapshot> = m
            .iter()
            .map(|(edge, c)| EdgeSnapshot {
                edge: edge.clone(),
                requests: c.requests.load(Ordering::Relaxed),
                errors: c.errors.load(Ordering::Relaxed),
                buckets: c.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            })
            .collect();
        out.sort_by(|a, b| a.edge.cmp(&b.edge));
        out
    }

    /// Forgets the edges of an application (after it is deleted).
    pub fn remove_app(&self, app: &str) {
        let mut m = self.edges.write().unwrap_or_else(|e| e.into_inner());
        m.retain(|e, _| e.app != app && !e.source.starts_with(&format!("{app}/")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_land_in_their_latency_bucket() {
        let t = TrafficStats::default();
        let e = t.edge("external", "shop", "web");
        e.observe(0.0001, false);
        e.observe(0.003, true);
        e.observe(100.0, false);
        assert!(Arc::ptr_eq(&e, &t.edge("external", "shop", "web")));
        let s = &t.snapshot()[0];
        assert_eq!((s.requests, s.errors), (3, 1));
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[3], 1, "3 ms is in the ≤ 4 ms bucket");
        assert_eq!(s.buckets[16], 1);
        t.remove_app("shop");
        assert!(t.snapshot().is_empty());
    }
}
