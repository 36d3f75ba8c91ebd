//! Prometheus metrics of the data plane on the daemon's `/metrics`.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::*;

#[test]
fn metrics_count_requests_rejections_and_retries_and_pass_promtool() {
    let d = Daemon::start();
    let port = free_port();
    let manifest = format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: metered
spec:
  components:
    - name: api
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        ports: [{{port: {port}}}]
        env: [{{name: FAIL_EVERY, value: "2"}}]
      traits:
        - type: resilience
          properties:
            retries: {{on: [5xx], budgetRatio: 1.0}}
            routes:
              - match: {{pathPrefix: /limited}}
                rateLimit: {{qps: 1}}
"#
    );
    d.apply("metered.yaml", &manifest);
    d.wait_phase("metered", "running", 30);
    let mut http = Http::new(&format!("127.0.0.1:{port}"));
    for _ in 0..10 {
        assert_eq!(http.get("/").unwrap().0, 200);
    }
    let limited: Vec<u16> = (0..5).map(|_| http.get("/limited").unwrap().0).collect();
    assert!(limited.contains(&429), "{limited:?}");

    let token = format!("Bearer {}", d.token());
    let (code, _) = Http::new(&d.api_addr()).get("/metrics").unwrap();
    assert_eq!(code, 401, "metrics need the token too");
    let (code, text) =
        Http::new(&d.api_addr()).request("GET", "/metrics", &[("authorization", &token)], "").unwrap();
    assert_eq!(code, 200);
    for needle in [
        r#"yun_proxy_requests_total{app="metered",component="api",route="default",source="external",instance="api-"#,
        r#"class="2xx"} "#,
        r#"yun_proxy_rejections_total{app="metered",component="api",route="/limited",policy="rateLimit"}"#,
        r#"yun_proxy_retries_total{app="metered",component="api",route="default"}"#,
        r#"yun_proxy_request_duration_seconds_bucket{le="+Inf",app="metered",component="api",route="default"} 10"#,
        "yun_proxy_requests_in_flight{",
        // Runtime, control plane and trace store.
        r#"yun_component_instances{app="metered",component="api",state="ready"} 1"#,
        r#"yun_component_instances{app="metered",component="api",state="desired"} 1"#,
        r#"yun_instance_ready{app="metered",component="api",instance="api-"#,
        r#"yun_instance_restarts_total{app="metered",component="api",instance="api-"#,
        r#"yun_instance_probe_failures_total{app="metered",component="api",instance="api-"#,
        "yun_reconcile_duration_seconds_count ",
        "yun_reconcile_queue_depth ",
        "yun_traces_stored ",
        "yun_trace_spans_dropped_total ",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // The instance's memory and CPU come from /proc: real, non-zero figures.
    let value_of = |prefix: &str| -> f64 {
        let line =
            text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value_of(r#"yun_instance_memory_rss_bytes{app="metered",component="api""#) > 100_000.0);
    assert!(value_of(r#"yun_instance_cpu_seconds_total{app="metered",component="api""#) >= 0.0);

    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed (Debian package prometheus; scripts/test installs it)");
    promtool.stdin.as_ref().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real Prometheus server scrapes the daemon with the token and sees the data plane.
#[test]
fn a_real_prometheus_scrapes_the_daemon() {
    let d = Daemon::start();
    let port = free_port();
    let manifest = format!(
        "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata: {{name: scraped}}\nspec:\n  components:\n    - name: api\n      type: webservice\n      properties: {{cmd: [\"{TESTSVC}\"], ports: [{{port: {port}}}]}}\n"
    );
    d.apply("scraped.yaml", &manifest);
    d.wait_phase("scraped", "running", 30);
    for _ in 0..5 {
        Http::new(&format!("127.0.0.1:{port}")).get("/").unwrap();
    }
    let prom_port = free_port();
    let dir = d.home().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: yun\n    authorization: {{credentials_file: {}}}\n    static_configs: [{{targets: [\"{}\"]}}]\n",
        d.home().join("token").display(),
        d.api_addr()
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is needed (Debian package prometheus; scripts/test installs it)");
    let query = |q: &str| -> Option<Value> {
        let path = format!("/api/v1/query?query={q}");
        let (code, body) = Http::new(&format!("127.0.0.1:{prom_port}")).get(&path).ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually(60, "Prometheus scraped the daemon", || {
            let v = query("up%7Bjob%3D%22yun%22%7D")?;
            (v["data"]["result"][0]["value"][1] == "1").then_some(())
        });
        eventually(30, "request counts in Prometheus", || {
            let v = query("sum(yun_proxy_requests_total%7Bapp%3D%22scraped%22%7D)")?;
            let n: f64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
            (n >= 5.0).then_some(())
        });
    }));
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn the_short_term_store_charts_components_edges_and_usage() {
    let d = Daemon::start();
    let (front, back) = (free_port(), free_port());
    let manifest = format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: charted
spec:
  components:
    - name: front
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        port: {front}
    - name: back
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        port: {back}
"#
    );
    d.apply("charted.yaml", &manifest);
    d.wait_phase("charted", "running", 30);
    // Steady traffic external → front → back while the store is read.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut http = Http::new(&format!("127.0.0.1:{front}"));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = http.get("/call/YUN_SVC_BACK_URL/");
                let _ = http.get("/status/500");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
    };
    let token = format!("Bearer {}", d.token());
    let series = eventually(20, "the store has points for both components and both edges", || {
        let (code, body) = Http::new(&d.api_addr())
            .request("GET", "/api/v1/apps/charted/metrics?window=5m", &[("authorization", &token)], "")
            .ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let has_traffic = |c: &str| {
            v["components"][c].as_array().is_some_and(|p| p.iter().any(|p| p["rps"].as_f64() > Some(0.0)))
        };
        let edges = v["edges"].as_array()?;
        let edge = |s: &str, t: &str| edges.iter().any(|e| e["source"] == s && e["target"] == t);
        (code == 200
            && has_traffic("front")
            && has_traffic("back")
            && edge("external", "front")
            && edge("charted/front", "back"))
        .then_some(v)
    });
    let front_points = series["components"]["front"].as_array().unwrap();
    let busy = front_points.iter().rfind(|p| p["rps"].as_f64() > Some(0.0)).unwrap();
    // Half of front's requests are /status/500.
    let errors = busy["error_ratio"].as_f64().unwrap();
    assert!((0.2..0.8).contains(&errors), "{busy}");
    assert!(busy["p99_ms"].as_f64().unwrap() >= busy["p50_ms"].as_f64().unwrap());
    let usage = series["usage"]["front"].as_array().unwrap().last().unwrap().clone();
    assert!(usage["rss_bytes"].as_u64().unwrap() > 100_000, "{usage}");
    assert_eq!(usage["ready"], 1);

    // Status reports each instance's CPU time and memory.
    let st = d.status("charted");
    let instance = &st["components"][0]["instances"][0];
    assert!(instance["rss_bytes"].as_u64().unwrap() > 100_000, "{instance}");
    assert!(instance["cpu_millis"].as_u64().is_some(), "{instance}");

    let top = d.json(&["top", "charted", "--once"]);
    let rows = top["components"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{top}");
    assert!(rows.iter().any(|r| r["component"] == "front" && r["rps"].as_f64() > Some(0.0)), "{top}");
    let text = d.yun_ok(&["top", "charted", "--once"]);
    assert!(text.contains("COMPONENT") && text.contains("front") && text.contains("back"), "{text}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();

    // Bad input.
    let (code, body) = Http::new(&d.api_addr())
        .request("GET", "/api/v1/apps/charted/metrics?window=forever", &[("authorization", &token)], "")
        .unwrap();
    assert_eq!(code, 400, "{body}");
    let (code, _) = Http::new(&d.api_addr())
        .request("GET", "/api/v1/apps/nope/metrics", &[("authorization", &token)], "")
        .unwrap();
    assert_eq!(code, 404);
}

#[test]
fn slo_budgets_and_a_fast_burn_event() {
    let d = Daemon::start();
    let port = free_port();
    let manifest = format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: promised
spec:
  components:
    - name: api
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        port: {port}
      traits:
        - type: slo
          properties:
            availability: 99.9
            latency: {{threshold: 200ms, percent: 99}}
            window: 7d
"#
    );
    d.apply("promised.yaml", &manifest);
    d.wait_phase("promised", "running", 30);
    let mut http = Http::new(&format!("127.0.0.1:{port}"));
    // Half the requests fail: 500 times the pace the objective allows.
    for i in 0..200 {
        let path = if i % 2 == 0 { "/" } else { "/status/503" };
        http.get(path).unwrap();
    }
    let report = eventually(20, "the objectives count the requests", || {
        let v = d.json(&["slo", "promised"]);
        let a = v["objectives"].as_array()?.iter().find(|o| o["objective"] == "availability")?.clone();
        (a["requests"].as_u64() >= Some(200)).then_some(v)
    });
    let objectives = report["objectives"].as_array().unwrap();
    assert_eq!(objectives.len(), 2, "{report}");
    let a = objectives.iter().find(|o| o["objective"] == "availability").unwrap();
    assert_eq!(a["target_percent"], 99.9);
    assert_eq!(a["window_seconds"], 7 * 86_400);
    assert_eq!(a["bad"], 100);
    assert!(a["budget_remaining"].as_f64().unwrap() < 0.0, "the budget is overspent: {a}");
    assert!(a["burn_rate_1h"].as_f64().unwrap() > 400.0, "{a}");
    assert_eq!(a["fast_burn"], true);
    let l = objectives.iter().find(|o| o["objective"] == "latency").unwrap();
    assert_eq!(l["bad"], 0, "every request was fast: {l}");
    assert_eq!(l["budget_remaining"], 1.0);
    // The burn was recorded as an event.
    eventually(10, "an SLOFastBurn event", || {
        let e = d.json(&["events", "promised"]);
        e["events"].as_array()?.iter().any(|e| e["reason"] == "SLOFastBurn").then_some(())
    });
    let text = d.yun_ok(&["slo", "promised"]);
    assert!(text.contains("FAST BURN") && text.contains("latency ≤ 200ms"), "{text}");

    // Bad objectives are refused at apply with the field path, and nothing changes.
    let bad = manifest.replace("availability: 99.9", "availability: 100");
    let out = d.yun(&["apply", "-f", d.write("bad.yaml", &bad).to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("traits[0].properties.availability"), "{err}");
    assert_eq!(d.json(&["history", "promised"])["revisions"].as_array().unwrap().len(), 1);
}
