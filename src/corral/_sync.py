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
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ._arguments import check_bool, check_process_id
from ._errors import (
    CorralError,
    GetLogsError,
    GetProcessInfoError,
    KillProcessError,
    ManagerAbortedError,
    ProcessNotFoundError,
    ReadMessageError,
    ReleaseProcessError,
    SpawnProcessError,
    WriteMessageError,
    manager_aborted,
)
from ._handle import ProcessManagerHandle, ScopedProcessHandle
from ._logs import LogsQuery
from ._manager import ProcessManager
from ._messages import Message
from ._model import ExitedProcessInfo, ProcessId, ProcessInfo, Runnable
from ._requests import LogStream
from ._supervision import ProcessEvent

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "BlockingIterator",
    "SyncProcessHandle",
    "SyncProcessManager",
    "SyncScopedProcessHandle",
]

T = TypeVar("T")
R = TypeVar("R")

_FETCH_ALL = LogsQuery.fetch_all()

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


class BlockingIterator(Iterator[T]):
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

    def __enter__(self) -> BlockingIterator[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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


def _iterate_blocking(
    portal: _LoopThread,
    open_iterator: Callable[[], Coroutine[Any, Any, AsyncIterator[T]]],
    error: type[CorralError],
    what: str,
) -> BlockingIterator[T]:
    """Turn an async iterator that lives on ``portal``'s loop into a blocking iterator.

    ``open_iterator()`` runs on the loop now (so the iterator is made there, and a subscription
    starts at call time; its errors are raised here); then every ``next()`` of the result is an
    ``anext`` on the loop. ``error`` is the operation's class for a call after the manager is
    closed; ``what`` names the operation in messages. For example::

        def follow_logs(self, process_id, stream="stdout"):
            async def open_iterator():
                return self._handle.follow_logs(process_id, stream)
            return _iterate_blocking(self._portal, open_iterator, GetLogsError, "follow_logs()")

        def subscribe_message_stream(self, process_id):
            return _iterate_blocking(
                self._portal,
                lambda: self._handle.subscribe_message_stream(process_id),
                ReceiveMessageError,
                "subscribe_message_stream()",
            )
    """
    iterator = portal.call(open_iterator, error, what)
    return BlockingIterator(portal, iterator, error, what)


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


class SyncProcessManager:
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

    def _call(
        self, what: str, error: type[CorralError], make: Callable[[], Coroutine[Any, Any, R]]
    ) -> R:
        return self._portal.call(make, error, f"{what}()")

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

    # --- spawning ------------------------------------------------------------------------------

    def spawn(self, runnable: Runnable) -> ProcessId:
        """Start a :class:`Cmd`, a :class:`Script` or any :class:`Runnable`; return its id.

        See :meth:`ProcessManagerHandle.spawn`; raises :class:`SpawnProcessError`.

        >>> pid = pm.spawn(Cmd("sleep", ["10"]))
        """
        return self._call("spawn", SpawnProcessError, lambda: self._handle.spawn(runnable))

    def spawn_with_handle(self, runnable: Runnable) -> SyncProcessHandle:
        """Like :meth:`spawn`, returning a :class:`SyncProcessHandle` bound to the new process.

        >>> proc = pm.spawn_with_handle(Cmd("true"))
        >>> proc.wait().exit_status.success
        True
        """
        process_id = self._call(
            "spawn_with_handle", SpawnProcessError, lambda: self._handle.spawn(runnable)
        )
        return SyncProcessHandle(self, process_id)

    def spawn_with_scoped_handle(self, runnable: Runnable) -> SyncScopedProcessHandle:
        """Like :meth:`spawn`; the process is killed when the handle's ``with`` block ends.

        >>> with pm.spawn_with_scoped_handle(Cmd("sleep", ["60"])) as proc:
        ...     print(proc.get_process_info().is_running)
        True
        """
        scope = self._call(
            "spawn_with_scoped_handle",
            SpawnProcessError,
            lambda: self._handle.spawn_with_scoped_handle(runnable),
        )
        return SyncScopedProcessHandle(self, scope)

    # --- state ---------------------------------------------------------------------------------

    def get_process_info(self, process_id: ProcessId | str) -> ProcessInfo:
        """A snapshot: pid, whether it runs, its exit status once it ended.

        >>> pm.get_process_info(pid).is_running
        True
        """
        return self._call(
            "get_process_info",
            GetProcessInfoError,
            lambda: self._handle.get_process_info(process_id),
        )

    def wait(self, process_id: ProcessId | str, timeout: float | None = None) -> ExitedProcessInfo:
        """Block until the process exits; return its final info.

        After ``timeout`` seconds raises ``TimeoutError`` and leaves the process running.

        >>> pm.wait(pid, timeout=5).exit_status
        """
        return self._call(
            "wait", GetProcessInfoError, lambda: self._handle.wait(process_id, timeout)
        )

    def list_processes(self) -> list[ProcessId]:
        """The ids of every process the manager knows (running, or exited and not yet killed or
        released)."""
        return self._call("list_processes", GetProcessInfoError, self._handle.list_processes)

    # --- logs ----------------------------------------------------------------------------------

    def get_logs_stdout(
        self, process_id: ProcessId | str, query: LogsQuery = _FETCH_ALL
    ) -> list[str]:
        """Lines of the captured stdout selected by ``query`` (all of them by default).

        See :meth:`ProcessManagerHandle.get_logs_stdout`.

        >>> pm.get_logs_stdout(pid, LogsQuery.tail(10))
        """
        return self._call(
            "get_logs_stdout",
            GetLogsError,
            lambda: self._handle.get_logs_stdout(process_id, query),
        )

    def get_logs_stderr(
        self, process_id: ProcessId | str, query: LogsQuery = _FETCH_ALL
    ) -> list[str]:
        """Lines of the captured stderr; see :meth:`get_logs_stdout`."""
        return self._call(
            "get_logs_stderr",
            GetLogsError,
            lambda: self._handle.get_logs_stderr(process_id, query),
        )

    def follow_logs(
        self, process_id: ProcessId | str, stream: LogStream = "stdout"
    ) -> BlockingIterator[str]:
        """An iterator over the lines of a captured stream so far, then new ones as they come.

        Ends once the process has exited (or was killed) and its last line was delivered; see
        :meth:`ProcessManagerHandle.follow_logs` (its errors are raised by the first
        ``next()``). Leaving it early (``break``, :meth:`BlockingIterator.close`, ``with``)
        releases the follower at once.

        >>> for line in pm.follow_logs(pid, "stderr"):
        ...     print(line)
        """

        async def open_iterator() -> AsyncIterator[str]:
            return self._handle.follow_logs(process_id, stream)

        return _iterate_blocking(self._portal, open_iterator, GetLogsError, "follow_logs()")

    # --- messages ------------------------------------------------------------------------------

    def send_message(self, process_id: ProcessId | str, message: Message | str | bytes) -> None:
        """Write one message to the child's message input; blocks while the pipe is full.

        See :meth:`ProcessManagerHandle.send_message`.
        """
        self._call(
            "send_message",
            WriteMessageError,
            lambda: self._handle.send_message(process_id, message),
        )

    def subscribe_message_stream(
        self,
        process_id: ProcessId | str,
        *,
        lossless: bool = True,
        ignore_lost_messages: bool = False,
    ) -> BlockingIterator[Message]:
        """A new subscriber to the child's message output, as an ordinary iterator.

        The subscription starts at the call. Lossless by default; with ``lossless=False`` a
        subscriber that fell behind gets :class:`LostMessagesError` from ``next()`` and can go
        on calling ``next()``; with ``ignore_lost_messages=True`` losses are skipped silently.
        See
        :meth:`ProcessManagerHandle.subscribe_message_stream`.

        >>> for message in pm.subscribe_message_stream(pid):
        ...     print(message.deserialize(MessageFormat.JSON))
        """

        check_bool(ignore_lost_messages, "ignore_lost_messages", ReadMessageError)

        async def open_iterator() -> AsyncIterator[Message]:
            stream = await self._handle.subscribe_message_stream(process_id, lossless=lossless)
            return stream.ignore_lost_messages() if ignore_lost_messages else stream

        return _iterate_blocking(
            self._portal, open_iterator, ReadMessageError, "subscribe_message_stream()"
        )

    def subscribe_events(
        self, *, replay: bool = False, ignore_lost_messages: bool = False
    ) -> BlockingIterator[ProcessEvent]:
        """Every process's events from the subscription on, as an ordinary iterator.

        See :meth:`ProcessManagerHandle.subscribe_events`.

        >>> for event in pm.subscribe_events():
        ...     print(event.kind.value, event.process_id)
        """
        check_bool(ignore_lost_messages, "ignore_lost_messages", GetProcessInfoError)

        async def open_iterator() -> AsyncIterator[ProcessEvent]:
            stream = await self._handle.subscribe_events(replay=replay)
            return stream.ignore_lost_messages() if ignore_lost_messages else stream

        return _iterate_blocking(
            self._portal, open_iterator, GetProcessInfoError, "subscribe_events()"
        )

    # --- ending --------------------------------------------------------------------------------

    def kill(self, process_id: ProcessId | str) -> None:
        """SIGKILL the process's group (even when the leader already exited), reap it, delete
        its dir, forget its id."""
        self._call("kill", KillProcessError, lambda: self._handle.kill(process_id))

    def release(self, process_id: ProcessId | str) -> None:
        """Forget a process that has exited and delete its dir; see
        :meth:`ProcessManagerHandle.release` (a running one raises :class:`ReleaseProcessError`).

        >>> pm.wait(pid)
        >>> pm.release(pid)
        """
        self._call("release", ReleaseProcessError, lambda: self._handle.release(process_id))

    def terminate(self, process_id: ProcessId | str, grace: float = 5.0) -> ExitedProcessInfo:
        """SIGTERM the process group; SIGKILL it if the child still runs after ``grace`` s.

        Returns the final info; the process stays known until :meth:`release` or :meth:`kill`.
        """
        return self._call(
            "terminate", KillProcessError, lambda: self._handle.terminate(process_id, grace)
        )

    def send_signal(
        self, process_id: ProcessId | str, sig: int | str, *, group: bool = False
    ) -> None:
        """Send ``sig`` to the child, or with ``group=True`` to its whole process group.

        >>> pm.send_signal(pid, signal.SIGHUP)
        """
        self._call(
            "send_signal",
            KillProcessError,
            lambda: self._handle.send_signal(process_id, sig, group=group),
        )

    def abort(self, grace: float = 0.5) -> None:
        """Terminate every process (SIGKILL after ``grace`` s) and stop the manager.

        The background thread keeps running until :meth:`close`; every later call raises an
        error that is a :class:`ManagerAbortedError` (so does a second ``abort()``).
        """
        self._call("abort", ManagerAbortedError, lambda: self._handle.abort(grace))

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

    def __enter__(self) -> SyncProcessManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {state}>"


# --- process handles ------------------------------------------------------------------------------


class SyncProcessHandle:
    """A :class:`SyncProcessManager` bound to one process: the same methods without the id.

    Dropping it does nothing to the process.

    >>> proc = pm.spawn_with_handle(Cmd("sleep", ["60"]))
    >>> proc.terminate(grace=1.0).exit_status
    """

    __slots__ = ("_manager", "id")

    def __init__(self, manager: SyncProcessManager, process_id: ProcessId | str) -> None:
        self._manager = manager
        #: The process this handle is bound to.
        self.id = check_process_id(process_id, GetProcessInfoError)

    @property
    def manager(self) -> SyncProcessManager:
        """The manager."""
        return self._manager

    def get_process_info(self) -> ProcessInfo:
        """See :meth:`SyncProcessManager.get_process_info`."""
        return self._manager.get_process_info(self.id)

    def wait(self, timeout: float | None = None) -> ExitedProcessInfo:
        """See :meth:`SyncProcessManager.wait`."""
        return self._manager.wait(self.id, timeout)

    def kill(self) -> None:
        """See :meth:`SyncProcessManager.kill`."""
        self._manager.kill(self.id)

    def release(self) -> None:
        """See :meth:`SyncProcessManager.release`."""
        self._manager.release(self.id)

    def terminate(self, grace: float = 5.0) -> ExitedProcessInfo:
        """See :meth:`SyncProcessManager.terminate`."""
        return self._manager.terminate(self.id, grace)

    def send_signal(self, sig: int | str, *, group: bool = False) -> None:
        """See :meth:`SyncProcessManager.send_signal`."""
        self._manager.send_signal(self.id, sig, group=group)

    def get_logs_stdout(self, query: LogsQuery = _FETCH_ALL) -> list[str]:
        """See :meth:`SyncProcessManager.get_logs_stdout`."""
        return self._manager.get_logs_stdout(self.id, query)

    def get_logs_stderr(self, query: LogsQuery = _FETCH_ALL) -> list[str]:
        """See :meth:`SyncProcessManager.get_logs_stderr`."""
        return self._manager.get_logs_stderr(self.id, query)

    def send_message(self, message: Message | str | bytes) -> None:
        """See :meth:`SyncProcessManager.send_message`."""
        self._manager.send_message(self.id, message)

    def subscribe_message_stream(
        self, *, lossless: bool = True, ignore_lost_messages: bool = False
    ) -> BlockingIterator[Message]:
        """See :meth:`SyncProcessManager.subscribe_message_stream`."""
        return self._manager.subscribe_message_stream(
            self.id, lossless=lossless, ignore_lost_messages=ignore_lost_messages
        )

    def follow_logs(self, stream: LogStream = "stdout") -> BlockingIterator[str]:
        """See :meth:`SyncProcessManager.follow_logs`."""
        return self._manager.follow_logs(self.id, stream)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id})"


class SyncScopedProcessHandle(SyncProcessHandle):
    """A :class:`SyncProcessHandle` that kills its process when its ``with`` block ends.

    The kill happens on normal exit and on an exception. If the handle is garbage-collected
    while its process runs, a kill request is posted (best effort; never blocks).

    >>> with pm.spawn_with_scoped_handle(Cmd("sleep", ["60"])) as proc:
    ...     ...  # the sleep is killed here
    """

    # The async scoped handle does the work: its __aexit__ kills, its finalizer posts a kill.
    __slots__ = ("_scope",)

    def __init__(self, manager: SyncProcessManager, scope: ScopedProcessHandle) -> None:
        super().__init__(manager, scope.id)
        self._scope = scope

    def __enter__(self) -> SyncScopedProcessHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Already killed, or the manager is closed: the process is gone too.
        with contextlib.suppress(ProcessNotFoundError, ManagerAbortedError):
            self._manager._call(
                "kill",
                KillProcessError,
                lambda: self._scope.__aexit__(exc_type, exc, tb),
            )
