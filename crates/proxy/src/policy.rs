//! The resilience policies' runtime state: rate limiters (reject, warm-up, queue), the
//! concurrency limit, the circuit breaker and the retry budget. Each is a small state machine
//! behind a mutex held for a few arithmetic operations only.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use yun_model::{
    BreakerStrategy, CircuitBreaker, Concurrency, Policy, RateBehavior, RateLimit, Resilience, RouteMatch,
};

/// The policies of one service port, compiled with their state.
pub(crate) struct Policies {
    routes: Vec<(RouteMatch, Arc<Guard>)>,
    default: Arc<Guard>,
}

impl Policies {
    pub(crate) fn new(r: Option<&Resilience>) -> Policies {
        match r {
            None => {
                Policies { routes: Vec::new(), default: Arc::new(Guard::new("default", &Policy::default())) }
            }
            Some(r) => Policies {
                routes: r
                    .routes
                    .iter()
                    .map(|route| {
                        let guard = Guard::new(&route_name(&route.matches), &route.policy);
                        (route.matches.clone(), Arc::new(guard))
                    })
                    .collect(),
                default: Arc::new(Guard::new("default", &r.policy)),
            },
        }
    }

    /// The first route whose match fits, else the component's policy.
    pub(crate) fn for_request(&self, method: &str, path: &str, source: &str) -> &Arc<Guard> {
        self.routes
            .iter()
            .find(|(m, _)| route_matches(m, method, path, source))
            .map(|(_, g)| g)
            .unwrap_or(&self.default)
    }
}

/// Whether a request fits a route match (path prefix, methods and sources, all optional).
pub(crate) fn route_matches(m: &RouteMatch, method: &str, path: &str, source: &str) -> bool {
    m.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
        && (m.methods.is_empty() || m.methods.iter().any(|x| x == method))
        && (m.sources.is_empty() || m.sources.iter().any(|x| x == source))
}

fn route_name(m: &RouteMatch) -> String {
    let mut s = m.path_prefix.clone().unwrap_or_else(|| "*".into());
    if !m.methods.is_empty() {
        s = format!("{} {s}", m.methods.join(","));
    }
    if !m.sources.is_empty() {
        s = format!("{s} from {}", m.sources.join(","));
    }
    s
}

/// One route's policy and state.
pub(crate) struct Guard {
    /// Route name, as in metrics: `default`, or the match (`GET /api`).
    pub name: Arc<str>,
    pub policy: Policy,
    pub rate: Option<RateLimiter>,
    pub bulkhead: Option<Bulkhead>,
    pub breaker: Option<Breaker>,
    pub budget: Option<RetryBudget>,
}

impl Guard {
    fn new(name: &str, p: &Policy) -> Guard {
        Guard {
            name: name.into(),
            policy: p.clone(),
            rate: p.rate_limit.as_ref().map(RateLimiter::new),
            bulkhead: p.concurrency.as_ref().map(Bulkhead::new),
            breaker: p.circuit_breaker.as_ref().map(Breaker::new),
            budget: p.retries.as_ref().map(|r| RetryBudget::new(r.budget_ratio, r.budget_min_per_second)),
        }
    }
}

/// A rate limiter's verdict.
pub(crate) enum Admit {
    Pass,
    /// Pass after waiting this long (queue behaviour).
    Wait(Duration),
    /// Refused; the caller may try again after this long.
    Reject(Duration),
}

pub(crate) struct RateLimiter(Mutex<Limiter>);

enum Limiter {
    /// Token bucket refilled at `qps`, holding at most a tenth of a second's worth (≥ 1): the
    /// rate holds over any interval, with little burst.
    Bucket { qps: f64, capacity: f64, tokens: f64, last: Instant },
    /// Sentinel's warm-up (Guava SmoothWarmingUp) over one-second counters.
    WarmUp(WarmUp),
    /// Even spacing at `qps` with a bounded wait (Sentinel's rate limiter, at ns resolution).
    Pacer { interval: Duration, max_wait: Duration, next_free: Instant },
}

