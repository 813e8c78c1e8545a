"""What differs per platform (corral._platform): the Linux way of each thing, and each fallback,
forced here on Linux, with real children.

A fallback chosen at import is forced in two ways: in this process, by removing what it stands
in for (``os.pipe2``, ``os.killpg``) and putting the module's choice made again in place of the
one made at import; and in a fresh interpreter where a module is made unimportable before
``import corral``, as on a platform without it.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import resource
import select
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TIMEOUT, pid_alive, pidfd, read_record, record_cmd
from test_groups import BLOCKS_USR1, usr1_pending

from corral import (
    Cmd,
    CmdOptions,
    ExitStatus,
    MessagingType,
    ProcessManager,
    ProcessManagerHandle,
    SpawnProcessError,
)
from corral._platform import _groups as groups_module
from corral._platform import _limits as limits_module
from corral._platform import _locks as locks_module
from corral._platform import _pipes as pipes_module
from corral._platform import (
    cloexec_pipe,
    inherited_env,
    lock_dir_shared,
    reaped_group_alive,
    set_pipe_size,
    share_dir_lock,
    signal_group,
    signal_reaped_group,
    try_lock_dir_exclusive,
)

ECHO_PY = Path(__file__).resolve().parent.parent / "examples" / "echo_child.py"
STDIO = MessagingType.STANDARD_IO
STDIO_MESSAGING = CmdOptions(message_input=STDIO, message_output=STDIO)

#: Starts a background job in its group, prints the job's pid, and waits for it.
LEADS_A_JOB = "sleep 300 & echo $!; wait"
#: Starts a background job in its group, prints the job's pid, and exits at once.
LEAVES_A_JOB = "sleep 300 & echo $!"


#: For the programs run_python runs: a standard-I/O message round trip with the echo child named
#: by argv[2], through ``handle``; prints what came back.
ROUND_TRIP = """
async def round_trip(handle):
    from corral import Cmd, CmdOptions, MessagingType

    stdio = MessagingType.STANDARD_IO
    options = CmdOptions(message_input=stdio, message_output=stdio)
    proc = await handle.spawn_with_handle(Cmd(sys.executable, [sys.argv[2]], options))
    stream = await proc.subscribe_message_stream()
    await proc.send_message("round trip")
    print((await asyncio.wait_for(anext(stream), 10)).to_string())
    await proc.kill()
"""


def run_python(code: str, *args: str) -> list[str]:
    """Run ``code`` in a fresh interpreter (bounded), :data:`ROUND_TRIP` defined first (it
    imports nothing until called); the lines it printed. It must succeed."""
    program = ROUND_TRIP + textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", program, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def wait_pidfd(fd: int, timeout: float = TIMEOUT) -> bool:
    """Whether the process of pidfd ``fd`` exits within ``timeout``."""
    return bool(select.select([fd], [], [], timeout)[0])


# --- a pipe pair no exec inherits ---------------------------------------------------------------

#: Prints, of the fds named in argv as "fd:dev:ino", those open in this child on that very file.
INHERITED = """\
import os, sys
for arg in sys.argv[1:]:
    fd, dev, ino = map(int, arg.split(":"))
    try:
        st = os.fstat(fd)
    except OSError:
        continue
    if (st.st_dev, st.st_ino) == (dev, ino):
        print(fd)
