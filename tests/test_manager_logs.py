"""Logs end to end, through the manager: real children writing straight into their log files.

What the child writes is known to the test, so every answer is checked against an oracle made
of plain Python on that content: ``content.split(b"\\n")``, without the empty piece after a final
newline, each piece decoded with ``errors="replace"`` (not ``splitlines``, which would also split
on ``\\r``). The log module on its own is covered by test_logs_query.py and test_logs_follow.py;
here it is the integration: which file gets which stream, its mode and place, its life with the
process, errors as the caller sees them, following through the handles.

Nothing sleeps to wait for a condition. A child that must write slowly is stepped through a FIFO
the test writes to; every wait has a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import Literal, cast

import pytest
from conftest import TIMEOUT, fd_count, process_dirs, python_cmd
from hypothesis import example, given, settings
from hypothesis import strategies as st
from oracles import FORMS, build, expected, oracle_lines

from corral import (
    Cmd,
    CmdOptions,
    GetLogsError,
    LoggingNotConfiguredError,
    LoggingType,
    LogsQuery,
    ManagerAbortedError,
    ProcessId,
    ProcessManager,
    ProcessManagerHandle,
    ProcessNotFoundError,
    Script,
    ScriptingLanguage,
)
from corral._logs import MERGED_LOG_NAME, STDERR_LOG_NAME, STDOUT_LOG_NAME

STDOUT_ONLY = LoggingType.STDOUT_ONLY
STDERR_ONLY = LoggingType.STDERR_ONLY
BOTH = LoggingType.STDOUT_AND_STDERR
MERGED = LoggingType.STDOUT_AND_STDERR_MERGED
Stream = Literal["stdout", "stderr"]
STREAMS: tuple[Stream, Stream] = ("stdout", "stderr")
FETCH_ALL = LogsQuery.fetch_all()


def with_logs(logging_type: LoggingType) -> CmdOptions:
    return CmdOptions.with_logging(logging_type)


def sh(script: str, logging_type: LoggingType) -> Cmd:
    """``sh -c script`` with the given streams captured."""
    return Cmd("sh", ["-c", script], with_logs(logging_type))


def captures(logging_type: LoggingType, stream: Stream) -> bool:
    if stream == "stdout":
        return logging_type.captures_stdout
    return logging_type.captures_stderr


async def get_logs(
    handle: ProcessManagerHandle,
    process_id: ProcessId,
    stream: Stream,
    query: LogsQuery = FETCH_ALL,
) -> list[str]:
    if stream == "stdout":
        return await handle.get_logs_stdout(process_id, query)
    return await handle.get_logs_stderr(process_id, query)


def closing(lines: AsyncIterator[str]) -> contextlib.aclosing[AsyncGenerator[str, None]]:
    """Close a follow (an async generator) however the block ends."""
    return contextlib.aclosing(cast(AsyncGenerator[str, None], lines))


async def collect(lines: AsyncIterator[str], timeout: float = TIMEOUT) -> list[str]:
    """Every line a follow delivers, until it ends (bounded)."""

    async def run() -> list[str]:
        async with closing(lines):
            return [line async for line in lines]

    return await asyncio.wait_for(run(), timeout)


def log_files(process_dir: Path) -> set[str]:
    return {path.name for path in process_dir.glob("*.log")}


# --- the oracle -------------------------------------------------------------------------------


# --- each logging type: what is captured where --------------------------------------------------

# Three lines, one per write, in this order: out 1, err 1, out 2.
THREE_LINES = 'echo "out 1"\necho "err 1" >&2\nprintf "out 2\\n"\n'

CAPTURED: dict[LoggingType, tuple[dict[str, list[str]], set[str]]] = {
    STDOUT_ONLY: ({"stdout": ["out 1", "out 2"]}, {STDOUT_LOG_NAME}),
    STDERR_ONLY: ({"stderr": ["err 1"]}, {STDERR_LOG_NAME}),
    BOTH: (
        {"stdout": ["out 1", "out 2"], "stderr": ["err 1"]},
        {STDOUT_LOG_NAME, STDERR_LOG_NAME},
    ),
    MERGED: (
        {"stdout": ["out 1", "err 1", "out 2"], "stderr": ["out 1", "err 1", "out 2"]},
        {MERGED_LOG_NAME},
    ),
}


@pytest.mark.parametrize("logging_type", list(LoggingType))
async def test_each_logging_type_captures_its_streams(
    manager: ProcessManagerHandle, work_dir: Path, logging_type: LoggingType
) -> None:
    lines, files = CAPTURED[logging_type]
    script = Script(ScriptingLanguage.BASH, THREE_LINES, options=with_logs(logging_type))
    process_id = await manager.spawn(script)
    info = await manager.wait(process_id, timeout=TIMEOUT)
    assert info.exit_status is not None
    assert info.exit_status.success
    assert log_files(work_dir / str(process_id)) == files
    for stream in STREAMS:
        if stream in lines:
            assert await get_logs(manager, process_id, stream) == lines[stream]
            continue
        with pytest.raises(LoggingNotConfiguredError) as caught:
            await get_logs(manager, process_id, stream)
        error = caught.value
        assert isinstance(error, GetLogsError)
        assert error.process_id == process_id
        assert str(process_id) in str(error)
        assert stream in str(error)
        # Whatever the query: the stream is not there to be read.
        with pytest.raises(LoggingNotConfiguredError):
            await get_logs(manager, process_id, stream, LogsQuery.tail(1))
    await manager.kill(process_id)


async def test_no_logging_type_captures_nothing(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    process_id = await manager.spawn(Cmd("sh", ["-c", "echo out; echo err >&2"]))
    await manager.wait(process_id, timeout=TIMEOUT)
    assert log_files(work_dir / str(process_id)) == set()
    for stream in STREAMS:
        with pytest.raises(LoggingNotConfiguredError, match=stream):
            await get_logs(manager, process_id, stream)
    await manager.kill(process_id)


async def test_process_handle_reads_the_same_logs(manager: ProcessManagerHandle) -> None:
    proc = await manager.spawn_with_handle(sh(THREE_LINES, BOTH))
    await proc.wait(TIMEOUT)
    assert await proc.get_logs_stdout() == ["out 1", "out 2"]
    assert await proc.get_logs_stderr() == ["err 1"]
    assert await proc.get_logs_stdout(LogsQuery.tail(1)) == ["out 2"]
    assert await proc.get_logs_stderr(LogsQuery.with_offset(1)) == []
    await proc.kill()
    with pytest.raises(ProcessNotFoundError):
        await proc.get_logs_stdout()


# --- every query form against the oracle, on random content -------------------------------------

# The child copies two files, given by path, to its stdout and its stderr, in that order, with
# raw writes (no text layer: the bytes arrive as they are).
COPY_TO_STREAMS = """\
import os, sys
for fd, path in ((1, sys.argv[1]), (2, sys.argv[2])):
    with open(path, "rb") as f:
        view = memoryview(f.read())
    while view:
        view = view[os.write(fd, view) :]
