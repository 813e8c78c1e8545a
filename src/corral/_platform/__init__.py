"""What differs per platform, behind one small interface.

Each name here is chosen once, at import, for the platform corral runs on, with a documented
fallback where the best way is missing, so that the rest of corral never tests for a platform
and ``import corral`` works wherever Python runs. Linux gets the best of each; macOS and older
kernels get the fallbacks.

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
"""

from __future__ import annotations

from ._exits import HAS_PIDFD, ExitWatch, ExitWatcher
from ._groups import reaped_group_alive, signal_group, signal_reaped_group

__all__ = [
    "HAS_PIDFD",
    "ExitWatch",
    "ExitWatcher",
    "reaped_group_alive",
    "signal_group",
    "signal_reaped_group",
]
