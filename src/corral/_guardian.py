"""No orphans, even when the parent is SIGKILLed: a guardian process that outlives it briefly.

Once per parent process corral starts a tiny guardian (a Python interpreter running
``_GUARDIAN_CODE``) in a session of its own, with a Unix socket from the parent as its stdin.
When the parent dies, however it dies, the kernel closes the socket; the guardian reads EOF,
SIGKILLs every process group still registered, grandchildren included, removes the dirs it was
told about (process dirs, a manager's own temp dir), then exits. A socket rather than a pipe: a
write to a guardian that died is an error (``MSG_NOSIGNAL``), never a SIGPIPE, which would kill a
parent that restored SIGPIPE's default action.

What it must clean up lives in a shared table: a small file in memory (``memfd``, or an unlinked
temp file elsewhere) that the parent maps and the guardian reads only once, at the end. A spawn
registers its child's group, and its process dir, by writing one entry there: a few stores, no
system call, and the guardian is not woken: a message per spawn would wake it each time, and on
a small machine, where the guardian, the parent and the children share two cores, the wake-ups
cost more CPU than the message. The socket carries what is rare: the dirs of managers (their temp
dirs, and the working dirs their process dirs live in).

An entry is published with its group id written last, a single aligned 4-byte store: a parent
killed in the middle leaves an entry the guardian skips, never a torn group id. A group stays
registered until its process is released, since what the leader started may outlive it in the
group. Once the leader has exited, and *before* the parent reaps it (while the zombie still holds
the id), the entry's group id is negated, in one store again: from then the guardian signals
that group only if no process has its id as pid, which would mean the number was reused and the
group is empty (see :mod:`corral._platform`).

The parent watches its guardian: a daemon thread waits for it, and when it dies (the OOM killer,
a stray SIGKILL) starts a new one at once. The new guardian shares the table, so it knows every
group and process dir already; what went through the socket is told again.

Why not ``PR_SET_PDEATHSIG`` in each child (``/bin/true`` on a 2-core Linux VM; the last section
of ``bench/spawn.py`` measures these ways again)?

==============================  ===========  ==========================================
way                             spawns/s     notes
==============================  ===========  ==========================================
plain ``Popen`` (vfork)         ~1,800       the fast path corral keeps
``setpriv --pdeathsig KILL``    ~710         an extra exec per child (2.5x slower)
``preexec_fn`` calling prctl    ~510         forces fork; ~40x slower with a 1 GiB parent
guardian                        ~1,800       an entry in shared memory per spawn
==============================  ===========  ==========================================

The death signal also only reaches the direct child (grandchildren survive, reparented to
init), fires when the *thread* that spawned exits rather than the process, and does not exist on
macOS. The guardian kills whole groups, does not care which thread spawned, and needs only a
socket and a file. Its cost is one extra process per parent (started on the first spawn, ~20 ms)
and a window of a few microseconds between a child's start and its registration.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = [
    "leader_exited",
    "register_dir",
    "register_group",
    "unregister_dir",
    "unregister_group",
    "unregister_process_dir",
]

#: One table entry: group id (int32, 0: none, negative: its leader was reaped), index of the
#: dir's parent (int32, 0: none), length of the dir's name (uint8), the name (a process dir's
#: UUID).
_ENTRY = 64
_HEAD = struct.Struct("<iiB")
_NAME_MAX = _ENTRY - _HEAD.size
_INT = struct.Struct("<i")
#: All of an entry but its group: written in one store, before the group.
_BODY = struct.Struct(f"<iB{_NAME_MAX}s")
_FIRST_ENTRIES = 1024

#: Where there is no MSG_NOSIGNAL (macOS), Python's own SIG_IGN for SIGPIPE is all there is.
_NO_SIGPIPE = getattr(socket, "MSG_NOSIGNAL", 0)

#: A guardian that dies sooner than this after its start is restarted after a growing pause (up
#: to _RESTART_PAUSE_MAX), not in a tight loop: one that cannot even start would spin otherwise.
_SHORT_LIFE = 1.0
_RESTART_PAUSE_MAX = 5.0

#: Signals the guardian ignores: it must outlive whatever stops the parent, to clean up after it.
_IGNORED = tuple(
    getattr(signal, name)
    for name in (
        "SIGINT",
        "SIGTERM",
        "SIGHUP",
        "SIGQUIT",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGPIPE",
    )
    if hasattr(signal, name)
)

# Runs isolated (-I -S), without corral on its path: it signals groups itself, with the same
# check as corral._platform.signal_reaped_group for a group whose leader was reaped.
_GUARDIAN_CODE = r"""
import os, shutil, signal, struct, sys
ignored = [int(number) for number in sys.argv[3].split(",")]
for number in ignored:
    signal.signal(number, signal.SIG_IGN)
