//! Tasks, cron-tasks, dependsOn ordering and crash-looping.

use serde_json::Value;

use crate::support::*;

#[test]
fn depends_on_orders_startup_and_services_find_each_other() {
    let d = Daemon::start();
    let port = free_port();
    let manifest = format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: deps
spec:
  components:
    - name: client
      type: task
      dependsOn: [backend]
      properties:
        cmd: ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/{port} && echo reached $YUN_SVC_BACKEND_URL"]
    - name: backend
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        ports: [{{port: {port}}}]
        env:
          - name: STARTUP_DELAY_MS
            value: "700"
"#
    );
    d.apply("deps.yaml", &manifest);
    let st = d.wait_phase("deps", "running", 30);
    let client = &st["components"][0];
    assert_eq!(client["phase"], "Completed", "{st}");
    let logs = d.yun_ok(&["logs", "deps", "client"]);
    assert!(logs.contains(&format!("reached http://127.0.0.1:{port}")), "{logs}");
    // The client started only after the backend was ready. Events reach the log through the
    // daemon's event pump, a moment after the status shows them.
    let (backend, client) = eventually(10, "both Started events are logged", || {
        let events = d.json(&["events", "deps"]);
        let seq_of = |component: &str| -> Option<u64> {
            events["events"]
                .as_array()?
                .iter()
                .find(|e| e["component"] == component && e["reason"] == "Started")?["seq"]
                .as_u64()
        };
        Some((seq_of("backend")?, seq_of("client")?))
    });
    assert!(backend < client);
}

#[test]
fn a_task_retries_then_fails_and_a_completed_task_is_not_rerun() {
    let mut d = Daemon::start();
    let manifest = r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: tasks
spec:
  components:
    - name: flaky
      type: task
      properties:
        cmd: ["sh", "-c", "echo attempt; exit 4"]
        backoffLimit: 2
    - name: good
      type: task
      properties:
        cmd: ["sh", "-c", "echo done"]
        count: 2
"#;
    d.apply("tasks.yaml", manifest);
    let st = d.wait_phase("tasks", "failed", 30);
    let flaky = &st["components"][0];
    assert_eq!(flaky["runs"][0]["failed"], 3, "1 attempt + 2 retries: {st}");
    assert!(flaky["message"].as_str().unwrap().contains("exit code 4"), "{st}");
    let good = &st["components"][1];
    assert_eq!(good["phase"], "Completed");
    assert_eq!(good["runs"][0]["succeeded"], 2);
    let started = |d: &Daemon| {
        let events = d.json(&["events", "tasks", "--limit", "1000"]);
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["component"] == "good" && e["reason"] == "Started")
            .count()
    };
    assert_eq!(started(&d), 2);
    // Completion is durable once its event is in the log (they are written together); from
    // then on, a daemon crash does not make the task run again.
    eventually(10, "completion recorded", || {
        let events = d.json(&["events", "tasks", "--limit", "1000"]);
        let recorded = events["events"]
            .as_array()?
            .iter()
            .any(|e| e["component"] == "good" && e["reason"] == "RunSucceeded");
        recorded.then_some(())
    });
    d.kill9();
    d.spawn();
    let st = d.wait_phase("tasks", "failed", 30);
    assert_eq!(st["components"][1]["phase"], "Completed", "{st}");
    assert_eq!(started(&d), 2);
}

#[test]
fn cron_task_runs_on_schedule() {
    let d = Daemon::start();
    let manifest = r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: crons
spec:
  components:
    - name: tick
      type: cron-task
      properties:
        cmd: ["sh", "-c", "echo tick"]
        schedule: "* * * * * *"
        concurrencyPolicy: Forbid
        successfulJobsHistoryLimit: 2
"#;
    d.apply("cron.yaml", manifest);
    let st = eventually(30, "two successful runs", || {
        let st = d.status("crons");
        let runs = st["components"][0]["runs"].as_array()?.clone();
        (runs.iter().filter(|r| r["state"] == "Succeeded").count() >= 2).then_some(st)
    });
    assert_eq!(st["components"][0]["phase"], "Scheduled");
    // History is trimmed to the limit.
    eventually(30, "history trimmed", || {
        let st = d.status("crons");
        let runs = st["components"][0]["runs"].as_array()?.clone();
        let ok = runs.iter().filter(|r| r["state"] == "Succeeded").count();
        (ok == 2 && runs.iter().filter(|r| r["id"].as_u64() > Some(3)).count() > 0).then_some(())
    });
    let logs = d.yun_ok(&["logs", "crons"]);
    assert!(logs.matches("tick").count() >= 2, "{logs}");
}

#[test]
fn a_missing_command_shows_in_status_and_the_daemon_stays_healthy() {
    let d = Daemon::start();
    let manifest = r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: broken
spec:
  components:
    - name: ghost
      type: worker
      properties:
        cmd: ["./no-such-program", "--flag"]
"#;
    d.apply("broken.yaml", manifest);
    let st = eventually(30, "crash loop reported", || {
        let st = d.status("broken");
        (st["phase"] == "degraded" && st["components"][0]["phase"] == "CrashLoopBackOff").then_some(st)
    });
    let msg = st["components"][0]["message"].as_str().unwrap();
    assert!(msg.contains("command not found: ./no-such-program"), "{st}");
    // The daemon still serves other apps.
    let port = free_port();
    d.apply("ok.yaml", &webservice_app("fine", "fine", port, "v1", 1));
    d.wait_phase("fine", "running", 30);
    let text = d.yun_ok(&["status", "broken"]);
    assert!(text.contains("CrashLoopBackOff") && text.contains("command not found"), "{text}");
}

#[test]
fn a_failing_liveness_probe_restarts_the_instance() {
    let d = Daemon::start();
    let port = free_port();
    let manifest = format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: live
spec:
  components:
    - name: api
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        ports: [{{port: {port}}}]
        livenessProbe:
          httpGet: {{path: /healthz, port: {port}}}
          periodSeconds: 1
          failureThreshold: 2
"#
    );
    d.apply("live.yaml", &manifest);
    d.wait_phase("live", "running", 30);
    let (code, _) = Http::new(&format!("127.0.0.1:{port}")).request("POST", "/unhealthy", &[], "").unwrap();
    assert_eq!(code, 200);
    eventually(30, "restart after liveness failures", || {
        let st = d.status("live");
        (st["components"][0]["restarts"].as_u64() >= Some(1) && st["phase"] == "running").then_some(())
    });
    eventually(10, "a LivenessFailed event", || {
        let events: Value = d.json(&["events", "live"]);
        events["events"].as_array()?.iter().any(|e| e["reason"] == "LivenessFailed").then_some(())
    });
}
