use super::*;

const GOOD: &str = r#"
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: shop
spec:
  components:
    - name: frontend
      type: webservice
      properties:
        cmd: ["./shop", "frontend"]
        ports:
          - port: 8080
            expose: true
        env:
          - name: GREETING
            value: hello
        readinessProbe:
          httpGet:
            path: /healthz
            port: 8080
      dependsOn: [catalogue]
      traits:
        - type: scaler
          properties:
            replicas: 2
        - type: env
          properties:
            env:
              EXTRA: "1"
        - type: labels
          properties:
            tier: web
    - name: catalogue
      type: webservice
      properties:
        image: example/catalogue:1
        cmd: ["./shop", "catalogue"]
        port: 8081
    - name: mailer
      type: worker
      properties:
        cmd: ["./shop", "worker"]
    - name: report
      type: cron-task
      properties:
        cmd: ["./shop", "report"]
        schedule: "*/5 * * * *"
        concurrencyPolicy: Forbid
"#;

fn errors(src: &str) -> Vec<Diagnostic> {
    parse_manifest(src, Some("app.yaml"), Target::Local).expect_err("expected errors").diagnostics
}

fn has(diags: &[Diagnostic], path: &str, needle: &str) -> bool {
    diags.iter().any(|d| d.path == path && d.message.contains(needle))
}

#[test]
fn a_good_manifest_normalises() {
    let parsed = parse_manifest(GOOD, Some("app.yaml"), Target::Local).unwrap();
    let app = &parsed.apps[0];
    assert_eq!(app.name, "shop");
    let fe = app.component("frontend").unwrap();
    assert_eq!(fe.replicas, 2);
    assert_eq!(fe.env.get("GREETING").map(String::as_str), Some("hello"));
    assert_eq!(fe.env.get("EXTRA").map(String::as_str), Some("1"));
    assert_eq!(fe.labels.get("tier").map(String::as_str), Some("web"));
    assert_eq!(fe.depends_on, vec!["catalogue"]);
    let cat = app.component("catalogue").unwrap();
    assert_eq!(cat.ports[0].port, 8081, "legacy `port` is accepted");
    let report = app.component("report").unwrap();
    assert_eq!(report.schedule.as_ref().unwrap().concurrency_policy, ConcurrencyPolicy::Forbid);
    assert_eq!(report.job.as_ref().unwrap().backoff_limit, 6);
}

#[test]
fn identical_manifests_hash_identically_and_changes_do_not() {
    let a = parse_manifest(GOOD, None, Target::Local).unwrap().apps.remove(0);
    let b = parse_manifest(GOOD, None, Target::Local).unwrap().apps.remove(0);
    assert_eq!(a.content_hash(), b.content_hash());
    let c = parse_manifest(&GOOD.replace("value: hello", "value: bye"), None, Target::Local)
        .unwrap()
        .apps
        .remove(0);
    assert_ne!(a.content_hash(), c.content_hash());
    // Only the changed component's spec hash moves.
    let (fa, fc) = (a.component("frontend").unwrap(), c.component("frontend").unwrap());
    assert_ne!(fa.spec_hash(), fc.spec_hash());
    assert_eq!(a.component("mailer").unwrap().spec_hash(), c.component("mailer").unwrap().spec_hash());
    // Replicas are not part of the spec hash.
    let d = parse_manifest(&GOOD.replace("replicas: 2", "replicas: 3"), None, Target::Local)
        .unwrap()
        .apps
        .remove(0);
    assert_eq!(fa.spec_hash(), d.component("frontend").unwrap().spec_hash());
}

#[test]
fn malformed_yaml_is_located() {
    let d = errors("apiVersion: core.oam.dev/v1beta1\nkind: [Application\n");
    assert_eq!(d.len(), 1);
    assert!(d[0].message.starts_with("invalid YAML"), "{}", d[0]);
    assert!(d[0].to_string().starts_with("app.yaml:"), "{}", d[0]);
}

