//! Manifest → validated [`App`]s, reporting every problem at once with its position.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::app::{App, Component, ComponentKind, JobSpec, ScheduleSpec};
use crate::resilience::{Policy, Resilience, Route, RouteMatch};
use crate::spec::{self, EnvTrait, MetadataTrait, Probe, Properties, Protocol, ScalerTrait};
use crate::yaml::{self, Document, Pos};

/// The API version Yun reads.
pub const API_VERSION: &str = "core.oam.dev/v1beta1";

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The manifest is refused.
    Error,
    /// Accepted, but the user should know.
    Warning,
}

/// One finding, located in the source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Line, 1-based.
    pub line: usize,
    /// Column, 1-based.
    pub column: usize,
    /// Field path, e.g. `spec.components[1].traits[0].properties.replicas`.
    pub path: String,
    /// What is wrong and what would be accepted.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.as_deref().unwrap_or("<manifest>");
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{file}:{}:{}: {sev}: ", self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Where the manifest is meant to run; decides whether an `image` without `cmd` is fine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Judge the manifest itself (`yun validate`): image-only components get a warning.
    Any,
    /// Run on this machine: every component needs `cmd`.
    Local,
}

/// A manifest that was accepted.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// One app per `Application` document.
    pub apps: Vec<App>,
    /// Warnings found along the way.
    pub warnings: Vec<Diagnostic>,
}

/// A manifest that was refused: all errors, and the warnings too.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render(.diagnostics))]
pub struct ManifestError {
    /// Every finding, errors first in source order.
    pub diagnostics: Vec<Diagnostic>,
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

/// Parses and validates a manifest with one or more `Application` documents.
pub fn parse_manifest(source: &str, file: Option<&str>, target: Target) -> Result<Parsed, ManifestError> {
    let file = file.map(str::to_string);
    let documents = yaml::parse_documents(source).map_err(|e| ManifestError {
        diagnostics: vec![Diagnostic {
            severity: Severity::Error,
            file: file.clone(),
            line: e.pos.line,
            column: e.pos.column,
            path: String::new(),
            message: format!("invalid YAML: {}", e.message),
        }],
    })?;
    let mut apps = Vec::new();
    let mut out = Findings { file, diagnostics: Vec::new() };
    let mut names = HashMap::new();
    for doc in documents.iter().filter(|d| !d.value.is_null()) {
        let mut ctx = Ctx { doc, out: &mut out, target };
        if let Some(app) = ctx.application() {
            if let Some(first) = names.insert(app.name.clone(), doc.start) {
                ctx.error(
                    "metadata.name",
                    format!(
                        "application \"{}\" is defined twice in this file (first at line {})",
                        app.name, first.line
                    ),
                );
            }
            apps.push(app);
        }
    }
    if documents.iter().all(|d| d.value.is_null()) {
        out.diagnostics.push(Diagnostic {
            severity: Severity::Error,
            file: out.file.clone(),
            line: 1,
            column: 1,
            path: String::new(),
            message: "the manifest is empty: expected an Application document".into(),
        });
    }
    let has_errors = out.diagnostics.iter().any(|d| d.severity == Severity::Error);
    let mut diagnostics = out.diagnostics;
    diagnostics.sort_by_key(|d| (d.severity == Severity::Warning, d.line, d.column));
    if has_errors { Err(ManifestError { diagnostics }) } else { Ok(Parsed { apps, warnings: diagnostics }) }
}

struct Findings {
    file: Option<String>,
    diagnostics: Vec<Diagnostic>,
}

struct Ctx<'a> {
    doc: &'a Document,
    out: &'a mut Findings,
    target: Target,
}

