"""One managed process below the manager (corral._process.ManagedProcess), with real children.

Each test builds what the manager's actor would hand a ManagedProcess: a child from
``spawn_child``, an ``ExitWatcher`` on the test's loop, a respawn through ``start_child``, a pace
callable and an emit callable of its own, which record what they were given. Exits are awaited
through the process's own ``exited`` future or a pidfd, always with a bound; nothing sleeps to
wait for a condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import select
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from conftest import (
    TIMEOUT,
    children_of_self,
    collect,
    fd_count,
    pid_alive,
    pidfd,
    start_time,
    take,
    wait_fd_readable,
)

from corral import (
    Backoff,
    Cmd,
    CmdOptions,
    ExitedProcessInfo,
    ExitStatus,
    LoggingType,
    MessagingType,
    ProcessId,
    ProcessInfo,
    RestartPolicy,
    SpawnProcessError,
)
from corral._platform import HAS_PIDFD, ExitWatcher
from corral._process import ManagedProcess
from corral._spawn import SpawnedChild, discard_child, spawn_child, start_child
from corral._supervision import EventKind, EventRecord

SPAWNED, EXITED, RESTARTING, GAVE_UP, KILLED, RELEASED = (
    EventKind.SPAWNED,
    EventKind.EXITED,
    EventKind.RESTARTING,
    EventKind.GAVE_UP,
    EventKind.KILLED,
    EventKind.RELEASED,
)

#: Message output over stdout: how a child here tells the test something (a pid, "ready").
SAYS = CmdOptions(message_output=MessagingType.STANDARD_IO)

#: Starts a job in its group (not holding stdout), says its pid, and waits for it.
WITH_JOB = "sleep 300 >/dev/null & echo $!; wait"
#: Starts a job in its group, says its pid and exits at once: the job stays in the group.
LEAVES_JOB = "sleep 300 >/dev/null & echo $!"
#: Ignores SIGTERM, says so, and runs on (the exec'd sleep inherits the disposition).
IGNORES_TERM = "trap '' TERM; echo ready; exec sleep 300"

KILLED_STATUS = ExitStatus(None, signal.SIGKILL, False)
TERMINATED_STATUS = ExitStatus(None, signal.SIGTERM, False)


def sh(script: str, options: CmdOptions | None = None) -> Cmd:
    return Cmd("sh", ["-c", script], options.replace() if options is not None else None)


def quick(mode: str, max_restarts: int, delay: float = 0.01) -> RestartPolicy:
    """A restart policy with a short, fixed delay."""
    backoff = Backoff(initial=delay, cap=delay)
    return getattr(RestartPolicy, mode)(max_restarts=max_restarts, backoff=backoff)


class Harness:
    """What the actor gives a ManagedProcess, on the test's loop, recording what it is asked.

    ``events`` holds every emitted record, ``paced`` every callable given to pace (run on the
    next loop turn unless ``defer`` is set, then left for the test to run), ``respawns`` counts
    the calls of respawn.
    """

    def __init__(self, work_dir: Path) -> None:
        self.loop = asyncio.get_running_loop()
        self.work_dir = work_dir
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.exits = ExitWatcher(self.loop)
        self.events: list[EventRecord] = []
        self.paced: list[Callable[[], None]] = []
        self.defer = False
        self.respawns = 0
        #: Set whenever something is emitted or paced: a test waits for the next step on it.
        self.changed = asyncio.Event()
        self.processes: list[ManagedProcess] = []
        self.closed: set[ManagedProcess] = set()

    def emit(self, record: EventRecord) -> None:
        self.events.append(record)
        self.changed.set()

    def pace(self, call: Callable[[], None]) -> None:
        self.paced.append(call)
        self.changed.set()
        if not self.defer:
            self.loop.call_soon(call)

    def start(
        self,
        cmd: Cmd,
        respawn: Callable[[], SpawnedChild] | None = None,
        guard_dir: bool = False,
    ) -> ManagedProcess:
        process_id = ProcessId.new()
        child = spawn_child(process_id, cmd, self.work_dir, self.devnull)
        restart = respawn or functools.partial(
            start_child, process_id, child.cmd, child.process_dir, self.devnull
        )

        def counted() -> SpawnedChild:
            self.respawns += 1
            return restart()

        process = ManagedProcess(
            process_id, child, self.exits, counted, self.pace, self.emit, guard_dir=guard_dir
        )
        self.processes.append(process)
        return process

    def kinds(self, process: ManagedProcess | None = None) -> list[EventKind]:
        return [e[0] for e in self.events if process is None or e[1] == process.id]

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait, with a bound, until ``condition()`` holds after an emit or a pace."""
        async with asyncio.timeout(TIMEOUT):
            while not condition():
                self.changed.clear()
                await self.changed.wait()

    def close(self, process: ManagedProcess, event: EventKind = KILLED) -> None:
        process.close(event)
        self.closed.add(process)

    async def aclose(self) -> None:
        for process in self.processes:
            if process not in self.closed:
                if not process.down:
                    process.kill()
                    with contextlib.suppress(TimeoutError):
                        await down(process)
                process.close()
        self.exits.close()
        os.close(self.devnull)


