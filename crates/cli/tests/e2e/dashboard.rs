//! The web dashboard in a real headless browser (Debian's Chromium, driven by Playwright).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

use crate::support::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/browser/dashboard.py");

fn manifest(front: u16, back: u16, version: &str) -> String {
    format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: board
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
        - type: slo
          properties:
            availability: 99.5
    - name: back
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        port: {back}
        env: [{{name: VERSION, value: "{version}"}}]
"#
    )
}

#[test]
fn the_dashboard_shows_topology_traces_logs_and_rolls_back() {
    let browser_ready = std::process::Command::new("python3")
        .args(["-c", "import playwright.sync_api"])
        .status()
        .is_ok_and(|s| s.success())
        && std::path::Path::new("/usr/bin/chromium").exists();
    assert!(
        browser_ready,
        "this test needs Debian's chromium and the playwright Python package (scripts/test installs both)"
    );
    let d = Daemon::start();
    let (front, back) = (free_port(), free_port());
    d.apply("board.yaml", &manifest(front, back, "1"));
    d.wait_phase("board", "running", 30);
    d.apply("board.yaml", &manifest(front, back, "2"));
    eventually(30, "revision 2 runs", || {
        (d.status("board")["revision"] == 2 && d.status("board")["phase"] == "running").then_some(())
    });
    let gw = d.gateway_addr();
    let trace_id = "7d1c0b6e2a9f4e3d8c7b6a5f4e3d2c1b";
    let (code, _) = Http::new(&gw)
        .request(
            "GET",
            "/call/YUN_SVC_BACK_URL/log/order-paid",
            &[("traceparent", &format!("00-{trace_id}-1111111111111111-01"))],
            "",
        )
        .unwrap();
    assert_eq!(code, 200);
    // Live traffic external → front → back while the browser looks.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, gw) = (stop.clone(), gw.clone());
        std::thread::spawn(move || {
            let mut http = Http::new(&gw);
            while !stop.load(Ordering::Relaxed) {
                let _ = http.get("/call/YUN_SVC_BACK_URL/");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    let url = d.yun_ok(&["dashboard"]).trim().to_string();
    assert!(url.contains("/dashboard#token="), "{url}");
    let shots = std::env::var("YUN_DASHBOARD_SCREENSHOTS").unwrap_or_default();
    let out = std::process::Command::new("python3")
        .args([SCRIPT, &url, "board", trace_id, &shots])
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(out.status.success(), "browser script failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();

    assert!(seen["without_token"].as_str().unwrap().contains("yun dashboard"), "{seen}");
    assert!(seen["apps"].as_str().unwrap().contains("board"), "{seen}");
    let nodes: Vec<&str> = seen["nodes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    for n in ["external", "front", "back"] {
        assert!(nodes.contains(&n), "{nodes:?}");
    }
    let edge = |from: &str, to: &str| {
        seen["edges"].as_array().unwrap().iter().find(|e| e["from"] == from && e["to"] == to).cloned()
    };
    let inner = edge("front", "back").expect("front → back edge");
    assert!(inner["label"].as_str().unwrap().contains("rps"), "{inner}");
    assert!(edge("external", "front").is_some());
    assert!(seen["slo"].as_str().unwrap().contains("99.5%"), "{seen}");
    assert!(seen["instances"].as_str().unwrap().contains("MiB"), "instances show their memory: {seen}");
    assert!(seen["trace_rows"].as_u64().unwrap() >= 1);
    // The waterfall: front's span is the parent of back's.
    let spans = seen["waterfall"].as_array().unwrap();
    assert_eq!(spans.len(), 2, "{spans:?}");
    let front_span = spans.iter().find(|s| s["text"].as_str().unwrap().contains("board/front")).unwrap();
    let back_span = spans.iter().find(|s| s["text"].as_str().unwrap().contains("board/back")).unwrap();
    assert_eq!(back_span["parent"], front_span["span"]);
    assert_eq!(front_span["parent"], "1111111111111111");
    // Logs: filtered to the one line, which links to its trace.
    let lines = seen["log_lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].as_str().unwrap().contains("order-paid"));
    assert!(seen["jumped_to"].as_str().unwrap().contains(trace_id), "{seen}");
    // History: the diff names the changed value; the rollback made revision 3 with revision 1's spec.
    let diff = seen["diff"].as_str().unwrap();
    assert!(diff.contains("- ") && diff.contains("+ ") && diff.contains("value: \"1\""), "{diff}");
    assert!(seen["revisions_after_rollback"].as_str().unwrap().contains("3"), "{seen}");
    assert_eq!(seen["page_errors"], serde_json::json!([]), "the page threw");
    let history = d.json(&["history", "board"]);
    assert_eq!(history["current"], 3, "{history}");
    eventually(30, "revision 3 runs back with VERSION 1", || {
        let (_, v) = Http::new(&gw).get("/call/YUN_SVC_BACK_URL/env/VERSION").ok()?;
        (v == "1").then_some(())
    });
}

#[test]
fn dashboard_files_are_served_with_a_strict_policy_and_hold_no_data() {
    let d = Daemon::start();
    let (code, body) = Http::new(&d.api_addr()).get("/dashboard").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("/dashboard/app.js"));
    let mut http = Http::new(&d.api_addr());
    let (code, script) = http.get("/dashboard/app.js").unwrap();
    assert_eq!(code, 200);
    assert!(script.contains("Bearer"), "the page authenticates its API calls");
    assert!(!script.contains(&d.token()));
    // The API stays protected.
    assert_eq!(Http::new(&d.api_addr()).get("/api/v1/apps").unwrap().0, 401);
}
