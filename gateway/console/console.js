// The Meshgate console: plain DOM, no framework, nothing loaded from elsewhere.
// Every figure comes from /console/api/ of the gateway that served this page; nothing is written.
"use strict";

const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "meshgate-console-token";
const STATE_TEXT = {
  replicating: "replicating", connecting: "connecting", backing_off: "backing off",
  paused: "paused", standby: "standby", unknown: "unknown", unspecified: "unknown",
};
let lastForwarded = new Map(); // "origin>destination" -> [forwarded, time ms]

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options) {
  const headers = Object.assign({}, (options && options.headers) || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const resp = await fetch("/console/api/" + path, Object.assign({}, options, { headers, cache: "no-store" }));
  let body = null;
  try { body = await resp.json(); } catch (e) { body = { error: resp.statusText }; }
  if (resp.status === 401 || resp.status === 403) askToken(body.error);
  if (!resp.ok) throw new ApiError(resp.status, body.error || resp.statusText);
  return body;
}

function askToken(message) {
  const form = document.getElementById("token-form");
  form.hidden = false;
  document.getElementById("token-error").textContent = message || "";
}

function fmt(n, digits) {
  if (n === undefined || n === null) return "–";
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits || 0 });
}

function stateClass(state) { return "s-" + (STATE_TEXT[state] ? state : "unknown"); }

// --- the mesh map -------------------------------------------------------------------------

function rates(links, now) {
  const out = new Map();
  const next = new Map();
  for (const l of links) {
    const key = l.origin + ">" + l.destination;
    if (l.forwarded === undefined) continue;
    next.set(key, [l.forwarded, now]);
    const before = lastForwarded.get(key);
    if (before && now > before[1]) out.set(key, Math.max(0, (l.forwarded - before[0]) * 1000 / (now - before[1])));
  }
  lastForwarded = next;
  return out;
}

function drawMap(mesh, rate) {
  const svg = document.getElementById("mesh-svg");
  svg.replaceChildren();
  const n = mesh.regions.length;
  const cx = 400, cy = 220, radius = n > 1 ? 165 : 0, nodeR = 48;
  const pos = new Map();
  mesh.regions.forEach((r, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / n;
    pos.set(r.name, [cx + radius * Math.cos(a), cy + radius * Math.sin(a)]);
  });
  const links = svgEl("g", { class: "links" });
  for (const l of mesh.links) {
    const a = pos.get(l.origin), b = pos.get(l.destination);
    if (!a || !b) continue;
    const dx = b[0] - a[0], dy = b[1] - a[1], len = Math.hypot(dx, dy) || 1;
    const ux = dx / len, uy = dy / len, nx = -uy, ny = ux, off = 10;
    const x1 = a[0] + ux * nodeR + nx * off, y1 = a[1] + uy * nodeR + ny * off;
    const x2 = b[0] - ux * (nodeR + 4) + nx * off, y2 = b[1] - uy * (nodeR + 4) + ny * off;
    const g = svgEl("g", { class: "link " + stateClass(l.state), "data-origin": l.origin,
      "data-destination": l.destination, "data-state": l.state });
    g.append(svgEl("title", {}, l.origin + " → " + l.destination + ": " + (STATE_TEXT[l.state] || l.state)));
    g.append(svgEl("line", { x1, y1, x2: x2 - ux * 10, y2: y2 - uy * 10 }));
    const hx = x2 - ux * 12, hy = y2 - uy * 12;
    g.append(svgEl("polygon", { points: `${x2},${y2} ${hx + nx * 6},${hy + ny * 6} ${hx - nx * 6},${hy - ny * 6}`,
      fill: "currentColor" }));
    // Labels go outside the pair of arrows (away from the map's centre), each near its own
    // arrow's origin, so the two directions' labels never sit on each other.
    const mx0 = (a[0] + b[0]) / 2 - cx, my0 = (a[1] + b[1]) / 2 - cy, olen = Math.hypot(mx0, my0);
    const ox = olen > 1 ? mx0 / olen : nx, oy = olen > 1 ? my0 / olen : ny;
    const t = 0.3, lx = a[0] + dx * t + ox * 24, ly = a[1] + dy * t + oy * 24;
    const anchor = ox > 0.3 ? "start" : ox < -0.3 ? "end" : "middle";
    const mx = lx, my = oy > 0.3 ? ly + 10 : oy < -0.3 ? ly - 12 : ly + 4;
    const lines = [];
    if (l.reported) {
      const r = rate.get(l.origin + ">" + l.destination);
      lines.push(`lag ${fmt(l.lag_events)} ev · ${fmt(l.lag_seconds, 1)} s`);
      let second = `${r === undefined ? "–" : fmt(r, 1)} ev/s`;
      if (l.dead_lettered) second += ` · ${fmt(l.dead_lettered)} dead`;
      lines.push(second);
    } else {
      lines.push("no report");
    }
    lines.forEach((t, i) => g.append(svgEl("text", { x: mx, y: my + i * 14, "text-anchor": anchor }, t)));
    links.append(g);
  }
  svg.append(links);
  for (const r of mesh.regions) {
    const [x, y] = pos.get(r.name);
    const g = svgEl("g", { class: "region" + (r.reachable ? "" : " down") + (r.here ? " here" : ""),
      "data-region": r.name });
    g.append(svgEl("title", {}, r.name + (r.reachable ? "" : ": not answering: " + r.error)));
    g.append(svgEl("circle", { cx: x, cy: y, r: nodeR }));
    g.append(svgEl("text", { x, y: y - 2 }, r.name));
    g.append(svgEl("text", { x, y: y + 16, class: "sub" }, r.reachable ? r.kind : "no answer"));
    svg.append(g);
  }
}

