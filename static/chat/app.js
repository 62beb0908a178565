// The chat page: sending, streaming, stopping, retrying, regenerating and
// editing, copying, and the conversation list (search, pages, rename).
//
// A reply is shown as it streams whichever way it reaches the page: the POST
// that sent the message, or the conversation's stream after a dropped
// connection, a reload, or in another tab. Stop works from any of them.
//
// The log is a list of turns: a user message and the attempts at its reply
// (a regenerate adds one), of which one is shown at a time, the latest unless
// its pager says otherwise. Only the last turn can be regenerated or edited.

import {
  ApiError,
  deleteConversation,
  getConversation,
  listConversations,
  newKey,
  renameConversation,
  stopChat,
  streamChat,
  streamRegenerate,
} from "./api.js";
import { codeOf } from "./code.js";
import { renderMarkdown, StreamingMarkdown } from "./markdown.js";
import { followReply, whileOnline } from "./resume.js";

const ui = {
  app: document.getElementById("app"),
  sidebarToggle: document.getElementById("sidebar-toggle"),
  agent: document.getElementById("backend-agent"),
  offline: document.getElementById("backend-offline"),
  newChat: document.getElementById("new-chat"),
  list: document.getElementById("conversation-list"),
  listEmpty: document.getElementById("conversations-empty"),
  title: document.getElementById("conversation-title"),
  log: document.getElementById("messages"),
  emptyHint: document.getElementById("empty-hint"),
  notice: document.getElementById("notice"),
  form: document.getElementById("composer"),
  input: document.getElementById("composer-input"),
  send: document.getElementById("send"),
  stop: document.getElementById("stop"),
  editing: document.getElementById("editing"),
  editCancel: document.getElementById("edit-cancel"),
  announcer: document.getElementById("announcer"),
  search: document.getElementById("search"),
  searchInput: document.getElementById("conversation-search"),
  more: document.getElementById("conversations-more"),
  shortcuts: document.getElementById("shortcuts"),
  shortcutsOpen: document.getElementById("shortcuts-open"),
};

const STATUS_LABELS = {
  cancelled: "Stopped",
  interrupted: "Interrupted: the connection closed before the reply finished",
  failed: "Failed",
};

// How long a stop waits for the server's closing frame before cutting the stream.
const STOP_GRACE_MS = 1500;
// While the page is visible it looks this often for replies other tabs started.
const WATCH_MS = 5000;
const RECONNECTING = "Reconnecting…";

const state = {
  conversationId: null,
  // The reply this page shows as it streams (a LiveReply), if any.
  reply: null,
  loadToken: 0,
  // The open conversation's updated_at as the page shows it; null: take the next.
  seen: null,
  // Counts this page's own changes, so that a list fetched before one of them
  // is not taken for news from another tab.
  changes: 0,
  // The open conversation's turns, in order (Turn).
  turns: [],
  // The turn whose question the composer is editing, if any.
  editing: null,
};

// How many conversations the list asks for at a time.
const PAGE_SIZE = 50;
// How long the Copy button says "Copied".
const COPIED_MS = 2000;
const SEARCH_DELAY_MS = 250;

// --- small DOM helpers --------------------------------------------------------------

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showNotice(text) {
  ui.notice.textContent = text || "";
}

// Says `text` to screen readers (the polite status region), even twice in a row.
function announce(text) {
  ui.announcer.textContent = "";
  setTimeout(() => {
    ui.announcer.textContent = text;
  }, 50);
}

function button(className, text, label = null) {
  const node = element("button", `button button-small ${className}`, text);
  node.type = "button";
  if (label) node.setAttribute("aria-label", label);
  return node;
}

function isNearBottom() {
  const log = ui.log;
  return log.scrollHeight - log.scrollTop - log.clientHeight < 80;
}

function scrollToBottom() {
  ui.log.scrollTop = ui.log.scrollHeight;
}

// --- citations ------------------------------------------------------------------------

// Numbers each distinct source once; markers the agent put in the text (e.g.
// "【4:0†source】") become links to the numbered footnote.
class Citations {
  constructor(anchorPrefix) {
    this.anchorPrefix = anchorPrefix;
    this.sources = [];
    this.byKey = new Map();
    this.markers = new Map();
    this.section = element("section", "citations");
    this.section.setAttribute("aria-label", "Sources");
    this.section.append(element("h3", "citations-heading", "Sources"));
    this.listNode = element("ol", "citations-list");
    this.section.append(this.listNode);
    this.section.hidden = true;
  }

  add(annotation) {
    const url = annotation.url || annotation.url_citation?.url || "";
    const fileId = annotation.file_id || annotation.file_citation?.file_id || "";
    const title = annotation.title || annotation.url_citation?.title || annotation.filename || "";
    const key = url || fileId || title || annotation.text || String(this.sources.length);
    let number = this.byKey.get(key);
    if (number === undefined) {
      number = this.sources.length + 1;
      this.byKey.set(key, number);
      this.sources.push({ url, fileId, title, quote: annotation.quote || "" });
      this.listNode.append(this.item(number, this.sources[number - 1]));
      this.section.hidden = false;
    }
    if (annotation.text) this.markers.set(annotation.text, number);
  }

  item(number, source) {
    const item = element("li", "citation");
    item.id = `${this.anchorPrefix}-${number}`;
    const label = source.title || source.url || source.fileId || `Source ${number}`;
    if (/^https?:\/\//i.test(source.url)) {
      const link = element("a", "", label);
      link.href = source.url;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      item.append(link);
    } else {
      item.append(element("span", "citation-file", label));
    }
    if (source.quote) item.append(" ", element("q", "citation-quote", source.quote));
    return item;
  }

  // The reply text with its citation markers replaced by footnote links.
  transform(text) {
    let result = text;
    for (const [marker, number] of this.markers) {
      result = result.split(marker).join(`[[${number}]](#${this.anchorPrefix}-${number})`);
    }
    return result;
  }
}

