"""Signalling a child's process group, before and after the child (its leader) is reaped.

Each child leads a group of its own (``process_group=0``), so a signal to the group reaches what
it started too. While the leader is not reaped (running, or a zombie) the group's id is its pid
and cannot name anyone else's group: :func:`signal_group`.

A child's process group outlives the child while anything the child started still runs in it. Its
id stays reserved as long as one member lives: POSIX reuses no pid that is still a process group
id. Once every member is gone the number is free, and a later process may get it as its pid and
lead a group of that id. So a group whose leader was reaped is signalled only if no process has
its id as pid: such a process would mean the number was reused, hence that the group we led is
empty (:func:`signal_reaped_group`).

Where ``os.killpg`` is missing (no POSIX process groups), a signal reaches the leader alone, and
nothing of a group can be reached once its leader is reaped.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["HAS_PROC", "reaped_group_alive", "signal_group", "signal_reaped_group"]


def _kill_leader(pgid: int, sig: int) -> None:
    # A group's id is its leader's pid: without groups, the leader is all that can be reached.
    os.kill(pgid, sig)


def _choose_killpg() -> Callable[[int, int], None]:
    return getattr(os, "killpg", _kill_leader)


#: How a group is signalled on this platform: ``os.killpg``, or the leader alone.
_killpg = _choose_killpg()


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to group ``pgid``, led by a child of ours that is not reaped yet.

    The unreaped leader holds the id, so the group is certainly ours. False if there is no such
    group any more; other errors (EPERM) are raised, for the caller to judge.
    """
    try:
        _killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


#: Where the state and group of every process can be read (Linux).
_PROC = "/proc"
HAS_PROC = os.path.isfile(f"{_PROC}/self/stat")


def _pid_in_use(pid: int) -> bool:
    """Whether a process (or a thread: ids are shared) has ``pid`` as its id."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's process
        return True
    return True


def signal_reaped_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` (0: only probe) to what is left of group ``pgid``, whose leader we reaped.

    False, signalling nothing, when the group is gone for good: no member is left, or a process
    has ``pgid`` as its pid, so the number was reused and the group we led is empty (a group's id
    is never handed out as a pid while a member lives). The two checks are not atomic: the number
    would have to be freed, reused and made a group's id in between, within microseconds.
    Without ``os.killpg`` nothing of the group can be reached: False.
    """
    if _killpg is _kill_leader or _pid_in_use(pgid):  # no groups: nothing left to reach
        return False
    try:
        _killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: members that changed their uid; nothing this process can do
        return True
    return True


def _has_live_member(pgid: int) -> bool:
    """Whether a process that is not a zombie has ``pgid`` as its group (Linux, from /proc)."""
    with os.scandir(_PROC) as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"{_PROC}/{entry.name}/stat", "rb") as f:
                    text = f.read()
            except OSError:  # gone meanwhile
                continue
            # The name (field 2) is in parentheses and may hold anything: split after it.
            state, _, group = text[text.rindex(b")") + 2 :].split(maxsplit=3)[:3]
            if int(group) == pgid and state not in (b"Z", b"X"):
                return True
    return False


def reaped_group_alive(pgid: int) -> bool:
    """Whether group ``pgid``, whose leader we reaped, still has a member that runs.

    Zombies do not count: they wait for their parent (often init, which may reap them seconds
    later) and run no more. Without /proc a zombie counts as a member.
    """
    if not signal_reaped_group(pgid, 0):
        return False
    if not HAS_PROC:
        return True
    try:
        return _has_live_member(pgid)
    except OSError:  # /proc unreadable (out of fds): assume the worst, the caller escalates
        return True
