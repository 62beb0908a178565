// The earlier front end's reader of the chat stream: a ReadableStream reader that
// decodes each read on its own, keeps the unfinished line, and JSON-parses every
// `data: ` line. Its `chunk` handling is as it was; the rest of a reply (the
// metadata, the final frame, an error's `error` message) is what it showed.
import { readRequest, recordingFetch, report } from "./common.mjs";

const { url, headers, body } = readRequest();
const requests = [];
const events = [];
const errors = [];
let accumulatedContent = "";
let conversationId = null;

try {
  const response = await recordingFetch(requests)(url, { method: "POST", headers, body });
  const reader = response.body?.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value);
    const lines = buffer.split("\n");
    buffer = lines.pop() ?? "";
    for (const line of lines) {
      if (line.startsWith("data: ")) {
        const data = JSON.parse(line.slice(6));
        events.push({ id: null, event: "message", data: line.slice(6) });
        if (data.type === "metadata") {
          conversationId = data.conversation_id;
        } else if (data.type === "chunk") {
          accumulatedContent += data.content;
          // Update UI progressively
        } else if (data.type === "error") {
          errors.push(data.error);
        }
      }
    }
  }
} catch (error) {
  errors.push(String(error));
}

report({ events, requests, errors, accumulatedContent, conversationId });
