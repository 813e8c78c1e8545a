"""Moving messages through pipes: line framing, the broadcast buffer, readers and writers.

One process's messaging is four objects, all living on the manager's event loop:

* a :class:`MessageReader` reads the child's output fd (its stdout pipe, or the parent's end of
  the ``OUTPUT_PIPE`` FIFO), cuts it into lines with a :class:`LineFramer` and publishes each line
  as a :class:`~corral.Message` into
* a :class:`Broadcast`, a bounded buffer with absolute sequence numbers, from which any number of
  subscribers read through
* :class:`MessageStream` objects (async iterators; they may be iterated from another thread's
  event loop);
* a :class:`MessageWriter` writes to the child's input fd (its stdin pipe, or the parent's end of
  the ``INPUT_PIPE`` FIFO), one message after the other, without ever blocking the loop.

Wiring, for the manager::

    # on spawn: stdio pipes from cloexec_pipe(), the child's ends given to the child and
    # closed in the parent once it started; or FIFOs made with make_fifo and opened with
    # open_fifo_parent_end before the child starts. Reader and writer own the parent's ends.
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
import copy
import errno
import functools
import os
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Final, Self, TypeVar, cast, overload

from ._errors import (
    IncompleteMessageError,
    LostMessagesError,
    MessageTooLongError,
    ReceiveDeserializedMessageError,
    ReceiveMessageError,
    SerdeError,
    WriteMessageError,
)
from ._messages import Message, MessageFormat, as_format
from ._model import ExitStatus, ProcessId
from ._platform import set_pipe_size

__all__ = [
    "DEFAULT_PIPE_SIZE",
    "BatchStream",
    "Broadcast",
    "ItemStream",
    "LineFramer",
    "MessageReader",
    "MessageStream",
    "MessageWriter",
    "SkippedLine",
]

_T = TypeVar("_T")
_R = TypeVar("_R")

#: Capacity a reader raises its pipe to once it finds it full (see :class:`MessageReader`).
DEFAULT_PIPE_SIZE: Final = 256 * 1024
# Bytes asked of each os.read: a default pipe's capacity. A larger request costs an mmap/munmap
# per read (measured here: ~13 us for 256 KiB against ~0.8 us for 64 KiB when a line is waiting)
# and did not make a flood faster end to end.
_READ_SIZE: Final = 64 * 1024


def _who(process_id: ProcessId | None) -> str:
    return f"process {process_id}" if process_id is not None else "the process"


# --- framing ------------------------------------------------------------------------------------


class SkippedLine:
    """Stands for a line that is not delivered as a message, in the framer's output and in the
    broadcast buffer; a subscriber gets :meth:`error` in its place.

    Either a line longer than ``limit`` bytes (``data`` is ``None``: its bytes were dropped as
    they came, only ``size`` was counted), or the last line of a child killed while writing it
    (``data`` holds it, ``limit`` is ``None``).
    """

    __slots__ = ("data", "limit", "size")

    def __init__(self, size: int, limit: int | None = None, data: bytes | None = None) -> None:
        self.size = size
        self.limit = limit
        self.data = data

    def error(self, process_id: ProcessId | None) -> ReceiveMessageError:
        """The error a subscriber gets for this line."""
        if self.limit is None:
            return IncompleteMessageError(self.data or b"", process_id=process_id)
        return MessageTooLongError(self.size, self.limit, process_id=process_id)

    def __repr__(self) -> str:
        return f"SkippedLine(size={self.size}, limit={self.limit})"


#: For the streams' check of each item: SkippedLine passes through the buffer as a Message.
_SKIPPED: Final[type] = SkippedLine


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


# --- the broadcast buffer -----------------------------------------------------------------------


class _Subscriber:
    """A subscriber's position; owned by the :class:`Broadcast`, read through a cursor."""

    __slots__ = ("batch", "closed", "lossless", "pos")

    def __init__(self, pos: int, lossless: bool) -> None:
        self.pos = pos  # sequence number of the next message to fetch
        self.lossless = lossless
        self.closed = False
        # Fetched (read, for the buffer) but not yet iterated: its cursor serves them from
        # here. Only the iterating side pops; the owner loop extends it and reads its length.
        self.batch: collections.deque[Message] = collections.deque()