// --- tools ----------------------------------------------------------------------------

// What the status line says while a tool runs, and the summary once it is done.
const TOOL_LABELS = {
  file_search: ["Searching files…", "Searched files"],
  code_interpreter: ["Running code…", "Ran code"],
  web_search: ["Searching the web…", "Searched the web"],
  bing_grounding: ["Searching the web…", "Searched the web"],
  bing_custom_search: ["Searching the web…", "Searched the web"],
  azure_ai_search: ["Searching the index…", "Searched the index"],
  sharepoint_grounding: ["Searching SharePoint…", "Searched SharePoint"],
};

function toolLabels(tool) {
  const labels = TOOL_LABELS[tool.kind];
  if (labels) return labels;
  const name = tool.name || tool.kind || "a tool";
  return [`Calling ${name}…`, `Called ${name}`];
}

// The tools the agent used for a reply: a quiet status line while one runs
// (announced politely), folded into a "details" once none does, with what a code
// interpreter ran and printed.
class ToolActivity {
  constructor() {
    this.node = element("div", "tools");
    this.status = element("p", "tools-status");
    this.status.setAttribute("role", "status");
    this.details = element("details", "tools-details");
    this.summary = element("summary", "tools-summary");
    this.list = element("ul", "tools-list");
    this.details.append(this.summary, this.list);
    this.details.hidden = true;
    this.node.append(this.status, this.details);
    this.node.hidden = true;
    this.calls = new Map();
  }

  update(tool) {
    let call = this.calls.get(tool.id);
    if (!call) {
      call = { tool, item: element("li", "tool") };
      this.calls.set(tool.id, call);
      this.list.append(call.item);
    }
    call.tool = tool;
    const [running, done] = toolLabels(tool);
    const label = tool.status === "failed" ? `${done} (failed)` : done;
    const text = tool.status === "in_progress" ? running : label;
    call.item.replaceChildren(element("span", "tool-label", text));
    call.item.dataset.status = tool.status;
    if (tool.input) call.item.append(codeBlock("Code", tool.input));
    if (tool.output) call.item.append(codeBlock("Output", tool.output));
    this.node.hidden = false;
    this.show();
  }

  show() {
    const running = [...this.calls.values()].filter((call) => call.tool.status === "in_progress");
    this.status.textContent = running.length ? toolLabels(running[running.length - 1].tool)[0] : "";
    this.node.classList.toggle("running", running.length > 0);
    const done = [...this.calls.values()].filter((call) => call.tool.status !== "in_progress");
    this.details.hidden = done.length === 0;
    const labels = [...new Set(done.map((call) => toolLabels(call.tool)[1]))];
    this.summary.textContent = labels.join(" · ");
  }

  // The reply ended: nothing runs any more, whatever the last frames said.
  settle() {
    this.status.textContent = "";
    this.node.classList.remove("running");
  }
}

// A file the agent made (a code interpreter's chart, say), served by this site:
// an image inline, any other file as a download link; each once.
function showFile(view, file) {
  if (typeof file.url !== "string" || !file.url.startsWith("/api/conversations/")) return;
  if (!view.files) {
    view.files = element("div", "message-files");
    view.body.after(view.files);
  }
  if (view.files.querySelector(`[data-file-id="${CSS.escape(file.file_id)}"]`)) return;
  const name = file.name || (file.kind === "image" ? "An image the agent made" : file.file_id);
  let node;
  if (file.kind === "image") {
    node = element("figure", "message-file");
    const image = element("img");
    image.src = file.url;
    image.alt = name;
    node.append(image);
  } else {
    node = element("a", "message-file", name);
    node.href = file.url;
    node.download = name;
  }
  node.dataset.fileId = file.file_id;
  view.files.append(node);
}

function codeBlock(label, text) {
  const figure = element("figure", "tool-code");
  figure.append(element("figcaption", "", label));
  const pre = element("pre");
  pre.append(element("code", "", text));
  figure.append(pre);
  return figure;
}

// --- messages -----------------------------------------------------------------------

let anchorCounter = 0;

class MessageView {
  constructor(role, { agent = "", after = null } = {}) {
    this.role = role;
    this.node = element("article", `message message-${role}`);
    const who = role === "user" ? "You" : agent || ui.agent.textContent.trim();
    this.header = element("h3", "message-role", who);
    this.body = element("div", role === "user" ? "message-body plain" : "message-body markdown");
    this.node.append(this.header, this.body);
    this.citations = new Citations(`cite-${Date.now().toString(36)}-${++anchorCounter}`);
    this.statusNode = null;
    this.errorNode = null;
    this.tools = null;
    this.turn = null;
    // The text as written (Markdown for a reply): what Copy copies.
    this.source = "";
    this.files = null;
    if (role === "assistant") this.node.append(this.citations.section);
    this.actions = this.makeActions();
    this.node.append(this.actions);
    ui.emptyHint.hidden = true;
    if (after) after.after(this.node);
    else ui.log.append(this.node);
  }

  // Copy, Regenerate and the attempts pager under a reply; Edit under a question.
  makeActions() {
    const actions = element("div", "message-actions");
    if (this.role === "user") {
      this.editButton = button("action-edit", "Edit", "Edit your last message");
      this.editButton.addEventListener("click", () => startEdit());
      this.editButton.hidden = true;
      actions.hidden = true;
      actions.append(this.editButton);
      return actions;
    }
    actions.setAttribute("aria-label", "Reply actions");
    actions.setAttribute("role", "group");
    const copy = button("copy-button action-copy", "Copy", "Copy reply");
    copy.addEventListener("click", () => copyFrom(copy, this.source, "Copy reply"));
    this.regenerateButton = button("action-regenerate", "Regenerate", "Regenerate reply");
    this.regenerateButton.addEventListener("click", () => regenerate());
    this.regenerateButton.hidden = true;
    this.pager = element("span", "attempts");
    this.pager.hidden = true;
    this.previous = button("attempt-previous", "‹", "Previous attempt");
    this.next = button("attempt-next", "›", "Next attempt");
    this.attemptLabel = element("span", "attempt-label");
    this.attemptLabel.setAttribute("aria-hidden", "true");
    this.attemptSpoken = element("span", "visually-hidden");
    this.previous.addEventListener("click", () => this.turn?.step(this, -1));
    this.next.addEventListener("click", () => this.turn?.step(this, 1));
    this.pager.append(this.previous, this.attemptLabel, this.attemptSpoken, this.next);
    actions.append(copy, this.regenerateButton, this.pager);
    return actions;
  }

