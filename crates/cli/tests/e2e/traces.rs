//! Tracing without code changes: every hop through the data plane records a span and passes
//! W3C trace context on; services' own spans arrive over OTLP and join the same traces.

use serde_json::{Value, json};

use crate::support::*;

/// `front` (behind the gateway) calls `back` through its service address.
fn two_services(app: &str) -> String {
    two_services_on(app, free_port())
}

/// [`two_services`] with `front`'s service address on `front`.
fn two_services_on(app: &str, front: u16) -> String {
    format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: {app}
spec:
  components:
    - name: front
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        port: {front}
      traits:
        - type: gateway
          properties:
            http:
              "/": {front}
    - name: back
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        port: {back}
"#,
        back = free_port(),
    )
}

fn trace(d: &Daemon, id: &str, spans: usize) -> Vec<Value> {
    eventually(10, &format!("trace {id} has {spans} spans"), || {
        let out = d.yun(&["trace", id, "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let got = v["spans"].as_array()?.clone();
        (got.len() >= spans).then_some(got)
    })
}

fn by_service<'a>(spans: &'a [Value], service: &str) -> &'a Value {
    spans.iter().find(|s| s["service"] == service).unwrap_or_else(|| panic!("no {service} span in {spans:?}"))
}

#[test]
fn a_request_through_the_gateway_and_two_services_is_one_trace() {
    let d = Daemon::start();
    d.apply("t.yaml", &two_services("traced"));
    d.wait_phase("traced", "running", 30);
    let gw = d.gateway_addr();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    // back answers with the traceparent it received.
    let (code, seen_by_back) = Http::new(&gw)
        .request("GET", "/call/YUN_SVC_BACK_URL/header/traceparent", &[("traceparent", &traceparent)], "")
        .unwrap();
    assert_eq!(code, 200, "{seen_by_back}");

    let spans = trace(&d, trace_id, 2);
    assert_eq!(spans.len(), 2, "{spans:?}");
    let front = by_service(&spans, "front");
    let back = by_service(&spans, "back");
    // Parent and child: the client's span → front → back.
    assert_eq!(front["parent_id"], client_span);
    assert_eq!(back["parent_id"], front["span_id"]);
    assert_eq!(seen_by_back, format!("00-{trace_id}-{}-01", back["span_id"].as_str().unwrap()));
    // Attributes of each hop.
    assert_eq!(front["app"], "traced");
    assert_eq!(front["kind"], "server");
    assert_eq!(front["attributes"]["http.request.method"], "GET");
    assert_eq!(front["attributes"]["url.path"], "/call/YUN_SVC_BACK_URL/header/traceparent");
    assert_eq!(front["attributes"]["http.response.status_code"], 200);
    assert_eq!(front["attributes"]["yun.source"], "external");
    assert!(front["attributes"]["yun.instance"].as_str().unwrap().starts_with("front-"));
    assert_eq!(back["attributes"]["yun.source"], "traced/front", "the data plane knows the caller");
    assert_eq!(back["attributes"]["url.path"], "/header/traceparent");
    assert_eq!(front["error"], false);
    // The child lies within its parent.
    let (fs, fe) = (front["start_unix_nanos"].as_u64().unwrap(), front["end_unix_nanos"].as_u64().unwrap());
    let (bs, be) = (back["start_unix_nanos"].as_u64().unwrap(), back["end_unix_nanos"].as_u64().unwrap());
    assert!(fs <= bs && be <= fe, "front {fs}..{fe}, back {bs}..{be}");

    // The search finds it, by app and by component; the table names the root.
    let found = d.json(&["traces", "traced", "--component", "back"]);
    assert!(found["traces"].as_array().unwrap().iter().any(|t| t["trace_id"] == trace_id), "{found}");
    assert!(d.yun_ok(&["traces", "traced"]).contains(trace_id));
    let tree = d.yun_ok(&["trace", trace_id]);
    assert!(tree.contains("traced/front") && tree.contains("\n  +"), "{tree}");
    assert_eq!(d.json(&["traces", "other-app"])["traces"], json!([]));
}

