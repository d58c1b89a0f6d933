"use strict";
// The llmos dashboard. One EventSource (/v1/events) feeds every figure, once a second; a
// click on a process fetches its recent syscalls (/v1/trace?pid=P). No framework, no build
// step, nothing from the network beyond this server. Values from the server reach the page
// as text only (textContent), never as markup: a process name is whatever its app chose.

const CHART_WINDOW_S = 120; // the tokens/s chart shows this many seconds
const TRACE_ROWS = 50; // syscalls shown for the selected process
const ENDED = new Set(["EXITED", "KILLED", "FAILED"]);

const samples = []; // {at, tps}: server time and rate, oldest first, within CHART_WINDOW_S
const selection = { pid: null, fetches: 0 }; // the clicked process; fetches orders replies

const $ = (id) => document.getElementById(id);
const setText = (id, value) => { $(id).textContent = String(value); };

function duration(s) {
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60), h = Math.floor(m / 60);
  return h ? `${h}h ${String(m % 60).padStart(2, "0")}m` : `${m}m ${String(Math.floor(s % 60)).padStart(2, "0")}s`;
}

const percent = (rate) => (rate == null ? "n/a" : `${(100 * rate).toFixed(1)}%`);

function addCell(row, value, className) {
  const cell = row.insertCell();
  cell.textContent = String(value);
  cell.className = className ?? "";
}

// -- one snapshot ------------------------------------------------------------------------------
function showSnapshot(snap) {
  const stats = snap.stats, gen = stats.generation, sched = stats.scheduler;
  setText("model", snap.model ?? "none");
  setText("uptime", duration(snap.uptime_s));
  setText("daemon-pid", snap.daemon_pid);
  setText("running", sched.running);
  setText("waiting", sched.waiting);
  setText("preemptions", sched.preemptions);
  setText("tps", gen ? gen.tokens_per_s.toFixed(1) : "n/a");
  setText("tokens", gen ? gen.tokens : "n/a");
  setText("hit-rate", percent(snap.prefix_cache_hit_rate));
  setText("live", stats.live_processes);
  setText("syscalls", stats.syscalls);
  samples.push({ at: snap.at, tps: gen ? gen.tokens_per_s : 0 });
  while (samples.length && samples[0].at < snap.at - CHART_WINDOW_S) samples.shift();
  drawChart();
  showProcesses(snap.processes);
}

function showProcesses(processes) {
  // Rows are updated in place (by pid), not rebuilt: a click or a hover lands on a row
  // that is still there when the next snapshot comes.
  const body = $("procs").tBodies[0];
  const rows = new Map([...body.rows].map((row) => [Number(row.dataset.pid), row]));
  [...processes].sort((a, b) => a.pid - b.pid).forEach((p, index) => {
    const row = rows.get(p.pid) ?? newRow(p.pid);
    rows.delete(p.pid);
    if (body.rows[index] !== row) body.insertBefore(row, body.rows[index] ?? null);
    fillRow(row, p);
    if (p.pid === selection.pid && !ENDED.has(p.state_name)) showTrace(p.pid, p.name); // it is still at work
  });
  for (const gone of rows.values()) gone.remove();
}

function newRow(pid) {
  const row = document.createElement("tr");
  row.dataset.pid = pid;
  for (const className of ["num", "", "state", "num", "num", "num", "num"]) row.insertCell().className = className;
  return row;
}

function fillRow(row, p) {
  const values = [p.pid, p.name, p.state_name, p.priority, p.tokens, p.stats.syscalls, duration(p.runtime_s)];
  values.forEach((value, i) => { row.cells[i].textContent = String(value); });
  row.className = `state-${p.state_name.toLowerCase()}` + (p.pid === selection.pid ? " selected" : "");
  row.title = p.reason ?? "";
}

