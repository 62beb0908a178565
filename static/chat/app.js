// The chat page: sending, streaming, stopping, retrying, and the conversation list.
//
// A reply is shown as it streams whichever way it reaches the page: the POST
// that sent the message, or the conversation's stream after a dropped
// connection, a reload, or in another tab. Stop works from any of them.

import {
  ApiError,
  deleteConversation,
  getConversation,
  listConversations,
  newKey,
  stopChat,
  streamChat,
} from "./api.js";
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
};

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
  constructor(role, { agent = "" } = {}) {
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
    this.files = null;
    if (role === "assistant") this.node.append(this.citations.section);
    ui.emptyHint.hidden = true;
    ui.log.append(this.node);
  }

  showTool(tool) {
    if (!this.tools) {
      this.tools = new ToolActivity();
      this.node.insertBefore(this.tools.node, this.body);
    }
    this.tools.update(tool);
  }

  setText(text) {
    this.body.textContent = text;
  }

  setMarkdown(text) {
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
    this.tools?.settle();
    ui.log.removeAttribute("aria-busy");
    this.node.removeAttribute("aria-busy");
    this.node.classList.remove("streaming");
  }

  setStatus(status) {
    const label = STATUS_LABELS[status];
    if (!label) return;
    this.node.classList.add(`status-${status}`);
    this.node.dataset.status = status;
    if (!this.statusNode) {
      this.statusNode = element("p", "message-status");
      this.node.append(this.statusNode);
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
    this.node.append(box);
    return box;
  }
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

let listKey = "";

// Fetches the list and redraws it when it changed; `quiet` for the periodic
// look, which says nothing when it fails.
async function refreshConversations({ quiet = false } = {}) {
  const changes = state.changes;
  let conversations;
  try {
    conversations = await listConversations();
  } catch (error) {
    if (!quiet) showNotice(`Could not load your conversations: ${error.message}`);
    return;
  }
  showConversations(conversations);
  if (changes === state.changes) catchUp(conversations);
}

function showConversations(conversations) {
  // Redrawing an unchanged list would move the focus off a button in it.
  const key = JSON.stringify(conversations.map((c) => [c.id, c.title]));
  if (key === listKey) return;
  listKey = key;
  const focused = ui.list.contains(document.activeElement) ? document.activeElement : null;
  const refocus = focused && {
    id: focused.closest(".conversation").dataset.conversationId,
    button: focused.classList[0],
  };
  const items = conversations.map((conversation) => {
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
    const remove = element("button", "conversation-delete", "×");
    remove.type = "button";
    remove.setAttribute("aria-label", `Delete conversation: ${title}`);
    remove.title = "Delete";
    remove.addEventListener("click", () => removeConversation(conversation.id, title));
    item.append(open, remove);
    return item;
  });
  ui.list.replaceChildren(...items);
  ui.listEmpty.hidden = items.length > 0;
  if (refocus) {
    const item = ui.list.querySelector(`[data-conversation-id="${refocus.id}"]`);
    item?.querySelector(`.${refocus.button}`)?.focus();
  }
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
}

function clearLog() {
  ui.log.replaceChildren(ui.emptyHint);
  ui.emptyHint.hidden = false;
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
  for (const message of conversation.messages) renderStoredMessage(message);
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
  if (echo) new MessageView("user").setText(text);
  state.loadToken += 1; // a conversation still loading must not replace this
  const message = new MessageView("assistant");
  // After a failed reply, Retry asks for a new one. After a connection lost
  // before the reply began, it sends the same key: the server may be writing
  // the reply already, and then answers with it instead of starting another.
  const resend = (again) => () => {
    message.node.remove();
    send(text, { echo: false, key: again });
  };
  const reply = new LiveReply(message, {
    conversationId: state.conversationId,
    retry: resend(undefined),
  });
  reply.reconnect = resend(key);
  reply.onMetadata = (event) => {
    const id = event.conversation_id;
    if (id && id !== reply.conversationId) {
      reply.conversationId = id;
      if (id !== state.conversationId) setConversation(id, text.trim().slice(0, 80));
      refreshConversations();
    }
  };
  const body = { message: text, thread_id: null, conversation_id: state.conversationId };
  showReply(reply, (signal) => streamChat(body, { signal, key, onEvent: reply.handle }));
}

// Shows the reply being written in the conversation, from its start.
function follow(conversationId) {
  const message = new MessageView("assistant");
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
      if (error instanceof ApiError && error.status === 400 && error.fields?.message) {
        message.showError(error.message); // retrying the same text cannot help
      } else {
        message.showError(describeError(error), {
          retry: error instanceof ApiError ? reply.retry : reply.reconnect,
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

// --- wiring -------------------------------------------------------------------------

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.input.value;
  if (!text.trim() || state.reply) return;
  ui.input.value = "";
  ui.input.focus();
  send(text);
});

ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.form.requestSubmit();
  }
});

ui.stop.addEventListener("click", () => stopReply());

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && state.reply) stopReply();
});

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
