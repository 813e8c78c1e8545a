"""Messaging end to end through the manager: real children over pipes and FIFOs.

Every test spawns its children through a ``ProcessManager.spawn(...)`` handle and talks to them
with ``send_message`` / ``subscribe_message_stream``. The building blocks (framing, the broadcast
buffer, readers and writers, the codecs, ``corral.child``) have their own tests; these check that
the manager wires them together as SPEC sections 5 and 9 promise a caller. Nothing sleeps to wait
for a condition: every wait is on an event, with a bound.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import random
import signal
import sys
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar, cast

import msgspec
import pytest
from conftest import (
    TIMEOUT,
    assert_no_zombie,
    collect,
    fd_count,
    outcomes,
    python_cmd,
    sleep_cmd,
    take,
)
from hypothesis import given, settings
from oracles import JSON_VALUES, MSGPACK_VALUES, Job, Point, Reading

from corral import (
    Cmd,
    CmdOptions,
    IncompleteMessageError,
    LoggingType,
    LostMessagesError,
    ManagerAbortedError,
    Message,
    MessageFormat,
    MessageStream,
    MessagingNotConfiguredError,
    MessagingType,
    ProcessHandle,
    ProcessId,
    ProcessInfo,
    ProcessManager,
    ProcessManagerHandle,
    ProcessNotFoundError,
    ReadMessageError,
    ReceiveDeserializedMessageError,
    ReceiveMessageError,
    Runnable,
    Script,
    ScriptingLanguage,
    SerdeError,
    WriteMessageError,
)

_T = TypeVar("_T")

STDIO = MessagingType.STANDARD_IO
PIPE = MessagingType.NAMED_PIPE
MiB = 1024 * 1024

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ECHO_SH = EXAMPLES / "echo_child.sh"
ECHO_PY = EXAMPLES / "echo_child.py"

#: Every way to wire the two directions: (message input, message output).
WIRINGS = [(STDIO, STDIO), (PIPE, PIPE), (STDIO, PIPE), (PIPE, STDIO)]
WIRING_IDS = ["stdio", "pipes", "stdio-in-pipe-out", "pipe-in-stdio-out"]

# --- children --------------------------------------------------------------------------------

#: A Script child built on ``corral.child``: echoes every message. With a format as argv[1] it
#: decodes each message and encodes the value again with the helper's own codecs, so a value
#: makes the trip msgspec -> corral.child -> msgspec.
VALUE_ECHO = """\
import sys
from corral import child

fmt = sys.argv[1] if len(sys.argv) > 1 else None
for value in child.messages(fmt):
    child.send(value, fmt)
"""

#: Prelude of the Python children below: ``out`` / ``inp`` are the message output / input, over
#: the FIFOs when corral set them, else stdout / stdin.
CHANNELS = """\
import os, sys
out = open(os.environ["OUTPUT_PIPE"], "wb") if os.environ.get("OUTPUT_PIPE") else sys.stdout.buffer
inp = open(os.environ["INPUT_PIPE"], "rb") if os.environ.get("INPUT_PIPE") else sys.stdin.buffer
"""

#: Writes the bytes given in hex as argv[1], then exits, or with a second argument SIGKILLs
#: itself (dies without a chance to finish anything).
WRITE_BYTES = (
    CHANNELS
    + """\
out.write(bytes.fromhex(sys.argv[1]))
out.flush()
if len(sys.argv) > 2:
    os.kill(os.getpid(), 9)
"""
)

#: Waits for one input line, then writes argv[1] numbered lines at once and exits.
GATED_LINES = (
    CHANNELS
    + """\
inp.readline()
out.write(b"".join(b"%d\\n" % i for i in range(int(sys.argv[1]))))
out.flush()
"""
)

#: Waits for one input line, then writes argv[1] messages of argv[2] bytes one by one, each
#: followed by its count on stderr: the progress the parent can follow in the stderr log.
PROGRESS_WRITER = (
    CHANNELS
    + """\
inp.readline()
n, size = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    out.write(b"%d " % i + b"x" * size + b"\\n")
    out.flush()
    sys.stderr.write(f"{i + 1}\\n")
    sys.stderr.flush()
"""
)

#: Writes argv[1] lines "a<i>", says "written" on stderr, waits for one input line, writes
#: argv[2] lines "b<i>" and exits.
TWO_PHASES = (
    CHANNELS
    + """\
out.write(b"".join(b"a%d\\n" % i for i in range(int(sys.argv[1]))))
out.flush()
sys.stderr.write("written\\n")
sys.stderr.flush()
inp.readline()
out.write(b"".join(b"b%d\\n" % i for i in range(int(sys.argv[2]))))
out.flush()
"""
)

#: Says "ready", then reads nothing until SIGUSR1, then echoes (corral.child, any wiring).
ECHO_AFTER_SIGUSR1 = """\
import signal
from corral import child

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
child.send("ready")
signal.sigwait({signal.SIGUSR1})
for line in child.messages():
    child.send(line)