class Broadcast:
    """A bounded buffer of the last ``capacity`` messages, read by any number of subscribers.

    Every published message gets the next sequence number. Each subscriber has its own position:

    * the first subscriber starts at the oldest buffered message, so what the child wrote before
      anyone subscribed is kept for it (up to ``capacity``; older ones are dropped uncounted);
      later subscribers start with the next message published;
    * a stream fetches every message available to it at once into a local queue and iterates
      them from there; for the buffer, a fetched message is read;
    * a subscriber more than ``capacity`` messages behind what it fetched loses the oldest: its
      next read raises :class:`~corral.LostMessagesError` with the exact count, then goes on
      with the oldest message still buffered. The producer never waits for such a (lossy)
      subscriber;
    * a *lossless* subscriber is never overtaken: when it has ``capacity`` messages it has not
      iterated yet (still buffered, or fetched and not yet iterated), :meth:`try_publish`
      refuses and the producer waits (:meth:`wait_for_room`). The reader then stops reading the
      pipe and the child blocks on its next write: the backpressure reaches the child. The price
      is that one slow lossless subscriber slows the child and, through the shared buffer,
      every other subscriber;
    * a message that every live subscriber has read is released at once (it is never read
      again), and a stream dropped without ``aclose()`` (garbage-collected) releases its
      messages too, so an abandoned stream never holds the buffer or stalls the producer.

    After :meth:`close` (end of stream) subscribers read what is left, then their iteration ends.
    A subscriber that comes after the close gets an empty stream, except the very first
    subscriber, which still gets what was buffered.

    A ``Broadcast`` belongs to one event loop (the running loop when it is created): publish,
    close and subscribe there. Its streams may be iterated from any loop.

    >>> async def demo():
    ...     broadcast = Broadcast(capacity=2)
    ...     for text in ("a", "b", "c"):
    ...         broadcast.try_publish(Message.from_string(text))
    ...     broadcast.close()
    ...     return [m.to_string() async for m in broadcast.subscribe()]
    >>> asyncio.run(demo())
    ['b', 'c']
    """

    def __init__(
        self,
        capacity: int,
        *,
        process_id: ProcessId | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity <= 0:
            raise ValueError(f"capacity must be an int > 0, not {capacity!r}")
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._capacity = capacity
        self._process_id = process_id
        # A ring of `capacity` slots; message number `seq` lives in slot `seq % capacity`.
        self._ring: list[Message | None] = [None] * capacity
        # Messages before the position of every live subscriber are released (see _trim).
        self._head = 0  # sequence number of the oldest buffered message
        self._next = 0  # sequence number the next published message gets
        self._subscribers: set[_Subscriber] = set()
        self._lossless: set[_Subscriber] = set()
        self._subscribed_once = False
        self._closed = False
        self._read_waiters: dict[asyncio.Future[None], None] = {}
        self._room_waiters: dict[asyncio.Future[None], None] = {}
        self._pull: Callable[[], bool] | None = None
        #: Whether a :class:`SkippedLine` was ever published here: batches then look for one.
        self.holds_skipped = False

    @property
    def capacity(self) -> int:
        """How many messages are kept at most."""
        return self._capacity

    @property
    def process_id(self) -> ProcessId | None:
        """The process the messages come from, named in errors."""
        return self._process_id

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this broadcast belongs to."""
        return self._loop

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (subscribers may still be reading what is left)."""
        return self._closed

    def __len__(self) -> int:
        """How many messages are buffered now."""
        return self._next - self._head

    # -- producer side --

    def try_publish(self, message: Message) -> bool:
        """Append ``message``, dropping the oldest if the buffer is full; never waits.

        Returns ``False``, and publishes nothing, only when a lossless subscriber has
        ``capacity`` messages it has not iterated yet: wait with :meth:`wait_for_room`, then try
        again. After :meth:`close`, or when every subscriber has gone away, the message is
        discarded (nobody could ever read it) and the result is ``True``.
        """
        if self._closed or (self._subscribed_once and not self._subscribers):
            return True
        capacity = self._capacity
        if self._lossless and self._lossless_blocks():
            return False
        if self._next - self._head >= capacity:
            slot = self._head % capacity
            self._ring[slot] = None
            self._head += 1
        slot = self._next % capacity
        self._ring[slot] = message
        self._next += 1
        if self._read_waiters:
            self._wake_readers()
        return True

    def publish_many(self, messages: collections.deque[Message], budget: int) -> int:
        """Publish from the left of ``messages`` as :meth:`try_publish` would, without waiting.

        Publishes (and pops) at most ``budget`` messages, stopping early only where
        :meth:`try_publish` would refuse (a lossless subscriber has ``capacity`` messages it has
        not iterated yet). Returns how many were taken; waiting readers are woken once.
        """
        if budget <= 0 or not messages:
            return 0
        popleft = messages.popleft
        if self._closed or (self._subscribed_once and not self._subscribers):
            taken = min(budget, len(messages))
            for _ in range(taken):
                popleft()  # nobody could ever read them
            return taken
        capacity = self._capacity
        head = self._head
        seq = self._next
        taken = min(budget, len(messages))
        lossless = self._lossless
        if lossless:
            # No subscriber fetches while this runs, and iterating only makes room: the bound
            # set by the lossless subscriber furthest behind holds for the whole call.
            if len(lossless) == 1:
                (sub,) = lossless
                behind = sub.pos - len(sub.batch)
            else:
                behind = min(sub.pos - len(sub.batch) for sub in lossless)
            taken = min(taken, behind + capacity - seq)
            if taken <= 0:
                return 0
        put = taken
        if put > capacity:  # the first ones would be overwritten within this call: drop them
            for _ in range(put - capacity):
                popleft()
            seq += put - capacity
            put = capacity
        if put == len(messages):
            batch = list(messages)
            messages.clear()
        else:
            batch = [popleft() for _ in range(put)]
        end = seq + put
        if end - head > capacity:  # full: the oldest are dropped (their slots are reused)
            head = end - capacity
        ring = self._ring
        start = seq % capacity
        stop = start + put
        if stop <= capacity:
            ring[start:stop] = batch
        else:
            split = capacity - start
            ring[start:] = batch[:split]
            ring[: stop - capacity] = batch[split:]
        self._head = head
        self._next = end
        if taken and self._read_waiters:
            self._wake_readers()
        return taken

    def set_pull(self, pull: Callable[[], bool] | None) -> None:
        """Let a subscriber that has read everything ask the producer for more, at once.

        ``pull`` runs on the owner loop, inside a subscriber's read, and publishes what the
        producer holds that fits in :meth:`free_room`; it returns whether it published anything.
        A producer that has messages ready (a pipe read gives thousands) thus hands them over
        without a turn of the event loop per ``capacity`` messages. ``None`` removes it.
        """
        self._pull = pull

    def free_room(self) -> int:
        """How many messages can be published now without any subscriber losing one.

        The least room among live subscribers: a lossy one has room for what would not push it
        more than ``capacity`` behind, a lossless one for what would not give it more than
        ``capacity`` messages not iterated yet. With no subscriber, the room is the capacity.
        """
        capacity = self._capacity
        room = capacity
        base = capacity - self._next
        for sub in self._subscribers:
            free = sub.pos + base - (len(sub.batch) if sub.lossless else 0)
            if free < room:
                room = free
        return room

    async def publish(self, message: Message) -> None:
        """Append ``message``, waiting first while a lossless subscriber keeps the buffer full."""
        while not self.try_publish(message):
            await self.wait_for_room()

    async def wait_for_room(self) -> None:
        """Return when :meth:`try_publish` would succeed, or the broadcast is closed."""
        while not self._closed and not self._has_room():
            waiter = self._room_future()
            try:
                await waiter
            finally:
                self._room_waiters.pop(waiter, None)

    def _room_future(self) -> asyncio.Future[None]:
        """A future done when there is room for one message, or the broadcast is closed."""
        waiter: asyncio.Future[None] = self._loop.create_future()
        if self._closed or self._has_room():
            waiter.set_result(None)
        else:
            self._room_waiters[waiter] = None
        return waiter

    def close(self) -> None:
        """End of stream: subscribers read what is buffered, then their iteration ends."""
        if self._closed:
            return
        self._closed = True
        self._wake_readers()
        self._wake_producer()

    # -- subscriber side --

    def subscribe(self, lossless: bool = False, *, replay: bool | None = None) -> MessageStream:
        """A new subscriber's stream (see the class docs for where it starts).

        ``lossless=True`` makes the producer wait for this subscriber instead of dropping
        messages it has not read; use it where every message counts and the child may be slowed.
        ``replay`` overrides where it starts: True, at the oldest buffered message; False, at
        the next one published, even for the first subscriber.
        """
        first = not self._subscribed_once
        self._subscribed_once = True
        if replay if replay is not None else first:
            sub = _Subscriber(self._head, lossless)
        else:
            sub = _Subscriber(self._next, lossless)
            sub.closed = self._closed
        if not sub.closed:
            self._subscribers.add(sub)
            if lossless:
                self._lossless.add(sub)
        return MessageStream(_Cursor(self, sub), skip_lost=False)

    async def _read_many(
        self, sub: _Subscriber, skip_lost: bool, into: collections.deque[Message]
    ) -> bool:
        """Move every message the subscriber can have now into ``into``, waiting while there is
        none; ``False`` at the end. Runs on the owner loop.

        The messages count as read by the subscriber once they are in ``into``. They are added
        to ``into`` rather than returned so that a caller on another loop, cancelled just as
        the batch is fetched, cannot lose it. A lag is reported first, as the
        ``LostMessagesError``; the next call goes on with the oldest message still buffered.
        """
        while True:
            if sub.closed:
                return False
            pos = sub.pos
            head = self._head
            if pos < head:
                sub.pos = head
                if not skip_lost:
                    raise LostMessagesError(head - pos, process_id=self._process_id)
                pos = head
            end = self._next
            if pos < end:
                capacity = self._capacity
                start = pos % capacity
                stop = start + (end - pos)
                if stop <= capacity:
                    into.extend(cast("list[Message]", self._ring[start:stop]))
                else:
                    into.extend(cast("list[Message]", self._ring[start:]))
                    into.extend(cast("list[Message]", self._ring[: stop - capacity]))
                sub.pos = end
                if pos == head:
                    self._trim()
                # No room is made for a lossless subscriber here: only iterating makes room
                # (the stream wakes the producer then, see _Cursor.iterated_lossless).
                return True
            if self._closed:
                self._release(sub)
                return False
            pull = self._pull
            # Only once every subscriber has fetched everything (the head is then the end):
            # one still reading pulls when it is done, so the others need not ask.
            if pull is not None and self._head == end and pull():
                continue
            waiter = self._loop.create_future()
            self._read_waiters[waiter] = None
            try:
                await waiter
            finally:
                self._read_waiters.pop(waiter, None)

    def _release(self, sub: _Subscriber) -> None:
        """Forget a subscriber that is done, closed or garbage-collected."""
        if sub.closed:
            return
        sub.closed = True
        self._subscribers.discard(sub)
        self._lossless.discard(sub)
        self._trim()
        self._wake_producer()

    def _close_subscriber(self, sub: _Subscriber) -> None:
        self._release(sub)
        # A task of this subscriber may be waiting for data: let it see that it is closed.
        self._wake_readers()

    def _release_from_any_thread(self, sub: _Subscriber) -> None:
        """Called when a stream is garbage-collected, which may happen on any thread."""
        if sub.closed:
            return
        # A closed loop raises RuntimeError: then nobody is left to wait for anything.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._release, sub)

    # -- internals --

    def _trim(self) -> None:
        """Drop the oldest messages that no live subscriber still has to read.

        Those are the messages before every live subscriber's position: a subscriber starts at
        the head or at the next message, and one overtaken (``pos < head``) has lost the
        messages before the head already. With nobody left, everything goes.
        """
        subscribers = self._subscribers
        if not subscribers:
            release_to = self._next
        elif len(subscribers) == 1:
            (only,) = subscribers
            release_to = only.pos
        else:
            release_to = min(sub.pos for sub in subscribers)
        head = self._head
        if release_to <= head:
            return
        capacity = self._capacity
        start = head % capacity
        stop = start + (release_to - head)
        ring = self._ring
        if stop <= capacity:
            ring[start:stop] = [None] * (stop - start)
        else:
            ring[start:] = [None] * (capacity - start)
            ring[: stop - capacity] = [None] * (stop - capacity)
        self._head = release_to

    def _lossless_blocks(self) -> bool:
        """Whether a lossless subscriber has ``capacity`` messages it has not iterated yet
        (buffered, or fetched into its stream): then nothing may be published."""
        limit = self._next - self._capacity
        return any(sub.pos - len(sub.batch) <= limit for sub in self._lossless)

    def _has_room(self) -> bool:
        return not (self._lossless and self._lossless_blocks())

    def _wake_readers(self) -> None:
        waiters, self._read_waiters = self._read_waiters, {}
        _resolve(waiters)

    def _wake_producer(self) -> None:
        if self._room_waiters and (self._closed or self._has_room()):
            waiters, self._room_waiters = self._room_waiters, {}
            _resolve(waiters)


def _resolve(waiters: dict[asyncio.Future[None], None]) -> None:
    for waiter in waiters:
        if not waiter.done():  # a cancelled waiter is done
            waiter.set_result(None)


async def _run_on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, _R]) -> _R | None:
    """Run ``coro`` on ``loop`` (another thread's) and wait for it here; ``None`` if it is closed.

    Cancelling the caller cancels the coroutine on its loop.
    """
    try:
        future = asyncio.run_coroutine_threadsafe(coro, loop)
    except RuntimeError:  # the owner loop is closed: the stream can only be over
        coro.close()
        return None
    return await asyncio.wrap_future(future)