  // Puts a status or error line above the actions.
  place(node) {
    this.node.insertBefore(node, this.actions);
  }

  showTool(tool) {
    if (!this.tools) {
      this.tools = new ToolActivity();
      this.node.insertBefore(this.tools.node, this.body);
    }
    this.tools.update(tool);
  }

  setText(text) {
    this.source = text;
    this.body.textContent = text;
  }

  setMarkdown(text) {
    this.source = text;
    this.body.replaceChildren(renderMarkdown(this.citations.transform(text)));
  }

  startStreaming() {
    // Screen readers announce the reply once it is complete, not every frame.
    ui.log.setAttribute("aria-busy", "true");
    this.node.setAttribute("aria-busy", "true");
    this.node.classList.add("streaming");
    this.renderer = new StreamingMarkdown(this.body, {
      transform: (text) => this.citations.transform(text),
      onRender: () => {
        if (this.stick) scrollToBottom();
      },
    });
  }

  append(text) {
    this.stick = isNearBottom();
    this.renderer.append(text);
  }

  // The reply is shown again from its start (the server replays it whole).
  restart() {
    this.renderer?.finish();
    for (const note of this.node.querySelectorAll(".message-note")) note.remove();
    const citations = new Citations(this.citations.anchorPrefix);
    this.citations.section.replaceWith(citations.section);
    this.citations = citations;
    this.tools?.node.remove();
    this.tools = null;
    this.files?.remove();
    this.files = null;
    this.startStreaming();
  }

  endStreaming(fullText = null) {
    if (this.renderer && !this.renderer.finished) this.renderer.finish(fullText);
    if (this.renderer) this.source = this.renderer.text;
    this.tools?.settle();
    ui.log.removeAttribute("aria-busy");
    this.node.removeAttribute("aria-busy");
    this.node.classList.remove("streaming");
    // Its actions show now: keep the end of the log in view, if it was.
    if (this.stick) scrollToBottom();
  }

  setStatus(status) {
    const label = STATUS_LABELS[status];
    if (!label) return;
    this.node.classList.add(`status-${status}`);
    this.node.dataset.status = status;
    if (!this.statusNode) {
      this.statusNode = element("p", "message-status");
      this.place(this.statusNode);
    }
    this.statusNode.textContent = label;
  }

  addNote(text) {
    this.node.insertBefore(element("p", "message-note", text), this.body);
  }

  // An error with an optional Retry action; rate limits count down to it.
  showError(message, { retry = null, retryAfter = null } = {}) {
    this.node.classList.add("status-failed");
    this.node.dataset.status = "failed";
    this.errorNode?.remove();
    const box = element("div", "message-error");
    box.append(element("p", "message-error-text", message));
    if (retry) {
      const hint = element("p", "message-error-hint");
      const button = element("button", "button retry", "Retry");
      button.type = "button";
      button.addEventListener("click", () => {
        clearInterval(timer);
        retry();
      });
      let timer = 0;
      if (retryAfter && retryAfter > 0) {
        let left = Math.ceil(retryAfter);
        button.disabled = true;
        const tick = () => {
          if (left <= 0) {
            clearInterval(timer);
            hint.textContent = "You can retry now.";
            button.disabled = false;
            return;
          }
          hint.textContent = `Try again in ${left} s.`;
          left -= 1;
        };
        tick();
        timer = setInterval(tick, 1000);
      }
      box.append(hint, button);
    }
    this.errorNode = box;
    this.place(box);
    return box;
  }
}

// A user message and the attempts at its reply, one of them shown.
class Turn {
  constructor(question, questionId = null) {
    this.question = question; // a MessageView, or null for a reply without one
    this.questionId = questionId;
    this.attempts = [];
    this.shown = -1;
    if (question) question.turn = this;
  }

  // The node a new attempt goes after.
  get end() {
    return this.attempts.at(-1)?.node || this.question?.node || null;
  }

  add(view, { show = true } = {}) {
    view.turn = this;
    this.attempts.push(view);
    if (show) this.show(this.attempts.length - 1);
  }

  drop(view) {
    const index = this.attempts.indexOf(view);
    if (index === -1) return;
    this.attempts.splice(index, 1);
    view.turn = null;
    if (this.attempts.length) this.show(this.attempts.length - 1);
  }

  setQuestionId(id) {
    this.questionId = id;
    if (this.question) this.question.node.dataset.messageId = id;
    updateTurns();
  }

  show(index) {
    this.shown = index;
    const count = this.attempts.length;
    this.attempts.forEach((view, i) => {
      view.node.hidden = i !== index;
      view.pager.hidden = count < 2;
      view.attemptLabel.textContent = `${i + 1} / ${count}`;
      view.attemptSpoken.textContent = `Attempt ${i + 1} of ${count}`;
      view.previous.disabled = i === 0;
      view.next.disabled = i === count - 1;
    });
  }

  // Shows the attempt before or after `view`'s, keeping the focus in the pager.
  step(view, by) {
    const index = this.attempts.indexOf(view) + by;
    if (index < 0 || index >= this.attempts.length) return;
    this.show(index);
    const shown = this.attempts[index];
    const same = by < 0 ? shown.previous : shown.next;
    (same.disabled ? (by < 0 ? shown.next : shown.previous) : same).focus();
  }

