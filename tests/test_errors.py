"""The error tree: one class per operation, shared cases raised as instances of both."""

from __future__ import annotations

import pytest

import corral
from corral import (
    CmdError,
    CmdOptionsError,
    CorralError,
    GetLogsError,
    GetProcessInfoError,
    KillProcessError,
    LoggingNotConfiguredError,
    LostMessagesError,
    ManagerAbortedError,
    MessagingNotConfiguredError,
    ProcessId,
    ProcessManager,
    ProcessManagerHandle,
    ProcessNotFoundError,
    ReadMessageError,
    ReceiveDeserializedMessageError,
    ReceiveMessageError,
    SerdeError,
    SpawnProcessError,
    WriteMessageError,
)
from corral._errors import manager_aborted, messaging_not_configured, process_not_found

SEED_ERRORS = [
    SpawnProcessError,
    ReadMessageError,
    WriteMessageError,
    KillProcessError,
    GetLogsError,
    GetProcessInfoError,
    ReceiveMessageError,
    ReceiveDeserializedMessageError,
]
OPERATION_ERRORS = [
    SpawnProcessError,
    KillProcessError,
    GetProcessInfoError,
    GetLogsError,
    WriteMessageError,
    ReadMessageError,
]


def test_every_exported_error_is_a_corral_error() -> None:
    exported = [
        getattr(corral, name)
        for name in corral.__all__
        if isinstance(getattr(corral, name), type)
        and issubclass(getattr(corral, name), BaseException)
    ]
    assert len(exported) >= 16
    for cls in exported:
        assert issubclass(cls, CorralError), cls
    for cls in [*SEED_ERRORS, CmdError, CmdOptionsError, SerdeError, ManagerAbortedError]:
        assert cls in exported


def test_build_errors_are_value_errors() -> None:
    for cls in (CmdError, CmdOptionsError, SerdeError):
        assert issubclass(cls, ValueError)
    assert not issubclass(SpawnProcessError, ValueError)


def test_subclasses() -> None:
    assert issubclass(LostMessagesError, ReceiveMessageError)
    assert issubclass(LoggingNotConfiguredError, GetLogsError)


def test_corral_error_carries_an_optional_process_id() -> None:
    assert CorralError("x").process_id is None
    process_id = ProcessId.new()
    error = SpawnProcessError("failed", process_id=process_id)
    assert error.process_id == process_id
    assert str(error) == "failed"


def test_process_not_found_names_the_process() -> None:
    process_id = ProcessId.new()
    error = ProcessNotFoundError(process_id)
    assert error.process_id == process_id
    assert str(process_id) in str(error)


def test_messaging_and_logging_not_configured_name_the_process() -> None:
    process_id = ProcessId.new()
    for direction in ("input", "output"):
        error = MessagingNotConfiguredError(process_id, direction)
        assert str(process_id) in str(error)
        assert direction in str(error)
    error = LoggingNotConfiguredError(process_id, "stderr")
    assert str(process_id) in str(error)
    assert "stderr" in str(error)


def test_lost_messages_error_counts() -> None:
    process_id = ProcessId.new()
    error = LostMessagesError(3, process_id=process_id)
    assert error.count == 3
    assert "3" in str(error)
    assert str(process_id) in str(error)
    assert LostMessagesError(1).process_id is None


def test_receive_deserialized_message_error_keeps_the_data() -> None:
    error = ReceiveDeserializedMessageError("bad", b"\xff")
    assert error.data == b"\xff"
    assert ReceiveDeserializedMessageError("bad").data == b""


@pytest.mark.parametrize("operation", OPERATION_ERRORS, ids=lambda c: c.__name__)
def test_combined_errors_are_both_classes(operation: type[CorralError]) -> None:
    process_id = ProcessId.new()
    not_found = process_not_found(operation, process_id)
    assert isinstance(not_found, operation)
    assert isinstance(not_found, ProcessNotFoundError)
    assert not_found.process_id == process_id
    assert str(process_id) in str(not_found)
    aborted = manager_aborted(operation)
    assert isinstance(aborted, operation)
    assert isinstance(aborted, ManagerAbortedError)
    assert "abort" in str(aborted)
    assert str(manager_aborted(operation, "loop closed")) == "loop closed"
    unconfigured = messaging_not_configured(operation, process_id, "output")
    assert isinstance(unconfigured, operation)
    assert isinstance(unconfigured, MessagingNotConfiguredError)
    assert str(process_id) in str(unconfigured)
    # one class per pair, made once
    assert type(process_not_found(operation, ProcessId.new())) is type(not_found)
    assert operation.__name__ in type(not_found).__name__


def test_combining_with_itself_is_the_class_itself() -> None:
    assert type(manager_aborted(ManagerAbortedError)) is ManagerAbortedError


@pytest.mark.parametrize("style", [ProcessNotFoundError, KillProcessError, CorralError])
async def test_both_styles_catch_a_real_not_found(
    manager: ProcessManagerHandle, style: type[CorralError]
) -> None:
    unknown = ProcessId.new()
    with pytest.raises(style) as caught:
        await manager.kill(unknown)
    assert caught.value.process_id == unknown
    assert str(unknown) in str(caught.value)


async def test_not_found_for_every_operation(manager: ProcessManagerHandle) -> None:
    unknown = ProcessId.new()
    calls = [
        (KillProcessError, manager.kill(unknown)),
        (GetProcessInfoError, manager.get_process_info(unknown)),
        (GetProcessInfoError, manager.wait(unknown)),
        (GetProcessInfoError, manager.wait(unknown, timeout=5)),
    ]
    for operation_error, call in calls:
        with pytest.raises(ProcessNotFoundError) as caught:
            await call
        assert isinstance(caught.value, operation_error)
        assert caught.value.process_id == unknown
        assert str(unknown) in str(caught.value)


async def test_aborted_for_every_operation() -> None:
    handle = ProcessManager.spawn()
    await handle.abort()
    unknown = ProcessId.new()
    calls = [
        (SpawnProcessError, handle.spawn(corral.Cmd("true"))),
        (KillProcessError, handle.kill(unknown)),
        (GetProcessInfoError, handle.get_process_info(unknown)),
        (GetProcessInfoError, handle.list_processes()),
    ]
    for operation_error, call in calls:
        with pytest.raises(operation_error) as caught:
            await call
        assert isinstance(caught.value, ManagerAbortedError)
    with pytest.raises(ManagerAbortedError):
        await handle.abort()
