"""An offline emulator of the classic Azure AI Foundry Agents REST API.

It speaks the wire protocol azure-ai-agents 1.1.0 (`AgentsClient`, sync and async)
expects, so the app, its tests, benchmarks and a user's CI can run with no Azure
account. Give the SDK `emulator.endpoint` (``http://127.0.0.1:PORT/api/projects/
emulator``; any project name and any ``api-version`` work) and `emulator.agent_id`.
``python -m emulator`` serves it until Ctrl-C and prints the settings that point
the app at it.

Served under ``{endpoint}``: ``GET /assistants/{id}``; ``POST /threads``;
``POST /threads/runs``; ``GET|DELETE /threads/{id}``; ``POST|GET
/threads/{id}/messages``; ``GET /threads/{id}/messages/{id}``; ``POST|GET
/threads/{id}/runs`` (``"stream": true`` answers SSE); ``GET
/threads/{id}/runs/{id}``; ``POST /threads/{id}/runs/{id}/cancel``; ``POST
/threads/{id}/runs/{id}/submit_tool_outputs``; ``GET /files/{id}/content``.

The same server speaks the OpenAI protocols: the Responses API of new Foundry
agents under ``{endpoint}/openai/v1`` (conversations and responses, see
`responses`) and chat completions at ``/v1/chat/completions`` (see
`chat_completions`), with the same options, faults, holds and recordings.

Options (`EmulatorConfig` fields)
    first_token_delay, token_interval  seconds before the first / each later delta
    reply        "echo" ("You said: <last user message>"), a text, or a token list
    tokens       N: reply "tok0 tok1 ... tok<N-1>" instead (benchmarks)
    annotations  true: end with a url_citation and a file_citation delta
    agent_name, model   what GET /assistants/{id} and runs report
    fault        one of the faults below; fault_after: deltas sent before a
                 stream fault (default 2; 0 = before the first delta)
    fault_operation     the operation an HTTP fault hits; by default the next
                 reply: runs.create, responses.create or chat.completions.create,
                 whichever comes first. Also agents.get, threads.create/get/delete,
                 messages.create/list/get, runs.list/get/cancel,
                 runs.submit_tool_outputs, files.content,
                 conversations.create/get/delete, conversations.items.create,
                 responses.get/cancel, containers.files.content
    retry_after  seconds sent in Retry-After by http_429_retry_after
    hold_after   N: stop after N deltas until `release()`
    hold_start   true: stop before the reply's first event until `release()`
    tools        server-side tools called before the text (file_search,
                 code_interpreter, web_search); hold_tool: each waits for
                 `release()` while in progress
    function_calls  "name" or "name {json}" each: asked of the client after the
                 tools (a run's requires_action, a response's function_call
                 items answered by the next response)
    image        true: a chart that code interpreter drew comes with the reply

Faults
    http_401, http_403, http_404 (thread not found), http_429 (no Retry-After),
    http_429_retry_after, http_500_json, http_500_html (HTML body);
    run_failed (``thread.run.failed`` + done), error_event (``event: error`` +
    done), disconnect (socket closed mid-body), hang (nothing more until the run
    is cancelled), incomplete (body ends cleanly, no terminal event, no done);
    max_tokens, content_filter (the OpenAI protocols' truncated reply:
    response.incomplete or that finish_reason; classic runs ignore them).

Choosing options, later wins
    1. Defaults: ``emulator.config`` / ``emulator.configure(**changes)``, or
       ``POST /_emulator/config`` with a JSON object of changes.
    2. One-shot overrides, FIFO: ``emulator.push(**overrides)`` or ``POST
       /_emulator/push``. Each is used by the next request of its
       ``fault_operation`` (default: the next reply, of any API), so a client
       that retries meets the next queued override, or the defaults.
    3. Directives in the user message a run answers, for people at the chat page
       or curl: ``[emulator:key=value,key=value]``, keys as above plus the
       aliases interval, delay, after, hold, operation. Example: ``Hi
       [emulator:tokens=300,interval=0.05]`` or ``[emulator:fault=http_429]``.
       Values cannot contain ``,`` or ``]``; the echo reply leaves directives out.

Control API (same server)
    ``GET /_emulator/health``, ``GET|POST /_emulator/config``, ``POST
    /_emulator/push``, ``POST /_emulator/release``, ``GET /_emulator/requests``,
    ``GET /_emulator/deltas``, ``GET /_emulator/cancelled``, ``POST
    /_emulator/reset``.

Recordings: ``emulator.requests`` (RecordedRequest), ``emulator.deltas``
(RecordedDelta, with ``time.time()`` and ``time.monotonic()`` taken as each delta
is written) and ``emulator.cancelled_runs`` (ids of runs and background
responses cancelled, and of streamed responses and chat completions whose client
closed the stream, which is how those are stopped).

Behaviour kept from the service: success is always 200; errors are
``{"error": {"code", "message", "type", "param"}}``; a thread has one active run
(another run, or a new message, gets 400); a run continues when its stream's
client goes away (and while it stops reading), polled with ``GET
/threads/{id}/runs/{id}`` and ``GET /threads/{id}/messages?run_id=``; a cancelled
or failed run leaves its partial reply in the thread as an incomplete message. A
response created with ``background: true`` runs without its stream: ``GET
/responses/{id}?stream=true&starting_after=N`` streams its events after sequence
number N and follows it live, and ``POST /responses/{id}/cancel`` stops it (its
streams end with ``response.failed`` whose status is ``cancelled``).
"""

from .config import FAULTS, HTTP_FAULTS, STREAM_FAULTS, EmulatorConfig
from .responses import FOUNDRY_AGENT_NAME, FOUNDRY_AGENT_VERSION
from .server import DEFAULT_AGENT_ID, AgentsEmulator, RecordedRequest
from .stream import RecordedDelta
from .threaded import EmulatorThread

__all__ = [
    "DEFAULT_AGENT_ID",
    "FAULTS",
    "FOUNDRY_AGENT_NAME",
    "FOUNDRY_AGENT_VERSION",
    "HTTP_FAULTS",
    "STREAM_FAULTS",
    "AgentsEmulator",
    "EmulatorConfig",
    "EmulatorThread",
    "RecordedDelta",
    "RecordedRequest",
]
