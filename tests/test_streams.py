"""Framing, the broadcast buffer, and message readers and writers driven by real children.

Children are started with plain ``asyncio.create_subprocess_exec`` and wired by hand, the way
the manager wires them: a pipe or FIFO per direction, a MessageReader into a Broadcast, a
MessageWriter. Nothing sleeps to wait for a condition; every wait has a bound.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import gc
import itertools
import os
import stat
import sys
import termios
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from conftest import TIMEOUT, LoopTurns, collect, fd_count, outcomes, take
from hypothesis import given, settings
from hypothesis import strategies as st

from corral._broadcast import Broadcast, MessageStream, SkippedLine
from corral._errors import (
    IncompleteMessageError,
    LostMessagesError,
    MessageTooLongError,
    ReceiveDeserializedMessageError,
    ReceiveMessageError,
    WriteMessageError,
)
from corral._messages import Message, MessageFormat, encode_outgoing
from corral._model import ExitStatus, ProcessId
from corral._pipes import LineFramer, MessageReader, MessageWriter
from corral._platform import make_fifo, open_fifo_parent_end, set_pipe_size

_T = TypeVar("_T")

#: Echo every line, over stdin/stdout.
ECHO_SH = r"""while IFS= read -r line; do printf '%s\n' "$line"; done"""
#: Echo every line over the FIFOs, reopening OUTPUT_PIPE for every message.
ECHO_FIFO_SH = r"""exec <"$INPUT_PIPE"
while IFS= read -r line; do printf '%s\n' "$line" >"$OUTPUT_PIPE"; done"""
#: Echo every line, over the FIFOs when they are set, else stdin/stdout; any line length.
ECHO_PY = """\
import os, sys
src = open(os.environ["INPUT_PIPE"], "rb") if os.environ.get("INPUT_PIPE") else sys.stdin.buffer
dst = open(os.environ["OUTPUT_PIPE"], "wb") if os.environ.get("OUTPUT_PIPE") else sys.stdout.buffer
for line in src:
    dst.write(line)
    dst.flush()
"""


# --- helpers ---------------------------------------------------------------------------------


@dataclass
class Child:
    """A child wired like the manager does it."""

    proc: asyncio.subprocess.Process
    broadcast: Broadcast
    reader: MessageReader
    writer: MessageWriter | None

    async def exited(self) -> int:
        """Wait for the exit, then tell the reader and writer, like the manager will."""
        code = await asyncio.wait_for(self.proc.wait(), TIMEOUT)
        self.reader.child_exited()
        if self.writer is not None:
            self.writer.child_exited()
        return code

    async def send(self, message: Message | str | bytes) -> None:
        assert self.writer is not None
        await asyncio.wait_for(self.writer.send(encode_outgoing(message)), TIMEOUT)


Spawn = Callable[..., Awaitable[Child]]


@dataclass
class Spawner:
    tmp_path: Path
    children: list[Child] = field(default_factory=list)

    async def __call__(
        self,
        argv: Sequence[str],
        *,
        fifo: bool = False,
        broadcast: Broadcast | None = None,
        message_input: bool = True,
        process_id: ProcessId | None = None,
        max_message_bytes: int | None = None,
        **kwargs: Any,
    ) -> Child:
        """Start ``argv``: messages over stdio pipes, or FIFOs with ``fifo=True``; ``kwargs`` go
        to ``create_subprocess_exec`` (``stdin`` only with FIFOs)."""
        if broadcast is None:
            broadcast = Broadcast(16, process_id=process_id)
        env = {**os.environ, "LC_ALL": "C"}
        child_fds: list[int] = []
        if fifo:
            where = self.tmp_path / f"p{len(self.children)}"
            where.mkdir()
            inp, out = make_fifo(where / "in"), make_fifo(where / "out")
            in_fd, out_fd = open_fifo_parent_end(inp), open_fifo_parent_end(out)
            env.update(INPUT_PIPE=str(inp), OUTPUT_PIPE=str(out))
            stdio: dict[str, Any] = {"stdin": kwargs.pop("stdin", asyncio.subprocess.DEVNULL)}
        else:
            out_fd, child_out = os.pipe2(os.O_CLOEXEC)
            child_fds.append(child_out)
            stdio = {"stdout": child_out, "stdin": asyncio.subprocess.DEVNULL}
            in_fd = -1
            if message_input:
                child_in, in_fd = os.pipe2(os.O_CLOEXEC)
                child_fds.append(child_in)
                stdio["stdin"] = child_in
        try:
            proc = await asyncio.create_subprocess_exec(
                argv[0], *argv[1:], env=env, **stdio, **kwargs
            )
        finally:
            for fd in child_fds:
                os.close(fd)

        def exit_status() -> ExitStatus | None:
            code = proc.returncode
            return None if code is None else ExitStatus.from_returncode(code)

        reader = MessageReader(
            out_fd, broadcast, max_message_bytes=max_message_bytes, exit_status=exit_status
        )
        writer = MessageWriter(in_fd, process_id=process_id) if in_fd >= 0 else None
        child = Child(proc, broadcast, reader, writer)
        self.children.append(child)
        return child

    async def cleanup(self) -> None:
        for child in self.children:
            if child.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
            await asyncio.wait_for(child.proc.wait(), TIMEOUT)
            child.reader.close()
            if child.writer is not None:
                child.writer.close()


@pytest_asyncio.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    """Start children wired to readers and writers; kill and close everything at teardown."""
    spawner = Spawner(tmp_path)
    try:
        yield spawner
    finally:
        await spawner.cleanup()


async def settle(condition: Callable[[], bool], turns: int = 10_000) -> None:
    """Let the loop run callbacks until ``condition`` holds (no wall-clock waiting)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def in_thread(coro: Awaitable[_T]) -> _T:
    """Run ``coro`` on a new event loop in another thread (bounded, so the thread always ends)."""

    async def bounded() -> _T:
        return await asyncio.wait_for(coro, TIMEOUT)

    return await asyncio.to_thread(asyncio.run, bounded())


def texts(messages: Sequence[Message]) -> list[str]:
    return [m.to_string() for m in messages]


def msg(text: str) -> Message:
    return Message.from_string(text)


def publish_all(broadcast: Broadcast, items: Sequence[str]) -> None:
    for item in items:
        assert broadcast.try_publish(msg(item))


# --- framing ---------------------------------------------------------------------------------


