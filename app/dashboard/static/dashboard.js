// tiergate dashboard: the live parts of the pages (no framework, no external requests).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const FINAL = new Set(["completed", "failed", "expired", "cancelled"]);
const COLOURS = ["#2563eb", "#d97706", "#16a34a", "#db2777", "#7c3aed"];

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) {
    window.location.assign("/dashboard/sign-in");
    throw new Error("signed out");
  }
  if (!response.ok) throw new Error(url + ": " + response.status);
  return response.json();
}

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  return node;
}

// Rows as text (never HTML); ``empty`` says what is true without any; a row with
// ``stale: true`` is marked so.
function fillRows(table, rows, columns, empty) {
  const body = table.querySelector("tbody");
  const labels = [...table.querySelectorAll("thead th")].map((th) => th.textContent);
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = el("tr");
    tr.appendChild(el("td", empty || "none", { colspan: "99", class: "empty" }));
    body.appendChild(tr);
  }
  for (const row of rows) {
    const tr = el("tr", null, row.stale ? { class: "stale" } : {});
    columns.forEach((column, i) => tr.appendChild(
      el("td", row[column], { "data-col": column, "data-label": labels[i] || column })));
    body.appendChild(tr);
  }
}

function rpmChart(box, legend, data) {
  const minutes = data.minutes;
  const tiers = Object.keys(data.tiers);
  const width = 600, height = 200, pad = 28;
  const totals = minutes.map((_, i) => tiers.reduce((sum, t) => sum + data.tiers[t][i], 0));
  const top = Math.max(1, ...totals);
  const slot = (width - pad) / minutes.length;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "requests per minute by tier" });
  const label = svg("text", { x: pad, y: 14 });
  label.textContent = `${top} / min`;
  chart.appendChild(label);
  chart.appendChild(svg("line", { x1: pad, y1: height - pad, x2: width, y2: height - pad,
    stroke: "#999" }));
  minutes.forEach((minute, i) => {
    let y = height - pad;
    tiers.forEach((tier, j) => {
      const value = data.tiers[tier][i];
      const h = (height - 2 * pad) * value / top;
      y -= h;
      const rect = svg("rect", { x: (pad + i * slot + slot * 0.1).toFixed(1), y: y.toFixed(1),
        width: (slot * 0.8).toFixed(1), height: h.toFixed(1), fill: COLOURS[j % COLOURS.length] });
      const title = svg("title");
      title.textContent = `${new Date(minute * 1000).toISOString().slice(11, 16)} ${tier}: ${value}`;
      rect.appendChild(title);
      chart.appendChild(rect);
    });
    if (i % 5 === 0 || i === minutes.length - 1) {
      const last = i === minutes.length - 1;  // the last label ends at the edge, not past it
      const t = svg("text", { x: last ? width : (pad + i * slot + slot / 2).toFixed(1),
        y: height - 8, "text-anchor": last ? "end" : "middle" });
      t.textContent = new Date(minute * 1000).toISOString().slice(11, 16);
      chart.appendChild(t);
    }
  });
  box.replaceChildren(chart);
  legend.replaceChildren(...(tiers.length ? tiers : ["no finished requests"]).map((tier, j) => {
    const span = el("span", tier);
    if (tiers.length) span.style.setProperty("--swatch", COLOURS[j % COLOURS.length]);
    return span;
  }));
}

async function refreshOverview() {
  const data = await getJSON("/dashboard/api/overview");
  rpmChart(document.getElementById("rpm-chart"), document.getElementById("rpm-legend"),
    data.requests_per_minute);
  const rate = document.getElementById("error-rate");
  rate.textContent = (100 * data.error_rate).toFixed(1) + "%";
  rate.dataset.errors = data.errors;
  rate.dataset.requests = data.requests;
  document.getElementById("error-detail").textContent =
    `${data.errors} of ${data.requests} finished requests in the last ${data.window_minutes} min`;
  fillRows(document.getElementById("by-tier"), data.by_tier,
    ["service_tier", "requests", "errors"], "no request finished");
  fillRows(document.getElementById("queue-depth"), data.queue_depth,
    ["model", "service_tier", "pending", "in_progress"], "nothing queued");
  const age = data.queue_depth_age_s;
  document.getElementById("queue-age").textContent =
    age === null ? "not counted yet" : `counted ${Math.round(age)} s ago`;
  fillRows(document.getElementById("in-flight"), data.in_flight,
    ["model", "deployment", "executor", "engine", "state", "in_flight"], "no deployment configured");
  fillRows(document.getElementById("processes"), data.processes,
    ["role", "host", "pid", "started", "last_beat", "in_flight", "state"],
    "no gateway or worker has beat in the last day");
  const live = data.processes.filter((p) => !p.stale);
  const count = (role) => live.filter((p) => p.role === role).length;
  const stale = data.processes.length - live.length;
  document.getElementById("process-summary").textContent =
    `${count("gateway")} gateway(s) and ${count("worker")} worker(s) live; ` +
    `${stale} stale (no heartbeat for ${data.stale_after_s} s or more).`;
  document.getElementById("updated").textContent =
    "Updated " + new Date().toISOString().slice(11, 19) + " UTC.";
  document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
}

async function refreshBatch(bar) {
  const data = await getJSON("/dashboard/api/batches/" + encodeURIComponent(bar.dataset.batch));
  bar.max = Math.max(data.total, 1);
  bar.value = data.done;
  const pct = bar.parentElement.querySelector(".pct");
  if (pct) pct.textContent = data.percent + "%";
  for (const [name, value] of Object.entries(data.fields)) {
    for (const dd of document.querySelectorAll("dd[data-field]")) {
      if (dd.dataset.field === name) {
        dd.replaceChildren(name === "Status" ? el("span", value, { class: "status s-" + value })
          : document.createTextNode(value));
      }
    }
  }
  const row = bar.closest("tr");
  const cell = row ? row.querySelector(".status") : null;
  if (cell) { cell.textContent = data.status; cell.className = "status s-" + data.status; }
  // A batch page reloads once its batch ends: its errors and result files are then known.
  if (!row && FINAL.has(data.status)) window.location.reload();
  return FINAL.has(data.status);
}

function every(ms, task) {
  let running = false;
  const tick = async () => {
    if (running) return;
    running = true;
    try {
      if (await task()) return;
    } catch (error) {
      console.warn(error);
    } finally {
      running = false;
    }
    window.setTimeout(tick, ms);
  };
  tick();
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "overview") every(3000, async () => { await refreshOverview(); return false; });
  if (page === "batches") {
    for (const bar of document.querySelectorAll("progress[data-batch]")) {
      const row = bar.closest("tr");
      const status = (row || document).querySelector(".status");
      if (!status || !FINAL.has(status.textContent.trim())) every(1500, () => refreshBatch(bar));
    }
  }
});
