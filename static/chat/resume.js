// Keeping up with a reply when its connection drops.
//
// A reply goes on on the server when the connection that carried it is lost, and
// frame ids are positions in the reply, the same for every reader. So after a drop
// the page asks GET /api/conversations/<id>/stream for what followed the last
// frame it showed, again after a growing pause while that fails, until the
// reply's final frame arrives: nothing is shown twice and nothing is skipped.

import { ApiError, streamReply } from "./api.js";

const FIRST_PAUSE_MS = 500;
const MAX_PAUSE_MS = 8000;
// 0.5 + 1 + 2 + 4 + 8 × 6 s: about a minute without a connection, then give up.
const ATTEMPTS = 10;

// Runs connect(signal) with a signal that aborts with `signal`, and also when
// the browser reports that it went offline: a connection cut off by a network
// change may stall instead of failing, so it is dropped and opened again.
export async function whileOnline(signal, connect) {
  const connection = new AbortController();
  const follow = () => connection.abort(signal.reason);
  const drop = () => {
    connection.abort(new DOMException("The network went offline.", "NetworkError"));
  };
  if (signal.aborted) follow();
  signal.addEventListener("abort", follow);
  window.addEventListener("offline", drop);
  try {
    return await connect(connection.signal);
  } finally {
    signal.removeEventListener("abort", follow);
    window.removeEventListener("offline", drop);
  }
}

// Worth another try: the network, the reply being written on another server
// (409 reply_elsewhere), limits, the server or a proxy in between. A
// conversation that is gone or a session that expired is not.
function retryable(error) {
  if (!(error instanceof ApiError)) return true;
  return error.status === 0 || error.status === 409 || error.status === 429 || error.status >= 500;
}

function pauseBefore(attempt, error) {
  const backoff = Math.min(FIRST_PAUSE_MS * 2 ** (attempt - 1), MAX_PAUSE_MS);
  return Math.max(backoff, (error?.retryAfter ?? 0) * 1000);
}

// Waits `ms`, or until the browser is back online; rejects when signal aborts.
function pause(ms, signal) {
  return new Promise((resolve, reject) => {
    const finish = (settle) => {
      clearTimeout(timer);
      window.removeEventListener("online", wake);
      signal.removeEventListener("abort", abort);
      settle();
    };
    const wake = () => finish(resolve);
    const abort = () => finish(() => reject(signal.reason));
    const timer = setTimeout(wake, ms);
    window.addEventListener("online", wake);
    signal.addEventListener("abort", abort);
    if (signal.aborted) abort();
  });
}

// Reads the conversation's reply into `reply` until reply.finished (its final
// frame was handled), from reply.lastId on every connection. `reply` gives
// lastId, finished and handle(event, id). onRetry(attempt) runs when a
// connection is lost and another will be tried, onOpen() when one is made.
// Rejects when signal aborts, when the server refuses for good, and after
// ATTEMPTS connections in a row that brought nothing.
export async function followReply(conversationId, reply, { signal, onRetry, onOpen }) {
  let attempt = 0;
  for (;;) {
    const from = reply.lastId;
    let failure = null;
    if (navigator.onLine === false) {
      failure = new TypeError("The browser is offline.");
    } else {
      try {
        await whileOnline(signal, (connection) =>
          streamReply(conversationId, from, { signal: connection, onEvent: reply.handle, onOpen }),
        );
      } catch (error) {
        if (signal.aborted || !retryable(error)) throw error;
        failure = error;
      }
    }
    if (reply.finished) return;
    attempt = reply.lastId === from ? attempt + 1 : 1;
    if (attempt > ATTEMPTS) throw failure ?? new Error("The reply stopped arriving.");
    onRetry?.(attempt);
    await pause(pauseBefore(attempt, failure), signal);
  }
}