#[test]
fn all_errors_are_reported_at_once_with_positions_and_suggestions() {
    let src = GOOD
        .replace("type: worker", "type: workr")
        .replace("replicas: 2", "replicas: many")
        .replace("schedule: \"*/5 * * * *\"", "schedule: \"99 * * * *\"")
        .replace("expose: true", "expose: true\n            exposed: 1");
    let d = errors(&src);
    assert!(has(&d, "spec.components[2].type", "did you mean \"worker\""), "{d:#?}");
    assert!(has(&d, "spec.components[0].traits[0].properties.replicas", "invalid type"), "{d:#?}");
    assert!(has(&d, "spec.components[3].properties.schedule", "invalid cron"), "{d:#?}");
    assert!(has(&d, "spec.components[0].properties.ports[0].exposed", "unknown field"), "{d:#?}");
    let worker = d.iter().find(|x| x.path == "spec.components[2].type").unwrap();
    assert_eq!((worker.line, worker.column), (42, 7));
    assert_eq!(src.lines().nth(41).map(str::trim), Some("type: workr"));
}

#[test]
fn unknown_property_and_trait_get_suggestions() {
    let d = errors(&GOOD.replace("cmd: [\"./shop\", \"worker\"]", "comand: [\"./shop\"]"));
    assert!(has(&d, "spec.components[2].properties.comand", "did you mean \"cmd\""), "{d:#?}");
    let d = errors(&GOOD.replace("type: scaler", "type: scalar"));
    assert!(has(&d, "spec.components[0].traits[0].type", "did you mean \"scaler\""), "{d:#?}");
    let d = errors(&GOOD.replace("type: scaler", "type: cpuscaler"));
    assert!(has(&d, "spec.components[0].traits[0].type", "not supported by Yun yet"), "{d:#?}");
    // A worker has no ports.
    let d = errors(&GOOD.replace("cmd: [\"./shop\", \"worker\"]", "cmd: [w]\n        ports: [{port: 1}]"));
    assert!(has(&d, "spec.components[2].properties.ports", "unknown property"), "{d:#?}");
}

#[test]
fn duplicate_names_cycles_and_unknown_dependencies() {
    let d = errors(&GOOD.replace("name: mailer", "name: catalogue"));
    assert!(has(&d, "spec.components[2].name", "duplicate component name"), "{d:#?}");
    let src = GOOD.replace(
        "name: catalogue\n      type: webservice",
        "name: catalogue\n      type: webservice\n      dependsOn: [frontend]",
    );
    let d = errors(&src);
    assert!(d.iter().any(|x| x.message.contains("dependency cycle")), "{d:#?}");
    let d = errors(&GOOD.replace("dependsOn: [catalogue]", "dependsOn: [catalog]"));
    assert!(has(&d, "spec.components[0].dependsOn[0]", "did you mean \"catalogue\""), "{d:#?}");
    let d = errors(&GOOD.replace("dependsOn: [catalogue]", "dependsOn: [frontend]"));
    assert!(has(&d, "spec.components[0].dependsOn[0]", "itself"), "{d:#?}");
}

#[test]
fn same_fixed_port_in_two_components_is_refused() {
    let d = errors(&GOOD.replace("port: 8081", "port: 8080"));
    assert!(d.iter().any(|x| x.message.contains("port 8080 is already used")), "{d:#?}");
}

#[test]
fn image_without_cmd_warns_for_validate_and_fails_locally() {
    let src = GOOD.replace("        cmd: [\"./shop\", \"catalogue\"]\n", "");
    let ok = parse_manifest(&src, None, Target::Any).unwrap();
    assert!(ok.warnings.iter().any(|w| w.message.contains("Kubernetes only")));
    let d = errors(&src);
    assert!(has(&d, "spec.components[1].properties.cmd", "cannot run locally"), "{d:#?}");
}

#[test]
fn unsupported_kubevela_parts_are_refused_by_name() {
    let src = format!("{GOOD}  policies:\n    - name: t\n      type: topology\n  workflow:\n    steps: []\n");
    let d = errors(&src);
    assert!(has(&d, "spec.policies", "topology"), "{d:#?}");
    assert!(has(&d, "spec.workflow", "not supported"), "{d:#?}");
    let d = errors(&GOOD.replace("type: worker", "type: helm"));
    assert!(has(&d, "spec.components[2].type", "not supported by Yun yet"), "{d:#?}");
}

