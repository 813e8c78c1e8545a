"""corral: spawn and manage many child processes from one asyncio program.

>>> import asyncio
>>> from corral import Cmd, ProcessManager
>>> async def main() -> None:
...     async with ProcessManager.spawn() as handle:
...         pid = await handle.spawn(Cmd("echo", ["hello"]))
...         print((await handle.wait(pid)).exit_status)
>>> asyncio.run(main())
exit code 0
"""

import contextlib as _contextlib
import inspect as _inspect
import sys as _sys

from ._errors import (
    AbortError,
    CmdError,
    CmdOptionsError,
    CorralError,
    GetLogsError,
    GetProcessInfoError,
    IncompleteMessageError,
    InvalidArgumentError,
    KillProcessError,
    LoggingNotConfiguredError,
    LostMessagesError,
    ManagerAbortedError,
    MessageTooLongError,
    MessagingNotConfiguredError,
    ProcessNotFoundError,
    ReadMessageError,
    ReceiveDeserializedMessageError,
    ReceiveMessageError,
    ReleaseProcessError,
    SerdeError,
    SpawnProcessError,
    WriteMessageError,
)
from ._handle import ProcessHandle, ProcessManagerHandle, ScopedProcessHandle
from ._logs import LogsQuery
from ._manager import ProcessManager
from ._messages import Message, MessageFormat
from ._model import (
    INPUT_PIPE_ENV_NAME,
    OUTPUT_PIPE_ENV_NAME,
    PROCESS_DATA_DIR_ENV_NAME,
    SCRIPT_FILE_PATH_PLACEHOLDER,
    Backoff,
    Cmd,
    CmdOptions,
    ExitedProcessInfo,
    ExitStatus,
    LoggingType,
    MessagingType,
    ProcessId,
    ProcessInfo,
    RestartMode,
    RestartPolicy,
    Runnable,
    Script,
    ScriptingLanguage,
    ScriptRunConfig,
)
from ._streams import BatchStream, ItemStream, MessageStream
from ._supervision import EventKind, ProcessEvent
from ._sync import BlockingIterator, SyncProcessHandle, SyncProcessManager, SyncScopedProcessHandle

__version__ = "0.1.0"

__all__ = [
    "INPUT_PIPE_ENV_NAME",
    "OUTPUT_PIPE_ENV_NAME",
    "PROCESS_DATA_DIR_ENV_NAME",
    "SCRIPT_FILE_PATH_PLACEHOLDER",
    "AbortError",
    "Backoff",
    "BatchStream",
    "BlockingIterator",
    "Cmd",
    "CmdError",
    "CmdOptions",
    "CmdOptionsError",
    "CorralError",
    "EventKind",
    "ExitStatus",
    "ExitedProcessInfo",
    "GetLogsError",
    "GetProcessInfoError",
    "IncompleteMessageError",
    "InvalidArgumentError",
    "ItemStream",
    "KillProcessError",
    "LoggingNotConfiguredError",
    "LoggingType",
    "LogsQuery",
    "LostMessagesError",
    "ManagerAbortedError",
    "Message",
    "MessageFormat",
    "MessageStream",
    "MessageTooLongError",
    "MessagingNotConfiguredError",
    "MessagingType",
    "ProcessEvent",
    "ProcessHandle",
    "ProcessId",
    "ProcessInfo",
    "ProcessManager",
    "ProcessManagerHandle",
    "ProcessNotFoundError",
    "ReadMessageError",
    "ReceiveDeserializedMessageError",
    "ReceiveMessageError",
    "ReleaseProcessError",
    "RestartMode",
    "RestartPolicy",
    "Runnable",
    "ScopedProcessHandle",
    "Script",
    "ScriptRunConfig",
    "ScriptingLanguage",
    "SerdeError",
    "SpawnProcessError",
    "SyncProcessHandle",
    "SyncProcessManager",
    "SyncScopedProcessHandle",
    "WriteMessageError",
    "__version__",
]


def _resolve_annotations(cls: type, module_globals: dict[str, object]) -> None:
    annotations = _inspect.get_annotations(cls)
    if not any(isinstance(value, str) for value in annotations.values()):
        return
    # As get_type_hints does: the module's names first, then the class's.
    names = {**vars(cls), **module_globals}
    for name, value in annotations.items():
        if isinstance(value, str):
            with _contextlib.suppress(Exception):  # a name only imported for type checking
                annotations[name] = eval(value, module_globals, names)
    cls.__annotations__ = annotations


def _fixup_module_metadata() -> None:
    """Make every public name say it is ``corral.X``, not ``corral._errors.X``.

    Tracebacks, ``repr`` and pickles name a class by its ``__module__``: set to ``"corral"``
    for each class, function and enum exported here, and for the functions and classes defined
    in a public class's body (found again by their ``__qualname__``: ``corral.Cmd.parse``). An
    object is renamed only where its ``__qualname__`` is the path it is exported at, so that
    ``corral.<__qualname__>`` always finds it again (pickle looks classes up that way).

    ``typing.get_type_hints`` reads a class's annotations (text, under ``from __future__ import
    annotations``) in the module its ``__module__`` names: those the defining module can
    resolve are resolved there first, so that they still can be afterwards.
    """
    seen: set[int] = set()

    def fix(obj: object, path: str) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        module = getattr(obj, "__module__", None)
        if not isinstance(module, str) or not module.startswith(f"{__name__}._"):
            return
        if getattr(obj, "__qualname__", None) != path:
            return
        if not isinstance(obj, type):
            obj.__module__ = __name__
            return
        _resolve_annotations(obj, _sys.modules[module].__dict__)
        obj.__module__ = __name__
        for name, member in vars(obj).items():
            if isinstance(member, staticmethod | classmethod):
                member = member.__func__
            elif isinstance(member, property):
                member = member.fget
            fix(member, f"{path}.{name}")

    namespace = globals()
    for name in __all__:
        fix(namespace[name], name)


_fixup_module_metadata()
