// mlux steering explorer: the charts (plain SVG) and the token colour scale.
"use strict";

import { $, el, fmt, signed } from "./util.js";

// -- vector norm per layer -------------------------------------------------------------------
export function drawNorms(svg, vector, chosen) {
  if (!vector) { placeholder(svg, "no vector yet: compute one or load one"); return; }
  svg.replaceChildren();
  const { layers, norms } = vector;
  const W = 600, H = 160, left = 44, right = 8, pad = 24, top = 10;
  const marks = ticks(0, Math.max(...norms, 1e-9), 4), max = marks[marks.length - 1].value;
  const y = (v) => H - pad - ((H - pad - top) * v) / max;
  for (const t of marks) {
    svg.append(el("svg:line", { x1: left, x2: W - right, y1: y(t.value), y2: y(t.value),
      class: "grid" }),
    el("svg:text", { class: "tick", x: left - 4, y: y(t.value) + 4, "text-anchor": "end" },
      t.label));
  }
  const bw = (W - left - right) / layers.length;
  layers.forEach((layer, i) => {
    const x = left + i * bw;
    const bar = el("svg:rect", { x: x + 1, y: y(norms[i]), width: Math.max(1, bw - 2),
      height: H - pad - y(norms[i]), class: chosen.has(layer) ? "bar selected" : "bar" });
    bar.append(el("svg:title", {}, `layer ${layer}: norm ${fmt(norms[i])}`)); svg.append(bar);
    if (layers.length <= 40 || i % 2 === 0) {
      svg.append(el("svg:text", { x: x + bw / 2, y: H - 8, "text-anchor": "middle" }, layer));
    }
  });
}

// -- token colours: projection relative to the baseline's mean --------------------------------
const LOW = [47, 111, 214], HIGH = [217, 96, 26], STRENGTH = 0.55;

export function tokenColour(t) {
  const [r, g, b] = t >= 0 ? HIGH : LOW;
  return `rgba(${r}, ${g}, ${b}, ${(STRENGTH * Math.min(1, Math.abs(t))).toFixed(3)})`;
}

// The numeric legend for the token colours: the values at both ends and the centre.
export function drawScale(box, centre, scale, layer) {
  box.replaceChildren();
  const bar = el("div", { class: "scale-bar" });
  bar.style.background = `linear-gradient(to right, ${tokenColour(-1)}, ${tokenColour(0)}, ` +
    `${tokenColour(1)})`;
  const ticks = el("div", { class: "scale-ticks" });
  ticks.append(el("span", {}, fmt(centre - scale)),
    el("span", {}, `${fmt(centre)} (baseline mean)`), el("span", {}, fmt(centre + scale)));
  const body = el("div", { class: "scale-body" }); body.append(bar, ticks);
  box.append(el("span", { class: "scale-caption" },
    `projection onto the unit vector at layer ${layer}:`), body);
  box.hidden = false;
}

// -- axes ------------------------------------------------------------------------------------------
// About `n` round tick values from at or below `lo` to at or above `hi` (the chart's range),
// all printed with the same number of decimals.
export function ticks(lo, hi, n = 5) {
  const raw = (hi - lo) / n || 1, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9) + (step / mag === 2.5 ? 1 : 0));
  const out = [];
  const first = Math.floor(lo / step + 1e-9), last = Math.ceil(hi / step - 1e-9);
  for (let k = first; k <= last; k++) {
    const v = k * step;
    out.push({ value: v, label: (k === 0 ? 0 : v).toFixed(digits) });
  }
  return out;
}

// An empty chart says what will appear there, instead of a blank box.
export function placeholder(svg, text) {
  const box = svg.viewBox.baseVal;
  svg.replaceChildren(el("svg:text", { class: "placeholder", x: box.width / 2,
    y: box.height / 2, "text-anchor": "middle" }, text));
}

// -- the layer sweep ---------------------------------------------------------------------------
const isRate = (result) => result.quantity === "rate";
const isChange = (result) => result.quantity === "projection_change";
const shown = (result, v) => (v === null || v === undefined ? null : isRate(result) ? 100 * v : v);
const unitOf = (result) => (isRate(result) ? "%" : "");
const changeOf = (p) => (Number.isFinite(p.relative_delta) ? p.relative_delta : p.delta);

export function sweepTitle(result) {
  const unit = result.alpha_unit === "residual" ? " × the layer's residual norm" : "";
  const at = `at alpha ${result.alpha > 0 ? "+" : ""}${result.alpha}${unit}`;
  if (isChange(result)) {
    return "Change in the generated text's projection onto the vector (steered − baseline, × " +
      `the layer's residual norm), per steered layer, ${at}`;
  }
  const what = (result.y_label || result.mode).replace(/\s*\(.*\)\s*$/, "");
  return `${what[0].toUpperCase()}${what.slice(1)}, per steered layer: baseline vs steered ` +
    `${at}` + (isRate(result) ? " (bars: 95% Wilson intervals)" : "");
}

