// mlux steering explorer: the charts (plain SVG) and the token colour scale.
"use strict";

import { $, el, fmt, signed } from "./util.js";

// -- vector norm per layer -------------------------------------------------------------------
export function drawNorms(svg, vector, chosen) {
  svg.replaceChildren();
  if (!vector) return;
  const { layers, norms } = vector;
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

// -- the layer sweep ---------------------------------------------------------------------------
const isRate = (result) => result.quantity === "rate";
const shown = (result, v) => (v === null || v === undefined ? null : isRate(result) ? 100 * v : v);
const unitOf = (result) => (isRate(result) ? "%" : "");

export function sweepTitle(result) {
  const what = result.quantity === "projection"
    ? "Mean projection of the generated tokens onto the vector"
    : (result.y_label || result.mode).replace(/\s*\(.*\)\s*$/, "");
  const unit = result.alpha_unit === "residual" ? " × the layer's residual norm" : "";
  return `${what[0].toUpperCase()}${what.slice(1)}, per steered layer: baseline vs steered ` +
    `at alpha ${result.alpha > 0 ? "+" : ""}${result.alpha}${unit}`;
}

export function drawSweep(svg, result) {
  svg.replaceChildren();
  const pts = result.layers.filter((p) => p.baseline !== null && p.steered !== null &&
    p.baseline !== undefined && p.steered !== undefined);
  if (!pts.length) return;
  const W = 900, H = 240, left = 78, right = 16, top = 14, bottom = 40, unit = unitOf(result);
  const values = pts.flatMap((p) => [shown(result, p.baseline), shown(result, p.steered), 0]);
  const lo = Math.min(...values), hi = Math.max(...values), span = hi - lo || 1;
  const x = (i) => left + (pts.length === 1 ? 0.5 : i / (pts.length - 1)) * (W - left - right);
  const y = (v) => top + ((hi - v) / span) * (H - top - bottom);
  const label = result.y_label || result.mode;
  svg.append(el("svg:line", { x1: left, x2: W - right, y1: y(0), y2: y(0), class: "zero" }),
    el("svg:line", { x1: left, x2: left, y1: top, y2: H - bottom, class: "axis" }),
    el("svg:text", { x: left - 6, y: top + 4, "text-anchor": "end" }, `${fmt(hi)}${unit}`),
    el("svg:text", { x: left - 6, y: H - bottom, "text-anchor": "end" }, `${fmt(lo)}${unit}`),
    el("svg:text", { class: "axis-label", "text-anchor": "middle",
      transform: `translate(14, ${(top + H - bottom) / 2}) rotate(-90)` }, label),
    el("svg:text", { class: "axis-label", x: (left + W - right) / 2, y: H - 4,
      "text-anchor": "middle" }, "steered layer"));
  for (const [key, cls] of [["baseline", "base"], ["steered", "steer"]]) {
    const d = pts.map((p, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},` +
      `${y(shown(result, p[key])).toFixed(1)}`);
    svg.append(el("svg:path", { d: d.join(" "), class: `line-${cls}` }));
    pts.forEach((p, i) => {
      const dot = el("svg:circle", { cx: x(i), cy: y(shown(result, p[key])), r: 3.5,
        class: `dot-${cls}` });
      dot.append(el("svg:title", {}, `layer ${p.layer} ${key}: ${fmt(shown(result, p[key]))}` +
        `${unit}` + (key === "steered" && p.text ? ` · “${p.text}”` : "")));
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
  $("sweep-chart").replaceChildren(); $("sweep-title").textContent = "";
  $("sweep-metric").textContent = "";
}
