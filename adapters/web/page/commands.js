/* Commands to the server (/status, /cancel, /leave, /approve, /answer …) and their results. */
import { showApproveResult } from "./approvals.js";
import { send, stopConnection } from "./conn.js";
import { el } from "./dom.js";
import { append, notice } from "./log.js";
import { left } from "./party.js";
import { showAnswerResult } from "./questions.js";
import { state } from "./state.js";

// False when it was not sent (not connected).
export function sendCommand(name, args) {
  if (name === "leave" && !state.welcomed) {
    stopConnection();
    left();
    return true;
  }
  if (name === "leave") state.leaving = true;
  if (!send({ type: "command", name, args: args || "" })) {
    state.leaving = false;
    notice(`not connected: /${name} was not sent`, "error");
    return false;
  }
  if (name === "approve") state.approveAsked.push(parseInt(args, 10));
  if (name === "answer") state.answerAsked.push(parseInt(args, 10));
  return true;
}

export function onCommandResult(f) {
  if (f.name === "approve") return showApproveResult(f);
  if (f.name === "answer") return showAnswerResult(f);
  if (f.name === "leave" && !f.ok) state.leaving = false;
  const node = el("div", "command-result");
  Object.assign(node.dataset, { name: f.name, ok: String(f.ok), public: String(f.public) });
  const label = `/${f.name} · ${f.public ? "public" : "private, only you see this"}`;
  node.append(el("div", "command-label", f.ok ? label : `${label} · failed`), el("pre", null, f.text));
  append(node);
}
