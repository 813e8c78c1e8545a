"""Forgetting finished processes: release(id), CmdOptions(auto_release=True), and a spawn that
cannot be recorded, which must not leave its child behind."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, children_of_self, collect, process_dirs, python_cmd, sleep_cmd

from corral import (
    Cmd,
    CmdOptions,
    EventKind,
    LoggingType,
    MessagingType,
    ProcessManagerHandle,
    ProcessNotFoundError,
    ReleaseProcessError,
    RestartPolicy,
    SpawnProcessError,
    SyncProcessManager,
)
from corral import _process as process_module


async def test_release_forgets_an_exited_process_and_removes_its_dir(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    logged = CmdOptions.with_logging(LoggingType.STDOUT_ONLY)
    pid = await manager.spawn(Cmd("echo", ["hi"], logged))
    await manager.wait(pid, TIMEOUT)
    assert await manager.get_logs_stdout(pid) == ["hi"]  # readable until released
    assert (work_dir / str(pid)).is_dir()
    events = await manager.subscribe_events()
    await manager.release(pid)
    assert process_dirs(work_dir) == []
    assert await manager.list_processes() == []
    with pytest.raises(ProcessNotFoundError):
        await manager.get_process_info(pid)
    with pytest.raises(ProcessNotFoundError) as again:
        await manager.release(pid)
    assert isinstance(again.value, ReleaseProcessError)
    async with asyncio.timeout(TIMEOUT):
        released = await anext(events)
    assert (released.kind, released.process_id) == (EventKind.RELEASED, pid)


async def test_release_refuses_a_running_process(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    pid = await manager.spawn(sleep_cmd())
    with pytest.raises(ReleaseProcessError, match="still running") as caught:
        await manager.release(pid)
    assert caught.value.process_id == pid
    assert (await manager.get_process_info(pid)).is_running
    await manager.kill(pid)
    assert process_dirs(work_dir) == []


async def test_release_refuses_a_process_whose_restart_is_pending(
    manager: ProcessManagerHandle,
) -> None:
    policy = RestartPolicy.always(max_restarts=3)
    pid = await manager.spawn(Cmd("false", options=CmdOptions(restart_policy=policy)))
    events = await manager.subscribe_events(replay=True)
    async with asyncio.timeout(TIMEOUT):
        async for event in events:
            if event.kind is EventKind.RESTARTING:
                break
    with pytest.raises(ReleaseProcessError, match="still"):
        await manager.release(pid)
    await manager.kill(pid)


async def test_auto_released_runs_leave_no_entry_and_no_dir(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    n = 200
    events = await manager.subscribe_events()
    opts = CmdOptions(auto_release=True)
    ids = await asyncio.gather(*(manager.spawn(Cmd("true", options=opts)) for _ in range(n)))
    released: set[Any] = set()
    async with asyncio.timeout(TIMEOUT):
        async for event in events:
            if event.kind is EventKind.RELEASED:
                released.add(event.process_id)
                if len(released) == n:
                    break
    assert released == set(ids)
    assert await manager.list_processes() == []
    assert process_dirs(work_dir) == []


async def test_auto_release_delivers_every_message_first(manager: ProcessManagerHandle) -> None:
    count = 500
    opts = CmdOptions(
        message_input=MessagingType.STANDARD_IO,
        message_output=MessagingType.STANDARD_IO,
        auto_release=True,
    )
    code = "import sys; sys.stdin.readline(); print('\\n'.join(map(str, range(int(sys.argv[1])))))"
    pid = await manager.spawn(python_cmd(code, str(count), options=opts))
    stream = await manager.subscribe_message_stream(pid)
    await manager.send_message(pid, "go")
    texts = await collect(stream.strings())
    assert texts == [str(i) for i in range(count)]


def test_release_in_the_blocking_api(tmp_path: Path) -> None:
    with SyncProcessManager(tmp_path) as pm:
        proc = pm.spawn_with_handle(Cmd("true"))
        proc.wait(TIMEOUT)
        proc.release()
        assert pm.list_processes() == []
        assert process_dirs(tmp_path) == []


# --- a spawn that fails after the exec -----------------------------------------------------------


async def test_a_failure_recording_a_started_child_kills_it(
    manager: ProcessManagerHandle, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(*args: Any, **kwargs: Any) -> None:
        raise MemoryError

    monkeypatch.setattr(process_module, "Broadcast", out_of_memory)
    marker = "4242.5"  # an argument no other child has: how the test finds it
    opts = CmdOptions(message_output=MessagingType.STANDARD_IO)
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(SpawnProcessError, match="was killed") as caught:
        await manager.spawn(Cmd("sleep", [marker], opts))
    assert isinstance(caught.value.__cause__, MemoryError)
    # Killed and reaped before the error was raised: no child left, not even a zombie.
    for child in children_of_self():
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                assert marker.encode() not in f.read()
        except FileNotFoundError:  # another test's child, gone meanwhile
            pass
    assert len(os.listdir("/proc/self/fd")) == fds
    assert process_dirs(work_dir) == []
    assert await manager.list_processes() == []
    monkeypatch.undo()
    pid = await manager.spawn(Cmd("true", options=opts))  # and the manager goes on
    assert (await manager.wait(pid, TIMEOUT)).exit_status.success
