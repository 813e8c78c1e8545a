"""The working dir's lock: which managers use a dir, and whether one is alone in it.

A manager holds a shared ``flock`` on its working dir for as long as it lives, and first tries
for it exclusively: whoever gets that knows no other manager is alive there. The lock is on the
directory itself: no file to create, clean up or race on. Closing the fd drops it.

Where ``flock`` is missing (no ``fcntl``), nothing is locked, and no manager can learn that it is
alone: :func:`try_lock_dir_exclusive` always says another manager holds the dir. So process dirs
found at start are never taken for a crashed manager's leftovers: they are neither reported nor
removed (``remove_stale`` has no effect), rather than removed under a manager that is alive.
"""

from __future__ import annotations

import os

try:
    import fcntl
except ImportError:  # not POSIX: see the module's docstring
    fcntl = None  # type: ignore[assignment]

__all__ = ["HAS_FLOCK", "lock_dir_shared", "share_dir_lock", "try_lock_dir_exclusive"]

#: Whether working dirs are really locked (else see the module's docstring).
HAS_FLOCK = fcntl is not None and hasattr(fcntl, "flock")


def _open_dir(path: str | os.PathLike[str]) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _lock(path: str | os.PathLike[str], operation: int, *, wait: bool) -> int | None:
    """Open ``path`` and ``flock`` it; None if that would block and ``wait`` is false."""
    fd = _open_dir(path)
    try:
        fcntl.flock(fd, operation if wait else operation | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def try_lock_dir_exclusive(path: str | os.PathLike[str]) -> int | None:
    """An fd holding an exclusive lock on the dir ``path``, or None if another fd holds a lock.

    Never waits. Whoever gets it is the only manager alive in the dir. Without ``flock``: always
    None, since being alone cannot be proven.
    """
    if not HAS_FLOCK:
        return None
    return _lock(path, fcntl.LOCK_EX, wait=False)


def lock_dir_shared(path: str | os.PathLike[str]) -> int:
    """An fd holding a shared lock on the dir ``path``, waiting while another holds it
    exclusively (a manager checking for leftovers: short). Without ``flock``: the dir opened,
    unlocked."""
    if not HAS_FLOCK:
        return _open_dir(path)
    fd = _lock(path, fcntl.LOCK_SH, wait=True)
    assert fd is not None  # a waiting lock is taken or raises
    return fd


def share_dir_lock(fd: int) -> None:
    """Turn the exclusive lock held through ``fd`` into a shared one: other managers may now
    join the dir."""
    if HAS_FLOCK:
        fcntl.flock(fd, fcntl.LOCK_SH)
