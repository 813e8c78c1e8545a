"""Lifecycle and safety with real processes and real signals (SPEC section 6).

Process groups (grandchildren die with their parent's group), terminate's grace, send_signal,
no orphans when the parent is SIGKILLed (the guardian), aborting many children at once, a
thousand live children without a thread each, churn without leaks, private permissions.

Nothing here sleeps to wait for a condition: exits are awaited through pidfds (which work for
any pid, not only our children) or the manager's own ``wait``; a child reports that it is ready
on its captured stdout, which the test follows. Every wait has a bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tracemalloc
import warnings
from collections.abc import AsyncGenerator, Awaitable, Iterable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import TypeVar, cast

import pytest
from conftest import (
    TIMEOUT,
    assert_no_zombie,
    children_of_self,
    fd_count,
    parent_of,
    pid_alive,
    process_dirs,
    sleep_cmd,
    start_time,
    wait_exited,
    wait_fd_readable,
)

from corral import (
    Cmd,
    CmdOptions,
    ExitStatus,
    KillProcessError,
    LoggingType,
    ProcessId,
    ProcessManager,
    ProcessManagerHandle,
    ProcessNotFoundError,
)
from corral import _guardian as guardian_module
from corral._platform import _exits as exits_module

T = TypeVar("T")

STDOUT_LOG = CmdOptions(logging_type=LoggingType.STDOUT_ONLY)

#: Starts a grandchild (in the child's process group), prints its pid, waits for it.
GRANDCHILD = "sleep 300 & echo $!; wait"
#: Ignores SIGTERM (inherited by the exec'd sleep), then says so.
TRAPS_TERM = "trap '' TERM; echo ready; exec sleep 300"

KILLED = ExitStatus(None, signal.SIGKILL, False)
TERMINATED = ExitStatus(None, signal.SIGTERM, False)


def bash(script: str, options: CmdOptions | None = STDOUT_LOG) -> Cmd:
    return Cmd("bash", ["-c", script], options)


# --- helpers: the OS's view of processes ----------------------------------------------------------


def status_field(pid: int, name: str) -> str:
    """A field of /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == name:
                return value.strip()
    raise KeyError(name)


def has_signal(mask: str, sig: int) -> bool:
    """Whether a hex signal set from /proc/<pid>/status holds ``sig``."""
    return bool(int(mask, 16) >> (sig - 1) & 1)


def signal_pending(pid: int, sig: int) -> bool:
    """Whether ``sig`` was sent to ``pid`` and not delivered yet."""
    return any(has_signal(status_field(pid, f), sig) for f in ("ShdPnd", "SigPnd"))


def guardians_of_self() -> list[int]:
    """Our children in a session of their own: corral's guardian (its children share ours)."""
    ours = os.getsid(0)
    found = []
    for pid in children_of_self():
        with contextlib.suppress(ProcessLookupError):
            if os.getsid(pid) != ours and pid_alive(pid):
                found.append(pid)
    return found


def rss_bytes() -> int:
    return int(status_field(os.getpid(), "VmRSS").split()[0]) * 1024


@contextlib.contextmanager
def pidfds(processes: Iterable[tuple[int, int]]) -> Iterator[list[int]]:
    """Pidfds on those of ``processes`` (pid, start time) still running; closed at the end.

    The identity is checked after the open: a pidfd on a reused pid is dropped (that process
    is gone, which is what the callers want to know).
    """
    fds: list[int] = []
    try:
        for pid, started in processes:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            if pid_alive(pid, started):
                fds.append(fd)
            else:
                os.close(fd)
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


async def wait_all_readable(fds: Iterable[int], timeout: float) -> None:
    """Wait until every pidfd is readable (its process exited), within ``timeout`` in all."""
    async with asyncio.timeout(timeout):
        await asyncio.gather(*(wait_fd_readable(fd, timeout) for fd in fds))


async def first_lines(handle: ProcessManagerHandle, process_id: ProcessId, n: int = 1) -> list[str]:
    """The first ``n`` lines the child prints on its captured stdout, as they come."""
    follow = cast(AsyncGenerator[str, None], handle.follow_logs(process_id))
    lines: list[str] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            async for line in follow:
                lines.append(line)
                if len(lines) == n:
                    break
    finally:
        await follow.aclose()
    assert len(lines) == n, f"the child ended after {lines!r}"
    return lines


