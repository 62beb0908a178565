// eventsource-parser's createParser fed from fetch(), decoding in stream mode.
import { createParser } from "eventsource-parser";
import { readRequest, recordingFetch, report } from "./common.mjs";

const { url, headers, body } = readRequest();
const requests = [];
const events = [];
const errors = [];
const comments = [];

const parser = createParser({
  onEvent(event) {
    events.push({ id: event.id ?? null, event: event.event ?? "message", data: event.data });
  },
  onComment(comment) {
    comments.push(comment);
  },
  onError(error) {
    errors.push(String(error));
  },
});

try {
  const response = await recordingFetch(requests)(url, { method: "POST", headers, body });
  const decoder = new TextDecoder();
  for await (const chunk of response.body) {
    parser.feed(decoder.decode(chunk, { stream: true }));
  }
  parser.feed(decoder.decode());
} catch (error) {
  errors.push(String(error));
}

report({ events, requests, errors, comments });