"""

#: Floods its message output with "y" lines (on OUTPUT_PIPE when set) and never reads.
FLOOD_SH = 'if [[ -n ${OUTPUT_PIPE:-} ]]; then exec >"$OUTPUT_PIPE"; fi; exec yes'


def options(
    message_input: MessagingType | None = STDIO,
    message_output: MessagingType | None = STDIO,
    **more: Any,
) -> CmdOptions:
    return CmdOptions(message_input=message_input, message_output=message_output, **more)


def echo_child(kind: str, opts: CmdOptions) -> Runnable:
    """An echo child: the bash or Python example, or a Script on ``corral.child``."""
    if kind == "bash":
        return Cmd("bash", [str(ECHO_SH)], opts)
    if kind == "python":
        return Cmd(sys.executable, [str(ECHO_PY)], opts)
    assert kind == "script"
    return Script(ScriptingLanguage.PYTHON, VALUE_ECHO, options=opts)


def writer_child(
    data: bytes, output: MessagingType = STDIO, *, die: bool = False, **more: Any
) -> Cmd:
    """A child that writes ``data`` to its message output and exits (or SIGKILLs itself)."""
    args = [data.hex(), "die"] if die else [data.hex()]
    return python_cmd(WRITE_BYTES, *args, options=options(None, output, **more))


def gated_lines(count: int, output: MessagingType = STDIO, **more: Any) -> Cmd:
    """A child that writes ``count`` numbered lines at once after its first input line."""
    return python_cmd(GATED_LINES, str(count), options=options(STDIO, output, **more))


def numbers(count: int, start: int = 0) -> list[str]:
    return [str(i) for i in range(start, count)]


def pipe_max_size() -> int:
    with open("/proc/sys/fs/pipe-max-size") as f:
        return int(f.read())


# --- bounded waits ------------------------------------------------------------------------------


async def next_item(stream: AsyncIterator[_T], timeout: float = TIMEOUT) -> _T:
    """The next item of ``stream``."""
    return await asyncio.wait_for(anext(stream), timeout)


async def send_all(target: ProcessHandle, items: list[str]) -> None:
    for item in items:
        await target.send_message(item)


async def finished(task: Awaitable[_T]) -> _T:
    return await asyncio.wait_for(task, TIMEOUT)


async def first_line(follow: AsyncIterator[str]) -> str:
    """The first line of a ``follow_logs`` iterator, which is then closed."""
    try:
        return await next_item(follow)
    finally:
        await cast(AsyncGenerator[str, None], follow).aclose()


def succeeded(info: ProcessInfo) -> bool:
    return info.exit_status is not None and info.exit_status.success


async def assert_manager_works(handle: ProcessManagerHandle) -> None:
    """A fresh echo child answers: whatever happened before did not break the manager."""
    proc = await handle.spawn_with_handle(echo_child("bash", options(PIPE, STDIO)))
    stream = await proc.subscribe_message_stream()
    await proc.send_message("still working")
    assert (await next_item(stream)).to_string() == "still working"
    await proc.kill()
    assert await collect(stream) == []


# --- echo children, every wiring --------------------------------------------------------------

#: What the echo tests send: text, non-UTF-8 bytes, an empty line, an explicit newline.
ECHO_ITEMS: list[str | bytes | Message] = [
    "hello",
    "héllo wörld ✓ 漢字",
    "  spaces around  ",
    "tab\there, back\\slash, 'quotes' \"and\" $dollars *",
    "carriage\rreturn",
    "already terminated\n",
    "\n",  # one empty line
    b"\xff\xfe not UTF-8 \x80",
    Message.from_string("a Message"),
]


def on_the_wire(item: str | bytes | Message) -> bytes:
    """What the echo of ``item`` is: its bytes without the line's newline."""
    data = item.encode() if isinstance(item, str) else bytes(item)
    return data.removesuffix(b"\n")


@pytest.mark.parametrize(("message_input", "message_output"), WIRINGS, ids=WIRING_IDS)
@pytest.mark.parametrize("kind", ["bash", "python", "script"])
async def test_echo_child_round_trip_through_a_process_handle(
    manager: ProcessManagerHandle,
    kind: str,
    message_input: MessagingType,
    message_output: MessagingType,
) -> None:
    runnable = echo_child(kind, options(message_input, message_output))
    async with await manager.spawn_with_scoped_handle(runnable) as proc:
        stream = await proc.subscribe_message_stream()
        for item in ECHO_ITEMS:
            await proc.send_message(item)
        received = await take(stream.raw(), len(ECHO_ITEMS))
        assert received == [on_the_wire(item) for item in ECHO_ITEMS]
        # One more in lock-step, read as a Message and as text.
        await proc.send_message("last")
        assert await next_item(stream) == Message(b"last")
        assert (await proc.get_process_info()).is_running
    # The block killed the child: its stream ends, cleanly, with nothing left.
    assert await collect(stream) == []


@pytest.mark.parametrize(("message_input", "message_output"), WIRINGS, ids=WIRING_IDS)
async def test_echo_through_the_manager_handle(
    manager: ProcessManagerHandle, message_input: MessagingType, message_output: MessagingType
) -> None:
    pid = await manager.spawn(echo_child("bash", options(message_input, message_output)))
    stream = await manager.subscribe_message_stream(pid)
    for text in ("one", "two", "three"):
        await manager.send_message(pid, text)
        assert (await next_item(stream)).to_string() == text
    await manager.send_message(pid, b"bytes too")
    assert await next_item(stream.raw()) == b"bytes too"
    await manager.kill(pid)
    assert await collect(stream) == []


# --- formats: property round trips and typed decoding -----------------------------------------


@pytest.mark.parametrize("fmt", list(MessageFormat), ids=str)
@pytest.mark.parametrize("echo", ["bash-bytes", "corral.child-values"])
def test_round_trip_property(work_dir: Path, fmt: MessageFormat, echo: str) -> None:
    """parent (msgspec) -> child -> parent, for any value: one manager and one child per run."""
    if echo == "bash-bytes":
        runnable: Runnable = echo_child("bash", options(STDIO, PIPE))
    else:  # the child decodes and encodes again with corral.child's own codecs
        runnable = Script(
            ScriptingLanguage.PYTHON, VALUE_ECHO, args=[fmt.value], options=options(PIPE, STDIO)
        )

    async def start() -> tuple[ProcessManagerHandle, ProcessHandle, AsyncIterator[Any]]:
        handle = ProcessManager.spawn(work_dir)
        proc = await handle.spawn_with_handle(runnable)
        stream = await proc.subscribe_message_stream()
        return handle, proc, stream.decoded(fmt)

    async def round_trip(value: Any) -> Any:
        await proc.send_message(Message.from_serializable(value, fmt))
        return await next_item(decoded)

    with asyncio.Runner() as runner:
        handle, proc, decoded = runner.run(start())

        @settings(max_examples=30, deadline=None)
        @given(JSON_VALUES if fmt is MessageFormat.JSON else MSGPACK_VALUES)
        def check(value: Any) -> None:
            assert runner.run(round_trip(value)) == value

        try:
            check()
        finally:
            runner.run(handle.abort())


#: (type, a good value, a value of the wrong shape) for each kind of typed decoding.
TYPED_CASES: list[tuple[Any, Any, Any]] = [
    (Job, Job(7, "build", ["fast"]), {"id": "seven", "name": "build"}),
    (Point, Point(x=1, y=-2), {"x": 1}),
    (Reading, Reading("t1", 21.5), {"sensor": 3, "value": 1.0}),
    (list[int], [1, 2, 3], [1, "two"]),
]

