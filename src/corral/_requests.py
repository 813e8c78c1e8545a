"""The protocol between handles and the manager: every request the actor understands.

A handle builds a request, wraps it in an :class:`Envelope` with a future on the caller's own
loop, and posts it to the manager's loop. The actor answers through the envelope, crossing back
with ``call_soon_threadsafe`` when the caller lives on another thread's loop. Each request type
names the error class of its operation, so that shared failures (unknown process, aborted
manager) are raised as instances of both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

from ._arguments import (
    check_bool,
    check_grace,
    check_log_stream,
    check_logs_query,
)
from ._broadcast import ItemStream, MessageStream
from ._errors import (
    AbortError,
    CorralError,
    GetLogsError,
    GetProcessInfoError,
    KillProcessError,
    ManagerAbortedError,
    ReadMessageError,
    ReleaseProcessError,
    SpawnProcessError,
    WriteMessageError,
    bad_argument,
)
from ._logs import LogsQuery
from ._model import Cmd, ExitedProcessInfo, ProcessId, ProcessInfo, Runnable, Script
from ._supervision import ProcessEvent

__all__ = [
    "FETCH_ALL",
    "Abort",
    "Envelope",
    "GetInfo",
    "GetLogPath",
    "GetLogs",
    "Kill",
    "ListProcesses",
    "LogStream",
    "Release",
    "Request",
    "SendMessage",
    "SendSignal",
    "Spawn",
    "Subscribe",
    "SubscribeEvents",
    "Terminate",
    "Wait",
    "operation",
    "running_loop",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: The name of a captured output stream.
LogStream = Literal["stdout", "stderr"]

#: The default log query: every line.
FETCH_ALL = LogsQuery.fetch_all()


class Request(Generic[T]):
    """A request whose reply is a ``T``; ``error`` is the class of its operation's errors."""

    __slots__ = ()
    error: ClassVar[type[CorralError]] = CorralError


@dataclass(frozen=True, slots=True)
class Spawn(Request[ProcessId]):
    """Start a runnable; reply: its id."""

    error = SpawnProcessError
    runnable: Runnable

    def __post_init__(self) -> None:
        runnable = self.runnable
        # The protocol check walks the protocol's members: try the two usual classes first.
        if not isinstance(runnable, Cmd | Script) and not isinstance(runnable, Runnable):
            raise bad_argument(
                SpawnProcessError,
                TypeError,
                f"cannot spawn {runnable!r}: not a Runnable (Cmd, Script, or an object with "
                f"bootstrap_cmd and clean_after_fail)",
            )


@dataclass(frozen=True, slots=True)
class GetInfo(Request[ProcessInfo]):
    """Reply: a snapshot of the process."""

    error = GetProcessInfoError
    process_id: ProcessId


@dataclass(frozen=True, slots=True)
class Wait(Request[ExitedProcessInfo]):
    """Reply, once the process has exited: its final info."""

    error = GetProcessInfoError
    process_id: ProcessId


@dataclass(frozen=True, slots=True)
class Kill(Request[None]):
    """SIGKILL the process group, reap, release everything, forget the id."""

    error = KillProcessError
    process_id: ProcessId


@dataclass(frozen=True, slots=True)
class Release(Request[None]):
    """Forget an exited process and delete its dir (a running one is an error)."""

    error = ReleaseProcessError
    process_id: ProcessId


@dataclass(frozen=True, slots=True)
class GetLogs(Request[list[str]]):
    """Reply: the lines of a captured stream that the query selects."""

    error = GetLogsError
    process_id: ProcessId
    stream: LogStream
    query: LogsQuery

    def __post_init__(self) -> None:
        check_log_stream(self.stream, GetLogsError)
        check_logs_query(self.query, GetLogsError)


@dataclass(frozen=True, slots=True)
class GetLogPath(Request[Path]):
    """Reply: the file a captured stream is written to (for following it)."""

    error = GetLogsError
    process_id: ProcessId
    stream: LogStream

    def __post_init__(self) -> None:
        check_log_stream(self.stream, GetLogsError)


@dataclass(frozen=True, slots=True)
class SendMessage(Request[None]):
    """Write one encoded message (a line) to the child's message input; reply once written."""

    error = WriteMessageError
    process_id: ProcessId
    data: bytes


@dataclass(frozen=True, slots=True)
class Subscribe(Request[MessageStream]):
    """Reply: a new subscriber to the child's message output."""

    error = ReadMessageError
    process_id: ProcessId
    lossless: bool = True

    def __post_init__(self) -> None:
        check_bool(self.lossless, "lossless", ReadMessageError)