#[test]
fn hostile_and_contradictory_values() {
    let d = errors(&GOOD.replace("port: 8081", "port: 70000"));
    assert!(has(&d, "spec.components[1].properties.port", "invalid value"), "{d:#?}");
    let d = errors(&GOOD.replace("port: 8081", "port: 8081\n        ports: [{port: 9}]"));
    assert!(has(&d, "spec.components[1].properties.port", "not both"), "{d:#?}");
    let d = errors(&GOOD.replace("replicas: 2", "replicas: 100000"));
    assert!(has(&d, "spec.components[0].traits[0].properties.replicas", "at most"), "{d:#?}");
    let d = errors(&GOOD.replace("name: shop", "name: Shop_App"));
    assert!(has(&d, "metadata.name", "invalid name"), "{d:#?}");
    let d = errors(
        &GOOD.replace("path: /healthz\n            port: 8080", "path: /healthz\n            port: 9999"),
    );
    assert!(
        has(&d, "spec.components[0].properties.readinessProbe.httpGet.port", "not a declared port"),
        "{d:#?}"
    );
    let d = errors(&GOOD.replace(
        "httpGet:\n            path: /healthz\n            port: 8080",
        "httpGet: {path: /}\n          tcpSocket: {port: 8080}",
    ));
    assert!(has(&d, "spec.components[0].properties.readinessProbe", "exactly one"), "{d:#?}");
    let d = errors(&GOOD.replace("kind: Application", "kind: Deployment"));
    assert!(has(&d, "kind", "accepted: Application"), "{d:#?}");
    let d = errors(&GOOD.replace("cmd: [\"./shop\", \"worker\"]", "cmd: []"));
    assert!(has(&d, "spec.components[2].properties.cmd", "must name a program"), "{d:#?}");
    let d = errors("");
    assert!(d[0].message.contains("empty"));
    let d = errors("- just\n- a list\n");
    assert!(d[0].message.contains("expected a mapping"));
}

#[test]
fn multi_document_manifests_yield_several_apps() {
    let second = GOOD.replace("name: shop", "name: shop-two");
    let parsed = parse_manifest(&format!("{GOOD}---\n{second}"), None, Target::Local).unwrap();
    assert_eq!(parsed.apps.len(), 2);
    let d = errors(&format!("{GOOD}---\n{GOOD}"));
    assert!(d.iter().any(|x| x.message.contains("defined twice")), "{d:#?}");
}

/// KubeVela-style manifests in `tests/kubevela`: what Yun runs is accepted, what it does not
/// run yet is refused by name with a position, and image-only components are a warning.
#[test]
fn kubevela_style_manifests_are_judged_by_name() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kubevela");
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let legacy = parse_manifest(&read("legacy-port.yaml"), Some("legacy-port.yaml"), Target::Local).unwrap();
    let web = legacy.apps[0].component("express-server").unwrap();
    assert_eq!((web.ports[0].port, web.replicas), (8000, 2));
    assert!(legacy.warnings.iter().any(|w| w.path == "metadata.namespace"));

    let images = parse_manifest(&read("image-only.yaml"), Some("image-only.yaml"), Target::Any).unwrap();
    assert!(images.warnings.iter().any(|w| w.message.contains("Kubernetes only")));
    assert!(parse_manifest(&read("image-only.yaml"), None, Target::Local).is_err());

    let d = parse_manifest(&read("unsupported.yaml"), Some("unsupported.yaml"), Target::Any)
        .unwrap_err()
        .diagnostics;
    for (path, needle) in [
        ("spec.components[0].traits[0].type", "trait \"hpa\" is not supported by Yun yet"),
        ("spec.components[1].type", "component type \"helm\" is not supported by Yun yet"),
        ("spec.policies", "topology"),
        ("spec.workflow", "workflows are not supported"),
    ] {
        assert!(has(&d, path, needle), "{path}: {d:#?}");
    }
    assert!(d.iter().all(|x| x.line > 1 && x.file.as_deref() == Some("unsupported.yaml")));
}

fn with_resilience(props: &str) -> String {
    GOOD.replace(
        "        - type: labels\n          properties:\n            tier: web\n",
        &format!("        - type: labels\n          properties:\n            tier: web\n        - type: resilience\n          properties:\n{props}"),
    )
}

