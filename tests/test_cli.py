"""The ``corral`` command, run as a real program on real processes.

``corral run`` is started with ``python -m corral.cli`` in a session of its own, so that every
process it leaves behind can be found afterwards: its children stay in that session (corral's
guardian makes its own). The children print their pids into their output, and each must be gone
once the CLI has exited. Nothing sleeps to wait for a condition: the children synchronize
through a FIFO, and the test reads the CLI's output with a bounded wait.
"""

from __future__ import annotations

import os
import re
import selectors
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import pid_alive, stat_fields

from corral._cli_run import load_specs
from corral.cli import main

CLI = [sys.executable, "-m", "corral.cli"]
PYTHON = shlex.quote(sys.executable)

#: Bound for a CLI run: generous, never reached when things work.
RUN_TIMEOUT = 30.0

#: A child for the Procfiles here. ``child.py NAME [options]`` prints ``NAME pid N``, then
#: ``--lines K`` lines ``NAME line i`` and ``--stderr`` one line to stderr; ``--notify``
#: writes NAME to the FIFO ``sync``, ``--wait N`` reads N names from it; then it exits with
#: ``--exit CODE``, or with ``--block`` waits until it is signalled (``--ignore-term``:
#: SIGTERM is ignored, so only SIGKILL ends it).
CHILD = """\
import argparse, os, signal, sys
parser = argparse.ArgumentParser()
parser.add_argument("name")
parser.add_argument("--lines", type=int, default=0)
parser.add_argument("--stderr", action="store_true")
parser.add_argument("--notify", action="store_true")
parser.add_argument("--wait", type=int, default=0)
parser.add_argument("--exit", type=int, default=0)
parser.add_argument("--block", action="store_true")
parser.add_argument("--ignore-term", action="store_true")
args = parser.parse_args()
if args.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(f"{args.name} pid {os.getpid()}", flush=True)
for i in range(1, args.lines + 1):
    print(f"{args.name} line {i}", flush=True)
if args.stderr:
    print(f"{args.name} says something on stderr", file=sys.stderr, flush=True)
if args.notify:
    with open("sync", "w") as fifo:
        fifo.write(args.name + "\\n")
seen = 0
while seen < args.wait:
    with open("sync") as fifo:  # EOF whenever no writer is left: open it again
        seen += sum(1 for _ in fifo)
if args.block:
    while True:
        signal.pause()
sys.exit(args.exit)
"""

#: ``HH:MM:SS name | text``
LINE = re.compile(r"^\d\d:\d\d:\d\d (?P<name>\S+) +\| (?P<text>.*)$")


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A dir with the child script and the FIFO the children meet at."""
    (tmp_path / "child.py").write_text(CHILD)
    os.mkfifo(tmp_path / "sync")
    return tmp_path


def child(name: str, *options: str) -> str:
    """A Procfile command line running the child script."""
    return f"{PYTHON} child.py {name} {' '.join(options)}".strip()


def write_procfile(directory: Path, **commands: str) -> Path:
    path = directory / "Procfile"
    path.write_text("".join(f"{name}: {command}\n" for name, command in commands.items()))
    return path


def start_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.Popen[str]:
    """``corral ARGS...`` in a session of its own, its stdout piped."""
    return subprocess.Popen(
        [*CLI, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        start_new_session=True,
    )


def run_cli(*args: str | Path, cwd: Path | None = None) -> tuple[int, str, str, int]:
    """Run ``corral ARGS...`` to its end: exit status, stdout, stderr, and its pid."""
    cli = start_cli(*args, cwd=cwd)
    try:
        out, err = cli.communicate(timeout=RUN_TIMEOUT)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    return cli.returncode, out, err, cli.pid


def read_until(cli: subprocess.Popen[str], wanted: re.Pattern[str], count: int) -> str:
    """Read the CLI's stdout until ``count`` lines match ``wanted`` (bounded)."""
    assert cli.stdout is not None
    fd = cli.stdout.fileno()
    os.set_blocking(fd, False)
    deadline = time.monotonic() + RUN_TIMEOUT
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while len(wanted.findall(data.decode())) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for {count} x {wanted.pattern!r} in {data!r}"
            if selector.select(left):
                chunk = os.read(fd, 65536)
                assert chunk, f"the CLI closed its stdout early: {data!r}"
                data += chunk
    os.set_blocking(fd, True)
    return data.decode()


