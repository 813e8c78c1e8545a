"""What differs per platform, behind one small interface.

The way each function works is chosen once, at import, for the platform corral runs on, with a
documented fallback where the best way is missing: the rest of corral never tests for a
platform, and ``import corral`` does not fail for want of ``fcntl``, ``resource``,
``os.pipe2`` or ``os.killpg``. Linux gets the best of each; macOS and older kernels get some of
the fallbacks.

Exit watching (:mod:`._exits`):

* :class:`ExitWatcher` / :class:`ExitWatch`: learn, on the loop, that a child exited; with a
  pidfd per child in one epoll (``HAS_PIDFD``), else a daemon thread per child in ``waitpid``.

Process groups (:mod:`._groups`):

* :func:`signal_group`: signal the group of a child not yet reaped; without ``os.killpg``, the
  child alone.
* :func:`signal_reaped_group`: signal what is left of a group whose leader was reaped, unless
  its id was reused.
* :func:`reaped_group_alive`: whether such a group still has a member that runs; without /proc,
  zombies count as members.

Pipes and FIFOs (:mod:`._pipes`):

* :func:`cloexec_pipe`: a pipe pair no exec inherits; ``os.pipe2`` where it exists, else
  ``os.pipe`` then ``os.set_inheritable`` (not atomic, harmless with ``close_fds=True``).
* :func:`make_fifo` / :func:`open_fifo_parent_end`: a message FIFO, owner-only, and the
  parent's end of it; without named pipes ``make_fifo`` raises OSError (ENOSYS).
* :func:`set_pipe_size`: raise a pipe's capacity (Linux); elsewhere None, the size unchanged.

The working dir's lock (:mod:`._locks`), a ``flock`` on the dir; without ``flock`` nothing is
locked and no manager can tell it is alone, so none reports or removes leftovers (``HAS_FLOCK``):

* :func:`try_lock_dir_exclusive`: lock a dir for this manager alone, if no other holds it.
* :func:`share_dir_lock`: let other managers in, still holding the dir.
* :func:`lock_dir_shared`: hold a dir along with other managers.

Resource limits and niceness (:mod:`._limits`); without the ``resource`` module no limit is
known (``HAS_RLIMITS``), so options that ask for one are refused, never at import:

* :func:`limits_setter`: the function a child runs before exec to set its rlimits and nice.
* :func:`rlimit_number`, ``RLIMIT_NAMES``, ``RLIM_INFINITY``: the limits this platform knows.

The environment (:mod:`._environ`):

* :func:`inherited_env`: this process's environment as bytes, copied the cheapest way there is.
"""

from __future__ import annotations

from ._environ import inherited_env
from ._exits import HAS_PIDFD, ExitWatch, ExitWatcher
from ._groups import reaped_group_alive, signal_group, signal_reaped_group
from ._limits import (
    HAS_RLIMITS,
    RLIM_INFINITY,
    RLIMIT_NAMES,
    limits_setter,
    rlimit_number,
)
from ._locks import HAS_FLOCK, lock_dir_shared, share_dir_lock, try_lock_dir_exclusive
from ._pipes import cloexec_pipe, make_fifo, open_fifo_parent_end, set_pipe_size

__all__ = [
    "HAS_FLOCK",
    "HAS_PIDFD",
    "HAS_RLIMITS",
    "RLIMIT_NAMES",
    "RLIM_INFINITY",
    "ExitWatch",
    "ExitWatcher",
    "cloexec_pipe",
    "inherited_env",
    "limits_setter",
    "lock_dir_shared",
    "make_fifo",
    "open_fifo_parent_end",
    "reaped_group_alive",
    "rlimit_number",
    "set_pipe_size",
    "share_dir_lock",
    "signal_group",
    "signal_reaped_group",
    "try_lock_dir_exclusive",
]
