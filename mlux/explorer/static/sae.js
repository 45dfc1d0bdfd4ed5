// mlux steering explorer: the SAE panel (shown when the explorer was started with --sae DIR).
// Reads the top features of each token of the prompt and its continuation, and generates with
// one feature clamped. Text from the server is only set through textContent.
"use strict";

import { $, api, el, fmt, guarded, readNumber } from "./util.js";

const FIELDS = { prompt: "prompt", k: "sae-k", max_tokens: "sae-tokens", clamp: "sae-feature" };

function render(data) {
  const table = $("sae-table");
  table.replaceChildren();
  const head = el("tr");
  ["", "token", "top features (feature: activation)"].forEach((t) => head.append(el("th", {}, t)));
  table.append(head);
  for (const tok of data.tokens) {
    const row = el("tr", tok.generated ? { class: "generated" } : {});
    row.append(el("td", {}, tok.generated ? "+" : ""), el("td", { class: "tok" }, tok.text));
    const cell = el("td");
    if (!tok.features.length) cell.append(el("span", { class: "status" }, "none active"));
    for (const f of tok.features) {
      const chip = el("button", { type: "button", class: "chip", title: "clamp this feature" },
        `${f.feature}: ${fmt(f.activation)}`);
      chip.addEventListener("click", () => { $("sae-feature").value = String(f.feature); });
      cell.append(chip, " ");
    }
    row.append(cell);
    table.append(row);
  }
  const c = data.clamp;
  $("sae-status").textContent = c ? `feature ${c.feature} clamped to ${fmt(c.value)}` : "unclamped";
}

async function read(clamp) {
  const body = { prompt: $("prompt").value, k: readNumber("sae-k", "k"),
                 max_tokens: readNumber("sae-tokens", "max_tokens"), chat: $("chat").checked,
                 clamp: null };
  if (clamp) {
    body.clamp = { feature: readNumber("sae-feature", "clamp"),
                   value: readNumber("sae-value", "clamp") };
  }
  $("sae-status").textContent = "reading…";
  render(await api("POST", "/api/sae/features", body));
}

async function init() {
  const info = await api("GET", "/api/sae");
  if (!info.loaded) return;
  $("sae-info").textContent = `${info.hook} · ${info.architecture} · ${info.d_sae} features`;
  $("sae-panel").hidden = false;
  $("sae-read").addEventListener("click", () => guarded(() => read(false), FIELDS));
  $("sae-clamp").addEventListener("click", () => guarded(() => read(true), FIELDS));
}

guarded(init);
