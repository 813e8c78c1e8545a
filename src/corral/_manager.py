"""The manager: one asyncio task (an actor) that owns the table of processes.

Everything a handle asks arrives as a request in the actor's queue; one handler per request
answers it. The table is touched only by the actor, so there are no locks. Handlers never block
the loop for long: a spawn is a ``vfork``+``exec``, a kill sends a signal and finishes in a small
task once the exit event arrives.

If the loop stops without ``abort()`` (``asyncio.run`` returning, the task cancelled or
collected) or the interpreter exits, the manager still kills and reaps every child and removes
its dirs, synchronously.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import functools
import os
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

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
from ._handle import ProcessManagerHandle
from ._logs import LogFile, LogsQuery
from ._model import ProcessId
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
    SendMessage,
    SendSignal,
    Spawn,
    Subscribe,
    SubscribeEvents,
    Terminate,
    Wait,
)
from ._spawn import discard_child, spawn_child, start_child
from ._supervision import EventBroadcast, EventKind
from ._workdir import WorkingDir

__all__ = ["ProcessManager"]

#: Events buffered for subscribers to ``subscribe_events()`` (a slower one loses the oldest).
_EVENT_CAPACITY = 1024

# Managers not yet shut down. Held strongly so an unreferenced manager's task is not collected
# while it still owns children, and so that interpreter exit can kill them.
_LIVE: set[ProcessManager] = set()


@atexit.register
def _shutdown_all_at_exit() -> None:
    for manager in list(_LIVE):
        manager.shutdown_now()


if hasattr(os, "register_at_fork"):
    # A forked child does not own its parent's children: its exit must not kill them.
    os.register_at_fork(after_in_child=_LIVE.clear)


class ProcessManager:
    """Spawns and manages child processes; reached only through a :class:`ProcessManagerHandle`.

    >>> async def main() -> None:
    ...     async with ProcessManager.spawn() as handle:
    ...         pid = await handle.spawn(Cmd("true"))
    ...         info = await handle.wait(pid)
    ...         assert info.exit_status.success
    >>> asyncio.run(main())
    """

    @classmethod
    def spawn(
        cls, working_dir: str | os.PathLike[str] | None = None, *, remove_stale: bool = False
    ) -> ProcessManagerHandle:
        """Start a manager on the running loop and return its handle.

        ``working_dir`` receives one dir per process; it must exist and be writable (``OSError``
        at once otherwise). With ``None`` the manager makes a private temp dir (0700) and
        removes it on ``abort()``. Process dirs that a crashed earlier manager left in
        ``working_dir`` are reported (``handle.stale_process_dirs`` and a warning on the
        ``corral`` logger) and, with ``remove_stale=True``, removed.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "ProcessManager.spawn() needs a running event loop: call it inside a coroutine "
                "(e.g. `async def main(): handle = ProcessManager.spawn()` run by "
                "asyncio.run(main())), or use SyncProcessManager from code without one"
            ) from None
        if not isinstance(remove_stale, bool):
            raise TypeError(f"remove_stale must be a bool, not {remove_stale!r}")
        if working_dir is None:
            workdir = WorkingDir.create_temp()
        else:
            workdir = WorkingDir.claim(working_dir, remove_stale)
        return ProcessManagerHandle(cls(loop, workdir))

    def __init__(self, loop: asyncio.AbstractEventLoop, workdir: WorkingDir) -> None:
        self.loop = loop
        self._workdir = workdir
        self.working_dir = workdir.path
        #: Process dirs left by a crashed earlier manager, found at start.
        self.stale_process_dirs = workdir.stale
        self._queue: asyncio.Queue[Envelope[Any]] = asyncio.Queue()
        self._processes: dict[ProcessId, ManagedProcess] = {}
        # Killed processes whose exit is still awaited: out of the table, not yet released.
        self._dying: set[ManagedProcess] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False  # no new requests
        self._released = False  # every child reaped, every resource released
        self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self._exits = ExitWatcher(loop)
        self._events = EventBroadcast(_EVENT_CAPACITY, loop)
        self._paced: collections.deque[Callable[[], None]] = collections.deque()
        self._spawned_this_turn = False
        _LIVE.add(self)
        self._task = loop.create_task(self._run(), name=f"corral-manager-{self.working_dir.name}")

    # --- the mailbox ----------------------------------------------------------------------

    def deliver(self, envelope: Envelope[Any]) -> None:
        """Take a request; runs on the manager's loop.

        With nothing queued ahead of it, a request is handled at once, here on the manager's
        loop: same order, same state, one loop turn less per call, which is most of a message
        round trip's cost. Not an abort, which waits; and not a second spawn in one loop turn:
        a spawn holds the loop until the child execs, so the spawns of a burst are queued and
        taken one per turn, with I/O and exits handled in between.
        """
        request = envelope.request
        if self._closed:
            envelope.fail(manager_aborted(request.error))
        elif (
            self._queue.empty()
            and not isinstance(request, Abort)
            and not (self._spawned_this_turn and isinstance(request, Spawn))
        ):
            self._dispatch(envelope)
        else:
            self._queue.put_nowait(envelope)

    @property
    def idle(self) -> bool:
        """Whether a request delivered now would be handled at once: nothing is queued."""
        return not self._closed and self._queue.empty()

    def send_now(self, process_id: ProcessId, data: bytes) -> asyncio.Future[None] | None:
        """A send from a caller on the manager's loop while :attr:`idle`: handled here at once,
        as :meth:`deliver` would, without an envelope or a reply future.

        Returns ``None`` once the pipe took the message, else the writer's future for the rest
        (cancelling it withdraws a message not started). Raises the send's error.
        """
        writer = self._get(process_id, WriteMessageError).writer_for_send()
        if writer is None:
            raise messaging_not_configured(WriteMessageError, process_id, "input")
        return writer.enqueue(data)

    def _dispatch(self, envelope: Envelope[Any]) -> None:
        try:
            self._handle(envelope)
        except Exception as exc:  # expected or not, the caller gets it: never a silent drop
            envelope.fail(_as_reply_error(envelope, exc))

    async def _run(self) -> None:
        try:
            while True:
                envelope = await self._queue.get()
                if isinstance(envelope.request, Abort):
                    await self._abort(envelope, envelope.request.grace)
                    return
                self._dispatch(envelope)
                if isinstance(envelope.request, Spawn) and not self._queue.empty():
                    # A spawn holds the loop until the child execs: let other work (I/O,
                    # timers) in before what is queued behind it (the queue does not suspend
                    # while it has requests).
                    await asyncio.sleep(0)
        finally:
            if not self._released:  # cancelled or collected before abort() finished
                self.shutdown_now()

    def _handle(self, envelope: Envelope[Any]) -> None:
        request = envelope.request
        match request:  # the most frequent request first: cases are tried in order
            case SendMessage(process_id, data):
                self._on_send(envelope, self._get(process_id, request.error), data)
            case Spawn(runnable):
                self._on_spawn(envelope, runnable)
            case GetInfo(process_id):
                envelope.resolve(self._get(process_id, request.error).info())
            case Wait(process_id):
                self._on_wait(envelope, self._get(process_id, request.error))
            case Kill(process_id):
                self._on_kill(envelope, process_id)
            case Terminate(process_id, grace):
                process = self._get(process_id, request.error)
                self._start(envelope, self._reply_when(envelope, process.terminate(grace)))
            case SendSignal(process_id, sig, group):
                process = self._get(process_id, request.error)
                if not process.send_signal(sig, group):
                    raise KillProcessError(
                        f"process {process_id} has already exited ({process.exit_status}): "
                        f"signal {sig} not sent",
                        process_id=process_id,
                    )
                envelope.resolve(None)
            case GetLogs(process_id, stream, query):
                log = self._log(process_id, stream)
                self._start(envelope, self._query_log(envelope, process_id, log, query))
            case GetLogPath(process_id, stream):
                envelope.resolve(self._log(process_id, stream).path)
            case Release(process_id):
                self._on_release(envelope, self._get(process_id, request.error))
            case Subscribe(process_id, lossless):
                broadcast = self._get(process_id, request.error).broadcast
                if broadcast is None:
                    raise messaging_not_configured(ReadMessageError, process_id, "output")
                if envelope.abandoned:  # nobody would get the stream: not a first subscriber
                    return
                envelope.resolve(broadcast.subscribe(lossless))
            case SubscribeEvents(replay):
                envelope.resolve(self._events.subscribe(replay))
            case ListProcesses():
                envelope.resolve(list(self._processes))
            case _:
                raise TypeError(f"unknown request {request!r}")

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

    def _spawn_turn(self) -> None:
        """A spawn runs in this loop turn: the next one waits for the next turn."""
        if not self._spawned_this_turn:
            self._spawned_this_turn = True
            self.loop.call_soon(self._new_spawn_turn)  # runs next turn, after I/O is polled

    def _new_spawn_turn(self) -> None:
        self._spawned_this_turn = False

    def _pace(self, spawn: Callable[[], None]) -> None:
        """Run ``spawn`` soon, at most one per loop turn (restarts come in bursts)."""
        self._paced.append(spawn)
        if len(self._paced) == 1:
            self.loop.call_soon(self._run_paced)

    def _run_paced(self) -> None:
        if self._paced:
            self._paced.popleft()()
        if self._paced:
            self.loop.call_soon(self._run_paced)

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
                envelope.fail(_as_reply_error(envelope, exc))

        task.add_done_callback(done)

    # --- handlers -------------------------------------------------------------------------

    def _on_spawn(self, envelope: Envelope[Any], runnable: Any) -> None:
        self._spawn_turn()
        process_id = ProcessId.new()
        try:
            child = spawn_child(process_id, runnable, self.working_dir, self._devnull)
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
                self._pace,
                self._events.publish,
                guard_dir=not self._workdir.owned,
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
            self._on_kill(Envelope(Kill(process_id)), process_id)
        else:
            envelope.resolve(process_id)

    def _on_send(self, envelope: Envelope[Any], process: ManagedProcess, data: bytes) -> None:
        writer = process.writer_for_send()
        if writer is None:
            raise messaging_not_configured(WriteMessageError, process.id, "input")
        if envelope.abandoned:  # the caller was cancelled before the message was queued
            return
        # The actor never waits for a pipe: the writer queues, the reply follows the write.
        written = writer.enqueue(data)
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

    def _on_wait(self, envelope: Envelope[Any], process: ManagedProcess) -> None:
        process.when_down(envelope.resolve)

    def _on_kill(self, envelope: Envelope[Any], process_id: ProcessId) -> None:
        process = self._processes.pop(process_id, None)
        if process is None:
            raise process_not_found(KillProcessError, process_id)
        process.kill()
        if process.exited.done():  # it had exited already (the usual wait-then-kill): no task
            process.close()
            envelope.resolve(None)
            return
        self._dying.add(process)
        self._start(envelope, self._finish_kill(process, envelope))

    def _on_release(self, envelope: Envelope[Any], process: ManagedProcess) -> None:
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

    async def _query_log(
        self, envelope: Envelope[Any], process_id: ProcessId, log: LogFile, query: LogsQuery
    ) -> None:
        # Reading may take a while on a big log: a worker thread does it, the loop stays free.
        try:
            lines = await asyncio.to_thread(log.query, query)
        except OSError as exc:  # other errors are answered by _start
            error = GetLogsError(
                f"cannot read the log of process {process_id} ({log.path}): {exc}",
                process_id=process_id,
            )
            error.__cause__ = exc
            envelope.fail(error)
        else:
            envelope.resolve(lines)

    async def _reply_when(self, envelope: Envelope[Any], answer: Awaitable[Any]) -> None:
        envelope.resolve(await answer)

    async def _finish_kill(self, process: ManagedProcess, envelope: Envelope[Any]) -> None:
        await asyncio.shield(process.exited)
        process.close()
        self._dying.discard(process)
        envelope.resolve(None)

    async def _abort(self, envelope: Envelope[Any], grace: float) -> None:
        self._closed = True
        processes = [*self._processes.values(), *self._dying]
        self._processes.clear()
        # All at once: aborting N children takes one grace period, not N.
        await asyncio.gather(*(p.terminate(grace) for p in processes))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
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
        while not self._queue.empty():
            envelope = self._queue.get_nowait()
            envelope.fail(manager_aborted(envelope.request.error))
        self._workdir.release()
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1
        self._released = True
        _LIVE.discard(self)


def _as_reply_error(envelope: Envelope[Any], exc: BaseException) -> BaseException:
    """What the caller gets for ``exc``, raised while handling its request: a corral error as
    it is; anything else (a defect) wrapped in the operation's error class, with ``exc`` as the
    cause, so that ``except <Operation>Error`` still holds."""
    if isinstance(exc, CorralError) or not isinstance(exc, Exception):
        return exc
    request = envelope.request
    error = request.error(f"corral failed while handling {type(request).__name__}: {exc!r}")
    error.process_id = getattr(request, "process_id", None)
    error.__cause__ = exc
    return error