@pytest_asyncio.fixture
async def harness(work_dir: Path) -> AsyncIterator[Harness]:
    harness = Harness(work_dir)
    try:
        yield harness
    finally:
        await harness.aclose()


async def down(process: ManagedProcess) -> ExitedProcessInfo:
    """The final info, once the process is down for good (within TIMEOUT)."""
    return await asyncio.wait_for(asyncio.shield(process.exited), TIMEOUT)


async def said(process: ManagedProcess, count: int = 1) -> list[str]:
    """The next ``count`` lines the child writes to its message output."""
    assert process.broadcast is not None
    stream = process.broadcast.subscribe(replay=True)
    try:
        return await take(stream.strings(), count)
    finally:
        await stream.aclose()


# --- state, events, when_down ------------------------------------------------------------------


async def test_info_while_running_and_after_an_exit_and_the_events_of_the_run(
    harness: Harness,
) -> None:
    began = time.monotonic()
    process = harness.start(sh("exit 3"))
    pid = process.pid
    # No loop turn yet: whether or not the child has exited, the exit is not handled yet.
    assert process.info() == ProcessInfo(pid=pid, exit_status=None, is_running=True)
    assert process.is_running
    assert not process.down
    assert process.exit_status is None
    final = await down(process)
    status = ExitStatus(3, None, False)
    assert final == ExitedProcessInfo(pid=pid, exit_status=status, is_running=False)
    assert process.info() == final
    assert (process.pid, process.exit_status, process.down) == (pid, status, True)
    assert not process.is_running
    assert pid not in children_of_self()  # reaped
    assert not process.send_signal(signal.SIGTERM, group=False)  # reaped: nothing signalled
    spawned, exited = harness.events
    assert spawned[:2] == (SPAWNED, process.id)
    assert spawned[3:] == (pid, None, 0, None, None)
    assert exited[:2] == (EXITED, process.id)
    assert exited[3:] == (pid, status, 0, None, None)
    assert began <= spawned[2] <= exited[2] <= time.monotonic()
    assert harness.paced == []
    harness.close(process, RELEASED)
    assert harness.kinds() == [SPAWNED, EXITED, RELEASED]
    assert not process.process_dir.exists()


async def test_when_down_calls_back_in_the_turn_of_the_exit_or_at_once(harness: Harness) -> None:
    process = harness.start(sh("exit 0"))
    calls: list[tuple[str, ExitedProcessInfo]] = []
    process.when_down(lambda info: calls.append(("early", info)))
    process.exited.add_done_callback(lambda future: calls.append(("future", future.result())))
    final = await down(process)
    await asyncio.sleep(0)  # let the future's callback run, which is scheduled, not immediate
    # Called with the final info, before a done-callback on ``exited`` (in the same turn).
    assert calls == [("early", final), ("future", final)]
    process.when_down(lambda info: calls.append(("late", info)))
    assert calls[-1] == ("late", final)  # at once, before when_down returned
    assert len(calls) == 3


# --- kill, terminate, signals -------------------------------------------------------------------


