"""The actor: one object on one event loop that owns the table of processes.

Every request a handle posts (see :mod:`corral._requests`) is answered by exactly one handler
here, found in one table (:data:`_HANDLERS`, filled by :func:`handles`). The table is touched
only on the actor's loop, so there are no locks. Handlers never block the loop for long: a spawn
is a ``vfork``+``exec`` (paced, one per loop turn), a kill sends a signal and finishes in a
small task once the exit event arrives.

If the loop stops without ``abort()`` (``asyncio.run`` returning, the task cancelled or
collected) or the interpreter exits, the actor still kills and reaps every child and removes
its dirs, synchronously.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import functools
import os
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from ._broadcast import ItemStream, MessageStream
from ._errors import (
    CorralError,
    GetLogsError,
    KillProcessError,
    LoggingNotConfiguredError,
    ReadMessageError,
    ReleaseProcessError,
    SpawnProcessError,
    WriteMessageError,
    manager_aborted,
    messaging_not_configured,
    process_not_found,
)
from ._logs import LogFile
from ._model import ExitedProcessInfo, ProcessId, ProcessInfo
from ._platform import ExitWatcher
from ._process import ManagedProcess
from ._requests import (
    Abort,
    Envelope,
    GetInfo,
    GetLogPath,
    GetLogs,
    Kill,
    ListProcesses,
    LogStream,
    Release,
    Request,
    SendMessage,
    SendSignal,
    Spawn,
    Subscribe,
    SubscribeEvents,
    Terminate,
    Wait,
    running_loop,
)
from ._spawn import ProcessDirs, discard_child, spawn_child, start_child
from ._supervision import EventBroadcast, EventKind, ProcessEvent
from ._workdir import WorkingDir

__all__ = ["Actor", "Pacer", "handles"]

R = TypeVar("R", bound=Request[Any])

#: Events buffered for subscribers to ``subscribe_events()`` (a slower one loses the oldest).
_EVENT_CAPACITY = 1024

#: One handler per request type: ``handler(actor, request, envelope)`` answers through the
#: envelope, at once or from a task it starts.
_HANDLERS: dict[type[Request[Any]], Callable[[Actor, Any, Envelope[Any]], None]] = {}


def handles(
    request_type: type[R],
) -> Callable[
    [Callable[[Actor, R, Envelope[Any]], None]], Callable[[Actor, R, Envelope[Any]], None]
]:
    """Register the decorated method as the handler of ``request_type`` (one per type)."""

    def register(
        handler: Callable[[Actor, R, Envelope[Any]], None],
    ) -> Callable[[Actor, R, Envelope[Any]], None]:
        if request_type in _HANDLERS:
            raise TypeError(f"{request_type.__name__} has a handler already")
        _HANDLERS[request_type] = handler
        return handler

    return register


# Actors not yet shut down. Held strongly so an unreferenced actor's task is not collected while
# it still owns children, and so that interpreter exit can kill them.
_LIVE: set[Actor] = set()


@atexit.register
def _shutdown_all_at_exit() -> None:
    for actor in list(_LIVE):
        actor.shutdown_now()


if hasattr(os, "register_at_fork"):
    # A forked child does not own its parent's children: its exit must not kill them.
    os.register_at_fork(after_in_child=_LIVE.clear)


class Pacer:
    """Spawns at most one child per loop turn, requests and restarts alike, in order.

    A spawn holds the loop until the child execs (a ``vfork``+``exec``), so a burst of them is
    spread over loop turns, with I/O, timers and exits handled in between.
    """

    __slots__ = ("_loop", "_waiting", "busy")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: collections.deque[Callable[[], None]] = collections.deque()
        #: Whether a spawn ran in this loop turn (the next one waits for the next turn).
        self.busy = False

    def claim(self) -> None:
        """A spawn runs in this loop turn."""
        if not self.busy:
            self.busy = True
            self._loop.call_soon(self._next_turn)  # runs next turn, after I/O is polled

    def submit(self, spawn: Callable[[], None]) -> None:
        """Run ``spawn`` now if no spawn ran in this loop turn, else in a later turn."""
        if self.busy or self._waiting:
            self._waiting.append(spawn)
        else:
            self.claim()
            spawn()

    def _next_turn(self) -> None:
        self.busy = False
        if self._waiting:
            self.claim()
            self._waiting.popleft()()

    def clear(self) -> None:
        """Forget the waiting spawns (at shutdown)."""
        self._waiting.clear()


class Actor:
    """The manager's state and its handlers; reached only through a handle's mailbox calls
    (:meth:`deliver`, :attr:`idle`, :meth:`send_now`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, workdir: WorkingDir) -> None:
        self.loop = loop
        self._workdir = workdir
        self.working_dir: Path = workdir.path
        #: Process dirs left by a crashed earlier manager, found at start.
        self.stale_process_dirs: tuple[Path, ...] = workdir.stale
        self._processes: dict[ProcessId, ManagedProcess] = {}
        # Killed processes whose exit is still awaited: out of the table, not yet released.
        self._dying: set[ManagedProcess] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False  # no new requests
        self._released = False  # every child reaped, every resource released
        self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self._exits = ExitWatcher(loop)
        self._events = EventBroadcast(_EVENT_CAPACITY, loop)
        self._pacer = Pacer(loop)
        self._dirs = ProcessDirs(workdir.path, guard=not workdir.owned)
        # Requests waiting behind a spawn that waits for its loop turn (see deliver()).
        self._queue: collections.deque[Envelope[Any]] = collections.deque()
        self._stopped: asyncio.Future[None] = loop.create_future()
        _LIVE.add(self)
        self._task = loop.create_task(self._live(), name=f"corral-manager-{self.working_dir.name}")

    # --- the mailbox ----------------------------------------------------------------------

    def deliver(self, envelope: Envelope[Any]) -> None:
        """Take a request; runs on the actor's loop.

        Requests are handled in the order they arrive, each one at once when nothing waits
        ahead of it: here on the actor's loop, which saves a loop turn per call (most of a
        message round trip's cost). What waits is a spawn that must wait for the next loop
        turn (see :class:`Pacer`), and every request that came after it.
        """
        if not self._closed and (
            self._queue or (self._pacer.busy and type(envelope.request) is Spawn)
        ):
            self._queue.append(envelope)
            if len(self._queue) == 1:
                self._pacer.submit(self._drain)
        else:
            self._dispatch(envelope)  # answers "aborted" once closed

    def _drain(self) -> None:
        """Handle the waiting requests in order; the pacer runs this in a loop turn where a
        spawn may run."""
        queue = self._queue
        while queue:
            spawn = type(queue[0].request) is Spawn
            self._dispatch(queue.popleft())
            if spawn and queue:
                # The spawn held the loop until its child exec'd: let I/O and timers in before
                # what waits behind it.
                self._pacer.submit(self._drain)
                return

    def _dispatch(self, envelope: Envelope[Any]) -> None:
        request = envelope.request
        if self._closed:  # after an abort, or waiting behind one
            envelope.fail(manager_aborted(request.error))
            return
        try:
            handler = _HANDLERS[type(request)]
        except KeyError:
            envelope.fail(TypeError(f"unknown request {request!r}"))
            return
        try:
            handler(self, request, envelope)
        except Exception as exc:  # expected or not, the caller gets it: never a silent drop
            envelope.fail(_as_reply_error(request, exc))

    @property
    def idle(self) -> bool:
        """Whether a request delivered now would be handled at once: nothing waits."""
        return not self._closed and not self._queue

    def send_now(
        self, process_id: ProcessId, data: bytes, envelope: Envelope[None] | None = None
    ) -> asyncio.Future[None] | None:
        """A send from a caller on the actor's loop, handled as :class:`SendMessage` is but
        without an envelope or a reply future (the usual case of a message round trip); with
        ``envelope``, the send's checks and write for :meth:`_on_send`.

        Returns ``None`` once the pipe took the message, else the writer's future for the rest
        (cancelling it withdraws a message not started). Raises the send's error.
        """
        # _get() inlined: one call less per message.
        process = self._processes.get(process_id)
        if process is None:
            raise process_not_found(WriteMessageError, process_id)
        writer = process.writer_for_send()
        if writer is None:
            raise messaging_not_configured(WriteMessageError, process_id, "input")
        if envelope is not None and envelope.abandoned:
            # The caller was cancelled before the message was queued: nothing to write.
            return None
        # The actor never waits for a pipe: the writer queues, the reply follows the write.
        return writer.enqueue(data)

    async def _live(self) -> None:
        try:
            await self._stopped
        finally:
            if not self._released:  # cancelled or collected before abort() finished
                self.shutdown_now()

    # --- helpers --------------------------------------------------------------------------

    def _get(self, process_id: ProcessId, error: type[CorralError]) -> ManagedProcess:
        process = self._processes.get(process_id)
        if process is None:
            raise process_not_found(error, process_id)
        return process

    def _log(self, process_id: ProcessId, stream: LogStream) -> LogFile:
        log = self._get(process_id, GetLogsError).logs.get(stream)
        if log is None:
            raise LoggingNotConfiguredError(process_id, stream)
        return log

    def _start(self, envelope: Envelope[Any] | None, coro: Coroutine[Any, Any, None]) -> None:
        """Finish a request in a task; whatever the task raises is ``envelope``'s reply."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if envelope is None:
                return
            if task.cancelled():
                envelope.fail(manager_aborted(envelope.request.error))
                return
            exc = task.exception()
            if exc is not None:
                envelope.fail(_as_reply_error(envelope.request, exc))

        task.add_done_callback(done)

    async def _reply_when(self, envelope: Envelope[Any], answer: Awaitable[Any]) -> None:
        envelope.resolve(await answer)

    # --- handlers, one per request --------------------------------------------------------

    @handles(SendMessage)
    def _on_send(self, request: SendMessage, envelope: Envelope[None]) -> None:
        written = self.send_now(request.process_id, request.data, envelope)
        if written is None:  # the usual case: the pipe took it all
            envelope.resolve(None)
            return

        def done(future: asyncio.Future[None]) -> None:
            if future.cancelled():
                return  # the caller gave up (and withdrew the message if it was not started)
            exc = future.exception()
            if exc is None:
                envelope.resolve(None)
            else:
                envelope.fail(exc)

        def withdraw() -> None:
            self.loop.call_soon_threadsafe(written.cancel)

        written.add_done_callback(done)
        envelope.on_cancel(withdraw)

    @handles(Spawn)
    def _on_spawn(self, request: Spawn, envelope: Envelope[ProcessId]) -> None:
        if envelope.abandoned:  # the caller was cancelled while the spawn waited its turn
            return
        self._pacer.claim()
        process_id = ProcessId.new()
        try:
            child = spawn_child(
                process_id, request.runnable, self.working_dir, self._devnull, self._dirs
            )
        except SpawnProcessError:
            raise
        except Exception as exc:  # a Runnable that misbehaves in an unexpected way
            raise SpawnProcessError(
                f"cannot spawn process {process_id}: {exc!r}", process_id=process_id
            ) from exc
        respawn = functools.partial(
            start_child, process_id, child.cmd, child.process_dir, self._devnull
        )
        try:
            process = ManagedProcess(
                process_id,
                child,
                self._exits,
                respawn,
                self._pacer.submit,
                self._events.publish,
                guard_dir=not self._workdir.owned,
                remove_dir=self._dirs.remove,
            )
        except BaseException as exc:
            # The child runs, but nothing knows it: it must not outlive this call.
            discard_child(child)
            if not isinstance(exc, Exception):
                raise
            raise SpawnProcessError(
                f"cannot start managing process {process_id} ({child.cmd}): {exc!r}; the child "
                f"was killed",
                process_id=process_id,
            ) from exc
        self._processes[process_id] = process
        if child.cmd.options.auto_release:
            process.when_down(lambda _: self._start(None, self._auto_release(process)))
        if envelope.abandoned:  # the caller was cancelled: nobody will ever know this id
            kill = Kill(process_id)
            self._on_kill(kill, Envelope(kill))
        else:
            envelope.resolve(process_id)

    @handles(GetInfo)
    def _on_get_info(self, request: GetInfo, envelope: Envelope[ProcessInfo]) -> None:
        envelope.resolve(self._get(request.process_id, request.error).info())

    @handles(Wait)
    def _on_wait(self, request: Wait, envelope: Envelope[ExitedProcessInfo]) -> None:
        self._get(request.process_id, request.error).when_down(envelope.resolve)

    @handles(Kill)
    def _on_kill(self, request: Kill, envelope: Envelope[None]) -> None:
        process = self._processes.pop(request.process_id, None)
        if process is None:
            raise process_not_found(request.error, request.process_id)
        process.kill()
        if process.exited.done():  # it had exited already (the usual wait-then-kill): no task
            process.close()
            envelope.resolve(None)
            return
        self._dying.add(process)
        self._start(envelope, self._finish_kill(process, envelope))

    async def _finish_kill(self, process: ManagedProcess, envelope: Envelope[None]) -> None:
        await asyncio.shield(process.exited)
        process.close()
        self._dying.discard(process)
        envelope.resolve(None)

    @handles(Terminate)
    def _on_terminate(self, request: Terminate, envelope: Envelope[ExitedProcessInfo]) -> None:
        process = self._get(request.process_id, request.error)
        self._start(envelope, self._reply_when(envelope, process.terminate(request.grace)))

    @handles(SendSignal)
    def _on_send_signal(self, request: SendSignal, envelope: Envelope[None]) -> None:
        process = self._get(request.process_id, request.error)
        if not process.send_signal(request.signal, request.group):
            raise KillProcessError(
                f"process {request.process_id} has already exited ({process.exit_status}): "
                f"signal {request.signal} not sent",
                process_id=request.process_id,
            )
        envelope.resolve(None)

    @handles(GetLogs)
    def _on_get_logs(self, request: GetLogs, envelope: Envelope[list[str]]) -> None:
        log = self._log(request.process_id, request.stream)
        self._start(envelope, self._query_log(request, log, envelope))

    async def _query_log(
        self, request: GetLogs, log: LogFile, envelope: Envelope[list[str]]
    ) -> None:
        # Reading may take a while on a big log: a worker thread does it, the loop stays free.
        try:
            lines = await asyncio.to_thread(log.query, request.query)
        except OSError as exc:  # other errors are answered by _start
            error = GetLogsError(
                f"cannot read the log of process {request.process_id} ({log.path}): {exc}",
                process_id=request.process_id,
            )
            error.__cause__ = exc
            envelope.fail(error)
        else:
            envelope.resolve(lines)

    @handles(GetLogPath)
    def _on_get_log_path(self, request: GetLogPath, envelope: Envelope[Path]) -> None:
        envelope.resolve(self._log(request.process_id, request.stream).path)

    @handles(Release)
    def _on_release(self, request: Release, envelope: Envelope[None]) -> None:
        process = self._get(request.process_id, request.error)
        if not process.down:
            state = "restarting" if process.info().restart_pending else "running"
            raise ReleaseProcessError(
                f"process {process.id} is still {state}: wait() for it to exit or kill() it "
                f"before releasing it",
                process_id=process.id,
            )
        self._release_one(process)
        envelope.resolve(None)

    async def _auto_release(self, process: ManagedProcess) -> None:
        # Down for good; what the child wrote may still be on its way to lossless
        # subscribers: release once it is all delivered, so that nothing is lost.
        await process.output_drained()
        if self._processes.get(process.id) is process:  # not killed or released meanwhile
            self._release_one(process)

    def _release_one(self, process: ManagedProcess) -> None:
        """Forget a process that is down for good and delete its dir."""
        del self._processes[process.id]
        process.close(EventKind.RELEASED)

    @handles(Subscribe)
    def _on_subscribe(self, request: Subscribe, envelope: Envelope[MessageStream]) -> None:
        broadcast = self._get(request.process_id, request.error).broadcast
        if broadcast is None:
            raise messaging_not_configured(ReadMessageError, request.process_id, "output")
        if envelope.abandoned:  # nobody would get the stream: not a first subscriber
            return
        envelope.resolve(broadcast.subscribe(request.lossless))

    @handles(SubscribeEvents)
    def _on_subscribe_events(
        self, request: SubscribeEvents, envelope: Envelope[ItemStream[ProcessEvent]]
    ) -> None:
        envelope.resolve(self._events.subscribe(request.replay))

    @handles(ListProcesses)
    def _on_list_processes(
        self, request: ListProcesses, envelope: Envelope[list[ProcessId]]
    ) -> None:
        envelope.resolve(list(self._processes))

    @handles(Abort)
    def _on_abort(self, request: Abort, envelope: Envelope[None]) -> None:
        self._closed = True  # every request from now on is answered as aborted
        self._start(envelope, self._abort(envelope, request.grace))

    async def _abort(self, envelope: Envelope[None], grace: float) -> None:
        processes = [*self._processes.values(), *self._dying]
        self._processes.clear()
        # All at once: aborting N children takes one grace period, not N.
        await asyncio.gather(*(p.terminate(grace) for p in processes))
        tasks = self._tasks - {asyncio.current_task()}
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._release(processes)
        envelope.resolve(None)

    # --- shutdown -------------------------------------------------------------------------

    def shutdown_now(self) -> None:
        """Kill and reap every child, release everything, synchronously (no loop needed)."""
        self._closed = True
        processes = [*self._processes.values(), *self._dying]
        self._processes.clear()
        for process in processes:
            process.kill_and_reap_blocking()
        self._release(processes)

    def _release(self, processes: list[ManagedProcess]) -> None:
        for process in processes:
            process.close()
        self._dying.clear()
        self._exits.close()
        self._events.close()
        self._pacer.clear()
        while self._queue:
            envelope = self._queue.popleft()
            envelope.fail(manager_aborted(envelope.request.error))
        self._dirs.close()
        self._workdir.release()
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1
        self._released = True
        if not self._stopped.done() and running_loop() is self.loop:
            self._stopped.set_result(None)  # the lifetime task ends
        _LIVE.discard(self)


def _as_reply_error(request: Request[Any], exc: BaseException) -> BaseException:
    """What the caller gets for ``exc``, raised while handling ``request``: a corral error as
    it is; anything else (a defect) wrapped in the operation's error class, with ``exc`` as the
    cause, so that ``except <Operation>Error`` still holds."""
    if isinstance(exc, CorralError) or not isinstance(exc, Exception):
        return exc
    error = request.error(f"corral failed while handling {type(request).__name__}: {exc!r}")
    error.process_id = getattr(request, "process_id", None)
    error.__cause__ = exc
    return error
