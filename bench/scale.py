"""Many live children at once: what each costs the parent, and how long spawning and aborting take.

    .venv/bin/python bench/scale.py [--children 1000]

Spawns N ``sleep`` children through corral and keeps them alive, then reports the parent's RSS
and open fds per child, its thread count, the time to spawn them all and to abort them all. The
same N children through plain ``asyncio.create_subprocess_exec`` (whose 3.11 child watcher starts a
thread per child) are measured in the same run as the baseline. The soft ``RLIMIT_NOFILE`` is
raised to the hard limit if N needs it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import subprocess
import tempfile
import threading
import time

from corral import Cmd, ProcessManager

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--children", type=int, default=1000)
    args = parser.parse_args()
    n = args.children
    raise_fd_limit(4 * n + 100)
    working_dir = tempfile.mkdtemp(prefix="corral-scale-", dir="/dev/shm")
    try:
        ours = asyncio.run(through_corral(n, working_dir))
        base = asyncio.run(through_asyncio(n))
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


if __name__ == "__main__":
    main()
