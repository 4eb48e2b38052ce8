// plait dashboard. Polls the control plane's telemetry API every 2 s and redraws in place;
// the live tap reads the NDJSON stream of /api/v1/tap with a ReadableStream. No framework:
// the page is small, and every string from the mesh goes into the DOM as text, never HTML.
"use strict";

const POLL_MS = 2000;
const TAP_ROWS = 200;
const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 176, NODE_H = 64, COL = 366, ROW = 100, PAD = 16;

// --- formatting ------------------------------------------------------------------------

function fmtRps(v) {
  if (v === null || v === undefined) return "–";
  if (v === 0) return "0";
  if (v < 10) return v.toFixed(2);
  if (v < 100) return v.toFixed(1);
  return Math.round(v).toString();
}
function fmtSuccess(v) {
  if (v === null || v === undefined) return "–";
  if (v >= 1) return "100%";
  return (Math.floor(v * 10000) / 100).toFixed(2) + "%";
}
function fmtMs(v) {
  if (v === null || v === undefined) return "–";
  if (v < 10) return v.toFixed(1) + " ms";
  if (v < 1000) return Math.round(v) + " ms";
  return (v / 1000).toFixed(2) + " s";
}
function fmtCount(v) {
  return v === null || v === undefined ? "–" : Math.round(v).toLocaleString("en-US");
}
function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds <= 0) return "expired";
  const d = Math.floor(seconds / 86400), h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  if (d > 0) return `${d} d ${h} h`;
  if (h > 0) return `${h} h ${m} m`;
  return `${m} m`;
}
function health(success) {
  if (success === null || success === undefined) return "idle";
  if (success >= 0.99) return "ok";
  if (success >= 0.95) return "warn";
  return "bad";
}
const HEALTH_COLOR = { ok: "#1f9d55", warn: "#c77c02", bad: "#d13c3c", idle: "#c4cad3" };

// --- tiny DOM helpers ------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
function $(id) { return document.getElementById(id); }

// --- service graph ---------------------------------------------------------------------

// Layers by call depth from the entry points (gateways, outside callers, anything nobody
// calls), breadth first; within a layer, ordered under the parents (barycenter), then by
// name, so the same mesh always draws the same way. Services without traffic sit apart.
function layout(nodes, edges) {
  const ids = new Set(nodes.map((n) => n.id));
  const parents = new Map(), children = new Map();
  for (const id of ids) { parents.set(id, []); children.set(id, []); }
  for (const e of edges) {
    if (e.source === e.target || !ids.has(e.source) || !ids.has(e.target)) continue;
    parents.get(e.target).push(e.source);
    children.get(e.source).push(e.target);
  }
  const connected = [...ids].filter((id) => parents.get(id).length || children.get(id).length).sort();
  const idle = [...ids].filter((id) => !connected.includes(id)).sort();
  const depth = new Map();
  let roots = connected.filter((id) => parents.get(id).length === 0);
  while (depth.size < connected.length) {
    if (!roots.length) roots = [connected.find((id) => !depth.has(id))]; // a cycle, no entry
    const queue = [];
    for (const id of roots) if (!depth.has(id)) { depth.set(id, 0); queue.push(id); }
    while (queue.length) {
      const id = queue.shift();
      for (const c of children.get(id)) if (!depth.has(c)) { depth.set(c, depth.get(id) + 1); queue.push(c); }
    }
    roots = [];
  }
  const layers = [];
  for (const id of connected) (layers[depth.get(id)] ||= []).push(id);
  const pos = new Map();
  const tallest = Math.max(1, ...layers.map((l) => (l ? l.length : 0)));
  layers.forEach((layer, d) => {
    if (!layer) return;
    const weight = (id) => {
      const ys = parents.get(id).filter((p) => pos.has(p)).map((p) => pos.get(p).y);
      return ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : Infinity;
    };
    layer.sort((a, b) => weight(a) - weight(b) || (a < b ? -1 : 1));
    const offset = ((tallest - layer.length) * ROW) / 2;
    layer.forEach((id, i) => pos.set(id, { x: PAD + d * COL, y: PAD + offset + i * ROW }));
  });
  const idleTop = PAD + (connected.length ? tallest * ROW + 20 : 0);
  idle.forEach((id, i) => pos.set(id, { x: PAD + (i % 4) * COL, y: idleTop + Math.floor(i / 4) * ROW }));
  const width = Math.max(...[...pos.values()].map((p) => p.x + NODE_W), 400) + PAD;
  const height = Math.max(...[...pos.values()].map((p) => p.y + NODE_H), 120) + PAD;
  return { pos, width, height, idle: new Set(idle) };
}

