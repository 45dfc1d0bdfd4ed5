// mlux steering explorer: plain JS, no libraries. Text from the server is only ever set
// through textContent, never innerHTML.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const FIELD_INPUTS = { positive: "positive", negative: "negative", prompt: "prompt",
  layers: "layers", alpha: "alpha-value", alphas: "compare-alphas", max_tokens: "max-tokens",
  temperature: "temperature", name: "vector-name", method: "method", chat: "chat" };
const ui = { vector: null, info: null, controller: null };

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status; this.field = body ? body.field : null;
  }
}

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

function showError(err) {
  const box = $("error");
  if (!err) { box.hidden = true; document.querySelectorAll(".invalid")
    .forEach((el) => el.classList.remove("invalid")); return; }
  box.textContent = err.field ? `${err.field}: ${err.message}` : err.message;
  box.hidden = false;
  const input = err.field && $(FIELD_INPUTS[err.field.split(/[.[]/)[0]] || "");
  if (input) input.classList.add("invalid");
}

async function guarded(fn) {
  showError(null);
  try { await fn(); } catch (err) { if (err.name !== "AbortError") showError(err); }
}

const lines = (id) => $(id).value.split("\n").map((s) => s.trim()).filter(Boolean);
const numbers = (text) => text.split(",").map((s) => s.trim()).filter(Boolean)
  .map((s) => (Number.isFinite(Number(s)) ? Number(s) : s));
const fmt = (x) => (x === null || x === undefined ? "–" : Math.abs(x) >= 100 ? x.toFixed(0)
  : x.toFixed(2));

function el(tag, attrs, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// -- model info and defaults -------------------------------------------------------------------
function showInfo(info) {
  const q = info.quantization;
  const items = [["model", info.model_id], ["type", info.model_type], ["layers", info.num_layers],
    ["hidden size", info.hidden_size],
    ["quantization", q ? `${q.bits}-bit, group ${q.group_size}` : `none (${info.dtype})`],
    ["recommended layers", (info.recommended_layers.default || []).join(", ")]];
  const dl = $("model-info"); dl.replaceChildren();
  for (const [k, v] of items) {
    const div = el("div"); div.append(el("dt", {}, k), el("dd", {}, String(v))); dl.append(div);
  }
}

function applyDefaults(d, limits) {
  $("positive").value = d.positive.join("\n"); $("negative").value = d.negative.join("\n");
  $("prompt").value = d.prompt; $("layers").value = d.layers.join(", ");
  for (const id of ["alpha", "alpha-value"]) {
    $(id).min = -d.alpha_range; $(id).max = d.alpha_range; $(id).value = d.alpha;
  }
  $("max-tokens").value = d.max_tokens; $("max-tokens").max = limits.max_tokens;
  $("sweep-tokens").max = limits.max_sweep_tokens; $("chat").checked = d.chat;
  $("compare-alphas").value = d.compare_alphas.join(", ");
}

// -- vectors -------------------------------------------------------------------------------------
function setVector(ref, summary, label) {
  ui.vector = { ref, layers: summary.layers, norms: summary.norms };
  $("vector-status").textContent = `${label}: ${summary.method}, layers ` +
    `${summary.layers[0]}–${summary.layers[summary.layers.length - 1]}` +
    (summary.num_pairs ? `, ${summary.num_pairs} pairs` : "");
  $("vector-status").className = "status ok";
  for (const id of ["save", "generate", "sweep"]) $(id).disabled = false;
  drawNorms();
}

async function computeVector() {
  $("vector-status").textContent = "computing…"; $("vector-status").className = "status";
  const v = await api("POST", "/api/compute", { positive: lines("positive"),
    negative: lines("negative"), method: $("method").value, chat: $("chat").checked });
  setVector({ id: v.id }, v, "Computed");
}

async function refreshLibrary() {
  const { vectors } = await api("GET", "/api/vectors");
  const list = $("library-list"); list.replaceChildren();
  for (const v of vectors) {
    const what = v.error ? `unreadable: ${v.error}` : `${v.method}, ${(v.layers || []).length} ` +
      `layers, hidden ${v.hidden_size}${v.compatible ? "" : " (other model)"}`;
    const opt = el("option", { value: v.name }, `${v.name} · ${what}`);
    opt.disabled = Boolean(v.error) || !v.compatible; list.append(opt);
  }
}

async function loadVector() {
  const name = $("library-list").value;
  if (!name) throw new ApiError(400, { error: "pick a vector in the list", field: "name" });
  const v = await api("GET", `/api/vectors/${encodeURIComponent(name)}`);
  if (v.metadata && Array.isArray(v.metadata.positive)) {
    $("positive").value = v.metadata.positive.join("\n");
    $("negative").value = (v.metadata.negative || []).join("\n");
  }
  $("vector-name").value = name; setVector({ name }, v, `Loaded “${name}” from the library`);
}

async function deleteVector() {
  const name = $("library-list").value;
  if (name && confirm(`Delete “${name}” from the library?`)) {
    await api("DELETE", `/api/vectors/${encodeURIComponent(name)}`); await refreshLibrary();
  }
}

async function saveVector() {
  const body = { name: $("vector-name").value.trim(), vector: ui.vector.ref };
  try { await api("POST", "/api/vectors", body); } catch (err) {
    if (err.status !== 409 || !confirm(`Replace the saved vector “${body.name}”?`)) throw err;
    await api("POST", "/api/vectors", { ...body, overwrite: true });
  }
  $("vector-status").textContent = `Saved as “${body.name}”.`; await refreshLibrary();
}

// -- generation (server-sent events over fetch, so the request can be a JSON POST) -------------
function generationBody() {
  const body = { prompt: $("prompt").value, vector: ui.vector.ref, layers: numbers($("layers").value),
    max_tokens: Number($("max-tokens").value), temperature: Number($("temperature").value),
    positions: $("positions").value, chat: $("chat").checked };
  if ($("compare-mode").checked) body.alphas = numbers($("compare-alphas").value);
  else body.alpha = Number($("alpha-value").value);
  return body;
}

async function readEvents(res, onEvent) {
  const reader = res.body.getReader(); const decoder = new TextDecoder(); let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
      let event = "message"; const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(event, JSON.parse(data.join("\n")));
    }
  }
}