"""

FRAGMENTS = st.one_of(
    st.sampled_from(
        [
            b"\n",
            b"\n\n",
            b"\r",
            b"\r\n",
            b"abc",
            b"\xff",  # never valid UTF-8
            b"\xe2\x82",  # a truncated sequence
            b"\xe2\x82\xac",
            b"\xc3\xa9",
            b"\x00",
        ]
    ),
    st.binary(max_size=8),
    # A line longer than the 64 KiB block that tail reads backwards.
    st.integers(65_000, 140_000).map(lambda size: b"L" * size),
    # Many short lines: past the sparse line index's step of 1000 lines.
    st.integers(900, 2_500).map(lambda count: b"".join(b"%d\n" % i for i in range(count))),
)
CONTENTS = st.lists(FRAGMENTS, max_size=10).map(b"".join)

TRICKY = b"zero\none\r\n\n\ntwo \xff\xfe\n\xe2\x82\n\xe2\x82\xac\n" + b"L" * 70_000 + b"\nlast"


#: A query argument: (counted back from the end of the log?, how many lines).
Arg = tuple[bool, int]
ARGUMENT = st.tuples(st.booleans(), st.integers(0, 40) | st.integers(0, 30_000))
#: One (offset, count) pair per stream and form.
ARGUMENTS = st.lists(st.tuples(ARGUMENT, ARGUMENT), min_size=12, max_size=12)
EDGE_ARGUMENTS = [((False, 1), (False, 2)), ((True, 3), (False, 1)), ((False, 0), (True, 0))] * 4


def resolve(argument: Arg, total: int) -> int:
    """A line count: near the start, or near the end of a log of ``total`` lines."""
    from_end, value = argument
    return max(0, total + 2 - value) if from_end else value


@pytest.mark.parametrize("logging_type", list(LoggingType))
def test_every_query_form_matches_the_oracle(
    tmp_path: Path, work_dir: Path, logging_type: LoggingType
) -> None:
    # One manager for all the examples, on one loop that each example runs on in turn.
    out_file, err_file = tmp_path / "out.bin", tmp_path / "err.bin"

    async def start() -> ProcessManagerHandle:
        return ProcessManager.spawn(work_dir)

    async def check(out: bytes, err: bytes, arguments: list[tuple[Arg, Arg]]) -> None:
        out_file.write_bytes(out)
        err_file.write_bytes(err)
        cmd = python_cmd(COPY_TO_STREAMS, str(out_file), str(err_file))
        cmd.options = with_logs(logging_type)
        process_id = await handle.spawn(cmd)
        info = await handle.wait(process_id, timeout=TIMEOUT)
        assert info.exit_status is not None
        assert info.exit_status.success
        merged = oracle_lines(out + err)
        oracle = {
            "stdout": merged if logging_type is MERGED else oracle_lines(out),
            "stderr": merged if logging_type is MERGED else oracle_lines(err),
        }
        for stream in STREAMS:
            if not captures(logging_type, stream):
                with pytest.raises(LoggingNotConfiguredError):
                    await get_logs(handle, process_id, stream)
                continue
            lines = oracle[stream]
            for form in FORMS:  # every form on every example, with drawn arguments
                k_arg, n_arg = arguments.pop()
                k, n = resolve(k_arg, len(lines)), resolve(n_arg, len(lines))
                got = await get_logs(handle, process_id, stream, build(form, k, n))
                assert got == expected(lines, form, k, n), (stream, form, k, n)
        await handle.kill(process_id)
        assert not (work_dir / str(process_id)).exists()

    with asyncio.Runner() as runner:
        handle = runner.run(start())

        @given(out=CONTENTS, err=CONTENTS, arguments=ARGUMENTS)
        @example(out=TRICKY, err=b"\xff\n\nno newline", arguments=EDGE_ARGUMENTS)
        @example(out=b"", err=b"", arguments=EDGE_ARGUMENTS)
        @settings(max_examples=20, deadline=None)
        def property_holds(out: bytes, err: bytes, arguments: list[tuple[Arg, Arg]]) -> None:
            runner.run(check(out, err, list(arguments)))

        try:
            property_holds()
        finally:
            runner.run(handle.abort())


# --- merged order -------------------------------------------------------------------------------

ALTERNATE = """\
import sys
for i in range(200):
    print(f"out {i}", flush=True)
    print(f"err {i}", file=sys.stderr, flush=True)