impl RateLimiter {
    fn new(r: &RateLimit) -> RateLimiter {
        let now = Instant::now();
        let limiter = match r.behavior {
            RateBehavior::Reject => {
                let capacity = (r.qps / 10.0).max(1.0);
                Limiter::Bucket { qps: r.qps, capacity, tokens: capacity, last: now }
            }
            RateBehavior::WarmUp => Limiter::WarmUp(WarmUp::new(
                r.qps,
                r.warm_up_period.map(|d| d.0.as_secs_f64()).unwrap_or(10.0),
                r.cold_factor.unwrap_or(3.0),
            )),
            RateBehavior::Queue => Limiter::Pacer {
                interval: Duration::from_secs_f64(1.0 / r.qps),
                max_wait: r.max_queueing_time.map(|d| d.0).unwrap_or(Duration::from_millis(500)),
                next_free: now,
            },
        };
        RateLimiter(Mutex::new(limiter))
    }

    pub(crate) fn acquire(&self) -> Admit {
        let Ok(mut l) = self.0.lock() else { return Admit::Pass };
        let now = Instant::now();
        match &mut *l {
            Limiter::Bucket { qps, capacity, tokens, last } => {
                *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * *qps).min(*capacity);
                *last = now;
                if *tokens >= 1.0 {
                    *tokens -= 1.0;
                    Admit::Pass
                } else {
                    Admit::Reject(Duration::from_secs_f64((1.0 - *tokens) / *qps))
                }
            }
            Limiter::WarmUp(w) => w.acquire(now),
            Limiter::Pacer { interval, max_wait, next_free } => {
                let slot = (*next_free).max(now);
                let wait = slot - now;
                if wait > *max_wait {
                    return Admit::Reject(wait - *max_wait);
                }
                *next_free = slot + *interval;
                if wait.is_zero() { Admit::Pass } else { Admit::Wait(wait) }
            }
        }
    }
}

/// Sentinel's `WarmUpController`: after idleness the permitted rate starts at
/// `count / coldFactor` and climbs to `count` as stored tokens are used up.
struct WarmUp {
    count: f64,
    cold_factor: f64,
    warning_token: f64,
    max_token: f64,
    slope: f64,
    stored: f64,
    base: Instant,
    last_filled: u64,
    current_sec: u64,
    current: f64,
    previous: f64,
}

impl WarmUp {
    fn new(count: f64, warm_up_secs: f64, cold_factor: f64) -> WarmUp {
        let warning_token = warm_up_secs * count / (cold_factor - 1.0);
        let max_token = warning_token + 2.0 * warm_up_secs * count / (1.0 + cold_factor);
        let slope = (cold_factor - 1.0) / count / (max_token - warning_token);
        WarmUp {
            count,
            cold_factor,
            warning_token,
            max_token,
            slope,
            // A new limiter is cold: it starts full of stored tokens.
            stored: max_token,
            base: Instant::now(),
            last_filled: 0,
            current_sec: 0,
            current: 0.0,
            previous: 0.0,
        }
    }

    fn acquire(&mut self, now: Instant) -> Admit {
        let elapsed = now.duration_since(self.base);
        let sec = elapsed.as_secs();
        if sec != self.current_sec {
            self.previous = if sec == self.current_sec + 1 { self.current } else { 0.0 };
            self.current = 0.0;
            self.current_sec = sec;
        }
        if sec > self.last_filled {
            // Refill while below the warning line, or while traffic is below the cold rate.
            let old = self.stored;
            let refill = (sec - self.last_filled) as f64 * self.count;
            let new = if old < self.warning_token
                || (old > self.warning_token && self.previous < self.count / self.cold_factor)
            {
                old + refill
            } else {
                old
            };
            self.stored = (new.min(self.max_token) - self.previous).max(0.0);
            self.last_filled = sec;
        }
        let allowed = if self.stored >= self.warning_token {
            let above = self.stored - self.warning_token;
            1.0 / (above * self.slope + 1.0 / self.count)
        } else {
            self.count
        };
        if self.current + 1.0 <= allowed {
            self.current += 1.0;
            Admit::Pass
        } else {
            Admit::Reject(Duration::from_secs(sec + 1) - elapsed)
        }
    }
}

