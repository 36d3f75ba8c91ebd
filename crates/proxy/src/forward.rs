//! Forwarding one request: choose an instance, send, retry what was never sent, stream the
//! response back. HTTP/2 requests go to instances over HTTP/2 (h2c, so gRPC with trailers
//! passes), HTTP/1.1 upgrades (WebSocket) are spliced through, bodies stream both ways.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, SizeHint};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use std::borrow::Cow;
use yun_model::{LoadBalancer, RetryOn};
use yun_telemetry::context::traceparent;
use yun_telemetry::{HopDetails, HopPlace, SpanId, TraceContext, TraceId, TraceStore};

use prometheus_client::metrics::counter::Counter;

use crate::endpoints::{Balancer, Endpoints, Lease};
use crate::h1::{HOP_BY_HOP, PassedFields};
use crate::metrics::{
    ComponentLabels, InstanceLabels, Metrics, RejectLabels, RouteLabels, RouteSeries, status_class,
};
use crate::policy::{Admit, Breaker, Guard, Policies, Ticket, route_matches};
use crate::traffic::EdgeCounters;
use crate::upstream::{Http1Pool, SendError};
use crate::{EXTERNAL, HOP_HEADER, NO_ENDPOINT_WAIT, PortConfig};

/// A request as hyper received it, with its body boxed like every other.
pub(crate) fn from_hyper(req: Request<hyper::body::Incoming>) -> Request<Body> {
    req.map(|b| b.map_err(Into::into).boxed())
}

/// Errors of bodies in either direction: hyper's, or the upstream client's own.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Body = BoxBody<Bytes, BoxError>;

/// Bodies up to this size are buffered so that the request can be sent again to another
/// instance when the first one could not take it.
pub(crate) const RETRY_BUFFER_BYTES: u64 = 256 * 1024;
/// Attempts on distinct instances for a request that could not be sent.
const MAX_CONNECT_ATTEMPTS: usize = 3;

pub(crate) struct Proxy {
    app: Arc<str>,
    component: Arc<str>,
    metrics: Arc<Metrics>,
    in_flight: prometheus_client::metrics::gauge::Gauge,
    series: RwLock<std::collections::HashMap<String, Arc<RouteSeries>>>,
    /// Traffic counters by caller.
    edges: RwLock<std::collections::HashMap<String, Arc<EdgeCounters>>>,
    endpoints: Arc<Endpoints>,
    active: Arc<RwLock<Arc<Active>>>,
    http1: Arc<Http1Pool>,
    http2: Client<HttpConnector, Body>,
}

/// The port's settings with the state of their policies.
pub(crate) struct Active {
    pub config: PortConfig,
    pub policies: Policies,
    pub balancer: Balancer,
}

impl Active {
    pub(crate) fn new(config: PortConfig) -> Active {
        let policies = Policies::new(config.resilience.as_ref());
        let balancer = match config.traffic.as_ref().map(|t| t.load_balancer).unwrap_or_default() {
            LoadBalancer::P2cEwma => Balancer::PeakEwma,
            LoadBalancer::LeastRequest => Balancer::LeastRequest,
            LoadBalancer::RoundRobin => Balancer::RoundRobin,
        };
        Active { config, policies, balancer }
    }

    /// The other component this request goes to, if a traffic route matches or the split
    /// picks one.
    fn backend<B>(&self, owner: &str, req: &Request<B>) -> Option<(String, SocketAddr)> {
        let t = self.config.traffic.as_ref()?;
        let headers = req.headers();
        let route = t.routes.iter().find(|r| {
            r.matches
                .headers
                .iter()
                .all(|(k, v)| headers.get(k.as_str()).is_some_and(|h| h.as_bytes() == v.as_bytes()))
                && r.matches.cookie.as_deref().is_none_or(|want| has_cookie(headers, want))
        });
        let component = match route {
            Some(r) => r.target(owner),
            None => {
                let roll = rand::random_range(0..100u32);
                let mut acc = 0;
                t.split
                    .iter()
                    .find(|b| {
                        acc += b.weight;
                        roll < acc
                    })?
                    .target(owner)
            }
        };
        let addr = *self.config.backends.get(&component)?;
        Some((component, addr))
    }

    /// The fault to inject into this request, if any: (delay, abort status).
    fn fault(&self, method: &str, path: &str, source: &str) -> (Option<Duration>, Option<u16>) {
        let Some(f) = self.config.traffic.as_ref().and_then(|t| {
            t.faults
                .iter()
                .find(|f| f.matches.as_ref().is_none_or(|m| route_matches(m, method, path, source)))
        }) else {
            return (None, None);
        };
        let roll = |percent: f64| rand::random::<f64>() * 100.0 < percent;
        let delay = f.delay.as_ref().filter(|d| roll(d.percent)).map(|d| d.duration.0);
        let abort = f.abort.as_ref().filter(|a| roll(a.percent)).map(|a| a.status);
        (delay, abort)
    }
}

/// The breaker's admission of one request; if the request ends without a verdict (the client
/// went away), a half-open probe is given back so the breaker is not stuck half-open.
struct Verdict<'a> {
    breaker: &'a Breaker,
    ticket: Ticket,
    done: bool,
}

impl Drop for Verdict<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.abandon(self.ticket);
        }
    }
}

