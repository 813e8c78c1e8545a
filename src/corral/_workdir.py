"""The manager's working dir: where process dirs live, who else uses it, what a crash left there.

A working dir the user passes in may be shared by several managers (each process dir is named by
a fresh UUID, so they never collide). Each manager holds a shared ``flock`` on the dir itself for
as long as it lives. At start a manager first tries for the lock exclusively: if it gets
it, no other manager is alive, so process dirs already present were left by one that crashed
(SIGKILL, power loss). Those are reported (a ``corral`` logger warning, and
``ProcessManagerHandle.stale_process_dirs``) and, with ``remove_stale=True``, removed. Where there
is no ``flock``, no manager can tell it is alone, and none are (see :mod:`corral._platform`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from . import _guardian as guardian
from ._model import ensure_mode
from ._platform import lock_dir_shared, share_dir_lock, try_lock_dir_exclusive
from ._spawn import SPARES_DIR_PREFIX, retry_unremoved

__all__ = ["WorkingDir"]

_log = logging.getLogger("corral")


def _is_process_dir(path: Path) -> bool:
    try:
        uuid.UUID(path.name)
    except ValueError:
        return False
    return path.is_dir() and not path.is_symlink()


def _check_writable(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(2, "working dir does not exist", str(path))
    if not path.is_dir():
        raise NotADirectoryError(20, "working dir is not a directory", str(path))
    # access() says yes to root on a read-only file system; a real probe does not lie.
    os.rmdir(tempfile.mkdtemp(prefix=".corral-probe-", dir=path))


class WorkingDir:
    """A working dir in use by one manager."""

    def __init__(self, path: Path, owned: bool, lock_fd: int, stale: tuple[Path, ...]) -> None:
        self.path = path
        #: Whether corral made this dir (and removes it at the end).
        self.owned = owned
        #: Process dirs a crashed earlier manager left here (found at start).
        self.stale = stale
        self._lock_fd = lock_fd

    @classmethod
    def create_temp(cls) -> WorkingDir:
        """A private temp dir (0700), removed by :meth:`release` or by the guardian."""
        path = Path(tempfile.mkdtemp(prefix="corral-"))
        try:
            ensure_mode(path, 0o700)  # mkdtemp's 0700 is filtered by the umask
        except BaseException:
            os.rmdir(path)
            raise
        guardian.register_dir(path)
        return cls(path, owned=True, lock_fd=-1, stale=())

    @classmethod
    def claim(cls, path: str | os.PathLike[str], remove_stale: bool) -> WorkingDir:
        """Use the user's dir ``path``: check it, lock it, find what a crash left there."""
        path = Path(path).absolute()
        _check_writable(path)
        stale: tuple[Path, ...] = ()
        fd = try_lock_dir_exclusive(path)
        if fd is not None:  # alone here: any process dir is a leftover
            for spares in path.glob(f"{SPARES_DIR_PREFIX}*"):
                # Emptied process dirs kept for reuse by a manager that died: nobody's data.
                shutil.rmtree(spares, ignore_errors=True)
            stale = tuple(sorted(p for p in path.iterdir() if _is_process_dir(p)))
            if stale:
                what = "removing" if remove_stale else "leaving (pass remove_stale=True to remove)"
                _log.warning(
                    "working dir %s holds %d process dir(s) of a manager that did not shut down; "
                    "%s them: %s",
                    path,
                    len(stale),
                    what,
                    ", ".join(p.name for p in stale),
                )
                if remove_stale:
                    for leftover in stale:
                        shutil.rmtree(leftover, ignore_errors=True)
            share_dir_lock(fd)  # others may join now
        else:  # another live manager holds it: its dirs are not ours to judge
            # Waits only while another manager is checking for leftovers: short.
            fd = lock_dir_shared(path)
        return cls(path, owned=False, lock_fd=fd, stale=stale)

    def release(self) -> None:
        """Remove the dir if corral made it; else drop the lock, once the process dirs that
        could not be removed before (with no fd left, say) are."""
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)
            guardian.unregister_dir(self.path)
            retry_unremoved(self.path)  # gone with the rest: forget them
        elif self._lock_fd >= 0:
            left = retry_unremoved(self.path)
            if left:
                _log.warning("cannot remove the process dir(s) %s", ", ".join(left))
            os.close(self._lock_fd)  # closing the only fd on it drops the flock
            self._lock_fd = -1
