"""Spawn+wait rate of /bin/true: corral vs plain ``asyncio.create_subprocess_exec``, same run.

"spawn+wait" is what the target is about: each corral spawn also creates the process dir and
data dir the baseline does not have. Their removal (``kill`` after the wait) is timed apart, as
"full cycle" (spawn+wait+kill), so that both figures are visible. Rounds alternate between the
ways so that a noisy neighbour hurts them alike; the best round of each is reported.

The process dirs go to a tmpfs (``/dev/shm``) when there is one, unless ``--working-dir`` says
otherwise: on a thin-provisioned VM disk, growing a directory costs ~0.5 ms per entry, which
would measure the disk rather than corral. Pass ``--working-dir /tmp`` to see that cost.

    .venv/bin/python bench/spawn.py [--count 500] [--rounds 5] [--concurrency 1 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable

from corral import Cmd, ProcessId, ProcessManager, ProcessManagerHandle

TRUE = shutil.which("true") or "/bin/true"


async def _in_batches(count: int, concurrency: int, one: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    remaining = count
    while remaining:
        batch = min(concurrency, remaining)
        await asyncio.gather(*(one() for _ in range(batch)))
        remaining -= batch
    return count / (time.perf_counter() - started)


async def baseline(count: int, concurrency: int) -> float:
    async def one() -> None:
        proc = await asyncio.create_subprocess_exec(
            TRUE, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await proc.wait()

    return await _in_batches(count, concurrency, one)


async def through_corral(handle: ProcessManagerHandle, count: int, concurrency: int) -> float:
    ids: list[ProcessId] = []

    async def one() -> None:
        process_id = await handle.spawn(Cmd(TRUE))
        await handle.wait(process_id)
        ids.append(process_id)

    rate = await _in_batches(count, concurrency, one)
    await asyncio.gather(*(handle.kill(i) for i in ids))  # release, outside the timing
    return rate


async def full_cycle(handle: ProcessManagerHandle, count: int, concurrency: int) -> float:
    async def one() -> None:
        process_id = await handle.spawn(Cmd(TRUE))
        await handle.wait(process_id)
        await handle.kill(process_id)

    return await _in_batches(count, concurrency, one)


async def main(count: int, rounds: int, levels: list[int], parent: str) -> None:
    print(f"spawn+wait of {TRUE}: {count} per round, best of {rounds} alternating rounds")
    working_dir = tempfile.mkdtemp(prefix="corral-bench-", dir=parent)
    print(f"process dirs in {working_dir}")
    try:
        await _compare(working_dir, count, rounds, levels)
    finally:
        shutil.rmtree(working_dir, ignore_errors=True)


async def _compare(working_dir: str, count: int, rounds: int, levels: list[int]) -> None:
    async with ProcessManager.spawn(working_dir) as handle:
        for concurrency in levels:
            base: list[float] = []
            ours: list[float] = []
            full: list[float] = []
            for _ in range(rounds):
                base.append(await baseline(count, concurrency))
                ours.append(await through_corral(handle, count, concurrency))
                full.append(await full_cycle(handle, count, concurrency))
            ratio = max(ours) / max(base)
            verdict = "PASS" if ratio >= 0.8 else "MISS"
            print(
                f"  concurrency {concurrency:>3}: asyncio {max(base):6.0f}/s  "
                f"corral {max(ours):6.0f}/s  ratio {ratio:4.2f} (target >= 0.8: {verdict})  "
                f"full cycle {max(full):6.0f}/s, ratio {max(full) / max(base):4.2f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    default_dir = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    parser.add_argument("--working-dir", default=default_dir)
    args = parser.parse_args()
    asyncio.run(main(args.count, args.rounds, args.concurrency, args.working_dir))
