/* Claude's questions and plans: a card in its batch with the options, a box for one's own
 * words, and who may answer. The server decides who may; the page only hides what it would
 * refuse anyway.
 */
import { canApprove } from "./approvals.js";
import { batchCard, placeInBatch } from "./batches.js";
import { send } from "./conn.js";
import { el, setButtons } from "./dom.js";
import { changed, notice } from "./log.js";
import { state } from "./state.js";

// A question frame's answerers: who may answer it.
const ANSWERERS = { authors: "the batch's authors, approvers and the host answer",
  members: "anyone in the party answers", approvers: "approvers and the host answer" };

// Whether this participant may answer, as far as the page knows; the server decides, and
// says why not.
function mayAnswer(f, batch) {
  if (f.answerers === "members" || canApprove()) return true;
  if (f.kind === "plan" || f.answerers === "approvers") return false;
  return !batch.authors || batch.authors.has(state.me);
}

export function onQuestion(f) {
  if (state.questions.has(f.question_id)) return; // sent again on rejoin
  const batch = batchCard(f.batch_id);
  const isPlan = f.kind === "plan";
  const node = el("div", "question");
  Object.assign(node.dataset, { questionId: f.question_id, batchId: f.batch_id, kind: f.kind });
  const question = { id: f.question_id, batchId: f.batch_id, node, resolved: false,
    actions: el("div", "actions"), result: el("p", "question-result"), chosen: new Set() };
  const head = el("div", "question-head");
  head.append(el("strong", "question-title",
    isPlan ? "Claude asks to carry out its plan" : "Claude asks"));
  if (f.header) head.append(el("span", "question-header", f.header));
  const who = ANSWERERS[f.answerers] || "";
  const meta = [`question ${f.question_id}`, who,
    `no answer in ${Math.round(f.timeout_s)} s: Claude is told nobody answered`];
  node.append(head, el("p", "question-text", f.text),
    el("div", "question-meta", meta.filter(Boolean).join(" · ")));
  if (mayAnswer(f, batch)) {
    fillAnswerControls(question, f, isPlan);
  } else {
    question.actions.append(el("span", "waiting", `waiting for an answer: ${who}`));
  }
  node.append(question.actions, question.result);
  state.questions.set(f.question_id, question);
  placeInBatch(batch, node);
}

function fillAnswerControls(question, f, isPlan) {
  const options = el("div", "options");
  const words = el("input", "answer-text");
  words.type = "text";
  words.maxLength = 2000;
  words.setAttribute("aria-label", isPlan ? "what to change" : "your own answer");
  words.placeholder = isPlan ? "what to change (sent with Reject)" : "or answer in your own words";
  (f.options || []).forEach((option, index) => {
    const number = String(index + 1);
    const button = el("button", "option");
    button.type = "button";
    button.dataset.option = number;
    button.append(el("span", "option-label", option.label));
    if (option.description) button.append(el("span", "option-description", option.description));
    if (isPlan) button.classList.add(index === 0 ? "option-approve" : "option-reject");
    button.addEventListener("click", () => {
      if (isPlan && index > 0 && words.value.trim()) answer(question, asWords(words.value, f));
      else if (f.multi_select && !isPlan) toggleChosen(question, button, number);
      else answer(question, number);
    });
    options.append(button);
  });
  const own = el("div", "own-answer");
  own.append(words);
  const sendWords = () => {
    const text = words.value.trim();
    const chosen = [...question.chosen].sort((a, b) => a - b);
    if (text) answer(question, isPlan ? asWords(text, f) : text);
    else if (chosen.length) answer(question, chosen.join(", ")); // parsed as those options
    else {
      question.result.textContent = isPlan ? "write what to change, or press Approve or Reject"
        : "pick an option or write your answer";
    }
  };
  if (!isPlan) {
    const sendButton = el("button", "answer-send", "Send");
    sendButton.type = "button";
    sendButton.addEventListener("click", sendWords);
    own.append(sendButton);
  }
  words.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || event.isComposing || event.keyCode === 229) return;
    event.preventDefault();
    sendWords();
  });
  question.actions.append(options, own);
}

// Feedback with a plan's Reject is words: quoted when it would otherwise read as an option
// ("1", "approve"), so it rejects with those words instead of choosing that option.
function asWords(text, f) {
  const trimmed = text.trim();
  const labels = (f.options || []).map((o) => String(o.label).toLowerCase());
  const isOption = /^\d+$/.test(trimmed) || labels.includes(trimmed.toLowerCase());
  return isOption ? `"${trimmed}"` : trimmed;
}

function toggleChosen(question, button, number) {
  const chosen = !question.chosen.has(number);
  if (chosen) question.chosen.add(number);
  else question.chosen.delete(number);
  button.setAttribute("aria-pressed", String(chosen));
}

function answer(question, text) {
  if (!send({ type: "answer", question_id: question.id, text })) {
    question.result.textContent = "not connected: try again once reconnected";
    return;
  }
  state.answerAsked.push(question.id);
  setButtons(question, false);
  question.result.textContent = `sent: ${text}…`;
}

// As with approve: the answer names no question, answers come in order.
export function showAnswerResult(f) {
  const question = state.questions.get(state.answerAsked.shift());
  if (question && !question.resolved) {
    question.result.textContent = f.text;
    question.node.dataset.refused = String(!f.ok);
    if (!f.ok) setButtons(question, true); // refused: this one may still be answered
  } else notice(f.text, f.ok ? "local" : "error");
}

export function onQuestionDone(f) {
  const question = state.questions.get(f.question_id);
  if (question) resolveQuestion(question, f.text, f.answered);
  else notice(f.text, "system");
}

// The batch's turn ended: nobody is waited for to answer any more.
export function endQuestions(batchId) {
  for (const question of state.questions.values()) {
    if (question.batchId === batchId && !question.resolved) {
      resolveQuestion(question, "no longer waiting: the turn ended", false);
    }
  }
}

function resolveQuestion(question, text, answered) {
  question.resolved = true;
  question.node.dataset.resolved = "true";
  question.node.dataset.answered = String(Boolean(answered));
  question.node.removeAttribute("data-refused");
  question.actions.remove();
  question.result.textContent = text;
  changed();
}
