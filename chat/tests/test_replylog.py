"""The reply log: any reader, from any event id, gets exactly what came after it."""

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat import frames
from chat.replylog import Follower, ReplyLog

pytestmark = pytest.mark.no_database

OTHER = frames.Error(code="c", message="m", message_id="x")

# A log's entries: chunk texts, or None for another frame.
entries = st.lists(st.one_of(st.text(max_size=5), st.none()), max_size=600)


def written(items: list[str | None]) -> ReplyLog:
    log = ReplyLog()
    for item in items:
        if item is None:
            log.append(OTHER)
        else:
            log.append_chunk(item)
    return log


@given(entries, st.data())
def test_a_reader_from_any_id_gets_exactly_what_follows(
    items: list[str | None], data: st.DataObject
) -> None:
    log = written(items)
    assert len(log) == len(items)
    last_id = data.draw(st.integers(-1, len(items) - 1))
    read = list(log.after(last_id))
    ids = [event_id for event_id, _ in read]
    assert ids == sorted(set(ids))
    if items[last_id + 1 :]:
        assert ids[-1] == len(items) - 1
    # Every frame after last_id, with runs of chunks joined and no two chunk
    # frames in a row.
    expected: list[str | None] = []
    for item in items[last_id + 1 :]:
        if item is not None and expected and expected[-1] is not None:
            expected[-1] += item
        else:
            expected.append(item)
    got = [f.content if type(f) is frames.Chunk else None for _, f in read]
    assert got == expected
    assert log.text == "".join(item for item in items if item is not None)


@given(entries)
def test_the_text_survives_reading_it_while_writing(items: list[str | None]) -> None:
    log = ReplyLog()
    seen = ""
    last_id = -1
    for item in items:
        if item is None:
            log.append(OTHER)
        else:
            log.append_chunk(item)
        for event_id, frame in log.after(last_id):
            last_id = event_id
            if type(frame) is frames.Chunk:
                seen += frame.content
        assert seen == log.text


async def test_readers_wake_when_a_frame_arrives_and_time_out_otherwise() -> None:
    log = ReplyLog()
    assert not await log.wait(-1, 0.01)
    readers = [asyncio.create_task(log.wait(-1, 60)) for _ in range(3)]
    await asyncio.sleep(0)
    log.append_chunk("hi")
    assert await asyncio.gather(*readers) == [True, True, True]
    assert not log.ended
    log.append(OTHER, final=True)
    assert log.ended
    assert await log.wait(0, 60)


async def test_a_reader_that_gives_up_or_times_out_leaves_no_waiter_behind() -> None:
    log = ReplyLog()
    stays = asyncio.create_task(log.wait(-1, 60))
    leaves = asyncio.create_task(log.wait(-1, 60))
    await asyncio.sleep(0)
    leaves.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaves
    assert not await log.wait(-1, 0.01)  # timed out
    assert len(log._waiters) == 1  # only the reader still waiting
    log.append_chunk("hi")
    assert await stays
    assert log._waiters == []


async def test_a_followers_quiet_limit_counts_from_the_start_of_each_wait() -> None:
    """Its one timer, armed at the first wait, fires while a later wait has
    not lasted the limit yet: that wait goes on, and times out only once it
    has lasted the limit itself."""
    loop = asyncio.get_running_loop()
    log = ReplyLog()
    quiet = 0.3
    follower = Follower(log, quiet)
    first = follower.waiter(-1)
    assert first is not None
    await asyncio.sleep(quiet / 2)
    log.append_chunk("a")
    assert await first
    assert follower.waiter(-1) is None  # a frame is there: no wait
    second = follower.waiter(0)
    assert second is not None
    began = loop.time()
    assert not await second  # nothing came
    assert loop.time() - began >= quiet
    assert log._waiters == []
    third = follower.waiter(0)
    assert third is not None
    log.append_chunk("b")
    assert await third
    follower.close()


async def test_a_follower_that_leaves_while_waiting_is_forgotten() -> None:
    log = ReplyLog()
    follower = Follower(log, 60)
    waiter = follower.waiter(-1)
    assert waiter is not None and log._waiters == [waiter]
    follower.close()
    assert waiter.cancelled()
    assert log._waiters == []
    log.append_chunk("a")  # wakes nobody, fails nothing


def test_a_long_reply_is_read_from_any_id() -> None:
    items = [None if i % 97 == 0 else f"t{i} " for i in range(1000)]
    log = written(items)
    for last_id in range(-1, len(items)):
        text = "".join(
            f.content for _, f in log.after(last_id) if type(f) is frames.Chunk
        )
        assert text == "".join(item for item in items[last_id + 1 :] if item)


def test_any_text_comes_back_as_it_went_in() -> None:
    # Several bytes a character, and lone surrogates (a JSON parser may give them).
    items = ["é", "日本", "😀", "\ud800", "\udc00", None, "a\x00b", "", "\U0010ffff"]
    log = written(items)
    assert log.text == "".join(item for item in items if item is not None)
    for last_id in range(-1, len(items)):
        expected = b"".join(
            frames.encode(i, OTHER if item is None else frames.Chunk(content=item))
            for i, item in enumerate(items)
            if i > last_id
        )
        assert log.encoded(last_id + 1, len(items)) == expected
        texts = [t for _, t in log.raw_after(last_id) if type(t) is str]
        assert "".join(texts) == "".join(
            i for i in items[last_id + 1 :] if i is not None
        )


def test_other_frames_are_kept_as_the_json_they_are_sent_as() -> None:
    log = ReplyLog()
    log.append(OTHER)
    log.append_chunk("a")
    log.append(OTHER, final=True)
    assert list(log.raw_after(-1)) == [
        (0, frames.dump(OTHER).encode()),
        (1, "a"),
        (2, frames.dump(OTHER).encode()),
    ]
    assert list(log.after(-1)) == [
        (0, OTHER),
        (1, frames.Chunk(content="a")),
        (2, OTHER),
    ]