function edgePath(a, b) {
  const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
  if (x2 > x1) {
    const dx = (x2 - x1) / 2;
    return { d: `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`, mx: (x1 + x2) / 2, my: (y1 + y2) / 2 };
  }
  // Backwards or within a layer: leave and arrive underneath, bowing downwards.
  const sx = a.x + NODE_W / 2, sy = a.y + NODE_H, tx = b.x + NODE_W / 2, ty = b.y + NODE_H;
  const bow = Math.max(sy, ty) + 56;
  return { d: `M${sx},${sy} C${sx},${bow} ${tx},${bow} ${tx},${ty}`, mx: (sx + tx) / 2, my: bow - 14 };
}

function drawGraph(data) {
  const root = $("graph");
  root.replaceChildren();
  const nodes = data.nodes;
  if (!nodes.length) {
    root.setAttribute("viewBox", "0 0 600 120");
    root.append(svg("text", { x: 24, y: 60, class: "empty" }, "No proxies connected yet."));
    return;
  }
  const { pos, width, height, idle } = layout(nodes, data.edges);
  root.setAttribute("viewBox", `0 0 ${width} ${height}`);
  root.style.height = `${height}px`;
  root.style.maxWidth = `${width}px`;
  const defs = svg("defs");
  for (const [name, color] of [["arrow", "#b9c3d3"], ["arrow-active", "#2f5fd0"], ["arrow-bad", "#d13c3c"]]) {
    const marker = svg("marker", {
      id: name, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 9, markerHeight: 9,
      markerUnits: "userSpaceOnUse", orient: "auto-start-reverse",
    });
    marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: color }));
    defs.append(marker);
  }
  root.append(defs);
  const maxRps = Math.max(0.001, ...data.edges.map((e) => e.rps || 0));
  const edgeLayer = svg("g"), labelLayer = svg("g"), nodeLayer = svg("g");
  for (const e of data.edges) {
    const a = pos.get(e.source), b = pos.get(e.target);
    if (!a || !b) continue;
    const state = health(e.success);
    const cls = state === "bad" || state === "warn" ? "bad" : e.rps > 0 ? "active" : "";
    const g = svg("g", {
      class: `edge ${cls}`, "data-source": e.source, "data-target": e.target,
      "data-requests": Math.round(e.requests), "data-errors": Math.round(e.errors),
    });
    const { d, mx, my } = edgePath(a, b);
    const widthPx = e.rps > 0 ? 1.6 + 3.4 * Math.sqrt(e.rps / maxRps) : 1.2;
    const marker = cls === "bad" ? "arrow-bad" : cls === "active" ? "arrow-active" : "arrow";
    g.append(svg("path", { d, "stroke-width": widthPx.toFixed(2), "marker-end": `url(#${marker})` }));
    g.append(svg("title", {}, `${e.source} → ${e.target}: ${fmtCount(e.requests)} requests, ${fmtCount(e.errors)} failed`));
    edgeLayer.append(g);
    const text = `${fmtRps(e.rps)} rps · ${fmtSuccess(e.success)} · ${fmtMs(e.p99)}`;
    const label = svg("g", { class: `label ${cls}`, "data-source": e.source, "data-target": e.target });
    const t = svg("text", { x: mx, y: my + 4, "text-anchor": "middle" }, text);
    const w = text.length * 6.4 + 14;
    label.append(svg("rect", { x: mx - w / 2, y: my - 10, width: w, height: 20, rx: 10 }), t);
    labelLayer.append(label);
  }
  for (const n of nodes) {
    const p = pos.get(n.id);
    const g = svg("g", { class: `node ${n.kind}`, "data-id": n.id, transform: `translate(${p.x},${p.y})` });
    g.append(svg("rect", { class: "box", width: NODE_W, height: NODE_H, rx: 9 }));
    g.append(svg("rect", { class: "health", x: 0, y: 9, width: 3.5, height: NODE_H - 18, rx: 1.75, fill: HEALTH_COLOR[health(n.success)] }));
    const kind = n.kind === "service" ? `service · ${n.proxies} ${n.proxies === 1 ? "proxy" : "proxies"}` : n.kind;
    g.append(svg("text", { x: 14, y: 17, class: "kind" }, idle.has(n.id) ? `${kind} · no traffic` : kind));
    g.append(svg("text", { x: 14, y: 35, class: "name" }, n.name.length > 22 ? `${n.name.slice(0, 21)}…` : n.name));
    const metrics = n.kind === "external" ? "outside the mesh" : `${fmtRps(n.rps)} rps · ${fmtSuccess(n.success)} · ${fmtMs(n.p99)}`;
    g.append(svg("text", { x: 14, y: 53, class: "metrics" }, metrics));
    g.append(svg("title", {}, `${n.id}: ${fmtCount(n.requests)} requests, ${fmtCount(n.errors)} failed`));
    nodeLayer.append(g);
  }
  root.append(edgeLayer, nodeLayer, labelLayer);
}

