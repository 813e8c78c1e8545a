"""Log query figures: tail, offset-with-index and fetch_all against their plain baselines.

Run with ``.venv/bin/python bench/logs.py [--size-mib N]``. It writes a log of 100-byte lines
(1 GiB by default) and a 100 MB one into a temporary directory, removed afterwards even on
error, and prints each figure with its target and PASS/MISS. Every time is the best of several
runs, measured in this run, with the files in the page cache (they were just written).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from corral import Cmd, CmdOptions, LoggingType, ProcessManager
from corral._logs import LogFile, LogsQuery

T = TypeVar("T")

LINE = 100  # bytes per line, newline included
MIB = 1024 * 1024


def write_log(path: Path, size: int) -> int:
    """Write ``size // LINE`` numbered 100-byte lines; return the number of lines."""
    lines = size // LINE
    pad = b"x" * (LINE - 14)
    batch = 100_000
    with path.open("wb") as f:
        for first in range(0, lines, batch):
            f.write(
                b"".join(b"%012d %s\n" % (i, pad) for i in range(first, min(first + batch, lines)))
            )
    return lines


def best(fn: Callable[[], T], runs: int) -> tuple[float, T]:
    """Best wall time of ``runs`` calls, and the last result."""
    times = []
    result: T
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def ms(t: float) -> str:
    return f"{t * 1e3:9.3f} ms"


def row(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<44}{value:>13}   {note}".rstrip())


async def _through_manager(path: Path, work: Path, runs: int) -> tuple[float, list[str]]:
    """Best time of ``get_logs_stdout(tail(100))`` on a process whose stdout log is ``path``'s
    content, written by the child itself (``cat``): handle -> actor -> worker thread -> reply."""
    query = LogsQuery.tail(100)
    async with ProcessManager.spawn(work) as handle:
        opts = CmdOptions.with_logging(LoggingType.STDOUT_ONLY)
        process_id = await handle.spawn(Cmd("cat", [str(path)], opts))
        await handle.wait(process_id)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            lines = await handle.get_logs_stdout(process_id, query)
            times.append(time.perf_counter() - t0)
    return min(times), lines


def bench_tail(path: Path) -> bool:
    t_corral, lines = best(lambda: LogFile(path).query(LogsQuery.tail(100)), 50)
    work = path.parent / "work"
    work.mkdir()
    t_handle, via_handle = asyncio.run(_through_manager(path, work, 50))

    def gnu_tail() -> bytes:
        return subprocess.run(
            ["tail", "-n", "100", str(path)], stdout=subprocess.PIPE, check=True
        ).stdout

    t_gnu, out = best(gnu_tail, 20)
    assert lines == via_handle == out.decode().splitlines(), "tail(100) differs from GNU tail"
    lf = LogFile(path)
    lf.query(LogsQuery.tail(100))
    ratio = t_handle / t_gnu
    ok = ratio <= 3 and t_handle < 0.005
    print("tail(100)")
    row("corral handle.get_logs_stdout (via the actor)", ms(t_handle))
    row("corral LogFile.query alone", ms(t_corral), f"(reads {lf.bytes_read} bytes)")
    row("GNU tail -n 100, whole command", ms(t_gnu))
    row("corral (handle) / GNU tail", f"{ratio:12.3f}", f"target <= 3 and < 5 ms: {verdict(ok)}")
    return ok


def bench_offset(path: Path, lines: int) -> bool:
    k = min(5_000_000, lines // 2)
    n = 100
    q = LogsQuery.with_offset_and_limit(k, n)
    t_first, first = best(lambda: LogFile(path).query(q), 3)
    lf = LogFile(path)
    lf.query(q)
    first_bytes = lf.bytes_read
    lf.query(q)
    again_bytes = lf.bytes_read - first_bytes
    t_again, again = best(lambda: lf.query(q), 50)

    def islice() -> list[str]:
        with path.open(errors="replace") as f:
            return [line.rstrip("\n") for line in itertools.islice(f, k, k + n)]

    t_islice, expected = best(islice, 3)
    assert first == again == expected, "offset query differs from islice"
    ratio = t_islice / t_again
    ok = ratio >= 100
    print(f"with_offset_and_limit({k:_}, {n})")
    row("corral, first call (builds index)", ms(t_first), f"(reads {first_bytes} bytes)")
    row("corral, repeated call", ms(t_again), f"(reads {again_bytes} bytes)")
    row("itertools.islice over the text file", ms(t_islice))
    row("islice / repeated", f"{ratio:11.0f}x", f"target >= 100x: {verdict(ok)}")
    row("islice / first call", f"{t_islice / t_first:11.1f}x")
    return ok


def bench_fetch_all(path: Path) -> bool:
    t_corral, lines = best(lambda: LogFile(path).query(LogsQuery.fetch_all()), 5)
    del lines

    def baseline() -> list[str]:
        with path.open(errors="replace") as f:
            return f.read().splitlines()

    t_base, expected = best(baseline, 5)
    assert LogFile(path).query(LogsQuery.fetch_all()) == expected, "fetch_all differs"
    del expected
    ratio = t_base / t_corral
    ok = ratio >= 0.8
    size_mb = path.stat().st_size / 1e6
    print(f"fetch_all() of {size_mb:.0f} MB")
    row("corral LogFile.query", ms(t_corral))
    row("open(errors='replace').read().splitlines()", ms(t_base))
    row("baseline time / corral time", f"{ratio:11.2f}x", f"target >= 0.8x: {verdict(ok)}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the big log (MiB)")
    parser.add_argument("--fetch-mb", type=int, default=100, help="size of the fetch_all log (MB)")
    args = parser.parse_args()
    if shutil.which("tail") is None:
        print("GNU tail not found", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="corral-bench-logs-") as tmp:
        big = Path(tmp) / "big.log"
        t0 = time.perf_counter()
        lines = write_log(big, args.size_mib * MIB)
        print(
            f"wrote {big.stat().st_size / MIB:.0f} MiB, {lines:_} lines of {LINE} bytes "
            f"in {time.perf_counter() - t0:.1f} s\n"
        )
        results = [bench_tail(big), bench_offset(big, lines)]
        big.unlink()
        small = Path(tmp) / "fetch.log"
        write_log(small, args.fetch_mb * 1_000_000)
        results.append(bench_fetch_all(small))
    print(f"\n{sum(results)}/{len(results)} targets met")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