  remove() {
    this.question?.node.remove();
    for (const view of this.attempts) view.node.remove();
  }
}

function lastTurn() {
  return state.turns.at(-1) || null;
}

// Only the last turn offers Edit and Regenerate.
function updateTurns() {
  state.turns.forEach((turn, i) => {
    const last = i === state.turns.length - 1;
    if (turn.question) {
      const hide = !last || !turn.questionId;
      turn.question.editButton.hidden = hide;
      turn.question.actions.hidden = hide;
    }
    for (const view of turn.attempts) view.regenerateButton.hidden = !last || !state.conversationId;
  });
}

// A reply shown as it streams. Its frames may come over several connections
// (the POST, then the conversation's stream after each drop); handle() shows
// each frame once, by its id, and lastId is where the next connection resumes.
class LiveReply {
  constructor(message, { conversationId = null, retry = null } = {}) {
    this.message = message;
    this.conversationId = conversationId;
    this.retry = retry; // what Retry does after an error frame
    this.reconnect = null; // ... and after a connection lost before the reply began
    this.retryRefused = null; // ... and after the server refused the request, if not retry
    this.refused = null; // when the server says the conversation moved on (409)
    this.controller = new AbortController();
    this.lastId = -1;
    this.messageId = null;
    this.finished = false; // its final frame was handled
    this.stopping = false;
    this.detached = false;
    this.abandoned = ""; // "shown": the page already shows it; "other": not the reply it followed
    this.ended = false;
    this.onMetadata = null;
    this.handle = this.handle.bind(this);
  }

  get signal() {
    return this.controller.signal;
  }

  // Stops showing the reply; the server goes on with it.
  abandon(reason) {
    this.abandoned = reason;
    this.controller.abort();
  }

  handle(event, id) {
    if (this.signal.aborted) return;
    const position = id ? Number(id) : Number.NaN;
    if (event.message_id && this.messageId && event.message_id !== this.messageId) {
      // The conversation moved on to another reply while this one was followed.
      this.abandon("other");
      return;
    }
    if (event.type === "metadata" && position <= this.lastId) {
      // A replay from the start: the server no longer had what followed lastId.
      this.message.restart();
      this.lastId = -1;
    }
    if (Number.isFinite(position)) {
      if (position <= this.lastId) return;
      this.lastId = position;
    }
    const message = this.message;
    switch (event.type) {
      case "metadata":
        if (event.message_id) {
          this.messageId = event.message_id;
          if (shownElsewhere(event.message_id, message.node)) {
            this.abandon("shown");
            return;
          }
          message.node.dataset.messageId = event.message_id;
        }
        if (event.agent) {
          ui.agent.textContent = event.agent;
          message.header.textContent = event.agent;
        }
        if (typeof event.offline === "boolean") ui.offline.hidden = !event.offline;
        if (event.notice) message.addNote(event.notice);
        if (event.reply_to && message.turn && !message.turn.questionId) {
          message.turn.setQuestionId(event.reply_to);
        }
        this.onMetadata?.(event);
        break;
      case "chunk":
        message.append(event.content);
        break;
      case "annotation":
        message.citations.add(event);
        break;
      case "tool":
        message.showTool(event);
        break;
      case "file":
        showFile(message, event);
        break;
      case "done":
        this.finished = true;
        message.endStreaming(event.full_response ?? null);
        message.setStatus(event.status || "complete");
        break;
      case "error":
        this.finished = true;
        message.endStreaming();
        if (event.code === "interrupted") {
          message.setStatus("interrupted");
        } else {
          message.showError(event.message || "The agent failed to reply.", {
            retry: this.retry,
            retryAfter: event.retry_after ?? null,
          });
        }
        break;
      default:
      // Newer event types are ignored.
    }
  }

  setReconnecting(reconnecting) {
    this.message.node.classList.toggle("reconnecting", reconnecting);
    if (reconnecting) showNotice(RECONNECTING);
    else if (ui.notice.textContent === RECONNECTING) showNotice("");
  }
}

// Whether the page already shows this reply as stored, in a node other than `node`.
function shownElsewhere(messageId, node) {
  const shown = ui.log.querySelector(`[data-message-id="${CSS.escape(messageId)}"]`);
  return shown !== null && shown !== node;
}

function renderStoredMessage(message) {
  const view = new MessageView(message.role);
  view.node.dataset.messageId = message.id;
  if (message.role === "user") {
    view.setText(message.content);
    return view;
  }
  if (message.reply_to) view.node.dataset.replyTo = message.reply_to;
  for (const tool of message.tools || []) view.showTool(tool);
  view.tools?.settle();
  for (const annotation of message.annotations || []) view.citations.add(annotation);
  view.setMarkdown(message.content);
  for (const file of message.files || []) showFile(view, file);
  if (message.status === "failed") {
    view.showError(message.error_message || "The reply failed.");
  } else {
    view.setStatus(message.status);
  }
  return view;
}

// --- the conversation list ----------------------------------------------------------

// What the list shows: the first pages loaded so far (newest first), the URL of
// the next one, the search it is for, and the conversation being renamed.
const list = { items: [], next: null, query: "", key: "", renaming: null, searchTimer: 0 };

// Newer first: by updated_at, then id, as the server pages them.
function isOlder(a, b) {
  return a.updated_at < b.updated_at || (a.updated_at === b.updated_at && a.id < b.id);
}

