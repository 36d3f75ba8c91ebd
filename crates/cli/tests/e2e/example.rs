//! The example shop from `examples/shop`, run as a user would (with a free port instead of
//! 8080 and the debug build of its binary).

use crate::support::*;

#[test]
fn the_example_shop_runs_and_serves_its_catalogue() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shop = std::path::Path::new(YUN).with_file_name("shop");
    assert!(
        shop.exists(),
        "{} is missing: run `cargo build --workspace` first (scripts/test does)",
        shop.display()
    );
    let port = free_port();
    let manifest = std::fs::read_to_string(root.join("examples/shop/app.yaml"))
        .unwrap()
        .replace("../../target/release/shop", shop.to_str().unwrap())
        .replace("port: 8080", &format!("port: {port}"))
        .replace("\"/\": 8080", &format!("\"/\": {port}"));
    let d = Daemon::start();
    let path = d.write("shop.yaml", &manifest);
    let out = d.yun_ok(&["up", "-d", "-f", path.to_str().unwrap()]);
    assert!(out.contains("shop: ready"), "{out}");
    let st = d.status("shop");
    assert_eq!(st["phase"], "running");
    let (code, body) = Http::new(&format!("127.0.0.1:{port}")).get("/api/products").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("Oolong"), "{body}");
    let (code, body) = Http::new(&format!("127.0.0.1:{port}")).get("/").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("Tea shop"));
    // Through the gateway, frontend → catalogue is one trace.
    let trace_id = "0123456789abcdef0123456789abcdef";
    let (code, _) = Http::new(&d.gateway_addr())
        .request(
            "GET",
            "/api/products",
            &[("traceparent", &format!("00-{trace_id}-aaaaaaaaaaaaaaaa-01"))],
            "",
        )
        .unwrap();
    assert_eq!(code, 200);
    let spans = eventually(10, "the trace has both hops", || {
        let v = d.json(&["trace", trace_id]);
        let spans = v["spans"].as_array()?.clone();
        (spans.len() == 2).then_some(spans)
    });
    let of = |c: &str| spans.iter().find(|s| s["service"] == c).unwrap_or_else(|| panic!("{c} in {spans:?}"));
    assert_eq!(of("frontend")["parent_id"], "aaaaaaaaaaaaaaaa");
    assert_eq!(of("catalogue")["parent_id"], of("frontend")["span_id"]);
    assert_eq!(of("catalogue")["attributes"]["yun.source"], "shop/frontend");
    assert_eq!(of("catalogue")["attributes"]["url.path"], "/products");
    assert_eq!(d.json(&["slo", "shop"])["objectives"].as_array().unwrap().len(), 2);
    eventually(30, "the worker logs a stock check", || {
        d.yun_ok(&["logs", "shop", "restocker"])
            .contains("stock check: 2 product(s) below 10 units")
            .then_some(())
    });
    d.yun_ok(&["delete", "shop"]);
}
