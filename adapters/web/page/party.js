/* Being in the party: the invite token, joining under a name, the welcome, a refused join,
 * leaving, and what a closed connection means (come back with backoff, or stay out).
 *
 * The invite link is https://HOST/#TOKEN: the token is read once from the hash, kept in memory
 * and in sessionStorage (a reload of this tab rejoins) and taken out of the address bar.
 */
import { connect, scheduleReconnect, setConn, stopConnection } from "./conn.js";
import { setButtons } from "./dom.js";
import { notice } from "./log.js";
import { dropTooBig, sendPrompt, settle } from "./prompts.js";
import { state, ui } from "./state.js";
import { KEYS, storageGet, storageSet } from "./storage.js";

const PROTOCOL = 1;
const MAX_NAME = 64;
const JOIN_ERRORS = {
  bad_token: "the invite link was refused",
  name_taken: "that name is already used in this party by someone with another role: pick another",
  bad_name: `the name must be 1–${MAX_NAME} characters`,
  join_expected: "the server expected a join frame",
};

export function takeToken() {
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

export function join(name) {
  Object.assign(state, { name, stop: false, leaving: false, retries: 0 });
  ui.joinBtn.disabled = true;
  ui.joinError.textContent = "";
  storageSet(localStorage, KEYS.name, name);
  connect();
}

export function onJoinSubmit(event) {
  event.preventDefault(); // the CSP forbids form submission anyway (form-action 'none')
  const name = ui.name.value.trim();
  const length = [...name].length;
  if (length < 1 || length > MAX_NAME) {
    ui.joinError.textContent = `pick a name of 1–${MAX_NAME} characters`;
    return;
  }
  join(name);
}

export function onWelcome(f) {
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

export function onError(f) {
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

export function left() {
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

// The answers to our approve and answer frames are lost with the connection: ask again.
export function onConnectionClosed(event, wasWelcomed) {
  state.approveAsked = [];
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
