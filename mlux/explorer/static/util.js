// mlux steering explorer: small helpers shared by the page's modules. Text from the server is
// only ever set through textContent, never innerHTML.
"use strict";

export const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status; this.field = body ? body.field : null;
  }
}

export async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, data);
  if (data === null) throw new ApiError(res.status, { error: "the server's answer is not JSON" });
  return data;
}

// A request's field -> the input that holds it; each action passes its own map, so an error
// in the sweep's max_tokens outlines the sweep's Tokens box, not the generation's.
export function showError(err, fields) {
  document.querySelectorAll(".invalid").forEach((node) => node.classList.remove("invalid"));
  const box = $("error");
  if (!err) { box.hidden = true; return; }
  box.textContent = err.field ? `${err.field}: ${err.message}` : err.message;
  box.hidden = false;
  const input = err.field && $((fields || {})[err.field.split(/[.[]/)[0]] || "");
  if (input) input.classList.add("invalid");
}

export async function guarded(fn, fields) {
  showError(null);
  try { await fn(); } catch (err) { if (err.name !== "AbortError") showError(err, fields); }
}

export const lines = (id) => $(id).value.split("\n").map((s) => s.trim()).filter(Boolean);
export const numbers = (text) => text.split(",").map((s) => s.trim()).filter(Boolean)
  .map((s) => (Number.isFinite(Number(s)) ? Number(s) : s));

// The layers a spec names (the server's grammar: "2, 4", "1-3", "-1", "residuals_2-4", "all"),
// for highlighting; the server decides what is valid.
export function layerSet(text, n) {
  const out = new Set(), at = (i) => (i < 0 ? i + n : i);
  for (const raw of text.split(",")) {
    const part = raw.trim().replace(/^residuals_/, "");
    const m = part.match(/^(-?\d+)(?:\s*-\s*(-?\d+))?$/);
    if (part === "all") for (let i = 0; i < n; i++) out.add(i);
    else if (m) for (let i = at(Number(m[1])); i <= at(Number(m[2] ?? m[1])); i++) out.add(i);
  }
  return out;
}

// A number box's value; an empty or unreadable box is refused here, never sent as 0.
export function readNumber(id, field) {
  const text = $(id).value.trim(); const value = Number(text);
  if (text === "" || !Number.isFinite(value)) {
    throw new ApiError(400, { error: text === "" ? "is empty: enter a number"
      : `must be a number, got “${text}”`, field });
  }
  return value;
}

export const fmt = (x) => (x === null || x === undefined || !Number.isFinite(x) ? "–"
  : Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(2));
export const signed = (x) => (x > 0 ? `+${fmt(x)}` : fmt(x));

export function el(tag, attrs, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Server-sent events from a fetch response (EventSource cannot POST a JSON body).
export async function readEvents(res, onEvent) {
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

// Save `data` as a JSON file through the browser's download.
export function download(name, data) {
  const url = URL.createObjectURL(new Blob([JSON.stringify(data, null, 2)],
    { type: "application/json" }));
  const link = el("a", { href: url, download: name }); document.body.append(link);
  link.click(); link.remove(); setTimeout(() => URL.revokeObjectURL(url), 5000);
}

// localStorage that never throws (private windows, disabled storage).
export const store = {
  get(key) { try { return localStorage.getItem(`mlux.explorer.${key}`); } catch { return null; } },
  set(key, value) {
    try {
      if (value === null) localStorage.removeItem(`mlux.explorer.${key}`);
      else localStorage.setItem(`mlux.explorer.${key}`, value);
    } catch { /* storage unavailable: nothing is remembered */ }
  },
};
