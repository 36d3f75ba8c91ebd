// Yun's dashboard: plain JavaScript over the daemon's /api/v1, no build step and no CDN. The
// token comes in the URL fragment from `yun dashboard` (fragments never reach a server), is kept
// in sessionStorage and sent as a bearer token.
"use strict";

const REFRESH_MS = 3000;
const view = document.getElementById("view");
const crumbs = document.getElementById("crumbs");
const live = document.getElementById("live");

// The token arrives in the fragment, on load or when a link is opened in a loaded page.
function takeToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("yun-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + "#/");
  }
}
takeToken();

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

async function api(path, options = {}) {
  const token = sessionStorage.getItem("yun-token") || "";
  const resp = await fetch(path, {
    ...options,
    headers: { authorization: "Bearer " + token, "content-type": "application/json", ...(options.headers || {}) },
  });
  const text = await resp.text();
  if (resp.status === 401) throw new Error("Not signed in: open the link `yun dashboard` prints.");
  let body;
  try { body = JSON.parse(text || "{}"); } catch { body = { error: text }; }
  if (!resp.ok) throw new Error((body && body.error) || resp.statusText);
  return body;
}

async function ndjson(path) {
  const token = sessionStorage.getItem("yun-token") || "";
  const resp = await fetch(path, { headers: { authorization: "Bearer " + token } });
  if (!resp.ok) throw new Error((await resp.json().catch(() => ({}))).error || resp.statusText);
  return (await resp.text()).split("\n").filter(Boolean).map(l => JSON.parse(l));
}

const fmtMs = v => v == null ? "–" : v < 1 ? v.toFixed(2) + " ms" : v < 1000 ? v.toFixed(1) + " ms" : (v / 1000).toFixed(2) + " s";
const fmtNs = n => fmtMs(n / 1e6);
const fmtPct = v => (v * 100).toFixed(v > 0 && v < 0.01 ? 2 : 1) + "%";
const fmtBytes = b => b > 1 << 30 ? (b / (1 << 30)).toFixed(1) + " GiB" : (b / (1 << 20)).toFixed(1) + " MiB";
const timeOf = ns => new Date(ns / 1e6).toLocaleTimeString();
const pill = (text, cls) => `<span class="pill ${esc(cls ?? text)}">${esc(text)}</span>`;

// ---- routing -------------------------------------------------------------------------------

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "app" && parts[1]) return { page: "app", app: parts[1], tab: parts[2] || "overview", arg: parts[3] };
  if (parts[0] === "trace" && parts[1]) return { page: "trace", id: parts[1], app: parts[2] };
  return { page: "apps" };
}

let timer = null;
let rendering = false;
async function render(auto = false) {
  if (rendering) return;
  rendering = true;
  const r = route();
  try {
    crumbs.innerHTML = r.app ? `<a href="#/">apps</a>/ <a href="#/app/${encodeURIComponent(r.app)}">${esc(r.app)}</a>` : "";
    if (r.page === "apps") await renderApps();
    else if (r.page === "trace") await renderTrace(r.id, r.app);
    else await renderApp(r, auto);
    live.classList.remove("stale");
  } catch (e) {
    live.classList.add("stale");
    if (!auto) view.innerHTML = `<div class="error-box">${esc(e.message)}</div>`;
  } finally {
    rendering = false;
  }
}

function schedule() {
  clearInterval(timer);
  timer = setInterval(() => {
    const r = route();
    // Views with forms the user is filling in refresh on demand, not underneath them.
    if (r.page === "apps" || (r.page === "app" && ["overview", "events", "logs"].includes(r.tab))) render(true);
  }, REFRESH_MS);
}

window.addEventListener("hashchange", () => { takeToken(); render(); });
render();
schedule();

// ---- applications --------------------------------------------------------------------------

async function renderApps() {
  const { apps } = await api("/api/v1/apps");
  const rows = apps.map(a => {
    const ready = a.components.reduce((n, c) => n + c.ready, 0);
    const desired = a.components.reduce((n, c) => n + c.desired, 0);
    return `<tr class="clickable" data-href="#/app/${encodeURIComponent(a.name)}">
      <td><b>${esc(a.name)}</b></td><td>${pill(a.phase, a.phase.toLowerCase())}</td>
      <td>${esc(a.revision)}</td><td>${a.components.length}</td><td>${ready}/${desired}</td>
      <td class="muted">${esc(a.message)}</td></tr>`;
  }).join("");
  view.innerHTML = `<h1>Applications</h1><div class="panel"><table id="apps">
    <tr><th>name</th><th>phase</th><th>revision</th><th>components</th><th>instances ready</th><th></th></tr>
    ${rows || `<tr><td colspan="6" class="muted">No applications yet: <code>yun up -f app.yaml</code></td></tr>`}</table></div>`;
  clickableRows();
}

