"""The ``corral`` command: ``corral demo`` shows the library at work on real processes."""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from collections.abc import Sequence

from . import (
    Cmd,
    CmdOptions,
    CorralError,
    LoggingType,
    LogsQuery,
    Message,
    MessageFormat,
    MessageStream,
    ProcessId,
    ProcessManager,
    ProcessManagerHandle,
    Runnable,
    Script,
    ScriptingLanguage,
)

__all__ = ["main"]


def _demo_runnables(count: int) -> list[tuple[str, Runnable]]:
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


async def _demo(count: int) -> int:
    out = sys.stdout
    started = time.perf_counter()
    async with ProcessManager.spawn() as handle:
        out.write(f"corral demo: spawning {count} processes (commands and scripts)\n")
        runnables = _demo_runnables(count)
        ids: list[ProcessId] = await asyncio.gather(*(handle.spawn(r) for _, r in runnables))
        spawned = time.perf_counter()
        infos = await asyncio.gather(*(handle.get_process_info(i) for i in ids))
        pids = ", ".join(str(info.pid) for info in infos[:8])
        out.write(f"  spawned {count} in {(spawned - started) * 1e3:.1f} ms; pids {pids}, ...\n")

        finals = await asyncio.gather(*(handle.wait(i, timeout=30) for i in ids))
        waited = time.perf_counter()
        out.write(f"  all exited after {(waited - started) * 1e3:.1f} ms\n\n")
        by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for (name, _), info in zip(runnables, finals, strict=True):
            by_kind[name][str(info.exit_status)] += 1
        out.write(f"  {'what':<16} {'how it ended':<40}\n")
        for name, statuses in by_kind.items():
            summary = ", ".join(f"{n} x {status}" for status, n in sorted(statuses.items()))
            out.write(f"  {name:<16} {summary:<40}\n")

        await _demo_logs(handle, ids[3])
        await _demo_messages(handle)
        await asyncio.gather(*(handle.kill(i) for i in ids))
        out.write(
            f"\n  killed (released) all {count}; known now: {len(await handle.list_processes())}\n"
        )
        await _demo_lifecycle(handle)
    out.write(f"\ndone in {(time.perf_counter() - started) * 1e3:.0f} ms; nothing left behind\n")
    return 0


async def _demo_logs(handle: ProcessManagerHandle, echo_id: ProcessId) -> None:
    out = sys.stdout
    out.write(f"\n  logs of an echo ({echo_id}): {await handle.get_logs_stdout(echo_id)}\n")
    script = (
        "import sys\n"
        "for i in range(1, 10001):\n"
        "    print(f'line {i}')\n"
        "    if i % 2500 == 0: print(f'progress {i // 100}%', file=sys.stderr)\n"
    )
    opts = CmdOptions.with_logging(LoggingType.STDOUT_AND_STDERR)
    proc = await handle.spawn_with_handle(Script(ScriptingLanguage.PYTHON, script, options=opts))
    progress = [line async for line in proc.follow_logs("stderr")]  # live, ends at exit
    out.write(f"  followed stderr of a python script: {progress}\n")
    first = await proc.get_logs_stdout(LogsQuery.with_limit(2))
    middle = await proc.get_logs_stdout(LogsQuery.with_offset_and_limit(5000, 2))
    last = await proc.get_logs_stdout(LogsQuery.tail(2))
    out.write(f"  its stdout: first {first}, from line 5000 {middle}, last {last}\n")
    await proc.kill()


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


async def _demo_messages(handle: ProcessManagerHandle, workers: int = 4, jobs: int = 24) -> None:
    """A pool of Python workers taking jobs as JSON messages over FIFOs and answering."""
    out = sys.stdout
    opts = CmdOptions.with_named_pipe_messaging()
    pool = [
        await handle.spawn_with_handle(Script(ScriptingLanguage.PYTHON, _WORKER, options=opts))
        for _ in range(workers)
    ]
    streams = [await w.subscribe_message_stream(lossless=True) for w in pool]
    started = time.perf_counter()
    numbers = [2**31 - 1 + 2 * i for i in range(jobs)]
    for i, n in enumerate(numbers):  # round robin: job i to worker i % workers
        job = Message.from_serializable({"id": i, "n": n}, MessageFormat.JSON)
        await pool[i % workers].send_message(job)

    async def collect(stream: MessageStream, count: int) -> list[dict[str, object]]:
        results: list[dict[str, object]] = []
        async for result in stream.decoded(MessageFormat.JSON, dict[str, object]):
            results.append(result)
            if len(results) == count:
                break
        return results

    per_worker = [len(range(w, jobs, workers)) for w in range(workers)]
    answers = await asyncio.gather(
        *(collect(s, c) for s, c in zip(streams, per_worker, strict=True))
    )
    elapsed = (time.perf_counter() - started) * 1e3
    out.write(f"\n  {workers} python workers factored {jobs} numbers sent as JSON messages ")
    out.write(f"over named pipes in {elapsed:.0f} ms; a few answers:\n")
    for worker, results in enumerate(answers):
        first = results[0]
        out.write(f"    worker {worker}: job {first['job']}: {first['n']} = {first['factors']}\n")
    await asyncio.gather(*(process.kill() for process in pool))


async def _demo_lifecycle(handle: ProcessManagerHandle) -> None:
    out = sys.stdout
    sleeper = await handle.spawn_with_handle(Cmd("sleep", ["60"]))
    try:
        await sleeper.wait(timeout=0.1)
    except TimeoutError:
        out.write(f"  {sleeper.id}: still running after a 0.1 s wait (left untouched)\n")
    await sleeper.kill()
    out.write(f"  {sleeper.id}: killed\n")
    async with await handle.spawn_with_scoped_handle(Cmd("sleep", ["60"])) as scoped:
        pid = (await scoped.get_process_info()).pid
    out.write(f"  scoped handle: pid {pid} killed when its block ended\n")
    try:
        await handle.spawn(Cmd("no-such-program-here"))
    except CorralError as exc:
        out.write(f"  a typed error: {type(exc).__name__}: {exc}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``corral`` command."""
    parser = argparse.ArgumentParser(prog="corral", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="spawn real processes and show what corral does")
    demo.add_argument("-n", "--count", type=int, default=48, help="processes to spawn")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return asyncio.run(_demo(args.count))
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