// Fetches the list's first page and redraws it when it changed; `quiet` for
// the periodic look, which says nothing when it fails. Older pages already
// shown stay, but for those the first page now holds.
async function refreshConversations({ quiet = false } = {}) {
  const changes = state.changes;
  const query = list.query;
  let page;
  try {
    page = await listConversations({ query, limit: PAGE_SIZE });
  } catch (error) {
    if (!quiet) showNotice(`Could not load your conversations: ${error.message}`);
    return;
  }
  if (query !== list.query) return; // the search changed meanwhile
  const first = page.results;
  if (list.items.length <= first.length || first.length === 0) {
    list.items = first;
    list.next = page.next;
  } else {
    const ids = new Set(first.map((c) => c.id));
    const last = first.at(-1);
    const older = list.items.filter((c) => !ids.has(c.id) && isOlder(c, last));
    list.items = [...first, ...older];
  }
  // A new conversation's reply streams while the conversation is being stored:
  // until the list has it, it is listed first.
  const pending = state.reply;
  if (
    !query &&
    pending?.newTitle !== undefined &&
    !list.items.some((c) => c.id === pending.conversationId)
  ) {
    list.items = [{ id: pending.conversationId, title: pending.newTitle }, ...list.items];
  }
  showConversations();
  if (changes === state.changes) catchUp(list.items);
}

async function loadOlder() {
  if (!list.next) return;
  const query = list.query;
  let page;
  try {
    page = await listConversations({ url: list.next });
  } catch (error) {
    showNotice(`Could not load more conversations: ${error.message}`);
    return;
  }
  if (query !== list.query) return;
  const ids = new Set(list.items.map((c) => c.id));
  const first = ui.list.children.length;
  list.items = [...list.items, ...page.results.filter((c) => !ids.has(c.id))];
  list.next = page.next;
  showConversations();
  // Keyboard users carry on from the first conversation that was added.
  const added = ui.list.children[first]?.querySelector(".conversation-open");
  if (added) added.focus();
  else ui.searchInput.focus();
}

function showConversations() {
  // Redrawing an unchanged list would move the focus off a button in it, and a
  // redraw would end a rename in progress.
  const key = JSON.stringify([list.query, list.next, list.items.map((c) => [c.id, c.title])]);
  if (key === list.key || list.renaming) return;
  list.key = key;
  const focused = ui.list.contains(document.activeElement) ? document.activeElement : null;
  const refocus = focused && {
    id: focused.closest(".conversation").dataset.conversationId,
    button: focused.classList[0],
  };
  const items = list.items.map((conversation) => conversationItem(conversation));
  ui.list.replaceChildren(...items);
  ui.listEmpty.hidden = items.length > 0;
  ui.listEmpty.textContent = list.query
    ? `No conversation matches “${list.query}”.`
    : "No conversations yet.";
  ui.more.hidden = !list.next;
  const current = list.items.find((c) => c.id === state.conversationId);
  if (current?.title && current.title !== ui.title.textContent) ui.title.textContent = current.title;
  if (refocus) {
    const item = ui.list.querySelector(`[data-conversation-id="${refocus.id}"]`);
    item?.querySelector(`.${refocus.button}`)?.focus();
  }
}

function conversationItem(conversation) {
  const title = conversation.title || "Untitled conversation";
  const item = element("li", "conversation");
  item.dataset.conversationId = conversation.id;
  const open = element("button", "conversation-open", title);
  open.type = "button";
  open.title = title;
  if (conversation.id === state.conversationId) open.setAttribute("aria-current", "page");
  open.addEventListener("click", () => {
    closeSidebar();
    openConversation(conversation.id);
  });
  const rename = element("button", "conversation-rename", "✎");
  rename.type = "button";
  rename.setAttribute("aria-label", `Rename conversation: ${title}`);
  rename.title = "Rename";
  rename.addEventListener("click", () => startRename(item, conversation));
  const remove = element("button", "conversation-delete", "×");
  remove.type = "button";
  remove.setAttribute("aria-label", `Delete conversation: ${title}`);
  remove.title = "Delete";
  remove.addEventListener("click", () => removeConversation(conversation.id, title));
  item.append(open, rename, remove);
  return item;
}

// The title becomes a text field: Enter (or leaving it) saves, Esc cancels.
function startRename(item, conversation) {
  if (list.renaming) return;
  list.renaming = conversation.id;
  const open = item.querySelector(".conversation-open");
  const input = element("input", "conversation-title-input");
  input.type = "text";
  input.value = conversation.title;
  input.maxLength = 200;
  input.setAttribute("aria-label", "Conversation title");
  open.replaceWith(input);
  input.focus();
  input.select();
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (save && !title) {
      showNotice("A conversation needs a title; the old one stays.");
    } else if (save && title !== conversation.title) {
      try {
        const renamed = await renameConversation(conversation.id, title);
        conversation.title = renamed.title;
        if (conversation.id === state.conversationId) ui.title.textContent = renamed.title;
        announce(`Renamed to ${renamed.title}`);
      } catch (error) {
        showNotice(`Could not rename the conversation: ${error.message}`);
      }
    }
    list.renaming = null;
    list.key = "";
    showConversations();
    const again = ui.list.querySelector(`[data-conversation-id="${conversation.id}"]`);
    again?.querySelector(".conversation-rename")?.focus();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.isComposing) {
      event.preventDefault();
      finish(true);
    } else if (event.key === "Escape") {
      event.preventDefault();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
}

function search(now = false) {
  clearTimeout(list.searchTimer);
  const run = () => {
    const query = ui.searchInput.value.trim();
    if (query === list.query) return;
    list.query = query;
    list.items = [];
    list.next = null;
    refreshConversations();
  };
  if (now) run();
  else list.searchTimer = setTimeout(run, SEARCH_DELAY_MS);
}

// The open conversation changed in another tab: a reply is being written in it,
// or one was written since the page showed it. Show it as it is now.
function catchUp(conversations) {
  if (state.reply || !state.conversationId) return;
  const current = conversations.find((c) => c.id === state.conversationId);
  if (!current) return;
  if (state.seen === null && !current.streaming) {
    state.seen = current.updated_at;
    return;
  }
  if (current.streaming || current.updated_at !== state.seen) {
    openConversation(current.id, { focus: false });
  }
}

