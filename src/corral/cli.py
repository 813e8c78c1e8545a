"""The ``corral`` command: ``corral run`` runs a Procfile, ``corral demo`` shows the library.

``corral run [FILE]`` starts every process of a Procfile (or a ``corral.toml``), prints their
output live, each line prefixed with the time and the process's name, and stops them all when
one ends or on Ctrl-C; see :mod:`corral._cli_run`. ``corral demo`` runs the library end to end
on real processes in a few seconds; see :mod:`corral._cli_demo`.

The command line is parsed with the standard library's ``argparse``: two subcommands and a
handful of options stay small in it, and it adds no dependency to a library whose users may
only ever import it. The terminal side (colors, the live status table, the demo's progress
display) uses ``rich``, which also prints plainly when stdout is not a terminal and honours
``NO_COLOR``. ``rich`` comes with the ``cli`` extra (``pip install 'corral[cli]'``), not with
the library: without it the command says so and exits with status 1, and ``import corral``
never imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._cli_console import PipeAwareConsole

__all__ = ["main"]

#: Exit status for a file that cannot be run or a bad option (argparse's own is 2 too).
EXIT_USAGE = 2

#: Exit status when stdout is closed early (``corral demo | head``), as a shell reports a death
#: by SIGPIPE.
EXIT_BROKEN_PIPE = 128 + 13

#: Exit status when the ``cli`` extra is not installed.
EXIT_MISSING_EXTRA = 1

#: What the command says when ``rich`` cannot be imported.
MISSING_EXTRA = "the corral command line needs the cli extra: pip install 'corral[cli]'"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, not {text}")
    return value


def _concurrency(text: str) -> tuple[str, int]:
    name, equals, count = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=COUNT, not {text!r}")
    return name, _positive_int(count)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corral", description="Spawn and manage many child processes."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="show what corral does, on real processes, in a few seconds",
        description="Show corral end to end on real processes: a pool, messages both ways, "
        "logs, kill, scoped handles, terminate with grace, a restart policy, typed errors.",
    )
    demo.add_argument(
        "-n", "--count", type=_positive_int, default=48, help="processes in the pool (48)"
    )

    run = commands.add_parser(
        "run",
        help="run the processes of a Procfile or corral.toml until one ends or Ctrl-C",
        description="Start every process of FILE, print their output live, and stop them all "
        "(SIGTERM, then SIGKILL after --grace seconds) when the first one ends or on Ctrl-C. "
        "Exits with the first failure's status (128+N for signal N), else 0.",
        epilog="Procfile lines are 'name: command line' (split like a shell would, but no "
        "shell runs it); corral.toml has [process.NAME] tables with cmd, env, cwd, restart "
        "('never', 'on-failure', 'always'), max_restarts, backoff_initial and backoff_cap.",
    )
    run.add_argument(
        "file",
        nargs="?",
        type=Path,
        help="a Procfile, or a .toml file (default: ./Procfile, else ./corral.toml)",
    )
    run.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        default=[],
        help="run only this process (repeatable)",
    )
    run.add_argument(
        "-c",
        "--concurrency",
        action="append",
        type=_concurrency,
        metavar="NAME=COUNT",
        default=[],
        help="run COUNT copies of NAME, shown as NAME.1, NAME.2, ... (repeatable)",
    )
    run.add_argument(
        "--grace",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="time between SIGTERM and SIGKILL when stopping (5)",
    )
    run.add_argument("--no-color", action="store_true", help="no colors (NO_COLOR works too)")
    run.add_argument(
        "--logs-dir",
        type=Path,
        metavar="DIR",
        help="also append each process's output to DIR/NAME.stdout.log and NAME.stderr.log",
    )
    run.add_argument(
        "--status", action="store_true", help="show a live table of the processes' states"
    )
    return parser


def _console_class() -> type[PipeAwareConsole] | None:
    """The CLI's console class, or None (said on stderr) when ``rich`` is not installed."""
    try:
        from ._cli_console import PipeAwareConsole
    except ImportError as exc:
        print(f"{MISSING_EXTRA}\n({exc})", file=sys.stderr)
        return None
    return PipeAwareConsole


def _run_command(args: argparse.Namespace, console_class: type[PipeAwareConsole]) -> int:
    from ._cli_run import ConfigError, RunOptions, default_file, load_specs, run

    try:
        path: Path = args.file if args.file is not None else default_file()
        specs = load_specs(path)
        names = [spec.name for spec in specs]
        for name in [*args.only, *(name for name, _ in args.concurrency)]:
            if name not in names:
                raise ConfigError(f"{path}: no process named {name!r} (has {', '.join(names)})")
        if args.only:
            specs = [spec for spec in specs if spec.name in args.only]
        logs_dir: Path | None = args.logs_dir
        if logs_dir is not None:
            try:
                logs_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"--logs-dir {logs_dir}: {exc.strerror or exc}") from None
        options = RunOptions(
            grace=args.grace,
            concurrency=dict(args.concurrency),
            logs_dir=logs_dir,
            status=args.status,
        )
        console = console_class(
            color_system=None if args.no_color else "auto", highlight=False, soft_wrap=True
        )
        return run(specs, options, console)
    except ConfigError as exc:
        print(f"corral: {exc}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``corral`` command; returns its exit status (1, with a message on
    stderr, when the ``cli`` extra is not installed).

    >>> main(["run", "--only", "web", "Procfile"])  # doctest: +SKIP
    0
    """
    args = _parser().parse_args(argv)
    console_class = _console_class()
    if console_class is None:
        return EXIT_MISSING_EXTRA
    try:
        if args.command == "run":
            return _run_command(args, console_class)
        from ._cli_demo import demo

        return demo(args.count, console_class(highlight=False))
    except BrokenPipeError:  # stdout closed early: stop quietly
        with contextlib.suppress(OSError, ValueError):  # the interpreter's last flush too
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
