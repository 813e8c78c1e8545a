"""The blocking facade, SyncProcessManager (SPEC section 8), with real processes and real threads.

Plain synchronous tests: no event loop in the test's thread. Nothing sleeps to wait for a
condition: exits are awaited through the manager's ``wait`` or through pidfds polled with a
bound, a child's output through ``follow_logs``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    TIMEOUT,
    assert_no_zombie,
    children_of,
    exercise_handle,
    fd_count,
    pid_alive,
    pidfd,
    pidfds,
    process_dirs,
    python_cmd,
    sleep_cmd,
    start_time,
)

from corral import (
    Cmd,
    CmdOptions,
    ExitStatus,
    GetLogsError,
    GetProcessInfoError,
    KillProcessError,
    LoggingNotConfiguredError,
    LoggingType,
    LogsQuery,
    ManagerAbortedError,
    ProcessId,
    ProcessNotFoundError,
    SpawnProcessError,
)
from corral._sync import (
    BlockingIterator,
    SyncProcessHandle,
    SyncProcessManager,
    SyncScopedProcessHandle,
)

# A coroutine never awaited, a task destroyed while pending, an unclosed resource: all failures.
pytestmark = pytest.mark.filterwarnings("error")

STDOUT_LOG = CmdOptions.with_logging(LoggingType.STDOUT_ONLY)
BOTH_LOGS = CmdOptions.with_logging(LoggingType.STDOUT_AND_STDERR)

KILLED = ExitStatus(None, signal.SIGKILL, False)
TERMINATED = ExitStatus(None, signal.SIGTERM, False)

#: Prints two lines on stdout, one on stderr, exits 3.
CHATTY = "import sys; print('out 1'); print('out 2'); print('err 1', file=sys.stderr); sys.exit(3)"
#: Prints "ready" and its data dir, then runs until killed.
READY = 'echo ready; echo "$PROCESS_DATA_DIR"; exec sleep 60'


@pytest.fixture
def pm(work_dir: Path) -> Iterator[SyncProcessManager]:
    """A blocking manager on ``work_dir``, closed at teardown."""
    manager = SyncProcessManager(work_dir)
    try:
        yield manager
    finally:
        manager.close()


# --- helpers ------------------------------------------------------------------------------------


def wait_readable(fds: Iterable[int], timeout: float = TIMEOUT) -> None:
    """Block until every fd (pidfds: until every process exited), within ``timeout`` in all."""
    pending = set(fds)
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        assert left > 0, f"fds {sorted(pending)} still not readable after {timeout} s"
        for fd, _ in poller.poll(left * 1000):
            pending.discard(fd)
            poller.unregister(fd)


def running_child(pm: SyncProcessManager) -> tuple[ProcessId, int, int, Path]:
    """Spawn READY; return its id, pid, start time and the manager's working dir."""
    process_id = pm.spawn(Cmd("sh", ["-c", READY], STDOUT_LOG))
    with pm.follow_logs(process_id) as lines:
        assert next(lines) == "ready"
        data_dir = Path(next(lines))
    pid = pm.get_process_info(process_id).pid
    assert pid is not None
    return process_id, pid, start_time(pid), data_dir.parents[1]


