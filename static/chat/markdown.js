// Markdown to safe DOM, and a renderer that keeps up with a streaming reply.
//
// Every piece of HTML that marked produces goes through DOMPurify before it
// reaches the page. Raw HTML in a reply is shown as text, not interpreted, and
// images become links (the page's CSP only loads images from this site).

import DOMPurify from "../vendor/dompurify-3.4.18/purify.es.mjs";
import { Marked } from "../vendor/marked-18.2.1/marked.esm.js";
import { decorateCode } from "./code.js";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

const marked = new Marked({
  gfm: true,
  renderer: {
    html({ text, block }) {
      return block ? `<p>${escapeHtml(text)}</p>` : escapeHtml(text);
    },
    image({ href, title, text }) {
      const label = escapeHtml(text || title || href);
      return `<a class="image-link" href="${escapeHtml(href)}">${label}</a>`;
    },
  },
});

const PURIFY = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "form", "img", "video", "audio", "iframe"],
  FORBID_ATTR: ["style", "id", "name"],
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    if (node.getAttribute("href").startsWith("#")) return;
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

export function sanitize(html) {
  return DOMPurify.sanitize(html, PURIFY);
}

// The whole text as a sanitised DocumentFragment, its code blocks highlighted.
export function renderMarkdown(text) {
  return decorateCode(sanitize(marked.parse(text)));
}

const GROUP_SIZE = 64;

const STAY_OUT = new Set(["BR", "HR", "INPUT", "IMG", "WBR", "TABLE"]);

// The element the streaming cursor goes into: the innermost element that ends
// the text, so the cursor sits right after the last character instead of on a
// line of its own (marked's newlines between blocks do not count as text).
function cursorHost(root) {
  let host = root;
  for (;;) {
    let last = host.lastChild;
    while (last && last.nodeType === Node.TEXT_NODE && /^\s*\n\s*$/.test(last.data)) {
      last = last.previousSibling;
    }
    if (!last || last.nodeType !== Node.ELEMENT_NODE || STAY_OUT.has(last.tagName)) {
      return host;
    }
    host = last;
  }
}

// Renders a reply while it streams, at most once per animation frame.
//
// Re-parsing the whole reply per token costs O(n) each time, O(n^2) in total.
// Instead the text is split into finished blocks, rendered once and then left
// alone, and the open block at the end, the only part re-rendered per frame.
// A block is finished once another block has started after it: then, once, its
// code is highlighted and gets its Copy button (code.js). When the reply
// ends, one full render fixes what block-wise rendering cannot know (link
// reference definitions used before they appear, citation markers).
export class StreamingMarkdown {
  constructor(container, { onRender = null, transform = (text) => text } = {}) {
    this.container = container;
    this.onRender = onRender;
    this.transform = transform;
    this.frozen = document.createElement("div");
    this.frozen.className = "md-frozen";
    this.tail = document.createElement("div");
    this.tail.className = "md-tail";
    this.cursor = document.createElement("span");
    this.cursor.className = "cursor";
    this.cursor.setAttribute("aria-hidden", "true");
    // The cursor moves into the newly rendered tail every frame. A CSS animation
    // restarts on every move, and each restart cost time in proportion to the
    // whole page; a script animation belongs to the element and carries on.
    if (!matchMedia("(prefers-reduced-motion: reduce)").matches) {
      this.cursor.animate([{ opacity: 0.7 }, { opacity: 0 }], {
        duration: 1000,
        iterations: Infinity,
        easing: "steps(2, jump-none)",
      });
    }
    this.container.replaceChildren(this.frozen, this.tail);
    this.text = "";
    this.heldCR = false;
    this.frozenLength = 0;
    this.group = null;
    this.frame = 0;
    this.finished = false;
  }

  append(chunk) {
    if (!chunk) return;
    // marked normalises line endings itself; doing it here keeps frozenLength an
    // offset into this.text. A CR at the end may be the first half of a CRLF.
    let text = (this.heldCR ? "\r" : "") + chunk;
    this.heldCR = text.endsWith("\r");
    if (this.heldCR) text = text.slice(0, -1);
    this.text += text.replace(/\r\n?/g, "\n");
    this.schedule();
  }

  schedule() {
    if (this.frame || this.finished) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.flush();
    });
  }

  // Renders now (also used by the benchmark to force one frame's work).
  flush() {
    if (this.frame) {
      cancelAnimationFrame(this.frame);
      this.frame = 0;
    }
    const pending = this.text.slice(this.frozenLength);
    const tokens = marked.lexer(pending);
    let last = tokens.length - 1;
    while (last > 0 && tokens[last].type === "space") last -= 1;
    if (last > 0) {
      const done = tokens.slice(0, last);
      const raw = done.map((token) => token.raw).join("");
      if (pending.startsWith(raw)) {
        this.freeze(sanitize(marked.parser(done)));
        this.frozenLength += raw.length;
        this.showTail(sanitize(marked.parser(tokens.slice(last))));
        return;
      }
    }
    this.showTail(sanitize(marked.parser(tokens)));
  }

  // Finished blocks go into groups of at most GROUP_SIZE elements: appending to
  // one flat container re-lays out all its children, which made every frame
  // slower as the reply grew.
  freeze(fragment) {
    if (!this.group || this.group.childElementCount >= GROUP_SIZE) {
      this.group = document.createElement("div");
      this.group.className = "md-group";
      this.frozen.append(this.group);
    }
    this.group.append(decorateCode(fragment));
  }

  showTail(fragment) {
    this.tail.replaceChildren(fragment);
    if (!this.finished) cursorHost(this.tail).append(this.cursor);
    this.onRender?.();
  }

  // The reply is complete (or stopped): one last full render, no cursor.
  finish(fullText = null) {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.finished = true;
    if (fullText !== null) this.text = fullText;
    else if (this.heldCR) this.text += "\n";
    this.heldCR = false;
    this.container.replaceChildren(renderMarkdown(this.transform(this.text)));
    this.onRender?.();
  }
}
