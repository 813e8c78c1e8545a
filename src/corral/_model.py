"""What can be spawned and what is known about it: commands, scripts, options, ids and info."""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import shlex
import signal
import stat
import sys
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeGuard, cast, runtime_checkable

from ._errors import CmdError, CmdOptionsError
from ._platform import HAS_RLIMITS, RLIM_INFINITY, RLIMIT_NAMES, rlimit_number

__all__ = [
    "INPUT_PIPE_ENV_NAME",
    "OUTPUT_PIPE_ENV_NAME",
    "PROCESS_DATA_DIR_ENV_NAME",
    "SCRIPT_FILE_PATH_PLACEHOLDER",
    "Backoff",
    "Cmd",
    "CmdOptions",
    "ExitStatus",
    "ExitedProcessInfo",
    "LoggingType",
    "MessagingType",
    "ProcessId",
    "ProcessInfo",
    "RestartMode",
    "RestartPolicy",
    "Runnable",
    "Script",
    "ScriptRunConfig",
    "ScriptingLanguage",
]

#: Environment variable holding the child's private data directory (always set).
PROCESS_DATA_DIR_ENV_NAME = "PROCESS_DATA_DIR"
#: Environment variable holding the FIFO the child reads messages from (named-pipe input).
INPUT_PIPE_ENV_NAME = "INPUT_PIPE"
#: Environment variable holding the FIFO the child writes messages to (named-pipe output).
OUTPUT_PIPE_ENV_NAME = "OUTPUT_PIPE"
#: Placeholder in :class:`ScriptRunConfig` args, replaced by the script file's path.
SCRIPT_FILE_PATH_PLACEHOLDER = "@FILE_PATH"


#: The class, under a name the ProcessId's ``uuid`` field does not shadow.
_UUID = uuid.UUID

# --- identity and state -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, init=False)
class ProcessId:
    """The id of a spawned process: a random UUID4, hashable, ``str()`` gives the canonical text.

    Made from a ``uuid.UUID`` or from the canonical text of one (any case); other text is a
    ``ValueError``, anything else a ``TypeError``.

    >>> pid = ProcessId.new()
    >>> ProcessId(str(pid)) == pid == ProcessId.parse(str(pid))
    True
    >>> ProcessId("not-a-uuid")
    Traceback (most recent call last):
    ...
    ValueError: 'not-a-uuid' is not a process id: not the canonical text of a UUID
    """

    uuid: uuid.UUID

    def __init__(self, value: _UUID | str) -> None:
        if type(value) is not _UUID:  # the usual case (new()) costs one check
            value = _parse_uuid(value)
        object.__setattr__(self, "uuid", value)

    @classmethod
    def new(cls) -> ProcessId:
        """A fresh random id."""
        return cls(uuid.uuid4())

    @classmethod
    def parse(cls, text: str) -> ProcessId:
        """The id whose canonical text is ``text`` (``ValueError`` if it is not one)."""
        return cls(text)

    def __hash__(self) -> int:
        # The UUID's own hash, without the dataclass's tuple and UUID.__hash__'s frame: the
        # manager looks its process up by id on every message sent (bench/messages.py).
        return hash(self.uuid.int)

    def __str__(self) -> str:
        return str(self.uuid)

    def __repr__(self) -> str:
        return f"ProcessId('{self.uuid}')"


