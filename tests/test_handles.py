"""ProcessHandle, ScopedProcessHandle, and a manager handle used from other threads' loops."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import threading
from pathlib import Path

import pytest
from conftest import (
    TIMEOUT,
    exercise_handle,
    pid_alive,
    pidfd,
    process_dirs,
    sleep_cmd,
    start_time,
    wait_fd_readable,
)

from corral import (
    Cmd,
    ExitStatus,
    GetProcessInfoError,
    KillProcessError,
    ManagerAbortedError,
    ProcessHandle,
    ProcessId,
    ProcessInfo,
    ProcessManager,
    ProcessManagerHandle,
    ProcessNotFoundError,
    ScopedProcessHandle,
    SpawnProcessError,
)


async def _pid_and_start(process: ProcessHandle) -> tuple[int, int]:
    pid = (await process.get_process_info()).pid
    assert pid is not None
    return pid, start_time(pid)


# --- ProcessHandle -------------------------------------------------------------------------------


async def test_process_handle_methods(manager: ProcessManagerHandle, work_dir: Path) -> None:
    process = await manager.spawn_with_handle(sleep_cmd())
    assert isinstance(process, ProcessHandle)
    assert not isinstance(process, ScopedProcessHandle)
    assert isinstance(process.id, ProcessId)
    assert process.manager is manager
    assert str(process.id) in repr(process)
    assert await manager.list_processes() == [process.id]
    info = await process.get_process_info()
    assert info.is_running
    with pytest.raises(TimeoutError):
        await process.wait(timeout=0.01)
    async with asyncio.timeout(TIMEOUT):
        final, _ = await asyncio.gather(process.wait(), process.kill())
    assert final == ProcessInfo(info.pid, ExitStatus(None, signal.SIGKILL, False), False)
    assert process_dirs(work_dir) == []
    with pytest.raises(ProcessNotFoundError) as caught:
        await process.kill()
    assert isinstance(caught.value, KillProcessError)
    assert caught.value.process_id == process.id


async def test_dropping_a_process_handle_does_not_kill(manager: ProcessManagerHandle) -> None:
    process = await manager.spawn_with_handle(sleep_cmd())
    process_id = process.id
    pid, started = await _pid_and_start(process)
    del process
    gc.collect()
    assert await manager.list_processes() == [process_id]
    assert (await manager.get_process_info(process_id)).is_running
    assert pid_alive(pid, started)


# --- ScopedProcessHandle -------------------------------------------------------------------------


async def test_scoped_handle_kills_at_block_exit(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    async with await manager.spawn_with_scoped_handle(sleep_cmd()) as process:
        assert isinstance(process, ScopedProcessHandle)
        pid, started = await _pid_and_start(process)
        assert (await process.get_process_info()).is_running
    assert not pid_alive(pid, started)  # killed and reaped when the block ended
    assert await manager.list_processes() == []
    assert process_dirs(work_dir) == []


async def test_scoped_handle_kills_on_exception(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    scoped = await manager.spawn_with_scoped_handle(sleep_cmd())
    pid, started = await _pid_and_start(scoped)

    async def fail_inside() -> None:
        async with scoped:
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await fail_inside()
    assert not pid_alive(pid, started)
    assert await manager.list_processes() == []
    assert process_dirs(work_dir) == []


async def test_scoped_handle_kills_on_cancellation(manager: ProcessManagerHandle) -> None:
    scoped = await manager.spawn_with_scoped_handle(sleep_cmd())
    pid, started = await _pid_and_start(scoped)
    entered = asyncio.Event()

    async def inside() -> None:
        async with scoped:
            entered.set()
            await asyncio.Event().wait()  # until cancelled

    task = asyncio.ensure_future(inside())
    await asyncio.wait_for(entered.wait(), TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not pid_alive(pid, started)
    assert await manager.list_processes() == []


async def test_scoped_handle_whose_process_was_already_killed(
    manager: ProcessManagerHandle,
) -> None:
    async with await manager.spawn_with_scoped_handle(sleep_cmd()) as process:
        await process.kill()
    async with await manager.spawn_with_scoped_handle(Cmd("true")) as process:
        await process.wait(TIMEOUT)
    assert await manager.list_processes() == []


async def test_scoped_handle_after_abort(work_dir: Path) -> None:
    handle = ProcessManager.spawn(work_dir)
    async with await handle.spawn_with_scoped_handle(sleep_cmd()):
        await handle.abort()  # leaving the block is quiet: the process is gone already
    assert process_dirs(work_dir) == []


async def test_collected_scoped_handle_kills_its_process(manager: ProcessManagerHandle) -> None:
    scoped = await manager.spawn_with_scoped_handle(sleep_cmd())
    process_id = scoped.id
    pid, started = await _pid_and_start(scoped)
    with pidfd(pid) as fd:  # opened while the process is known to be ours
        assert fd is not None
        del scoped
        gc.collect()
        await wait_fd_readable(fd)  # the process exited
    # The kill was posted before this request, so the id is forgotten already.
    assert process_id not in await manager.list_processes()
    assert not pid_alive(pid, started)


async def test_collected_scoped_handle_after_its_block_does_nothing(
    manager: ProcessManagerHandle,
) -> None:
    async with await manager.spawn_with_scoped_handle(sleep_cmd()) as scoped:
        pass
    del scoped
    gc.collect()
    kept = await manager.spawn(sleep_cmd())
    assert await manager.list_processes() == [kept]


# --- other threads -------------------------------------------------------------------------------


async def test_handle_used_from_another_thread(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    status, running = await asyncio.wait_for(
        asyncio.to_thread(asyncio.run, exercise_handle(manager)), TIMEOUT
    )
    assert status == ExitStatus(6, None, False)
    assert running
    assert await manager.list_processes() == []
    assert process_dirs(work_dir) == []


async def test_handle_used_from_many_threads_at_once(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    async def spawn_and_wait(count: int) -> list[ExitStatus | None]:
        ids = await asyncio.gather(*(manager.spawn(Cmd("true")) for _ in range(count)))
        infos = await asyncio.gather(*(manager.wait(i, TIMEOUT) for i in ids))
        await asyncio.gather(*(manager.kill(i) for i in ids))
        return [info.exit_status for info in infos]

    def in_thread() -> list[ExitStatus | None]:
        return asyncio.run(spawn_and_wait(10))

    results = await asyncio.wait_for(
        asyncio.gather(*(asyncio.to_thread(in_thread) for _ in range(4)), spawn_and_wait(10)),
        TIMEOUT,
    )
    assert [len(r) for r in results] == [10] * 5
    assert {s for r in results for s in r} == {ExitStatus(0, None, True)}
    assert await manager.list_processes() == []
    assert process_dirs(work_dir) == []


async def test_errors_cross_threads_with_their_classes(manager: ProcessManagerHandle) -> None:
    unknown = ProcessId.new()

    async def failing_calls() -> list[BaseException]:
        calls = [
            manager.kill(unknown),
            manager.get_process_info(unknown),
            manager.spawn(Cmd("corral-no-such-program-anywhere")),
        ]
        return list(await asyncio.gather(*calls, return_exceptions=True))

    kill, info, spawn = await asyncio.wait_for(
        asyncio.to_thread(asyncio.run, failing_calls()), TIMEOUT
    )
    assert isinstance(kill, KillProcessError)
    assert isinstance(kill, ProcessNotFoundError)
    assert isinstance(info, GetProcessInfoError)
    assert isinstance(info, ProcessNotFoundError)
    assert isinstance(spawn, SpawnProcessError)
    assert isinstance(spawn.__cause__, FileNotFoundError)


async def test_manager_on_a_closed_loop(tmp_path: Path) -> None:
    """A manager whose loop ended without abort(): its children are gone, calls fail cleanly."""
    work_dir = tmp_path / "work"
    work_dir.mkdir()

    async def start() -> tuple[ProcessManagerHandle, ProcessId, int, int]:
        handle = ProcessManager.spawn(work_dir)
        process = await handle.spawn_with_handle(sleep_cmd())
        pid, started = await _pid_and_start(process)
        return handle, process.id, pid, started

    # asyncio.run closes its loop on return, without an abort() of the manager.
    handle, process_id, pid, started = await asyncio.wait_for(
        asyncio.to_thread(asyncio.run, start()), TIMEOUT
    )
    assert not pid_alive(pid, started)
    assert process_dirs(work_dir) == []
    calls = [
        (GetProcessInfoError, handle.get_process_info(process_id)),
        (KillProcessError, handle.kill(process_id)),
        (SpawnProcessError, handle.spawn(sleep_cmd())),
        (GetProcessInfoError, handle.list_processes()),
    ]
    for operation_error, call in calls:
        with pytest.raises(ManagerAbortedError) as caught:
            await asyncio.wait_for(call, TIMEOUT)
        assert isinstance(caught.value, operation_error)
    with pytest.raises(ManagerAbortedError):
        await handle.abort()


async def test_manager_loop_in_a_thread_serving_this_loop(tmp_path: Path) -> None:
    """The manager runs on a background thread's loop; this loop only holds the handle."""
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    ready: asyncio.Future[ProcessManagerHandle] = asyncio.get_running_loop().create_future()
    stop = threading.Event()
    caller = asyncio.get_running_loop()

    async def host() -> None:
        handle = ProcessManager.spawn(work_dir)
        caller.call_soon_threadsafe(ready.set_result, handle)
        await asyncio.to_thread(stop.wait, TIMEOUT)
        with contextlib.suppress(ManagerAbortedError):
            await handle.abort()

    thread = threading.Thread(target=asyncio.run, args=(host(),))
    thread.start()
    try:
        handle = await asyncio.wait_for(ready, TIMEOUT)
        status, running = await asyncio.wait_for(exercise_handle(handle), TIMEOUT)
        assert status == ExitStatus(6, None, False)
        assert running
        process_id = await handle.spawn(sleep_cmd())
        await handle.abort()
        with pytest.raises(ManagerAbortedError):
            await handle.get_process_info(process_id)
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, TIMEOUT)
    assert not thread.is_alive()
    assert process_dirs(work_dir) == []


async def test_spawn_cancelled_in_another_thread_after_the_reply_was_sent(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    """The reply is on its way to the caller's loop when the caller cancels: the process dies."""
    posted = threading.Event()
    answered = threading.Event()

    async def caller() -> bool:
        task = asyncio.ensure_future(manager.spawn(sleep_cmd()))
        await asyncio.sleep(0)  # the task posts its request
        posted.set()
        # Hold this loop until the manager has answered: the reply waits in this loop's queue.
        assert answered.wait(TIMEOUT)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    thread = asyncio.ensure_future(asyncio.to_thread(asyncio.run, caller()))
    assert await asyncio.to_thread(posted.wait, TIMEOUT)
    (spawned,) = await manager.list_processes()  # handled after the spawn, so it exists
    pid = (await manager.get_process_info(spawned)).pid
    assert pid is not None
    with pidfd(pid) as fd:
        assert fd is not None
        answered.set()
        assert await asyncio.wait_for(thread, TIMEOUT)  # the caller saw only a cancellation
        await wait_fd_readable(fd)  # and the process it never learnt about was killed
    assert await manager.list_processes() == []
