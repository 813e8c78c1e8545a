"""Pipes and FIFOs: a close-on-exec pipe pair, the message FIFOs, and a pipe's capacity.

``os.pipe2`` (Linux, the BSDs) makes both ends close-on-exec in the same system call; where it
is missing (macOS) ``os.pipe`` is followed by ``os.set_inheritable``. Pipe capacity can only be
changed on Linux (``F_SETPIPE_SZ``); elsewhere pipes keep the size they were made with.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: pipes keep their size
    fcntl = None  # type: ignore[assignment]

__all__ = ["cloexec_pipe", "make_fifo", "open_fifo_parent_end", "set_pipe_size"]


def _pipe2() -> tuple[int, int]:
    return os.pipe2(os.O_CLOEXEC)


def _pipe_then_cloexec() -> tuple[int, int]:
    # Two steps, not atomic: a fork and exec by another thread in between, with no close_fds,
    # could inherit the ends. corral's own children never do (close_fds=True).
    read_end, write_end = os.pipe()
    try:
        os.set_inheritable(read_end, False)
        os.set_inheritable(write_end, False)
    except BaseException:
        os.close(read_end)
        os.close(write_end)
        raise
    return read_end, write_end


def _choose_pipe() -> Callable[[], tuple[int, int]]:
    return _pipe2 if hasattr(os, "pipe2") else _pipe_then_cloexec


#: How :func:`cloexec_pipe` makes its pipe on this platform.
_make_pipe = _choose_pipe()


def cloexec_pipe() -> tuple[int, int]:
    """A new pipe, ``(read_end, write_end)``, neither end inherited by an exec.

    For a child's standard I/O: the child gets its end as stdin or stdout through ``Popen``,
    and no other child gets a copy, which would keep the pipe open after its own child exited.
    """
    return _make_pipe()


def _mkfifo(path: str | os.PathLike[str], mode: int) -> None:
    if not hasattr(os, "mkfifo"):  # no named pipes here: said as an OSError, like a failed mkfifo
        raise OSError(errno.ENOSYS, "named pipes are not supported on this platform", path)
    os.mkfifo(path, mode)


def make_fifo(path: str | os.PathLike[str]) -> Path:
    """Create the FIFO ``path`` with mode 0600 whatever the umask, and return its path.

    Only the user who runs the manager may read or write a child's messages. Where there are no
    named pipes, raises OSError (ENOSYS).
    """
    _mkfifo(path, 0o600)
    os.chmod(path, 0o600)  # the umask may have removed owner bits
    return Path(path)


def open_fifo_parent_end(path: str | os.PathLike[str]) -> int:
    """Open the parent's end of a message FIFO: read-write, non-blocking, close-on-exec.

    ``O_RDWR`` makes ``open`` return at once even if the child never opens its end, and keeps
    the FIFO from reporting EOF each time a child that reopens it per message closes it (POSIX
    leaves ``O_RDWR`` on a FIFO undefined; Linux and macOS both behave so). The price: the
    parent never sees EOF or ``EPIPE`` on it, so the manager tells the message reader and writer
    when the child has exited (their ``child_exited()``). Use the same call for ``INPUT_PIPE``
    and ``OUTPUT_PIPE``.
    """
    return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


#: fcntl's command to resize a pipe (Linux), or None where pipes cannot be resized.
_SETPIPE_SZ: int | None = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None


@functools.cache
def _pipe_max_size() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024 * 1024  # the kernel's default


def set_pipe_size(fd: int, size: int) -> int | None:
    """Raise the capacity of the pipe or FIFO ``fd`` to ``size`` bytes; best effort.

    A bigger pipe lets a chatty child run further ahead of the parent, and a flood costs fewer
    wake-ups. The size is capped at ``/proc/sys/fs/pipe-max-size``. Returns the new capacity,
    or ``None`` when it could not be changed (not Linux, not a pipe, or the user's pipe memory
    quota, ``/proc/sys/fs/pipe-user-pages-soft``, 64 MiB by default, is used up: past it the
    kernel gives every new pipe of the user only two pages, which is why corral raises a pipe
    only where a flood shows it helps, and not to the 1 MiB maximum).
    """
    if _SETPIPE_SZ is None:
        return None
    try:
        return fcntl.fcntl(fd, _SETPIPE_SZ, min(size, _pipe_max_size()))
    except OSError:
        return None