"""


async def test_merged_log_keeps_the_order_the_child_wrote(manager: ProcessManagerHandle) -> None:
    script = Script(ScriptingLanguage.PYTHON, ALTERNATE, options=with_logs(MERGED))
    process_id = await manager.spawn(script)
    await manager.wait(process_id, timeout=TIMEOUT)
    alternating = [line for i in range(200) for line in (f"out {i}", f"err {i}")]
    assert await manager.get_logs_stdout(process_id) == alternating
    assert await manager.get_logs_stderr(process_id) == alternating
    assert await manager.get_logs_stderr(process_id, LogsQuery.tail(3)) == alternating[-3:]
    assert await manager.get_logs_stdout(process_id, LogsQuery.with_limit(3)) == alternating[:3]
    assert await collect(manager.follow_logs(process_id, "stderr")) == alternating
    await manager.kill(process_id)


# --- the files: where, which mode, how long they live -------------------------------------------

LOG_PATHS: dict[LoggingType, dict[str, str]] = {
    STDOUT_ONLY: {"stdout": STDOUT_LOG_NAME},
    STDERR_ONLY: {"stderr": STDERR_LOG_NAME},
    BOTH: {"stdout": STDOUT_LOG_NAME, "stderr": STDERR_LOG_NAME},
    MERGED: {"stdout": MERGED_LOG_NAME, "stderr": MERGED_LOG_NAME},
}


@pytest.mark.usefixtures("restore_umask")
@pytest.mark.parametrize("logging_type", list(LoggingType))
async def test_log_files_are_private_in_the_process_dir_and_removed_by_kill(
    manager: ProcessManagerHandle, work_dir: Path, logging_type: LoggingType
) -> None:
    os.umask(0)  # the mode must not depend on the parent's umask
    process_id = await manager.spawn(sh("echo out; echo err >&2; exec sleep 60", logging_type))
    process_dir = work_dir / str(process_id)
    pid = (await manager.get_process_info(process_id)).pid
    names = LOG_PATHS[logging_type]
    assert log_files(process_dir) == set(names.values())
    for name in names.values():
        st_mode = (process_dir / name).lstat().st_mode
        assert stat.S_ISREG(st_mode)
        assert stat.S_IMODE(st_mode) == 0o600, oct(st_mode)
    # The child writes straight into the files: its fds 1 and 2 are the log files themselves.
    for fd, stream in ((1, "stdout"), (2, "stderr")):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        assert target == (str(process_dir / names[stream]) if stream in names else os.devnull)

    await manager.kill(process_id)
    assert not process_dir.exists()
    assert process_dirs(work_dir) == []
    for stream in STREAMS:
        with pytest.raises(ProcessNotFoundError) as caught:
            await get_logs(manager, process_id, stream)
        assert isinstance(caught.value, GetLogsError)
        with pytest.raises(ProcessNotFoundError):
            await collect(manager.follow_logs(process_id, stream))


async def test_logs_stay_readable_after_exit_until_kill(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    process_id = await manager.spawn(sh("echo one; echo two; echo oops >&2; exit 3", BOTH))
    info = await manager.wait(process_id, timeout=TIMEOUT)
    assert info.exit_status is not None
    assert info.exit_status.code == 3
    for _ in range(2):  # reading changes nothing
        assert not (await manager.get_process_info(process_id)).is_running
        assert await manager.get_logs_stdout(process_id) == ["one", "two"]
        assert await manager.get_logs_stdout(process_id, LogsQuery.from_end(1, 1)) == ["one"]
        assert await manager.get_logs_stderr(process_id) == ["oops"]
        assert await collect(manager.follow_logs(process_id)) == ["one", "two"]
    await manager.kill(process_id)
    assert not (work_dir / str(process_id)).exists()
    with pytest.raises(ProcessNotFoundError):
        await manager.get_logs_stdout(process_id)


async def test_log_deleted_by_someone_else_fails_and_the_manager_keeps_working(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    process_id = await manager.spawn(sh("echo out; echo err >&2", BOTH))
    await manager.wait(process_id, timeout=TIMEOUT)
    os.unlink(work_dir / str(process_id) / STDOUT_LOG_NAME)
    for query in (LogsQuery.fetch_all(), LogsQuery.tail(1), LogsQuery.with_offset(1)):
        with pytest.raises(GetLogsError) as caught:
            await manager.get_logs_stdout(process_id, query)
        error = caught.value
        assert isinstance(error.__cause__, FileNotFoundError)
        assert error.process_id == process_id
        assert str(process_id) in str(error)
    with pytest.raises(GetLogsError) as caught:
        await collect(manager.follow_logs(process_id))
    assert isinstance(caught.value.__cause__, FileNotFoundError)
    # The other stream, the process and the manager are unharmed.
    assert await manager.get_logs_stderr(process_id) == ["err"]
    other = await manager.spawn(sh("echo again", STDOUT_ONLY))
    assert (await manager.wait(other, timeout=TIMEOUT)).exit_status is not None
    assert await manager.get_logs_stdout(other) == ["again"]
    await manager.kill(process_id)
    await manager.kill(other)
    assert process_dirs(work_dir) == []


# --- a running process -------------------------------------------------------------------------


async def test_query_of_a_running_process_returns_its_partial_last_line(
    manager: ProcessManagerHandle,
) -> None:
    # "abc" stays unterminated while the child runs; "done" on stderr says it was written.
    process_id = await manager.spawn(sh("printf abc; echo done >&2; exec sleep 60", BOTH))
    follow = manager.follow_logs(process_id, "stderr")
    async with closing(follow):
        assert await asyncio.wait_for(anext(follow), TIMEOUT) == "done"
    assert (await manager.get_process_info(process_id)).is_running
    assert await manager.get_logs_stdout(process_id) == ["abc"]
    assert await manager.get_logs_stdout(process_id, LogsQuery.tail(1)) == ["abc"]
    assert await manager.get_logs_stdout(process_id, LogsQuery.from_end(0, 5)) == ["abc"]
    assert await manager.get_logs_stdout(process_id, LogsQuery.with_offset_and_limit(0, 1)) == [
        "abc"
    ]
    assert await manager.get_logs_stdout(process_id, LogsQuery.with_offset(1)) == []
    await manager.kill(process_id)


# --- following ----------------------------------------------------------------------------------

# Writes five lines to the stream named by argv[2], each only after a byte from the FIFO named by
# argv[1] allowed it (after the first); stops at EOF.
STEPPED = """\
import os, sys
stream = sys.stdout if sys.argv[2] == "stdout" else sys.stderr
gate = os.open(sys.argv[1], os.O_RDONLY)
for i in range(5):
    print(f"line {i}", file=stream, flush=True)
    if not os.read(gate, 1):
        break
