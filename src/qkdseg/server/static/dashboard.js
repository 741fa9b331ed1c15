// qkdseg operator dashboard: one client of /dashboard/api/ (docs/kms.md). No build step, no outside host.
"use strict";

const API = "api/";
const SVG = "http://www.w3.org/2000/svg";
const SEGMENT_COLOURS = ["#ff5a1f", "#7a3fc2", "#0f9ab8", "#c2185b", "#5d7f00", "#8d6e63"];
const MAX_ROWS = 300;

const state = {
  net: null, pools: null, linkEls: [], nodeEls: new Map(), nodeXY: new Map(),
  rows: new Map(), selectedSeq: null, chosenLink: null, lastSeq: 0,
};

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function svgEl(tag, attrs = {}) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

async function getJSON(path) {
  const r = await fetch(API + path, { credentials: "same-origin", cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function fmt(x, digits = 4) {
  if (x === null || x === undefined) return "-";
  if (typeof x === "number") return Number.isInteger(x) ? x.toLocaleString("en") : x.toFixed(digits);
  return String(x);
}

function fmtTime(t) {
  if (!t) return "-";
  const d = new Date(t * 1000);
  return d.toLocaleTimeString("en-GB", { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

// ---- the map ---------------------------------------------------------------------------------
function drawMap(net) {
  const map = document.getElementById("map");
  const W = 1000, H = 600, M = 50;
  const xs = net.nodes.map(n => n.x), ys = net.nodes.map(n => n.y);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = (W - 2 * M) / Math.max(x1 - x0, 1e-9), sy = (H - 2 * M) / Math.max(y1 - y0, 1e-9);
  const s = Math.min(sx, sy);
  const ox = (W - s * (x1 - x0)) / 2, oy = (H - s * (y1 - y0)) / 2;
  for (const n of net.nodes) state.nodeXY.set(n.id, [ox + s * (n.x - x0), H - (oy + s * (n.y - y0))]);
  const big = net.nodes.length > 150;

  const links = document.getElementById("links");
  links.replaceChildren();
  links.classList.toggle("dense", net.links.length > 300);  // thin lines, or a large network is one blot
  state.linkEls = net.links.map(l => {
    const [ax, ay] = state.nodeXY.get(l.u), [bx, by] = state.nodeXY.get(l.v);
    const line = svgEl("line", { x1: ax, y1: ay, x2: bx, y2: by, class: "link link-READY",
                                 "data-link": l.index, "data-u": l.u, "data-v": l.v, "data-state": "READY" });
    const title = svgEl("title");
    line.appendChild(title);
    line.addEventListener("click", () => chooseLink(l.index));
    links.appendChild(line);
    return line;
  });

  const nodes = document.getElementById("nodes");
  nodes.replaceChildren();
  for (const n of net.nodes) {
    const [x, y] = state.nodeXY.get(n.id);
    const kind = n.saes.length ? "sae" : (n.trusted ? "trusted" : "untrusted");
    const g = svgEl("g", { class: "node", "data-node": n.id, "data-kind": kind,
                           "data-trusted": n.trusted ? "true" : "false", transform: `translate(${x},${y})` });
    const r = big ? 4 : 9;
    if (n.saes.length) g.appendChild(svgEl("circle", { r: r + 6, class: "node-sae-ring" }));
    if (n.trusted) g.appendChild(svgEl("rect", { x: -r, y: -r, width: 2 * r, height: 2 * r, class: "node-trusted" }));
    else g.appendChild(svgEl("circle", { r: r, class: "node-untrusted" }));
    const title = svgEl("title");
    title.textContent = `node ${n.id}: ${n.trusted ? "trusted relay" : "untrusted relay, p = " + n.p}` +
      (n.saes.length ? `; SAE ${n.saes.join(", ")}` : "");
    g.appendChild(title);
    if (!big) {
      const label = svgEl("text", { x: r + 4, y: -r - 2 });
      label.textContent = n.id;
      g.appendChild(label);
      if (!n.trusted) {
        const p = svgEl("text", { x: r + 4, y: r + 10, class: "p" });
        p.textContent = "p " + n.p;
        g.appendChild(p);
      }
      if (n.saes.length) {
        const sae = svgEl("text", { x: -r - 4, y: r + 22, class: "sae", "text-anchor": "middle" });
        sae.textContent = n.saes.join(", ");
        g.appendChild(sae);
      }
    }
    nodes.appendChild(g);
    state.nodeEls.set(n.id, g);
  }
  map.setAttribute("data-nodes", net.nodes.length);
  map.setAttribute("data-links", net.links.length);
}

function applyPools(p) {
  state.pools = p;
  const counts = { READY: 0, WARNING: 0, CHARGING: 0, EMPTY: 0 };
  p.states.forEach((st, k) => {
    const line = state.linkEls[k];
    counts[st] += 1;
    if (!line) return;
    if (line.getAttribute("data-state") !== st) {
      line.classList.remove("link-READY", "link-WARNING", "link-CHARGING", "link-EMPTY");
      line.classList.add("link-" + st);
      line.setAttribute("data-state", st);
    }
    line.setAttribute("data-level", p.levels[k]);
    // the level as well as the state: a fuller pool is drawn more opaque
    const share = p.capacity[k] > 0 ? Math.min(1, p.levels[k] / p.capacity[k]) : 0;
    line.setAttribute("stroke-opacity", (0.35 + 0.65 * share).toFixed(3));
    const l = state.net.links[k];
    const dev = p.devices ? `, device ${p.devices.states[k]}` : "";
    line.setAttribute("data-device", p.devices ? p.devices.states[k] : "");
    line.firstChild.textContent = `link ${l.u}-${l.v}: ${fmt(p.levels[k])} / ${fmt(p.capacity[k])} bits, ${st}${dev}`;
  });
  document.getElementById("map").setAttribute("data-states", JSON.stringify(counts));
  // nodes planned around (reason: suspect, unready...): marked on the map, the reason in the node's title
  const excluded = p.excluded || {};
  for (const [id, g] of state.nodeEls) {
    const why = excluded[id] || "";
    if ((g.getAttribute("data-excluded") || "") === why) continue;
    g.setAttribute("data-excluded", why);
    g.classList.toggle("excluded", !!why);
    const title = g.querySelector("title");
    title.textContent = title.textContent.replace(/; excluded from planning \(.*\)$/, "") +
      (why ? `; excluded from planning (${why})` : "");
  }
  document.getElementById("map").setAttribute("data-excluded", JSON.stringify(excluded));
  if (state.chosenLink !== null) refreshChart();
}

// ---- a delivery's route ------------------------------------------------------------------
function showRoute(row) {
  const g = document.getElementById("route");
  g.replaceChildren();
  for (const n of state.nodeEls.values()) {
    const ring = n.querySelector(".segment-ring");
    if (ring) ring.remove();
    n.removeAttribute("data-segment");
  }
  const caption = document.getElementById("route-caption");
  const shown = !!(row && row.route_paths && row.route_paths.length);
  document.getElementById("links").classList.toggle("dim", shown);
  if (!shown) {
    if (row && row.restored && row.segment_nodes && row.segment_nodes.length) {
      ringSegmentNodes(row.segment_nodes);
      caption.textContent = `Delivery #${row.seq} (before this start, from the audit log): segment nodes ` +
        `${row.segment_nodes.join(" → ")}, ${row.paths} paths; the audit log keeps no paths.`;
    } else {
      caption.textContent = row ? `Delivery #${row.seq} relayed nothing (${row.kind}).` :
        "Select a delivery to see its route.";
    }
    g.removeAttribute("data-seq");
    return;
  }
  row.route_paths.forEach((seg, i) => {
    const colour = SEGMENT_COLOURS[i % SEGMENT_COLOURS.length];
    seg.forEach((path, j) => {
      const off = (j - (seg.length - 1) / 2) * 4;
      const pts = path.map(v => state.nodeXY.get(v)).filter(Boolean).map(([x, y]) => `${x + off},${y + off}`);
      g.appendChild(svgEl("polyline", { points: pts.join(" "), class: "route-path", stroke: colour,
                                        "data-segment": i, "data-path": j }));
    });
  });
  ringSegmentNodes(row.segment_nodes);
  g.setAttribute("data-seq", row.seq);
  caption.textContent = `Delivery #${row.seq}: segment nodes ${row.segment_nodes.join(" → ")}; ` +
    row.route_paths.map((s, i) => `segment ${i + 1}: ${s.length} path${s.length > 1 ? "s" : ""}`).join(", ") +
    `; route security ${fmt(row.route_security)}.`;
}

function ringSegmentNodes(nodes) {
  for (const v of nodes) {
    const n = state.nodeEls.get(v);
    if (!n) continue;
    n.insertBefore(svgEl("circle", { r: 20, class: "segment-ring" }), n.firstChild);
    n.setAttribute("data-segment", "true");
  }
}

// ---- the deliveries table -----------------------------------------------------------------
function eventLabel(row) {
  return { issue: "enc_keys", fetch: "dec_keys", refusal: row.op || "refused", expiry: "expiry" }[row.kind] || row.kind;
}

function addRow(row, atTop = true) {
  if (state.rows.has(row.seq)) return;
  state.rows.set(row.seq, row);
  state.lastSeq = Math.max(state.lastSeq, row.seq);
  const tbody = document.querySelector("#deliveries tbody");
  const outcome = row.outcome === "refused" ? `refused ${row.status}` : row.outcome;
  const tr = el("tr", { "data-seq": row.seq, "data-kind": row.kind, class: row.outcome + (row.restored ? " restored" : "") });
  if (row.restored) tr.title = "before this start: from the audit log";
  const cells = [
    row.seq, fmtTime(row.time), eventLabel(row), row.master || "-", row.slave || "-", fmt(row.keys), fmt(row.size),
    fmt(row.requested_security), fmt(row.achieved_security), fmt(row.segments), fmt(row.paths),
    fmt(row.consumed_bits),
  ];
  cells.forEach(c => tr.appendChild(el("td", {}, String(c))));
  tr.appendChild(el("td", { class: "outcome" }, outcome));
  tr.appendChild(el("td", { class: "ids" }, (row.key_ids || []).join(" ")));
  let why = "";
  if (row.outcome === "refused") why = `${row.reason}: ${row.message || ""}`;
  else if (row.fallback) why = row.fallback;
  else if (row.kind === "expiry") why = row.message || "";
  tr.appendChild(el("td", { class: "reason" }, why));
  tr.appendChild(el("td", { class: "node" }, row.node == null ? "-" : String(row.node)));
  tr.addEventListener("click", () => selectRow(row.seq));
  if (atTop) tbody.insertBefore(tr, tbody.firstChild); else tbody.appendChild(tr);
  const want = document.getElementById("filter").value;
  tr.hidden = !(want === "all" || want === row.kind || (want === "keys" && (row.kind === "issue" || row.kind === "fetch")));
  while (tbody.children.length > MAX_ROWS) {
    const last = tbody.lastChild;
    state.rows.delete(Number(last.getAttribute("data-seq")));
    last.remove();
  }
}

function applyFilter() {
  const want = document.getElementById("filter").value;
  document.querySelectorAll("#deliveries tbody tr").forEach(tr => {
    const kind = tr.getAttribute("data-kind");
    tr.hidden = !(want === "all" || want === kind || (want === "keys" && (kind === "issue" || kind === "fetch")));
  });
}

function selectRow(seq) {
  state.selectedSeq = seq;
  document.querySelectorAll("#deliveries tbody tr").forEach(tr =>
    tr.classList.toggle("selected", Number(tr.getAttribute("data-seq")) === seq));
  showRoute(state.rows.get(seq));
}

// ---- counters -------------------------------------------------------------------------------
function applyCounters(c) {
  const a = c.last_minute, b = c.since_start;
  const rows = [
    ["deliveries (enc_keys)", a.deliveries, b.deliveries],
    ["keys served", a.keys_served, b.keys_served],
    ["key bits served", a.key_bits_served, b.key_bits_served],
    ["mean security of served keys", a.mean_security, b.mean_security],
    ["fetches by slaves (dec_keys)", a.fetches, b.fetches],
    ["refusals", a.refusals, b.refusals],
  ];
  const reasons = new Set([...Object.keys(a.refusals_by_reason), ...Object.keys(b.refusals_by_reason)]);
  for (const r of [...reasons].sort()) rows.push(["  refused: " + r, a.refusals_by_reason[r] || 0, b.refusals_by_reason[r] || 0]);
  rows.push(["expiries", a.expiries, b.expiries]);
  const tbody = document.querySelector("#counters tbody");
  tbody.replaceChildren(...rows.map(([name, x, y]) => {
    const tr = el("tr", { "data-counter": name.trim() });
    tr.appendChild(el("td", {}, name));
    tr.appendChild(el("td", {}, fmt(x)));
    tr.appendChild(el("td", {}, fmt(y)));
    return tr;
  }));
}

// ---- key stocks ------------------------------------------------------------------------------
const STOCK_S = 2000;
function applyStocks(s) {
  const panel = document.getElementById("stock-panel");
  panel.hidden = s.rows.length === 0;
  const tbody = document.querySelector("#stocks tbody");
  tbody.replaceChildren(...s.rows.map(r => {
    const tr = el("tr", { "data-stock": r.where + " " + r.pair });
    const low = r.keys < r.low ? " low" : "";
    const cells = [r.where + (r.refilled_here ? " (refills)" : ""), r.pair, r.keys, r.target, `${r.low}:${r.high}`,
                   r.hits, r.misses, r.refill_runs, r.refill_failures, r.expired_unused, r.dropped_one_end];
    cells.forEach((v, i) => tr.appendChild(el("td", i === 2 ? { class: "level" + low } : {}, fmt(v))));
    return tr;
  }));
}

async function refreshStocks() {
  try { applyStocks(await getJSON("stocks")); } catch (e) { /* the next tick retries */ }
  setTimeout(refreshStocks, STOCK_S);
}

// ---- one link's pool over time ------------------------------------------------------------
function chooseLink(k) {
  state.chosenLink = k;
  state.linkEls.forEach((l, i) => l.classList.toggle("chosen", i === k));
  const l = state.net.links[k];
  document.getElementById("chart-link").textContent = `${l.u}-${l.v}`;
  refreshChart();
}

let chartBusy = false;
async function refreshChart() {
  if (chartBusy || state.chosenLink === null) return;
  chartBusy = true;
  try {
    const h = await getJSON("links/" + state.chosenLink + "?seconds=900");
    drawChart(h);
  } catch (e) { /* the next update retries */ }
  chartBusy = false;
}

function drawChart(h) {
  const chart = document.getElementById("chart");
  const W = 400, H = 180;
  chart.replaceChildren();
  const cap = Math.max(h.capacity_bits, 1);
  const y = v => H - 8 - (H - 16) * v / cap;
  chart.appendChild(svgEl("line", { x1: 0, x2: W, y1: y(cap), y2: y(cap), class: "cap" }));
  if (state.pools) {
    chart.appendChild(svgEl("line", { x1: 0, x2: W, y1: y(cap * state.pools.ready_share), y2: y(cap * state.pools.ready_share), class: "ready" }));
    chart.appendChild(svgEl("line", { x1: 0, x2: W, y1: y(state.pools.empty_bits), y2: y(state.pools.empty_bits), class: "empty" }));
  }
  const caption = document.getElementById("chart-caption");
  if (h.times.length < 1) { caption.textContent = "no samples yet"; return; }
  const t0 = h.times[0], t1 = h.times[h.times.length - 1];
  const span = Math.max(t1 - t0, 1);
  const pts = h.times.map((t, i) => `${(W * (t - t0) / span).toFixed(1)},${y(h.levels[i]).toFixed(1)}`);
  chart.appendChild(svgEl("polyline", { points: pts.join(" "), class: "level" }));
  chart.setAttribute("data-samples", h.times.length);
  const last = h.levels[h.levels.length - 1];
  caption.textContent = `${fmt(last)} of ${fmt(h.capacity_bits)} bits now; ${h.times.length} samples over ` +
    `${Math.round(t1 - t0)} s (dashed: capacity, READY and EMPTY thresholds).`;
}

// ---- start -----------------------------------------------------------------------------------
async function start() {
  const net = await getJSON("network");
  state.net = net;
  document.getElementById("kme").textContent =
    `KME ${net.kme_id} · ${net.algorithm} routing · ${net.reconstruction} reconstruction · default level ${net.security_level}`;
  document.getElementById("net-name").textContent =
    `${net.name || ""} · ${net.nodes.length} nodes · ${net.links.length} links · positions from ${net.positions}`;
  drawMap(net);
  applyPools(await getJSON("pools"));
  applyCounters(await getJSON("counters"));
  refreshStocks();
  const d = await getJSON("deliveries?limit=" + MAX_ROWS);
  for (const row of d.rows) addRow(row, false);
  connect();
}

function connect() {
  const live = document.getElementById("live");
  const es = new EventSource(API + "events");
  let lost = false;
  es.onopen = () => {
    if (lost) { es.close(); location.reload(); return; }  // the server restarted: start again from its state
    live.textContent = "live"; live.className = "live on";
  };
  es.onerror = () => { lost = true; live.textContent = "reconnecting"; live.className = "live off"; };
  es.addEventListener("pools", e => applyPools(JSON.parse(e.data)));
  es.addEventListener("counters", e => applyCounters(JSON.parse(e.data)));
  es.addEventListener("delivery", e => addRow(JSON.parse(e.data)));
  es.addEventListener("reload", () => { es.close(); location.reload(); });
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("filter").addEventListener("change", applyFilter);
  start().catch(err => {
    const live = document.getElementById("live");
    live.textContent = "error: " + err.message;
    live.className = "live off";
  });
});
