// mlux steering explorer: the page's state and actions. Plain JS modules, no libraries, no
// build step; text from the server is only ever set through textContent, never innerHTML.
"use strict";

import { clearSweep, drawNorms, drawScale, drawSweep, largestChange, sweepTitle, tokenColour }
  from "./charts.js";
import { $, ApiError, api, download, el, fmt, guarded, layerSet, lines, numbers, readEvents,
  readNumber, store } from "./util.js";
import { CONDITION_FIELDS, conditionBody, showCondition } from "./conditions.js";

// Each action's request fields -> the inputs that hold them (for outlining an error).
const COMMON = { prompt: "prompt", layers: "layers", alpha: "alpha-value", chat: "chat",
  alpha_unit: "alpha-relative" };
const FIELDS = {
  compute: { positive: "positive", negative: "negative", method: "method", chat: "chat" },
  generate: { ...COMMON, alphas: "compare-alphas", max_tokens: "max-tokens",
    temperature: "temperature", positions: "positions", seed: "seed", ...CONDITION_FIELDS },
  sweep: { ...COMMON, max_tokens: "sweep-tokens", mode: "sweep-mode" },
  save: { name: "vector-name" },
  library: { name: "library-list" },
};
const ui = { vector: null, info: null, defaults: null, controller: null, generation: null,
  sweep: null };

// The library's warnings for the last action (e.g. a prompt of tokens the model doesn't know).
function showWarnings(warnings) {
  const box = $("warnings"); box.replaceChildren();
  for (const w of warnings || []) box.append(el("p", {}, `Warning: ${w}`));
  box.hidden = !box.childElementCount;
}
const alphaText = (a) => `${a > 0 ? "+" : ""}${a}`;
const alphaUnit = () => ($("alpha-relative").checked ? "residual" : "raw");

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
  setAlphaRange(d.alpha_range, 0.5, d.alpha);
  $("max-tokens").value = d.max_tokens; $("max-tokens").max = limits.max_tokens;
  $("sweep-tokens").max = limits.max_sweep_tokens; $("chat").checked = d.chat;
  $("compare-alphas").value = d.compare_alphas.join(", ");
}

function setAlphaRange(range, step, value) {
  for (const id of ["alpha", "alpha-value"]) {
    $(id).min = -range; $(id).max = range; $(id).step = step;
    if (value !== undefined) $(id).value = value;
  }
}

// Raw alpha, or alpha as a fraction of the layer's residual norm: a new scale, so a value
// outside it is reset to that scale's default.
function switchAlphaUnit() {
  const relative = $("alpha-relative").checked, d = ui.defaults;
  const range = relative ? 2 : d.alpha_range;
  const value = Number($("alpha-value").value);
  const keep = $("alpha-value").value.trim() !== "" && Math.abs(value) <= range;
  setAlphaRange(range, relative ? 0.05 : 0.5, keep ? value : relative ? 0.5 : d.alpha);
}

// -- vectors -------------------------------------------------------------------------------------
const redrawNorms = () => drawNorms($("norms-chart"), ui.vector,
  layerSet($("layers").value, ui.info ? ui.info.num_layers : 0));

// How many contrast prompts of each side went into the vector (mean_diff uses them all).
function promptsUsed(summary) {
  if (Number.isInteger(summary.num_positive) && Number.isInteger(summary.num_negative)) {
    return `, ${summary.num_positive} positive + ${summary.num_negative} negative prompts used`;
  }
  return summary.num_pairs ? `, ${summary.num_pairs} pairs` : "";
}

// `source` says how to make the vector again (its prompts and method, or its library name),
// for an export that can reproduce the run.
function setVector(ref, summary, label, source) {
  ui.vector = { ref, layers: summary.layers, norms: summary.norms, method: summary.method,
    model_id: summary.model_id, source };
  $("vector-status").textContent = `${label}: ${summary.method}, layers ` +
    `${summary.layers[0]}–${summary.layers[summary.layers.length - 1]}${promptsUsed(summary)}`;
  $("vector-status").className = "status ok";
  for (const id of ["save", "generate", "sweep"]) $(id).disabled = false;
  redrawNorms();
}

function clearVector(message) {
  ui.vector = null;
  $("vector-status").textContent = message; $("vector-status").className = "status";
  for (const id of ["save", "generate", "sweep"]) $(id).disabled = true;
  redrawNorms();
}