"""


@contextlib.contextmanager
def gate(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A FIFO for a STEPPED child, and the test's end of it (a byte lets the child go on).

    The test holds it open read-write, so the child's open never blocks, and closing it ends
    the child's wait with EOF.
    """
    path = tmp_path / "gate"
    os.mkfifo(path)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        yield path, fd
    finally:
        os.close(fd)


async def follow_a_slow_writer(
    handle: ProcessManagerHandle, tmp_path: Path, stream: Stream, via_process_handle: bool
) -> None:
    with gate(tmp_path) as (path, go):
        cmd = python_cmd(STEPPED, str(path), stream, options=with_logs(BOTH))
        proc = await handle.spawn_with_handle(cmd)
        if via_process_handle:
            follow = proc.follow_logs(stream)
        else:
            follow = handle.follow_logs(proc.id, stream)
        received: list[str] = []

        async def run() -> None:
            async with closing(follow):
                async for line in follow:
                    received.append(line)
                    # The child is blocked until the byte below: the log holds exactly this.
                    assert await get_logs(handle, proc.id, stream) == received
                    os.write(go, b"x")

        await asyncio.wait_for(run(), TIMEOUT)
        assert received == [f"line {i}" for i in range(5)]
        info = await proc.wait(TIMEOUT)
        assert info.exit_status is not None
        assert info.exit_status.success
        await proc.kill()


