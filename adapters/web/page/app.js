/* Concordia's browser client, the entry module: no build step, no framework.
 *
 * How the page works:
 * - Joining (party.js) opens a WebSocket to the same host (conn.js) and speaks protocol v1
 *   (README "The WebSocket protocol (v1)", adapters/wire.py): a join frame first (with
 *   catch_up, so the running batch and its output so far come again), then prompts (with images
 *   pasted or dropped into the composer), commands, approval decisions and answers to Claude's
 *   questions. The server streams batches, output, approvals, questions, notices and command
 *   results back; HANDLERS below sends each frame to the module it concerns.
 * - Every prompt keeps its client id until the server answers queued or rejected (prompts.js).
 *   A dropped connection is rejoined with exponential backoff and every pending prompt is
 *   resent under the same id: the server deduplicates by id.
 * - Claude's output is accumulated per batch (batches.js) and re-rendered at most once per
 *   animation frame (log.js) as Markdown, sanitised by DOMPurify (markdown.js). Everything else
 *   a person or Claude wrote goes into the DOM as textContent, never as HTML (dom.js).
 * - The page runs under a strict CSP (script-src 'self', style-src 'self'): no inline script,
 *   no inline handlers, no style attributes; remote images are shown as links, never loaded.
 *
 * The modules share one state object (state.js) and import one another one way only: this one
 * wires the page's events and the server's frames to them, and starts.
 */
import { endApprovals, onApproval, onApprovalDone } from "./approvals.js";
import { onBatch, onDone, onOutput } from "./batches.js";
import { onCommandResult, sendCommand } from "./commands.js";
import { autosize, onPromptKey, submitComposer } from "./compose.js";
import { reconnectNow, setConnectionHandlers } from "./conn.js";
import { onDragOver, onDrop, onPaste } from "./images.js";
import { jumpToBottom, notice, onScroll, pendingRenders } from "./log.js";
import { setUpMarkdown } from "./markdown.js";
import { join, onConnectionClosed, onError, onJoinSubmit, onWelcome, takeToken } from "./party.js";
import { notePromptsInBatch, onQueued, restorePending, settle } from "./prompts.js";
import { endQuestions, onQuestion, onQuestionDone } from "./questions.js";
import { state, ui } from "./state.js";
import { KEYS, storageGet } from "./storage.js";

const HANDLERS = {
  welcome: onWelcome, error: onError, queued: onQueued,
  rejected: (f) => settle(f.id, "rejected", `rejected: ${f.reason}`),
  // A batch's card, and our queued prompts in it told which batch took them.
  batch: (f) => { onBatch(f); notePromptsInBatch(f); },
  output: onOutput,
  // The turn ended: its card says how, and what it asked for is no longer waited for.
  done: (f) => { onDone(f); endApprovals(f.batch_id); endQuestions(f.batch_id); },
  system: (f) => notice(f.message, "system"),
  approval: onApproval, approval_done: onApprovalDone,
  question: onQuestion, question_done: onQuestionDone, command_result: onCommandResult,
};

function onFrame(frame) {
  const handler = frame && HANDLERS[frame.type];
  if (handler) handler(frame);
  else console.warn("unknown frame", frame); // a newer server may send more kinds
}

const $ = (selector) => document.querySelector(selector);

function bindUi() {
  for (const id of ["log", "scroller", "intro", "jump", "conn", "party", "whoami", "toolbar",
    "name", "prompt"]) ui[id] = document.getElementById(id);
  Object.assign(ui, { joinForm: $("#join-form"), joinBtn: $("#join-btn"),
    joinError: $("#join-error"), composer: $("#composer"), noToken: $("#no-token"),
    attachments: $("#attachments"), attachError: $("#attach-error") });
  ui.joinForm.addEventListener("submit", onJoinSubmit);
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    submitComposer();
  });
  ui.prompt.addEventListener("keydown", onPromptKey);
  ui.prompt.addEventListener("input", autosize);
  ui.prompt.addEventListener("paste", onPaste);
  ui.composer.addEventListener("dragover", onDragOver);
  ui.composer.addEventListener("drop", onDrop);
  ui.scroller.addEventListener("scroll", onScroll, { passive: true });
  ui.jump.addEventListener("click", jumpToBottom);
  $("#status-btn").addEventListener("click", () => sendCommand("status"));
  $("#cancel-btn").addEventListener("click", () => sendCommand("cancel"));
  $("#leave-btn").addEventListener("click", () => sendCommand("leave"));
  window.addEventListener("online", reconnectNow);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) reconnectNow(); // back from the background: do not wait for backoff
  });
  window.addEventListener("hashchange", () => {
    if (location.hash.length > 1) {
      takeToken(); // a new invite pasted into this tab: start over with it
      location.reload();
    }
  });
}

function start() {
  bindUi();
  setUpMarkdown();
  setConnectionHandlers(onFrame, onConnectionClosed);
  state.token = takeToken();
  if (!state.token) {
    ui.noToken.hidden = false;
    ui.intro.hidden = true;
    return;
  }
  restorePending();
  const rejoinAs = storageGet(sessionStorage, KEYS.joined);
  ui.name.value = rejoinAs || storageGet(localStorage, KEYS.name);
  ui.joinForm.hidden = false;
  if (rejoinAs) join(rejoinAs); // a reload of a tab that had joined
  else ui.name.focus();
}

// For the browser tests: a close from this side takes the same path as a drop by the server;
// how many batches have output not yet rendered (a long one renders less often).
window.concordiaDebug = { dropConnection() { if (state.socket) state.socket.close(); },
  pendingRenders };

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