/// Concurrency limit with a bounded queue.
pub(crate) struct Bulkhead {
    slots: Arc<Semaphore>,
    queue: usize,
    waiting: AtomicUsize,
    queue_timeout: Duration,
}

impl Bulkhead {
    fn new(c: &Concurrency) -> Bulkhead {
        Bulkhead {
            slots: Arc::new(Semaphore::new(c.limit as usize)),
            queue: c.queue as usize,
            waiting: AtomicUsize::new(0),
            queue_timeout: c.queue_timeout.map(|d| d.0).unwrap_or(Duration::from_secs(1)),
        }
    }

    /// A slot, waiting in the queue when there is room; `None` when refused.
    pub(crate) async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(p);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let got = tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        got.ok().and_then(Result::ok)
    }
}

/// Breaker state, as exported in metrics: 0 closed, 1 open, 2 half-open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BreakerState {
    Closed,
    Open(Instant),
    HalfOpen,
}

pub(crate) struct Breaker {
    cfg: CircuitBreaker,
    state: Mutex<BreakerStats>,
}

struct BreakerStats {
    state: BreakerState,
    window_start: Instant,
    total: u32,
    errors: u32,
    slow: u32,
}

/// Admission by the breaker: a normal request, or the single half-open probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ticket {
    Normal,
    Probe,
}

impl Breaker {
    fn new(cfg: &CircuitBreaker) -> Breaker {
        Breaker {
            cfg: cfg.clone(),
            state: Mutex::new(BreakerStats {
                state: BreakerState::Closed,
                window_start: Instant::now(),
                total: 0,
                errors: 0,
                slow: 0,
            }),
        }
    }

    /// The state as exported in metrics: 0 closed, 1 open, 2 half-open.
    pub(crate) fn state_code(&self) -> i64 {
        match self.state() {
            BreakerState::Closed => 0,
            BreakerState::Open(_) => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.state.lock().map(|s| s.state).unwrap_or(BreakerState::Closed)
    }

    /// Lets a request through, or says how long until the next probe.
    pub(crate) fn allow(&self) -> Result<Ticket, Duration> {
        let Ok(mut s) = self.state.lock() else { return Ok(Ticket::Normal) };
        let now = Instant::now();
        match s.state {
            BreakerState::Closed => Ok(Ticket::Normal),
            BreakerState::Open(until) if now >= until => {
                s.state = BreakerState::HalfOpen;
                Ok(Ticket::Probe)
            }
            BreakerState::Open(until) => Err(until - now),
            // One probe at a time; the others wait for its verdict.
            BreakerState::HalfOpen => Err(Duration::from_millis(100)),
        }
    }

    /// Records a finished request; returns the new state when it changed.
    pub(crate) fn complete(&self, ticket: Ticket, error: bool, elapsed: Duration) -> Option<BreakerState> {
        let Ok(mut s) = self.state.lock() else { return None };
        let now = Instant::now();
        let slow = self.cfg.slow_call_threshold.is_some_and(|t| elapsed > t.0);
        let bad = match self.cfg.strategy {
            BreakerStrategy::SlowRatio => slow,
            _ => error,
        };
        if ticket == Ticket::Probe {
            let next =
                if bad { BreakerState::Open(now + self.cfg.open_duration.0) } else { BreakerState::Closed };
            s.state = next;
            s.window_start = now;
            (s.total, s.errors, s.slow) = (0, 0, 0);
            return Some(next);
        }
        if s.state != BreakerState::Closed {
            return None;
        }
        if now.duration_since(s.window_start) >= self.cfg.window.0 {
            s.window_start = now;
            (s.total, s.errors, s.slow) = (0, 0, 0);
        }
        s.total += 1;
        s.errors += u32::from(error);
        s.slow += u32::from(slow);
        let total = f64::from(s.total);
        let tripped = s.total >= self.cfg.min_requests
            && match self.cfg.strategy {
                BreakerStrategy::ErrorRatio => f64::from(s.errors) / total > self.cfg.threshold,
                BreakerStrategy::SlowRatio if self.cfg.threshold >= 1.0 => s.slow == s.total,
                BreakerStrategy::SlowRatio => f64::from(s.slow) / total > self.cfg.threshold,
                BreakerStrategy::ErrorCount => f64::from(s.errors) > self.cfg.threshold,
            };
        if tripped {
            s.state = BreakerState::Open(now + self.cfg.open_duration.0);
            (s.total, s.errors, s.slow) = (0, 0, 0);
            return Some(s.state);
        }
        None
    }

    /// A probe that ended without a verdict (refused later, client gone): open again, and let
    /// the next request probe at once.
    pub(crate) fn abandon(&self, ticket: Ticket) {
        if ticket == Ticket::Probe
            && let Ok(mut s) = self.state.lock()
            && s.state == BreakerState::HalfOpen
        {
            s.state = BreakerState::Open(Instant::now());
        }
    }
}

/// Linkerd-style retry budget: over the last 10 s, retries may add at most `ratio` of the
/// requests, plus `min_per_second` always.
pub(crate) struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    /// (second, requests, retries), newest last.
    window: Mutex<VecDeque<(u64, u32, u32)>>,
    base: Instant,
}

