/* The server's size limits, and how the page measures a prompt frame against them. */

// The server's defaults, until the welcome says what this party's are.
export const DEFAULT_MAX_IMAGE_BYTES = 3750000;
export const DEFAULT_MAX_FRAME_BYTES = 2097152;
// What a prompt frame needs besides its text and its images' data (keys, id, names).
const FRAME_OVERHEAD_BYTES = 200;
const IMAGE_OVERHEAD_BYTES = 200;

const encoder = new TextEncoder();

export function byteLength(text) {
  return encoder.encode(text).length;
}

export function formatBytes(count) {
  return count.toLocaleString("en-US");
}

// About the size of the prompt frame that would carry ``text`` and ``images``.
export function promptFrameBytes(text, images) {
  return FRAME_OVERHEAD_BYTES + byteLength(text)
    + images.reduce((sum, image) => sum + image.data.length + IMAGE_OVERHEAD_BYTES
      + byteLength(image.name), 0);
}