function clickableRows() {
  view.querySelectorAll("tr[data-href]").forEach(tr => tr.addEventListener("click", () => { location.hash = tr.dataset.href; }));
}

// ---- one application -----------------------------------------------------------------------

const TABS = ["overview", "traces", "logs", "history", "events"];

async function renderApp(r, auto) {
  const base = `#/app/${encodeURIComponent(r.app)}`;
  const tabs = TABS.map(t => `<a href="${base}/${t}" class="${t === r.tab ? "active" : ""}" data-tab="${t}">${t}</a>`).join("");
  const shell = `<h1>${esc(r.app)} <span id="phase"></span></h1><div class="tabs">${tabs}</div><div id="tab"></div>`;
  if (!auto || !document.getElementById("tab") || view.dataset.at !== r.app + r.tab) {
    view.innerHTML = shell;
    view.dataset.at = r.app + r.tab;
  }
  const tab = document.getElementById("tab");
  if (r.tab === "overview") await renderOverview(r.app, tab);
  else if (r.tab === "traces") await renderTraces(r.app, tab, auto);
  else if (r.tab === "logs") await renderLogs(r.app, tab, auto, r.arg);
  else if (r.tab === "history") await renderHistory(r.app, tab, auto);
  else if (r.tab === "events") await renderEvents(r.app, tab);
}

async function renderOverview(app, tab) {
  const [status, series, slo] = await Promise.all([
    api(`/api/v1/apps/${encodeURIComponent(app)}`),
    api(`/api/v1/apps/${encodeURIComponent(app)}/metrics?window=15m`),
    api(`/api/v1/apps/${encodeURIComponent(app)}/slo`),
  ]);
  document.getElementById("phase").innerHTML = pill(status.phase, status.phase.toLowerCase());
  const instances = status.components.flatMap(c => c.instances.map(i => ({ c, i })));
  const usage = series.usage || {};
  const usageOf = name => (usage[name] || []).slice(-1)[0] || {};
  tab.innerHTML = `
    <div class="panel"><h2>Service topology <span class="muted">(live traffic, last minute)</span></h2>${topology(status, series)}</div>
    <div class="panel"><h2>Golden signals <span class="muted">(15 minutes, 5 s steps)</span></h2>
      ${status.components.map(c => signals(c.name, (series.components || {})[c.name] || [])).join("")}</div>
    <div class="grid">
      <div class="panel"><h2>Instances</h2><table id="instances">
        <tr><th>instance</th><th>state</th><th>ready</th><th>restarts</th><th>CPU time</th><th>memory</th><th>last error</th></tr>
        ${instances.map(({ i }) => `<tr><td>${esc(i.id)}</td><td>${pill(i.state)}</td><td>${i.ready ? pill("ready", "ok") : pill("not ready", "warn")}</td>
          <td>${i.restarts}</td><td>${i.cpu_millis == null ? "–" : (i.cpu_millis / 1000).toFixed(2) + " s"}</td>
          <td>${i.rss_bytes == null ? "–" : fmtBytes(i.rss_bytes)}</td><td class="muted">${esc(i.last_error || i.last_exit || "")}</td></tr>`).join("")}
      </table>
      <table style="margin-top:.8rem"><tr><th>component</th><th>phase</th><th>ready</th><th>CPU</th><th>memory</th></tr>
        ${status.components.map(c => { const u = usageOf(c.name); return `<tr><td>${esc(c.name)}</td><td>${pill(c.phase, c.phase.toLowerCase())}</td>
          <td>${c.ready}/${c.desired}</td><td>${u.cpu_percent == null ? "–" : u.cpu_percent.toFixed(1) + "%"}</td><td>${u.rss_bytes ? fmtBytes(u.rss_bytes) : "–"}</td></tr>`; }).join("")}
      </table></div>
      <div class="panel"><h2>Service level objectives</h2>${sloTable(slo.objectives)}</div>
    </div>`;
}