async function computeVector() {
  const status = $("vector-status"), before = [status.textContent, status.className];
  status.textContent = "computing…"; status.className = "status";
  const body = { positive: lines("positive"), negative: lines("negative"),
    method: $("method").value, chat: $("chat").checked };
  try {
    const v = await api("POST", "/api/compute", body);
    setVector({ id: v.id }, v, "Computed", { computed_from: body });
    showWarnings(v.warnings);
  } catch (err) { [status.textContent, status.className] = before; throw err; }
}

async function refreshLibrary() {
  showLibrary((await api("GET", "/api/vectors")).vectors);
}

function showLibrary(vectors) {
  const list = $("library-list"); list.replaceChildren();
  for (const v of vectors) {
    const what = v.error ? `unreadable: ${v.error}` : `${v.method}, ${(v.layers || []).length} ` +
      `layers, hidden ${v.hidden_size}${v.compatible ? "" : " (other model)"}`;
    const opt = el("option", { value: v.name }, `${v.name} · ${what}`);
    opt.disabled = Boolean(v.error) || !v.compatible; list.append(opt);
  }
  const kept = store.get("library");  // the selection survives a reload
  list.value = [...list.options].some((o) => o.value === kept && !o.disabled) ? kept : "";
}

function pickedName() {
  const name = $("library-list").value;
  if (!name) throw new ApiError(400, { error: "pick a vector in the list", field: "name" });
  return name;
}

async function loadVector() {
  const name = pickedName();
  const v = await api("GET", `/api/vectors/${encodeURIComponent(name)}`);
  if (v.metadata && Array.isArray(v.metadata.positive)) {
    $("positive").value = v.metadata.positive.join("\n");
    $("negative").value = (v.metadata.negative || []).join("\n");
  }
  $("vector-name").value = name;
  setVector({ name }, v, `Loaded “${name}” from the library`, { library: name, metadata:
    v.metadata });
}

async function deleteVector() {
  const name = pickedName();
  if (!confirm(`Delete “${name}” from the library?`)) return;
  const answer = await api("DELETE", `/api/vectors/${encodeURIComponent(name)}`);
  store.set("library", null);
  showLibrary(answer.vectors);  // the list as the server now has it, before saying "Deleted"
  if (ui.vector && ui.vector.ref.name === name) {
    clearVector(`Deleted “${name}”: compute a vector or load another one.`);
  } else {
    $("vector-status").textContent = `Deleted “${name}”.`;
  }
}

async function saveVector() {
  const body = { name: $("vector-name").value.trim(), vector: ui.vector.ref };
  try { await api("POST", "/api/vectors", body); } catch (err) {
    if (err.status !== 409 || err.message.includes("folder") ||
        !confirm(`Replace the saved vector “${body.name}”?`)) throw err;
    await api("POST", "/api/vectors", { ...body, overwrite: true });
  }
  $("vector-status").textContent = `Saved as “${body.name}”.`;
  store.set("library", body.name); await refreshLibrary();
}

// -- generation (server-sent events over fetch, so the request can be a JSON POST) -------------
function generationBody() {
  if (!ui.vector) throw new ApiError(400, { error: "compute or load a vector first" });
  const body = { prompt: $("prompt").value, vector: ui.vector.ref,
    layers: $("layers").value, max_tokens: readNumber("max-tokens", "max_tokens"),
    temperature: readNumber("temperature", "temperature"), positions: $("positions").value,
    chat: $("chat").checked, alpha_unit: alphaUnit() };
  if ($("seed").value.trim() !== "") body.seed = readNumber("seed", "seed");  // else a fresh one
  if ($("compare-mode").checked) body.alphas = numbers($("compare-alphas").value);
  else body.alpha = readNumber("alpha-value", "alpha");
  const condition = conditionBody();
  if (condition) body.condition = condition;
  return body;
}

function rowTitle(r, start) {
  if (r.row === 0) return "baseline";
  if (start.alpha_unit !== "residual") return `steered · alpha ${alphaText(r.alpha)}`;
  return `steered · alpha ${alphaText(r.alpha)} × residual norm (raw ` +
    `${fmt(r.effective_alphas[0])} at layer ${start.layers[0]})`;
}

function resetOutputs() {
  const box = $("outputs"); box.replaceChildren();
  box.dataset.done = "0"; box.dataset.tokenEvents = "0";
  $("shown-prompt").hidden = true; $("colour-scale").hidden = true; showCondition(null);
  ui.generation = null; updateExport();
}

