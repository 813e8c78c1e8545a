"""Many live children at once: what each costs the parent, and how long spawning and aborting take.

    .venv/bin/python bench/scale.py [--children 1000] [--restart-seconds 30] [--quick]

Spawns N ``sleep`` children through corral and keeps them alive, then reports the parent's RSS
and open fds per child, its thread count, the time to spawn them all and to abort them all. The
same N children through plain ``asyncio.create_subprocess_exec`` (whose 3.11 child watcher starts a
thread per child) are measured in the same run as the baseline. The soft ``RLIMIT_NOFILE`` is
raised to the hard limit if N needs it.

Then supervision under churn: N children under ``RestartPolicy.always`` (backoff 0.01 s to
0.05 s), each a ``sleep`` of a random 0.05 to 0.5 s chosen at spawn, restarted over and over for
``--restart-seconds``. Reports the restarts per second sustained (mean and worst second, from the
processes' restart counts), how many restarts per second the children would ask for if restarts
were instant, how late restarts start after their delay (from the events),
the lag of the manager's event loop (how late a 1 ms timer on that loop fires: p50, p99, max;
the target is a p99 under 20 ms) and the time to abort them all at the end. ``--quick`` runs 200
children and 5 s of restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import random
import resource
import shutil
import subprocess
import tempfile
import threading
import time

from corral import (
    Backoff,
    Cmd,
    CmdOptions,
    EventKind,
    ItemStream,
    LostMessagesError,
    ProcessEvent,
    ProcessId,
    ProcessManager,
    ProcessManagerHandle,
    RestartPolicy,
)

SLEEP = shutil.which("sleep") or "/bin/sleep"


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))


async def through_corral(n: int, working_dir: str) -> dict[str, float]:
    rss0, fds0 = rss_kib(), fds()
    async with ProcessManager.spawn(working_dir) as handle:
        await handle.spawn(Cmd("true"))  # start the guardian outside the timing
        t0 = time.perf_counter()
        await asyncio.gather(*(handle.spawn(Cmd(SLEEP, ["300"])) for _ in range(n)))
        spawned = time.perf_counter() - t0
        figures = {
            "spawn all (s)": spawned,
            "RSS per child (KiB)": (rss_kib() - rss0) / n,
            "fds per child": (fds() - fds0) / n,
            "OS threads": os_threads(),
        }
        t0 = time.perf_counter()
        await handle.abort(grace=0)
        figures["abort all (s)"] = time.perf_counter() - t0
    return figures


async def through_asyncio(n: int) -> dict[str, float]:
    rss0, fds0 = rss_kib(), fds()
    t0 = time.perf_counter()
    procs = await asyncio.gather(
        *(
            asyncio.create_subprocess_exec(
                SLEEP, "300", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
            )
            for _ in range(n)
        )
    )
    figures = {
        "spawn all (s)": time.perf_counter() - t0,
        "RSS per child (KiB)": (rss_kib() - rss0) / n,
        "fds per child": (fds() - fds0) / n,
        "OS threads": os_threads(),
    }
    t0 = time.perf_counter()
    for proc in procs:
        proc.kill()
    await asyncio.gather(*(proc.wait() for proc in procs))
    figures["abort all (s)"] = time.perf_counter() - t0
    return figures


#: Restart policy of the churn section: never gives up, delays from 10 ms to 50 ms.
CHURN = RestartPolicy.always(max_restarts=10**9, backoff=Backoff(initial=0.01, factor=2, cap=0.05))


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def sample_loop_lag(lags: list[float], stop: asyncio.Event) -> None:
    """How late a 1 ms timer fires on the running loop, over and over until ``stop``."""
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - t0 - 0.001)


class RestartCounter:
    """Reads the event stream: how late each restart started after it was due."""

    def __init__(self) -> None:
        self.late: list[float] = []  # SPAWNED time minus the time the restart was due
        self.lost = 0
        self._due: dict[ProcessId, float] = {}

    async def run(self, events: ItemStream[ProcessEvent]) -> None:
        while True:
            try:
                event = await anext(events)
            except StopAsyncIteration:  # the manager was aborted
                return
            except LostMessagesError as exc:
                self.lost += exc.count
                self._due.clear()  # some of them may have started unseen
                continue
            if event.kind is EventKind.RESTARTING:
                self._due[event.process_id] = event.time + (event.delay or 0.0)
            elif event.kind is EventKind.SPAWNED and event.restarts:
                due = self._due.pop(event.process_id, None)
                if due is not None:
                    self.late.append(event.time - due)


async def total_restarts(handle: ProcessManagerHandle, ids: list[ProcessId]) -> int:
    infos = await asyncio.gather(*(handle.get_process_info(i) for i in ids))
    return sum(info.restarts for info in infos)


async def through_restarts(n: int, seconds: float, working_dir: str) -> dict[str, float]:
    sleeps = [random.uniform(0.05, 0.5) for _ in range(n)]
    async with ProcessManager.spawn(working_dir) as handle:
        await handle.spawn(Cmd("true"))  # start the guardian outside the timing
        counter = RestartCounter()
        counting = asyncio.create_task(counter.run(await handle.subscribe_events()))
        options = CmdOptions(restart_policy=CHURN)
        ids = await asyncio.gather(
            *(handle.spawn(Cmd(SLEEP, [f"{sleep:.3f}"], options)) for sleep in sleeps)
        )
        # The run starts once every child was spawned (the spawn figures are above).
        lags: list[float] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_loop_lag(lags, stop))
        # Restart totals once a second: exact even when the event counter lost some.
        totals = [(time.monotonic(), await total_restarts(handle, ids))]
        t0, cpu0 = totals[0][0], cpu_seconds()
        for k in range(1, math.ceil(seconds) + 1):
            await asyncio.sleep(max(0.0, t0 + min(k, seconds) - time.monotonic()))
            totals.append((time.monotonic(), await total_restarts(handle, ids)))
        stop.set()
        await sampler
        t1, cpu1 = totals[-1][0], cpu_seconds()
        gave_up = sum(
            info.gave_up_reason is not None
            for info in await asyncio.gather(*(handle.get_process_info(i) for i in ids))
        )
        t2 = time.perf_counter()
        await handle.abort(grace=0)
        aborted = time.perf_counter() - t2
        await counting  # the stream ends with the abort
    elapsed = t1 - t0
    rates = [(b - a) / (tb - ta) for (ta, a), (tb, b) in itertools.pairwise(totals)]
    # What the children would ask for if every restart were instant: one per run and delay.
    demand = sum(1 / (sleep + CHURN.backoff.cap) for sleep in sleeps)
    lags.sort()
    late = sorted(counter.late)
    return {
        "restarts per s (mean)": (totals[-1][1] - totals[0][1]) / elapsed,
        "restarts per s (worst s)": min(rates, default=float("nan")),
        "restarts asked per s": demand,
        "restart late p50 (ms)": 1000 * percentile(late, 0.50),
        "restart late p99 (ms)": 1000 * percentile(late, 0.99),
        "events lost (counter)": counter.lost,
        "gave up": gave_up,
        "manager CPU (% core)": 100 * (cpu1 - cpu0) / elapsed,
        "loop lag p50 (ms)": 1000 * percentile(lags, 0.50),
        "loop lag p99 (ms)": 1000 * percentile(lags, 0.99),
        "loop lag max (ms)": 1000 * (lags[-1] if lags else float("nan")),
        "abort all (s)": aborted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--children", type=int, default=None, help="default 1000 (quick: 200)")
    parser.add_argument("--restart-seconds", type=float, default=None, help="default 30 (quick: 5)")
    parser.add_argument("--quick", action="store_true", help="fewer children, shorter churn")
    args = parser.parse_args()
    n = args.children if args.children is not None else (200 if args.quick else 1000)
    seconds = args.restart_seconds
    if seconds is None:
        seconds = 5.0 if args.quick else 30.0
    raise_fd_limit(4 * n + 100)
    working_dir = tempfile.mkdtemp(prefix="corral-scale-", dir="/dev/shm")
    try:
        ours = asyncio.run(through_corral(n, working_dir))
        base = asyncio.run(through_asyncio(n))
        churn = asyncio.run(through_restarts(n, seconds, working_dir))
    finally:
        shutil.rmtree(working_dir, ignore_errors=True)
    print(
        f"{n} live children (process dirs in a tmpfs); Python threads: {threading.active_count()}"
    )
    print(f"  {'':<22}{'corral':>12}{'asyncio':>12}")
    for key in ours:
        print(f"  {key:<22}{ours[key]:>12.3f}{base[key]:>12.3f}")
    ok = ours["OS threads"] < 10 and ours["abort all (s)"] < 2
    print(f"  threads < 10 and abort < 2 s: {'PASS' if ok else 'MISS'}")
    print(
        f"{n} children under `always` for {seconds:g} s, each a sleep of 0.05-0.5 s "
        f"(backoff 0.01-0.05 s)"
    )
    for key, value in churn.items():
        print(f"  {key:<26}{value:>12.3f}")
    ok = churn["loop lag p99 (ms)"] < 20 and not churn["gave up"]
    print(f"  loop lag p99 < 20 ms, none gave up: {'PASS' if ok else 'MISS'}")


if __name__ == "__main__":
    main()