function sloTable(objectives) {
  if (!objectives.length) return `<p class="muted">No objectives. Add an <code>slo</code> trait to a webservice.</p>`;
  return `<table id="slo"><tr><th>component</th><th>objective</th><th>target</th><th>compliance</th><th>budget left</th><th>burn 5m / 1h</th><th></th></tr>
    ${objectives.map(o => `<tr><td>${esc(o.component)}</td><td>${o.threshold_ms ? "latency ≤ " + o.threshold_ms + " ms" : "availability"}</td>
      <td>${o.target_percent}%</td><td>${o.compliance_percent == null ? "–" : o.compliance_percent.toFixed(3) + "%"}</td>
      <td>${budgetBar(o.budget_remaining)}</td><td>${o.burn_rate_5m.toFixed(1)} / ${o.burn_rate_1h.toFixed(1)}</td>
      <td>${o.fast_burn ? pill("fast burn", "bad") : pill("ok")}</td></tr>`).join("")}</table>`;
}

function budgetBar(left) {
  const pct = Math.max(0, Math.min(1, left));
  const color = left <= 0 ? "var(--bad)" : left < 0.25 ? "var(--warn)" : "var(--ok)";
  return `<svg width="90" height="10"><rect width="90" height="10" rx="3" fill="#eee"/><rect width="${90 * pct}" height="10" rx="3" fill="${color}"/></svg> ${(left * 100).toFixed(1)}%`;
}

// The topology: callers on the left, each component placed after the components that call it.
function topology(status, series) {
  const edges = (series.edges || []).map(e => {
    const recent = e.points.slice(-12).filter(p => p.rps > 0);
    const last = recent.slice(-1)[0];
    return { from: e.source.includes("/") ? e.source.split("/")[1] : e.source, to: e.target, recent, last };
  }).filter(e => e.recent.length);
  const names = status.components.map(c => c.name);
  if (edges.some(e => e.from === "external")) names.unshift("external");
  for (const e of edges) if (!names.includes(e.from)) names.unshift(e.from);
  const depth = {};
  for (const n of names) depth[n] = 0;
  for (let k = 0; k < names.length; k++) for (const e of edges) if (e.from !== e.to) depth[e.to] = Math.max(depth[e.to], depth[e.from] + 1);
  const columns = {};
  for (const n of names) (columns[depth[n]] ||= []).push(n);
  const W = 150, H = 44, GX = 230, GY = 36;
  const pos = {};
  Object.entries(columns).forEach(([d, col]) => col.forEach((n, i) => { pos[n] = { x: 10 + d * (W + GX), y: 10 + i * (H + GY) }; }));
  const width = 20 + (Object.keys(columns).length) * (W + GX) - GX;
  const height = 20 + Math.max(...Object.values(columns).map(c => c.length)) * (H + GY) - GY;
  const edgeSvg = edges.map(e => {
    const a = pos[e.from], b = pos[e.to];
    if (!a || !b) return "";
    const rps = e.recent.reduce((s, p) => s + p.rps, 0) / e.recent.length;
    const err = e.recent.reduce((s, p) => s + p.error_ratio, 0) / e.recent.length;
    const p99 = Math.max(...e.recent.map(p => p.p99_ms || 0));
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
    const label = `${rps.toFixed(1)} rps · ${fmtPct(err)} err · p99 ${fmtMs(p99)}`;
    // Straight edges label at their middle; edges between rows label nearer their start.
    const lx = x1 + (x2 - x1) / 2, ly = (y1 + y2) / 2 - 8;
    return `<g class="edge-group" data-from="${esc(e.from)}" data-to="${esc(e.to)}">
      <path class="edge ${err > 0.01 ? "bad" : ""}" stroke-width="${Math.min(6, 1.5 + Math.log10(1 + rps))}" d="M${x1},${y1} C${x1 + GX / 2},${y1} ${x2 - GX / 2},${y2} ${x2},${y2}" marker-end="url(#arrow)"/>
      <text class="label" x="${lx}" y="${ly}" text-anchor="middle">${esc(label)}</text></g>`;
  }).join("");
  const nodeSvg = names.map(n => {
    const p = pos[n];
    const c = status.components.find(c => c.name === n);
    const sub = c ? `${c.ready}/${c.desired} ready` : "callers";
    return `<g class="node ${c ? "" : "external"}" data-name="${esc(n)}" transform="translate(${p.x},${p.y})">
      <rect width="${W}" height="${H}"/><text x="12" y="19" font-weight="600">${esc(n)}</text>
      <text x="12" y="35" class="label">${esc(sub)}</text></g>`;
  }).join("");
  return `<svg class="topology" id="topology" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">
    <defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#9aa7bd"/></marker></defs>
    ${edgeSvg}${nodeSvg}</svg>${edges.length ? "" : `<p class="muted">No traffic in the last minute.</p>`}`;
}

