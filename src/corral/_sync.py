"""The blocking facade: :class:`SyncProcessManager`, the manager's API without ``async``.

For scripts, threads and other code with no event loop of its own::

    with SyncProcessManager() as pm:
        pid = pm.spawn(Cmd("echo", ["hi"], CmdOptions.with_logging(LoggingType.STDOUT_ONLY)))
        pm.wait(pid)
        print(pm.get_logs_stdout(pid))  # ['hi']

Threading model
---------------
Each :class:`SyncProcessManager` owns one daemon thread that runs an event loop of its own
(``asyncio.new_event_loop()``, or what ``loop_factory`` makes, e.g. ``uvloop.new_event_loop``).
The manager's actor lives on that loop, exactly as with :meth:`ProcessManager.spawn`. Every
blocking method submits the matching coroutine of the async :class:`ProcessManagerHandle` to the
loop with :func:`asyncio.run_coroutine_threadsafe` and waits for its result. Hence:

- Any number of threads may call one manager at once. Nothing is locked: the actor takes the
  requests one at a time, as it does for concurrent tasks.
- Errors are the async API's own, unchanged: ``wait(id, timeout)`` raises ``TimeoutError``,
  ``kill(unknown)`` raises an error that is both :class:`KillProcessError` and
  :class:`ProcessNotFoundError`, and so on.
- A blocking call from the manager's own loop thread (a callback or a task running on
  :attr:`SyncProcessManager.loop`) would wait for the loop it is blocking: a deadlock. It raises
  ``RuntimeError`` instead; use ``await manager.handle.<method>(...)`` there.
- A call from a thread that runs some other event loop works, but blocks that loop while it
  waits; code on a loop should use :attr:`SyncProcessManager.handle` (the async handle works
  from any loop).
- Async iterators (``follow_logs``, message streams) become ordinary iterators, each a
  :class:`BlockingIterator`: every ``next()`` is one ``anext`` on the background loop, and
  leaving the iteration early closes the async iterator there.

The spawning thread and parent death
------------------------------------
Every child is started by the background thread, not by the thread that called ``spawn``. With
``PR_SET_PDEATHSIG`` that would matter: the kernel sends the death signal when the *thread* that
created the child exits, not when the process does. corral does not rely on it. A guardian process
(see :mod:`corral._guardian`) watches the parent *process* through a pipe, so which thread spawned a
child, and how long that thread lives, makes no difference. Children die on :meth:`close` and
:meth:`abort`, at interpreter exit (an ``atexit`` hook closes every manager still open), and when
the parent process dies without running ``atexit`` (SIGKILL, ``os._exit``, a crash): then the
guardian SIGKILLs their process groups and removes the manager's dirs.

A :class:`SyncProcessManager` that is never closed keeps its thread, its loop and its children until
the interpreter exits. In a child made by ``os.fork()`` the copy of a manager is closed (its thread
did not survive the fork) and its calls raise :class:`ManagerAbortedError`.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from ._bound import Bound
from ._broadcast import ItemStream, MessageStream
from ._errors import (
    CorralError,
    KillProcessError,
    ManagerAbortedError,
    ProcessNotFoundError,
    manager_aborted,
)
from ._generated import SyncManagerMethods, SyncProcessMethods
from ._handle import ProcessHandle, ProcessManagerHandle, ScopedProcessHandle
from ._manager import ProcessManager
from ._messages import Message, MessageFormat
from ._model import ProcessId

if TYPE_CHECKING:
    pass

__all__ = [
    "BlockingIterator",
    "SyncProcessHandle",
    "SyncProcessManager",
    "SyncScopedProcessHandle",
]

T = TypeVar("T")
R = TypeVar("R")
It = TypeVar("It")

# Marks the background threads of every SyncProcessManager (see BlockingIterator.__del__).
_THREAD_STATE = threading.local()


def _on_a_loop_thread() -> bool:
    """Whether the current thread is the background thread of some SyncProcessManager."""
    return bool(getattr(_THREAD_STATE, "loop_thread", False))


class _LoopThread:
    """An event loop running on a daemon thread of its own, and the ways to reach it.

    :meth:`call` runs a coroutine there and blocks for its result; :meth:`call_soon` starts one
    without waiting; :meth:`stop` finishes what is left on the loop, stops it and joins the
    thread. Coroutines are passed as factories (zero-argument callables) so that a refused call
    never leaves a coroutine object that is never awaited.
    """

    def __init__(self, loop_factory: Callable[[], asyncio.AbstractEventLoop], name: str) -> None:
        self._lock = threading.Lock()
        self._refusal: str | None = None  # why calls are refused; None while they are accepted
        self._posted: set[asyncio.Task[Any]] = set()  # started by call_soon, awaited by stop
        started: concurrent.futures.Future[asyncio.AbstractEventLoop] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._main, args=(loop_factory, started), name=name, daemon=True
        )
        self._thread.start()
        try:
            self.loop = started.result()
        except BaseException:
            self._thread.join()
            raise
        self.ident = self._thread.ident

    @staticmethod
    def _main(
        loop_factory: Callable[[], asyncio.AbstractEventLoop],
        started: concurrent.futures.Future[asyncio.AbstractEventLoop],
    ) -> None:
        try:
            loop = loop_factory()
        except BaseException as exc:
            started.set_exception(exc)
            return
        _THREAD_STATE.loop_thread = True
        started.set_result(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def check_thread(self, what: str) -> None:
        """Raise ``RuntimeError`` if waiting here for the loop would deadlock."""
        if threading.get_ident() == self.ident:
            raise RuntimeError(
                f"SyncProcessManager.{what} was called from the manager's own event loop thread "
                f"(a callback or task on SyncProcessManager.loop): it would block the loop it "
                f"waits for, a deadlock. On that loop use the async API instead, "
                f"`await manager.handle.<method>(...)`, or call from another thread."
            )

    def call(
        self,
        make: Callable[[], Coroutine[Any, Any, R]],
        error: type[CorralError],
        what: str,
    ) -> R:
        """Run ``make()`` on the loop and block until it is done; return or raise its outcome.

        ``error`` is the operation's error class: once the loop is stopped the call raises an
        error that is both ``error`` and :class:`ManagerAbortedError`. ``what`` names the call in
        messages.
        """
        self.check_thread(what)
        with self._lock:  # so that nothing is submitted after stop() let the loop go
            if self._refusal is not None:
                raise manager_aborted(error, f"SyncProcessManager.{what}: {self._refusal}")
            future = asyncio.run_coroutine_threadsafe(make(), self.loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise manager_aborted(
                error, f"SyncProcessManager.{what}: the manager was closed during the call"
            ) from None
        except BaseException:
            # An interrupt (KeyboardInterrupt) while waiting: cancel the call on the loop too,
            # so that e.g. a spawn whose id nobody will know kills its process.
            future.cancel()
            raise

    def call_soon(self, make: Callable[[], Awaitable[Any]]) -> None:
        """Start ``make()`` on the loop and return at once; never blocks, never raises."""

        def start() -> None:
            task = asyncio.ensure_future(make())
            self._posted.add(task)
            task.add_done_callback(self._posted.discard)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to do there
            self.loop.call_soon_threadsafe(start)

    def stop(self) -> None:
        """Refuse new calls, finish the loop's work, stop it and join the thread (idempotent).

        Like ``asyncio.run`` at its end: what :meth:`call_soon` started is awaited, other tasks
        are cancelled, async generators still open are closed, the default executor is shut
        down. Calls blocked in another thread then raise :class:`ManagerAbortedError`.
        """
        self.check_thread("close()")
        with self._lock:
            first = self._refusal is None
            self._refusal = "the manager is closed"
        if first and self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._finish(), self.loop).result()
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()

    async def _finish(self) -> None:
        loop = asyncio.get_running_loop()
        if self._posted:
            await asyncio.gather(*self._posted, return_exceptions=True)
        current = asyncio.current_task()
        others = [task for task in asyncio.all_tasks(loop) if task is not current]
        for task in others:
            task.cancel()
        if others:
            await asyncio.gather(*others, return_exceptions=True)
        await loop.shutdown_asyncgens()
        await loop.shutdown_default_executor()

    def forget_after_fork(self) -> None:
        """In a forked child: the thread is gone, refuse every call from now on."""
        self._lock = threading.Lock()
        self._refusal = "the manager belongs to the process this one was forked from"
        self._posted = set()


# --- iterators ----------------------------------------------------------------------------------


class _End:
    """What :func:`_next_or_end` returns once the async iterator is exhausted."""


_END = _End()


async def _next_or_end(iterator: AsyncIterator[T]) -> T | _End:
    # StopAsyncIteration is turned into a value: it is an end, not an error, on the way back.
    try:
        return await anext(iterator)
    except StopAsyncIteration:
        return _END


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    aclose = cast("Callable[[], Awaitable[object]] | None", getattr(iterator, "aclose", None))
    if aclose is not None:
        await aclose()


class _Closing:
    """``with x:`` closes ``x`` at the end of the block."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BlockingIterator(_Closing, Iterator[T]):
    """An ordinary iterator over an async iterator that lives on a manager's background loop.

    Each ``next()`` runs one ``anext`` on that loop and blocks for it; ``StopAsyncIteration``
    becomes ``StopIteration``, any other exception is raised as it is (and the iteration may go
    on if the async iterator does, as a message stream does after lost messages).

    Stopping early closes the async iterator (``aclose()``) on the loop: :meth:`close`, the end of
    a ``with`` block, or the iterator being dropped (a ``for`` loop left with ``break``). Dropped
    on a manager's own thread, for instance by the garbage collector, it schedules the close
    instead of waiting for it. Once the manager is closed, every async iterator still open has
    been closed with it and ``next()`` raises :class:`ManagerAbortedError`.

    One thread at a time: concurrent ``next()`` calls are serialized.

    >>> for line in pm.follow_logs(pid):
    ...     if "ready" in line:
    ...         break  # the follower is closed here
    """

    def __init__(
        self,
        portal: _LoopThread,
        iterator: AsyncIterator[T],
        error: type[CorralError],
        what: str,
    ) -> None:
        self._portal = portal
        self._iterator: AsyncIterator[T] | None = iterator
        self._error = error
        self._what = what
        self._lock = threading.Lock()

    def __iter__(self) -> BlockingIterator[T]:
        return self

    def __next__(self) -> T:
        with self._lock:
            iterator = self._iterator
            if iterator is None:
                raise StopIteration
            item = self._portal.call(lambda: _next_or_end(iterator), self._error, self._what)
            if isinstance(item, _End):
                self._iterator = None  # it ended by itself: nothing to close
                raise StopIteration
            return item

    def close(self) -> None:
        """Close the async iterator on the loop and wait for it; later ``next()`` stops.

        Idempotent. Raises ``RuntimeError`` on the manager's own loop thread (it would deadlock).
        """
        self._portal.check_thread(f"{self._what} close()")
        with self._lock:
            iterator, self._iterator = self._iterator, None
        if iterator is None:
            return
        # Refused once the manager is closed: its loop closed every async generator left open.
        with contextlib.suppress(ManagerAbortedError):
            self._portal.call(lambda: _aclose(iterator), self._error, f"{self._what} close()")

    def __del__(self) -> None:
        iterator = getattr(self, "_iterator", None)
        if iterator is None:
            return
        if _on_a_loop_thread():
            # Waiting on a manager's thread could deadlock (its own loop, or another manager's
            # loop that needs a lock this thread holds): schedule the close instead.
            self._iterator = None
            self._portal.call_soon(lambda: _aclose(iterator))
        else:
            with contextlib.suppress(Exception):
                self.close()