const BUDGET_WINDOW_SECS: u64 = 10;

impl RetryBudget {
    fn new(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget { ratio, min_per_second, window: Mutex::new(VecDeque::new()), base: Instant::now() }
    }

    fn bucket<'a>(&self, w: &'a mut VecDeque<(u64, u32, u32)>) -> &'a mut (u64, u32, u32) {
        let sec = self.base.elapsed().as_secs();
        while w.front().is_some_and(|b| b.0 + BUDGET_WINDOW_SECS <= sec) {
            w.pop_front();
        }
        if w.back().is_none_or(|b| b.0 != sec) {
            w.push_back((sec, 0, 0));
        }
        let last = w.len() - 1;
        &mut w[last]
    }

    /// Counts a request.
    pub(crate) fn deposit(&self) {
        if let Ok(mut w) = self.window.lock() {
            self.bucket(&mut w).1 += 1;
        }
    }

    /// Takes one retry from the budget, if there is one left.
    pub(crate) fn withdraw(&self) -> bool {
        let Ok(mut w) = self.window.lock() else { return false };
        self.bucket(&mut w);
        let (requests, retries) = w.iter().fold((0u32, 0u32), |(a, b), x| (a + x.1, b + x.2));
        let allowed = (self.ratio * f64::from(requests))
            .max(f64::from(self.min_per_second) * BUDGET_WINDOW_SECS as f64);
        if f64::from(retries) < allowed {
            self.bucket(&mut w).2 += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yun_model::Dur;

    #[test]
    fn token_bucket_holds_the_rate_with_little_burst() {
        let r = RateLimiter::new(&RateLimit {
            qps: 100.0,
            behavior: RateBehavior::Reject,
            warm_up_period: None,
            cold_factor: None,
            max_queueing_time: None,
        });
        let passed = (0..1000).filter(|_| matches!(r.acquire(), Admit::Pass)).count();
        assert_eq!(passed, 10, "a tenth of a second's worth at once");
    }

    #[test]
    fn warm_up_starts_at_the_cold_rate() {
        let mut w = WarmUp::new(90.0, 10.0, 3.0);
        let now = Instant::now();
        let passed = (0..1000).filter(|_| matches!(w.acquire(now), Admit::Pass)).count();
        assert_eq!(passed, 30, "count / coldFactor when cold");
    }

    #[test]
    fn pacer_spaces_requests_and_bounds_the_wait() {
        let r = RateLimiter::new(&RateLimit {
            qps: 10.0,
            behavior: RateBehavior::Queue,
            warm_up_period: None,
            cold_factor: None,
            max_queueing_time: Some(Dur(Duration::from_millis(250))),
        });
        let verdicts: Vec<Admit> = (0..5).map(|_| r.acquire()).collect();
        assert!(matches!(verdicts[0], Admit::Pass));
        assert!(
            matches!(verdicts[1], Admit::Wait(d) if d > Duration::from_millis(90) && d <= Duration::from_millis(100))
        );
        assert!(matches!(verdicts[2], Admit::Wait(_)));
        assert!(matches!(verdicts[3], Admit::Reject(_)), "300 ms wait exceeds 250 ms");
    }

    fn breaker(strategy: BreakerStrategy, threshold: f64) -> Breaker {
        Breaker::new(&CircuitBreaker {
            strategy,
            threshold,
            slow_call_threshold: Some(Dur(Duration::from_millis(50)))
                .filter(|_| strategy == BreakerStrategy::SlowRatio),
            min_requests: 4,
            window: Dur(Duration::from_secs(60)),
            open_duration: Dur(Duration::from_millis(30)),
        })
    }

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let b = breaker(BreakerStrategy::ErrorRatio, 0.5);
        for error in [false, true, true] {
            assert_eq!(b.allow(), Ok(Ticket::Normal));
            assert_eq!(b.complete(Ticket::Normal, error, Duration::ZERO), None, "below min requests");
        }
        assert!(matches!(b.complete(Ticket::Normal, true, Duration::ZERO), Some(BreakerState::Open(_))));
        assert!(b.allow().is_err(), "open refuses");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.allow(), Ok(Ticket::Probe));
        assert!(b.allow().is_err(), "one probe at a time");
        // A failing probe re-opens; a succeeding one closes.
        assert!(matches!(b.complete(Ticket::Probe, true, Duration::ZERO), Some(BreakerState::Open(_))));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.allow(), Ok(Ticket::Probe));
        assert_eq!(b.complete(Ticket::Probe, false, Duration::ZERO), Some(BreakerState::Closed));
        assert_eq!(b.allow(), Ok(Ticket::Normal));
    }

    #[test]
    fn breaker_strategies() {
        let slow = breaker(BreakerStrategy::SlowRatio, 0.5);
        for _ in 0..4 {
            slow.complete(Ticket::Normal, false, Duration::from_millis(100));
        }
        assert!(matches!(slow.state(), BreakerState::Open(_)));
        let count = breaker(BreakerStrategy::ErrorCount, 2.0);
        for _ in 0..3 {
            count.complete(Ticket::Normal, false, Duration::ZERO);
        }
        count.complete(Ticket::Normal, true, Duration::ZERO);
        count.complete(Ticket::Normal, true, Duration::ZERO);
        assert_eq!(count.state(), BreakerState::Closed, "2 errors do not exceed 2");
        count.complete(Ticket::Normal, true, Duration::ZERO);
        assert!(matches!(count.state(), BreakerState::Open(_)));
    }

    #[test]
    fn retry_budget_allows_ratio_plus_floor() {
        let b = RetryBudget::new(0.2, 1);
        for _ in 0..100 {
            b.deposit();
        }
        // max(0.2 × 100, 1 × 10) = 20 retries.
        let granted = (0..50).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 20);
    }

    #[tokio::test]
    async fn bulkhead_caps_and_queues() {
        let b = Bulkhead::new(&Concurrency {
            limit: 1,
            queue: 1,
            queue_timeout: Some(Dur(Duration::from_millis(50))),
        });
        let first = b.acquire().await.expect("free slot");
        let second = tokio::spawn(async move { b.acquire().await.is_some() });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(first);
        assert!(second.await.unwrap(), "the queued request got the freed slot");
    }
}
