"""No orphans, even when the parent is SIGKILLed: a guardian process that outlives it briefly.

Once per parent process corral starts a tiny guardian (a Python interpreter running
``_GUARDIAN_CODE``) in a session of its own, with a pipe from the parent as its stdin. Each
child's process group is registered on spawn (one pipe write) and forgotten once its leader has
exited: on Linux the guardian watches each leader through a pidfd, elsewhere the parent tells it
when it reaps the child. When the
parent dies, however it dies, the kernel closes the pipe; the guardian reads EOF and SIGKILLs every
group still registered, grandchildren included, removes the dirs it was told about (process dirs,
a manager's own temp dir), then exits.

Why not ``PR_SET_PDEATHSIG`` in each child (measured on a 2-core Linux VM, ``/bin/true``)?

==============================  ===========  ==========================================
way                             spawns/s     notes
==============================  ===========  ==========================================
plain ``Popen`` (vfork)         ~1,800       the fast path corral keeps
``setpriv --pdeathsig KILL``    ~710         an extra exec per child (2.5x slower)
``preexec_fn`` calling prctl    ~510         forces fork; ~40x slower with a 1 GiB parent
guardian                        ~1,800       one 8-byte pipe write per spawn and reap
==============================  ===========  ==========================================

The death signal also only reaches the direct child (grandchildren survive, reparented to
init), fires when the *thread* that spawned exits rather than the process, and does not exist on
macOS. The guardian kills whole groups, does not care which thread spawned, and needs only a pipe.
Its cost is one extra process per parent (started on the first spawn, ~20 ms) and a window of a
few microseconds between a child's start and its registration.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

from ._platform import HAS_PIDFD

__all__ = ["register_dir", "register_group", "unregister_dir", "unregister_group"]

_GUARDIAN_CODE = r"""
import os, select, shutil, signal
for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGPIPE"):
    if hasattr(signal, name):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
groups, dirs, leaders = set(), set(), {}
poller = select.poll()
poller.register(0, select.POLLIN)
pending = b""
running = True
while running:
    for fd, _ in poller.poll():
        if fd != 0:  # a group leader exited: its id may be reused, forget the group
            groups.discard(leaders.pop(fd))
            poller.unregister(fd)
            os.close(fd)
            continue
        try:
            data = os.read(0, 65536)
        except InterruptedError:
            continue
        if not data:
            running = False
            break
        pending += data
        *records, pending = pending.split(b"\n")
        for record in records:
            kind, sign, value = record[:1], record[1:2], record[2:]
            try:
                if kind == b"G" and sign == b"+":
                    group = int(value)
                    groups.add(group)
                    if hasattr(os, "pidfd_open"):  # watch the leader: no unregistration needed
                        try:
                            leader = os.pidfd_open(group)
                        except ProcessLookupError:  # already gone
                            groups.discard(group)
                        except OSError:  # no pidfds here: the parent says when it is reaped
                            pass
                        else:
                            leaders[leader] = group
                            poller.register(leader, select.POLLIN)
                elif kind == b"G":
                    groups.discard(int(value))
                elif kind == b"D":
                    (dirs.add if sign == b"+" else dirs.discard)(bytes.fromhex(value.decode()))
            except ValueError:
                pass  # a garbled record must not cost the other children their guardian
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
for path in dirs:
    shutil.rmtree(path, ignore_errors=True)
"""

#: Whether the guardian watches each group's leader itself (a pidfd per leader): then a reaped
#: child needs no message, and a spawn costs one pipe write.
_WATCHES_LEADERS = HAS_PIDFD


def _line(sign: bytes, record: bytes) -> bytes:
    return record[:1] + sign + record[1:] + b"\n"


class _Guardian:
    """The parent's side: the pipe to the guardian and the groups it was told about."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # managers on several threads may spawn at once
        self._fd = -1
        self._process: subprocess.Popen[bytes] | None = None
        # What the guardian must clean up: b"G<group id>" and b"D<dir path in hex>".
        self._records: set[bytes] = set()

    def _ensure_started(self) -> bool:
        if self._process is not None and self._process.poll() is None:
            return True
        self._close_pipe()
        read_end, write_end = os.pipe2(os.O_CLOEXEC) if hasattr(os, "pipe2") else os.pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _GUARDIAN_CODE],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # out of reach of the terminal's and the group's signals
                close_fds=True,
            )
        except OSError:
            os.close(write_end)
            return False  # degrade: children are still killed on abort and at exit
        finally:
            os.close(read_end)
        self._fd = write_end
        if self._records:  # a restarted guardian learns what its predecessor knew
            self._write(b"".join(_line(b"+", record) for record in self._records))
        return True

    def _write(self, record: bytes) -> None:
        try:
            os.write(self._fd, record)  # a few bytes into an empty pipe: never blocks
        except OSError:
            self._close_pipe()  # the guardian died: the next registration restarts it

    def _close_pipe(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def add(self, *records: bytes) -> None:
        with self._lock:
            self._records.update(records)
            if self._ensure_started():
                self._write(b"".join(_line(b"+", record) for record in records))

    def remove(self, record: bytes, *, tell: bool = True) -> None:
        with self._lock:
            self._records.discard(record)
            if tell and self._fd >= 0:
                self._write(_line(b"-", record))

    def forget_after_fork(self) -> None:
        # A forked child must not hold the pipe open: the guardian would miss the parent's death.
        self._close_pipe()
        self._process = None
        self._records.clear()
        self._lock = threading.Lock()


_GUARDIAN = _Guardian()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_GUARDIAN.forget_after_fork)


def register_group(group: int, directory: Path | None = None) -> None:
    """Have ``group`` SIGKILLed if this process dies before :func:`unregister_group`.

    With ``directory``, also :func:`register_dir` it, in the same single write.
    """
    if directory is None:
        _GUARDIAN.add(b"G%d" % group)
    else:
        _GUARDIAN.add(b"G%d" % group, _dir_record(directory))


def unregister_group(group: int) -> None:
    """The group's leader was reaped: its id may be reused, never signal it from now on.

    Where the guardian watches leaders through pidfds it already knows: nothing is written.
    """
    _GUARDIAN.remove(b"G%d" % group, tell=not _WATCHES_LEADERS)


def _dir_record(path: Path) -> bytes:
    return b"D" + os.fsencode(path).hex().encode()


def register_dir(path: Path) -> None:
    """Have ``path`` removed (after the groups are killed) if this process dies first."""
    _GUARDIAN.add(_dir_record(path))


def unregister_dir(path: Path) -> None:
    """``path`` was removed, or is the user's to keep."""
    _GUARDIAN.remove(_dir_record(path))