if hasattr(signal, "pthread_sigmask"):  # blocked since the exec: what came meanwhile is dropped
    signal.pthread_sigmask(signal.SIG_UNBLOCK, ignored)
table, entry = int(sys.argv[1]), int(sys.argv[2])
head = struct.Struct("<iiB")
parents, dirs = {}, set()
pending = b""
while True:  # asleep in read until the parent writes (rarely) or dies
    try:
        data = os.read(0, 65536)
    except InterruptedError:
        continue
    if not data:
        break
    pending += data
    *records, pending = pending.split(b"\n")
    for record in records:
        kind, sign, value = record[:1], record[1:2], record[2:]
        try:
            if kind == b"P":  # P+<index> <path in hex>: a parent of process dirs
                index, path = value.split(b" ")
                parents[int(index)] = bytes.fromhex(path.decode())
            elif kind == b"D":
                (dirs.add if sign == b"+" else dirs.discard)(bytes.fromhex(value.decode()))
        except ValueError:
            pass  # a garbled record must not cost the other children their guardian
groups, process_dirs = [], []
try:
    blob = os.pread(table, os.fstat(table).st_size, 0)
except OSError:
    blob = b""
for offset in range(0, len(blob) - entry + 1, entry):
    group, parent, length = head.unpack_from(blob, offset)
    if group:
        groups.append(group)
    if parent in parents and 0 < length <= entry - head.size:
        name = blob[offset + head.size : offset + head.size + length]
        if b"/" not in name and name not in (b".", b".."):
            process_dirs.append(os.path.join(parents[parent], name))
for group in groups:
    if group < 0:  # its leader was reaped: a process with that pid means the number was reused
        group = -group
        try:
            os.kill(group, 0)
            continue
        except ProcessLookupError:
            pass
        except OSError:
            continue
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
for path in (*process_dirs, *dirs):
    shutil.rmtree(path, ignore_errors=True)
"""


def _argv(table_fd: int) -> list[str]:
    """The guardian's command line, with the fd of the table it inherits."""
    ignored = ",".join(str(int(number)) for number in _IGNORED)
    return [sys.executable, "-I", "-S", "-c", _GUARDIAN_CODE, str(table_fd), str(_ENTRY), ignored]


def _line(sign: bytes, record: bytes) -> bytes:
    return record[:1] + sign + record[1:] + b"\n"


def _hex(path: str | Path) -> bytes:
    return os.fsencode(path).hex().encode()


def _new_table_fd() -> int:
    """An fd on an empty file only this process (and the guardian it is passed to) can reach."""
    if hasattr(os, "memfd_create"):
        with contextlib.suppress(OSError):
            return os.memfd_create("corral-guardian", os.MFD_CLOEXEC)
    fd, path = tempfile.mkstemp(prefix="corral-guardian-")
    os.unlink(path)
    return fd