/// The client end of a connection, worked out once per connection rather than per request.
pub(crate) struct Downstream {
    /// The client's IP as appended to `x-forwarded-for`.
    pub forwarded_for: HeaderValue,
    /// The calling component (`app/component`), or `external`.
    pub source: Arc<str>,
    /// `source` as the `x-yun-caller` value instances receive.
    pub caller: HeaderValue,
    /// The daemon's token that vouches for a passed-on caller; empty on the gateway, which
    /// never receives passed-on requests.
    pub hop: Arc<str>,
    /// What this connection's last request recorded into; the next one usually goes the
    /// same way.
    lane: Mutex<Option<Lane>>,
}

/// What requests from one caller through one route of a component record into, kept per
/// connection so that a request looks up no series by name (those maps hash strings).
struct Lane {
    /// The component, route and caller; also where traced hops say they happened.
    place: Arc<HopPlace>,
    series: Arc<RouteSeries>,
    edge: Arc<EdgeCounters>,
    /// Request counters by status class, for each instance the requests reached.
    requests: Vec<(Arc<str>, [Counter; 5])>,
    /// The path of the last hop recorded: most requests on a connection repeat it.
    path: Arc<str>,
}

/// Instances a lane keeps counters for; past that it starts over (an instance that answered
/// once is rarely the only one that will).
const LANE_INSTANCES: usize = 16;

impl Lane {
    /// `path`, shared with the last hop's when it is the same.
    fn path(&mut self, path: &str) -> Arc<str> {
        if *self.path != *path {
            self.path = path.into();
        }
        self.path.clone()
    }

    /// The counter of a request answered by `instance` (`none` when no instance answered).
    fn requests(&mut self, instance: Option<&str>, status: u16) -> &Counter {
        let instance = instance.unwrap_or("none");
        let i = match self.requests.iter().position(|(i, _)| &**i == instance) {
            Some(i) => i,
            None => {
                if self.requests.len() >= LANE_INSTANCES {
                    self.requests.clear();
                }
                let counters = self.series.requests(&self.place.source, instance);
                self.requests.push((instance.into(), counters));
                self.requests.len() - 1
            }
        };
        &self.requests[i].1[status_class(status)]
    }
}

impl Downstream {
    pub(crate) fn new(peer: SocketAddr, source: Arc<str>, hop: Arc<str>) -> Downstream {
        let forwarded_for = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        let caller = HeaderValue::from_str(&source).unwrap_or_else(|_| HeaderValue::from_static(EXTERNAL));
        Downstream { forwarded_for, source, caller, hop, lane: Mutex::default() }
    }
}

/// What the attempts did, for metrics and the span: the instance that answered last, the
/// retries made and why the request failed, if it did.
#[derive(Default)]
struct Outcome {
    instance: Option<Arc<str>>,
    retries: u32,
    failure: Option<String>,
    /// Whether the caller of `serve` takes an instance's fields as they came.
    pass: bool,
    /// The instance's answer's fields, when they are passed on as received.
    passed: Option<PassedFields>,
}

/// Which of the fields the proxy looks up a request carries, when the codec that parsed it
/// found out on the way: lookups of absent fields are skipped (each one hashes the name).
/// The default is none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Present {
    /// `x-yun-hop`.
    pub hop: bool,
    pub traceparent: bool,
    pub tracestate: bool,
    /// A hop-by-hop field: `Connection`, `Upgrade`, `TE`, `Keep-Alive`…
    pub hop_by_hop: bool,
}

impl Present {
    /// Not known (a request that came through hyper): every lookup is made.
    pub(crate) const UNKNOWN: Present =
        Present { hop: true, traceparent: true, tracestate: true, hop_by_hop: true };
}

/// This hop's part in a trace: the context it arrived with (or a new trace), and its own span,
/// which becomes the parent that is passed on.
struct HopContext {
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    sampled: bool,
    start_unix_nanos: u64,
    /// This hop's `traceparent`, as passed on.
    context: Option<HeaderValue>,
}

impl HopContext {
    /// Reads `traceparent`/`tracestate` (an invalid one starts a new trace) and replaces them
    /// with this hop's context.
    fn begin(traces: &TraceStore, headers: &mut hyper::HeaderMap, present: Present) -> HopContext {
        let incoming = present.traceparent.then(|| headers.get(&TRACEPARENT)).flatten().and_then(|tp| {
            let state = present.tracestate.then(|| headers.get(&TRACESTATE)).flatten();
            TraceContext::parse(tp.as_bytes(), state.map(|v| v.as_bytes()))
        });
        let span_id = SpanId::random();
        let (trace_id, parent, sampled, tracestate) = match incoming {
            Some(c) => (c.trace_id, Some(c.parent_id), c.sampled, c.tracestate),
            None => {
                let id = TraceId::random();
                (id, None, traces.sample_new(&id), String::new())
            }
        };
        // The same value tells the client which trace its request joined; shared from the
        // start, so that the second copy allocates nothing.
        let context =
            HeaderValue::from_maybe_shared(from_slab(&traceparent(trace_id, span_id, sampled))).ok();
        if let Some(v) = &context {
            headers.insert(TRACEPARENT, v.clone());
        }
        match HeaderValue::from_str(&tracestate) {
            Ok(v) if !tracestate.is_empty() => {
                headers.insert(TRACESTATE, v);
            }
            _ if present.tracestate => {
                headers.remove(&TRACESTATE);
            }
            _ => {}
        }
        HopContext {
            trace_id,
            span_id,
            parent,
            sampled,
            start_unix_nanos: yun_telemetry::now_unix_nanos(),
            context,
        }
    }
}

