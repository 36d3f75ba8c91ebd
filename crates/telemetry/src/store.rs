//! Recent traces in memory, within a byte budget. Spans of head-sampled traces are kept; spans
//! of the others wait in a small pending area and are kept after all if any span of their trace
//! fails or is slow (so errors and slow requests are never lost to sampling). When a budget is
//! spent, the oldest traces go first.
//!
//! Data-plane hops are added in batches: a recorded hop waits in a short queue until the thread
//! that recorded it goes idle ([`flush_hops`]), a batch is full, or the store is read. The
//! store's work for a hop (evicting the oldest, its index, the export hook) then never waits in
//! front of the next response, and a reader still sees every hop recorded before it read.

use std::cell::RefCell;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::Serialize;

use crate::quick_hash::QuickHashing;
use crate::{Hop, Span, SpanId, TraceId};

/// What the store holds per span: a data-plane hop stays compact until it is read.
// Hops are the common case and stay inline (no second allocation per request); spans from
// services are rarer and boxed, since every slot is as big as the largest variant.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Entry {
    Span(Box<Span>),
    Hop(Hop),
}

impl Entry {
    fn trace_id(&self) -> TraceId {
        match self {
            Entry::Span(s) => s.trace_id,
            Entry::Hop(h) => h.trace_id,
        }
    }
    fn app(&self) -> &str {
        match self {
            Entry::Span(s) => &s.app,
            Entry::Hop(h) => &h.place.app,
        }
    }
    fn service(&self) -> &str {
        match self {
            Entry::Span(s) => &s.service,
            Entry::Hop(h) => &h.place.component,
        }
    }
    fn error(&self) -> bool {
        match self {
            Entry::Span(s) => s.error,
            Entry::Hop(h) => h.error(),
        }
    }
    fn times(&self) -> (u64, u64) {
        match self {
            Entry::Span(s) => (s.start_unix_nanos, s.end_unix_nanos),
            Entry::Hop(h) => (h.start_unix_nanos, h.end_unix_nanos),
        }
    }
    fn ids(&self) -> (SpanId, Option<SpanId>) {
        match self {
            Entry::Span(s) => (s.span_id, s.parent_id),
            Entry::Hop(h) => (h.span_id, h.parent_id),
        }
    }
    fn name(&self) -> String {
        match self {
            Entry::Span(s) => s.name.clone(),
            Entry::Hop(h) => format!("{} {}", h.method_sent(), h.path),
        }
    }
    /// Bytes held besides the entry's slot in the ring.
    fn heap_bytes(&self) -> usize {
        match self {
            Entry::Span(s) => s.approx_bytes() + 16,
            Entry::Hop(h) => h.approx_bytes() - std::mem::size_of::<Hop>(),
        }
    }
    fn to_span(&self) -> Span {
        match self {
            Entry::Span(s) => (**s).clone(),
            Entry::Hop(h) => h.to_span(),
        }
    }
}

/// Which traces are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Share of new traces kept (0 to 1), decided from the trace id so every hop agrees; a
    /// caller's sampled flag is honoured.
    pub ratio: f64,
    /// Traces with a span at least this slow are kept whatever the ratio says.
    pub slow: Duration,
}

impl Default for Sampling {
    fn default() -> Sampling {
        Sampling { ratio: 1.0, slow: Duration::from_secs(1) }
    }
}

/// Memory bounds of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of kept traces.
    pub kept_bytes: usize,
    /// Bytes of spans waiting for a keep decision.
    pub pending_bytes: usize,
    /// Spans kept per trace; later ones are counted as dropped.
    pub spans_per_trace: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { kept_bytes: 4 << 20, pending_bytes: 1 << 20, spans_per_trace: 1000 }
    }
}

/// Filters of a trace search.
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    /// Traces with a span of this application.
    pub app: Option<String>,
    /// Traces with a span of this service (component).
    pub service: Option<String>,
    /// Only traces with an error span.
    pub errors_only: bool,
    /// Only traces at least this long.
    pub min_duration: Option<Duration>,
    /// Only traces that started at or after this time.
    pub since_unix_nanos: Option<u64>,
    /// Most results, newest first.
    pub limit: usize,
}