#[test]
fn failed_calls_are_error_spans_kept_whatever_the_sampling() {
    let d = Daemon::start_with(&["--trace-sample", "0"]);
    d.apply("t.yaml", &two_services("sampled"));
    d.wait_phase("sampled", "running", 30);
    let gw = d.gateway_addr();
    for _ in 0..5 {
        assert_eq!(Http::new(&gw).get("/").unwrap().0, 200);
    }
    let (code, _) = Http::new(&gw).get("/call/YUN_SVC_BACK_URL/status/503").unwrap();
    assert_eq!(code, 503);
    let errors = eventually(10, "the failed trace is listed", || {
        let v = d.json(&["traces", "sampled", "--status", "error"]);
        let t = v["traces"].as_array()?.first()?.clone();
        (t["spans"] == 2).then_some(t)
    });
    assert_eq!(errors["errors"], 2);
    let spans = trace(&d, errors["trace_id"].as_str().unwrap(), 2);
    let back = by_service(&spans, "back");
    assert_eq!(back["error"], true);
    assert_eq!(back["attributes"]["http.response.status_code"], 503);
    assert_eq!(back["status_message"], "HTTP 503");
    // With sampling at 0 the successful requests were not kept: only the failed trace is listed.
    let all = d.json(&["traces", "sampled"]);
    assert_eq!(all["traces"].as_array().unwrap().len(), 1, "{all}");
}

#[test]
fn invalid_trace_headers_start_a_new_trace_and_never_reach_the_service() {
    let d = Daemon::start();
    d.apply("t.yaml", &two_services("hostile"));
    d.wait_phase("hostile", "running", 30);
    let gw = d.gateway_addr();
    let long = "x".repeat(4000);
    let bad = [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "zz-garbage",
        long.as_str(),
    ];
    for b in bad {
        let (code, seen) = Http::new(&gw)
            .request("GET", "/header/traceparent", &[("traceparent", b), ("tracestate", "a=1,a=2")], "")
            .unwrap();
        assert_eq!(code, 200);
        let parts: Vec<&str> = seen.split('-').collect();
        assert_eq!(parts.len(), 4, "{seen}");
        assert!(parts[1].len() == 32 && parts[1] != "00000000000000000000000000000000", "{seen}");
        assert_ne!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
        let (_, state) =
            Http::new(&gw).request("GET", "/header/tracestate", &[("tracestate", "a=1,a=2")], "").unwrap();
        assert_eq!(state, "", "an invalid tracestate is dropped");
    }
}

#[test]
fn otlp_spans_from_services_join_the_trace_and_bad_payloads_are_refused() {
    let d = Daemon::start();
    d.apply("t.yaml", &two_services("otlp"));
    d.wait_phase("otlp", "running", 30);
    // Instances are told where to send spans, and under which names.
    let otlp = d.otlp_addr();
    let gw = d.gateway_addr();
    let (_, endpoint) = Http::new(&gw).get("/env/OTEL_EXPORTER_OTLP_ENDPOINT").unwrap();
    assert_eq!(endpoint, format!("http://{otlp}"));
    assert_eq!(Http::new(&gw).get("/env/OTEL_SERVICE_NAME").unwrap().1, "front");
    assert_eq!(Http::new(&gw).get("/env/OTEL_RESOURCE_ATTRIBUTES").unwrap().1, "yun.app=otlp");

    let trace_id = "5b8efff798038103d269b633813fc60c";
    let (code, _) = Http::new(&gw)
        .request("GET", "/", &[("traceparent", &format!("00-{trace_id}-eee19b7ec3c1b173-01"))], "")
        .unwrap();
    assert_eq!(code, 200);
    let front = trace(&d, trace_id, 1)[0].clone();
    // A span the service made itself, as a child of the data plane's span.
    let body = json!({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "front"}},
            {"key": "yun.app", "value": {"stringValue": "otlp"}}]},
        "scopeSpans": [{"scope": {"name": "manual"}, "spans": [{
            "traceId": trace_id, "spanId": "1111111111111111", "parentSpanId": front["span_id"],
            "name": "render page", "kind": 1,
            "startTimeUnixNano": front["start_unix_nanos"].to_string(),
            "endTimeUnixNano": front["end_unix_nanos"].to_string(),
            "attributes": [{"key": "big", "value": {"stringValue": "x".repeat(100_000)}}]}]}]}]})
    .to_string();
    let post = |ct: &str, body: &str| {
        Http::new(&otlp).request("POST", "/v1/traces", &[("content-type", ct)], body).unwrap()
    };
    let (code, reply) = post("application/json", &body);
    assert_eq!(code, 200, "{reply}");
    let spans = trace(&d, trace_id, 2);
    let own = spans.iter().find(|s| s["name"] == "render page").expect("the service's span joined");
    assert_eq!(own["parent_id"], front["span_id"]);
    assert!(own["attributes"]["big"].as_str().unwrap().len() <= 1024, "huge values are cut");

    // Bad payloads are refused and change nothing.
    assert_eq!(post("application/json", "{not json").0, 400);
    assert_eq!(post("application/x-protobuf", "\u{7f}\u{7f}\u{7f}").0, 400);
    assert_eq!(post("text/plain", &body).0, 415);
    let huge = format!("{{\"resourceSpans\": [], \"x\": \"{}\"}}", "y".repeat(5 << 20));
    assert_eq!(post("application/json", &huge).0, 413);
    let (code, reply) = post(
        "application/json",
        r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"00000000000000000000000000000000","spanId":"1111111111111111"}]}]}]}"#,
    );
    assert_eq!(code, 200);
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["partialSuccess"]["rejectedSpans"].to_string().trim_matches('"'), "1", "{reply}");
    assert_eq!(trace(&d, trace_id, 2).len(), 2);
}

