"""follow_lines against real child processes writing straight into the log file.

Every wait has a bound (``asyncio.wait_for``); nothing sleeps to wait for a condition. The slow
child is driven through its stdin: it writes a line, then waits for the test's go-ahead.
Both wake-up strategies are exercised: inotify (Linux) and the back-off poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Literal

import pytest

import corral._logs as logs_module
from corral._logs import follow_lines

TIMEOUT = 10.0

Watch = Literal["inotify", "poll"]
WATCHES = [
    pytest.param(
        "inotify",
        marks=pytest.mark.skipif(logs_module._LIBC is None, reason="no inotify here"),
    ),
    "poll",
]

# Prints a line, flushes, then waits for a line on stdin before the next; exits on EOF.
STEPPED = """\
import sys
for i in range(5):
    print(f"line {i}", flush=True)
    if not sys.stdin.readline():
        break
"""


async def spawn(
    path: Path, code: str, *, stdin: bool = False, unbuffered: bool = False
) -> asyncio.subprocess.Process:
    """A Python child running ``code`` with its stdout going straight into ``path``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    with path.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=out,
            env=env,
        )


async def collect(lines: AsyncGenerator[str, None]) -> list[str]:
    async with contextlib.aclosing(lines):
        return [line async for line in lines]


async def step(proc: asyncio.subprocess.Process) -> None:
    """Let a STEPPED child write its next line."""
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    await proc.stdin.drain()


def open_fds() -> dict[int, str]:
    """This process's open fds and what they point to."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the fd listdir itself used
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return fds


def inotify_fds() -> int:
    return sum(target == "anon_inode:inotify" for target in open_fds().values())


@pytest.mark.parametrize("watch", WATCHES)
async def test_lines_arrive_as_a_slow_child_writes_them(tmp_path: Path, watch: Watch) -> None:
    path = tmp_path / "out.log"
    proc = await spawn(path, STEPPED, stdin=True)
    lines = follow_lines(path, proc.wait, watch=watch)
    try:
        for i in range(5):
            assert await asyncio.wait_for(anext(lines), TIMEOUT) == f"line {i}"
            await step(proc)
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(lines), TIMEOUT)
    finally:
        await lines.aclose()
    assert proc.returncode == 0


@pytest.mark.parametrize("watch", WATCHES)
async def test_partial_line_is_held_back_until_its_newline(tmp_path: Path, watch: Watch) -> None:
    # "first\nabc" goes out in one write: once "first" is delivered, the follower has read
    # "abc" too and must keep it until "def\n" completes the line.
    code = """\
