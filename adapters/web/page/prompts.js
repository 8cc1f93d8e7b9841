/* Our prompts until the server answers. Each keeps its client id in `state.pending` (and in
 * sessionStorage) until it is queued or rejected, and is resent under the same id after every
 * welcome: the server deduplicates by id.
 */
import { send } from "./conn.js";
import { el } from "./dom.js";
import { imageChip } from "./images.js";
import { byteLength, formatBytes } from "./limits.js";
import { append } from "./log.js";
import { state } from "./state.js";
import { KEYS, storageGet, storageSet } from "./storage.js";

function newId() {
  if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes); // also available outside secure contexts (plain http)
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function pendingNode(id, text, images) {
  const node = el("div", "pending");
  node.dataset.clientId = id;
  node.dataset.state = "sending";
  node.append(el("div", "pending-text", text));
  if (images.length) {
    const chips = el("div", "pending-images");
    chips.append(...images.map((image) => imageChip(image, null)));
    node.append(chips);
  }
  node.append(el("div", "pending-status", "sending…"));
  append(node);
  return node;
}

export function submitPrompt(text, images) {
  const id = newId();
  const p = { id, text, images, node: pendingNode(id, text, images) };
  state.pending.set(id, p);
  savePending();
  sendPrompt(p);
}

function promptFrame(p) {
  const frame = { type: "prompt", id: p.id, text: p.text };
  if (p.images.length) {
    frame.images = p.images.map(({ name, media_type, data }) => ({ name, media_type, data }));
  }
  return frame;
}

export function sendPrompt(p) { // if it cannot go now, it goes after the next welcome
  const frame = promptFrame(p);
  const size = p.images.length ? byteLength(JSON.stringify(frame)) : 0;
  if (size > state.maxFrameBytes) { // the server would close the connection (1009)
    const limit = formatBytes(state.maxFrameBytes);
    settle(p.id, "rejected", `not sent: ${formatBytes(size)} bytes with its images, over the ${
      limit} a message to the server may have (websocket.max_frame_bytes)`);
    return;
  }
  send(frame);
}

export function settle(id, newState, text) {
  const p = state.pending.get(String(id));
  if (!p) return;
  state.pending.delete(p.id);
  savePending();
  p.node.dataset.state = newState;
  p.node.querySelector(".pending-status").textContent = text;
}

export function onQueued(f) {
  const p = state.pending.get(String(f.id));
  if (!p) return;
  const text = f.duplicate ? `already queued (#${f.prompt_id})`
    : `queued #${f.prompt_id}, position ${f.position}`;
  state.queuedNodes.set(f.prompt_id, p.node);
  settle(p.id, "queued", text);
}

// A batch frame: our queued prompts in it say which batch took them.
export function notePromptsInBatch(f) {
  for (const source of f.sources || []) {
    const node = state.queuedNodes.get(source.prompt_id);
    if (node) node.querySelector(".pending-status").textContent += ` · in batch ${f.batch_id}`;
    state.queuedNodes.delete(source.prompt_id);
  }
}

// A frame over the server's size limit closes the connection with 1009: resending that
// prompt would only close it again.
export function dropTooBig() {
  if (state.pending.has(state.lastPromptSent)) {
    settle(state.lastPromptSent, "rejected", "rejected: too large for the server");
  }
}

// Images are kept too when the storage has room; a prompt whose images it had no room for
// is not resent after a reload without them.
function savePending() {
  const pending = [...state.pending.values()];
  const whole = pending.map(({ id, text, images }) => ({ id, text, images }));
  const light = pending.map(({ id, text, images }) => ({ id, text, images: [],
    imagesLost: images.length > 0 }));
  if (!whole.length) return storageSet(sessionStorage, KEYS.pending, "");
  for (const list of [whole, light]) {
    try {
      sessionStorage.setItem(KEYS.pending, JSON.stringify(list));
      return undefined;
    } catch { /* full, or off: try without the images */ }
  }
  return undefined;
}

function isImage(image) {
  return image && typeof image.name === "string" && typeof image.media_type === "string"
    && typeof image.data === "string" && Number.isInteger(image.size);
}

// After a reload of this tab: shown as sending, resent (same ids) after the welcome.
export function restorePending() {
  let list = [];
  try { list = JSON.parse(storageGet(sessionStorage, KEYS.pending) || "[]"); } catch { /* none */ }
  const lost = [];
  for (const { id, text, images, imagesLost } of Array.isArray(list) ? list : []) {
    if (typeof id !== "string" || typeof text !== "string") continue;
    const kept = Array.isArray(images) ? images.filter(isImage) : [];
    state.pending.set(id, { id, text, images: kept, node: pendingNode(id, text, kept) });
    if (imagesLost) lost.push(id);
  }
  for (const id of lost) settle(id, "rejected", "not resent: its images did not survive the reload");
}
