/* The prompt box: Enter sends, Shift+Enter is a new line; a line starting with /name is a
 * command, // sends a prompt that starts with /, and pasted or dropped images go along.
 */
import { sendCommand } from "./commands.js";
import { refuseImage, showAttached } from "./images.js";
import { jumpToBottom } from "./log.js";
import { submitPrompt } from "./prompts.js";
import { state, ui } from "./state.js";

// `/plan <ask>` is a prompt, not a command: Claude plans first and the group approves.
const PROMPT_COMMANDS = new Set(["plan"]);

export function submitComposer() {
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

export function onPromptKey(event) {
  if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
  event.preventDefault();
  submitComposer();
}

export function autosize() {
  ui.prompt.style.height = "auto"; // CSSOM, allowed by the CSP (a style attribute is not)
  ui.prompt.style.height = `${ui.prompt.scrollHeight + 2}px`;
}
