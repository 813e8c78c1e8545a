"""Start-up cost of ``from corral import child`` and ``import corral``, against bare Python.

    .venv/bin/python bench/child_import.py [--runs 20] [--rounds 5] [--workers 8] [--jobs 100]

1. The median wall time of ``python -c "pass"``, ``python -c "from corral import child"`` and
   ``python -c "import corral"`` over ``--runs`` runs of each, run alternately (pass, child,
   import, pass, child, ...) so that a noisy neighbour hurts them alike, and each one's
   difference from and ratio to bare Python measured in the same run.
2. A pool of ``--workers`` Python workers (``subprocess.Popen``, standard I/O) sharing ``--jobs``
   JSON jobs round-robin: each worker echoes its jobs with ``child.messages("json")`` and
   ``child.send(..., "json")`` and exits at the end of its input. Timed from the first start to
   the last exit, once with ``from corral import child`` and once with a plain copy of
   ``corral/child.py`` imported as a standard-library-only module, alternating over
   ``--rounds`` rounds; the medians are printed with their ratio.

Which corral is measured is printed first: point ``PYTHONPATH`` at another tree's ``src`` to
measure that one. The children cache their bytecode in a temporary ``PYTHONPYCACHEPREFIX``
(warmed by one untimed run of each way), as an installed package has its bytecode compiled,
even where ``PYTHONDONTWRITEBYTECODE`` is set; ``--no-bytecode-cache`` measures them compiling
every module that has no cached bytecode at each start instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

WORKER = """
import sys
{import_line}
for job in child.messages("json"):
    child.send({{"id": job["id"], "echo": job["payload"]}}, "json")
"""


def run_once(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True)
    return time.perf_counter() - start


def start_up(runs: int, env: dict[str, str]) -> None:
    ways = {
        "pass": "pass",
        "from corral import child": "from corral import child",
        "import corral": "import corral",
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for code in ways.values():  # warm-up: fills the bytecode cache
        run_once([sys.executable, "-c", code], env)
    for _ in range(runs):
        for name, code in ways.items():
            times[name].append(run_once([sys.executable, "-c", code], env))
    print(f"start-up, median of {runs} alternating runs each:")
    print_medians(times, "pass", "pass", lambda name: f"python -c {name!r:28}")


def print_medians(
    times: dict[str, list[float]], base_name: str, versus: str, label: Callable[[str], str]
) -> None:
    """Each way's median, and how it compares with ``base_name``'s (called ``versus``),
    measured in the same run."""
    base = statistics.median(times[base_name])
    for name, samples in times.items():
        median = statistics.median(samples)
        line = f"  {label(name)} {median * 1000:7.1f} ms"
        if name != base_name:
            line += f"   {(median - base) * 1000:+7.1f} ms vs {versus}, {median / base:5.2f}x"
        print(line)


def pool_once(import_line: str, workers: int, jobs: int, env: dict[str, str]) -> float:
    code = WORKER.format(import_line=import_line)
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        for _ in range(workers)
    ]
    expected: list[set[int]] = [set() for _ in range(workers)]
    for job_id in range(jobs):
        index = job_id % workers
        line = json.dumps({"id": job_id, "payload": f"job {job_id}"}) + "\n"
        stdin = procs[index].stdin
        assert stdin is not None
        stdin.write(line.encode())
        expected[index].add(job_id)
    for proc, ids in zip(procs, expected, strict=True):
        out, _ = proc.communicate()
        replies = [json.loads(line) for line in out.splitlines()]
        if {reply["id"] for reply in replies} != ids or proc.returncode != 0:
            raise SystemExit(f"worker {proc.pid} answered {replies!r} (exit {proc.returncode})")
    return time.perf_counter() - start


def pool(rounds: int, workers: int, jobs: int, env: dict[str, str], copy_dir: str) -> None:
    copy_env = dict(
        env, PYTHONPATH=os.pathsep.join(filter(None, [copy_dir, env.get("PYTHONPATH")]))
    )
    ways = {
        "corral.child": ("from corral import child", env),
        "stdlib copy": ("import corral_child_copy as child", copy_env),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for import_line, way_env in ways.values():  # warm-up: fills the bytecode cache
        pool_once(import_line, 1, 1, way_env)
    for _ in range(rounds):
        for name, (import_line, way_env) in ways.items():
            times[name].append(pool_once(import_line, workers, jobs, way_env))
    print(f"pool of {workers} workers, {jobs} JSON jobs, median of {rounds} alternating rounds:")
    print_medians(times, "stdlib copy", "the copy", lambda name: f"{name:14}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--no-bytecode-cache", action="store_true")
    args = parser.parse_args()
    env = dict(os.environ)
    cache_dir = tempfile.mkdtemp(prefix="corral-bench-pycache-")
    if args.no_bytecode_cache:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = cache_dir
    where = subprocess.run(
        [sys.executable, "-c", "import corral.child as c; print(c.__file__)"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"{sys.executable} (Python {sys.version.split()[0]}), corral.child from {where}")
    print("bytecode: " + ("not cached" if args.no_bytecode_cache else f"cached in {cache_dir}"))
    copy_dir = tempfile.mkdtemp(prefix="corral-child-copy-")
    try:
        start_up(args.runs, env)
        shutil.copyfile(where, Path(copy_dir) / "corral_child_copy.py")
        pool(args.rounds, args.workers, args.jobs, env, copy_dir)
    finally:
        shutil.rmtree(copy_dir)
        shutil.rmtree(cache_dir)


if __name__ == "__main__":
    main()