@pytest.mark.parametrize("via_process_handle", [False, True], ids=["manager", "process"])
@pytest.mark.parametrize("stream", STREAMS)
async def test_follow_delivers_each_line_as_a_slow_child_writes_it(
    manager: ProcessManagerHandle, tmp_path: Path, stream: Stream, via_process_handle: bool
) -> None:
    await follow_a_slow_writer(manager, tmp_path, stream, via_process_handle)


FAST_LINES = 100_000


async def test_follow_delivers_100k_fast_lines_once_in_order(
    manager: ProcessManagerHandle,
) -> None:
    code = f"for i in range({FAST_LINES}):\n    print(f'line {{i}}')\n"
    proc = await manager.spawn_with_handle(python_cmd(code, options=with_logs(STDOUT_ONLY)))
    # Following starts as the child starts; it writes in 8 KiB blocks that cut lines anywhere.
    lines = await collect(proc.follow_logs())
    assert lines == [f"line {i}" for i in range(FAST_LINES)]
    assert await proc.get_logs_stdout(LogsQuery.tail(2)) == lines[-2:]
    assert await proc.get_logs_stdout(LogsQuery.with_offset_and_limit(54_321, 2)) == [
        "line 54321",
        "line 54322",
    ]
    await proc.kill()


async def test_follow_ends_after_exit_with_the_unterminated_last_line(
    manager: ProcessManagerHandle,
) -> None:
    proc = await manager.spawn_with_handle(sh("echo a; echo; printf 'b\\r\\nlast'", MERGED))
    assert await collect(proc.follow_logs()) == ["a", "", "b\r", "last"]
    assert await collect(proc.follow_logs("stderr")) == ["a", "", "b\r", "last"]
    await proc.kill()