async def _close_on_owner(broadcast: Broadcast, sub: _Subscriber) -> None:
    broadcast._close_subscriber(sub)


class _Cursor:
    """A subscription as its streams see it; when the last stream drops it, it is released.

    The cursor fetches every message available in one hop to the broadcast and serves them
    from ``batch``, a local queue, so most ``__anext__`` calls touch neither the broadcast nor
    its loop. Fetched messages count as read for the buffer (they are released from it, and a
    lag is measured against what was fetched); a lossless subscriber's fetched messages still
    count against the capacity until they are iterated, so it holds back the producer exactly
    as much as before.
    """

    __slots__ = ("__weakref__", "batch", "broadcast", "lossless", "sub")

    def __init__(self, broadcast: Broadcast, sub: _Subscriber) -> None:
        self.broadcast = broadcast
        self.sub = sub
        self.batch = sub.batch
        self.lossless = sub.lossless
        if not sub.closed:
            finalizer = weakref.finalize(self, broadcast._release_from_any_thread, sub)
            finalizer.atexit = False

    async def fill(self, skip_lost: bool) -> None:
        """Wait until ``batch`` holds messages; ``StopAsyncIteration`` at the end."""
        batch = self.batch
        broadcast = self.broadcast
        while not batch:
            more: bool | None
            if asyncio.get_running_loop() is broadcast.loop:
                more = await broadcast._read_many(self.sub, skip_lost, batch)
            else:  # the state is only ever touched from its own loop: hop there
                more = await _run_on(
                    broadcast.loop, broadcast._read_many(self.sub, skip_lost, batch)
                )
            if not more and not batch:
                raise StopAsyncIteration

    def pop(self) -> Message:
        """The next fetched message (``batch`` must not be empty)."""
        message = self.batch.popleft()
        if self.lossless and self.broadcast._room_waiters:
            self.iterated_lossless()
        return message

    def iterated_lossless(self) -> None:
        """A lossless subscriber iterated messages while the producer waits for room."""
        broadcast = self.broadcast
        loop = broadcast.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            broadcast._wake_producer()
        else:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(broadcast._wake_producer)

    async def aclose(self) -> None:
        broadcast = self.broadcast
        self.batch.clear()
        if asyncio.get_running_loop() is broadcast.loop:
            broadcast._close_subscriber(self.sub)
        else:
            await _run_on(broadcast.loop, _close_on_owner(broadcast, self.sub))
        self.batch.clear()  # what a read still in flight may have fetched


