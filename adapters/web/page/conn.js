/* The WebSocket to the server: one at a time, joined with catch_up, rejoined with exponential
 * backoff. What a frame or a close means for the page is up to the handlers app.js gives.
 */
import { state, ui } from "./state.js";

const CONN_LABELS = { connecting: "connecting…", connected: "connected",
  reconnecting: "reconnecting…", closed: "not connected" };
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10000;

let handlers = { frame() {}, closed() {} };

// Set once, before the first connect: `frame(parsed or null)`, `closed(event, wasWelcomed)`.
export function setConnectionHandlers(frame, closed) {
  handlers = { frame, closed };
}

export function setConn(connState) {
  ui.conn.dataset.state = connState;
  ui.conn.textContent = CONN_LABELS[connState];
}

export function connect() {
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

function onMessage(data) {
  let frame = null;
  try { frame = JSON.parse(data); } catch { /* the handler reports it */ }
  handlers.frame(frame);
}

function onClosed(event) {
  const wasWelcomed = state.welcomed;
  state.socket = null;
  state.welcomed = false;
  handlers.closed(event, wasWelcomed);
}

export function scheduleReconnect() {
  setConn("reconnecting");
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.retries);
  const delay = base / 2 + (Math.random() * base) / 2; // jitter: between half and all of it
  state.retries += 1;
  state.retryTimer = setTimeout(connect, delay);
}

export function reconnectNow() {
  if (ui.conn.dataset.state === "reconnecting" && !state.socket) connect();
}

// False when the frame cannot go now (not connected, or not welcomed yet).
export function send(frame) {
  const ws = state.socket;
  if (!ws || !state.welcomed || ws.readyState !== WebSocket.OPEN) return false;
  ws.send(JSON.stringify(frame));
  state.lastPromptSent = frame.type === "prompt" ? frame.id : null;
  return true;
}

export function stopConnection() {
  state.stop = true;
  clearTimeout(state.retryTimer);
  if (state.socket) state.socket.close(1000, "bye");
}
