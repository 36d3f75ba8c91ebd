//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): `traceparent` and `tracestate`,
//! parsed strictly. A header that does not follow the rules is ignored (a new trace starts),
//! never passed on half-understood.

use std::cell::RefCell;
use std::fmt;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

thread_local! {
    /// Ids must not collide, not be secret: a fast generator per thread, seeded from the
    /// operating system (as OpenTelemetry's SDKs make them), instead of the cryptographic one
    /// every request would otherwise pay for twice.
    static IDS: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
}

/// `N` random bytes that are not all zeros.
fn random_id<const N: usize>() -> [u8; N] {
    IDS.with(|rng| {
        let mut id = [0u8; N];
        while id == [0u8; N] {
            rng.borrow_mut().fill_bytes(&mut id);
        }
        id
    })
}

/// A 16-byte trace id; never all zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id; never all zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A random id.
    pub fn random() -> TraceId {
        TraceId(random_id())
    }

    /// Parses 32 lowercase hex digits; all zeros is invalid.
    pub fn parse(s: &str) -> Option<TraceId> {
        let mut id = [0u8; 16];
        decode_hex(s, &mut id)?;
        (id != [0; 16]).then_some(TraceId(id))
    }

    /// Whether a head-sampling `ratio` keeps this trace: the same answer on every hop for the
    /// same id (the low 8 bytes compared with the ratio, as OpenTelemetry's ratio sampler does).
    pub fn sampled_at(&self, ratio: f64) -> bool {
        if ratio >= 1.0 {
            return true;
        }
        if ratio <= 0.0 {
            return false;
        }
        let low = u64::from_be_bytes(self.0[8..].try_into().unwrap_or_default()) >> 1;
        (low as f64) < ratio * (u64::MAX >> 1) as f64
    }
}

impl SpanId {
    /// A random id.
    pub fn random() -> SpanId {
        SpanId(random_id())
    }

    /// Parses 16 lowercase hex digits; all zeros is invalid.
    pub fn parse(s: &str) -> Option<SpanId> {
        let mut id = [0u8; 8];
        decode_hex(s, &mut id)?;
        (id != [0; 8]).then_some(SpanId(id))
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A `traceparent` value (version 00) written without the formatting machinery; the data
/// plane makes two per request.
pub fn traceparent(trace_id: TraceId, span_id: SpanId, sampled: bool) -> [u8; 55] {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&trace_id.0, &mut out[3..35]);
    hex_into(&span_id.0, &mut out[36..52]);
    if sampled {
        out[54] = b'1';
    }
    out
}

/// The two lowercase hex digits of every byte: one lookup per byte.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [HEX[b >> 4], HEX[b & 15]];
        b += 1;
    }
    pairs
};

/// Writes `bytes` as lowercase hex into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[*b as usize]);
    }
}

/// Lowercase hex only, as the specification requires.
fn decode_hex(s: &str, out: &mut [u8]) -> Option<()> {
    let bytes = s.as_bytes();
    if bytes.len() != out.len() * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

/// Most list members kept in `tracestate`, and its longest length (the specification's
/// limits; longer lists lose members from the end).
const MAX_TRACESTATE_MEMBERS: usize = 32;
const MAX_TRACESTATE_LEN: usize = 512;

/// The context a request arrived with (or that a hop passes on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: TraceId,
    /// The span of the caller (on an incoming request) or of this hop (on an outgoing one).
    pub parent_id: SpanId,
    /// The caller's sampling decision (`trace-flags` bit 0).
    pub sampled: bool,
    /// Vendor data, validated; empty when absent or invalid.
    pub tracestate: String,
}

