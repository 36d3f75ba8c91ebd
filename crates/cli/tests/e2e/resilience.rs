//! The `resilience` trait proven end to end with deliberately bad upstreams.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

fn app(name: &str, port: u16, env: &str, resilience: &str) -> String {
    format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: {name}
spec:
  components:
    - name: api
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        ports: [{{port: {port}}}]
        env: [{{name: TEST_MARKER, value: "{name}"}}{env}]
      traits:
        - type: resilience
          properties:
{resilience}
"#
    )
}

fn start(name: &str, env: &str, resilience: &str) -> (Daemon, u16, String) {
    let d = Daemon::start();
    let port = free_port();
    d.apply("app.yaml", &app(name, port, env, resilience));
    d.wait_phase(name, "running", 30);
    let st = d.status(name);
    let instance = format!("127.0.0.1:{}", st["components"][0]["instances"][0]["ports"][0]);
    (d, port, instance)
}

fn instance_count(instance: &str) -> u64 {
    Http::new(instance).get("/count").unwrap().1.parse().unwrap()
}

#[test]
fn retries_hide_a_one_in_three_failing_instance() {
    let (_d, port, _) = start(
        "retry-hide",
        r#", {name: FAIL_EVERY, value: "3"}"#,
        "            retries: {attempts: 2, on: [5xx], budgetRatio: 1.0}",
    );
    let mut http = Http::new(&format!("127.0.0.1:{port}"));
    let results: Vec<u16> = (0..300).map(|_| http.get("/").unwrap().0).collect();
    assert!(
        results.iter().all(|c| *c == 200),
        "failures leaked: {:?}",
        results.iter().filter(|c| **c != 200).count()
    );
}

#[test]
fn retries_respect_the_budget() {
    let (_d, port, instance) = start(
        "retry-budget",
        "",
        "            retries: {attempts: 3, on: [5xx], budgetRatio: 0.2, budgetMinPerSecond: 0, backoffBase: 1ms, backoffMax: 2ms}",
    );
    let (code, _) = Http::new(&instance).request("POST", "/break", &[], "").unwrap();
    assert_eq!(code, 200);
    let before = instance_count(&instance);
    let mut http = Http::new(&format!("127.0.0.1:{port}"));
    let n = 200u64;
    for _ in 0..n {
        assert_eq!(http.get("/").unwrap().0, 500);
    }
    // The instance saw the requests plus at most 20% more.
    let extra = instance_count(&instance) - before - n;
    assert!(extra > 0, "some retries were made");
    assert!(extra <= n / 5 + 1, "{extra} retries for {n} requests exceed the 20% budget");
}

#[test]
fn the_breaker_opens_half_opens_and_closes() {
    let (_d, port, instance) = start(
        "breaker",
        "",
        "            circuitBreaker: {strategy: errorRatio, threshold: 0.5, minRequests: 5, window: 10s, openDuration: 1s}",
    );
    Http::new(&instance).request("POST", "/break", &[], "").unwrap();
    let mut http = Http::new(&format!("127.0.0.1:{port}"));
    for _ in 0..5 {
        assert_eq!(http.get("/").unwrap().0, 500, "errors pass until the breaker trips");
    }
    let reached = instance_count(&instance);
    for _ in 0..20 {
        let (code, body) = http.get("/").unwrap();
        assert_eq!(code, 503);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["policy"], "circuitBreaker", "{body}");
    }
    assert_eq!(instance_count(&instance), reached, "an open breaker sends nothing");
    // After openDuration one probe goes through; it fails, so the breaker opens again.
    eventually(5, "half-open probe reaches the instance", || {
        let (code, _) = http.get("/").unwrap();
        (code == 500).then_some(())
    });
    assert_eq!(http.get("/").unwrap().0, 503, "re-opened after a failed probe");
    // Fixed instance: the next probe succeeds and the breaker closes.
    Http::new(&instance).request("POST", "/fix", &[], "").unwrap();
    eventually(5, "breaker closes after a successful probe", || {
        (http.get("/").unwrap().0 == 200).then_some(())
    });
    for _ in 0..10 {
        assert_eq!(http.get("/").unwrap().0, 200);
    }
}

#[test]
fn the_token_bucket_holds_the_configured_rate() {
    let (_d, port, _) = start("ratelimit", "", "            rateLimit: {qps: 50}");
    let passed = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(10);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (passed, refused) = (passed.clone(), refused.clone());
            std::thread::spawn(move || {
                let mut http = Http::new(&format!("127.0.0.1:{port}"));
                while Instant::now() < deadline {
                    let (code, body) = http.get("/").unwrap();
                    match code {
                        200 => passed.fetch_add(1, Ordering::SeqCst),
                        429 => {
                            assert!(body.contains("\"policy\":\"rateLimit\""), "{body}");
                            refused.fetch_add(1, Ordering::SeqCst)
                        }
                        other => panic!("unexpected {other}: {body}"),
                    };
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let passed = passed.load(Ordering::SeqCst);
    assert!((450..=550).contains(&passed), "{passed} passed in 10 s at 50 qps (±10%)");
    assert!(refused.load(Ordering::SeqCst) > 0);
}

#[test]
fn the_bulkhead_caps_concurrency_exactly() {
    let (_d, port, instance) =
        start("bulkhead", "", "            concurrency: {limit: 3, queue: 20, queueTimeout: 10s}");
    let codes: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|_| s.spawn(|| Http::new(&format!("127.0.0.1:{port}")).get("/sleep/200").unwrap().0))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    let max: u64 = Http::new(&instance).get("/max-inflight").unwrap().1.parse().unwrap();
    assert_eq!(max, 3, "never more than the limit at once");
}

#[test]
fn a_full_bulkhead_sheds_with_503_and_retry_after() {
    let (_d, port, _) = start("shed", "", "            concurrency: {limit: 2}");
    let results: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| Http::new(&format!("127.0.0.1:{port}")).get("/sleep/500").unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let shed: Vec<&(u16, String)> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(ok, 2, "{results:?}");
    assert_eq!(shed.len(), 4);
    assert!(shed.iter().all(|r| r.1.contains("\"policy\":\"concurrency\"")));
}

#[test]
fn timeouts_answer_504_and_policy_changes_need_no_restart() {
    let (d, port, _) = start("timeouts", "", "            timeout: 300ms");
    let pid = d.status("timeouts")["components"][0]["instances"][0]["pid"].clone();
    let mut http = Http::new(&format!("127.0.0.1:{port}"));
    let t = Instant::now();
    let (code, body) = http.get("/sleep/3000").unwrap();
    assert_eq!(code, 504, "{body}");
    assert!(body.contains("\"policy\":\"timeout\""));
    assert!(t.elapsed() < Duration::from_millis(2500));
    // A longer timeout, applied as a new revision, takes effect without replacing the instance.
    d.apply("app.yaml", &app("timeouts", port, "", "            timeout: 5s"));
    eventually(10, "new policy active", || (http.get("/sleep/500").unwrap().0 == 200).then_some(()));
    let st = d.status("timeouts");
    assert_eq!(st["revision"], 2);
    assert_eq!(st["components"][0]["instances"][0]["pid"], pid, "policy change kept the instance");
}