def prefixed(output: str) -> list[tuple[str, str]]:
    """(name, text) of each output line, checking that every line has the prefix."""
    lines = []
    for line in output.splitlines():
        match = LINE.match(line)
        assert match, f"a line without the 'HH:MM:SS name | ' prefix: {line!r}"
        lines.append((match["name"], match["text"]))
    return lines


def child_pids(output: str) -> dict[str, int]:
    """The pids the children printed (``NAME pid N``)."""
    return {m[1]: int(m[2]) for m in re.finditer(r"\| (\S+) pid (\d+)$", output, re.M)}


def session_members(session: int) -> list[int]:
    """Live processes of ``session`` (zombies left to init do not count)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(entry)
            if fields is not None and int(fields[3]) == session and fields[0] not in ("Z", "X"):
                members.append(int(entry))
    return members


def assert_nothing_left(pids: dict[str, int] | list[int], session: int) -> None:
    pids = list(pids.values()) if isinstance(pids, dict) else pids
    alive = [pid for pid in pids if pid_alive(pid)]
    assert not alive, f"children left alive: {alive}"
    assert session_members(session) == [], "processes left in the CLI's session"


# --- corral run --------------------------------------------------------------------------------


def test_run_interleaves_prefixed_output_and_exits_with_the_failure(app: Path) -> None:
    procfile = write_procfile(
        app,
        fails=child("fails", "--lines 1 --wait 2 --exit 3"),
        web=child("web", "--lines 3 --stderr --notify --block"),
        worker=child("worker", "--lines 2 --notify --block"),
    )
    status, out, err, session = run_cli("run", procfile, "--no-color")

    assert status == 3, err
    assert "\x1b[" not in out
    lines = prefixed(out)
    texts = {name: [text for n, text in lines if n == name] for name, _ in lines}
    assert [t for t in texts["web.1"] if "line" in t] == [f"web line {i}" for i in (1, 2, 3)]
    assert "web says something on stderr" in texts["web.1"]  # stderr is shown too
    assert [t for t in texts["worker.1"] if "line" in t] == ["worker line 1", "worker line 2"]
    assert "fails line 1" in texts["fails.1"]
    assert "fails.1 exited: exit code 3" in texts["system"]
    assert any(t.startswith("web.1 stopped") for t in texts["system"])
    assert any(t.startswith("worker.1 stopped") for t in texts["system"])
    # Aligned: every '|' is in the same column.
    assert len({line.index("|") for line in out.splitlines()}) == 1
    pids = child_pids(out)
    assert set(pids) == {"fails", "web", "worker"}
    assert_nothing_left(pids, session)


def test_ctrl_c_terminates_everything_within_the_grace_period(app: Path) -> None:
    grace = 1.0
    procfile = write_procfile(
        app,
        polite=child("polite", "--block"),
        stubborn=child("stubborn", "--ignore-term --block"),  # needs the SIGKILL
    )
    cli = start_cli("run", procfile, "--no-color", "--grace", grace)
    try:
        seen = read_until(cli, re.compile(r"\| \S+ pid \d+$", re.M), 2)
        cli.send_signal(signal.SIGINT)
        started = time.monotonic()
        rest, err = cli.communicate(timeout=grace + 10)
        took = time.monotonic() - started
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    out = seen + rest
    assert cli.returncode == 128 + signal.SIGINT, err
    assert took < grace + 5
    system = [text for name, text in prefixed(out) if name == "system"]
    assert "SIGINT received" in system
    assert "polite.1 stopped (killed by SIGTERM)" in system
    assert "stubborn.1 stopped (killed by SIGKILL)" in system
    pids = child_pids(out)
    assert set(pids) == {"polite", "stubborn"}
    assert_nothing_left(pids, cli.pid)


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("# ok\nweb python -m http.server\n", 2, "no ':'"),
        ("web:\n", 1, "empty command for 'web'"),
        ("web:    \n", 1, "empty command"),
        ("web: sleep 1\n\nworker: sleep 1\nweb: sleep 2\n", 4, "duplicate process name 'web'"),
        ("web: echo 'no closing quote\n", 1, "No closing quotation"),
        (": sleep 1\n", 1, "missing process name"),
        ("my web: sleep 1\n", 1, "bad process name 'my web'"),
    ],
    ids=["no colon", "empty command", "blank command", "duplicate", "quote", "no name", "name"],
)
def test_bad_procfile_lines_are_reported_with_their_line(
    tmp_path: Path, content: str, line: int, message: str
) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text(content)
    status, out, err, _ = run_cli("run", procfile)
    assert status == 2
    assert out == ""
    assert f"{procfile}:{line}: " in err
    assert message in err


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ('[process.web]\ncmd = "sleep 1"\nrestart = "sometimes"\n', 3, "restart must be"),
        ('[process.web]\ncmd = "sleep 1"\n\n[process.db]\ncmdd = "x"\n', 5, "unknown key 'cmdd'"),
        ("[process.web]\ncmd = 'sleep 1\n", 2, "not valid TOML"),
        ("[process.web]\ncmd = []\n", 2, "empty cmd"),
        ('[process.web]\ncmd = "a"\nmax_restarts = 2\n', 3, "needs restart"),
        ('[process.web]\ncmd = "a"\nenv = { A = [1] }\n', 3, "env A"),
        ('[process.web]\ncmd = "a"\nrestart = "always"\nbackoff_cap = 0\n', 4, "backoff_cap"),
        ('[process.web]\ncmd = "a"\ncwd = "missing"\n', 3, "no such directory"),
        ('[process.web]\nenv = { A = "1" }\n', 1, "needs 'cmd'"),
    ],
    ids=["restart", "unknown", "syntax", "empty", "tuning", "env", "backoff", "cwd", "no cmd"],
)
def test_bad_toml_is_reported_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, line: int, message: str
) -> None:
    path = tmp_path / "corral.toml"
    path.write_text(content)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:{line}: " in err
    assert message in err


def test_toml_env_cwd_and_restart_policy(app: Path) -> None:
    (app / "data").mkdir()
    flaky = (
        "import os, sys\n"
        "with open('runs', 'a') as f: f.write('x')\n"
        "runs = os.path.getsize('runs')\n"
        "print(f'run {runs} in {os.getcwd()} with GREETING={os.environ[\"GREETING\"]}')\n"
        "sys.exit(0 if runs == 3 else 1)\n"
    )
    (app / "flaky.py").write_text(flaky)
    config = app / "corral.toml"
    config.write_text(
        f"""
