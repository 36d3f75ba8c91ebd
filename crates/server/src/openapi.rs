//! The API's OpenAPI 3.1 description, served at `/openapi.json` and printed by `yun api-spec`.

use serde_json::{Value, json};

fn op(summary: &str, params: &[(&str, &str, &str)], body: Option<&str>, ok: &str) -> Value {
    let parameters: Vec<Value> = params
        .iter()
        .map(|(name, place, ty)| {
            json!({"name": name, "in": place, "required": *place == "path", "schema": {"type": ty}})
        })
        .collect();
    let mut o = json!({
        "summary": summary,
        "parameters": parameters,
        "responses": {
            "200": {"description": ok, "content": {"application/json": {"schema": {"type": "object"}}}},
            "401": {"$ref": "#/components/responses/Unauthorized"},
            "404": {"$ref": "#/components/responses/Error"},
            "422": {"$ref": "#/components/responses/Error"}
        }
    });
    if let Some(schema) = body {
        o["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    }
    o
}

/// The OpenAPI document.
pub fn openapi_spec() -> Value {
    let name = ("name", "path", "string");
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Yun control plane API", "version": "v1",
                 "description": "Every route needs `Authorization: Bearer <token>`; the token is in YUN_HOME/token (mode 0600). Errors are JSON objects with an `error` string."},
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/version": {"get": op("Daemon version", &[], None, "version")},
            "/api/v1/apply": {"post": op("Validate and apply a manifest; creates a revision per changed app", &[], Some("Manifest"), "applied apps with revision and whether it is new")},
            "/api/v1/diff": {"post": op("What applying a manifest would change", &[], Some("Manifest"), "per app, per component changes")},
            "/api/v1/apps": {"get": op("All applications with status", &[], None, "apps")},
            "/api/v1/apps/{name}": {
                "get": op("One application's status: phase, per-component instances", &[name], None, "status"),
                "delete": op("Delete an application (202; with wait=true, 200 once everything stopped)", &[name, ("wait", "query", "boolean")], None, "deleted")
            },
            "/api/v1/apps/{name}/revisions": {"get": op("Revision history", &[name], None, "revisions")},
            "/api/v1/apps/{name}/revisions/{number}": {"get": op("One revision with its manifest and spec", &[name, ("number", "path", "integer")], None, "revision")},
            "/api/v1/apps/{name}/rollback": {"post": op("Make a copy of an earlier revision current (default: the previous one)", &[name], Some("Rollback"), "new revision")},
            "/api/v1/apps/{name}/scale": {"post": op("Override a component's replicas until the next new revision", &[name], Some("Scale"), "scaled")},
            "/api/v1/apps/{name}/stop": {"post": op("Stop all instances, keeping the app; the next apply starts it", &[name], None, "stopped")},
            "/api/v1/apps/{name}/logs": {"get": op("Instance output as newline-delimited JSON", &[name, ("component", "query", "string"), ("instance", "query", "string"), ("since", "query", "string"), ("tail", "query", "integer"), ("follow", "query", "boolean"), ("grep", "query", "string"), ("trace", "query", "string")], None, "log lines")},
            "/metrics": {"get": {"summary": "Prometheus metrics (OpenMetrics text)", "responses": {"200": {"description": "metrics", "content": {"application/openmetrics-text": {}}}, "401": {"$ref": "#/components/responses/Unauthorized"}}}},
            "/api/v1/apps/{name}/metrics": {"get": op("Golden signals per component and per caller → component edge, and CPU/memory per component, one point per 5 s for up to an hour", &[name, ("window", "query", "string")], None, "series")},
            "/api/v1/apps/{name}/slo": {"get": op("Service level objectives: compliance, error budget left, burn rates over 5 minutes and an hour", &[name], None, "objectives")},
            "/api/v1/events": {"get": op("Event and audit log", &[("app", "query", "string"), ("after", "query", "integer"), ("limit", "query", "integer")], None, "events")},
            "/api/v1/traces": {"get": op("Search kept traces, newest first (status: error or any; minDuration like 100ms; since like 10m)", &[("app", "query", "string"), ("service", "query", "string"), ("status", "query", "string"), ("minDuration", "query", "string"), ("since", "query", "string"), ("limit", "query", "integer")], None, "trace summaries")},
            "/api/v1/traces/{id}": {"get": op("Every span of one trace, earliest first", &[("id", "path", "string")], None, "spans")}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Unauthorized": {"description": "missing or wrong token; nothing was read or changed", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "Error": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}, "diagnostics": {"type": "array", "items": {"type": "object"}}}},
                "Manifest": {"type": "object", "required": ["manifest", "base_dir"], "additionalProperties": false, "properties": {
                    "manifest": {"type": "string", "description": "KubeVela Application YAML, one or more documents"},
                    "file": {"type": "string", "description": "file name for error messages"},
                    "base_dir": {"type": "string", "description": "absolute directory relative paths are resolved against"}}},
                "Rollback": {"type": "object", "additionalProperties": false, "properties": {"to": {"type": "integer", "minimum": 1}}},
                "Scale": {"type": "object", "required": ["component", "replicas"], "additionalProperties": false, "properties": {"component": {"type": "string"}, "replicas": {"type": "integer", "minimum": 0, "maximum": 1000}}}
            }
        }
    })
}