function startRows(body, start) {
  const prompt = $("shown-prompt");
  prompt.replaceChildren(el("span", { class: "prompt-label" }, "Prompt"),
    el("span", { class: "prompt-text" }, body.prompt), el("small", {},
      ` ${start.prompt_tokens} tokens${body.chat ? ", in the chat template" : ""}`));
  prompt.hidden = false;
  for (const r of start.rows) {
    const col = el("div", { class: `out streaming ${r.row ? "steered" : "baseline"}`,
      id: `out-${r.row}` });
    col.append(el("h3", {}, rowTitle(r, start)), el("p", { class: "scores" }),
      el("div", { class: "text" }));
    $("outputs").append(col);
  }
}

function finishRows(done) {
  const finite = (p) => (Number.isFinite(p) ? p : null);
  const base = done.rows[0].projections.map(finite).filter((p) => p !== null);
  const centre = base.length ? base.reduce((a, b) => a + b, 0) / base.length : 0;
  const scale = Math.max(1e-6, ...done.rows.flatMap((r) => r.projections.map(finite)
    .filter((p) => p !== null).map((p) => Math.abs(p - centre))));
  for (const r of done.rows) {
    const col = $(`out-${r.row}`); const text = col.querySelector(".text");
    col.classList.remove("streaming"); text.replaceChildren();
    const scores = col.querySelector(".scores");
    scores.textContent = scoreLine(r.scores || {});
    if (r.row && degenerate(r.scores, done.rows[0].scores)) {
      scores.classList.add("flag");
      scores.append(el("strong", {}, " · likely degenerate (perplexity over 10× the baseline's)"));
    }
    r.pieces.forEach((piece, i) => {
      const p = finite(r.projections[i]);
      const span = el("span", { title: `projection ${fmt(p)}` }, piece);
      if (p !== null) span.style.background = tokenColour((p - centre) / scale);
      text.append(span);
    });
  }
  drawScale($("colour-scale"), centre, scale, done.readout_layer);
  $("outputs").dataset.done = "1";
}

// A column's scores: perplexity under the unsteered model (high: degenerate text) and each
// behaviour's verdict.
function scoreLine(scores) {
  return Object.entries(scores).map(([k, v]) => (k === "perplexity" ? `perplexity ${fmt(v)}`
    : `${k}: ${v === null ? "can't tell" : v ? "yes" : "no"}`)).join(" · ");
}

// Steered text the unsteered model finds far less likely than the baseline's: a strength past
// what the model tolerates (or a perplexity that overflowed).
function degenerate(scores, base) {
  const p = scores && scores.perplexity, b = base && base.perplexity;
  if (!Number.isFinite(b)) return false;
  return p === null || p === undefined || !Number.isFinite(p) || p > 10 * b;
}

// The run as far as it went: the request with the seed actually used (so it can be sent again
// as is), the vector's source, and the rows' text so far.
function keepGeneration(body, start, done) {
  const rows = done ? done.rows : [...document.querySelectorAll("#outputs .out")].map((c, i) =>
    ({ row: i, text: c.querySelector(".text").textContent }));
  ui.generation = { request: { ...body, seed: start ? start.seed : body.seed },
    stopped: !done, result: done || { rows } };
  updateExport();
}

