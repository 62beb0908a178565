"""A reply's frames, by event id, for every reader of the reply.

The producer appends; each reader (the first response, a retried POST that
attaches to it) reads the frames after the last id it sent and waits for more.
Event ids are positions in the log, so they mean the same to every reader.

Chunks are most of a reply and a token is a few characters, so their text is kept
once, compactly: consecutive parts are joined every so often, and an array of
offsets finds any chunk's text again. Other frames (metadata, citations, the final
frame) are kept as they are.
"""

import asyncio
from array import array
from bisect import bisect_right
from collections.abc import Iterator

from chat import frames

# Joining the reply's parts every this many keeps a token from costing a string.
_COMPACT_EVERY = 256


class ReplyLog:
    __slots__ = (
        "_chunk_ends",
        "_ended",
        "_other_ids",
        "_others",
        "_part_starts",
        "_parts",
        "_size",
        "_waiter",
    )

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._part_starts = array("q")  # character offset where each part starts
        self._size = 0  # characters of chunk text
        self._chunk_ends = array("q")  # per chunk, in order: its end offset
        self._others: dict[int, frames.Frame] = {}
        self._other_ids: list[int] = []  # ascending
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._chunk_ends) + len(self._other_ids)

    @property
    def ended(self) -> bool:
        """The final frame is in the log."""
        return self._ended

    @property
    def text(self) -> str:
        """The text of every chunk so far."""
        parts = self._parts
        if len(parts) > 1:
            self._compact()
        return parts[0] if parts else ""

    # --- writing -------------------------------------------------------------------

    def append_chunk(self, text: str) -> None:
        parts = self._parts
        self._part_starts.append(self._size)
        parts.append(text)
        self._size += len(text)
        self._chunk_ends.append(self._size)
        if len(parts) >= _COMPACT_EVERY:
            self._compact()
        self._wake()

    def append(self, frame: frames.Frame, *, final: bool = False) -> None:
        event_id = len(self)
        self._others[event_id] = frame
        self._other_ids.append(event_id)
        self._ended = self._ended or final
        self._wake()

    def _compact(self) -> None:
        self._parts[:] = ["".join(self._parts)]
        del self._part_starts[1:]

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- reading -------------------------------------------------------------------

    def after(self, last_id: int) -> Iterator[tuple[int, frames.Frame]]:
        """The frames after `last_id`, with runs of chunks joined into one chunk
        that carries the id of its last part."""
        event_id = last_id + 1
        end = len(self)
        others, other_ids = self._others, self._other_ids
        while event_id < end:
            frame = others.get(event_id)
            if frame is not None:
                yield event_id, frame
                event_id += 1
                continue
            # A run of chunks up to the next other frame (or the end).
            following = bisect_right(other_ids, event_id)
            run_end = other_ids[following] if following < len(other_ids) else end
            first = event_id - following  # chunk index of this id
            last = run_end - 1 - following
            yield run_end - 1, frames.Chunk(content=self._chunk_text(first, last))
            event_id = run_end

    def _chunk_text(self, first: int, last: int) -> str:
        ends = self._chunk_ends
        start = ends[first - 1] if first else 0
        stop = ends[last]
        starts, parts = self._part_starts, self._parts
        index = bisect_right(starts, start) - 1
        offset = start - starts[index]
        part = parts[index]
        if stop - starts[index] <= len(part):
            return part[offset : stop - starts[index]]
        pieces = [part[offset:]]
        for part_start, part in zip(
            starts[index + 1 :], parts[index + 1 :], strict=True
        ):
            if part_start >= stop:
                break
            pieces.append(part[: stop - part_start])
        return "".join(pieces)

    async def wait(self, last_id: int, timeout: float) -> bool:
        """Waits until there is a frame after `last_id`; False on timeout."""
        if len(self) > last_id + 1:
            return True
        waiter = self._waiter
        if waiter is None:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        # asyncio.wait leaves the shared future alone when this reader gives up.
        await asyncio.wait((waiter,), timeout=timeout)
        return len(self) > last_id + 1