def exercise(pm: SyncProcessManager) -> None:
    """The whole blocking API on real children, whatever loop the manager runs on."""
    # Logs, exit status, info after the exit.
    chatty = pm.spawn(python_cmd(CHATTY, options=BOTH_LOGS))
    final = pm.wait(chatty, TIMEOUT)
    assert final.exit_status == ExitStatus(3, None, False)
    assert not final.is_running
    assert pm.get_process_info(chatty) == final
    assert pm.get_logs_stdout(chatty) == ["out 1", "out 2"]
    assert pm.get_logs_stdout(chatty, LogsQuery.tail(1)) == ["out 2"]
    assert pm.get_logs_stderr(chatty) == ["err 1"]
    assert list(pm.follow_logs(chatty)) == ["out 1", "out 2"]
    assert list(pm.follow_logs(chatty, "stderr")) == ["err 1"]

    # A running child: info, list, wait with a timeout, signals.
    sleeper = pm.spawn(sleep_cmd())
    info = pm.get_process_info(sleeper)
    assert info.is_running
    assert info.pid is not None
    assert set(pm.list_processes()) == {chatty, sleeper}
    with pytest.raises(TimeoutError):
        pm.wait(sleeper, timeout=0.01)
    assert pm.get_process_info(sleeper).is_running
    pm.send_signal(sleeper, signal.SIGTERM)
    assert pm.wait(sleeper, TIMEOUT).exit_status == TERMINATED
    with pytest.raises(KillProcessError, match="already exited"):
        pm.send_signal(sleeper, signal.SIGTERM)
    grouped = pm.spawn(sleep_cmd())
    pm.send_signal(grouped, signal.SIGKILL, group=True)
    assert pm.wait(grouped, TIMEOUT).exit_status == KILLED
    assert pm.terminate(pm.spawn(sleep_cmd()), grace=TIMEOUT).exit_status == TERMINATED

    # kill forgets the id.
    for process_id in pm.list_processes():
        pm.kill(process_id)
    assert pm.list_processes() == []
    with pytest.raises(ProcessNotFoundError):
        pm.get_process_info(sleeper)

    # A bound handle.
    proc = pm.spawn_with_handle(python_cmd(CHATTY, options=BOTH_LOGS))
    assert isinstance(proc, SyncProcessHandle)
    assert proc.manager is pm
    assert proc.wait(TIMEOUT).exit_status == ExitStatus(3, None, False)
    assert proc.get_process_info().exit_status == ExitStatus(3, None, False)
    assert proc.get_logs_stdout(LogsQuery.with_limit(1)) == ["out 1"]
    assert proc.get_logs_stderr() == ["err 1"]
    assert list(proc.follow_logs()) == ["out 1", "out 2"]
    proc.kill()
    with pytest.raises(ProcessNotFoundError):
        proc.wait()
    proc = pm.spawn_with_handle(sleep_cmd())
    with pytest.raises(TimeoutError):
        proc.wait(timeout=0.01)
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signal.SIGCONT, group=True)
    assert proc.terminate(grace=TIMEOUT).exit_status == TERMINATED
    proc.kill()

    # A scoped handle kills its process at the end of the block.
    with pm.spawn_with_scoped_handle(sleep_cmd()) as scoped:
        assert isinstance(scoped, SyncScopedProcessHandle)
        pid = scoped.get_process_info().pid
        assert pid is not None
        started = start_time(pid)
    assert not pid_alive(pid, started)
    with pytest.raises(ProcessNotFoundError):
        scoped.get_process_info()
    with pytest.raises(RuntimeError, match="boom"), pm.spawn_with_scoped_handle(sleep_cmd()) as s:
        raise RuntimeError("boom")
    with pytest.raises(ProcessNotFoundError):
        s.get_process_info()
    with pm.spawn_with_scoped_handle(Cmd("true")) as done:
        done.kill()  # killed inside the block: the end of the block is fine with that
    assert pm.list_processes() == []


# --- the API ------------------------------------------------------------------------------------


def test_the_whole_api_on_real_children(pm: SyncProcessManager, work_dir: Path) -> None:
    exercise(pm)
    assert process_dirs(work_dir) == []


def test_used_as_a_context_manager_it_kills_its_children_and_removes_its_dir() -> None:
    with SyncProcessManager() as pm:
        children = [running_child(pm) for _ in range(3)]
        [working_dir] = {dir_ for *_, dir_ in children}
        assert working_dir.is_dir()
        assert not pm.closed
    assert pm.closed
    for _, pid, started, _ in children:
        assert not pid_alive(pid, started)
    assert not working_dir.exists()
    assert_no_zombie()


def test_an_exception_in_the_block_closes_it_too(work_dir: Path) -> None:
    pm = SyncProcessManager(work_dir)
    children = []

    def block() -> None:
        with pm:
            children.append(running_child(pm))
            raise ValueError("oops")

    with pytest.raises(ValueError, match="oops"):
        block()
    assert pm.closed
    [(_, pid, started, _)] = children
    assert not pid_alive(pid, started)
    assert process_dirs(work_dir) == []


