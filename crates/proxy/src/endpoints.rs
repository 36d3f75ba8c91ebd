//! The instances behind one service port: which are ready, how loaded and how fast each is,
//! and which are ejected after consecutive failures (passive health).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Latency assumed for an endpoint with no samples yet (Linkerd's default).
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Time constant of the latency average.
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// Consecutive failures (connect errors, 5xx) that eject an endpoint.
pub const EJECT_AFTER_FAILURES: u32 = 5;
/// First ejection time; it grows with each ejection of the same endpoint.
pub const BASE_EJECTION: Duration = Duration::from_secs(30);
/// Longest ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// How the next endpoint is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Balancer {
    /// Power of two choices over peak-EWMA latency × outstanding requests (the default).
    #[default]
    PeakEwma,
    /// Power of two choices over outstanding requests.
    LeastRequest,
    /// In turn.
    RoundRobin,
}

/// One instance address and what the proxy knows of it.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `addr` as a URI authority, parsed once.
    pub authority: hyper::http::uri::Authority,
    /// Instance id, for metrics.
    pub id: Arc<str>,
    in_flight: AtomicUsize,
    stats: Mutex<Stats>,
    consecutive_failures: AtomicU32,
}

struct Stats {
    /// Peak-EWMA round-trip time, in seconds.
    rtt: f64,
    updated: Instant,
    ejected_until: Option<Instant>,
    ejections: u32,
}

impl Endpoint {
    fn new(addr: SocketAddr, id: String, rtt: f64) -> Endpoint {
        Endpoint {
            addr,
            // A socket address always forms a valid authority.
            authority: hyper::http::uri::Authority::try_from(addr.to_string().as_str())
                .unwrap_or_else(|_| hyper::http::uri::Authority::from_static("127.0.0.1")),
            id: id.into(),
            in_flight: AtomicUsize::new(0),
            stats: Mutex::new(Stats { rtt, updated: Instant::now(), ejected_until: None, ejections: 0 }),
            consecutive_failures: AtomicU32::new(0),
        }
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    fn ejected(&self, now: Instant) -> bool {
        self.stats.lock().map(|s| s.ejected_until.is_some_and(|t| t > now)).unwrap_or(false)
    }

    /// The balancer's cost: the decayed peak latency, weighted by outstanding requests.
    fn cost(&self, now: Instant) -> f64 {
        let rtt = self
            .stats
            .lock()
            .map(|s| {
                let w = (-(now.saturating_duration_since(s.updated).as_secs_f64())
                    / EWMA_DECAY.as_secs_f64())
                .exp();
                s.rtt * w
            })
            .unwrap_or(DEFAULT_RTT.as_secs_f64());
        rtt.max(1e-6) * (self.in_flight() as f64 + 1.0)
    }
}

/// A request leased to an endpoint; counted in flight until dropped.
pub struct Lease {
    endpoint: Arc<Endpoint>,
    start: Instant,
}

impl Lease {
    /// The chosen address.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    /// The chosen address as a URI authority.
    pub fn authority(&self) -> &hyper::http::uri::Authority {
        &self.endpoint.authority
    }

    /// The chosen instance's id.
    pub fn instance(&self) -> &str {
        &self.endpoint.id
    }

    /// The chosen instance's id, shared.
    pub fn instance_id(&self) -> Arc<str> {
        self.endpoint.id.clone()
    }