#: A message that is no value at all in each format.
MALFORMED = {
    MessageFormat.JSON: b'{"id": 7',
    MessageFormat.MESSAGE_PACK_BASE64: b"!!not base64!!",
    MessageFormat.MESSAGE_PACK_HEX: b"zz",
}


@pytest.mark.parametrize("fmt", list(MessageFormat), ids=str)
async def test_typed_decoding_and_per_item_errors(
    manager: ProcessManagerHandle, fmt: MessageFormat
) -> None:
    proc = await manager.spawn_with_handle(echo_child("bash", options(PIPE, PIPE)))
    stream = await proc.subscribe_message_stream()
    for type_, good, wrong in TYPED_CASES:
        decoded = stream.decoded(fmt, type_)
        for value in (good, wrong, good):
            await proc.send_message(Message.from_serializable(value, fmt))
        await proc.send_message(MALFORMED[fmt])
        await proc.send_message(Message.from_serializable(good, fmt))

        assert await next_item(decoded) == good
        with pytest.raises(ReceiveDeserializedMessageError) as shape:
            await next_item(decoded)
        assert shape.value.data == Message.from_serializable(wrong, fmt).to_bytes()
        assert shape.value.process_id == proc.id
        assert isinstance(shape.value.__cause__, SerdeError)
        assert "match" in str(shape.value)  # says what did not match
        assert await next_item(decoded) == good  # the stream goes on
        with pytest.raises(ReceiveDeserializedMessageError) as malformed:
            await next_item(decoded)
        assert malformed.value.data == MALFORMED[fmt]
        assert await next_item(decoded) == good
    await proc.kill()
    assert await collect(stream) == []


# --- volume ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("message_input", "message_output"), WIRINGS[:2], ids=WIRING_IDS[:2])
async def test_10000_messages_echoed_in_order_and_once(
    manager: ProcessManagerHandle, message_input: MessagingType, message_output: MessagingType
) -> None:
    proc = await manager.spawn_with_handle(
        echo_child("bash", options(message_input, message_output))
    )
    stream = await proc.subscribe_message_stream(lossless=True)
    expected = numbers(10_000)
    sender = asyncio.create_task(send_all(proc, expected))
    assert await take(stream.strings(), len(expected)) == expected
    await finished(sender)
    await proc.kill()
    assert await collect(stream) == []  # nothing twice


@pytest.mark.parametrize("output", [STDIO, PIPE], ids=["stdio", "pipe"])
async def test_10000_messages_in_one_burst_reach_a_lossy_subscriber_that_keeps_up(
    manager: ProcessManagerHandle, output: MessagingType
) -> None:
    proc = await manager.spawn_with_handle(gated_lines(10_000, output))
    stream = await proc.subscribe_message_stream(lossless=False)  # default capacity
    await proc.send_message("go")
    assert await collect(stream.strings()) == numbers(10_000)
    assert succeeded(await proc.wait(TIMEOUT))


@pytest.mark.parametrize(
    ("kind", "size", "message_input", "message_output"),
    [
        ("bash", MiB, STDIO, STDIO),
        ("bash", MiB, PIPE, PIPE),
        ("python", MiB, STDIO, PIPE),
        ("python", MiB, PIPE, STDIO),
        # bash `read` takes a byte per syscall from a pipe: the big one goes to Python.
        ("python", 50 * MiB, STDIO, STDIO),
        ("python", 50 * MiB, PIPE, PIPE),
    ],
    ids=[
        "1MiB-bash-stdio",
        "1MiB-bash-pipes",
        "1MiB-py-mixed",
        "1MiB-py-mixed2",
        "50MiB-stdio",
        "50MiB-pipes",
    ],
)
async def test_one_huge_message_round_trip(
    manager: ProcessManagerHandle,
    kind: str,
    size: int,
    message_input: MessagingType,
    message_output: MessagingType,
) -> None:
    rng = random.Random(size)
    if size <= MiB:  # any bytes but the newline (and NUL, which bash drops): not UTF-8
        data = rng.randbytes(size).replace(b"\n", b"N").replace(b"\0", b"0")
    else:  # ASCII letters: the Python child's surrogate escapes are slow on random bytes
        letters = bytes(range(ord("a"), ord("a") + 16)) * 16
        data = rng.randbytes(size).translate(letters)
    opts = options(message_input, message_output, max_message_bytes=64 * MiB)
    proc = await manager.spawn_with_handle(echo_child(kind, opts))
    stream = await proc.subscribe_message_stream()
    sender = asyncio.create_task(proc.send_message(data))
    received = await next_item(stream.raw(), timeout=30)
    await finished(sender)
    assert len(received) == size
    assert received == data
    await proc.send_message("small after big")  # framing is intact after it
    assert await next_item(stream.raw()) == b"small after big"
    await proc.kill()


# --- subscribers ------------------------------------------------------------------------------


async def test_two_subscribers_each_get_every_message(manager: ProcessManagerHandle) -> None:
    count = 1000
    proc = await manager.spawn_with_handle(gated_lines(count, output_buffer_capacity=count))
    first = await proc.subscribe_message_stream()
    second = await proc.subscribe_message_stream()
    await proc.send_message("go")
    as_text, as_bytes = await asyncio.gather(collect(first.strings()), collect(second.raw()))
    assert as_text == numbers(count)
    assert as_bytes == [n.encode() for n in numbers(count)]


async def test_fifty_lossless_subscribers_each_get_every_message(
    manager: ProcessManagerHandle,
) -> None:
    count = 1000
    proc = await manager.spawn_with_handle(gated_lines(count, PIPE))  # capacity: the default 16
    streams = [await proc.subscribe_message_stream(lossless=True) for _ in range(50)]
    await proc.send_message("go")
    results = await asyncio.gather(*(collect(s.strings()) for s in streams))
    assert all(result == numbers(count) for result in results)
    assert succeeded(await proc.wait(TIMEOUT))


