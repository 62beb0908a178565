"""Server-Sent Events framing for chat replies.

Every frame is `id: <n>\\ndata: <one-line JSON>\\n\\n`, the format the earlier chat
service used, so its clients keep working. JSON never contains a raw CR or LF
(orjson escapes them), so one `data:` line always carries the whole payload.
Comment frames (`: keep-alive`) keep idle connections open through proxies.
"""

from typing import Any

import orjson

KEEPALIVE = b": keep-alive\n\n"
_CHUNK = b'id: %d\ndata: {"type":"chunk","content":%b}\n\n'
_FRAME = b"id: %d\ndata: %b\n\n"


def encode(event_id: int, payload: dict[str, Any]) -> bytes:
    return _FRAME % (event_id, orjson.dumps(payload))


def encode_chunk(event_id: int, text: str) -> bytes:
    # The hot path: one frame per delta, so it skips building a dict.
    return _CHUNK % (event_id, orjson.dumps(text))