function signals(name, points) {
  const last = points.slice(-1)[0] || {};
  return `<div class="component-signals" data-component="${esc(name)}"><b>${esc(name)}</b>
    <div class="charts">
      ${chart("requests/s", points.map(p => p.rps), v => v.toFixed(1), "")}
      ${chart("errors", points.map(p => p.error_ratio), fmtPct, "errors")}
      ${chart("p99 latency", points.map(p => p.p99_ms ?? 0), fmtMs, "latency")}
    </div></div>`;
}

function chart(title, values, fmt, cls) {
  const W = 300, H = 60;
  const max = Math.max(1e-9, ...values);
  // One point draws as a flat line across.
  if (values.length === 1) values = [values[0], values[0]];
  const xs = values.map((_, i) => values.length < 2 ? 0 : (i / (values.length - 1)) * W);
  const ys = values.map(v => H - 2 - (v / max) * (H - 6));
  const line = xs.map((x, i) => `${i ? "L" : "M"}${x.toFixed(1)},${ys[i].toFixed(1)}`).join(" ");
  const last = values.length ? fmt(values[values.length - 1]) : "–";
  return `<div><div class="chart-title"><span>${esc(title)}</span><span>${esc(last)} · max ${esc(values.length ? fmt(max) : "–")}</span></div>
    <svg class="chart ${cls}" width="100%" height="${H}" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none">
      ${values.length ? `<path class="area" d="${line} L${W},${H} L0,${H} Z"/><path class="line" d="${line}"/>` : ""}</svg></div>`;
}

// ---- traces --------------------------------------------------------------------------------

async function renderTraces(app, tab, auto) {
  if (auto) return;
  tab.innerHTML = `<form class="filters" id="trace-filters">
      <select name="service"><option value="">all components</option></select>
      <select name="status"><option value="any">any status</option><option value="error">errors only</option></select>
      <input name="minDuration" placeholder="min duration (e.g. 100ms)" size="20">
      <input name="since" placeholder="since (e.g. 15m)" size="14">
      <button class="primary">Search</button></form><div class="panel" id="trace-list"></div>`;
  const status = await api(`/api/v1/apps/${encodeURIComponent(app)}`);
  const sel = tab.querySelector("select[name=service]");
  status.components.forEach(c => sel.insertAdjacentHTML("beforeend", `<option>${esc(c.name)}</option>`));
  const form = tab.querySelector("form");
  const search = async () => {
    const q = new URLSearchParams({ app, limit: "100" });
    for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
    const list = tab.querySelector("#trace-list");
    try {
      const { traces } = await api("/api/v1/traces?" + q);
      list.innerHTML = `<table id="traces"><tr><th>trace</th><th>start</th><th>duration</th><th>spans</th><th>status</th><th>root</th><th>services</th></tr>
        ${traces.map(t => `<tr class="clickable" data-href="#/trace/${t.trace_id}/${encodeURIComponent(app)}"><td><code>${t.trace_id.slice(0, 12)}…</code></td>
          <td>${timeOf(t.start_unix_nanos)}</td><td>${fmtNs(t.duration_nanos)}</td><td>${t.spans}</td>
          <td>${t.errors ? pill(t.errors + " errors", "bad") : pill("ok")}</td><td>${esc(t.root_service)} <span class="muted">${esc(t.root_name)}</span></td>
          <td class="muted">${esc(t.services.join(", "))}</td></tr>`).join("") || `<tr><td colspan="7" class="muted">No traces match.</td></tr>`}</table>`;
      clickableRows();
    } catch (e) { list.innerHTML = `<div class="error-box">${esc(e.message)}</div>`; }
  };
  form.addEventListener("submit", ev => { ev.preventDefault(); search(); });
  await search();
}