def _parse_uuid(value: object) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise TypeError(
            f"a ProcessId is made from a uuid.UUID or its str, not {type(value).__qualname__}"
        )
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        parsed = None
    # uuid.UUID also takes braces, "urn:uuid:" and no hyphens: an id has one spelling.
    if parsed is None or str(parsed) != value.lower():
        raise ValueError(f"{value!r} is not a process id: not the canonical text of a UUID")
    return parsed


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a process ended: an exit ``code``, or the ``signal`` that killed it.

    >>> ExitStatus.from_returncode(-9)
    ExitStatus(code=None, signal=9, success=False)
    """

    code: int | None
    signal: int | None
    success: bool

    @classmethod
    def from_returncode(cls, returncode: int) -> ExitStatus:
        """Convert a ``subprocess`` return code (negative: killed by that signal)."""
        if returncode < 0:
            return cls(code=None, signal=-returncode, success=False)
        return cls(code=returncode, signal=None, success=returncode == 0)

    def __str__(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        return f"exit code {self.code}"


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A snapshot of a process: its OS ``pid`` (kept after exit), whether it runs, how it ended.

    Under a :class:`RestartPolicy`, ``pid`` and ``exit_status`` are those of the latest run,
    ``restarts`` counts the restarts so far, ``restart_pending`` says a restart is scheduled,
    and ``gave_up_reason`` says why the process stays down after the policy's limit.
    """

    pid: int | None
    exit_status: ExitStatus | None
    is_running: bool
    restarts: int = 0
    restart_pending: bool = False
    gave_up_reason: str | None = None

    # By value across the subclass too: wait()'s result equals get_process_info()'s after it.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProcessInfo):
            return NotImplemented
        return dataclasses.astuple(self) == dataclasses.astuple(other)

    def __hash__(self) -> int:
        return hash(dataclasses.astuple(self))


@dataclass(frozen=True, slots=True, eq=False)
class ExitedProcessInfo(ProcessInfo):
    """The :class:`ProcessInfo` of a process that is down for good, as ``wait()`` and
    ``terminate()`` return it: its ``exit_status`` is never None, so that
    ``info.exit_status.code`` type-checks without a test for None.

    >>> info = ExitedProcessInfo(42, ExitStatus.from_returncode(0), is_running=False)
    >>> info.exit_status.success, isinstance(info, ProcessInfo)
    (True, True)
    """

    exit_status: ExitStatus


# --- options ----------------------------------------------------------------------------------


class MessagingType(enum.Enum):
    """How messages travel between parent and child."""

    #: The child's stdin / stdout.
    STANDARD_IO = "standard_io"
    #: FIFOs in the process dir, named by ``INPUT_PIPE`` / ``OUTPUT_PIPE`` in the child's env.
    NAMED_PIPE = "named_pipe"


class LoggingType(enum.Enum):
    """Which of the child's output streams are captured to log files."""

    STDOUT_ONLY = "stdout_only"
    STDERR_ONLY = "stderr_only"
    #: Two files, one per stream.
    STDOUT_AND_STDERR = "stdout_and_stderr"
    #: One file, both streams in the order the child wrote them.
    STDOUT_AND_STDERR_MERGED = "stdout_and_stderr_merged"

    @property
    def captures_stdout(self) -> bool:
        """Whether the child's stdout goes to a log file."""
        return self is not LoggingType.STDERR_ONLY

    @property
    def captures_stderr(self) -> bool:
        """Whether the child's stderr goes to a log file."""
        return self is not LoggingType.STDOUT_ONLY


