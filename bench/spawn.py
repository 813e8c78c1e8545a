"""Spawn+wait rate of /bin/true: corral vs plain ``asyncio.create_subprocess_exec``, same run.

corral is measured with no options (target >= 1.0x: it has no per-child thread), with both
streams logged and with named-pipe messaging (targets >= 0.7x). A last section times the raw
spawn paths a parent-death signal could take (the reason corral uses a guardian process).

"spawn+wait" is what the target is about: each corral spawn also creates the process dir and
data dir the baseline does not have. Their removal (``kill`` after the wait) is timed apart, as
"full cycle" (spawn+wait+kill), so that both figures are visible. Rounds alternate between the
ways so that a noisy neighbour hurts them alike; the best round of each is reported, and next to
it the median of the ratios of the rounds (corral's rate over the baseline's in the same round),
which a lucky round of either side moves less. The order of the ways, the baseline's included,
rotates from round to round: measured here, whichever way ran first after a change of way was
3-7% slower than the same way run again, even after a pause, so a fixed order favours some ways.

Each way's CPU per spawn+wait is printed too (medians of the rounds): this process's, every
thread included (asyncio's per-child threads), and the children's own. On a small VM whose
kernel keeps a parent and the child it just started on one vCPU, a spawn+wait one at a time
takes the child's CPU plus the parent's, whatever the parent does with the other vCPU; the CPU
figures then say what each way costs more steadily than its rate does.

The process dirs go to a tmpfs (``/dev/shm``) when there is one, unless ``--working-dir`` says
otherwise: on a thin-provisioned VM disk, growing a directory costs ~0.5 ms per entry, which
would measure the disk rather than corral. Pass ``--working-dir /tmp`` to see that cost.

    .venv/bin/python bench/spawn.py [--count 500] [--rounds 5] [--concurrency 1 32]
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
    ProcessId,
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
    "logs": (CmdOptions.with_logging(LoggingType.STDOUT_AND_STDERR), 0.7),
    "named pipes": (CmdOptions.with_named_pipe_messaging(), 0.7),
}


async def through_corral(
    handle: ProcessManagerHandle, count: int, concurrency: int, options: CmdOptions
) -> Round:
    ids: list[ProcessId] = []

    async def one() -> None:
        process_id = await handle.spawn(Cmd(TRUE, [], options))
        await handle.wait(process_id)
        ids.append(process_id)

    measured = await _in_batches(count, concurrency, one)
    await asyncio.gather(*(handle.kill(i) for i in ids))  # release, outside the timing
    return measured


async def full_cycle(handle: ProcessManagerHandle, count: int, concurrency: int) -> Round:
    async def one() -> None:
        process_id = await handle.spawn(Cmd(TRUE))
        await handle.wait(process_id)
        await handle.kill(process_id)

    return await _in_batches(count, concurrency, one)


async def main(count: int, rounds: int, levels: list[int], parent: str) -> None:
    print(f"spawn+wait of {TRUE}: {count} per round, best of {rounds} rotating rounds")
    working_dir = tempfile.mkdtemp(prefix="corral-bench-", dir=parent)
    print(f"process dirs in {working_dir}")
    try:
        await _compare(working_dir, count, rounds, levels)
    finally:
        shutil.rmtree(working_dir, ignore_errors=True)


async def _compare(working_dir: str, count: int, rounds: int, levels: list[int]) -> None:
    async with ProcessManager.spawn(working_dir) as handle:
        await handle.spawn(Cmd(TRUE))  # the guardian starts once, outside the timing
        for concurrency in levels:
            ways: dict[str, Callable[[], Awaitable[Round]]] = {
                "asyncio": functools.partial(baseline, count, concurrency),
                **{
                    name: functools.partial(through_corral, handle, count, concurrency, options)
                    for name, (options, _) in VARIANTS.items()
                },
                "full cycle": functools.partial(full_cycle, handle, count, concurrency),
            }
            measured: dict[str, list[Round]] = {name: [] for name in ways}
            order = list(ways)
            for round_number in range(rounds):
                shift = round_number % len(order)
                for name in order[shift:] + order[:shift]:
                    measured[name].append(await ways[name]())
            rates = {name: [r.rate for r in rounds_] for name, rounds_ in measured.items()}
            base, full = rates["asyncio"], rates["full cycle"]
            ours = {name: rates[name] for name in VARIANTS}
            print(f"  concurrency {concurrency}: asyncio {max(base):6.0f}/s")
            for name, (_, target) in VARIANTS.items():
                ratio = max(ours[name]) / max(base)
                verdict = "PASS" if ratio >= target else "MISS"
                paired = statistics.median(o / b for o, b in zip(ours[name], base, strict=True))
                print(
                    f"    corral, {name:<12} {max(ours[name]):6.0f}/s  ratio {ratio:4.2f}  "
                    f"(target >= {target}: {verdict})  median of the rounds' ratios {paired:4.2f}"
                )
            print(
                f"    corral, full cycle (spawn+wait+kill, no options) {max(full):6.0f}/s  "
                f"ratio {max(full) / max(base):4.2f}"
            )
            _print_cpu(measured)


def _print_cpu(measured: dict[str, list[Round]]) -> None:
    """CPU per spawn+wait (medians of the rounds): what the ways cost, whatever the scheduling."""
    cpu = {
        name: statistics.median(r.parent_cpu for r in rounds) for name, rounds in measured.items()
    }
    child = statistics.median(r.child_cpu for rounds in measured.values() for r in rounds)
    base = cpu["asyncio"]
    print(f"    CPU per spawn+wait, this process (all threads): asyncio {base:4.0f} us")
    for name in VARIANTS:
        ratio = base / cpu[name]
        print(f"      corral, {name:<12} {cpu[name]:4.0f} us  asyncio's / corral's {ratio:4.2f}")
    print(f"    CPU per spawn+wait, the child itself: {child:4.0f} us (median of every round)")


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
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    default_dir = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    parser.add_argument("--working-dir", default=default_dir)
    args = parser.parse_args()
    asyncio.run(main(args.count, args.rounds, args.concurrency, args.working_dir))
    spawn_paths(args.count)