def test_framer_cases() -> None:
    framer = LineFramer()
    assert framer.feed(b"") == []
    assert framer.feed(b"a") == []
    assert framer.feed(b"b") == []
    assert framer.pending_size == 2
    assert framer.feed(b"c\n\nd\ne") == [b"abc", b"", b"d"]
    assert framer.feed(b"\n") == [b"e"]
    assert framer.finish() is None
    assert framer.feed(b"tail") == []
    assert framer.finish() == b"tail"
    assert framer.finish() is None


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.binary().map(lambda b: b.replace(b"\n", b"")), max_size=20),
    tail=st.binary().map(lambda b: b.replace(b"\n", b"")),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_framing_property(lines: list[bytes], tail: bytes, cuts: list[int]) -> None:
    """Any messages, cut at any chunk boundaries, come out whole, once, in order."""
    stream = b"".join(line + b"\n" for line in lines) + tail
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    framer = LineFramer()
    out: list[bytes] = []
    for start, end in itertools.pairwise(bounds):
        out.extend(framer.feed(stream[start:end]))
    assert out == lines
    assert framer.finish() == (tail or None)


# A subscriber of the reader property below: how it reads, whether it is lossless, and every
# how many items it lets other tasks run (0: never).
_Reader = tuple[str, bool, int]


async def _consume(stream: MessageStream, how: str, pause_every: int) -> tuple[list[bytes], int]:
    """What a subscriber receives, and how many messages it was told it lost."""
    got: list[bytes] = []
    lost = 0
    items = stream.batches() if how == "batches" else stream
    while True:
        try:
            async for item in items:
                got.extend(m.to_bytes() for m in (item if isinstance(item, list) else [item]))
                if pause_every and len(got) % pause_every == 0:
                    for _ in range(3):  # a slow subscriber: the reader goes on meanwhile
                        await asyncio.sleep(0)
            return got, lost
        except LostMessagesError as exc:
            lost += exc.count


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=400),
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=20),
    capacity=st.integers(1, 8),
    readers=st.lists(
        st.tuples(st.sampled_from(["messages", "batches"]), st.booleans(), st.integers(0, 3)),
        min_size=1,
        max_size=4,
    ),
)
def test_reader_property_lossless_get_everything_lossy_lose_exactly_what_they_are_told(
    lines: list[bytes], cuts: list[int], capacity: int, readers: list[_Reader]
) -> None:
    """Lines written through a real pipe in any chunks, read by any mix of subscribers: each
    lossless one gets every line once, in order; each lossy one gets an in-order part of them
    and is told exactly how many it missed."""
    data = b"".join(line + b"\n" for line in lines)
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})

    def write_all(fd: int) -> None:
        with open(fd, "wb", buffering=0) as pipe:
            for start, end in itertools.pairwise(bounds):
                pipe.write(data[start:end])

    async def run() -> None:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        broadcast = Broadcast(capacity)
        streams = [broadcast.subscribe(lossless=lossless) for _, lossless, _ in readers]
        reader = MessageReader(read_end, broadcast)
        writer = threading.Thread(target=write_all, args=(write_end,))
        writer.start()
        try:
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        _consume(stream, how, every)
                        for stream, (how, _, every) in zip(streams, readers, strict=True)
                    )
                ),
                TIMEOUT,
            )
        finally:
            reader.close()
            await asyncio.to_thread(writer.join)
        for (got, lost), (_, lossless, _) in zip(results, readers, strict=True):
            if lossless:
                assert (got, lost) == (lines, 0)
            else:
                assert len(got) + lost == len(lines)
                remaining = iter(lines)
                assert all(line in remaining for line in got)  # an in-order part of them

    asyncio.run(run())


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=20),
    tail=st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    limit=st.integers(min_value=1, max_value=32),
)
def test_framing_property_with_a_limit(
    lines: list[bytes], tail: bytes, cuts: list[int], limit: int
) -> None:
    """Lines over the limit come out as SkippedLine with their exact size, in their place,
    whatever the cuts; no more than the limit is ever held."""
    stream = b"".join(line + b"\n" for line in lines) + tail
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    framer = LineFramer(max_line=limit)

    def seen(item: bytes | SkippedLine | None) -> object:
        if isinstance(item, SkippedLine):
            assert item.limit == limit
            return ("skipped", item.size)
        return item

    def expected(line: bytes) -> object:
        return line if len(line) <= limit else ("skipped", len(line))

    out: list[object] = []
    for start, end in itertools.pairwise(bounds):
        out.extend(map(seen, framer.feed(stream[start:end])))
        assert framer.pending_size <= limit
    assert out == [expected(line) for line in lines]
    assert framer.skipped == sum(len(line) > limit for line in lines)
    assert seen(framer.finish()) == (expected(tail) if tail else None)


def test_framer_huge_line_is_linear() -> None:
    framer = LineFramer()
    piece = b"x" * 65536
    for _ in range(800):  # 50 MiB; quadratic joining would take minutes
        assert framer.feed(piece) == []
    (line,) = framer.feed(b"\nnext")
    assert len(line) == 800 * 65536
    assert framer.finish() == b"next"


# --- the broadcast buffer --------------------------------------------------------------------


async def test_first_subscriber_gets_the_newest_buffered_later_ones_only_new() -> None:
    broadcast = Broadcast(3)
    publish_all(broadcast, ["1", "2", "3", "4", "5"])  # 1 and 2 dropped: nobody subscribed
    first = broadcast.subscribe()
    second = broadcast.subscribe()
    assert texts(await take(first, 3)) == ["3", "4", "5"]
    publish_all(broadcast, ["6"])
    broadcast.close()
    assert texts(await collect(first)) == ["6"]
    assert texts(await collect(second)) == ["6"]


async def test_after_close_only_the_first_subscriber_gets_the_buffer() -> None:
    broadcast = Broadcast(4)
    publish_all(broadcast, ["a", "b"])
    broadcast.close()
    assert broadcast.try_publish(msg("ignored"))  # discarded after the close
    assert texts(await collect(broadcast.subscribe())) == ["a", "b"]
    assert await collect(broadcast.subscribe()) == []


async def test_lag_raises_the_exact_lost_count_then_goes_on() -> None:
    broadcast = Broadcast(4)
    slow = broadcast.subscribe()
    fast = broadcast.subscribe()
    for i in range(10):
        publish_all(broadcast, [str(i)])
        assert texts(await take(fast, 1)) == [str(i)]
    with pytest.raises(LostMessagesError) as info:
        await anext(slow)
    assert info.value.count == 6
    assert texts(await take(slow, 4)) == ["6", "7", "8", "9"]
    publish_all(broadcast, [str(i) for i in range(10, 17)])  # 7 more: 3 lost
    with pytest.raises(LostMessagesError) as info:
        await anext(slow)
    assert info.value.count == 3
    broadcast.close()
    assert texts(await collect(slow)) == ["13", "14", "15", "16"]


