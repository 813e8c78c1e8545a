"""Process dirs are recycled: emptied and renamed into the manager's spares, never seen reused.

What the caller sees is the contract: a process dir with its data dir, both 0700 and the data
dir empty, from the spawn on; gone once kill or release returns; nothing left when the manager
ends, nor when the program dies without ending it.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import TIMEOUT, process_dirs, python_cmd, wait_fd_readable

from corral import (
    PROCESS_DATA_DIR_ENV_NAME,
    Cmd,
    CmdOptions,
    LoggingType,
    MessagingType,
    ProcessId,
    ProcessManager,
    ProcessManagerHandle,
    Script,
    ScriptingLanguage,
)
from corral._spawn import SPARES_DIR_PREFIX, SPARES_MAX, ProcessDirs


def spares(work_dir: Path) -> list[Path]:
    return [p for d in work_dir.glob(f"{SPARES_DIR_PREFIX}*") for p in d.iterdir()]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


async def run(handle: ProcessManagerHandle, code: str) -> Path:
    """Run ``code`` in a Python child to its end, kill it; return its process dir."""
    pid = await handle.spawn(python_cmd(code))
    assert (await handle.wait(pid, TIMEOUT)).exit_status.success
    process_dir = handle.working_dir / str(pid)
    await handle.kill(pid)
    assert not process_dir.exists()
    return process_dir


RECORD = (
    "import os, sys; d = os.environ['" + PROCESS_DATA_DIR_ENV_NAME + "']; "
    "st = os.stat(d); print(st.st_ino, oct(st.st_mode & 0o777), os.listdir(d), "
    "oct(os.stat(os.path.dirname(d)).st_mode & 0o777))"
)


async def test_a_killed_process_dir_is_reused_empty_and_private(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    first = await manager.spawn(Cmd("true"))
    first_dir = work_dir / str(first)
    inode = os.stat(first_dir).st_ino
    assert (await manager.wait(first, TIMEOUT)).exit_status.success
    await manager.kill(first)
    assert not first_dir.exists()
    assert process_dirs(work_dir) == []
    assert len(spares(work_dir)) == 1
    second = await manager.spawn(python_cmd(RECORD))
    second_dir = work_dir / str(second)
    assert os.stat(second_dir).st_ino == inode  # the same dir, renamed
    assert mode(second_dir) == mode(second_dir / "data") == 0o700
    assert spares(work_dir) == []
    await manager.kill(second)


@pytest.mark.parametrize(
    "code",
    [
        "import os; open(os.path.join(os.environ['PROCESS_DATA_DIR'], 'kept'), 'w').close()",
        "import os; os.chmod(os.environ['PROCESS_DATA_DIR'], 0o755)",
        "import os; d = os.environ['PROCESS_DATA_DIR']; os.rmdir(d); os.symlink('/tmp', d)",
        "import os; os.mkdir(os.path.join(os.environ['PROCESS_DATA_DIR'], '..', 'sub'))",
    ],
    ids=["data written", "mode changed", "data a link", "a subdir"],
)
async def test_a_dir_the_child_changed_is_removed_not_reused(
    manager: ProcessManagerHandle, work_dir: Path, code: str
) -> None:
    await run(manager, code)
    assert spares(work_dir) == []
    assert process_dirs(work_dir) == []


async def test_the_files_corral_made_go_and_the_dir_is_reused(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    # A script file, logs and FIFOs are removed by name; the dir is kept.
    options = CmdOptions(
        logging_type=LoggingType.STDOUT_AND_STDERR,
        message_input=MessagingType.NAMED_PIPE,
        message_output=MessagingType.NAMED_PIPE,
    )
    pid = await manager.spawn(Script(ScriptingLanguage.BASH, "echo hi", options=options))
    assert (await manager.wait(pid, TIMEOUT)).exit_status.success
    await manager.kill(pid)
    [spare] = spares(work_dir)
    assert [p.name for p in spare.iterdir()] == ["data"]
    recorded = await manager.spawn(
        python_cmd(RECORD, options=CmdOptions.with_logging(LoggingType.STDOUT_ONLY))
    )
    assert (await manager.wait(recorded, TIMEOUT)).exit_status.success
    [line] = await manager.get_logs_stdout(recorded)
    _, data_mode, listing, dir_mode = line.split(" ")
    assert (data_mode, listing, dir_mode) == ("0o700", "[]", "0o700")  # as new
    await manager.kill(recorded)


async def test_release_recycles_too_and_spares_are_bounded(work_dir: Path) -> None:
    dirs = ProcessDirs(work_dir, guard=False)
    made = [dirs.make(ProcessId.new()) for _ in range(SPARES_MAX + 3)]
    for path in made:
        assert dirs.remove(path)
    assert len(spares(work_dir)) == SPARES_MAX
    assert process_dirs(work_dir) == []
    dirs.close()
    assert list(work_dir.iterdir()) == []


async def test_the_spares_go_with_the_manager(work_dir: Path) -> None:
    handle = ProcessManager.spawn(work_dir)
    await run(handle, "pass")
    assert len(spares(work_dir)) == 1
    await handle.abort()
    assert list(work_dir.iterdir()) == []


PARENT = textwrap.dedent(
    """
    import asyncio, os, sys
    from corral import Cmd, ProcessManager

    def guardian():
        # This program's one child in a session of its own.
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    text = open(f"/proc/{entry}/stat").read()
                except OSError:
                    continue
                fields = text[text.rindex(")") + 2 :].split()
                if int(fields[1]) == me and os.getsid(int(entry)) == int(entry):
                    return int(entry)

    async def main():
        handle = ProcessManager.spawn(sys.argv[1])
        pid = await handle.spawn(Cmd("true"))
        await handle.wait(pid)
        await handle.kill(pid)  # its dir becomes a spare
        print(guardian(), flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_the_guardian_removes_the_spares_of_a_program_that_died(work_dir: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", PARENT, str(work_dir)], stdout=subprocess.PIPE, text=True
    ) as parent:
        try:
            assert parent.stdout is not None
            guardian = os.pidfd_open(int(parent.stdout.readline()))
            try:
                assert len(spares(work_dir)) == 1
                parent.send_signal(signal.SIGKILL)
                parent.wait(TIMEOUT)
                await wait_fd_readable(guardian)  # it exits once it has cleaned up
            finally:
                os.close(guardian)
        finally:
            parent.kill()
    assert list(work_dir.iterdir()) == []


async def test_leftover_spares_are_removed_by_the_next_manager_alone_there(
    work_dir: Path,
) -> None:
    leftover = work_dir / f"{SPARES_DIR_PREFIX}0123456789abcdef"
    (leftover / "aa" / "data").mkdir(parents=True)
    handle = ProcessManager.spawn(work_dir)
    try:
        assert not leftover.exists()
        assert handle.stale_process_dirs == ()
    finally:
        await handle.abort()


def test_a_dir_that_goes_after_close_is_removed_not_kept(work_dir: Path) -> None:
    dirs = ProcessDirs(work_dir, guard=False)
    kept = dirs.make(ProcessId.new())
    late = dirs.make(ProcessId.new())
    assert dirs.remove(kept)
    dirs.close()
    assert dirs.remove(late)  # after the manager's end: no spares dir made again, none left
    assert list(work_dir.iterdir()) == []