# --- streams ------------------------------------------------------------------------------------


class _StreamBase(AsyncIterator[_T]):
    """What every stream view shares: closing, context management, skipping losses."""

    __slots__ = ("_cursor", "_skip_lost")

    def __init__(self, cursor: _Cursor, *, skip_lost: bool) -> None:
        self._cursor = cursor
        self._skip_lost = skip_lost

    @property
    def process_id(self) -> ProcessId | None:
        """The process the messages come from."""
        return self._cursor.broadcast.process_id

    def ignore_lost_messages(self) -> Self:
        """The same stream, silently going on after a lag instead of raising ``LostMessagesError``.

        >>> async def latest(stream):
        ...     async for message in stream.ignore_lost_messages():
        ...         print(message.to_string())
        """
        view = copy.copy(self)
        view._skip_lost = True
        return view

    async def aclose(self) -> None:
        """Unsubscribe: the iteration ends and the buffer no longer keeps messages for it."""
        await self._cursor.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class MessageStream(_StreamBase[Message]):
    """A subscriber's async iterator of :class:`~corral.Message` from one process.

    Iteration ends when the child's output has ended and every buffered message was delivered
    (or when the process is killed). If the subscriber fell behind by more than the buffer
    capacity, the next ``__anext__`` raises :class:`~corral.LostMessagesError` (with ``.count``)
    and the one after goes on with the oldest message still buffered. A line that is not a
    message raises, in its place, :class:`~corral.MessageTooLongError` (longer than the
    process's ``max_message_bytes``) or :class:`~corral.IncompleteMessageError` (the last line
    of a child killed while writing it); the stream goes on after it too.

    Adapters give other items from the same subscription (iterate only one of them):
    :meth:`strings`, :meth:`raw`, :meth:`decoded`, :meth:`batches` (lists of messages, for
    high rates), and :meth:`ignore_lost_messages`, which chains with the others
    (``stream.ignore_lost_messages().decoded("json")``).

    A stream may be iterated from any thread's event loop; ``aclose()`` (or ``async with``)
    unsubscribes at once, dropping the stream unsubscribes when it is garbage-collected.

    >>> async def show(stream: MessageStream) -> None:
    ...     async with stream:
    ...         async for text in stream.strings():
    ...             print(text)
    """

    __slots__ = ()

    async def __anext__(self) -> Message:
        # The hot path of every subscriber: pop() inlined.
        cursor = self._cursor
        batch = cursor.batch
        if not batch:
            await cursor.fill(self._skip_lost)
        message = batch.popleft()
        if cursor.lossless and cursor.broadcast._room_waiters:
            cursor.iterated_lossless()
        if message.__class__ is _SKIPPED:
            raise cast(SkippedLine, message).error(self.process_id)
        return message

    def batches(self) -> BatchStream:
        """Items as lists of every message available at once (at most ``capacity`` each).

        For high rates: one step of ``async for`` per batch instead of per message, which is
        what many subscribers of a flood spend most of their time on. Lag, end and threads
        work as for the messages one by one. For a lossless subscriber, a batch counts as
        iterated once it is handed out: the reader may buffer ``capacity`` more while it is
        being processed.

        >>> async for batch in stream.batches():
        ...     for message in batch:
        ...         print(message.to_string())
        """
        return BatchStream(self._cursor, skip_lost=self._skip_lost)

    def strings(self) -> ItemStream[str]:
        """Items as ``str``; a message that is not UTF-8 raises
        :class:`~corral.ReceiveDeserializedMessageError` for that item, and the stream goes on.
        """
        return ItemStream(self._cursor, Message.to_string, skip_lost=self._skip_lost)

    def raw(self) -> ItemStream[bytes]:
        """Items as ``bytes``, exactly as the child wrote them (without the ``\\n``)."""
        return ItemStream(self._cursor, Message.to_bytes, skip_lost=self._skip_lost)

    def mapped(self, convert: Callable[[Message], _T]) -> ItemStream[_T]:
        """Items converted by ``convert``; a :class:`~corral.SerdeError` it raises becomes
        :class:`~corral.ReceiveDeserializedMessageError` for that item, and the stream goes on.

        >>> lengths = stream.mapped(lambda message: len(message.to_bytes()))
        """
        return ItemStream(self._cursor, convert, skip_lost=self._skip_lost)

    @overload
    def decoded(self, fmt: MessageFormat | str, type: type[_T]) -> ItemStream[_T]: ...

    @overload
    def decoded(self, fmt: MessageFormat | str, type: object = ...) -> ItemStream[Any]: ...

    def decoded(self, fmt: MessageFormat | str, type: object = object) -> ItemStream[Any]:
        """Items decoded from ``fmt`` and checked against ``type`` (see ``Message.deserialize``).

        A malformed message, or one of the wrong shape, raises
        :class:`~corral.ReceiveDeserializedMessageError` for that item, and the stream goes on.

        >>> async def jobs(stream: MessageStream) -> None:
        ...     async for job in stream.decoded(MessageFormat.JSON, dict[str, int]):
        ...         print(job["id"])
        """
        fmt = as_format(fmt)

        def decode(message: Message) -> Any:
            return message.deserialize(fmt, type)

        return ItemStream(self._cursor, decode, skip_lost=self._skip_lost)


