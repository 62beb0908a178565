// The chat page's own parser, static/chat/sse.js, reading a fetch() body.
import { readFileSync } from "node:fs";
import { readRequest, recordingFetch, report } from "./common.mjs";

// A data: URL is an ES module whatever the nearest package.json says.
const source = readFileSync(new URL("../../static/chat/sse.js", import.meta.url));
const { readEvents } = await import(
  `data:text/javascript;base64,${source.toString("base64")}`
);

const { url, headers, body } = readRequest();
const requests = [];
const events = [];
const errors = [];

try {
  const response = await recordingFetch(requests)(url, { method: "POST", headers, body });
  await readEvents(response.body, (event) => {
    events.push({ id: event.id, event: event.type, data: event.data });
  });
} catch (error) {
  errors.push(String(error));
}

report({ events, requests, errors });
