"""Every way a corral call can fail, in one tree under :class:`CorralError`::

    CorralError                               .process_id (None when no process is concerned)
    ├── InvalidArgumentError                  an argument refused before anything ran
    │   ├── CmdError (also ValueError)        a command cannot be built
    │   ├── CmdOptionsError (also ValueError) a bad option, or a conflicting pair
    │   ├── <Operation>Error[TypeError]       a call's argument of the wrong type
    │   └── <Operation>Error[ValueError]      a call's argument with a bad value
    ├── SerdeError (also ValueError)          a value cannot be encoded or decoded
    │
    ├── SpawnProcessError                     spawn, spawn_with_handle, spawn_with_scoped_handle
    ├── KillProcessError                      kill, terminate, send_signal
    ├── ReleaseProcessError                   release: the process still runs
    ├── GetProcessInfoError                   get_process_info, wait, list_processes, events
    ├── GetLogsError                          get_logs_stdout, get_logs_stderr, follow_logs
    │   └── LoggingNotConfiguredError         the stream was not captured
    ├── WriteMessageError                     send_message
    ├── ReadMessageError                      subscribe_message_stream
    ├── ReceiveMessageError                   the next item of a message stream
    │   ├── LostMessagesError                 .count: a lossy subscriber fell behind
    │   ├── MessageTooLongError               .size, .limit: a line over max_message_bytes
    │   ├── IncompleteMessageError            .data: a last line cut off by a signal
    │   └── ReceiveDeserializedMessageError   .data: one item of .strings() / .decoded()
    ├── AbortError                            abort
    │
    ├── ProcessNotFoundError                  shared: an unknown, killed or released id
    ├── ManagerAbortedError                   shared: the manager is gone
    └── MessagingNotConfiguredError           shared: no message input / output configured

``<Operation>Error[TypeError]`` stands for the classes such as ``KillProcessError[TypeError]``:
each is under its operation's class too, and is a ``TypeError`` (or ``ValueError``). The same
goes for the shared cases, raised as ``KillProcessError[ProcessNotFoundError]`` and so on.

There are four groups:

* errors in what the caller built (:class:`CmdError`, :class:`CmdOptionsError`,
  :class:`SerdeError`), raised at construction, before anything runs;
* one class per operation (:class:`SpawnProcessError`, :class:`KillProcessError`, ...,
  :class:`AbortError`): catch it to handle anything that operation can raise;
* shared cases (:class:`ProcessNotFoundError`, :class:`ManagerAbortedError`,
  :class:`MessagingNotConfiguredError`): the exception actually raised is an instance of both the
  shared class and the operation's class, so both styles work::

      try:
          await handle.kill(process_id)
      except ProcessNotFoundError:   # or: except KillProcessError:
          ...

* refused arguments: a call's argument of the wrong type or with a bad value raises an error
  that is the operation's class, :class:`InvalidArgumentError`, and ``TypeError`` or
  ``ValueError`` (``KillProcessError[ValueError]``), before anything is sent to the manager.

Every error pickles with its class, its message and its attributes, the combined classes
included: it can be sent to another process or thread and caught there by either class.
"""

from __future__ import annotations

import copyreg
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from ._model import ProcessId

__all__ = [
    "AbortError",
    "CmdError",
    "CmdOptionsError",
    "CorralError",
    "GetLogsError",
    "GetProcessInfoError",
    "IncompleteMessageError",
    "InvalidArgumentError",
    "KillProcessError",
    "LoggingNotConfiguredError",
    "LostMessagesError",
    "ManagerAbortedError",
    "MessageTooLongError",
    "MessagingNotConfiguredError",
    "ProcessNotFoundError",
    "ReadMessageError",
    "ReceiveDeserializedMessageError",
    "ReceiveMessageError",
    "ReleaseProcessError",
    "SerdeError",
    "SpawnProcessError",
    "WriteMessageError",
]


