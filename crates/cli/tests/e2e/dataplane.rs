//! The data plane through the real binary: protocols pass intact, bad input stays contained,
//! bad instances are avoided.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::support::*;

fn app_with(name: &str, port: u16, replicas: u32, extra_env: &str) -> String {
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
        env: [{{name: TEST_MARKER, value: "{name}"}}{extra_env}]
      traits:
        - type: scaler
          properties: {{replicas: {replicas}}}
"#
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn http2_with_trailers_passes_through() {
    let d = Daemon::start_one_worker();
    let port = free_port();
    d.apply("h2.yaml", &app_with("h2", port, 1, ""));
    d.wait_phase("h2", "running", 30);
    runtime().block_on(async {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<Full<Bytes>>();
        let resp = client.get(format!("http://127.0.0.1:{port}/").parse().unwrap()).await.unwrap();
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["http"], "HTTP/2.0", "the instance was reached over HTTP/2 too");
        let resp = client.get(format!("http://127.0.0.1:{port}/trailers").parse().unwrap()).await.unwrap();
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers arrive");
        assert_eq!(trailers["x-checksum"], "done");
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"payload"));
    });
}

#[test]
fn upgrades_and_large_streamed_bodies_pass_through() {
    let d = Daemon::start();
    let port = free_port();
    d.apply("up.yaml", &app_with("upg", port, 1, ""));
    d.wait_phase("upg", "running", 30);

    // An HTTP/1.1 upgrade (as WebSocket uses) is spliced through both ways.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /upgrade HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for msg in [&b"ping"[..], b"a longer message over the upgraded connection"] {
        s.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    }

    // 16 MiB streamed in chunks comes back byte for byte.
    runtime().block_on(async {
        let chunk: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
        let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::io::Error>> =
            (0..256).map(|_| Ok(hyper::body::Frame::data(Bytes::from(chunk.clone())))).collect();
        let body = StreamBody::new(tokio_stream_iter(chunks));
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
        let req = hyper::Request::post(format!("http://127.0.0.1:{port}/echo")).body(body).unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), 16 * 1024 * 1024);
        assert!(got.chunks(chunk.len()).all(|c| c == &chunk[..]));
    });
}

fn tokio_stream_iter<T: Unpin>(items: Vec<T>) -> impl futures_core::Stream<Item = T> {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T: Unpin> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

#[test]
fn malformed_requests_get_400_and_never_reach_an_instance() {
    let d = Daemon::start();
    let port = free_port();
    d.apply("bad.yaml", &app_with("malformed", port, 1, ""));
    d.wait_phase("malformed", "running", 30);
    let count = || Http::new(&format!("127.0.0.1:{port}")).get("/count").unwrap().1.parse::<u64>().unwrap();
    let before = count();
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nbad header line\r\n\r\n",
        b"GET / HTTP/1.1\r\ncontent-length: nope\r\n\r\n",
        b"POST /echo HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
        b"GET / HTTP/1.1\r\nx: a\x00b\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(garbage).unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        assert!(resp.starts_with("HTTP/1.1 400"), "{garbage:?} → {resp:?}");
    }
    // A head larger than 64 KiB is refused as such.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut huge = b"GET / HTTP/1.1\r\nx-big: ".to_vec();
    huge.resize(70 * 1024, b'a');
    let _ = s.write_all(&huge);
    let resp = read_until(&mut s, |g| g.contains("\r\n\r\n"));
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp:?}");
    assert_eq!(count(), before, "nothing reached the instance");
}