def _is_os_text(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a str the OS can take: no NUL, and ``os.fsencode`` can encode it.

    A lone surrogate outside surrogateescape's U+DC80..U+DCFF (which stand for undecodable
    bytes) has no bytes to become: refused here, it would fail the spawn with a
    ``UnicodeEncodeError`` instead.
    """
    if not isinstance(value, str) or "\0" in value:
        return False
    if value.isascii():  # the common case, without an encode
        return True
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        return False
    return True


def _check_env_name(name: object, what: str) -> str:
    if not _is_os_text(name) or not name or "=" in name:
        raise CmdOptionsError(f"{what}: bad environment variable name {name!r}")
    return name


def _validate_current_dir(value: object) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise CmdOptionsError(f"current_dir must be a path or None, not {type(value).__name__}")
    raw = os.fspath(value)
    # Check the text as given: Path("") would silently mean ".", the parent's cwd.
    if not _is_os_text(raw) or not raw:
        raise CmdOptionsError(f"current_dir is not a valid path: {value!r}")
    return Path(raw)


def _validate_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise CmdOptionsError(f"{name} must be a bool, not {value!r}")
    return value


def _validate_envs(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise CmdOptionsError(f"envs must be a mapping of str to str, not {type(value).__name__}")
    envs: dict[str, str] = {}
    for key, val in value.items():
        _check_env_name(key, "envs")
        if not _is_os_text(val):
            raise CmdOptionsError(
                f"envs[{key!r}] must be a str without NUL that os.fsencode can encode, not {val!r}"
            )
        envs[key] = val
    return envs


def _validate_envs_to_remove(value: object) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise CmdOptionsError(f"envs_to_remove must be a list of names, not {value!r}")
    return [_check_env_name(name, "envs_to_remove") for name in value]


def _validate_enum(value: object, enum_type: type[enum.Enum], name: str) -> Any:
    if value is not None and not isinstance(value, enum_type):
        raise CmdOptionsError(f"{name} must be a {enum_type.__name__} or None, not {value!r}")
    return value


#: The largest ``output_buffer_capacity``. The ring of that many slots is allocated when the
#: process starts (8 bytes a slot: 8 MiB here), so a huge value would fail only then, after the
#: child runs; a million messages is far more than any subscriber catches up on.
_MAX_OUTPUT_BUFFER_CAPACITY = 1_048_576


def _validate_capacity(value: object) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 0 < value <= _MAX_OUTPUT_BUFFER_CAPACITY
    ):
        raise CmdOptionsError(
            f"output_buffer_capacity must be an int from 1 to {_MAX_OUTPUT_BUFFER_CAPACITY}, "
            f"not {value!r}"
        )
    return value


def _positive_number(value: object, what: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CmdOptionsError(f"{what} must be a finite number, not {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise CmdOptionsError(f"{what} must be {'>= 0' if allow_zero else '> 0'}, not {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between restarts: ``initial``, multiplied by ``factor`` each time, at most ``cap``.

    >>> Backoff(initial=0.5, factor=2, cap=4).delays(5)
    [0.5, 1.0, 2.0, 4.0, 4.0]
    """

    initial: float = 0.1
    factor: float = 2.0
    cap: float = 30.0

    def __post_init__(self) -> None:
        initial = _positive_number(self.initial, "Backoff initial delay")
        factor = _positive_number(self.factor, "Backoff factor")
        cap = _positive_number(self.cap, "Backoff cap")
        if factor < 1:
            raise CmdOptionsError(f"Backoff factor must be >= 1, not {factor!r}")
        if cap < initial:
            raise CmdOptionsError(f"Backoff cap ({cap}) is below the initial delay ({initial})")
        object.__setattr__(self, "initial", initial)
        object.__setattr__(self, "factor", factor)
        object.__setattr__(self, "cap", cap)

    def delay(self, attempt: int) -> float:
        """The delay before restart number ``attempt`` (0 for the first) of a streak."""
        return min(self.cap, self.initial * self.factor ** min(attempt, 1000))

    def delays(self, count: int) -> list[float]:
        """The first ``count`` delays."""
        return [self.delay(i) for i in range(count)]


