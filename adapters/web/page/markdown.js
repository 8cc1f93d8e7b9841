/* Claude's output as HTML: Markdown through the vendored markdown-it (raw HTML off), then
 * DOMPurify. Rendering never loads anything: an image becomes a link.
 *
 * markdown-it and DOMPurify are classic `defer` scripts placed before the module scripts in
 * index.html; both kinds run in document order, so `window.markdownit` and `window.DOMPurify`
 * exist by the time app.js starts and calls setUpMarkdown.
 */

const SANITIZE = { FORBID_ATTR: ["style"],
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select"] };

let md = null;

export function setUpMarkdown() {
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

// A sanitised fragment, ready to go into the page.
export function renderMarkdown(text) {
  const html = md.render(text);
  return window.DOMPurify.sanitize(html, { ...SANITIZE, RETURN_DOM_FRAGMENT: true });
}
