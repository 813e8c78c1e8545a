"""Fanning one producer's items out to any number of subscribers: the buffer and its streams.

A :class:`Broadcast` is a bounded buffer with absolute sequence numbers; each subscriber reads
it through a stream, an async iterator that may run on another thread's event loop. The buffer
never looks inside its items, so the same lossless / lossy semantics, lost-item counts and
capacity serve two producers, each with its own item type:

* a process's messages, ``Broadcast[MessageItem]``: the reader of the child's output (see
  ``corral._pipes``) publishes each line as a :class:`~corral.Message`, or as a
  :class:`SkippedLine` where the line is not a message. Subscribers read them through a
  :class:`MessageStream` and its adapters (:class:`ItemStream` for converted items,
  :class:`BatchStream` for lists of messages), which raise the error a skipped line stands for;
* the manager's events, ``Broadcast[EventRecord]`` (see ``corral._supervision``), read through
  an :class:`ItemStream` that builds each :class:`~corral.ProcessEvent` from its record.

Everything here belongs to the event loop the broadcast was created on; only the streams may be
iterated from another one, and they hop to the owner loop to fetch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Generic, Self, TypeAlias, TypeVar, cast, final, overload

from ._errors import (
    IncompleteMessageError,
    LostMessagesError,
    MessageTooLongError,
    ReceiveDeserializedMessageError,
    ReceiveMessageError,
    SerdeError,
)
from ._messages import Message, MessageFormat, as_format
from ._model import ProcessId

__all__ = [
    "BatchStream",
    "Broadcast",
    "ItemStream",
    "MessageItem",
    "MessageStream",
    "SkippedLine",
    "process_name",
]

# The running loop or None, without get_running_loop()'s exception when there is none.
_get_running_loop = asyncio._get_running_loop

_T = TypeVar("_T")  # what a buffer holds, or what a stream yields
_S = TypeVar("_S")  # what the buffer a stream reads holds
_U = TypeVar("_U")
_R = TypeVar("_R")


def process_name(process_id: ProcessId | None) -> str:
    """How errors name the process a stream or pipe belongs to."""
    return f"process {process_id}" if process_id is not None else "the process"


# --- message items ------------------------------------------------------------------------------


@final  # the streams tell it from a Message by its exact type, the cheapest check per item
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


#: What a process's message buffer holds: a message, or a line that stands for an error.
MessageItem: TypeAlias = Message | SkippedLine


# --- the broadcast buffer -----------------------------------------------------------------------


class _Subscriber(Generic[_T]):
    """A subscriber's position; owned by the :class:`Broadcast`, read through a cursor."""

    __slots__ = ("batch", "closed", "lossless", "pos")

    def __init__(self, pos: int, lossless: bool) -> None:
        self.pos = pos  # sequence number of the next item to fetch
        self.lossless = lossless
        self.closed = False
        # Fetched (read, for the buffer) but not yet iterated: its cursor serves them from
        # here. Only the iterating side pops; the owner loop extends it and reads its length.
        self.batch: collections.deque[_T] = collections.deque()