class RestartMode(enum.Enum):
    """When a process that ended is started again."""

    NEVER = "never"
    #: After an exit that is not a success (non-zero code, or a signal).
    ON_FAILURE = "on_failure"
    #: After any exit.
    ALWAYS = "always"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Whether and how a process is restarted after it ends by itself.

    At most ``max_restarts`` restarts within ``window`` seconds (like systemd's start limit);
    one more and the process stays down, with the reason in its :class:`ProcessInfo`. Delays
    grow by ``backoff`` with each restart of a streak; a run that lasted ``window`` seconds
    starts the streak over. A restarted process keeps its :class:`ProcessId`, its logs
    (appended) and its message subscriptions. ``kill``, ``terminate`` and ``abort`` never
    restart anything. ``wait`` returns when the process is down for good.

    >>> RestartPolicy.on_failure(max_restarts=3, backoff=Backoff(initial=0.2))
    RestartPolicy(mode=<RestartMode.ON_FAILURE: 'on_failure'>, max_restarts=3, window=60.0, backoff=Backoff(initial=0.2, factor=2.0, cap=30.0))
    """  # noqa: E501

    mode: RestartMode = RestartMode.NEVER
    max_restarts: int = 5
    window: float = 60.0
    backoff: Backoff = field(default_factory=Backoff)

    def __post_init__(self) -> None:
        if not isinstance(self.mode, RestartMode):
            raise CmdOptionsError(f"restart mode must be a RestartMode, not {self.mode!r}")
        if (
            isinstance(self.max_restarts, bool)
            or not isinstance(self.max_restarts, int)
            or self.max_restarts < 0
        ):
            raise CmdOptionsError(f"max_restarts must be an int >= 0, not {self.max_restarts!r}")
        object.__setattr__(self, "window", _positive_number(self.window, "restart window"))
        if not isinstance(self.backoff, Backoff):
            raise CmdOptionsError(f"backoff must be a Backoff, not {self.backoff!r}")

    @classmethod
    def never(cls) -> RestartPolicy:
        """Never restart (the default)."""
        return cls()

    @classmethod
    def on_failure(
        cls, max_restarts: int = 5, backoff: Backoff | None = None, window: float = 60.0
    ) -> RestartPolicy:
        """Restart after a failed run: non-zero exit code or killed by a signal."""
        return cls(RestartMode.ON_FAILURE, max_restarts, window, backoff or Backoff())

    @classmethod
    def always(
        cls, max_restarts: int = 5, backoff: Backoff | None = None, window: float = 60.0
    ) -> RestartPolicy:
        """Restart after every run, successful or not."""
        return cls(RestartMode.ALWAYS, max_restarts, window, backoff or Backoff())

    def wants_restart(self, status: ExitStatus) -> bool:
        """Whether a run that ended with ``status`` calls for a restart (limits aside)."""
        if self.mode is RestartMode.ALWAYS:
            return True
        return self.mode is RestartMode.ON_FAILURE and not status.success


def _validate_policy(value: object) -> RestartPolicy:
    if not isinstance(value, RestartPolicy):
        raise CmdOptionsError(f"restart_policy must be a RestartPolicy, not {value!r}")
    return value


def _rlimit_resource(key: object) -> int:
    if isinstance(key, str):
        name = key.upper()
        name = name if name.startswith("RLIMIT_") else f"RLIMIT_{name}"
        number = rlimit_number(name)
        if number is None:
            raise CmdOptionsError(f"rlimits: unknown resource {key!r}")
        return number
    if isinstance(key, bool) or not isinstance(key, int) or key not in RLIMIT_NAMES:
        raise CmdOptionsError(f"rlimits: unknown resource {key!r}")
    return key


def _rlimit_value(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CmdOptionsError(f"{what} must be an int, not {value!r}")
    if value < 0 and value != RLIM_INFINITY:
        raise CmdOptionsError(f"{what} must be >= 0 or RLIM_INFINITY, not {value!r}")
    return value


def _validate_rlimits(value: object) -> dict[int, tuple[int, int]]:
    if not isinstance(value, Mapping):
        raise CmdOptionsError(f"rlimits must be a mapping, not {type(value).__name__}")
    if value and not HAS_RLIMITS:
        raise CmdOptionsError("rlimits are not supported on this platform")
    limits: dict[int, tuple[int, int]] = {}
    for key, limit in value.items():
        number = _rlimit_resource(key)
        name = RLIMIT_NAMES[number]
        if isinstance(limit, tuple) and len(limit) == 2:
            soft = _rlimit_value(limit[0], f"rlimits[{name}] soft limit")
            hard = _rlimit_value(limit[1], f"rlimits[{name}] hard limit")
        else:
            soft = hard = _rlimit_value(limit, f"rlimits[{name}]")
        if hard != RLIM_INFINITY and (soft == RLIM_INFINITY or soft > hard):
            raise CmdOptionsError(f"rlimits[{name}]: soft limit {soft} above hard limit {hard}")
        limits[number] = (soft, hard)
    return limits


def _validate_umask(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise CmdOptionsError(f"umask must be an int from 0 to 0o777 or None, not {value!r}")
    return value


def _validate_nice(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -20 <= value <= 19:
        raise CmdOptionsError(f"nice must be an int from -20 to 19 or None, not {value!r}")
    return value


def _validate_max_message_bytes(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CmdOptionsError(f"max_message_bytes must be an int > 0 (bytes), not {value!r}")
    return value


_VALIDATORS: dict[str, Any] = {
    "current_dir": _validate_current_dir,
    "clear_envs": lambda v: _validate_bool(v, "clear_envs"),
    "envs": _validate_envs,
    "envs_to_remove": _validate_envs_to_remove,
    "message_input": lambda v: _validate_enum(v, MessagingType, "message_input"),
    "message_output": lambda v: _validate_enum(v, MessagingType, "message_output"),
    "logging_type": lambda v: _validate_enum(v, LoggingType, "logging_type"),
    "output_buffer_capacity": _validate_capacity,
    "max_message_bytes": _validate_max_message_bytes,
    "restart_policy": _validate_policy,
    "rlimits": _validate_rlimits,
    "umask": _validate_umask,
    "nice": _validate_nice,
    "auto_release": lambda v: _validate_bool(v, "auto_release"),
}


@dataclass(kw_only=True, eq=True)
class CmdOptions:
    """How to run a command: working directory, environment, messaging and logging.

    Every field is validated when it is set, at construction and later; a bad value or a
    conflicting combination raises :class:`CmdOptionsError`. Stdout can carry messages or logs,
    not both: message output over standard I/O with a logging type that captures stdout is a
    conflict (named-pipe messaging avoids it).

    >>> opts = CmdOptions(envs={"MODE": "fast"}, logging_type=LoggingType.STDOUT_AND_STDERR)
    >>> opts.output_buffer_capacity = 0
    Traceback (most recent call last):
    ...
    corral.CmdOptionsError: output_buffer_capacity must be an int from 1 to 1048576, not 0
    """

    #: Working directory of the child (``None``: the parent's).
    current_dir: Path | None = None
    #: Start from an empty environment instead of the parent's.
    clear_envs: bool = False
    #: Variables to set in the child's environment.
    envs: dict[str, str] = field(default_factory=dict)
    #: Variables of the parent's environment to leave out.
    envs_to_remove: list[str] = field(default_factory=list)
    #: Where the child reads messages from (``None``: no message input, stdin is /dev/null).
    message_input: MessagingType | None = None
    #: Where the child writes messages to (``None``: no message output).
    message_output: MessagingType | None = None
    #: Which output streams are captured to log files (``None``: none, they go to /dev/null).
    logging_type: LoggingType | None = None
    #: How many output messages are buffered for subscribers: 1 to 1,048,576 (the buffer is
    #: allocated when the process starts, 8 bytes per message slot).
    output_buffer_capacity: int = 16
    #: The longest output message, in bytes without the newline (> 0). A longer line is never
    #: held whole: it is skipped, and its subscribers get MessageTooLongError in its place.
    max_message_bytes: int = 16 * 1024 * 1024
    #: Whether and how the process is restarted after it ends by itself.
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    #: Resource limits set in the child before it runs: ``{resource.RLIMIT_AS: (soft, hard)}``,
    #: a single int for both, names accepted (``"RLIMIT_NOFILE"`` or ``"nofile"``).
    rlimits: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: The child's umask (``None``: inherited).
    umask: int | None = None
    #: The child's niceness, -20 (first) to 19 (last); lowering it needs privileges.
    nice: int | None = None
    #: Forget the process once it is down for good and its output delivered, as
    #: ``release()`` would: its dir and logs go, and its id is unknown from then on.
    auto_release: bool = False

    def __setattr__(self, name: str, value: object) -> None:
        validator = _VALIDATORS.get(name)
        if validator is None:
            raise AttributeError(f"CmdOptions has no option {name!r}")
        old = self.__dict__.get(name, _MISSING)
        object.__setattr__(self, name, validator(value))
        if len(self.__dict__) == len(_VALIDATORS):  # fully built: check the combination
            try:
                self._check_conflicts()
            except CmdOptionsError:
                if old is not _MISSING:
                    object.__setattr__(self, name, old)  # a rejected set changes nothing
                raise

    def _check_conflicts(self) -> None:
        if (
            self.message_output is MessagingType.STANDARD_IO
            and self.logging_type is not None
            and self.logging_type.captures_stdout
        ):
            raise CmdOptionsError(
                f"stdout cannot carry both messages and logs (message_output=STANDARD_IO with "
                f"logging_type={self.logging_type.name}): use MessagingType.NAMED_PIPE for "
                f"messages, or LoggingType.STDERR_ONLY"
            )

    def replace(self, **changes: Any) -> CmdOptions:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def with_standard_io_messaging(cls) -> CmdOptions:
        """Messages in over stdin and out over stdout."""
        return cls(
            message_input=MessagingType.STANDARD_IO, message_output=MessagingType.STANDARD_IO
        )

    @classmethod
    def with_named_pipe_messaging(cls) -> CmdOptions:
        """Messages in and out over FIFOs named by ``INPUT_PIPE`` / ``OUTPUT_PIPE``."""
        return cls(message_input=MessagingType.NAMED_PIPE, message_output=MessagingType.NAMED_PIPE)

    @classmethod
    def with_message_input(cls, messaging_type: MessagingType) -> CmdOptions:
        """Messages in only."""
        return cls(message_input=messaging_type)

    @classmethod
    def with_message_output(cls, messaging_type: MessagingType) -> CmdOptions:
        """Messages out only."""
        return cls(message_output=messaging_type)

    @classmethod
    def with_logging(cls, logging_type: LoggingType) -> CmdOptions:
        """Capture the given streams to log files."""
        return cls(logging_type=logging_type)


_MISSING = object()

# CmdOptions() once, validated: ``Cmd(program)`` copies it (~0.5 µs) instead of running twelve
# validators (~6 µs; python -m timeit -s "from corral import CmdOptions" "CmdOptions()").
# Each copy gets its own dicts and list, since options are mutable.
_DEFAULT_FIELDS = dict(CmdOptions().__dict__)


def _default_options() -> CmdOptions:
    options = object.__new__(CmdOptions)
    options.__dict__.update(_DEFAULT_FIELDS, envs={}, envs_to_remove=[], rlimits={})
    return options


# --- what can be spawned ----------------------------------------------------------------------


@runtime_checkable
class Runnable(Protocol):
    """Anything the manager can spawn: it turns itself into a :class:`Cmd` in a process dir.

    ``bootstrap_cmd`` may write files into ``process_dir`` (a script, a config); if the spawn
    fails afterwards, ``clean_after_fail`` is called once with the same dir.
    """

    def bootstrap_cmd(self, process_dir: Path) -> Cmd:
        """The command to run; may prepare files in ``process_dir``."""
        ...

    def clean_after_fail(self, process_dir: Path) -> None:
        """Undo what ``bootstrap_cmd`` did, after a failed spawn."""
        ...


def _checked_program(cmd: object, owner: str) -> str:
    """The program name or path ``cmd`` as a str the OS can take, or a :class:`CmdError`."""
    if isinstance(cmd, os.PathLike):
        cmd = os.fspath(cmd)
    if not _is_os_text(cmd) or not cmd:
        raise CmdError(
            f"the program of a {owner} must be a non-empty str without NUL that os.fsencode "
            f"can encode, not {cmd!r}"
        )
    return cmd


def _checked_args(args: object, owner: str) -> tuple[str, ...]:
    """``args`` as a tuple of str the OS can take, or a :class:`CmdError` saying what is wrong."""
    if isinstance(args, CmdOptions):  # Cmd("true", opts): the second positional is the args
        raise CmdError(
            f"{owner} args must be an iterable of str, not CmdOptions: options go in options=, "
            f"as in {owner}(..., options=opts)"
        )
    if isinstance(args, str | bytes):
        raise CmdError(
            f"{owner} args must be an iterable of str, not the {type(args).__name__} {args!r}"
        )
    try:
        checked = tuple(cast("Iterable[object]", args))
    except TypeError as exc:
        raise CmdError(
            f"{owner} args must be an iterable of str, not {type(args).__name__}"
        ) from exc
    for arg in checked:
        if not _is_os_text(arg):
            raise CmdError(
                f"each {owner} arg must be a str without NUL that os.fsencode can encode, "
                f"not {arg!r}"
            )
    return cast("tuple[str, ...]", checked)


def _checked_options(options: object, owner: str) -> CmdOptions:
    if options is None:
        return _default_options()
    if not isinstance(options, CmdOptions):
        raise CmdError(f"{owner} options must be CmdOptions or None, not {type(options).__name__}")
    return options


class Cmd:
    """A program and its arguments; no shell is involved (``|``, ``>``, ``$X`` stay literal).

    >>> Cmd("echo", ["hello", "$HOME"]).args
    ('hello', '$HOME')
    >>> Cmd.parse("ls -l '/a b'").args
    ('-l', '/a b')
    """

    __slots__ = ("_args", "_cmd", "options")

    def __init__(
        self,
        cmd: str | os.PathLike[str],
        args: Iterable[str] = (),
        options: CmdOptions | None = None,
    ) -> None:
        self._cmd = _checked_program(cmd, "Cmd")
        self._args = _checked_args(args, "Cmd")
        self.options = _checked_options(options, "Cmd")

    @classmethod
    def parse(cls, command_line: str, options: CmdOptions | None = None) -> Cmd:
        """Split ``command_line`` like ``shlex.split`` (quotes, escapes; no expansion)."""
        # shlex.split(None) would read the program's own stdin (Python 3.11) and run that.
        if not isinstance(command_line, str):
            raise CmdError(
                f"Cmd.parse takes the command line as a str, not {type(command_line).__name__} "
                f"{command_line!r}"
            )
        try:
            parts = shlex.split(command_line)
        except ValueError as exc:
            raise CmdError(f"cannot parse command line {command_line!r}: {exc}") from exc
        if not parts:
            raise CmdError(f"empty command line {command_line!r}")
        return cls(parts[0], parts[1:], options)

    @property
    def cmd(self) -> str:
        """The program: a name looked up in ``PATH``, or a path."""
        return self._cmd

    @property
    def args(self) -> tuple[str, ...]:
        """The arguments, without the program."""
        return self._args

    def argv(self) -> list[str]:
        """Program and arguments, as ``exec`` gets them."""
        return [self._cmd, *self._args]

    def bootstrap_cmd(self, process_dir: Path) -> Cmd:
        """A command is already what runs."""
        return self

    def clean_after_fail(self, process_dir: Path) -> None:
        """Nothing to clean: a command writes no files."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Cmd):
            return NotImplemented
        return (self._cmd, self._args, self.options) == (other._cmd, other._args, other.options)

    def __hash__(self) -> int:
        return hash((self._cmd, self._args))

    def __repr__(self) -> str:
        return f"Cmd({self._cmd!r}, {list(self._args)!r}, {self.options!r})"

    def __str__(self) -> str:
        return shlex.join(self.argv())


@dataclass(frozen=True, slots=True)
class ScriptRunConfig:
    """How to run a script file: ``cmd`` with ``args``, where ``@FILE_PATH`` is the file.

    >>> from pathlib import Path
    >>> ScriptRunConfig("deno", ["run", "@FILE_PATH"], "ts").argv(Path("/p/script.ts"))
    ['deno', 'run', '/p/script.ts']
    """

    cmd: str
    args: tuple[str, ...]
    file_extension: str

    def __init__(self, cmd: str, args: Iterable[str], file_extension: str) -> None:
        cmd = _checked_program(cmd, "ScriptRunConfig")
        args = _checked_args(args, "ScriptRunConfig")
        if SCRIPT_FILE_PATH_PLACEHOLDER not in args:
            raise CmdError(
                f"ScriptRunConfig args must contain {SCRIPT_FILE_PATH_PLACEHOLDER!r}, got {args!r}"
            )
        if not _is_os_text(file_extension) or "/" in file_extension:
            raise CmdError(f"bad script file extension {file_extension!r}: a str without / or NUL")
        object.__setattr__(self, "cmd", cmd)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "file_extension", file_extension.lstrip("."))

    def argv(self, script_path: Path) -> list[str]:
        """The interpreter's command line for ``script_path``."""
        path = str(script_path)
        return [self.cmd, *(path if a == SCRIPT_FILE_PATH_PLACEHOLDER else a for a in self.args)]


