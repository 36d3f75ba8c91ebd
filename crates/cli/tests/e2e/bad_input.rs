//! Bad input through the real binary: it is refused with a clear error and changes nothing.

use serde_json::Value;

use crate::support::*;

fn apps(d: &Daemon) -> Vec<Value> {
    d.json(&["get", "apps"])["apps"].as_array().unwrap().clone()
}

#[test]
fn invalid_manifests_are_refused_with_located_errors() {
    let d = Daemon::start();
    let cases = [
        ("malformed.yaml", "apiVersion: core.oam.dev/v1beta1\nkind: [Application\n", "invalid YAML"),
        (
            "type.yaml",
            "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata: {name: a}\nspec:\n  components:\n    - name: x\n      type: websrvice\n      properties: {cmd: [x]}\n",
            "did you mean \"webservice\"",
        ),
        (
            "trait.yaml",
            "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata: {name: a}\nspec:\n  components:\n    - name: x\n      type: worker\n      properties: {cmd: [x]}\n      traits: [{type: scalr}]\n",
            "did you mean \"scaler\"",
        ),
        (
            "prop.yaml",
            "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata: {name: a}\nspec:\n  components:\n    - name: x\n      type: worker\n      properties: {cmd: [x], replica: 2}\n",
            "unknown property \"replica\"",
        ),
        (
            "cron.yaml",
            "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata: {name: a}\nspec:\n  components:\n    - name: x\n      type: cron-task\n      properties: {cmd: [x], schedule: 'every day'}\n",
            "invalid cron schedule",
        ),
        (
            "dup.yaml",
            "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata: {name: a}\nspec:\n  components:\n    - {name: x, type: worker, properties: {cmd: [x]}}\n    - {name: x, type: worker, properties: {cmd: [y]}}\n",
            "duplicate component name",
        ),
        (
            "cycle.yaml",
            "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata: {name: a}\nspec:\n  components:\n    - {name: x, type: worker, properties: {cmd: [x]}, dependsOn: [y]}\n    - {name: y, type: worker, properties: {cmd: [y]}, dependsOn: [x]}\n",
            "dependency cycle",
        ),
        (
            "ports.yaml",
            "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata: {name: a}\nspec:\n  components:\n    - {name: x, type: webservice, properties: {cmd: [x], ports: [{port: 9001}]}}\n    - {name: y, type: webservice, properties: {cmd: [y], port: 9001}}\n",
            "port 9001 is already used",
        ),
        (
            "image.yaml",
            "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata: {name: a}\nspec:\n  components:\n    - {name: x, type: webservice, properties: {image: nginx}}\n",
            "cannot run locally",
        ),
    ];
    for (file, manifest, expected) in cases {
        let path = d.write(file, manifest);
        let out = d.yun(&["apply", "-f", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file} was accepted");
        assert!(err.contains(expected), "{file}: expected {expected:?} in {err}");
        assert!(err.contains(&format!("{file}:")), "{file}: error names the file: {err}");
    }
    assert!(apps(&d).is_empty(), "nothing was created");
    // `validate` judges the manifest itself: image without cmd is only a warning there.
    let path = d.write("image-only.yaml", cases[8].1);
    let out = d.yun(&["validate", "-f", path.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning"));
}

#[test]
fn requests_without_the_right_token_get_401_and_change_nothing() {
    let d = Daemon::start();
    let addr = d.api_addr();
    let manifest = webservice_app("sneaky", "sneaky", free_port(), "v1", 1);
    let body = serde_json::json!({"manifest": manifest, "base_dir": "/tmp"}).to_string();
    for auth in [None, Some("Bearer wrong"), Some("Basic abc"), Some("Bearer ")] {
        let mut http = Http::new(&addr);
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        let (code, text) = http.request("POST", "/api/v1/apply", &headers, &body).unwrap();
        assert_eq!(code, 401, "{auth:?}: {text}");
        let (code, _) = http.request("GET", "/api/v1/apps", &headers[1..], "").unwrap();
        assert_eq!(code, 401);
    }
    assert!(apps(&d).is_empty());
    // The right token works over the same raw client.
    let token = format!("Bearer {}", d.token());
    let (code, _) =
        Http::new(&addr).request("GET", "/api/v1/apps", &[("authorization", &token)], "").unwrap();
    assert_eq!(code, 200);
    // The token file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.home().join("token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn hostile_api_bodies_are_rejected() {
    let d = Daemon::start();
    let addr = d.api_addr();
    let token = format!("Bearer {}", d.token());
    let h = [("authorization", token.as_str()), ("content-type", "application/json")];
    let mut http = Http::new(&addr);
    for body in [
        "{",
        "[]",
        "{\"manifest\": 3, \"base_dir\": \"/\"}",
        "{\"manifest\": \"x\", \"base_dir\": \"relative\"}",
        "{\"manifest\": \"a: b\", \"base_dir\": \"/\", \"extra\": 1}",
    ] {
        let (code, text) = http.request("POST", "/api/v1/apply", &h, body).unwrap();
        assert!((400..500).contains(&code), "{body}: {code} {text}");
    }
    let huge = "x".repeat(9 * 1024 * 1024);
    let (code, _) =
        Http::new(&addr).request("POST", "/api/v1/apply", &h, &huge).unwrap_or((413, String::new()));
    assert_eq!(code, 413);
    let (code, _) = http
        .request("POST", "/api/v1/apps/nope/scale", &h, "{\"component\": \"a\", \"replicas\": 1}")
        .unwrap();
    assert_eq!(code, 404);
    assert!(apps(&d).is_empty());
}

#[test]
fn a_service_port_taken_by_another_process_is_reported() {
    let d = Daemon::start();
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    d.apply("app.yaml", &webservice_app("squat", "squat", port, "v1", 1));
    let st = eventually(30, "port problem reported", || {
        let st = d.status("squat");
        (st["phase"] == "failed").then_some(st)
    });
    assert!(st["message"].as_str().unwrap().contains(&format!("service port {port}")), "{st}");
    drop(squatter);
    d.wait_phase("squat", "running", 30);
}

#[test]
fn every_api_error_is_json() {
    let d = Daemon::start();
    let token = format!("Bearer {}", d.token());
    let h = [("authorization", token.as_str()), ("content-type", "application/json")];
    let mut http = Http::new(&d.api_addr());
    for (method, path, body) in [
        ("POST", "/api/v1/apply", "{not json"),
        ("GET", "/api/v1/events?after=minus-one", ""),
        ("GET", "/api/v1/no-such-route", ""),
        ("DELETE", "/api/v1/apply", ""),
    ] {
        let (code, text) = http.request(method, path, &h, body).unwrap();
        assert!(code >= 400, "{method} {path}: {code}");
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{text}");
    }
}