class Broadcast(Generic[_T]):
    """A bounded buffer of the last ``capacity`` items, read by any number of subscribers.

    Below, the items are called messages, what they are for a process; the manager's events get
    the same treatment (the buffer never looks inside its items).

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
    close and subscribe there. Its streams may be iterated from any loop. ``process_id`` names
    the process in the streams' errors.

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
        self._ring: list[_T | None] = [None] * capacity
        # Messages before the position of every live subscriber are released (see _trim).
        self._head = 0  # sequence number of the oldest buffered message
        self._next = 0  # sequence number the next published message gets
        self._subscribers: set[_Subscriber[_T]] = set()
        self._lossless: set[_Subscriber[_T]] = set()
        self._subscribed_once = False
        self._closed = False
        self._read_waiters: dict[asyncio.Future[None], None] = {}
        self._room_waiters: dict[asyncio.Future[None], None] = {}
        self._pull: Callable[[], bool] | None = None
        #: Whether an item standing for an error (a :class:`SkippedLine`) was ever published
        #: here: batches then look for one.
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

    def try_publish(self, message: _T) -> bool:
        """Append ``message``, dropping the oldest if the buffer is full; never waits.

        Returns ``False``, and publishes nothing, only when a lossless subscriber has
        ``capacity`` messages it has not iterated yet: wait with :meth:`wait_for_room`, then try
        again. After :meth:`close`, or when every subscriber has gone away, the message is
        discarded (nobody could ever read it) and the result is ``True``.
        """
        if self._closed or (self._subscribed_once and not self._subscribers):
            return True
        capacity = self._capacity
        lossless = self._lossless
        if lossless:
            if len(lossless) == 1:  # the usual case, without _lossless_blocks's generator
                (sub,) = lossless
                if sub.pos - len(sub.batch) <= self._next - capacity:
                    return False
            elif self._lossless_blocks():
                return False
        if self._next - self._head >= capacity:
            slot = self._head % capacity
            self._ring[slot] = None
            self._head += 1
        slot = self._next % capacity
        self._ring[slot] = message
        self._next += 1
        if self._read_waiters:  # _wake_readers() inlined: a reader publishes one line this way
            waiters, self._read_waiters = self._read_waiters, {}
            for waiter in waiters:
                if not waiter.done():  # a cancelled waiter is done
                    waiter.set_result(None)
        return True

    def publish_many(self, messages: collections.deque[_T], budget: int) -> int:
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

    async def publish(self, message: _T) -> None:
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

    def subscribe(
        self: Broadcast[MessageItem], lossless: bool = False, *, replay: bool | None = None
    ) -> MessageStream:
        """A new subscriber's stream of messages (see the class docs for where it starts).

        ``lossless=True`` makes the producer wait for this subscriber instead of dropping
        messages it has not read; use it where every message counts and the child may be slowed.
        ``replay`` overrides where it starts: True, at the oldest buffered message; False, at
        the next one published, even for the first subscriber.
        """
        return MessageStream(self._subscribe(lossless, replay), skip_lost=False)

    def subscribe_items(
        self, convert: Callable[[_T], _U], *, lossless: bool = False, replay: bool | None = None
    ) -> ItemStream[_U]:
        """A new subscriber's stream of items seen through ``convert``; ``lossless`` and
        ``replay`` as for :meth:`subscribe`. For items that are not messages."""
        return ItemStream(self._subscribe(lossless, replay), convert, skip_lost=False)

    def _subscribe(self, lossless: bool, replay: bool | None) -> _Cursor[_T]:
        first = not self._subscribed_once
        self._subscribed_once = True
        if replay if replay is not None else first:
            sub: _Subscriber[_T] = _Subscriber(self._head, lossless)
        else:
            sub = _Subscriber(self._next, lossless)
            sub.closed = self._closed
        if not sub.closed:
            self._subscribers.add(sub)
            if lossless:
                self._lossless.add(sub)
        return _Cursor(self, sub)

    async def _read_many(
        self, sub: _Subscriber[_T], skip_lost: bool, into: collections.deque[_T]
    ) -> bool:
        """Move every message the subscriber can have now into ``into``, waiting while there is
        none; ``False`` at the end. Runs on the owner loop.

        The messages count as read by the subscriber once they are in ``into``. They are added
        to ``into`` rather than returned so that a caller on another loop, cancelled just as
        the batch is fetched, cannot lose it. A lag is reported first, as the
        ``LostMessagesError``; the next call goes on with the oldest message still buffered.
        """
        while True:
            fetched = self._fetch(sub, skip_lost, into)
            if fetched is not None:
                return fetched
            waiter = self._read_waiter()
            try:
                await waiter
            finally:
                self._read_waiters.pop(waiter, None)

    def _fetch(
        self, sub: _Subscriber[_T], skip_lost: bool, into: collections.deque[_T]
    ) -> bool | None:
        """:meth:`_read_many` without the wait: ``None`` where it would wait for a publish.

        A plain call, so that a stream on the owner loop waits without a coroutine of its own
        per message (see :meth:`MessageStream.__anext__`).
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
                if end - pos == 1:  # what a round trip reads: no slice
                    into.append(self._ring[start])  # type: ignore[arg-type]
                    sub.pos = end
                    if pos == head:
                        if len(self._subscribers) == 1:  # _trim() for this one subscriber
                            self._ring[start] = None
                            self._head = end
                        else:
                            self._trim()
                    return True
                stop = start + (end - pos)
                if stop <= capacity:
                    into.extend(cast("list[_T]", self._ring[start:stop]))
                else:
                    into.extend(cast("list[_T]", self._ring[start:]))
                    into.extend(cast("list[_T]", self._ring[: stop - capacity]))
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
            return None

    def _read_waiter(self) -> asyncio.Future[None]:
        """A future done at the next publish (or close); the waiter takes it out when done."""
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._read_waiters[waiter] = None
        return waiter

    def _release(self, sub: _Subscriber[_T]) -> None:
        """Forget a subscriber that is done, closed or garbage-collected."""
        if sub.closed:
            return
        sub.closed = True
        self._subscribers.discard(sub)
        self._lossless.discard(sub)
        self._trim()
        self._wake_producer()

    def _close_subscriber(self, sub: _Subscriber[_T]) -> None:
        self._release(sub)
        # A task of this subscriber may be waiting for data: let it see that it is closed.
        self._wake_readers()

    def _release_from_any_thread(self, sub: _Subscriber[_T]) -> None:
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


