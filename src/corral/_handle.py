"""Handles: how callers talk to the manager, only by message passing.

:class:`ProcessManagerHandle` posts requests to the manager's loop and awaits the reply on the
caller's own loop, so it works from any task and from other threads' loops. :class:`ProcessHandle`
binds a handle to one process id; :class:`ScopedProcessHandle` also kills that process when its
``async with`` block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ._arguments import check_bool, check_process_id, check_signal, check_timeout
from ._bound import Bound
from ._broadcast import ItemStream, MessageStream
from ._errors import (
    CorralError,
    GetLogsError,
    ManagerAbortedError,
    ProcessNotFoundError,
    SerdeError,
    WriteMessageError,
    bad_argument,
    manager_aborted,
)
from ._generated import ProcessMethods
from ._logs import LogsQuery, follow_lines
from ._messages import Message, encode_outgoing
from ._model import ExitedProcessInfo, ProcessId, ProcessInfo, Runnable
from ._requests import (
    FETCH_ALL,
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
    operation,
    running_loop,
)
from ._supervision import ProcessEvent

if TYPE_CHECKING:
    pass

__all__ = ["ProcessHandle", "ProcessManagerHandle", "ScopedProcessHandle"]

T = TypeVar("T")


class _Mailbox(Protocol):
    """The manager as a handle sees it: a loop, a way to post to it, what it found at start,
    and the shortcut of a send made on its own loop while nothing is queued."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def working_dir(self) -> Path: ...

    @property
    def stale_process_dirs(self) -> tuple[Path, ...]: ...

    def deliver(self, envelope: Envelope[Any]) -> None: ...

    @property
    def idle(self) -> bool: ...

    def send_now(self, process_id: ProcessId, data: bytes) -> asyncio.Future[None] | None: ...


