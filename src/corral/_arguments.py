"""The checks every public call makes on its arguments, on the caller's side, before anything is
sent to the manager.

A wrong type raises an error that is ``TypeError``, :class:`~corral.InvalidArgumentError` and the
operation's error class, a bad value one that is ``ValueError``, ``InvalidArgumentError`` and
that class (see :func:`corral._errors.bad_argument`): ``except KillProcessError``, ``except
InvalidArgumentError`` and ``except TypeError`` all catch a bad ``kill`` argument. A call with a
bad argument therefore fails at once, and a request that reaches the actor is one it can answer.
The operation class of :meth:`~corral.ProcessManagerHandle.abort` is :class:`~corral.AbortError`
(a refused argument is never a :class:`~corral.ManagerAbortedError`).
"""

from __future__ import annotations

import math
import signal
import uuid
from typing import Any, Literal

from ._errors import CorralError, bad_argument
from ._logs import LogsQuery
from ._model import ProcessId

__all__ = [
    "check_bool",
    "check_grace",
    "check_log_stream",
    "check_logs_query",
    "check_process_id",
    "check_signal",
    "check_timeout",
]


def _kind(value: object) -> str:
    return type(value).__qualname__


def check_process_id(value: object, error: type[CorralError]) -> ProcessId:
    """``value`` as a :class:`ProcessId`: one already, or its canonical UUID text."""
    if type(value) is ProcessId:  # the usual case first: one type check
        return value
    if isinstance(value, ProcessId):
        return value
    if isinstance(value, str):
        try:
            return ProcessId(value)
        except ValueError as exc:
            raise bad_argument(error, ValueError, str(exc)) from None
    if isinstance(value, int) and not isinstance(value, bool):
        raise bad_argument(
            error,
            TypeError,
            f"expected a ProcessId, got the int {value}: it looks like an OS pid, which corral "
            f"does not take as an id; use the ProcessId that spawn() returned",
        )
    if isinstance(value, uuid.UUID):
        return ProcessId(value)
    raise bad_argument(
        error, TypeError, f"expected a ProcessId or its str, not {_kind(value)} {value!r}"
    )


def _seconds(value: object, name: str, error: type[CorralError]) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_argument(
            error, TypeError, f"{name} must be a number of seconds, not {_kind(value)} {value!r}"
        )
    if math.isnan(value) or value < 0:
        raise bad_argument(error, ValueError, f"{name} must be >= 0 seconds, not {value!r}")
    return float(value)


def check_timeout(value: object, error: type[CorralError]) -> float | None:
    """A timeout in seconds (>= 0, ``inf`` allowed), or None for none."""
    return None if value is None else _seconds(value, "timeout", error)


def check_grace(value: object, error: type[CorralError]) -> float:
    """A grace period in seconds (>= 0; ``inf``: never SIGKILL)."""
    return _seconds(value, "grace", error)


def check_signal(value: object, error: type[CorralError]) -> int:
    """A signal: a number (0 only checks that the process runs), a ``signal.Signals``, or a
    name with or without its ``SIG`` prefix (``"SIGTERM"``, ``"term"``)."""
    if isinstance(value, signal.Signals):
        return value
    if isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        found = getattr(signal.Signals, name, None) if not name.startswith("SIG_") else None
        if found is None:
            raise bad_argument(error, ValueError, f"{value!r} is not a signal name")
        return int(found)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_argument(
            error, TypeError, f"a signal must be an int or a name, not {_kind(value)} {value!r}"
        )
    if value == 0:
        return 0
    try:
        return signal.Signals(value)
    except ValueError:
        raise bad_argument(error, ValueError, f"{value!r} is not a signal number") from None


def check_logs_query(value: object, error: type[CorralError]) -> LogsQuery:
    """A :class:`LogsQuery`."""
    if not isinstance(value, LogsQuery):
        hint = " (e.g. LogsQuery.tail(10))" if isinstance(value, int | str) else ""
        raise bad_argument(
            error, TypeError, f"query must be a LogsQuery{hint}, not {_kind(value)} {value!r}"
        )
    return value


def check_log_stream(value: object, error: type[CorralError]) -> Literal["stdout", "stderr"]:
    """``"stdout"`` or ``"stderr"``."""
    if value == "stdout" and isinstance(value, str):
        return "stdout"
    if value == "stderr" and isinstance(value, str):
        return "stderr"
    kind = ValueError if isinstance(value, str) else TypeError
    raise bad_argument(error, kind, f"stream must be 'stdout' or 'stderr', not {value!r}")


def check_bool(value: Any, name: str, error: type[CorralError]) -> bool:
    """A bool (not merely something truthy: ``lossless="no"`` would mean yes)."""
    if not isinstance(value, bool):
        raise bad_argument(error, TypeError, f"{name} must be a bool, not {_kind(value)} {value!r}")
    return value