[process.flaky]
cmd = [{sys.executable!r}, "../flaky.py"]
cwd = "data"
env = {{ GREETING = "hello", ANSWER = 42 }}
restart = "on-failure"
max_restarts = 5
backoff_initial = 0.01
backoff_cap = 0.05

[process.server]
cmd = "{PYTHON} child.py server --block"
"""
    )
    status, out, err, session = run_cli("run", config, "--no-color")
    assert status == 0, err  # the first process down succeeded, after two restarts
    lines = prefixed(out)
    runs = [text for name, text in lines if name == "flaky.1" and text.startswith("run ")]
    assert runs == [f"run {i} in {app / 'data'} with GREETING=hello" for i in (1, 2, 3)]
    system = [text for name, text in lines if name == "system"]
    assert "flaky.1 exited: exit code 1; restart 1 in 0.01 s" in system
    assert "flaky.1 exited: exit code 1; restart 2 in 0.02 s" in system
    assert "flaky.1 exited: exit code 0" in system
    assert "server.1 stopped (killed by SIGTERM)" in system
    assert_nothing_left(child_pids(out), session)


def test_only_runs_the_named_processes_and_concurrency_copies(app: Path) -> None:
    procfile = write_procfile(
        app,
        main=child("main", "--wait 2"),
        skipped=child("skipped", "--lines 1"),
        helper=child("helper", "--notify --block"),
    )
    status, out, err, session = run_cli(
        "run", procfile, "--only", "main", "--only", "helper", "-c", "helper=2", "--no-color"
    )
    assert status == 0, err
    names = {name for name, _ in prefixed(out)}
    assert names == {"system", "main.1", "helper.1", "helper.2"}
    assert "skipped" not in out
    assert_nothing_left([], session)


def test_only_an_unknown_name_is_an_error(app: Path) -> None:
    procfile = write_procfile(app, web=child("web"))
    status, _, err, _ = run_cli("run", procfile, "--only", "wbe")
    assert status == 2
    assert "no process named 'wbe'" in err


def test_logs_dir_keeps_each_process_logs(app: Path) -> None:
    procfile = write_procfile(
        app,
        talker=child("talker", "--lines 3 --stderr --notify --block"),
        done=child("done", "--wait 1"),
    )
    logs = app / "logs"
    status, out, err, session = run_cli("run", procfile, "--logs-dir", logs, "--no-color")
    assert status == 0, err
    pid = child_pids(out)["talker"]
    stdout_log = (logs / "talker.1.stdout.log").read_text().splitlines()
    assert stdout_log == [f"talker pid {pid}", "talker line 1", "talker line 2", "talker line 3"]
    stderr_log = (logs / "talker.1.stderr.log").read_text()
    assert stderr_log == "talker says something on stderr\n"
    assert (logs / "done.1.stdout.log").read_text().startswith("done pid ")
    assert_nothing_left(child_pids(out), session)


def test_status_prints_the_table_at_the_end_when_not_a_terminal(app: Path) -> None:
    procfile = write_procfile(
        app, done=child("done", "--wait 1 --exit 4"), server=child("server", "--notify --block")
    )
    status, out, err, session = run_cli("run", procfile, "--status", "--no-color")
    assert status == 4, err
    table = out[out.index("corral run") :]
    rows = {line.split()[1]: line for line in table.splitlines() if ".1 " in line}
    assert set(rows) == {"done.1", "server.1"}
    assert re.search(r"exited +│ +0 │ exit code 4", rows["done.1"])
    assert re.search(r"stopped +│ +0 │ killed by SIGTERM", rows["server.1"])
    assert_nothing_left(child_pids(out), session)


def test_a_program_that_cannot_start_stops_the_run(app: Path) -> None:
    procfile = write_procfile(app, ghost="no-such-program-for-corral-tests", web=child("web"))
    status, out, err, session = run_cli("run", procfile, "--no-color")
    assert status == 127, err
    assert "ghost.1 cannot start 'no-such-program-for-corral-tests'" in out
    assert_nothing_left([], session)


def test_default_file_is_the_procfile_of_the_current_dir(app: Path) -> None:
    write_procfile(app, hello=child("hello", "--lines 1"))
    status, out, err, _ = run_cli("run", "--no-color", cwd=app)
    assert status == 0, err
    assert "hello line 1" in out


def test_the_examples_are_valid() -> None:
    examples = Path(__file__).parent.parent / "examples"
    assert [s.name for s in load_specs(examples / "Procfile")] == ["web", "clock", "chatty"]
    specs = {s.name: s for s in load_specs(examples / "corral.toml")}
    assert specs["flaky"].restart.max_restarts == 3
    assert specs["clock"].env == {"GREETING": "hello"}


# --- corral demo -------------------------------------------------------------------------------


def test_demo_runs_to_completion_and_leaves_nothing_behind() -> None:
    started = time.monotonic()
    status, out, err, session = run_cli("demo")
    assert status == 0, err
    assert time.monotonic() - started < RUN_TIMEOUT
    assert "\x1b[" not in out  # not a terminal: plain text
    found = re.search(r"working dir (\S+)", out)
    assert found, out
    assert not Path(found[1]).exists()
    for step in ("pool", "messages both ways", "scoped handle", "restart policy", "typed errors"):
        assert step in out
    assert "children alive: 0" in out
    assert_nothing_left([], session)


def test_demo_count_option() -> None:
    status, out, err, _ = run_cli("demo", "-n", "6")
    assert status == 0, err
    assert "6 spawned" in out