class ScriptingLanguage(enum.Enum):
    """Interpreters corral knows; ``PYTHON`` is the running interpreter (``sys.executable``)."""

    BASH = "bash"
    PYTHON = "python"
    PHP = "php"
    JAVASCRIPT = "javascript"
    PERL = "perl"
    LUA = "lua"
    RUBY = "ruby"
    GROOVY = "groovy"

    @property
    def run_config(self) -> ScriptRunConfig:
        """The interpreter command line for this language."""
        file = SCRIPT_FILE_PATH_PLACEHOLDER
        match self:
            case ScriptingLanguage.BASH:
                return ScriptRunConfig("bash", [file], "sh")
            case ScriptingLanguage.PYTHON:
                return ScriptRunConfig(sys.executable or "python3", ["-u", file], "py")
            case ScriptingLanguage.PHP:
                return ScriptRunConfig("php", ["-f", file], "php")
            case ScriptingLanguage.JAVASCRIPT:
                return ScriptRunConfig("node", [file], "js")
            case ScriptingLanguage.PERL:
                return ScriptRunConfig("perl", [file], "pl")
            case ScriptingLanguage.LUA:
                return ScriptRunConfig("lua", [file], "lua")
            case ScriptingLanguage.RUBY:
                return ScriptRunConfig("ruby", [file], "rb")
            case ScriptingLanguage.GROOVY:
                return ScriptRunConfig("groovy", [file], "groovy")