# One step of the buffer property below: publish that many messages, or let subscriber i read
# one message ("one") or one batch ("batch").
_Step = tuple[str, int]
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(1, 12)),
        st.tuples(st.sampled_from(["one", "batch"]), st.integers(0, 2)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(1, 6), steps=_steps)
def test_buffer_property_messages_and_batches_lose_exactly_what_a_lag_says(
    capacity: int, steps: list[_Step]
) -> None:
    # The model: a subscriber fetches everything published from its position on; one more
    # than `capacity` behind the newest loses the oldest, reported first with the exact count.
    async def run() -> None:
        broadcast = Broadcast(capacity)
        streams = [broadcast.subscribe() for _ in range(3)]
        batches = [stream.batches() for stream in streams]
        published = 0
        pos = [0, 0, 0]  # the model's position of each subscriber: what it fetched
        fetched: list[list[int]] = [[], [], []]  # fetched by the model, not yet iterated
        for op, arg in steps:
            if op == "publish":
                publish_all(broadcast, [str(published + i) for i in range(arg)])
                published += arg
                continue
            if not fetched[arg] and pos[arg] == published:
                continue  # it would wait
            expected_lost = 0
            if not fetched[arg]:
                oldest = published - capacity
                if pos[arg] < oldest:
                    expected_lost = oldest - pos[arg]
                    pos[arg] = oldest
                else:
                    fetched[arg] = list(range(pos[arg], published))
                    pos[arg] = published
            if expected_lost:
                with pytest.raises(LostMessagesError) as info:
                    await anext(batches[arg] if op == "batch" else streams[arg])
                assert info.value.count == expected_lost
            elif op == "batch":
                got = await anext(batches[arg])
                assert [int(t) for t in texts(got)] == fetched[arg]
                fetched[arg] = []
            else:
                assert int((await anext(streams[arg])).to_string()) == fetched[arg].pop(0)
        broadcast.close()
        for i, stream in enumerate(streams):
            rest = [
                m for batch in await collect(stream.ignore_lost_messages().batches()) for m in batch
            ]
            assert [int(t) for t in texts(rest)][: len(fetched[i])] == fetched[i]

    asyncio.run(run())


async def test_batches_hold_what_is_there_at_most_the_capacity_and_end_with_the_stream() -> None:
    broadcast = Broadcast(4)
    batches = broadcast.subscribe().batches()
    publish_all(broadcast, ["a", "b"])
    assert texts(await anext(batches)) == ["a", "b"]
    waiting = asyncio.ensure_future(anext(batches))
    await asyncio.sleep(0)
    assert not waiting.done()
    publish_all(broadcast, ["c"])
    assert texts(await asyncio.wait_for(waiting, TIMEOUT)) == ["c"]
    publish_all(broadcast, [str(i) for i in range(6)])  # 2 lost
    with pytest.raises(LostMessagesError) as info:
        await anext(batches)
    assert info.value.count == 2
    broadcast.close()
    assert [texts(b) for b in await collect(batches)] == [["2", "3", "4", "5"]]


async def test_ignore_lost_messages_skips_the_gap() -> None:
    broadcast = Broadcast(2)
    stream = broadcast.subscribe().ignore_lost_messages()
    publish_all(broadcast, ["a", "b", "c", "d", "e"])
    broadcast.close()
    assert texts(await collect(stream)) == ["d", "e"]


async def test_lost_message_error_names_the_process() -> None:
    process_id = ProcessId.new()
    broadcast = Broadcast(1, process_id=process_id)
    stream = broadcast.subscribe()
    publish_all(broadcast, ["a", "b", "c"])
    with pytest.raises(LostMessagesError) as info:
        await anext(stream)
    assert info.value.process_id == process_id
    assert str(process_id) in str(info.value)
    assert info.value.count == 2


async def test_a_waiting_read_wakes_on_publish_and_on_close() -> None:
    broadcast = Broadcast(4)
    stream = broadcast.subscribe()
    pending = asyncio.ensure_future(anext(stream))
    await settle(lambda: bool(broadcast._read_waiters))
    publish_all(broadcast, ["x"])
    assert (await asyncio.wait_for(pending, TIMEOUT)).to_string() == "x"
    pending = asyncio.ensure_future(anext(stream))
    await settle(lambda: bool(broadcast._read_waiters))
    broadcast.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, TIMEOUT)


async def test_cancelled_read_loses_nothing() -> None:
    broadcast = Broadcast(4)
    stream = broadcast.subscribe()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(stream), 0.01)
    assert not broadcast._read_waiters
    publish_all(broadcast, ["kept"])
    assert texts(await take(stream, 1)) == ["kept"]


async def test_lossless_subscriber_makes_the_producer_wait() -> None:
    broadcast = Broadcast(2)
    lossless = broadcast.subscribe(lossless=True)
    lossy = broadcast.subscribe()
    publish_all(broadcast, ["0", "1"])
    assert not broadcast.try_publish(msg("2"))  # full, and the lossless one needs "0"
    producer = asyncio.ensure_future(broadcast.publish(msg("2")))
    await asyncio.sleep(0)
    assert not producer.done()
    assert texts(await take(lossless, 1)) == ["0"]
    await asyncio.wait_for(producer, TIMEOUT)
    broadcast.close()
    assert texts(await collect(lossless)) == ["1", "2"]
    # The lossy one is not waited for: "0" was dropped for it as soon as the lossless one had it.
    got = await outcomes(lossy)
    assert isinstance(got[0], LostMessagesError)
    assert got[0].count == 1
    assert texts(got[1:]) == ["1", "2"]


@pytest.mark.parametrize("how", ["aclose", "garbage-collected"])
async def test_an_abandoned_lossless_stream_releases_the_producer(how: str) -> None:
    broadcast = Broadcast(2)
    stream: MessageStream | None = broadcast.subscribe(lossless=True)
    publish_all(broadcast, ["0", "1"])
    producer = asyncio.ensure_future(broadcast.publish(msg("2")))
    await asyncio.sleep(0)
    assert not producer.done()
    assert stream is not None
    if how == "aclose":
        await stream.aclose()
        assert await collect(stream) == []
    else:
        del stream
        gc.collect()
    await asyncio.wait_for(producer, TIMEOUT)
    assert len(broadcast) == 0  # nobody is left to read anything