def test_wait_timeout_leaves_the_process_running(pm: SyncProcessManager) -> None:
    process_id, pid, started, _ = running_child(pm)
    with pytest.raises(TimeoutError):
        pm.wait(process_id, timeout=0.05)
    assert pm.get_process_info(process_id).is_running
    assert pid_alive(pid, started)
    pm.kill(process_id)
    assert not pid_alive(pid, started)


def test_errors_keep_their_classes(pm: SyncProcessManager) -> None:
    unknown = ProcessId.new()
    with pytest.raises(KillProcessError) as killed:
        pm.kill(unknown)
    assert isinstance(killed.value, ProcessNotFoundError)
    assert killed.value.process_id == unknown
    assert str(unknown) in str(killed.value)
    calls: list[tuple[Callable[[], object], type[Exception]]] = [
        (lambda: pm.get_process_info(unknown), GetProcessInfoError),
        (lambda: pm.wait(unknown), GetProcessInfoError),
        (lambda: pm.terminate(unknown), KillProcessError),
        (lambda: pm.send_signal(unknown, signal.SIGTERM), KillProcessError),
        (lambda: pm.get_logs_stdout(unknown), GetLogsError),
        (lambda: next(pm.follow_logs(unknown)), GetLogsError),
    ]
    for call, operation in calls:
        with pytest.raises(operation) as raised:
            call()
        assert isinstance(raised.value, ProcessNotFoundError)

    with pytest.raises(SpawnProcessError) as spawned:
        pm.spawn(Cmd("/no/such/program"))
    assert isinstance(spawned.value.__cause__, FileNotFoundError)
    with pytest.raises(SpawnProcessError, match="not a Runnable"):
        pm.spawn("sleep 1")  # type: ignore[arg-type]

    quiet = pm.spawn(Cmd("true"))
    with pytest.raises(LoggingNotConfiguredError):
        pm.get_logs_stdout(quiet)
    with pytest.raises(LoggingNotConfiguredError):
        next(pm.follow_logs(quiet, "stderr"))
    with pytest.raises(ValueError, match="stream must be"):
        next(pm.follow_logs(quiet, "stdin"))  # type: ignore[arg-type]
    with pytest.raises(KillProcessError, match="grace"):
        pm.terminate(quiet, grace=-1)
    with pytest.raises(KillProcessError, match="not a signal"):
        pm.send_signal(quiet, 12345)
    pm.kill(quiet)
    assert pm.list_processes() == []


def test_a_bad_working_dir_raises_at_once_and_leaves_no_thread(tmp_path: Path) -> None:
    threads = threading.active_count()
    with pytest.raises(FileNotFoundError):
        SyncProcessManager(tmp_path / "missing")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        SyncProcessManager(tmp_path / "file")
    assert threading.active_count() == threads


def test_a_failing_loop_factory_raises_its_error(tmp_path: Path) -> None:
    def broken() -> asyncio.AbstractEventLoop:
        raise OSError("no loop today")

    threads = threading.active_count()
    with pytest.raises(OSError, match="no loop today"):
        SyncProcessManager(tmp_path, loop_factory=broken)
    assert threading.active_count() == threads


def test_the_async_handle_works_from_another_loop(pm: SyncProcessManager) -> None:
    status, running = asyncio.run(exercise_handle(pm.handle))
    assert status == ExitStatus(6, None, False)
    assert running
    process_id = pm.spawn(sleep_cmd())  # both ways on one manager

    async def info() -> bool:
        return (await pm.handle.get_process_info(process_id)).is_running

    assert asyncio.run(info())
    pm.kill(process_id)


def test_on_uvloop(work_dir: Path) -> None:
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed")
    with SyncProcessManager(work_dir, loop_factory=uvloop.new_event_loop) as pm:
        assert isinstance(pm.loop, uvloop.Loop)
        exercise(pm)
        asyncio.run(exercise_handle(pm.handle))
        _, pid, started, _ = running_child(pm)
    assert not pid_alive(pid, started)
    assert process_dirs(work_dir) == []