async def test_kill_sigkills_the_whole_group_and_never_restarts(harness: Harness) -> None:
    process = harness.start(sh(WITH_JOB, SAYS.replace(restart_policy=quick("always", 5))))
    job = int((await said(process))[0])
    started = start_time(job)
    with pidfd(job) as fd:
        assert fd is not None
        assert pid_alive(job, started)
        assert os.getpgid(job) == process.pid
        process.kill()
        final = await down(process)
        await wait_fd_readable(fd)  # the job died with the group
    assert final.exit_status == KILLED_STATUS
    assert (final.restarts, final.gave_up_reason) == (0, None)
    assert harness.kinds() == [SPAWNED, EXITED]  # told with its real status, then nothing more
    assert harness.events[-1][4] == KILLED_STATUS
    assert (harness.paced, harness.respawns) == ([], 0)
    harness.close(process)
    assert harness.kinds() == [SPAWNED, EXITED, KILLED]


async def test_kill_after_the_child_exited_kills_the_job_it_left(harness: Harness) -> None:
    process = harness.start(sh(LEAVES_JOB, SAYS))
    job = int((await said(process))[0])
    with pidfd(job) as fd:
        assert fd is not None
        final = await down(process)
        assert final.exit_status == ExitStatus(0, None, True)
        assert not select.select([fd], [], [], 0)[0]  # the job outlived the child
        process.kill()
        await wait_fd_readable(fd)
    assert process.info() == final  # the exit is the child's own: kill changed nothing of it


async def test_send_signal_reaches_the_child_alone_or_its_group(harness: Harness) -> None:
    process = harness.start(sh(WITH_JOB, SAYS))
    job = int((await said(process))[0])
    with pidfd(job) as fd:
        assert fd is not None
        assert process.send_signal(signal.SIGTERM, group=False)
        final = await down(process)
        assert final.exit_status == TERMINATED_STATUS
        assert pid_alive(job)  # the child alone
    process = harness.start(sh(WITH_JOB, SAYS))
    job = int((await said(process))[0])
    with pidfd(job) as fd:
        assert fd is not None
        assert process.send_signal(signal.SIGTERM, group=True)
        assert (await down(process)).exit_status == TERMINATED_STATUS
        await wait_fd_readable(fd)  # the job too
    assert not process.send_signal(signal.SIGTERM, group=True)


async def test_terminate_ends_a_polite_child_on_sigterm_without_waiting_for_the_grace(
    harness: Harness,
) -> None:
    process = harness.start(Cmd("sleep", ["300"]))
    began = time.monotonic()
    final = await asyncio.wait_for(process.terminate(TIMEOUT), TIMEOUT)
    assert time.monotonic() - began < TIMEOUT / 2
    assert final.exit_status == TERMINATED_STATUS
    assert final == process.info()
    assert harness.kinds() == [SPAWNED, EXITED]


async def test_terminate_sigkills_a_child_that_ignores_sigterm_after_the_grace(
    harness: Harness,
) -> None:
    process = harness.start(sh(IGNORES_TERM, SAYS))
    assert await said(process) == ["ready"]
    began = time.monotonic()
    final = await asyncio.wait_for(process.terminate(0.3), TIMEOUT)
    assert time.monotonic() - began >= 0.3
    assert final.exit_status == KILLED_STATUS


async def test_terminate_with_no_grace_sigkills_at_once(harness: Harness) -> None:
    process = harness.start(sh(IGNORES_TERM, SAYS))
    assert await said(process) == ["ready"]
    final = await asyncio.wait_for(process.terminate(0), TIMEOUT)
    assert final.exit_status == KILLED_STATUS


async def test_terminate_after_the_child_exited_terminates_the_job_it_left(
    harness: Harness,
) -> None:
    process = harness.start(sh(LEAVES_JOB, SAYS))
    job = int((await said(process))[0])
    with pidfd(job) as fd:
        assert fd is not None
        await down(process)
        began = time.monotonic()
        final = await asyncio.wait_for(process.terminate(TIMEOUT), TIMEOUT)
        assert time.monotonic() - began < TIMEOUT / 2  # the job ended on SIGTERM: no grace
        await wait_fd_readable(fd)
    assert final.exit_status == ExitStatus(0, None, True)  # the child's own exit


async def test_kill_and_reap_blocking_reaps_before_returning(harness: Harness) -> None:
    process = harness.start(sh(WITH_JOB, SAYS.replace(restart_policy=quick("always", 5))))
    job = int((await said(process))[0])
    with pidfd(job) as fd:
        assert fd is not None
        pid = process.pid
        process.kill_and_reap_blocking()
        # No loop turn: down, reaped, the group SIGKILLed.
        assert process.down
        assert process.exited.result().exit_status == KILLED_STATUS
        assert pid not in children_of_self()
        await wait_fd_readable(fd)
    assert harness.respawns == 0