thread_local! {
    /// Room this thread's `traceparent` values are cut from: one allocation serves dozens of
    /// requests (each value holds a share of it until its request is answered).
    static SLAB: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// `value` as shared bytes, cut from this thread's slab.
fn from_slab(value: &[u8]) -> Bytes {
    // Small, so that a value held long (a request waiting on a slow instance) keeps little
    // else alive.
    const SLAB_BYTES: usize = 2048;
    SLAB.with_borrow_mut(|slab| {
        if slab.capacity() < value.len() {
            *slab = BytesMut::with_capacity(SLAB_BYTES.max(value.len()));
        }
        slab.extend_from_slice(value);
        slab.split().freeze()
    })
}

/// The caller instances are told about.
const CALLER_HEADER: HeaderName = HeaderName::from_static("x-yun-caller");
/// Carries this daemon's token on requests it passes on (see [`HOP_HEADER`]).
const HOP: HeaderName = HeaderName::from_static(HOP_HEADER);
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// Tells the client which trace its request joined (W3C Trace Context Level 2).
const TRACERESPONSE: HeaderName = HeaderName::from_static("traceresponse");
/// Names the policy that refused a request.
const POLICY_HEADER: HeaderName = HeaderName::from_static("x-yun-policy");
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const RETRIES_HEADER: HeaderName = HeaderName::from_static("x-yun-retries");
/// Fields of an instance's answer that the proxy reads.
static READ_FROM_ANSWERS: [HeaderName; 1] = [POLICY_HEADER];

/// Runs `f` when dropped (also when the request future is dropped because the client left).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// How one attempt goes to an instance.
// Lives on the stack for one attempt; boxing the request would cost an allocation each time.
#[allow(clippy::large_enum_variant)]
enum Attempt<'a> {
    /// The whole request is in memory: over an inline HTTP/1.1 connection.
    Inline(&'a Bytes),
    /// Anything else: through hyper.
    Hyper(Request<Body>),
}

/// Why an attempt or a request failed, which decides retries and the status code.
enum Failure {
    /// The request never reached an instance.
    Connect(String),
    /// No answer within the (per-try) timeout.
    Timeout,
    /// The connection broke or the answer was not HTTP.
    Upstream(String),
}

impl Proxy {
    pub(crate) fn new(
        app: String,
        component: String,
        metrics: Arc<Metrics>,
        endpoints: Arc<Endpoints>,
        active: Arc<RwLock<Arc<Active>>>,
    ) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(crate::upstream::CONNECT_TIMEOUT));
        let http1 = Http1Pool::new();
        let http2 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .http2_only(true)
            .build(connector);
        let in_flight = metrics
            .in_flight
            .get_or_create(&ComponentLabels { app: app.clone(), component: component.clone() })
            .clone();
        Proxy {
            app: app.into(),
            component: component.into(),
            metrics,
            in_flight,
            series: Default::default(),
            edges: Default::default(),
            endpoints,
            active,
            http1,
            http2,
        }
    }

    fn active(&self) -> Arc<Active> {
        self.active.read().map(|c| c.clone()).unwrap_or_else(|_| Arc::new(Active::new(PortConfig::default())))
    }

    /// The cached series of a route.
    fn series(&self, route: &str) -> Arc<RouteSeries> {
        if let Some(s) = self.series.read().ok().and_then(|m| m.get(route).cloned()) {
            return s;
        }
        let labels = RouteLabels {
            app: self.app.to_string(),
            component: self.component.to_string(),
            route: route.to_string(),
        };
        let s = Arc::new(self.metrics.route(labels));
        if let Ok(mut m) = self.series.write() {
            m.insert(route.to_string(), s.clone());
        }
        s
    }

    /// The traffic counters of calls from `source`.
    fn edge(&self, source: &str) -> Arc<EdgeCounters> {
        if let Some(e) = self.edges.read().ok().and_then(|m| m.get(source).cloned()) {
            return e;
        }
        let e = self.metrics.traffic.edge(source, &self.app, &self.component);
        if let Ok(mut m) = self.edges.write() {
            m.insert(source.to_string(), e.clone());
        }
        e
    }

    /// Handles one request from `client`; the response's map holds all its fields.
    pub(crate) async fn handle(&self, req: Request<Body>, client: &Downstream) -> Response<Body> {
        // Not asked to, the attempts pass no fields as received.
        self.serve(req, client, Present::UNKNOWN, false).await.0
    }

    /// Handles one request for a writer that copies an instance's answer's fields as they
    /// came ([`PassedFields`]) instead of taking a map apart; the response's map then holds
    /// only the fields the proxy adds.
    pub(crate) async fn handle_passing(
        &self,
        req: Request<Body>,
        client: &Downstream,
        present: Present,
    ) -> (Response<Body>, Option<PassedFields>) {
        self.serve(req, client, present, true).await
    }

    async fn serve(
        &self,
        mut req: Request<Body>,
        client: &Downstream,
        present: Present,
        pass: bool,
    ) -> (Response<Body>, Option<PassedFields>) {
        let hop = &*client.hop;
        // The caller as the platform sees it; whatever a client claimed is replaced, except on
        // requests this daemon passed on and vouched for.
        let vouched = present.hop
            && !hop.is_empty()
            && req.headers().get(&HOP).is_some_and(|v| v.as_bytes() == hop.as_bytes());
        if present.hop {
            req.headers_mut().remove(&HOP);
        }
        let claimed =
            vouched.then(|| req.headers().get(&CALLER_HEADER)).flatten().and_then(|v| v.to_str().ok());
        // `insert` replaces every value a client may have sent.
        let source_id: Arc<str> = match (vouched, claimed) {
            (true, Some(c)) => {
                let id: Arc<str> = c.into();
                let value = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static(EXTERNAL));
                req.headers_mut().insert(CALLER_HEADER, value);
                id
            }
            _ => {
                req.headers_mut().insert(CALLER_HEADER, client.caller.clone());
                client.source.clone()
            }
        };
        let source = &*source_id;
        let hop_trace =
            self.metrics.traces.as_ref().map(|t| HopContext::begin(t, req.headers_mut(), present));
        // The target shares the request head's bytes: kept, it costs no copy until the hop is
        // recorded.
        let method_and_target = hop_trace.as_ref().map(|_| (req.method().clone(), req.uri().clone()));
        self.in_flight.inc();
        let in_flight = self.in_flight.clone();
        let _in_flight = scopeguard(move || {
            in_flight.dec();
        });
        let start = std::time::Instant::now();
        let active = self.active();
        let guard = active.policies.for_request(req.method().as_str(), req.uri().path(), source).clone();
        let mut outcome = Outcome { pass, ..Outcome::default() };
        let (delay, abort) = active.fault(req.method().as_str(), req.uri().path(), source);
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let resp = match (abort, active.backend(&self.component, &req)) {
            (Some(status), _) => refusal(
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "fault injected by the traffic trait",
                Some("fault"),
            ),
            (None, Some((component, addr))) => {
                outcome.instance = Some(format!("split:{component}").into());
                if let Ok(v) = HeaderValue::from_str(hop) {
                    req.headers_mut().insert(HOP, v);
                }
                self.pass_on(req, addr).await
            }
            (None, None) => self.guarded(req, client, present, &active, &guard, &mut outcome).await,
        };
        let took = start.elapsed();
        let elapsed = took.as_secs_f64();
        let mut lane = self.lane(client, &guard.name, &source_id);
        let lane = lane.get_or_insert_with(|| self.new_lane(&guard.name, &source_id));
        let series = &lane.series;
        series.duration.observe(elapsed);
        lane.edge.observe(elapsed, resp.status().is_server_error());
        if outcome.retries > 0 {
            series.retries.inc_by(outcome.retries.into());
        }
        if let Some(policy) = resp.headers().get(&POLICY_HEADER).and_then(|v| v.to_str().ok()) {
            let reject = RejectLabels {
                app: self.app.to_string(),
                component: self.component.to_string(),
                route: guard.name.to_string(),
                policy: policy.to_string(),
            };
            self.metrics.rejections.get_or_create(&reject).inc();
        }
        if let Some(b) = &guard.breaker {
            series.breaker().set(b.state_code());
        }
        lane.requests(outcome.instance.as_deref(), resp.status().as_u16()).inc();
        let mut resp = resp;
        let mut passed = outcome.passed.take();
        if let (Some(mut hop), Some(traces), Some((method, target))) =
            (hop_trace, &self.metrics.traces, method_and_target)
        {
            if let Some(v) = hop.context.take() {
                match passed.as_mut() {
                    Some(p) => p.add(TRACERESPONSE, v),
                    None => {
                        resp.headers_mut().insert(TRACERESPONSE, v);
                    }
                }
            }
            let sampled = hop.sampled;
            let path = lane.path(cut(target.path(), yun_telemetry::MAX_ATTRIBUTE_LEN));
            let record = self.hop(hop, &method, path, lane.place.clone(), outcome, &resp, took);
            traces.record_hop(record, sampled);
        }
        (resp, passed)
    }

    /// `client`'s lane, emptied when its last request went another way than `route` from
    /// `source`.
    fn lane<'c>(
        &self,
        client: &'c Downstream,
        route: &Arc<str>,
        source: &str,
    ) -> MutexGuard<'c, Option<Lane>> {
        let mut lane = client.lane.lock().unwrap_or_else(PoisonError::into_inner);
        let fits = lane.as_ref().is_some_and(|l| {
            Arc::ptr_eq(&l.place.route, route)
                && Arc::ptr_eq(&l.place.component, &self.component)
                && Arc::ptr_eq(&l.place.app, &self.app)
                && *l.place.source == *source
        });
        if !fits {
            *lane = None;
        }
        lane
    }

    fn new_lane(&self, route: &Arc<str>, source: &Arc<str>) -> Lane {
        Lane {
            place: Arc::new(HopPlace {
                app: self.app.clone(),
                component: self.component.clone(),
                route: route.clone(),
                source: source.clone(),
            }),
            series: self.series(route),
            edge: self.edge(source),
            requests: Vec::new(),
            path: Arc::from(""),
        }
    }

    /// The record of one request through this hop.
    #[allow(clippy::too_many_arguments)]
    fn hop(
        &self,
        hop: HopContext,
        method: &hyper::Method,
        path: Arc<str>,
        place: Arc<HopPlace>,
        outcome: Outcome,
        resp: &Response<Body>,
        took: Duration,
    ) -> yun_telemetry::Hop {
        let policy = resp.headers().get(&POLICY_HEADER).and_then(|v| v.to_str().ok()).map(|p| {
            match ["rateLimit", "concurrency", "circuitBreaker", "timeout", "fault"]
                .into_iter()
                .find(|k| *k == p)
            {
                Some(k) => Cow::Borrowed(k),
                None => Cow::Owned(p.to_string()),
            }
        });
        let (method, method_original) = match known_method(method) {
            Some(m) => (m, None),
            None => {
                (yun_telemetry::OTHER_METHOD, Some(cut(method.as_str(), yun_telemetry::MAX_NAME_LEN).into()))
            }
        };
        let failure = outcome.failure.map(|f| cut(&f, yun_telemetry::MAX_ATTRIBUTE_LEN).into());
        let details = (policy.is_some() || failure.is_some() || method_original.is_some())
            .then(|| Box::new(HopDetails { policy, failure, method_original }));
        yun_telemetry::Hop {
            trace_id: hop.trace_id,
            span_id: hop.span_id,
            parent_id: hop.parent,
            place,
            method,
            path,
            status: resp.status().as_u16(),
            instance: outcome.instance,
            retries: outcome.retries,
            details,
            start_unix_nanos: hop.start_unix_nanos,
            // From the monotonic clock: one wall-clock read per hop, and never an end before
            // the start.
            end_unix_nanos: hop.start_unix_nanos + took.as_nanos() as u64,
        }
    }

    /// Admission by the policies, then the attempts.
    async fn guarded(
        &self,
        mut req: Request<Body>,
        client: &Downstream,
        present: Present,
        active: &Active,
        guard: &Guard,
        outcome: &mut Outcome,
    ) -> Response<Body> {
        // Admission, cheapest refusal first: rate, then concurrency, then the breaker.
        if let Some(rate) = &guard.rate {
            match rate.acquire() {
                Admit::Pass => {}
                Admit::Wait(d) => tokio::time::sleep(d).await,
                Admit::Reject(after) => {
                    return self.shed(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rateLimit",
                        "rate limit exceeded",
                        after,
                    );
                }
            }
        }
        let permit = match &guard.bulkhead {
            Some(b) => match b.acquire().await {
                Some(p) => Some(p),
                None => {
                    return self.shed(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "concurrency",
                        "concurrency limit reached",
                        Duration::from_secs(1),
                    );
                }
            },
            None => None,
        };
        let mut verdict = match &guard.breaker {
            Some(b) => match b.allow() {
                Ok(ticket) => Some(Verdict { breaker: b, ticket, done: false }),
                Err(after) => {
                    return self.shed(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "circuitBreaker",
                        "circuit breaker is open",
                        after,
                    );
                }
            },
            None => None,
        };
        if let Some(budget) = &guard.budget {
            budget.deposit();
        }

        let upgrade = present.hop_by_hop && is_upgrade(&req);
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        if present.hop_by_hop {
            // The fields of the client's connection stay with it; an upgrade asks for its own.
            let headers = req.headers_mut();
            let asked = upgrade
                .then(|| (headers.get(header::CONNECTION).cloned(), headers.get(header::UPGRADE).cloned()));
            strip_hop_by_hop(headers);
            if let Some((conn, up)) = asked {
                headers.insert(header::CONNECTION, conn.unwrap_or(HeaderValue::from_static("upgrade")));
                if let Some(up) = up {
                    headers.insert(header::UPGRADE, up);
                }
            }
        }
        // Only a breaker needs the time the attempts took.
        let start = verdict.is_some().then(std::time::Instant::now);
        let attempts = self.attempts(req, client, active, guard, downstream_upgrade, outcome);
        let result = match guard.policy.timeout {
            Some(t) => tokio::time::timeout(t.0, attempts).await.unwrap_or(Err(Failure::Timeout)),
            None => attempts.await,
        };
        if let (Some(v), Some(start)) = (verdict.as_mut(), start) {
            let elapsed = start.elapsed();
            let error = match &result {
                Ok(r) => r.status().is_server_error(),
                Err(_) => true,
            };
            v.breaker.complete(v.ticket, error, elapsed);
            v.done = true;
        }
        match result {
            Ok(resp) => match permit {
                Some(permit) => {
                    let (p, b) = resp.into_parts();
                    // The concurrency slot is held until the response body is done.
                    Response::from_parts(p, Hold { inner: b, _held: permit }.boxed())
                }
                None => resp,
            },
            Err(Failure::Timeout) => {
                let t = guard
                    .policy
                    .per_try_timeout
                    .or(guard.policy.timeout)
                    .map(|d| d.to_string())
                    .unwrap_or_default();
                let message = format!("no answer from \"{}\" within {t}", self.component);
                let resp = refusal(StatusCode::GATEWAY_TIMEOUT, &message, Some("timeout"));
                outcome.failure = Some(message);
                resp
            }
            Err(Failure::Connect(e)) | Err(Failure::Upstream(e)) => {
                let resp = error(StatusCode::BAD_GATEWAY, &e);
                outcome.failure = Some(e);
                resp
            }
        }
    }

    /// Sends the request, retrying as the policy and budget allow.
    async fn attempts(
        &self,
        req: Request<Body>,
        client: &Downstream,
        active: &Active,
        guard: &Guard,
        downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, Failure> {
        let upgrade = downstream_upgrade.is_some();
        let (mut parts, body) = req.into_parts();
        parts.headers.append(FORWARDED_FOR, client.forwarded_for.clone());
        let h2 = parts.version == Version::HTTP_2;
        // Small bodies are buffered so a request can be sent again.
        let len = body_len(&parts.headers);
        let small = len.is_some_and(|n| n <= RETRY_BUFFER_BYTES)
            || (len.is_none()
                && !h2
                && !parts.headers.contains_key(header::TRANSFER_ENCODING)
                && !upgrade
                && bodyless(&parts.method));
        let (buffered, mut streaming) = if small {
            match body.collect().await {
                Ok(c) => (Some(c.to_bytes()), None),
                Err(e) => return Ok(error(StatusCode::BAD_REQUEST, &format!("reading request body: {e}"))),
            }
        } else {
            (None, Some(body))
        };
        if let (Some(addr), Some(body)) = (active.config.mirror_addr, &buffered) {
            let percent = active
                .config
                .traffic
                .as_ref()
                .and_then(|t| t.mirror.as_ref())
                .map(|m| m.percent)
                .unwrap_or(0.0);
            if rand::random::<f64>() * 100.0 < percent {
                self.mirror(addr, &parts, body.clone());
            }
        }
        let retries = guard.policy.retries.as_ref();
        // Fields the proxy reads from an answer keep it on the general path.
        let pass = outcome.pass.then_some(&READ_FROM_ANSWERS[..]);
        let may_resend =
            buffered.is_some() && (idempotent(&parts.method) || retries.is_some_and(|r| r.non_idempotent));
        let mut downstream_upgrade = downstream_upgrade;
        // Instances tried before this attempt; the first attempt allocates nothing.
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut last: Option<SocketAddr> = None;
        let mut connect_failures = 0;
        let mut retried = 0u32;
        loop {
            if self.endpoints.is_empty() && !self.endpoints.wait_for_any(NO_ENDPOINT_WAIT).await {
                return Ok(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "no ready instance of component \"{}\" within {}s",
                        self.component,
                        NO_ENDPOINT_WAIT.as_secs()
                    ),
                ));
            }
            tried.extend(last.take());
            // Prefer an instance not tried yet; fall back to any.
            let lease = match self.endpoints.pick(active.balancer, &tried) {
                Some(l) => l,
                None => match self.endpoints.pick(active.balancer, &[]) {
                    Some(l) => l,
                    None => continue,
                },
            };
            let addr = lease.addr();
            last = Some(addr);
            outcome.instance = Some(lease.instance_id());
            outcome.retries = retried;
            // The common case, the whole request in memory, goes over an inline connection;
            // the rest as a hyper request.
            let attempt = match (&buffered, streaming.take()) {
                (Some(b), _) if !h2 && !upgrade => Attempt::Inline(b),
                (buffered, streaming) => {
                    let body = match (buffered, streaming) {
                        (Some(b), _) => Full::new(b.clone()).map_err(|n| match n {}).boxed(),
                        (None, Some(s)) => s,
                        (None, None) => {
                            return Err(Failure::Upstream(
                                "upstream failed while the body was being sent".into(),
                            ));
                        }
                    };
                    match outgoing(&parts, lease.authority(), body) {
                        Some(out) => Attempt::Hyper(out),
                        None => return Ok(error(StatusCode::BAD_REQUEST, "invalid request target")),
                    }
                }
            };
            let authority = lease.authority().as_str();
            let sent = async {
                match attempt {
                    Attempt::Inline(body) => self
                        .http1
                        .send_whole(addr, &parts.method, &parts.uri, &parts.headers, authority, body, pass)
                        .await
                        .map_err(|e| failure(addr, e)),
                    Attempt::Hyper(out) => self.send(addr, out).await.map(|resp| (resp, None)),
                }
            };
            let answer = match guard.policy.per_try_timeout {
                Some(t) => tokio::time::timeout(t.0, sent).await.unwrap_or(Err(Failure::Timeout)),
                None => sent.await,
            };
            let retry_on = |cond: RetryOn| retries.is_some_and(|r| r.on.contains(&cond));
            let budget_retry = || {
                retries.is_some_and(|r| retried < r.attempts)
                    && guard.budget.as_ref().is_some_and(|b| b.withdraw())
            };
            match answer {
                Ok((mut resp, passed)) => {
                    let status = resp.status();
                    self.record(&lease, !status.is_server_error());
                    let retryable = (status.is_server_error() && retry_on(RetryOn::ServerError))
                        || (matches!(status.as_u16(), 502..=504) && retry_on(RetryOn::GatewayError))
                        || retries.is_some_and(|r| r.status_codes.contains(&status.as_u16()));
                    if retryable && may_resend && budget_retry() {
                        retried += 1;
                        drop(resp);
                        self.backoff(guard, retried).await;
                        continue;
                    }
                    if status == StatusCode::SWITCHING_PROTOCOLS
                        && let Some(down) = downstream_upgrade.take()
                    {
                        let up = hyper::upgrade::on(&mut resp);
                        tokio::spawn(splice(down, up, lease));
                        return Ok(resp);
                    }
                    let (mut p, b) = resp.into_parts();
                    strip_hop_by_hop(&mut p.headers);
                    if retried > 0
                        && let Ok(v) = HeaderValue::from_str(&retried.to_string())
                    {
                        p.headers.insert(RETRIES_HEADER, v);
                    }
                    outcome.passed = passed;
                    return Ok(Response::from_parts(p, Hold { inner: b, _held: lease }.boxed()));
                }
                Err(Failure::Connect(e)) => {
                    self.record(&lease, false);
                    connect_failures += 1;
                    // Never sent: another instance may take it, without spending the budget.
                    if buffered.is_some() && connect_failures < MAX_CONNECT_ATTEMPTS {
                        continue;
                    }
                    if buffered.is_some() && retry_on(RetryOn::ConnectFailure) && budget_retry() {
                        retried += 1;
                        self.backoff(guard, retried).await;
                        continue;
                    }
                    return Err(Failure::Connect(e));
                }
                Err(Failure::Timeout) => {
                    self.record(&lease, false);
                    if retry_on(RetryOn::Timeout) && may_resend && budget_retry() {
                        retried += 1;
                        continue;
                    }
                    return Err(Failure::Timeout);
                }
                Err(Failure::Upstream(e)) => {
                    self.record(&lease, false);
                    if retry_on(RetryOn::Reset) && may_resend && budget_retry() {
                        retried += 1;
                        self.backoff(guard, retried).await;
                        continue;
                    }
                    tracing::debug!(component = %self.component, %addr, error = %e, "Upstream request failed.");
                    return Err(Failure::Upstream(e));
                }
            }
        }
    }

    /// Sends one request to an instance: HTTP/2 over the shared h2c client, HTTP/1.1 over the
    /// pool.
    async fn send(&self, addr: SocketAddr, out: Request<Body>) -> Result<Response<Body>, Failure> {
        if out.version() == Version::HTTP_2 {
            return match self.http2.request(out).await {
                Ok(resp) => Ok(resp.map(|b| b.map_err(Into::into).boxed())),
                Err(e) if e.is_connect() => {
                    Err(Failure::Connect(format!("upstream {addr}: {}", describe(&e))))
                }
                Err(e) => Err(Failure::Upstream(format!("upstream {addr}: {}", describe(&e)))),
            };
        }
        self.http1.send(addr, out).await.map_err(|e| failure(addr, e))
    }

    /// Passes a request on to another component's service address (split or route), where
    /// that component's policies apply; the body streams through.
    async fn pass_on(&self, req: Request<Body>, addr: SocketAddr) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let authority = hyper::http::uri::Authority::try_from(addr.to_string().as_str())
            .unwrap_or_else(|_| hyper::http::uri::Authority::from_static("127.0.0.1"));
        let Some(out) = outgoing(&parts, &authority, body) else {
            return error(StatusCode::BAD_REQUEST, "invalid request target");
        };
        match self.send(addr, out).await {
            Ok(resp) => {
                let (mut p, b) = resp.into_parts();
                strip_hop_by_hop(&mut p.headers);
                Response::from_parts(p, b)
            }
            Err(Failure::Connect(e)) | Err(Failure::Upstream(e)) => {
                error(StatusCode::BAD_GATEWAY, &format!("split to {addr}: {e}"))
            }
            Err(Failure::Timeout) => {
                error(StatusCode::GATEWAY_TIMEOUT, &format!("split to {addr}: timed out"))
            }
        }
    }

    /// Sends a copy of the request to the mirror, in the background; the answer is discarded
    /// and can neither delay nor fail the original request.
    fn mirror(&self, addr: SocketAddr, parts: &hyper::http::request::Parts, body: Bytes) {
        let mut head = parts.clone();
        head.version = Version::HTTP_11;
        let authority = hyper::http::uri::Authority::from_static("127.0.0.1");
        let Some(mut copy) = outgoing(&head, &authority, Full::new(body).map_err(|n| match n {}).boxed())
        else {
            return;
        };
        // As Envoy does, the shadow sees the host with "-shadow" appended.
        let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
        if let Ok(v) = HeaderValue::from_str(&format!("{host}-shadow")) {
            copy.headers_mut().insert(header::HOST, v);
        }
        let pool = self.http1.clone();
        tokio::spawn(async move {
            let send = async {
                if let Ok(resp) = pool.send(addr, copy).await {
                    let _ = resp.into_body().collect().await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), send).await;
        });
    }

    /// Plain TCP: connects the client to an instance (trying up to three when connecting
    /// fails) and copies bytes both ways until either side closes.
    pub(crate) async fn pass_through(self: Arc<Self>, mut client: tokio::net::TcpStream) {
        let balancer = self.active().balancer;
        let mut tried = Vec::new();
        for _ in 0..MAX_CONNECT_ATTEMPTS {
            if self.endpoints.is_empty() && !self.endpoints.wait_for_any(NO_ENDPOINT_WAIT).await {
                return;
            }
            let Some(lease) = self.endpoints.pick(balancer, &tried) else { return };
            tried.push(lease.addr());
            let connect =
                tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(lease.addr()));
            match connect.await {
                Ok(Ok(mut upstream)) => {
                    let _ = upstream.set_nodelay(true);
                    self.record(&lease, true);
                    let series = self.series("tcp");
                    series.requests(EXTERNAL, lease.instance())[status_class(200)].inc();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    return;
                }
                _ => self.record(&lease, false),
            }
        }
    }

    /// Feeds an attempt's outcome to balancing and ejection, counting ejections.
    fn record(&self, lease: &Lease, success: bool) {
        if lease.record(success) {
            tracing::warn!(component = %self.component, instance = %lease.instance(), "Instance ejected after consecutive failures.");
            let labels = InstanceLabels {
                app: self.app.to_string(),
                component: self.component.to_string(),
                instance: lease.instance().to_string(),
            };
            self.metrics.ejections.get_or_create(&labels).inc();
        }
    }

    /// Exponential back-off with full jitter: a random wait up to base × 2^(n-1), capped.
    async fn backoff(&self, guard: &Guard, n: u32) {
        let Some(r) = &guard.policy.retries else { return };
        let cap = r.backoff_base.0.saturating_mul(1 << (n - 1).min(16)).min(r.backoff_max.0);
        let wait = cap.mul_f64(rand::random::<f64>());
        tokio::time::sleep(wait).await;
    }

    /// A refusal by a policy: `Retry-After` and a JSON body naming the policy, so callers can
    /// tell throttling from failure.
    fn shed(&self, status: StatusCode, policy: &str, message: &str, retry_after: Duration) -> Response<Body> {
        let mut r = refusal(status, &format!("{message} for component \"{}\"", self.component), Some(policy));
        let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

/// What a failed send to `addr` means for retries and the answer.
fn failure(addr: SocketAddr, e: SendError) -> Failure {
    match e {
        SendError::Connect(e) => Failure::Connect(format!("upstream {addr}: {e}")),
        SendError::Http(e) => Failure::Upstream(format!("upstream {addr}: {}", describe(&e))),
        SendError::Broken(e) => Failure::Upstream(format!("upstream {addr}: {e}")),
    }
}

/// Joins an upgraded client connection with the upgraded instance connection.
async fn splice(down: hyper::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade, _lease: Lease) {
    let (Ok(down), Ok(up)) = (down.await, up.await) else { return };
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// Removes the fields that belong to one connection: the standard ones and any that
/// `Connection` names (RFC 9110 §7.6.1).
fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    // Usually there are none, or only `Connection: keep-alive`: one pass of cheap comparisons
    // finds which are there, and only those are looked up again to be removed.
    let mut present = [false; HOP_BY_HOP.len()];
    let mut any = false;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present[i] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    // Fields `Connection` names besides the standard ones (rare). The platform's own fields
    // are not the client's to drop.
    let own = [CALLER_HEADER, HOP, TRACEPARENT, TRACESTATE, header::HOST];
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !HOP_BY_HOP.iter().any(|h| t.eq_ignore_ascii_case(h.as_str())))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| !own.contains(n))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
}