async function renderTrace(id, app) {
  const { spans } = await api(`/api/v1/traces/${encodeURIComponent(id)}`);
  const start = Math.min(...spans.map(s => s.start_unix_nanos));
  const end = Math.max(...spans.map(s => s.end_unix_nanos));
  const total = Math.max(1, end - start);
  const ids = new Set(spans.map(s => s.span_id));
  const ordered = [];
  const walk = (parent, depth) => {
    for (const s of spans.filter(s => parent === null ? !s.parent_id || !ids.has(s.parent_id) : s.parent_id === parent)) {
      if (ordered.length > 2000 || depth > 64) return;
      ordered.push({ s, depth });
      walk(s.span_id, depth + 1);
    }
  };
  walk(null, 0);
  const ROW = 26, LEFT = 330, W = 1000;
  const bars = ordered.map(({ s, depth }, i) => {
    const x = LEFT + ((s.start_unix_nanos - start) / total) * (W - LEFT - 10);
    const w = Math.max(2, ((s.end_unix_nanos - s.start_unix_nanos) / total) * (W - LEFT - 10));
    const who = (s.app ? s.app + "/" : "") + s.service;
    return `<g class="span" data-span="${esc(s.span_id)}" data-parent="${esc(s.parent_id || "")}" transform="translate(0,${i * ROW})">
      <text x="${8 + depth * 14}" y="17">${esc(who)} <tspan class="muted" fill="#6b7280">${esc(s.name.length > 26 ? s.name.slice(0, 25) + "…" : s.name)}</tspan></text>
      <rect class="bar ${s.error ? "error" : ""}" x="${x}" y="5" width="${w}" height="14" rx="2"><title>${esc(s.name)} — ${fmtNs(s.end_unix_nanos - s.start_unix_nanos)}</title></rect>
      <text x="${Math.min(x + w + 4, W - 60)}" y="17" font-size="11">${fmtNs(s.end_unix_nanos - s.start_unix_nanos)}</text></g>`;
  }).join("");
  const back = app ? `<a href="#/app/${encodeURIComponent(app)}/traces">← traces</a> · <a href="#/app/${encodeURIComponent(app)}/logs/${id}">logs of this trace</a>` : "";
  view.innerHTML = `<h1>Trace <code>${esc(id)}</code></h1><p>${back}</p>
    <div class="panel"><svg class="waterfall" id="waterfall" width="100%" viewBox="0 0 ${W} ${ordered.length * ROW + 10}">${bars}</svg></div>
    <div class="panel"><h2>Spans</h2><table id="spans"><tr><th>service</th><th>name</th><th>duration</th><th>status</th><th>attributes</th></tr>
      ${ordered.map(({ s }) => `<tr><td>${esc((s.app ? s.app + "/" : "") + s.service)}</td><td>${esc(s.name)}</td><td>${fmtNs(s.end_unix_nanos - s.start_unix_nanos)}</td>
        <td>${s.error ? pill("error", "bad") + " " + esc(s.status_message) : pill("ok")}</td>
        <td class="muted"><pre>${esc(Object.entries(s.attributes).map(([k, v]) => k + "=" + v).join("\n"))}</pre></td></tr>`).join("")}</table></div>`;
}

// ---- logs ----------------------------------------------------------------------------------

async function renderLogs(app, tab, auto, trace) {
  let form = tab.querySelector("#log-filters");
  if (!form) {
    tab.innerHTML = `<form class="filters" id="log-filters">
        <input name="grep" placeholder="text to find" size="24">
        <input name="trace" placeholder="trace id" size="34" value="${esc(trace || "")}">
        <input name="since" placeholder="since (e.g. 10m)" size="14">
        <button class="primary">Filter</button></form><div class="panel" id="log-lines"></div>`;
    form = tab.querySelector("#log-filters");
    form.addEventListener("submit", ev => { ev.preventDefault(); renderLogs(app, tab, false); });
  }
  const q = new URLSearchParams({ tail: "300" });
  for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
  const out = tab.querySelector("#log-lines");
  try {
    const lines = await ndjson(`/api/v1/apps/${encodeURIComponent(app)}/logs?` + q);
    out.innerHTML = lines.length ? lines.map(l => `<div class="log-line ${esc(l.stream)}"><span class="time">${esc(l.time.slice(11, 23))}</span>
        <span class="inst">${esc(l.instance)}</span><pre>${esc(l.line)}</pre>
        ${l.trace_id ? `<a class="trace-link" href="#/trace/${esc(l.trace_id)}/${encodeURIComponent(app)}">trace</a>` : ""}</div>`).join("")
      : `<p class="muted">No lines match.</p>`;
  } catch (e) { if (!auto) out.innerHTML = `<div class="error-box">${esc(e.message)}</div>`; }
}