async def _close_on_owner(broadcast: Broadcast[_T], sub: _Subscriber[_T]) -> None:
    broadcast._close_subscriber(sub)


class _Cursor(Generic[_T]):
    """A subscription as its streams see it; when the last stream drops it, it is released.

    The cursor fetches every message available in one hop to the broadcast and serves them
    from ``batch``, a local queue, so most ``__anext__`` calls touch neither the broadcast nor
    its loop. Fetched messages count as read for the buffer (they are released from it, and a
    lag is measured against what was fetched); a lossless subscriber's fetched messages still
    count against the capacity until they are iterated, so it holds back the producer exactly
    as much as before.
    """

    __slots__ = ("__weakref__", "batch", "broadcast", "lossless", "sub")

    def __init__(self, broadcast: Broadcast[_T], sub: _Subscriber[_T]) -> None:
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
        if _get_running_loop() is broadcast._loop:  # _read_many() inlined: a coroutine less
            while not batch:
                fetched = broadcast._fetch(self.sub, skip_lost, batch)
                if fetched is None:
                    waiter = broadcast._read_waiter()
                    try:
                        await waiter
                    finally:
                        broadcast._read_waiters.pop(waiter, None)
                elif not fetched and not batch:
                    raise StopAsyncIteration
            return
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

    def pop(self) -> _T:
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


class _StreamBase(AsyncIterator[_T], Generic[_S, _T]):
    """What every stream view shares: closing, context management, skipping losses.

    A view reads a subscription to a buffer of ``_S`` items and yields ``_T`` items.
    """

    __slots__ = ("_cursor", "_skip_lost")

    def __init__(self, cursor: _Cursor[_S], *, skip_lost: bool) -> None:
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


class MessageStream(_StreamBase[MessageItem, Message]):
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
        # The hot path of every subscriber: pop() inlined, and fill() with _read_many() too on
        # the owner loop, so that waiting for the next message costs no coroutine of its own.
        cursor = self._cursor
        batch = cursor.batch
        if not batch:
            broadcast = cursor.broadcast
            if _get_running_loop() is broadcast._loop:  # fill() inlined
                while not batch:
                    fetched = broadcast._fetch(cursor.sub, self._skip_lost, batch)
                    if fetched is None:
                        waiter = broadcast._read_waiter()
                        try:
                            await waiter
                        finally:
                            broadcast._read_waiters.pop(waiter, None)
                    elif not fetched and not batch:
                        raise StopAsyncIteration
            else:
                await cursor.fill(self._skip_lost)
        item = batch.popleft()
        if cursor.lossless and cursor.broadcast._room_waiters:
            cursor.iterated_lossless()
        if type(item) is SkippedLine:
            raise item.error(self.process_id)
        return item

    def batches(self) -> BatchStream:
        """Items as lists of every message available at once (at most ``capacity`` each).

        For high rates: one step of ``async for`` per batch instead of per message, which is
        what many subscribers of a flood spend most of their time on. Lag, end and threads
        work as for the messages one by one. For a lossless subscriber, a batch counts as
        iterated once it is handed out: the reader may buffer ``capacity`` more while it is
        being processed.

        >>> counter = await handle.spawn(Cmd("seq", ["3"], CmdOptions.with_standard_io_messaging()))
        >>> stream = await handle.subscribe_message_stream(counter)
        >>> async for batch in stream.batches():
        ...     for message in batch:
        ...         print(message.to_string())
        1
        2
        3
        """
        return BatchStream(self._cursor, skip_lost=self._skip_lost)

    def strings(self) -> ItemStream[str]:
        """Items as ``str``; a message that is not UTF-8 raises
        :class:`~corral.ReceiveDeserializedMessageError` for that item, and the stream goes on.
        """
        return _ConvertedMessages(self._cursor, Message.to_string, skip_lost=self._skip_lost)

    def raw(self) -> ItemStream[bytes]:
        """Items as ``bytes``, exactly as the child wrote them (without the ``\\n``)."""
        return _ConvertedMessages(self._cursor, Message.to_bytes, skip_lost=self._skip_lost)

    def mapped(self, convert: Callable[[Message], _T]) -> ItemStream[_T]:
        """Items converted by ``convert``; a :class:`~corral.SerdeError` it raises becomes
        :class:`~corral.ReceiveDeserializedMessageError` for that item, and the stream goes on.

        >>> lengths = stream.mapped(lambda message: len(message.to_bytes()))
        """
        return _ConvertedMessages(self._cursor, convert, skip_lost=self._skip_lost)

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

        return _ConvertedMessages(self._cursor, decode, skip_lost=self._skip_lost)


