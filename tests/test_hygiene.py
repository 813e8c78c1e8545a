"""Nothing is left behind: no zombie, no fd, no dir, no child outliving its program."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
from conftest import (
    TIMEOUT,
    assert_no_zombie,
    fd_count,
    pid_alive,
    process_dirs,
    read_record,
    record_cmd,
    run_program_without_abort,
    sleep_cmd,
    start_time,
)

from corral import (
    PROCESS_DATA_DIR_ENV_NAME,
    Cmd,
    CmdOptions,
    ExitStatus,
    ProcessManager,
    ProcessManagerHandle,
    SpawnProcessError,
)


async def test_200_concurrent_spawns_all_reaped(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    ids = await asyncio.gather(*(manager.spawn(Cmd("true")) for _ in range(200)))
    assert len(set(ids)) == 200
    infos = await asyncio.wait_for(
        asyncio.gather(*(manager.wait(i) for i in ids)), timeout=TIMEOUT * 3
    )
    assert {info.exit_status for info in infos} == {ExitStatus(0, None, True)}
    assert len({info.pid for info in infos}) == 200
    assert_no_zombie()
    assert len(process_dirs(work_dir)) == 200  # exited processes stay known until killed
    await asyncio.gather(*(manager.kill(i) for i in ids))
    assert process_dirs(work_dir) == []
    assert await manager.list_processes() == []
    assert_no_zombie()


async def test_200_concurrent_running_processes_killed_by_abort(work_dir: Path) -> None:
    handle = ProcessManager.spawn(work_dir)
    ids = await asyncio.gather(*(handle.spawn(sleep_cmd()) for _ in range(200)))
    infos = await asyncio.gather(*(handle.get_process_info(i) for i in ids))
    assert all(info.is_running for info in infos)
    await asyncio.wait_for(handle.abort(), TIMEOUT * 3)
    assert_no_zombie()
    assert not any(info.pid is not None and pid_alive(info.pid) for info in infos)
    assert process_dirs(work_dir) == []


async def test_fd_count_back_to_baseline_after_100_spawn_kill_cycles(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    await manager.kill(await manager.spawn(sleep_cmd()))  # warm up: lazy imports, loop state
    baseline = fd_count()
    for _ in range(100):
        process_id = await manager.spawn(sleep_cmd())
        await manager.kill(process_id)
    assert fd_count() == baseline
    for _ in range(20):  # processes that exited on their own, then killed
        process_id = await manager.spawn(Cmd("true"))
        await manager.wait(process_id, TIMEOUT)
        await manager.kill(process_id)
    assert fd_count() == baseline
    assert process_dirs(work_dir) == []
    assert_no_zombie()


async def test_fd_count_back_to_baseline_after_failed_spawns(
    manager: ProcessManagerHandle, work_dir: Path, tmp_path: Path
) -> None:
    await manager.list_processes()
    baseline = fd_count()
    bad = [
        Cmd("corral-no-such-program-anywhere"),
        Cmd(str(tmp_path)),
        Cmd("true", options=CmdOptions(current_dir=tmp_path / "missing")),
    ]
    for _ in range(20):
        for cmd in bad:
            with pytest.raises(SpawnProcessError):
                await manager.spawn(cmd)
    assert fd_count() == baseline
    assert process_dirs(work_dir) == []


async def test_a_manager_releases_its_fds(work_dir: Path) -> None:
    baseline = fd_count()
    handle = ProcessManager.spawn(work_dir)
    ids = [await handle.spawn(sleep_cmd()) for _ in range(10)]
    await handle.wait(await handle.spawn(Cmd("true")), TIMEOUT)
    assert fd_count() > baseline
    await handle.kill(ids[0])
    await handle.abort()
    assert fd_count() == baseline


async def test_own_temp_dir_is_private_and_removed(tmp_path: Path, restore_umask: None) -> None:
    os.umask(0o022)
    handle = ProcessManager.spawn()
    process_id = await handle.spawn(record_cmd(tmp_path / "out"))
    await handle.wait(process_id, TIMEOUT)
    working_dir = Path(read_record(tmp_path / "out")["env"][PROCESS_DATA_DIR_ENV_NAME]).parents[1]
    assert stat.S_IMODE(working_dir.stat().st_mode) == 0o700
    assert [p.name for p in process_dirs(working_dir)] == [str(process_id)]
    await handle.kill(process_id)
    assert process_dirs(working_dir) == []
    await handle.abort()
    assert not working_dir.exists()


async def test_working_dir_holds_only_process_dirs(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    (work_dir / "users-file").write_text("mine")
    ids = [await manager.spawn(sleep_cmd()) for _ in range(3)]
    names = {p.name for p in work_dir.iterdir() if not p.name.startswith(".")}
    assert names == {"users-file", *(str(i) for i in ids)}
    for process_id in ids:
        await manager.kill(process_id)
    assert [p.name for p in work_dir.iterdir() if not p.name.startswith(".")] == ["users-file"]
    await manager.abort()
    assert [p.name for p in process_dirs(work_dir)] == ["users-file"]


# --- a program that ends without abort() ----------------------------------------------------------


@pytest.mark.parametrize("ending", ["asyncio.run", "loop never closed"])
def test_children_do_not_outlive_a_program_without_abort(work_dir: Path, ending: str) -> None:
    pids = run_program_without_abort(work_dir, ending)
    for pid, started in pids:
        assert not pid_alive(pid, started), f"child {pid} outlived its program"
    assert process_dirs(work_dir) == []


async def test_test_helpers_see_a_live_process(manager: ProcessManagerHandle) -> None:
    """The checks above mean something: a running child is seen as alive."""
    process_id = await manager.spawn(sleep_cmd())
    pid = (await manager.get_process_info(process_id)).pid
    assert pid is not None
    started = start_time(pid)
    assert pid_alive(pid, started)
    assert not pid_alive(pid, started + 1)
    await manager.kill(process_id)
    assert not pid_alive(pid, started)
