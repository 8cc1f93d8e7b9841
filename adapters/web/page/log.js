/* The log: everything the page shows is appended at its bottom, and the view stays there unless
 * the reader scrolled up ("new output" then offers the way down). Claude's output is rendered
 * again at most once per animation frame.
 */
import { el } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { state, ui } from "./state.js";

const dirty = new Set(); // batches whose output changed since it was last rendered
let frameQueued = false;
let unseen = false;

export function append(node) {
  ui.log.append(node);
  ui.intro.hidden = true;
  changed();
}

export function notice(text, kind) {
  const node = el("p", "notice", text);
  node.dataset.kind = kind || "local";
  append(node);
}

export function changed() {
  unseen = true;
  requestFrame();
}

// The batch's output changed: render it at the next animation frame.
export function renderSoon(batch) {
  dirty.add(batch);
  changed();
}

// Render now whatever of the batch's output waits (a question card is about to cut it).
export function renderNow(batch) {
  if (dirty.has(batch)) {
    renderOutput(batch);
    dirty.delete(batch);
  }
}

// How many batches have output not yet rendered (a long one renders less often).
export function pendingRenders() {
  return dirty.size;
}

function requestFrame() {
  if (!frameQueued) {
    frameQueued = true;
    requestAnimationFrame(onFrame);
  }
}

function onFrame(now) {
  frameQueued = false;
  for (const batch of dirty) {
    if (now < batch.renderAfter) continue; // a long output renders less often
    renderOutput(batch);
    dirty.delete(batch);
  }
  if (dirty.size) requestFrame();
  if (state.stick) ui.scroller.scrollTop = ui.scroller.scrollHeight;
  else if (unseen) ui.jump.hidden = false;
  unseen = false;
}

export function onScroll() {
  const s = ui.scroller;
  state.stick = s.scrollHeight - s.scrollTop - s.clientHeight < 32;
  if (state.stick) ui.jump.hidden = true;
}

export function jumpToBottom() {
  state.stick = true;
  ui.jump.hidden = true;
  ui.scroller.scrollTop = ui.scroller.scrollHeight;
}

// The whole text is rendered again each time (Markdown cannot be rendered piecewise); a render
// that took T ms waits 5T before the next, so a very long output does not freeze the page.
function renderOutput(batch) {
  const started = performance.now();
  batch.out.replaceChildren(renderMarkdown(batch.text));
  batch.renderAfter = started + 5 * (performance.now() - started);
}