async def test_messages_everybody_read_are_released() -> None:
    broadcast = Broadcast(8)
    a, b = broadcast.subscribe(), broadcast.subscribe()
    publish_all(broadcast, ["1", "2", "3"])
    await take(a, 3)
    assert len(broadcast) == 3  # b still needs them
    await take(b, 2)
    # b's first read fetched all three into its stream (fetched counts as read), so none is
    # left in the buffer even though b has iterated only two.
    assert len(broadcast) == 0
    del b
    gc.collect()
    # Nothing is left to release in the buffer: wait for b's subscription itself to go.
    await settle(lambda: len(broadcast._subscribers) == 1)
    await a.aclose()
    publish_all(broadcast, ["4"])  # nobody subscribed any more: nothing is kept
    assert len(broadcast) == 0
    late = broadcast.subscribe()
    publish_all(broadcast, ["5"])
    broadcast.close()
    assert texts(await collect(late)) == ["5"]


async def test_aclose_ends_a_read_waiting_in_another_task() -> None:
    broadcast = Broadcast(2)
    stream = broadcast.subscribe()
    reading = asyncio.ensure_future(collect(stream))
    await settle(lambda: bool(broadcast._read_waiters))
    async with stream:
        pass
    assert await asyncio.wait_for(reading, TIMEOUT) == []


async def test_adapters() -> None:
    process_id = ProcessId.new()
    broadcast = Broadcast(16, process_id=process_id)
    strings = broadcast.subscribe().strings()
    raw = broadcast.subscribe().raw()
    decoded = broadcast.subscribe().decoded(MessageFormat.JSON, dict[str, int])
    chained = broadcast.subscribe().ignore_lost_messages().decoded("json")
    for data in (b'{"a": 1}', b"\xff", b'{"a": "x"}', b"[2]"):
        assert broadcast.try_publish(Message(data))
    broadcast.close()

    got = await outcomes(strings)
    assert [got[0], got[2], got[3]] == ['{"a": 1}', '{"a": "x"}', "[2]"]
    assert isinstance(got[1], ReceiveDeserializedMessageError)
    assert got[1].data == b"\xff"
    assert got[1].process_id == process_id
    assert str(process_id) in str(got[1])
    assert "UTF-8" in str(got[1])

    assert await collect(raw) == [b'{"a": 1}', b"\xff", b'{"a": "x"}', b"[2]"]

    got = await outcomes(decoded)
    assert got[0] == {"a": 1}
    assert isinstance(got[1], ReceiveDeserializedMessageError)
    assert isinstance(got[2], ReceiveDeserializedMessageError)
    assert "Expected `int`, got `str`" in str(got[2])
    assert isinstance(got[3], ReceiveDeserializedMessageError)
    assert "Expected `object`, got `array`" in str(got[3])

    got = await outcomes(chained)
    assert [got[0], got[2], got[3]] == [{"a": 1}, {"a": "x"}, [2]]


async def test_lost_messages_through_an_adapter() -> None:
    broadcast = Broadcast(1)
    strings = broadcast.subscribe().strings()
    publish_all(broadcast, ["a", "b"])
    broadcast.close()
    got = await outcomes(strings)
    assert isinstance(got[0], LostMessagesError)
    assert got[0].count == 1
    assert got[1:] == ["b"]
    broadcast = Broadcast(1)
    skipping = broadcast.subscribe().strings().ignore_lost_messages()
    publish_all(broadcast, ["a", "b"])
    broadcast.close()
    assert await collect(skipping) == ["b"]


async def test_a_stream_iterated_from_another_threads_loop() -> None:
    broadcast = Broadcast(4, process_id=ProcessId.new())
    stream = broadcast.subscribe()
    lossless = broadcast.subscribe(lossless=True)
    publish_all(broadcast, ["0", "1", "2", "3"])
    assert not broadcast.try_publish(msg("4"))  # the lossless one has read nothing yet
    loop = asyncio.get_running_loop()
    waiting: asyncio.Future[None] = loop.create_future()
    owner_thread = threading.get_ident()

    async def consume() -> tuple[list[str], list[str]]:
        assert asyncio.get_running_loop() is not loop
        strings = stream.strings()
        got = [await anext(strings) for _ in range(4)]
        loop.call_soon_threadsafe(waiting.set_result, None)  # let the owner publish more
        async with lossless:  # closed from this thread: the producer must be released
            first = [(await anext(lossless)).to_string() for _ in range(2)]
        got += [text async for text in strings]
        return got, first

    worker = asyncio.ensure_future(in_thread(consume()))
    await asyncio.wait_for(waiting, TIMEOUT)
    assert threading.get_ident() == owner_thread
    await asyncio.wait_for(broadcast.publish(msg("4")), TIMEOUT)
    await asyncio.wait_for(broadcast.publish(msg("5")), TIMEOUT)
    broadcast.close()
    got, first = await asyncio.wait_for(worker, TIMEOUT)
    assert got == ["0", "1", "2", "3", "4", "5"]
    assert first == ["0", "1"]


async def test_lost_messages_cross_threads() -> None:
    broadcast = Broadcast(2)
    stream = broadcast.subscribe()
    publish_all(broadcast, ["a", "b", "c", "d"])
    broadcast.close()

    async def consume() -> list[str | int]:
        got: list[str | int] = []
        while True:
            try:
                got.append((await anext(stream)).to_string())
            except LostMessagesError as exc:
                got.append(exc.count)
            except StopAsyncIteration:
                return got

    assert await asyncio.wait_for(in_thread(consume()), TIMEOUT) == [
        2,
        "c",
        "d",
    ]


def test_a_stream_whose_loop_is_closed_ends() -> None:
    async def make() -> MessageStream:
        broadcast = Broadcast(2)
        stream = broadcast.subscribe()
        publish_all(broadcast, ["a"])
        return stream

    stream = asyncio.run(make())

    async def read() -> list[Message]:
        return [m async for m in stream]

    assert asyncio.run(read()) == []


def test_capacity_must_be_positive() -> None:
    loop = asyncio.new_event_loop()
    try:
        for bad in (0, -1, True, 1.5):
            with pytest.raises(ValueError, match="capacity"):
                Broadcast(bad, loop=loop)  # type: ignore[arg-type]
    finally:
        loop.close()


# --- FIFOs and pipes -------------------------------------------------------------------------