/// One trace in a search result.
#[derive(Debug, Clone, Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    /// The root span's service and name (the earliest span when the root is missing).
    pub root_service: String,
    pub root_name: String,
    pub start_unix_nanos: u64,
    pub duration_nanos: u64,
    pub spans: usize,
    pub errors: usize,
    /// `app/service` of every span, sorted.
    pub services: Vec<String>,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StoreStats {
    pub traces: usize,
    pub spans: usize,
    pub bytes: usize,
    pub pending_spans: usize,
    /// Spans dropped: over the per-trace limit, or evicted to stay within the budget.
    pub dropped_spans: u64,
}

/// Spans in arrival order within a byte budget. The spans sit in one ring, so recording one
/// allocates nothing once the ring and the marks have grown. A trace's mark says where its
/// newest span sits; when that span leaves the ring, so does the mark, so the marks are exactly
/// the traces in the area. Reading a trace scans the ring: reads are rare, records happen on
/// every request.
///
/// The budget counts the whole room of the ring and of the marks' table, used or not (it is
/// all touched as the ring goes round), and the ring may take at most half of it, so its
/// marks and what the spans hold besides their slots always have the other half.
#[derive(Default)]
struct Area {
    /// Taken spans leave a hole (`None`) until eviction reaches them.
    ring: VecDeque<Option<Entry>>,
    /// The sequence number of the ring's front slot (every slot pushed gets the next one).
    front: u64,
    marks: HashMap<MarkKey, Mark, QuickHashing>,
    /// The room of the marks' table: it grows and never shrinks.
    marks_room: usize,
    /// Bytes the spans hold besides their slots.
    bytes: usize,
    spans: usize,
}

/// Where a trace's newest span sits (the low bits of its sequence number: a ring never holds
/// 2^32 slots), and how many spans the trace has been given while it stayed in the area.
#[derive(Clone, Copy)]
struct Mark {
    newest: u32,
    spans: u32,
}

/// A trace's key among the marks: its id folded to 8 bytes, which keeps the table small. Two
/// traces that fold alike (chance, or a client choosing ids) share a mark: their spans stay,
/// and at worst one is taken for kept or capped with the other.
type MarkKey = u64;

fn mark_key(id: &TraceId) -> MarkKey {
    let (high, low) = id.0.split_at(8);
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
    word(high) ^ word(low)
}

impl Area {
    /// Adds a span; returns how many spans were dropped to stay within the limits.
    fn push(&mut self, span: Entry, limit_bytes: usize, per_trace: usize) -> u64 {
        let mut dropped = 0;
        let max_slots = (limit_bytes / 2 / SLOT).max(1);
        if self.ring.len() == self.ring.capacity() {
            let room = self.ring.capacity();
            if room >= max_slots {
                dropped += self.evict_front();
            } else {
                // Grown by hand, so that doubling never takes the ring past its half.
                self.ring.reserve_exact(room.max(16).min(max_slots - room));
            }
        }
        let seq = self.front + self.ring.len() as u64;
        let newest = seq as u32;
        match self.marks.entry(mark_key(&span.trace_id())) {
            MapEntry::Occupied(mut m) => {
                let m = m.get_mut();
                if m.spans as usize >= per_trace {
                    return dropped + 1;
                }
                *m = Mark { newest, spans: m.spans + 1 };
            }
            MapEntry::Vacant(slot) => {
                slot.insert(Mark { newest, spans: 1 });
                self.marks_room = self.marks_room.max(table_room(self.marks.capacity()));
            }
        }
        self.bytes += span.heap_bytes();
        self.spans += 1;
        self.ring.push_back(Some(span));
        while self.total_bytes() > limit_bytes && !self.ring.is_empty() {
            dropped += self.evict_front();
        }
        dropped
    }

    /// Takes the oldest slot off the ring, and the mark of its trace when it was the trace's
    /// newest span; returns how many spans left with it.
    fn evict_front(&mut self) -> u64 {
        let Some(slot) = self.ring.pop_front() else { return 0 };
        let seq = self.front;
        self.front += 1;
        let Some(span) = slot else { return 0 };
        if let MapEntry::Occupied(m) = self.marks.entry(mark_key(&span.trace_id()))
            && m.get().newest == seq as u32
        {
            m.remove();
        }
        self.bytes -= span.heap_bytes();
        self.spans -= 1;
        1
    }

    /// Bytes the area holds: the room of its ring and marks, and what its spans hold besides.
    fn total_bytes(&self) -> usize {
        self.ring.capacity() * SLOT + self.marks_room + self.bytes
    }

