// A Server-Sent Events parser for streams read with fetch() (WHATWG HTML §9.2).
//
// EventSource only issues GET, and the chat endpoint is a POST, so the page reads
// the body itself. Bytes may arrive split anywhere: inside a line, between the CR
// and LF of a CRLF, inside a multi-byte UTF-8 character. The decoder runs in
// stream mode and the parser keeps the unfinished line until its end arrives.

export class SSEParser {
  // onEvent receives {type, data, id} for every dispatched event; data is the
  // raw string (the chat API sends JSON), id the last event id seen ("" if none).
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.decoder = new TextDecoder("utf-8"); // strips a leading BOM
    this.line = "";
    this.skipLF = false;
    this.data = "";
    this.hasData = false;
    this.type = "";
    this.lastEventId = "";
    this.retry = null;
  }

  // Feeds one read: a Uint8Array (bytes) or a string (already decoded).
  push(chunk) {
    const text =
      typeof chunk === "string" ? chunk : this.decoder.decode(chunk, { stream: true });
    if (text) this.feed(text);
  }

  // The stream ended: an event without its closing blank line is dropped.
  end() {
    const rest = this.decoder.decode();
    if (rest) this.feed(rest);
  }

  feed(text) {
    let start = 0;
    if (this.skipLF) {
      this.skipLF = false;
      if (text.charCodeAt(0) === 10) start = 1;
    }
    const eol = /[\r\n]/g;
    eol.lastIndex = start;
    let match;
    while ((match = eol.exec(text)) !== null) {
      const end = match.index;
      const line = this.line + text.slice(start, end);
      this.line = "";
      start = end + 1;
      if (text.charCodeAt(end) === 13) {
        if (start === text.length) this.skipLF = true;
        else if (text.charCodeAt(start) === 10) start += 1;
        eol.lastIndex = start;
      }
      this.processLine(line);
    }
    this.line += text.slice(start);
  }

  processLine(line) {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.charCodeAt(0) === 58) return; // ":" starts a comment (keep-alive)
    const colon = line.indexOf(":");
    let field = line;
    let value = "";
    if (colon !== -1) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.charCodeAt(0) === 32) value = value.slice(1);
    }
    switch (field) {
      case "data":
        this.data = this.hasData ? `${this.data}\n${value}` : value;
        this.hasData = true;
        break;
      case "event":
        this.type = value;
        break;
      case "id":
        if (!value.includes("\0")) this.lastEventId = value;
        break;
      case "retry":
        if (/^\d+$/.test(value)) this.retry = Number(value);
        break;
      default:
      // Unknown fields are ignored.
    }
  }

  dispatch() {
    if (this.hasData) {
      this.onEvent({ type: this.type || "message", data: this.data, id: this.lastEventId });
    }
    this.data = "";
    this.hasData = false;
    this.type = "";
  }
}

// Reads a fetch() response body to its end, calling onEvent for every event.
export async function readEvents(body, onEvent) {
  const parser = new SSEParser(onEvent);
  const reader = body.getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(value);
    }
    parser.end();
  } finally {
    reader.releaseLock();
  }
}