class _Table:
    """The parent's side of the shared table: its entries and their free list.

    An entry is in use while its group or its dir is set: the table itself says which.
    """

    def __init__(self) -> None:
        self.fd = _new_table_fd()
        self._capacity = _FIRST_ENTRIES
        os.ftruncate(self.fd, self._capacity * _ENTRY)
        self._map = mmap.mmap(self.fd, self._capacity * _ENTRY)
        self._used = 0
        self._free: list[int] = []

    def add(self, group: int, parent: int = 0, name: bytes = b"") -> int:
        if self._free:
            index = self._free.pop()
        else:
            if self._used == self._capacity:
                self._grow()
            index, self._used = self._used, self._used + 1
        offset = index * _ENTRY
        # A free entry's group is 0 already: the guardian skips it until the group is written.
        _BODY.pack_into(self._map, offset + _INT.size, parent, len(name), name)
        _INT.pack_into(self._map, offset, group)  # last: the entry counts from here
        return index

    def mark_reaped(self, index: int, group: int) -> None:
        """Negate entry ``index``'s group id, if it is ``group``: its leader is being reaped."""
        offset = index * _ENTRY
        if _INT.unpack_from(self._map, offset)[0] == group:
            _INT.pack_into(self._map, offset, -group)  # one store: the guardian sees either

    def clear(self, index: int, field: int) -> None:
        """Clear field 0 (the group) or 4 (the dir) of entry ``index``; free it when empty."""
        offset = index * _ENTRY
        if not _INT.unpack_from(self._map, offset + field)[0]:
            return  # cleared already: the entry must not be freed twice
        _INT.pack_into(self._map, offset + field, 0)
        group, parent, _ = _HEAD.unpack_from(self._map, offset)
        if not group and not parent:
            self._free.append(index)

    def _grow(self) -> None:
        self._capacity *= 2
        os.ftruncate(self.fd, self._capacity * _ENTRY)
        old, self._map = self._map, mmap.mmap(self.fd, self._capacity * _ENTRY)
        old.close()

    def close(self) -> None:
        """Drop this process's view (after a fork: the table is the parent's)."""
        self._map.close()
        os.close(self.fd)


