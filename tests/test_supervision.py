"""Supervision (SPEC section 8): restart policies, exit events, resource limits, and the blocking
facade under them, with real children.

Nothing sleeps to wait for a condition: the tests wait on the event stream and on ``wait``, always
with a bound. Timing checks use the events' own monotonic timestamps, with a tolerance wide
enough for a loaded two-core machine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import itertools
import json
import os
import resource
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, assert_no_zombie, fd_count, process_dirs, python_cmd

from corral import (
    Backoff,
    Cmd,
    CmdOptions,
    CmdOptionsError,
    EventKind,
    ExitStatus,
    LoggingType,
    LostMessagesError,
    MessagingType,
    ProcessEvent,
    ProcessId,
    ProcessManagerHandle,
    ProcessNotFoundError,
    RestartPolicy,
    SpawnProcessError,
    SyncProcessManager,
)

# A coroutine never awaited, a task destroyed while pending, an unclosed resource: all failures.
pytestmark = pytest.mark.filterwarnings("error")

SUCCESS = ExitStatus(0, None, True)
FAILURE = ExitStatus(1, None, False)

#: Counts its runs in ``$1/runs``, prints two lines per run, and fails while the run number is
#: at most ``$2``: with ``$2 = 2`` it exits 1 twice, then 0.
FAIL_THEN_SUCCEED = """\
echo run >> "$1/runs"
n=$(wc -l < "$1/runs")
echo "run $n starts"
echo "run $n ends"
[ "$n" -gt "$2" ]
"""

#: Deletes its own program file, so that every later exec of it fails, after ``$1`` seconds.
SELF_DELETING = """\
#!/bin/sh
sleep "$1"
rm -- "$0"
exit 1
"""

#: Reads one message and writes it back with an "echo " prefix, then exits (successfully):
#: over the named pipes when it has them, else over stdin / stdout.
ECHO_ONCE = """\
import os, sys
if "INPUT_PIPE" in os.environ:
    with open(os.environ["INPUT_PIPE"], "rb") as source:
        line = source.readline()
    with open(os.environ["OUTPUT_PIPE"], "wb") as sink:
        sink.write(b"echo " + line)
else:
    line = sys.stdin.buffer.readline()
    sys.stdout.buffer.write(b"echo " + line)
    sys.stdout.flush()