@pytest.mark.parametrize("ending", ["kill", "abort"])
async def test_follow_ends_when_the_process_is_killed_meanwhile(
    manager: ProcessManagerHandle, work_dir: Path, ending: str
) -> None:
    # One write: once "first" is seen, "partial" is in the file too, whenever the kill lands.
    proc = await manager.spawn_with_handle(sh(r"printf 'first\npartial'; exec sleep 60", BOTH))
    follow = proc.follow_logs()
    received: list[str] = []
    enders: list[asyncio.Task[None]] = []

    async def run() -> None:
        async with closing(follow):
            async for line in follow:
                received.append(line)
                if line == "first":  # the follow is under way: end the child from elsewhere
                    end = proc.kill() if ending == "kill" else manager.abort()
                    enders.append(asyncio.create_task(end))

    await asyncio.wait_for(run(), TIMEOUT)
    await asyncio.wait_for(enders[0], TIMEOUT)
    # The bytes written before the kill are all delivered, the unterminated line last.
    assert received == ["first", "partial"]
    assert process_dirs(work_dir) == []
    with pytest.raises(ProcessNotFoundError if ending == "kill" else ManagerAbortedError):
        await proc.get_process_info()


@pytest.mark.parametrize("via_process_handle", [False, True], ids=["manager", "process"])
async def test_follow_of_a_stream_not_captured_raises(
    manager: ProcessManagerHandle, via_process_handle: bool
) -> None:
    proc = await manager.spawn_with_handle(sh("echo out; echo err >&2", STDOUT_ONLY))
    if via_process_handle:
        follow = proc.follow_logs("stderr")
    else:
        follow = manager.follow_logs(proc.id, "stderr")
    with pytest.raises(LoggingNotConfiguredError) as caught:
        await collect(follow)
    assert isinstance(caught.value, GetLogsError)
    assert caught.value.process_id == proc.id
    assert "stderr" in str(caught.value)
    assert str(proc.id) in str(caught.value)
    with pytest.raises(ValueError, match="stream"):
        await collect(manager.follow_logs(proc.id, "stdin"))  # type: ignore[arg-type]
    with pytest.raises(ProcessNotFoundError):
        await collect(manager.follow_logs(ProcessId.new()))
    await proc.kill()


# --- another loop -------------------------------------------------------------------------------


def test_logs_on_uvloop(tmp_path: Path, work_dir: Path) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        async with ProcessManager.spawn(work_dir) as handle:
            process_id = await handle.spawn(sh(THREE_LINES, MERGED))
            await handle.wait(process_id, timeout=TIMEOUT)
            assert await handle.get_logs_stderr(process_id, LogsQuery.tail(2)) == [
                "err 1",
                "out 2",
            ]
            assert await collect(handle.follow_logs(process_id)) == ["out 1", "err 1", "out 2"]
            await handle.kill(process_id)
            await follow_a_slow_writer(handle, tmp_path, "stdout", via_process_handle=True)
        assert process_dirs(work_dir) == []

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


# --- no leaks -----------------------------------------------------------------------------------


async def test_no_fd_leak_over_many_logged_processes(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    async def cycle(logging_type: LoggingType) -> None:
        process_id = await manager.spawn(sh("echo out; echo err >&2", logging_type))
        await manager.wait(process_id, timeout=TIMEOUT)
        assert await manager.get_logs_stdout(process_id, LogsQuery.tail(1)) != []
        assert await manager.get_logs_stderr(process_id) != []
        assert await collect(manager.follow_logs(process_id, "stderr")) != []
        await manager.kill(process_id)

    for logging_type in (BOTH, MERGED):  # warm up: thread pool, lazily opened resources
        await cycle(logging_type)
    before = fd_count()
    for i in range(50):
        await cycle(BOTH if i % 2 else MERGED)
    assert fd_count() == before
    assert process_dirs(work_dir) == []