#[test]
fn resilience_trait_is_parsed_with_defaults() {
    let src = with_resilience(
        "            timeout: 2s\n            retries: {attempts: 3}\n            circuitBreaker: {strategy: errorRatio, threshold: 0.5}\n            rateLimit: {qps: 100, behavior: warmUp, coldFactor: 4}\n            concurrency: {limit: 10, queue: 5, queueTimeout: 200ms}\n            routes:\n              - match: {pathPrefix: /slow, methods: [GET]}\n                timeout: 10s\n",
    );
    let app = parse_manifest(&src, None, Target::Local).unwrap().apps.remove(0);
    let r = app.component("frontend").unwrap().resilience.clone().unwrap();
    assert_eq!(r.policy.timeout.unwrap().0, std::time::Duration::from_secs(2));
    let retries = r.policy.retries.unwrap();
    assert_eq!((retries.attempts, retries.budget_ratio), (3, 0.2));
    assert_eq!(retries.on, vec![RetryOn::ConnectFailure, RetryOn::GatewayError]);
    assert_eq!(r.policy.circuit_breaker.unwrap().min_requests, 5);
    assert_eq!(r.routes[0].matches.path_prefix.as_deref(), Some("/slow"));
    assert_eq!(r.routes[0].policy.timeout.unwrap().0, std::time::Duration::from_secs(10));
    // Policies are not part of the spec hash: changing them replaces no instance.
    let plain = parse_manifest(GOOD, None, Target::Local).unwrap().apps.remove(0);
    assert_eq!(
        plain.component("frontend").unwrap().spec_hash(),
        app.component("frontend").unwrap().spec_hash()
    );
    assert_ne!(plain.content_hash(), app.content_hash());
}

#[test]
fn contradictory_and_out_of_range_policies_are_refused_with_paths() {
    let at = "spec.components[0].traits[3].properties";
    let cases = [
        ("            timeout: 1s\n            perTryTimeout: 2s\n", "perTryTimeout", "longer than timeout"),
        ("            timeout: soon\n", "timeout", "invalid duration"),
        (
            "            retries: {backoffBase: 1s, backoffMax: 100ms}\n",
            "retries.backoffBase",
            "longer than backoffMax",
        ),
        ("            retries: {on: [timeout]}\n", "retries.on", "perTryTimeout"),
        ("            retries: {on: [sometimes]}\n", "retries.on[0]", "unknown variant"),
        (
            "            circuitBreaker: {strategy: errorRatio, threshold: 2}\n",
            "circuitBreaker.threshold",
            "between 0 and 1",
        ),
        (
            "            circuitBreaker: {strategy: slowRatio, threshold: 0.5}\n",
            "circuitBreaker.slowCallThreshold",
            "needs slowCallThreshold",
        ),
        ("            rateLimit: {qps: 0}\n", "rateLimit.qps", "above 0"),
        ("            rateLimit: {qps: 10, coldFactor: 3}\n", "rateLimit", "behavior: warmUp"),
        (
            "            rateLimit: {qps: 10, behavior: warmUp, coldFactor: 1}\n",
            "rateLimit.coldFactor",
            "above 1",
        ),
        (
            "            rateLimit: {qps: 10, maxQueueingTime: 1s}\n",
            "rateLimit.maxQueueingTime",
            "behavior: queue",
        ),
        ("            concurrency: {limit: 0}\n", "concurrency.limit", "between 1"),
        (
            "            concurrency: {limit: 2, queueTimeout: 1s}\n",
            "concurrency.queueTimeout",
            "queue above 0",
        ),
        ("            retrys: {}\n", "retrys", "unknown field"),
        ("            routes:\n              - {timeout: 1s}\n", "routes[0]", "needs \"match\""),
        (
            "            routes:\n              - match: {pathPrefix: api}\n",
            "routes[0].match.pathPrefix",
            "start with '/'",
        ),
        (
            "            routes:\n              - match: {methods: [FETCH]}\n",
            "routes[0].match.methods[0]",
            "unknown method",
        ),
        (
            "            routes:\n              - match: {sources: [Shop]}\n",
            "routes[0].match.sources[0]",
            "app/component or external",
        ),
        (
            "            routes:\n              - match: {}\n",
            "routes[0].match",
            "pathPrefix, methods and/or sources",
        ),
    ];
    for (props, field, needle) in cases {
        let d = errors(&with_resilience(props));
        assert!(has(&d, &format!("{at}.{field}"), needle), "{field}: {d:#?}");
    }
    // Only webservices have an address to guard.
    let src = GOOD.replace(
        "        cmd: [\"./shop\", \"worker\"]\n",
        "        cmd: [\"./shop\", \"worker\"]\n      traits: [{type: resilience, properties: {timeout: 1s}}]\n",
    );
    let d = errors(&src);
    assert!(d.iter().any(|x| x.message.contains("applies to requests to a webservice")), "{d:#?}");
}