    fn contains(&self, id: &TraceId) -> bool {
        self.marks.contains_key(&mark_key(id))
    }

    /// Traces with spans in the area.
    fn trace_count(&self) -> usize {
        self.marks.len()
    }

    /// The spans of one trace, in arrival order.
    fn spans_of<'a>(&'a self, id: &'a TraceId) -> impl Iterator<Item = &'a Entry> + 'a {
        self.ring.iter().flatten().filter(move |s| s.trace_id() == *id)
    }

    /// Removes and returns the spans of one trace.
    fn take(&mut self, id: &TraceId) -> Vec<Entry> {
        if !self.contains(id) {
            return Vec::new();
        }
        let mut taken = Vec::new();
        for slot in self.ring.iter_mut() {
            if slot.as_ref().is_some_and(|s| s.trace_id() == *id) {
                taken.extend(slot.take());
            }
        }
        self.marks.remove(&mark_key(id));
        for span in &taken {
            // The hole keeps its slot until it reaches the front.
            self.bytes -= span.heap_bytes();
            self.spans -= 1;
        }
        while let Some(None) = self.ring.front() {
            self.ring.pop_front();
            self.front += 1;
        }
        taken
    }

    /// Every trace with its spans, in arrival order.
    fn traces(&self) -> HashMap<TraceId, Vec<&Entry>, QuickHashing> {
        let mut out: HashMap<TraceId, Vec<&Entry>, QuickHashing> = HashMap::default();
        for span in self.ring.iter().flatten() {
            out.entry(span.trace_id()).or_default().push(span);
        }
        out
    }
}

/// Bytes of one slot of a ring.
const SLOT: usize = std::mem::size_of::<Option<Entry>>();

/// Bytes of a hash table with room for `capacity` marks: a power of two of buckets, at most
/// 7/8 of them used, each with its entry and a control byte. (Marks come and go, and the
/// table may grow to twice what its traces need before it cleans up.)
fn table_room(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    (capacity * 8 / 7).next_power_of_two() * (std::mem::size_of::<(MarkKey, Mark)>() + 1)
}

type KeepHook = Box<dyn Fn(Span) + Send + Sync>;

impl std::fmt::Debug for TraceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceStore").field("sampling", &self.sampling).field("limits", &self.limits).finish()
    }
}

/// The trace store; see the module documentation.
pub struct TraceStore {
    sampling: Sampling,
    limits: Limits,
    /// Hops recorded and not yet added, in arrival order, with their sampling decisions. Always
    /// locked before `inner` when both are held.
    waiting: Mutex<Vec<(Hop, bool)>>,
    inner: Mutex<Inner>,
    on_keep: Option<KeepHook>,
}

/// Most hops that wait to be added: a thread that never goes idle adds them in batches of this
/// many. They are not counted against the store's budget (a few KiB at most).
const BATCH: usize = 32;

thread_local! {
    /// The stores this thread recorded hops into since it last added them.
    static RECORDED_INTO: RefCell<Vec<Weak<TraceStore>>> = const { RefCell::new(Vec::new()) };
}

/// Adds the hops this thread recorded to their stores. A runtime calls it when a thread goes
/// idle (tokio's `on_thread_park`); without it, hops are added when a batch fills or the store
/// is read.
pub fn flush_hops() {
    while let Some(store) = RECORDED_INTO.try_with(|r| r.borrow_mut().pop()).ok().flatten() {
        if let Some(store) = store.upgrade() {
            store.flush();
        }
    }
}

#[derive(Default)]
struct Inner {
    kept: Area,
    pending: Area,
    dropped: u64,
}

impl TraceStore {
    pub fn new(sampling: Sampling, limits: Limits) -> TraceStore {
        TraceStore { sampling, limits, waiting: Mutex::default(), inner: Mutex::default(), on_keep: None }
    }

    /// Calls `hook` with every span as it is kept (to export it); it must not block.
    pub fn on_keep(mut self, hook: impl Fn(Span) + Send + Sync + 'static) -> TraceStore {
        self.on_keep = Some(Box::new(hook));
        self
    }

    pub fn sampling(&self) -> Sampling {
        self.sampling
    }

    /// The head-sampling decision for a trace that starts here.
    pub fn sample_new(&self, id: &TraceId) -> bool {
        id.sampled_at(self.sampling.ratio)
    }