class ItemStream(_StreamBase[_T]):
    """A :class:`MessageStream` seen through a conversion (``strings()``, ``raw()``, ``decoded()``).

    A message that cannot be converted raises :class:`~corral.ReceiveDeserializedMessageError`
    (holding the raw bytes as ``.data``) for that item; the next ``__anext__`` goes on.
    """

    __slots__ = ("_convert",)

    def __init__(
        self, cursor: _Cursor, convert: Callable[[Message], _T], *, skip_lost: bool
    ) -> None:
        super().__init__(cursor, skip_lost=skip_lost)
        self._convert = convert

    async def __anext__(self) -> _T:
        cursor = self._cursor
        if not cursor.batch:
            await cursor.fill(self._skip_lost)
        message = cursor.pop()
        if message.__class__ is _SKIPPED:
            raise cast(SkippedLine, message).error(self.process_id)
        try:
            return self._convert(message)
        except SerdeError as exc:
            process_id = self.process_id
            raise ReceiveDeserializedMessageError(
                f"message from {_who(process_id)} cannot be read: {exc}",
                message.to_bytes(),
                process_id=process_id,
            ) from exc


class BatchStream(_StreamBase[list[Message]]):
    """A :class:`MessageStream` seen as lists of the messages available at once (see
    :meth:`MessageStream.batches`). A batch is never empty."""

    __slots__ = ()

    async def __anext__(self) -> list[Message]:
        cursor = self._cursor
        batch = cursor.batch
        if not batch:
            await cursor.fill(self._skip_lost)
        if cursor.broadcast.holds_skipped:
            return self._until_skipped(cursor)
        messages = list(batch)
        batch.clear()
        if cursor.lossless and cursor.broadcast._room_waiters:
            cursor.iterated_lossless()
        return messages

    def _until_skipped(self, cursor: _Cursor) -> list[Message]:
        """The messages before the first skipped line; the error for it if it comes first."""
        batch = cursor.batch
        count = next((i for i, item in enumerate(batch) if item.__class__ is _SKIPPED), len(batch))
        if count == 0:
            skipped = cast(SkippedLine, cursor.pop())
            raise skipped.error(self.process_id)
        messages = [batch.popleft() for _ in range(count)]
        if cursor.lossless and cursor.broadcast._room_waiters:
            cursor.iterated_lossless()
        return messages


