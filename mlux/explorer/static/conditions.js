// mlux steering explorer: conditional steering. With "only if the prompt fires a condition"
// ticked, a generation's steered rows steer only when the prompt's state at the condition's
// layer passes its threshold (cosine with a library vector); the decision is shown here.
"use strict";

import { $, el, fmt, readNumber } from "./util.js";

// The request's `condition` object, or null when the box is not ticked.
export function conditionBody() {
  if (!$("condition-on").checked) return null;
  return { vector: { name: $("condition-vector").value.trim() },
    layer: readNumber("condition-layer", "condition.layer"),
    threshold: readNumber("condition-threshold", "condition.threshold"),
    comparator: $("condition-comparator").value };
}

// A `condition.*` error outlines the condition's box (errors are outlined by their first part).
export const CONDITION_FIELDS = { condition: "condition-panel" };

// The "start" event's `condition` report (or null): the prompt's score and the decision.
export function showCondition(report) {
  const box = $("condition-status");
  box.replaceChildren();
  box.classList.toggle("ok", Boolean(report && report.fired));
  if (!report) return;
  const wanted = `${report.comparator} than ${fmt(report.threshold)}`;
  box.append(el("strong", {}, report.fired ? "condition fired" : "condition did not fire"),
    ` · cosine ${fmt(report.score)} at layer ${report.layer} (${report.summary} of the prompt),` +
    ` ${wanted} wanted · ` +
    (report.fired ? "the steered rows steer" : "the steered rows run unsteered"));
}
