//! The `gateway` trait: north–south entry by host and path prefix, with the components'
//! policies applied.

use serde_json::Value;

use crate::support::*;

#[test]
fn the_gateway_routes_by_host_and_path_and_applies_policies() {
    let d = Daemon::start();
    let (web_port, api_port) = (free_port(), free_port());
    let manifest = format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: edge
spec:
  components:
    - name: web
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        ports: [{{port: {web_port}, expose: true}}]
      traits:
        - type: gateway
          properties:
            domain: shop.local
            class: nginx
            http:
              "/": {web_port}
    - name: api
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        port: {api_port}
      traits:
        - type: gateway
          properties:
            http:
              "/api": {api_port}
        - type: resilience
          properties:
            routes:
              - match: {{pathPrefix: /api/limited}}
                rateLimit: {{qps: 1}}
"#
    );
    d.apply("edge.yaml", &manifest);
    let st = d.wait_phase("edge", "running", 30);
    let gw = d.gateway_addr();
    let addresses = st["components"][0]["addresses"].to_string();
    assert!(addresses.contains("http://shop.local:"), "{addresses}");

    let who = |host: &str, path: &str| -> (u16, String) {
        let (code, body) = Http::new(&gw).request("GET", path, &[("host", host)], "").unwrap();
        let instance = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["instance"].as_str().map(str::to_string));
        (code, instance.unwrap_or(body))
    };
    let (code, instance) = who("shop.local", "/");
    assert_eq!(code, 200);
    assert!(instance.starts_with("web-"), "{instance}");
    // Routes naming the host win; the host's "/" covers /api for it.
    assert!(who("shop.local:8080", "/api/items").1.starts_with("web-"));
    // Other hosts use host-less routes.
    assert!(who("other.local", "/api/items").1.starts_with("api-"));
    let (code, body) = who("other.local", "/nowhere");
    assert_eq!(code, 404);
    assert!(body.contains("no gateway route"), "{body}");
    // The component's policies apply to gateway traffic.
    let codes: Vec<u16> = (0..4).map(|_| who("other.local", "/api/limited").0).collect();
    assert!(codes.contains(&429), "{codes:?}");
    // Removing the trait removes the route.
    d.apply(
        "edge.yaml",
        &manifest
            .replace(
                "        - type: gateway\n          properties:\n            http:\n              \"/api\"",
                "        - type: labels\n          properties:\n            x",
            )
            .replace(&format!(": {api_port}\n        - type: resilience"), ": y\n        - type: resilience"),
    );
    eventually(10, "route removed", || (who("other.local", "/api/items").0 == 404).then_some(()));
}

#[test]
fn gateway_properties_are_validated() {
    let d = Daemon::start();
    let manifest = format!(
        "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata: {{name: badgw}}\nspec:\n  components:\n    - name: web\n      type: webservice\n      properties: {{cmd: [\"{TESTSVC}\"], ports: [{{port: 9}}]}}\n      traits:\n        - type: gateway\n          properties: {{domain: \"bad host\", http: {{\"api\": 10}}}}\n"
    );
    let path = d.write("badgw.yaml", &manifest);
    let out = d.yun(&["apply", "-f", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("invalid host name"), "{err}");
    assert!(err.contains("must start with '/'"), "{err}");
    assert!(err.contains("port 10 is not a declared port"), "{err}");
}

#[test]
fn the_gateway_serves_https_with_the_domain_certificate() {
    let d = Daemon::start();
    let port = free_port();
    let dir = d.home().join("certs");
    std::fs::create_dir_all(&dir).unwrap();
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-keyout", "key.pem", "-out", "cert.pem", "-days", "1", "-subj", "/CN=secure.local"])
        .args(["-addext", "subjectAltName=DNS:secure.local"])
        .current_dir(&dir)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl generates the test certificate");
    assert!(status.success());
    let manifest = |key: &str| {
        format!(
            r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: secure
spec:
  components:
    - name: web
      type: webservice
      properties:
        cmd: ["{TESTSVC}"]
        ports: [{{port: {port}}}]
      traits:
        - type: gateway
          properties:
            domain: secure.local
            http: {{"/": {port}}}
            tls: {{certFile: certs/cert.pem, keyFile: certs/{key}}}
"#
        )
    };
    d.apply("secure.yaml", &manifest("key.pem"));
    d.wait_phase("secure", "running", 30);
    let tls = d.gateway_tls_addr();
    let tls_port = tls.rsplit(':').next().unwrap();
    let curl = |extra: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(dir.join("cert.pem"))
            .args(["--resolve", &format!("secure.local:{tls_port}:127.0.0.1")])
            .args(extra)
            .arg(format!("https://secure.local:{tls_port}/"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, body, err) = curl(&["--http1.1"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["instance"].as_str().unwrap().starts_with("web-"), "{body}");
    let (ok, body, err) = curl(&["--http2"]);
    assert!(ok, "{err}");
    assert!(body.contains("\"instance\""), "{body}");
    // A key that cannot be read fails the component with the reason, and the certificate
    // served so far stays in place.
    d.apply("secure.yaml", &manifest("missing.pem"));
    let st = d.wait_phase("secure", "failed", 30);
    assert!(st["message"].as_str().unwrap().contains("cannot read private key"), "{st}");
    let (ok, _, err) = curl(&["--http1.1"]);
    assert!(ok, "{err}");
}
