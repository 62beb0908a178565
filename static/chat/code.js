// Fenced code blocks: highlighted by their language, with a Copy button.
//
// A block is decorated once it is finished (markdown.js freezes it, or renders
// the whole reply), never while it still grows: highlighting happens once per
// block, and the full render at the end of a reply takes the same block's
// highlighting from a cache instead of doing it again. The raw code stays the
// text of <code>, which is what Copy copies.

import DOMPurify from "../vendor/dompurify-3.4.18/purify.es.mjs";
import hljs from "../vendor/highlight.js-11.12.0/es/core.js";
import bash from "../vendor/highlight.js-11.12.0/es/languages/bash.min.js";
import c from "../vendor/highlight.js-11.12.0/es/languages/c.min.js";
import cpp from "../vendor/highlight.js-11.12.0/es/languages/cpp.min.js";
import csharp from "../vendor/highlight.js-11.12.0/es/languages/csharp.min.js";
import css from "../vendor/highlight.js-11.12.0/es/languages/css.min.js";
import diff from "../vendor/highlight.js-11.12.0/es/languages/diff.min.js";
import go from "../vendor/highlight.js-11.12.0/es/languages/go.min.js";
import java from "../vendor/highlight.js-11.12.0/es/languages/java.min.js";
import javascript from "../vendor/highlight.js-11.12.0/es/languages/javascript.min.js";
import json from "../vendor/highlight.js-11.12.0/es/languages/json.min.js";
import markdown from "../vendor/highlight.js-11.12.0/es/languages/markdown.min.js";
import plaintext from "../vendor/highlight.js-11.12.0/es/languages/plaintext.min.js";
import python from "../vendor/highlight.js-11.12.0/es/languages/python.min.js";
import rust from "../vendor/highlight.js-11.12.0/es/languages/rust.min.js";
import shell from "../vendor/highlight.js-11.12.0/es/languages/shell.min.js";
import sql from "../vendor/highlight.js-11.12.0/es/languages/sql.min.js";
import typescript from "../vendor/highlight.js-11.12.0/es/languages/typescript.min.js";
import xml from "../vendor/highlight.js-11.12.0/es/languages/xml.min.js";
import yaml from "../vendor/highlight.js-11.12.0/es/languages/yaml.min.js";

const LANGUAGES = {
  bash,
  c,
  cpp,
  csharp,
  css,
  diff,
  go,
  java,
  javascript,
  json,
  markdown,
  plaintext,
  python,
  rust,
  shell,
  sql,
  typescript,
  xml,
  yaml,
};
for (const [name, grammar] of Object.entries(LANGUAGES)) hljs.registerLanguage(name, grammar);

// Highlighted code (a sanitised fragment to clone) by language and text; the
// oldest is forgotten first.
const highlighted = new Map();
const KEEP = 200;
// Only what highlight.js writes: spans with classes around escaped text.
const MARKUP = { ALLOWED_TAGS: ["span"], ALLOWED_ATTR: ["class"], RETURN_DOM_FRAGMENT: true };

// The language a fence named (marked writes it as class="language-…"), when
// highlight.js knows it or one of its aliases.
function languageOf(code) {
  for (const name of code.classList) {
    if (name.startsWith("language-")) {
      const language = name.slice("language-".length);
      return { label: language, known: hljs.getLanguage(language) ? language : null };
    }
  }
  return { label: "", known: null };
}

function highlight(code, language) {
  const text = code.textContent;
  const key = `${language}\u0000${text}`;
  let tokens = highlighted.get(key);
  if (tokens === undefined) {
    const markup = hljs.highlight(text, { language, ignoreIllegals: true }).value;
    tokens = DOMPurify.sanitize(markup, MARKUP);
    highlighted.set(key, tokens);
    if (highlighted.size > KEEP) highlighted.delete(highlighted.keys().next().value);
  }
  code.replaceChildren(tokens.cloneNode(true));
  code.classList.add("hljs");
}

// Highlights every finished code block under `root` and gives it a header with
// its language and a Copy button (handled by the page, see copyCode).
export function decorateCode(root) {
  for (const pre of root.querySelectorAll("pre")) {
    const code = pre.firstElementChild;
    if (!code || code.tagName !== "CODE" || pre.parentElement?.classList.contains("code-block")) {
      continue;
    }
    const { label, known } = languageOf(code);
    if (known) highlight(code, known);
    const block = document.createElement("div");
    block.className = "code-block";
    const header = document.createElement("div");
    header.className = "code-header";
    const name = document.createElement("span");
    name.className = "code-language";
    name.textContent = label || "code";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy-button copy-code";
    copy.textContent = "Copy";
    copy.dataset.label = `Copy code (${label || "plain text"})`;
    copy.setAttribute("aria-label", copy.dataset.label);
    header.append(name, copy);
    pre.replaceWith(block);
    block.append(header, pre);
  }
  return root;
}

// The code a Copy button of a block stands for: its raw text.
export function codeOf(button) {
  return button.closest(".code-block")?.querySelector("pre code")?.textContent ?? "";
}