@dataclass(frozen=True, slots=True)
class SubscribeEvents(Request[ItemStream[ProcessEvent]]):
    """Reply: a new subscriber to every process's events."""

    error = GetProcessInfoError
    #: Also the events still buffered from before the subscription (up to the capacity).
    replay: bool = False

    def __post_init__(self) -> None:
        check_bool(self.replay, "replay", GetProcessInfoError)


@dataclass(frozen=True, slots=True)
class ListProcesses(Request[list[ProcessId]]):
    """Reply: the ids of every known process, running or exited."""

    error = GetProcessInfoError


@dataclass(frozen=True, slots=True)
class Terminate(Request[ExitedProcessInfo]):
    """SIGTERM the group, SIGKILL it after ``grace`` s; reply: the final info."""

    error = KillProcessError
    process_id: ProcessId
    grace: float = 5.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "grace", check_grace(self.grace, KillProcessError))


@dataclass(frozen=True, slots=True)
class SendSignal(Request[None]):
    """Send a signal to the child, or to its whole process group."""

    error = KillProcessError
    process_id: ProcessId
    signal: int
    group: bool = False

    def __post_init__(self) -> None:
        check_bool(self.group, "group", KillProcessError)


@dataclass(frozen=True, slots=True)
class Abort(Request[None]):
    """Terminate every process (SIGKILL after ``grace`` s) and stop the manager."""

    error = AbortError
    grace: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "grace", check_grace(self.grace, ManagerAbortedError))


def operation(request: type[Request[Any]]) -> Callable[[F], F]:
    """Mark a method of :class:`~corral.ProcessManagerHandle` as the definition of the operation
    that posts ``request``: ``scripts/gen_facades.py`` writes its per-process and blocking
    twins from it, raising ``request.error`` once the manager is gone."""

    def mark(method: F) -> F:
        method.__corral_request__ = request  # type: ignore[attr-defined]
        return method

    return mark


#: The running loop of this thread, or None (where ``asyncio.get_running_loop()`` would raise):
#: asyncio's own C function, without a Python frame and a caught exception around it (every
#: message sent asks for it).
running_loop: Callable[[], asyncio.AbstractEventLoop | None] = asyncio._get_running_loop


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class Envelope(Generic[T]):
    """A request in transit, with where its reply goes (``reply`` is None: nobody waits).

    ``orphan``, if given, is called with a result that reached nobody: the caller was cancelled
    after the request was handled, or its loop is closed. A spawn uses it to kill the process
    whose id nobody will ever know.
    """

    __slots__ = ("local", "loop", "orphan", "reply", "request")

    def __init__(
        self,
        request: Request[T],
        reply: asyncio.Future[T] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        orphan: Callable[[T], None] | None = None,
    ) -> None:
        self.request = request
        self.reply = reply
        self.loop = loop
        self.orphan = orphan
        #: Posted on the manager's own loop: the reply, sent from there too, is set directly.
        self.local = False

    @property
    def abandoned(self) -> bool:
        """Whether the caller stopped waiting (cancelled) or never waited."""
        return self.reply is None or self.reply.cancelled()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the caller's loop) if the caller stops waiting for the reply."""
        reply, loop = self.reply, self.loop
        if reply is None or loop is None:
            return

        def done(future: asyncio.Future[T]) -> None:
            if future.cancelled():
                callback()

        if self._on_caller_loop():
            reply.add_done_callback(done)
        else:
            with contextlib.suppress(RuntimeError):  # the caller's loop is closed
                loop.call_soon_threadsafe(reply.add_done_callback, done)

    def _on_caller_loop(self) -> bool:
        # A local envelope's caller is on the manager's loop, where replies are sent from.
        return self.local or running_loop() is self.loop

    def resolve(self, value: T) -> None:
        """Send the reply."""
        if not self._deliver(self._set_result, value) and self.orphan is not None:
            self.orphan(value)

    def fail(self, exc: BaseException) -> None:
        """Send an error as the reply."""
        self._deliver(_set_exception, exc)

    def _set_result(self, reply: asyncio.Future[T], value: T) -> None:
        if not reply.done():
            reply.set_result(value)
        elif reply.cancelled() and self.orphan is not None:
            self.orphan(value)

    def _deliver(self, setter: Any, value: object) -> bool:
        """Hand ``value`` to ``setter`` on the caller's loop; False if that loop is closed."""
        reply, loop = self.reply, self.loop
        if reply is None or loop is None:
            return True
        if self._on_caller_loop():
            setter(reply, value)
            return True
        try:
            loop.call_soon_threadsafe(setter, reply, value)
        except RuntimeError:  # the caller's loop is closed: nobody waits
            return False
        return True
