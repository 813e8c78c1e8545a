"""The core scenarios again, with the manager on uvloop.

Each test is a plain function that runs its scenario in ``asyncio.Runner`` with uvloop's loop
factory, so it does not depend on how a pytest plugin picks event loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import (
    TIMEOUT,
    assert_no_zombie,
    children_of_self,
    exercise_handle,
    pid_alive,
    pidfd,
    process_dirs,
    run_program_without_abort,
    sleep_cmd,
    start_time,
    wait_exited,
    wait_fd_readable,
)

from corral import (
    Cmd,
    ExitStatus,
    GetProcessInfoError,
    ManagerAbortedError,
    ProcessManager,
    ProcessNotFoundError,
    SpawnProcessError,
)

uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed")

T = TypeVar("T")


def on_uvloop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end on a fresh uvloop loop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def assert_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


def test_spawn_info_wait_kill(work_dir: Path) -> None:
    async def scenario() -> None:
        assert_uvloop()
        async with ProcessManager.spawn(work_dir) as handle:
            process_id = await handle.spawn(sleep_cmd())
            info = await handle.get_process_info(process_id)
            assert info.is_running
            assert info.pid is not None
            started = start_time(info.pid)
            with pytest.raises(TimeoutError):
                await handle.wait(process_id, timeout=0.01)
            assert (await handle.get_process_info(process_id)).is_running
            async with asyncio.timeout(TIMEOUT):
                final, _ = await asyncio.gather(handle.wait(process_id), handle.kill(process_id))
            assert final.exit_status == ExitStatus(None, signal.SIGKILL, False)
            assert final.pid == info.pid
            assert not pid_alive(info.pid, started)
            assert process_dirs(work_dir) == []
            with pytest.raises(ProcessNotFoundError):
                await handle.get_process_info(process_id)

            exited = await handle.spawn(Cmd("sh", ["-c", "exit 3"]))
            info = await handle.wait(exited, TIMEOUT)
            assert info.exit_status == ExitStatus(3, None, False)
            assert await handle.get_process_info(exited) == info
            assert await handle.list_processes() == [exited]

            with pytest.raises(SpawnProcessError) as caught:
                await handle.spawn(Cmd("corral-no-such-program-anywhere"))
            assert isinstance(caught.value.__cause__, FileNotFoundError)

    on_uvloop(scenario())
    assert process_dirs(work_dir) == []


def test_abort(work_dir: Path) -> None:
    async def scenario() -> list[tuple[int, int]]:
        handle = ProcessManager.spawn(work_dir)
        ids = [await handle.spawn(sleep_cmd()) for _ in range(5)]
        pids = [(await handle.get_process_info(i)).pid for i in ids]
        await handle.abort()
        with pytest.raises(ManagerAbortedError) as caught:
            await handle.get_process_info(ids[0])
        assert isinstance(caught.value, GetProcessInfoError)
        with pytest.raises(ManagerAbortedError):
            await handle.abort()
        return [(pid, start_time(pid)) for pid in pids if pid is not None and pid_alive(pid)]

    assert on_uvloop(scenario()) == []
    assert process_dirs(work_dir) == []


def test_own_temp_dir_removed_by_abort() -> None:
    async def scenario() -> None:
        async with ProcessManager.spawn() as handle:
            await handle.wait(await handle.spawn(Cmd("true")), TIMEOUT)

    on_uvloop(scenario())


def test_scoped_handles(work_dir: Path) -> None:
    async def scenario() -> None:
        async with ProcessManager.spawn(work_dir) as handle:
            async with await handle.spawn_with_scoped_handle(sleep_cmd()) as process:
                pid = (await process.get_process_info()).pid
                assert pid is not None
                started = start_time(pid)
            assert not pid_alive(pid, started)

            scoped = await handle.spawn_with_scoped_handle(sleep_cmd())
            pid = (await scoped.get_process_info()).pid
            assert pid is not None
            with pidfd(pid) as fd:
                assert fd is not None
                del scoped
                gc.collect()
                await wait_fd_readable(fd)
            assert await handle.list_processes() == []
            assert process_dirs(work_dir) == []

    on_uvloop(scenario())


def test_handle_used_from_another_thread(work_dir: Path) -> None:
    async def scenario() -> None:
        async with ProcessManager.spawn(work_dir) as handle:
            # the other thread runs the default loop; the manager's is uvloop
            status, running = await asyncio.wait_for(
                asyncio.to_thread(asyncio.run, exercise_handle(handle)), TIMEOUT
            )
            assert status == ExitStatus(6, None, False)
            assert running

            def on_another_uvloop() -> tuple[ExitStatus | None, bool]:
                return on_uvloop(exercise_handle(handle))

            status, running = await asyncio.wait_for(asyncio.to_thread(on_another_uvloop), TIMEOUT)
            assert status == ExitStatus(6, None, False)
            assert await handle.list_processes() == []

    on_uvloop(scenario())
    assert process_dirs(work_dir) == []


def test_handle_from_this_thread_to_a_uvloop_manager_in_another(work_dir: Path) -> None:
    async def start() -> tuple[Any, int, int]:
        handle = ProcessManager.spawn(work_dir)
        pid = (await handle.get_process_info(await handle.spawn(sleep_cmd()))).pid
        assert pid is not None
        return handle, pid, start_time(pid)

    async def scenario() -> None:
        # The manager's loop (uvloop, in a thread) ends without abort(): children go with it.
        handle, pid, started = await asyncio.to_thread(on_uvloop, start())
        assert not pid_alive(pid, started)
        with pytest.raises(ManagerAbortedError):
            await handle.list_processes()

    asyncio.run(scenario())
    assert process_dirs(work_dir) == []


def test_100_concurrent_spawns(work_dir: Path) -> None:
    async def scenario() -> None:
        async with ProcessManager.spawn(work_dir) as handle:
            ids = await asyncio.gather(*(handle.spawn(Cmd("true")) for _ in range(100)))
            infos = await asyncio.wait_for(
                asyncio.gather(*(handle.wait(i) for i in ids)), TIMEOUT * 3
            )
            assert {info.exit_status for info in infos} == {ExitStatus(0, None, True)}
            await asyncio.gather(*(handle.kill(i) for i in ids))
            assert process_dirs(work_dir) == []
            running = await asyncio.gather(*(handle.spawn(sleep_cmd()) for _ in range(100)))
            assert len(await handle.list_processes()) == 100
            assert len(set(running)) == 100

    on_uvloop(scenario())
    assert process_dirs(work_dir) == []
    assert_no_zombie()


@pytest.mark.parametrize("yields", range(4))
def test_cancelled_spawn_leaves_no_process(work_dir: Path, yields: int) -> None:
    async def scenario() -> None:
        before = children_of_self()
        async with ProcessManager.spawn(work_dir) as handle:
            task = asyncio.ensure_future(handle.spawn(sleep_cmd()))
            for _ in range(yields):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await handle.kill(await task)  # finished before the cancel: the caller's
            assert await handle.list_processes() == []
            for pid in children_of_self() - before:
                await wait_exited(pid)

    on_uvloop(scenario())
    assert process_dirs(work_dir) == []


def test_program_on_uvloop_without_abort(work_dir: Path) -> None:
    for pid, started in run_program_without_abort(work_dir, "uvloop"):
        assert not pid_alive(pid, started)
    assert process_dirs(work_dir) == []