async function generate() {
  resetOutputs();
  let body;
  try { body = generationBody(); } catch (err) { $("gen-status").textContent = "failed"; throw err; }
  ui.controller = new AbortController();
  $("generate").disabled = true; $("stop").disabled = false;
  $("gen-status").textContent = "waiting for the model…";
  let start = null;
  try {
    const res = await fetch("/api/stream", { method: "POST", signal: ui.controller.signal,
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
    await readEvents(res, (event, data) => {
      if (event === "start") {
        start = data; startRows(body, data); showWarnings(data.warnings);
        showCondition(data.condition);
        $("gen-status").textContent = "streaming…";
      }
      else if (event === "tokens") {
        for (const t of data.tokens) $(`out-${t.row}`).querySelector(".text").append(t.piece);
        $("outputs").dataset.tokenEvents = String(Number($("outputs").dataset.tokenEvents) + 1);
      } else if (event === "done") {
        finishRows(data); keepGeneration(body, start, data);
        $("gen-status").textContent = `${data.tokens} tokens in ${data.seconds.toFixed(2)} s ` +
          `· colour read at layer ${data.readout_layer}` +
          (data.seed === null ? " · greedy" : ` · seed ${data.seed}`);
      } else if (event === "error") throw new ApiError(400, data);
    });
  } catch (err) {
    const stopped = err.name === "AbortError";
    $("gen-status").textContent = stopped ? "stopped" + (start && start.seed !== null
      ? ` · seed ${start.seed}` : "") : "failed";
    if (!stopped) resetOutputs();  // nothing half-done stays under "failed"
    else if (start) keepGeneration(body, start, null);  // what was made can be exported
    throw err;
  } finally {
    document.querySelectorAll(".out.streaming").forEach((c) => c.classList.remove("streaming"));
    $("generate").disabled = !ui.vector; $("stop").disabled = true; ui.controller = null;
  }
}

// -- layer sweep and export ----------------------------------------------------------------------
async function runSweep() {
  clearSweep(); ui.sweep = null; updateExport();
  $("sweep").disabled = true; $("sweep-status").textContent = "sweeping every layer…";
  try {
    if (!ui.vector) throw new ApiError(400, { error: "compute or load a vector first" });
    const body = { prompt: $("prompt").value, vector: ui.vector.ref,
      alpha: readNumber("alpha-value", "alpha"), alpha_unit: alphaUnit(),
      mode: $("sweep-mode").value, max_tokens: readNumber("sweep-tokens", "max_tokens"),
      chat: $("chat").checked };
    const result = await api("POST", "/api/sweep", body);
    showWarnings(result.warnings);
    $("sweep-title").textContent = sweepTitle(result);
    drawSweep($("sweep-chart"), result);
    $("sweep-metric").textContent = result.metric ? `Measure: ${result.metric}.` : "";
    $("sweep-status").textContent = largestChange(result);
    ui.sweep = { request: body, result }; updateExport();
  } catch (err) {
    $("sweep-status").textContent = "failed";
    throw err;
  } finally { $("sweep").disabled = !ui.vector; }
}

function updateExport() { $("export").disabled = !(ui.generation || ui.sweep); }

// Everything needed to run it again: the model, how the vector was made (its prompts and
// method, or its library name) and its norms, and each request as sent with the seed used.
function exportResults() {
  const now = new Date().toISOString();
  download(`mlux-explorer-${now.replace(/[:.]/g, "-")}.json`, { format: "mlux.explorer.results",
    version: 2, exported: now, model: ui.info, vector: ui.vector, generation: ui.generation,
    sweep: ui.sweep });
}

// -- wiring --------------------------------------------------------------------------------------
function showTab(name) {
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active",
    t.dataset.tab === name));
  $("tab-contrast").hidden = name !== "contrast"; $("tab-library").hidden = name !== "library";
  store.set("tab", name);
}

function wire() {
  const click = (id, fn, fields) => $(id).addEventListener("click", () => guarded(fn, fields));
  click("compute", computeVector, FIELDS.compute); click("save", saveVector, FIELDS.save);
  click("generate", generate, FIELDS.generate); click("sweep", runSweep, FIELDS.sweep);
  click("library-load", loadVector, FIELDS.library);
  click("library-delete", deleteVector, FIELDS.library);
  click("library-refresh", refreshLibrary, FIELDS.library); click("export", exportResults);
  $("stop").addEventListener("click", () => ui.controller && ui.controller.abort());
  $("alpha").addEventListener("input", () => { $("alpha-value").value = $("alpha").value; });
  $("alpha-value").addEventListener("input", () => {
    if ($("alpha-value").value.trim() !== "") $("alpha").value = $("alpha-value").value;
  });
  $("alpha-relative").addEventListener("change", switchAlphaUnit);
  $("library-list").addEventListener("change", () => store.set("library",
    $("library-list").value));
  $("layers").addEventListener("input", redrawNorms);
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => showTab(tab.dataset.tab));
  }
}

document.addEventListener("DOMContentLoaded", () => guarded(async () => {
  wire();
  const m = await api("GET", "/api/model"); ui.info = m.info; ui.defaults = m.defaults;
  showInfo(m.info); applyDefaults(m.defaults, m.limits);
  for (const mode of m.sweeps) $("sweep-mode").append(el("option", { value: mode }, mode));
  if (store.get("tab") === "library") showTab("library");
  clearSweep(); redrawNorms();
  await refreshLibrary();
  document.body.dataset.ready = "1";
}));
