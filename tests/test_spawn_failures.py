"""Spawns that fail, and spawns under hostile conditions (no fd left, an odd umask): each says
what was wrong and leaves nothing behind, no fd, no process dir; the modes corral promises hold."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TIMEOUT, fd_count

from corral import (
    Backoff,
    Cmd,
    CmdOptions,
    LoggingType,
    MessagingType,
    ProcessId,
    ProcessManager,
    ProcessManagerHandle,
    RestartPolicy,
    Script,
    ScriptingLanguage,
    SpawnProcessError,
)


async def settle(handle: ProcessManagerHandle) -> ProcessId:
    """Spawn a process and wait for it: the guardian runs from then on (its fds stay open)."""
    process_id = await handle.spawn(Cmd("true"))
    await handle.wait(process_id, TIMEOUT)
    return process_id


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- a bad current_dir --------------------------------------------------------------------------


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "no" / "such" / "dir"


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a dir")
    return path


def _no_permission(tmp_path: Path) -> Path:
    path = tmp_path / "locked"
    path.mkdir(mode=0o000)
    return path


@pytest.mark.parametrize(
    "make_dir",
    [
        _missing,
        _a_file,
        pytest.param(
            _no_permission,
            marks=pytest.mark.skipif(os.geteuid() == 0, reason="root may enter any dir"),
        ),
    ],
    ids=["missing", "a file", "no permission"],
)
async def test_a_bad_current_dir_is_named_as_the_working_directory_of_the_process(
    manager: ProcessManagerHandle, work_dir: Path, tmp_path: Path, make_dir: object
) -> None:
    assert callable(make_dir)
    bad = make_dir(tmp_path)
    with pytest.raises(SpawnProcessError) as caught:
        await manager.spawn(Cmd("true", options=CmdOptions(current_dir=bad)))
    text = str(caught.value)
    assert "working directory (current_dir)" in text
    assert repr(str(bad)) in text
    assert str(caught.value.process_id) in text
    assert isinstance(caught.value.__cause__, OSError)
    assert os.listdir(work_dir) == []
    assert await manager.list_processes() == []


# --- values the OS cannot take -------------------------------------------------------------------


def _unencodable_options() -> CmdOptions:
    """Options that open fds at spawn (two pipes, a log), with an env value that has no bytes.

    Construction refuses such a value; the dict itself can still be changed afterwards.
    """
    options = CmdOptions(
        message_input=MessagingType.STANDARD_IO,
        message_output=MessagingType.STANDARD_IO,
        logging_type=LoggingType.STDERR_ONLY,
    )
    options.envs["BAD"] = "\ud800"
    return options


async def test_a_failed_spawn_closes_every_fd_whatever_the_error(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    await settle(manager)
    before = fd_count()
    for _ in range(5):
        with pytest.raises(SpawnProcessError, match="UnicodeEncodeError"):
            await manager.spawn(Cmd("true", options=_unencodable_options()))
    assert fd_count() == before
    assert len(os.listdir(work_dir)) == 1  # the first process's dir only


async def test_a_restart_that_cannot_start_gives_up_without_leaking(
    manager: ProcessManagerHandle,
) -> None:
    await settle(manager)
    before = fd_count()
    policy = RestartPolicy.always(max_restarts=2, backoff=Backoff(initial=0.01, cap=0.01))
    cmd = Cmd("sleep", ["60"], CmdOptions(restart_policy=policy))
    process_id = await manager.spawn(cmd)
    pid = (await manager.get_process_info(process_id)).pid
    assert pid is not None
    cmd.options.envs["BAD"] = "\ud800"  # every restart from now on fails to start
    os.kill(pid, signal.SIGKILL)  # an exit of its own, as far as the manager knows
    info = await manager.wait(process_id, TIMEOUT)
    assert not info.is_running
    assert info.gave_up_reason is not None
    assert fd_count() == before


# --- no fd left --------------------------------------------------------------------------------


@contextlib.contextmanager
def fds_left(count: int) -> Iterator[None]:
    """Only ``count`` new fds can be opened in the block (RLIMIT_NOFILE, and every lower fd taken).

    The limit is put back, and the fillers closed, at the end.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
    try:
        with contextlib.suppress(OSError):  # EMFILE: every fd below the limit is taken
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        for _ in range(count):
            os.close(fillers.pop())
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


#: Two log files: with one fd free, the first opens and the second fails.
TWO_LOGS = CmdOptions(logging_type=LoggingType.STDOUT_AND_STDERR)


async def test_a_spawn_that_runs_out_of_fds_leaves_no_process_dir(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    first = await settle(manager)
    for runnable in (
        Cmd("true", options=TWO_LOGS),
        Script(ScriptingLanguage.BASH, "true", options=TWO_LOGS),
    ):
        with fds_left(1):
            with pytest.raises(SpawnProcessError, match="Too many open files") as caught:
                await manager.spawn(runnable)
            failed = work_dir / str(caught.value.process_id)
            assert not failed.exists()  # a stat: no fd needed to check
        assert sorted(os.listdir(work_dir)) == [str(first)]
    await manager.abort()
    assert os.listdir(work_dir) == []


class LeavesAFile:
    """A Runnable whose ``clean_after_fail`` forgets a file it wrote."""

    def bootstrap_cmd(self, process_dir: Path) -> Cmd:
        (process_dir / "config.toml").write_text("x = 1\n")
        return Cmd("true", options=TWO_LOGS)

    def clean_after_fail(self, process_dir: Path) -> None:
        pass


async def test_a_process_dir_that_needs_fds_to_remove_is_removed_once_fds_are_free(
    work_dir: Path,
) -> None:
    async with ProcessManager.spawn(work_dir) as handle:
        await settle(handle)
        with fds_left(1), pytest.raises(SpawnProcessError) as caught:
            await handle.spawn(LeavesAFile())
        failed = work_dir / str(caught.value.process_id)
    assert not failed.exists()
    assert os.listdir(work_dir) == []


async def test_the_next_spawn_removes_what_a_spawn_without_fds_could_not(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    await settle(manager)
    with fds_left(1), pytest.raises(SpawnProcessError) as caught:
        await manager.spawn(LeavesAFile())
    failed = work_dir / str(caught.value.process_id)
    second = await manager.spawn(Cmd("true"))
    assert not failed.exists()
    assert (work_dir / str(second)).is_dir()


# --- an odd umask ------------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_umask")
async def test_an_odd_umask_keeps_the_promised_modes_and_scripts_run() -> None:
    os.umask(0o277)  # takes the owner's write and exec bits away from everything created
    opts = CmdOptions(
        message_output=MessagingType.NAMED_PIPE, logging_type=LoggingType.STDOUT_AND_STDERR
    )
    async with ProcessManager.spawn() as handle:  # a temp working dir of corral's own
        assert mode(handle.working_dir) == 0o700
        script = Script(ScriptingLanguage.PYTHON, "print('ran')", options=opts)
        process_id = await handle.spawn(script)
        info = await handle.wait(process_id, TIMEOUT)
        assert info.exit_status is not None
        assert info.exit_status.success
        assert await handle.get_logs_stdout(process_id) == ["ran"]
        process_dir = handle.working_dir / str(process_id)
        assert mode(process_dir) == 0o700
        assert mode(process_dir / "data") == 0o700
        for name in ("script.py", "stdout.log", "stderr.log", "output.pipe"):
            assert mode(process_dir / name) == 0o600, name