class ItemStream(_StreamBase[Any, _T]):
    """A subscription seen through a conversion: a :class:`MessageStream`'s ``strings()``,
    ``raw()``, ``mapped()`` and ``decoded()``, and the events of ``subscribe_events()``.

    A message that cannot be converted raises :class:`~corral.ReceiveDeserializedMessageError`
    (holding the raw bytes as ``.data``) for that item; the next ``__anext__`` goes on.
    """

    # The buffer's item type is the caller's business: __init__ checks that it fits `convert`.
    __slots__ = ("_convert",)

    def __init__(
        self, cursor: _Cursor[_S], convert: Callable[[_S], _T], *, skip_lost: bool
    ) -> None:
        super().__init__(cursor, skip_lost=skip_lost)
        self._convert: Callable[[Any], _T] = convert

    async def __anext__(self) -> _T:
        cursor = self._cursor
        if not cursor.batch:
            await cursor.fill(self._skip_lost)
        return self._convert(cursor.pop())


class _ConvertedMessages(ItemStream[_T]):
    """An :class:`ItemStream` of messages: a skipped line raises its error, and a
    :class:`~corral.SerdeError` of the conversion becomes the item's error."""

    __slots__ = ()

    def __init__(
        self, cursor: _Cursor[MessageItem], convert: Callable[[Message], _T], *, skip_lost: bool
    ) -> None:
        # Not ItemStream.__init__: `convert` takes messages only, __anext__ filters the rest.
        _StreamBase.__init__(self, cursor, skip_lost=skip_lost)
        self._convert = convert

    async def __anext__(self) -> _T:
        cursor = self._cursor
        if not cursor.batch:
            await cursor.fill(self._skip_lost)
        item: MessageItem = cursor.pop()
        if type(item) is SkippedLine:
            raise item.error(self.process_id)
        try:
            return self._convert(item)
        except SerdeError as exc:
            process_id = self.process_id
            raise ReceiveDeserializedMessageError(
                f"message from {process_name(process_id)} cannot be read: {exc}",
                item.to_bytes(),
                process_id=process_id,
            ) from exc


class BatchStream(_StreamBase[MessageItem, list[Message]]):
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
        # No skipped line was ever published: every item is a message.
        messages = cast("list[Message]", list(batch))
        batch.clear()
        if cursor.lossless and cursor.broadcast._room_waiters:
            cursor.iterated_lossless()
        return messages

    def _until_skipped(self, cursor: _Cursor[MessageItem]) -> list[Message]:
        """The messages before the first skipped line; the error for it if it comes first."""
        batch = cursor.batch
        count = next((i for i, item in enumerate(batch) if type(item) is SkippedLine), len(batch))
        if count == 0:
            skipped = cast(SkippedLine, cursor.pop())
            raise skipped.error(self.process_id)
        messages = cast("list[Message]", [batch.popleft() for _ in range(count)])
        if cursor.lossless and cursor.broadcast._room_waiters:
            cursor.iterated_lossless()
        return messages