    /// Records a span; `sampled` is the trace's head-sampling decision.
    pub fn record(&self, mut span: Span, sampled: bool) {
        span.sanitize();
        // After the hops recorded before it, so spans arrive in the order they were recorded.
        self.flush();
        let Ok(mut inner) = self.inner.lock() else { return };
        self.add(&mut inner, Entry::Span(Box::new(span)), sampled);
    }

    /// Records a data-plane hop; `sampled` is the trace's head-sampling decision. It is added
    /// when this thread goes idle ([`flush_hops`]), when a batch is full, or before a read.
    pub fn record_hop(self: &Arc<Self>, hop: Hop, sampled: bool) {
        let Ok(mut waiting) = self.waiting.lock() else { return };
        waiting.push((hop, sampled));
        if waiting.len() >= BATCH {
            self.add_waiting(waiting);
            return;
        }
        drop(waiting);
        let _ = RECORDED_INTO.try_with(|r| {
            let mut r = r.borrow_mut();
            if !r.iter().any(|s| std::ptr::eq(s.as_ptr(), Arc::as_ptr(self))) {
                r.push(Arc::downgrade(self));
            }
        });
    }

    /// Adds the hops recorded so far.
    fn flush(&self) {
        if let Ok(waiting) = self.waiting.lock() {
            self.add_waiting(waiting);
        }
    }

    fn add_waiting(&self, mut waiting: MutexGuard<'_, Vec<(Hop, bool)>>) {
        if waiting.is_empty() {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else { return };
        for (hop, sampled) in waiting.drain(..) {
            self.add(&mut inner, Entry::Hop(hop), sampled);
        }
    }

    fn add(&self, inner: &mut Inner, span: Entry, sampled: bool) {
        let (start, end) = span.times();
        let slow = Duration::from_nanos(end.saturating_sub(start)) >= self.sampling.slow;
        let id = span.trace_id();
        if sampled || span.error() || slow || inner.kept.contains(&id) {
            for waiting in inner.pending.take(&id) {
                self.keep(inner, waiting);
            }
            self.keep(inner, span);
        } else {
            inner.dropped += inner.pending.push(span, self.limits.pending_bytes, self.limits.spans_per_trace);
        }
    }

    fn keep(&self, inner: &mut Inner, span: Entry) {
        if let Some(hook) = &self.on_keep {
            hook(span.to_span());
        }
        inner.dropped += inner.kept.push(span, self.limits.kept_bytes, self.limits.spans_per_trace);
    }

    /// The spans of one trace, earliest first (also a trace still waiting for a decision).
    pub fn trace(&self, id: &TraceId) -> Option<Vec<Span>> {
        self.flush();
        let inner = self.inner.lock().ok()?;
        let area = [&inner.kept, &inner.pending].into_iter().find(|a| a.contains(id))?;
        let mut spans: Vec<Span> = area.spans_of(id).map(Entry::to_span).collect();
        spans.sort_by_key(|s| (s.start_unix_nanos, s.parent_id.is_some()));
        Some(spans)
    }

    /// Kept traces matching `q`, newest first.
    pub fn query(&self, q: &TraceQuery) -> Vec<TraceSummary> {
        self.flush();
        let Ok(inner) = self.inner.lock() else { return Vec::new() };
        let mut out: Vec<TraceSummary> = inner
            .kept
            .traces()
            .iter()
            .filter(|(_, spans)| {
                q.app.as_ref().is_none_or(|a| spans.iter().any(|s| s.app() == a))
                    && q.service.as_ref().is_none_or(|svc| spans.iter().any(|s| s.service() == svc))
                    && (!q.errors_only || spans.iter().any(|s| s.error()))
            })
            .map(|(id, spans)| summarize(id, spans))
            .filter(|s| {
                q.min_duration.is_none_or(|d| s.duration_nanos >= d.as_nanos() as u64)
                    && q.since_unix_nanos.is_none_or(|since| s.start_unix_nanos >= since)
            })
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.start_unix_nanos));
        out.truncate(q.limit.max(1));
        out
    }

    pub fn stats(&self) -> StoreStats {
        self.flush();
        let Ok(inner) = self.inner.lock() else { return StoreStats::default() };
        StoreStats {
            traces: inner.kept.trace_count(),
            spans: inner.kept.spans,
            bytes: inner.kept.total_bytes() + inner.pending.total_bytes(),
            pending_spans: inner.pending.spans,
            dropped_spans: inner.dropped,
        }
    }
}

