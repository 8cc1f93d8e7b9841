/* Concordia's browser client: no build step, no framework.
 *
 * How the page works:
 * - The invite link is https://HOST/#TOKEN. The token is read once from the hash, kept in memory
 *   and in sessionStorage (a reload of this tab rejoins) and taken out of the address bar.
 * - Joining opens a WebSocket to the same host and speaks protocol v1 (README "The WebSocket
 *   protocol (v1)", adapters/wire.py): a join frame first (with catch_up, so the running batch
 *   and its output so far come again), then prompts (with images pasted or dropped into the
 *   composer), commands, approval decisions and answers to Claude's questions. The server
 *   streams batches, output, approvals, questions, notices and command results back.
 * - Every prompt keeps its client id in `pending` (and in sessionStorage) until the server
 *   answers queued or rejected. A dropped connection is rejoined with exponential backoff and
 *   every pending prompt is resent under the same id: the server deduplicates by id.
 * - Claude's output is accumulated per batch and re-rendered at most once per animation frame
 *   as Markdown (markdown-it, raw HTML off), sanitised by DOMPurify. Everything else a person
 *   or Claude wrote goes into the DOM as textContent, never as HTML. A question Claude asks is
 *   a card in its batch: the output so far stays above it, what follows goes below.
 * - An image is checked here against the limits the welcome gives (its bytes must be PNG,
 *   JPEG, GIF or WebP, whatever its name says) and sent as base64 in the prompt frame; the
 *   server checks it again and refuses the whole prompt if it is not what it claims.
 * - The page runs under a strict CSP (script-src 'self', style-src 'self'): no inline script,
 *   no inline handlers, no style attributes; remote images are shown as links, never loaded.
 */
