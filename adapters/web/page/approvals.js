/* Approval cards: Claude asks to use a tool, approvers and the host decide, and the card stays
 * open until the server says the approval is settled (a quorum may need more than one).
 */
import { send } from "./conn.js";
import { el, setButtons } from "./dom.js";
import { append, changed, notice } from "./log.js";
import { state } from "./state.js";

const DECISIONS = [["allow", "Allow once"], ["always", "Always"], ["deny", "Deny"]];

export function canApprove() {
  return state.role === "approver" || state.role === "host";
}

export function onApproval(f) {
  if (state.approvals.has(f.approval_id)) return; // sent again on rejoin
  const node = el("div", "approval");
  node.dataset.approvalId = f.approval_id;
  node.dataset.batchId = f.batch_id;
  const approval = { id: f.approval_id, batchId: f.batch_id, node, resolved: false,
    actions: el("div", "actions"), result: el("p", "approval-result") };
  const head = el("div", "approval-head");
  head.append("Claude asks to use ", el("strong", "tool", f.tool));
  const needed = f.needed > 1 ? `${f.needed} approvers needed · ` : "";
  const meta = `batch ${f.batch_id} · ${needed}no answer in ${Math.round(f.timeout_s)} s denies`;
  node.append(head, el("p", "summary", f.summary), el("div", "approval-meta", meta));
  if (f.input) node.append(el("pre", "input", f.input));
  if (canApprove()) {
    for (const [decision, label] of DECISIONS) {
      const button = el("button", `decide decide-${decision}`, label);
      button.type = "button";
      button.dataset.decision = decision;
      button.addEventListener("click", () => decide(approval, decision));
      approval.actions.append(button);
    }
  } else {
    approval.actions.append(el("span", "waiting", "waiting for an approver"));
  }
  node.append(approval.actions, approval.result);
  state.approvals.set(f.approval_id, approval);
  append(node);
}

function decide(approval, decision) {
  if (!send({ type: "approve", approval_id: approval.id, decision })) {
    approval.result.textContent = "not connected: try again once reconnected";
    return;
  }
  state.approveAsked.push(approval.id);
  setButtons(approval, false);
  approval.result.textContent = `sent: ${decision}…`;
}

// The answer to our approve names no approval: answers come in order, so it is the oldest
// one asked. It stays open until approval_done (a quorum may need more approvers).
export function showApproveResult(f) {
  const approval = state.approvals.get(state.approveAsked.shift());
  if (approval && !approval.resolved) {
    approval.result.textContent = f.text;
    setButtons(approval, true);
  } else notice(f.text, f.ok ? "local" : "error");
}

export function onApprovalDone(f) {
  const approval = state.approvals.get(f.approval_id);
  if (approval) resolveApproval(approval, f.text, f.allowed);
  else notice(f.text, "system");
}

// The batch's turn ended: nothing it asked for is waited for any more.
export function endApprovals(batchId) {
  for (const approval of state.approvals.values()) {
    if (approval.batchId === batchId && !approval.resolved) {
      resolveApproval(approval, "no longer waiting: the turn ended", false);
    }
  }
}

function resolveApproval(approval, text, allowed) {
  approval.resolved = true;
  approval.node.dataset.resolved = "true";
  approval.node.dataset.allowed = String(Boolean(allowed));
  approval.actions.remove();
  approval.result.textContent = text;
  changed();
}