#[test]
fn traffic_trait_is_validated() {
    let with_traffic = |props: &str| {
        GOOD.replace(
            "        - type: labels\n          properties:\n            tier: web\n",
            &format!("        - type: labels\n          properties:\n            tier: web\n        - type: traffic\n          properties:\n{props}"),
        )
    };
    let app = parse_manifest(&with_traffic("            loadBalancer: least-request\n"), None, Target::Local)
        .unwrap()
        .apps
        .remove(0);
    assert_eq!(
        app.component("frontend").unwrap().traffic.as_ref().unwrap().load_balancer,
        LoadBalancer::LeastRequest
    );
    let at = "spec.components[0].traits[3].properties";
    for (props, field, needle) in [
        ("            loadBalancer: random\n", "loadBalancer", "unknown variant"),
        ("            faults: [{abort: {status: 200, percent: 10}}]\n", "faults[0].abort.status", "400–599"),
        (
            "            faults: [{delay: {duration: 1s, percent: 101}}]\n",
            "faults[0].delay.percent",
            "between 0 and 100",
        ),
        ("            faults: [{match: {pathPrefix: /x}}]\n", "faults[0]", "delay and/or abort"),
        (
            "            faults: [{match: {pathPrefix: x}, abort: {status: 500, percent: 1}}]\n",
            "faults[0].match.pathPrefix",
            "start with '/'",
        ),
    ] {
        let d = errors(&with_traffic(props));
        assert!(has(&d, &format!("{at}.{field}"), needle), "{field}: {d:#?}");
    }
}

#[test]
fn traffic_targets_and_weights_are_validated() {
    let with_traffic = |props: &str| {
        GOOD.replace(
            "        - type: labels\n          properties:\n            tier: web\n",
            &format!("        - type: labels\n          properties:\n            tier: web\n        - type: traffic\n          properties:\n{props}"),
        )
    };
    let ok = parse_manifest(
        &with_traffic("            split: [{component: catalogue, weight: 5}]\n"),
        None,
        Target::Local,
    )
    .unwrap();
    assert_eq!(ok.apps[0].component("frontend").unwrap().traffic.as_ref().unwrap().split[0].weight, 5);
    let at = "spec.components[0].traits[3].properties";
    for (props, field, needle) in [
        (
            "            split: [{component: catalogue, weight: 60}, {component: catalogue, weight: 50}]\n",
            "split",
            "at most 100",
        ),
        (
            "            split: [{component: catalog, weight: 5}]\n",
            "split[0].component",
            "did you mean \"catalogue\"",
        ),
        ("            split: [{component: frontend, weight: 5}]\n", "split[0].component", "itself"),
        ("            split: [{component: mailer, weight: 5}]\n", "split[0].component", "is a worker"),
        ("            mirror: {component: report, percent: 5}\n", "mirror.component", "is a cron-task"),
        (
            "            routes: [{match: {}, component: catalogue}]\n",
            "routes[0].match",
            "headers and/or cookie",
        ),
        (
            "            routes: [{match: {cookie: novalue}, component: catalogue}]\n",
            "routes[0].match.cookie",
            "name=value",
        ),
        (
            "            routes: [{match: {headers: {\"bad header\": x}}, component: catalogue}]\n",
            "routes[0].match.headers",
            "invalid header name",
        ),
        (
            "            split: [{component: catalogue, revision: 1, weight: 5}]\n",
            "split[0]",
            "either component or revision",
        ),
        ("            split: [{weight: 5}]\n", "split[0]", "either component or revision"),
        ("            split: [{revision: 0, weight: 5}]\n", "split[0].revision", "count from 1"),
    ] {
        let d = errors(&with_traffic(props));
        assert!(has(&d, &format!("{at}.{field}"), needle), "{field}: {d:#?}");
    }
}