# --- restarts -------------------------------------------------------------------------------------


async def test_restarts_go_through_pace_and_give_up_at_the_limit_with_every_event_in_order(
    harness: Harness,
) -> None:
    options = CmdOptions(
        logging_type=LoggingType.STDOUT_ONLY, restart_policy=quick("on_failure", 2)
    )
    process = harness.start(sh("echo run; exit 1", options))
    downs: list[ExitedProcessInfo] = []
    process.when_down(downs.append)
    final = await down(process)
    failed = ExitStatus(1, None, False)
    assert final.exit_status == failed
    assert final.restarts == 2
    assert final.gave_up_reason is not None
    assert "restarted 2 time(s)" in final.gave_up_reason
    assert downs == [final]  # once, at the end, not at the first exit
    assert (len(harness.paced), harness.respawns) == (2, 2)
    assert [(kind, restarts) for kind, _, _, _, _, restarts, _, _ in harness.events] == [
        (SPAWNED, 0),
        (EXITED, 0),
        (RESTARTING, 1),
        (SPAWNED, 1),
        (EXITED, 1),
        (RESTARTING, 2),
        (SPAWNED, 2),
        (EXITED, 2),
        (GAVE_UP, 2),
    ]
    times = [event[2] for event in harness.events]
    assert times == sorted(times)
    runs = [event[3] for event in harness.events if event[0] is SPAWNED]
    assert len(set(runs)) == 3  # a new child each time
    run = None
    for kind, _, _, pid, status, _, delay, reason in harness.events:
        run = pid if kind is SPAWNED else run
        assert pid == run  # each event names the latest run
        assert status == (None if kind is SPAWNED else failed)
        assert delay == (0.01 if kind is RESTARTING else None)
        assert reason == (final.gave_up_reason if kind is GAVE_UP else None)
    assert not set(runs) & children_of_self()  # every run reaped
    assert process.logs["stdout"].path.read_text() == "run\n" * 3  # one log, appended to


async def test_a_restart_waits_for_its_turn_and_kill_meanwhile_spawns_nothing(
    harness: Harness,
) -> None:
    harness.defer = True
    process = harness.start(sh("exit 1", CmdOptions(restart_policy=quick("on_failure", 5))))
    first = process.pid
    await harness.until(lambda: len(harness.paced) == 1)
    # Due, and waiting for its turn: down for now, not down for good.
    assert process.info() == ProcessInfo(
        first, ExitStatus(1, None, False), is_running=False, restarts=1, restart_pending=True
    )
    assert not process.down
    assert harness.respawns == 0
    process.kill()
    # Down for good at once: nothing was running.
    assert process.down
    assert process.exited.result() == ExitedProcessInfo(
        first, ExitStatus(1, None, False), is_running=False, restarts=1
    )
    children = children_of_self()
    harness.paced[0]()  # its turn comes after all
    assert harness.respawns == 0
    assert process.pid == first
    assert children_of_self() <= children
    assert harness.kinds() == [SPAWNED, EXITED, RESTARTING]


async def test_a_restart_runs_when_its_turn_comes(harness: Harness) -> None:
    harness.defer = True
    options = SAYS.replace(restart_policy=quick("always", 5))
    process = harness.start(sh("echo $$; exec sleep 300", options))
    assert process.broadcast is not None
    stream = process.broadcast.subscribe()
    [first] = await take(stream.strings(), 1)
    os.kill(int(first), signal.SIGKILL)  # an exit nobody asked for
    await harness.until(lambda: len(harness.paced) == 1)
    assert harness.respawns == 0
    harness.paced[0]()
    assert harness.respawns == 1
    assert process.is_running
    assert process.info().restart_pending is False
    assert harness.kinds() == [SPAWNED, EXITED, RESTARTING, SPAWNED]
    # The same subscription goes on with the new run's messages.
    [second] = await take(stream.strings(), 1)
    assert int(second) == process.pid != int(first)
    process.kill()
    await down(process)
    assert await collect(stream.strings()) == []  # the stream ends once down for good