@pytest.mark.parametrize("output", [STDIO, PIPE], ids=["stdio", "pipe"])
async def test_a_lagging_subscriber_gets_the_exact_lost_count(
    manager: ProcessManagerHandle, output: MessagingType
) -> None:
    capacity, count = 8, 29
    proc = await manager.spawn_with_handle(
        gated_lines(count, output, output_buffer_capacity=capacity)
    )
    lagging = await proc.subscribe_message_stream(
        lossless=False
    )  # the first subscriber: starts at 0
    skipping = (await proc.subscribe_message_stream(lossless=False)).ignore_lost_messages()
    keeping_up = await proc.subscribe_message_stream(lossless=False)
    reader = asyncio.create_task(collect(keeping_up.strings()))
    await proc.send_message("go")
    # The one that kept up lost nothing (a loss would raise out of collect).
    assert await finished(reader) == numbers(count)
    # The others did not read while the child wrote 29 messages into a buffer of 8.
    with pytest.raises(LostMessagesError) as lost:
        await next_item(lagging)
    assert lost.value.count == count - capacity
    assert isinstance(lost.value, ReceiveMessageError)
    assert lost.value.process_id == proc.id
    # Then the oldest message still buffered, and on to the end.
    assert await collect(lagging.strings()) == numbers(count, start=count - capacity)
    assert await collect(skipping.strings()) == numbers(count, start=count - capacity)


@pytest.mark.parametrize("output", [STDIO, PIPE], ids=["stdio", "pipe"])
async def test_the_first_subscriber_gets_what_came_before_it_later_ones_start_at_subscription(
    manager: ProcessManagerHandle, output: MessagingType
) -> None:
    capacity = 8
    pid = await manager.spawn(
        python_cmd(
            TWO_PHASES,
            str(capacity),
            "5",
            options=options(
                STDIO,
                output,
                output_buffer_capacity=capacity,
                logging_type=LoggingType.STDERR_ONLY,
            ),
        )
    )
    assert await first_line(manager.follow_logs(pid, "stderr")) == "written"  # phase 1 is out
    first = await manager.subscribe_message_stream(pid)
    # Everything the child wrote before anyone subscribed (as much as the buffer holds).
    assert [m.to_string() for m in await take(first, capacity)] == [
        f"a{i}" for i in range(capacity)
    ]
    later = await manager.subscribe_message_stream(pid)
    await manager.send_message(pid, "next phase")
    second_phase = [f"b{i}" for i in range(5)]
    assert await collect(later.strings()) == second_phase  # from its subscription on
    assert await collect(first.strings()) == second_phase
    # After the end, a new subscriber gets an empty stream.
    assert succeeded(await manager.wait(pid, TIMEOUT))
    assert await collect(await manager.subscribe_message_stream(pid)) == []


async def test_the_first_subscriber_after_the_exit_gets_the_newest_buffered(
    manager: ProcessManagerHandle,
) -> None:
    capacity = 8
    data = b"".join(b"%d\n" % i for i in range(capacity))
    exact = await manager.spawn(writer_child(data, PIPE, output_buffer_capacity=capacity))
    assert succeeded(await manager.wait(exact, TIMEOUT))
    first = await manager.subscribe_message_stream(exact)
    assert await collect(first.strings()) == numbers(capacity)
    assert await collect(await manager.subscribe_message_stream(exact)) == []

    # More than the buffer holds: the oldest were dropped before anyone came (uncounted).
    count = 10 * capacity
    data = b"".join(b"%d\n" % i for i in range(count))
    more = await manager.spawn(writer_child(data, STDIO, output_buffer_capacity=capacity))
    assert succeeded(await manager.wait(more, TIMEOUT))
    first = await manager.subscribe_message_stream(more)
    got = [int(m.to_string()) for m in await collect(first.ignore_lost_messages())]
    assert got == list(range(count - len(got), count))  # the newest, in order, to the last
    assert capacity <= len(got) < count
    assert await collect(await manager.subscribe_message_stream(more)) == []


# --- lossless and backpressure ------------------------------------------------------------------


async def spawn_progress_writer(
    manager: ProcessManagerHandle, count: int, size: int, output: MessagingType
) -> ProcessHandle:
    """A PROGRESS_WRITER child: on "go", ``count`` messages of ``size`` bytes; progress logged."""
    options_ = options(STDIO, output, logging_type=LoggingType.STDERR_ONLY)
    return await manager.spawn_with_handle(
        python_cmd(PROGRESS_WRITER, str(count), str(size), options=options_)
    )


async def test_a_slow_lossless_subscriber_throttles_the_child_and_loses_nothing(
    manager: ProcessManagerHandle,
) -> None:
    count, size = 2000, 1000  # 2 MB: far more than the pipe, the reader and the buffer hold
    proc = await spawn_progress_writer(manager, count, size, STDIO)
    stream = await proc.subscribe_message_stream(lossless=True)
    await proc.send_message("go")
    assert await first_line(proc.follow_logs("stderr")) == "1"  # the child is writing
    # Nobody reads: the child stalls on a full pipe instead of finishing.
    with pytest.raises(TimeoutError):
        await proc.wait(timeout=0.5)
    stalled_at = int((await proc.get_logs_stderr())[-1])
    assert stalled_at < count // 2
    # Reading lets it go on; every message arrives, in order.
    received = await collect(stream, timeout=30)
    assert len(received) == count
    assert all(m.to_bytes() == b"%d " % i + b"x" * size for i, m in enumerate(received))
    assert succeeded(await proc.wait(TIMEOUT))
    assert (await proc.get_logs_stderr())[-1] == str(count)


async def test_a_lossy_subscriber_that_does_not_read_does_not_slow_the_child(
    manager: ProcessManagerHandle,
) -> None:
    count, size, capacity = 2000, 1000, 16
    proc = await spawn_progress_writer(manager, count, size, PIPE)
    stream = await proc.subscribe_message_stream(lossless=False)
    await proc.send_message("go")
    assert succeeded(await proc.wait(TIMEOUT))  # ran to its end, unread
    # The reader may still be draining the pipe when wait() returns (on a loaded machine): the
    # losses may then come in more than one report, but they and the messages add up exactly.
    lost, seen = 0, []
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                message = await anext(stream)
            except LostMessagesError as exc:
                lost += exc.count
            except StopAsyncIteration:
                break
            else:
                seen.append(int(message.to_bytes().split()[0]))
    assert lost + len(seen) == count
    assert seen == sorted(seen)
    assert seen[-capacity:] == list(range(count - capacity, count))