fn summarize(id: &TraceId, spans: &[&Entry]) -> TraceSummary {
    let ids: HashSet<SpanId> = spans.iter().map(|s| s.ids().0).collect();
    let root = spans
        .iter()
        .filter(|s| s.ids().1.is_none_or(|p| !ids.contains(&p)))
        .min_by_key(|s| (s.ids().1.is_some(), s.times().0));
    let start = spans.iter().map(|s| s.times().0).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.times().1).max().unwrap_or(start);
    let mut services: Vec<String> = spans
        .iter()
        .map(|s| {
            if s.app().is_empty() { s.service().to_string() } else { format!("{}/{}", s.app(), s.service()) }
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    services.truncate(64);
    TraceSummary {
        trace_id: id.to_string(),
        root_service: root.map(|r| r.service().to_string()).unwrap_or_default(),
        root_name: root.map(|r| r.name()).unwrap_or_default(),
        start_unix_nanos: start,
        duration_nanos: end.saturating_sub(start),
        spans: spans.len(),
        errors: spans.iter().filter(|s| s.error()).count(),
        services,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SpanId, SpanKind};

    fn span(trace: TraceId, parent: Option<SpanId>, service: &str, ms: u64, error: bool) -> Span {
        Span {
            trace_id: trace,
            span_id: SpanId::random(),
            parent_id: parent,
            app: "shop".into(),
            service: service.into(),
            name: "GET /".into(),
            kind: SpanKind::Server,
            start_unix_nanos: 1_000_000_000,
            end_unix_nanos: 1_000_000_000 + ms * 1_000_000,
            error,
            status_message: String::new(),
            attributes: Default::default(),
        }
    }

    fn hop(trace: TraceId, status: u16) -> Hop {
        Hop {
            trace_id: trace,
            span_id: SpanId::random(),
            parent_id: None,
            place: Arc::new(crate::HopPlace {
                app: "shop".into(),
                component: "web".into(),
                route: "default".into(),
                source: "external".into(),
            }),
            method: "GET",
            path: "/".into(),
            status,
            instance: None,
            retries: 0,
            details: None,
            start_unix_nanos: 1_000_000_000,
            end_unix_nanos: 1_000_001_000,
        }
    }

    fn store(ratio: f64) -> TraceStore {
        TraceStore::new(Sampling { ratio, slow: Duration::from_millis(500) }, Limits::default())
    }

    #[test]
    fn unsampled_traces_are_kept_when_any_span_fails_or_is_slow() {
        let s = store(0.0);
        let (ok, failing, slow) = (TraceId::random(), TraceId::random(), TraceId::random());
        for t in [ok, failing, slow] {
            s.record(span(t, None, "frontend", 5, false), false);
        }
        s.record(span(failing, None, "catalogue", 5, true), false);
        s.record(span(slow, None, "catalogue", 900, false), false);
        let found: HashSet<String> = s
            .query(&TraceQuery { limit: 10, ..Default::default() })
            .into_iter()
            .map(|t| t.trace_id)
            .collect();
        assert_eq!(found, HashSet::from([failing.to_string(), slow.to_string()]));
        // The earlier span of a promoted trace came along.
        assert_eq!(s.trace(&failing).unwrap().len(), 2);
        // A trace still pending can be looked at, but is not listed.
        assert_eq!(s.trace(&ok).unwrap().len(), 1);
        // Once kept, later spans of the trace are kept too.
        s.record(span(failing, None, "db", 1, false), false);
        assert_eq!(s.trace(&failing).unwrap().len(), 3);
    }

    #[test]
    fn queries_filter_and_summarise() {
        let s = store(1.0);
        let t = TraceId::random();
        let root = span(t, None, "frontend", 30, false);
        let child = span(t, Some(root.span_id), "catalogue", 10, true);
        s.record(child, true);
        s.record(root, true);
        s.record(span(TraceId::random(), None, "frontend", 1, false), true);
        let q = |f: TraceQuery| s.query(&TraceQuery { limit: 10, ..f });
        assert_eq!(q(TraceQuery::default()).len(), 2);
        let errors = q(TraceQuery { errors_only: true, ..Default::default() });
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].root_service, "frontend");
        assert_eq!(errors[0].spans, 2);
        assert_eq!(errors[0].services, ["shop/catalogue", "shop/frontend"]);
        assert_eq!(q(TraceQuery { service: Some("catalogue".into()), ..Default::default() }).len(), 1);
        assert_eq!(
            q(TraceQuery { min_duration: Some(Duration::from_millis(20)), ..Default::default() }).len(),
            1
        );
        assert_eq!(q(TraceQuery { app: Some("other".into()), ..Default::default() }).len(), 0);
        assert_eq!(s.query(&TraceQuery { limit: 1, ..Default::default() }).len(), 1);
    }

    #[test]
    fn memory_stays_within_the_budget_and_the_oldest_go_first() {
        let limits = Limits { kept_bytes: 64 << 10, pending_bytes: 16 << 10, spans_per_trace: 5 };
        let s = TraceStore::new(Sampling::default(), limits);
        let mut ids = Vec::new();
        for _ in 0..2000 {
            let t = TraceId::random();
            ids.push(t);
            let mut sp = span(t, None, "frontend", 1, false);
            sp.attributes.insert("big".into(), crate::Value::from("x".repeat(5000)));
            s.record(sp, true);
        }
        let st = s.stats();
        assert!(st.bytes <= 64 << 10, "{st:?}");
        assert!(st.dropped_spans > 1000);
        // Marks leave with their traces.
        {
            let inner = s.inner.lock().unwrap();
            let live = inner.kept.ring.iter().flatten().map(|e| e.trace_id()).collect::<HashSet<_>>().len();
            assert_eq!(st.traces, live);
            assert_eq!(inner.kept.marks.len(), live);
        }
        assert!(s.trace(&ids[0]).is_none());
        assert!(s.trace(ids.last().unwrap()).is_some());
        // The per-trace limit.
        let t = TraceId::random();
        for _ in 0..10 {
            s.record(span(t, None, "frontend", 1, false), true);
        }
        assert_eq!(s.trace(&t).unwrap().len(), 5);
    }

    #[test]
    fn promoted_traces_leave_no_growing_holes_behind() {
        let limits = Limits { kept_bytes: 64 << 10, pending_bytes: 16 << 10, spans_per_trace: 5 };
        let s = TraceStore::new(Sampling { ratio: 0.0, slow: Duration::from_secs(1) }, limits);
        // One trace waits at the front of the pending ring; every later one fails and is
        // promoted, leaving a hole behind it.
        let first = TraceId::random();
        s.record(span(first, None, "frontend", 1, false), false);
        for _ in 0..5000 {
            let t = TraceId::random();
            s.record(span(t, None, "frontend", 1, false), false);
            s.record(span(t, None, "catalogue", 1, true), false);
        }
        let last = TraceId::random();
        s.record(span(last, None, "frontend", 1, false), false);
        let inner = s.inner.lock().unwrap();
        let slots = inner.pending.ring.len();
        assert!(slots * std::mem::size_of::<Option<Entry>>() <= 16 << 10, "{slots} slots");
        assert!(inner.pending.total_bytes() <= 16 << 10);
        assert_eq!(inner.pending.spans, inner.pending.ring.iter().flatten().count());
        assert_eq!(inner.kept.spans, inner.kept.ring.iter().flatten().count());
        drop(inner);
        assert_eq!(s.trace(&last).unwrap().len(), 1);
    }

    #[test]
    fn the_ring_s_whole_room_counts_and_takes_at_most_half() {
        let limits = Limits { kept_bytes: 256 << 10, pending_bytes: 64 << 10, spans_per_trace: 5 };
        let s = Arc::new(TraceStore::new(Sampling::default(), limits));
        let mut last = TraceId::random();
        for _ in 0..20_000 {
            let h = hop(TraceId::random(), 200);
            last = h.trace_id;
            s.record_hop(h, true);
            let inner = s.inner.lock().unwrap();
            assert!(inner.kept.ring.capacity() * SLOT <= 128 << 10, "room {}", inner.kept.ring.capacity());
            assert!(inner.kept.total_bytes() <= 256 << 10);
        }
        let st = s.stats();
        assert!(st.bytes <= 256 << 10, "{st:?}");
        // The room is used: small hops fill the ring rather than leave it half empty.
        let inner = s.inner.lock().unwrap();
        assert!(inner.kept.ring.len() * 10 >= inner.kept.ring.capacity() * 9, "{st:?}");
        assert_eq!(st.spans, inner.kept.ring.len());
        // A mark leaves with its trace's last span: one per trace still there, none stale.
        assert_eq!(inner.kept.marks.len(), inner.kept.ring.len());
        drop(inner);
        assert_eq!(s.trace(&last).unwrap().len(), 1);
        assert_eq!(st.dropped_spans, 20_000 - st.spans as u64);
    }

    /// A store whose export hook counts the spans it was given.
    fn counted(ratio: f64) -> (Arc<TraceStore>, Arc<std::sync::atomic::AtomicUsize>) {
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        let s = store(ratio).on_keep(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        (Arc::new(s), seen)
    }

    #[test]
    fn hops_are_added_when_the_thread_is_idle_a_batch_fills_or_the_store_is_read() {
        let (s, seen) = counted(1.0);
        let exported = || seen.load(std::sync::atomic::Ordering::SeqCst);
        s.record_hop(hop(TraceId::random(), 200), true);
        assert_eq!(exported(), 0, "waits while the thread is busy");
        flush_hops();
        assert_eq!(exported(), 1);
        flush_hops();
        assert_eq!(exported(), 1, "nothing is added twice");

        for n in 1..BATCH {
            s.record_hop(hop(TraceId::random(), 200), true);
            assert_eq!(exported(), 1, "after {n}");
        }
        s.record_hop(hop(TraceId::random(), 200), true);
        assert_eq!(exported(), 1 + BATCH, "a full batch is added at once");

        let t = TraceId::random();
        s.record_hop(hop(t, 200), true);
        assert_eq!(s.trace(&t).map(|spans| spans.len()), Some(1), "a read sees it");
        s.record_hop(hop(TraceId::random(), 200), true);
        assert_eq!(s.stats().spans, 3 + BATCH);
    }

    #[test]
    fn a_reader_sees_the_hops_another_thread_recorded() {
        let (s, _) = counted(1.0);
        let t = TraceId::random();
        // The recording thread never goes idle: its hop still waits in the store's queue.
        let recorder = s.clone();
        std::thread::spawn(move || recorder.record_hop(hop(t, 500), false)).join().unwrap();
        let found = s.query(&TraceQuery { errors_only: true, limit: 10, ..Default::default() });
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].trace_id, t.to_string());
    }

    #[test]
    fn a_span_arrives_after_the_hops_recorded_before_it() {
        let exported = Arc::new(Mutex::new(Vec::new()));
        let into = exported.clone();
        let s = Arc::new(store(1.0).on_keep(move |span| into.lock().unwrap().push(span.service)));
        let t = TraceId::random();
        s.record_hop(hop(t, 200), true);
        s.record(span(t, None, "catalogue", 1, false), true);
        assert_eq!(*exported.lock().unwrap(), ["web", "catalogue"]);
        assert_eq!(s.trace(&t).unwrap().len(), 2);
        // Idle threads find nothing left to add for a store that is gone.
        s.record_hop(hop(TraceId::random(), 200), true);
        drop(s);
        flush_hops();
    }

    #[test]
    fn kept_spans_reach_the_hook() {
        let (s, seen) = counted(0.0);
        let t = TraceId::random();
        s.record(span(t, None, "a", 1, false), false);
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0);
        s.record(span(t, None, "b", 1, true), false);
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn a_trace_s_mark_stays_while_any_of_its_spans_does() {
        let limits = Limits { kept_bytes: 64 << 10, pending_bytes: 16 << 10, spans_per_trace: 5 };
        let s = TraceStore::new(Sampling::default(), limits);
        let long = TraceId::random();
        s.record(span(long, None, "frontend", 1, false), true);
        let others = |n: usize| {
            for _ in 0..n {
                s.record(span(TraceId::random(), None, "frontend", 1, false), true);
            }
        };
        others(100);
        s.record(span(long, None, "catalogue", 1, false), true);
        // Until the first span leaves, then until the second does.
        let mut spans_seen = Vec::new();
        for _ in 0..400 {
            others(1);
            let n = s.trace(&long).map_or(0, |t| t.len());
            if spans_seen.last() != Some(&n) {
                spans_seen.push(n);
            }
        }
        assert_eq!(spans_seen, [2, 1, 0]);
        let inner = s.inner.lock().unwrap();
        let live = inner.kept.ring.iter().flatten().map(|e| e.trace_id()).collect::<HashSet<_>>().len();
        assert_eq!(inner.kept.marks.len(), live);
    }
}
