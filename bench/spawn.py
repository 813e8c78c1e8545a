"""Spawn+wait+kill rate of /bin/true: corral vs plain ``asyncio.create_subprocess_exec``.

Measured where users run first: the manager's default working dir (``ProcessManager.spawn()``
with no argument: a temp dir in ``tempfile``'s dir, a disk on most servers and CI runners), then
a dir of the user's on that same disk, then a tmpfs (``/dev/shm``) beside them, never alone.
corral is measured with no options (target >= 1.0x), with both streams logged and with
named-pipe messaging (targets >= 0.8x). A cycle is spawn, wait and kill: the kill is where
corral's process dir goes, and the baseline has nothing to release. A last section times the
raw spawn paths a parent-death signal could take (the reason corral uses a guardian process).

Rounds alternate between the ways so that a noisy neighbour hurts them alike, and the order of
the ways, the baseline's included, rotates from round to round (whichever way runs first after
a change of way is a few % slower). The verdict is on the median of the rounds' paired ratios
(corral's rate over the baseline's in the same round); the best round of each is shown too.

Each way's CPU per cycle is printed (medians of the rounds): this process's, every thread
included (asyncio's per-child threads), and the children's own. On a small VM whose kernel
keeps a parent and the child it just started on one vCPU, a cycle one at a time takes the
child's CPU plus the parent's; the CPU figures then say what each way costs more steadily.

    .venv/bin/python bench/spawn.py [--count 500] [--rounds 5] [--concurrency 1 50]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import functools
import os
import resource
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from corral import (
    Cmd,
    CmdOptions,
    LoggingType,
    ProcessManager,
    ProcessManagerHandle,
)

TRUE = shutil.which("true") or "/bin/true"


class Round(NamedTuple):
    """One way's round: spawns per second, and CPU per spawn in microseconds."""

    rate: float
    #: This process, every thread (asyncio's per-child threads included).
    parent_cpu: float
    #: The children themselves (exec, run, exit).
    child_cpu: float


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _in_batches(count: int, concurrency: int, one: Callable[[], Awaitable[None]]) -> Round:
    started, cpu, child_cpu = time.perf_counter(), time.process_time(), _children_cpu()
    remaining = count
    while remaining:
        batch = min(concurrency, remaining)
        await asyncio.gather(*(one() for _ in range(batch)))
        remaining -= batch
    elapsed = time.perf_counter() - started
    per_spawn = 1e6 / count
    return Round(
        count / elapsed,
        (time.process_time() - cpu) * per_spawn,
        (_children_cpu() - child_cpu) * per_spawn,
    )