function startRows(rows) {
  const box = $("outputs"); box.replaceChildren(); box.dataset.tokenEvents = "0";
  box.dataset.done = "0";
  for (const r of rows) {
    const col = el("div", { class: `out streaming ${r.alpha ? "steered" : "baseline"}`,
      id: `out-${r.row}` });
    const title = r.alpha ? `steered · alpha ${r.alpha > 0 ? "+" : ""}${r.alpha}` : "baseline";
    col.append(el("h3", {}, title), el("div", { class: "text" }));
    box.append(col);
  }
}

function finishRows(done) {
  const base = done.rows[0].projections;
  const centre = base.length ? base.reduce((a, b) => a + b, 0) / base.length : 0;
  const scale = Math.max(1e-6, ...done.rows.flatMap((r) => r.projections
    .map((p) => Math.abs(p - centre))));
  for (const r of done.rows) {
    const col = $(`out-${r.row}`); const text = col.querySelector(".text");
    col.classList.remove("streaming"); text.replaceChildren();
    r.pieces.forEach((piece, i) => {
      const t = (r.projections[i] - centre) / scale;
      const span = el("span", { title: `projection ${fmt(r.projections[i])}` }, piece);
      span.style.background = t >= 0 ? `rgba(217, 96, 26, ${(0.55 * t).toFixed(3)})`
        : `rgba(47, 111, 214, ${(-0.55 * t).toFixed(3)})`;
      text.append(span);
    });
  }
  $("outputs").dataset.done = "1";
}