async def spawn_with_grandchild(
    handle: ProcessManagerHandle, script: str = GRANDCHILD
) -> tuple[ProcessId, int, int, int]:
    """Spawn ``script`` (which prints its grandchild's pid first); return the ids and pids."""
    process_id = await handle.spawn(bash(script))
    grandchild = int((await first_lines(handle, process_id))[0])
    child = (await handle.get_process_info(process_id)).pid
    assert child is not None
    assert os.getpgid(grandchild) == child  # in the child's group
    return process_id, child, grandchild, start_time(grandchild)


def bounded(call: Awaitable[T]) -> Awaitable[T]:
    """``call``, failing after TIMEOUT rather than hanging the run if a kill goes wrong."""
    return asyncio.wait_for(call, TIMEOUT)


async def warm_up(handle: ProcessManagerHandle) -> None:
    """One spawn and kill, so that one-time resources (the guardian's pipe) exist already."""
    await bounded(handle.kill(await handle.spawn(Cmd("true"))))


# --- kill and terminate reach the whole group -----------------------------------------------------


@pytest.mark.parametrize("ending", ["kill", "terminate", "terminate grace=0"])
async def test_grandchild_dies_with_its_parents_group(
    manager: ProcessManagerHandle, work_dir: Path, ending: str
) -> None:
    process_id, child, grandchild, started = await spawn_with_grandchild(manager)
    with pidfds([(grandchild, started)]) as [fd]:
        if ending == "kill":
            await bounded(manager.kill(process_id))
        else:
            grace = 0.0 if ending.endswith("=0") else TIMEOUT
            info = await bounded(manager.terminate(process_id, grace))
            assert info.exit_status == (KILLED if grace == 0 else TERMINATED)
            assert info.pid == child
            assert not info.is_running
        await wait_fd_readable(fd)
    assert not pid_alive(grandchild, started)
    if ending != "kill":
        await bounded(manager.kill(process_id))
    assert process_dirs(work_dir) == []
    assert_no_zombie()


async def test_terminate_escalation_kills_a_grandchild_ignoring_sigterm(
    manager: ProcessManagerHandle,
) -> None:
    # Both the child and its grandchild (which inherits the ignored disposition) ignore SIGTERM.
    process_id, _, grandchild, started = await spawn_with_grandchild(
        manager, f"trap '' TERM; {GRANDCHILD}"
    )
    with pidfds([(grandchild, started)]) as [fd]:
        info = await bounded(manager.terminate(process_id, grace=0.2))
        assert info.exit_status == KILLED
        await wait_fd_readable(fd)
    await bounded(manager.kill(process_id))


async def test_child_ignoring_sigterm_is_killed_after_grace(manager: ProcessManagerHandle) -> None:
    process_id = await manager.spawn(bash(TRAPS_TERM))
    assert await first_lines(manager, process_id) == ["ready"]  # the trap is in place
    began = time.monotonic()
    info = await bounded(manager.terminate(process_id, grace=0.3))
    elapsed = time.monotonic() - began
    assert info.exit_status == KILLED
    assert 0.3 <= elapsed < 3.0
    # Known until killed.
    assert await manager.get_process_info(process_id) == info
    await bounded(manager.kill(process_id))
    with pytest.raises(ProcessNotFoundError):
        await manager.get_process_info(process_id)