impl TraceContext {
    /// Parses `traceparent` (and `tracestate`, which is dropped when malformed). None when
    /// `traceparent` is invalid: the request then starts a new trace.
    pub fn parse(traceparent: &[u8], tracestate: Option<&[u8]>) -> Option<TraceContext> {
        let s = std::str::from_utf8(traceparent).ok()?.trim_matches([' ', '\t']);
        let b = s.as_bytes();
        if b.len() < 55 {
            return None;
        }
        let version = &s[..2];
        if version == "ff" || decode_hex(version, &mut [0u8; 1]).is_none() {
            return None;
        }
        // Version 00 is exactly 55 characters; later versions may append fields after a dash.
        if (version == "00" && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
            return None;
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let trace_id = TraceId::parse(&s[3..35])?;
        let parent_id = SpanId::parse(&s[36..52])?;
        let mut flags = [0u8; 1];
        decode_hex(&s[53..55], &mut flags)?;
        let tracestate =
            tracestate.and_then(|v| std::str::from_utf8(v).ok()).map(sanitize_tracestate).unwrap_or_default();
        Some(TraceContext { trace_id, parent_id, sampled: flags[0] & 1 == 1, tracestate })
    }

    /// The `traceparent` value (version 00).
    pub fn traceparent(&self) -> String {
        String::from_utf8_lossy(&traceparent(self.trace_id, self.parent_id, self.sampled)).into_owned()
    }
}

/// The valid members of a `tracestate` list, within the specification's limits; empty when
/// the value as a whole is malformed (duplicate keys, an invalid member).
fn sanitize_tracestate(value: &str) -> String {
    let mut keys = std::collections::HashSet::new();
    let mut members = Vec::new();
    for member in value.split(',').map(|m| m.trim_matches([' ', '\t'])).filter(|m| !m.is_empty()) {
        let Some((key, val)) = member.split_once('=') else { return String::new() };
        if !valid_key(key) || !valid_value(val) || !keys.insert(key) {
            return String::new();
        }
        members.push(member);
    }
    members.truncate(MAX_TRACESTATE_MEMBERS);
    let mut out = members.join(",");
    while out.len() > MAX_TRACESTATE_LEN {
        members.pop();
        out = members.join(",");
    }
    out
}

fn valid_key(key: &str) -> bool {
    let simple = |k: &str, max: usize| {
        let b = k.as_bytes();
        !b.is_empty()
            && b.len() <= max
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-*/".contains(c))
    };
    match key.split_once('@') {
        Some((tenant, system)) => simple(tenant, 241) && simple(system, 14),
        None => simple(key, 256),
    }
}

fn valid_value(value: &str) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && b.iter().all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
        && b.last() != Some(&b' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_the_specification_example() {
        let c =
            TraceContext::parse(VALID.as_bytes(), Some(b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")).unwrap();
        assert_eq!(c.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(c.sampled);
        assert_eq!(c.tracestate, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
        assert_eq!(c.traceparent(), VALID);
    }

    #[test]
    fn every_id_is_written_as_it_is_read() {
        for sampled in (0..2000).map(|i| i % 2 == 0) {
            let (t, s) = (TraceId::random(), SpanId::random());
            let value = traceparent(t, s, sampled);
            let text = std::str::from_utf8(&value).unwrap();
            assert_eq!(text, format!("00-{t}-{s}-0{}", u8::from(sampled)));
            let c = TraceContext::parse(&value, None).unwrap();
            assert_eq!((c.trace_id, c.parent_id, c.sampled), (t, s, sampled));
        }
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        let bad = [
            "",
            "garbage",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // uppercase
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero span id
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // forbidden version
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // 00 has no more fields
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for b in bad {
            assert_eq!(TraceContext::parse(b.as_bytes(), None), None, "{b}");
        }
        assert_eq!(TraceContext::parse(&[0xff, 0xfe, 0x00], None), None);
        assert_eq!(TraceContext::parse("x".repeat(100_000).as_bytes(), None), None);
    }

    #[test]
    fn later_versions_are_read_for_their_known_fields() {
        let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-the-future-holds";
        let c = TraceContext::parse(v.as_bytes(), None).unwrap();
        assert!(!c.sampled);
        assert_eq!(c.traceparent(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        let glued = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00x";
        assert_eq!(TraceContext::parse(glued.as_bytes(), None), None);
    }

    #[test]
    fn tracestate_is_validated_and_bounded() {
        let parse = |s: &str| TraceContext::parse(VALID.as_bytes(), Some(s.as_bytes())).unwrap().tracestate;
        assert_eq!(parse("a=1, b=2 ,,c@sys=3"), "a=1,b=2,c@sys=3");
        assert_eq!(parse("a=1,a=2"), "", "duplicate keys");
        assert_eq!(parse("A=1"), "", "uppercase key");
        assert_eq!(parse("a=x,y"), "", "member without =");
        assert_eq!(parse("a=b=c"), "", "= inside a value");
        let many: Vec<String> = (0..40).map(|i| format!("k{i}=v")).collect();
        assert_eq!(parse(&many.join(",")).split(',').count(), 32);
        let long: Vec<String> = (0..10).map(|i| format!("k{i}={}", "v".repeat(100))).collect();
        let kept = parse(&long.join(","));
        assert!(kept.len() <= 512 && kept.starts_with("k0="), "{kept}");
    }

    #[test]
    fn random_ids_do_not_repeat_within_or_across_threads() {
        let here: Vec<TraceId> = (0..10_000).map(|_| TraceId::random()).collect();
        let there = std::thread::spawn(|| (0..10_000).map(|_| TraceId::random()).collect::<Vec<_>>());
        let mut all: std::collections::HashSet<TraceId> = here.into_iter().collect();
        all.extend(there.join().unwrap());
        assert_eq!(all.len(), 20_000);
        let spans: std::collections::HashSet<SpanId> = (0..10_000).map(|_| SpanId::random()).collect();
        assert_eq!(spans.len(), 10_000);
        assert!(!spans.contains(&SpanId([0; 8])) && !all.contains(&TraceId([0; 16])));
    }

    #[test]
    fn ratio_sampling_is_deterministic_per_trace_and_close_to_the_ratio() {
        let ids: Vec<TraceId> = (0..20_000).map(|_| TraceId::random()).collect();
        let kept = ids.iter().filter(|id| id.sampled_at(0.25)).count();
        assert!((4_500..5_500).contains(&kept), "{kept}");
        assert!(ids.iter().all(|id| id.sampled_at(0.25) == id.sampled_at(0.25)));
        assert!(ids.iter().all(|id| id.sampled_at(1.0) && !id.sampled_at(0.0)));
    }
}