async def test_a_dropped_lossless_stream_no_longer_holds_the_child_back(
    manager: ProcessManagerHandle,
) -> None:
    count, size = 2000, 1000
    proc = await spawn_progress_writer(manager, count, size, STDIO)
    stream = await proc.subscribe_message_stream(lossless=True)
    await proc.send_message("go")
    with pytest.raises(TimeoutError):
        await proc.wait(timeout=0.5)  # held back by the lossless subscriber
    del stream  # dropped without aclose(): collected, it lets the child go
    gc.collect()
    assert succeeded(await proc.wait(TIMEOUT))
    assert (await proc.get_logs_stderr())[-1] == str(count)


# --- sending to children that do not read -------------------------------------------------------


@pytest.mark.parametrize("message_input", [STDIO, PIPE], ids=["stdio", "pipe"])
async def test_a_send_to_a_child_that_never_reads_blocks_only_its_caller(
    manager: ProcessManagerHandle, message_input: MessagingType
) -> None:
    stuck = await manager.spawn(Cmd("sleep", ["60"], options(message_input, None)))
    too_big = b"x" * (2 * pipe_max_size())  # more than any pipe can hold
    blocked = asyncio.create_task(manager.send_message(stuck, too_big))
    # Meanwhile every other call goes through: a spawn, sends and reads, a wait.
    other = await manager.spawn_with_handle(echo_child("bash", options(message_input, STDIO)))
    stream = await other.subscribe_message_stream()
    for text in ("one", "two"):
        await other.send_message(text)
        assert (await next_item(stream)).to_string() == text
    quick = await manager.spawn(Cmd("true"))
    assert succeeded(await manager.wait(quick, TIMEOUT))
    assert (await manager.get_process_info(stuck)).is_running
    assert not blocked.done()
    # Cancelling the blocked send ends its task at once.
    blocked.cancel()
    await asyncio.wait({blocked}, timeout=TIMEOUT)
    assert blocked.cancelled()
    await assert_manager_works(manager)


@pytest.mark.parametrize("message_input", [STDIO, PIPE], ids=["stdio", "pipe"])
async def test_cancelled_sends_started_ones_finish_waiting_ones_are_withdrawn(
    manager: ProcessManagerHandle, message_input: MessagingType
) -> None:
    proc = await manager.spawn_with_handle(
        python_cmd(ECHO_AFTER_SIGUSR1, options=options(message_input, STDIO))
    )
    stream = await proc.subscribe_message_stream()
    assert (await next_item(stream)).to_string() == "ready"  # SIGUSR1 is blocked now
    big = b"b" * MiB  # the child does not read yet: only part of it fits in the pipe
    started = asyncio.create_task(proc.send_message(big))
    waiting = asyncio.create_task(proc.send_message("withdrawn"))
    # Requests are handled in order: once this one is answered, both sends were queued.
    await asyncio.create_task(proc.get_process_info())
    assert not started.done()
    assert not waiting.done()
    started.cancel()
    waiting.cancel()
    await asyncio.wait({started, waiting}, timeout=TIMEOUT)
    assert started.cancelled()
    assert waiting.cancelled()
    kept = asyncio.create_task(proc.send_message("kept"))
    await proc.send_signal(signal.SIGUSR1)  # now it reads
    # The started message still arrived whole (never cut, never merged); the other never did.
    assert await next_item(stream.raw()) == big
    assert await next_item(stream.raw()) == b"kept"
    await finished(kept)
    await proc.send_message("x")
    assert await next_item(stream.raw()) == b"x"
    await proc.kill()


async def queue_a_spawn(manager: ProcessManagerHandle) -> asyncio.Future[list[ProcessId]]:
    """Leave a spawn waiting in the manager's queue until its loop turns again.

    The manager handles one spawn per loop turn at once and queues the next: two spawns posted
    in one turn leave the second queued, and every request after it waits behind it.
    """
    ahead = asyncio.gather(manager.spawn(sleep_cmd()), manager.spawn(sleep_cmd()))
    await asyncio.sleep(0)  # both are posted, the second is queued: the manager has not run
    return ahead


async def test_a_send_cancelled_before_the_manager_took_it_is_withdrawn(
    manager: ProcessManagerHandle,
) -> None:
    proc = await manager.spawn_with_handle(echo_child("bash", options(STDIO, STDIO)))
    stream = await proc.subscribe_message_stream()
    # A spawn queued first keeps the send waiting in the manager's queue (a request with
    # nothing ahead of it is handled at once); the deadline passes before the manager's loop
    # turns. Nothing is in the pipe, so nothing must be sent.
    ahead = await queue_a_spawn(manager)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):
            await proc.send_message("withdrawn")
    for process_id in await ahead:
        await manager.kill(process_id)
    await proc.send_message("x")
    assert await next_item(stream.raw()) == b"x"
    await proc.kill()
    assert await collect(stream) == []


async def test_a_subscribe_cancelled_before_the_manager_took_it_is_no_first_subscriber(
    manager: ProcessManagerHandle,
) -> None:
    pid = await manager.spawn(writer_child(b"kept\nfor the first\n", PIPE))
    assert succeeded(await manager.wait(pid, TIMEOUT))
    ahead = await queue_a_spawn(manager)  # see the test above
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):
            await manager.subscribe_message_stream(pid)
    for process_id in await ahead:
        await manager.kill(process_id)
    first = await manager.subscribe_message_stream(pid)
    assert await collect(first.strings()) == ["kept", "for the first"]


@pytest.mark.parametrize("message_input", [STDIO, PIPE], ids=["stdio", "pipe"])
async def test_sending_to_a_child_that_exited_fails(
    manager: ProcessManagerHandle, message_input: MessagingType
) -> None:
    # It never opened its pipes (nor read its stdin).
    done = await manager.spawn(Cmd("true", options=options(message_input, message_input)))
    assert succeeded(await manager.wait(done, TIMEOUT))
    assert await collect(await manager.subscribe_message_stream(done)) == []
    with pytest.raises(WriteMessageError) as exc:
        await asyncio.wait_for(manager.send_message(done, "anyone?"), TIMEOUT)
    assert exc.value.process_id == done
    assert str(done) in str(exc.value)

    # A send blocked on a full pipe fails as soon as the child exits.
    stuck = await manager.spawn(Cmd("sleep", ["60"], options(message_input, None)))
    blocked = asyncio.create_task(manager.send_message(stuck, b"x" * (2 * pipe_max_size())))
    await manager.get_process_info(stuck)  # the send is queued before this is answered
    assert not blocked.done()
    await manager.send_signal(stuck, signal.SIGTERM)
    with pytest.raises(WriteMessageError):
        await finished(blocked)
    await assert_manager_works(manager)


