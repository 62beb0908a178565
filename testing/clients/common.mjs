// What every client script shares: the request it is given on stdin and the
// report it prints on stdout.
//
// stdin: {"url": "...", "headers": {...}, "body": "<string sent as is>", ...}
// stdout: {"events": [{"id", "event", "data"}], "requests": [...], "errors": [...]}
// where `data` is each event's raw data string, as the client handed it over.
import { readFileSync } from "node:fs";

export function readRequest() {
  return JSON.parse(readFileSync(0, "utf8"));
}

export function report(result) {
  process.stdout.write(JSON.stringify(result));
}

// A fetch that remembers each request it makes and the status it got.
export function recordingFetch(requests) {
  return async (input, init = {}) => {
    const entry = { headers: { ...init.headers }, status: null };
    requests.push(entry);
    const response = await fetch(input, init);
    entry.status = response.status;
    entry.contentType = response.headers.get("content-type");
    return response;
  };
}
