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

# Nothing is imported here at run time: each public name is loaded from its private module when
# it is first used (PEP 562 ``__getattr__``), so that ``from corral import child`` in a child
# process and ``import corral`` cost no more than what they use. ``typing`` is not imported for
# ``TYPE_CHECKING`` either (type checkers treat this name as ``typing.TYPE_CHECKING``).
TYPE_CHECKING = False
if TYPE_CHECKING:
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

#: Where each public name is defined: ``corral.X`` imports ``corral.<module>`` when first used.
_EXPORTS: dict[str, str] = {
    "BatchStream": "_broadcast",
    "ItemStream": "_broadcast",
    "MessageStream": "_broadcast",
    "AbortError": "_errors",
    "CmdError": "_errors",
    "CmdOptionsError": "_errors",
    "CorralError": "_errors",
    "GetLogsError": "_errors",
    "GetProcessInfoError": "_errors",
    "IncompleteMessageError": "_errors",
    "InvalidArgumentError": "_errors",
    "KillProcessError": "_errors",
    "LoggingNotConfiguredError": "_errors",
    "LostMessagesError": "_errors",
    "ManagerAbortedError": "_errors",
    "MessageTooLongError": "_errors",
    "MessagingNotConfiguredError": "_errors",
    "ProcessNotFoundError": "_errors",
    "ReadMessageError": "_errors",
    "ReceiveDeserializedMessageError": "_errors",
    "ReceiveMessageError": "_errors",
    "ReleaseProcessError": "_errors",
    "SerdeError": "_errors",
    "SpawnProcessError": "_errors",
    "WriteMessageError": "_errors",
    "ProcessHandle": "_handle",
    "ProcessManagerHandle": "_handle",
    "ScopedProcessHandle": "_handle",
    "LogsQuery": "_logs",
    "ProcessManager": "_manager",
    "Message": "_messages",
    "MessageFormat": "_messages",
    "Backoff": "_model",
    "Cmd": "_model",
    "CmdOptions": "_model",
    "ExitStatus": "_model",
    "ExitedProcessInfo": "_model",
    "INPUT_PIPE_ENV_NAME": "_model",
    "LoggingType": "_model",
    "MessagingType": "_model",
    "OUTPUT_PIPE_ENV_NAME": "_model",
    "PROCESS_DATA_DIR_ENV_NAME": "_model",
    "ProcessId": "_model",
    "ProcessInfo": "_model",
    "RestartMode": "_model",
    "RestartPolicy": "_model",
    "Runnable": "_model",
    "SCRIPT_FILE_PATH_PLACEHOLDER": "_model",
    "Script": "_model",
    "ScriptRunConfig": "_model",
    "ScriptingLanguage": "_model",
    "EventKind": "_supervision",
    "ProcessEvent": "_supervision",
    "BlockingItemStream": "_sync",
    "BlockingIterator": "_sync",
    "BlockingMessageStream": "_sync",
    "SyncProcessHandle": "_sync",
    "SyncProcessManager": "_sync",
    "SyncScopedProcessHandle": "_sync",
}

if not TYPE_CHECKING:  # hidden from type checkers, which see the imports above instead

    def __getattr__(name: str) -> object:
        if name not in _EXPORTS:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from ._metadata import load_exports

        load_exports(__name__, globals(), _EXPORTS, name)
        return globals()[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