async def test_sending_to_a_child_that_closed_its_stdin_fails(
    manager: ProcessManagerHandle,
) -> None:
    proc = await manager.spawn_with_handle(
        Cmd("bash", ["-c", "exec 0<&-; echo closed; exec sleep 60"], options(STDIO, STDIO))
    )
    stream = await proc.subscribe_message_stream()
    assert (await next_item(stream)).to_string() == "closed"
    with pytest.raises(WriteMessageError, match="closed its message input"):
        await asyncio.wait_for(proc.send_message("hello?"), TIMEOUT)
    assert (await proc.get_process_info()).is_running
    with pytest.raises(WriteMessageError):  # and every later one
        await asyncio.wait_for(proc.send_message("again"), TIMEOUT)
    await proc.kill()
    await assert_manager_works(manager)


# --- bad input ----------------------------------------------------------------------------------


async def test_messaging_a_process_spawned_without_it(manager: ProcessManagerHandle) -> None:
    bare = await manager.spawn_with_handle(sleep_cmd())
    only_input = await manager.spawn_with_handle(Cmd("sleep", ["60"], options(STDIO, None)))
    only_output = await manager.spawn_with_handle(Cmd("sleep", ["60"], options(None, PIPE)))
    for proc in (bare, only_output):
        with pytest.raises(WriteMessageError) as sent:
            await proc.send_message("hello")
        assert isinstance(sent.value, MessagingNotConfiguredError)
        assert str(proc.id) in str(sent.value)
    for proc in (bare, only_input):
        with pytest.raises(ReadMessageError) as read:
            await manager.subscribe_message_stream(proc.id)
        assert isinstance(read.value, MessagingNotConfiguredError)
        assert str(proc.id) in str(read.value)
    # The half that is configured works.
    await only_input.send_message("nobody reads this, but it fits in the pipe")
    await only_output.subscribe_message_stream()


async def test_messaging_an_unknown_or_killed_process(manager: ProcessManagerHandle) -> None:
    killed = await manager.spawn(echo_child("bash", options(PIPE, PIPE)))
    await manager.kill(killed)
    for pid in (ProcessId.new(), killed):
        with pytest.raises(WriteMessageError) as sent:
            await manager.send_message(pid, "hello")
        assert isinstance(sent.value, ProcessNotFoundError)
        assert str(pid) in str(sent.value)
        with pytest.raises(ReadMessageError) as read:
            await manager.subscribe_message_stream(pid)
        assert isinstance(read.value, ProcessNotFoundError)
        assert str(pid) in str(read.value)


async def test_a_message_must_be_one_line_and_an_empty_one_sends_nothing(
    manager: ProcessManagerHandle,
) -> None:
    proc = await manager.spawn_with_handle(echo_child("bash", options(STDIO, STDIO)))
    stream = await proc.subscribe_message_stream()
    for bad in ("two\nlines", b"two\nlines\n", Message(b"\nleading"), "lone \ud800 surrogate"):
        with pytest.raises(WriteMessageError) as exc:
            await proc.send_message(bad)
        assert exc.value.process_id == proc.id
        assert isinstance(exc.value.__cause__, SerdeError)
    for empty in ("", b"", Message(b"")):
        await proc.send_message(empty)
    # Nothing of the above reached the child: the next echo is the next message.
    await proc.send_message("x")
    assert await next_item(stream.raw()) == b"x"
    await proc.send_message("\n")  # an explicit newline is one empty message
    assert await next_item(stream.raw()) == b""
    await proc.kill()
    assert await collect(stream) == []


# --- children that misbehave --------------------------------------------------------------------


@pytest.mark.parametrize("output", [STDIO, PIPE], ids=["stdio", "pipe"])
async def test_invalid_utf8_fails_per_item_and_the_stream_goes_on(
    manager: ProcessManagerHandle, output: MessagingType
) -> None:
    data = b"ok\n\xff\xfe garbage\ncaf\xc3\n\x00\x01 binary\nfine\n"
    pid = await manager.spawn(writer_child(data, output))
    results = await outcomes(
        (await manager.subscribe_message_stream(pid)).strings(), ReceiveDeserializedMessageError
    )
    assert [r if isinstance(r, str) else r.data for r in results] == [
        "ok",
        b"\xff\xfe garbage",
        b"caf\xc3",
        "\x00\x01 binary",
        "fine",
    ]
    assert all(r.process_id == pid for r in results if not isinstance(r, str))
    assert succeeded(await manager.wait(pid, TIMEOUT))
    await assert_manager_works(manager)


@pytest.mark.parametrize("fmt", list(MessageFormat), ids=str)
async def test_partial_and_garbage_payloads_fail_per_item(
    manager: ProcessManagerHandle, fmt: MessageFormat
) -> None:
    good = Message.from_serializable([1, {"a": "b"}], fmt).to_bytes()
    if fmt is MessageFormat.JSON:
        bad = [good[:-3], b"garbage", b"[1, 2,]"]
    else:  # a truncated MessagePack value, well encoded as text; then broken text encodings
        packed = msgspec.msgpack.encode([1, {"a": "b"}])[:-2]
        if fmt is MessageFormat.MESSAGE_PACK_HEX:
            truncated = packed.hex().encode()
        else:
            truncated = base64.b64encode(packed)
        bad = [truncated, good[:-1], b"garbage!"]
    data = b"\n".join([good, *bad, good]) + b"\n"
    pid = await manager.spawn(writer_child(data, PIPE))
    results = await outcomes(
        (await manager.subscribe_message_stream(pid)).decoded(fmt), ReceiveDeserializedMessageError
    )
    assert results[0] == results[-1] == [1, {"a": "b"}]
    errors = results[1:-1]
    assert all(isinstance(e, ReceiveDeserializedMessageError) for e in errors)
    assert [e.data for e in errors] == bad
    await assert_manager_works(manager)