/// Reads from `s` until `done` holds for what arrived (or the connection closes).
fn read_until(s: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !done(&String::from_utf8_lossy(&got)) {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn http1_keep_alive_pipelining_head_and_close_behave_as_specified() {
    let d = Daemon::start_one_worker();
    let port = free_port();
    d.apply("h1.yaml", &app_with("h1", port, 1, ""));
    d.wait_phase("h1", "running", 30);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

    // Three requests in one write are answered in order on the same connection.
    s.write_all(
        b"GET /header/x-a HTTP/1.1\r\nhost: a\r\nx-a: first\r\n\r\n\
          POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 6\r\n\r\nsecond\
          GET /status/204 HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .unwrap();
    let got = read_until(&mut s, |g| g.matches("HTTP/1.1 ").count() == 3 && g.contains("second"));
    let first = got.find("first").expect(&got);
    let second = got.find("second").expect(&got);
    let third = got.find("HTTP/1.1 204").expect(&got);
    assert!(first < second && second < third, "{got}");

    // HEAD: the length of what GET would send, and no body; the connection goes on.
    s.write_all(b"HEAD /env/TEST_MARKER HTTP/1.1\r\nhost: a\r\n\r\n").unwrap();
    let head = read_until(&mut s, |g| g.contains("\r\n\r\n"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-length: 2\r\n"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "no body after a HEAD answer: {head:?}");
    // The instance's own fields come through once each, with no framing field doubled.
    let lower = head.to_ascii_lowercase();
    for field in ["\r\ncontent-length: ", "\r\ndate: "] {
        assert_eq!(lower.matches(field).count(), 1, "{field:?} in {head}");
    }

    // A streamed answer reaches the client as it is produced, chunk by chunk.
    s.write_all(b"GET /drip/3 HTTP/1.1\r\nhost: a\r\n\r\n").unwrap();
    let early = read_until(&mut s, |g| g.contains("tick"));
    assert!(early.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{early}");
    assert!(!early.contains("0\r\n\r\n"), "the first tick came before the end: {early:?}");
    let rest = read_until(&mut s, |g| g.contains("0\r\n\r\n"));
    assert_eq!((early.clone() + &rest).matches("tick").count(), 3, "{early}{rest}");

    // Fields that `Connection` names are not passed on, except the platform's own.
    s.write_all(b"GET /header/x-secret HTTP/1.1\r\nhost: a\r\nx-secret: s\r\nconnection: x-secret\r\n\r\n")
        .unwrap();
    let stripped = read_until(&mut s, |g| g.contains("\r\n\r\n"));
    assert!(stripped.to_ascii_lowercase().contains("content-length: 0\r\n"), "{stripped}");
    s.write_all(b"GET /header/x-yun-caller HTTP/1.1\r\nhost: a\r\nconnection: x-yun-caller\r\n\r\n").unwrap();
    let caller = read_until(&mut s, |g| g.ends_with("external"));
    assert!(caller.ends_with("external"), "{caller}");

    // A request the lean loop does not take on (a chunked upload) hands the connection to
    // hyper with what was read, and the connection goes on.
    s.write_all(
        b"POST /echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\n\r\n",
    )
    .unwrap();
    // The echo streams back, so its answer is chunked: complete at the last chunk.
    let echoed = read_until(&mut s, |g| g.ends_with("0\r\n\r\n"));
    assert!(echoed.starts_with("HTTP/1.1 200") && echoed.contains("wiki"), "{echoed}");

    // `Connection: close` is honoured: the answer says so and the connection ends.
    s.write_all(b"GET /env/TEST_MARKER HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").unwrap();
    let mut last = String::new();
    s.read_to_string(&mut last).unwrap();
    assert!(last.to_ascii_lowercase().contains("connection: close"), "{last}");
    assert!(last.ends_with("h1"), "{last}");

    // HTTP/1.0 is served too (by hyper), and the connection ends after the answer.
    let mut old = TcpStream::connect(("127.0.0.1", port)).unwrap();
    old.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    old.write_all(b"GET /env/TEST_MARKER HTTP/1.0\r\nhost: a\r\n\r\n").unwrap();
    let mut answer = String::new();
    old.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("h1"), "{answer}");
}

#[test]
fn an_upstream_sending_garbage_fails_only_its_own_requests() {
    let d = Daemon::start_one_worker();
    let (bad_port, good_port) = (free_port(), free_port());
    d.apply("garbage.yaml", &app_with("garbage", bad_port, 1, r#", {name: MODE, value: garbage}"#));
    d.apply("fine.yaml", &app_with("fine", good_port, 1, ""));
    d.wait_phase("fine", "running", 30);
    d.wait_phase("garbage", "running", 30);
    let mut bad = Http::new(&format!("127.0.0.1:{bad_port}"));
    for _ in 0..3 {
        let (code, body) = bad.get("/").unwrap();
        assert_eq!(code, 502, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["source"], "yun");
    }
    // The same client connection to the proxy still works, and other services are unaffected.
    let mut good = Http::new(&format!("127.0.0.1:{good_port}"));
    assert_eq!(good.get("/").unwrap().0, 200);
}

#[test]
fn a_failing_instance_is_ejected_while_traffic_flows() {
    let d = Daemon::start_one_worker();
    let port = free_port();
    d.apply("eject.yaml", &app_with("eject", port, 3, ""));
    eventually(30, "3 ready", || (d.status("eject")["components"][0]["ready"] == 3).then_some(()));
    // Break one instance: it stays ready (its health check passes) but answers 500.
    let st = d.status("eject");
    let victim_port = st["components"][0]["instances"][0]["ports"][0].as_u64().unwrap();
    let (code, _) =
        Http::new(&format!("127.0.0.1:{victim_port}")).request("POST", "/break", &[], "").unwrap();
    assert_eq!(code, 200);
    let mut http = Http::new(&format!("127.0.0.1:{port}"));
    let total = 2000;
    let failed = (0..total).filter(|_| http.get("/").map(|r| r.0 != 200).unwrap_or(true)).count();
    assert!(failed * 100 < total, "{failed} of {total} failed");
    // yun_proxy::EJECT_AFTER_FAILURES consecutive failures eject the instance.
    assert!(failed <= 5, "failures stop once the instance is ejected: {failed}");
}

fn traffic_app(name: &str, port: u16, replicas: u32, traffic: &str) -> String {
    format!(
        "{}        - type: traffic\n          properties:\n{traffic}\n",
        app_with(name, port, replicas, "")
    )
}

#[test]
fn round_robin_is_selectable_and_spreads_evenly() {
    let d = Daemon::start();
    let port = free_port();
    d.apply("rr.yaml", &traffic_app("rr", port, 3, "            loadBalancer: round-robin"));
    eventually(30, "3 ready", || (d.status("rr")["components"][0]["ready"] == 3).then_some(()));
    let mut http = Http::new(&format!("127.0.0.1:{port}"));
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..30 {
        let (_, body) = http.get("/").unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        *seen.entry(v["instance"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|n| *n == 10), "exactly in turn: {seen:?}");
}

#[test]
fn faults_are_injected_by_route_and_share() {
    let d = Daemon::start();
    let port = free_port();
    let traffic = "            faults:\n              - match: {pathPrefix: /always}\n                abort: {status: 418, percent: 100}\n              - match: {pathPrefix: /half}\n                abort: {status: 503, percent: 50}\n              - match: {pathPrefix: /slow}\n                delay: {duration: 300ms, percent: 100}";
    d.apply("faults.yaml", &traffic_app("faults", port, 1, traffic));
    d.wait_phase("faults", "running", 30);
    let mut http = Http::new(&format!("127.0.0.1:{port}"));
    let (code, body) = http.get("/always").unwrap();
    assert_eq!(code, 418);
    assert!(body.contains("\"policy\":\"fault\""), "{body}");
    assert_eq!(http.get("/").unwrap().0, 200, "unmatched requests are untouched");
    let aborted = (0..400).filter(|_| http.get("/half").unwrap().0 == 503).count();
    // Binomial(400, 0.5): mean 200, sd 10; ±5 sd.
    assert!((150..=250).contains(&aborted), "{aborted} of 400 aborted at 50%");
    let t = std::time::Instant::now();
    http.get("/slow").unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[test]
fn the_data_plane_knows_which_component_calls() {
    let d = Daemon::start();
    let port = free_port();
    let manifest = format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: callers
spec:
  components:
    - name: api
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        ports: [{{port: {port}}}]
      traits:
        - type: resilience
          properties:
            routes:
              - match: {{sources: [external]}}
                rateLimit: {{qps: 1}}
    - name: client
      type: worker
      dependsOn: [api]
      properties:
        cmd: ["bash", "-c", "while true; do exec 3<>/dev/tcp/127.0.0.1/$YUN_SVC_API_PORT; printf 'GET /header/x-yun-caller HTTP/1.1\r\nhost: x\r\nx-yun-caller: forged\r\nconnection: close\r\n\r\n' >&3; echo; cat <&3; exec 3>&-; sleep 0.2; done"]
"#
    );
    d.apply("callers.yaml", &manifest);
    d.wait_phase("callers", "running", 30);
    eventually(30, "the worker's requests carry its identity", || {
        d.yun_ok(&["logs", "callers", "client"])
            .lines()
            .any(|l| l.ends_with("| callers/client"))
            .then_some(())
    });
    // A request from outside the app is external, whatever it claims (a guessed hop token
    // included), and only external callers meet the per-caller rate limit.
    let mut http = Http::new(&format!("127.0.0.1:{port}"));
    let forged = [("x-yun-caller", "callers/client"), ("x-yun-hop", "guessed")];
    let (code, body) = eventually(5, "a token for the external caller", || {
        let r = http.request("GET", "/header/x-yun-caller", &forged, "").unwrap();
        (r.0 == 200).then_some(r)
    });
    assert_eq!((code, body.as_str()), (200, "external"));
    let limited = (0..5).filter(|_| http.get("/").unwrap().0 == 429).count();
    assert!(limited >= 4, "external callers are limited to 1 qps: {limited}");
    let logs = d.yun_ok(&["logs", "callers", "client"]);
    assert!(logs.contains("HTTP/1.1 200") && !logs.contains("HTTP/1.1 429"), "{logs}");
    let token = format!("Bearer {}", d.token());
    let (_, metrics) =
        Http::new(&d.api_addr()).request("GET", "/metrics", &[("authorization", &token)], "").unwrap();
    assert!(metrics.contains(r#"source="callers/client""#), "{metrics}");
    assert!(metrics.contains(r#"source="external""#), "{metrics}");
}

#[test]
fn ports_named_tcp_pass_plain_tcp_through() {
    let d = Daemon::start_one_worker();
    let port = free_port();
    let manifest = format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: rawtcp
spec:
  components:
    - name: echo
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        ports: [{{port: {port}, name: tcp-echo}}]
        env: [{{name: MODE, value: echo}}]
      traits:
        - type: scaler
          properties: {{replicas: 2}}
        - type: traffic
          properties: {{loadBalancer: round-robin}}
"#
    );
    d.apply("tcp.yaml", &manifest);
    eventually(30, "2 ready", || (d.status("rawtcp")["components"][0]["ready"] == 2).then_some(()));
    let mut instances = std::collections::BTreeSet::new();
    for i in 0..4 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut first = Vec::new();
        let mut byte = [0u8; 1];
        while !first.ends_with(b"\n") {
            s.read_exact(&mut byte).unwrap();
            first.push(byte[0]);
        }
        instances.insert(String::from_utf8(first).unwrap());
        // Not HTTP at all: binary bytes come back unchanged.
        let payload: Vec<u8> = (0..=255u8).cycle().take(10_000 + i).collect();
        s.write_all(&payload).unwrap();
        let mut got = vec![0u8; payload.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, payload);
    }
    assert_eq!(instances.len(), 2, "connections are balanced: {instances:?}");
}

#[test]
fn mirrored_traffic_reaches_the_shadow_and_never_the_caller() {
    let d = Daemon::start();
    let (port, shadow_port) = (free_port(), free_port());
    let manifest = format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: mirrored
spec:
  components:
    - name: api
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        ports: [{{port: {port}}}]
      traits:
        - type: traffic
          properties:
            mirror: {{component: shadow, percent: 100}}
    - name: shadow
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        ports: [{{port: {shadow_port}}}]
        env: [{{name: FAIL_EVERY, value: "1"}}, {{name: DELAY_MS, value: "2000"}}]
"#
    );
    d.apply("mirror.yaml", &manifest);
    d.wait_phase("mirrored", "running", 30);
    let st = d.status("mirrored");
    let shadow_instance = format!("127.0.0.1:{}", st["components"][1]["instances"][0]["ports"][0]);
    let mut http = Http::new(&format!("127.0.0.1:{port}"));
    for _ in 0..20 {
        let t = std::time::Instant::now();
        let (code, body) = http.get("/").unwrap();
        // The shadow answers 500 after 2 s; the caller sees neither.
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"instance\":\"api-"), "{body}");
        assert!(t.elapsed() < Duration::from_millis(2000), "the mirror never delays the caller");
    }
    eventually(10, "all copies reached the shadow", || {
        let n: u64 = Http::new(&shadow_instance).get("/count").ok()?.1.parse().ok()?;
        (n == 20).then_some(())
    });
}

#[test]
fn canary_split_and_header_and_cookie_routing() {
    let d = Daemon::start();
    let (port, canary_port) = (free_port(), free_port());
    let manifest = format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: canary
spec:
  components:
    - name: api
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        ports: [{{port: {port}}}]
        env: [{{name: VERSION, value: v1}}]
      traits:
        - type: traffic
          properties:
            split: [{{component: api-next, weight: 10}}]
            routes:
              - match: {{headers: {{x-beta: "1"}}}}
                component: api-next
              - match: {{cookie: canary=yes}}
                component: api-next
    - name: api-next
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        ports: [{{port: {canary_port}}}]
        env: [{{name: VERSION, value: v2}}]
    - name: client
      type: worker
      dependsOn: [api, api-next]
      properties:
        cmd: ["bash", "-c", "while true; do exec 3<>/dev/tcp/127.0.0.1/$YUN_SVC_API_PORT; printf 'GET /header/x-yun-caller HTTP/1.1\r\nhost: x\r\nx-beta: 1\r\nconnection: close\r\n\r\n' >&3; echo; cat <&3; exec 3>&-; sleep 0.2; done"]
"#
    );
    d.apply("canary.yaml", &manifest);
    d.wait_phase("canary", "running", 30);
    let mut http = Http::new(&format!("127.0.0.1:{port}"));
    let version = |r: (u16, String)| -> String {
        assert_eq!(r.0, 200, "{}", r.1);
        serde_json::from_str::<Value>(&r.1).unwrap()["version"].as_str().unwrap().to_string()
    };
    let canary = (0..2000).filter(|_| version(http.get("/").unwrap()) == "v2").count();
    // Binomial(2000, 0.1): mean 200, sd 13.4; ±5 sd.
    assert!((133..=267).contains(&canary), "{canary} of 2000 went to the canary at 10%");
    for _ in 0..20 {
        assert_eq!(
            version(http.request("GET", "/", &[("x-beta", "1")], "").unwrap()),
            "v2",
            "header routing is exact"
        );
        assert_eq!(
            version(http.request("GET", "/", &[("cookie", "theme=dark; canary=yes")], "").unwrap()),
            "v2"
        );
    }
    let other = (0..100)
        .filter(|_| version(http.request("GET", "/", &[("x-beta", "2")], "").unwrap()) == "v2")
        .count();
    assert!(other < 40, "a different header value follows the split: {other}");
    let (_, caller) = http.request("GET", "/header/x-yun-caller", &[("x-beta", "1")], "").unwrap();
    assert_eq!(caller, "external", "the caller is passed on, not the daemon");
    // An instance's request routed to the canary still carries its identity there.
    eventually(30, "the canary sees the original caller", || {
        d.yun_ok(&["logs", "canary", "client"]).lines().any(|l| l.ends_with("| canary/client")).then_some(())
    });
}

#[test]
fn traffic_splits_to_an_earlier_revision_of_the_same_component() {
    let d = Daemon::start();
    let port = free_port();
    let manifest = |version: &str, traffic: &str| {
        format!(
            r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: revsplit
spec:
  components:
    - name: api
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        ports: [{{port: {port}}}]
        env: [{{name: VERSION, value: {version}}}]
{traffic}"#
        )
    };
    d.apply("app.yaml", &manifest("v1", ""));
    d.wait_phase("revsplit", "running", 30);
    // A split to a revision that does not exist is refused before anything changes.
    let bad = d.write("bad.yaml", &manifest("v2", "      traits:\n        - type: traffic\n          properties:\n            split: [{revision: 9, weight: 20}]\n"));
    let out = d.yun(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("revision 9"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(d.status("revsplit")["revision"], 1);

    let traffic = "      traits:\n        - type: traffic\n          properties:\n            split: [{revision: 1, weight: 20}]\n            routes: [{match: {headers: {x-old: \"1\"}}, revision: 1}]\n";
    d.apply("app.yaml", &manifest("v2", traffic));
    let st = d.wait_phase("revsplit", "running", 30);
    assert_eq!(st["revision"], 2);
    assert_eq!(st["components"][1]["name"], "api@r1", "{st}");
    let mut http = Http::new(&format!("127.0.0.1:{port}"));
    let version = |r: (u16, String)| {
        serde_json::from_str::<Value>(&r.1).unwrap()["version"].as_str().unwrap().to_string()
    };
    let old = (0..1000).filter(|_| version(http.get("/").unwrap()) == "v1").count();
    // Binomial(1000, 0.2): mean 200, sd 12.6; ±5 sd.
    assert!((137..=263).contains(&old), "{old} of 1000 went to revision 1 at 20%");
    for _ in 0..20 {
        assert_eq!(version(http.request("GET", "/", &[("x-old", "1")], "").unwrap()), "v1");
    }
    // Dropping the split stops the revision's instance.
    d.apply("app.yaml", &manifest("v2", ""));
    eventually(30, "revision track removed", || {
        let st = d.status("revsplit");
        (st["components"].as_array()?.len() == 1 && st["phase"] == "running").then_some(())
    });
}

#[test]
fn a_dead_or_hung_instance_costs_under_one_percent_of_requests() {
    let d = Daemon::start_one_worker();
    let port = free_port();
    let manifest = format!(
        "{}        - type: resilience\n          properties:\n            perTryTimeout: 300ms\n            retries: {{attempts: 2, on: [connect-failure, timeout, gateway-error], budgetRatio: 1.0}}\n",
        app_with("dead", port, 3, "")
    );
    d.apply("dead.yaml", &manifest);
    eventually(30, "3 ready", || (d.status("dead")["components"][0]["ready"] == 3).then_some(()));
    let pids: Vec<i32> = d.status("dead")["components"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_i64().unwrap() as i32)
        .collect();
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let done = std::sync::Arc::new(AtomicUsize::new(0));
    let client = {
        let (stop, done) = (stop.clone(), done.clone());
        std::thread::spawn(move || {
            let mut http = Http::new(&format!("127.0.0.1:{port}"));
            let mut failed = 0usize;
            while !stop.load(SeqCst) {
                if http.get("/").map(|r| r.0 != 200).unwrap_or(true) {
                    failed += 1;
                }
                done.fetch_add(1, SeqCst);
            }
            (done.load(SeqCst), failed)
        })
    };
    let run_for = |n: usize| {
        let target = done.load(SeqCst) + n;
        eventually(60, &format!("{n} more requests"), || (done.load(SeqCst) >= target).then_some(()));
    };
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    run_for(100);
    // One instance hangs (stopped: the kernel still accepts its connections), one dies.
    kill(Pid::from_raw(pids[0]), Signal::SIGSTOP).unwrap();
    run_for(300);
    kill(Pid::from_raw(pids[1]), Signal::SIGKILL).unwrap();
    run_for(300);
    stop.store(true, SeqCst);
    let (total, failed) = client.join().unwrap();
    let _ = kill(Pid::from_raw(pids[0]), Signal::SIGCONT);
    assert!(total > 200, "{total} requests");
    assert!(failed * 100 < total, "{failed} of {total} failed");
}