async function generate() {
  const body = generationBody(); ui.controller = new AbortController();
  $("generate").disabled = true; $("stop").disabled = false;
  $("gen-status").textContent = "waiting for the model…";
  try {
    const res = await fetch("/api/stream", { method: "POST", signal: ui.controller.signal,
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
    await readEvents(res, (event, data) => {
      if (event === "start") { startRows(data.rows); $("gen-status").textContent = "streaming…"; }
      else if (event === "tokens") {
        for (const t of data.tokens) $(`out-${t.row}`).querySelector(".text").append(t.piece);
        $("outputs").dataset.tokenEvents = String(Number($("outputs").dataset.tokenEvents) + 1);
      } else if (event === "done") {
        finishRows(data);
        $("gen-status").textContent = `${data.tokens} tokens in ${data.seconds.toFixed(2)} s ` +
          `· colour read at layer ${data.readout_layer}`;
      } else if (event === "error") throw new ApiError(400, data);
    });
  } catch (err) {
    $("gen-status").textContent = err.name === "AbortError" ? "stopped" : "failed";
    throw err;
  } finally {
    $("generate").disabled = false; $("stop").disabled = true; ui.controller = null;
  }
}

// -- charts (plain SVG) --------------------------------------------------------------------------
function drawNorms() {
  const svg = $("norms-chart"); svg.replaceChildren();
  if (!ui.vector) return;
  const { layers, norms } = ui.vector; const chosen = new Set(numbers($("layers").value));
  const W = 600, H = 160, pad = 24, top = 14, max = Math.max(...norms, 1e-9);
  const bw = (W - 2 * pad) / layers.length;
  layers.forEach((layer, i) => {
    const h = ((H - pad - top) * norms[i]) / max; const x = pad + i * bw;
    const bar = el("svg:rect", { x: x + 1, y: H - pad - h, width: Math.max(1, bw - 2), height: h,
      class: chosen.has(layer) ? "bar selected" : "bar" });
    bar.append(el("svg:title", {}, `layer ${layer}: norm ${fmt(norms[i])}`)); svg.append(bar);
    if (layers.length <= 40 || i % 2 === 0) {
      svg.append(el("svg:text", { x: x + bw / 2, y: H - 8, "text-anchor": "middle" }, layer));
    }
  });
  svg.append(el("svg:text", { x: pad, y: 11 }, `max ${fmt(max)}`));
}

function drawSweep(result) {
  const svg = $("sweep-chart"); svg.replaceChildren();
  const pts = result.layers.filter((p) => p.baseline !== null && p.steered !== null);
  if (!pts.length) return;
  const W = 900, H = 220, left = 56, right = 16, top = 14, bottom = 28;
  const values = pts.flatMap((p) => [p.baseline, p.steered, 0]);
  const lo = Math.min(...values), hi = Math.max(...values), span = hi - lo || 1;
  const x = (i) => left + (pts.length === 1 ? 0.5 : i / (pts.length - 1)) * (W - left - right);
  const y = (v) => top + ((hi - v) / span) * (H - top - bottom);
  svg.append(el("svg:line", { x1: left, x2: W - right, y1: y(0), y2: y(0), class: "zero" }),
    el("svg:line", { x1: left, x2: left, y1: top, y2: H - bottom, class: "axis" }),
    el("svg:text", { x: left - 6, y: top + 4, "text-anchor": "end" }, fmt(hi)),
    el("svg:text", { x: left - 6, y: H - bottom, "text-anchor": "end" }, fmt(lo)));
  for (const [key, cls] of [["baseline", "base"], ["steered", "steer"]]) {
    const d = pts.map((p, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(p[key]).toFixed(1)}`);
    svg.append(el("svg:path", { d: d.join(" "), class: `line-${cls}` }));
    pts.forEach((p, i) => {
      const dot = el("svg:circle", { cx: x(i), cy: y(p[key]), r: 3.5, class: `dot-${cls}` });
      dot.append(el("svg:title", {}, `layer ${p.layer} ${key}: ${fmt(p[key])}` +
        (key === "steered" && p.text ? ` · “${p.text}”` : "")));
      svg.append(dot);
    });
  }
  const step = Math.ceil(pts.length / 30);
  pts.forEach((p, i) => { if (i % step === 0) svg.append(el("svg:text", { x: x(i), y: H - 10,
    "text-anchor": "middle" }, p.layer)); });
}

async function runSweep() {
  $("sweep").disabled = true; $("sweep-status").textContent = "sweeping every layer…";
  try {
    const result = await api("POST", "/api/sweep", { prompt: $("prompt").value,
      vector: ui.vector.ref, alpha: Number($("alpha-value").value), mode: $("sweep-mode").value,
      max_tokens: Number($("sweep-tokens").value), chat: $("chat").checked });
    drawSweep(result);
    const best = result.layers.reduce((a, b) => (Math.abs(b.delta || 0) > Math.abs(a.delta || 0)
      ? b : a));
    $("sweep-status").textContent = `largest change at layer ${best.layer} (${fmt(best.delta)})`;
  } finally { $("sweep").disabled = false; }
}

// -- wiring --------------------------------------------------------------------------------------
function wire() {
  const click = (id, fn) => $(id).addEventListener("click", () => guarded(fn));
  click("compute", computeVector); click("save", saveVector); click("generate", generate);
  click("library-load", loadVector); click("library-delete", deleteVector);
  click("library-refresh", refreshLibrary); click("sweep", runSweep);
  $("stop").addEventListener("click", () => ui.controller && ui.controller.abort());
  $("alpha").addEventListener("input", () => { $("alpha-value").value = $("alpha").value; });
  $("alpha-value").addEventListener("input", () => { $("alpha").value = $("alpha-value").value; });
  $("layers").addEventListener("input", drawNorms);
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === tab));
      $("tab-contrast").hidden = tab.dataset.tab !== "contrast";
      $("tab-library").hidden = tab.dataset.tab !== "library";
    });
  }
}

document.addEventListener("DOMContentLoaded", () => guarded(async () => {
  wire();
  const m = await api("GET", "/api/model"); ui.info = m.info;
  showInfo(m.info); applyDefaults(m.defaults, m.limits);
  for (const mode of m.sweeps) $("sweep-mode").append(el("option", { value: mode }, mode));
  await refreshLibrary();
  document.body.dataset.ready = "1";
}));