@pytest.mark.parametrize("output", [STDIO, PIPE], ids=["stdio", "pipe"])
async def test_a_child_writing_a_50_mb_line(
    manager: ProcessManagerHandle, output: MessagingType
) -> None:
    size = 50 * MiB
    code = CHANNELS + f"out.write(b'a' * {size} + b'\\nafter\\n')\nout.flush()\n"
    opts = options(None, output, max_message_bytes=64 * MiB)
    pid = await manager.spawn(python_cmd(code, options=opts))
    stream = await manager.subscribe_message_stream(pid)
    huge = await next_item(stream.raw(), timeout=30)
    assert len(huge) == size
    assert huge.count(b"a") == size
    assert await collect(stream.raw()) == [b"after"]
    await assert_manager_works(manager)


async def test_a_child_reopening_output_pipe_per_message(manager: ProcessManagerHandle) -> None:
    script = """\
echo first >"$OUTPUT_PIPE"
read -r go <"$INPUT_PIPE"
for i in $(seq 1 50); do echo "$i" >"$OUTPUT_PIPE"; done
"""
    proc = await manager.spawn_with_handle(
        Cmd("bash", ["-c", script], options(PIPE, PIPE, output_buffer_capacity=64))
    )
    stream = await proc.subscribe_message_stream()
    assert (await next_item(stream)).to_string() == "first"
    # The child closed OUTPUT_PIPE after "first" and waits: the stream must not end.
    await proc.send_message("go")
    assert await collect(stream.strings()) == numbers(51, start=1)
    # It ended only once the child had exited and everything was delivered.
    info = await proc.get_process_info()
    assert not info.is_running
    assert info.exit_status is not None
    assert info.exit_status.success
    await assert_manager_works(manager)


@pytest.mark.parametrize("output", [STDIO, PIPE], ids=["stdio", "pipe"])
async def test_a_child_dying_mid_message_reports_the_cut_off_line(
    manager: ProcessManagerHandle, output: MessagingType
) -> None:
    pid = await manager.spawn(writer_child(b"complete\nhalf a mess", output, die=True))
    stream = await manager.subscribe_message_stream(pid)
    got = await outcomes(stream.strings(), IncompleteMessageError)
    assert got[0] == "complete"
    assert isinstance(got[1], IncompleteMessageError)
    assert got[1].data == b"half a mess"
    assert got[1].process_id == pid
    assert len(got) == 2
    info = await manager.wait(pid, TIMEOUT)
    assert info.exit_status is not None
    assert info.exit_status.signal == signal.SIGKILL
    await assert_manager_works(manager)


# --- the end of a stream ----------------------------------------------------------------------


@pytest.mark.parametrize("output", [STDIO, PIPE], ids=["stdio", "pipe"])
async def test_a_live_stream_ends_cleanly_when_its_process_is_killed(
    manager: ProcessManagerHandle, output: MessagingType
) -> None:
    proc = await manager.spawn_with_handle(echo_child("bash", options(STDIO, output)))
    stream = await proc.subscribe_message_stream()
    lossless = await proc.subscribe_message_stream(lossless=True)
    await proc.send_message("ping")
    assert (await next_item(stream)).to_string() == "ping"
    waiting = asyncio.create_task(collect(stream))
    await proc.kill()
    assert await finished(waiting) == []
    assert await collect(lossless.strings()) == ["ping"]


async def test_a_lossless_stream_holding_back_a_flood_ends_when_killed(
    manager: ProcessManagerHandle,
) -> None:
    proc = await manager.spawn_with_handle(Cmd("bash", ["-c", FLOOD_SH], options(STDIO, PIPE)))
    stream = await proc.subscribe_message_stream(lossless=True)
    assert await take(stream.strings(), 100) == ["y"] * 100
    await proc.kill()  # while the reader waits for this subscriber
    rest = await collect(stream.strings())
    assert set(rest) <= {"y"}
    assert len(rest) <= 16


async def test_live_streams_end_cleanly_when_the_manager_aborts(work_dir: Path) -> None:
    handle = ProcessManager.spawn(work_dir)
    streams: list[MessageStream] = []
    for wiring in WIRINGS[:2]:
        pid = await handle.spawn(echo_child("bash", options(*wiring)))
        streams.append(await handle.subscribe_message_stream(pid))
        await handle.send_message(pid, "ping")
        assert (await next_item(streams[-1])).to_string() == "ping"
    waiting = [asyncio.create_task(collect(stream)) for stream in streams]
    stuck = await handle.spawn(Cmd("sleep", ["60"], options(STDIO, None)))
    blocked = asyncio.create_task(handle.send_message(stuck, b"x" * (2 * pipe_max_size())))
    await handle.get_process_info(stuck)  # the send is queued before this is answered
    await handle.abort()
    assert [await finished(task) for task in waiting] == [[], []]
    with pytest.raises(WriteMessageError):  # the pending send fails, it does not hang
        await finished(blocked)
    with pytest.raises(WriteMessageError) as sent:
        await handle.send_message(pid, "late")
    assert isinstance(sent.value, ManagerAbortedError)
    with pytest.raises(ReadMessageError) as read:
        await handle.subscribe_message_stream(pid)
    assert isinstance(read.value, ManagerAbortedError)
    assert os.listdir(work_dir) == []


# --- other loops ----------------------------------------------------------------------------------


async def test_a_stream_subscribed_from_another_threads_loop_gets_everything(
    manager: ProcessManagerHandle,
) -> None:
    count = 1000

    async def scenario() -> tuple[list[str], list[str]]:
        assert threading.current_thread() is not threading.main_thread()
        echo = await manager.spawn_with_handle(echo_child("bash", options(PIPE, PIPE)))
        echoed = await echo.subscribe_message_stream(lossless=True)
        sender = asyncio.create_task(send_all(echo, numbers(count)))
        round_trips = await take(echoed.strings(), count)
        await finished(sender)
        await echo.kill()
        assert await collect(echoed) == []

        burst = await manager.spawn_with_handle(gated_lines(count, output_buffer_capacity=count))
        lossy = await burst.subscribe_message_stream()
        await burst.send_message("go")
        return round_trips, await collect(lossy.strings())

    round_trips, burst = await asyncio.wait_for(
        asyncio.to_thread(asyncio.run, scenario()), 2 * TIMEOUT
    )
    assert round_trips == numbers(count)
    assert burst == numbers(count)