(() => {
  "use strict";

  const PROTOCOL = 1;
  const MAX_NAME = 64;
  // sessionStorage: this tab's token, the name it joined with (a reload rejoins) and its prompts
  // not yet answered; localStorage: the last name used, to prefill the form.
  const KEYS = { token: "concordia.token", joined: "concordia.joined", pending: "concordia.pending",
    name: "concordia.name" };
  const JOIN_ERRORS = {
    bad_token: "the invite link was refused",
    name_taken: "that name is already used in this party by someone with another role: pick another",
    bad_name: `the name must be 1–${MAX_NAME} characters`,
    join_expected: "the server expected a join frame",
  };
  // `/plan <ask>` is a prompt, not a command: Claude plans first and the group approves.
  const PROMPT_COMMANDS = new Set(["plan"]);
  const DECISIONS = [["allow", "Allow once"], ["always", "Always"], ["deny", "Deny"]];
  // A question frame's answerers: who may answer it.
  const ANSWERERS = { authors: "the batch's authors, approvers and the host answer",
    members: "anyone in the party answers", approvers: "approvers and the host answer" };
  // The server's defaults, until the welcome says what this party's are.
  const DEFAULT_MAX_IMAGE_BYTES = 3750000;
  const DEFAULT_MAX_FRAME_BYTES = 2097152;
  // What a prompt frame needs besides its text and its images' data (keys, id, names).
  const FRAME_OVERHEAD_BYTES = 200;
  const IMAGE_OVERHEAD_BYTES = 200;
  const SANITIZE = { FORBID_ATTR: ["style"],
    FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select"] };
  const CONN_LABELS = { connecting: "connecting…", connected: "connected",
    reconnecting: "reconnecting…", closed: "not connected" };
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;

  const $ = (selector) => document.querySelector(selector);
  const ui = {};
  const state = {
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
  let md = null;

  // --- small helpers --------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // Storage may be off (privacy modes): the page still works, without rejoin on reload.
  function storageGet(storage, key) {
    try { return storage.getItem(key) || ""; } catch { return ""; }
  }

  function storageSet(storage, key, value) {
    try { value ? storage.setItem(key, value) : storage.removeItem(key); } catch { /* off */ }
  }

  const encoder = new TextEncoder();

  function byteLength(text) {
    return encoder.encode(text).length;
  }

  function formatBytes(count) {
    return count.toLocaleString("en-US");
  }

  function newId() {
    if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes); // also available outside secure contexts (plain http)
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // --- the log and scrolling ------------------------------------------------------------------

  function append(node) {
    ui.log.append(node);
    ui.intro.hidden = true;
    changed();
  }

  function notice(text, kind) {
    const node = el("p", "notice", text);
    node.dataset.kind = kind || "local";
    append(node);
  }

  const dirty = new Set();
  let frameQueued = false;
  let unseen = false;

  function changed() {
    unseen = true;
    requestFrame();
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

  function onScroll() {
    const s = ui.scroller;
    state.stick = s.scrollHeight - s.scrollTop - s.clientHeight < 32;
    if (state.stick) ui.jump.hidden = true;
  }

  function jumpToBottom() {
    state.stick = true;
    ui.jump.hidden = true;
    ui.scroller.scrollTop = ui.scroller.scrollHeight;
  }

  // --- Markdown ---------------------------------------------------------------------------------

  function setUpMarkdown() {
    md = window.markdownit({ html: false, linkify: true, breaks: false });
    // An image would be fetched from wherever its URL points (and the CSP blocks other hosts):
    // show it as a link to follow instead, so rendering output never loads anything.
    md.renderer.rules.image = (tokens, idx, options, env, self) => {
      const token = tokens[idx];
      const alt = self.renderInlineAsText(token.children || [], options, env);
      const src = md.utils.escapeHtml(token.attrGet("src") || "");
      return `<a class="image-link" href="${src}">image: ${md.utils.escapeHtml(alt || src)}</a>`;
    };
    // Table cells are aligned with style="text-align:…", which the CSP refuses (and DOMPurify
    // would drop): use a class instead.
    md.core.ruler.push("align_class", (coreState) => {
      for (const token of coreState.tokens) {
        const align = /text-align:(\w+)/.exec(token.attrGet("style") || "");
        if (!align) continue;
        token.attrs = token.attrs.filter(([name]) => name !== "style");
        token.attrJoin("class", `align-${align[1]}`);
      }
    });
    window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A" && node.hasAttribute("href")) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer nofollow");
      }
    });
  }

  // The whole text is rendered again each time (Markdown cannot be rendered piecewise); a render
  // that took T ms waits 5T before the next, so a very long output does not freeze the page.
  function renderOutput(batch) {
    const started = performance.now();
    const html = md.render(batch.text);
    const fragment = window.DOMPurify.sanitize(html, { ...SANITIZE, RETURN_DOM_FRAGMENT: true });
    batch.out.replaceChildren(fragment);
    batch.renderAfter = started + 5 * (performance.now() - started);
  }

  // --- connection -----------------------------------------------------------------------------

  function setConn(connState) {
    ui.conn.dataset.state = connState;
    ui.conn.textContent = CONN_LABELS[connState];
  }

  function connect() {
    clearTimeout(state.retryTimer);
    const old = state.socket;
    state.socket = null; // its close event is ignored from now on
    if (old) old.close();
    state.welcomed = false;
    setConn(state.everWelcomed || state.retries > 0 ? "reconnecting" : "connecting");
    let ws;
    try {
      ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/");
    } catch (err) {
      console.error("WebSocket failed", err);
      scheduleReconnect();
      return;
    }
    state.socket = ws;
    // catch_up: the running batch and its whole output so far follow the welcome.
    ws.onopen = () => ws.send(JSON.stringify({ type: "join", token: state.token, name: state.name,
      catch_up: true }));
    ws.onmessage = (event) => ws === state.socket && onMessage(event.data);
    ws.onclose = (event) => ws === state.socket && onClosed(event);
  }

  function scheduleReconnect() {
    setConn("reconnecting");
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.retries);
    const delay = base / 2 + (Math.random() * base) / 2; // jitter: between half and all of it
    state.retries += 1;
    state.retryTimer = setTimeout(connect, delay);
  }

  function reconnectNow() {
    if (ui.conn.dataset.state === "reconnecting" && !state.socket) connect();
  }

  function onClosed(event) {
    const wasWelcomed = state.welcomed;
    state.socket = null;
    state.welcomed = false;
    state.approveAsked = []; // their answers are lost with the connection: ask again
    state.answerAsked = [];
    for (const approval of state.approvals.values()) setButtons(approval, true);
    for (const question of state.questions.values()) setButtons(question, true);
    if (event.code === 4001 && !state.stop) refuseJoin("bad_token", "");
    if (event.code === 1009) dropTooBig();
    if (state.leaving) {
      left();
    } else if (state.stop) {
      setConn("closed");
      showJoined(false);
    } else {
      if (wasWelcomed) notice("connection lost: reconnecting…");
      scheduleReconnect();
    }
  }

  function send(frame) {
    const ws = state.socket;
    if (!ws || !state.welcomed || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(frame));
    state.lastPromptSent = frame.type === "prompt" ? frame.id : null;
    return true;
  }

  function stopConnection() {
    state.stop = true;
    clearTimeout(state.retryTimer);
    if (state.socket) state.socket.close(1000, "bye");
  }

  function left() {
    state.leaving = false;
    state.stop = true;
    state.everWelcomed = false;
    state.retries = 0;
    storageSet(sessionStorage, KEYS.joined, "");
    for (const p of [...state.pending.values()]) settle(p.id, "rejected", "not sent: you left");
    setConn("closed");
    showJoined(false);
    notice("you left the party");
  }

  // --- incoming frames ------------------------------------------------------------------------

  const HANDLERS = {
    welcome: onWelcome, error: onError, queued: onQueued,
    rejected: (f) => settle(f.id, "rejected", `rejected: ${f.reason}`),
    batch: onBatch, output: onOutput, done: onDone,
    system: (f) => notice(f.message, "system"),
    approval: onApproval, approval_done: onApprovalDone,
    question: onQuestion, question_done: onQuestionDone, command_result: onCommandResult,
  };

  function onMessage(data) {
    let frame = null;
    try { frame = JSON.parse(data); } catch { /* reported below */ }
    const handler = frame && HANDLERS[frame.type];
    if (handler) handler(frame);
    else console.warn("unknown frame", frame); // a newer server may send more kinds
  }

  function onWelcome(f) {
    if (f.protocol !== PROTOCOL) {
      stopConnection();
      ui.joinError.textContent = `this server speaks protocol ${f.protocol}, this page speaks ${
        PROTOCOL}: reload the page`;
      return notice(ui.joinError.textContent, "error");
    }
    const rejoined = state.everWelcomed;
    Object.assign(state, { welcomed: true, everWelcomed: true, retries: 0, me: f.name, role: f.role });
    if (Number.isInteger(f.max_image_bytes)) state.maxImageBytes = f.max_image_bytes;
    if (Number.isInteger(f.max_frame_bytes)) state.maxFrameBytes = f.max_frame_bytes;
    ui.party.textContent = f.party;
    ui.whoami.textContent = `${f.name} · ${f.role}`;
    document.title = `Concordia · ${f.party}`;
    storageSet(localStorage, KEYS.name, state.name);
    storageSet(sessionStorage, KEYS.joined, state.name);
    setConn("connected");
    showJoined(true);
    if (rejoined) notice("reconnected");
    for (const p of state.pending.values()) sendPrompt(p);
  }

  function onError(f) {
    if (!state.welcomed) refuseJoin(f.code, f.message); // the server closes after it
    else if (f.id !== undefined && state.pending.has(String(f.id))) {
      settle(f.id, "rejected", `rejected: ${f.message}`);
    } else notice(`server: ${f.message || f.code}`, "error");
  }

  // A refused join is final: no reconnect until the user joins again (with another name).
  function refuseJoin(code, message) {
    state.stop = true;
    ui.joinError.textContent = JOIN_ERRORS[code] || String(message || code);
    if (code === "bad_token") {
      ui.joinError.textContent += ": ask the host for a new one";
      storageSet(sessionStorage, KEYS.joined, "");
    }
  }

  function onQueued(f) {
    const p = state.pending.get(String(f.id));
    if (!p) return;
    const text = f.duplicate ? `already queued (#${f.prompt_id})`
      : `queued #${f.prompt_id}, position ${f.position}`;
    state.queuedNodes.set(f.prompt_id, p.node);
    settle(p.id, "queued", text);
  }

  function onBatch(f) {
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
    dirty.add(batch);
    changed();
    for (const source of f.sources || []) {
      const node = state.queuedNodes.get(source.prompt_id);
      if (node) node.querySelector(".pending-status").textContent += ` · in batch ${f.batch_id}`;
      state.queuedNodes.delete(source.prompt_id);
    }
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

  function batchCard(batchId) {
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

  function onOutput(f) {
    const batch = batchCard(f.batch_id);
    batch.text += f.text; // rendered at the next animation frame
    dirty.add(batch);
    changed();
  }

  function onDone(f) {
    const batch = batchCard(f.batch_id);
    batch.node.dataset.status = f.status;
    batch.node.removeAttribute("data-ended");
    batch.state.textContent = f.status;
    batch.detail.textContent = f.detail || "";
    for (const approval of state.approvals.values()) {
      if (approval.batchId === f.batch_id && !approval.resolved) {
        resolveApproval(approval, "no longer waiting: the turn ended", false);
      }
    }
    for (const question of state.questions.values()) {
      if (question.batchId === f.batch_id && !question.resolved) {
        resolveQuestion(question, "no longer waiting: the turn ended", false);
      }
    }
    changed();
  }

  function onCommandResult(f) {
    if (f.name === "approve") return showApproveResult(f);
    if (f.name === "answer") return showAnswerResult(f);
    if (f.name === "leave" && !f.ok) state.leaving = false;
    const node = el("div", "command-result");
    Object.assign(node.dataset, { name: f.name, ok: String(f.ok), public: String(f.public) });
    const label = `/${f.name} · ${f.public ? "public" : "private, only you see this"}`;
    node.append(el("div", "command-label", f.ok ? label : `${label} · failed`), el("pre", null, f.text));
    append(node);
  }

  // --- approvals ------------------------------------------------------------------------------

  function canApprove() {
    return state.role === "approver" || state.role === "host";
  }

  function onApproval(f) {
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

  // An approval's or a question's controls, while an answer is on its way (or not).
  function setButtons(card, enabled) {
    for (const control of card.actions.querySelectorAll("button, input")) control.disabled = !enabled;
  }

  // The answer to our approve names no approval: answers come in order, so it is the oldest
  // one asked. It stays open until approval_done (a quorum may need more approvers).
  function showApproveResult(f) {
    const approval = state.approvals.get(state.approveAsked.shift());
    if (approval && !approval.resolved) {
      approval.result.textContent = f.text;
      setButtons(approval, true);
    } else notice(f.text, f.ok ? "local" : "error");
  }

  function onApprovalDone(f) {
    const approval = state.approvals.get(f.approval_id);
    if (approval) resolveApproval(approval, f.text, f.allowed);
    else notice(f.text, "system");
  }

  function resolveApproval(approval, text, allowed) {
    approval.resolved = true;
    approval.node.dataset.resolved = "true";
    approval.node.dataset.allowed = String(Boolean(allowed));
    approval.actions.remove();
    approval.result.textContent = text;
    changed();
  }

  // --- Claude's questions ---------------------------------------------------------------------

  // Whether this participant may answer, as far as the page knows; the server decides, and
  // says why not.
  function mayAnswer(f, batch) {
    if (f.answerers === "members" || canApprove()) return true;
    if (f.kind === "plan" || f.answerers === "approvers") return false;
    return !batch.authors || batch.authors.has(state.me);
  }

  function onQuestion(f) {
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
      const send = el("button", "answer-send", "Send");
      send.type = "button";
      send.addEventListener("click", sendWords);
      own.append(send);
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

  // Claude's text so far stays above the card; what it writes after the answer goes below.
  function placeInBatch(batch, node) {
    if (dirty.has(batch)) {
      renderOutput(batch);
      dirty.delete(batch);
    }
    const out = el("div", "output");
    batch.detail.before(node, out);
    batch.out = out;
    batch.text = "";
    changed();
  }

  // As with approve: the answer names no question, answers come in order.
  function showAnswerResult(f) {
    const question = state.questions.get(state.answerAsked.shift());
    if (question && !question.resolved) {
      question.result.textContent = f.text;
      question.node.dataset.refused = String(!f.ok);
      if (!f.ok) setButtons(question, true); // refused: this one may still be answered
    } else notice(f.text, f.ok ? "local" : "error");
  }

  function onQuestionDone(f) {
    const question = state.questions.get(f.question_id);
    if (question) resolveQuestion(question, f.text, f.answered);
    else notice(f.text, "system");
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

  // --- images pasted or dropped into the composer ---------------------------------------------

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

  // About the size of the prompt frame that would carry ``text`` and ``images``.
  function promptFrameBytes(text, images) {
    return FRAME_OVERHEAD_BYTES + byteLength(text)
      + images.reduce((sum, image) => sum + image.data.length + IMAGE_OVERHEAD_BYTES
        + byteLength(image.name), 0);
  }

  function refuseImage(text) {
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

  function imageChip(image, onRemove) {
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

  function showAttached() {
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

  function onPaste(event) {
    const items = [...((event.clipboardData && event.clipboardData.items) || [])];
    const files = imageFiles(items.filter((i) => i.kind === "file").map((i) => i.getAsFile()));
    if (!files.length) return; // text: the textarea takes it
    event.preventDefault();
    for (const file of files) attachFile(file);
  }

  function onDragOver(event) {
    if (event.dataTransfer && [...event.dataTransfer.types].includes("Files")) {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
    }
  }

  function onDrop(event) {
    const files = imageFiles(event.dataTransfer && event.dataTransfer.files);
    if (!files.length) return;
    event.preventDefault();
    for (const file of files) attachFile(file);
  }

  // --- outgoing: prompts and commands ---------------------------------------------------------

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

  function submitPrompt(text, images) {
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

  function sendPrompt(p) { // if it cannot go now, it goes after the next welcome
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

  function settle(id, newState, text) {
    const p = state.pending.get(String(id));
    if (!p) return;
    state.pending.delete(p.id);
    savePending();
    p.node.dataset.state = newState;
    p.node.querySelector(".pending-status").textContent = text;
  }

  // A frame over the server's size limit closes the connection with 1009: resending that
  // prompt would only close it again.
  function dropTooBig() {
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
  function restorePending() {
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

  function sendCommand(name, args) {
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

  function submitComposer() {
    const raw = ui.prompt.value.replace(/\s+$/, "");
    if (!raw.trim()) {
      if (state.attached.length) refuseImage("write a few words to go with the image");
      return;
    }
    const command = /^\/([a-z][\w-]*)(?:\s+([\s\S]*))?$/i.exec(raw);
    if (command && !PROMPT_COMMANDS.has(command[1].toLowerCase())) {
      if (!sendCommand(command[1].toLowerCase(), (command[2] || "").trim())) return;
    } else {
      submitPrompt(raw.startsWith("//") ? raw.slice(1) : raw, state.attached);
      state.attached = [];
      ui.attachError.textContent = "";
      showAttached();
    }
    ui.prompt.value = "";
    autosize();
    jumpToBottom();
  }

  function onPromptKey(event) {
    if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
    event.preventDefault();
    submitComposer();
  }

  function autosize() {
    ui.prompt.style.height = "auto"; // CSSOM, allowed by the CSP (a style attribute is not)
    ui.prompt.style.height = `${ui.prompt.scrollHeight + 2}px`;
  }

  // --- joining --------------------------------------------------------------------------------

  function takeToken() {
    let fromHash = location.hash.slice(1);
    try { fromHash = decodeURIComponent(fromHash); } catch { /* keep it as it came */ }
    fromHash = fromHash.trim();
    if (location.hash) history.replaceState(null, "", location.pathname + location.search);
    if (fromHash) storageSet(sessionStorage, KEYS.token, fromHash);
    return fromHash || storageGet(sessionStorage, KEYS.token);
  }

  function showJoined(joined) {
    ui.joinForm.hidden = joined;
    ui.joinBtn.disabled = false;
    ui.composer.hidden = !joined;
    ui.toolbar.hidden = !joined;
    if (joined) ui.joinError.textContent = "";
  }

  function join(name) {
    Object.assign(state, { name, stop: false, leaving: false, retries: 0 });
    ui.joinBtn.disabled = true;
    ui.joinError.textContent = "";
    storageSet(localStorage, KEYS.name, name);
    connect();
  }

  function onJoinSubmit(event) {
    event.preventDefault(); // the CSP forbids form submission anyway (form-action 'none')
    const name = ui.name.value.trim();
    const length = [...name].length;
    if (length < 1 || length > MAX_NAME) {
      ui.joinError.textContent = `pick a name of 1–${MAX_NAME} characters`;
      return;
    }
    join(name);
  }

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
    pendingRenders() { return dirty.size; } };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
