"""From a :class:`Runnable` to a running child: its dir, its fds, its environment, the exec.

``spawn_child`` either returns a started child with everything the parent keeps for it, or
raises :class:`SpawnProcessError` having removed every file and closed every fd it made.

The exec goes through ``subprocess.Popen`` with no ``preexec_fn``: CPython then uses
``vfork``/``posix_spawn``-like fast paths, which matter when a parent holds much memory.
``process_group=0`` puts each child in its own process group, so signals reach its descendants.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ._errors import SpawnProcessError
from ._model import (
    PROCESS_DATA_DIR_ENV_NAME,
    Cmd,
    CmdOptions,
    ProcessId,
    Runnable,
)

__all__ = [
    "DATA_DIR_NAME",
    "SpawnedChild",
    "build_env",
    "make_private_dir",
    "remove_process_dir",
    "spawn_child",
]

#: Name of the child's own data dir inside its process dir.
DATA_DIR_NAME = "data"


@dataclass(slots=True)
class SpawnedChild:
    """What the parent keeps of a started child."""

    popen: subprocess.Popen[bytes]
    cmd: Cmd
    process_dir: Path
    data_dir: Path


def make_private_dir(path: Path) -> None:
    """Create ``path`` with mode 0700 whatever the umask."""
    os.mkdir(path, 0o700)
    # mkdir's mode is filtered by the umask. A chmod is a journaled write on most file systems,
    # a stat is not: only pay for the chmod when an odd umask took owner bits away.
    if stat.S_IMODE(os.stat(path).st_mode) != 0o700:
        os.chmod(path, 0o700)


def remove_process_dir(process_dir: Path) -> None:
    """Delete a process dir and everything in it; the common empty case costs two rmdirs."""
    try:
        os.rmdir(process_dir / DATA_DIR_NAME)
        os.rmdir(process_dir)
    except OSError:
        shutil.rmtree(process_dir, ignore_errors=True)


def build_env(options: CmdOptions, extra: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: inherited (unless ``clear_envs``), minus removals, plus ``envs``.

    corral's own variables (``extra``) come last so that they always hold.
    """
    env = {} if options.clear_envs else dict(os.environ)
    for name in options.envs_to_remove:
        env.pop(name, None)
    env.update(options.envs)
    env.update(extra)
    return env


def _describe(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    if exc.filename is not None:
        text += f": {os.fsdecode(exc.filename)!r}"
    return text


def spawn_child(
    process_id: ProcessId, runnable: Runnable, working_dir: Path, devnull: int
) -> SpawnedChild:
    """Create the process dir, bootstrap ``runnable`` in it and start the child.

    ``devnull`` is an fd open on ``/dev/null`` (shared by all children of a manager).
    """
    process_dir = working_dir / str(process_id)
    data_dir = process_dir / DATA_DIR_NAME
    try:
        make_private_dir(process_dir)
        make_private_dir(data_dir)
    except OSError as exc:
        shutil.rmtree(process_dir, ignore_errors=True)
        raise SpawnProcessError(
            f"cannot create the process dir of process {process_id} in {str(working_dir)!r}: "
            f"{_describe(exc)}",
            process_id=process_id,
        ) from exc

    bootstrapped = False
    try:
        try:
            cmd = runnable.bootstrap_cmd(process_dir)
        except Exception as exc:
            reason = _describe(exc) if isinstance(exc, OSError) else repr(exc)
            raise SpawnProcessError(
                f"cannot prepare process {process_id}: {reason}", process_id=process_id
            ) from exc
        bootstrapped = True
        if not isinstance(cmd, Cmd):
            raise SpawnProcessError(
                f"cannot spawn process {process_id}: bootstrap_cmd returned {cmd!r}, not a Cmd",
                process_id=process_id,
            )
        _reject_unsupported(process_id, cmd.options)
        env = build_env(cmd.options, {PROCESS_DATA_DIR_ENV_NAME: str(data_dir)})
        try:
            popen = subprocess.Popen(
                cmd.argv(),
                stdin=devnull,
                stdout=devnull,
                stderr=devnull,
                cwd=cmd.options.current_dir,
                env=env,
                process_group=0,
                close_fds=True,
            )
        except OSError as exc:
            raise SpawnProcessError(
                f"cannot spawn process {process_id} ({cmd}): {_describe(exc)}",
                process_id=process_id,
            ) from exc
    except BaseException:
        if bootstrapped:
            with contextlib.suppress(Exception):
                runnable.clean_after_fail(process_dir)
        shutil.rmtree(process_dir, ignore_errors=True)
        raise
    return SpawnedChild(popen=popen, cmd=cmd, process_dir=process_dir, data_dir=data_dir)


def _reject_unsupported(process_id: ProcessId, options: CmdOptions) -> None:
    if options.logging_type is not None:
        raise SpawnProcessError(
            f"cannot spawn process {process_id}: log capture is not supported yet",
            process_id=process_id,
        )
    if options.message_input is not None or options.message_output is not None:
        raise SpawnProcessError(
            f"cannot spawn process {process_id}: messaging is not supported yet",
            process_id=process_id,
        )