class BlockingItemStream(BlockingIterator[T]):
    """A blocking :class:`~corral.ItemStream`: an iterator with the same adapters.

    >>> events = pm.subscribe_events().ignore_lost_messages()
    >>> done = pm.spawn(Cmd("true"))
    >>> for event in events:
    ...     print(event.kind.value)
    ...     if event.kind is EventKind.EXITED:
    ...         break
    spawned
    exited
    """

    def __init__(
        self,
        portal: _LoopThread,
        iterator: ItemStream[T] | MessageStream,
        error: type[CorralError],
        what: str,
    ) -> None:
        super().__init__(portal, cast("AsyncIterator[T]", iterator), error, what)
        self._process_id = iterator.process_id

    @property
    def process_id(self) -> ProcessId | None:
        """The process the messages come from."""
        return self._process_id

    def ignore_lost_messages(self) -> BlockingItemStream[T]:
        """The same stream, going on after a lag instead of raising ``LostMessagesError``."""
        return BlockingItemStream(self._portal, self._adapt().ignore_lost_messages(), *self._as)

    def _adapt(self) -> Any:
        """The async stream, for an adapter that takes over its iteration."""
        with self._lock:
            iterator, self._iterator = self._iterator, None
        if iterator is None:
            raise self._error(f"{self._what}: the stream is closed or already adapted")
        return iterator

    @property
    def _as(self) -> tuple[type[CorralError], str]:
        return self._error, self._what