async def test_a_respawn_that_fails_counts_as_a_failed_run(harness: Harness) -> None:
    def respawn() -> SpawnedChild:
        raise SpawnProcessError("the program is gone")

    options = CmdOptions(restart_policy=quick("on_failure", 2))
    process = harness.start(sh("exit 1", options), respawn=respawn)
    final = await down(process)
    assert harness.respawns == 2
    assert harness.kinds() == [SPAWNED, EXITED, RESTARTING, RESTARTING, GAVE_UP]
    assert final.exit_status == ExitStatus(1, None, False)  # the last run that did run
    assert final.restarts == 2
    assert final.gave_up_reason is not None
    assert "exit code 127" in final.gave_up_reason  # how a failed respawn is counted


async def test_without_a_restart_policy_an_exit_is_final(harness: Harness) -> None:
    process = harness.start(sh("exit 1"))
    final = await down(process)
    assert (final.restarts, final.gave_up_reason) == (0, None)
    assert harness.kinds() == [SPAWNED, EXITED]
    assert (harness.paced, harness.respawns) == ([], 0)


# --- messages and what close releases -------------------------------------------------------------


@pytest.mark.skipif(not HAS_PIDFD, reason="the exit is only seen early through a pidfd")
async def test_writer_for_send_on_a_fifo_sees_an_exit_the_loop_has_not_handled(
    harness: Harness,
) -> None:
    process = harness.start(Cmd("true", [], CmdOptions(message_input=MessagingType.NAMED_PIPE)))
    with pidfd(process.pid) as fd:
        assert fd is not None
        assert select.select([fd], [], [], TIMEOUT)[0]  # exited; the loop has not run since
    assert process.is_running
    writer = process.writer_for_send()
    assert writer is not None
    assert writer.closed  # a message written now would be lost: sends fail instead
    assert process.down
    assert process.exit_status == ExitStatus(0, None, True)
    assert harness.kinds() == [SPAWNED, EXITED]


async def warm_up(harness: Harness) -> None:
    """One process, down and closed: the guardian and its table exist from now on."""
    process = harness.start(Cmd("true"))
    await down(process)
    harness.close(process, RELEASED)


@pytest.mark.parametrize("ending", ["exit", "kill"])
async def test_close_releases_every_fd_and_the_process_dir(harness: Harness, ending: str) -> None:
    await warm_up(harness)
    fds = fd_count()
    options = CmdOptions(
        message_input=MessagingType.NAMED_PIPE,
        message_output=MessagingType.NAMED_PIPE,
        logging_type=LoggingType.STDOUT_AND_STDERR_MERGED,
        restart_policy=quick("on_failure", 1),
    )
    # The message comes after the log line: once it is read, the line is in the log.
    script = 'echo logged; echo hi > "$OUTPUT_PIPE"; ' + (
        "exit 0" if ending == "exit" else "exec sleep 300"
    )
    process = harness.start(sh(script, options))
    assert process.broadcast is not None
    stream = process.broadcast.subscribe()
    assert await take(stream.strings(), 1) == ["hi"]
    if ending == "kill":
        process.kill()
    await down(process)
    assert process.logs["stdout"] is process.logs["stderr"]  # a merged log is one LogFile
    assert process.logs["stdout"].path.read_text() == "logged\n"
    assert process.process_dir.is_dir()
    event = RELEASED if ending == "exit" else KILLED
    harness.close(process, event)
    assert fd_count() == fds
    assert not process.process_dir.exists()
    assert harness.kinds(process) == [SPAWNED, EXITED, event]
    assert await collect(stream.strings()) == []  # the subscription ended


async def test_a_process_that_cannot_be_watched_leaves_nothing_on_the_loop(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_thread(*args: object) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(harness.exits, "watch", no_thread)
    process_id = ProcessId.new()
    child = spawn_child(process_id, Cmd("sleep", ["300"], SAYS), harness.work_dir, harness.devnull)
    fd = child.message_out
    assert fd is not None
    with pytest.raises(RuntimeError, match="can't start new thread"):
        ManagedProcess(
            process_id, child, harness.exits, lambda: child, harness.pace, harness.emit, False
        )
    discard_child(child)  # as the actor undoes a spawn it cannot manage
    # The fd is closed; its number goes to the next fd opened. Nothing may watch it any more
    # (remove_reader says whether something did, and removes it).
    assert not harness.loop.remove_reader(fd)