    /// Records how the request went, for balancing and ejection. Returns true when this
    /// failure ejected the endpoint.
    pub fn record(&self, success: bool) -> bool {
        let now = Instant::now();
        let sample = now.duration_since(self.start).as_secs_f64();
        let Ok(mut s) = self.endpoint.stats.lock() else { return false };
        // Peak EWMA: jump up to a slower sample at once, decay towards faster ones.
        let w = (-(now.saturating_duration_since(s.updated).as_secs_f64()) / EWMA_DECAY.as_secs_f64()).exp();
        s.rtt = if sample > s.rtt { sample } else { s.rtt * w + sample * (1.0 - w) };
        s.updated = now;
        if success {
            self.endpoint.consecutive_failures.store(0, Ordering::Release);
            return false;
        }
        let failures = self.endpoint.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= EJECT_AFTER_FAILURES && s.ejected_until.is_none_or(|t| t <= now) {
            s.ejections += 1;
            let time = (BASE_EJECTION * s.ejections).min(MAX_EJECTION);
            s.ejected_until = Some(now + time);
            self.endpoint.consecutive_failures.store(0, Ordering::Release);
            return true;
        }
        false
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The ready instances behind one service port.
#[derive(Default)]
pub struct Endpoints {
    set: RwLock<Set>,
    changed: Notify,
    next: AtomicUsize,
}

#[derive(Default)]
struct Set {
    ready: Vec<Arc<Endpoint>>,
    /// Every endpoint still known: ready ones, and removed ones until they drain.
    known: HashMap<SocketAddr, Arc<Endpoint>>,
}

impl Endpoints {
    /// Replaces the ready set (address and instance id of each), keeping what is known of
    /// endpoints that stay. Once this returns, no new request can pick a removed address.
    pub fn set(&self, endpoints: Vec<(SocketAddr, String)>) {
        let addrs: Vec<SocketAddr> = endpoints.iter().map(|e| e.0).collect();
        if let Ok(mut s) = self.set.write() {
            let current: Vec<SocketAddr> = s.ready.iter().map(|e| e.addr).collect();
            if current != addrs {
                s.known.retain(|a, e| addrs.contains(a) || e.in_flight() > 0);
                // A new endpoint starts at the set's mean latency: neither flooded as if it were
                // free nor starved behind measured fast ones.
                let rtts: Vec<f64> =
                    s.ready.iter().filter_map(|e| e.stats.lock().ok().map(|st| st.rtt)).collect();
                let start_rtt = if rtts.is_empty() {
                    DEFAULT_RTT.as_secs_f64()
                } else {
                    rtts.iter().sum::<f64>() / rtts.len() as f64
                };
                let ready = endpoints
                    .into_iter()
                    .map(|(a, id)| {
                        s.known.entry(a).or_insert_with(|| Arc::new(Endpoint::new(a, id, start_rtt))).clone()
                    })
                    .collect();
                s.ready = ready;
            }
        }
        self.changed.notify_waiters();
    }

    /// Requests in flight to `addr` (also after it left the ready set).
    pub fn in_flight(&self, addr: &SocketAddr) -> usize {
        self.set.read().ok().and_then(|s| s.known.get(addr).map(|e| e.in_flight())).unwrap_or(0)
    }

    /// Ready addresses.
    pub fn ready(&self) -> Vec<SocketAddr> {
        self.set.read().map(|s| s.ready.iter().map(|e| e.addr).collect()).unwrap_or_default()
    }

    /// Whether no instance is ready.
    pub fn is_empty(&self) -> bool {
        self.set.read().map(|s| s.ready.is_empty()).unwrap_or(true)
    }

    /// Chooses an endpoint, avoiding `tried` and ejected ones when others remain, and counts
    /// the request in flight. Choosing and counting happen under the lock that
    /// [`Endpoints::set`] takes to remove endpoints.
    pub fn pick(&self, balancer: Balancer, tried: &[SocketAddr]) -> Option<Lease> {
        let s = self.set.read().ok()?;
        let now = Instant::now();
        // Counted and indexed in place: a request allocates nothing to choose.
        let fresh = |e: &&Arc<Endpoint>| !tried.contains(&e.addr);
        let healthy = |e: &&Arc<Endpoint>| fresh(e) && !e.ejected(now);
        let mut n = s.ready.iter().filter(healthy).count();
        // With every candidate ejected, ejection is ignored rather than failing everything.
        let ignore_ejection = n == 0;
        if ignore_ejection {
            n = s.ready.iter().filter(fresh).count();
        }
        let candidate = |i: usize| {
            if ignore_ejection {
                s.ready.iter().filter(fresh).nth(i)
            } else {
                s.ready.iter().filter(healthy).nth(i)
            }
        };
        let chosen = match n {
            0 => return None,
            1 => candidate(0)?,
            n => match balancer {
                Balancer::RoundRobin => candidate(self.next.fetch_add(1, Ordering::Relaxed) % n)?,
                Balancer::LeastRequest | Balancer::PeakEwma => {
                    let a = rand::random_range(0..n);
                    let mut b = rand::random_range(0..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    let (x, y) = (candidate(a)?, candidate(b)?);
                    let cheaper = match balancer {
                        Balancer::LeastRequest => x.in_flight() <= y.in_flight(),
                        _ => x.cost(now) <= y.cost(now),
                    };
                    if cheaper { x } else { y }
                }
            },
        }
        .clone();
        chosen.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(Lease { endpoint: chosen, start: now })
    }

    /// Waits until an instance is ready or `timeout` passes; true when one is.
    pub async fn wait_for_any(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if !self.is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return !self.is_empty();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (1..=n).map(|p| SocketAddr::from(([127, 0, 0, 1], p))).collect()
    }

    fn with_ids(addrs: Vec<SocketAddr>) -> Vec<(SocketAddr, String)> {
        addrs.into_iter().map(|a| (a, a.port().to_string())).collect()
    }

    #[test]
    fn removed_endpoints_are_never_picked_and_drain_is_counted() {
        let e = Endpoints::default();
        e.set(with_ids(addrs(2)));
        let lease = e.pick(Balancer::RoundRobin, &[]).unwrap();
        let leased = lease.addr();
        e.set(with_ids(addrs(2).into_iter().filter(|a| *a != leased).collect()));
        assert_eq!(e.in_flight(&leased), 1);
        for _ in 0..20 {
            assert_ne!(e.pick(Balancer::PeakEwma, &[]).unwrap().addr(), leased);
        }
        drop(lease);
        assert_eq!(e.in_flight(&leased), 0);
    }

    #[test]
    fn consecutive_failures_eject_until_everything_is_ejected() {
        let e = Endpoints::default();
        e.set(with_ids(addrs(2)));
        let bad = addrs(1)[0];
        let mut ejected = false;
        for _ in 0..EJECT_AFTER_FAILURES {
            let lease = e.pick(Balancer::RoundRobin, &[addrs(2)[1]]).unwrap();
            assert_eq!(lease.addr(), bad);
            ejected = lease.record(false);
        }
        assert!(ejected);
        for _ in 0..20 {
            assert_ne!(e.pick(Balancer::RoundRobin, &[]).unwrap().addr(), bad);
        }
        // When only ejected endpoints remain, they are still used.
        assert_eq!(e.pick(Balancer::RoundRobin, &[addrs(2)[1]]).unwrap().addr(), bad);
    }

    #[test]
    fn peak_ewma_prefers_the_faster_endpoint() {
        let e = Endpoints::default();
        e.set(with_ids(addrs(2)));
        let slow = addrs(2)[1];
        {
            let l = e.pick(Balancer::RoundRobin, &[addrs(2)[0]]).unwrap();
            assert_eq!(l.addr(), slow);
            std::thread::sleep(Duration::from_millis(80));
            l.record(true);
        }
        let fast_picks = (0..100).filter(|_| e.pick(Balancer::PeakEwma, &[]).unwrap().addr() != slow).count();
        assert_eq!(fast_picks, 100);
    }
}