class BlockingMessageStream(BlockingItemStream[Message]):
    """A blocking :class:`~corral.MessageStream`: an iterator of :class:`~corral.Message` with
    the same adapters (``strings()``, ``decoded()``, ``batches()``, ...), each one a blocking
    iterator that takes over this stream's subscription.

    >>> texts = pm.subscribe_message_stream(pid).strings()
    >>> pm.send_message(pid, "ping")  # this child echoes each message back
    >>> for text in texts:
    ...     print(text)
    ...     break
    ping
    """

    def ignore_lost_messages(self) -> BlockingMessageStream:
        """The same stream, going on after a lag instead of raising ``LostMessagesError``."""
        return BlockingMessageStream(self._portal, self._adapt().ignore_lost_messages(), *self._as)

    def batches(self) -> BlockingIterator[list[Message]]:
        """Items as lists of every message available at once; see
        :meth:`MessageStream.batches`."""
        return BlockingItemStream(self._portal, self._adapt().batches(), *self._as)

    def strings(self) -> BlockingItemStream[str]:
        """Items as ``str``; see :meth:`MessageStream.strings`."""
        return BlockingItemStream(self._portal, self._adapt().strings(), *self._as)

    def raw(self) -> BlockingItemStream[bytes]:
        """Items as ``bytes``; see :meth:`MessageStream.raw`."""
        return BlockingItemStream(self._portal, self._adapt().raw(), *self._as)

    def mapped(self, convert: Callable[[Message], R]) -> BlockingItemStream[R]:
        """Items converted by ``convert``; see :meth:`MessageStream.mapped`."""
        return BlockingItemStream(self._portal, self._adapt().mapped(convert), *self._as)

    def decoded(self, fmt: MessageFormat | str, type: Any = object) -> BlockingItemStream[Any]:
        """Items decoded from ``fmt`` and checked against ``type``; see
        :meth:`MessageStream.decoded`."""
        return BlockingItemStream(self._portal, self._adapt().decoded(fmt, type), *self._as)


