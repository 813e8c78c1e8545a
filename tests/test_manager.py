"""The manager with real processes: spawning, environment, info, wait, kill, list, abort."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    TIMEOUT,
    LoopTurns,
    children_of_self,
    fd_count,
    pid_alive,
    pidfd,
    process_dirs,
    read_record,
    record_cmd,
    sleep_cmd,
    start_time,
    wait_exited,
    wait_fd_readable,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from corral import (
    INPUT_PIPE_ENV_NAME,
    OUTPUT_PIPE_ENV_NAME,
    PROCESS_DATA_DIR_ENV_NAME,
    Cmd,
    CmdError,
    CmdOptions,
    ExitStatus,
    GetProcessInfoError,
    KillProcessError,
    LoggingType,
    LogsQuery,
    ManagerAbortedError,
    MessagingType,
    ProcessId,
    ProcessInfo,
    ProcessManager,
    ProcessManagerHandle,
    ProcessNotFoundError,
    Script,
    ScriptingLanguage,
    ScriptRunConfig,
    SpawnProcessError,
)

# --- ProcessManager.spawn ----------------------------------------------------------------------


async def test_manager_needs_an_existing_working_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ProcessManager.spawn(tmp_path / "missing")


async def test_manager_rejects_a_file_as_working_dir(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(NotADirectoryError):
        ProcessManager.spawn(path)


def _unwritable_dir(tmp_path: Path) -> Path:
    """A dir this process cannot create entries in, even as root."""
    if os.geteuid() != 0:
        path = tmp_path / "read-only"
        path.mkdir(mode=0o500)
        return path
    # root passes permission checks (and os.access says yes): a pseudo file system does not.
    for candidate in (Path("/sys"), Path("/proc")):
        probe = candidate / ".corral-write-probe"
        try:
            probe.mkdir()
        except OSError:
            return candidate
        probe.rmdir()
    pytest.skip("running as root and no read-only dir (/sys, /proc) to try")


async def test_manager_rejects_an_unwritable_working_dir(tmp_path: Path) -> None:
    with pytest.raises(OSError):  # noqa: PT011 - which errno depends on the file system
        ProcessManager.spawn(_unwritable_dir(tmp_path))


async def test_manager_needs_a_running_loop(tmp_path: Path) -> None:
    def outside_the_loop() -> None:
        ProcessManager.spawn(tmp_path)

    with pytest.raises(RuntimeError):
        await asyncio.to_thread(outside_the_loop)


async def test_manager_with_its_own_temp_dir(tmp_path: Path) -> None:
    async with ProcessManager.spawn() as handle:
        process_id = await handle.spawn(record_cmd(tmp_path / "out"))
        await handle.wait(process_id, TIMEOUT)
        data_dir = Path(read_record(tmp_path / "out")["env"][PROCESS_DATA_DIR_ENV_NAME])
        working_dir = data_dir.parent.parent
        assert data_dir.parent.name == str(process_id)
        assert stat.S_IMODE(working_dir.stat().st_mode) == 0o700
    assert not working_dir.exists()


async def test_async_with_aborts_at_exit(work_dir: Path) -> None:
    async with ProcessManager.spawn(work_dir) as handle:
        process = await handle.spawn_with_handle(sleep_cmd())
        pid = (await process.get_process_info()).pid
        assert pid is not None
        started = start_time(pid)
    assert not pid_alive(pid, started)
    assert process_dirs(work_dir) == []  # a user-given working dir stays, emptied
    with pytest.raises(ManagerAbortedError):
        await handle.list_processes()


async def test_async_with_aborts_on_exception(work_dir: Path) -> None:
    handle = ProcessManager.spawn(work_dir)

    async def fail_inside() -> None:
        async with handle:
            await handle.spawn(sleep_cmd())
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await fail_inside()
    assert process_dirs(work_dir) == []
    with pytest.raises(ManagerAbortedError):
        await handle.abort()


# --- what runs: Cmd, Script, ScriptRunConfig, Runnable ----------------------------------------


async def test_cmd_args_reach_the_child_literally(
    manager: ProcessManagerHandle, tmp_path: Path
) -> None:
    args = ["|", ">", "out.txt", "$HOME", "${X}", "`id`", "$(id)", ";", "&&", "*", "a b", "", "'"]
    process_id = await manager.spawn(record_cmd(tmp_path / "out", *args))
    info = await manager.wait(process_id, TIMEOUT)
    assert info.exit_status == ExitStatus(code=0, signal=None, success=True)
    assert read_record(tmp_path / "out")["argv"] == args
    assert not (Path.cwd() / "out.txt").exists()


async def test_parsed_cmd_runs(manager: ProcessManagerHandle, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = "import sys; open(sys.argv[1], 'w').write(sys.argv[2])"
    line = shlex.join([sys.executable, "-c", code, str(out), "a b"])
    info = await manager.wait(await manager.spawn(Cmd.parse(line)), TIMEOUT)
    assert info.exit_status == ExitStatus(0, None, True)
    assert out.read_text() == "a b"


async def test_exit_code_and_signal(manager: ProcessManagerHandle) -> None:
    code = await manager.spawn(Cmd("sh", ["-c", "exit 3"]))
    killed = await manager.spawn(Cmd("sh", ["-c", "kill -TERM $$"]))
    assert (await manager.wait(code, TIMEOUT)).exit_status == ExitStatus(3, None, False)
    assert (await manager.wait(killed, TIMEOUT)).exit_status == ExitStatus(
        None, signal.SIGTERM, False
    )


async def test_bash_script(manager: ProcessManagerHandle, tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = Script(
        ScriptingLanguage.BASH,
        'printf "%s|%s|%s" "$1" "$2" "$PROCESS_DATA_DIR" > "$3"\nexit 5\n',
        ["one", "two words", str(out)],
    )
    process_id = await manager.spawn(script)
    info = await manager.wait(process_id, TIMEOUT)
    assert info.exit_status == ExitStatus(5, None, False)
    first, second, data_dir = out.read_text().split("|")
    assert (first, second) == ("one", "two words")
    process_dir = Path(data_dir).parent
    assert process_dir.name == str(process_id)
    assert (process_dir / "script.sh").read_text().startswith("printf")
    assert stat.S_IMODE((process_dir / "script.sh").stat().st_mode) == 0o600


async def test_python_script(manager: ProcessManagerHandle, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = "import os, sys\nopen(sys.argv[1], 'w').write(sys.executable + '|' + sys.argv[2])\n"
    process_id = await manager.spawn(Script(ScriptingLanguage.PYTHON, code, [str(out), "x y"]))
    info = await manager.wait(process_id, TIMEOUT)
    assert info.exit_status == ExitStatus(0, None, True)
    assert out.read_text() == f"{sys.executable}|x y"


#: For each language: a script that exits with code 7, proving the interpreter ran the file.
EXIT_7 = {
    ScriptingLanguage.BASH: "exit 7",
    ScriptingLanguage.PYTHON: "raise SystemExit(7)",
    ScriptingLanguage.PHP: "<?php exit(7);",
    ScriptingLanguage.JAVASCRIPT: "process.exit(7);",
    ScriptingLanguage.PERL: "exit 7;",
    ScriptingLanguage.LUA: "os.exit(7)",
    ScriptingLanguage.RUBY: "exit 7",
    ScriptingLanguage.GROOVY: "System.exit(7)",
}


@pytest.mark.parametrize("lang", list(ScriptingLanguage), ids=lambda lang: lang.name)
async def test_every_language_runs(manager: ProcessManagerHandle, lang: ScriptingLanguage) -> None:
    interpreter = lang.run_config.cmd
    if shutil.which(interpreter) is None:
        pytest.skip(f"{interpreter} is not installed")
    process_id = await manager.spawn(Script(lang, EXIT_7[lang]))
    info = await manager.wait(process_id, 60 if lang is ScriptingLanguage.GROOVY else TIMEOUT)
    assert info.exit_status == ExitStatus(7, None, False)


async def test_custom_script_run_config(manager: ProcessManagerHandle, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = ScriptRunConfig("bash", ["-e", "@FILE_PATH", str(out)], ".bash")
    process_id = await manager.spawn(Script(config, 'false\necho unreached > "$1"\n'))
    info = await manager.wait(process_id, TIMEOUT)
    assert info.exit_status == ExitStatus(1, None, False)  # -e reached bash before the file
    assert not out.exists()


async def test_custom_script_run_config_without_placeholder() -> None:
    with pytest.raises(CmdError, match="@FILE_PATH"):
        ScriptRunConfig("bash", ["-e"], "sh")


class FileWriter:
    """A custom Runnable: writes a file into its process dir, runs a program that reads it."""

    def __init__(self, out: Path, program: str = sys.executable) -> None:
        self.out = out
        self.program = program
        self.bootstrapped: list[Path] = []
        self.cleaned: list[Path] = []

    def bootstrap_cmd(self, process_dir: Path) -> Cmd:
        self.bootstrapped.append(process_dir)
        (process_dir / "input.txt").write_text("from bootstrap")
        code = "import sys; open(sys.argv[2], 'w').write(open(sys.argv[1]).read())"
        return Cmd(self.program, ["-c", code, str(process_dir / "input.txt"), str(self.out)])

    def clean_after_fail(self, process_dir: Path) -> None:
        self.cleaned.append(process_dir)
        assert (process_dir / "input.txt").exists()  # still there: called before the dir goes


async def test_custom_runnable(manager: ProcessManagerHandle, tmp_path: Path) -> None:
    runnable = FileWriter(tmp_path / "out")
    process_id = await manager.spawn(runnable)
    await manager.wait(process_id, TIMEOUT)
    assert (tmp_path / "out").read_text() == "from bootstrap"
    assert [d.name for d in runnable.bootstrapped] == [str(process_id)]
    assert runnable.cleaned == []


async def test_custom_runnable_cleaned_once_after_a_failed_spawn(
    manager: ProcessManagerHandle, work_dir: Path, tmp_path: Path
) -> None:
    runnable = FileWriter(tmp_path / "out", program=str(tmp_path / "missing-program"))
    with pytest.raises(SpawnProcessError) as caught:
        await manager.spawn(runnable)
    assert isinstance(caught.value.__cause__, FileNotFoundError)
    assert len(runnable.bootstrapped) == 1
    assert runnable.cleaned == runnable.bootstrapped
    assert runnable.bootstrapped[0].name == str(caught.value.process_id)
    assert process_dirs(work_dir) == []
    assert await manager.list_processes() == []


class BrokenRunnable:
    def __init__(self, fail_in_bootstrap: bool) -> None:
        self.fail_in_bootstrap = fail_in_bootstrap
        self.cleaned: list[Path] = []

    def bootstrap_cmd(self, process_dir: Path) -> Cmd:
        (process_dir / "half-written").write_text("")
        if self.fail_in_bootstrap:
            raise RuntimeError("bootstrap broke")
        return "not a Cmd"  # type: ignore[return-value]

    def clean_after_fail(self, process_dir: Path) -> None:
        self.cleaned.append(process_dir)


async def test_runnable_failing_in_bootstrap(manager: ProcessManagerHandle, work_dir: Path) -> None:
    runnable = BrokenRunnable(fail_in_bootstrap=True)
    with pytest.raises(SpawnProcessError, match="bootstrap broke") as caught:
        await manager.spawn(runnable)
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert runnable.cleaned == []  # bootstrap did not finish: nothing of the Runnable to undo
    assert process_dirs(work_dir) == []


async def test_runnable_returning_no_cmd(manager: ProcessManagerHandle, work_dir: Path) -> None:
    runnable = BrokenRunnable(fail_in_bootstrap=False)
    with pytest.raises(SpawnProcessError, match="not a Cmd"):
        await manager.spawn(runnable)
    assert len(runnable.cleaned) == 1
    assert process_dirs(work_dir) == []


async def test_spawning_something_that_is_not_runnable(manager: ProcessManagerHandle) -> None:
    with pytest.raises(SpawnProcessError, match="not a Runnable"):
        await manager.spawn("echo hi")  # type: ignore[arg-type]


# --- bad input leaves nothing behind -----------------------------------------------------------


def _not_executable(tmp_path: Path) -> Path:
    path = tmp_path / "not-executable"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o644)
    return path


@pytest.mark.parametrize(
    ("case", "cause"),
    [
        ("missing program", FileNotFoundError),
        ("missing program path", FileNotFoundError),
        ("not executable", PermissionError),
        ("a dir as program", PermissionError),
        ("missing current_dir", FileNotFoundError),
        ("file as current_dir", NotADirectoryError),
    ],
)
async def test_bad_spawn_raises_and_leaves_nothing(
    manager: ProcessManagerHandle,
    work_dir: Path,
    tmp_path: Path,
    case: str,
    cause: type[OSError],
) -> None:
    cmd = {
        "missing program": lambda: Cmd("corral-no-such-program-anywhere"),
        "missing program path": lambda: Cmd(str(tmp_path / "nope")),
        "not executable": lambda: Cmd(str(_not_executable(tmp_path))),
        "a dir as program": lambda: Cmd(str(tmp_path)),
        "missing current_dir": lambda: Cmd(
            "true", options=CmdOptions(current_dir=tmp_path / "nope")
        ),
        "file as current_dir": lambda: Cmd(
            "true", options=CmdOptions(current_dir=_not_executable(tmp_path))
        ),
    }[case]()
    await manager.list_processes()  # the manager is up: its own fds are open
    fds = fd_count()
    with pytest.raises(SpawnProcessError) as caught:
        await manager.spawn(cmd)
    error = caught.value
    assert isinstance(error.__cause__, cause)
    assert isinstance(error.process_id, ProcessId)
    assert str(error.process_id) in str(error)
    assert process_dirs(work_dir) == []
    assert fd_count() == fds
    assert await manager.list_processes() == []


async def test_spawn_into_a_working_dir_that_went_away(tmp_path: Path) -> None:
    work_dir = tmp_path / "gone"
    work_dir.mkdir()
    async with ProcessManager.spawn(work_dir) as handle:
        work_dir.rmdir()
        with pytest.raises(SpawnProcessError) as caught:
            await handle.spawn(Cmd("true"))
        assert isinstance(caught.value.__cause__, FileNotFoundError)
        assert str(caught.value.process_id) in str(caught.value)
        assert not work_dir.exists()


@pytest.mark.parametrize("logging_type", list(LoggingType), ids=lambda t: t.name)
@pytest.mark.parametrize("bad", ["missing program", "missing current_dir"])
async def test_failed_spawn_with_logging_leaves_no_log_fd_or_dir(
    manager: ProcessManagerHandle,
    work_dir: Path,
    tmp_path: Path,
    logging_type: LoggingType,
    bad: str,
) -> None:
    if bad == "missing program":
        cmd = Cmd("corral-no-such-program-anywhere", [], CmdOptions.with_logging(logging_type))
    else:
        options = CmdOptions(logging_type=logging_type, current_dir=tmp_path / "nope")
        cmd = Cmd("true", [], options)
    await manager.list_processes()
    fds = fd_count()
    with pytest.raises(SpawnProcessError) as caught:
        await manager.spawn(cmd)
    assert isinstance(caught.value.__cause__, FileNotFoundError)
    assert str(caught.value.process_id) in str(caught.value)
    assert fd_count() == fds
    assert process_dirs(work_dir) == []
    assert await manager.list_processes() == []


MESSAGING_OPTIONS = [
    CmdOptions.with_named_pipe_messaging(),
    CmdOptions.with_standard_io_messaging(),
    CmdOptions.with_message_input(MessagingType.NAMED_PIPE),
    CmdOptions.with_message_output(MessagingType.STANDARD_IO),
]


@pytest.mark.parametrize("options", MESSAGING_OPTIONS)
async def test_failed_spawn_with_messaging_leaves_no_fifo_and_no_fd(
    manager: ProcessManagerHandle, work_dir: Path, options: CmdOptions
) -> None:
    before = fd_count()
    with pytest.raises(SpawnProcessError) as info:
        await manager.spawn(Cmd("/no/such/program", [], options))
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert process_dirs(work_dir) == []
    assert fd_count() == before
    assert await manager.list_processes() == []


@pytest.mark.parametrize("options", MESSAGING_OPTIONS)
async def test_named_pipes_are_private_fifos_named_in_the_env(
    manager: ProcessManagerHandle, work_dir: Path, tmp_path: Path, options: CmdOptions
) -> None:
    out = tmp_path / "record.json"
    process_id = await manager.spawn(record_cmd(out, options=options))
    await manager.wait(process_id, TIMEOUT)
    env = read_record(out)["env"]
    for name, kind in (
        (INPUT_PIPE_ENV_NAME, options.message_input),
        (OUTPUT_PIPE_ENV_NAME, options.message_output),
    ):
        if kind is MessagingType.NAMED_PIPE:
            fifo = Path(env[name])
            assert fifo.parent == work_dir / str(process_id)
            mode = fifo.stat().st_mode
            assert stat.S_ISFIFO(mode)
            assert stat.S_IMODE(mode) == 0o600
        else:
            assert name not in env
    await manager.kill(process_id)
    assert process_dirs(work_dir) == []


# --- identity, data dir, environment -----------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o277])
async def test_process_dir_and_data_dir_are_private(
    manager: ProcessManagerHandle,
    work_dir: Path,
    tmp_path: Path,
    restore_umask: None,
    umask: int,
) -> None:
    os.umask(umask)
    process_id = await manager.spawn(record_cmd(tmp_path / "out"))
    await manager.wait(process_id, TIMEOUT)
    data_dir = Path(read_record(tmp_path / "out")["env"][PROCESS_DATA_DIR_ENV_NAME])
    process_dir = work_dir / str(process_id)
    assert data_dir.parent == process_dir
    assert data_dir.is_dir()
    assert stat.S_IMODE(process_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert [p.name for p in process_dirs(work_dir)] == [str(process_id)]


async def test_inherited_environment_with_envs_and_removals(
    manager: ProcessManagerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_TEST_KEEP", "kept")
    monkeypatch.setenv("CORRAL_TEST_REMOVE", "removed")
    monkeypatch.setenv("CORRAL_TEST_OVERRIDE", "old")
    options = CmdOptions(
        envs={"CORRAL_TEST_OVERRIDE": "new", "CORRAL_TEST_NEW": "a=b c", "EMPTY": ""},
        envs_to_remove=["CORRAL_TEST_REMOVE", "CORRAL_TEST_NEVER_SET"],
    )
    await manager.wait(await manager.spawn(record_cmd(tmp_path / "out", options=options)))
    env = read_record(tmp_path / "out")["env"]
    assert env["CORRAL_TEST_KEEP"] == "kept"
    assert "CORRAL_TEST_REMOVE" not in env
    assert env["CORRAL_TEST_OVERRIDE"] == "new"
    assert env["CORRAL_TEST_NEW"] == "a=b c"
    assert env["EMPTY"] == ""
    assert env["PATH"] == os.environ["PATH"]
    assert PROCESS_DATA_DIR_ENV_NAME in env


async def test_clear_envs_leaves_exactly_the_data_dir_and_explicit_envs(
    manager: ProcessManagerHandle, tmp_path: Path
) -> None:
    options = CmdOptions(clear_envs=True, envs={"ONLY": "this"}, envs_to_remove=["ONLY_NOT"])
    process_id = await manager.spawn(record_cmd(tmp_path / "out", options=options))
    info = await manager.wait(process_id, TIMEOUT)
    assert info.exit_status == ExitStatus(0, None, True)
    # /proc/self/environ is the environment exec got, before the interpreter adds anything
    # (CPython may set LC_CTYPE in os.environ when it coerces a C locale).
    env = read_record(tmp_path / "out")["env"]
    assert set(env) == {PROCESS_DATA_DIR_ENV_NAME, "ONLY"}
    assert env["ONLY"] == "this"


async def test_clear_envs_without_envs(manager: ProcessManagerHandle, tmp_path: Path) -> None:
    options = CmdOptions(clear_envs=True)
    await manager.wait(await manager.spawn(record_cmd(tmp_path / "out", options=options)))
    assert list(read_record(tmp_path / "out")["env"]) == [PROCESS_DATA_DIR_ENV_NAME]


# --- a bare program name: the child's PATH, as exec searches it ---------------------------------

PROGRAM = "corral-path-test-program"

#: What a PATH entry can hold of PROGRAM (laid out by _make_entry).
ENTRY_KINDS = ["no dir", "empty", "script", "not executable", "a dir", "bad format", "relative"]


def _make_entry(root: Path, index: int, kind: str) -> str:
    """Lay out one PATH entry under ``root`` (the child's cwd); return the entry."""
    entry = root / f"bin{index}"
    if kind == "relative":
        entry = root / f"rel{index}"
    if kind != "no dir":
        entry.mkdir()
    program = entry / PROGRAM
    if kind in ("script", "relative", "not executable"):
        program.write_text(f'#!/bin/sh\necho {kind}{index} > "$OUT"\n')
        program.chmod(0o644 if kind == "not executable" else 0o755)
    elif kind == "a dir":
        program.mkdir()
    elif kind == "bad format":
        program.write_bytes(b"\x7fELF but not really\n")
        program.chmod(0o755)
    return entry.name if kind == "relative" else str(entry)


def _outcome_of_exec(path: str, root: Path) -> tuple[str, str]:
    """What ``subprocess`` (exec's own PATH search) runs for PROGRAM: the oracle."""
    out = root / "oracle.out"
    env = {"PATH": path, "OUT": str(out)}
    try:
        subprocess.run([PROGRAM], env=env, cwd=root, check=True, timeout=TIMEOUT)
    except OSError as exc:
        return ("error", type(exc).__name__)
    return ("ran", out.read_text().strip())


async def _outcome_through_corral(path: str, root: Path) -> tuple[str, str]:
    out = root / "corral.out"
    options = CmdOptions(envs={"PATH": path, "OUT": str(out)}, current_dir=root)
    async with ProcessManager.spawn(root) as handle:
        try:
            process_id = await handle.spawn(Cmd(PROGRAM, [], options))
        except SpawnProcessError as exc:
            return ("error", type(exc.__cause__).__name__)
        info = await handle.wait(process_id, TIMEOUT)
        assert info.exit_status == ExitStatus(0, None, True)
        await handle.kill(process_id)
    return ("ran", out.read_text().strip())


@settings(max_examples=40, deadline=None)
@given(kinds=st.lists(st.sampled_from(ENTRY_KINDS), min_size=1, max_size=4))
def test_a_bare_name_runs_what_exec_would_find_in_the_childs_path(kinds: list[str]) -> None:
    """The same file runs, or the same error is raised, as with exec's own search of PATH."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = os.pathsep.join(_make_entry(root, i, kind) for i, kind in enumerate(kinds))
        expected = _outcome_of_exec(path, root)
        assert asyncio.run(_outcome_through_corral(path, root)) == expected


async def test_a_bare_program_name_is_looked_up_in_the_childs_path(
    manager: ProcessManagerHandle, tmp_path: Path
) -> None:
    tool = tmp_path / "corral-test-tool"
    tool.write_text("#!/bin/sh\nexit 7\n")
    tool.chmod(0o755)
    own_path = CmdOptions(envs={"PATH": f"{tmp_path}:{os.environ.get('PATH', '')}"})
    info = await manager.wait(await manager.spawn(Cmd(tool.name, [], own_path)), TIMEOUT)
    assert info.exit_status is not None
    assert info.exit_status.code == 7
    with pytest.raises(SpawnProcessError, match="corral-test-tool"):
        await manager.spawn(Cmd(tool.name))  # not on the parent's PATH
    info = await manager.wait(await manager.spawn(Cmd("true")), TIMEOUT)  # on the parent's
    assert info.exit_status == ExitStatus(0, None, True)


async def test_a_bare_name_keeps_its_name_as_argv0(
    manager: ProcessManagerHandle, tmp_path: Path
) -> None:
    """Found in PATH by the parent, the program still gets the name it was given as argv[0]."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "corral-python").symlink_to(sys.executable)
    out = tmp_path / "argv"
    code = "import sys; open(sys.argv[1], 'w').write(sys.orig_argv[0])"
    envs = {"PATH": f"{tmp_path / 'empty'}:{bin_dir}:{os.environ['PATH']}"}
    cmd = Cmd("corral-python", ["-c", code, str(out)], CmdOptions(envs=envs))
    info = await manager.wait(await manager.spawn(cmd), TIMEOUT)
    assert info.exit_status == ExitStatus(0, None, True)
    assert out.read_text() == "corral-python"


async def test_process_data_dir_cannot_be_overridden(
    manager: ProcessManagerHandle, work_dir: Path, tmp_path: Path
) -> None:
    options = CmdOptions(envs={PROCESS_DATA_DIR_ENV_NAME: "/elsewhere"})
    process_id = await manager.spawn(record_cmd(tmp_path / "out", options=options))
    await manager.wait(process_id, TIMEOUT)
    data_dir = read_record(tmp_path / "out")["env"][PROCESS_DATA_DIR_ENV_NAME]
    assert Path(data_dir).parent == work_dir / str(process_id)


async def test_current_dir(manager: ProcessManagerHandle, tmp_path: Path) -> None:
    cwd = tmp_path / "cwd with space"
    cwd.mkdir()
    options = CmdOptions(current_dir=cwd)
    await manager.wait(await manager.spawn(record_cmd(tmp_path / "out", options=options)))
    assert read_record(tmp_path / "out")["cwd"] == str(cwd)
    await manager.wait(await manager.spawn(record_cmd(tmp_path / "out2")))
    assert read_record(tmp_path / "out2")["cwd"] == os.getcwd()


#: A child reporting what it started with: the ignored-signal mask of a process it execs (the
#: shell itself may ignore some), its own pid and process group, and the fds a program it
#: execs finds open (its own dir fd aside).
START_STATE_SH = r"""grep SigIgn /proc/self/status
echo "$$ $(cut -d' ' -f5 /proc/$$/stat)"
exec python3 -c 'import os; print(" ".join(sorted(os.listdir("/proc/self/fd"), key=int)))'
"""


@pytest.mark.parametrize("extra", [{}, {"current_dir": "/"}, {"umask": 0o022}], ids=str)
async def test_a_child_starts_with_default_signals_its_own_group_and_only_its_stdio(
    manager: ProcessManagerHandle, extra: dict[str, Any]
) -> None:
    # Started while other children hold pipes, FIFOs and logs, and while the parent holds an fd
    # marked inheritable (as a make jobserver's or a CI runner's pipe is): none may reach it.
    busy = CmdOptions.with_named_pipe_messaging()
    busy.logging_type = LoggingType.STDOUT_AND_STDERR
    others = [await manager.spawn(Cmd("sleep", ["60"], busy)) for _ in range(2)]
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    try:
        options = CmdOptions(logging_type=LoggingType.STDOUT_ONLY, **extra)
        process_id = await manager.spawn(Cmd("sh", ["-c", START_STATE_SH], options))
        info = await manager.wait(process_id, TIMEOUT)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert info.exit_status == ExitStatus(0, None, True)
    ignored, ids, fds = (await manager.get_logs_stdout(process_id, LogsQuery.fetch_all()))[:3]
    mask = int(ignored.split()[1], 16)
    assert not mask & (1 << (signal.SIGPIPE - 1)), "SIGPIPE must have its default action"
    assert not mask & (1 << (signal.SIGXFSZ - 1))
    pid, group = ids.split()
    assert pid == group == str(info.pid)  # the leader of its own process group
    assert fds.split() == ["0", "1", "2", "3"]  # stdio and listdir's own fd: nothing inherited
    for other in others:
        await manager.kill(other)


async def test_a_burst_of_spawns_takes_a_loop_turn_each(manager: ProcessManagerHandle) -> None:
    # A spawn holds the loop until its child execs: twenty at once must let the loop poll I/O
    # (exits, pipes) between them, not hold it for all twenty in one turn.
    with LoopTurns() as turns:
        ids = await asyncio.gather(*(manager.spawn(Cmd("true")) for _ in range(20)))
    assert turns.count >= 19
    for process_id in ids:
        await manager.kill(process_id)


# --- info, wait, kill, list --------------------------------------------------------------------


async def test_info_while_running_and_after_exit(
    manager: ProcessManagerHandle, tmp_path: Path
) -> None:
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    # The child runs until the test writes to the FIFO.
    process_id = await manager.spawn(Cmd("sh", ["-c", 'read line < "$0"; exit 4', str(fifo)]))
    info = await manager.get_process_info(process_id)
    assert info.is_running
    assert info.exit_status is None
    assert isinstance(info.pid, int)
    with open(os.open(fifo, os.O_RDWR), "w") as go:  # O_RDWR: never blocks on open
        go.write("go\n")
        go.flush()
        final = await manager.wait(process_id, TIMEOUT)
    assert final == ProcessInfo(
        pid=info.pid, exit_status=ExitStatus(4, None, False), is_running=False
    )
    assert await manager.get_process_info(process_id) == final  # known until killed
    assert await manager.wait(process_id, TIMEOUT) == final  # waiting again returns at once
    assert await manager.list_processes() == [process_id]


async def test_wait_timeout_leaves_the_process_running(manager: ProcessManagerHandle) -> None:
    process_id = await manager.spawn(sleep_cmd())
    with pytest.raises(TimeoutError):
        await manager.wait(process_id, timeout=0.05)
    info = await manager.get_process_info(process_id)
    assert info.is_running
    assert info.pid is not None
    assert pid_alive(info.pid)
    with pytest.raises(TimeoutError):
        await manager.wait(process_id, timeout=0)
    assert (await manager.get_process_info(process_id)).is_running


async def test_many_waiters_all_get_the_exit(manager: ProcessManagerHandle) -> None:
    process_id = await manager.spawn(sleep_cmd())
    async with asyncio.timeout(TIMEOUT):
        waiters = [asyncio.ensure_future(manager.wait(process_id)) for _ in range(20)]
        results = await asyncio.gather(*waiters, manager.kill(process_id))
    statuses = {info.exit_status for info in results[:-1]}
    assert statuses == {ExitStatus(None, signal.SIGKILL, False)}


async def test_kill_a_running_process(manager: ProcessManagerHandle, work_dir: Path) -> None:
    process_id = await manager.spawn(sleep_cmd())
    pid = (await manager.get_process_info(process_id)).pid
    assert pid is not None
    started = start_time(pid)
    assert (work_dir / str(process_id)).is_dir()
    # The wait is posted before the kill, so it sees how the process ended.
    async with asyncio.timeout(TIMEOUT):
        info, _ = await asyncio.gather(manager.wait(process_id), manager.kill(process_id))
    assert info.exit_status == ExitStatus(None, signal.SIGKILL, False)
    assert info.pid == pid
    assert not pid_alive(pid, started)
    assert process_dirs(work_dir) == []
    assert await manager.list_processes() == []


async def test_kill_forgets_the_id(manager: ProcessManagerHandle) -> None:
    process_id = await manager.spawn(sleep_cmd())
    await manager.kill(process_id)
    calls = {
        KillProcessError: manager.kill(process_id),
        GetProcessInfoError: manager.get_process_info(process_id),
    }
    for operation_error, call in calls.items():
        with pytest.raises(ProcessNotFoundError) as caught:
            await call
        assert isinstance(caught.value, operation_error)
        assert caught.value.process_id == process_id
        assert str(process_id) in str(caught.value)
    with pytest.raises(GetProcessInfoError) as caught_wait:
        await manager.wait(process_id, TIMEOUT)
    assert isinstance(caught_wait.value, ProcessNotFoundError)


async def test_kill_an_exited_process(manager: ProcessManagerHandle, work_dir: Path) -> None:
    process_id = await manager.spawn(Cmd("true"))
    info = await manager.wait(process_id, TIMEOUT)
    await manager.kill(process_id)
    assert info.exit_status == ExitStatus(0, None, True)
    assert process_dirs(work_dir) == []
    assert await manager.list_processes() == []


async def test_kill_reaches_the_whole_process_group(
    manager: ProcessManagerHandle, tmp_path: Path
) -> None:
    fifo = tmp_path / "grandchild"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        process_id = await manager.spawn(
            Cmd("bash", ["-c", 'sleep 60 & echo $! > "$0"; wait', str(fifo)])
        )
        await wait_fd_readable(fd)
        grandchild = int(os.read(fd, 100).decode())
    finally:
        os.close(fd)
    with pidfd(grandchild) as grandchild_fd:
        assert grandchild_fd is not None
        await manager.kill(process_id)
        await wait_fd_readable(grandchild_fd)  # the grandchild exited too


async def test_list_processes(manager: ProcessManagerHandle) -> None:
    assert await manager.list_processes() == []
    running = [await manager.spawn(sleep_cmd()) for _ in range(3)]
    exited = await manager.spawn(Cmd("true"))
    await manager.wait(exited, TIMEOUT)
    assert set(await manager.list_processes()) == {*running, exited}
    await manager.kill(running[0])
    assert set(await manager.list_processes()) == {*running[1:], exited}


# --- abort ---------------------------------------------------------------------------------------


async def test_abort_kills_everything_and_empties_the_working_dir(work_dir: Path) -> None:
    handle = ProcessManager.spawn(work_dir)
    (work_dir / "users-own-file").write_text("mine")
    ids = [await handle.spawn(sleep_cmd()) for _ in range(5)]
    exited = await handle.spawn(Cmd("true"))
    await handle.wait(exited, TIMEOUT)
    pids = [(await handle.get_process_info(i)).pid for i in ids]
    starts = [start_time(pid) for pid in pids if pid is not None]
    await handle.abort()
    assert not any(pid_alive(pid, t) for pid, t in zip(pids, starts, strict=True) if pid)
    assert [p.name for p in process_dirs(work_dir)] == ["users-own-file"]
    assert work_dir.is_dir()


async def test_calls_after_abort(work_dir: Path) -> None:
    handle = ProcessManager.spawn(work_dir)
    process_id = await handle.spawn(sleep_cmd())
    await handle.abort()
    calls = [
        (SpawnProcessError, handle.spawn(Cmd("true"))),
        (SpawnProcessError, handle.spawn_with_handle(Cmd("true"))),
        (SpawnProcessError, handle.spawn_with_scoped_handle(Cmd("true"))),
        (GetProcessInfoError, handle.get_process_info(process_id)),
        (GetProcessInfoError, handle.wait(process_id)),
        (GetProcessInfoError, handle.wait(process_id, 1)),
        (GetProcessInfoError, handle.list_processes()),
        (KillProcessError, handle.kill(process_id)),
    ]
    for operation_error, call in calls:
        with pytest.raises(ManagerAbortedError) as caught:
            await call
        assert isinstance(caught.value, operation_error)
    with pytest.raises(ManagerAbortedError):
        await handle.abort()
    assert process_dirs(work_dir) == []


async def test_abort_with_calls_in_flight(work_dir: Path) -> None:
    handle = ProcessManager.spawn(work_dir)
    process_id = await handle.spawn(sleep_cmd())
    waiter = asyncio.ensure_future(handle.wait(process_id))
    results = await asyncio.gather(
        handle.abort(), handle.list_processes(), handle.spawn(Cmd("true")), return_exceptions=True
    )
    assert results[0] is None
    assert all(isinstance(r, ManagerAbortedError) for r in results[1:])
    # A wait pending at the abort ends: with the abort's SIGTERM, or with ManagerAbortedError.
    with contextlib.suppress(ManagerAbortedError):
        info = await asyncio.wait_for(waiter, TIMEOUT)
        assert info.exit_status == ExitStatus(None, signal.SIGTERM, False)
    assert process_dirs(work_dir) == []


async def test_abort_while_a_kill_is_in_progress(work_dir: Path) -> None:
    handle = ProcessManager.spawn(work_dir)
    process_id = await handle.spawn(sleep_cmd())
    kill, abort = await asyncio.gather(
        handle.kill(process_id), handle.abort(), return_exceptions=True
    )
    assert kill is None
    assert abort is None
    assert process_dirs(work_dir) == []


async def test_clone_shares_the_manager(manager: ProcessManagerHandle) -> None:
    other = manager.clone()
    process_id = await other.spawn(sleep_cmd())
    assert await manager.list_processes() == [process_id]
    await manager.kill(process_id)
    assert await other.list_processes() == []


# --- cancellation ------------------------------------------------------------------------------


@pytest.mark.parametrize("yields", range(6))
async def test_cancelled_spawn_leaves_no_process(
    manager: ProcessManagerHandle, work_dir: Path, yields: int
) -> None:
    """Cancel a spawn after ``yields`` turns of the loop: posted, handled, answered, ..."""
    before = children_of_self()
    task = asyncio.ensure_future(manager.spawn(sleep_cmd()))
    for _ in range(yields):
        await asyncio.sleep(0)  # one turn of the loop, not a wait for a condition
    task.cancel()
    try:
        process_id = await task
    except asyncio.CancelledError:
        pass
    else:  # the spawn finished before the cancel: the caller got the id and owns the process
        await manager.kill(process_id)
    # Every request is handled in order, so a kill of the orphan is already under way...
    assert await manager.list_processes() == []
    # ...and each new child of ours exits within the bound.
    for pid in children_of_self() - before:
        await wait_exited(pid)
    await manager.abort()  # waits for every kill in progress
    assert process_dirs(work_dir) == []


async def test_cancelled_wait_leaves_the_process_alone(manager: ProcessManagerHandle) -> None:
    process_id = await manager.spawn(sleep_cmd())
    task = asyncio.ensure_future(manager.wait(process_id))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await manager.get_process_info(process_id)).is_running