async def baseline(count: int, concurrency: int) -> Round:
    async def one() -> None:
        proc = await asyncio.create_subprocess_exec(
            TRUE, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await proc.wait()

    return await _in_batches(count, concurrency, one)


VARIANTS: dict[str, tuple[CmdOptions, float]] = {
    "no options": (CmdOptions(), 1.0),
    "logs": (CmdOptions.with_logging(LoggingType.STDOUT_AND_STDERR), 0.8),
    "named pipes": (CmdOptions.with_named_pipe_messaging(), 0.8),
}


async def through_corral(
    handle: ProcessManagerHandle, count: int, concurrency: int, options: CmdOptions
) -> Round:
    cmd = Cmd(TRUE, [], options)

    async def one() -> None:
        process_id = await handle.spawn(cmd)
        await handle.wait(process_id)
        await handle.kill(process_id)

    return await _in_batches(count, concurrency, one)


async def main(count: int, rounds: int, levels: list[int], places: list[str]) -> None:
    print(f"spawn+wait+kill of {TRUE}: {count} per round, {rounds} rotating rounds")
    for place in places:
        if place == "default":
            print("the manager's default working dir (ProcessManager.spawn())")
            async with ProcessManager.spawn() as handle:
                print(f"  in {handle.working_dir.parent}")
                await _compare(handle, count, rounds, levels)
            continue
        parent = tempfile.gettempdir() if place == "disk" else place
        if place == "tmpfs":
            if not os.access("/dev/shm", os.W_OK):
                continue
            parent = "/dev/shm"
        working_dir = tempfile.mkdtemp(prefix="corral-bench-", dir=parent)
        print(f"a working dir of the user's: {working_dir}")
        try:
            async with ProcessManager.spawn(working_dir) as handle:
                await _compare(handle, count, rounds, levels)
        finally:
            shutil.rmtree(working_dir, ignore_errors=True)


async def _compare(
    handle: ProcessManagerHandle, count: int, rounds: int, levels: list[int]
) -> None:
    await handle.kill(await handle.spawn(Cmd(TRUE)))  # the guardian starts outside the timing
    for concurrency in levels:
        ways: dict[str, Callable[[], Awaitable[Round]]] = {
            "asyncio": functools.partial(baseline, count, concurrency),
            **{
                name: functools.partial(through_corral, handle, count, concurrency, options)
                for name, (options, _) in VARIANTS.items()
            },
        }
        measured: dict[str, list[Round]] = {name: [] for name in ways}
        order = list(ways)
        for round_number in range(rounds):
            shift = round_number % len(order)
            for name in order[shift:] + order[:shift]:
                measured[name].append(await ways[name]())
        rates = {name: [r.rate for r in rounds_] for name, rounds_ in measured.items()}
        base = rates["asyncio"]
        print(f"  concurrency {concurrency}: asyncio {statistics.median(base):6.0f}/s")
        for name, (_, target) in VARIANTS.items():
            ours = rates[name]
            paired = statistics.median(o / b for o, b in zip(ours, base, strict=True))
            verdict = "PASS" if paired >= target else "MISS"
            print(
                f"    corral, {name:<12} {statistics.median(ours):6.0f}/s  median of the "
                f"rounds' ratios {paired:4.2f} (target >= {target}: {verdict})  "
                f"best rounds {max(ours) / max(base):4.2f}"
            )
        _print_cpu(measured)


def _print_cpu(measured: dict[str, list[Round]]) -> None:
    """CPU per spawn+wait (medians of the rounds): what the ways cost, whatever the scheduling."""
    cpu = {
        name: statistics.median(r.parent_cpu for r in rounds) for name, rounds in measured.items()
    }
    child = statistics.median(r.child_cpu for rounds in measured.values() for r in rounds)
    base = cpu["asyncio"]
    print(f"    CPU per cycle, this process (all threads): asyncio {base:4.0f} us")
    for name in VARIANTS:
        ratio = base / cpu[name]
        print(f"      corral, {name:<12} {cpu[name]:4.0f} us  asyncio's / corral's {ratio:4.2f}")
    print(f"    CPU per cycle, the child itself: {child:4.0f} us (median of every round)")


def spawn_paths(count: int) -> None:
    """Raw spawn+wait rates of the ways a child could get a parent-death signal."""
    devnull = os.open(os.devnull, os.O_RDWR)
    libc = ctypes.CDLL(None, use_errno=True)

    def set_pdeathsig() -> None:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    def popen(argv: list[str], **extra: Any) -> None:
        std: dict[str, Any] = {"stdin": devnull, "stdout": devnull, "stderr": devnull}
        subprocess.Popen(argv, process_group=0, **std, **extra).wait()

    def posix_spawn() -> None:
        pid = os.posix_spawn(TRUE, [TRUE], os.environ, setpgroup=0)
        os.waitpid(pid, 0)

    paths: dict[str, Callable[[], None]] = {
        "subprocess.Popen (vfork), corral's path": lambda: popen([TRUE]),
        "os.posix_spawn": posix_spawn,
        "Popen + preexec_fn prctl (fork)": lambda: popen([TRUE], preexec_fn=set_pdeathsig),
    }
    setpriv = shutil.which("setpriv")
    if setpriv:
        wrapped = [setpriv, "--pdeathsig", "KILL", "--", TRUE]
        paths["setpriv --pdeathsig KILL wrapper"] = lambda: popen(wrapped)
    rates: dict[str, float] = {}
    for name, spawn in paths.items():
        started = time.perf_counter()
        for _ in range(count):
            spawn()
        rates[name] = count / (time.perf_counter() - started)
    os.close(devnull)
    base = next(iter(rates.values()))
    print(f"spawn paths, {count} sequential spawn+wait each (no asyncio):")
    for name, rate in rates.items():
        print(f"  {name:<42} {rate:6.0f}/s  x{rate / base:4.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50])
    parser.add_argument(
        "--places",
        nargs="+",
        default=["default", "disk", "tmpfs"],
        help="default: the manager's own temp dir; disk: a dir of the user's in tempfile's "
        "dir; tmpfs: one in /dev/shm; or any dir's path",
    )
    args = parser.parse_args()
    asyncio.run(main(args.count, args.rounds, args.concurrency, args.places))
    spawn_paths(args.count)