/// Closest candidate by edit distance, when it is close enough to be a likely typo.
pub fn did_you_mean<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 2).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn suggestion(word: &str, candidates: &[&str]) -> String {
    let mut s = String::new();
    if let Some(best) = did_you_mean(word, candidates) {
        s.push_str(&format!("; did you mean \"{best}\"?"));
    }
    s.push_str(&format!(" (accepted: {})", candidates.join(", ")));
    s
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

impl Ctx<'_> {
    fn push(&mut self, severity: Severity, path: &str, message: String) {
        let Pos { line, column } = self.doc.pos(path);
        self.out.diagnostics.push(Diagnostic {
            severity,
            file: self.out.file.clone(),
            line,
            column,
            path: path.to_string(),
            message,
        });
    }

    fn error(&mut self, path: &str, message: String) {
        self.push(Severity::Error, path, message);
    }

    fn warn(&mut self, path: &str, message: String) {
        self.push(Severity::Warning, path, message);
    }

    fn errors(&self) -> usize {
        self.out.diagnostics.iter().filter(|d| d.severity == Severity::Error).count()
    }

    fn object<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v Map<String, Value>> {
        match value {
            Value::Object(m) => Some(m),
            other => {
                self.error(path, format!("expected a mapping, found {}", type_name(other)));
                None
            }
        }
    }

    fn string(&mut self, map: &Map<String, Value>, key: &str, path: &str) -> Option<String> {
        let at = join(path, key);
        match map.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::String(_)) | None => {
                self.error(&at, format!("\"{key}\" is required"));
                None
            }
            Some(other) => {
                self.error(&at, format!("expected a string, found {}", type_name(other)));
                None
            }
        }
    }

    /// Deserialises one field of a typed struct, reporting the nested path on failure.
    fn field_ok<T: DeserializeOwned>(&mut self, key: &str, value: &Value, path: &str) -> bool {
        let single = Value::Object(Map::from_iter([(key.to_string(), value.clone())]));
        match serde_path_to_error::deserialize::<_, T>(single) {
            Ok(_) => true,
            Err(e) => {
                let inner = e.path().to_string();
                let at = if inner == "." { join(path, key) } else { join(path, &inner) };
                self.error(&at, e.into_inner().to_string());
                false
            }
        }
    }

    fn typed<T: DeserializeOwned>(&mut self, value: &Value, path: &str) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                let inner = e.path().to_string();
                let at = if inner == "." { path.to_string() } else { join(path, &inner) };
                self.error(&at, e.into_inner().to_string());
                None
            }
        }
    }

    fn application(&mut self) -> Option<App> {
        let errors_before = self.errors();
        let root = self.object(&self.doc.value, "")?;
        for key in root.keys() {
            if !["apiVersion", "kind", "metadata", "spec", "status"].contains(&key.as_str()) {
                let msg = format!(
                    "unknown top-level field \"{key}\"{}",
                    suggestion(key, &["apiVersion", "kind", "metadata", "spec"])
                );
                self.error(key, msg);
            }
        }
        if let Some(v) = self.string(root, "apiVersion", "")
            && v != API_VERSION
        {
            self.error("apiVersion", format!("unsupported apiVersion \"{v}\" (accepted: {API_VERSION})"));
        }
        if let Some(k) = self.string(root, "kind", "")
            && k != "Application"
        {
            self.error("kind", format!("unsupported kind \"{k}\" (accepted: Application)"));
        }
        if root.contains_key("status") {
            self.warn("status", "\"status\" is written by the platform and is ignored".into());
        }
        let (name, labels, annotations) = self.metadata(root.get("metadata"));
        let components = match root.get("spec") {
            Some(spec) => self.spec(spec),
            None => {
                self.error("spec", "\"spec\" is required".into());
                Vec::new()
            }
        };
        if self.errors() > errors_before {
            return None;
        }
        Some(App { name: name?, labels, annotations, components })
    }

    #[allow(clippy::type_complexity)]
    fn metadata(
        &mut self,
        value: Option<&Value>,
    ) -> (Option<String>, BTreeMap<String, String>, BTreeMap<String, String>) {
        let mut out = (None, BTreeMap::new(), BTreeMap::new());
        let Some(value) = value else {
            self.error("metadata", "\"metadata\" with a \"name\" is required".into());
            return out;
        };
        let Some(meta) = self.object(value, "metadata") else { return out };
        if let Some(name) = self.string(meta, "name", "metadata") {
            if is_dns_label(&name) {
                out.0 = Some(name);
            } else {
                self.error(
                    "metadata.name",
                    format!(
                        "invalid name \"{name}\": use at most 63 lower-case letters, digits and \
                         '-', starting and ending with a letter or digit"
                    ),
                );
            }
        }
        for (key, v) in meta {
            let path = join("metadata", key);
            match key.as_str() {
                "name" => {}
                "labels" => out.1 = self.typed(v, &path).unwrap_or_default(),
                "annotations" => out.2 = self.typed(v, &path).unwrap_or_default(),
                "namespace" => self.warn(
                    &path,
                    "namespaces apply on Kubernetes; locally, apps are identified by name".into(),
                ),
                _ => self.warn(&path, format!("metadata field \"{key}\" is ignored")),
            }
        }
        out
    }

    fn spec(&mut self, value: &Value) -> Vec<Component> {
        let Some(spec) = self.object(value, "spec") else { return Vec::new() };
        for (key, v) in spec {
            let path = join("spec", key);
            match key.as_str() {
                "components" => {}
                "policies" => {
                    let kinds: Vec<&str> = v
                        .as_array()
                        .map(|a| a.iter().filter_map(|p| p.get("type")?.as_str()).collect())
                        .unwrap_or_default();
                    self.error(
                        &path,
                        format!(
                            "policies are not supported by Yun yet (found: {}); remove them to \
                             run locally",
                            if kinds.is_empty() { "-".into() } else { kinds.join(", ") }
                        ),
                    );
                }
                "workflow" => self.error(
                    &path,
                    "workflows are not supported by Yun yet; components start in dependsOn order".into(),
                ),
                _ => {
                    let msg = format!(
                        "unknown field \"{key}\"{}",
                        suggestion(key, &["components", "policies", "workflow"])
                    );
                    self.error(&path, msg)
                }
            }
        }
        let items = match spec.get("components") {
            Some(Value::Array(items)) if !items.is_empty() => items,
            Some(Value::Array(_)) | None => {
                self.error("spec.components", "at least one component is required".into());
                return Vec::new();
            }
            Some(other) => {
                let msg = format!("expected a list of components, found {}", type_name(other));
                self.error("spec.components", msg);
                return Vec::new();
            }
        };
        let mut components = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("spec.components[{i}]");
            let name = item.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            if !name.is_empty()
                && let Some(first) = seen.insert(name.clone(), i)
            {
                self.error(
                    &join(&path, "name"),
                    format!("duplicate component name \"{name}\" (also spec.components[{first}])"),
                );
            }
            if let Some(c) = self.component(item, &path) {
                components.push(c);
            }
        }
        self.check_dependencies(&components, items);
        self.check_mirrors(&components, items);
        self.check_fixed_ports(&components);
        components
    }

    fn component(&mut self, value: &Value, path: &str) -> Option<Component> {
        let errors_before = self.errors();
        let map = self.object(value, path)?;
        const KEYS: &[&str] = &["name", "type", "properties", "traits", "dependsOn"];
        for key in map.keys() {
            let at = join(path, key);
            match key.as_str() {
                k if KEYS.contains(&k) => {}
                "externalRevision" | "inputs" | "outputs" | "scopes" => self.error(
                    &at,
                    format!("component \"{key}\" is a KubeVela feature Yun does not support yet"),
                ),
                _ => {
                    let msg = format!("unknown field \"{key}\"{}", suggestion(key, KEYS));
                    self.error(&at, msg)
                }
            }
        }
        let name = self.string(map, "name", path);
        if let Some(n) = &name
            && !is_dns_label(n)
        {
            self.error(
                &join(path, "name"),
                format!(
                    "invalid component name \"{n}\": use at most 63 lower-case letters, \
                         digits and '-', starting and ending with a letter or digit"
                ),
            );
        }
        let type_path = join(path, "type");
        let kind = match self.string(map, "type", path).as_deref() {
            Some("webservice") => Some(ComponentKind::Webservice),
            Some("worker") => Some(ComponentKind::Worker),
            Some("task") => Some(ComponentKind::Task),
            Some("cron-task") => Some(ComponentKind::CronTask),
            Some(t) => {
                let t = t.split('@').next().unwrap_or(t);
                let msg = if spec::UNSUPPORTED_COMPONENT_TYPES.contains(&t) {
                    format!(
                        "component type \"{t}\" is not supported by Yun yet (accepted: {})",
                        spec::COMPONENT_TYPES.join(", ")
                    )
                } else {
                    format!("unknown component type \"{t}\"{}", suggestion(t, spec::COMPONENT_TYPES))
                };
                self.error(&type_path, msg);
                None
            }
            None => None,
        };
        let depends_on: Vec<String> = match map.get("dependsOn") {
            Some(v) => self.typed(v, &join(path, "dependsOn")).unwrap_or_default(),
            None => Vec::new(),
        };
        let kind = kind?;
        let props_path = join(path, "properties");
        let (props, invalid) = match map.get("properties") {
            Some(v) => self.properties(kind, v, &props_path),
            None => Default::default(),
        };
        let mut component = self.build(name.clone()?, kind, props, &invalid, depends_on, &props_path);
        if let Some(traits) = map.get("traits") {
            self.traits(&mut component, traits, &join(path, "traits"));
        }
        (self.errors() == errors_before).then_some(component)
    }

    /// The valid properties, and the names of those that were present but invalid (so that
    /// later checks do not also call them missing).
    fn properties(
        &mut self,
        kind: ComponentKind,
        value: &Value,
        path: &str,
    ) -> (Properties, BTreeSet<String>) {
        let Some(map) = self.object(value, path) else { return Default::default() };
        let allowed = spec::allowed_properties(kind.as_str());
        let mut accepted = Map::new();
        let mut invalid = BTreeSet::new();
        for (key, v) in map {
            let at = join(path, key);
            if allowed.contains(&key.as_str()) {
                // Check each field on its own so that every bad field is reported.
                if self.field_ok::<Properties>(key, v, path) {
                    accepted.insert(key.clone(), v.clone());
                } else {
                    invalid.insert(key.clone());
                }
            } else if let Some(reason) = spec::unsupported_property(key) {
                self.error(&at, format!("property \"{key}\" is not supported: {reason}"));
            } else {
                let msg = format!(
                    "unknown property \"{key}\" for a {}{}",
                    kind.as_str(),
                    suggestion(key, &allowed)
                );
                self.error(&at, msg);
            }
        }
        let props = serde_json::from_value(Value::Object(accepted)).unwrap_or_default();
        (props, invalid)
    }

    fn build(
        &mut self,
        name: String,
        kind: ComponentKind,
        p: Properties,
        invalid: &BTreeSet<String>,
        depends_on: Vec<String>,
        path: &str,
    ) -> Component {
        let cmd = p.cmd.clone().unwrap_or_default();
        if p.cmd.is_some() && cmd.first().is_none_or(|c| c.trim().is_empty()) {
            self.error(&join(path, "cmd"), "\"cmd\" must name a program to run".into());
        }
        if cmd.is_empty() {
            match (&p.image, self.target) {
                (Some(_), Target::Any) => self.warn(
                    &join(path, "image"),
                    "\"image\" without \"cmd\" runs on Kubernetes only; add \"cmd\" to run it \
                     locally"
                        .into(),
                ),
                (Some(_), Target::Local) => self.error(
                    &join(path, "cmd"),
                    "\"image\" without \"cmd\" cannot run locally (Yun runs processes, not \
                     containers): add \"cmd\", the command that starts the service"
                        .into(),
                ),
                (None, _) if p.cmd.is_none() && !invalid.contains("cmd") => self.error(
                    &join(path, "cmd"),
                    "\"cmd\" is required: the command that starts the component".into(),
                ),
                (None, _) => {}
            }
        }
        for (field, v) in [("cpu", &p.cpu), ("memory", &p.memory)] {
            if v.is_some() {
                self.warn(
                    &join(path, field),
                    format!("\"{field}\" applies on Kubernetes and is not enforced locally"),
                );
            }
        }
        let mut env = BTreeMap::new();
        for (i, var) in p.env.iter().flatten().enumerate() {
            let at = format!("{path}.env[{i}]");
            if var.name.is_empty() || var.name.contains(['=', '\0']) {
                self.error(&join(&at, "name"), format!("invalid variable name \"{}\"", var.name));
            }
            if var.value_from.is_some() {
                self.error(
                    &join(&at, "valueFrom"),
                    "\"valueFrom\" (Secret/ConfigMap references) is not supported locally yet; \
                     use \"value\""
                        .into(),
                );
            }
            if var.value.as_deref().is_some_and(|v| v.contains('\0')) {
                self.error(&join(&at, "value"), "values cannot contain NUL".into());
            }
            env.insert(var.name.clone(), var.value.clone().unwrap_or_default());
        }
        let ports = self.ports(&p, path);
        for (field, probe) in [("readinessProbe", &p.readiness_probe), ("livenessProbe", &p.liveness_probe)] {
            if let Some(probe) = probe {
                self.probe(probe, &ports, &join(path, field));
            }
        }
        let job = matches!(kind, ComponentKind::Task | ComponentKind::CronTask).then(|| JobSpec {
            count: p.count.unwrap_or(1),
            restart: p.restart.unwrap_or_default(),
            backoff_limit: p.backoff_limit.unwrap_or(6),
            active_deadline_seconds: p.active_deadline_seconds,
        });
        if let Some(job) = &job
            && !(1..=1000).contains(&job.count)
        {
            self.error(&join(path, "count"), "\"count\" must be between 1 and 1000".into());
        }
        let schedule = if kind == ComponentKind::CronTask {
            let cron = p.schedule.clone().unwrap_or_default();
            if cron.is_empty() && !invalid.contains("schedule") {
                self.error(&join(path, "schedule"), "a cron-task needs a \"schedule\"".into());
            } else if let (false, Err(e)) = (cron.is_empty(), crate::cron::parse(&cron)) {
                self.error(&join(path, "schedule"), format!("invalid cron schedule \"{cron}\": {e}"));
            }
            Some(ScheduleSpec {
                cron,
                concurrency_policy: p.concurrency_policy.unwrap_or_default(),
                suspend: p.suspend.unwrap_or(false),
                starting_deadline_seconds: p.starting_deadline_seconds,
                successful_jobs_history_limit: p.successful_jobs_history_limit.unwrap_or(3),
                failed_jobs_history_limit: p.failed_jobs_history_limit.unwrap_or(1),
            })
        } else {
            None
        };
        if let Some(dir) = &p.workdir
            && (dir.is_empty() || dir.contains('\0'))
        {
            self.error(&join(path, "workdir"), "\"workdir\" must be a path".into());
        }
        Component {
            name,
            kind,
            image: p.image,
            cmd,
            args: p.args.unwrap_or_default(),
            env,
            workdir: p.workdir,
            ports,
            readiness_probe: p.readiness_probe,
            liveness_probe: p.liveness_probe,
            replicas: 1,
            labels: p.labels.unwrap_or_default(),
            annotations: p.annotations.unwrap_or_default(),
            depends_on,
            termination_grace_period_seconds: p.termination_grace_period_seconds.unwrap_or(10),
            job,
            schedule,
            resilience: None,
            traffic: None,
            gateway: None,
            slo: None,
        }
    }

    fn ports(&mut self, p: &Properties, path: &str) -> Vec<spec::Port> {
        let mut ports = p.ports.clone().unwrap_or_default();
        if let Some(port) = p.port {
            if p.ports.is_some() {
                self.error(
                    &join(path, "port"),
                    "give either \"port\" (legacy) or \"ports\", not both".into(),
                );
            } else {
                ports.push(spec::Port {
                    port,
                    name: None,
                    protocol: Protocol::Tcp,
                    expose: true,
                    node_port: None,
                });
            }
        }
        let mut seen = BTreeSet::new();
        for (i, port) in ports.iter().enumerate() {
            let at = if p.ports.is_some() { format!("{path}.ports[{i}]") } else { join(path, "port") };
            if port.port == 0 {
                self.error(&join(&at, "port"), "port must be between 1 and 65535".into());
            }
            if !seen.insert(port.port) {
                self.error(&join(&at, "port"), format!("port {} is declared twice", port.port));
            }
            if port.protocol != Protocol::Tcp {
                self.error(
                    &join(&at, "protocol"),
                    "only TCP ports are supported locally (UDP and SCTP are not yet)".into(),
                );
            }
        }
        ports
    }

    fn probe(&mut self, probe: &Probe, ports: &[spec::Port], path: &str) {
        let actions = [probe.exec.is_some(), probe.http_get.is_some(), probe.tcp_socket.is_some()];
        if actions.iter().filter(|a| **a).count() != 1 {
            self.error(path, "a probe needs exactly one of exec, httpGet or tcpSocket".into());
        }
        if let Some(exec) = &probe.exec
            && exec.command.first().is_none_or(|c| c.is_empty())
        {
            self.error(&join(path, "exec.command"), "the command must not be empty".into());
        }
        let port = match (&probe.http_get, &probe.tcp_socket) {
            (Some(h), _) => {
                if h.scheme.as_deref().is_some_and(|s| !s.eq_ignore_ascii_case("http")) {
                    self.error(
                        &join(path, "httpGet.scheme"),
                        "only HTTP probes are supported locally".into(),
                    );
                }
                if !h.path.starts_with('/') {
                    self.error(&join(path, "httpGet.path"), "the path must start with '/'".into());
                }
                Some(("httpGet.port", h.port))
            }
            (None, Some(t)) => Some(("tcpSocket.port", t.port)),
            _ => None,
        };
        if let Some((field, port)) = port {
            match port {
                Some(n) if !ports.is_empty() && !ports.iter().any(|p| p.port == n) => {
                    let declared: Vec<String> = ports.iter().map(|p| p.port.to_string()).collect();
                    self.error(
                        &join(path, field),
                        format!("port {n} is not a declared port (declared: {})", declared.join(", ")),
                    );
                }
                Some(0) => self.error(&join(path, field), "port must be 1..65535".into()),
                _ => {}
            }
        }
        if probe.period_seconds == 0 || probe.timeout_seconds == 0 {
            self.error(path, "periodSeconds and timeoutSeconds must be at least 1".into());
        }
        if probe.success_threshold == 0 || probe.failure_threshold == 0 {
            self.error(path, "successThreshold and failureThreshold must be at least 1".into());
        }
    }

    fn traits(&mut self, component: &mut Component, value: &Value, path: &str) {
        let Value::Array(items) = value else {
            self.error(path, format!("expected a list of traits, found {}", type_name(value)));
            return;
        };
        let mut seen = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("{path}[{i}]");
            let Some(map) = self.object(item, &at) else { continue };
            for key in map.keys() {
                if key != "type" && key != "properties" {
                    let msg = format!("unknown field \"{key}\"{}", suggestion(key, &["type", "properties"]));
                    self.error(&join(&at, key), msg);
                }
            }
            let Some(kind) = self.string(map, "type", &at) else { continue };
            if let Some(first) = seen.insert(kind.clone(), i) {
                self.error(
                    &join(&at, "type"),
                    format!("trait \"{kind}\" is given twice (also {path}[{first}])"),
                );
            }
            let empty = Value::Object(Map::new());
            let props = map.get("properties").unwrap_or(&empty);
            let props_path = join(&at, "properties");
            match kind.as_str() {
                "scaler" => {
                    if let Some(s) = self.typed::<ScalerTrait>(props, &props_path) {
                        let replicas = s.replicas.unwrap_or(1);
                        if !component.kind.is_long_running() {
                            self.error(
                                &join(&at, "type"),
                                format!(
                                    "\"scaler\" applies to webservice and worker; a {} uses \
                                     \"count\"",
                                    component.kind.as_str()
                                ),
                            );
                        } else if replicas > spec::MAX_REPLICAS {
                            self.error(
                                &join(&props_path, "replicas"),
                                format!("replicas must be at most {}", spec::MAX_REPLICAS),
                            );
                        } else {
                            component.replicas = replicas;
                        }
                    }
                }
                "env" => {
                    if let Some(t) = self.typed::<EnvTrait>(props, &props_path) {
                        if !t.container_name.is_empty() {
                            self.error(
                                &join(&props_path, "containerName"),
                                "locally a component is one process; leave containerName empty".into(),
                            );
                        }
                        if t.replace {
                            component.env.clear();
                        }
                        for k in &t.unset {
                            component.env.remove(k);
                        }
                        component.env.extend(t.env);
                    }
                }
                "resilience" => {
                    if component.kind != ComponentKind::Webservice {
                        self.error(
                            &join(&at, "type"),
                            format!(
                                "\"resilience\" applies to requests to a webservice's address; a {} has none",
                                component.kind.as_str()
                            ),
                        );
                    } else if let Some(r) = self.resilience(props, &props_path) {
                        component.resilience = Some(r);
                    }
                }
                "traffic" => {
                    if component.kind != ComponentKind::Webservice {
                        self.error(
                            &join(&at, "type"),
                            format!(
                                "\"traffic\" applies to requests to a webservice's address; a {} has none",
                                component.kind.as_str()
                            ),
                        );
                    } else if let Some(t) = self.typed::<crate::resilience::Traffic>(props, &props_path) {
                        let problems = crate::resilience::check_traffic(&t);
                        for (field, msg) in &problems {
                            self.error(&join(&props_path, field), msg.clone());
                        }
                        for (i, f) in t.faults.iter().enumerate() {
                            if let Some(m) = &f.matches {
                                self.check_route_match(m, &format!("{props_path}.faults[{i}].match"));
                            }
                        }
                        if problems.is_empty() {
                            component.traffic = Some(t);
                        }
                    }
                }
                "gateway" => {
                    if component.kind != ComponentKind::Webservice {
                        self.error(
                            &join(&at, "type"),
                            format!(
                                "\"gateway\" routes to a webservice's ports; a {} has none",
                                component.kind.as_str()
                            ),
                        );
                    } else if let Some(g) = self.typed::<crate::spec::GatewayTrait>(props, &props_path) {
                        self.check_gateway(&g, component, &props_path);
                        component.gateway = Some(g);
                    }
                }
                "slo" => {
                    if component.kind != ComponentKind::Webservice {
                        self.error(
                            &join(&at, "type"),
                            format!(
                                "\"slo\" is measured on requests to a webservice's address; a {} has none",
                                component.kind.as_str()
                            ),
                        );
                    } else if let Some(s) = self.typed::<crate::slo::Slo>(props, &props_path) {
                        let problems = crate::slo::check_slo(&s);
                        for (field, msg) in &problems {
                            let path =
                                if field.is_empty() { props_path.clone() } else { join(&props_path, field) };
                            self.error(&path, msg.clone());
                        }
                        if problems.is_empty() {
                            component.slo = Some(s);
                        }
                    }
                }
                "labels" | "annotations" => {
                    if let Some(t) = self.typed::<MetadataTrait>(props, &props_path) {
                        let target =
                            if kind == "labels" { &mut component.labels } else { &mut component.annotations };
                        for (k, v) in t {
                            match v {
                                Some(v) => target.insert(k, v),
                                None => target.remove(&k),
                            };
                        }
                    }
                }
                other => {
                    let msg = if spec::UNSUPPORTED_TRAIT_TYPES.contains(&other) {
                        format!(
                            "trait \"{other}\" is not supported by Yun yet (accepted: {})",
                            spec::TRAIT_TYPES.join(", ")
                        )
                    } else {
                        format!("unknown trait \"{other}\"{}", suggestion(other, spec::TRAIT_TYPES))
                    };
                    self.error(&join(&at, "type"), msg);
                }
            }
        }
    }

    fn resilience(&mut self, value: &Value, path: &str) -> Option<Resilience> {
        let map = self.object(value, path)?.clone();
        let errors_before = self.errors();
        let mut rest = map.clone();
        let routes_value = rest.remove("routes");
        let policy = self.policy(&Value::Object(rest), path);
        let mut routes = Vec::new();
        match routes_value {
            None => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{path}.routes[{i}]");
                    let Some(obj) = self.object(item, &at) else { continue };
                    let mut rest = obj.clone();
                    let Some(m) = rest.remove("match") else {
                        self.error(&at, "a route needs \"match\" (pathPrefix and/or methods)".into());
                        continue;
                    };
                    let matches: Option<RouteMatch> = self.typed(&m, &join(&at, "match"));
                    let policy = self.policy(&Value::Object(rest), &at);
                    if let Some(m) = &matches {
                        self.check_route_match(m, &join(&at, "match"));
                    }
                    if let (Some(matches), Some(policy)) = (matches, policy) {
                        routes.push(Route { matches, policy });
                    }
                }
            }
            Some(other) => {
                let msg = format!("expected a list of routes, found {}", type_name(&other));
                self.error(&join(path, "routes"), msg);
            }
        }
        (self.errors() == errors_before).then_some(Resilience { policy: policy?, routes })
    }

    fn policy(&mut self, value: &Value, path: &str) -> Option<Policy> {
        let policy: Policy = self.typed(value, path)?;
        let problems = crate::resilience::check_policy(&policy);
        for (field, msg) in &problems {
            self.error(&join(path, field), msg.clone());
        }
        problems.is_empty().then_some(policy)
    }

    fn check_route_match(&mut self, m: &RouteMatch, path: &str) {
        if m.path_prefix.is_none() && m.methods.is_empty() && m.sources.is_empty() {
            self.error(path, "give pathPrefix, methods and/or sources".into());
        }
        for (i, source) in m.sources.iter().enumerate() {
            let valid = source == "external"
                || source.split_once('/').is_some_and(|(a, c)| is_dns_label(a) && is_dns_label(c));
            if !valid {
                self.error(
                    &format!("{path}.sources[{i}]"),
                    format!("invalid source \"{source}\": use app/component or external"),
                );
            }
        }
        if m.path_prefix.as_deref().is_some_and(|p| !p.starts_with('/')) {
            self.error(&join(path, "pathPrefix"), "must start with '/'".into());
        }
        const METHODS: &[&str] =
            &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"];
        for (i, method) in m.methods.iter().enumerate() {
            if !METHODS.contains(&method.as_str()) {
                let msg = format!("unknown method \"{method}\"{}", suggestion(method, METHODS));
                self.error(&format!("{path}.methods[{i}]"), msg);
            }
        }
    }

    fn check_gateway(&mut self, g: &crate::spec::GatewayTrait, c: &Component, path: &str) {
        if g.http.is_empty() {
            self.error(&join(path, "http"), "give at least one path: port entry, e.g. {\"/\": 8080}".into());
        }
        for (prefix, port) in &g.http {
            let at = format!("{path}.http[\"{prefix}\"]");
            if !prefix.starts_with('/') {
                self.error(&at, format!("path \"{prefix}\" must start with '/'"));
            }
            if !c.ports.is_empty() && !c.ports.iter().any(|p| p.port == *port) {
                let declared: Vec<String> = c.ports.iter().map(|p| p.port.to_string()).collect();
                self.error(
                    &at,
                    format!("port {port} is not a declared port (declared: {})", declared.join(", ")),
                );
            }
        }
        if let Some(d) = &g.domain {
            let valid = !d.is_empty()
                && d.len() <= 253
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !valid {
                self.error(&join(path, "domain"), format!("invalid host name \"{d}\""));
            }
        }
        if g.secret_name.is_some() && g.tls.is_none() {
            self.warn(
                &join(path, "secretName"),
                "TLS secrets are read on Kubernetes; locally give tls.certFile and tls.keyFile for HTTPS"
                    .into(),
            );
        }
        if g.tls.is_some() && g.domain.is_none() {
            self.error(
                &join(path, "tls"),
                "TLS needs a domain: certificates are chosen by the requested host name".into(),
            );
        }
    }

    fn check_dependencies(&mut self, components: &[Component], items: &[Value]) {
        let index: HashMap<&str, usize> =
            items.iter().enumerate().filter_map(|(i, c)| Some((c.get("name")?.as_str()?, i))).collect();
        let names: Vec<&str> = index.keys().copied().collect();
        for c in components {
            let i = index[c.name.as_str()];
            for (j, dep) in c.depends_on.iter().enumerate() {
                let at = format!("spec.components[{i}].dependsOn[{j}]");
                if dep == &c.name {
                    self.error(&at, format!("component \"{dep}\" cannot depend on itself"));
                } else if !index.contains_key(dep.as_str()) {
                    let msg = format!("unknown component \"{dep}\"{}", suggestion(dep, &names));
                    self.error(&at, msg);
                }
            }
        }
        // Cycle detection by depth-first search over known names.
        let deps: HashMap<&str, Vec<&str>> = components
            .iter()
            .map(|c| (c.name.as_str(), c.depends_on.iter().map(String::as_str).collect()))
            .collect();
        let mut state: HashMap<&str, u8> = HashMap::new();
        let mut reported = false;
        for c in components {
            let mut stack = Vec::new();
            if let Some(cycle) = find_cycle(c.name.as_str(), &deps, &mut state, &mut stack)
                && !reported
            {
                let i = index[cycle[0]];
                self.error(
                    &format!("spec.components[{i}].dependsOn"),
                    format!("dependency cycle: {}", cycle.join(" -> ")),
                );
                reported = true;
            }
        }
    }

    /// Mirror, split and route targets must be other webservices of the app.
    fn check_mirrors(&mut self, components: &[Component], items: &[Value]) {
        let names: Vec<&str> = components.iter().map(|c| c.name.as_str()).collect();
        for (i, c) in components.iter().enumerate() {
            let Some(t) = &c.traffic else { continue };
            let trait_index = items
                .get(i)
                .and_then(|item| {
                    item.get("traits")?
                        .as_array()?
                        .iter()
                        .position(|t| t.get("type") == Some(&Value::from("traffic")))
                })
                .unwrap_or(0);
            let base = format!("spec.components[{i}].traits[{trait_index}].properties");
            let mut targets: Vec<(String, &str)> = Vec::new();
            if let Some(m) = &t.mirror {
                targets.push((format!("{base}.mirror.component"), &m.component));
            }
            for (k, b) in t.split.iter().enumerate() {
                if let Some(c) = &b.component {
                    targets.push((format!("{base}.split[{k}].component"), c));
                }
            }
            for (k, r) in t.routes.iter().enumerate() {
                if let Some(c) = &r.component {
                    targets.push((format!("{base}.routes[{k}].component"), c));
                }
            }
            for (at, target) in targets {
                match components.iter().find(|x| x.name == target) {
                    None => {
                        let msg = format!("unknown component \"{target}\"{}", suggestion(target, &names));
                        self.error(&at, msg);
                    }
                    Some(x) if x.name == c.name => {
                        self.error(&at, "a component cannot send traffic to itself".into())
                    }
                    Some(x) if x.kind != ComponentKind::Webservice => self.error(
                        &at,
                        format!("\"{}\" is a {}; traffic goes to webservices", x.name, x.kind.as_str()),
                    ),
                    Some(_) => {}
                }
            }
        }
    }

    fn check_fixed_ports(&mut self, components: &[Component]) {
        let mut owners: HashMap<u16, &str> = HashMap::new();
        for (i, c) in components.iter().enumerate() {
            for p in &c.ports {
                if let Some(other) = owners.insert(p.port, &c.name)
                    && other != c.name
                {
                    self.error(
                        &format!("spec.components[{i}].properties"),
                        format!(
                            "port {} is already used by component \"{other}\"; each service \
                                 port can belong to one component",
                            p.port
                        ),
                    );
                }
            }
        }
    }
}

fn find_cycle<'a>(
    node: &'a str,
    deps: &HashMap<&'a str, Vec<&'a str>>,
    state: &mut HashMap<&'a str, u8>,
    stack: &mut Vec<&'a str>,
) -> Option<Vec<&'a str>> {
    match state.get(node) {
        Some(2) => return None,
        Some(1) => {
            let start = stack.iter().position(|n| *n == node).unwrap_or(0);
            let mut cycle = stack[start..].to_vec();
            cycle.push(node);
            return Some(cycle);
        }
        _ => {}
    }
    state.insert(node, 1);
    stack.push(node);
    for next in deps.get(node).into_iter().flatten() {
        if deps.contains_key(next)
            && let Some(c) = find_cycle(next, deps, state, stack)
        {
            return Some(c);
        }
    }
    stack.pop();
    state.insert(node, 2);
    None
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else if key.starts_with('[') {
        format!("{path}{key}")
    } else {
        format!("{path}.{key}")
    }
}
