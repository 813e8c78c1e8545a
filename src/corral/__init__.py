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

from ._broadcast import BatchStream, ItemStream, MessageStream
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
from ._metadata import fixup_module_metadata
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
from ._supervision import EventKind, ProcessEvent
from ._sync import (
    BlockingItemStream,
    BlockingIterator,
    BlockingMessageStream,
    SyncProcessHandle,
    SyncProcessManager,
    SyncScopedProcessHandle,
)

__version__ = "0.1.0"

__all__ = [
    "INPUT_PIPE_ENV_NAME",
    "OUTPUT_PIPE_ENV_NAME",
    "PROCESS_DATA_DIR_ENV_NAME",
    "SCRIPT_FILE_PATH_PLACEHOLDER",
    "AbortError",
    "Backoff",
    "BatchStream",
    "BlockingItemStream",
    "BlockingIterator",
    "BlockingMessageStream",
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


fixup_module_metadata(__name__, globals(), __all__)
del fixup_module_metadata
