// The chat page: sending, streaming, stopping, retrying, and the conversation list.

import {
  ApiError,
  deleteConversation,
  getConversation,
  listConversations,
  stopChat,
  streamChat,
} from "./api.js";
import { renderMarkdown, StreamingMarkdown } from "./markdown.js";

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
// Polling for a reply another request is still writing: 1 s, slowing to 10 s.
const POLL_MS = 1000;
const POLL_MAX_MS = 10_000;
const POLL_ATTEMPTS = 40;

const state = {
  conversationId: null,
  // The reply in flight: {controller, message, stopping, ended}.
  reply: null,
  pollTimer: 0,
  loadToken: 0,
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
    if (role === "assistant") this.node.append(this.citations.section);
    ui.emptyHint.hidden = true;
    ui.log.append(this.node);
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

  endStreaming(fullText = null) {
    if (this.renderer && !this.renderer.finished) this.renderer.finish(fullText);
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

function renderStoredMessage(message) {
  const view = new MessageView(message.role);
  view.node.dataset.messageId = message.id;
  if (message.role === "user") {
    view.setText(message.content);
    return view;
  }
  for (const annotation of message.annotations || []) view.citations.add(annotation);
  view.setMarkdown(message.content);
  if (message.status === "failed") {
    view.showError(message.error_message || "The reply failed.");
  } else {
    view.setStatus(message.status);
  }
  return view;
}

// --- the conversation list ----------------------------------------------------------

async function refreshConversations() {
  let conversations;
  try {
    conversations = await listConversations();
  } catch (error) {
    showNotice(`Could not load your conversations: ${error.message}`);
    return;
  }
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
  clearTimeout(state.pollTimer);
  ui.log.replaceChildren(ui.emptyHint);
  ui.emptyHint.hidden = false;
}

function startNewConversation({ focus = true } = {}) {
  state.loadToken += 1;
  clearLog();
  setConversation(null);
  showNotice("");
  if (focus) ui.input.focus();
}

async function openConversation(conversationId, { focus = true, attempt = 0 } = {}) {
  if (state.reply) await stopReply();
  const token = ++state.loadToken;
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
  if (token !== state.loadToken) return;
  clearLog();
  setConversation(conversation.id, conversation.title);
  showNotice("");
  for (const message of conversation.messages) renderStoredMessage(message);
  if (conversation.streaming) {
    // A reply is still being written (by another tab, or the one cut off by a
    // reload): show it once the server has stored it.
    const pending = element("p", "message-note pending", "A reply is still being written…");
    ui.log.append(pending);
    if (attempt < POLL_ATTEMPTS) {
      const delay = Math.min(POLL_MS * 2 ** Math.floor(attempt / 5), POLL_MAX_MS);
      state.pollTimer = setTimeout(() => {
        if (token !== state.loadToken) return;
        openConversation(conversationId, { focus: false, attempt: attempt + 1 });
      }, delay);
    }
  }
  scrollToBottom();
  if (focus) ui.input.focus();
}

// --- sending, streaming, stopping ---------------------------------------------------

function setStreaming(streaming) {
  ui.send.hidden = streaming;
  ui.stop.hidden = !streaming;
  ui.stop.disabled = false;
  ui.app.classList.toggle("is-streaming", streaming);
}

function describeError(error) {
  if (!(error instanceof ApiError)) return "The connection to the server was lost.";
  if (error.code === "csrf") return "Your session has expired. Reload the page and try again.";
  if (error.status === 404) return `${error.message}. Retry starts a new conversation.`;
  return error.message;
}

async function send(text, { echo = true } = {}) {
  if (state.reply) return;
  if (echo) new MessageView("user").setText(text);
  state.loadToken += 1; // a conversation still loading must not replace this
  const message = new MessageView("assistant");
  message.startStreaming();
  const reply = { controller: new AbortController(), message, stopping: false, ended: false };
  state.reply = reply;
  setStreaming(true);
  scrollToBottom();
  const retry = () => {
    message.node.remove();
    send(text, { echo: false });
  };
  let finalStatus = null;
  let newConversation = !state.conversationId;

  const onEvent = (event) => {
    switch (event.type) {
      case "metadata":
        if (event.conversation_id && event.conversation_id !== state.conversationId) {
          setConversation(event.conversation_id, text.trim().slice(0, 80));
          newConversation = true;
        }
        if (event.message_id) message.node.dataset.messageId = event.message_id;
        if (event.agent) {
          ui.agent.textContent = event.agent;
          message.header.textContent = event.agent;
        }
        if (typeof event.offline === "boolean") ui.offline.hidden = !event.offline;
        if (event.notice) message.addNote(event.notice);
        if (newConversation) refreshConversations();
        break;
      case "chunk":
        message.append(event.content);
        break;
      case "annotation":
        message.citations.add(event);
        break;
      case "done":
        finalStatus = event.status || "complete";
        message.endStreaming(event.full_response ?? null);
        message.setStatus(finalStatus);
        break;
      case "error":
        finalStatus = "failed";
        message.endStreaming();
        message.showError(event.message || "The agent failed to reply.", {
          retry,
          retryAfter: event.retry_after ?? null,
        });
        break;
      default:
      // Newer event types are ignored.
    }
  };

  try {
    await streamChat(
      { message: text, thread_id: null, conversation_id: state.conversationId },
      { signal: reply.controller.signal, onEvent },
    );
    if (!finalStatus) {
      message.endStreaming();
      message.showError("The reply ended before it was complete.", { retry });
    }
  } catch (error) {
    message.endStreaming();
    if (reply.stopping || error.name === "AbortError") {
      if (!finalStatus) message.setStatus("cancelled");
    } else if (!finalStatus) {
      if (error instanceof ApiError && error.status === 404) setConversation(null);
      if (error instanceof ApiError && error.status === 400 && error.fields?.message) {
        message.showError(error.message); // retrying the same text cannot help
      } else {
        message.showError(describeError(error), { retry, retryAfter: error.retryAfter ?? null });
      }
    }
  } finally {
    reply.ended = true;
    if (state.reply === reply) state.reply = null;
    setStreaming(false);
    if (document.activeElement === document.body || document.activeElement === ui.stop) {
      ui.input.focus();
    }
    refreshConversations();
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
  if (state.conversationId) {
    try {
      await stopChat(state.conversationId);
    } catch {
      // 409: it finished meanwhile. Anything else: the abort below still stops it.
    }
    const deadline = Date.now() + STOP_GRACE_MS;
    while (!reply.ended && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  if (!reply.ended) reply.controller.abort();
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
  if (state.reply) await stopReply();
  closeSidebar();
  startNewConversation();
});

window.addEventListener("hashchange", () => {
  const id = location.hash.slice(1);
  if (id && id !== state.conversationId) openConversation(id);
  else if (!id && state.conversationId) startNewConversation();
});

const initial = location.hash.slice(1);
if (initial) openConversation(initial);
else ui.input.focus();
refreshConversations();
document.documentElement.classList.add("js-ready");