class _Guardian:
    """The parent's side: the guardian process, its socket, the table and what is in it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # managers on several threads may spawn at once
        # The parent's end of the guardian's stdin (a socket: see the module's docstring).
        self._socket: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._table: _Table | None = None
        # Keyed by str: a str keeps its hash, a Path's parent is a new object to hash each time.
        self._process_dirs: dict[str, int] = {}  # process dir -> table entry
        self._parents: dict[str, int] = {}  # parent of process dirs -> its index (from 1)
        # What went through the socket and still holds, for a restarted guardian: b"P<index>
        # <hex>" and b"D<hex>" (a dir to remove).
        self._records: set[bytes] = set()
        self._watched = False  # a thread waits for the guardian, to restart it

    def _ensure_started(self) -> _Table | None:
        if self._process is not None and self._process.poll() is None:
            return self._table
        table = self._start()
        if table is not None and not self._watched:
            try:
                threading.Thread(target=self._watch, name="corral-guardian", daemon=True).start()
            except RuntimeError:  # no thread to be had: the next registration restarts it
                pass
            else:
                self._watched = True
        return table

    def _start(self) -> _Table | None:
        self._close_socket()
        try:
            if self._table is None:
                self._table = _Table()
            table = self._table
            ours, theirs = socket.socketpair()  # non-inheritable, as every new fd
        except OSError:
            return None  # degrade: children are still killed on abort and at exit
        # The interpreter takes ~20 ms to start: until it ignores them, the signals it must
        # survive are blocked (a blocked mask is inherited through exec), not deadly.
        masked = hasattr(signal, "pthread_sigmask")
        if masked:
            old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _IGNORED)
        try:
            self._process = subprocess.Popen(
                _argv(table.fd),
                stdin=theirs.fileno(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # out of reach of the terminal's and the group's signals
                close_fds=True,
                pass_fds=(table.fd,),
            )
        except OSError:
            ours.close()
            return None
        finally:
            if masked:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            theirs.close()
        self._socket = ours
        if self._records:  # a restarted guardian learns what its predecessor was told
            self._write(b"".join(_line(b"+", record) for record in self._records))
        return table  # it shares the table: it knows every group and process dir already

    def _watch(self) -> None:
        """Wait for the guardian; when it dies, start another at once (runs in its own thread).

        Not a pidfd on some loop: the guardian serves every manager, on any thread or loop, and
        none of them need be running when it dies.
        """
        pause = 0.0
        while True:
            with self._lock:
                process = self._process
            if process is None:  # pragma: no cover - only after a fork, where this thread is gone
                return
            began = time.monotonic()
            with contextlib.suppress(Exception):  # interrupted, or at interpreter exit
                process.wait()
            if time.monotonic() - began < _SHORT_LIFE:  # died young: maybe it cannot start
                pause = min(max(2 * pause, 0.05), _RESTART_PAUSE_MAX)
                time.sleep(pause)
            else:
                pause = 0.0
            with self._lock, contextlib.suppress(Exception):
                if self._process is process:  # else a registration restarted it meanwhile
                    self._ensure_started()

    def _write(self, data: bytes) -> None:
        if self._socket is None:
            return
        try:
            self._socket.sendall(data, _NO_SIGPIPE)  # a few bytes, drained: never blocks
        except OSError:
            self._close_socket()  # the guardian died: it is being restarted

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _tell(self, sign: bytes, record: bytes) -> None:
        """Send a record (if the guardian started); keep it for a restarted guardian."""
        if sign == b"+":
            self._records.add(record)
        else:
            self._records.discard(record)
        self._write(_line(sign, record))

    def _parent_index(self, parent: str) -> int:
        index = self._parents.get(parent)
        if index is None:
            index = self._parents[parent] = len(self._parents) + 1
            self._tell(b"+", b"P%d %s" % (index, _hex(parent)))
        return index

    def add_group(self, group: int, process_dir: Path | None) -> int | None:
        with self._lock:
            table = self._ensure_started()
            if table is None:
                return None
            if process_dir is None:
                return table.add(group)
            path = os.fspath(process_dir)
            parent, _, name = path.rpartition(os.sep)
            encoded = os.fsencode(name)
            if not parent or not 0 < len(encoded) <= _NAME_MAX:
                self._tell(b"+", b"D" + _hex(path))  # a name too long for an entry: by the socket
                return table.add(group)
            index = table.add(group, self._parent_index(parent), encoded)
            self._process_dirs[path] = index
            return index

    def mark_reaped(self, entry: int, group: int) -> None:
        with self._lock:
            if self._table is not None:
                self._table.mark_reaped(entry, group)

    def remove_group(self, entry: int) -> None:
        with self._lock:
            if self._table is not None:
                self._table.clear(entry, 0)

    def remove_process_dir(self, process_dir: Path) -> None:
        with self._lock:
            index = self._process_dirs.pop(os.fspath(process_dir), None)
            if index is not None and self._table is not None:
                self._table.clear(index, 4)
            else:
                self._tell(b"-", b"D" + _hex(process_dir))

    def add_dir(self, path: Path) -> None:
        with self._lock:
            if self._ensure_started() is not None:
                self._tell(b"+", b"D" + _hex(path))

    def remove_dir(self, path: Path) -> None:
        with self._lock:
            self._tell(b"-", b"D" + _hex(path))

    def forget_after_fork(self) -> None:
        # A forked child must not hold the socket open (the guardian would miss the parent's
        # death), nor write into the parent's table. The watching thread is not forked.
        self._close_socket()
        if self._table is not None:
            self._table.close()
        self._table = None
        self._process = None
        self._process_dirs.clear()
        self._parents.clear()
        self._records.clear()
        self._watched = False
        self._lock = threading.Lock()


_GUARDIAN = _Guardian()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_GUARDIAN.forget_after_fork)


def register_group(group: int, process_dir: Path | None = None) -> int | None:
    """Have ``group`` SIGKILLed if this process dies before :func:`unregister_group`.

    With ``process_dir`` (a dir named by a process id), also have it removed then, until
    :func:`unregister_process_dir`. One table entry holds both. Returns that entry, for
    :func:`leader_exited` and :func:`unregister_group` (None: no guardian could be started).
    """
    return _GUARDIAN.add_group(group, process_dir)


def leader_exited(entry: int | None, group: int) -> None:
    """The leader of ``group`` (registered as ``entry``) exited: call it before reaping it.

    From then on the guardian signals the group only if no process has ``group`` as its pid: a
    process with that pid would mean the number was reused, after the last member of the group
    was gone. Idempotent.
    """
    if entry is not None:
        _GUARDIAN.mark_reaped(entry, group)


def unregister_group(entry: int | None) -> None:
    """Never signal the group registered as ``entry`` from now on; call it once only."""
    if entry is not None:
        _GUARDIAN.remove_group(entry)


def unregister_process_dir(process_dir: Path) -> None:
    """The process dir registered with :func:`register_group` was removed."""
    _GUARDIAN.remove_process_dir(process_dir)


def register_dir(path: Path) -> None:
    """Have ``path`` removed (after the groups are killed) if this process dies first."""
    _GUARDIAN.add_dir(path)


def unregister_dir(path: Path) -> None:
    """``path`` was removed, or is the user's to keep: the guardian must leave it alone."""
    _GUARDIAN.remove_dir(path)