// -- the trace of the clicked process -----------------------------------------------------------
async function showTrace(pid, name) {
  const ticket = ++selection.fetches;
  const answer = await fetch(`/v1/trace?pid=${pid}&limit=${TRACE_ROWS}`, { credentials: "same-origin" });
  if (ticket !== selection.fetches) return; // a later click or refresh answers instead
  const body = $("trace").tBodies[0];
  if (!answer.ok) {
    setText("trace-title", `Trace of pid ${pid}: HTTP ${answer.status}`);
    body.replaceChildren();
    return;
  }
  const events = (await answer.json()).data;
  body.replaceChildren();
  for (const e of events.reverse()) { // newest first
    const row = body.insertRow();
    row.className = e.outcome === "ok" ? "" : "failed";
    addCell(row, new Date(e.at * 1000).toLocaleTimeString());
    addCell(row, e.call);
    addCell(row, `${(e.duration_s * 1000).toFixed(1)} ms`, "num");
    addCell(row, e.outcome);
  }
  $("trace-panel").dataset.pid = pid;
  setText("trace-title", `Trace of pid ${pid} (${name}): ${events.length} recent syscalls`);
}

function onProcessClick(event) {
  const row = event.target.closest("tr[data-pid]");
  if (!row) return;
  selection.pid = Number(row.dataset.pid);
  for (const other of row.parentElement.rows) other.classList.toggle("selected", other === row);
  showTrace(selection.pid, row.cells[1].textContent);
}

// -- the tokens/s chart: a line over the last CHART_WINDOW_S seconds ---------------------------
function niceCeiling(value) {
  const step = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((k) => k * step).find((top) => top >= value);
}

function drawChart() {
  const canvas = $("tps-chart"), ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * ratio)) [canvas.width, canvas.height] = [Math.round(w * ratio), Math.round(h * ratio)];
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const left = 44, right = w - 8, top = 8, bottom = h - 18;
  const now = samples.length ? samples[samples.length - 1].at : 0;
  const ceiling = niceCeiling(Math.max(1, ...samples.map((s) => s.tps)));
  const x = (at) => right - ((now - at) / CHART_WINDOW_S) * (right - left);
  const y = (tps) => bottom - (tps / ceiling) * (bottom - top);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = ctx.strokeStyle = "#8a93a0";
  ctx.lineWidth = 1;
  for (const v of [0, ceiling / 2, ceiling]) { // gridlines, labelled in tokens/s
    ctx.globalAlpha = 0.35;
    ctx.beginPath(); ctx.moveTo(left, y(v)); ctx.lineTo(right, y(v)); ctx.stroke();
    ctx.globalAlpha = 1;
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    ctx.fillText(String(v), left - 6, y(v));
  }
  ctx.textBaseline = "top";
  for (const [ago, label] of [[CHART_WINDOW_S, "-2 min"], [CHART_WINDOW_S / 2, "-1 min"], [0, "now"]]) {
    ctx.textAlign = ago === 0 ? "right" : ago === CHART_WINDOW_S ? "left" : "center";
    ctx.fillText(label, x(now - ago), bottom + 4);
  }
  ctx.strokeStyle = "#2f7de1"; ctx.lineWidth = 2; ctx.lineJoin = "round";
  ctx.beginPath();
  samples.forEach((s, i) => (i ? ctx.lineTo(x(s.at), y(s.tps)) : ctx.moveTo(x(s.at), y(s.tps))));
  ctx.stroke();
}

// -- the live feed ----------------------------------------------------------------------------
function connect() {
  const source = new EventSource("/v1/events");
  const status = $("connection");
  source.onopen = () => { status.textContent = "live"; status.className = "up"; };
  source.addEventListener("snapshot", (event) => showSnapshot(JSON.parse(event.data)));
  source.onerror = () => {
    const closed = source.readyState === EventSource.CLOSED; // refused (401): it will not retry
    status.textContent = closed ? "disconnected: open /?key=YOUR_KEY" : "reconnecting…";
    status.className = "down";
  };
}

document.addEventListener("DOMContentLoaded", () => {
  $("procs").tBodies[0].addEventListener("click", onProcessClick);
  window.addEventListener("resize", drawChart);
  connect();
});