# --- reading a child's output -------------------------------------------------------------------


class MessageReader:
    """Reads a child's message output fd into a :class:`Broadcast`, one message per line.

    Takes ownership of ``fd`` (a pipe or the parent's end of a FIFO), makes it non-blocking and
    starts reading at once with ``loop.add_reader`` on the broadcast's loop. Lines of any length
    are framed exactly; the last line is delivered at the end even without its ``\\n``.

    The stream ends, and the broadcast is closed, at EOF (a pipe whose every writer closed) or,
    after :meth:`child_exited`, once what the pipe holds is drained. A FIFO opened with
    :func:`open_fifo_parent_end` never reports EOF, so for it ``child_exited()`` is what ends
    the stream; for a stdio pipe it is harmless, and ends the stream even if a grandchild still
    holds the pipe. :meth:`close` stops at once (kill).

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
        broadcast: Broadcast,
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
        self._pending: collections.deque[Message] = collections.deque()
        self._reading = False  # registered with add_reader
        self._paused = False  # waiting for room in the broadcast
        self._eof = False
        self._exited = False  # child gone: drain without waiting for readiness
        self._read_scheduled = False
        # At most `capacity` messages are published per turn of the loop (see _deliver).
        self._budget = broadcast.capacity
        self._refill_scheduled = False
        self._refill_deferred = False
        self._deliver_on_refill = False  # the budget ran out with messages pending
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
        return self._paused

    async def wait_closed(self) -> None:
        """Return when reading is over: end of output, or :meth:`close`."""
        await asyncio.shield(self._done)

    def child_exited(self) -> None:
        """The child has exited: read what is left without waiting, deliver it, then end."""
        if self._done.done() or self._exited:
            return
        self._exited = True
        if self._paused or self._pending:
            return  # _deliver() goes on with the drain once the pending messages are out
        if self._eof:
            self._drained()  # the last line waited for the exit status
        else:
            self._stop_reading()
            self._schedule_read()

    def close(self) -> None:
        """Stop now: forget unread data, close the fd, end the broadcast's streams cleanly."""
        if self._done.done():
            return
        self._pending.clear()
        self._finish()  # closing the broadcast also fires a pending resume, which then stops

    # -- internals --

    def _on_readable(self) -> None:
        self._read_scheduled = False
        if self._fd < 0 or self._pending or self._paused or self._eof:
            return  # not before the last read is delivered (level-triggered: no data is missed)
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            if self._exited:  # the child is gone and the pipe is empty
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
        skipped = framer.skipped
        lines = framer.feed(data)
        if lines:
            if framer.skipped == skipped:  # the usual case: only messages
                self._pending.extend(map(Message, cast("list[bytes]", lines)))
            else:
                self._broadcast.holds_skipped = True
                self._pending.extend(map(_as_item, lines))
            self._deliver()
        elif self._exited:
            self._schedule_read()

    def _at_eof(self) -> None:
        self._eof = True
        self._stop_reading()
        tail = self._framer.finish()
        if isinstance(tail, SkippedLine):
            self._publish_skipped(tail)
        else:
            self._tail = tail  # delivered by _drained(), once it is known how the child ended
        self._deliver()

    def _publish_skipped(self, line: SkippedLine) -> None:
        self._broadcast.holds_skipped = True
        self._pending.append(_as_item(line))

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
        if self._fd < 0:
            return
        pending = self._pending
        while pending:
            if not self._budget:  # let subscribers on this loop take this batch first
                # A spent budget means a refill is scheduled (after the wake-ups of this
                # turn's subscribers): it goes on with the delivery, next turn.
                self._deliver_on_refill = True
                return
            published = self._broadcast.publish_many(pending, self._budget)
            if published:
                self._budget -= published
                if not self._budget and not self._refill_scheduled:
                    # Scheduled after the wake-ups of the subscribers this batch woke, so they
                    # run (and read it) before more is published. Only once the budget is
                    # spent: fewer than `capacity` messages since the last refill cannot
                    # overrun anyone, and a message at a time then costs no extra callback.
                    self._refill_scheduled = True
                    self._loop.call_soon(self._refill)
            if pending and self._budget:  # a lossless subscriber has a full buffer to iterate
                self._paused = True
                self._stop_reading()
                self._broadcast._room_future().add_done_callback(self._resume)
                return
        self._drained()

    def _pull(self) -> bool:
        """A subscriber has read everything: publish what fits without loss (see
        :meth:`Broadcast.set_pull`); whether anything was published."""
        pending = self._pending
        if not pending or self._fd < 0:
            return False
        broadcast = self._broadcast
        published = broadcast.publish_many(pending, broadcast.free_room())
        if published and self._refill_scheduled:
            # The subscribers this woke must read before the reader's next paced batch.
            self._refill_deferred = True
        if self._paused:
            broadcast._wake_producer()  # the room it waits for is there: let it resume
        elif not pending:
            self._drained()
        return published > 0

    def _drained(self) -> None:
        """Every message read is published: read more, or end."""
        if self._eof:
            tail = self._tail
            if tail is None:
                self._finish()
            elif self._settle_tail(tail):  # else child_exited() comes back here
                self._tail = None
                self._deliver()
        elif self._exited:
            self._stop_reading()
            self._schedule_read()
        else:
            self._start_reading()

    def _refill(self) -> None:
        if self._refill_deferred:  # a pull published since: run after the readers it woke
            self._refill_deferred = False
            self._loop.call_soon(self._refill)
            return
        self._refill_scheduled = False
        self._budget = self._broadcast.capacity
        if self._deliver_on_refill:
            self._deliver_on_refill = False
            self._deliver()

    def _resume(self, _room: asyncio.Future[None]) -> None:
        self._paused = False
        self._deliver()

    def _schedule_read(self) -> None:
        # After the child's exit: one read per loop iteration, until the pipe is empty, so a
        # grandchild that keeps writing cannot starve the loop.
        if not self._read_scheduled:
            self._read_scheduled = True
            self._loop.call_soon(self._on_readable)

    def _start_reading(self) -> None:
        if not self._reading:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _finish(self) -> None:
        self._stop_reading()
        if self._broadcast._pull == self._pull:  # a restarted process's next reader may own it
            self._broadcast.set_pull(None)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.close_broadcast:
            self._broadcast.close()
        if not self._done.done():
            self._done.set_result(None)