# --- the manager ------------------------------------------------------------------------------

# Managers not closed yet: closed at interpreter exit. Held strongly, like the core's managers: a
# manager nobody references any more still owns its thread and its children until then.
_OPEN: set[SyncProcessManager] = set()


# Registered after corral._manager's own hook (imported above), so it runs first: each manager
# is aborted on its loop, then the core's hook finds nothing left to do.
@atexit.register
def _close_all_at_exit() -> None:
    for manager in list(_OPEN):
        with contextlib.suppress(Exception):
            manager.close()


def _forget_all_after_fork() -> None:
    for manager in list(_OPEN):
        manager._forget_after_fork()
    _OPEN.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_all_after_fork)


async def _start_manager(working_dir: str | os.PathLike[str] | None) -> ProcessManagerHandle:
    return ProcessManager.spawn(working_dir)


class SyncProcessManager(_Closing, SyncManagerMethods):
    """A process manager for code without an event loop: the async API, blocking.

    Runs a :class:`ProcessManager` on an event loop of its own, on a daemon thread, and offers the
    methods of :class:`ProcessManagerHandle` without ``async``. Any thread may use it, many at
    once. ``with SyncProcessManager() as pm:`` closes it at the end of the block.

    ``working_dir`` is as for :meth:`ProcessManager.spawn` (``OSError`` at once if it does not
    exist or is not writable; ``None``: a private temp dir, removed on close). ``loop_factory``
    makes the background loop, ``asyncio.new_event_loop`` by default, e.g.
    ``uvloop.new_event_loop``.

    Children are spawned by the background thread; that makes no difference to their lifetime
    (corral's guardian watches the process, not a thread). They die on :meth:`close` or
    :meth:`abort`, at interpreter exit, or with the parent process. The manager runs on one
    background thread's event loop; every method crosses to it and blocks for the answer.

    >>> with SyncProcessManager() as pm:
    ...     pid = pm.spawn(Cmd("sh", ["-c", "exit 3"]))
    ...     print(pm.wait(pid).exit_status)
    exit code 3
    """

    def __init__(
        self,
        working_dir: str | os.PathLike[str] | None = None,
        *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    ) -> None:
        portal = _LoopThread(loop_factory or asyncio.new_event_loop, "corral-sync-manager")
        try:
            handle = portal.call(
                lambda: _start_manager(working_dir), ManagerAbortedError, "__init__()"
            )
        except BaseException:
            portal.stop()
            raise
        self._portal = portal
        self._handle = handle
        self._close_lock = threading.Lock()
        self._closed = False
        _OPEN.add(self)

    # --- what the generated methods build on ---------------------------------------------

    def _call(
        self, what: str, error: type[CorralError], make: Callable[[], Coroutine[Any, Any, R]]
    ) -> R:
        return self._portal.call(make, error, what)

    def _open(
        self, what: str, error: type[CorralError], make: Callable[[], Coroutine[Any, Any, It]]
    ) -> tuple[It, type[CorralError], str]:
        """Make an async iterator on the loop (a subscription starts now); with what the
        blocking iterator over it needs."""
        return self._portal.call(make, error, what), error, what

    def _open_now(
        self, what: str, error: type[CorralError], make: Callable[[], It]
    ) -> tuple[It, type[CorralError], str]:
        """As :meth:`_open`, for a method that returns its async iterator without awaiting."""

        async def opened() -> It:
            return make()

        return self._open(what, error, opened)

    def _message_stream(
        self, stream: MessageStream, error: type[CorralError], what: str
    ) -> BlockingMessageStream:
        return BlockingMessageStream(self._portal, stream, error, what)

    def _item_stream(
        self, stream: ItemStream[T], error: type[CorralError], what: str
    ) -> BlockingItemStream[T]:
        return BlockingItemStream(self._portal, stream, error, what)

    def _iterator(
        self, iterator: AsyncIterator[T], error: type[CorralError], what: str
    ) -> BlockingIterator[T]:
        return BlockingIterator(self._portal, iterator, error, what)

    def _bind(self, handle: ProcessHandle) -> SyncProcessHandle:
        return SyncProcessHandle(self, handle.id)

    def _bind_scoped(self, handle: ScopedProcessHandle) -> SyncScopedProcessHandle:
        return SyncScopedProcessHandle(self, handle)

    # --- reaching the loop ---------------------------------------------------------------------

    @property
    def handle(self) -> ProcessManagerHandle:
        """The manager's async handle: for code on this manager's loop or on any other loop.

        >>> info = await pm.handle.get_process_info(pid)  # inside some coroutine
        """
        return self._handle

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The background event loop the manager runs on.

        Schedule your own coroutines there with ``asyncio.run_coroutine_threadsafe(coro,
        pm.loop)``; they are cancelled by :meth:`close`. Code running on it must use
        :attr:`handle`: the blocking methods raise ``RuntimeError`` there.
        """
        return self._portal.loop

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run (every call raises :class:`ManagerAbortedError`)."""
        return self._closed

    def close(self) -> None:
        """Abort the manager (if not done yet), stop the background loop, join its thread.

        Idempotent, and safe to call from several threads. Afterwards every method raises an
        error that is both :class:`ManagerAbortedError` and the operation's own class (e.g.
        :class:`KillProcessError` for ``kill``). Raises ``RuntimeError`` on the manager's own
        loop thread.
        """
        self._portal.check_thread("close()")
        with self._close_lock:
            if self._closed:
                return
            try:
                with contextlib.suppress(ManagerAbortedError):
                    self.abort()
            finally:
                self._portal.stop()
                self._closed = True
                _OPEN.discard(self)

    def _forget_after_fork(self) -> None:
        self._close_lock = threading.Lock()
        self._closed = True
        self._portal.forget_after_fork()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {state}>"


