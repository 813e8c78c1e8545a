"""A child that swaps its own log file for something else cannot freeze or fool the manager.

The child owns its process dir, so it can replace ``stdout.log`` with a FIFO (opening that for
reading would block until a writer comes: forever) or with a symbolic link to a file it chose.
Queries, ``follow_logs`` and ``abort`` must all answer within a bound: the queries and the follow
with :class:`GetLogsError`, never by reading through the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from pathlib import Path

import pytest
from conftest import TIMEOUT, collect, python_cmd, take

from corral import (
    CmdOptions,
    GetLogsError,
    LoggingType,
    LogsQuery,
    MessagingType,
    ProcessId,
    ProcessManagerHandle,
)
from corral._logs import STDOUT_LOG_NAME, LogFile, follow_lines, open_log

#: Writes a line to its log, replaces the log's name with argv[1] (a FIFO, or a symbolic link
#: to argv[2]), says so on its message output, then runs on until it is killed.
SWAPPER = f"""\
import os, sys, time
log = os.path.join(os.path.dirname(os.environ["PROCESS_DATA_DIR"]), {STDOUT_LOG_NAME!r})
print("before the swap", flush=True)
os.unlink(log)
if sys.argv[1] == "fifo":
    os.mkfifo(log, 0o600)
else:
    os.symlink(sys.argv[2], log)
with open(os.environ["OUTPUT_PIPE"], "w") as out:
    out.write("swapped\\n")
time.sleep(60)
"""

#: A file the link points to, whose lines must never come back as the child's log.
SECRET = "secret line, not the child's log"

KINDS = ["fifo", "symlink"]


async def spawn_swapper(manager: ProcessManagerHandle, kind: str, target: Path) -> ProcessId:
    """A SWAPPER child, returned once its log is swapped."""
    options = CmdOptions(
        message_output=MessagingType.NAMED_PIPE, logging_type=LoggingType.STDOUT_ONLY
    )
    process_id = await manager.spawn(python_cmd(SWAPPER, kind, str(target), options=options))
    stream = await manager.subscribe_message_stream(process_id)
    assert [m.to_string() for m in await take(stream, 1)] == ["swapped"]
    return process_id


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text(SECRET + "\n")
    return path


def release_blocked_readers(fifo: Path) -> None:
    """Let a reader stuck in ``open()`` of ``fifo`` go on (a writer comes, then leaves at once).

    Only a regression leaves one; without this its thread would keep the test run from ending.
    """
    with contextlib.suppress(OSError):  # gone, no longer a FIFO, or no reader waits (ENXIO)
        if stat.S_ISFIFO(os.lstat(fifo).st_mode):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


# Without the fix the follow blocks the event loop itself, where no asyncio timeout can fire:
# pytest-timeout bounds those tests instead.
@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", KINDS)
async def test_queries_follow_and_abort_answer_when_the_log_is_swapped(
    manager: ProcessManagerHandle, work_dir: Path, kind: str, secret: Path
) -> None:
    process_id = await spawn_swapper(manager, kind, secret)
    try:
        for query in (LogsQuery.fetch_all(), LogsQuery.tail(1), LogsQuery.with_offset(1)):
            with pytest.raises(GetLogsError) as caught:
                async with asyncio.timeout(TIMEOUT):
                    await manager.get_logs_stdout(process_id, query)
            assert str(process_id) in str(caught.value)
            assert isinstance(caught.value.__cause__, OSError)
        with pytest.raises(GetLogsError) as caught:
            await collect(manager.follow_logs(process_id))
        assert isinstance(caught.value.__cause__, OSError)
        # The manager still answers, and abort ends the child without waiting on the log.
        assert (await manager.get_process_info(process_id)).is_running
        async with asyncio.timeout(TIMEOUT):
            await manager.abort()
    finally:
        release_blocked_readers(work_dir / str(process_id) / STDOUT_LOG_NAME)


def test_open_log_refuses_what_is_not_a_regular_file(tmp_path: Path, secret: Path) -> None:
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo, 0o600)
    link = tmp_path / "link.log"
    link.symlink_to(secret)
    for path, words in ((fifo, "a FIFO"), (link, "symbolic link"), (tmp_path, "a directory")):
        with pytest.raises(OSError, match=words):
            open_log(path)
        with pytest.raises(OSError, match=words):
            LogFile(path).query(LogsQuery.tail(1))
    with pytest.raises(IsADirectoryError):
        open_log(tmp_path)


async def test_follow_lines_refuses_a_fifo_without_blocking_the_loop(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo, 0o600)

    async def never() -> None:
        await asyncio.Event().wait()

    with pytest.raises(OSError, match="a FIFO"):
        await anext(follow_lines(fifo, never))


async def test_a_follow_goes_on_with_the_file_it_opened(tmp_path: Path) -> None:
    """Once open, the followed file is the one opened, whatever gets its name later."""
    path = tmp_path / "out.log"
    path.write_bytes(b"first\n")
    exited = asyncio.Event()

    async def wait_exit() -> None:
        await exited.wait()

    follow = follow_lines(path, wait_exit)
    assert await take(follow, 1) == ["first"]
    with open(path, "ab") as writer:  # the writer's fd, like a child's stdout
        os.unlink(path)
        os.mkfifo(path, 0o600)
        writer.write(b"second\n")
    exited.set()
    async with asyncio.timeout(TIMEOUT):
        assert [line async for line in follow] == ["second"]