def ensure_mode(target: int | str | os.PathLike[str], mode: int) -> None:
    """Give the file or dir ``target`` (a path or an open fd) ``mode``, whatever the umask was.

    A chmod is a journaled write on most file systems, a stat is not: only pay for the chmod
    when an odd umask took owner bits away at creation.
    """
    if stat.S_IMODE(os.stat(target).st_mode) != mode:
        os.chmod(target, mode)


class Script:
    """Source code run by an interpreter: written to a file in the process dir, then executed.

    >>> script = Script(ScriptingLanguage.BASH, 'echo "hello $1"', args=["world"])
    """

    __slots__ = ("args", "content", "lang", "options")

    #: Name of the script file in the process dir (plus the language's extension).
    FILE_STEM = "script"

    def __init__(
        self,
        lang: ScriptingLanguage | ScriptRunConfig,
        content: str,
        args: Iterable[str] = (),
        options: CmdOptions | None = None,
    ) -> None:
        if not isinstance(lang, ScriptingLanguage | ScriptRunConfig):
            raise CmdError(f"lang must be a ScriptingLanguage or ScriptRunConfig, not {lang!r}")
        if not isinstance(content, str):
            raise CmdError(f"Script content must be a str, not {type(content).__name__}")
        try:
            content.encode("utf-8")  # as bootstrap_cmd writes it: fail here, not at spawn
        except UnicodeEncodeError as exc:
            raise CmdError(f"Script content cannot be written as UTF-8: {exc}") from exc
        self.lang = lang
        self.content = content
        self.args = _checked_args(args, "Script")
        self.options = _checked_options(options, "Script")

    @property
    def run_config(self) -> ScriptRunConfig:
        """The interpreter command line used for this script."""
        return self.lang.run_config if isinstance(self.lang, ScriptingLanguage) else self.lang

    def script_path(self, process_dir: Path) -> Path:
        """Where the script file goes in ``process_dir``."""
        return process_dir / f"{self.FILE_STEM}.{self.run_config.file_extension}"

    def bootstrap_cmd(self, process_dir: Path) -> Cmd:
        """Write the script file (0600) and return the interpreter command that runs it."""
        path = self.script_path(process_dir)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(fd, "w", encoding="utf-8") as f:
            ensure_mode(fd, 0o600)
            f.write(self.content)
        argv = self.run_config.argv(path)
        return Cmd(argv[0], [*argv[1:], *self.args], self.options)

    def clean_after_fail(self, process_dir: Path) -> None:
        """Remove the script file."""
        self.script_path(process_dir).unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"Script({self.lang!r}, {self.content!r}, {list(self.args)!r}, {self.options!r})"
