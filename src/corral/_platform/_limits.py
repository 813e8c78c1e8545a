"""Resource limits and niceness, set in the child between fork and exec.

Where the ``resource`` module is missing no rlimit is known here: ``HAS_RLIMITS`` is false,
:class:`~corral.CmdOptions` refuses any ``rlimits`` with :class:`~corral.CmdOptionsError`, and
:func:`limits_setter` raises OSError (ENOSYS) for them, reported by the spawn as
:class:`~corral.SpawnProcessError`. ``nice`` needs only ``os.setpriority``; where that is missing
it fails the same way.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping

try:
    import resource
except ImportError:  # not POSIX: see the module's docstring
    resource = None  # type: ignore[assignment]

__all__ = ["HAS_RLIMITS", "RLIMIT_NAMES", "RLIM_INFINITY", "limits_setter", "rlimit_number"]

#: Whether resource limits can be set on this platform.
HAS_RLIMITS = resource is not None

#: Every resource limit this platform knows: number -> name (``"RLIMIT_NOFILE"``).
RLIMIT_NAMES: dict[int, str] = (
    {getattr(resource, n): n for n in dir(resource) if n.startswith("RLIMIT_")}
    if resource is not None
    else {}
)

#: The limit that means no limit (-1 where rlimits are unknown: refused as a limit anyway).
RLIM_INFINITY: int = resource.RLIM_INFINITY if resource is not None else -1


def rlimit_number(name: str) -> int | None:
    """The number of the resource limit called ``name`` (``"RLIMIT_NOFILE"``), or None if this
    platform has no such limit; limits are numbered differently on each platform."""
    number = getattr(resource, name, None) if resource is not None else None
    return number if isinstance(number, int) else None


def _unsupported(what: str) -> OSError:
    return OSError(errno.ENOSYS, f"{what} not supported on this platform")


def _missing(*args: object) -> None:
    raise _unsupported("this is")  # never called: limits_setter refuses first


#: What the child calls, bound once; where missing, limits_setter refuses what needs them.
_setrlimit: Callable[[int, tuple[int, int]], None] = getattr(resource, "setrlimit", _missing)
_setpriority: Callable[[int, int, int], None] = getattr(os, "setpriority", _missing)
_PRIO_PROCESS: int = getattr(os, "PRIO_PROCESS", 0)


def limits_setter(
    rlimits: Mapping[int, tuple[int, int]], nice: int | None
) -> Callable[[], None] | None:
    """What the child runs between fork and exec to apply ``rlimits`` and ``nice``, or None.

    Only processes with these options pay for it: any ``preexec_fn`` makes CPython fork
    instead of vfork (about 3x the spawn time for a small parent, far more for a big one).
    The function only makes system calls on values bound beforehand: nothing that could wait
    on a lock another thread held at fork time. Raises OSError (ENOSYS), in the parent, where
    the platform cannot set what is asked: in the child, a failure would only say it failed.
    """
    limits = list(rlimits.items())
    if not limits and nice is None:
        return None
    if limits and _setrlimit is _missing:
        raise _unsupported("rlimits are")
    if nice is not None and _setpriority is _missing:
        raise _unsupported("nice is")
    setrlimit, setpriority, prio_process = _setrlimit, _setpriority, _PRIO_PROCESS

    def apply_limits() -> None:
        for which, soft_hard in limits:
            setrlimit(which, soft_hard)
        if nice is not None:
            setpriority(prio_process, 0, nice)

    return apply_limits