const OTEL_SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/otel");

/// A child process killed when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python_otel_available() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http, opentelemetry.proto"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "this test needs the OpenTelemetry Python packages: \
         pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http opentelemetry-proto \
         (scripts/test installs them)"
    );
}

#[test]
fn exported_spans_decode_with_the_official_otlp_protobuf_classes() {
    use std::io::BufRead;
    python_otel_available();
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = std::process::Command::new("python3")
        .arg(format!("{OTEL_SCRIPTS}/collector.py"))
        .arg(out.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut port).unwrap();
    let _collector = Reaped(child);
    let endpoint = format!("http://127.0.0.1:{}/v1/traces", port.trim());
    let d = Daemon::start_with(&["--otlp-export", &endpoint]);
    d.apply("t.yaml", &two_services("exported"));
    d.wait_phase("exported", "running", 30);
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let (code, _) = Http::new(&d.gateway_addr())
        .request(
            "GET",
            "/call/YUN_SVC_BACK_URL/status/503",
            &[("traceparent", &format!("00-{trace_id}-b7ad6b7169203331-01"))],
            "",
        )
        .unwrap();
    assert_eq!(code, 503);
    let spans: Vec<Value> = eventually(15, "both spans reach the collector", || {
        let text = std::fs::read_to_string(out.path()).ok()?;
        let spans: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|s| s["trace_id"] == trace_id)
            .collect();
        (spans.len() >= 2).then_some(spans)
    });
    assert_eq!(spans.len(), 2, "{spans:?}");
    let of = |svc: &str| spans.iter().find(|s| s["resource"]["service.name"] == svc).unwrap();
    let (front, back) = (of("front"), of("back"));
    assert_eq!(front["content_type"], "application/x-protobuf");
    assert_eq!(front["resource"]["yun.app"], "exported");
    assert_eq!(front["scope"], "yun");
    assert_eq!(front["parent_span_id"], "b7ad6b7169203331");
    assert_eq!(back["parent_span_id"], front["span_id"]);
    assert_eq!(back["kind"], 2, "SPAN_KIND_SERVER");
    assert_eq!(back["status_code"], 2, "STATUS_CODE_ERROR");
    assert_eq!(back["attributes"]["http.response.status_code"], 503);
    assert_eq!(back["attributes"]["yun.source"], "exported/front");
    assert!(back["start"].as_u64().unwrap() >= front["start"].as_u64().unwrap());
}

