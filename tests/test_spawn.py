"""The spawn below the manager (corral._spawn): from a Runnable to a started child and back.

Each test calls ``spawn_child`` / ``start_child`` / ``discard_child`` / ``build_env`` itself, with
real children, and looks at what the OS shows: the child's exec-time environment and fds (it
records them), the process dir's modes, the parent's fd count and children. Every wait is
bounded: a blocking ``wait`` or ``select`` with a timeout, never a sleep.
"""

from __future__ import annotations

import json
import os
import select
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, children_of_self, fd_count, pid_alive, pidfd, start_time

from corral import (
    Cmd,
    CmdOptions,
    LoggingType,
    MessagingType,
    ProcessId,
    Runnable,
    Script,
    ScriptRunConfig,
    SpawnProcessError,
)
from corral._model import INPUT_PIPE_ENV_NAME, OUTPUT_PIPE_ENV_NAME, PROCESS_DATA_DIR_ENV_NAME
from corral._spawn import (
    DATA_DIR_NAME,
    SpawnedChild,
    build_env,
    discard_child,
    make_private_dir,
    remove_process_dir,
    spawn_child,
    start_child,
)

#: A Python child that records, as JSON into the file named by its last argument, what it found
#: at start: its argv, its exact exec-time environment (from /proc, as bytes decoded with
#: surrogateescape), its ids, its open fds and what its stdio are, and the modes of its data dir
#: and of that dir's parent (the process dir).
PROBE = r"""
import json, os, stat, sys
listed = os.listdir("/proc/self/fd")
fds = sorted(int(fd) for fd in listed if os.path.lexists(f"/proc/self/fd/{fd}"))  # not listdir's
with open("/proc/self/environ", "rb") as f:
    raw = f.read()
env = dict(
    item.decode("utf-8", "surrogateescape").split("=", 1) for item in raw.split(b"\0") if item
)
data = env.get("PROCESS_DATA_DIR")
modes = {}
if data is not None:
    for path in (data, os.path.dirname(data)):
        modes[path] = stat.S_IMODE(os.stat(path).st_mode)
record = {
    "argv": sys.argv,
    "argv0": sys.orig_argv[0],
    "env": env,
    "cwd": os.getcwd(),
    "pid": os.getpid(),
    "pgid": os.getpgid(0),
    "sid": os.getsid(0),
    "fds": fds,
    "stdio": [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)],
    "modes": modes,
}
with open(sys.argv[-1], "w") as f:
    json.dump(record, f)
"""

STDOUT_ONLY = LoggingType.STDOUT_ONLY

#: Reads a line from its message input and writes it back upper-cased to its message output:
#: the FIFOs named in its environment, else its stdin / stdout.
ECHO_UPPER = r"""
import os, sys
src = open(os.environ["INPUT_PIPE"]) if "INPUT_PIPE" in os.environ else sys.stdin
dst = open(os.environ["OUTPUT_PIPE"], "w") if "OUTPUT_PIPE" in os.environ else sys.stdout
dst.write(src.readline().upper())
dst.flush()
"""

#: Writes to stdout and stderr in turn, flushing each line, tagged with its first argument.
WRITES_BOTH = r"""
import sys
tag = sys.argv[1]
for stream, text in ((sys.stdout, "out-1"), (sys.stderr, "err-1"), (sys.stdout, "out-2")):
    stream.write(f"{tag}:{text}\n")
    stream.flush()
"""


def probe(out: Path, options: CmdOptions | None = None, program: str = sys.executable) -> Cmd:
    return Cmd(program, ["-c", PROBE, str(out)], options)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def wait_readable(fd: int, timeout: float = TIMEOUT) -> None:
    """Wait until ``fd`` is readable (a pipe with data or at EOF, a pidfd of an exited process)."""
    assert select.select([fd], [], [], timeout)[0], f"fd {fd} not readable within {timeout} s"


def read_line(fd: int, timeout: float = TIMEOUT) -> bytes:
    """Bytes from ``fd`` up to a newline (or to EOF), within ``timeout``."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        wait_readable(fd, max(deadline - time.monotonic(), 0.0))
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


def exited(child: SpawnedChild) -> int:
    """The child's return code, once it has exited by itself (within TIMEOUT)."""
    return child.popen.wait(TIMEOUT)


