//! `yun`: run OAM applications on this machine. Thin: parses arguments, talks to the daemon's
//! API, prints. The daemon itself is `yun server` (crate `yun-server`).

mod client;
mod output;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use client::Client;
use output::{Format, print_slo, print_top, print_trace, print_traces, s, structured, table, time, top_rows};

/// Yun (云): a cloud-native application platform in one binary. Declare an app as a KubeVela
/// Application; Yun runs it, keeps it at its declared state and versions every change.
#[derive(Parser)]
#[command(name = "yun", version, propagate_version = true)]
struct Cli {
    /// State directory of the daemon (default ~/.yun).
    #[arg(long, global = true, env = "YUN_HOME")]
    home: Option<PathBuf>,
    /// Output format of read commands.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply a manifest (starting the daemon if needed), wait until ready, then stream logs;
    /// Ctrl-C stops the app.
    Up {
        /// Manifest file.
        #[arg(short, long, default_value = "app.yaml")]
        file: PathBuf,
        /// Return once ready instead of streaming logs.
        #[arg(short, long)]
        detach: bool,
        /// Seconds to wait for readiness.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Apply a manifest: a new revision for each app whose spec changed.
    Apply {
        /// Manifest file.
        #[arg(short, long)]
        file: PathBuf,
    },
    /// Show what applying a manifest would change.
    Diff {
        /// Manifest file.
        #[arg(short, long)]
        file: PathBuf,
    },
    /// Check a manifest without running it (no daemon needed).
    Validate {
        /// Manifest file.
        #[arg(short, long)]
        file: PathBuf,
    },
    /// List resources.
    Get {
        /// What to list: apps.
        #[arg(value_parser = ["apps", "app", "applications"])]
        kind: String,
    },
    /// Show an app's status: phase, components, instances.
    Status {
        /// Application.
        app: String,
    },
    /// Show instance output.
    Logs {
        /// Application.
        app: String,
        /// Only this component.
        component: Option<String>,
        /// Keep streaming new lines.
        #[arg(short, long)]
        follow: bool,
        /// Only lines newer than this: 10s, 5m, 2h, 1d or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only this instance.
        #[arg(long)]
        instance: Option<String>,
        /// At most this many stored lines.
        #[arg(long, default_value_t = 1000)]
        tail: usize,
        /// Only lines containing this text.
        #[arg(long)]
        grep: Option<String>,
        /// Only lines that name this trace id (JSON logs with `trace_id`, or `trace_id=` in text).
        #[arg(long)]
        trace: Option<String>,
    },
    /// Show an app's revisions.
    History {
        /// Application.
        app: String,
    },
    /// Roll an app back (to the previous revision, or --to REV) as a new revision.
    Rollback {
        /// Application.
        app: String,
        /// Revision to return to.
        #[arg(long)]
        to: Option<u64>,
    },
    /// Set a component's instance count (until the next new revision).
    Scale {
        /// Application.
        app: String,
        /// Component.
        component: String,
        /// Instances.
        replicas: u32,
    },
    /// Stop an app's instances, keeping the app and its history.
    Stop {
        /// Application.
        app: String,
    },
    /// Delete an app: stop every instance, remove its state.
    Delete {
        /// Application.
        app: String,
        /// Return without waiting for the instances to stop.
        #[arg(long)]
        no_wait: bool,
    },
    /// Show the event and audit log.
    Events {
        /// Only this application.
        app: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Print the JSON Schema of the manifests Yun accepts.
    Schema,
    /// Print the control-plane API as OpenAPI.
    ApiSpec,
    /// Run the daemon in the foreground.
    Server {
        /// API listen address.
        #[arg(long, env = "YUN_LISTEN", default_value = yun_server::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
        /// Gateway listen address for the `gateway` trait, or `off`.
        #[arg(long, env = "YUN_GATEWAY_LISTEN", default_value = yun_server::DEFAULT_GATEWAY)]
        gateway: String,
        /// Gateway HTTPS listen address (for `gateway` traits with `tls`), or `off`.
        #[arg(long, env = "YUN_GATEWAY_TLS_LISTEN", default_value = yun_server::DEFAULT_GATEWAY_TLS)]
        gateway_tls: String,
        /// OTLP/HTTP receiver address for services' OpenTelemetry spans, or `off`.
        #[arg(long, env = "YUN_OTLP_LISTEN", default_value = yun_server::DEFAULT_OTLP)]
        otlp: String,
        /// `off`: the data plane makes no spans and leaves trace headers alone.
        #[arg(long, env = "YUN_TRACING", default_value = "on", value_parser = ["on", "off"])]
        tracing: String,
        /// Share of new traces kept, 0 to 1 (failed and slow traces are always kept).
        #[arg(long, env = "YUN_TRACE_SAMPLE", default_value_t = 1.0)]
        trace_sample: f64,
        /// Traces with a span at least this slow are always kept.
        #[arg(long, env = "YUN_TRACE_SLOW", default_value = "1s")]
        trace_slow: String,
        /// Memory for kept traces, in MiB (a quarter more holds unsampled traces awaiting a
        /// decision); the oldest traces go first.
        #[arg(long, env = "YUN_TRACE_MEMORY", default_value_t = 4)]
        trace_memory: usize,
        /// Send every kept span to this OTLP/HTTP endpoint (http://host:4318/v1/traces).
        #[arg(long, env = "YUN_OTLP_EXPORT")]
        otlp_export: Option<String>,
    },
    /// Search recent traces of an application.
    Traces {
        /// Application.
        app: String,
        /// Only traces through this component.
        #[arg(long)]
        component: Option<String>,
        /// Only traces at least this long: 100ms, 2s.
        #[arg(long)]
        min_duration: Option<String>,
        /// `error` for traces with a failed span.
        #[arg(long)]
        status: Option<String>,
        /// Only traces newer than this: 10s, 5m, 2h, 1d or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// At most this many traces.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Live golden signals per component: request rate, errors, latency, instances, CPU, memory.
    Top {
        /// Application.
        app: String,
        /// Print once and exit (for scripts).
        #[arg(long)]
        once: bool,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 2)]
        interval: u64,
    },
    /// Service level objectives of an application: compliance, error budget left, burn rates.
    Slo {
        /// Application.
        app: String,
    },
    /// Print the web dashboard's address (with this user's token); --open opens a browser.
    Dashboard {
        /// Open it with the desktop's browser (xdg-open).
        #[arg(long)]
        open: bool,
    },
    /// Show one trace as a tree of spans.
    Trace {
        /// Trace id (32 hex digits).
        id: String,
    },
    /// Print the version.
    Version,
}

/// Worker threads as tokio would choose them: `TOKIO_WORKER_THREADS`, else one per core.
fn worker_threads() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn main() -> ExitCode {
    restore_sigpipe();
    let cli = Cli::parse();
    // Blocking work is short (a caller lookup per new connection, file reads); a small pool
    // keeps a burst of new connections from leaving dozens of idle threads (and their
    // allocator arenas) behind.
    // With one worker thread (one core, or `TOKIO_WORKER_THREADS=1`), the current-thread
    // scheduler does the same work without the multi-thread one's cross-thread bookkeeping:
    // about 5 % less CPU per proxied request.
    let mut builder = match worker_threads() {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    // Hops recorded while serving are added to the trace store when the thread has nothing
    // else to do, not in front of the next response.
    builder.on_thread_park(yun_telemetry::flush_hops);
    let runtime = match builder.max_blocking_threads(16).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            if let Some(api) = e.downcast_ref::<client::ApiError>()
                && let Some(diags) = api.body.get("diagnostics").and_then(Value::as_array)
            {
                for d in diags.iter().skip(1) {
                    eprintln!("{}", diagnostic(d));
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// `yun get apps | head` should end quietly, as other command-line tools do, rather than panic
/// on a closed stdout: take back the default SIGPIPE action that Rust's runtime ignores.
#[allow(unsafe_code)]
fn restore_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: called first thing in main, before any other thread exists; SIG_DFL installs no
    // handler code.
    unsafe {
        let _ = signal(Signal::SIGPIPE, SigHandler::SigDfl);
    }
}

fn one_line(e: &anyhow::Error) -> String {
    e.chain().map(ToString::to_string).collect::<Vec<_>>().join(": ")
}

fn diagnostic(d: &Value) -> String {
    let file = d.get("file").and_then(Value::as_str).unwrap_or("<manifest>");
    let path = s(d, "path");
    let path = if path.is_empty() { String::new() } else { format!("{path}: ") };
    format!("{file}:{}:{}: {}: {path}{}", s(d, "line"), s(d, "column"), s(d, "severity"), s(d, "message"))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let home = client::home(cli.home.clone())?;
    let fmt = cli.output;
    match cli.command {
        Command::Server {
            listen,
            gateway,
            gateway_tls,
            tracing,
            otlp,
            trace_sample,
            trace_slow,
            trace_memory,
            otlp_export,
        } => {
            let parse = |value: &str, what: &str| -> Result<Option<std::net::SocketAddr>> {
                match value {
                    "off" => Ok(None),
                    other => Ok(Some(other.parse().with_context(|| {
                        format!("invalid {what} address \"{other}\" (use host:port or off)")
                    })?)),
                }
            };
            let (gateway, gateway_tls) = (parse(&gateway, "gateway")?, parse(&gateway_tls, "gateway")?);
            if !(1..=4096).contains(&trace_memory) {
                bail!("invalid trace memory {trace_memory} MiB: use 1 to 4096");
            }
            if !(0.0..=1.0).contains(&trace_sample) {
                bail!("invalid trace sample {trace_sample}: use a share between 0 and 1");
            }
            let slow = yun_model::Dur::parse(&trace_slow)
                .map_err(|e| anyhow!("invalid trace slow threshold \"{trace_slow}\": {e}"))?;
            let tracing = yun_server::TracingConfig {
                disabled: tracing == "off",
                sampling: yun_telemetry::Sampling { ratio: trace_sample, slow: slow.0 },
                limits: yun_telemetry::Limits {
                    kept_bytes: trace_memory << 20,
                    pending_bytes: (trace_memory << 20) / 4,
                    ..Default::default()
                },
                otlp: parse(&otlp, "OTLP")?,
                export: otlp_export,
            };
            init_logging();
            let shutdown = async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                }
            };
            yun_server::run(yun_server::Config { home, listen, gateway, gateway_tls, tracing }, shutdown)
                .await?;
        }
        Command::Version => {
            let daemon = match Client::connect(&home).await {
                Ok(c) => c.get("/api/v1/version").await.ok().map(|v| s(&v, "version")),
                Err(_) => None,
            };
            let value = json!({"client": env!("CARGO_PKG_VERSION"), "server": daemon});
            if !structured(fmt, &value)? {
                println!("yun {}", env!("CARGO_PKG_VERSION"));
                match daemon {
                    Some(v) => println!("server {v}"),
                    None => println!("server not running"),
                }
            }
        }
        Command::Schema => println!("{}", serde_json::to_string_pretty(&yun_model::application_schema())?),
        Command::ApiSpec => println!("{}", serde_json::to_string_pretty(&yun_server::openapi_spec())?),
        Command::Validate { file } => return validate(&file, fmt),
        Command::Apply { file } => {
            let c = Client::connect(&home).await?;
            let out = c.post("/api/v1/apply", &manifest_body(&file)?).await?;
            print_applied(fmt, &out)?;
        }
        Command::Diff { file } => {
            let c = Client::connect(&home).await?;
            let out = c.post("/api/v1/diff", &manifest_body(&file)?).await?;
            print_diff(fmt, &out)?;
        }
        Command::Up { file, detach, timeout } => {
            return up(&home, &file, detach, Duration::from_secs(timeout)).await;
        }
        Command::Get { .. } => {
            let c = Client::connect(&home).await?;
            let out = c.get("/api/v1/apps").await?;
            if !structured(fmt, &out)? {
                let rows: Vec<Vec<String>> = out["apps"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        let comps = a["components"].as_array().map(|c| c.len()).unwrap_or(0);
                        let ready = a["components"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|c| c["available"] == true)
                            .count();
                        vec![
                            s(a, "name"),
                            s(a, "phase"),
                            format!("{ready}/{comps}"),
                            s(a, "revision"),
                            time(a, "updated_at"),
                        ]
                    })
                    .collect();
                table(&["NAME", "PHASE", "COMPONENTS", "REVISION", "UPDATED"], &rows);
            }
        }
        Command::Status { app } => {
            let c = Client::connect(&home).await?;
            let out = c.get(&format!("/api/v1/apps/{}", enc(&app))).await?;
            if !structured(fmt, &out)? {
                print_status(&out);
            }
        }
        Command::Logs { app, component, follow, since, instance, tail, grep, trace } => {
            let c = Client::connect(&home).await?;
            let mut q = format!("/api/v1/apps/{}/logs?tail={tail}&follow={follow}", enc(&app));
            for (k, v) in [
                ("component", &component),
                ("instance", &instance),
                ("since", &since),
                ("grep", &grep),
                ("trace", &trace),
            ] {
                if let Some(v) = v {
                    q.push_str(&format!("&{k}={}", enc(v)));
                }
            }
            c.stream(&q, |line| {
                print_log(fmt, &line);
                true
            })
            .await?;
        }
        Command::History { app } => {
            let c = Client::connect(&home).await?;
            let out = c.get(&format!("/api/v1/apps/{}/revisions", enc(&app))).await?;
            if !structured(fmt, &out)? {
                let rows: Vec<Vec<String>> = out["revisions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        let mark = if r["current"] == true { "*" } else { "" };
                        vec![
                            format!("{}{mark}", s(r, "number")),
                            time(r, "created_at"),
                            s(r, "hash"),
                            s(r, "actor"),
                            s(r, "message"),
                        ]
                    })
                    .collect();
                table(&["REVISION", "CREATED", "HASH", "BY", "MESSAGE"], &rows);
            }
        }
        Command::Rollback { app, to } => {
            let c = Client::connect(&home).await?;
            let out = c.post(&format!("/api/v1/apps/{}/rollback", enc(&app)), &json!({"to": to})).await?;
            if !structured(fmt, &out)? {
                println!("{}: rolled back; revision {} is current", app, s(&out, "revision"));
            }
        }
        Command::Scale { app, component, replicas } => {
            let c = Client::connect(&home).await?;
            let body = json!({"component": component, "replicas": replicas});
            let out = c.post(&format!("/api/v1/apps/{}/scale", enc(&app)), &body).await?;
            if !structured(fmt, &out)? {
                println!("{app}/{component}: scaled to {replicas}");
            }
        }
        Command::Stop { app } => {
            let c = Client::connect(&home).await?;
            let out = c.post(&format!("/api/v1/apps/{}/stop", enc(&app)), &json!({})).await?;
            if !structured(fmt, &out)? {
                println!("{app}: stopping");
            }
        }
        Command::Delete { app, no_wait } => {
            let c = Client::connect(&home).await?;
            let out = c
                .call(hyper::Method::DELETE, &format!("/api/v1/apps/{}?wait={}", enc(&app), !no_wait), None)
                .await?;
            if !structured(fmt, &out)? {
                println!("{app}: {}", if no_wait { "deleting" } else { "deleted" });
            }
        }
        Command::Traces { app, component, min_duration, status, since, limit } => {
            let c = Client::connect(&home).await?;
            let mut q = format!("/api/v1/traces?app={}&limit={limit}", enc(&app));
            for (k, v) in [
                ("service", &component),
                ("minDuration", &min_duration),
                ("status", &status),
                ("since", &since),
            ] {
                if let Some(v) = v {
                    q.push_str(&format!("&{k}={}", enc(v)));
                }
            }
            let out = c.get(&q).await?;
            if !structured(fmt, &out)? {
                print_traces(&out);
            }
        }
        Command::Top { app, once, interval } => {
            let c = Client::connect(&home).await?;
            let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
            loop {
                let status = c.get(&format!("/api/v1/apps/{}", enc(&app))).await?;
                let series = c.get(&format!("/api/v1/apps/{}/metrics?window=1m", enc(&app))).await?;
                let rows = top_rows(&status, &series);
                if once || !tty {
                    if !structured(fmt, &json!({"components": rows}))? {
                        print_top(&app, &rows);
                    }
                    if once {
                        break;
                    }
                } else {
                    // Clear the screen and draw again.
                    print!("\x1b[2J\x1b[H");
                    print_top(&app, &rows);
                }
                tokio::time::sleep(Duration::from_secs(interval.max(1))).await;
            }
        }
        Command::Slo { app } => {
            let c = Client::connect(&home).await?;
            let out = c.get(&format!("/api/v1/apps/{}/slo", enc(&app))).await?;
            if !structured(fmt, &out)? {
                print_slo(&out);
            }
        }
        Command::Dashboard { open } => {
            let c = Client::connect(&home).await?;
            let url = c.dashboard_url();
            println!("{url}");
            if open {
                let opened = std::process::Command::new("xdg-open").arg(&url).status();
                if !opened.is_ok_and(|s| s.success()) {
                    bail!("could not open a browser (xdg-open); open the address above yourself");
                }
            }
        }
        Command::Trace { id } => {
            let c = Client::connect(&home).await?;
            let out = c.get(&format!("/api/v1/traces/{}", enc(&id))).await?;
            if !structured(fmt, &out)? {
                print_trace(&out);
            }
        }
        Command::Events { app, limit } => {
            let c = Client::connect(&home).await?;
            let mut q = format!("/api/v1/events?limit={limit}");
            if let Some(a) = &app {
                q.push_str(&format!("&app={}", enc(a)));
            }
            let out = c.get(&q).await?;
            if !structured(fmt, &out)? {
                let rows: Vec<Vec<String>> = out["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        let obj = match (
                            e.get("app").and_then(Value::as_str),
                            e.get("component").and_then(Value::as_str),
                        ) {
                            (Some(a), Some(c)) => format!("{a}/{c}"),
                            (Some(a), None) => a.to_string(),
                            _ => "-".into(),
                        };
                        vec![
                            time(e, "time"),
                            s(e, "severity"),
                            s(e, "reason"),
                            obj,
                            s(e, "actor"),
                            s(e, "message"),
                        ]
                    })
                    .collect();
                table(&["TIME", "TYPE", "REASON", "OBJECT", "BY", "MESSAGE"], &rows);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("YUN_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();
}

/// Percent-encodes a path or query component.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn read_manifest(file: &Path) -> Result<(String, PathBuf)> {
    let meta = std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
    if meta.len() as usize > yun_model::MAX_MANIFEST_BYTES {
        bail!(
            "{} is {} bytes; manifests are limited to {} bytes",
            file.display(),
            meta.len(),
            yun_model::MAX_MANIFEST_BYTES
        );
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read {} as UTF-8 text", file.display()))?;
    let abs = std::fs::canonicalize(file)?;
    let dir = abs.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    Ok((text, dir))
}

fn manifest_body(file: &Path) -> Result<Value> {
    let (text, dir) = read_manifest(file)?;
    Ok(json!({"manifest": text, "file": file.display().to_string(), "base_dir": dir.display().to_string()}))
}

fn validate(file: &Path, fmt: Format) -> Result<ExitCode> {
    let (text, _) = read_manifest(file)?;
    let name = file.display().to_string();
    let result = yun_model::parse_manifest(&text, Some(&name), yun_model::Target::Any);
    let (ok, diags, apps) = match &result {
        Ok(p) => (true, p.warnings.clone(), p.apps.iter().map(|a| a.name.clone()).collect::<Vec<_>>()),
        Err(e) => (false, e.diagnostics.clone(), Vec::new()),
    };
    let value = json!({"valid": ok, "apps": apps, "diagnostics": diags});
    if !structured(fmt, &value)? {
        for d in &diags {
            eprintln!("{d}");
        }
        if ok {
            println!("{name}: valid ({})", apps.join(", "));
        } else {
            let n = diags.iter().filter(|d| d.severity == yun_model::Severity::Error).count();
            eprintln!("{name}: {n} error(s)");
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_applied(fmt: Format, out: &Value) -> Result<()> {
    if structured(fmt, out)? {
        return Ok(());
    }
    for w in out["warnings"].as_array().into_iter().flatten() {
        eprintln!("{}", diagnostic(w));
    }
    for a in out["apps"].as_array().into_iter().flatten() {
        let what = if a["created"] == true { "revision" } else { "unchanged at revision" };
        println!("{}: {what} {}", s(a, "name"), s(a, "revision"));
    }
    Ok(())
}

fn print_diff(fmt: Format, out: &Value) -> Result<()> {
    if structured(fmt, out)? {
        return Ok(());
    }
    for a in out["apps"].as_array().into_iter().flatten() {
        if a["exists"] != true {
            println!("{}: new application", s(a, "name"));
        } else if a["unchanged"] == true {
            println!("{}: no changes", s(a, "name"));
            continue;
        } else {
            println!("{}:", s(a, "name"));
        }
        for c in a["components"].as_array().into_iter().flatten() {
            let change = s(c, "change");
            let sign = match change.as_str() {
                "added" => "+",
                "removed" => "-",
                "changed" => "~",
                _ => " ",
            };
            println!("  {sign} {} ({change})", s(c, "component"));
            for f in c["fields"].as_array().into_iter().flatten() {
                println!("      {}: {} -> {}", s(f, "field"), f["from"], f["to"]);
            }
        }
    }
    Ok(())
}

fn print_status(st: &Value) {
    println!("{}  {}  revision {}", s(st, "name"), s(st, "phase"), s(st, "revision"));
    let msg = s(st, "message");
    if !msg.is_empty() {
        println!("  {msg}");
    }
    println!();
    let comps: Vec<&Value> = st["components"].as_array().into_iter().flatten().collect();
    let rows: Vec<Vec<String>> = comps
        .iter()
        .map(|c| {
            let addr = c["addresses"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(Value::as_str)
                .unwrap_or("-")
                .to_string();
            vec![
                s(c, "name"),
                s(c, "kind"),
                s(c, "phase"),
                format!("{}/{}", s(c, "ready"), s(c, "desired")),
                s(c, "restarts"),
                addr,
                s(c, "message"),
            ]
        })
        .collect();
    table(&["COMPONENT", "TYPE", "PHASE", "READY", "RESTARTS", "ADDRESS", "MESSAGE"], &rows);
    let inst: Vec<Vec<String>> = comps
        .iter()
        .flat_map(|c| c["instances"].as_array().into_iter().flatten())
        .map(|i| {
            let err = i
                .get("last_error")
                .and_then(Value::as_str)
                .or(i.get("last_exit").and_then(Value::as_str))
                .unwrap_or("");
            vec![
                s(i, "id"),
                s(i, "pid"),
                s(i, "state"),
                s(i, "ready"),
                s(i, "restarts"),
                time(i, "started_at"),
                err.to_string(),
            ]
        })
        .collect();
    if !inst.is_empty() {
        println!();
        table(&["INSTANCE", "PID", "STATE", "READY", "RESTARTS", "STARTED", "LAST"], &inst);
    }
}

fn print_log(fmt: Format, line: &Value) {
    match fmt {
        Format::Table => println!("{} {} | {}", time(line, "time"), s(line, "instance"), s(line, "line")),
        _ => println!("{line}"),
    }
}

/// `yun up`: apply, wait for ready with progress, then stream logs until Ctrl-C, which stops
/// the app (also while still waiting for it to become ready).
async fn up(home: &Path, file: &Path, detach: bool, timeout: Duration) -> Result<ExitCode> {
    let body = manifest_body(file)?;
    let (int_tx, mut interrupted) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = int_tx.send(true);
        }
    });
    let c = client::connect_or_start(home).await?;
    let out = c.post("/api/v1/apply", &body).await?;
    print_applied(Format::Table, &out)?;
    let names: Vec<String> = out["apps"].as_array().into_iter().flatten().map(|a| s(a, "name")).collect();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_line = String::new();
    'apps: for name in &names {
        loop {
            if *interrupted.borrow() {
                break 'apps;
            }
            let st = c.get(&format!("/api/v1/apps/{}", enc(name))).await?;
            let phase = s(&st, "phase");
            let line = format!("{name}: {phase} [{}]", progress(&st).join(", "));
            if line != last_line {
                eprintln!("{line}");
                last_line = line;
            }
            match phase.as_str() {
                "running" => break,
                "failed" => bail!("{name} failed: {}", s(&st, "message")),
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{name} not ready after {}s: {} (see `yun status {name}` and `yun logs {name}`)",
                    timeout.as_secs(),
                    s(&st, "message")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("{name}: ready");
    }
    if detach && !*interrupted.borrow() {
        return Ok(ExitCode::SUCCESS);
    }
    if !*interrupted.borrow() {
        eprintln!("streaming logs; Ctrl-C stops the app");
        let c = std::sync::Arc::new(c.clone());
        let mut streams = tokio::task::JoinSet::new();
        for n in &names {
            let q = format!("/api/v1/apps/{}/logs?follow=true&tail=0", enc(n));
            let c = c.clone();
            streams.spawn(async move {
                c.stream(&q, |line| {
                    println!("{} | {}", s(&line, "component"), s(&line, "line"));
                    true
                })
                .await
            });
        }
        tokio::select! {
            _ = interrupted.changed() => {}
            Some(r) = streams.join_next() => { r??; }
        }
    }
    eprintln!("stopping...");
    for name in &names {
        c.post(&format!("/api/v1/apps/{}/stop", enc(name)), &json!({})).await?;
    }
    for name in &names {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let st = c.get(&format!("/api/v1/apps/{}", enc(name))).await?;
            let running = st["components"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["instances"].as_array().is_some_and(|i| !i.is_empty()));
            if !running || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("{name}: stopped");
    }
    Ok(ExitCode::SUCCESS)
}

/// One entry per component, or counts per phase when there are many.
fn progress(st: &Value) -> Vec<String> {
    let comps: Vec<&Value> = st["components"].as_array().into_iter().flatten().collect();
    if comps.len() <= 8 {
        return comps
            .iter()
            .map(|c| format!("{} {} {}/{}", s(c, "name"), s(c, "phase"), s(c, "ready"), s(c, "desired")))
            .collect();
    }
    let mut by_phase = std::collections::BTreeMap::<String, usize>::new();
    for c in &comps {
        *by_phase.entry(s(c, "phase")).or_default() += 1;
    }
    by_phase.into_iter().map(|(p, n)| format!("{p} {n}")).collect()
}