#[test]
fn spans_from_the_opentelemetry_python_sdk_join_a_yun_trace() {
    python_otel_available();
    let d = Daemon::start();
    d.apply("t.yaml", &two_services("otlp"));
    d.wait_phase("otlp", "running", 30);
    let trace_id = "6e0c63257de34c926f9efcd03899a2a4";
    let (code, _) = Http::new(&d.gateway_addr())
        .request("GET", "/", &[("traceparent", &format!("00-{trace_id}-1111111111111111-01"))], "")
        .unwrap();
    assert_eq!(code, 200);
    let front = trace(&d, trace_id, 1)[0].clone();
    let parent = format!("00-{trace_id}-{}-01", front["span_id"].as_str().unwrap());
    let status = std::process::Command::new("python3")
        .arg(format!("{OTEL_SCRIPTS}/sdk_span.py"))
        .arg(format!("http://{}/v1/traces", d.otlp_addr()))
        .arg(&parent)
        .arg("charge card")
        // The exporter compresses, as many deployments configure it.
        .env("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
        .status()
        .unwrap();
    assert!(status.success());
    let spans = trace(&d, trace_id, 2);
    let sdk = spans.iter().find(|s| s["name"] == "charge card").expect("the SDK's span joined the trace");
    assert_eq!(sdk["parent_id"], front["span_id"]);
    assert_eq!(sdk["service"], "checkout");
    assert_eq!(sdk["app"], "otlp");
    assert_eq!(sdk["kind"], "internal");
    assert_eq!(sdk["attributes"]["order.items"], 3);
    assert_eq!(sdk["attributes"]["order.express"], true);
}

#[test]
fn with_tracing_off_the_data_plane_makes_no_spans_and_leaves_headers_alone() {
    let d = Daemon::start_with(&["--tracing", "off"]);
    d.apply("t.yaml", &two_services("quiet"));
    d.wait_phase("quiet", "running", 30);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (code, seen) = Http::new(&d.gateway_addr())
        .request("GET", "/header/traceparent", &[("traceparent", tp)], "")
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(seen, tp);
    assert_eq!(d.json(&["traces", "quiet"])["traces"], json!([]));
}

#[test]
fn log_lines_link_to_their_traces_and_can_be_searched() {
    let d = Daemon::start();
    d.apply("t.yaml", &two_services("logged"));
    d.wait_phase("logged", "running", 30);
    let gw = d.gateway_addr();
    let trace_id = "9a3b1f2e4d5c6b7a8f9e0d1c2b3a4f5e";
    let tp = format!("00-{trace_id}-00f067aa0ba902b7-01");
    assert_eq!(Http::new(&gw).request("GET", "/log/order-paid", &[("traceparent", &tp)], "").unwrap().0, 200);
    assert_eq!(Http::new(&gw).get("/log/order-failed").unwrap().0, 200);
    let lines = |args: &[&str]| -> Vec<Value> {
        let mut all = vec!["logs", "logged"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = d.yun_ok(&all);
        out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    };
    let paid = eventually(10, "the paid line is stored", || {
        let found = lines(&["--grep", "order-paid"]);
        (!found.is_empty()).then_some(found)
    });
    assert_eq!(paid.len(), 1, "{paid:?}");
    assert_eq!(paid[0]["trace_id"], trace_id, "a JSON line's traceparent links it to the trace");
    assert_eq!(paid[0]["component"], "front");
    let by_trace = lines(&["--trace", &trace_id.to_uppercase()]);
    assert_eq!(by_trace.len(), 1, "{by_trace:?}");
    assert!(by_trace[0]["line"].as_str().unwrap().contains("order-paid"));
    // The other line has its own trace (started by the data plane), not this one.
    let failed = lines(&["--grep", "order-failed"]);
    assert_eq!(failed.len(), 1);
    assert_ne!(failed[0]["trace_id"], trace_id);
    assert!(lines(&["--grep", "no-such-text"]).is_empty());
    // Bad filters are refused with a reason.
    let out = d.yun(&["logs", "logged", "--trace", "not-a-trace"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid trace id"), "{out:?}");
}

#[test]
fn the_client_is_told_which_trace_its_request_joined() {
    let d = Daemon::start();
    let port = free_port();
    d.apply("t.yaml", &two_services_on("told", port));
    d.wait_phase("told", "running", 30);
    // The service address (the instance's fields passed on as they came) and the gateway.
    for (n, addr) in [format!("127.0.0.1:{port}"), d.gateway_addr()].iter().enumerate() {
        let trace_id = format!("0af7651916cd43dd8448eb211c80319{n}");
        let mut http = Http::new(addr);
        let (code, _) = http
            .request("GET", "/", &[("traceparent", &format!("00-{trace_id}-b7ad6b7169203331-01"))], "")
            .unwrap();
        assert_eq!(code, 200);
        let told = http.field("traceresponse");
        assert_eq!(told.len(), 1, "one traceresponse from {addr}: {:?}", http.fields);
        let spans = trace(&d, &trace_id, 1);
        let front = by_service(&spans, "front");
        let hop = front["span_id"].as_str().unwrap();
        assert_eq!(told[0], format!("00-{trace_id}-{hop}-01"), "names the hop's span in the client's trace");
        // A new trace is started for a client that sent none, and named too.
        http.request("GET", "/", &[], "").unwrap();
        let told = http.field("traceresponse");
        assert_eq!(told.len(), 1, "{:?}", http.fields);
        assert!(!told[0].contains(&trace_id) && told[0].len() == 55, "{}", told[0]);
    }
}
