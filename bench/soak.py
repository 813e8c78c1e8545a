"""Soak: many spawn/message/wait/kill cycles, and what they leave behind.

    .venv/bin/python bench/soak.py [--cycles 10000] [--batch 100] [--working-dir DIR]

Each cycle spawns a ``sh`` child with named-pipe messaging and both streams logged, sends it one
message, reads the echo, waits for its exit and kills it (``kill`` of an exited process forgets
it and deletes its dir); ``--batch`` cycles run at once. After a warm-up batch (the guardian,
caches, the loop's own structures), it reports what the parent holds before and after the
cycles: zombies (children waiting to be reaped), open fds, process dirs left in the working dir,
processes the manager still lists, RSS, and the collector's object count; and the rate. The
exit status is 1 if anything is left behind (a zombie, an fd, a dir, a process), else 0.

The test suite runs the same cycle a few hundred times with exact checks per cycle
(``tests/test_lifecycle.py::test_churn_leaves_no_zombie_fd_dir_or_memory``); this is the long
run that shows slow leaks, with figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

from scale import fds, rss_kib  # bench/ is on the path of a script run from it

from corral import Cmd, CmdOptions, ExitStatus, LoggingType, ProcessManager
from corral._spawn import SPARES_DIR_PREFIX

#: The child answers one message over its named pipes and writes to both logged streams.
CHILD = 'read -r m < "$INPUT_PIPE"; echo "$m" > "$OUTPUT_PIPE"; echo out; echo err >&2'
TIMEOUT = 30.0


def zombies() -> int:
    """Children of this process that have exited and are not reaped yet."""
    children: set[str] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            children.update(f.read().split())
    count = 0
    for pid in children:
        try:
            with open(f"/proc/{pid}/stat") as f:
                count += f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:  # reaped meanwhile
            continue
    return count


def snapshot(work_dir: Path) -> dict[str, int]:
    gc.collect()
    return {
        "zombies": zombies(),
        "fds": fds(),
        # Process dirs; not the manager's spares (emptied dirs it keeps for reuse while it lives).
        "dirs": sum(1 for p in work_dir.iterdir() if not p.name.startswith(SPARES_DIR_PREFIX)),
        "rss_kib": rss_kib(),
        "objects": len(gc.get_objects()),
    }


async def soak(cycles: int, batch: int, work_dir: Path) -> int:
    options = CmdOptions.with_named_pipe_messaging().replace(
        logging_type=LoggingType.STDOUT_AND_STDERR
    )
    cmd = Cmd("sh", ["-c", CHILD], options)
    async with ProcessManager.spawn(work_dir) as handle:

        async def cycle() -> None:
            process = await handle.spawn_with_handle(cmd)
            answers = await process.subscribe_message_stream()
            await process.send_message("ping")
            if (await anext(answers)).to_bytes() != b"ping":
                raise AssertionError("the child did not echo the message")
            info = await process.wait(TIMEOUT)
            if info.exit_status != ExitStatus(0, None, True):
                raise AssertionError(f"the child ended with {info.exit_status}")
            await process.kill()

        async def run(count: int) -> None:
            done = 0
            while done < count:
                size = min(batch, count - done)
                async with asyncio.timeout(TIMEOUT):
                    await asyncio.gather(*(cycle() for _ in range(size)))
                done += size

        await run(batch)  # warm-up
        before = snapshot(work_dir)
        began = time.perf_counter()
        await run(cycles)
        elapsed = time.perf_counter() - began
        after = snapshot(work_dir)
        listed = len(await handle.list_processes())

    print(f"{cycles} cycles, {batch} at a time: {elapsed:.1f} s, {cycles / elapsed:.0f} cycles/s")
    print(f"{'':10} {'before':>10} {'after':>10} {'change':>10}")
    for name, value in before.items():
        print(f"{name:10} {value:>10} {after[name]:>10} {after[name] - value:>+10}")
    print(f"{'listed':10} {'':>10} {listed:>10}")
    left = after["zombies"] or after["fds"] != before["fds"] or after["dirs"] or listed
    print("left behind: " + ("something, see above" if left else "nothing"))
    return 1 if left else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--working-dir", help="where process dirs go (default: a temp dir)")
    args = parser.parse_args()
    if args.cycles < 1 or args.batch < 1:
        parser.error("--cycles and --batch must be >= 1")
    if args.working_dir is not None:
        sys.exit(asyncio.run(soak(args.cycles, args.batch, Path(args.working_dir))))
    with tempfile.TemporaryDirectory(prefix="corral-soak-") as tmp:
        sys.exit(asyncio.run(soak(args.cycles, args.batch, Path(tmp))))


if __name__ == "__main__":
    main()