/// Whether the `Cookie` headers carry `name=value`.
fn has_cookie(headers: &hyper::HeaderMap, want: &str) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|c| c.trim() == want)
}

/// The request to send to an instance at `authority`: HTTP/2 in absolute form, HTTP/1.1 in
/// origin form with `Host` kept (or set, for HTTP/1.0 clients that sent none). None when the
/// target cannot be expressed.
fn outgoing(
    parts: &hyper::http::request::Parts,
    authority: &hyper::http::uri::Authority,
    body: Body,
) -> Option<Request<Body>> {
    let mut out = Request::from_parts(parts.clone(), body);
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
    let mut uri = hyper::http::uri::Parts::default();
    if parts.version == Version::HTTP_2 {
        uri.scheme = Some(hyper::http::uri::Scheme::HTTP);
        uri.authority = Some(authority.clone());
    } else {
        *out.version_mut() = Version::HTTP_11;
        if !out.headers().contains_key(header::HOST) {
            out.headers_mut().insert(header::HOST, HeaderValue::from_str(authority.as_str()).ok()?);
        }
    }
    uri.path_and_query = Some(pq);
    *out.uri_mut() = hyper::Uri::from_parts(uri).ok()?;
    Some(out)
}

/// `s` cut to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The name of one of HTTP's own methods.
fn known_method(m: &hyper::Method) -> Option<&'static str> {
    use hyper::Method;
    Some(match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return None,
    })
}

