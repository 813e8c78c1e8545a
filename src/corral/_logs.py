"""Captured log files: what each :class:`~corral.LoggingType` opens for the child, line queries
that cost what they return, and following a live log.

Everything a logging type means lives here. At spawn, :func:`open_child_logs` names and opens
the files the child's captured streams go to; the child then writes into them directly, and
corral only ever reads them. The module knows nothing of the manager: it takes paths, and for
:func:`follow_lines` a callable telling when the writer has exited.

The line rules, shared by every reader here (see :func:`split_lines`):

* lines are split on ``b"\\n"`` only and returned without it; ``\\r`` is kept;
* an unterminated last line is returned as it is;
* bytes that are not UTF-8 come back as U+FFFD, never as an exception.

Decoding a run of whole lines in one call gives the same text as decoding each line on its own:
``\\n`` can never be part of a multi-byte UTF-8 sequence, so the decoder resynchronises on it.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import stat
import sys
import threading
from array import array
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NoReturn, Protocol, cast

from ._model import LoggingType, ensure_mode

__all__ = [
    "LOG_FILE_NAMES",
    "MERGED_LOG_NAME",
    "STDERR_LOG_NAME",
    "STDOUT_LOG_NAME",
    "ChildLogs",
    "LogFile",
    "LogsQuery",
    "follow_lines",
    "open_child_logs",
    "open_log",
    "split_lines",
]

#: Log file names in the process dir.
STDOUT_LOG_NAME = "stdout.log"
STDERR_LOG_NAME = "stderr.log"
MERGED_LOG_NAME = "output.log"
#: Every name a log file may have: a process dir is emptied by name.
LOG_FILE_NAMES = (STDOUT_LOG_NAME, STDERR_LOG_NAME, MERGED_LOG_NAME)

_NL = b"\n"

# Below this many newlines, a plain find/rfind loop beats another counting step.
_SHORT = 8


def split_lines(data: bytes | bytearray) -> list[str]:
    """Split whole log content into lines by corral's line rules.

    A final ``\\n`` ends the last line rather than starting an empty one; an unterminated
    last line is kept; ``\\r`` is kept; invalid UTF-8 becomes U+FFFD.

    >>> split_lines(b"a\\r\\n\\nb")
    ['a\\r', '', 'b']
    >>> split_lines(b"a\\n"), split_lines(b""), split_lines(b"\\xffx\\n")
    (['a'], [], ['\\ufffdx'])
    """
    if not data:
        return []
    # One decode and one str.split run in C; per-line decoding would be a Python loop.
    lines = data.decode("utf-8", errors="replace").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


_FILE_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def open_log(path: str | os.PathLike[str]) -> int:
    """Open a log file for reading, as a regular file only; never blocks, never follows a link.

    The child owns its process dir and may replace its log with anything. A FIFO opened
    without ``O_NONBLOCK`` would block until a writer comes (forever, a thread or the whole
    event loop with it), a symbolic link would make corral read a file of the link's choosing:
    both, and any other file that is not a regular file, raise ``OSError`` here.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # what O_NOFOLLOW reports for a link
            message = "log file is a symbolic link, not followed"
            raise OSError(exc.errno, message, str(path)) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")
            code = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL  # IsADirectoryError
            raise OSError(code, f"log file is {kind}, not a regular file", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


# --- the child's side ---------------------------------------------------------------------------


@dataclass(slots=True)
class ChildLogs:
    """The log files of one run, opened for the child to write its captured streams into."""

    #: The fds the child gets as its stdout / stderr; None for a stream not captured.
    stdout: int | None = None
    stderr: int | None = None
    #: Captured streams: "stdout" / "stderr" -> log file (one file for both when merged).
    paths: dict[str, Path] = field(default_factory=dict)
    #: Every fd opened, once each: the parent closes them once the child has its copies.
    fds: list[int] = field(default_factory=list)


def open_child_logs(logging_type: LoggingType | None, process_dir: Path) -> ChildLogs:
    """Open, in ``process_dir``, the log files ``logging_type`` captures the child's streams to.

    Files are appended to, so a restarted process's logs go on where the last run's ended. On
    failure raises ``OSError`` having closed every fd it opened.
    """
    logs = ChildLogs()
    if logging_type is None:
        return logs
    try:
        if logging_type is LoggingType.STDOUT_AND_STDERR_MERGED:
            path = process_dir / MERGED_LOG_NAME
            logs.stdout = logs.stderr = _open_for_child(path, logs)
            logs.paths = {"stdout": path, "stderr": path}
            return logs
        if logging_type.captures_stdout:
            path = process_dir / STDOUT_LOG_NAME
            logs.stdout = _open_for_child(path, logs)
            logs.paths["stdout"] = path
        if logging_type.captures_stderr:
            path = process_dir / STDERR_LOG_NAME
            logs.stderr = _open_for_child(path, logs)
            logs.paths["stderr"] = path
    except BaseException:
        for fd in logs.fds:
            os.close(fd)
        raise
    return logs


def _open_for_child(path: Path, logs: ChildLogs) -> int:
    # O_APPEND: writes from both streams of a merged log (and from grandchildren) interleave
    # without overwriting each other, in the order they were written. A restart reopens a file
    # the last run could have replaced: as for reading (open_log), a FIFO must not block the
    # loop (O_NONBLOCK) and a link must not be followed (O_NOFOLLOW); neither is a log.
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a link; a FIFO with no reader
            kind = "a symbolic link" if exc.errno == errno.ELOOP else "a FIFO"
            raise OSError(exc.errno, f"log file is {kind}, not a regular file", str(path)) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")
            raise OSError(errno.EINVAL, f"log file is {kind}, not a regular file", str(path))
        os.set_blocking(fd, True)  # the child gets the file as it expects a file to be
        ensure_mode(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    logs.fds.append(fd)
    return fd


# --- queries ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class LogsQuery:
    """Which lines of a log to return; build one with a classmethod.

    ``anchor`` says where lines are counted from (``"start"`` or ``"end"``), ``offset`` how many
    lines to skip from there and ``limit`` how many to return at most (``None``: no limit).
    Lines always come back in file order.

    >>> LogsQuery.tail(2)
    LogsQuery.tail(2)
    >>> LogsQuery.tail(2) == LogsQuery(anchor="end", offset=0, limit=2)
    True
    >>> LogsQuery.with_offset(-1)
    Traceback (most recent call last):
    ...
    ValueError: LogsQuery offset must be >= 0 (a number of lines), got -1
    """

    anchor: Literal["start", "end"]
    offset: int
    limit: int | None

    def __post_init__(self) -> None:
        if self.anchor not in ("start", "end"):
            raise ValueError(f"LogsQuery anchor must be 'start' or 'end', got {self.anchor!r}")
        _check_count("offset", self.offset)
        if self.limit is not None:
            _check_count("limit", self.limit)

    @classmethod
    def fetch_all(cls) -> LogsQuery:
        """Every line.

        >>> LogsQuery.fetch_all().select(["a", "b"])
        ['a', 'b']
        """
        return cls("start", 0, None)

    @classmethod
    def with_limit(cls, n: int) -> LogsQuery:
        """The first ``n`` lines.

        >>> LogsQuery.with_limit(2).select(["a", "b", "c"])
        ['a', 'b']
        """
        return cls("start", 0, n)

    @classmethod
    def with_offset(cls, k: int) -> LogsQuery:
        """Every line after the first ``k``.

        >>> LogsQuery.with_offset(1).select(["a", "b", "c"])
        ['b', 'c']
        """
        return cls("start", k, None)

    @classmethod
    def with_offset_and_limit(cls, k: int, n: int) -> LogsQuery:
        """Skip the first ``k`` lines, then return at most ``n``.

        >>> LogsQuery.with_offset_and_limit(1, 1).select(["a", "b", "c"])
        ['b']
        """
        return cls("start", k, n)

    @classmethod
    def tail(cls, n: int) -> LogsQuery:
        """The last ``n`` lines, in file order.

        >>> LogsQuery.tail(2).select(["a", "b", "c"])
        ['b', 'c']
        """
        return cls("end", 0, n)

    @classmethod
    def from_end(cls, k: int, n: int) -> LogsQuery:
        """Skip the last ``k`` lines, then return the ``n`` before them, in file order.

        >>> LogsQuery.from_end(1, 2).select(["a", "b", "c", "d"])
        ['b', 'c']
        """
        return cls("end", k, n)

    def select(self, lines: Sequence[str]) -> list[str]:
        """Apply this query to lines already in memory.

        >>> LogsQuery.from_end(3, 5).select(["a", "b"])
        []
        """
        if self.anchor == "start":
            stop = None if self.limit is None else self.offset + self.limit
            return list(lines[self.offset : stop])
        end = len(lines) - self.offset
        if end <= 0:
            return []
        start = 0 if self.limit is None else max(0, end - self.limit)
        return list(lines[start:end])

    def __repr__(self) -> str:
        k, n = self.offset, self.limit
        if self.anchor == "start":
            if n is None:
                return "LogsQuery.fetch_all()" if k == 0 else f"LogsQuery.with_offset({k})"
            if k == 0:
                return f"LogsQuery.with_limit({n})"
            return f"LogsQuery.with_offset_and_limit({k}, {n})"
        if n is None:
            return f"LogsQuery(anchor='end', offset={k}, limit=None)"
        return f"LogsQuery.tail({n})" if k == 0 else f"LogsQuery.from_end({k}, {n})"


def _check_count(name: str, value: object) -> None:
    # bool is an int subclass, but LogsQuery.tail(True) is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"LogsQuery {name} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"LogsQuery {name} must be >= 0 (a number of lines), got {value}")


# --- locating newlines without a per-line Python loop ------------------------------------------


def _nth_newline(buf: bytes | bytearray, n: int, start: int, end: int, total: int) -> int:
    """Index of the ``n``-th (1-based) newline in ``buf[start:end]``, which holds ``total >= n``.

    Narrows the range with ``bytes.count`` (C speed), guessing where the newline is from the
    density of newlines in the range and counting the smaller side, so with lines of similar
    length it costs about one count over the bytes before the newline. When a guess does not
    at least halve the range, the next step bisects, which bounds the number of steps.
    """
    interpolate = True
    while True:
        if n <= _SHORT:
            pos = start - 1
            for _ in range(n):
                pos = buf.find(_NL, pos + 1, end)
            return pos
        after = total - n
        if after < _SHORT:
            pos = end
            for _ in range(after + 1):
                pos = buf.rfind(_NL, start, pos)
            return pos
        span = end - start
        # Interpolating aims inside the line that the wanted newline ends.
        mid = start + (span * (2 * n - 1) // (2 * total) if interpolate else span // 2)
        mid = min(max(mid, start + 1), end - 1)
        if mid - start <= end - mid:
            left = buf.count(_NL, start, mid)
        else:
            left = total - buf.count(_NL, mid, end)
        if left >= n:
            end, total = mid, left
        else:
            start, n, total = mid, n - left, total - left
        interpolate = 2 * (end - start) <= span


def _gallop_nth(
    buf: bytes | bytearray, n: int, start: int, end: int, line_len: int
) -> tuple[int, int]:
    """Find the ``n``-th (1-based) newline in ``buf[start:end]``, counting each byte about once.

    Returns ``(index, n)``, or ``(-1, newlines in the range)`` when there are fewer than ``n``.
    Each step counts the bytes that ``line_len`` (a guess of bytes per line) says hold the
    newlines still missing, plus two lines' worth, so the wanted newline is usually close to
    the end of the counted range and :func:`_nth_newline` finishes it off cheaply. A step that
    finds nothing doubles the guess.
    """
    found = 0
    lo = start
    while lo < end:
        hi = min(end, lo + (n - found + 2) * line_len)
        c = buf.count(_NL, lo, hi)
        if found + c >= n:
            return _nth_newline(buf, n - found, lo, hi, c), n
        found += c
        line_len = (hi - lo) // c + 1 if c else line_len * 2
        lo = hi
    return -1, found


# --- LogFile ------------------------------------------------------------------------------------


class _RawFile(Protocol):
    def fileno(self) -> int: ...
    def seek(self, pos: int, whence: int = ..., /) -> int: ...
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class _Shrunk(Exception):
    """The file got shorter while a query was reading it."""


# A query retries this many times when the file shrinks under it, then gives up with OSError.
_SHRINK_RETRIES = 3


class LogFile:
    """Queries over one captured log file, at a cost that grows with the answer.

    :meth:`query` is blocking: run it in a worker thread (``asyncio.to_thread``). It is
    thread-safe; one ``LogFile`` may serve queries from many threads at once.

    How each query reads:

    * ``tail`` / ``from_end`` read backwards from the end in blocks of ``block_size`` bytes,
      counting newlines, and stop once they have the lines asked for.
    * Offset queries use a sparse line index: the byte offset of every ``index_step``-th line
      start. It is built lazily, only as far as a query needs, and extended only over bytes it
      has not scanned yet (a live log only grows), reading ``scan_size`` bytes at a time. A
      query then starts at the nearest indexed line and skips fewer than ``index_step`` lines.
    * ``fetch_all`` reads the whole file in one call and splits it.

    The default ``index_step`` of 1000 keeps the index tiny (8 bytes per 1000 lines: 80 KB for
    ten million lines) while the skip after a lookup stays short (about 100 KB for 100-byte
    lines, a few tens of microseconds of counting).

    A query sees the file as it is at that moment: a running process may be mid-line, and the
    partial last line is returned as it is. If the file is replaced or shrinks (someone
    truncated it), the index is dropped and rebuilt rather than trusted. A file that is gone,
    unreadable, or no longer a regular file (a FIFO, a symbolic link: see :func:`open_log`)
    raises ``OSError``.

    ``bytes_read`` counts every byte this object has read from disk (for tests and benchmarks).
    """

    __slots__ = (
        "_block_size",
        "_bytes_read",
        "_checkpoints",
        "_identity",
        "_index_lock",
        "_newlines",
        "_scan_size",
        "_scanned",
        "_stats_lock",
        "_step",
        "path",
    )

    def __init__(
        self,
        path: Path,
        *,
        block_size: int = 64 * 1024,
        index_step: int = 1000,
        scan_size: int = 1024 * 1024,
    ) -> None:
        for name, value in (
            ("block_size", block_size),
            ("index_step", index_step),
            ("scan_size", scan_size),
        ):
            if value < 1:
                raise ValueError(f"LogFile {name} must be >= 1, got {value}")
        self.path = Path(path)
        self._block_size = block_size
        self._step = index_step
        self._scan_size = scan_size
        self._index_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._bytes_read = 0
        self._identity: tuple[int, int] | None = None
        # _checkpoints[j] is the byte offset where line j * index_step starts.
        self._checkpoints = array("q", [0])
        # Bytes [0, _scanned) have been indexed and hold _newlines newlines. The scan may have
        # stopped mid-line: only newline counts are kept, so that needs no special case.
        self._scanned = 0
        self._newlines = 0

    def __repr__(self) -> str:
        return f"LogFile({self.path!r})"

    @property
    def bytes_read(self) -> int:
        """Bytes read from the file by this object so far."""
        with self._stats_lock:
            return self._bytes_read

    def query(self, q: LogsQuery) -> list[str]:
        """The lines ``q`` selects, as the file is now. Blocking; raises ``OSError``."""
        for _ in range(_SHRINK_RETRIES):
            try:
                return self._query_once(q)
            except _Shrunk:
                continue
        raise OSError(errno.EIO, "log file kept shrinking while it was read", str(self.path))

    # --- plumbing

    def _count(self, n: int) -> None:
        with self._stats_lock:
            self._bytes_read += n

    def _pread(self, fd: int, n: int, offset: int) -> bytes:
        data = os.pread(fd, n, offset)
        self._count(len(data))
        if len(data) != n:
            raise _Shrunk
        return data

    def _query_once(self, q: LogsQuery) -> list[str]:
        with open(open_log(self.path), "rb", buffering=0) as f:
            fd = f.fileno()
            st = os.fstat(fd)
            if q.anchor == "end":
                return self._from_end(fd, st.st_size, q.offset, q.limit)
            if q.offset == 0 and q.limit is None:
                data = f.readall()
                self._count(len(data))
                return split_lines(data)
            return self._from_start(f, st, q.offset, q.limit)

    # --- from the end

    def _from_end(self, fd: int, size: int, k: int, n: int | None) -> list[str]:
        """Skip ``k`` lines back from the end, then take ``n``: one backward pass in blocks."""
        if size == 0 or n == 0:
            return []
        kept: list[bytes] = []  # the answer's bytes, last block first
        seen = 0  # newlines counted so far, going backwards
        skip_at = -1  # offset just past the answer: the k-th newline back (or the end)
        eff_end = size
        pos = size
        while pos > 0:
            lo = max(0, pos - self._block_size)
            block = self._pread(fd, pos - lo, lo)
            if pos == size:
                # A final newline ends the last line; it does not start another one.
                eff_end = size - 1 if block.endswith(_NL) else size
                if k == 0:
                    skip_at = eff_end
            hi = min(eff_end, pos) - lo  # count newlines in block[:hi] only
            c = block.count(_NL, 0, hi)
            if skip_at < 0 and seen + c >= k:
                skip_at = lo + _nth_newline(block, c - (k - seen) + 1, 0, hi, c)
            if skip_at >= 0:
                if n is None:
                    return split_lines(self._pread(fd, skip_at, 0) + _NL)
                kept_end = min(skip_at, pos) - lo
                if seen + c >= k + n:
                    i = _nth_newline(block, c - (k + n - seen) + 1, 0, hi, c)
                    kept.append(block[i + 1 : kept_end])
                    break
                kept.append(block[:kept_end])
            seen += c
            pos = lo
        if skip_at < 0:
            return []  # the file has k lines or fewer
        kept.reverse()
        # The kept bytes hold the answer's lines joined by newlines, the last one unended.
        return split_lines(b"".join(kept) + _NL)

    # --- from the start

    def _from_start(self, f: _RawFile, st: os.stat_result, k: int, n: int | None) -> list[str]:
        if n == 0:
            return []
        fd = f.fileno()
        size = st.st_size
        j = k // self._step
        with self._index_lock:
            self._check_index(fd, st)
            if len(self._checkpoints) <= j:
                self._extend_index(f, size, j)
            cps = self._checkpoints
            if len(cps) <= j:
                return []  # the file has fewer than k lines
            pos = cps[j]
            skip = k - j * self._step
            need = skip if n is None else skip + n
            # Size the first read from the line lengths seen so far: usually one read suffices.
            if j + 1 < len(cps):
                first_read = (cps[j + 1] - pos) * need // self._step
                if need <= self._step:
                    first_read = min(first_read * 9 // 8 + 256, cps[j + 1] - pos)
            elif self._newlines:
                first_read = self._scanned * need // self._newlines * 9 // 8 + 256
            else:
                first_read = self._block_size
        return self._read_forward(fd, pos, size, skip, n, first_read)

    def _check_index(self, fd: int, st: os.stat_result) -> None:
        """Drop the index unless it still describes this file."""
        identity = (st.st_dev, st.st_ino)
        valid = identity == self._identity and st.st_size >= self._scanned
        if valid and len(self._checkpoints) > 1:
            # Truncated and regrown past the scanned length: the byte before the last indexed
            # line start is most likely no longer a newline. One byte; cheap.
            last = self._checkpoints[-1]
            valid = os.pread(fd, 1, last - 1) == _NL
            self._count(1)
        if not valid:
            self._identity = identity
            self._checkpoints = array("q", [0])
            self._scanned = 0
            self._newlines = 0

    def _extend_index(self, f: _RawFile, size: int, want: int) -> None:
        """Scan on from ``_scanned`` until checkpoint ``want`` exists or ``size`` is reached."""
        step = self._step
        cps = self._checkpoints
        pos, newlines = self._scanned, self._newlines
        buf = bytearray(min(self._scan_size, max(size - pos, 1)))
        view = memoryview(buf)
        # Bytes per line, to guess how far the next checkpoint is.
        line_len = max(1, (cps[-1] - cps[-2]) // step) if len(cps) > 1 else 64
        f.seek(pos)
        try:
            while pos < size and len(cps) <= want:
                got = f.readinto(view[: min(len(buf), size - pos)])
                if not got:
                    raise _Shrunk
                self._count(got)
                # The checkpoint for line len(cps) * step starts right after newline number
                # len(cps) * step; `before` newlines precede buf[start].
                start, before = 0, newlines
                while True:
                    target = len(cps) * step
                    i, seen = _gallop_nth(buf, target - before, start, got, line_len)
                    if i < 0:
                        newlines = before + seen
                        break
                    cps.append(pos + i + 1)
                    line_len = max(1, (cps[-1] - cps[-2]) // step)
                    start, before = i + 1, target
                pos += got
        finally:
            view.release()
            # Only whole chunks are committed, so the index stays consistent if a read fails.
            self._scanned, self._newlines = pos, newlines

    def _read_forward(
        self, fd: int, pos: int, size: int, skip: int, n: int | None, first_read: int
    ) -> list[str]:
        """Lines from offset ``pos`` (a line start): skip ``skip`` lines, then take ``n``."""
        need = skip if n is None else skip + n
        buf = bytearray()
        found = 0
        read_pos = pos
        chunk = max(first_read, 1)
        max_chunk = max(self._scan_size, self._block_size)
        while found < need and read_pos < size:
            block = self._pread(fd, min(chunk, size - read_pos), read_pos)
            found += block.count(_NL)
            buf += block
            read_pos += len(block)
            # The guess fell short: go on with growing reads, up to the scan size.
            chunk = min(max(chunk, self._block_size) * 2, max_chunk)
        if skip == 0:
            start = 0
        elif found < skip:
            return []
        else:
            start = _nth_newline(buf, skip, 0, len(buf), found) + 1
        if n is None:
            rest = self._pread(fd, size - read_pos, read_pos) if read_pos < size else b""
            return split_lines(buf[start:] + rest)
        end = _nth_newline(buf, need, 0, len(buf), found) + 1 if found >= need else len(buf)
        return split_lines(buf[start:end])


# --- following a live log ----------------------------------------------------------------------

_IN_MODIFY = 0x00000002
_IN_CLOSE_WRITE = 0x00000008
_IN_DELETE_SELF = 0x00000400
_IN_MOVE_SELF = 0x00000800
# inotify_init1 takes the O_ flag values (IN_NONBLOCK == O_NONBLOCK, IN_CLOEXEC == O_CLOEXEC).
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_WATCH_MASK = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_DELETE_SELF | _IN_MOVE_SELF

_EVENTS_BUFFER = 65536  # bytes; holds thousands of events (16 bytes each, plus a name)
_POLL_MIN_DELAY = 0.005
_POLL_MAX_DELAY = 0.2


class _Libc(Protocol):
    def inotify_init1(self, flags: int) -> int: ...
    def inotify_add_watch(self, fd: int, path: bytes, mask: int) -> int: ...


def _load_inotify() -> _Libc | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init1 = libc.inotify_init1
        add_watch = libc.inotify_add_watch
    except (OSError, AttributeError):
        return None
    init1.argtypes = [ctypes.c_int]
    init1.restype = ctypes.c_int
    add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    add_watch.restype = ctypes.c_int
    return cast(_Libc, libc)


_LIBC = _load_inotify()


def _raise_errno(what: str, path: Path) -> NoReturn:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}", str(path))


class _Watcher(Protocol):
    """Tells the follower when the file is worth reading again."""

    def arm(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` (once) when the file may have changed; maybe right away."""

    def disarm(self) -> None:
        """Forget the ``wake`` given to :meth:`arm`."""

    def grew(self) -> None:
        """The last read found new bytes."""

    def close(self) -> None:
        """Release what the watcher holds."""


class _InotifyWatcher:
    """Wakes the follower when the kernel reports a write to (or close of) the file.

    The inotify fd stays registered with the loop for the watcher's whole life, so waiting
    costs no ``epoll_ctl`` calls; an event that comes while nobody waits is remembered.
    """

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop) -> None:
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "inotify is not available on this system")
        fd = _LIBC.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            _raise_errno("inotify_init1", path)
        try:
            if _LIBC.inotify_add_watch(fd, os.fsencode(path), _WATCH_MASK) < 0:
                _raise_errno("inotify_add_watch", path)
            loop.add_reader(fd, self._readable)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self._loop = loop
        self._wake: Callable[[], None] | None = None
        self._changed = False

    def _readable(self) -> None:
        # The events themselves do not matter: any of them means "look at the file again".
        # A read shorter than the buffer has taken every queued event.
        try:
            while len(os.read(self.fd, _EVENTS_BUFFER)) == _EVENTS_BUFFER:
                pass
        except BlockingIOError:
            pass
        wake, self._wake = self._wake, None
        if wake is None:
            self._changed = True
        else:
            wake()

    def arm(self, wake: Callable[[], None]) -> None:
        if self._changed:
            self._changed = False
            wake()
        else:
            self._wake = wake

    def disarm(self) -> None:
        self._wake = None

    def grew(self) -> None:
        pass

    def close(self) -> None:
        # Unregister before closing: the fd number may be reused at once.
        if not self._loop.is_closed():
            self._loop.remove_reader(self.fd)
        os.close(self.fd)


class _PollWatcher:
    """Wakes the follower after a delay that doubles while nothing changes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._delay = _POLL_MIN_DELAY
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, wake: Callable[[], None]) -> None:
        self._timer = self._loop.call_later(self._delay, wake)
        self._delay = min(self._delay * 2, _POLL_MAX_DELAY)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def grew(self) -> None:
        self._delay = _POLL_MIN_DELAY

    def close(self) -> None:
        self.disarm()


def _make_watcher(
    path: Path, watch: Literal["auto", "inotify", "poll"], loop: asyncio.AbstractEventLoop
) -> _Watcher:
    if watch == "poll":
        return _PollWatcher(loop)
    if watch == "inotify":
        return _InotifyWatcher(path, loop)
    if watch != "auto":
        raise ValueError(f"watch must be 'auto', 'inotify' or 'poll', got {watch!r}")
    try:
        return _InotifyWatcher(path, loop)
    except OSError:
        # No inotify here, or out of inotify instances/watches (both are per-user limits).
        return _PollWatcher(loop)


def _fd_path(fd: int, path: str | os.PathLike[str]) -> Path:
    """A path to the file open as ``fd`` itself (``/proc/self/fd/N``), else ``path``."""
    link = Path(f"/proc/self/fd/{fd}")
    return link if link.exists() else Path(path)


async def _await(exited: Callable[[], Awaitable[object]]) -> object:
    return await exited()


async def follow_lines(
    path: Path,
    exited: Callable[[], Awaitable[object]],
    *,
    watch: Literal["auto", "inotify", "poll"] = "auto",
    chunk_size: int = 1024 * 1024,
) -> AsyncGenerator[str, None]:
    """Yield the lines of a log so far, then each new line as it is written, until exit.

    ``exited()`` must return a fresh awaitable that completes when the writing process has
    exited (e.g. ``lambda: handle.wait(process_id)``); it is awaited in a task that is cancelled
    if the iteration ends early. After the exit, everything left in the file is delivered,
    including an unterminated last line, and the iteration ends; if the awaitable raised, the
    exception is raised then. While the process runs, a partial last line is held back until
    its newline arrives.

    How it waits, with no busy polling: on Linux, inotify (through ctypes) watches the file for
    writes and the event loop watches the inotify fd (``loop.add_reader``), so this works on any
    loop that supports readers (the default loop, uvloop). Where inotify is unavailable, or out
    of instances or watches, it polls the file with a back-off from 5 ms to 200 ms that resets
    whenever the file grows. ``watch`` forces one or the other (``"inotify"`` then raises
    ``OSError`` if it cannot be set up).

    Each read takes at most ``chunk_size`` bytes, and the loop gets a turn between reads, so a
    fast writer cannot starve other tasks. The file and the inotify fd are closed when the
    iteration ends, is closed early (``aclose()``) or is cancelled. Raises ``OSError`` if the
    file cannot be opened or is not a regular file (see :func:`open_log`); once open, the file
    followed is the one opened, even if its name is given to another. If the file shrinks
    (truncated), it is followed again from its start.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    loop = asyncio.get_running_loop()
    fd = open_log(path)
    watcher: _Watcher | None = None
    exit_task: asyncio.Task[object] | None = None
    try:
        # Watch before the first read: a write after that read is then always reported. The
        # watch is set through the fd, on the file opened, not on whatever has the name now.
        watcher = _make_watcher(_fd_path(fd, path), watch, loop)
        exit_task = loop.create_task(_await(exited))
        pending = bytearray()
        while True:
            # Sample "exited" before reading: a read that starts after the exit sees every byte.
            done = exit_task.done()
            chunk = os.read(fd, chunk_size)
            if chunk:
                watcher.grew()
                pending += chunk
                cut = pending.rfind(_NL) + 1
                if cut:
                    lines = split_lines(pending[:cut])
                    del pending[:cut]
                    for line in lines:
                        yield line
                if len(chunk) == chunk_size:
                    await asyncio.sleep(0)  # more is probably waiting; let the loop run first
                    continue
                if done:
                    continue  # after the exit, read on until a read comes back empty
                # A short read of a regular file: the end of the file, for now.
            elif done:
                if pending:
                    yield pending.decode("utf-8", errors="replace")
                exit_task.result()
                return
            elif os.fstat(fd).st_size < os.lseek(fd, 0, os.SEEK_CUR):
                os.lseek(fd, 0, os.SEEK_SET)  # truncated: start over, like tail -F
                pending.clear()
                continue
            await _wake_on(loop, watcher, exit_task)
    finally:
        if exit_task is not None and not exit_task.done():
            exit_task.cancel()
        if watcher is not None:
            watcher.close()
        os.close(fd)


async def _wake_on(
    loop: asyncio.AbstractEventLoop, watcher: _Watcher, exit_task: asyncio.Task[object]
) -> None:
    """Return when the watcher reports a change or the writer exits."""
    woken: asyncio.Future[None] = loop.create_future()

    def wake(*_: object) -> None:
        if not woken.done():
            woken.set_result(None)

    exit_task.add_done_callback(wake)
    watcher.arm(wake)
    try:
        await woken
    finally:
        watcher.disarm()
        exit_task.remove_done_callback(wake)
