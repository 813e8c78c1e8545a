"""The per-process and blocking facades of every operation, generated from
:class:`~corral.ProcessManagerHandle` by ``scripts/gen_facades.py``: do not edit by hand.

Change an operation in ``_handle.py``, then run ``python scripts/gen_facades.py``; the tests fail
while this file is stale.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ._broadcast import ItemStream, MessageStream
from ._errors import (
    AbortError,
    CorralError,
    GetLogsError,
    GetProcessInfoError,
    KillProcessError,
    ReadMessageError,
    ReleaseProcessError,
    SpawnProcessError,
    WriteMessageError,
)
from ._logs import LogsQuery
from ._messages import Message
from ._model import ExitedProcessInfo, ProcessId, ProcessInfo, Runnable
from ._requests import FETCH_ALL, LogStream
from ._supervision import ProcessEvent

if TYPE_CHECKING:
    from ._handle import ProcessHandle, ProcessManagerHandle, ScopedProcessHandle
    from ._sync import (
        BlockingItemStream,
        BlockingIterator,
        BlockingMessageStream,
        SyncProcessHandle,
        SyncProcessManager,
        SyncScopedProcessHandle,
    )

T = TypeVar("T")
R = TypeVar("R")
It = TypeVar("It")

__all__ = ["ProcessMethods", "SyncManagerMethods", "SyncProcessMethods"]


class ProcessMethods:
    """The methods of :class:`ProcessHandle`: each operation of a
    :class:`ProcessManagerHandle` that takes a process id, bound to ``self.id``.
    """

    __slots__ = ()

    if TYPE_CHECKING:
        _manager: ProcessManagerHandle
        id: ProcessId

    async def get_process_info(self) -> ProcessInfo:
        """A snapshot: pid, whether it runs, its exit status once it ended.

        See :meth:`ProcessManagerHandle.get_process_info`.
        """
        return await self._manager.get_process_info(self.id)

    async def wait(self, timeout: float | None = None) -> ExitedProcessInfo:
        """Wait for the process to exit and return its final info (its ``exit_status`` set).

        See :meth:`ProcessManagerHandle.wait`.
        """
        return await self._manager.wait(self.id, timeout)

    async def get_logs_stdout(self, query: LogsQuery = FETCH_ALL) -> list[str]:
        """Lines of the captured stdout selected by ``query`` (all of them by default).

        See :meth:`ProcessManagerHandle.get_logs_stdout`.
        """
        return await self._manager.get_logs_stdout(self.id, query)

    async def get_logs_stderr(self, query: LogsQuery = FETCH_ALL) -> list[str]:
        """Lines of the captured stderr; see :meth:`get_logs_stdout`."""
        return await self._manager.get_logs_stderr(self.id, query)

    def follow_logs(self, stream: LogStream = "stdout") -> AsyncIterator[str]:
        """The lines of a captured stream so far, then new ones as the child writes them.

        See :meth:`ProcessManagerHandle.follow_logs`.
        """
        return self._manager.follow_logs(self.id, stream)

    async def send_message(self, message: Message | str | bytes) -> None:
        """Write one message (one line; ``\\n`` added when missing) to the child's message input.

        See :meth:`ProcessManagerHandle.send_message`.
        """
        return await self._manager.send_message(self.id, message)

    async def subscribe_message_stream(
        self, *, lossless: bool = True, ignore_lost_messages: bool = False
    ) -> MessageStream:
        """A new subscriber to the child's message output: an async iterator of :class:`Message`.

        See :meth:`ProcessManagerHandle.subscribe_message_stream`.
        """
        return await self._manager.subscribe_message_stream(
            self.id, lossless=lossless, ignore_lost_messages=ignore_lost_messages
        )

    async def kill(self) -> None:
        """SIGKILL the process's group (even when the leader already exited), reap it, delete
        its dir, forget its id.

        See :meth:`ProcessManagerHandle.kill`.
        """
        return await self._manager.kill(self.id)

    async def release(self) -> None:
        """Forget a process that has exited and delete its dir (logs included).

        See :meth:`ProcessManagerHandle.release`.
        """
        return await self._manager.release(self.id)

    async def terminate(self, grace: float = 5.0) -> ExitedProcessInfo:
        """SIGTERM the process group; SIGKILL it if the child still runs after ``grace`` s.

        See :meth:`ProcessManagerHandle.terminate`.
        """
        return await self._manager.terminate(self.id, grace)

    async def send_signal(self, sig: int | str, *, group: bool = False) -> None:
        """Send ``sig`` to the child, or with ``group=True`` to its whole process group.

        See :meth:`ProcessManagerHandle.send_signal`.
        """
        return await self._manager.send_signal(self.id, sig, group=group)


class SyncManagerMethods:
    """The methods of :class:`SyncProcessManager`: each operation of a
    :class:`ProcessManagerHandle`, blocking until the manager's loop has run it.
    """

    __slots__ = ()

    if TYPE_CHECKING:
        _handle: ProcessManagerHandle

        def _call(
            self, what: str, error: type[CorralError], make: Callable[[], Coroutine[Any, Any, R]]
        ) -> R: ...
        def _open(
            self, what: str, error: type[CorralError], make: Callable[[], Coroutine[Any, Any, It]]
        ) -> tuple[It, type[CorralError], str]: ...
        def _open_now(
            self, what: str, error: type[CorralError], make: Callable[[], It]
        ) -> tuple[It, type[CorralError], str]: ...
        def _bind(self, handle: ProcessHandle) -> SyncProcessHandle: ...
        def _message_stream(
            self, stream: MessageStream, error: type[CorralError], what: str
        ) -> BlockingMessageStream: ...
        def _item_stream(
            self, stream: ItemStream[T], error: type[CorralError], what: str
        ) -> BlockingItemStream[T]: ...
        def _iterator(
            self, iterator: AsyncIterator[T], error: type[CorralError], what: str
        ) -> BlockingIterator[T]: ...
        def _bind_scoped(self, handle: ScopedProcessHandle) -> SyncScopedProcessHandle: ...

    @property
    def working_dir(self) -> Path:
        """The dir holding one dir per process."""
        return self._handle.working_dir

    @property
    def stale_process_dirs(self) -> tuple[Path, ...]:
        """Process dirs a crashed earlier manager had left in the working dir, found at start.

        Empty unless this manager was the only one using the working dir when it started (with
        another live manager there, their dirs cannot be told apart from leftovers).
        """
        return self._handle.stale_process_dirs

    def spawn(self, runnable: Runnable) -> ProcessId:
        """Start a :class:`Cmd`, a :class:`Script` or any :class:`Runnable`; return its id.

        Raises :class:`SpawnProcessError` (with the ``OSError`` as ``__cause__``) for a missing or
        non-executable program, a bad ``current_dir``, an unwritable working dir; nothing is
        left behind then.
        """
        return self._call("spawn()", SpawnProcessError, lambda: self._handle.spawn(runnable))

    def spawn_with_handle(self, runnable: Runnable) -> SyncProcessHandle:
        """Like :meth:`spawn`, returning a :class:`SyncProcessHandle` bound to the new process."""
        return self._bind(
            self._call(
                "spawn_with_handle()",
                SpawnProcessError,
                lambda: self._handle.spawn_with_handle(runnable),
            )
        )

    def spawn_with_scoped_handle(self, runnable: Runnable) -> SyncScopedProcessHandle:
        """Like :meth:`spawn`; the process is killed when the handle's ``with`` ends.

        >>> with pm.spawn_with_scoped_handle(Cmd("sleep", ["60"])) as proc:
        ...     info = proc.get_process_info()
        """
        return self._bind_scoped(
            self._call(
                "spawn_with_scoped_handle()",
                SpawnProcessError,
                lambda: self._handle.spawn_with_scoped_handle(runnable),
            )
        )

    def get_process_info(self, process_id: ProcessId | str) -> ProcessInfo:
        """A snapshot: pid, whether it runs, its exit status once it ended."""
        return self._call(
            "get_process_info()",
            GetProcessInfoError,
            lambda: self._handle.get_process_info(process_id),
        )

    def wait(self, process_id: ProcessId | str, timeout: float | None = None) -> ExitedProcessInfo:
        """Wait for the process to exit and return its final info (its ``exit_status`` set).

        Driven by the exit event, not by polling. After ``timeout`` seconds (a number >= 0;
        NaN is refused) raises ``TimeoutError`` and leaves the process running.
        """
        return self._call(
            "wait()", GetProcessInfoError, lambda: self._handle.wait(process_id, timeout)
        )

    def get_logs_stdout(
        self, process_id: ProcessId | str, query: LogsQuery = FETCH_ALL
    ) -> list[str]:
        """Lines of the captured stdout selected by ``query`` (all of them by default).

        Lines come without their newline; a last line the child has not finished yet is
        returned as it is at that moment; bytes that are not UTF-8 come back as U+FFFD. Logs
        stay readable after the process exited, until it is killed. Raises
        :class:`LoggingNotConfiguredError` (a :class:`GetLogsError`) if stdout is not captured.

        >>> last = pm.get_logs_stdout(pid, LogsQuery.tail(10))
        """
        return self._call(
            "get_logs_stdout()",
            GetLogsError,
            lambda: self._handle.get_logs_stdout(process_id, query),
        )

    def get_logs_stderr(
        self, process_id: ProcessId | str, query: LogsQuery = FETCH_ALL
    ) -> list[str]:
        """Lines of the captured stderr; see :meth:`get_logs_stdout`."""
        return self._call(
            "get_logs_stderr()",
            GetLogsError,
            lambda: self._handle.get_logs_stderr(process_id, query),
        )

    def follow_logs(
        self, process_id: ProcessId | str, stream: LogStream = "stdout"
    ) -> BlockingIterator[str]:
        """The lines of a captured stream so far, then new ones as the child writes them.

        Ends once the process has exited (or was killed) and its last line was delivered. A
        line is delivered when its newline is written (or, for the last one, at exit). New
        lines are noticed through inotify on Linux, else by a bounded back-off poll. Raises
        :class:`LoggingNotConfiguredError` if the stream is not captured, and
        :class:`GetLogsError` (with the ``OSError`` as ``__cause__``) if the log file cannot be
        read, e.g. because someone else deleted it.

        >>> opts = CmdOptions.with_logging(LoggingType.STDERR_ONLY)
        >>> warner = pm.spawn(Cmd("sh", ["-c", "echo one >&2; echo two >&2"], opts))
        >>> for line in pm.follow_logs(warner, "stderr"):
        ...     print(line)
        one
        two
        """
        return self._iterator(
            *self._open_now(
                "follow_logs()", GetLogsError, lambda: self._handle.follow_logs(process_id, stream)
            )
        )

    def send_message(self, process_id: ProcessId | str, message: Message | str | bytes) -> None:
        """Write one message (one line; ``\\n`` added when missing) to the child's message input.

        Returns once the message is in the pipe: when the child does not read and the pipe is
        full, this waits (backpressure) and only this caller waits. Cancelling it withdraws the
        message unless part of it is already in the pipe (then the rest is written, so the
        child never sees two messages merged). An empty message sends nothing. Raises
        :class:`WriteMessageError`: no message input configured
        (:class:`MessagingNotConfiguredError`), the child exited or closed its input, or the
        message has a newline inside it.

        >>> pm.send_message(pid, Message.from_serializable({"job": 1}, "json"))
        """
        return self._call(
            "send_message()",
            WriteMessageError,
            lambda: self._handle.send_message(process_id, message),
        )

    def subscribe_message_stream(
        self,
        process_id: ProcessId | str,
        *,
        lossless: bool = True,
        ignore_lost_messages: bool = False,
    ) -> BlockingMessageStream:
        """A new subscriber to the child's message output: an iterator of :class:`Message`.

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

        >>> stream = pm.subscribe_message_stream(pid)
        >>> pm.send_message(pid, "ping")  # this child echoes each message back
        >>> for text in stream.strings():
        ...     print(text)
        ...     break
        ping
        """
        return self._message_stream(
            *self._open(
                "subscribe_message_stream()",
                ReadMessageError,
                lambda: self._handle.subscribe_message_stream(
                    process_id, lossless=lossless, ignore_lost_messages=ignore_lost_messages
                ),
            )
        )

    def subscribe_events(
        self, *, replay: bool = False, ignore_lost_messages: bool = False
    ) -> BlockingItemStream[ProcessEvent]:
        """Every process's events from the subscription on: spawned, exited, restarting, gave
        up, killed, released.

        An async iterator of :class:`ProcessEvent`, in the order they happened; never an event
        from before the call, unless ``replay=True`` asks for those still buffered too (up to
        1,024). A subscriber that falls more than 1,024 events behind gets
        :class:`LostMessagesError` with the exact count, then goes on
        (``ignore_lost_messages=True``, or ``.ignore_lost_messages()``, skips it); the manager
        never waits for a subscriber. The stream ends when the manager is aborted.

        >>> events = pm.subscribe_events()
        >>> done = pm.spawn(Cmd("true"))
        >>> for event in events:
        ...     print(event.kind.value, event.process_id == done, event.exit_status)
        ...     if event.kind is EventKind.EXITED:
        ...         break
        spawned True None
        exited True exit code 0
        """
        return self._item_stream(
            *self._open(
                "subscribe_events()",
                GetProcessInfoError,
                lambda: self._handle.subscribe_events(
                    replay=replay, ignore_lost_messages=ignore_lost_messages
                ),
            )
        )

    def list_processes(self) -> list[ProcessId]:
        """The ids of every process the manager knows (running, or exited and not yet killed or
        released).
        """
        return self._call(
            "list_processes()", GetProcessInfoError, lambda: self._handle.list_processes()
        )

    def kill(self, process_id: ProcessId | str) -> None:
        """SIGKILL the process's group (even when the leader already exited), reap it, delete
        its dir, forget its id.
        """
        return self._call("kill()", KillProcessError, lambda: self._handle.kill(process_id))

    def release(self, process_id: ProcessId | str) -> None:
        """Forget a process that has exited and delete its dir (logs included).

        Raises :class:`ReleaseProcessError` if it is still running (wait for it, or kill it).
        ``CmdOptions(auto_release=True)`` releases a process by itself when it exits.

        >>> done = pm.spawn(Cmd("true"))
        >>> info = pm.wait(done)
        >>> pm.release(done)
        """
        return self._call(
            "release()", ReleaseProcessError, lambda: self._handle.release(process_id)
        )

    def terminate(self, process_id: ProcessId | str, grace: float = 5.0) -> ExitedProcessInfo:
        """SIGTERM the process group; SIGKILL it if the child still runs after ``grace`` s.

        Returns the final info; the process stays known (logs, info) until :meth:`release` or
        :meth:`kill`. A group member other than the child that ignores SIGTERM outlives a
        child that exits in time; :meth:`kill` takes the whole group down.
        """
        return self._call(
            "terminate()", KillProcessError, lambda: self._handle.terminate(process_id, grace)
        )

    def send_signal(
        self, process_id: ProcessId | str, sig: int | str, *, group: bool = False
    ) -> None:
        """Send ``sig`` to the child, or with ``group=True`` to its whole process group.

        ``sig`` is a number, a ``signal.Signals`` or a name (``"SIGHUP"``, ``"HUP"``); 0 sends
        nothing and only checks that the process runs. Raises :class:`KillProcessError` if the
        child has already exited.

        >>> pm.send_signal(pid, signal.SIGHUP)  # e.g. "reload your config"
        """
        return self._call(
            "send_signal()",
            KillProcessError,
            lambda: self._handle.send_signal(process_id, sig, group=group),
        )

    def abort(self, grace: float = 0.5) -> None:
        """Terminate every process, all at once, and stop the manager.

        Each child's group gets SIGTERM, then SIGKILL after ``grace`` seconds if the child is
        still alive (``grace=0``: SIGKILL at once). Every later call raises an error that is a
        :class:`ManagerAbortedError`.
        """
        return self._call("abort()", AbortError, lambda: self._handle.abort(grace))


class SyncProcessMethods:
    """The methods of :class:`SyncProcessHandle`: each operation of a
    :class:`SyncProcessManager` that takes a process id, bound to ``self.id``.
    """

    __slots__ = ()

    if TYPE_CHECKING:
        _manager: SyncProcessManager
        id: ProcessId

    def get_process_info(self) -> ProcessInfo:
        """A snapshot: pid, whether it runs, its exit status once it ended.

        See :meth:`SyncProcessManager.get_process_info`.
        """
        return self._manager.get_process_info(self.id)

    def wait(self, timeout: float | None = None) -> ExitedProcessInfo:
        """Wait for the process to exit and return its final info (its ``exit_status`` set).

        See :meth:`SyncProcessManager.wait`.
        """
        return self._manager.wait(self.id, timeout)

    def get_logs_stdout(self, query: LogsQuery = FETCH_ALL) -> list[str]:
        """Lines of the captured stdout selected by ``query`` (all of them by default).

        See :meth:`SyncProcessManager.get_logs_stdout`.
        """
        return self._manager.get_logs_stdout(self.id, query)

    def get_logs_stderr(self, query: LogsQuery = FETCH_ALL) -> list[str]:
        """Lines of the captured stderr; see :meth:`get_logs_stdout`."""
        return self._manager.get_logs_stderr(self.id, query)

    def follow_logs(self, stream: LogStream = "stdout") -> BlockingIterator[str]:
        """The lines of a captured stream so far, then new ones as the child writes them.

        See :meth:`SyncProcessManager.follow_logs`.
        """
        return self._manager.follow_logs(self.id, stream)

    def send_message(self, message: Message | str | bytes) -> None:
        """Write one message (one line; ``\\n`` added when missing) to the child's message input.

        See :meth:`SyncProcessManager.send_message`.
        """
        return self._manager.send_message(self.id, message)

    def subscribe_message_stream(
        self, *, lossless: bool = True, ignore_lost_messages: bool = False
    ) -> BlockingMessageStream:
        """A new subscriber to the child's message output: an iterator of :class:`Message`.

        See :meth:`SyncProcessManager.subscribe_message_stream`.
        """
        return self._manager.subscribe_message_stream(
            self.id, lossless=lossless, ignore_lost_messages=ignore_lost_messages
        )

    def kill(self) -> None:
        """SIGKILL the process's group (even when the leader already exited), reap it, delete
        its dir, forget its id.

        See :meth:`SyncProcessManager.kill`.
        """
        return self._manager.kill(self.id)

    def release(self) -> None:
        """Forget a process that has exited and delete its dir (logs included).

        See :meth:`SyncProcessManager.release`.
        """
        return self._manager.release(self.id)

    def terminate(self, grace: float = 5.0) -> ExitedProcessInfo:
        """SIGTERM the process group; SIGKILL it if the child still runs after ``grace`` s.

        See :meth:`SyncProcessManager.terminate`.
        """
        return self._manager.terminate(self.id, grace)

    def send_signal(self, sig: int | str, *, group: bool = False) -> None:
        """Send ``sig`` to the child, or with ``group=True`` to its whole process group.

        See :meth:`SyncProcessManager.send_signal`.
        """
        return self._manager.send_signal(self.id, sig, group=group)