function fillTables(mesh, rate) {
  const body = document.querySelector("#links-table tbody");
  body.replaceChildren(...mesh.links.map((l) => {
    const r = rate.get(l.origin + ">" + l.destination);
    return el("tr", { "data-origin": l.origin, "data-destination": l.destination, "data-state": l.state,
      "data-lag-events": l.lag_events === undefined ? "" : l.lag_events,
      "data-forwarded": l.forwarded === undefined ? "" : l.forwarded },
      el("th", { scope: "row" }, `${l.origin} → ${l.destination}`),
      el("td", { class: "state " + stateClass(l.state) }, STATE_TEXT[l.state] || l.state),
      el("td", { class: "num" }, fmt(l.lag_events)),
      el("td", { class: "num" }, fmt(l.lag_seconds, 1)),
      el("td", { class: "num" }, r === undefined ? "–" : fmt(r, 1)),
      el("td", { class: "num" }, fmt(l.forwarded)),
      el("td", { class: "num" }, fmt(l.dead_lettered)),
      el("td", { class: "error" }, l.last_error || ""));
  }));
  const regions = document.querySelector("#regions-table tbody");
  const sha = mesh.config.sha256;
  regions.replaceChildren(...mesh.regions.map((r) => el("tr", { "data-region": r.name },
    el("th", { scope: "row" }, r.name + (r.here ? " (this gateway)" : "")),
    el("td", {}, r.kind),
    el("td", { class: "mono" }, r.gateway),
    el("td", { class: r.reachable ? "ok" : "error" }, r.reachable ? "yes" : "no: " + r.error),
    el("td", {}, !r.reachable ? "–" : r.config_sha256 === sha ? "same file" : "other file: " + r.config_sha256.slice(0, 12)))));
}

function fillOrigins(mesh) {
  const select = document.getElementById("origin");
  if (select.options.length === mesh.regions.length) return;
  select.replaceChildren(...mesh.regions.map((r) => el("option", { value: r.name }, r.name)));
  select.value = mesh.region;
}

let refreshing = false;

async function refreshMap() {
  // A peer that does not answer takes up to 3 s: one request at a time, never a pile of them.
  if (refreshing) return;
  refreshing = true;
  const status = document.getElementById("map-status");
  try {
    const mesh = await api("mesh");
    document.getElementById("here").textContent = "· region " + mesh.region;
    const rate = rates(mesh.links, Date.now());
    drawMap(mesh, rate);
    fillTables(mesh, rate);
    fillOrigins(mesh);
    status.textContent = "";
    document.body.dataset.updated = mesh.time;
  } catch (e) {
    status.textContent = "Not refreshed: " + e.message;
  } finally {
    refreshing = false;
  }
}

// --- the route explorer ---------------------------------------------------------------------

async function explain(event) {
  event.preventDefault();
  const out = document.getElementById("explain-out");
  const q = new URLSearchParams({ topic: document.getElementById("topic").value.trim(),
    from: document.getElementById("origin").value });
  try {
    const ex = await api("explain?" + q);
    const dests = el("p", { id: "explain-destinations" }, `${ex.topic} from ${ex.origin} goes to: `,
      ...ex.destinations.map((d) => el("span", { class: "pill" }, d)));
    const rules = ex.rules.length === 0
      ? el("p", {}, "No rule matches: the event stays in its origin.")
      : el("table", { id: "explain-rules" }, el("caption", {}, "Rules that chose them"),
        el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "#"), el("th", { scope: "col" }, "Pattern"),
          el("th", { scope: "col" }, "Regions"), el("th", { scope: "col" }, "Where"))),
        el("tbody", {}, ...ex.rules.map((r) => el("tr", {},
          el("td", { class: "num" }, r.index), el("td", { class: "mono" }, r.pattern),
          el("td", {}, r.regions.join(", ")),
          el("td", { class: "mono" }, `${ex.source}:${r.line}`, r.text ? el("br") : "", r.text || "")))));
    out.replaceChildren(dests, rules);
  } catch (e) {
    out.replaceChildren(el("p", { class: "error", role: "alert" }, e.message));
  }
}

// --- the config diff preview ------------------------------------------------------------------

let diffName = "edited.yaml";

function listOf(title, items) {
  if (!items.length) return null;
  return el("div", {}, el("h3", {}, title), el("ul", {}, ...items.map((t) => el("li", { class: "mono" }, t))));
}