# --- process handles ------------------------------------------------------------------------------


class SyncProcessHandle(Bound[SyncProcessManager], SyncProcessMethods):
    """A :class:`SyncProcessManager` bound to one process: the same methods without the id.

    Dropping it does nothing to the process.

    >>> proc = pm.spawn_with_handle(Cmd("sleep", ["60"]))
    >>> proc.terminate(grace=1.0).exit_status.signal == signal.SIGTERM
    True
    """

    __slots__ = ()


class SyncScopedProcessHandle(SyncProcessHandle):
    """A :class:`SyncProcessHandle` that kills its process when its ``with`` block ends.

    The kill happens on normal exit and on an exception. If the handle is garbage-collected
    while its process runs, a kill request is posted (best effort; never blocks).

    >>> with pm.spawn_with_scoped_handle(Cmd("sleep", ["60"])) as proc:
    ...     pass  # the sleep is killed here
    """

    # The async scoped handle does the work: its __aexit__ kills, its finalizer posts a kill.
    __slots__ = ("_scope",)

    def __init__(self, manager: SyncProcessManager, scope: ScopedProcessHandle) -> None:
        super().__init__(manager, scope.id)
        self._scope = scope

    def __enter__(self) -> SyncScopedProcessHandle:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        # Already killed, or the manager is closed: the process is gone too.
        with contextlib.suppress(ProcessNotFoundError, ManagerAbortedError):
            self._manager._call(
                "kill()",
                KillProcessError,
                lambda: self._scope.__aexit__(*exc_info),
            )