class ProcessManagerHandle:
    """The way to a :class:`ProcessManager`: cheap to copy, safe to share across tasks and threads.

    Every method posts a request to the manager and awaits its reply; nothing is shared but the
    queue. ``async with handle:`` aborts the manager at the end of the block.

    >>> async def main() -> None:
    ...     async with ProcessManager.spawn() as handle:
    ...         pid = await handle.spawn(Cmd("sleep", ["10"]))
    ...         print((await handle.get_process_info(pid)).is_running)
    ...         await handle.kill(pid)
    >>> asyncio.run(main())
    True
    """

    __slots__ = ("_mailbox",)

    def __init__(self, mailbox: _Mailbox) -> None:
        self._mailbox = mailbox

    @property
    def working_dir(self) -> Path:
        """The dir holding one dir per process."""
        return self._mailbox.working_dir

    @property
    def stale_process_dirs(self) -> tuple[Path, ...]:
        """Process dirs a crashed earlier manager had left in the working dir, found at start.

        Empty unless this manager was the only one using the working dir when it started (with
        another live manager there, their dirs cannot be told apart from leftovers).
        """
        return self._mailbox.stale_process_dirs

    def clone(self) -> ProcessManagerHandle:
        """Another handle to the same manager (sharing the object works just as well)."""
        return ProcessManagerHandle(self._mailbox)

    __copy__ = clone

    async def _call(self, request: Request[T], orphan: Callable[[T], None] | None = None) -> T:
        caller = asyncio.get_running_loop()
        reply: asyncio.Future[T] = caller.create_future()
        envelope = Envelope(request, reply, caller, orphan)
        self._post(envelope)
        try:
            return await reply
        except asyncio.CancelledError:
            # Cancelled after the reply came but before this task resumed: it reaches nobody.
            answered = reply.done() and not reply.cancelled() and reply.exception() is None
            if orphan is not None and answered:
                orphan(reply.result())
            raise

    def _post(self, envelope: Envelope[Any]) -> None:
        mailbox = self._mailbox
        caller = envelope.loop  # the running loop, when a reply is awaited
        if (caller if caller is not None else running_loop()) is mailbox.loop:
            envelope.local = True
            mailbox.deliver(envelope)
            return
        try:
            mailbox.loop.call_soon_threadsafe(mailbox.deliver, envelope)
        except RuntimeError as exc:  # the manager's loop is closed
            raise manager_aborted(
                envelope.request.error, "the process manager's event loop is closed"
            ) from exc

    def _post_nowait(self, request: Request[Any]) -> None:
        """Post a request nobody awaits (from finalizers: never blocks, never raises)."""
        with contextlib.suppress(CorralError):
            self._post(Envelope(request))

    # --- spawning -------------------------------------------------------------------------

    @operation(Spawn)
    async def spawn(self, runnable: Runnable) -> ProcessId:
        """Start a :class:`Cmd`, a :class:`Script` or any :class:`Runnable`; return its id.

        Raises :class:`SpawnProcessError` (with the ``OSError`` as ``__cause__``) for a missing or
        non-executable program, a bad ``current_dir``, an unwritable working dir; nothing is
        left behind then.
        """
        return await self._call(Spawn(runnable), self._kill_orphan)

    def _kill_orphan(self, process_id: ProcessId) -> None:
        """Kill a process spawned for a caller that was cancelled: nobody else knows its id."""
        self._post_nowait(Kill(process_id))

    @operation(Spawn)
    async def spawn_with_handle(self, runnable: Runnable) -> ProcessHandle:
        """Like :meth:`spawn`, returning a :class:`ProcessHandle` bound to the new process."""
        return ProcessHandle(self, await self.spawn(runnable))

    @operation(Spawn)
    async def spawn_with_scoped_handle(self, runnable: Runnable) -> ScopedProcessHandle:
        """Like :meth:`spawn`; the process is killed when the handle's ``async with`` ends.

        >>> async with await handle.spawn_with_scoped_handle(Cmd("sleep", ["60"])) as proc:
        ...     info = await proc.get_process_info()
        """
        return ScopedProcessHandle(self, await self.spawn(runnable))

    # --- state ----------------------------------------------------------------------------

    @operation(GetInfo)
    async def get_process_info(self, process_id: ProcessId | str) -> ProcessInfo:
        """A snapshot: pid, whether it runs, its exit status once it ended."""
        return await self._call(GetInfo(check_process_id(process_id, GetInfo.error)))

    @operation(Wait)
    async def wait(
        self, process_id: ProcessId | str, timeout: float | None = None
    ) -> ExitedProcessInfo:
        """Wait for the process to exit and return its final info (its ``exit_status`` set).

        Driven by the exit event, not by polling. After ``timeout`` seconds (a number >= 0;
        NaN is refused) raises ``TimeoutError`` and leaves the process running.
        """
        request = Wait(check_process_id(process_id, Wait.error))
        seconds = check_timeout(timeout, Wait.error)
        if seconds is None:
            return await self._call(request)
        # asyncio.timeout, not wait_for: the request is posted right now, in this task, so a
        # wait issued before a kill is handled before it.
        async with asyncio.timeout(seconds):
            return await self._call(request)

    # --- logs -----------------------------------------------------------------------------

    @operation(GetLogs)
    async def get_logs_stdout(
        self, process_id: ProcessId | str, query: LogsQuery = FETCH_ALL
    ) -> list[str]:
        """Lines of the captured stdout selected by ``query`` (all of them by default).

        Lines come without their newline; a last line the child has not finished yet is
        returned as it is at that moment; bytes that are not UTF-8 come back as U+FFFD. Logs
        stay readable after the process exited, until it is killed. Raises
        :class:`LoggingNotConfiguredError` (a :class:`GetLogsError`) if stdout is not captured.

        >>> last = await handle.get_logs_stdout(pid, LogsQuery.tail(10))
        """
        return await self._call(
            GetLogs(check_process_id(process_id, GetLogs.error), "stdout", query)
        )

    @operation(GetLogs)
    async def get_logs_stderr(
        self, process_id: ProcessId | str, query: LogsQuery = FETCH_ALL
    ) -> list[str]:
        """Lines of the captured stderr; see :meth:`get_logs_stdout`."""
        return await self._call(
            GetLogs(check_process_id(process_id, GetLogs.error), "stderr", query)
        )

    @operation(GetLogPath)
    def follow_logs(
        self, process_id: ProcessId | str, stream: LogStream = "stdout"
    ) -> AsyncIterator[str]:
        """The lines of a captured stream so far, then new ones as the child writes them.

        Ends once the process has exited (or was killed) and its last line was delivered. A
        line is delivered when its newline is written (or, for the last one, at exit). New
        lines are noticed through inotify on Linux, else by a bounded back-off poll. Raises
        :class:`LoggingNotConfiguredError` if the stream is not captured, and
        :class:`GetLogsError` (with the ``OSError`` as ``__cause__``) if the log file cannot be
        read, e.g. because someone else deleted it.

        >>> opts = CmdOptions.with_logging(LoggingType.STDERR_ONLY)
        >>> warner = await handle.spawn(Cmd("sh", ["-c", "echo one >&2; echo two >&2"], opts))
        >>> async for line in handle.follow_logs(warner, "stderr"):
        ...     print(line)
        one
        two
        """
        # Checked now, not at the first anext() of the generator.
        return self._follow_logs(GetLogPath(check_process_id(process_id, GetLogPath.error), stream))

    async def _follow_logs(self, request: GetLogPath) -> AsyncIterator[str]:
        process_id = request.process_id
        path = await self._call(request)

        async def exited() -> None:
            # Killed or aborted also means the writer is gone.
            with contextlib.suppress(ProcessNotFoundError, ManagerAbortedError):
                await self.wait(process_id)

        follow = follow_lines(path, exited)
        try:
            while True:
                try:
                    line = await anext(follow)
                except StopAsyncIteration:
                    return
                except OSError as exc:  # like a query: a log file gone is a GetLogsError
                    raise GetLogsError(
                        f"cannot read the log of process {process_id} ({path}): {exc}",
                        process_id=process_id,
                    ) from exc
                yield line
        finally:
            await follow.aclose()

    # --- messages -------------------------------------------------------------------------

    @operation(SendMessage)
    async def send_message(
        self, process_id: ProcessId | str, message: Message | str | bytes
    ) -> None:
        """Write one message (one line; ``\\n`` added when missing) to the child's message input.

        Returns once the message is in the pipe: when the child does not read and the pipe is
        full, this waits (backpressure) and only this caller waits. Cancelling it withdraws the
        message unless part of it is already in the pipe (then the rest is written, so the
        child never sees two messages merged). An empty message sends nothing. Raises
        :class:`WriteMessageError`: no message input configured
        (:class:`MessagingNotConfiguredError`), the child exited or closed its input, or the
        message has a newline inside it.

        >>> await handle.send_message(pid, Message.from_serializable({"job": 1}, "json"))
        """
        if type(process_id) is not ProcessId:  # the usual case costs no call
            process_id = check_process_id(process_id, WriteMessageError)
        if type(message) is bytes and message and message.find(b"\n") < 0:
            data = message + b"\n"  # what encode_outgoing gives the usual message, without a call
        else:
            data = _encode_for(process_id, message)
        if not data:
            return
        mailbox = self._mailbox
        if running_loop() is mailbox.loop and mailbox.idle:  # the usual case: no envelope
            written = mailbox.send_now(process_id, data)
            if written is not None:
                await written
            return
        await self._call(SendMessage(process_id, data))

    @operation(Subscribe)
    async def subscribe_message_stream(
        self,
        process_id: ProcessId | str,
        *,
        lossless: bool = True,
        ignore_lost_messages: bool = False,
    ) -> MessageStream:
        """A new subscriber to the child's message output: an async iterator of :class:`Message`.

        The first subscriber also gets what the child wrote before it came (up to
        ``output_buffer_capacity`` messages); later ones start from their subscription. By
        default nothing is lost: when this subscriber is slow the reader waits for it, the pipe
        fills and the child blocks on its writes (one slow subscriber slows the child for
        everyone). With ``lossless=False`` it is a lossy ring instead: a subscriber that falls
        behind by more than the capacity gets :class:`LostMessagesError` with the exact count,
        then goes on, and nobody waits for it. The stream ends when the child has exited (or
        was killed) and everything it wrote was delivered. It may be iterated from any
        thread's event loop. ``ignore_lost_messages=True`` is ``.ignore_lost_messages()`` on
        the stream: losses are skipped silently.

        >>> stream = await handle.subscribe_message_stream(pid)
        >>> await handle.send_message(pid, "ping")  # this child echoes each message back
        >>> async for text in stream.strings():
        ...     print(text)
        ...     break
        ping
        """
        check_bool(ignore_lost_messages, "ignore_lost_messages", Subscribe.error)
        request = Subscribe(check_process_id(process_id, Subscribe.error), lossless)
        stream = await self._call(request)
        return stream.ignore_lost_messages() if ignore_lost_messages else stream

    @operation(SubscribeEvents)
    async def subscribe_events(
        self, *, replay: bool = False, ignore_lost_messages: bool = False
    ) -> ItemStream[ProcessEvent]:
        """Every process's events from the subscription on: spawned, exited, restarting, gave
        up, killed, released.

        An async iterator of :class:`ProcessEvent`, in the order they happened; never an event
        from before the call, unless ``replay=True`` asks for those still buffered too (up to
        1,024). A subscriber that falls more than 1,024 events behind gets
        :class:`LostMessagesError` with the exact count, then goes on
        (``ignore_lost_messages=True``, or ``.ignore_lost_messages()``, skips it); the manager
        never waits for a subscriber. The stream ends when the manager is aborted.

        >>> events = await handle.subscribe_events()
        >>> done = await handle.spawn(Cmd("true"))
        >>> async for event in events:
        ...     print(event.kind.value, event.process_id == done, event.exit_status)
        ...     if event.kind is EventKind.EXITED:
        ...         break
        spawned True None
        exited True exit code 0
        """
        check_bool(ignore_lost_messages, "ignore_lost_messages", SubscribeEvents.error)
        stream = await self._call(SubscribeEvents(replay))
        return stream.ignore_lost_messages() if ignore_lost_messages else stream

    @operation(ListProcesses)
    async def list_processes(self) -> list[ProcessId]:
        """The ids of every process the manager knows (running, or exited and not yet killed or
        released)."""
        return await self._call(ListProcesses())

    # --- ending ---------------------------------------------------------------------------

    @operation(Kill)
    async def kill(self, process_id: ProcessId | str) -> None:
        """SIGKILL the process's group (even when the leader already exited), reap it, delete
        its dir, forget its id."""
        await self._call(Kill(check_process_id(process_id, Kill.error)))

    @operation(Release)
    async def release(self, process_id: ProcessId | str) -> None:
        """Forget a process that has exited and delete its dir (logs included).

        Raises :class:`ReleaseProcessError` if it is still running (wait for it, or kill it).
        ``CmdOptions(auto_release=True)`` releases a process by itself when it exits.

        >>> done = await handle.spawn(Cmd("true"))
        >>> info = await handle.wait(done)
        >>> await handle.release(done)
        """
        await self._call(Release(check_process_id(process_id, Release.error)))

    @operation(Terminate)
    async def terminate(self, process_id: ProcessId | str, grace: float = 5.0) -> ExitedProcessInfo:
        """SIGTERM the process group; SIGKILL it if the child still runs after ``grace`` s.

        Returns the final info; the process stays known (logs, info) until :meth:`release` or
        :meth:`kill`. A group member other than the child that ignores SIGTERM outlives a
        child that exits in time; :meth:`kill` takes the whole group down.
        """
        return await self._call(Terminate(check_process_id(process_id, Terminate.error), grace))

    @operation(SendSignal)
    async def send_signal(
        self, process_id: ProcessId | str, sig: int | str, *, group: bool = False
    ) -> None:
        """Send ``sig`` to the child, or with ``group=True`` to its whole process group.

        ``sig`` is a number, a ``signal.Signals`` or a name (``"SIGHUP"``, ``"HUP"``); 0 sends
        nothing and only checks that the process runs. Raises :class:`KillProcessError` if the
        child has already exited.

        >>> await handle.send_signal(pid, signal.SIGHUP)  # e.g. "reload your config"
        """
        error = SendSignal.error
        request = SendSignal(check_process_id(process_id, error), check_signal(sig, error), group)
        await self._call(request)

    @operation(Abort)
    async def abort(self, grace: float = 0.5) -> None:
        """Terminate every process, all at once, and stop the manager.

        Each child's group gets SIGTERM, then SIGKILL after ``grace`` seconds if the child is
        still alive (``grace=0``: SIGKILL at once). Every later call raises an error that is a
        :class:`ManagerAbortedError`.
        """
        await self._call(Abort(grace))

    async def __aenter__(self) -> ProcessManagerHandle:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with contextlib.suppress(ManagerAbortedError):
            await self.abort()