function showDiff(d) {
  const out = document.getElementById("diff-out");
  if (!d.valid) {
    out.replaceChildren(el("p", { class: "error", role: "alert" }, `${d.errors.length} error(s): nothing would be applied.`),
      el("ul", { class: "errors", id: "diff-errors" }, ...d.errors.map((e) => el("li", {},
        el("span", { class: "mono error" }, e.text),
        e.source_line !== null ? el("pre", {}, e.source_line) : ""))));
    return;
  }
  const rule = (r) => `#${r.index} ${r.pattern} → ${r.regions.join(", ")} (line ${r.line})`;
  const parts = [
    el("p", { class: "ok", id: "diff-summary" }, `Valid: ${d.region_count} regions, ${d.rule_count} rules. ` +
      (d.routing_changed ? "Routing changes." : "No routing change.")),
    listOf("Topics whose destinations change", d.topics.map((t) =>
      `from ${t.origin}: ${t.topic}: ${t.old.join(", ")} → ${t.new.join(", ")}`)),
    listOf("Links", [...d.links.added.map((l) => `+ ${l.origin} → ${l.destination}`),
      ...d.links.removed.map((l) => `- ${l.origin} → ${l.destination}`)]),
    listOf("Rules", [...d.rules.added.map((r) => "+ " + rule(r)), ...d.rules.removed.map((r) => "- " + rule(r)),
      ...d.rules.changed.map((c) => `~ ${c.pattern}: ${c.old.regions.join(", ")} → ${c.new.regions.join(", ")}`)]),
    listOf("Regions", [...d.regions.added.map((n) => "+ " + n), ...d.regions.removed.map((n) => "- " + n),
      ...d.regions.changed.map((c) => `~ ${c.name}: ${c.changes.join("; ")}`)]),
  ];
  out.replaceChildren(...parts.filter((p) => p));
}

async function diff(event) {
  event.preventDefault();
  const out = document.getElementById("diff-out");
  try {
    const d = await api("diff?" + new URLSearchParams({ name: diffName }), {
      method: "POST", headers: { "Content-Type": "application/yaml" },
      body: document.getElementById("diff-text").value,
    });
    showDiff(d);
  } catch (e) {
    out.replaceChildren(el("p", { class: "error", role: "alert" }, e.message));
  }
}

async function loadFile() {
  const file = document.getElementById("diff-file").files[0];
  if (!file) return;
  diffName = file.name;
  document.getElementById("diff-text").value = await file.text();
}

// --- dead letters and where is event --------------------------------------------------------

async function deadLetters() {
  const out = document.getElementById("dead-out");
  try {
    const d = await api("deadletters");
    if (!d.dead_letters.length) {
      out.replaceChildren(el("p", { id: "dead-none" }, `No dead letters in region ${d.region} in the last day.`));
      return;
    }
    out.replaceChildren(el("table", { id: "dead-table" }, el("caption", {}, `Latest dead letter per destination (region ${d.region})`),
      el("thead", {}, el("tr", {}, ...["Destination", "Reason", "Topic", "Event id", "Stored"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...d.dead_letters.map((x) => el("tr", {},
        el("th", { scope: "row" }, x.destination), el("td", {}, x.reason), el("td", { class: "mono" }, x.topic),
        el("td", { class: "mono" }, x.id), el("td", {}, x.stored_time || "–"))))));
  } catch (e) {
    out.replaceChildren(el("p", { class: "error", role: "alert" }, e.message));
  }
}

async function trace(event) {
  event.preventDefault();
  const out = document.getElementById("trace-out");
  out.replaceChildren(el("p", {}, "Asking every region…"));
  try {
    const d = await api("locate?" + new URLSearchParams({ id: document.getElementById("event-id").value.trim() }));
    out.replaceChildren(el("table", { id: "trace-table" }, el("caption", {}, `Event ${d.id} (stored since ${d.since})`),
      el("thead", {}, el("tr", {}, ...["Region", "Held", "Stored", "Topic", "Origin", "Route"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...d.locations.map((w) => el("tr", { "data-region": w.region, "data-found": String(w.found) },
        el("th", { scope: "row" }, w.region),
        el("td", { class: w.error ? "error" : w.found ? "ok" : "" }, w.error ? w.error : w.found ? "yes" : "no"),
        el("td", {}, w.stored_time || "–"), el("td", { class: "mono" }, w.topic || ""),
        el("td", {}, w.origin || ""), el("td", {}, w.route.join(", ")))))));
  } catch (e) {
    out.replaceChildren(el("p", { class: "error", role: "alert" }, e.message));
  }
}

// --- start ------------------------------------------------------------------------------------

function start() {
  document.getElementById("every").textContent = String(POLL_MS / 1000);
  document.getElementById("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value);
    document.getElementById("token-form").hidden = true;
    refreshMap();
  });
  document.getElementById("explain-form").addEventListener("submit", explain);
  document.getElementById("diff-form").addEventListener("submit", diff);
  document.getElementById("diff-file").addEventListener("change", loadFile);
  document.getElementById("dead-refresh").addEventListener("click", deadLetters);
  document.getElementById("trace-form").addEventListener("submit", trace);
  refreshMap();
  setInterval(() => { if (!document.hidden) refreshMap(); }, POLL_MS);
}

document.addEventListener("DOMContentLoaded", start);