@pytest.mark.parametrize(("message_input", "message_output"), WIRINGS[:2], ids=WIRING_IDS[:2])
def test_echo_on_uvloop(
    work_dir: Path, message_input: MessagingType, message_output: MessagingType
) -> None:
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed")

    async def scenario() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        async with ProcessManager.spawn(work_dir) as handle:
            for kind in ("bash", "python"):
                runnable = echo_child(kind, options(message_input, message_output))
                proc = await handle.spawn_with_handle(runnable)
                stream = await proc.subscribe_message_stream(lossless=True)
                sender = asyncio.create_task(send_all(proc, numbers(500)))
                assert await take(stream.strings(), 500) == numbers(500)
                await finished(sender)
                await proc.send_message(b"\xff bytes")
                assert await next_item(stream.raw()) == b"\xff bytes"
                await proc.kill()
                assert await collect(stream) == []

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
    assert os.listdir(work_dir) == []


# --- hygiene ------------------------------------------------------------------------------------


async def test_many_messaging_cycles_leave_nothing_behind(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    async def cycle(i: int) -> None:
        pid = await manager.spawn(echo_child("bash", options(*WIRINGS[i % len(WIRINGS)])))
        stream = await manager.subscribe_message_stream(pid)
        await manager.send_message(pid, f"cycle {i}")
        assert (await next_item(stream)).to_string() == f"cycle {i}"
        await manager.kill(pid)
        assert await collect(stream) == []

    async def messy_cycle(i: int) -> None:
        # Killed with a send blocked on a full pipe and the reader held back by a subscriber.
        wiring = WIRINGS[i % len(WIRINGS)]
        pid = await manager.spawn(Cmd("bash", ["-c", FLOOD_SH], options(*wiring)))
        stream = await manager.subscribe_message_stream(pid, lossless=True)
        assert (await next_item(stream)).to_string() == "y"
        blocked = asyncio.create_task(manager.send_message(pid, b"x" * (2 * pipe_max_size())))
        await manager.get_process_info(pid)
        await manager.kill(pid)
        with pytest.raises(WriteMessageError):
            await finished(blocked)
        await collect(stream)

    for i in range(len(WIRINGS)):  # warm up: whatever is opened once and for all
        await cycle(i)
        await messy_cycle(i)
    baseline = fd_count()
    for i in range(100):
        await cycle(i)
        if i % 5 == 0:
            await messy_cycle(i)
    assert fd_count() == baseline
    assert [name for name in os.listdir(work_dir) if not name.startswith(".")] == []
    assert await manager.list_processes() == []
    assert_no_zombie()


# --- defaults that lose nothing -----------------------------------------------------------------


@pytest.mark.parametrize("output", [STDIO, PIPE], ids=["stdio", "pipe"])
async def test_the_default_subscription_loses_nothing_to_a_slow_consumer(
    manager: ProcessManagerHandle, output: MessagingType
) -> None:
    count = 200  # results written at once into a buffer of 16, taken 2 ms apiece
    proc = await manager.spawn_with_handle(gated_lines(count, output))
    stream = await proc.subscribe_message_stream()
    await proc.send_message("go")
    results: list[str] = []
    async with asyncio.timeout(TIMEOUT):
        async for text in stream.strings():  # a LostMessagesError would end the test here
            results.append(text)
            await asyncio.sleep(0.002)  # the work done per result
    assert results == numbers(count)
    assert succeeded(await proc.wait(TIMEOUT))


@pytest.mark.parametrize("message_input", [STDIO, PIPE], ids=["stdio", "pipe"])
async def test_a_send_to_a_process_that_has_exited_says_so(
    manager: ProcessManagerHandle, message_input: MessagingType
) -> None:
    pid = await manager.spawn(Cmd("true", options=CmdOptions(message_input=message_input)))
    await manager.wait(pid, TIMEOUT)
    with pytest.raises(WriteMessageError, match="has exited") as caught:
        await manager.send_message(pid, "job 1")
    assert caught.value.process_id == pid


async def test_a_send_just_after_the_exit_fails_before_the_loop_has_seen_it(
    manager: ProcessManagerHandle,
) -> None:
    # A FIFO's parent end never reports EPIPE: only the exit tells that nobody will read.
    pid = await manager.spawn(Cmd("true", options=CmdOptions(message_input=PIPE)))
    os_pid = (await manager.get_process_info(pid)).pid
    assert os_pid is not None
    # Block (this loop included) until the child is a zombie, without reaping it: the manager
    # has not handled the exit when the send comes.
    os.waitid(os.P_PID, os_pid, os.WEXITED | os.WNOWAIT)
    with pytest.raises(WriteMessageError, match="has exited"):
        await manager.send_message(pid, "job 1")
    assert not (await manager.get_process_info(pid)).is_running
    await manager.kill(pid)


#: A worker that takes one job per line, answers "done <job>", and dies on the job "poison".
WORKER = (
    CHANNELS
    + """\
for line in inp:
    job = line.strip()
    if job == b"poison":
        os._exit(1)
    out.write(b"done " + job + b"\\n")
    out.flush()
"""
)


async def test_a_dead_workers_jobs_are_requeued_when_its_stream_ends(
    manager: ProcessManagerHandle,
) -> None:
    # The pattern of docs/messages.md: a job counts as done when its result arrives; the end of
    # a worker's stream means it is gone, and every job it had not answered goes to another.
    jobs = [f"job{i}" for i in range(20)]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for job in [*jobs[:5], "poison", *jobs[5:]]:
        queue.put_nowait(job)
    done: set[str] = set()
    opts = options(STDIO, STDIO)

    async def worker() -> None:
        while not queue.empty():
            proc = await manager.spawn_with_handle(python_cmd(WORKER, options=opts))
            stream = await proc.subscribe_message_stream()
            sent: list[str] = []
            while not queue.empty() or sent:
                if not queue.empty() and len(sent) < 4:
                    job = queue.get_nowait()
                    sent.append(job)
                    try:
                        await proc.send_message(job)
                    except WriteMessageError:
                        break  # gone before it read this one: requeued below
                    continue
                message = await anext(stream, None)
                if message is None:
                    break  # the worker is gone: what it did not answer is requeued below
                finished = message.to_string().removeprefix("done ")
                done.add(finished)
                sent.remove(finished)
            for job in sent:
                if job != "poison":
                    queue.put_nowait(job)
            await proc.kill()

    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(worker(), worker())
    assert done == set(jobs)
