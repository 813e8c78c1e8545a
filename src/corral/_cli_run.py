"""``corral run``: run the processes of a Procfile or a ``corral.toml`` together, like honcho.

Two file formats:

* a **Procfile**: one ``name: command line`` per line; ``#`` starts a comment line; blank lines
  are skipped. The command line is split like a shell would split words (``shlex.split``), but
  no shell runs it: ``$HOME``, ``|`` and ``>`` stay literal. Who wants a shell writes one:
  ``web: sh -c 'exec gunicorn app:app --bind "0.0.0.0:$PORT"'``.
* a **corral.toml**: one ``[process.NAME]`` table per process, with ``cmd`` (a string split the
  same way, or a list of strings), ``env`` (a table), ``cwd`` (relative to the file),
  ``restart`` (``"never"``, ``"on-failure"`` or ``"always"``) and, with a restart,
  ``max_restarts``, ``backoff_initial`` and ``backoff_cap`` (seconds).

Processes run in the directory holding the file unless ``cwd`` says otherwise, with the CLI's
environment plus their ``env``, and ``PYTHONUNBUFFERED=1`` unless that is set already (a Python
child writing to a file would otherwise hold its lines back for a long time). A mistake in the
file is reported as ``FILE:LINE: what is wrong`` with exit status 2, before anything starts.

How the output gets to the terminal: each process logs stdout and stderr to its own files in
the manager's working dir (``LoggingType.STDOUT_AND_STDERR``); the CLI follows both files with
``follow_logs`` and prints every line as ``12:00:01 web.1  | line``, the prefix colored per
process and aligned. The time is when the CLI read the line. The lines of each stream keep their
order; between a process's stdout and its stderr the order is only as close as the two reads
are. Lines are gathered and written once per turn of the event loop, so a chatty child costs a
write per batch, not per line.

How it ends: when the first process goes down by itself (after the restarts its policy allows),
or on SIGINT (Ctrl-C), SIGTERM or SIGHUP, every other process gets SIGTERM, then SIGKILL after
``--grace`` seconds; a second Ctrl-C kills at once. The exit status is that of the first
process that failed by itself (its exit code, or 128 + the signal that killed it), else 128 +
the signal that stopped ``corral run`` (130 for Ctrl-C), else 0. A process that cannot start at
all (program not found) counts as a failure with status 127.

``--only NAME`` runs a subset; ``-c NAME=N`` runs N copies, shown as ``NAME.1`` to ``NAME.N``
(one copy is ``NAME.1``, as in honcho). ``--status`` keeps a live table of the processes (pid,
state, restarts, last exit) under the output, redrawn on each of the manager's events
(``subscribe_events``); when stdout is not a terminal, the table is printed once, at the end.

``--logs-dir DIR`` keeps the logs by copying each line the CLI prints, without prefix, into
``DIR/NAME.stdout.log`` and ``DIR/NAME.stderr.log`` (appended to: earlier runs' logs stay). The
manager's own log files cannot be kept instead: they live in each process's private dir, which
corral deletes when the process is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ._broadcast import ItemStream
from ._errors import CorralError, KillProcessError, ProcessNotFoundError, SpawnProcessError
from ._handle import ProcessManagerHandle
from ._manager import ProcessManager
from ._model import (
    Backoff,
    Cmd,
    CmdOptions,
    ExitStatus,
    LoggingType,
    ProcessId,
    ProcessInfo,
    RestartMode,
    RestartPolicy,
)
from ._supervision import EventKind, ProcessEvent

__all__ = [
    "ConfigError",
    "ProcessSpec",
    "RunOptions",
    "default_file",
    "load_specs",
    "parse_procfile",
    "parse_toml",
    "run",
]

#: What a process name may hold (as in honcho); the CLI adds ``.1``, ``.2`` per copy.
_NAME = re.compile(r"[A-Za-z0-9_-]+")

#: Prefix colors, one per process in file order, as honcho cycles them.
_COLORS = (
    "cyan",
    "yellow",
    "green",
    "magenta",
    "red",
    "blue",
    "bright_cyan",
    "bright_yellow",
    "bright_green",
    "bright_magenta",
    "bright_red",
    "bright_blue",
)

#: The signals that stop ``corral run``.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: The status of a process that cannot start at all, like a shell's "command not found".
_NOT_STARTED = 127

#: Longest wait for the last lines of a process's logs once it is down.
_DRAIN_TIMEOUT = 5.0


class ConfigError(Exception):
    """A Procfile or corral.toml that cannot be run: the message names the file and line."""


# --- the files ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessSpec:
    """One process of a Procfile or corral.toml, as it will be started."""

    #: The name in the file (copies are shown as ``name.1``, ``name.2``, ...).
    name: str
    #: Program and arguments.
    argv: tuple[str, ...]
    #: Where it runs.
    cwd: Path
    #: Variables added to the environment.
    env: Mapping[str, str] = field(default_factory=dict)
    #: When it is restarted after it ends by itself.
    restart: RestartPolicy = field(default_factory=RestartPolicy)

    def options(self, environ: Mapping[str, str] = os.environ) -> CmdOptions:
        """The :class:`CmdOptions` it runs with: both streams logged, its cwd, env and policy."""
        env = dict(self.env)
        if "PYTHONUNBUFFERED" not in environ and "PYTHONUNBUFFERED" not in env:
            env["PYTHONUNBUFFERED"] = "1"
        return CmdOptions(
            current_dir=self.cwd,
            envs=env,
            logging_type=LoggingType.STDOUT_AND_STDERR,
            restart_policy=self.restart,
        )


def default_file(directory: Path = Path()) -> Path:
    """``Procfile`` if ``directory`` has one, else ``corral.toml`` if it has one.

    Raises :class:`ConfigError` when there is neither.

    >>> default_file()  # doctest: +SKIP
    PosixPath('Procfile')
    """
    for name in ("Procfile", "corral.toml"):
        candidate = directory / name
        if candidate.exists():
            return candidate
    where = "the current directory" if directory == Path() else str(directory)
    raise ConfigError(f"no Procfile or corral.toml in {where}: name the file to run")


def load_specs(path: Path) -> list[ProcessSpec]:
    """Read and check a Procfile, or a TOML file if its name ends in ``.toml``.

    >>> [spec.name for spec in load_specs(Path("Procfile"))]  # doctest: +SKIP
    ['web', 'worker']
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    cwd = path.parent.absolute()
    specs = (
        parse_toml(text, path, cwd) if path.suffix == ".toml" else parse_procfile(text, path, cwd)
    )
    if not specs:
        raise ConfigError(f"{path}: no process defined")
    return specs