@pytest.fixture
def devnull() -> Iterator[int]:
    """The fd on /dev/null a manager shares between its children."""
    fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    yield fd
    os.close(fd)


class Spawner:
    """spawn_child into one working dir; what a test did not discard is discarded at teardown."""

    def __init__(self, work_dir: Path, devnull: int) -> None:
        self.work_dir = work_dir
        self.devnull = devnull
        self._live: list[SpawnedChild] = []

    def spawn(self, runnable: Runnable, process_id: ProcessId | None = None) -> SpawnedChild:
        child = spawn_child(process_id or ProcessId.new(), runnable, self.work_dir, self.devnull)
        self._live.append(child)
        return child

    def restart(self, child: SpawnedChild) -> SpawnedChild:
        """A new run of ``child``'s command in its process dir (its last run is done with)."""
        process_id = ProcessId(child.process_dir.name)
        self.forget(child)
        again = start_child(process_id, child.cmd, child.process_dir, self.devnull)
        self._live.append(again)
        return again

    def adopt(self, child: SpawnedChild) -> None:
        """A child started otherwise, discarded at teardown unless the test does it."""
        self._live.append(child)

    def forget(self, child: SpawnedChild) -> None:
        """``child``'s run is over: close the parent's ends (its dir is kept)."""
        self._live.remove(child)
        child.popen.wait(TIMEOUT)
        for fd in (child.message_in, child.message_out):
            if fd is not None:
                os.close(fd)

    def discard(self, child: SpawnedChild) -> None:
        """Undo the spawn: discard_child while the child is not reaped (its group id is still
        ours to signal), else close the parent's ends and remove the dir."""
        if child.popen.returncode is None:
            self._live.remove(child)
            discard_child(child)
        else:
            self.forget(child)
            remove_process_dir(child.process_dir)

    def close(self) -> None:
        while self._live:
            self.discard(self._live[-1])


@pytest.fixture
def spawner(work_dir: Path, devnull: int) -> Iterator[Spawner]:
    spawner = Spawner(work_dir, devnull)
    try:
        yield spawner
    finally:
        spawner.close()


# --- the process dir ------------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_umask")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o277, 0o777])
def test_make_private_dir_gives_0700_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    os.umask(umask)
    make_private_dir(tmp_path / "private")
    assert mode(tmp_path / "private") == 0o700