class CorralError(Exception):
    """Base of every exception corral raises; ``process_id`` names the process when there is one."""

    process_id: ProcessId | None

    def __init__(self, message: str, *, process_id: ProcessId | None = None) -> None:
        super().__init__(message)
        self.process_id = process_id

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its args and attributes, without calling __init__ again (whose
        # parameters are not the message): the same class, message, process_id, count, data...
        return (_rebuild, (type(self), self.args), self.__dict__ or None)


def _rebuild(cls: type[CorralError], args: tuple[Any, ...]) -> CorralError:
    """An unpickled error: an instance of ``cls`` with ``args``; pickle then restores its
    attributes."""
    error = cls.__new__(cls)
    error.args = args
    return error


# --- refused arguments ------------------------------------------------------------------------


class InvalidArgumentError(CorralError):
    """An argument was refused before anything ran: a wrong type or a bad value.

    Raised as a ``TypeError`` or ``ValueError`` too: a call's refused argument as its
    operation's class as well (``KillProcessError[ValueError]``), a command or an option as
    :class:`CmdError` or :class:`CmdOptionsError`.
    """


# --- errors in what the caller built --------------------------------------------------------


class CmdError(InvalidArgumentError, ValueError):
    """A command cannot be built: an empty or unparsable command line, an empty program name."""


class CmdOptionsError(InvalidArgumentError, ValueError):
    """``CmdOptions`` (or a restart policy) got a bad value, or a conflicting pair of options."""


class SerdeError(CorralError, ValueError):
    """A value could not be encoded to, or decoded from, a message format; the text says why."""


# --- one class per operation ------------------------------------------------------------------


class SpawnProcessError(CorralError):
    """Spawning failed: missing program, not executable, bad ``current_dir``, unwritable dir, ...

    The underlying ``OSError`` (when there is one) is the ``__cause__``. Nothing is left behind.
    """


class KillProcessError(CorralError):
    """``kill``, ``terminate`` or ``send_signal`` failed (a signal to an exited child, ...)."""


class ReleaseProcessError(CorralError):
    """``release`` failed: the process is still running (wait for it, or kill it), or unknown."""


class GetProcessInfoError(CorralError):
    """``get_process_info``, ``wait``, ``list_processes`` or ``subscribe_events`` failed."""


class GetLogsError(CorralError):
    """Reading a process's logs failed (stream not captured, log file gone, ...)."""


class WriteMessageError(CorralError):
    """``send_message`` failed: no message input configured, the child closed its input, ..."""


class ReadMessageError(CorralError):
    """``subscribe_message_stream`` failed: no message output configured, unknown process, ..."""


class ReceiveMessageError(CorralError):
    """Reading the next item from a message stream failed; the stream goes on after it."""


class AbortError(CorralError):
    """``abort`` failed: a bad ``grace``, or the manager was aborted already.

    A second ``abort`` raises an error that is also a :class:`ManagerAbortedError`; a bad
    ``grace`` one that is an :class:`InvalidArgumentError`, and the manager runs on.
    """


def _from(process_id: ProcessId | None) -> str:
    return f" from process {process_id}" if process_id is not None else ""


class LostMessagesError(ReceiveMessageError):
    """A lossy subscriber fell behind by more than the buffer; ``count`` messages were dropped.

    The stream goes on with the oldest message still buffered.
    """

    count: int

    def __init__(self, count: int, *, process_id: ProcessId | None = None) -> None:
        super().__init__(
            f"subscriber lagged behind and lost {count} message(s){_from(process_id)}",
            process_id=process_id,
        )
        self.count = count


class MessageTooLongError(ReceiveMessageError):
    """A line of the child's output was longer than ``max_message_bytes``, and was skipped.

    ``size`` is its length in bytes (without the newline), counted as it was skipped, never
    held whole; ``limit`` is the process's ``max_message_bytes``. The stream goes on with the
    next message.
    """

    size: int
    limit: int

    def __init__(self, size: int, limit: int, *, process_id: ProcessId | None = None) -> None:
        super().__init__(
            f"a message of {size} bytes{_from(process_id)} is longer than "
            f"max_message_bytes={limit}: skipped",
            process_id=process_id,
        )
        self.size = size
        self.limit = limit


class IncompleteMessageError(ReceiveMessageError):
    """The child was killed by a signal in the middle of a line, which is not a message.

    ``data`` holds the bytes of that last, unterminated line; the stream goes on (to its end, or
    to the next run's messages after a restart). A child that exits normally has its last line
    delivered as a message even without a newline.
    """

    data: bytes

    def __init__(self, data: bytes, *, process_id: ProcessId | None = None) -> None:
        super().__init__(
            f"the last line{_from(process_id)} was cut off ({len(data)} bytes, no newline): "
            f"the process was killed while writing it",
            process_id=process_id,
        )
        self.data = data


class ReceiveDeserializedMessageError(ReceiveMessageError):
    """One item of a ``.strings()`` or ``.decoded()`` stream could not be converted.

    ``data`` holds the raw bytes of the message; the stream goes on with the next one.
    """

    data: bytes

    def __init__(
        self, message: str, data: bytes = b"", *, process_id: ProcessId | None = None
    ) -> None:
        super().__init__(message, process_id=process_id)
        self.data = data


# --- shared cases, raised combined with the operation's class --------------------------------


class ProcessNotFoundError(CorralError):
    """No process with this id: it was never spawned here, or it was killed or released."""

    def __init__(self, process_id: ProcessId) -> None:
        super().__init__(
            f"process {process_id} not found (never spawned by this manager, or already killed "
            f"or released)",
            process_id=process_id,
        )


class ManagerAbortedError(CorralError):
    """The manager was aborted (or its event loop is gone); no call can succeed any more."""

    def __init__(self, message: str = "the process manager was aborted") -> None:
        super().__init__(message)


class MessagingNotConfiguredError(CorralError):
    """The process was spawned without the message input or output this call needs."""

    def __init__(self, process_id: ProcessId, direction: str) -> None:
        super().__init__(
            f"process {process_id} has no message {direction} configured: spawn it with "
            f"CmdOptions(message_{direction}=MessagingType.STANDARD_IO or NAMED_PIPE)",
            process_id=process_id,
        )


class LoggingNotConfiguredError(GetLogsError):
    """The requested stream was not captured: the process's ``logging_type`` does not include it."""

    def __init__(self, process_id: ProcessId, stream: str) -> None:
        super().__init__(
            f"process {process_id} does not capture {stream}: spawn it with "
            f"CmdOptions(logging_type=LoggingType.{stream.upper()}_ONLY, STDOUT_AND_STDERR or "
            f"STDOUT_AND_STDERR_MERGED)",
            process_id=process_id,
        )


# --- combined classes ---------------------------------------------------------------------------

_E = TypeVar("_E", bound=CorralError)


class _CombinedErrorType(type):
    """The metaclass of the combined classes, so that they pickle as the pair they combine."""


_COMBINED: dict[tuple[type[CorralError], type[Exception]], Any] = {}
_PAIRS: dict[type, tuple[type[CorralError], type[Exception]]] = {}


def _combined(operation: type[CorralError], shared: type[Exception]) -> Any:
    """The class that is both ``operation`` and ``shared`` (made once, then reused).

    ``shared`` is a shared case (:class:`ProcessNotFoundError`, ...) or, for a refused argument,
    ``TypeError`` or ``ValueError``: then the class is an :class:`InvalidArgumentError` too.
    """
    if issubclass(operation, shared):
        return operation
    cls = _COMBINED.get((operation, shared))
    if cls is None:
        name = f"{operation.__name__}[{shared.__name__}]"
        doc: str | None
        if shared is TypeError or shared is ValueError:
            bases: tuple[type, ...] = (operation, InvalidArgumentError, shared)
            what = "a wrong type" if shared is TypeError else "a bad value"
            doc = f"A refused argument ({what}) of a call whose errors are {operation.__name__}."
        else:
            bases = (operation, shared)
            doc = shared.__doc__
        namespace = {"__module__": "corral", "__qualname__": name, "__doc__": doc}
        made = _CombinedErrorType(name, bases, namespace)
        _PAIRS[made] = (operation, shared)
        # Two threads may make the same pair at once: both get the class stored first.
        cls = _COMBINED.setdefault((operation, shared), made)
    return cls


def _pickle_combined(cls: _CombinedErrorType) -> tuple[Any, ...]:
    return (_combined, _PAIRS[cls])


# A class is pickled by its name, which a combined class cannot be found by: by its pair instead.
copyreg.pickle(_CombinedErrorType, _pickle_combined)


def process_not_found(operation: type[_E], process_id: ProcessId) -> _E:
    """An error that is both ``operation`` and :class:`ProcessNotFoundError`."""
    return cast(_E, _combined(operation, ProcessNotFoundError)(process_id))


def manager_aborted(operation: type[_E], message: str | None = None) -> _E:
    """An error that is both ``operation`` and :class:`ManagerAbortedError`."""
    cls = _combined(operation, ManagerAbortedError)
    return cast(_E, cls() if message is None else cls(message))


def bad_argument(
    operation: type[_E],
    kind: type[TypeError | ValueError],
    message: str,
    process_id: ProcessId | None = None,
) -> _E:
    """An error that is ``operation``, :class:`InvalidArgumentError` and ``kind``
    (``TypeError``: a wrong type, ``ValueError``: a bad value), for an argument refused on the
    caller's side.

    A refused argument never says that the manager is gone: given :class:`ManagerAbortedError`
    (or a class under it) as the operation, the error is an :class:`AbortError` instead.
    """
    if issubclass(operation, ManagerAbortedError):
        operation = cast(type[_E], AbortError)
    error = cast(_E, _combined(operation, kind)(message))
    error.process_id = process_id
    return error


def messaging_not_configured(operation: type[_E], process_id: ProcessId, direction: str) -> _E:
    """An error that is both ``operation`` and :class:`MessagingNotConfiguredError`."""
    return cast(_E, _combined(operation, MessagingNotConfiguredError)(process_id, direction))
