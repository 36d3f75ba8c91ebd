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