function watchConversations() {
  if (document.visibilityState === "visible" && navigator.onLine !== false) {
    refreshConversations({ quiet: true });
  }
}

function markCurrentInList() {
  for (const button of ui.list.querySelectorAll(".conversation-open")) {
    const current = button.parentElement.dataset.conversationId === state.conversationId;
    if (current) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
}

async function removeConversation(conversationId, title) {
  if (state.reply && conversationId === state.conversationId) await stopReply();
  try {
    await deleteConversation(conversationId);
  } catch (error) {
    showNotice(`Could not delete “${title}”: ${error.message}`);
    return;
  }
  showNotice(`Deleted “${title}”.`);
  if (conversationId === state.conversationId) startNewConversation({ focus: false });
  list.items = list.items.filter((c) => c.id !== conversationId);
  await refreshConversations();
  ui.newChat.focus();
}

// --- opening and starting conversations ---------------------------------------------

function setConversation(conversationId, title) {
  state.conversationId = conversationId;
  const hash = conversationId ? `#${conversationId}` : "";
  if (location.hash !== hash) {
    history.replaceState(null, "", `${location.pathname}${location.search}${hash}`);
  }
  ui.title.textContent = title || "New conversation";
  markCurrentInList();
  updateTurns();
}

function clearLog() {
  ui.log.replaceChildren(ui.emptyHint);
  ui.emptyHint.hidden = false;
  state.turns = [];
  cancelEdit({ focus: false });
}

// The stored messages as turns: each reply among the attempts at its question.
function showMessages(messages) {
  let turn = null;
  for (const message of messages) {
    const view = renderStoredMessage(message);
    if (message.role === "user") {
      turn = new Turn(view, message.id);
      state.turns.push(turn);
    } else {
      if (!turn || (message.reply_to && message.reply_to !== turn.questionId)) {
        turn = new Turn(null);
        state.turns.push(turn);
      }
      turn.add(view, { show: false });
    }
  }
  for (const each of state.turns) if (each.attempts.length) each.show(each.attempts.length - 1);
  updateTurns();
}

function startNewConversation({ focus = true } = {}) {
  state.loadToken += 1;
  state.changes += 1;
  state.seen = null;
  clearLog();
  setConversation(null);
  showNotice("");
  if (focus) ui.input.focus();
}

async function openConversation(conversationId, { focus = true } = {}) {
  if (state.reply) await detachReply();
  const token = ++state.loadToken;
  state.changes += 1;
  let conversation;
  try {
    conversation = await getConversation(conversationId);
  } catch (error) {
    if (token !== state.loadToken) return;
    if (error instanceof ApiError && error.status === 404) {
      startNewConversation({ focus });
      showNotice("That conversation no longer exists.");
      return;
    }
    showNotice(`Could not open the conversation: ${error.message}`);
    return;
  }
  if (token !== state.loadToken || state.reply) return;
  clearLog();
  setConversation(conversation.id, conversation.title);
  state.seen = conversation.updated_at;
  showNotice("");
  showMessages(conversation.messages);
  // A reply still being written (in another tab, or by the request a reload
  // cut off) is not stored yet: follow it from its start.
  if (conversation.streaming) follow(conversation.id);
  scrollToBottom();
  if (focus) ui.input.focus();
}

// --- sending, following, stopping ---------------------------------------------------

function setStreaming(streaming) {
  ui.send.hidden = streaming;
  ui.stop.hidden = !streaming;
  ui.stop.disabled = false;
  ui.app.classList.toggle("is-streaming", streaming);
}

function describeError(error) {
  if (!(error instanceof ApiError)) return "The connection to the server was lost.";
  if (error.code === "csrf") return "Your session has expired. Reload the page and try again.";
  if (error.code === "login_required") return "You are signed out. Reload the page to sign in again.";
  if (error.status === 404) return `${error.message}. Retry starts a new conversation.`;
  return error.message;
}

function send(text, { echo = true, key = newKey() } = {}) {
  if (state.reply) return;
  let turn = lastTurn();
  if (echo || !turn) {
    const question = new MessageView("user");
    question.setText(text);
    turn = new Turn(question);
    state.turns.push(turn);
  }
  const body = { message: text, thread_id: null, conversation_id: state.conversationId };
  const connect = (signal, onEvent) => streamChat(body, { signal, key, onEvent });
  // After a failed reply, Retry asks for a new one. After a connection lost
  // before the reply began, it sends the same key: the server may be writing
  // the reply already, and then answers with it instead of starting another.
  ask(turn, connect, {
    key,
    title: text,
    again: (sameKey) => send(text, { echo: false, key: sameKey }),
  });
}

// Another reply to the last message, shown as its latest attempt.
function regenerate({ key = newKey() } = {}) {
  const turn = lastTurn();
  if (state.reply || !state.conversationId || !turn) return;
  cancelEdit({ focus: false });
  const conversationId = state.conversationId;
  const connect = (signal, onEvent) => streamRegenerate(conversationId, { signal, key, onEvent });
  ask(turn, connect, { key, again: (sameKey) => regenerate({ key: sameKey }) });
}

// The composer takes the last message to edit; sending replaces it.
function startEdit() {
  const turn = lastTurn();
  if (state.reply || !turn?.question || !turn.questionId) return false;
  state.editing = turn;
  ui.editing.hidden = false;
  ui.app.classList.add("is-editing");
  ui.input.value = turn.question.source;
  ui.input.focus();
  ui.input.setSelectionRange(ui.input.value.length, ui.input.value.length);
  return true;
}

function cancelEdit({ focus = true } = {}) {
  if (!state.editing) return;
  state.editing = null;
  ui.editing.hidden = true;
  ui.app.classList.remove("is-editing");
  ui.input.value = "";
  if (focus) ui.input.focus();
}

// Sends `text` in place of the turn's message: the turn goes, a new one comes.
function sendEdit(turn, text) {
  if (state.reply) return;
  turn.remove();
  state.turns = state.turns.filter((each) => each !== turn);
  editAs(turn.questionId, text, newKey());
}

function editAs(edited, text, key, replacing = null) {
  if (replacing) {
    replacing.remove();
    state.turns = state.turns.filter((each) => each !== replacing);
  }
  const question = new MessageView("user");
  question.setText(text);
  const turn = new Turn(question);
  state.turns.push(turn);
  const body = { message: text, conversation_id: state.conversationId, edit: edited };
  const connect = (signal, onEvent) => streamChat(body, { signal, key, onEvent });
  ask(turn, connect, {
    key,
    // Lost before the reply began: the same request again. Once the reply
    // began the edit is stored, and Retry is another attempt at its reply;
    // refused before it began, the edit is sent again.
    again: (sameKey) => (sameKey ? editAs(edited, text, sameKey, turn) : regenerate()),
    againRefused: () => editAs(edited, text, newKey(), turn),
    refused: async () => {
      await openConversation(state.conversationId);
      showNotice("The edit was not sent: the conversation has changed since. Here it is now.");
    },
  });
}

// Streams the reply `connect(signal, onEvent)` asks for (with `key`) into a new
// attempt of `turn`. `again(key)` is what Retry does: with the same key after a
// connection lost before the reply began, with none after a failed reply;
// `againRefused()` after the server refused the request, when that differs.
// `refused()` runs on 409 not_last_message (the conversation moved on).
function ask(
  turn,
  connect,
  { key = newKey(), title = "", again, againRefused = null, refused = null },
) {
  state.loadToken += 1; // a conversation still loading must not replace this
  const message = new MessageView("assistant", { after: turn.end });
  turn.add(message);
  updateTurns();
  const resend = (sameKey) => () => {
    turn.drop(message);
    message.node.remove();
    again(sameKey);
  };
  const reply = new LiveReply(message, {
    conversationId: state.conversationId,
    retry: resend(undefined),
  });
  reply.reconnect = resend(key);
  if (againRefused) {
    reply.retryRefused = () => {
      turn.drop(message);
      message.node.remove();
      againRefused();
    };
  }
  reply.refused = refused;
  reply.onMetadata = (event) => {
    const id = event.conversation_id;
    if (id && id !== reply.conversationId) {
      reply.conversationId = id;
      reply.newTitle = title.trim().slice(0, 80);
      if (id !== state.conversationId) setConversation(id, reply.newTitle);
      refreshConversations();
    }
  };
  showReply(reply, (signal) => connect(signal, reply.handle));
}

// Shows the reply being written in the conversation, from its start: the next
// attempt at the last turn's reply (the first, or one a regenerate started).
function follow(conversationId) {
  const turn = lastTurn();
  const message = new MessageView("assistant", { after: turn?.end || null });
  turn?.add(message);
  const reply = new LiveReply(message, { conversationId });
  showReply(reply, null);
}

// Shows `reply` to its final frame. connect(signal) is the connection that
// started it (the POST that sent the message); without one, or once one drops
// after the reply began, the reply is read from the conversation's stream.
async function showReply(reply, connect) {
  const message = reply.message;
  state.reply = reply;
  state.changes += 1;
  message.startStreaming();
  setStreaming(true);
  scrollToBottom();
  let resumed = !connect;
  try {
    if (connect) {
      try {
        await whileOnline(reply.signal, connect);
      } catch (error) {
        // Before the reply began (no metadata yet) there is nothing to resume.
        if (reply.signal.aborted || !reply.messageId || error instanceof ApiError) throw error;
      }
    }
    if (!reply.finished && reply.messageId === null && !resumed) {
      message.endStreaming();
      message.showError("The reply ended before it was complete.", { retry: reply.reconnect });
      return;
    }
    if (!reply.finished) {
      resumed = true;
      await followReply(reply.conversationId, reply, {
        signal: reply.signal,
        onRetry: () => reply.setReconnecting(true),
        onOpen: () => reply.setReconnecting(false),
      });
    }
  } catch (error) {
    message.endStreaming();
    if (reply.abandoned) {
      message.turn?.drop(message);
      message.node.remove();
    } else if (reply.signal.aborted) {
      if (reply.stopping && !reply.finished) message.setStatus("cancelled");
    } else if (resumed) {
      const gone = error instanceof ApiError && error.status === 404;
      const text = gone ? "The conversation no longer exists." : describeError(error);
      const conversationId = reply.conversationId;
      message.showError(text, { retry: gone ? null : () => openConversation(conversationId) });
    } else {
      if (error instanceof ApiError && error.status === 404) setConversation(null);
      if (error instanceof ApiError && error.code === "not_last_message" && reply.refused) {
        message.showError(error.message);
        reply.refused();
      } else if (error instanceof ApiError && error.status === 400 && error.fields?.message) {
        message.showError(error.message); // retrying the same text cannot help
      } else {
        message.showError(describeError(error), {
          retry: error instanceof ApiError ? reply.retryRefused || reply.retry : reply.reconnect,
          retryAfter: error.retryAfter ?? null,
        });
      }
    }
  } finally {
    reply.ended = true;
    reply.setReconnecting(false);
    if (state.reply === reply) {
      state.reply = null;
      state.changes += 1;
      state.seen = null;
      setStreaming(false);
      updateTurns();
    }
    if (!reply.detached) {
      if (document.activeElement === document.body || document.activeElement === ui.stop) {
        ui.input.focus();
      }
      if (reply.abandoned === "other") openConversation(reply.conversationId, { focus: false });
      else refreshConversations();
    }
  }
}

// Asks the server to stop (so the upstream run is cancelled and the partial reply
// stored as "cancelled"), gives the stream a moment to end with its final frame,
// then aborts the fetch; the partial reply stays on the page.
async function stopReply() {
  const reply = state.reply;
  if (!reply || reply.stopping) return;
  reply.stopping = true;
  ui.stop.disabled = true;
  ui.input.focus();
  if (reply.conversationId) {
    try {
      await stopChat(reply.conversationId);
    } catch {
      // 409: it finished meanwhile. Anything else: the abort below still stops it.
    }
    const deadline = Date.now() + STOP_GRACE_MS;
    while (!reply.ended && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  if (!reply.ended) reply.controller.abort();
  await ended(reply);
}

// Stops showing the reply (to show another conversation); it goes on on the
// server, and opening its conversation again follows it.
async function detachReply() {
  const reply = state.reply;
  if (!reply) return;
  reply.detached = true;
  reply.controller.abort();
  await ended(reply);
}

async function ended(reply) {
  while (!reply.ended) await new Promise((resolve) => setTimeout(resolve, 10));
}

// --- sidebar on narrow screens ------------------------------------------------------

function closeSidebar() {
  ui.app.classList.remove("sidebar-open");
  ui.sidebarToggle.setAttribute("aria-expanded", "false");
}

ui.sidebarToggle.addEventListener("click", () => {
  const open = !ui.app.classList.contains("sidebar-open");
  ui.app.classList.toggle("sidebar-open", open);
  ui.sidebarToggle.setAttribute("aria-expanded", String(open));
  if (open) ui.newChat.focus();
});

// --- copying ------------------------------------------------------------------------

// Copies `text`: the Clipboard API, else the older way through a selection.
async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const focused = document.activeElement;
    const area = element("textarea", "clipboard-helper");
    area.value = text;
    area.setAttribute("readonly", "");
    area.setAttribute("aria-hidden", "true");
    document.body.append(area);
    area.select();
    let copied = false;
    try {
      copied = document.execCommand("copy");
    } catch {
      copied = false;
    }
    area.remove();
    focused?.focus();
    return copied;
  }
}

// Copies, then says so on the button for a moment, and to screen readers.
async function copyFrom(target, text, label) {
  const copied = await copyText(text);
  const said = copied ? "Copied" : "Copy failed";
  target.textContent = said;
  target.setAttribute("aria-label", said);
  target.classList.toggle("copied", copied);
  announce(copied ? "Copied to the clipboard" : "Could not copy to the clipboard");
  clearTimeout(target.copiedTimer);
  target.copiedTimer = setTimeout(() => {
    target.textContent = "Copy";
    target.setAttribute("aria-label", label);
    target.classList.remove("copied");
  }, COPIED_MS);
}

// Code blocks get their Copy buttons as they are finished (code.js), also
// while the reply streams: one listener serves them all.
ui.log.addEventListener("click", (event) => {
  const target = event.target.closest?.(".copy-code");
  if (target) copyFrom(target, codeOf(target), target.dataset.label);
});

// --- keyboard shortcuts -------------------------------------------------------------

let beforeShortcuts = null;

function openShortcuts() {
  if (ui.shortcuts.open) return;
  beforeShortcuts = document.activeElement;
  ui.shortcuts.showModal();
}

// "close" comes as a task of its own, after the browser has given the focus back
// to what had it: focus moved since (by a click, by a script) stays where it is.
ui.shortcuts.addEventListener("close", () => {
  const active = document.activeElement;
  if (active && active !== document.body && !ui.shortcuts.contains(active)) return;
  (beforeShortcuts && document.contains(beforeShortcuts) ? beforeShortcuts : ui.input).focus();
});

ui.shortcutsOpen.addEventListener("click", openShortcuts);

function inTextField(target) {
  return target instanceof HTMLElement && (target.isContentEditable || target.matches("input, textarea, select"));
}

// --- wiring -------------------------------------------------------------------------

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.input.value;
  if (!text.trim() || state.reply) return;
  const editing = state.editing;
  ui.input.value = "";
  ui.input.focus();
  if (editing) {
    cancelEdit({ focus: false });
    sendEdit(editing, text);
  } else {
    send(text);
  }
});

ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.form.requestSubmit();
  } else if (
    event.key === "ArrowUp" &&
    !ui.input.value &&
    !(event.shiftKey || event.altKey || event.ctrlKey || event.metaKey || event.isComposing)
  ) {
    if (startEdit()) event.preventDefault();
  }
});