# --- threads ------------------------------------------------------------------------------------


def test_eight_threads_at_once(pm: SyncProcessManager) -> None:
    threads, rounds = 8, 20
    start = threading.Barrier(threads)

    def worker(n: int) -> list[ProcessId]:
        start.wait(TIMEOUT)
        ids = []
        for i in range(rounds):
            tag = f"thread {n} round {i}"
            echo = pm.spawn(Cmd("echo", [tag], STDOUT_LOG))
            assert pm.wait(echo, TIMEOUT).exit_status == ExitStatus(0, None, True)
            assert pm.get_logs_stdout(echo) == [tag]
            pm.kill(echo)
            sleeper = pm.spawn(sleep_cmd())
            assert pm.get_process_info(sleeper).is_running
            with pytest.raises(TimeoutError):
                pm.wait(sleeper, timeout=0)
            pm.kill(sleeper)
            with pytest.raises(ProcessNotFoundError):
                pm.get_process_info(sleeper)
            ids += [echo, sleeper]
        return ids

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(worker, range(threads), timeout=60))
    spawned = [process_id for ids in results for process_id in ids]
    assert len(spawned) == len(set(spawned)) == threads * rounds * 2
    assert pm.list_processes() == []
    pm.close()
    assert_no_zombie()


def test_close_from_many_threads_at_once(work_dir: Path) -> None:
    pm = SyncProcessManager(work_dir)
    _, pid, started, _ = running_child(pm)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(pm.close) for _ in range(4)]:
            future.result(TIMEOUT)
    assert pm.closed
    assert not pid_alive(pid, started)
    pm.close()  # and once more


def test_a_call_blocked_in_another_thread_is_answered_by_close(work_dir: Path) -> None:
    pm = SyncProcessManager(work_dir)
    process_id, *_ = running_child(pm)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(pm.wait, process_id)
        pm.close()
        try:
            info = waiting.result(TIMEOUT)
        except ManagerAbortedError:  # the wait came after the abort
            pass
        else:  # the wait came first: the abort's SIGTERM ended it
            assert info.exit_status == TERMINATED


def test_close_releases_the_thread_and_every_fd(work_dir: Path) -> None:
    with SyncProcessManager(work_dir) as warm_up:  # one-time resources: the guardian's pipe
        warm_up.kill(warm_up.spawn(Cmd("true")))
    threads, fds = threading.active_count(), fd_count()
    pm = SyncProcessManager(work_dir)
    chatty = pm.spawn(python_cmd(CHATTY, options=BOTH_LOGS))
    pm.wait(chatty, TIMEOUT)
    assert pm.get_logs_stdout(chatty) == ["out 1", "out 2"]  # a worker thread reads logs
    running_child(pm)
    follower = pm.follow_logs(chatty)
    assert next(follower) == "out 1"  # left open: close() closes it
    assert threading.active_count() > threads
    pm.close()
    assert threading.active_count() == threads
    assert fd_count() == fds
    with pytest.raises(ManagerAbortedError):
        next(follower)
    follower.close()


# --- follow_logs ----------------------------------------------------------------------------------


def test_follow_logs_is_an_ordinary_iterator(pm: SyncProcessManager) -> None:
    code = "import time\nfor i in range(5):\n    print(i, flush=True)\n    time.sleep(0.02)"
    process_id = pm.spawn(python_cmd(code, options=STDOUT_LOG))
    lines = pm.follow_logs(process_id)
    assert isinstance(lines, Iterator)
    assert isinstance(lines, BlockingIterator)
    assert iter(lines) is lines
    assert list(lines) == ["0", "1", "2", "3", "4"]  # live, then to the end after the exit
    assert next(lines, None) is None  # stays exhausted
    lines.close()
    assert pm.get_process_info(process_id).exit_status == ExitStatus(0, None, True)
    assert [line for line in pm.follow_logs(process_id) if line != "2"] == ["0", "1", "3", "4"]