async def test_child_exiting_on_sigterm_returns_promptly_and_stays_known(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    process_id = await manager.spawn(sleep_cmd(300))
    pid = (await manager.get_process_info(process_id)).pid
    assert pid is not None
    began = time.monotonic()
    info = await bounded(manager.terminate(process_id, grace=TIMEOUT))
    assert time.monotonic() - began < 2.0  # the grace is not waited out
    assert info.exit_status == TERMINATED
    assert info.pid == pid
    assert_no_zombie()
    assert await manager.get_process_info(process_id) == info
    assert await manager.wait(process_id, TIMEOUT) == info
    assert await manager.list_processes() == [process_id]
    assert (work_dir / str(process_id)).is_dir()
    # A second terminate of the exited process only reports how it ended.
    assert await bounded(manager.terminate(process_id, grace=TIMEOUT)) == info
    await bounded(manager.kill(process_id))
    with pytest.raises(ProcessNotFoundError):
        await manager.get_process_info(process_id)
    assert process_dirs(work_dir) == []


async def test_terminate_errors(manager: ProcessManagerHandle) -> None:
    unknown = ProcessId.new()
    with pytest.raises(ProcessNotFoundError) as caught:
        await bounded(manager.terminate(unknown, grace=0.1))
    assert isinstance(caught.value, KillProcessError)
    assert caught.value.process_id == unknown
    process_id = await manager.spawn(sleep_cmd(300))
    for grace in (-1.0, float("nan")):
        with pytest.raises(KillProcessError):
            await bounded(manager.terminate(process_id, grace))
    assert (await manager.get_process_info(process_id)).is_running
    await bounded(manager.kill(process_id))


# --- send_signal ----------------------------------------------------------------------------------


async def test_send_signal_reaches_only_the_child_by_default(
    manager: ProcessManagerHandle,
) -> None:
    process_id, _, grandchild, started = await spawn_with_grandchild(manager)
    with pidfds([(grandchild, started)]) as [fd]:
        try:
            await manager.send_signal(process_id, signal.SIGTERM)
            info = await manager.wait(process_id, TIMEOUT)
            assert info.exit_status == TERMINATED
            # The child is dead and reaped: had the group been signalled, the grandchild would
            # be dead or have SIGTERM pending now. It has neither.
            assert pid_alive(grandchild, started)
            assert not signal_pending(grandchild, signal.SIGTERM)
        finally:
            # Left in the group, which kill() below would end: ended here, even on a failure.
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            await wait_fd_readable(fd)
    await bounded(manager.kill(process_id))


async def test_send_signal_to_the_group(manager: ProcessManagerHandle) -> None:
    process_id, _, grandchild, started = await spawn_with_grandchild(manager)
    with pidfds([(grandchild, started)]) as [fd]:
        await manager.send_signal(process_id, signal.SIGTERM, group=True)
        await wait_fd_readable(fd)
    info = await manager.wait(process_id, TIMEOUT)
    assert info.exit_status == TERMINATED
    await bounded(manager.kill(process_id))


async def test_send_signal_that_the_child_handles(manager: ProcessManagerHandle) -> None:
    process_id = await manager.spawn(
        bash("trap 'echo got USR1' USR1; echo ready; while :; do sleep 0.2; done")
    )
    follow = cast(AsyncGenerator[str, None], manager.follow_logs(process_id))
    try:
        async with asyncio.timeout(TIMEOUT):
            assert await anext(follow) == "ready"
            await manager.send_signal(process_id, signal.SIGUSR1)
            assert await anext(follow) == "got USR1"
    finally:
        await follow.aclose()
    assert (await manager.get_process_info(process_id)).is_running
    await bounded(manager.kill(process_id))


async def test_send_signal_errors(manager: ProcessManagerHandle) -> None:
    running = await manager.spawn(sleep_cmd(300))
    for bad in (-1, 12345, "SIGNOPE", "SIG_IGN"):
        with pytest.raises(KillProcessError, match="not a signal") as refused:
            await manager.send_signal(running, bad)
        assert isinstance(refused.value, ValueError)
    # 0 sends nothing: it only checks that the process runs; names are taken.
    await manager.send_signal(running, 0)
    await manager.send_signal(running, "SIGCONT")
    await manager.send_signal(running, "cont", group=True)
    assert (await manager.get_process_info(running)).is_running

    exited = await manager.spawn(Cmd("true"))
    await manager.wait(exited, TIMEOUT)
    for sig in (signal.SIGTERM, 0):
        with pytest.raises(KillProcessError, match="already exited") as caught:
            await manager.send_signal(exited, sig)
    assert not isinstance(caught.value, ProcessNotFoundError)
    assert caught.value.process_id == exited

    for unknown in (ProcessId.new(), running):
        if unknown == running:
            await bounded(manager.kill(running))
        with pytest.raises(ProcessNotFoundError) as not_found:
            await manager.send_signal(unknown, signal.SIGTERM, group=True)
        assert isinstance(not_found.value, KillProcessError)
        assert not_found.value.process_id == unknown
    await bounded(manager.kill(exited))


# --- a child ending on its own --------------------------------------------------------------------


async def test_exits_are_seen_without_pidfds_too(
    manager: ProcessManagerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where pidfds are missing, a thread per child waits for it; the guardian still forgets each
    group that its child left empty."""
    await warm_up(manager)  # one-time resources (the guardian) exist already
    monkeypatch.setattr(exits_module, "HAS_PIDFD", False)
    threads = threading.active_count()
    sleeping = await manager.spawn(sleep_cmd(300))
    assert threading.active_count() == threads + 1  # the thread waiting for it
    exiting = await manager.spawn(Cmd("sh", ["-c", "exit 3"]))
    exited = await manager.wait(exiting, TIMEOUT)
    assert exited.exit_status == ExitStatus(3, None, False)
    terminated = await bounded(manager.terminate(sleeping))
    assert terminated.exit_status == TERMINATED
    assert_no_zombie()
    assert not {exited.pid, terminated.pid} & table_groups()
    await asyncio.gather(*(bounded(manager.kill(i)) for i in (sleeping, exiting)))


async def test_child_exiting_on_its_own_is_reaped_promptly(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    began = time.monotonic()
    process_id = await manager.spawn(Cmd("sh", ["-c", "exit 3"]))
    info = await manager.wait(process_id, TIMEOUT)
    assert time.monotonic() - began < 2.0
    assert info.exit_status == ExitStatus(3, None, False)
    assert_no_zombie()  # reaped before wait() answered (the guardian is our only child)
    ids = await asyncio.gather(*(manager.spawn(Cmd("true")) for _ in range(50)))
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(*(manager.wait(i) for i in ids))
    assert_no_zombie()
    pids = {info.pid for info in await asyncio.gather(*(manager.get_process_info(i) for i in ids))}
    assert not pids & children_of_self()
    await asyncio.gather(*(manager.kill(i) for i in [process_id, *ids]))
    assert process_dirs(work_dir) == []


# --- abort ----------------------------------------------------------------------------------------


async def test_abort_of_500_live_children_within_2_seconds(work_dir: Path) -> None:
    handle = ProcessManager.spawn(work_dir)
    ids = await asyncio.gather(*(handle.spawn(sleep_cmd(300)) for _ in range(500)))
    infos = await asyncio.gather(*(handle.get_process_info(i) for i in ids))
    pids = [(info.pid, start_time(info.pid)) for info in infos if info.pid is not None]
    assert len(pids) == 500
    began = time.monotonic()
    await asyncio.wait_for(handle.abort(), TIMEOUT)
    assert time.monotonic() - began < 2.0
    assert not any(pid_alive(pid, started) for pid, started in pids)
    assert_no_zombie()
    assert process_dirs(work_dir) == []


async def test_abort_kills_children_ignoring_sigterm_after_one_grace(work_dir: Path) -> None:
    handle = ProcessManager.spawn(work_dir)
    ids = await asyncio.gather(*(handle.spawn(bash(TRAPS_TERM)) for _ in range(20)))
    readiness = await asyncio.gather(*(first_lines(handle, i) for i in ids))
    assert readiness == [["ready"]] * 20
    infos = await asyncio.gather(*(handle.get_process_info(i) for i in ids))
    pids = [(info.pid, start_time(info.pid)) for info in infos if info.pid is not None]
    began = time.monotonic()
    await asyncio.wait_for(handle.abort(grace=0.3), TIMEOUT)
    elapsed = time.monotonic() - began
    # One grace for all, not twenty (6 s); the rest is slack for a loaded machine, as above.
    assert 0.3 <= elapsed < 3.0
    assert not any(pid_alive(pid, started) for pid, started in pids)
    assert_no_zombie()
    assert process_dirs(work_dir) == []


# --- a thousand children alive at once ------------------------------------------------------------

#: Fds the 1,000-children test may need: one pidfd per child, plus pytest's and the loop's own.
NEEDED_FDS = 2500


@pytest.fixture
def enough_fds() -> Iterator[None]:
    """Raise the soft RLIMIT_NOFILE for the test if needed (and possible); restore it after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < NEEDED_FDS:
        if hard != resource.RLIM_INFINITY and hard < NEEDED_FDS:
            pytest.skip(f"the hard RLIMIT_NOFILE is {hard}, below the {NEEDED_FDS} fds needed")
        raised = NEEDED_FDS if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_1000_live_children_without_a_thread_each(work_dir: Path, enough_fds: None) -> None:
    async with ProcessManager.spawn() as other:
        await warm_up(other)  # the guardian (one per process) is started
    baseline = fd_count()
    handle = ProcessManager.spawn(work_dir)
    ids: list[ProcessId] = []
    for _ in range(10):
        ids += await asyncio.gather(*(handle.spawn(sleep_cmd(300)) for _ in range(100)))
    infos = await asyncio.gather(*(handle.get_process_info(i) for i in ids))
    assert all(info.is_running for info in infos)
    pids = [(info.pid, start_time(info.pid)) for info in infos if info.pid is not None]
    assert sum(pid_alive(pid, started) for pid, started in pids) == 1000
    assert threading.active_count() < 10
    assert len(os.listdir("/proc/self/task")) < 10  # OS threads, not only Python's
    assert fd_count() - baseline < 1000 + 10  # one pidfd per child, nothing else per child
    await asyncio.wait_for(handle.abort(), TIMEOUT)
    assert not any(pid_alive(pid, started) for pid, started in pids)
    assert_no_zombie()
    assert fd_count() == baseline
    assert process_dirs(work_dir) == []


# --- churn ----------------------------------------------------------------------------------------

#: Cycles per batch (run at once), and batches per measured round. Each check below is exact or
#: bounded per cycle, so a few hundred cycles find a leak of one fd, dir, process or object per
#: cycle; bench/soak.py runs the same cycle 10,000 times and prints the figures.
BATCH = 100
ROUND = 2
#: The child answers one message over its named pipes and writes to both logged streams.
CHURN_CHILD = 'read -r m < "$INPUT_PIPE"; echo "$m" > "$OUTPUT_PIPE"; echo out; echo err >&2'
#: Python memory a cycle may leave behind, on average over a round: far less than what one
#: process's bookkeeping holds (kilobytes), far more than the noise of free lists and caches.
BYTES_PER_CYCLE = 1024


def heap(manager: ProcessManagerHandle) -> tuple[collections.Counter[str], int]:
    """Objects the collector tracks, by type, and bytes tracemalloc traces, after a full
    collection.

    The manager's buffer of recent events is left out of the count: it holds 1,024 records
    whatever happens, but how many distinct ids and statuses they hold depends on where its
    window falls among the cycles' interleaved events (up to a hundred objects either way).
    """
    gc.collect()
    ring = manager._mailbox._events._broadcast._ring  # type: ignore[attr-defined]
    buffered = {id(ring)}
    for record in ring:
        for part in (record, *(record or ())):
            buffered.add(id(part))
            buffered.add(id(getattr(part, "uuid", None)))
    counted = collections.Counter(
        type(obj).__qualname__ for obj in gc.get_objects() if id(obj) not in buffered
    )
    return counted, tracemalloc.get_traced_memory()[0]


async def test_churn_leaves_no_zombie_fd_dir_or_memory(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    options = CmdOptions.with_named_pipe_messaging().replace(
        logging_type=LoggingType.STDOUT_AND_STDERR
    )
    cmd = Cmd("sh", ["-c", CHURN_CHILD], options)

    async def cycle() -> None:
        process = await manager.spawn_with_handle(cmd)
        answers = await process.subscribe_message_stream()
        await process.send_message("ping")
        assert (await anext(answers)).to_bytes() == b"ping"
        info = await process.wait(TIMEOUT)
        assert info.exit_status == ExitStatus(0, None, True)
        await bounded(process.kill())

    async def run_round() -> None:
        for _ in range(ROUND):
            async with asyncio.timeout(TIMEOUT):
                await asyncio.gather(*(cycle() for _ in range(BATCH)))

    def assert_nothing_left() -> None:
        assert_no_zombie()
        assert fd_count() == fds
        assert process_dirs(work_dir) == []

    # Warm-up: the guardian, caches, the loop's structures, and the manager's buffer of recent
    # events (1024), which a few hundred cycles fill: from then on it holds as much as it drops.
    for _ in range(2):
        await run_round()
    fds, rss = fd_count(), rss_bytes()
    tracemalloc.start()
    try:
        await run_round()  # what is made once (traced from now on) settles here
        assert_nothing_left()
        measured = [heap(manager)]
        for _ in range(2):
            await run_round()
            assert_nothing_left()
            measured.append(heap(manager))
    finally:
        tracemalloc.stop()
    cycles = ROUND * BATCH
    # A leak grows every round; the loop's own bookkeeping (cancelled timers swept in bulk, a
    # weak set's pending removals) may grow once and settle: the smaller growth of two rounds
    # is the one that tells.
    grown = [after.total() - before.total() for (before, _), (after, _) in pairwise(measured)]
    what = [
        {kind: n for kind, n in (after - before).items() if n > 1}
        for (before, _), (after, _) in pairwise(measured)
    ]
    assert min(grown) < cycles // 4, what  # a leak of one object per cycle shows
    traced = [after - before for (_, before), (_, after) in pairwise(measured)]
    assert min(traced) < BYTES_PER_CYCLE * cycles
    assert await manager.list_processes() == []
    assert rss_bytes() - rss < 20 * 1024 * 1024


# --- permissions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o777])
@pytest.mark.parametrize(
    "logging_type", [LoggingType.STDOUT_AND_STDERR, LoggingType.STDOUT_AND_STDERR_MERGED]
)
async def test_private_permissions_whatever_the_umask(
    manager: ProcessManagerHandle, work_dir: Path, umask: int, logging_type: LoggingType
) -> None:
    old = os.umask(umask)
    try:
        process_id = await manager.spawn(Cmd("true", [], CmdOptions(logging_type=logging_type)))
    finally:
        os.umask(old)
    await manager.wait(process_id, TIMEOUT)
    process_dir = work_dir / str(process_id)
    modes = {
        path.relative_to(process_dir).as_posix(): stat.S_IMODE(path.stat().st_mode)
        for path in [process_dir, *process_dir.iterdir()]
    }
    logs = (
        {"output.log": 0o600}
        if logging_type is LoggingType.STDOUT_AND_STDERR_MERGED
        else {"stdout.log": 0o600, "stderr.log": 0o600}
    )
    assert modes == {".": 0o700, "data": 0o700, **logs}
    await bounded(manager.kill(process_id))


# --- the guardian ---------------------------------------------------------------------------------


async def test_one_guardian_that_ignores_terminal_and_termination_signals(
    manager: ProcessManagerHandle,
) -> None:
    first = await manager.spawn(sleep_cmd(300))
    [guardian] = guardians_of_self()
    started = start_time(guardian)
    assert parent_of(guardian) == os.getpid()
    assert os.getsid(guardian) == guardian != os.getsid(0)  # a session of its own
    # From its exec on, each of these signals is blocked (while the interpreter starts) or
    # ignored: SigBlk is read before SigIgn, and the guardian ignores before it unblocks.
    blocked, ignored = status_field(guardian, "SigBlk"), status_field(guardian, "SigIgn")
    sent = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    assert all(has_signal(blocked, sig) or has_signal(ignored, sig) for sig in sent)
    with pidfds([(guardian, started)]) as [fd]:
        for sig in sent:
            signal.pidfd_send_signal(fd, sig)
    # Nothing was delivered: still there. (A blocked one is dropped once it is ignored.)
    assert pid_alive(guardian, started)
    # A second manager in the same process shares it; it is not restarted.
    async with ProcessManager.spawn() as other:
        await other.spawn(sleep_cmd(300))
        await manager.spawn(sleep_cmd(300))
        assert guardians_of_self() == [guardian]
    assert pid_alive(guardian, started)
    await bounded(manager.kill(first))


async def test_spawns_and_reaps_do_not_wake_the_guardian(manager: ProcessManagerHandle) -> None:
    """The guardian sleeps in read until the parent dies: a spawn writes to the shared table."""
    await warm_up(manager)  # the first spawn in a working dir tells the guardian about the dir
    [guardian] = guardians_of_self()
    woken = status_field(guardian, "voluntary_ctxt_switches")
    for _ in range(20):
        process_id = await manager.spawn(Cmd("true"))
        await bounded(manager.wait(process_id))
        await bounded(manager.kill(process_id))
    await bounded(manager.kill(await manager.spawn(sleep_cmd(300))))
    # If the guardian was still starting, it may yet block in its first reads, once or twice;
    # a wake-up per spawn would be at least 20.
    assert int(status_field(guardian, "voluntary_ctxt_switches")) - int(woken) <= 2


def start_guardian(table: guardian_module._Table) -> subprocess.Popen[bytes]:
    """A guardian on ``table``, its stdin a pipe from here: closing it is the parent's death."""
    return subprocess.Popen(
        guardian_module._argv(table.fd),
        stdin=subprocess.PIPE,
        pass_fds=(table.fd,),
        start_new_session=True,
    )


def test_the_guardian_reads_a_grown_table(tmp_path: Path) -> None:
    """Entries past the table's first size, freed ones reused: the guardian sees the live ones."""
    table = guardian_module._Table()
    work = tmp_path / "work"
    work.mkdir()
    sleepers = [subprocess.Popen(["sleep", "300"], process_group=0) for _ in range(3)]
    try:
        # Dirs that do not exist (the guardian's rmtree finds nothing): no group to kill.
        count = guardian_module._FIRST_ENTRIES + 100
        filler = [table.add(0, 1, b"absent-%d" % n) for n in range(count)]
        table.clear(filler[10], 4)  # freed: the first sleeper's entry reuses it, the rest are new
        live_dirs, dead_dirs = [], []
        for n, sleeper in enumerate(sleepers):
            live_dirs.append(work / f"live-{n}")
            table.add(sleeper.pid, 1, live_dirs[-1].name.encode())
        for n in range(3):
            dead_dirs.append(work / f"removed-{n}")
            index = table.add(0, 1, dead_dirs[-1].name.encode())
            table.clear(index, 4)  # the parent removed it: the guardian must not
        for path in (*live_dirs, *dead_dirs):
            (path / "data").mkdir(parents=True)
        guardian = start_guardian(table)
        assert guardian.stdin is not None
        guardian.stdin.write(b"P+1 " + os.fsencode(work).hex().encode() + b"\n")
        guardian.stdin.close()  # as if the parent died
        assert guardian.wait(TIMEOUT) == 0
        assert [sleeper.wait(TIMEOUT) for sleeper in sleepers] == [-signal.SIGKILL] * 3
        assert process_dirs(work) == dead_dirs
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
        table.close()


def table_groups() -> set[int]:
    """The group ids in this process's guardian table (of live leaders or not)."""
    table = guardian_module._GUARDIAN._table
    assert table is not None
    blob = os.pread(table.fd, os.fstat(table.fd).st_size, 0)
    entry = guardian_module._ENTRY
    groups = {
        abs(int.from_bytes(blob[i : i + 4], "little", signed=True))
        for i in range(0, len(blob), entry)
    }
    return groups - {0}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
async def test_a_forked_child_has_a_guardian_and_a_table_of_its_own(
    manager: ProcessManagerHandle,
) -> None:
    await warm_up(manager)  # this process's guardian and table exist
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():  # forking with threads running (3.12+ warns about it)
        warnings.simplefilter("ignore", DeprecationWarning)
        child = os.fork()
    if child == 0:  # pragma: no cover - the forked child
        try:
            os.close(read_end)
            sleeper = subprocess.Popen(["sleep", "300"], process_group=0)
            guardian_module.register_group(sleeper.pid)
            os.write(write_end, b"%d\n" % sleeper.pid)
        finally:
            os._exit(0)  # its guardian sees EOF: the sleeper dies with it
    os.close(write_end)
    try:
        line = await read_line(read_end, TIMEOUT)
    finally:
        os.close(read_end)
        await wait_exited(child)
        os.waitpid(child, 0)
    sleeper_pid = int(line)
    assert sleeper_pid not in table_groups()  # registered in the child's table, not in ours
    await wait_exited(sleeper_pid)  # killed by the child's guardian when the child exited
    assert len(guardians_of_self()) == 1


#: Tells the guardian of a dir after the guardian died, before it is restarted (the lock held
#: keeps the watching thread from restarting it), with SIGPIPE's default action, as programs that
#: pipe into ``head`` set it.
TELLS_A_DEAD_GUARDIAN = textwrap.dedent(
    """
    import os, select, signal, sys
    from corral import _guardian
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    _guardian.register_dir(sys.argv[1])  # starts the guardian, tells it of the dir
    guardian = _guardian._GUARDIAN
    with guardian._lock:
        assert guardian._process is not None
        pidfd = os.pidfd_open(guardian._process.pid)
        os.kill(guardian._process.pid, signal.SIGKILL)
        assert select.select([pidfd], [], [], 10)[0]  # it is gone
        guardian._tell(b"+", b"D" + _guardian._hex(sys.argv[1]))
    print("still here", flush=True)
    """
)


def test_telling_a_dead_guardian_does_not_kill_the_program(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", TELLS_A_DEAD_GUARDIAN, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "still here\n"), done.stderr


#: A parent program: a manager on argv[1] (or its own temp dir when empty) with 20 children,
#: every other one with a grandchild, and 4 that exited, leaving a background job in their group;
#: argv[2] says what happens to the guardian on the way. Prints the pids and start times, the
#: process dirs and the guardian, then blocks.
PARENT = textwrap.dedent(
    """
    import asyncio, json, os, signal, sys, time
    from pathlib import Path
    from corral import Cmd, CmdOptions, LoggingType, ProcessManager

    def stat(pid):
        text = open(f"/proc/{pid}/stat").read()
        fields = text[text.rindex(")") + 2 :].split()
        return fields[0], int(fields[1]), int(fields[19])

    def guardian(killed=None):
        # The one live guardian (a child in a session of its own), once it is not ``killed``:
        # a new one appears with no event to wait for, so this polls, with a deadline.
        me = os.getpid()
        deadline = time.monotonic() + 10
        while True:
            found = []
            for entry in os.listdir("/proc"):
                if entry.isdigit() and int(entry) != killed:
                    try:
                        state, parent, _ = stat(int(entry))
                        if parent == me and state != "Z" and os.getsid(int(entry)) == int(entry):
                            found.append(int(entry))
                    except (OSError, ValueError):
                        pass
            if len(found) == 1:
                return found[0]
            assert time.monotonic() < deadline, f"guardians: {found}"
            time.sleep(0.01)

    async def lines(handle, process_id, n):
        got = []
        follow = handle.follow_logs(process_id)
        async for line in follow:
            got.append(line)
            if len(got) == n:
                break
        await follow.aclose()
        return got

    async def main(working_dir, mode):
        handle = ProcessManager.spawn(working_dir or None)
        logs = CmdOptions(logging_type=LoggingType.STDOUT_ONLY)
        children, grandchildren, dirs = [], [], []
        killed = None
        for n in range(24):
            if n == 10 and mode == "guardian killed":
                killed = guardian()
                os.kill(killed, signal.SIGKILL)
            script = 'echo "$PROCESS_DATA_DIR"; '
            if n >= 20:  # exits, its job stays in its group
                script += "sleep 300 & echo $!"
            else:
                script += "sleep 300 & echo $!; sleep 300" if n % 2 else "exec sleep 300"
            process_id = await handle.spawn(Cmd("bash", ["-c", script], logs))
            got = await lines(handle, process_id, 1 + (n % 2 or n >= 20))
            dirs.append(str(Path(got[0]).parent))
            grandchildren += [int(pid) for pid in got[1:]]
            if n >= 20:
                await handle.wait(process_id)
            else:
                children.append((await handle.get_process_info(process_id)).pid)
        if mode == "guardian signalled":
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                os.kill(guardian(), sig)
        if mode == "guardian killed last":  # no spawn follows that would start a new one
            killed = guardian()
            os.kill(killed, signal.SIGKILL)
        report = {
            "children": [[pid, stat(pid)[2]] for pid in children],
            "grandchildren": [[pid, stat(pid)[2]] for pid in grandchildren],
            "guardian": [guardian(killed), stat(guardian(killed))[2]],
            "dirs": dirs,
        }
        print(json.dumps(report), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def read_line(fd: int, timeout: float) -> bytes:
    """One line from a pipe, waiting on the loop; b"" if the writer closed it first."""
    os.set_blocking(fd, False)
    data = b""
    async with asyncio.timeout(timeout):
        while not data.endswith(b"\n"):
            await wait_fd_readable(fd, timeout)
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    return data


@pytest.mark.parametrize(
    ("own_dir", "mode"),
    [
        (True, "plain"),
        (False, "plain"),
        (False, "guardian signalled"),  # it ignored SIGINT/SIGTERM/... and still does its job
        (True, "guardian killed"),  # restarted at once, knowing the earlier children
        (False, "guardian killed last"),  # restarted at once, with no spawn to follow
    ],
)
async def test_no_child_outlives_a_parent_killed_with_sigkill(
    tmp_path: Path, work_dir: Path, own_dir: bool, mode: str
) -> None:
    stderr = tmp_path / "parent.stderr"
    with stderr.open("wb") as err:
        parent = subprocess.Popen(
            [sys.executable, "-c", PARENT, "" if own_dir else str(work_dir), mode],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        assert parent.stdout is not None
        line = await read_line(parent.stdout.fileno(), TIMEOUT * 2)
        assert line, f"the parent failed: {stderr.read_text()}"
        report = json.loads(line)
        children = [tuple(p) for p in report["children"]]
        grandchildren = [tuple(p) for p in report["grandchildren"]]
        guardian = tuple(report["guardian"])
        everyone = [*children, *grandchildren, guardian]
        assert len(children) == 20
        assert len(grandchildren) == 10 + 4
        assert all(pid_alive(pid, started) for pid, started in everyone)
        dirs = [Path(d) for d in report["dirs"]]
        assert all(d.is_dir() for d in dirs)
        [manager_dir] = {d.parent for d in dirs}
        if own_dir:
            assert manager_dir.parent == Path(tempfile.gettempdir())
            assert manager_dir.name.startswith("corral-")
        else:
            assert manager_dir == work_dir
        with pidfds(everyone) as fds:
            assert len(fds) == len(everyone)
            parent.kill()
            await wait_exited(parent.pid)
            # Everything is gone within a bound; the guardian's exit comes after its cleanup.
            await wait_all_readable(fds, 5.0)
        assert not any(pid_alive(pid, started) for pid, started in everyone)
        assert not any(d.exists() for d in dirs)
        if own_dir:
            assert not manager_dir.exists()
        else:
            assert process_dirs(work_dir) == []  # the user's dir stays, empty
    finally:
        parent.kill()
        parent.wait(TIMEOUT)
        if parent.stdout is not None:
            parent.stdout.close()
