// The chat API as the page uses it: JSON requests with the CSRF token, and the
// reply stream read with fetch() + ReadableStream.

import { readEvents } from "./sse.js";

export class ApiError extends Error {
  constructor(message, { status = 0, code = "", retryAfter = null, fields = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.fields = fields;
  }
}

function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...value] = part.trim().split("=");
    if (key === name) return decodeURIComponent(value.join("="));
  }
  return "";
}

// The cookie is the current token; the <meta> tag covers CSRF_COOKIE_HTTPONLY.
function csrfToken() {
  return cookie("csrftoken") || document.querySelector('meta[name="csrf-token"]')?.content || "";
}

function headers(extra = {}) {
  return { "X-CSRFToken": csrfToken(), ...extra };
}

// randomUUID needs a secure context; getRandomValues works everywhere.
export function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function seconds(value) {
  const number = Number.parseFloat(value);
  return Number.isFinite(number) && number >= 0 ? number : null;
}

async function errorFrom(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's HTML error page, say): keep the status line.
  }
  const fields = body.fields || null;
  let message = body.error || `The server answered ${response.status} ${response.statusText}`.trim();
  if (fields) message = Object.values(fields).flat().join(" ") || message;
  return new ApiError(message, {
    status: response.status,
    code: body.code || (response.status === 429 ? "rate_limited" : `http_${response.status}`),
    retryAfter: seconds(response.headers.get("Retry-After")) ?? seconds(body.retry_after),
    fields,
  });
}

async function request(url, options = {}) {
  const response = await fetch(url, {
    credentials: "same-origin",
    ...options,
    headers: { Accept: "application/json", ...options.headers },
  });
  if (!response.ok) throw await errorFrom(response);
  return response;
}

// Sends a message and calls onEvent(event, id) for every frame of the reply, where
// event is the parsed JSON payload ({type: "metadata" | "chunk" | ...}) and id its
// place in the reply. A JSON answer (a proxy that strips streaming, or the API's
// fallback) becomes the same sequence of events, without ids. Rejects with
// ApiError before the stream starts, with an AbortError when signal aborts. Each
// message carries its own Idempotency-Key, so a POST that is sent again (by a
// proxy, the browser, or the page with the same `key`) never runs twice: it gets
// the reply the first one started.
export async function streamChat(body, { signal, onEvent, key = newKey() }) {
  await streamReplyTo("/api/chat", body, { signal, onEvent, key });
}

// Another reply to the conversation's last message, as streamChat gives one.
export async function streamRegenerate(conversationId, { signal, onEvent, key = newKey() }) {
  const url = `/api/conversations/${conversationId}/regenerate`;
  await streamReplyTo(url, {}, { signal, onEvent, key });
}

async function streamReplyTo(url, body, { signal, onEvent, key }) {
  const response = await request(url, {
    method: "POST",
    signal,
    headers: headers({
      "Content-Type": "application/json",
      Accept: "text/event-stream",
      "Idempotency-Key": key,
    }),
    body: JSON.stringify(body),
  });
  const type = response.headers.get("Content-Type") || "";
  if (type.startsWith("text/event-stream")) {
    await readFrames(response, onEvent);
    return;
  }
  replayJson(await response.json(), onEvent);
}

// The conversation's reply in flight (or its last one) after the frame with id
// lastId (-1: from its start), live to its final frame: frames as streamChat
// gives them. onOpen() runs once the server has answered.
export async function streamReply(conversationId, lastId, { signal, onEvent, onOpen }) {
  const query = lastId >= 0 ? `?last_event_id=${lastId}` : "";
  const response = await request(`/api/conversations/${conversationId}/stream${query}`, {
    signal,
    cache: "no-store",
    headers: { Accept: "text/event-stream" },
  });
  onOpen?.();
  await readFrames(response, onEvent);
}

async function readFrames(response, onEvent) {
  await readEvents(response.body, (event) => {
    let payload;
    try {
      payload = JSON.parse(event.data);
    } catch {
      return; // not one of ours; the protocol only sends JSON
    }
    onEvent(payload, event.id);
  });
}

function replayJson(reply, onEvent) {
  onEvent({ type: "metadata", ...reply });
  if (reply.full_response) onEvent({ type: "chunk", content: reply.full_response });
  for (const annotation of reply.annotations || []) onEvent({ type: "annotation", ...annotation });
  if (reply.error) {
    onEvent({ type: "error", ...reply.error });
    return;
  }
  onEvent({
    type: "done",
    full_response: reply.full_response || "",
    message_id: reply.message_id,
    conversation_id: reply.conversation_id,
    status: reply.status === "cancelled" ? "cancelled" : "complete",
    usage: reply.usage,
  });
}

export async function stopChat(conversationId) {
  const response = await request(`/api/chat/${conversationId}/stop`, {
    method: "POST",
    headers: headers(),
  });
  return response.json();
}

// A page of the caller's conversations, newest first: {results, next}, where
// next is the URL of the following page (or null). `query` keeps those whose
// title or messages contain it; `url` is a page's `next`.
export async function listConversations({ query = "", limit = 50, url = null } = {}) {
  let target = url;
  if (!target) {
    const params = new URLSearchParams({ limit: String(limit) });
    if (query) params.set("q", query);
    target = `/api/conversations?${params}`;
  }
  const response = await request(target);
  const body = await response.json();
  return { results: body.results, next: body.next ?? null };
}

export async function renameConversation(conversationId, title) {
  const response = await request(`/api/conversations/${conversationId}`, {
    method: "PATCH",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify({ title }),
  });
  return response.json();
}

export async function getConversation(conversationId) {
  const response = await request(`/api/conversations/${conversationId}`);
  return response.json();
}

export async function deleteConversation(conversationId) {
  await request(`/api/conversations/${conversationId}`, {
    method: "DELETE",
    headers: headers(),
  });
}