"""


def inherited(fds: tuple[int, ...]) -> list[int]:
    """Which of ``fds`` a child exec'd without close_fds finds open."""
    names = []
    for fd in fds:
        st = os.fstat(fd)
        names.append(f"{fd}:{st.st_dev}:{st.st_ino}")
    done = subprocess.run(
        [sys.executable, "-c", INHERITED, *names],
        close_fds=False,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    return [int(line) for line in done.stdout.split()]


@pytest.fixture(params=["pipe2", "pipe then set_inheritable"])
def pipe_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way of making a close-on-exec pipe; the fallback as where os.pipe2 is missing."""
    if request.param != "pipe2":
        monkeypatch.delattr(os, "pipe2")
        chosen = pipes_module._choose_pipe()
        assert chosen is pipes_module._pipe_then_cloexec
        monkeypatch.setattr(pipes_module, "_make_pipe", chosen)
    return str(request.param)


@pytest.fixture
def pipe(pipe_kind: str) -> Iterator[tuple[int, int]]:
    """A pipe from cloexec_pipe(), closed at the end."""
    read_end, write_end = cloexec_pipe()
    try:
        yield read_end, write_end
    finally:
        os.close(read_end)
        os.close(write_end)


def test_cloexec_pipe_is_close_on_exec(pipe: tuple[int, int]) -> None:
    for fd in pipe:
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert not os.get_inheritable(fd)
    os.write(pipe[1], b"x")
    assert os.read(pipe[0], 1) == b"x"
    # A child exec'd without close_fds gets neither end, though it gets an inheritable copy.
    copy = os.dup(pipe[0])
    try:
        os.set_inheritable(copy, True)
        assert inherited((*pipe, copy)) == [copy]
    finally:
        os.close(copy)


async def test_standard_io_messages_round_trip(
    manager: ProcessManagerHandle, pipe_kind: str
) -> None:
    proc = await manager.spawn_with_handle(Cmd(sys.executable, [str(ECHO_PY)], STDIO_MESSAGING))
    stream = await proc.subscribe_message_stream()
    for text in ("first", "second"):
        await proc.send_message(text)
        message = await asyncio.wait_for(anext(stream), TIMEOUT)
        assert message.to_string() == text
    await proc.kill()
    async with asyncio.timeout(TIMEOUT):  # ends: no other child holds the pipe open
        assert [m async for m in stream] == []


def test_without_pipe2_at_import_standard_io_messaging_works(work_dir: Path) -> None:
    """As on macOS: os.pipe2 is missing from the start."""
    lines = run_python(
        """
        import asyncio, os, sys
        del os.pipe2
        from corral import ProcessManager
        from corral._platform import _pipes

        assert _pipes._make_pipe is _pipes._pipe_then_cloexec

        async def main():
            async with ProcessManager.spawn(sys.argv[1]) as handle:
                await round_trip(handle)

        asyncio.run(main())
        """,
        str(work_dir),
        str(ECHO_PY),
    )
    assert lines == ["round trip"]


def test_set_pipe_size_where_pipes_cannot_be_resized(monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = cloexec_pipe()
    try:
        assert set_pipe_size(read_end, 128 * 1024) == 128 * 1024
        monkeypatch.setattr(pipes_module, "_SETPIPE_SZ", None)
        assert set_pipe_size(read_end, 256 * 1024) is None
        assert fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ) == 128 * 1024  # unchanged
    finally:
        os.close(read_end)
        os.close(write_end)


# --- without fcntl and resource -----------------------------------------------------------------


def test_import_and_spawn_without_fcntl_and_resource(work_dir: Path) -> None:
    """Where neither module exists: corral imports, spawns, waits and exchanges messages; the
    working dir is not locked, so nothing is taken for a leftover; rlimits are refused."""
    leftover = work_dir / str(uuid.uuid4())
    leftover.mkdir()
    lines = run_python(
        """
        import sys
        sys.modules["fcntl"] = None
        sys.modules["resource"] = None

        import asyncio, os
        import corral
        from corral import Cmd, CmdOptions, CmdOptionsError, ProcessManager
        from corral import _platform

        print("flock", _platform.HAS_FLOCK, "rlimits", _platform.HAS_RLIMITS)
        r, w = _platform.cloexec_pipe()
        print("pipe size", _platform.set_pipe_size(r, 1 << 20))
        try:
            CmdOptions(rlimits={"NOFILE": 64})
        except CmdOptionsError as exc:
            print("refused:", exc)

        async def main():
            async with ProcessManager.spawn(sys.argv[1], remove_stale=True) as handle:
                print("stale", handle.stale_process_dirs)
                niced = CmdOptions(nice=19)  # raising one's niceness needs no privilege
                pid = await handle.spawn(Cmd("sh", ["-c", "exit $(nice)"], niced))
                print("exit", (await handle.wait(pid, 10)).exit_status.code)
                await round_trip(handle)

        asyncio.run(main())
        """,
        str(work_dir),
        str(ECHO_PY),
    )
    assert lines == [
        "flock False rlimits False",
        "pipe size None",
        "refused: rlimits are not supported on this platform",
        "stale ()",
        "exit 19",
        "round trip",
    ]
    assert leftover.is_dir()  # remove_stale=True, yet not known to be a leftover: kept


# --- the working dir's lock ---------------------------------------------------------------------


def test_dir_lock_exclusive_then_shared(tmp_path: Path) -> None:
    first = try_lock_dir_exclusive(tmp_path)
    assert first is not None
    try:
        assert try_lock_dir_exclusive(tmp_path) is None  # held: never waits
        share_dir_lock(first)
        # Shared now: another manager joins at once (in a thread, so that a hang is bounded).
        joined: list[int] = []
        joiner = threading.Thread(
            target=lambda: joined.append(lock_dir_shared(tmp_path)), daemon=True
        )
        joiner.start()
        joiner.join(TIMEOUT)
        assert len(joined) == 1
        try:
            assert try_lock_dir_exclusive(tmp_path) is None
        finally:
            os.close(joined[0])
    finally:
        os.close(first)
    alone = try_lock_dir_exclusive(tmp_path)  # closing the fds dropped the locks
    assert alone is not None
    os.close(alone)


async def test_without_flock_a_manager_never_takes_dirs_for_leftovers(
    work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(locks_module, "HAS_FLOCK", False)
    leftover = work_dir / str(uuid.uuid4())
    leftover.mkdir()
    assert try_lock_dir_exclusive(work_dir) is None
    async with ProcessManager.spawn(work_dir, remove_stale=True) as handle:
        assert handle.stale_process_dirs == ()
        assert leftover.is_dir()
        process_id = await handle.spawn(Cmd("sh", ["-c", "exit 4"]))
        info = await handle.wait(process_id, TIMEOUT)
        assert info.exit_status == ExitStatus(4, None, False)
    assert list(work_dir.iterdir()) == [leftover]


# --- rlimits and nice -----------------------------------------------------------------------


async def test_rlimits_where_setrlimit_is_missing_fail_the_spawn_clearly(
    manager: ProcessManagerHandle, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits_module, "_setrlimit", limits_module._missing)
    limited = Cmd("true", options=CmdOptions(rlimits={resource.RLIMIT_NOFILE: (64, 64)}))
    with pytest.raises(SpawnProcessError, match="rlimits are not supported on this platform"):
        await manager.spawn(limited)
    assert list(work_dir.iterdir()) == []
    # nice needs no rlimit: still applied.
    niced = await manager.spawn(Cmd("sh", ["-c", "exit $(nice)"], CmdOptions(nice=19)))
    assert (await manager.wait(niced, TIMEOUT)).exit_status == ExitStatus(19, None, False)


async def test_nice_where_setpriority_is_missing_fails_the_spawn_clearly(
    manager: ProcessManagerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits_module, "_setpriority", limits_module._missing)
    with pytest.raises(SpawnProcessError, match="nice is not supported on this platform"):
        await manager.spawn(Cmd("true", options=CmdOptions(nice=19)))
    plain = await manager.spawn(Cmd("true"))  # no limits asked for: nothing runs before exec
    assert (await manager.wait(plain, TIMEOUT)).exit_status == ExitStatus(0, None, True)


# --- process groups -----------------------------------------------------------------------------


def start_leader(script: str) -> tuple[subprocess.Popen[str], int]:
    """A shell leading a group of its own with a background job in it; and the job's pid."""
    leader = subprocess.Popen(
        ["sh", "-c", script], process_group=0, stdout=subprocess.PIPE, text=True
    )
    assert leader.stdout is not None
    return leader, int(leader.stdout.readline())


def stop(leader: subprocess.Popen[str], job_fd: int | None) -> None:
    """SIGKILL the job (by pidfd) and the leader, and reap the leader."""
    if job_fd is not None:
        signal.pidfd_send_signal(job_fd, signal.SIGKILL)
    leader.kill()
    leader.wait(TIMEOUT)
    assert leader.stdout is not None
    leader.stdout.close()


def test_signal_group_reaches_the_leader_and_its_job() -> None:
    leader, job = start_leader(LEADS_A_JOB)
    with pidfd(job) as fd:
        assert fd is not None
        try:
            assert signal_group(leader.pid, signal.SIGKILL)
            assert wait_pidfd(fd)
            assert leader.wait(TIMEOUT) == -signal.SIGKILL
        finally:
            stop(leader, None)


def test_signal_group_of_no_group_is_false() -> None:
    with open("/proc/sys/kernel/pid_max") as f:
        unused = int(f.read())  # pids stay below pid_max: no group has this id
    assert not signal_group(unused, signal.SIGKILL)
    assert not signal_reaped_group(unused, 0)
    assert not reaped_group_alive(unused)


def test_signal_reaped_group_reaches_what_the_leader_left() -> None:
    leader, job = start_leader(LEAVES_A_JOB)
    with pidfd(job) as fd:
        assert fd is not None
        try:
            assert leader.wait(TIMEOUT) == 0  # reaped: its group lives on in the job
            assert reaped_group_alive(leader.pid)
            assert signal_reaped_group(leader.pid, signal.SIGKILL)
            assert wait_pidfd(fd)
            assert not reaped_group_alive(leader.pid)  # a zombie of init's at most
        finally:
            stop(leader, None)


def test_without_killpg_only_the_leader_is_signalled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "killpg")
    chosen = groups_module._choose_killpg()
    assert chosen is groups_module._kill_leader
    monkeypatch.setattr(groups_module, "_killpg", chosen)
    # The job blocks SIGUSR1: a signal that reached it stays pending, and shows at once.
    job_code = shlex.quote(BLOCKS_USR1)
    leader, job = start_leader(f"{shlex.quote(sys.executable)} -c {job_code} & echo $!; wait")
    assert leader.stdout is not None
    with pidfd(job) as fd:
        assert fd is not None
        try:
            assert leader.stdout.readline() == "ready\n"  # the job's: SIGUSR1 blocked
            assert signal_group(leader.pid, signal.SIGUSR1)
            assert leader.wait(TIMEOUT) == -signal.SIGUSR1  # the shell does not block it
            assert not usr1_pending(job)
            # Once the leader is reaped, nothing of its group can be reached.
            assert not signal_reaped_group(leader.pid, signal.SIGUSR1)
            assert not usr1_pending(job)
            assert pid_alive(job)
        finally:
            stop(leader, fd)
            assert wait_pidfd(fd)


# --- the inherited environment --------------------------------------------------------------


async def test_environment_encoded_where_it_is_not_bytes(
    manager: ProcessManagerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = inherited_env()
    monkeypatch.setattr(os, "supports_bytes_environ", False)
    assert inherited_env() == fast
    out = tmp_path / "record.json"
    process_id = await manager.spawn(record_cmd(out))
    assert (await manager.wait(process_id, TIMEOUT)).exit_status == ExitStatus(0, None, True)
    env = read_record(out)["env"]
    assert {name: env.get(name) for name in os.environ} == dict(os.environ)
