"""The pipe side of messaging: line framing, the reader of a child's output and the writer of
its input.

One process's messaging is four objects, all living on the manager's event loop:

* a :class:`MessageReader` reads the child's output fd (its stdout pipe, or the parent's end of
  the ``OUTPUT_PIPE`` FIFO), cuts it into lines with a :class:`LineFramer` and publishes each line
  as a :class:`~corral.Message` into
* a :class:`~corral._broadcast.Broadcast`, a bounded buffer with absolute sequence numbers, from
  which any number of subscribers read through
* :class:`~corral.MessageStream` objects (async iterators; they may be iterated from another
  thread's event loop);
* a :class:`MessageWriter` writes to the child's input fd (its stdin pipe, or the parent's end of
  the ``INPUT_PIPE`` FIFO), one message after the other, without ever blocking the loop.

The broadcast and its streams live in ``corral._broadcast``, which knows nothing of fds; this
module is where bytes become messages and messages become bytes.

Wiring, for the manager::

    # on spawn: stdio pipes from cloexec_pipe(), the child's ends given to the child and
    # closed in the parent once it started; or FIFOs made with make_fifo and opened with
    # open_fifo_parent_end (corral._platform) before the child starts. Reader and writer own
    # the parent's ends.
    broadcast = Broadcast(options.output_buffer_capacity, process_id=pid)
    reader = MessageReader(output_fd, broadcast)
    writer = MessageWriter(input_fd, process_id=pid)
    # send_message:             await writer.send(encode_outgoing(message))
    #                           (or, from an actor that must not wait: writer.enqueue(data),
    #                           None when written at once, else a future to reply through)
    # subscribe_message_stream: broadcast.subscribe()
    # when the child has exited: reader.child_exited(); writer.child_exited()
    # kill / abort:              reader.close(); writer.close()

Nothing here blocks: every fd is non-blocking and driven by ``loop.add_reader`` /
``loop.add_writer``; no busy loop, no thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import errno
import functools
import os
from collections.abc import Callable
from typing import Final, cast

from ._broadcast import Broadcast, MessageItem, SkippedLine, process_name
from ._errors import WriteMessageError
from ._messages import Message
from ._model import ExitStatus, ProcessId
from ._platform import set_pipe_size

__all__ = [
    "DEFAULT_PIPE_SIZE",
    "LineFramer",
    "MessageReader",
    "MessageWriter",
]

#: Capacity a reader raises its pipe to once it finds it full (see :class:`MessageReader`).
DEFAULT_PIPE_SIZE: Final = 256 * 1024
# Bytes asked of each os.read: a default pipe's capacity. A larger request costs an mmap/munmap
# per read (~13 us for 256 KiB against ~0.8 us for 64 KiB when a line is waiting) and does not
# make a flood faster end to end (bench/messages.py's throughput section, with this changed).
_READ_SIZE: Final = 64 * 1024


# --- framing ------------------------------------------------------------------------------------


class LineFramer:
    """Cuts a byte stream into ``\\n``-terminated lines, whatever the chunk boundaries.

    Lines come out whole and once, without their ``\\n``. A line longer than any chunk is kept
    as a list of pieces and joined once when its end arrives, so its cost stays linear.

    A line longer than ``max_line`` bytes (``None``: no limit) is never held whole: once it is
    known to be too long, its pieces are dropped and its further bytes only counted, and a
    :class:`SkippedLine` with its size takes its place in the output. So the framer holds at
    most ``max_line`` bytes plus one chunk.

    >>> framer = LineFramer(max_line=4)
    >>> framer.feed(b"one\\ntw")
    [b'one']
    >>> framer.feed(b"o\\nthree\\nfour")
    [b'two', SkippedLine(size=5, limit=4)]
    >>> framer.finish()
    b'four'
    """

    __slots__ = ("_limit", "_pieces", "_size", "_skipping", "skipped")

    def __init__(self, max_line: int | None = None) -> None:
        self._pieces: list[bytes] = []
        self._size = 0  # bytes of the unfinished line: held in _pieces, or counted if skipping
        self._limit = max_line
        self._skipping = False
        #: How many lines were skipped as too long so far.
        self.skipped = 0

    def feed(self, chunk: bytes) -> list[bytes | SkippedLine]:
        """The lines completed by ``chunk`` (possibly none)."""
        if self._skipping:
            end = chunk.find(b"\n")
            if end < 0:
                self._size += len(chunk)
                return []
            skipped = self._skip(self._size + end)
            self._skipping = False
            self._size = 0
            return [skipped, *self.feed(chunk[end + 1 :])]
        split = chunk.split(b"\n")
        if len(split) == 1:
            if chunk:
                self._hold(chunk)
            return []
        tail = split.pop()
        # Skipped lines take the place of theirs in the same list: no copy on the hot path.
        lines = cast("list[bytes | SkippedLine]", split)
        limit = self._limit
        if self._pieces:
            first = split[0]
            if limit is not None and self._size + len(first) > limit:
                lines[0] = self._skip(self._size + len(first))
            else:
                self._pieces.append(first)
                lines[0] = b"".join(self._pieces)
            self._pieces = []
            self._size = 0
        if limit is not None and len(chunk) > limit:  # else no line in it can be too long
            for i, line in enumerate(lines):
                if isinstance(line, bytes) and len(line) > limit:
                    lines[i] = self._skip(len(line))
        if tail:
            self._hold(tail)
        return lines

    def finish(self) -> bytes | SkippedLine | None:
        """At end of stream: the last line if it had no ``\\n`` (``None`` if there is none)."""
        if self._skipping:
            self._skipping = False
            size, self._size = self._size, 0
            return self._skip(size)
        if not self._pieces:
            return None
        line = b"".join(self._pieces)
        self._pieces = []
        self._size = 0
        return line

    @property
    def pending_size(self) -> int:
        """Bytes held of a line whose end has not arrived yet (none of one being skipped)."""
        return 0 if self._skipping else self._size

    def _hold(self, piece: bytes) -> None:
        self._size += len(piece)
        if self._limit is not None and self._size > self._limit:
            self._pieces = []  # too long: from now on only counted
            self._skipping = True
        else:
            self._pieces.append(piece)

    def _skip(self, size: int) -> SkippedLine:
        self.skipped += 1
        return SkippedLine(size, self._limit)


# --- reading a child's output -------------------------------------------------------------------

# A reader's state: one enum per concern, each value with what leads to it.


class _Phase(enum.Enum):
    """Where a reader is in the life of its fd. It only ever moves down this list."""

    #: The child runs: a read whenever the fd is readable. The first phase.
    LIVE = "live"
    #: The child has exited, the output has not ended: one read per loop turn until the pipe is
    #: empty. From LIVE, by child_exited.
    DRAINING = "draining"
    #: The output has ended while the child may still run: an unterminated last line waits for
    #: child_exited, to know whether the child was killed while writing it. From LIVE, by
    #: _at_eof (EOF, or a read error).
    AT_EOF = "at_eof"
    #: The output has ended and the child has exited: the last messages are being published.
    #: From DRAINING by _at_eof (the pipe is empty), from AT_EOF by child_exited.
    FINISHING = "finishing"
    #: The fd and the broadcast are closed. From any phase, by _finish: everything was
    #: delivered, or close().
    CLOSED = "closed"


class _Delivery(enum.Enum):
    """What the messages read and not yet published (``_pending``) wait for."""

    #: Nothing: they are published as they are read (or there are none). The first value; back
    #: to it by _drained, _refill and _resume.
    FLOWING = "flowing"
    #: This loop turn's budget is spent: _refill goes on with them next turn. Set by _deliver.
    WAIT_BUDGET = "wait_budget"
    #: A lossless subscriber keeps the buffer full: reading stops (which holds the child back)
    #: until there is room, then _resume goes on. Set by _deliver.
    WAIT_ROOM = "wait_room"


class _Pace(enum.Enum):
    """The refill of the per-turn budget, scheduled on the loop once the budget is spent."""

    #: No refill scheduled: the budget is not spent. The first value; back to it by _refill.
    NO_REFILL = "no_refill"
    #: _refill runs next turn, after the subscribers the last batch woke. Set by _deliver when
    #: it spends the budget, and by _refill when it was deferred.
    REFILL_SCHEDULED = "refill_scheduled"
    #: A subscriber's pull published since the refill was scheduled: the refill waits one more
    #: turn, for the subscribers that pull woke. Set by _pull.
    REFILL_DEFERRED = "refill_deferred"


class _Poll(enum.Enum):
    """What makes the next read happen."""

    #: Nothing: reading is stopped (_stop_reading), over, or the scheduled read has run.
    STOPPED = "stopped"
    #: ``loop.add_reader``: a read when the fd is readable, while the child runs. Set by
    #: _start_reading.
    ON_READABLE = "on_readable"
    #: ``loop.call_soon``: a read next turn, whatever the fd says, once the child has exited.
    #: Set by _read_next_turn.
    ON_NEXT_TURN = "on_next_turn"


# The members as module globals, which is how the reader reads them: in CPython 3.11 an enum
# member read off its class costs ~75 ns (EnumType defines __getattr__, which takes every
# attribute read on an enum class off the fast path), a global ~4 ns, and the reader checks its
# state several times per read: on a message round trip, enum reads cost ~1 us more
# (bench/messages.py's round trips, reading the members off the class).
_LIVE: Final = _Phase.LIVE
_DRAINING: Final = _Phase.DRAINING
_AT_EOF: Final = _Phase.AT_EOF
_FINISHING: Final = _Phase.FINISHING
_CLOSED: Final = _Phase.CLOSED
_FLOWING: Final = _Delivery.FLOWING
_WAIT_BUDGET: Final = _Delivery.WAIT_BUDGET
_WAIT_ROOM: Final = _Delivery.WAIT_ROOM
_NO_REFILL: Final = _Pace.NO_REFILL
_REFILL_SCHEDULED: Final = _Pace.REFILL_SCHEDULED
_REFILL_DEFERRED: Final = _Pace.REFILL_DEFERRED
_STOPPED: Final = _Poll.STOPPED
_ON_READABLE: Final = _Poll.ON_READABLE
_ON_NEXT_TURN: Final = _Poll.ON_NEXT_TURN


class MessageReader:
    """Reads a child's message output fd into a :class:`Broadcast`, one message per line.

    Takes ownership of ``fd`` (a pipe or the parent's end of a FIFO), makes it non-blocking and
    starts reading at once with ``loop.add_reader`` on the broadcast's loop. Lines of any length
    are framed exactly; the last line is delivered at the end even without its ``\\n``.

    The stream ends, and the broadcast is closed, at EOF (a pipe whose every writer closed) or,
    after :meth:`child_exited`, once what the pipe holds is drained. A FIFO opened with
    :func:`~corral._platform.open_fifo_parent_end` never reports EOF, so for it
    ``child_exited()`` is what ends the stream; for a stdio pipe it is harmless, and ends the
    stream even if a grandchild still holds the pipe. :meth:`close` stops at once (kill).

    At most ``capacity`` messages are published per turn of the event loop: subscribers waiting
    on this loop read a batch before the next one comes, so a burst of lines in one read does
    not overrun a subscriber that keeps up (one whose loop body does not wait on other things).
    A subscriber that has read everything pulls the next messages of the burst itself, as many
    as every subscriber has room for (:meth:`Broadcast.set_pull`), so a reader that keeps up
    costs no loop turn per ``capacity`` messages and makes nobody lose any.

    While a lossless subscriber keeps the broadcast full, the reader stops reading the fd; the
    pipe fills up and the child blocks in ``write`` until the subscriber catches up.

    A line longer than ``max_message_bytes`` (``None``: no limit) is skipped as it comes, never
    held whole, and its subscribers get :class:`~corral.MessageTooLongError` in its place. Given
    ``exit_status`` (the run's status, ``None`` while it runs), an unterminated last line is
    delivered only once the child has exited normally; the last line of a child killed by a
    signal was cut off, and its subscribers get :class:`~corral.IncompleteMessageError`
    instead. (An EOF can come before the exit is known: the line waits for
    :meth:`child_exited`.) Without ``exit_status``, the last line is delivered at EOF.

    The first time a read finds the pipe full (the child writes faster than the parent wakes
    up), the pipe is raised to ``pipe_size`` bytes (``None``: never), so the child can run
    further ahead; pipes of quiet children keep the default size and cost no pipe quota.
    """

    def __init__(
        self,
        fd: int,
        broadcast: Broadcast[MessageItem],
        *,
        pipe_size: int | None = DEFAULT_PIPE_SIZE,
        max_message_bytes: int | None = None,
        exit_status: Callable[[], ExitStatus | None] | None = None,
    ) -> None:
        #: Whether the end of this output ends the broadcast too. A process that will be
        #: restarted sets it to False: the next run's reader goes on feeding the same streams.
        self.close_broadcast = True
        self._loop = broadcast.loop
        self._fd = fd
        self._broadcast = broadcast
        self._grow_to = pipe_size  # None once the pipe was raised (or must not be)
        self._framer = LineFramer(max_message_bytes)
        self._exit_status = exit_status
        self._tail: bytes | None = None  # an unterminated last line, waiting for the exit status
        self._pending: collections.deque[MessageItem] = collections.deque()
        # The state: see _Phase, _Delivery, _Pace and _Poll for the values and what sets them.
        self._phase: _Phase = _LIVE
        self._delivery: _Delivery = _FLOWING
        self._pace: _Pace = _NO_REFILL
        self._poll: _Poll = _STOPPED
        # At most `capacity` messages are published per turn of the loop (see _deliver).
        self._budget = broadcast.capacity
        self._done: asyncio.Future[None] = self._loop.create_future()
        os.set_blocking(fd, False)
        broadcast.set_pull(self._pull)
        self._start_reading()

    @property
    def closed(self) -> bool:
        """Whether reading is over (fd closed, broadcast closed)."""
        return self._done.done()

    @property
    def paused(self) -> bool:
        """Whether reading is stopped because a lossless subscriber keeps the buffer full."""
        return self._delivery is _WAIT_ROOM

    async def wait_closed(self) -> None:
        """Return when reading is over: end of output, or :meth:`close`."""
        await asyncio.shield(self._done)

    def child_exited(self) -> None:
        """The child has exited: read what is left without waiting, deliver it, then end."""
        phase = self._phase
        if phase is _LIVE:
            self._phase = _DRAINING
        elif phase is _AT_EOF:
            self._phase = _FINISHING
        else:
            return  # told already, or over
        if self._delivery is _WAIT_ROOM or self._pending:
            return  # _deliver() goes on with the drain once the pending messages are out
        if phase is _AT_EOF:
            self._drained()  # the last line waited for the exit status
        else:
            self._read_next_turn()

    def close(self) -> None:
        """Stop now: forget unread data, close the fd, end the broadcast's streams cleanly."""
        if self._phase is _CLOSED:
            return
        self._pending.clear()
        self._finish()  # closing the broadcast also fires a pending resume, which then stops

    # -- internals --

    def _on_readable(self) -> None:
        if self._poll is _ON_NEXT_TURN:
            self._poll = _STOPPED
        phase = self._phase
        if (
            (phase is not _LIVE and phase is not _DRAINING)
            or self._pending
            or self._delivery is _WAIT_ROOM
        ):
            return  # not before the last read is delivered (level-triggered: no data is missed)
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            if phase is _DRAINING:  # the child is gone and the pipe is empty
                self._at_eof()
            return
        except OSError:  # EIO and the like: nothing more will come
            data = b""
        if not data:
            self._at_eof()
            return
        if len(data) == _READ_SIZE and self._grow_to is not None:
            # The pipe was full: the child writes faster than we wake up; give it more room.
            set_pipe_size(self._fd, self._grow_to)
            self._grow_to = None
        framer = self._framer
        last = len(data) - 1
        if (
            data[last] == 10  # b"\n"
            and self._budget
            and not framer._size  # nothing held, nothing being skipped
            and data.find(b"\n") == last
            and (framer._limit is None or last <= framer._limit)
        ):
            # One whole line and nothing held before it: what each read of a message round
            # trip holds (bench/messages.py --sections round-trips). Published without the
            # framer's list, the pending queue and _deliver's bookkeeping, with the same
            # outcome as _deliver: a spent budget or a lossless subscriber's full buffer takes
            # the general path.
            message = _new_message(Message)
            _set_message_data(message, data[:last])
            if self._broadcast.try_publish(message):
                self._budget -= 1
                if not self._budget and self._pace is _NO_REFILL:
                    self._pace = _REFILL_SCHEDULED
                    self._loop.call_soon(self._refill)
                if phase is _DRAINING:
                    self._read_next_turn()
                return
            self._pending.append(message)  # a lossless subscriber's buffer is full
            self._deliver()
            return
        skipped = framer.skipped
        lines = framer.feed(data)
        if lines:
            if framer.skipped == skipped:  # the usual case: only messages
                self._pending.extend(map(Message, cast("list[bytes]", lines)))
            else:
                self._broadcast.holds_skipped = True
                self._pending.extend(map(_as_item, lines))
            self._deliver()
        elif phase is _DRAINING:
            self._read_next_turn()

    def _at_eof(self) -> None:
        self._phase = _FINISHING if self._phase is _DRAINING else _AT_EOF
        self._stop_reading()
        tail = self._framer.finish()
        if isinstance(tail, SkippedLine):
            self._publish_skipped(tail)
        else:
            self._tail = tail  # delivered by _drained(), once it is known how the child ended
        self._deliver()

    def _publish_skipped(self, line: SkippedLine) -> None:
        self._broadcast.holds_skipped = True
        self._pending.append(line)

    def _settle_tail(self, tail: bytes) -> bool:
        """Queue the unterminated last line: a message, or an error if the child was killed
        while writing it. False while the exit status is not known yet (nothing is queued)."""
        if self._exit_status is not None:
            status = self._exit_status()
            if status is None:
                return False
            if status.signal is not None:
                self._publish_skipped(SkippedLine(len(tail), data=tail))
                return True
        self._pending.append(Message(tail))
        return True

    def _deliver(self) -> None:
        """Publish pending messages, then go on: read more, wait for room, or end."""
        if self._phase is _CLOSED:
            return
        pending = self._pending
        while pending:
            if not self._budget:  # let subscribers on this loop take this batch first
                # A spent budget means a refill is scheduled (after the wake-ups of this
                # turn's subscribers): it goes on with the delivery, next turn.
                self._delivery = _WAIT_BUDGET
                return
            published = self._broadcast.publish_many(pending, self._budget)
            if published:
                self._budget -= published
                if not self._budget and self._pace is _NO_REFILL:
                    # Scheduled after the wake-ups of the subscribers this batch woke, so they
                    # run (and read it) before more is published. Only once the budget is
                    # spent: fewer than `capacity` messages since the last refill cannot
                    # overrun anyone, and a message at a time then costs no extra callback.
                    self._pace = _REFILL_SCHEDULED
                    self._loop.call_soon(self._refill)
            if pending and self._budget:  # a lossless subscriber has a full buffer to iterate
                self._delivery = _WAIT_ROOM
                self._stop_reading()
                self._broadcast._room_future().add_done_callback(self._resume)
                return
        self._drained()

    def _pull(self) -> bool:
        """A subscriber has read everything: publish what fits without loss (see
        :meth:`Broadcast.set_pull`); whether anything was published."""
        pending = self._pending
        if not pending or self._phase is _CLOSED:
            return False
        broadcast = self._broadcast
        published = broadcast.publish_many(pending, broadcast.free_room())
        if published and self._pace is _REFILL_SCHEDULED:
            # The subscribers this woke must read before the reader's next paced batch.
            self._pace = _REFILL_DEFERRED
        if self._delivery is _WAIT_ROOM:
            broadcast._wake_producer()  # the room it waits for is there: let it resume
        elif not pending:
            self._drained()
        return published > 0

    def _drained(self) -> None:
        """Every message read is published: read more, or end."""
        self._delivery = _FLOWING  # a pull may have emptied what waited for a refill
        phase = self._phase
        if phase is _AT_EOF or phase is _FINISHING:
            tail = self._tail
            if tail is None:
                self._finish()
            elif self._settle_tail(tail):  # else child_exited() comes back here
                self._tail = None
                self._deliver()
        elif phase is _DRAINING:
            self._read_next_turn()
        elif phase is _LIVE:
            self._start_reading()

    def _refill(self) -> None:
        if self._pace is _REFILL_DEFERRED:
            # A pull published since: run after the subscribers it woke.
            self._pace = _REFILL_SCHEDULED
            self._loop.call_soon(self._refill)
            return
        self._pace = _NO_REFILL
        self._budget = self._broadcast.capacity
        if self._delivery is _WAIT_BUDGET:
            self._delivery = _FLOWING
            self._deliver()

    def _resume(self, _room: asyncio.Future[None]) -> None:
        self._delivery = _FLOWING
        self._deliver()

    def _read_next_turn(self) -> None:
        # After the child's exit: one read per loop iteration, until the pipe is empty, so a
        # grandchild that keeps writing cannot starve the loop.
        self._stop_reading()
        if self._poll is not _ON_NEXT_TURN:
            self._poll = _ON_NEXT_TURN
            self._loop.call_soon(self._on_readable)

    def _start_reading(self) -> None:
        if self._poll is not _ON_READABLE:
            self._loop.add_reader(self._fd, self._on_readable)
            self._poll = _ON_READABLE

    def _stop_reading(self) -> None:
        if self._poll is _ON_READABLE:
            self._loop.remove_reader(self._fd)
            self._poll = _STOPPED

    def _finish(self) -> None:
        self._stop_reading()
        if self._broadcast._pull == self._pull:  # a restarted process's next reader may own it
            self._broadcast.set_pull(None)
        if self._phase is not _CLOSED:
            self._phase = _CLOSED
            os.close(self._fd)
        if self.close_broadcast:
            self._broadcast.close()
        if not self._done.done():
            self._done.set_result(None)


# Message(data) without the Python frame of Message.__init__ (~60 ns of ~200, timeit): the
# reader makes one per line it reads. The slot's own setter, as Message.__init__ does.
_new_message: Final = Message.__new__
_set_message_data: Final = Message.__dict__["_data"].__set__


def _as_item(line: bytes | SkippedLine) -> MessageItem:
    return Message(line) if isinstance(line, bytes) else line


# --- writing to a child's input -----------------------------------------------------------------


class _Send:
    __slots__ = ("data", "future", "offset")

    def __init__(self, data: memoryview, offset: int, future: asyncio.Future[None]) -> None:
        self.data = data
        self.offset = offset
        self.future = future


class MessageWriter:
    """Writes messages to one child's input fd, in order, without blocking the event loop.

    Takes ownership of ``fd`` (a pipe or the parent's end of a FIFO) and makes it non-blocking.
    Each :meth:`send` completes when all its bytes are in the pipe. When the pipe is full the
    sender waits (``loop.add_writer``), and so do later sends to the same child; other children's
    writers are unaffected.

    Cancelling a waiting ``send``: a message not yet started is withdrawn; a message partly in
    the pipe is still written in full before the next one, because the bytes already written
    cannot be taken back and the child must not see two messages merged into one line.

    ``EPIPE`` (the child closed its input) fails the pending sends and every later one with
    :class:`~corral.WriteMessageError`. The parent's end of a FIFO never gets ``EPIPE``, so the
    manager calls :meth:`child_exited` when the child exits, with the same effect.
    """

    def __init__(
        self,
        fd: int,
        *,
        process_id: ProcessId | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._fd = fd
        self._process_id = process_id
        self._queue: collections.deque[_Send] = collections.deque()
        self._writing = False
        self._failure: str | None = None  # why every send now fails
        os.set_blocking(fd, False)

    @property
    def closed(self) -> bool:
        """Whether sends now fail (closed, child exited or broken pipe)."""
        return self._failure is not None

    async def send(self, data: bytes) -> None:
        """Write ``data`` (one or more complete lines) and return when it is all in the pipe.

        Raises :class:`~corral.WriteMessageError` if the child's input is closed or the child
        has exited. See the class docs for cancellation.
        """
        written = self.enqueue(data)
        if written is not None:
            await written

    def enqueue(self, data: bytes) -> asyncio.Future[None] | None:
        """Write ``data`` now if the pipe takes it all, else queue it without waiting.

        Returns ``None`` when it is all in the pipe already (the usual case), else a future
        that completes when it is. For a caller that must not wait itself (an actor answering
        through a reply future). Cancelling the future cancels the send as :meth:`send`
        describes. Raises :class:`~corral.WriteMessageError` at once if the input is closed.
        """
        if self._failure is not None:
            raise self._error()
        offset = 0
        if not self._queue:  # nothing ahead: write at once, the usual case
            try:
                offset = os.write(self._fd, data)  # the bytes as they are: no view unless queued
            except BlockingIOError:
                pass
            except OSError as exc:
                self._fail(exc)
                raise self._error() from None
            if offset == len(data):
                return None
        future: asyncio.Future[None] = self._loop.create_future()
        entry = _Send(memoryview(data), offset, future)
        self._queue.append(entry)
        future.add_done_callback(functools.partial(self._on_send_done, entry))
        if not self._writing:
            self._loop.add_writer(self._fd, self._on_writable)
            self._writing = True
        return future

    def child_exited(self) -> None:
        """The child has exited: fail pending and later sends, and close the fd."""
        if self._failure is None:
            self._shut(f"{process_name(self._process_id)} has exited: its message input is closed")

    def close(self) -> None:
        """Close the fd; pending and later sends fail with ``WriteMessageError``."""
        if self._failure is None:
            self._shut(f"the message input of {process_name(self._process_id)} was closed")

    # -- internals --

    def _on_send_done(self, entry: _Send, future: asyncio.Future[None]) -> None:
        # A cancelled send that has not started is withdrawn; one that has must be finished.
        if future.cancelled() and entry.offset == 0:
            with contextlib.suppress(ValueError):  # already skipped by _on_writable
                self._queue.remove(entry)

    def _on_writable(self) -> None:
        queue = self._queue
        while queue:
            entry = queue[0]
            if entry.offset == 0 and entry.future.cancelled():
                queue.popleft()  # withdrawn before its done-callback ran
                continue
            try:
                written = os.write(self._fd, entry.data[entry.offset :])
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail(exc)
                return
            entry.offset += written
            if entry.offset < len(entry.data):
                return  # the pipe is full: wait for the next writable event
            queue.popleft()
            if not entry.future.done():
                entry.future.set_result(None)
        self._stop_writing()

    def _fail(self, exc: OSError) -> None:
        if exc.errno == errno.EPIPE:
            reason = f"broken pipe: {process_name(self._process_id)} closed its message input"
        else:
            reason = f"cannot write to the message input of {process_name(self._process_id)}: {exc}"
        self._shut(reason)

    def _shut(self, reason: str) -> None:
        self._failure = reason
        self._stop_writing()
        queue, self._queue = self._queue, collections.deque()
        for entry in queue:
            if not entry.future.done():
                entry.future.set_exception(self._error())
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _stop_writing(self) -> None:
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def _error(self) -> WriteMessageError:
        assert self._failure is not None
        return WriteMessageError(self._failure, process_id=self._process_id)