def test_follow_logs_ends_when_the_process_is_killed(pm: SyncProcessManager) -> None:
    process_id = pm.spawn(Cmd("sh", ["-c", READY], STDOUT_LOG))
    lines = pm.follow_logs(process_id)
    assert next(lines) == "ready"
    next(lines)  # the data dir
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        rest = pool.submit(list, lines)  # blocked, waiting for more
        pm.kill(process_id)
        assert rest.result(TIMEOUT) == []


LeaveEarly = Callable[[Iterator[str]], None]


def leave_by_break(lines: Iterator[str]) -> None:
    for _ in lines:
        break


def leave_by_close(lines: Iterator[str]) -> None:
    next(lines)
    assert isinstance(lines, BlockingIterator)
    lines.close()
    lines.close()
    assert list(lines) == []


def leave_by_with(lines: Iterator[str]) -> None:
    assert isinstance(lines, BlockingIterator)
    with lines:
        next(lines)


def leave_by_garbage_collection(lines: Iterator[str]) -> None:
    next(lines)
    cycle: list[Any] = [lines]
    cycle.append(cycle)
    del cycle
    gc.collect()


@pytest.mark.parametrize(
    "leave",
    [leave_by_break, leave_by_close, leave_by_with, leave_by_garbage_collection],
    ids=["break", "close", "with", "gc"],
)
def test_leaving_follow_logs_early_releases_the_follower(
    pm: SyncProcessManager, leave: LeaveEarly
) -> None:
    process_id, pid, started, _ = running_child(pm)  # and one follow, to warm up
    fds = fd_count()
    for _ in range(3):
        leave(pm.follow_logs(process_id))
    assert fd_count() == fds
    assert pid_alive(pid, started)  # following does nothing to the process
    pm.kill(process_id)


def test_an_iterator_dropped_on_the_loop_thread_is_closed_there(pm: SyncProcessManager) -> None:
    process_id, *_ = running_child(pm)
    fds = fd_count()
    lines = pm.follow_logs(process_id)
    assert next(lines) == "ready"
    holder = [lines]
    del lines

    async def drop() -> None:
        holder.clear()  # the last reference goes on the manager's own thread: no waiting there
        await asyncio.sleep(0)  # the scheduled close starts
        await asyncio.gather(*pm._portal._posted)  # and ends (the facade tracks what it starts)

    asyncio.run_coroutine_threadsafe(drop(), pm.loop).result(TIMEOUT)
    assert fd_count() == fds


# --- the deadlock guard ---------------------------------------------------------------------------


def test_blocking_calls_on_the_managers_own_loop_raise(pm: SyncProcessManager) -> None:
    process_id, *_ = running_child(pm)
    lines = pm.follow_logs(process_id)

    async def on_the_loop() -> list[ProcessId]:
        calls: list[Callable[[], object]] = [
            pm.list_processes,
            lambda: pm.spawn(sleep_cmd()),
            lambda: pm.kill(process_id),
            lambda: next(lines),
            lines.close,
            pm.close,
            lambda: pm.follow_logs(process_id),
        ]
        for call in calls:
            with pytest.raises(RuntimeError, match="deadlock"):
                call()
        return await pm.handle.list_processes()  # the async API is the way there

    assert asyncio.run_coroutine_threadsafe(on_the_loop(), pm.loop).result(TIMEOUT) == [process_id]

    caught: concurrent.futures.Future[BaseException] = concurrent.futures.Future()

    def callback() -> None:
        try:
            pm.get_process_info(process_id)
        except BaseException as exc:
            caught.set_result(exc)

    pm.loop.call_soon_threadsafe(callback)
    error = caught.result(TIMEOUT)
    assert isinstance(error, RuntimeError)
    assert "SyncProcessManager.get_process_info()" in str(error)
    assert "await manager.handle" in str(error)
    assert next(lines) == "ready"  # nothing was broken by the refused calls
    lines.close()
    assert not pm.closed


# --- after abort, after close -----------------------------------------------------------------