def _as_item(line: bytes | SkippedLine) -> Message:
    # A SkippedLine stands in the buffer where its line would be; streams look for it.
    return Message(line) if isinstance(line, bytes) else cast(Message, line)


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
        view = memoryview(data)
        offset = 0
        if not self._queue:  # nothing ahead: write at once, the usual case
            try:
                offset = os.write(self._fd, view)
            except BlockingIOError:
                pass
            except OSError as exc:
                self._fail(exc)
                raise self._error() from None
            if offset == len(view):
                return None
        future: asyncio.Future[None] = self._loop.create_future()
        entry = _Send(view, offset, future)
        self._queue.append(entry)
        future.add_done_callback(functools.partial(self._on_send_done, entry))
        if not self._writing:
            self._loop.add_writer(self._fd, self._on_writable)
            self._writing = True
        return future

    def child_exited(self) -> None:
        """The child has exited: fail pending and later sends, and close the fd."""
        if self._failure is None:
            self._shut(f"{_who(self._process_id)} has exited: its message input is closed")

    def close(self) -> None:
        """Close the fd; pending and later sends fail with ``WriteMessageError``."""
        if self._failure is None:
            self._shut(f"the message input of {_who(self._process_id)} was closed")

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
            reason = f"broken pipe: {_who(self._process_id)} closed its message input"
        else:
            reason = f"cannot write to the message input of {_who(self._process_id)}: {exc}"
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