// ---- history -------------------------------------------------------------------------------

async function renderHistory(app, tab, auto) {
  if (auto) return;
  const h = await api(`/api/v1/apps/${encodeURIComponent(app)}/revisions`);
  tab.innerHTML = `<div class="panel"><table id="revisions"><tr><th>revision</th><th>created</th><th>by</th><th>message</th><th></th></tr>
    ${h.revisions.slice().reverse().map(r => `<tr><td>${r.number} ${r.current ? pill("current", "ok") : ""}</td><td>${esc(r.created_at)}</td>
      <td>${esc(r.actor)}</td><td class="muted">${esc(r.message)}</td>
      <td>${r.current ? "" : `<button data-diff="${r.number}">diff</button> <button class="danger" data-rollback="${r.number}">roll back to ${r.number}</button>`}</td></tr>`).join("")}
    </table></div><div class="panel" id="diff" hidden></div>`;
  tab.querySelectorAll("button[data-diff]").forEach(b => b.addEventListener("click", async () => {
    const [old, cur] = await Promise.all([
      api(`/api/v1/apps/${encodeURIComponent(app)}/revisions/${b.dataset.diff}`),
      api(`/api/v1/apps/${encodeURIComponent(app)}/revisions/${h.current}`),
    ]);
    const box = tab.querySelector("#diff");
    box.hidden = false;
    box.innerHTML = `<h2>Revision ${b.dataset.diff} → current (${h.current})</h2><pre class="diff">${lineDiff(old.manifest, cur.manifest)}</pre>`;
  }));
  tab.querySelectorAll("button[data-rollback]").forEach(b => b.addEventListener("click", async () => {
    if (!confirm(`Roll ${app} back to revision ${b.dataset.rollback}? This makes a new revision with its spec.`)) return;
    try {
      await api(`/api/v1/apps/${encodeURIComponent(app)}/rollback`, { method: "POST", body: JSON.stringify({ to: Number(b.dataset.rollback) }) });
      await renderHistory(app, tab, false);
    } catch (e) { alert(e.message); }
  }));
}

// A line diff by longest common subsequence (manifests are small).
function lineDiff(a, b) {
  const x = a.split("\n"), y = b.split("\n");
  if (x.length * y.length > 4e6) return esc("(too large to compare)");
  const L = Array.from({ length: x.length + 1 }, () => new Uint32Array(y.length + 1));
  for (let i = x.length - 1; i >= 0; i--) for (let j = y.length - 1; j >= 0; j--)
    L[i][j] = x[i] === y[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  while (i < x.length || j < y.length) {
    if (i < x.length && j < y.length && x[i] === y[j]) { out.push("  " + esc(x[i])); i++; j++; }
    else if (j < y.length && (i >= x.length || L[i][j + 1] >= L[i + 1][j])) { out.push(`<span class="add">+ ${esc(y[j])}</span>`); j++; }
    else { out.push(`<span class="del">- ${esc(x[i])}</span>`); i++; }
  }
  return out.join("\n");
}

// ---- events --------------------------------------------------------------------------------

async function renderEvents(app, tab) {
  const { events } = await api(`/api/v1/events?app=${encodeURIComponent(app)}&limit=200`);
  tab.innerHTML = `<div class="panel"><table id="events"><tr><th>time</th><th>component</th><th>reason</th><th>message</th><th>by</th></tr>
    ${events.slice().reverse().map(e => `<tr><td>${esc(e.time.slice(0, 19).replace("T", " "))}</td><td>${esc(e.component || "")}</td>
      <td>${pill(e.reason, e.severity === "warning" ? "warn" : "")}</td><td>${esc(e.message)}</td><td class="muted">${esc(e.actor)}</td></tr>`).join("")}</table></div>`;
}