ui.editCancel.addEventListener("click", () => cancelEdit());

ui.stop.addEventListener("click", () => stopReply());

// Esc stops the reply being written (else cancels an edit); ? lists the
// shortcuts. A dialog, and the rename field, handle their own Esc.
document.addEventListener("keydown", (event) => {
  if (event.defaultPrevented || ui.shortcuts.open) return;
  if (event.key === "Escape") {
    if (state.reply) stopReply();
    else if (state.editing) cancelEdit();
  } else if (event.key === "?" && !inTextField(event.target) && !event.ctrlKey && !event.metaKey) {
    event.preventDefault();
    openShortcuts();
  }
});

ui.search.addEventListener("submit", (event) => {
  event.preventDefault();
  search(true);
});
ui.searchInput.addEventListener("input", () => search());

ui.more.addEventListener("click", () => loadOlder());

ui.newChat.addEventListener("click", async () => {
  if (state.reply) await detachReply();
  closeSidebar();
  startNewConversation();
});

window.addEventListener("hashchange", () => {
  const id = location.hash.slice(1);
  if (id && id !== state.conversationId) openConversation(id);
  else if (!id && state.conversationId) startNewConversation();
});

document.addEventListener("visibilitychange", watchConversations);
setInterval(watchConversations, WATCH_MS);

const initial = location.hash.slice(1);
if (initial) openConversation(initial);
else ui.input.focus();
refreshConversations();
document.documentElement.classList.add("js-ready");