// The series a result charts: rates and other measures as baseline and steered (rates with
// their intervals); the projection sweep as one series, the change from the baseline.
function series(result) {
  if (isChange(result)) return [["change", "steer", (p) => changeOf(p), null]];
  return [["baseline", "base", (p) => shown(result, p.baseline), "baseline_ci"],
    ["steered", "steer", (p) => shown(result, p.steered), "steered_ci"]];
}

export function drawSweep(svg, result) {
  const present = (v) => v !== null && v !== undefined && Number.isFinite(v);
  const lines = series(result);
  const pts = result.layers.filter((p) => lines.every(([, , get]) => present(get(p))));
  if (!pts.length) { placeholder(svg, "no layer gave a value to chart"); return; }
  svg.replaceChildren();
  const W = 900, H = 240, left = 78, right = 16, top = 14, bottom = 40, unit = unitOf(result);
  const ci = (p, key) => (key && Array.isArray(p[key]) ? p[key].map((v) => shown(result, v))
    .filter(present) : []);
  const values = pts.flatMap((p) => lines.flatMap(([, , get, key]) => [get(p), ...ci(p, key)]));
  let [lo, hi] = isRate(result) ? [0, 100] : [Math.min(0, ...values), Math.max(0, ...values)];
  if (hi === lo) { lo -= 1; hi += 1; }
  const marks = ticks(lo, hi);
  [lo, hi] = [marks[0].value, marks[marks.length - 1].value];
  const span = hi - lo;
  const x = (i) => left + (pts.length === 1 ? 0.5 : i / (pts.length - 1)) * (W - left - right);
  const y = (v) => top + ((hi - v) / span) * (H - top - bottom);
  for (const t of marks) {
    svg.append(el("svg:line", { x1: left, x2: W - right, y1: y(t.value), y2: y(t.value),
      class: t.value === 0 ? "zero" : "grid" }),
    el("svg:text", { class: "tick", x: left - 6, y: y(t.value) + 4, "text-anchor": "end" },
      `${t.label}${unit}`));
  }
  svg.append(el("svg:line", { x1: left, x2: left, y1: top, y2: H - bottom, class: "axis" }),
    el("svg:text", { class: "axis-label", "text-anchor": "middle",
      transform: `translate(14, ${(top + H - bottom) / 2}) rotate(-90)` },
    result.y_label || result.mode),
    el("svg:text", { class: "axis-label", x: (left + W - right) / 2, y: H - 4,
      "text-anchor": "middle" }, "steered layer"));
  for (const [name, cls, get, key] of lines) {
    pts.forEach((p, i) => {
      const [a, b] = ci(p, key);
      if (present(a) && present(b)) {
        svg.append(el("svg:line", { x1: x(i), x2: x(i), y1: y(a), y2: y(b), class: `ci ci-${cls}` }));
      }
    });
    const d = pts.map((p, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(get(p)).toFixed(1)}`);
    svg.append(el("svg:path", { d: d.join(" "), class: `line-${cls}` }));
    pts.forEach((p, i) => {
      const dot = el("svg:circle", { cx: x(i), cy: y(get(p)), r: 3.5, class: `dot-${cls}` });
      const range = ci(p, key).length === 2 ? ` (95%: ${fmt(ci(p, key)[0])}–` +
        `${fmt(ci(p, key)[1])}${unit})` : "";
      dot.append(el("svg:title", {}, `layer ${p.layer} ${name}: ${fmt(get(p))}${unit}${range}` +
        (name !== "baseline" && p.text ? ` · “${p.text}”` : "")));
      svg.append(dot);
    });
  }
  const step = Math.ceil(pts.length / 30);
  pts.forEach((p, i) => { if (i % step === 0) svg.append(el("svg:text", { x: x(i), y: H - 22,
    "text-anchor": "middle" }, p.layer)); });
}

// Which layer moved most: rates compare directly; projections grow with depth, so they are
// compared as a fraction of the layer's residual norm (`relative_delta`) when the server
// gives it.
export function largestChange(result) {
  const relative = result.layers.some((p) => Number.isFinite(p.relative_delta));
  const size = (p) => Math.abs((relative ? p.relative_delta : p.delta) || 0);
  const best = result.layers.reduce((a, b) => (size(b) > size(a) ? b : a));
  if (!Number.isFinite(best.delta)) return "no layer changed the measure";
  if (isRate(result)) {
    return `largest change at layer ${best.layer}: ${signed(100 * best.delta)} points ` +
      `(${fmt(100 * best.baseline)}% → ${fmt(100 * best.steered)}%)`;
  }
  if (relative) {
    return `largest change at layer ${best.layer}: ${signed(best.relative_delta)} × the ` +
      `layer's residual norm (projection ${signed(best.delta)})`;
  }
  return `largest change at layer ${best.layer} (${signed(best.delta)})`;
}

export function clearSweep() {
  placeholder($("sweep-chart"), "no sweep yet: pick a measure and press Run sweep");
  $("sweep-title").textContent = ""; $("sweep-metric").textContent = "";
}
