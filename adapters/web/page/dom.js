/* Building the page's nodes. Whatever a person or Claude wrote goes in as textContent, never
 * as HTML: only markdown.js makes HTML, and DOMPurify cleans it.
 */

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// An approval's or a question's controls, while an answer is on its way (or not).
export function setButtons(card, enabled) {
  for (const control of card.actions.querySelectorAll("button, input")) control.disabled = !enabled;
}
