/* The page's state and its elements: the one object the modules share, so that none of them
 * has to import another back (the imports stay one-way; app.js is the only one that fills `ui`).
 */
import { DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_IMAGE_BYTES } from "./limits.js";

export const ui = {}; // the page's elements by name, bound once by app.js at start

export const state = {
  token: "",
  name: "", // the name typed in the form, sent in every join
  me: "", // the name as the party shows it (welcome)
  role: "",
  socket: null,
  welcomed: false, // the current socket got its welcome
  everWelcomed: false,
  stop: false, // do not reconnect (refused join, protocol mismatch, left)
  leaving: false,
  retries: 0,
  retryTimer: 0,
  lastPromptSent: null, // the client id of the last frame sent, if it was a prompt
  pending: new Map(), // client id -> {id, text, node}
  queuedNodes: new Map(), // server prompt_id -> the node of our prompt
  batches: new Map(), // batch_id -> {node, out, text, ...}
  approvals: new Map(), // approval_id -> {node, actions, result, batchId, resolved}
  approveAsked: [], // approval ids of our approve frames, oldest first, awaiting results
  questions: new Map(), // question_id -> {node, actions, result, batchId, resolved, ...}
  answerAsked: [], // question ids of our answers, oldest first, awaiting results
  attached: [], // images to go with the next prompt: {name, media_type, data, size}
  maxImageBytes: DEFAULT_MAX_IMAGE_BYTES,
  maxFrameBytes: DEFAULT_MAX_FRAME_BYTES,
  stick: true, // keep the log scrolled to the bottom
};
