/* Images pasted or dropped into the composer. Each is checked here against the limits the
 * welcome gave (its bytes must be PNG, JPEG, GIF or WebP, whatever its name says) and goes as
 * base64 in the prompt frame; the server checks it again and refuses the whole prompt if it is
 * not what it claims.
 */
import { el } from "./dom.js";
import { formatBytes, promptFrameBytes } from "./limits.js";
import { state, ui } from "./state.js";

const SIGNATURES = [
  ["image/png", [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]],
  ["image/jpeg", [0xff, 0xd8, 0xff]],
  ["image/gif", [0x47, 0x49, 0x46, 0x38, 0x37, 0x61]],
  ["image/gif", [0x47, 0x49, 0x46, 0x38, 0x39, 0x61]],
];

// The type the bytes say (bot/images.py does the same on the server), not the file's name.
function sniffImage(bytes) {
  for (const [type, signature] of SIGNATURES) {
    if (signature.every((byte, i) => bytes[i] === byte)) return type;
  }
  const ascii = (from, to) => String.fromCharCode(...bytes.subarray(from, to));
  if (ascii(0, 4) === "RIFF" && ascii(8, 12) === "WEBP") return "image/webp";
  return null;
}

function toBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

export function refuseImage(text) {
  ui.attachError.textContent = text;
}

async function attachFile(file) {
  const name = (file.name || "pasted image").slice(0, 100);
  if (file.size > state.maxImageBytes) {
    return refuseImage(`${name} (${formatBytes(file.size)} bytes) is larger than the ${
      formatBytes(state.maxImageBytes)} bytes an image may have (party.max_image_bytes)`);
  }
  if (!file.size) return refuseImage(`${name} is empty`);
  let bytes;
  try {
    bytes = new Uint8Array(await file.arrayBuffer());
  } catch {
    return refuseImage(`${name} could not be read`);
  }
  const mediaType = sniffImage(bytes);
  if (!mediaType) {
    return refuseImage(`${name} is not an image Claude reads (PNG, JPEG, GIF or WebP)`);
  }
  const image = { name, media_type: mediaType, data: toBase64(bytes), size: bytes.length };
  const frameBytes = promptFrameBytes(ui.prompt.value, [...state.attached, image]);
  if (frameBytes > state.maxFrameBytes) {
    return refuseImage(`with ${name} the prompt would take about ${formatBytes(frameBytes)
    } bytes, more than the ${formatBytes(state.maxFrameBytes)
    } a message to the server may have (websocket.max_frame_bytes)`);
  }
  ui.attachError.textContent = "";
  state.attached.push(image);
  showAttached();
  return undefined;
}

// A thumbnail with the image's name; with a remove button when `onRemove` is given.
export function imageChip(image, onRemove) {
  const chip = el("span", "chip");
  chip.title = `${image.name} · ${formatBytes(image.size)} bytes`;
  const thumb = el("img", "thumb");
  thumb.alt = "";
  thumb.src = `data:${image.media_type};base64,${image.data}`; // CSP: img-src data:
  chip.append(thumb, el("span", "chip-name", image.name));
  if (onRemove) {
    const remove = el("button", "chip-remove", "×");
    remove.type = "button";
    remove.setAttribute("aria-label", `remove ${image.name}`);
    remove.addEventListener("click", onRemove);
    chip.append(remove);
  }
  return chip;
}

export function showAttached() {
  ui.attachments.replaceChildren(...state.attached.map((image) => imageChip(image, () => {
    state.attached = state.attached.filter((other) => other !== image);
    ui.attachError.textContent = "";
    showAttached();
    ui.prompt.focus();
  })));
  ui.attachments.hidden = !state.attached.length;
}

function imageFiles(list) {
  return [...(list || [])].filter((f) => f && typeof f.arrayBuffer === "function");
}

export function onPaste(event) {
  const items = [...((event.clipboardData && event.clipboardData.items) || [])];
  const files = imageFiles(items.filter((i) => i.kind === "file").map((i) => i.getAsFile()));
  if (!files.length) return; // text: the textarea takes it
  event.preventDefault();
  for (const file of files) attachFile(file);
}

export function onDragOver(event) {
  if (event.dataTransfer && [...event.dataTransfer.types].includes("Files")) {
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  }
}

export function onDrop(event) {
  const files = imageFiles(event.dataTransfer && event.dataTransfer.files);
  if (!files.length) return;
  event.preventDefault();
  for (const file of files) attachFile(file);
}