// --- tables ------------------------------------------------------------------------------

function sparkline(values, cls) {
  const w = 120, h = 26;
  const box = svg("svg", { class: `spark ${cls || ""}`, width: w, height: h, viewBox: `0 0 ${w} ${h}` });
  const pts = values.map((v, i) => [i, v]).filter(([, v]) => v !== null && v !== undefined);
  if (pts.length < 2) return box;
  const max = Math.max(...pts.map(([, v]) => v)) || 1;
  const n = Math.max(values.length - 1, 1);
  const xy = pts.map(([i, v]) => [(i / n) * (w - 2) + 1, h - 2 - (v / max) * (h - 4)]);
  const line = xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
  box.append(svg("polygon", { points: `${xy[0][0].toFixed(1)},${h} ${line} ${xy[xy.length - 1][0].toFixed(1)},${h}` }));
  box.append(svg("polyline", { points: line }));
  return box;
}

function drawServices(nodes) {
  const rows = nodes.filter((n) => n.kind !== "external").map((n) => {
    const name = el("td", { class: "name" }, n.name, el("span", { class: "sub" }, n.namespace));
    if (n.kind === "gateway") name.append(" ", el("span", { class: "badge" }, "gateway"));
    const state = health(n.success);
    return el("tr", { "data-service": n.id },
      name,
      el("td", { class: `num ${state === "idle" ? "" : state}` }, fmtSuccess(n.success)),
      el("td", { class: "num" }, fmtRps(n.rps)),
      el("td", {}, sparkline(n.series.rps.map((v) => v || 0))),
      el("td", { class: "num" }, fmtMs(n.p50)),
      el("td", { class: "num" }, fmtMs(n.p95)),
      el("td", { class: "num" }, fmtMs(n.p99)),
      el("td", {}, sparkline(n.series.p99, "p99")),
      el("td", { class: "num" }, fmtCount(n.requests)));
  });
  $("services").tBodies[0].replaceChildren(...rows);
}

function drawProxies(proxies) {
  const rows = proxies.map((p) => {
    const sync = p.last_nack ? ["NACK", "bad"] : p.synced ? ["Synced", "ok"] : ["Stale", "warn"];
    const hl = p.health === "healthy" ? "ok" : p.health === "unknown" ? "" : "bad";
    const expires = p.certificate_expires_in;
    const certClass = expires === null ? "" : expires < 3600 ? "bad" : expires < 6 * 3600 ? "warn" : "";
    return el("tr", { "data-proxy": p.name },
      el("td", { class: "name" }, p.name, p.kind === "gateway" ? el("span", { class: "sub" }, "gateway") : ""),
      el("td", {}, p.service || "–"),
      el("td", {}, p.version || "–"),
      el("td", {}, el("span", { class: `badge ${hl}` }, p.health || "unknown")),
      el("td", { class: "num" }, `v${p.acked_version} / v${p.latest_version}`),
      el("td", {}, el("span", { class: `badge ${sync[1]}`, title: p.last_nack || "" }, sync[0])),
      el("td", { class: certClass, title: p.certificate_not_after || "" }, fmtDuration(expires)),
      el("td", {}, p.scrape_error ? el("span", { class: "badge bad", title: p.scrape_error }, "failing") : el("span", { class: "badge ok" }, "scraped")));
  });
  $("proxies").tBodies[0].replaceChildren(...rows);
}

function drawSummary(graph, proxies) {
  const edges = graph.edges;
  const rps = edges.reduce((a, e) => a + (e.rps || 0), 0);
  const ok = edges.reduce((a, e) => a + (e.rps || 0) * (e.success ?? 1), 0);
  $("kpi-rps").textContent = fmtRps(rps);
  const success = rps > 0 ? ok / rps : null;
  $("kpi-success").textContent = fmtSuccess(success);
  $("kpi-success").className = `kpi-value ${success === null ? "" : health(success)}`;
  $("kpi-services").textContent = graph.nodes.filter((n) => n.kind !== "external").length;
  const synced = proxies.filter((p) => p.synced).length;
  $("kpi-proxies").textContent = `${synced} / ${proxies.length}`;
  const expiries = proxies.map((p) => p.certificate_expires_in).filter((v) => v !== null && v !== undefined);
  $("kpi-cert").textContent = expiries.length ? fmtDuration(Math.min(...expiries)) : "–";
  $("graph-note").textContent = `requests per second · success rate · p99 latency, over the last ${Math.round(graph.window || 0)} s`;
}

