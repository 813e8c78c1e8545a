"""What a child leaves in its process group dies with the process, even after the child exited.

A child that starts a background job and exits (``sh -c 'sleep 300 & echo $!'``) leaves the job in
its group. ``kill``, ``terminate``, ``abort``, a restart and the end of ``corral run`` signal that
group whether or not its leader is still there; the guardian does when the parent dies (see
tests/test_lifecycle.py). A group whose leader was reaped is signalled only while its id is still
ours: a process with that id as its pid means the number was reused, and it is left alone.

Each test reads the grandchild's pid from the child's output, opens a pidfd on it while it is
known to run, and waits on that pidfd, with a bound, for its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import cast

import pytest
from conftest import TIMEOUT, pid_alive, pidfd, process_dirs, start_time, wait_fd_readable
from test_cli import assert_nothing_left, child_pids, run_cli, write_procfile
from test_lifecycle import bash, bounded, first_lines, signal_pending, start_guardian

from corral import (
    Backoff,
    CmdOptions,
    ExitStatus,
    LoggingType,
    ProcessId,
    ProcessManager,
    ProcessManagerHandle,
    RestartPolicy,
)
from corral import _guardian as guardian_module
from corral import _platform as platform_module
from corral._platform import _exits as exits_module

#: Starts a background job, prints its pid and exits at once: the job stays in the group.
LEAVES_A_JOB = "sleep 300 & echo $!"
#: The same job, ignoring SIGTERM (the disposition is inherited): only SIGKILL ends it.
LEAVES_A_STUBBORN_JOB = "trap '' TERM; sleep 300 & echo $!"


@contextlib.asynccontextmanager
async def left_job(
    handle: ProcessManagerHandle, script: str = LEAVES_A_JOB
) -> AsyncIterator[tuple[ProcessId, int]]:
    """Spawn ``script``, read its job's pid, wait until the child has exited (and was reaped).

    Yields the id and a pidfd on the job, which still runs, in the reaped child's group.
    """
    process_id = await handle.spawn(bash(script))
    job = int((await first_lines(handle, process_id))[0])
    started = start_time(job)
    info = await handle.wait(process_id, TIMEOUT)
    assert info.exit_status == ExitStatus(0, None, True)
    with pidfd(job) as fd:
        assert fd is not None
        assert pid_alive(job, started)  # the pidfd is the job's
        assert os.getpgid(job) == info.pid
        yield process_id, fd


def wait_pidfd(fd: int, timeout: float = TIMEOUT) -> bool:
    """Whether the process of pidfd ``fd`` exits within ``timeout`` (outside any loop)."""
    return bool(select.select([fd], [], [], timeout)[0])


@pytest.mark.parametrize("pidfds", [True, False], ids=["pidfds", "a thread per child"])
async def test_kill_after_the_child_exited_kills_its_background_job(
    manager: ProcessManagerHandle, monkeypatch: pytest.MonkeyPatch, pidfds: bool
) -> None:
    monkeypatch.setattr(exits_module, "HAS_PIDFD", pidfds and exits_module.HAS_PIDFD)
    async with left_job(manager) as (process_id, fd):
        await bounded(manager.kill(process_id))
        await wait_fd_readable(fd)


async def test_terminate_after_the_child_exited_terminates_its_background_job(
    manager: ProcessManagerHandle,
) -> None:
    async with left_job(manager) as (process_id, fd):
        began = time.monotonic()
        info = await bounded(manager.terminate(process_id, grace=TIMEOUT))
        assert time.monotonic() - began < TIMEOUT / 2  # the job ended on SIGTERM: no grace
        assert info.exit_status == ExitStatus(0, None, True)  # how the child itself ended
        await wait_fd_readable(fd)
    await bounded(manager.kill(process_id))


async def test_terminate_kills_a_job_that_ignores_sigterm_after_the_grace(
    manager: ProcessManagerHandle,
) -> None:
    # The child exits on SIGTERM, its job ignores it: SIGKILL once the grace is over.
    script = "(trap '' TERM; echo $BASHPID; exec sleep 300) & wait"  # its pid once it ignores
    process_id = await manager.spawn(bash(script))
    job = int((await first_lines(manager, process_id))[0])
    with pidfd(job) as fd:
        assert fd is not None
        began = time.monotonic()
        info = await bounded(manager.terminate(process_id, grace=0.3))
        assert time.monotonic() - began >= 0.3
        assert info.exit_status == ExitStatus(None, signal.SIGTERM, False)
        await wait_fd_readable(fd)
    await bounded(manager.kill(process_id))


async def test_abort_kills_the_background_jobs_of_exited_children(work_dir: Path) -> None:
    handle = ProcessManager.spawn(work_dir)
    async with (
        left_job(handle) as (_, polite),
        left_job(handle, LEAVES_A_STUBBORN_JOB) as (_, stubborn),
    ):
        await asyncio.wait_for(handle.abort(grace=0.3), TIMEOUT)
        await wait_fd_readable(polite)
        await wait_fd_readable(stubborn)
    assert process_dirs(work_dir) == []


async def test_a_restart_kills_what_the_last_run_left_first(
    manager: ProcessManagerHandle,
) -> None:
    policy = RestartPolicy.always(max_restarts=1, backoff=Backoff(initial=0.2, factor=1, cap=0.2))
    options = CmdOptions(logging_type=LoggingType.STDOUT_ONLY, restart_policy=policy)
    process_id = await manager.spawn(bash(LEAVES_A_STUBBORN_JOB, options))
    follow = cast(AsyncGenerator[str, None], manager.follow_logs(process_id))
    try:
        async with asyncio.timeout(TIMEOUT):
            first = int(await anext(follow))
            with pidfd(first) as fd:  # None: killed already, as it must be
                second = int(await anext(follow))  # printed by the next run
                if fd is not None:
                    await wait_fd_readable(fd)
    finally:
        await follow.aclose()
    assert second != first
    info = await manager.wait(process_id, TIMEOUT)  # gave up after one restart
    assert info.restarts == 1
    with pidfd(second) as fd:
        assert fd is not None
        await bounded(manager.kill(process_id))
        await wait_fd_readable(fd)


#: Blocks SIGUSR1, so that one sent stays pending where /proc shows it, then says so.
BLOCKS_USR1 = (
    "import signal, time; signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1]); "
    "print('ready', flush=True); time.sleep(300)"
)


def usr1_pending(pid: int) -> bool:
    return signal_pending(pid, signal.SIGUSR1)


def test_a_group_id_that_is_some_process_pid_is_not_signalled() -> None:
    """After the leader's reap, a process with the group's id as pid means the number was
    reused: that group is a stranger's. Where no process has that pid, what is left of ours is
    signalled. (A blocked signal stays pending: whether it was sent shows at once.)"""
    python = shlex.quote(sys.executable)
    stranger = subprocess.Popen(
        [sys.executable, "-c", BLOCKS_USR1], process_group=0, stdout=subprocess.PIPE, text=True
    )
    ours = subprocess.Popen(  # leads a group, starts a member, exits
        ["sh", "-c", f"{python} -c {shlex.quote(BLOCKS_USR1)} & echo $!"],
        process_group=0,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert stranger.stdout is not None
    assert ours.stdout is not None
    member = int(ours.stdout.readline())
    try:
        assert ours.wait(TIMEOUT) == 0  # reaped: no process has its pid now
        with pidfd(member) as fd:
            assert fd is not None
            assert stranger.stdout.readline() == "ready\n"
            assert not platform_module.signal_reaped_group(stranger.pid, signal.SIGUSR1)
            assert not usr1_pending(stranger.pid)
            assert ours.stdout.readline() == "ready\n"  # the member's
            assert platform_module.signal_reaped_group(ours.pid, signal.SIGUSR1)
            assert usr1_pending(member)
            assert platform_module.reaped_group_alive(ours.pid)
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            assert wait_pidfd(fd)
        # Nothing left of the group: gone for good (the member may be a zombie of init's yet).
        assert not platform_module.reaped_group_alive(ours.pid)
    finally:
        stranger.kill()
        stranger.wait()
        stranger.stdout.close()
        ours.stdout.close()


def test_corral_run_ends_with_the_background_jobs_of_its_processes(tmp_path: Path) -> None:
    procfile = write_procfile(tmp_path, job="sh -c 'sleep 300 & echo \"job pid $!\"'")
    status, out, err, session = run_cli("run", procfile, "--no-color")
    assert status == 0, err
    pids = child_pids(out)
    assert set(pids) == {"job"}
    assert_nothing_left(pids, session)


def test_the_guardian_spares_a_group_id_that_is_some_process_pid() -> None:
    """At the parent's death, the guardian kills a group whose leader was reaped only if no
    process has the group's id as pid. Here the entry names the guardian's own group (it leads
    a session): were it signalled, the guardian would die of SIGKILL instead of exiting."""
    table = guardian_module._Table()
    leader = subprocess.Popen(  # leads a group, leaves a job in it, exits
        ["sh", "-c", LEAVES_A_JOB], process_group=0, stdout=subprocess.PIPE, text=True
    )
    guardian = start_guardian(table)
    assert leader.stdout is not None
    assert guardian.stdin is not None
    job = int(leader.stdout.readline())
    try:
        assert leader.wait(TIMEOUT) == 0
        with pidfd(job) as fd:
            assert fd is not None
            for group in (leader.pid, guardian.pid):  # both registered as reaped leaders'
                table.mark_reaped(table.add(group), group)
            guardian.stdin.close()  # as if the parent died
            assert guardian.wait(TIMEOUT) == 0
            assert wait_pidfd(fd)  # the job of the reaped leader: killed
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(job, signal.SIGKILL)
        guardian.kill()
        guardian.wait()
        leader.stdout.close()
        table.close()