def parse_procfile(text: str, path: Path, cwd: Path) -> list[ProcessSpec]:
    """The processes of a Procfile: ``name: command line`` per line, ``#`` comment lines.

    >>> [s.argv for s in parse_procfile("web: python -m http.server 'a b'", Path("P"), Path("/"))]
    [('python', '-m', 'http.server', 'a b')]
    >>> parse_procfile("web python", Path("Procfile"), Path("/"))
    Traceback (most recent call last):
    ...
    corral._cli_run.ConfigError: Procfile:1: expected 'name: command', found no ':' in 'web python'
    """
    specs: list[ProcessSpec] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        name, colon, command = line.partition(":")
        name = name.strip()
        if not colon:
            raise ConfigError(f"{where}: expected 'name: command', found no ':' in {line!r}")
        _check_name(name, where)
        if name in seen:
            raise ConfigError(
                f"{where}: duplicate process name {name!r} (first defined on line {seen[name]})"
            )
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise ConfigError(
                f"{where}: cannot split the command of {name!r}: {exc} in {command.strip()!r}"
            ) from None
        if not argv:
            raise ConfigError(f"{where}: empty command for {name!r}")
        seen[name] = number
        specs.append(ProcessSpec(name, tuple(argv), cwd))
    return specs


_TOML_KEYS = ("cmd", "env", "cwd", "restart", "max_restarts", "backoff_initial", "backoff_cap")
_RESTART_MODES = {
    "never": RestartMode.NEVER,
    "on-failure": RestartMode.ON_FAILURE,
    "on_failure": RestartMode.ON_FAILURE,
    "always": RestartMode.ALWAYS,
}


