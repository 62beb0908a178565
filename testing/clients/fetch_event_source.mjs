// @microsoft/fetch-event-source as pages use it: JSON-parse each message, and
// leave retries to the library (it retries after `retry` ms, 1 s by default,
// resending the same headers plus Last-Event-ID). Extra input: "maxAttempts"
// (default 3), after which an error is final instead of retried.
import { fetchEventSource } from "@microsoft/fetch-event-source";
import { readRequest, recordingFetch, report } from "./common.mjs";

// The library is written for a page: it reads window's timers and document's
// visibility. openWhenHidden keeps it from listening for visibility changes.
globalThis.window = globalThis;
globalThis.document = {
  hidden: false,
  addEventListener() {},
  removeEventListener() {},
};

const { url, headers, body, maxAttempts = 3 } = readRequest();
const requests = [];
const events = [];
const errors = [];

try {
  await fetchEventSource(url, {
    method: "POST",
    headers,
    body,
    openWhenHidden: true,
    fetch: recordingFetch(requests),
    onmessage(message) {
      events.push({ id: message.id, event: message.event, data: message.data });
      JSON.parse(message.data);
    },
    onerror(error) {
      errors.push(String(error));
      if (requests.length >= maxAttempts) throw error;
    },
  });
} catch (error) {
  errors.push(`final: ${error}`);
}

report({ events, requests, errors });