def test_after_abort_calls_raise_manager_aborted_until_close(pm: SyncProcessManager) -> None:
    process_id, pid, started, _ = running_child(pm)
    pm.abort(grace=0)
    assert not pid_alive(pid, started)
    with pytest.raises(KillProcessError) as raised:
        pm.kill(process_id)
    assert isinstance(raised.value, ManagerAbortedError)
    with pytest.raises(ManagerAbortedError):
        pm.abort()
    assert not pm.closed
    pm.close()
    assert pm.closed


OPERATIONS: list[tuple[str, Callable[[SyncProcessManager, ProcessId], object], type[Exception]]] = [
    ("spawn", lambda pm, _: pm.spawn(Cmd("true")), SpawnProcessError),
    ("spawn_with_handle", lambda pm, _: pm.spawn_with_handle(Cmd("true")), SpawnProcessError),
    (
        "spawn_with_scoped_handle",
        lambda pm, _: pm.spawn_with_scoped_handle(Cmd("true")),
        SpawnProcessError,
    ),
    ("get_process_info", lambda pm, p: pm.get_process_info(p), GetProcessInfoError),
    ("wait", lambda pm, p: pm.wait(p, 1), GetProcessInfoError),
    ("list_processes", lambda pm, _: pm.list_processes(), GetProcessInfoError),
    ("get_logs_stdout", lambda pm, p: pm.get_logs_stdout(p), GetLogsError),
    ("get_logs_stderr", lambda pm, p: pm.get_logs_stderr(p), GetLogsError),
    ("follow_logs", lambda pm, p: pm.follow_logs(p), GetLogsError),
    ("kill", lambda pm, p: pm.kill(p), KillProcessError),
    ("terminate", lambda pm, p: pm.terminate(p), KillProcessError),
    ("send_signal", lambda pm, p: pm.send_signal(p, signal.SIGTERM), KillProcessError),
    ("abort", lambda pm, _: pm.abort(), ManagerAbortedError),
    ("handle.kill", lambda pm, p: SyncProcessHandle(pm, p).kill(), KillProcessError),
]


@pytest.mark.parametrize(
    ("call", "operation"),
    [(call, op) for _, call, op in OPERATIONS],
    ids=[n for n, *_ in OPERATIONS],
)
def test_calls_after_close_raise_manager_aborted(
    work_dir: Path,
    call: Callable[[SyncProcessManager, ProcessId], object],
    operation: type[Exception],
) -> None:
    pm = SyncProcessManager(work_dir)
    process_id = pm.spawn(Cmd("true", options=STDOUT_LOG))
    pm.close()
    with pytest.raises(operation) as raised:
        call(pm, process_id)
    assert isinstance(raised.value, ManagerAbortedError)
    assert "closed" in str(raised.value)


def test_handles_and_iterators_that_outlive_close(work_dir: Path) -> None:
    pm = SyncProcessManager(work_dir)
    process_id, pid, started, _ = running_child(pm)
    lines = pm.follow_logs(process_id)
    assert next(lines) == "ready"
    with pm.spawn_with_scoped_handle(sleep_cmd()) as scoped:
        pm.close()  # the block's end then finds the manager closed: not an error
    assert not pid_alive(pid, started)
    with pytest.raises(GetLogsError) as raised:
        next(lines)
    assert isinstance(raised.value, ManagerAbortedError)
    lines.close()  # the manager's close closed the follower already
    with pytest.raises(ManagerAbortedError):
        scoped.get_process_info()


def test_a_dropped_scoped_handle_kills_its_process(pm: SyncProcessManager) -> None:
    scoped = pm.spawn_with_scoped_handle(sleep_cmd())
    process_id = scoped.id
    pid = scoped.get_process_info().pid
    assert pid is not None
    with pidfd(pid) as fd:
        assert fd is not None
        del scoped
        gc.collect()
        wait_readable([fd])
    with pytest.raises(ProcessNotFoundError):  # the kill took it out of the table first
        pm.get_process_info(process_id)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_sees_a_closed_manager(pm: SyncProcessManager) -> None:
    process_id, *_ = running_child(pm)
    with warnings_allowed():  # forking with threads running (3.12+ warns about it)
        child = os.fork()
    if child == 0:  # pragma: no cover - the forked child
        code = 1
        try:
            pm.list_processes()
        except ManagerAbortedError as exc:
            code = 0 if "forked" in str(exc) and pm.closed else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert pm.list_processes() == [process_id]  # the parent's manager is untouched


