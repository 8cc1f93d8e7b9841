/* Batch cards: one per batch, with who asked what, the merged prompt, Claude's output and how
 * the turn ended. A question card goes inside its batch: the output so far stays above it,
 * what Claude writes after goes below.
 */
import { el } from "./dom.js";
import { append, changed, renderNow, renderSoon } from "./log.js";
import { state } from "./state.js";

export function onBatch(f) {
  endEarlierBatches(f.batch_id);
  const batch = batchCard(f.batch_id);
  batch.text = ""; // a re-run, or catch_up: the whole output so far follows
  batch.node.removeAttribute("data-status");
  batch.node.removeAttribute("data-ended");
  batch.state.textContent = "running…";
  batch.detail.textContent = "";
  batch.attempt.textContent = f.attempt > 1 ? `attempt ${f.attempt}` : "";
  batch.merged.textContent = f.prompt || "";
  batch.details.hidden = !f.prompt;
  // The whole output so far follows (catch_up) or starts again (a re-run): one output again,
  // above the questions asked so far.
  for (const out of batch.node.querySelectorAll(".output")) if (out !== batch.firstOut) out.remove();
  batch.out = batch.firstOut;
  batch.authors = new Set((f.sources || []).map((s) => s.author));
  fillSources(batch, f.sources || [], f.groups || []);
  renderSoon(batch);
}

// One turn runs at a time: a batch still shown as running when a later one starts ended
// while this page was away (its done frame was missed).
function endEarlierBatches(batchId) {
  for (const batch of state.batches.values()) {
    if (batch.id < batchId && !batch.node.hasAttribute("data-status")) {
      batch.node.dataset.ended = "unknown";
      batch.state.textContent = "ended while you were away";
    }
  }
}

export function batchCard(batchId) {
  const known = state.batches.get(batchId);
  if (known) return known;
  const node = el("section", "batch");
  node.dataset.batchId = batchId;
  const head = el("header", "batch-head");
  const batch = { id: batchId, node, text: "", renderAfter: 0, attempt: el("span", "attempt"),
    state: el("span", "batch-state", "running…"), sources: el("ul", "sources"),
    details: el("details", "merged"), merged: el("pre", "merged-text"),
    out: el("div", "output"), detail: el("p", "done-detail") };
  batch.firstOut = batch.out;
  batch.authors = null; // unknown until its batch frame names them
  head.append(el("span", "batch-title", `batch ${batchId}`), batch.attempt, batch.state);
  batch.details.append(el("summary", null, "merged prompt"), batch.merged);
  batch.details.hidden = true;
  node.append(head, batch.sources, batch.details, batch.out, batch.detail);
  state.batches.set(batchId, batch);
  append(node);
  return batch;
}

function fillSources(batch, sources, groups) {
  const authors = new Map(sources.map((s) => [s.prompt_id, s.author]));
  const who = (ids) => ids.map((id) => `${authors.get(id) ?? "?"} #${id}`).join(", ");
  const mine = (ids) => ids.some((id) => authors.get(id) === state.me);
  const item = (className, label, ids) => {
    const li = el("li", className);
    li.append(el("span", "label", label), el("span", "who", who(ids)));
    li.classList.toggle("mine", mine(ids));
    return li;
  };
  // Each group is one part of the merged prompt; a prompt in no group was a reaction ("+1").
  const items = groups.map((g) => item("group", g.instruction, g.prompt_ids || []));
  const grouped = new Set(groups.flatMap((g) => g.prompt_ids || []));
  const rest = sources.map((s) => s.prompt_id).filter((id) => !grouped.has(id));
  if (rest.length) items.push(item("source", groups.length ? "also: " : "asked by ", rest));
  batch.sources.replaceChildren(...items);
}

export function onOutput(f) {
  const batch = batchCard(f.batch_id);
  batch.text += f.text; // rendered at the next animation frame
  renderSoon(batch);
}

// The card only: app.js also ends the approvals and questions the turn left open.
export function onDone(f) {
  const batch = batchCard(f.batch_id);
  batch.node.dataset.status = f.status;
  batch.node.removeAttribute("data-ended");
  batch.state.textContent = f.status;
  batch.detail.textContent = f.detail || "";
  changed();
}

// Claude's text so far stays above the card; what it writes after the answer goes below.
export function placeInBatch(batch, node) {
  renderNow(batch);
  const out = el("div", "output");
  batch.detail.before(node, out);
  batch.out = out;
  batch.text = "";
  changed();
}