def test_a_child_starts_with_its_private_dirs_env_own_group_and_only_its_stdio(
    spawner: Spawner, work_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "record.json"
    process_id = ProcessId.new()
    cmd = probe(out)
    # An fd the parent holds inheritable (as a make jobserver's pipe is): it must not reach it.
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    try:
        child = spawner.spawn(cmd, process_id)
    finally:
        os.close(read_end)
        os.close(write_end)
    process_dir = work_dir / str(process_id)
    assert child.process_dir == process_dir
    assert child.cmd is cmd
    assert (child.logs, child.message_in, child.message_out) == ({}, None, None)
    assert exited(child) == 0
    record = read_json(out)
    data_dir = str(process_dir / DATA_DIR_NAME)
    assert record["env"][PROCESS_DATA_DIR_ENV_NAME] == data_dir
    # Both dirs existed at exec, private whatever the umask.
    assert record["modes"] == {data_dir: 0o700, str(process_dir): 0o700}
    assert record["pid"] == record["pgid"] == child.popen.pid  # the leader of a group of its own
    assert record["sid"] == os.getsid(0)  # in our session: only its group is new
    assert record["fds"] == [0, 1, 2]
    assert record["stdio"] == [os.devnull] * 3
    assert record["cwd"] == os.getcwd()
    assert record["argv"][1:] == [str(out)]
    spawner.discard(child)
    assert not process_dir.exists()


def test_the_childs_env_is_the_parents_minus_removals_plus_envs_and_the_data_dir(
    spawner: Spawner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_T_KEPT", "kept")
    monkeypatch.setenv("CORRAL_T_REMOVED", "removed")
    monkeypatch.setenv("CORRAL_T_CHANGED", "before")
    out = tmp_path / "record.json"
    options = CmdOptions(
        envs={"CORRAL_T_CHANGED": "after", "CORRAL_T_NEW": "a b=c", PROCESS_DATA_DIR_ENV_NAME: "x"},
        envs_to_remove=["CORRAL_T_REMOVED", "CORRAL_T_NOT_SET"],
    )
    child = spawner.spawn(probe(out, options))
    assert exited(child) == 0
    expected = dict(os.environ)
    del expected["CORRAL_T_REMOVED"]
    expected["CORRAL_T_CHANGED"] = "after"
    expected["CORRAL_T_NEW"] = "a b=c"
    expected[PROCESS_DATA_DIR_ENV_NAME] = str(child.process_dir / DATA_DIR_NAME)  # never "x"
    assert read_json(out)["env"] == expected


def test_a_child_with_clear_envs_gets_its_envs_and_the_data_dir_only(
    spawner: Spawner, tmp_path: Path
) -> None:
    out = tmp_path / "record.json"
    child = spawner.spawn(probe(out, CmdOptions(clear_envs=True, envs={"ONLY": "this"})))
    assert exited(child) == 0
    data_dir = str(child.process_dir / DATA_DIR_NAME)
    assert read_json(out)["env"] == {"ONLY": "this", PROCESS_DATA_DIR_ENV_NAME: data_dir}


# --- build_env ------------------------------------------------------------------------------------


def test_build_env_inherits_removes_adds_then_puts_corrals_own_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CORRAL_T_KEPT", "kept")
    monkeypatch.setenv("CORRAL_T_REMOVED", "removed")
    monkeypatch.setenv("CORRAL_T_BOTH", "inherited")
    options = CmdOptions(
        envs={"CORRAL_T_BOTH": "from envs", "CORRAL_T_OURS": "envs"},
        envs_to_remove=["CORRAL_T_REMOVED", "CORRAL_T_BOTH", "CORRAL_T_NOT_SET"],
    )
    env = build_env(options, {"CORRAL_T_OURS": "corral", "CORRAL_T_EXTRA": "extra"})
    expected = dict(os.environb)
    del expected[b"CORRAL_T_REMOVED"]
    expected[b"CORRAL_T_BOTH"] = b"from envs"  # removed, then set by envs: envs win
    expected[b"CORRAL_T_OURS"] = b"corral"  # corral's own come last
    expected[b"CORRAL_T_EXTRA"] = b"extra"
    assert env == expected


def test_build_env_with_clear_envs_holds_only_envs_and_extra() -> None:
    options = CmdOptions(clear_envs=True, envs={"A": "1"}, envs_to_remove=["A", "PATH"])
    assert build_env(options, {"B": "2"}) == {b"A": b"1", b"B": b"2"}
    assert build_env(CmdOptions(clear_envs=True), {}) == {}


def test_build_env_encodes_as_the_os_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undecodable bytes (surrogateescape) and non-ASCII text reach the child as the OS bytes."""
    monkeypatch.setitem(os.environb, b"CORRAL_T_RAW", b"\xff\xfe")
    options = CmdOptions(envs={"CORRAL_T_TEXT": "h\u00e9", "CORRAL_T_ESC": "\udcfd"})
    env = build_env(options, {"CORRAL_T_DIR": "/tmp/d\u00e9"})
    assert env[b"CORRAL_T_RAW"] == b"\xff\xfe"
    assert env[b"CORRAL_T_TEXT"] == "h\u00e9".encode()
    assert env[b"CORRAL_T_ESC"] == b"\xfd"
    assert env[b"CORRAL_T_DIR"] == "/tmp/d\u00e9".encode()


def test_build_env_returns_a_copy_each_time() -> None:
    options = CmdOptions(envs={"CORRAL_T_X": "1"})
    first = build_env(options, {})
    first[b"PATH"] = b"/changed"
    first[b"CORRAL_T_ADDED"] = b"1"
    second = build_env(options, {})
    assert second[b"PATH"] == os.environb[b"PATH"] != b"/changed"
    assert b"CORRAL_T_ADDED" not in second
    assert "CORRAL_T_ADDED" not in os.environ


# --- messaging and logs ---------------------------------------------------------------------------


@pytest.mark.parametrize("messaging", list(MessagingType), ids=lambda m: m.name)
def test_the_parents_message_ends_talk_to_the_childs_input_and_output(
    spawner: Spawner, messaging: MessagingType
) -> None:
    options = CmdOptions(message_input=messaging, message_output=messaging)
    child = spawner.spawn(Cmd(sys.executable, ["-c", ECHO_UPPER], options))
    assert child.message_in is not None
    assert child.message_out is not None
    os.write(child.message_in, b"ping\n")
    assert read_line(child.message_out) == b"PING\n"
    assert exited(child) == 0
    if messaging is MessagingType.STANDARD_IO:
        # The parent kept none of the child's ends: EOF once the child is gone, and EPIPE.
        wait_readable(child.message_out)
        assert os.read(child.message_out, 4096) == b""
        with pytest.raises(BrokenPipeError):
            os.write(child.message_in, b"late\n")


def test_named_pipes_are_private_fifos_in_the_process_dir_named_in_the_env(
    spawner: Spawner, tmp_path: Path
) -> None:
    out = tmp_path / "record.json"
    child = spawner.spawn(probe(out, CmdOptions.with_named_pipe_messaging()))
    assert exited(child) == 0
    env = read_json(out)["env"]
    paths = [Path(env[INPUT_PIPE_ENV_NAME]), Path(env[OUTPUT_PIPE_ENV_NAME])]
    assert paths[0] != paths[1]
    for path in paths:
        assert path.parent == child.process_dir
        assert stat.S_ISFIFO(os.lstat(path).st_mode)
        assert mode(path) == 0o600
    # The parent's ends are open on those FIFOs, non-blocking.
    for fd, path in zip((child.message_in, child.message_out), paths, strict=True):
        assert fd is not None
        assert os.fstat(fd).st_ino == os.lstat(path).st_ino
        assert not os.get_blocking(fd)


def test_standard_io_messaging_names_no_pipe_in_the_env(spawner: Spawner, tmp_path: Path) -> None:
    out = tmp_path / "record.json"
    options = CmdOptions(message_input=MessagingType.STANDARD_IO)
    child = spawner.spawn(probe(out, options))
    assert child.message_in is not None
    assert child.message_out is None
    assert exited(child) == 0
    record = read_json(out)
    assert INPUT_PIPE_ENV_NAME not in record["env"]
    assert OUTPUT_PIPE_ENV_NAME not in record["env"]
    assert record["stdio"][0].startswith("pipe:")
    assert record["stdio"][1:] == [os.devnull] * 2


#: What each logging type captures of WRITES_BOTH (tag "run"), per stream.
CAPTURED = {
    LoggingType.STDOUT_ONLY: {"stdout": "run:out-1\nrun:out-2\n"},
    LoggingType.STDERR_ONLY: {"stderr": "run:err-1\n"},
    LoggingType.STDOUT_AND_STDERR: {
        "stdout": "run:out-1\nrun:out-2\n",
        "stderr": "run:err-1\n",
    },
    LoggingType.STDOUT_AND_STDERR_MERGED: {
        "stdout": "run:out-1\nrun:err-1\nrun:out-2\n",
        "stderr": "run:out-1\nrun:err-1\nrun:out-2\n",
    },
}


@pytest.mark.parametrize("logging_type", list(LoggingType), ids=lambda t: t.name)
def test_the_childs_output_lands_in_private_log_files_in_its_process_dir(
    spawner: Spawner, logging_type: LoggingType
) -> None:
    options = CmdOptions(logging_type=logging_type)
    child = spawner.spawn(Cmd(sys.executable, ["-c", WRITES_BOTH, "run"], options))
    assert exited(child) == 0
    contents = {stream: path.read_text() for stream, path in child.logs.items()}
    assert contents == CAPTURED[logging_type]
    for path in child.logs.values():
        assert path.parent == child.process_dir
        assert mode(path) == 0o600
    if len(child.logs) == 2:  # one file for both streams only when merged
        merged = logging_type is LoggingType.STDOUT_AND_STDERR_MERGED
        assert (child.logs["stdout"] == child.logs["stderr"]) == merged


def test_a_restart_appends_to_the_logs_and_reuses_the_fifos(spawner: Spawner) -> None:
    options = CmdOptions(
        logging_type=LoggingType.STDOUT_AND_STDERR_MERGED,
        message_input=MessagingType.NAMED_PIPE,
        message_output=MessagingType.NAMED_PIPE,
    )
    first = spawner.spawn(Cmd(sys.executable, ["-c", WRITES_BOTH, "run"], options))
    assert exited(first) == 0
    fifos = fifo_inodes(first.process_dir)
    assert len(fifos) == 2
    second = spawner.restart(first)
    assert exited(second) == 0
    assert second.process_dir == first.process_dir
    assert second.logs == first.logs
    merged = CAPTURED[LoggingType.STDOUT_AND_STDERR_MERGED]["stdout"]
    assert second.logs["stdout"].read_text() == merged * 2
    assert fifo_inodes(second.process_dir) == fifos  # the same FIFOs, not new ones


def fifo_inodes(process_dir: Path) -> dict[str, int]:
    """The FIFOs in ``process_dir``: name -> inode."""
    found = {}
    for entry in os.scandir(process_dir):
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISFIFO(info.st_mode):
            found[entry.name] = info.st_ino
    return found


# --- scripts --------------------------------------------------------------------------------------


def test_a_script_is_written_in_the_process_dir_and_named_in_place_of_the_placeholder(
    spawner: Spawner, tmp_path: Path
) -> None:
    out = tmp_path / "record.json"
    config = ScriptRunConfig(sys.executable, ["-I", "@FILE_PATH", "--flag"], "py")
    child = spawner.spawn(Script(config, PROBE, args=["two words", str(out)]))
    script = child.process_dir / "script.py"
    assert child.cmd.argv() == [sys.executable, "-I", str(script), "--flag", "two words", str(out)]
    assert exited(child) == 0
    assert read_json(out)["argv"] == [str(script), "--flag", "two words", str(out)]
    assert script.read_text() == PROBE
    assert mode(script) == 0o600
    spawner.discard(child)
    assert not child.process_dir.exists()


# --- the PATH lookup ------------------------------------------------------------------------------


def python_named(bin_dir: Path, name: str = "corral-t-python") -> str:
    """A link named ``name`` in ``bin_dir`` to the running interpreter; returns ``name``."""
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).symlink_to(sys.executable)
    return name


def test_a_bare_name_is_found_in_the_childs_path_and_keeps_its_name_as_argv0(
    spawner: Spawner, tmp_path: Path
) -> None:
    name = python_named(tmp_path / "bin")
    # A missing entry and one with a dir of the program's name come first: exec would skip both.
    (tmp_path / "decoy" / name).mkdir(parents=True)
    path = f"{tmp_path / 'missing'}:{tmp_path / 'decoy'}:{tmp_path / 'bin'}"
    out = tmp_path / "record.json"
    child = spawner.spawn(probe(out, CmdOptions(envs={"PATH": path}), program=name))
    assert exited(child) == 0
    record = read_json(out)
    assert record["argv0"] == name
    assert record["env"]["PATH"] == path


def test_the_childs_path_decides_not_the_parents(spawner: Spawner, tmp_path: Path) -> None:
    """A name on both PATHs runs the child's; one on the parent's PATH only is not found."""
    shadow = tmp_path / "bin" / "true"
    shadow.parent.mkdir()
    shadow.write_text("#!/bin/sh\nexit 7\n")
    shadow.chmod(0o755)
    child = spawner.spawn(Cmd("true", [], CmdOptions(envs={"PATH": str(shadow.parent)})))
    assert exited(child) == 7
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpawnProcessError, match="'true'") as caught:
        spawner.spawn(Cmd("true", [], CmdOptions(envs={"PATH": str(tmp_path / "empty")})))
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_a_relative_path_entry_is_resolved_against_the_childs_current_dir(
    spawner: Spawner, tmp_path: Path
) -> None:
    name = python_named(tmp_path / "rel")
    out = tmp_path / "record.json"
    options = CmdOptions(envs={"PATH": "rel"}, current_dir=tmp_path)
    child = spawner.spawn(probe(out, options, program=name))
    assert exited(child) == 0
    assert read_json(out)["cwd"] == str(tmp_path)


def test_without_path_in_the_env_the_default_path_is_searched(spawner: Spawner) -> None:
    child = spawner.spawn(Cmd("sh", ["-c", "exit 3"], CmdOptions(clear_envs=True)))
    assert exited(child) == 3


def test_a_program_added_to_a_path_already_searched_is_found(
    spawner: Spawner, work_dir: Path, tmp_path: Path
) -> None:
    """The same PATH value twice: what it holds is looked up again, only its split is kept."""
    (tmp_path / "bin").mkdir()
    options = CmdOptions(envs={"PATH": str(tmp_path / "bin")})
    with pytest.raises(SpawnProcessError, match="corral-t-python") as caught:
        spawner.spawn(Cmd("corral-t-python", ["-c", "pass"], options))
    assert isinstance(caught.value.__cause__, FileNotFoundError)
    assert os.listdir(work_dir) == []
    python_named(tmp_path / "bin")
    child = spawner.spawn(Cmd("corral-t-python", ["-c", "raise SystemExit(4)"], options))
    assert exited(child) == 4


# --- failures leave nothing behind ----------------------------------------------------------------


class FailsToBootstrap:
    """A Runnable whose bootstrap_cmd raises after writing a file."""

    def __init__(self) -> None:
        self.cleaned: list[Path] = []

    def bootstrap_cmd(self, process_dir: Path) -> Cmd:
        (process_dir / "half-written").write_text("x")
        raise RuntimeError("cannot bootstrap")

    def clean_after_fail(self, process_dir: Path) -> None:
        self.cleaned.append(process_dir)


class ReturnsNoCmd(FailsToBootstrap):
    """A Runnable whose bootstrap_cmd writes a file the clean-up forgets, and returns no Cmd."""

    def bootstrap_cmd(self, process_dir: Path) -> Cmd:
        (process_dir / "config.toml").write_text("x = 1\n")
        (process_dir / DATA_DIR_NAME / "seed").write_text("1")
        return "true"  # type: ignore[return-value]


class RunsCmd(FailsToBootstrap):
    """A Runnable that writes a file, then returns a Cmd (which fails to start)."""

    def __init__(self, cmd: Cmd) -> None:
        super().__init__()
        self.cmd = cmd

    def bootstrap_cmd(self, process_dir: Path) -> Cmd:
        (process_dir / "config.toml").write_text("x = 1\n")
        return self.cmd


def every_fd(**changes: Any) -> CmdOptions:
    """Options with every fd start_child opens before the exec: two FIFO ends, two log files."""
    options = CmdOptions(
        message_input=MessagingType.NAMED_PIPE,
        message_output=MessagingType.NAMED_PIPE,
        logging_type=LoggingType.STDOUT_AND_STDERR,
    )
    return options.replace(**changes)


def _missing_program(tmp_path: Path) -> tuple[Runnable, str]:
    return Cmd("corral-t-no-such-program", [], every_fd()), "corral-t-no-such-program"


def _bad_current_dir(tmp_path: Path) -> tuple[Runnable, str]:
    options = every_fd(current_dir=tmp_path / "no" / "such" / "dir")
    return Cmd("true", [], options), "bad working directory"


def _not_executable(tmp_path: Path) -> tuple[Runnable, str]:
    program = tmp_path / "not-executable"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o644)  # no exec bit: not even root may run it
    return RunsCmd(Cmd(str(program), [], every_fd())), "Permission denied|Exec format"


def _unencodable_env(tmp_path: Path) -> tuple[Runnable, str]:
    options = every_fd()
    options.envs["BAD"] = "\ud800"  # set after validation: only the spawn finds it out
    return Cmd("true", [], options), "UnicodeEncodeError"


def _bootstrap_raises(tmp_path: Path) -> tuple[Runnable, str]:
    return FailsToBootstrap(), "cannot prepare process .*cannot bootstrap"


def _returns_no_cmd(tmp_path: Path) -> tuple[Runnable, str]:
    return ReturnsNoCmd(), "bootstrap_cmd returned 'true', not a Cmd"


@pytest.mark.parametrize(
    "make",
    [
        _missing_program,
        _bad_current_dir,
        _not_executable,
        _unencodable_env,
        _bootstrap_raises,
        _returns_no_cmd,
    ],
    ids=lambda make: make.__name__.strip("_").replace("_", " "),
)
def test_a_failed_spawn_leaves_no_dir_no_fd_and_no_child(
    work_dir: Path, tmp_path: Path, devnull: int, make: Any
) -> None:
    runnable, message = make(tmp_path)
    process_id = ProcessId.new()
    fds, children = fd_count(), children_of_self()
    with pytest.raises(SpawnProcessError, match=message) as caught:
        spawn_child(process_id, runnable, work_dir, devnull)
    assert caught.value.process_id == process_id
    assert os.listdir(work_dir) == []
    assert fd_count() == fds
    assert children_of_self() <= children  # no child started, none left
    if isinstance(runnable, FailsToBootstrap):
        # Cleaned once after a bootstrap that returned; never after one that raised.
        raised = type(runnable) is FailsToBootstrap
        assert runnable.cleaned == ([] if raised else [work_dir / str(process_id)])


def test_a_process_dir_that_cannot_be_made_is_reported_with_the_working_dir(
    tmp_path: Path, devnull: int
) -> None:
    gone = tmp_path / "gone"
    fds = fd_count()
    with pytest.raises(SpawnProcessError, match="cannot create the process dir") as caught:
        spawn_child(ProcessId.new(), Cmd("true"), gone, devnull)
    assert str(gone) in str(caught.value)
    assert isinstance(caught.value.__cause__, FileNotFoundError)
    assert not gone.exists()
    assert fd_count() == fds


def test_a_restart_that_cannot_start_keeps_the_process_dir_and_closes_its_fds(
    spawner: Spawner, tmp_path: Path
) -> None:
    program = tmp_path / "corral-t-tool"
    program.write_text('#!/bin/sh\necho "ran"\n')
    program.chmod(0o755)
    options = every_fd(message_input=None, message_output=MessagingType.NAMED_PIPE)
    first = spawner.spawn(Cmd(str(program), [], options))
    assert exited(first) == 0
    spawner.forget(first)
    before = sorted(os.listdir(first.process_dir))
    program.unlink()
    fds, children = fd_count(), children_of_self()
    process_id = ProcessId(first.process_dir.name)
    with pytest.raises(SpawnProcessError, match="corral-t-tool") as caught:
        start_child(process_id, first.cmd, first.process_dir, spawner.devnull)
    assert caught.value.process_id == process_id
    assert fd_count() == fds
    assert children_of_self() <= children
    # The restart is the caller's to give up: the dir, its logs and FIFOs are left as they were.
    assert sorted(os.listdir(first.process_dir)) == before
    assert first.logs["stdout"].read_text() == "ran\n"
    remove_process_dir(first.process_dir)


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_a_restart_never_opens_a_log_the_child_swapped_for_a_fifo_or_a_link(
    spawner: Spawner, tmp_path: Path, kind: str
) -> None:
    first = spawner.spawn(Cmd("sh", ["-c", "echo run"], CmdOptions(logging_type=STDOUT_ONLY)))
    assert exited(first) == 0
    spawner.forget(first)
    log = first.logs["stdout"]
    target = tmp_path / "elsewhere.txt"
    target.write_text("not a log\n")
    target.chmod(0o644)
    log.unlink()  # as the child may do
    if kind == "fifo":
        os.mkfifo(log, 0o600)
    else:
        log.symlink_to(target)
    outcome: list[SpawnedChild | BaseException] = []

    def restart() -> None:
        try:
            process_id = ProcessId(first.process_dir.name)
            outcome.append(start_child(process_id, first.cmd, first.process_dir, spawner.devnull))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    thread.join(3.0)  # a restart takes milliseconds
    blocked = thread.is_alive()
    if blocked:  # stuck opening the FIFO for writing: a reader lets it go on
        reader = os.open(log, os.O_RDONLY | os.O_NONBLOCK)
        thread.join(TIMEOUT)
        os.close(reader)
    [second] = outcome
    if isinstance(second, SpawnedChild):
        spawner.adopt(second)
        exited(second)
    assert not blocked, "start_child blocked opening the log, a FIFO, for writing"
    assert isinstance(second, SpawnedChild | SpawnProcessError), second
    assert target.read_text() == "not a log\n"
    assert mode(target) == 0o644
    if isinstance(second, SpawnedChild):  # else refused: SpawnProcessError
        assert stat.S_ISREG(os.lstat(second.logs["stdout"]).st_mode)


# --- discard_child --------------------------------------------------------------------------------


def test_discard_child_kills_the_group_reaps_and_leaves_no_fd_or_dir(
    work_dir: Path, devnull: int
) -> None:
    fds = fd_count()
    options = CmdOptions(
        message_input=MessagingType.NAMED_PIPE,
        message_output=MessagingType.STANDARD_IO,
        logging_type=LoggingType.STDERR_ONLY,
    )
    # The child starts a grandchild in its group and says its pid.
    child = spawn_child(
        ProcessId.new(), Cmd("sh", ["-c", "sleep 300 & echo $!; wait"], options), work_dir, devnull
    )
    assert child.message_out is not None
    grandchild = int(read_line(child.message_out))
    started = start_time(grandchild)
    assert os.getpgid(grandchild) == child.popen.pid
    with pidfd(grandchild) as fd:
        assert fd is not None
        assert pid_alive(grandchild, started)  # the pidfd is the grandchild's
        discard_child(child)
        assert child.popen.returncode == -signal.SIGKILL
        wait_readable(fd)  # the grandchild died with its group
    assert child.popen.pid not in children_of_self()  # reaped: no zombie left
    assert fd_count() == fds
    assert os.listdir(work_dir) == []


def test_discard_child_of_a_child_that_exited_unreaped_kills_the_job_it_left(
    work_dir: Path, devnull: int
) -> None:
    fds = fd_count()
    options = CmdOptions(message_output=MessagingType.STANDARD_IO)
    script = "sleep 300 >/dev/null & echo $!; exit 5"
    child = spawn_child(ProcessId.new(), Cmd("sh", ["-c", script], options), work_dir, devnull)
    assert child.message_out is not None
    job = int(read_line(child.message_out))
    with pidfd(child.popen.pid) as leader, pidfd(job) as job_fd:
        assert leader is not None
        assert job_fd is not None
        wait_readable(leader)  # exited: a zombie, holding its group's id until the reap
        assert not select.select([job_fd], [], [], 0)[0]
        discard_child(child)
        wait_readable(job_fd)  # the job died with the group
    assert child.popen.returncode == 5
    assert child.popen.pid not in children_of_self()
    assert fd_count() == fds
    assert os.listdir(work_dir) == []


# --- remove_process_dir ---------------------------------------------------------------------------


def test_remove_process_dir_removes_whatever_is_in_it(tmp_path: Path) -> None:
    process_dir = tmp_path / "p"
    make_private_dir(process_dir)
    make_private_dir(process_dir / DATA_DIR_NAME)
    (process_dir / DATA_DIR_NAME / "nested" / "deeper").mkdir(parents=True)
    (process_dir / DATA_DIR_NAME / "nested" / "file").write_text("x")
    (process_dir / "stdout.log").write_text("log")
    (process_dir / "custom").write_text("custom")
    os.mkfifo(process_dir / "input.pipe")
    assert remove_process_dir(process_dir)
    assert os.listdir(tmp_path) == []
    assert remove_process_dir(process_dir)  # gone already: nothing to do, and it says so
