"""``corral demo``: the library end to end on real processes, in a few seconds.

Eight steps, each on real children of one :class:`~corral.ProcessManager`: a pool of commands
and scripts, a pool of Python workers answering JSON messages, logs read from the start, the
middle and the end and followed live, ``wait`` with a timeout and ``kill``, a scoped handle,
``terminate`` with a grace period, a restart policy seen through ``subscribe_events``, and typed
errors. A live progress display (``rich``) shows the step at work; each finished step prints a
line; a summary table ends it. When stdout is not a terminal the progress display is left out
and the rest prints without colors.

Everything lives in a temp dir the manager creates and removes; the demo checks at the end that
the dir is gone and that none of its children is left.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ._broadcast import MessageStream
from ._errors import CorralError, KillProcessError, ProcessNotFoundError
from ._handle import ProcessHandle, ProcessManagerHandle
from ._logs import LogsQuery
from ._manager import ProcessManager
from ._messages import Message, MessageFormat
from ._model import (
    Backoff,
    Cmd,
    CmdOptions,
    LoggingType,
    ProcessId,
    RestartPolicy,
    Runnable,
    Script,
    ScriptingLanguage,
)
from ._supervision import EventKind, ProcessEvent

__all__ = ["demo"]

#: Bound for every wait of the demo: generous, never reached when things work.
_TIMEOUT = 30.0


def demo(count: int = 48, console: Console | None = None) -> int:
    """Run the demo with a pool of ``count`` processes, printing to ``console``; return the
    exit status (0).

    >>> demo(8)  # doctest: +SKIP
    0
    """
    console = Console(highlight=False) if console is None else console
    return asyncio.run(_Demo(console, count).run())


@dataclass
class _Step:
    """A finished step, for the summary table."""

    title: str
    processes: int
    figure: str
    seconds: float


class _Display:
    """The live progress of the step at work and a line per finished step."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self.steps: list[_Step] = []

    def start(self, title: str, total: int) -> _StepProgress:
        """A new step, ``title`` saying what it shows, with ``total`` units of work."""
        task = self.progress.add_task(title, total=total)
        return _StepProgress(self, task, title)


class _StepProgress:
    """One step at work."""

    def __init__(self, display: _Display, task: TaskID, title: str) -> None:
        self._display = display
        self._task = task
        self.title = title
        self.started = time.perf_counter()

    def advance(self, amount: int = 1) -> None:
        """Some work done."""
        self._display.progress.advance(self._task, amount)

    def done(
        self, result: str, details: Sequence[str] = (), *, processes: int, figure: str
    ) -> None:
        """The step is over: print its result and details; record ``processes`` (how many it
        spawned) and ``figure`` (its outcome in a few words) for the summary."""
        seconds = time.perf_counter() - self.started
        display = self._display
        display.progress.remove_task(self._task)
        console = display.console
        console.print(
            f"[green]✓[/] [bold]{escape(self.title)}[/] [dim]({seconds * 1e3:.0f} ms)[/]: "
            f"{escape(result)}",
            soft_wrap=True,
        )
        for detail in details:
            console.print(f"    [dim]{escape(detail)}[/]", soft_wrap=True)
        display.steps.append(_Step(self.title, processes, figure, seconds))


