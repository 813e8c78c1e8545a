"""Shared fixtures and helpers for the core tests: real processes, no mocks of the OS.

Nothing here sleeps to wait for a condition: exits are awaited through pidfds (or the manager's
own ``wait``), always with a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio

from corral import (
    Cmd,
    CmdOptions,
    ExitStatus,
    ManagerAbortedError,
    ProcessManager,
    ProcessManagerHandle,
    ProcessNotFoundError,
)
from corral._spawn import SPARES_DIR_PREFIX

#: Bound for every wait in the tests: generous, never reached when things work.
_T = TypeVar("_T")

TIMEOUT = 10.0

#: A Python child that records what it was started with, as JSON, into the file named by its
#: first argument: its argv (without the file), its exact exec-time environment (read from
#: /proc/self/environ, so that nothing the interpreter adds at start-up shows), its cwd.
RECORD = """\
import json, os, sys
with open("/proc/self/environ", "rb") as f:
    raw = f.read()
env = dict(item.decode().split("=", 1) for item in raw.split(b"\\0") if item)
record = {"argv": sys.argv[2:], "env": env, "cwd": os.getcwd(), "pid": os.getpid()}
with open(sys.argv[1], "w") as f:
    json.dump(record, f)
"""


def record_cmd(out: Path, *args: str, options: CmdOptions | None = None) -> Cmd:
    """A command whose child writes its argv, environment and cwd to ``out`` (see RECORD)."""
    return Cmd(sys.executable, ["-c", RECORD, str(out), *args], options)


def read_record(out: Path) -> dict[str, Any]:
    """What a RECORD child wrote."""
    return json.loads(out.read_text())


def python_cmd(code: str, *args: str, options: CmdOptions | None = None) -> Cmd:
    """``python -c code args...`` with the running interpreter."""
    return Cmd(sys.executable, ["-c", code, *args], options)


def sleep_cmd(seconds: int = 60) -> Cmd:
    """A child that runs until it is killed (within the test's lifetime)."""
    return Cmd("sleep", [str(seconds)])


# --- bounded reads of a stream -----------------------------------------------------------------


async def take(stream: AsyncIterator[_T], count: int, timeout: float = TIMEOUT) -> list[_T]:
    """The next ``count`` items of ``stream``."""
    async with asyncio.timeout(timeout):
        return [await anext(stream) for _ in range(count)]


async def collect(stream: AsyncIterator[_T], timeout: float = TIMEOUT) -> list[_T]:
    """Every item until the end of ``stream`` (an exception from it fails the test)."""
    async with asyncio.timeout(timeout):
        return [item async for item in stream]


async def outcomes(
    stream: AsyncIterator[Any], caught: type[Exception] = Exception, timeout: float = TIMEOUT
) -> list[Any]:
    """Every item, or the ``caught`` error raised in its place, until the end of ``stream``."""
    results: list[Any] = []
    async with asyncio.timeout(timeout):
        while True:
            try:
                results.append(await anext(stream))
            except StopAsyncIteration:
                return results
            except caught as exc:
                results.append(exc)


class LoopTurns:
    """Counts the turns of the running event loop while its ``with`` block runs.

    A callback posts itself again each time it runs: once per turn of the loop.
    """

    def __init__(self) -> None:
        self.count = 0
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.Handle | None = None

    def __enter__(self) -> LoopTurns:
        self._handle = self._loop.call_soon(self._tick)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self._handle.cancel()

    def _tick(self) -> None:
        self.count += 1
        self._handle = self._loop.call_soon(self._tick)


# --- the process table of the OS -------------------------------------------------------------


def process_dirs(work_dir: Path) -> list[Path]:
    """What a working dir holds, but the manager's spares: the emptied process dirs it keeps for
    reuse while it lives (a dir of its own, removed when it ends)."""
    return sorted(p for p in work_dir.iterdir() if not p.name.startswith(SPARES_DIR_PREFIX))


def fd_count() -> int:
    """How many fds this process has open."""
    return len(os.listdir("/proc/self/fd"))


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` from the state on (None when there is no such process)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):  # gone, or going
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return text[text.rindex(")") + 2 :].split()


def proc_stat(pid: int) -> tuple[str, int] | None:
    """The state letter and start time of ``pid`` (None when there is no such process)."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    return fields[0], int(fields[19])


def parent_of(pid: int) -> int:
    """The parent pid of a process that exists."""
    fields = stat_fields(pid)
    assert fields is not None, f"process {pid} does not exist"
    return int(fields[1])


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """Whether ``pid`` still names a live (not zombie) process, the same one if ``start_time``.

    A pid freed by a reap may be reused at once; the start time tells the processes apart.
    """
    stat = proc_stat(pid)
    if stat is None:
        return False
    state, started = stat
    if start_time is not None and started != start_time:
        return False
    return state not in ("Z", "X", "x")


def start_time(pid: int) -> int:
    """The start time of a running process (for :func:`pid_alive`)."""
    stat = proc_stat(pid)
    assert stat is not None, f"process {pid} does not exist"
    return stat[1]


def children_of(pid: int) -> set[int]:
    """The pids of ``pid``'s children (live or zombie)."""
    children: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(entry)
            if fields is not None and int(fields[1]) == pid:
                children.add(int(entry))
    return children


def children_of_self() -> set[int]:
    """The pids of this process's children (live or zombie)."""
    return children_of(os.getpid())


@contextlib.contextmanager
def pidfds(processes: Iterable[Sequence[int]]) -> Iterator[list[int]]:
    """Pidfds on ``processes`` (pid, start time), each checked to be that process and alive."""
    fds: list[int] = []
    try:
        for pid, started in processes:
            fds.append(os.pidfd_open(pid))
            assert pid_alive(pid, started), f"process {pid} is not the one reported, or gone"
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


@contextlib.contextmanager
def pidfd(pid: int) -> Iterator[int | None]:
    """A pidfd on ``pid`` (None if the process is already gone)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


async def wait_fd_readable(fd: int, timeout: float = TIMEOUT) -> None:
    """Wait, on the running loop, until ``fd`` is readable."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await asyncio.wait_for(ready, timeout)
    finally:
        loop.remove_reader(fd)


async def wait_exited(pid: int, timeout: float = TIMEOUT) -> None:
    """Wait until ``pid`` has exited (any process, not only our children): its pidfd is readable.

    Open the pidfd while the process is known to be the right one (not reaped yet) — or use
    :func:`pidfd` and :func:`wait_fd_readable` directly to open it earlier.
    """
    with pidfd(pid) as fd:
        if fd is not None:
            await wait_fd_readable(fd, timeout)


def assert_no_zombie() -> None:
    """No child of this process is waiting to be reaped."""
    try:
        found = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:  # no children at all
        return
    assert found == (0, 0), f"an unreaped child: {found}"


#: Spawns sleepers in the working dir given as argv[1], prints their pids and start times as JSON,
#: then ends the way argv[2] says, without calling abort().
PROGRAM = textwrap.dedent(
    """
    import asyncio, json, sys
    from corral import Cmd, ProcessManager

    def stat(pid):
        text = open(f"/proc/{pid}/stat").read()
        return int(text[text.rindex(")") + 2 :].split()[19])

    async def main():
        handle = ProcessManager.spawn(sys.argv[1])
        pids = []
        for _ in range(3):
            info = await handle.get_process_info(await handle.spawn(Cmd("sleep", ["60"])))
            pids.append([info.pid, stat(info.pid)])
        await handle.spawn(Cmd("true"))
        print(json.dumps(pids), flush=True)

    if sys.argv[2] == "asyncio.run":
        asyncio.run(main())
    elif sys.argv[2] == "loop never closed":  # only the interpreter's exit is left
        asyncio.new_event_loop().run_until_complete(main())
    elif sys.argv[2] == "uvloop":
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        runner.run(main())
        runner.close()
    """
)


def run_program_without_abort(work_dir: Path, ending: str) -> list[tuple[int, int]]:
    """Run PROGRAM to its end; return the (pid, start time) of the children it left running."""
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(work_dir), ending],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    pids = [tuple(p) for p in json.loads(done.stdout)]
    assert len(pids) == 3
    return pids  # type: ignore[return-value]


# --- scenarios shared by the default-loop and uvloop tests ------------------------------------


async def exercise_handle(handle: ProcessManagerHandle) -> tuple[ExitStatus | None, bool]:
    """Spawn, inspect, wait for and kill processes through ``handle``, from any loop."""
    process_id = await handle.spawn(sleep_cmd())
    assert (await handle.get_process_info(process_id)).is_running
    assert process_id in await handle.list_processes()
    with pytest.raises(TimeoutError):
        await handle.wait(process_id, timeout=0.01)
    await handle.kill(process_id)
    with pytest.raises(ProcessNotFoundError):
        await handle.get_process_info(process_id)
    exited = await handle.spawn(Cmd("sh", ["-c", "exit 6"]))
    info = await handle.wait(exited, TIMEOUT)
    await handle.kill(exited)
    scoped = await handle.spawn_with_scoped_handle(sleep_cmd())
    async with scoped:
        running = (await scoped.get_process_info()).is_running
    with pytest.raises(ProcessNotFoundError):
        await scoped.get_process_info()
    return info.exit_status, running


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    """An empty working dir for a manager."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest_asyncio.fixture
async def manager(work_dir: Path) -> AsyncIterator[ProcessManagerHandle]:
    """A manager on ``work_dir``, aborted at teardown (unless the test did it)."""
    handle = ProcessManager.spawn(work_dir)
    try:
        yield handle
    finally:
        with contextlib.suppress(ManagerAbortedError):
            await handle.abort()


@pytest.fixture
def restore_umask() -> Iterator[None]:
    """Put the process umask back after a test that changes it."""
    old = os.umask(0o022)
    os.umask(old)
    try:
        yield
    finally:
        os.umask(old)