def test_make_fifo_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o777)
    try:
        path = make_fifo(tmp_path / "f")
    finally:
        os.umask(old)
    mode = os.stat(path).st_mode
    assert stat.S_ISFIFO(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_parent_end_opens_at_once_without_a_peer(tmp_path: Path) -> None:
    fd = open_fifo_parent_end(make_fifo(tmp_path / "f"))
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        assert flags & os.O_ACCMODE == os.O_RDWR
        assert flags & os.O_NONBLOCK
        assert not os.get_inheritable(fd)
        with pytest.raises(BlockingIOError):  # no data, and never EOF
            os.read(fd, 1)
    finally:
        os.close(fd)


def test_set_pipe_size_is_best_effort(tmp_path: Path) -> None:
    r, w = os.pipe()
    try:
        assert set_pipe_size(r, 256 * 1024) == 256 * 1024
        maximum = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        assert set_pipe_size(r, 1 << 40) == maximum  # capped
    finally:
        os.close(r)
        os.close(w)
    with open(tmp_path / "file", "wb") as f:
        assert set_pipe_size(f.fileno(), 256 * 1024) is None  # not a pipe


# --- real children: round trips --------------------------------------------------------------


@pytest.mark.parametrize("fifo", [False, True], ids=["stdio", "fifo"])
async def test_echo_child_round_trip(spawn: Spawn, fifo: bool) -> None:
    baseline = fd_count()
    child = await spawn(["bash", "-c", ECHO_FIFO_SH if fifo else ECHO_SH], fifo=fifo)
    stream = child.broadcast.subscribe()
    for text in ["hello", "  spaced  \t", "back\\slash", "ünïcödé", "x" * 10_000]:
        await child.send(text)
        assert texts(await take(stream, 1)) == [text]
    await child.send("")  # sends nothing
    await child.send("\n")  # an empty message
    await child.send("end\n")
    assert texts(await take(stream, 2)) == ["", "end"]
    await child.send(b"raw \xff bytes")
    assert (await take(stream, 1))[0].to_bytes() == b"raw \xff bytes"
    if fifo:
        child.proc.kill()  # INPUT_PIPE never ends: the parent holds it open
    else:
        assert child.writer is not None
        child.writer.close()  # EOF on stdin: the loop ends
    await child.exited()
    assert await collect(stream) == []
    await child.reader.wait_closed()
    assert fd_count() == baseline


@pytest.mark.parametrize("fifo", [False, True], ids=["stdio", "fifo"])
async def test_10000_messages_in_order_and_once(spawn: Spawn, fifo: bool) -> None:
    broadcast = Broadcast(16)
    stream = broadcast.subscribe(lossless=True)
    child = await spawn([sys.executable, "-c", ECHO_PY], fifo=fifo, broadcast=broadcast)
    received = asyncio.ensure_future(take(stream, 10_000))
    for i in range(10_000):
        await child.send(f"message {i}")
    assert texts(await received) == [f"message {i}" for i in range(10_000)]


async def test_10000_messages_through_a_bash_echo(spawn: Spawn) -> None:
    broadcast = Broadcast(16)
    stream = broadcast.subscribe()  # lossy, but it keeps up: the reader publishes in batches
    child = await spawn(["bash", "-c", ECHO_SH], broadcast=broadcast)
    assert child.writer is not None
    for i in range(10_000):
        child.writer.enqueue(encode_outgoing(str(i)))  # all at once, without waiting
    assert texts(await take(stream, 10_000)) == [str(i) for i in range(10_000)]


@pytest.mark.parametrize(
    ("size", "fifo"), [(1 << 20, False), (1 << 20, True), (50 << 20, False)], ids=str
)
async def test_huge_single_message(spawn: Spawn, size: int, fifo: bool) -> None:
    broadcast = Broadcast(2)
    stream = broadcast.subscribe()
    child = await spawn([sys.executable, "-c", ECHO_PY], fifo=fifo, broadcast=broadcast)
    payload = bytes(range(256)).replace(b"\n", b"") * (size // 255 + 1)
    payload = payload[:size]
    received = asyncio.ensure_future(take(stream, 2))
    await child.send(payload)
    await child.send(b"after")
    got = await received
    assert len(got[0]) == size
    assert got[0].to_bytes() == payload
    assert got[1].to_bytes() == b"after"


async def test_concurrent_big_sends_never_interleave(spawn: Spawn) -> None:
    broadcast = Broadcast(16)
    stream = broadcast.subscribe(lossless=True)
    child = await spawn([sys.executable, "-c", ECHO_PY], broadcast=broadcast)
    lines = [bytes([65 + i % 26]) * 100_000 for i in range(40)]  # each far above PIPE_BUF
    received = asyncio.ensure_future(take(stream, 40))
    await asyncio.gather(*(child.send(line) for line in lines))
    got = [m.to_bytes() for m in await received]
    assert sorted(got) == sorted(lines)
    assert got == lines  # and in the order the sends were made


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=12, deadline=None)
@given(values=st.lists(json_like, min_size=1, max_size=8), fmt=st.sampled_from(list(MessageFormat)))
def test_round_trip_through_a_bash_echo_child(values: list[Any], fmt: MessageFormat) -> None:
    """Parent -> bash child -> parent, byte-exact, in every format."""

    async def run() -> None:
        spawner = Spawner(Path("/nonexistent"))
        try:
            broadcast = Broadcast(len(values))
            stream = broadcast.subscribe()
            child = await spawner(["bash", "-c", ECHO_SH], broadcast=broadcast)
            sent = [Message.from_serializable(value, fmt) for value in values]
            for message in sent:
                await child.send(message)
            got = await take(stream, len(values))
            assert got == sent
            assert [m.deserialize(fmt) for m in got] == values
        finally:
            await spawner.cleanup()

    asyncio.run(run())


# --- real children: many subscribers, lag, backpressure --------------------------------------

#: Print argv[1] numbered lines as fast as possible.
COUNT_PY = """\
import sys
out = sys.stdout.buffer
for i in range(int(sys.argv[1])):
    out.write(b"%d\\n" % i)
"""


@pytest.mark.parametrize("subscribers", [2, 50])
async def test_every_subscriber_gets_every_message(spawn: Spawn, subscribers: int) -> None:
    broadcast = Broadcast(16)
    streams = [broadcast.subscribe(lossless=True) for _ in range(subscribers)]
    child = await spawn(
        [sys.executable, "-c", COUNT_PY, "2000"], broadcast=broadcast, message_input=False
    )
    results = await asyncio.gather(*(collect(s) for s in streams))
    expected = [str(i) for i in range(2000)]
    assert all(texts(r) == expected for r in results)
    assert await child.exited() == 0


async def test_ten_lossless_subscribers_in_batches_get_every_message(spawn: Spawn) -> None:
    broadcast = Broadcast(64)
    streams = [broadcast.subscribe(lossless=True).batches() for _ in range(10)]
    child = await spawn(
        [sys.executable, "-c", COUNT_PY, "20000"], broadcast=broadcast, message_input=False
    )
    results = await asyncio.gather(*(collect(s) for s in streams))
    expected = [str(i) for i in range(20000)]
    for batches in results:
        assert all(0 < len(batch) <= 64 for batch in batches)
        assert [text for batch in batches for text in texts(batch)] == expected
    assert await child.exited() == 0


async def test_lossy_subscribers_that_keep_up_lose_nothing(spawn: Spawn) -> None:
    broadcast = Broadcast(16)
    streams = [broadcast.subscribe() for _ in range(3)]
    await spawn([sys.executable, "-c", COUNT_PY, "20000"], broadcast=broadcast, message_input=False)
    results = await asyncio.gather(*(collect(s) for s in streams))
    assert all(texts(r) == [str(i) for i in range(20000)] for r in results)


async def test_a_subscriber_that_keeps_up_pulls_a_burst_without_loop_turns(spawn: Spawn) -> None:
    # 10,000 lines in one write (48,890 bytes: one pipe read). A subscriber that has read its
    # batch pulls the next one itself: without that, each batch of 16 costs a loop turn (625).
    burst = "import os; os.write(1, b''.join(b'%d\\n' % i for i in range(10000)))"
    broadcast = Broadcast(16)
    stream = broadcast.subscribe(lossless=True)
    await spawn([sys.executable, "-c", burst], broadcast=broadcast, message_input=False)
    first = await take(stream, 1)
    with LoopTurns() as turns:
        rest = await take(stream, 9999)
    assert texts(first + rest) == [str(i) for i in range(10000)]
    assert turns.count < 50, f"{turns.count} loop turns for 625 batches"


async def test_a_lagging_subscriber_gets_the_exact_lost_count(spawn: Spawn) -> None:
    broadcast = Broadcast(10)
    stream = broadcast.subscribe()
    child = await spawn(
        [sys.executable, "-c", COUNT_PY, "100"], broadcast=broadcast, message_input=False
    )
    await asyncio.wait_for(child.reader.wait_closed(), TIMEOUT)  # everything read, nothing taken
    with pytest.raises(LostMessagesError) as info:
        await anext(stream)
    assert info.value.count == 90
    assert texts(await collect(stream)) == [str(i) for i in range(90, 100)]


#: Write argv[1] numbered lines to a non-blocking stdout; say "BLOCKED" on stderr the first
#: time the pipe is full, then wait for room.
FLOOD_PY = """\
import os, select, sys
os.set_blocking(1, False)
reported = False
for i in range(int(sys.argv[1])):
    data = b"%d\\n" % i
    while data:
        try:
            data = data[os.write(1, data):]
        except BlockingIOError:
            if not reported:
                reported = True
                os.write(2, b"BLOCKED\\n")
            select.select([], [1], [])
"""


async def test_lossless_slow_subscriber_throttles_the_child(spawn: Spawn) -> None:
    count = 100_000  # ~590 KB: more than the buffer and the pipe hold
    broadcast = Broadcast(8)
    stream = broadcast.subscribe(lossless=True)
    child = await spawn(
        [sys.executable, "-c", FLOOD_PY, str(count)],
        broadcast=broadcast,
        message_input=False,
        stderr=asyncio.subprocess.PIPE,
    )
    assert child.proc.stderr is not None
    # Nobody reads the stream: the reader must stop, and the child must find its pipe full.
    assert await asyncio.wait_for(child.proc.stderr.readline(), TIMEOUT) == b"BLOCKED\n"
    await settle(lambda: child.reader.paused)
    assert len(broadcast) == 8
    assert child.proc.returncode is None
    unread = array.array("i", [0])
    fcntl.ioctl(child.reader._fd, termios.FIONREAD, unread)
    capacity = fcntl.fcntl(child.reader._fd, fcntl.F_GETPIPE_SZ)
    assert unread[0] > capacity // 2  # the pipe filled up: backpressure reached the child
    # Now read slowly-but-surely: nothing is lost, and the child finishes.
    assert texts(await collect(stream)) == [str(i) for i in range(count)]
    assert await child.exited() == 0


# --- real children: writing ------------------------------------------------------------------

#: Wait until one byte arrives on fd argv[1], then echo stdin to stdout.
GATED_ECHO_PY = """\
import os, sys
os.read(int(sys.argv[1]), 1)
for line in sys.stdin.buffer:
    sys.stdout.buffer.write(line)
    sys.stdout.buffer.flush()
"""


async def test_a_child_that_does_not_read_blocks_only_its_sender(spawn: Spawn) -> None:
    gate_r, gate_w = os.pipe()
    try:
        broadcast = Broadcast(4)
        stream = broadcast.subscribe()
        child = await spawn(
            [sys.executable, "-c", GATED_ECHO_PY, str(gate_r)],
            broadcast=broadcast,
            pass_fds=(gate_r,),
        )
        assert child.writer is not None
        big = b"A" * (1 << 20)
        # The pipe holds far less than 1 MiB: the send waits, and is cancelled by the timeout
        # with part of the message already in the pipe.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(child.writer.send(big + b"\n"), 0.05)
        # A send that has not started yet is withdrawn when cancelled.
        withdrawn = child.writer.enqueue(b"B\n")
        assert withdrawn is not None  # queued behind the unfinished message
        withdrawn.cancel()
        last = asyncio.ensure_future(child.writer.send(b"C\n"))
        # Meanwhile another child is served as usual.
        other = await spawn(["bash", "-c", ECHO_SH])
        other_stream = other.broadcast.subscribe()
        await other.send("unaffected")
        assert texts(await take(other_stream, 1)) == ["unaffected"]
        assert not last.done()
        os.write(gate_w, b"go")
        await asyncio.wait_for(last, TIMEOUT)
        child.writer.close()
        got = await collect(stream)
        assert [m.to_bytes() for m in got] == [big, b"C"]
    finally:
        os.close(gate_r)
        os.close(gate_w)


async def test_writing_to_a_dead_child_raises(spawn: Spawn) -> None:
    child = await spawn(["true"])
    await asyncio.wait_for(child.proc.wait(), TIMEOUT)
    assert child.writer is not None
    with pytest.raises(WriteMessageError, match="broken pipe"):
        await child.send("hello")
    with pytest.raises(WriteMessageError, match="broken pipe"):  # and every later send
        await child.send("again")
    assert child.writer.closed


@pytest.mark.parametrize(
    ("fifo", "reason"), [(False, "broken pipe"), (True, "has exited")], ids=["stdio", "fifo"]
)
async def test_a_pending_send_fails_when_the_child_dies(
    spawn: Spawn, fifo: bool, reason: str
) -> None:
    process_id = ProcessId.new()
    # `sleep` never reads; with a FIFO it does not even open INPUT_PIPE, and the parent's open
    # did not block.
    child = await spawn(["sleep", "60"], fifo=fifo, process_id=process_id)
    assert child.writer is not None
    sending = asyncio.ensure_future(child.writer.send(b"x" * (1 << 20) + b"\n"))
    await asyncio.sleep(0)
    assert not sending.done()
    child.proc.kill()
    if fifo:  # the parent's end of a FIFO never gets EPIPE: the exit notice ends the wait
        await child.exited()
    with pytest.raises(WriteMessageError, match=reason) as info:
        await asyncio.wait_for(sending, TIMEOUT)
    assert info.value.process_id == process_id
    assert str(process_id) in str(info.value)
    with pytest.raises(WriteMessageError, match=reason):  # and every later send
        await child.send("later")


async def test_send_after_close_raises() -> None:
    r, w = os.pipe()
    writer = MessageWriter(w)
    await writer.send(b"ok\n")
    writer.close()
    with pytest.raises(WriteMessageError, match="was closed"):
        await writer.send(b"late\n")
    assert os.read(r, 10) == b"ok\n"
    assert os.read(r, 10) == b""  # the writer closed its fd
    os.close(r)


# --- real children: what comes out ----------------------------------------------------------

#: Lines that are good, bad, or half of something, in every format.
GARBAGE_PY = """\
import base64, sys
packed = bytes.fromhex("81a26f6b01")  # MessagePack for {"ok": 1}
out = sys.stdout.buffer
out.write(b'{"ok": 1}\\n')
out.write(base64.b64encode(packed) + b"\\n")
out.write(base64.b64encode(packed[:3]) + b"\\n")  # valid base64 of a truncated value
out.write(b"not anything\\n")
out.write(b"\\xff\\xfe invalid utf-8\\n")
out.write(b'{"ok": 2}\\n')
"""


async def test_garbage_from_the_child_fails_per_item(spawn: Spawn) -> None:
    process_id = ProcessId.new()
    broadcast = Broadcast(16, process_id=process_id)
    strings = broadcast.subscribe().strings()
    json_items = broadcast.subscribe().decoded(MessageFormat.JSON)
    msgpack_items = broadcast.subscribe().decoded(MessageFormat.MESSAGE_PACK_BASE64)
    await spawn([sys.executable, "-c", GARBAGE_PY], broadcast=broadcast, message_input=False)

    got = await outcomes(strings)
    assert len(got) == 6
    assert got[:4] == ['{"ok": 1}', "gaJvawE=", "gaJv", "not anything"]
    assert isinstance(got[4], ReceiveDeserializedMessageError)
    assert got[4].data == b"\xff\xfe invalid utf-8"
    assert got[5] == '{"ok": 2}'

    got = await outcomes(json_items)
    assert [got[0], got[5]] == [{"ok": 1}, {"ok": 2}]
    assert all(isinstance(item, ReceiveDeserializedMessageError) for item in got[1:5])

    got = await outcomes(msgpack_items)
    assert got[1] == {"ok": 1}
    bad = [got[i] for i in (0, 2, 3, 4, 5)]
    assert all(isinstance(item, ReceiveDeserializedMessageError) for item in bad)
    assert all(item.process_id == process_id for item in bad)


#: Values nested 100,000 deep (JSON, then MessagePack in base64), then a good message.
DEEP_PY = """\
import base64, sys
out = sys.stdout.buffer
out.write(b"[" * 100_000 + b"\\n")
out.write(base64.b64encode(b"\\x91" * 100_000 + b"\\xc0") + b"\\n")
out.write(b'{"ok": 1}\\n')
"""


@pytest.mark.parametrize("fmt", [MessageFormat.JSON, MessageFormat.MESSAGE_PACK_BASE64])
async def test_a_deeply_nested_message_fails_its_item_and_the_stream_goes_on(
    spawn: Spawn, fmt: MessageFormat
) -> None:
    broadcast = Broadcast(16)
    items = broadcast.subscribe().decoded(fmt)
    await spawn([sys.executable, "-c", DEEP_PY], broadcast=broadcast, message_input=False)
    got = await outcomes(items, ReceiveDeserializedMessageError)
    assert len(got) == 3
    deep = 0 if fmt is MessageFormat.JSON else 1
    assert isinstance(got[deep], ReceiveDeserializedMessageError)
    assert "nested too deeply" in str(got[deep])
    assert isinstance(got[1 - deep], ReceiveDeserializedMessageError)  # the other format's
    if fmt is MessageFormat.JSON:
        assert got[2] == {"ok": 1}


#: Write a whole line and half of another, then die by SIGKILL.
DIE_MID_MESSAGE_PY = """\
import os, sys
out = open(os.environ["OUTPUT_PIPE"], "wb") if os.environ.get("OUTPUT_PIPE") else sys.stdout.buffer
out.write(b"whole\\npartial")
out.flush()
os.kill(os.getpid(), 9)
"""


@pytest.mark.parametrize("fifo", [False, True], ids=["stdio", "fifo"])
async def test_a_child_dying_mid_message_reports_the_cut_off_line(spawn: Spawn, fifo: bool) -> None:
    process_id = ProcessId.new()
    child = await spawn(
        [sys.executable, "-c", DIE_MID_MESSAGE_PY], fifo=fifo, process_id=process_id
    )
    stream = child.broadcast.subscribe()
    reading = asyncio.ensure_future(outcomes(stream, ReceiveMessageError))
    assert await child.exited() == -9
    got = await reading
    assert got[0] == msg("whole")
    assert isinstance(got[1], IncompleteMessageError)
    assert (got[1].data, got[1].process_id) == (b"partial", process_id)
    assert len(got) == 2


#: Write a whole line and half of another, then exit normally.
EXIT_MID_MESSAGE_PY = DIE_MID_MESSAGE_PY.replace("os.kill(os.getpid(), 9)", "sys.exit(3)")


@pytest.mark.parametrize("fifo", [False, True], ids=["stdio", "fifo"])
async def test_a_child_exiting_mid_message_delivers_the_last_line(spawn: Spawn, fifo: bool) -> None:
    child = await spawn([sys.executable, "-c", EXIT_MID_MESSAGE_PY], fifo=fifo)
    stream = child.broadcast.subscribe()
    reading = asyncio.ensure_future(collect(stream))
    assert await child.exited() == 3
    assert texts(await reading) == ["whole", "partial"]


#: Lines around a limit of 100 bytes: one at it, one over it by far (never held whole), a last
#: one over it without a newline.
OVER_LIMIT_PY = """\
import os, sys
out = open(os.environ["OUTPUT_PIPE"], "wb") if os.environ.get("OUTPUT_PIPE") else sys.stdout.buffer
out.write(b"first\\n" + b"a" * 100 + b"\\n")
for _ in range(64):
    out.write(b"b" * 65536)
    out.flush()
out.write(b"\\nafter\\n" + b"c" * 101)
"""
LIMIT = 100


@pytest.mark.parametrize("fifo", [False, True], ids=["stdio", "fifo"])
async def test_a_line_over_max_message_bytes_is_skipped_counted_and_never_held(
    spawn: Spawn, fifo: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = 0
    feed = LineFramer.feed

    def watched(self: LineFramer, chunk: bytes) -> list[bytes | SkippedLine]:
        nonlocal held
        lines = feed(self, chunk)
        held = max(held, self.pending_size)
        return lines

    monkeypatch.setattr(LineFramer, "feed", watched)
    process_id = ProcessId.new()
    child = await spawn(
        [sys.executable, "-c", OVER_LIMIT_PY],
        fifo=fifo,
        process_id=process_id,
        max_message_bytes=LIMIT,
    )
    streams = [child.broadcast.subscribe(), child.broadcast.subscribe().raw()]
    batches = child.broadcast.subscribe().batches()
    readings = [asyncio.ensure_future(outcomes(s, ReceiveMessageError)) for s in streams]
    reading_batches = asyncio.ensure_future(outcomes(batches, ReceiveMessageError))
    assert await child.exited() == 0
    messages, raw = await asyncio.gather(*readings)

    def same(item: object) -> object:
        if isinstance(item, MessageTooLongError):
            return (item.size, item.limit)
        return item.to_bytes() if isinstance(item, Message) else item

    assert list(map(same, messages)) == list(map(same, raw))
    assert len(raw) == 5
    assert raw[0:2] == [b"first", b"a" * LIMIT]
    assert raw[3] == b"after"
    for error, size in ((raw[2], 64 * 65536), (raw[4], LIMIT + 1)):
        assert isinstance(error, MessageTooLongError)
        assert (error.size, error.limit, error.process_id) == (size, LIMIT, process_id)
        assert str(size) in str(error)
        assert str(process_id) in str(error)
    # Never more than the limit held, whatever the pipe's chunks (one read is at most 64 KiB).
    assert held <= LIMIT
    # Batches stop before a skipped line, which comes alone as the error.
    batched = await reading_batches
    flat = [m.to_bytes() for item in batched if isinstance(item, list) for m in item]
    assert flat == [raw[0], raw[1], raw[3]]
    errors = [item for item in batched if not isinstance(item, list)]
    assert [e.size for e in errors] == [64 * 65536, LIMIT + 1]


#: Reopen OUTPUT_PIPE for every message; wait for a line on stdin before the last batch.
REOPEN_SH = r"""for i in 1 2 3; do echo "m$i" >"$OUTPUT_PIPE"; done
read -r _
for i in $(seq 4 200); do echo "m$i" >"$OUTPUT_PIPE"; done"""


async def test_a_child_reopening_output_pipe_per_message(
    spawn: Spawn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    on_readable = MessageReader._on_readable

    def counting(self: MessageReader) -> None:
        nonlocal calls
        calls += 1
        on_readable(self)

    monkeypatch.setattr(MessageReader, "_on_readable", counting)
    baseline = fd_count()
    gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
    child = await spawn(["bash", "-c", REOPEN_SH], fifo=True, stdin=gate_r)
    os.close(gate_r)
    stream = child.broadcast.subscribe()
    assert texts(await take(stream, 3)) == ["m1", "m2", "m3"]
    # The child closed its end three times and now waits: no EOF, and no wake-up storm.
    before = calls
    await asyncio.sleep(0.05)
    assert calls == before
    os.write(gate_w, b"go\n")
    os.close(gate_w)
    assert texts(await take(stream, 197)) == [f"m{i}" for i in range(4, 201)]
    assert await child.exited() == 0
    assert await collect(stream) == []
    assert child.reader.closed
    child.writer.close()  # type: ignore[union-attr]
    assert fd_count() == baseline


async def test_kill_ends_live_streams_cleanly(spawn: Spawn) -> None:
    child = await spawn(["sleep", "60"], fifo=True)
    streams = [child.broadcast.subscribe() for _ in range(3)]
    reading = [asyncio.ensure_future(collect(s)) for s in streams]
    await settle(lambda: len(child.broadcast._read_waiters) == 3)
    child.proc.kill()
    child.reader.close()  # what the manager's kill does
    assert await asyncio.gather(*reading) == [[], [], []]
    assert child.reader.closed
    assert await collect(child.broadcast.subscribe()) == []


# --- the same on uvloop ----------------------------------------------------------------------


@pytest.mark.parametrize("fifo", [False, True], ids=["stdio", "fifo"])
def test_core_scenarios_on_uvloop(tmp_path: Path, fifo: bool) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        spawner = Spawner(tmp_path)
        try:
            broadcast = Broadcast(4)
            stream = broadcast.subscribe(lossless=True)
            child = await spawner([sys.executable, "-c", ECHO_PY], fifo=fifo, broadcast=broadcast)
            received = asyncio.ensure_future(take(stream, 2001))
            for i in range(2000):
                await child.send(str(i))
            await child.send(b"b" * (3 << 20))
            got = await received
            assert texts(got[:-1]) == [str(i) for i in range(2000)]
            assert got[-1].to_bytes() == b"b" * (3 << 20)
            # A subscriber on another thread's (default) loop.
            other = broadcast.subscribe().strings()
            reading = asyncio.ensure_future(in_thread(take(other, 1)))
            await settle(lambda: bool(broadcast._read_waiters))
            await child.send("cross-thread")
            assert await asyncio.wait_for(reading, TIMEOUT) == ["cross-thread"]
            child.proc.kill()
            await child.exited()
            with pytest.raises(WriteMessageError):
                await child.send("too late")
            assert await collect(stream) == [Message(b"cross-thread")]
        finally:
            await spawner.cleanup()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