function updateTapServices(proxies) {
  const select = $("tap-service");
  const services = [...new Set(proxies.map((p) => `${p.namespace}/${p.service}`))].sort();
  const current = [...select.options].map((o) => o.value);
  if (current.join() === services.join()) return;
  const chosen = select.value;
  select.replaceChildren(...services.map((s) => el("option", { value: s }, s.split("/")[1])));
  if (services.includes(chosen)) select.value = chosen;
  else if (services.some((s) => s.endsWith("/productpage"))) select.value = services.find((s) => s.endsWith("/productpage"));
}

// --- polling -----------------------------------------------------------------------------

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

async function poll() {
  try {
    const [graph, proxies] = await Promise.all([getJSON("/api/v1/telemetry/graph"), getJSON("/api/v1/telemetry/proxies")]);
    drawSummary(graph, proxies);
    drawGraph(graph);
    drawServices(graph.nodes);
    drawProxies(proxies);
    updateTapServices(proxies);
    $("live").className = "live on";
    $("live-text").textContent = "live";
    $("updated").textContent = `updated ${new Date().toLocaleTimeString("en-GB")}`;
    document.body.dataset.updated = String(Date.now());
  } catch (err) {
    $("live").className = "live off";
    $("live-text").textContent = "control plane unreachable";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

// --- live tap ------------------------------------------------------------------------------

let tapAbort = null;

function caller(r) {
  const id = r.peer_identity || "";
  return id.includes("/sa/") ? id.split("/sa/").pop() : (r.downstream_peer || "?").split(":")[0];
}
function fromTo(r) {
  const upstream = (r.upstream_cluster || "?").split(".")[0];
  if (r.listener === "inbound") return `${caller(r)} → ${r.proxy}`;
  if (r.listener === "gateway") return `${caller(r)} → ${upstream}`;
  return `${r.proxy} → ${upstream}${r.upstream_host ? ` (${r.upstream_host})` : ""}`;
}

function tapRow(r) {
  const time = (r.time || "").slice(11, 23);
  const dir = { inbound: "IN", outbound: "OUT", gateway: "GW" }[r.listener] || r.listener;
  const status = r.status || 0;
  const cls = status >= 500 || status === 0 ? "bad" : status >= 400 ? "warn" : "ok";
  return el("tr", { class: "fresh" },
    el("td", {}, time),
    el("td", {}, el("span", { class: "dir" }, dir)),
    el("td", {}, r.method || ""),
    el("td", { class: "path", title: r.path || "" }, r.path || ""),
    el("td", { class: `num ${cls}` }, status || "—"),
    el("td", { class: "num" }, fmtMs(r.duration_ms)),
    el("td", {}, fromTo(r)));
}

async function runTap(service, path) {
  const [namespace, name] = service.split("/");
  const params = new URLSearchParams({ service: name, namespace });
  if (path) params.set("path", path);
  tapAbort = new AbortController();
  const body = $("tap").tBodies[0];
  $("tap-status").textContent = `tapping ${name}…`;
  let seen = 0;
  try {
    const r = await fetch(`/api/v1/tap?${params}`, { signal: tapAbort.signal });
    if (!r.ok) throw new Error((await r.json()).error?.message || `HTTP ${r.status}`);
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines) {
        if (!line.trim()) continue;
        const record = JSON.parse(line);
        if (record.error) { $("tap-status").textContent = `${record.proxy}: ${record.error}`; continue; }
        if (record.dropped) { $("tap-status").textContent = `${record.dropped} requests not shown (tap too slow)`; continue; }
        body.prepend(tapRow(record));
        while (body.rows.length > TAP_ROWS) body.deleteRow(-1);
        seen += 1;
        $("tap-status").textContent = `${seen} requests`;
      }
    }
    $("tap-status").textContent = `stream ended after ${seen} requests`;
  } catch (err) {
    if (err.name !== "AbortError") $("tap-status").textContent = `tap failed: ${err.message}`;
  } finally {
    tapAbort = null;
    $("tap-toggle").textContent = "Start";
    $("tap-toggle").className = "";
  }
}

$("tap-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (tapAbort) { tapAbort.abort(); return; }
  const service = $("tap-service").value;
  if (!service) return;
  $("tap-toggle").textContent = "Stop";
  $("tap-toggle").className = "stop";
  runTap(service, $("tap-path").value.trim());
});

poll();