class ProcessHandle(Bound[ProcessManagerHandle], ProcessMethods):
    """A :class:`ProcessManagerHandle` bound to one process: the same methods without the id.

    Dropping it does nothing to the process.
    """

    __slots__ = ()


class ScopedProcessHandle(ProcessHandle):
    """A :class:`ProcessHandle` that kills its process when the ``async with`` block ends.

    The kill happens on normal exit and on an exception. If the handle is garbage-collected
    while its process runs, a kill request is posted (best effort; never blocks).

    >>> async with await handle.spawn_with_scoped_handle(Cmd("sleep", ["60"])) as proc:
    ...     pass  # the sleep is killed here
    """

    __slots__ = ("_done",)

    def __init__(self, handle: ProcessManagerHandle, process_id: ProcessId | str) -> None:
        super().__init__(handle, process_id)
        self._done = False

    async def __aenter__(self) -> ScopedProcessHandle:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._done = True
        # Already killed, or the manager is gone: the process is gone too.
        with contextlib.suppress(ProcessNotFoundError, ManagerAbortedError):
            await self.kill()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self._done = True
            self._manager._post_nowait(Kill(self.id))


def _encode_for(process_id: ProcessId, message: Message | str | bytes) -> bytes:
    """:func:`encode_outgoing`, its errors as ``send_message`` raises them."""
    try:
        return encode_outgoing(message)
    except SerdeError as exc:
        raise bad_argument(
            WriteMessageError,
            ValueError,
            f"cannot send to process {process_id}: {exc}",
            process_id,
        ) from exc
    except TypeError as exc:
        raise bad_argument(WriteMessageError, TypeError, str(exc)) from None