import sys
sys.stdout.write("first\\nabc"); sys.stdout.flush()
sys.stdin.readline()
sys.stdout.write("def\\nghi\\n"); sys.stdout.flush()
sys.stdin.readline()
"""
    path = tmp_path / "out.log"
    proc = await spawn(path, code, stdin=True)
    lines = follow_lines(path, proc.wait, watch=watch)
    try:
        assert await asyncio.wait_for(anext(lines), TIMEOUT) == "first"
        following = asyncio.ensure_future(anext(lines))
        await step(proc)
        assert await asyncio.wait_for(following, TIMEOUT) == "abcdef"
        assert await asyncio.wait_for(anext(lines), TIMEOUT) == "ghi"
        await step(proc)
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(lines), TIMEOUT)
    finally:
        await lines.aclose()


@pytest.mark.parametrize("watch", WATCHES)
@pytest.mark.parametrize("unbuffered", [False, True], ids=["8k-writes", "tiny-writes"])
async def test_fast_child_lines_all_delivered_once_in_order(
    tmp_path: Path, watch: Watch, unbuffered: bool
) -> None:
    # Buffered, the child writes 8 KiB at a time, cutting lines anywhere; unbuffered, print
    # makes several writes per line, so the follower often reads half a line.
    code = "for i in range(100_000):\n    print(i, 'x' * (i % 50))\n"
    path = tmp_path / "out.log"
    proc = await spawn(path, code, unbuffered=unbuffered)
    got = await asyncio.wait_for(collect(follow_lines(path, proc.wait, watch=watch)), TIMEOUT)
    assert got == [f"{i} " + "x" * (i % 50) for i in range(100_000)]


@pytest.mark.parametrize("watch", WATCHES)
async def test_unterminated_last_line_is_delivered_at_exit(tmp_path: Path, watch: Watch) -> None:
    code = "import sys; sys.stdout.buffer.write(b'a\\r\\n\\n\\xff\\nlast, no newline')"
    path = tmp_path / "out.log"
    proc = await spawn(path, code)
    got = await asyncio.wait_for(collect(follow_lines(path, proc.wait, watch=watch)), TIMEOUT)
    assert got == ["a\r", "", "\ufffd", "last, no newline"]


@pytest.mark.parametrize("watch", WATCHES)
async def test_lines_written_before_following_then_end(tmp_path: Path, watch: Watch) -> None:
    path = tmp_path / "out.log"
    proc = await spawn(path, "print('one'); print('two')")
    await asyncio.wait_for(proc.wait(), TIMEOUT)
    got = await asyncio.wait_for(collect(follow_lines(path, proc.wait, watch=watch)), TIMEOUT)
    assert got == ["one", "two"]


@pytest.mark.parametrize("watch", WATCHES)
async def test_a_line_bigger_than_the_read_chunk(tmp_path: Path, watch: Watch) -> None:
    path = tmp_path / "out.log"
    proc = await spawn(path, "print('y' * 100_000); print('z' * 7, end='')")
    lines = follow_lines(path, proc.wait, watch=watch, chunk_size=4096)
    got = await asyncio.wait_for(collect(lines), TIMEOUT)
    assert got == ["y" * 100_000, "z" * 7]


@pytest.mark.parametrize("watch", WATCHES)
@pytest.mark.parametrize("how", ["aclose", "break", "cancel"])
async def test_early_close_releases_fds_and_the_exit_task(
    tmp_path: Path, watch: Watch, how: str
) -> None:
    path = tmp_path / "out.log"
    proc = await spawn(path, STEPPED, stdin=True)
    fds_before, inotify_before = open_fds(), inotify_fds()
    tasks_before = asyncio.all_tasks()
    lines = follow_lines(path, proc.wait, watch=watch)
    try:
        if how == "aclose":
            assert await asyncio.wait_for(anext(lines), TIMEOUT) == "line 0"
            assert inotify_fds() == inotify_before + (watch == "inotify")
            assert len(open_fds()) == len(fds_before) + 1 + (watch == "inotify")
            await lines.aclose()
        elif how == "break":
            async with contextlib.aclosing(lines):
                async for line in lines:
                    assert line == "line 0"
                    break
        else:

            async def consume() -> None:
                async for line in lines:
                    assert line == "line 0"
                    first.set()

            first = asyncio.Event()
            consumer = asyncio.create_task(consume())
            await asyncio.wait_for(first.wait(), TIMEOUT)
            consumer.cancel()  # while the follower waits for the next write
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(consumer, TIMEOUT)
        assert open_fds() == fds_before
        assert inotify_fds() == inotify_before
        leftover = asyncio.all_tasks() - tasks_before - {asyncio.current_task()}
        if leftover:
            await asyncio.wait(leftover, timeout=TIMEOUT)
        assert all(task.cancelled() for task in leftover)
    finally:
        proc.kill()
        await asyncio.wait_for(proc.wait(), TIMEOUT)
        await lines.aclose()


@pytest.mark.parametrize("watch", WATCHES)
async def test_truncated_log_is_followed_from_its_start(tmp_path: Path, watch: Watch) -> None:
    # The test is the writer here; "exit" is an event it sets.
    path = tmp_path / "out.log"
    path.write_bytes(b"a\nb\n")
    done = asyncio.Event()
    lines = follow_lines(path, done.wait, watch=watch)
    try:
        assert await asyncio.wait_for(anext(lines), TIMEOUT) == "a"
        assert await asyncio.wait_for(anext(lines), TIMEOUT) == "b"
        following = asyncio.ensure_future(anext(lines))
        path.write_bytes(b"c\n")  # truncates, then writes less than was there
        assert await asyncio.wait_for(following, TIMEOUT) == "c"
        done.set()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(lines), TIMEOUT)
    finally:
        await lines.aclose()


async def test_an_error_from_exited_comes_after_the_lines(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    path.write_bytes(b"a\nb")

    async def boom() -> None:
        raise RuntimeError("wait failed")

    lines = follow_lines(path, boom)
    assert await asyncio.wait_for(anext(lines), TIMEOUT) == "a"
    assert await asyncio.wait_for(anext(lines), TIMEOUT) == "b"
    with pytest.raises(RuntimeError, match="wait failed"):
        await asyncio.wait_for(anext(lines), TIMEOUT)


async def test_missing_file_raises_os_error(tmp_path: Path) -> None:
    lines = follow_lines(tmp_path / "nope.log", asyncio.Event().wait)
    with pytest.raises(FileNotFoundError):
        await anext(lines)


async def test_unknown_watch_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    path.write_bytes(b"")
    fds_before = open_fds()
    lines = follow_lines(path, asyncio.Event().wait, watch="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="watch"):
        await anext(lines)
    assert open_fds() == fds_before


def test_works_on_uvloop(tmp_path: Path) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        await test_lines_arrive_as_a_slow_child_writes_them(tmp_path / "a", "inotify")
        await test_fast_child_lines_all_delivered_once_in_order(tmp_path / "b", "inotify", True)
        await test_early_close_releases_fds_and_the_exit_task(tmp_path / "c", "inotify", "aclose")

    for sub in "abc":
        (tmp_path / sub).mkdir()
    if logs_module._LIBC is None:
        pytest.skip("no inotify here")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert "uvloop" in type(runner.get_loop()).__module__
        runner.run(scenario())