fn bodyless(method: &hyper::Method) -> bool {
    use hyper::Method;
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE)
}

/// An error with its chain of causes, on one line.
fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// A response body that holds something (the instance lease that counts the request in flight,
/// a concurrency slot) until the body is finished or dropped.
struct Hold<T> {
    inner: Body,
    _held: T,
}

impl<T: Send + Unpin + 'static> hyper::body::Body for Hold<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn idempotent(method: &hyper::Method) -> bool {
    use hyper::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn body_len(headers: &hyper::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// A response made by the proxy itself: JSON naming the proxy as its source.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<Body> {
    refusal(status, message, None)
}

/// A response made by the proxy, naming the policy that refused the request, if one did (also
/// in the `x-yun-policy` header).
fn refusal(status: StatusCode, message: &str, policy: Option<&str>) -> Response<Body> {
    let mut body = serde_json::json!({"error": message, "source": "yun"});
    if let Some(p) = policy {
        body["policy"] = serde_json::Value::String(p.into());
    }
    let body = body.to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(v) = policy.and_then(|p| HeaderValue::from_str(p).ok()) {
        resp.headers_mut().insert(POLICY_HEADER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_cut_from_the_slab_keep_their_bytes_as_it_is_replaced() {
        let values: Vec<Vec<u8>> =
            (0..500u32).map(|i| format!("value-{i}-{}", "x".repeat(i as usize % 60)).into_bytes()).collect();
        let cut: Vec<Bytes> = values.iter().map(|v| from_slab(v)).collect();
        for (v, c) in values.iter().zip(&cut) {
            assert_eq!(&c[..], &v[..]);
        }
        // Larger than a slab, too.
        let big = vec![7u8; 5000];
        assert_eq!(&from_slab(&big)[..], &big[..]);
        assert_eq!(&from_slab(b"after")[..], b"after");
    }
}
