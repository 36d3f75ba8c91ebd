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
