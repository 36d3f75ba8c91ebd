//! The foundation scenario: up → ready → answers → scale → zero-downtime rollout → instance
//! killed → daemon kill -9 and restart → rollback → delete.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde_json::Value;

use crate::support::*;

fn instance_pids(st: &Value) -> Vec<u64> {
    st["components"][0]["instances"].as_array().unwrap().iter().filter_map(|i| i["pid"].as_u64()).collect()
}

fn version_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .map(|v| v["version"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

#[test]
fn full_lifecycle_of_a_webservice() {
    let mut d = Daemon::start();
    let (app, marker, port) = ("life", &unique("life"), free_port());
    let addr = format!("127.0.0.1:{port}");

    // up → ready → answers through the stable address.
    let out = d.apply("app.yaml", &webservice_app(app, marker, port, "v1", 1));
    assert_eq!(out["apps"][0]["revision"], 1);
    d.wait_phase(app, "running", 30);
    let mut http = Http::new(&addr);
    let (code, body) = http.get("/").unwrap();
    assert_eq!(code, 200);
    assert_eq!(version_of(&body), "v1");
    // Re-applying the same manifest creates no revision.
    let again = d.apply("app.yaml", &webservice_app(app, marker, port, "v1", 1));
    assert_eq!(again["apps"][0]["created"], false);

    // Scale 1 → 3 → 1: instances answer round-robin, then extra processes go away.
    d.yun_ok(&["scale", app, "api", "3"]);
    eventually(30, "3 ready instances", || (d.status(app)["components"][0]["ready"] == 3).then_some(()));
    for _ in 0..9 {
        assert_eq!(http.get("/").unwrap().0, 200);
    }
    assert_eq!(app_processes(app, marker).len(), 3);
    d.yun_ok(&["scale", app, "api", "1"]);
    eventually(30, "one instance process left", || (app_processes(app, marker).len() == 1).then_some(()));
    d.wait_phase(app, "running", 30);

    // A new revision rolls out while a keep-alive client loop sees no failure.
    d.yun_ok(&["scale", app, "api", "2"]);
    eventually(30, "2 ready", || (d.status(app)["components"][0]["ready"] == 2).then_some(()));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, v2_seen) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let loop_thread = {
        let (stop, ok, failed, v2_seen, addr) =
            (stop.clone(), ok.clone(), failed.clone(), v2_seen.clone(), addr.clone());
        std::thread::spawn(move || {
            let mut client = Http::new(&addr);
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match client.get("/") {
                    Ok((200, body)) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                        if version_of(&body) == "v2" {
                            v2_seen.store(true, Ordering::SeqCst);
                        }
                    }
                    other => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        errors.push(format!("{other:?}"));
                    }
                }
            }
            errors
        })
    };
    eventually(10, "client loop running", || (ok.load(Ordering::SeqCst) > 20).then_some(()));
    let out = d.apply("app.yaml", &webservice_app(app, marker, port, "v2", 2));
    assert_eq!(out["apps"][0]["revision"], 2);
    let st = eventually(60, "revision 2 rolled out", || {
        let st = d.status(app);
        let c = &st["components"][0];
        let all_new = c["instances"].as_array().unwrap().len() == 2 && c["updated"] == 2 && c["ready"] == 2;
        (st["phase"] == "running" && st["revision"] == 2 && all_new).then_some(st)
    });
    // Let the loop run a little on the new revision.
    let before = ok.load(Ordering::SeqCst);
    eventually(10, "requests after rollout", || (ok.load(Ordering::SeqCst) > before + 20).then_some(()));
    stop.store(true, Ordering::SeqCst);
    let errors = loop_thread.join().unwrap();
    assert!(v2_seen.load(Ordering::SeqCst), "the client saw the new revision");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "failed requests during rollout: {errors:?}");
    assert!(ok.load(Ordering::SeqCst) >= 40);
    assert_eq!(app_processes(app, marker).len(), 2, "old instances are gone: {st}");

    // An instance killed from outside is restarted and serves again.
    let victim = instance_pids(&d.status(app))[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let st = eventually(30, "killed instance restarted", || {
        let st = d.status(app);
        let c = &st["components"][0];
        (c["restarts"].as_u64() >= Some(1) && c["ready"] == 2 && !instance_pids(&st).contains(&victim))
            .then_some(st)
    });
    assert_eq!(st["phase"], "running");
    eventually(10, "a Restarting event", || {
        let events = d.json(&["events", app]);
        events["events"].as_array()?.iter().any(|e| e["reason"] == "Restarting").then_some(())
    });

    // kill -9 of the daemon; a new one recovers state, replaces instances, never duplicates.
    let before: Vec<u32> = app_processes(app, marker);
    assert_eq!(before.len(), 2);
    d.kill9();
    d.spawn();
    let st = d.wait_phase(app, "running", 60);
    assert_eq!(st["revision"], 2);
    eventually(30, "exactly 2 instances after recovery", || {
        let now = app_processes(app, marker);
        (now.len() == 2 && now.iter().all(|p| !before.contains(p))).then_some(())
    });
    let (code, body) = Http::new(&addr).get("/").unwrap();
    assert_eq!((code, version_of(&body)), (200, "v2".to_string()));
    let history = d.json(&["history", app]);
    assert_eq!(history["revisions"].as_array().unwrap().len(), 2);

    // Rollback to revision 1: a new revision 3 with v1's spec.
    let out = d.json(&["rollback", app, "--to", "1"]);
    assert_eq!(out["revision"], 3);
    eventually(60, "v1 served again", || {
        let st = d.status(app);
        let ok = st["phase"] == "running" && st["revision"] == 3;
        let body = Http::new(&addr).get("/").ok()?.1;
        (ok && version_of(&body) == "v1").then_some(())
    });

    // Delete: nothing of the app remains.
    d.yun_ok(&["delete", app]);
    assert!(app_processes(app, marker).is_empty(), "processes left: {:?}", app_processes(app, marker));
    let out = d.yun(&["status", app]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    assert!(std::net::TcpStream::connect(&addr).is_err(), "service port closed");
    d.stop();
}

#[test]
fn daemon_shutdown_stops_instances_and_restart_brings_them_back() {
    let mut d = Daemon::start();
    let (app, marker, port) = ("restart", &unique("restart"), free_port());
    d.apply("app.yaml", &webservice_app(app, marker, port, "v1", 2));
    d.wait_phase(app, "running", 30);
    assert_eq!(app_processes(app, marker).len(), 2);
    d.stop();
    assert!(app_processes(app, marker).is_empty(), "graceful shutdown stops every instance");
    d.spawn();
    d.wait_phase(app, "running", 30);
    assert_eq!(app_processes(app, marker).len(), 2);
}

#[test]
fn changing_one_component_leaves_the_others_running() {
    let d = Daemon::start();
    let manifest = |version: &str| {
        format!(
            r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: pair
spec:
  components:
    - name: steady
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        env: [{{name: TEST_MARKER, value: pair}}]
    - name: changing
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        env: [{{name: VERSION, value: "{version}"}}, {{name: TEST_MARKER, value: pair}}]
"#
        )
    };
    d.apply("pair.yaml", &manifest("v1"));
    let st = d.wait_phase("pair", "running", 30);
    let pid = |st: &Value, i: usize| st["components"][i]["instances"][0]["pid"].as_u64().unwrap();
    let (steady, changing) = (pid(&st, 0), pid(&st, 1));
    // A diff shows exactly the change.
    let path = d.write("pair2.yaml", &manifest("v2"));
    let diff = d.json(&["diff", "-f", path.to_str().unwrap()]);
    let comps = diff["apps"][0]["components"].as_array().unwrap();
    assert_eq!(comps[0]["change"], "unchanged");
    assert_eq!(comps[1]["change"], "changed");
    assert_eq!(comps[1]["fields"][0]["field"], "env");
    d.apply("pair.yaml", &manifest("v2"));
    let st = eventually(30, "changed component rolled out", || {
        let st = d.status("pair");
        (st["phase"] == "running" && st["revision"] == 2 && pid(&st, 1) != changing).then_some(st)
    });
    assert_eq!(pid(&st, 0), steady, "the unchanged component was not restarted");
    assert_eq!(st["components"][0]["restarts"], 0);
}

#[test]
fn ctrl_c_on_yun_up_stops_the_app() {
    let d = Daemon::start();
    let (app, marker, port) = ("interactive", &unique("interactive"), free_port());
    let path = d.write("app.yaml", &webservice_app(app, marker, port, "v1", 1));
    let mut up = std::process::Command::new(YUN)
        .args(["up", "-f", path.to_str().unwrap()])
        .env("YUN_HOME", d.home())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually(30, "app running", || (d.try_status(app)?["phase"] == "running").then_some(()));
    assert_eq!(app_processes(app, marker).len(), 1);
    // Logs stream to `yun up`'s output.
    Http::new(&format!("127.0.0.1:{port}")).get("/").unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(up.id() as i32), nix::sys::signal::Signal::SIGINT)
        .unwrap();
    let status = eventually(30, "yun up exits", || up.try_wait().unwrap());
    assert!(status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut up.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("stopped"), "{err}");
    assert!(app_processes(app, marker).is_empty());
    assert_eq!(d.status(app)["phase"], "stopped");
    // `up` again starts it.
    d.yun_ok(&["up", "-d", "-f", path.to_str().unwrap()]);
    assert_eq!(app_processes(app, marker).len(), 1);
}