class _Demo:
    """The steps, in order, on one manager."""

    def __init__(self, console: Console, count: int) -> None:
        self.console = console
        self.count = count
        self.display = _Display(console)

    async def run(self) -> int:
        console = self.console
        started = time.perf_counter()
        async with ProcessManager.spawn() as handle:
            working_dir = handle.working_dir
            console.print(
                f"[bold]corral demo[/]: real processes under one manager; working dir "
                f"{escape(str(working_dir))} (removed at the end)\n",
                soft_wrap=True,
            )
            with self.display.progress:
                await self.pool(handle)
                await self.messages(handle)
                await self.logs(handle)
                await self.kill_and_wait(handle)
                await self.scoped(handle)
                await self.terminate(handle)
                await self.restart(handle)
                await self.errors(handle)
            known = len(await handle.list_processes())
        elapsed = time.perf_counter() - started
        left = _children_left()
        self.summary(elapsed, known, working_dir, left)
        return 0

    # --- the steps ------------------------------------------------------------------------

    async def pool(self, handle: ProcessManagerHandle) -> None:
        count = self.count
        step = self.display.start("a pool, spawned at once", count)
        runnables = _pool_runnables(count)
        ids: list[ProcessId] = await asyncio.gather(*(handle.spawn(r) for _, r in runnables))
        spawned = time.perf_counter() - step.started

        async def wait(process_id: ProcessId) -> str:
            info = await handle.wait(process_id, timeout=_TIMEOUT)
            step.advance()
            return str(info.exit_status)

        statuses = await asyncio.gather(*(wait(i) for i in ids))
        by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for (kind, _), status in zip(runnables, statuses, strict=True):
            by_kind[kind][status] += 1
        echo = next(
            (i for (kind, _), i in zip(runnables, ids, strict=True) if kind == "echo"), None
        )
        details = [
            f"{kind:<14} {', '.join(f'{n} x {s}' for s, n in sorted(counts.items()))}"
            for kind, counts in by_kind.items()
        ]
        if echo is not None:
            details.append(f"echo's stdout: {await handle.get_logs_stdout(echo)}")
        await asyncio.gather(*(handle.kill(i) for i in ids))
        failed = sum(1 for s in statuses if s != "exit code 0")
        step.done(
            f"{count} spawned in {spawned * 1e3:.0f} ms, all exited ({failed} failing on "
            f"purpose), then released",
            details,
            processes=count,
            figure=f"{count - failed} ok, {failed} failed on purpose",
        )

    async def messages(self, handle: ProcessManagerHandle, workers: int = 4) -> None:
        jobs = 64
        step = self.display.start("messages both ways", jobs)
        opts = CmdOptions.with_named_pipe_messaging()
        pool = await asyncio.gather(
            *(
                handle.spawn_with_handle(Script(ScriptingLanguage.PYTHON, _WORKER, options=opts))
                for _ in range(workers)
            )
        )
        streams = [await w.subscribe_message_stream(lossless=True) for w in pool]
        numbers = [2**31 - 1 + 2 * i for i in range(jobs)]

        async def send() -> None:
            for i, n in enumerate(numbers):  # round robin: job i to worker i % workers
                job = Message.from_serializable({"id": i, "n": n}, MessageFormat.JSON)
                await pool[i % workers].send_message(job)

        async def collect(stream: MessageStream, expected: int) -> list[dict[str, object]]:
            results: list[dict[str, object]] = []
            async for result in stream.decoded(MessageFormat.JSON, dict[str, object]):
                results.append(result)
                step.advance()
                if len(results) == expected:
                    break
            return results

        per_worker = [len(range(w, jobs, workers)) for w in range(workers)]
        sender = asyncio.ensure_future(send())
        answers = await asyncio.gather(
            *(collect(s, c) for s, c in zip(streams, per_worker, strict=True))
        )
        await sender
        details = [
            f"worker {w}: job {r[0]['job']}: {r[0]['n']} = {r[0]['factors']}"
            for w, r in enumerate(answers)
        ]
        await asyncio.gather(*(worker.kill() for worker in pool))
        received = sum(map(len, answers))
        step.done(
            f"{workers} Python workers got {jobs} jobs as JSON messages over named pipes and "
            f"sent {received} answers back",
            details,
            processes=workers,
            figure=f"{jobs} jobs, {received} answers",
        )

    async def logs(self, handle: ProcessManagerHandle) -> None:
        lines, marks = 20_000, 4
        step = self.display.start("logs: follow, start, end", marks)
        opts = CmdOptions.with_logging(LoggingType.STDOUT_AND_STDERR)
        script = Script(ScriptingLanguage.PYTHON, _LOGGER, [str(lines), str(marks)], opts)
        proc = await handle.spawn_with_handle(script)
        followed = []
        async for line in proc.follow_logs("stderr"):  # live; ends after the exit
            followed.append(line)
            step.advance()
        first = await proc.get_logs_stdout(LogsQuery.with_limit(2))
        middle = await proc.get_logs_stdout(LogsQuery.with_offset_and_limit(lines // 2, 2))
        last = await proc.get_logs_stdout(LogsQuery.tail(2))
        await proc.kill()
        step.done(
            f"a script wrote {lines:,} lines to stdout; its stderr followed live",
            [
                f"followed stderr: {followed}",
                f"stdout: first {first}, from line {lines // 2:,} {middle}, last {last}",
            ],
            processes=1,
            figure=f"{lines:,} lines, {len(followed)} followed",
        )

    async def kill_and_wait(self, handle: ProcessManagerHandle) -> None:
        step = self.display.start("wait with timeout, kill", 2)
        sleeper = await handle.spawn_with_handle(Cmd("sleep", ["60"]))
        try:
            await sleeper.wait(timeout=0.1)
            outcome = "exited early?"
        except TimeoutError:
            outcome = "still running after a 0.1 s wait (left untouched)"
        step.advance()
        pid = (await sleeper.get_process_info()).pid
        await sleeper.kill()
        step.advance()
        gone = not _alive(pid)
        step.done(
            f"a sleep (pid {pid}) {outcome}, then killed; gone: {gone}",
            processes=1,
            figure="timed out, killed" if gone else "still alive!",
        )

    async def scoped(self, handle: ProcessManagerHandle) -> None:
        step = self.display.start("scoped handle", 1)
        async with await handle.spawn_with_scoped_handle(Cmd("sleep", ["60"])) as proc:
            info = await proc.get_process_info()
            running = info.is_running
        step.advance()
        gone = not _alive(info.pid)
        step.done(
            f"a sleep (pid {info.pid}) running in the block: {running}; gone after it: {gone}",
            processes=1,
            figure="gone after its block" if gone else "still alive!",
        )

    async def terminate(self, handle: ProcessManagerHandle, grace: float = 0.3) -> None:
        step = self.display.start("terminate with grace", 2)
        opts = CmdOptions.with_logging(LoggingType.STDOUT_ONLY)
        polite = await handle.spawn_with_handle(
            Cmd("sh", ["-c", "echo ready; exec sleep 60"], opts)
        )
        stubborn = await handle.spawn_with_handle(
            Cmd("sh", ["-c", "trap '' TERM; echo ready; sleep 60"], opts)
        )
        for proc in (polite, stubborn):  # signals are set up once "ready" is in the log
            await _first_line(proc)

        async def stop(what: str, proc: ProcessHandle) -> tuple[str, str]:
            began = time.perf_counter()
            info = await proc.terminate(grace)
            step.advance()
            elapsed = (time.perf_counter() - began) * 1e3
            return f"{what}: {info.exit_status} after {elapsed:.0f} ms", str(info.exit_status)

        results = await asyncio.gather(
            stop("exits on SIGTERM ", polite), stop("ignores SIGTERM  ", stubborn)
        )
        await asyncio.gather(polite.kill(), stubborn.kill())
        ends = [end.removeprefix("killed by ") for _, end in results]
        step.done(
            f"two children terminated with grace={grace} s: SIGTERM, then SIGKILL",
            [line for line, _ in results],
            processes=2,
            figure=f"ended by {ends[0]} and {ends[1]}",
        )

    async def restart(self, handle: ProcessManagerHandle) -> None:
        step = self.display.start("restart policy, events", 3)
        policy = RestartPolicy.on_failure(max_restarts=5, backoff=Backoff(initial=0.05, cap=0.5))
        events = (await handle.subscribe_events()).ignore_lost_messages()
        opts = CmdOptions(restart_policy=policy)
        flaky = await handle.spawn_with_handle(
            Script(ScriptingLanguage.PYTHON, _FLAKY, options=opts)
        )
        seen: list[str] = []
        async for event in _events_of(events, flaky.id):
            seen.append(_describe_event(event))
            if event.kind is EventKind.EXITED:
                step.advance()
            if event.kind is EventKind.GAVE_UP or (
                event.kind is EventKind.EXITED and event.exit_status and event.exit_status.success
            ):
                break
        await events.aclose()
        info = await flaky.wait(timeout=_TIMEOUT)
        await flaky.kill()
        step.done(
            f"a child failed twice, was restarted after a backoff, then ended with "
            f"{info.exit_status} (one id throughout), as subscribe_events() told",
            [" -> ".join(seen[i : i + 4]) for i in range(0, len(seen), 4)],
            processes=1,
            figure=f"{info.restarts} restarts, then {info.exit_status}",
        )

    async def errors(self, handle: ProcessManagerHandle) -> None:
        step = self.display.start("typed errors", 3)
        caught: list[str] = []
        try:
            await handle.spawn(Cmd("no-such-program-here"))
        except CorralError as exc:
            cause = type(exc.__cause__).__name__ if exc.__cause__ else "-"
            caught.append(f"spawn a missing program: {type(exc).__name__} (cause {cause})")
        step.advance()
        try:
            await handle.kill(ProcessId.new())
        except KillProcessError as exc:
            both = isinstance(exc, ProcessNotFoundError)
            caught.append(
                f"kill an unknown id: {type(exc).__name__} (caught as KillProcessError; "
                f"a ProcessNotFoundError too: {both})"
            )
        step.advance()
        sleeper = await handle.spawn_with_handle(Cmd("sleep", ["60"]))
        try:
            await sleeper.send_message("hello")
        except CorralError as exc:
            caught.append(f"message a process that has no message input: {type(exc).__name__}")
        await sleeper.kill()
        step.advance()
        step.done(
            f"{len(caught)} failures, each raised as its own exception class",
            caught,
            processes=2,
            figure=f"{len(caught)} caught by type",
        )

    # --- the end --------------------------------------------------------------------------

    def summary(self, elapsed: float, known: int, working_dir: Path, left: int | None) -> None:
        table = Table(title="summary", title_justify="left", show_footer=True)
        steps = self.display.steps
        table.add_column("what was shown", "total", style="bold", no_wrap=True)
        table.add_column("processes", str(sum(s.processes for s in steps)), justify="right")
        table.add_column("outcome")
        table.add_column("time", f"{elapsed:.2f} s", justify="right", no_wrap=True)
        for step in steps:
            table.add_row(step.title, str(step.processes), step.figure, f"{step.seconds:.2f} s")
        self.console.print()
        self.console.print(table)
        removed = not working_dir.exists()
        children = "unknown" if left is None else str(left)
        self.console.print(
            f"done in {elapsed:.2f} s. Left behind: working dir removed: {removed}; processes "
            f"known to the manager before abort: {known}; children alive: {children}",
            soft_wrap=True,
        )


# --- helpers ------------------------------------------------------------------------------------


def _pool_runnables(count: int) -> list[tuple[str, Runnable]]:
    """A mix of commands and scripts, some failing on purpose."""
    kinds: list[tuple[str, Runnable]] = [
        ("true", Cmd("true")),
        ("false", Cmd("false")),
        ("sleep 0.2", Cmd("sleep", ["0.2"])),
        (
            "echo",
            Cmd.parse(
                "echo 'no shell: $HOME | stays literal'",
                CmdOptions.with_logging(LoggingType.STDOUT_ONLY),
            ),
        ),
        ("bash script", Script(ScriptingLanguage.BASH, 'test -d "$PROCESS_DATA_DIR" && exit 0')),
        (
            "python script",
            Script(ScriptingLanguage.PYTHON, "import sys; sys.exit(int(sys.argv[1]) % 3)", ["7"]),
        ),
    ]
    return [kinds[i % len(kinds)] for i in range(count)]


_WORKER = """\
from corral import child
for job in child.messages("json"):
    n = job["n"]
    factors, d = [], 2
    while d * d <= n:
        while n % d == 0:
            factors.append(d)
            n //= d
        d += 1
    if n > 1:
        factors.append(n)
    child.send({"job": job["id"], "n": job["n"], "factors": factors}, "json")
"""

_LOGGER = """\
import sys
lines, marks = int(sys.argv[1]), int(sys.argv[2])
for i in range(1, lines + 1):
    print(f"line {i}")
    if i % (lines // marks) == 0:
        print(f"progress {100 * i // lines}%", file=sys.stderr)
"""

#: Fails on its first two runs, succeeds on the third: counts its runs in its data dir, which
#: a restart keeps.
_FLAKY = """\
import os, sys
runs = os.path.join(os.environ["PROCESS_DATA_DIR"], "runs")
with open(runs, "a") as f:
    f.write("x")
count = os.path.getsize(runs)
print(f"run {count}", flush=True)
sys.exit(0 if count >= 3 else 1)
"""


async def _events_of(
    events: AsyncIterator[ProcessEvent], process_id: ProcessId
) -> AsyncIterator[ProcessEvent]:
    async with asyncio.timeout(_TIMEOUT):
        async for event in events:
            if event.process_id == process_id:
                yield event


async def _first_line(proc: ProcessHandle) -> str | None:
    """The first line of the process's stdout, once written (None if it exits first)."""
    lines = cast(AsyncGenerator[str, None], proc.follow_logs())
    async with contextlib.aclosing(lines):
        async for line in lines:
            return line
    return None


def _describe_event(event: ProcessEvent) -> str:
    match event.kind:
        case EventKind.SPAWNED:
            return f"spawned (pid {event.pid})"
        case EventKind.EXITED:
            return f"exited ({event.exit_status})"
        case EventKind.RESTARTING:
            return f"restarting in {event.delay:.2f} s"
        case _:
            return str(event.kind.value)


def _alive(pid: int | None) -> bool:
    """Whether ``pid`` names a live process (a zombie counts as gone)."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


def _children_left() -> int | None:
    """This process's children in its own session (corral's guardian has its own), or None
    without /proc."""
    if not os.path.isdir("/proc/self"):
        return None
    me, session = os.getpid(), os.getsid(0)
    left = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and int(fields[3]) == session:
            left += 1
    return left
