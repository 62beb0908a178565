"""Random ids (UUID version 4, as `uuid.uuid4` makes them) cut from a pool of the
operating system's random bytes.

`uuid.uuid4` reads 16 bytes with `os.urandom` for each id, and `os.urandom` lets
go of the interpreter lock around its system call. On the event loop that is a
hand-over: a thread doing database work takes the lock, and the loop waits until
that thread gives it back (up to a switch interval, 5 ms) before it can go on
serving every other stream. A request makes three or four ids; a burst of new
chats, hundreds. Here one `os.urandom` call fills a pool for 256 ids.

The bytes are the same CSPRNG's, used once each: the ids are as unguessable as
`uuid.uuid4`'s (a conversation id is a capability for a caller without cookies).
A forked child starts with an empty pool, never its parent's."""

import os
import threading
from uuid import UUID

_IDS_PER_FILL = 256
_lock = threading.Lock()
_pool = b""
_taken = 0


def _forget() -> None:
    global _pool, _taken, _lock
    _lock = threading.Lock()
    _pool, _taken = b"", 0


os.register_at_fork(after_in_child=_forget)


def uuid4() -> UUID:
    """A random UUID, version 4."""
    global _pool, _taken
    with _lock:
        if _taken >= len(_pool):
            _pool, _taken = os.urandom(16 * _IDS_PER_FILL), 0
        start = _taken
        _taken += 16
        return UUID(bytes=_pool[start : start + 16], version=4)


def hex_id() -> str:
    """A random id of 32 hex digits (a request id)."""
    return uuid4().hex