def parse_toml(text: str, path: Path, cwd: Path) -> list[ProcessSpec]:
    """The processes of a corral.toml: one ``[process.NAME]`` table each.

    >>> toml = '[process.web]\\ncmd = ["python", "-m", "http.server"]\\nrestart = "always"\\n'
    >>> spec = parse_toml(toml, Path("corral.toml"), Path("/srv"))[0]
    >>> spec.argv, spec.restart.mode.value
    (('python', '-m', 'http.server'), 'always')
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's error has no line attribute: its message ends with the position.
        found = re.search(r"\(at line (\d+), column \d+\)$", str(exc))
        if found:
            where = f"{path}:{found.group(1)}"
        elif str(exc).endswith("(at end of document)"):
            where = f"{path}:{max(1, len(text.splitlines()))}"
        else:
            where = str(path)
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    locate = _TomlLocator(text, path)
    for key in data:
        if key != "process":
            raise ConfigError(
                f"{locate.top(key)}: unknown key {key!r}: processes go in [process.NAME] tables"
            )
    processes = data.get("process", {})
    if not isinstance(processes, dict):
        raise ConfigError(f"{locate.top('process')}: 'process' must hold [process.NAME] tables")
    return [_toml_spec(name, table, locate, cwd) for name, table in processes.items()]


def _toml_spec(name: str, table: object, locate: _TomlLocator, base: Path) -> ProcessSpec:
    def fail(message: str, key: str | None = None) -> ConfigError:
        return ConfigError(f"{locate.at(name, key)}: [process.{name}] {message}")

    if not _NAME.fullmatch(name):
        raise fail("bad process name: use letters, digits, '_' and '-'")
    if not isinstance(table, dict):
        raise fail("must be a table with at least 'cmd'")
    for key in table:
        if key not in _TOML_KEYS:
            raise fail(f"unknown key {key!r} (known: {', '.join(_TOML_KEYS)})", key)

    cmd = table.get("cmd")
    if cmd is None:
        raise fail("needs 'cmd', a command line or a list of strings")
    if isinstance(cmd, str):
        try:
            argv = shlex.split(cmd)
        except ValueError as exc:
            raise fail(f"cannot split cmd: {exc} in {cmd!r}", "cmd") from None
    elif isinstance(cmd, list) and all(isinstance(a, str) for a in cmd):
        argv = list(cmd)
    else:
        raise fail(f"cmd must be a string or a list of strings, not {cmd!r}", "cmd")
    if not argv or not argv[0]:
        raise fail("empty cmd", "cmd")

    env_table = table.get("env", {})
    if not isinstance(env_table, dict):
        raise fail("env must be a table of NAME = value", "env")
    env: dict[str, str] = {}
    for var, value in env_table.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise fail(f"env {var}: must be a string or a number, not {value!r}", "env")
        env[var] = str(value)

    cwd = base
    if "cwd" in table:
        raw = table["cwd"]
        if not isinstance(raw, str) or not raw:
            raise fail(f"cwd must be a path, not {raw!r}", "cwd")
        cwd = (base / Path(raw).expanduser()).resolve()
        if not cwd.is_dir():
            raise fail(f"cwd {raw!r}: no such directory ({cwd})", "cwd")

    restart = _toml_restart(table, fail)
    spec = ProcessSpec(name, tuple(argv), cwd, env, restart)
    try:
        spec.options()  # CmdOptions checks the rest (e.g. a NUL in env)
    except CorralError as exc:
        raise fail(str(exc)) from None
    return spec


def _toml_restart(table: dict[str, Any], fail: Any) -> RestartPolicy:
    mode_name = table.get("restart", "never")
    mode = _RESTART_MODES.get(mode_name) if isinstance(mode_name, str) else None
    if mode is None:
        raise fail(
            f"restart must be 'never', 'on-failure' or 'always', not {mode_name!r}", "restart"
        )
    tuning = [key for key in ("max_restarts", "backoff_initial", "backoff_cap") if key in table]
    if mode is RestartMode.NEVER:
        if tuning:
            raise fail(f"{tuning[0]} needs restart = 'on-failure' or 'always'", tuning[0])
        return RestartPolicy()
    max_restarts = table.get("max_restarts", 5)
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise fail(f"max_restarts must be an integer >= 0, not {max_restarts!r}", "max_restarts")
    delays: dict[str, float] = {}
    for key, field_name in (("backoff_initial", "initial"), ("backoff_cap", "cap")):
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise fail(f"{key} must be a number of seconds > 0, not {value!r}", key)
            delays[field_name] = float(value)
    if "initial" in delays and "cap" not in delays:
        delays["cap"] = max(delays["initial"], Backoff().cap)
    try:
        return RestartPolicy(mode, max_restarts, backoff=Backoff(**delays))
    except CorralError as exc:
        raise fail(str(exc), tuning[-1] if tuning else "restart") from None


class _TomlLocator:
    """Finds the line of a table or key in TOML text, for error messages (best effort)."""

    def __init__(self, text: str, path: Path) -> None:
        self._lines = text.splitlines()
        self._path = path

    def top(self, key: str) -> str:
        """Where a top-level key or table is."""
        pattern = re.compile(rf"^\s*(\[\s*)?{_toml_key(key)}\s*[=.\]]")
        return self._where(next(self._matches(pattern, 0, len(self._lines)), None))

    def at(self, name: str, key: str | None) -> str:
        """Where ``[process.NAME]``, or its ``key``, is written."""
        header = rf"^\s*\[\s*process\s*\.\s*{_toml_key(name)}\s*"
        if key is not None:  # [process.NAME.KEY] (e.g. env as a table of its own)
            line = next(self._matches(re.compile(rf"{header}\.\s*{_toml_key(key)}\s*\]")), None)
            if line is not None:
                return self._where(line)
        start = next(self._matches(re.compile(rf"{header}\]")), None)
        if start is None or key is None:
            return self._where(start)
        end = next(self._matches(re.compile(r"^\s*\["), start + 1), len(self._lines))
        pattern = re.compile(rf"^\s*{_toml_key(key)}\s*[=.]")
        return self._where(next(self._matches(pattern, start + 1, end), start))

    def _matches(self, pattern: re.Pattern[str], start: int = 0, end: int = -1) -> Iterator[int]:
        end = len(self._lines) if end < 0 else end
        return (i for i in range(start, end) if pattern.match(self._lines[i]))

    def _where(self, index: int | None) -> str:
        return str(self._path) if index is None else f"{self._path}:{index + 1}"


def _toml_key(key: str) -> str:
    """A regex for ``key`` written bare or quoted."""
    k = re.escape(key)
    return rf"(?:{k}|\"{k}\"|'{k}')"


def _check_name(name: str, where: str) -> None:
    if not name:
        raise ConfigError(f"{where}: missing process name before ':'")
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: bad process name {name!r}: use letters, digits, '_' and '-'")


# --- running ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    """How ``corral run`` runs the processes (its command-line options)."""

    #: Seconds between SIGTERM and SIGKILL when stopping.
    grace: float = 5.0
    #: Copies to run per process name (1 when absent).
    concurrency: Mapping[str, int] = field(default_factory=dict)
    #: Also keep each process's logs here.
    logs_dir: Path | None = None
    #: Show a live status table.
    status: bool = False


def run(specs: Sequence[ProcessSpec], options: RunOptions, console: Console | None = None) -> int:
    """Run ``specs`` until the first goes down or a stop signal; return the exit status.

    Output goes to ``console`` (colors as it allows; by default rich's own choice). Raises
    :class:`ConfigError` if a log file in ``options.logs_dir`` cannot be opened.

    >>> run(load_specs(Path("Procfile")), RunOptions(grace=2))  # doctest: +SKIP
    130
    """
    console = Console(highlight=False, soft_wrap=True) if console is None else console
    return asyncio.run(_Runner(specs, options, console).run())


@dataclass(eq=False)
class _Proc:
    """One copy of a spec, as ``corral run`` sees it."""

    name: str
    spec: ProcessSpec
    id: ProcessId | None = None
    #: The OS pid of the latest run.
    pid: int | None = None
    restarts: int = 0
    #: A restart is scheduled.
    restarting: bool = False
    #: How the latest run ended.
    last_exit: ExitStatus | None = None
    #: The final info, once the process is down for good.
    info: ProcessInfo | None = None
    #: Stopped by ``corral run`` (not ended by itself).
    stopped: bool = False
    #: The tasks printing its stdout and stderr.
    followers: list[asyncio.Task[None]] = field(default_factory=list)

    async def drained(self) -> None:
        """Wait (bounded) until its last lines are printed: its followers end after its exit."""
        if self.followers:
            await asyncio.wait(self.followers, timeout=_DRAIN_TIMEOUT)


class _Output:
    """Prints lines as ``12:00:01 web.1  | text``, batched: one write per loop turn.

    Also tees each line into ``--logs-dir`` files. With a live status table the batch goes
    through the console (which prints above the table); otherwise straight to the file.
    """

    def __init__(
        self, console: Console, names: Sequence[str], logs_dir: Path | None, live: bool
    ) -> None:
        self._console = console
        self._file: IO[str] = console.file
        self._live = live
        width = max(len(n) for n in [*names, "system"])
        self._prefix: dict[str, tuple[str, str]] = {}
        for i, name in enumerate(names):
            start, end = _style_codes(console, _COLORS[i % len(_COLORS)])
            self._prefix[name] = (start, f" {name:<{width}} |{end} ")
        start, end = _style_codes(console, "bold")
        self._prefix["system"] = (start, f" {'system':<{width}} |{end} ")
        self._pending: list[str] = []
        self._scheduled = False
        self._clock = (0, "")
        self._tees: dict[tuple[str, str], IO[str]] = {}
        self._tee_pending: set[IO[str]] = set()
        #: Set when stdout is gone (a closed pipe): the run stops.
        self.broken = asyncio.Event()
        if logs_dir is not None:
            for name in names:
                for stream in ("stdout", "stderr"):
                    path = logs_dir / f"{name}.{stream}.log"
                    try:
                        self._tees[name, stream] = path.open("a", encoding="utf-8")
                    except OSError as exc:
                        self.close()
                        raise ConfigError(
                            f"--logs-dir: cannot open {path}: {exc.strerror or exc}"
                        ) from None

    def _now(self) -> str:
        second = int(time.time())
        if second != self._clock[0]:
            self._clock = (second, time.strftime("%H:%M:%S", time.localtime(second)))
        return self._clock[1]

    def line(self, name: str, text: str, stream: str | None = None) -> None:
        """Queue one line of ``name`` (``stream`` given: a child's line, also teed)."""
        start, rest = self._prefix[name]
        self._pending.append(f"{start}{self._now()}{rest}{text}\n")
        tee = self._tees.get((name, stream)) if stream is not None else None
        if tee is not None:
            tee.write(text + "\n")
            self._tee_pending.add(tee)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def system(self, text: str) -> None:
        """Queue a line of corral's own (starts, exits, restarts, stopping)."""
        self.line("system", text)

    def flush(self) -> None:
        """Write what is queued."""
        self._scheduled = False
        for tee in self._tee_pending:
            tee.flush()
        self._tee_pending.clear()
        if not self._pending:
            return
        data = "".join(self._pending)
        self._pending.clear()
        if self.broken.is_set():
            return
        try:
            if self._live:
                self._console.print(Text.from_ansi(data[:-1]), soft_wrap=True)
            else:
                self._file.write(data)
                self._file.flush()
        except BrokenPipeError:
            self.broken.set()
            _silence_stdout()

    def close(self) -> None:
        """Write what is left and close the tee files."""
        self.flush()
        for tee in self._tees.values():
            tee.close()


def _style_codes(console: Console, style: str) -> tuple[str, str]:
    """The escape codes that start and end ``style`` on ``console`` ("" without color)."""
    with console.capture() as capture:
        console.print(Text("\0", style=style), end="")
    start, _, end = capture.get().partition("\0")
    return start, end


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush cannot fail."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


class _Runner:
    """One ``corral run``: start, print, watch, stop, report."""

    def __init__(self, specs: Sequence[ProcessSpec], options: RunOptions, console: Console) -> None:
        self.options = options
        self.procs = [
            _Proc(f"{spec.name}.{copy}", spec)
            for spec in specs
            for copy in range(1, options.concurrency.get(spec.name, 1) + 1)
        ]
        self.by_id: dict[ProcessId, _Proc] = {}
        self.console = console
        self.out = _Output(
            self.console, [p.name for p in self.procs], options.logs_dir, options.status
        )
        #: Processes that went down by themselves, in the order they did, before the stop.
        self.ended: list[_Proc] = []
        self.stopping = False
        self.stop = asyncio.Event()
        self.stop_signal: int | None = None
        self.signals = 0
        self.live: Live | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        #: One task per started process, waiting for it to go down by itself.
        self.waiters: list[asyncio.Task[None]] = []
        self.handle: ProcessManagerHandle | None = None

    # --- the run --------------------------------------------------------------------------

    async def run(self) -> int:
        """The whole run; returns the exit status."""
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            with self._status_display():
                async with ProcessManager.spawn() as handle:
                    self.handle = handle
                    await self._run(handle)
        finally:
            for sig in _STOP_SIGNALS:
                loop.remove_signal_handler(sig)
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            self.out.close()
        return self._exit_status()

    async def _run(self, handle: ProcessManagerHandle) -> None:
        self._start(self._watch_events(await handle.subscribe_events()))
        self._start(self._stop_on_broken_pipe())
        for proc in self.procs:
            if self.stop.is_set():
                break
            await self._spawn(handle, proc)
        self._refresh_status()
        await self.stop.wait()
        self.stopping = True
        running = [p for p in self.procs if p.id is not None and p.info is None]
        if running:
            grace = self.options.grace
            self.out.system(f"sending SIGTERM to all processes (SIGKILL after {grace:g} s)")
            self._refresh_status()
            await asyncio.gather(*(self._terminate(handle, p) for p in running))
        if self.waiters:  # every process is down: they end at once
            await asyncio.wait(self.waiters)
        self._refresh_status()

    async def _spawn(self, handle: ProcessManagerHandle, proc: _Proc) -> None:
        spec = proc.spec
        try:
            proc.id = await handle.spawn(Cmd(spec.argv[0], spec.argv[1:], spec.options()))
        except SpawnProcessError as exc:
            cause = exc.__cause__
            reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else exc
            self.out.system(f"{proc.name} cannot start {shlex.join(spec.argv)!r}: {reason}")
            proc.info = ProcessInfo(None, ExitStatus(_NOT_STARTED, None, False), False)
            self.ended.append(proc)
            self.stop.set()
            return
        self.by_id[proc.id] = proc
        proc.pid = (await handle.get_process_info(proc.id)).pid
        self.out.system(f"{proc.name} started (pid {proc.pid})")
        proc.followers = [self._start(self._follow(handle, proc, "stdout"))]
        proc.followers.append(self._start(self._follow(handle, proc, "stderr")))
        self.waiters.append(self._start(self._wait(handle, proc)))

    async def _follow(
        self, handle: ProcessManagerHandle, proc: _Proc, stream: Literal["stdout", "stderr"]
    ) -> None:
        assert proc.id is not None
        out = self.out
        name = proc.name
        with contextlib.suppress(CorralError):  # the log gone: nothing more to show
            async for line in handle.follow_logs(proc.id, stream):
                out.line(name, line, stream)

    async def _wait(self, handle: ProcessManagerHandle, proc: _Proc) -> None:
        assert proc.id is not None
        info = await handle.wait(proc.id)
        if self.stopping:
            return  # _terminate reports it
        proc.info = info
        proc.last_exit = info.exit_status
        self.ended.append(proc)
        await proc.drained()  # its last lines first, then how it ended
        self.out.system(f"{proc.name} {_ended(info)}")
        self._refresh_status()
        self.stop.set()

    async def _terminate(self, handle: ProcessManagerHandle, proc: _Proc) -> None:
        assert proc.id is not None
        proc.stopped = True
        info = await handle.terminate(proc.id, self.options.grace)
        await proc.drained()
        if proc.info is None:
            proc.info = info
            proc.last_exit = info.exit_status
            self.out.system(f"{proc.name} stopped ({info.exit_status})")
            self._refresh_status()

    async def _kill_all(self) -> None:
        """A second stop signal: SIGKILL what is still running, without waiting for grace."""
        handle = self.handle
        if handle is None:
            return
        self.out.system("killing all processes")
        for proc in self.procs:
            if proc.id is not None and proc.info is None:
                with contextlib.suppress(KillProcessError, ProcessNotFoundError):
                    await handle.send_signal(proc.id, signal.SIGKILL, group=True)

    def _on_signal(self, sig: int) -> None:
        self.signals += 1
        if self.signals == 1:
            if self.stop_signal is None and not self.stop.is_set():
                self.stop_signal = sig
            self.out.system(f"{signal.Signals(sig).name} received")
            self.stop.set()
        elif self.signals == 2:
            self._start(self._kill_all())

    async def _stop_on_broken_pipe(self) -> None:
        await self.out.broken.wait()
        if self.stop_signal is None and not self.stop.is_set():
            self.stop_signal = signal.SIGPIPE
        self.stop.set()

    async def _watch_events(self, events: ItemStream[ProcessEvent]) -> None:
        async for event in events.ignore_lost_messages():
            self._on_event(event)

    def _on_event(self, event: ProcessEvent) -> None:
        proc = self.by_id.get(event.process_id)
        if proc is None:
            return
        proc.restarts = event.restarts
        if event.kind is EventKind.EXITED:
            proc.last_exit = event.exit_status
        elif event.kind is EventKind.RESTARTING:
            proc.restarting = True
            self.out.system(
                f"{proc.name} exited: {event.exit_status}; restart {event.restarts} "
                f"in {event.delay or 0:.2g} s"
            )
        elif event.kind is EventKind.SPAWNED and event.restarts:
            proc.restarting = False
            proc.pid = event.pid
            self.out.system(f"{proc.name} restarted (pid {event.pid})")
        self._refresh_status()

    def _start(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _exit_status(self) -> int:
        for proc in self.ended:
            status = proc.info.exit_status if proc.info is not None else None
            if status is not None and not status.success:
                return _status_code(status)
        if self.stop_signal is not None:
            return 128 + self.stop_signal
        return 0

    # --- the live status table ------------------------------------------------------------

    @contextlib.contextmanager
    def _status_display(self) -> Iterator[None]:
        if not self.options.status:
            yield
            return
        with Live(
            self._status_table(), console=self.console, auto_refresh=False, transient=False
        ) as live:
            self.live = live
            try:
                yield
            finally:
                live.update(self._status_table(), refresh=True)
                self.live = None
        if not self.console.is_terminal:
            self.console.line()  # Live ends its last (only) frame without one there

    def _refresh_status(self) -> None:
        if self.live is not None:
            self.live.update(self._status_table(), refresh=True)

    def _status_table(self) -> Table:
        table = Table(title="corral run", title_justify="left", expand=False)
        for column in ("process", "pid", "state", "restarts", "exit status"):
            table.add_column(column, justify="right" if column in ("pid", "restarts") else "left")
        for i, proc in enumerate(self.procs):
            table.add_row(
                Text(proc.name, style=_COLORS[i % len(_COLORS)]),
                str(proc.pid or "-"),
                self._state(proc),
                str(proc.restarts),
                str(proc.last_exit or "-"),
            )
        return table

    def _state(self, proc: _Proc) -> str:
        if proc.info is not None:
            if proc.id is None:
                return "not started"
            if proc.info.gave_up_reason:
                return "gave up"
            return "stopped" if proc.stopped else "exited"
        if proc.id is None:
            return "not started" if self.stopping else "starting"
        if self.stopping:
            return "stopping"
        return "restarting" if proc.restarting else "running"


def _ended(info: ProcessInfo) -> str:
    text = f"exited: {info.exit_status}"
    if info.gave_up_reason:
        text += f"; gave up: {info.gave_up_reason}"
    return text


def _status_code(status: ExitStatus) -> int:
    if status.signal is not None:
        return 128 + status.signal
    return status.code if status.code is not None else 1