@contextlib.contextmanager
def warnings_allowed() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


# --- a program that exits without close() ------------------------------------------------------

#: Creates a SyncProcessManager (with its own temp dir), spawns sleepers from a short-lived thread,
#: reports them, waits for a line on stdin, then ends the way argv[1] says, without close(). At
#: exit (if atexit hooks run) it reports whether the manager was closed.
PROGRAM = textwrap.dedent(
    """
    import atexit, json, os, signal, sys, threading
    from pathlib import Path

    # Registered before corral's hooks, so it runs after them: was the manager closed cleanly?
    atexit.register(lambda: print(json.dumps({"closed at exit": pm.closed}), flush=True))

    from corral import Cmd, CmdOptions, LoggingType
    from corral._sync import SyncProcessManager

    def started(pid):
        text = open(f"/proc/{pid}/stat").read()
        return int(text[text.rindex(")") + 2 :].split()[19])

    pm = SyncProcessManager()
    pids = []

    def spawn():
        for _ in range(3):
            pid = pm.get_process_info(pm.spawn(Cmd("sleep", ["60"]))).pid
            pids.append([pid, started(pid)])

    spawner = threading.Thread(target=spawn)
    spawner.start()
    spawner.join()  # the spawning thread is gone; its children are not
    probe = pm.spawn(Cmd("sh", ["-c", 'echo "$PROCESS_DATA_DIR"'], CmdOptions.with_logging(
        LoggingType.STDOUT_ONLY)))
    pm.wait(probe)
    working_dir = str(Path(pm.get_logs_stdout(probe)[0]).parents[1])
    print(json.dumps({"pids": pids, "dir": working_dir}), flush=True)
    sys.stdin.readline()
    if sys.argv[1] == "os._exit":
        os._exit(0)
    elif sys.argv[1] == "SIGKILL":
        os.kill(os.getpid(), signal.SIGKILL)
    elif sys.argv[1] == "exception":
        raise SystemExit("ended by an exception")
    """
)


def guardian_of(pid: int) -> tuple[int, int]:
    """The (pid, start time) of ``pid``'s child in a session of its own: corral's guardian."""
    session = os.getsid(pid)
    found = []
    for child in children_of(pid):
        with contextlib.suppress(ProcessLookupError):
            if os.getsid(child) != session:
                found.append(child)
    assert len(found) == 1, f"guardians of {pid}: {found}"
    return found[0], start_time(found[0])


@pytest.mark.parametrize(
    ("ending", "returncode"),
    [("return", 0), ("exception", 1), ("os._exit", 0), ("SIGKILL", -signal.SIGKILL)],
)
def test_children_do_not_outlive_a_program_without_close(ending: str, returncode: int) -> None:
    program = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, ending],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert program.stdout is not None
        report = json.loads(program.stdout.readline() or "null")
        assert report is not None, program.communicate(timeout=TIMEOUT)[1]
        working_dir = Path(report["dir"])
        assert working_dir.is_dir()
        sleepers = [(pid, started) for pid, started in report["pids"]]
        # Alive now, after their spawning thread ended; watched until they and the guardian end.
        with pidfds([*sleepers, guardian_of(program.pid)]) as fds:
            out, err = program.communicate("\n", timeout=TIMEOUT)
            assert program.returncode == returncode, err
            wait_readable(fds)
        # With atexit (a normal end, an exception), the manager was closed by the facade's hook.
        closed_at_exit = [json.loads(line)["closed at exit"] for line in out.splitlines()]
        assert closed_at_exit == ([True] if ending in ("return", "exception") else [])
        for pid, started in sleepers:
            assert not pid_alive(pid, started)
        assert not working_dir.exists()
    finally:
        if program.poll() is None:
            program.kill()
            program.wait()