"""

#: Reports, as one JSON line on stdout, the limits, umask and niceness it runs with.
REPORT_LIMITS = """\
import json, os, resource
umask = os.umask(0)
print(json.dumps({
    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
    "as": resource.getrlimit(resource.RLIMIT_AS),
    "core": resource.getrlimit(resource.RLIMIT_CORE),
    "umask": umask,
    "nice": os.getpriority(os.PRIO_PROCESS, 0),
}))
"""

#: Short delays for tests that are not about the delays.
QUICK = Backoff(initial=0.01, factor=2, cap=0.05)

#: Ignores SIGTERM, says so (an event to wait on: the stubborn child is ready), then waits.
IGNORE_SIGTERM = """\
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ignoring SIGTERM", flush=True)
time.sleep(60)
"""


def fail_then_succeed(runs_dir: Path, failures: int, options: CmdOptions) -> Cmd:
    """A child that fails ``failures`` times, then succeeds (see FAIL_THEN_SUCCEED)."""
    return Cmd("sh", ["-c", FAIL_THEN_SUCCEED, "sh", str(runs_dir), str(failures)], options)


def kinds(events: list[ProcessEvent]) -> list[EventKind]:
    return [event.kind for event in events]


def of(events: list[ProcessEvent], process_id: ProcessId) -> list[ProcessEvent]:
    return [event for event in events if event.process_id == process_id]


async def events_until(
    stream: AsyncIterator[ProcessEvent],
    done: Callable[[ProcessEvent], bool],
    timeout: float = TIMEOUT,
) -> list[ProcessEvent]:
    """Events read from ``stream`` up to and including the first one ``done`` accepts."""
    events: list[ProcessEvent] = []
    async with asyncio.timeout(timeout):
        async for event in stream:
            events.append(event)
            if done(event):
                return events
    raise AssertionError(f"the event stream ended before the awaited event: {events}")


def is_final(process_id: ProcessId) -> Callable[[ProcessEvent], bool]:
    """Accepts the GAVE_UP event of ``process_id``: its last one until it is killed."""
    return lambda event: event.process_id == process_id and event.kind is EventKind.GAVE_UP


async def events_after_abort(
    manager: ProcessManagerHandle, stream: AsyncIterator[ProcessEvent]
) -> list[ProcessEvent]:
    """Abort the manager, then everything left in ``stream`` up to its end."""
    await manager.abort()
    async with asyncio.timeout(TIMEOUT):
        return [event async for event in stream]


# --- restarts -----------------------------------------------------------------------------------


async def test_fails_twice_then_succeeds_with_every_runs_log_in_order(
    manager: ProcessManagerHandle, tmp_path: Path
) -> None:
    events = await manager.subscribe_events()
    policy = RestartPolicy.on_failure(
        max_restarts=5, backoff=Backoff(initial=0.05, factor=2, cap=1)
    )
    options = CmdOptions(logging_type=LoggingType.STDOUT_ONLY, restart_policy=policy)
    process_id = await manager.spawn(fail_then_succeed(tmp_path, 2, options))

    info = await manager.wait(process_id, TIMEOUT)
    assert info.restarts == 2
    assert info.exit_status == SUCCESS
    assert not info.is_running
    assert not info.restart_pending
    assert info.gave_up_reason is None
    assert await manager.get_process_info(process_id) == info
    assert await manager.get_logs_stdout(process_id) == [
        f"run {n} {what}" for n in (1, 2, 3) for what in ("starts", "ends")
    ]

    seen = of(await events_after_abort(manager, events), process_id)
    assert kinds(seen) == [
        *[EventKind.SPAWNED, EventKind.EXITED, EventKind.RESTARTING] * 2,
        EventKind.SPAWNED,
        EventKind.EXITED,
        EventKind.KILLED,
    ]
    exits = [event for event in seen if event.kind is EventKind.EXITED]
    assert [event.exit_status for event in exits] == [FAILURE, FAILURE, SUCCESS]
    spawns = [event for event in seen if event.kind is EventKind.SPAWNED]
    assert [event.restarts for event in spawns] == [0, 1, 2]
    assert len({event.pid for event in spawns}) == 3  # a new OS process each run
    assert [event.pid for event in exits] == [event.pid for event in spawns]
    assert spawns[-1].pid == info.pid


async def test_backoff_delays_are_kept_between_exit_and_respawn(
    manager: ProcessManagerHandle,
) -> None:
    events = await manager.subscribe_events()
    backoff = Backoff(initial=0.1, factor=2, cap=0.4)
    policy = RestartPolicy.on_failure(max_restarts=4, backoff=backoff, window=30)
    process_id = await manager.spawn(Cmd("false", options=CmdOptions(restart_policy=policy)))
    seen = await events_until(events, is_final(process_id))

    expected = [0.1, 0.2, 0.4, 0.4]
    restarting = [event for event in seen if event.kind is EventKind.RESTARTING]
    assert [event.delay for event in restarting] == expected
    assert [event.restarts for event in restarting] == [1, 2, 3, 4]
    exits = [event.time for event in seen if event.kind is EventKind.EXITED]
    spawns = [event.time for event in seen if event.kind is EventKind.SPAWNED]
    assert len(exits) == len(spawns) == 5
    gaps = [spawned - exited for exited, spawned in zip(exits, spawns[1:], strict=False)]
    for gap, delay in zip(gaps, expected, strict=True):
        assert delay - 0.05 <= gap <= delay + 0.2, f"gaps {gaps}, delays {expected}"
    assert (await manager.wait(process_id, TIMEOUT)).restarts == 4


async def test_always_gives_up_on_a_crash_loop(manager: ProcessManagerHandle) -> None:
    events = await manager.subscribe_events()
    policy = RestartPolicy.always(max_restarts=3, backoff=QUICK, window=30)
    process_id = await manager.spawn(Cmd("false", options=CmdOptions(restart_policy=policy)))

    info = await manager.wait(process_id, TIMEOUT)
    assert info.restarts == 3
    assert info.exit_status == FAILURE
    assert not info.is_running
    assert not info.restart_pending
    assert info.gave_up_reason is not None
    assert "3 time(s) within 30 s" in info.gave_up_reason

    seen = await events_until(events, is_final(process_id))
    assert kinds(seen).count(EventKind.SPAWNED) == 4
    assert kinds(seen).count(EventKind.EXITED) == 4
    assert kinds(seen).count(EventKind.RESTARTING) == 3
    gave_up = seen[-1]
    assert gave_up.kind is EventKind.GAVE_UP
    assert gave_up.reason == info.gave_up_reason
    assert gave_up.exit_status == FAILURE
    assert gave_up.restarts == 3
    # Down for good: nothing more comes for it until the manager ends.
    (killed,) = of(await events_after_abort(manager, events), process_id)
    assert killed.kind is EventKind.KILLED
    assert (killed.pid, killed.exit_status, killed.restarts) == (info.pid, FAILURE, 3)


@pytest.mark.parametrize(
    ("policy", "program", "restarts", "status"),
    [
        (RestartPolicy.always(max_restarts=2, backoff=QUICK), "true", 2, SUCCESS),
        (RestartPolicy.always(max_restarts=2, backoff=QUICK), "false", 2, FAILURE),
        (RestartPolicy.on_failure(max_restarts=2, backoff=QUICK), "true", 0, SUCCESS),
        (RestartPolicy.on_failure(max_restarts=2, backoff=QUICK), "false", 2, FAILURE),
        (
            RestartPolicy.on_failure(max_restarts=2, backoff=QUICK),
            "kill -KILL $$",
            2,
            ExitStatus(None, signal.SIGKILL, False),
        ),
        (RestartPolicy.never(), "true", 0, SUCCESS),
        (RestartPolicy.never(), "false", 0, FAILURE),
    ],
    ids=[
        "always-success",
        "always-failure",
        "on_failure-success",
        "on_failure-failure",
        "on_failure-signal",
        "never-success",
        "never-failure",
    ],
)
async def test_which_exits_each_policy_restarts(
    manager: ProcessManagerHandle,
    policy: RestartPolicy,
    program: str,
    restarts: int,
    status: ExitStatus,
) -> None:
    events = await manager.subscribe_events()
    cmd = Cmd("sh", ["-c", program], CmdOptions(restart_policy=policy))
    process_id = await manager.spawn(cmd)
    info = await manager.wait(process_id, TIMEOUT)
    assert info.restarts == restarts
    assert info.exit_status == status
    assert not info.restart_pending
    # A policy that asked for no restart is not a give-up; one that ran out of restarts is.
    assert (info.gave_up_reason is not None) == (restarts > 0)

    seen = of(await events_after_abort(manager, events), process_id)
    run = [EventKind.SPAWNED, EventKind.EXITED]
    expected = [*[*run, EventKind.RESTARTING] * restarts, *run]
    if restarts:
        expected.append(EventKind.GAVE_UP)
    assert kinds(seen) == [*expected, EventKind.KILLED]
    assert all(e.exit_status == status for e in seen if e.kind is EventKind.EXITED)


@pytest.mark.parametrize(
    ("first_run", "window"),
    [(0.0, 30.0), (0.6, 0.5)],
    ids=["quick-first-run", "first-run-lasts-a-window"],
)
async def test_a_program_that_disappears_is_retried_with_backoff_then_given_up(
    manager: ProcessManagerHandle, tmp_path: Path, first_run: float, window: float
) -> None:
    # After a run that lasted a whole window the streak starts over; the failed respawns
    # that follow are runs of their own and make it grow again.
    program = tmp_path / "vanishing"
    program.write_text(SELF_DELETING)
    program.chmod(0o700)
    events = await manager.subscribe_events()
    backoff = Backoff(initial=0.05, factor=2, cap=0.4)
    policy = RestartPolicy.always(max_restarts=3, backoff=backoff, window=window)
    process_id = await manager.spawn(
        Cmd(program, [str(first_run)], CmdOptions(restart_policy=policy))
    )

    info = await manager.wait(process_id, TIMEOUT)
    assert not program.exists()
    assert info.restarts == 3
    assert info.exit_status == FAILURE  # the last run that ran
    assert not info.restart_pending
    assert info.gave_up_reason is not None
    assert "exit code 127" in info.gave_up_reason

    seen = await events_until(events, is_final(process_id))
    assert kinds(seen) == [
        EventKind.SPAWNED,  # the only run: no respawn ever started
        EventKind.EXITED,
        EventKind.RESTARTING,
        EventKind.RESTARTING,
        EventKind.RESTARTING,
        EventKind.GAVE_UP,
    ]
    restarting = [event for event in seen if event.kind is EventKind.RESTARTING]
    assert [event.delay for event in restarting] == [0.05, 0.1, 0.2]
    # Never a tight loop: every attempt waited for its delay.
    exited, gave_up = seen[1].time, seen[-1].time
    assert gave_up - exited >= 0.35 - 0.01
    for before, after in itertools.pairwise(restarting):
        assert after.time - before.time >= before.delay - 0.01  # type: ignore[operator]


# --- stopping while a restart is pending --------------------------------------------------------

#: A restart far enough away that it never happens during a test.
PENDING = RestartPolicy.always(backoff=Backoff(initial=5, factor=2, cap=5))


async def spawn_pending(
    manager: ProcessManagerHandle, events: AsyncIterator[ProcessEvent]
) -> ProcessId:
    """A process that failed once and waits 5 s for its restart."""
    process_id = await manager.spawn(Cmd("false", options=CmdOptions(restart_policy=PENDING)))
    await events_until(
        events, lambda e: e.process_id == process_id and e.kind is EventKind.RESTARTING
    )
    info = await manager.get_process_info(process_id)
    assert info.restart_pending
    assert not info.is_running
    assert info.restarts == 1
    assert info.exit_status == FAILURE
    return process_id


async def test_kill_during_a_pending_restart(manager: ProcessManagerHandle) -> None:
    events = await manager.subscribe_events()
    process_id = await spawn_pending(manager, events)
    waiter = asyncio.ensure_future(manager.wait(process_id, TIMEOUT))

    started = time.monotonic()
    await asyncio.wait_for(manager.kill(process_id), 1)
    assert time.monotonic() - started < 1
    # A wait issued before the kill returns with the final info.
    final = await asyncio.wait_for(waiter, 1)
    assert not final.restart_pending
    assert final.exit_status == FAILURE
    assert process_id not in await manager.list_processes()
    with pytest.raises(ProcessNotFoundError):
        await manager.get_process_info(process_id)

    # The stream ends with the abort: the restart never happened.
    rest = of(await events_after_abort(manager, events), process_id)
    assert kinds(rest) == [EventKind.KILLED]


async def test_terminate_during_a_pending_restart(manager: ProcessManagerHandle) -> None:
    events = await manager.subscribe_events()
    process_id = await spawn_pending(manager, events)

    started = time.monotonic()
    info = await asyncio.wait_for(manager.terminate(process_id, grace=5), 1)
    assert time.monotonic() - started < 1
    assert info.exit_status == FAILURE
    assert not info.is_running
    assert not info.restart_pending
    assert info.restarts == 1
    assert info.gave_up_reason is None
    assert await manager.get_process_info(process_id) == info  # still known
    assert await manager.wait(process_id, 1) == info

    rest = of(await events_after_abort(manager, events), process_id)
    assert kinds(rest) == [EventKind.KILLED]


async def test_abort_with_pending_restarts_is_prompt_and_leaves_nothing(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    events = await manager.subscribe_events()
    pending = [await spawn_pending(manager, events) for _ in range(5)]

    started = time.monotonic()
    rest = await events_after_abort(manager, events)
    assert time.monotonic() - started < 1
    assert kinds(rest) == [EventKind.KILLED] * 5
    assert {event.process_id for event in rest} == set(pending)
    assert process_dirs(work_dir) == []
    assert_no_zombie()


# --- messages across restarts -------------------------------------------------------------------


@pytest.mark.parametrize("messaging", list(MessagingType), ids=lambda m: m.value)
async def test_a_message_subscription_survives_a_restart(
    manager: ProcessManagerHandle, messaging: MessagingType
) -> None:
    events = await manager.subscribe_events()
    policy = RestartPolicy.always(max_restarts=1, backoff=QUICK)
    options = CmdOptions(message_input=messaging, message_output=messaging, restart_policy=policy)
    process_id = await manager.spawn(python_cmd(ECHO_ONCE, options=options))
    stream = (await manager.subscribe_message_stream(process_id)).strings()

    await manager.send_message(process_id, "one")
    async with asyncio.timeout(TIMEOUT):
        assert await anext(stream) == "echo one"
    spawns = await events_until(
        events,
        lambda e: e.process_id == process_id and e.kind is EventKind.SPAWNED and e.restarts == 1,
    )
    assert kinds(spawns).count(EventKind.SPAWNED) == 2
    await manager.send_message(process_id, "two")
    async with asyncio.timeout(TIMEOUT):
        assert await anext(stream) == "echo two"
        # Run 2 was the last one allowed: the stream ends with it.
        assert [text async for text in stream] == []

    info = await manager.wait(process_id, TIMEOUT)
    assert info.restarts == 1
    assert info.exit_status == SUCCESS
    assert info.gave_up_reason is not None


# --- events -------------------------------------------------------------------------------------


async def test_events_of_a_hundred_concurrent_processes_come_in_order(
    manager: ProcessManagerHandle,
) -> None:
    n = 100
    events = await manager.subscribe_events()
    ids = await asyncio.gather(*(manager.spawn(Cmd("true")) for _ in range(n)))
    finals = await asyncio.gather(*(manager.wait(process_id, TIMEOUT) for process_id in ids))
    assert all(info.exit_status == SUCCESS for info in finals)
    async with asyncio.timeout(TIMEOUT):
        seen = [await anext(events) for _ in range(2 * n)]

    await asyncio.gather(*(manager.kill(process_id) for process_id in ids))
    seen += await events_after_abort(manager, events)  # and the stream ends

    assert len(seen) == 3 * n
    times = [event.time for event in seen]
    assert times == sorted(times)
    assert {event.process_id for event in seen} == set(ids)
    for process_id, info in zip(ids, finals, strict=True):
        mine = of(seen, process_id)
        assert kinds(mine) == [EventKind.SPAWNED, EventKind.EXITED, EventKind.KILLED]
        assert {event.pid for event in mine} == {info.pid}
        assert mine[1].exit_status == SUCCESS
        assert mine[0].exit_status is None


async def test_a_subscriber_that_does_not_read_loses_events_with_the_count(
    manager: ProcessManagerHandle,
) -> None:
    n, capacity = 600, 1024  # 2 events each: 1,200 events into a buffer of 1,024
    events = await manager.subscribe_events()
    ids = await asyncio.gather(*(manager.spawn(Cmd("true")) for _ in range(n)))
    await asyncio.gather(*(manager.wait(process_id, TIMEOUT) for process_id in ids))

    with pytest.raises(LostMessagesError) as lost:
        await anext(events)
    assert lost.value.count == 2 * n - capacity
    # It goes on with the oldest event still buffered: the last 1,024 of them.
    async with asyncio.timeout(TIMEOUT):
        kept = [await anext(events) for _ in range(capacity)]
    # Spawns and exits interleave (the manager lets the loop run between spawns), so which
    # events are the last 1,024 varies; their order and shape do not.
    assert [event.time for event in kept] == sorted(event.time for event in kept)
    for process_id in ids:
        assert kinds(of(kept, process_id)) in (
            [],
            [EventKind.EXITED],
            [EventKind.SPAWNED, EventKind.EXITED],
        )
    assert kept[-1].kind is EventKind.EXITED
    rest = await events_after_abort(manager, events)
    assert kinds(rest) == [EventKind.KILLED] * n


async def test_a_late_subscriber_starts_at_its_subscription_not_in_history(
    manager: ProcessManagerHandle,
) -> None:
    n = 300  # 600 events buffered before anyone subscribes
    ids = await asyncio.gather(*(manager.spawn(Cmd("true")) for _ in range(n)))
    await asyncio.gather(*(manager.wait(process_id, TIMEOUT) for process_id in ids))
    events = await manager.subscribe_events()
    replayed = await manager.subscribe_events(replay=True)
    wanted = await manager.spawn(Cmd("true"))
    # The very next event is the new spawn: no stale exit, no LostMessagesError before it.
    async with asyncio.timeout(TIMEOUT):
        first = await anext(events)
    assert (first.kind, first.process_id) == (EventKind.SPAWNED, wanted)
    # Asked for, the history is there (the oldest event buffered first).
    async with asyncio.timeout(TIMEOUT):
        oldest = await anext(replayed)
    assert (oldest.kind, oldest.process_id) == (EventKind.SPAWNED, ids[0])


async def test_every_exit_publishes_its_event_with_its_real_status(
    manager: ProcessManagerHandle,
) -> None:
    events = await manager.subscribe_events()
    terminated = await manager.spawn(Cmd("sleep", ["60"]))
    killed = await manager.spawn(Cmd("sleep", ["60"]))
    says = CmdOptions.with_message_output(MessagingType.STANDARD_IO)
    stubborn = await manager.spawn(python_cmd(IGNORE_SIGTERM, options=says))
    ready = await manager.subscribe_message_stream(stubborn)
    async with asyncio.timeout(TIMEOUT):  # it ignores SIGTERM from now on
        assert (await anext(ready)).to_string() == "ignoring SIGTERM"

    await manager.terminate(terminated, grace=TIMEOUT)
    exited = await events_until(events, lambda e: e.kind is EventKind.EXITED)
    assert (exited[-1].process_id, exited[-1].exit_status) == (
        terminated,
        ExitStatus(None, signal.SIGTERM, False),
    )
    await manager.terminate(stubborn, grace=0.1)
    exited = await events_until(events, lambda e: e.kind is EventKind.EXITED)
    assert (exited[-1].process_id, exited[-1].exit_status) == (
        stubborn,
        ExitStatus(None, signal.SIGKILL, False),
    )
    await manager.kill(killed)
    seen = await events_until(events, lambda e: e.kind is EventKind.KILLED)
    assert [(e.kind, e.exit_status) for e in of(seen, killed)] == [
        (EventKind.EXITED, ExitStatus(None, signal.SIGKILL, False)),
        (EventKind.KILLED, ExitStatus(None, signal.SIGKILL, False)),
    ]


# --- resource limits ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rlimits", "expected"),
    [
        (
            {resource.RLIMIT_NOFILE: (256, 512), resource.RLIMIT_AS: 4 << 30},
            {"nofile": [256, 512], "as": [4 << 30, 4 << 30]},
        ),
        (
            {"nofile": 300, "RLIMIT_CORE": (0, 1 << 20)},
            {"nofile": [300, 300], "core": [0, 1 << 20]},
        ),
    ],
    ids=["numbers", "names"],
)
async def test_rlimits_umask_and_nice_take_effect_in_every_run(
    manager: ProcessManagerHandle, rlimits: dict[Any, Any], expected: dict[str, Any]
) -> None:
    options = CmdOptions(
        logging_type=LoggingType.STDOUT_ONLY,
        rlimits=rlimits,
        umask=0o027,
        nice=7,
        restart_policy=RestartPolicy.always(max_restarts=1, backoff=QUICK),
    )
    process_id = await manager.spawn(python_cmd(REPORT_LIMITS, options=options))
    info = await manager.wait(process_id, TIMEOUT)
    assert info.exit_status == SUCCESS
    assert info.restarts == 1
    reports = [json.loads(line) for line in await manager.get_logs_stdout(process_id)]
    assert len(reports) == 2  # the restart gets them too
    for report in reports:
        assert report["umask"] == 0o027
        assert report["nice"] == 7
        for name, limit in expected.items():
            assert report[name] == limit


async def test_without_options_the_child_inherits_limits_umask_and_nice(
    manager: ProcessManagerHandle,
) -> None:
    options = CmdOptions(logging_type=LoggingType.STDOUT_ONLY)
    process_id = await manager.spawn(python_cmd(REPORT_LIMITS, options=options))
    await manager.wait(process_id, TIMEOUT)
    (report,) = [json.loads(line) for line in await manager.get_logs_stdout(process_id)]
    umask = os.umask(0o022)
    os.umask(umask)
    assert report["umask"] == umask
    assert report["nice"] == os.getpriority(os.PRIO_PROCESS, 0)
    assert report["nofile"] == list(resource.getrlimit(resource.RLIMIT_NOFILE))


def _nr_open() -> int:
    with open("/proc/sys/fs/nr_open") as f:
        return int(f.read())


@pytest.mark.parametrize("policy", [RestartPolicy.never(), RestartPolicy.always()])
async def test_limits_the_child_cannot_set_fail_the_spawn_and_leave_nothing(
    manager: ProcessManagerHandle, work_dir: Path, policy: RestartPolicy
) -> None:
    # No process may have more open files than fs.nr_open, root included: setrlimit fails in
    # the child, between fork and exec.
    beyond = _nr_open() + 1
    await manager.kill(await manager.spawn(Cmd("true")))  # the guardian's fds are open now
    fds = fd_count()
    options = CmdOptions(rlimits={"nofile": beyond}, restart_policy=policy)
    with pytest.raises(SpawnProcessError, match="rlimits / nice"):
        await manager.spawn(Cmd("true", options=options))
    assert await manager.list_processes() == []
    assert process_dirs(work_dir) == []
    assert fd_count() == fds
    assert_no_zombie()


@pytest.mark.parametrize(
    "make",
    [
        lambda: Backoff(initial=-1),
        lambda: Backoff(initial=0),
        lambda: Backoff(initial=float("nan")),
        lambda: Backoff(factor=0.5),
        lambda: Backoff(factor=0),
        lambda: Backoff(initial=2, cap=1),
        lambda: Backoff(cap=0),
        lambda: RestartPolicy.on_failure(max_restarts=-1),
        lambda: RestartPolicy.always(max_restarts=1.5),  # type: ignore[arg-type]
        lambda: RestartPolicy.always(window=0),
        lambda: RestartPolicy.always(window=-5),
        lambda: RestartPolicy(mode="always"),  # type: ignore[arg-type]
        lambda: RestartPolicy(backoff=1.0),  # type: ignore[arg-type]
        lambda: CmdOptions(restart_policy="always"),  # type: ignore[arg-type]
        lambda: CmdOptions(rlimits={"no_such_limit": 1}),
        lambda: CmdOptions(rlimits={"RLIMIT_": 1}),
        lambda: CmdOptions(rlimits={999_999: 1}),
        lambda: CmdOptions(rlimits={True: 1}),
        lambda: CmdOptions(rlimits={"nofile": -2}),
        lambda: CmdOptions(rlimits={"nofile": (10, 5)}),
        lambda: CmdOptions(rlimits={"nofile": "10"}),
        lambda: CmdOptions(umask=0o1000),
        lambda: CmdOptions(nice=20),
        lambda: CmdOptions(nice=-21),
    ],
)
async def test_bad_policies_and_limits_are_refused_at_construction(
    manager: ProcessManagerHandle, work_dir: Path, make: Callable[[], object]
) -> None:
    with pytest.raises(CmdOptionsError):
        make()
    assert await manager.list_processes() == []
    assert process_dirs(work_dir) == []


def test_a_bad_option_set_later_is_refused_and_changes_nothing() -> None:
    options = CmdOptions(rlimits={"nofile": 100})
    with pytest.raises(CmdOptionsError):
        options.rlimits = {"nofile": (10, 5)}
    with pytest.raises(CmdOptionsError):
        options.restart_policy = None  # type: ignore[assignment]
    assert options.rlimits == {resource.RLIMIT_NOFILE: (100, 100)}
    assert options.restart_policy == RestartPolicy.never()


# --- the blocking facade ------------------------------------------------------------------------


def test_sync_manager_from_eight_threads_with_restarts(tmp_path: Path) -> None:
    threads, rounds = 8, 2
    start = threading.Barrier(threads)
    policy = RestartPolicy.on_failure(max_restarts=3, backoff=QUICK)
    options = CmdOptions(logging_type=LoggingType.STDOUT_ONLY, restart_policy=policy)
    work = tmp_path / "work"
    work.mkdir()

    with SyncProcessManager(work) as pm:

        def worker(n: int) -> list[ProcessId]:
            start.wait(TIMEOUT)
            ids = []
            for i in range(rounds):
                runs = tmp_path / f"runs-{n}-{i}"
                runs.mkdir()
                process_id = pm.spawn(fail_then_succeed(runs, 1, options))
                info = pm.wait(process_id, TIMEOUT)
                assert info.restarts == 1
                assert info.exit_status == SUCCESS
                assert info.gave_up_reason is None
                assert pm.get_logs_stdout(process_id) == [
                    "run 1 starts",
                    "run 1 ends",
                    "run 2 starts",
                    "run 2 ends",
                ]
                pm.kill(process_id)
                ids.append(process_id)
            return ids

        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(worker, range(threads), timeout=60))
        spawned = [process_id for ids in results for process_id in ids]
        assert len(set(spawned)) == threads * rounds
        assert pm.list_processes() == []
    assert_no_zombie()


def test_sync_subscribe_events_is_a_plain_iterator(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    with SyncProcessManager(work) as pm:
        fds, thread_count = fd_count(), threading.active_count()
        policy = RestartPolicy.always(max_restarts=1, backoff=QUICK)

        with pm.subscribe_events() as events:
            process_id = pm.spawn(Cmd("true", options=CmdOptions(restart_policy=policy)))
            seen = []
            for event in events:
                seen.append(event.kind)
                if event.kind is EventKind.GAVE_UP:
                    break
        assert seen == [
            EventKind.SPAWNED,
            EventKind.EXITED,
            EventKind.RESTARTING,
            EventKind.SPAWNED,
            EventKind.EXITED,
            EventKind.GAVE_UP,
        ]
        assert list(events) == []  # closed: the iteration is over

        # Left with break and dropped: the subscription is released with the iterator.
        dropped = pm.subscribe_events()
        other = pm.spawn(Cmd("true"))
        for event in dropped:
            assert (event.kind, event.process_id) == (EventKind.SPAWNED, other)
            break
        del dropped
        gc.collect()
        pm.kill(other)
        pm.kill(process_id)
        broadcast = pm.handle._mailbox._events._broadcast  # type: ignore[attr-defined]
        assert not broadcast._subscribers
        assert fd_count() == fds
        assert threading.active_count() == thread_count
