"""The error tree: one class per operation, shared cases raised as instances of both, refused
arguments as InvalidArgumentErrors; every error pickles; public names are corral's own."""

from __future__ import annotations

import copy
import enum
import inspect
import pickle
import re
import subprocess
import sys
import traceback
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import corral
from corral import (
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
    ProcessId,
    ProcessManager,
    ProcessManagerHandle,
    ProcessNotFoundError,
    ReadMessageError,
    ReceiveDeserializedMessageError,
    ReceiveMessageError,
    ReleaseProcessError,
    SerdeError,
    SpawnProcessError,
    WriteMessageError,
)
from corral import _errors as errors_module
from corral._errors import (
    bad_argument,
    manager_aborted,
    messaging_not_configured,
    process_not_found,
)
from corral._requests import Request

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
    ReleaseProcessError,
    GetProcessInfoError,
    GetLogsError,
    WriteMessageError,
    ReadMessageError,
    ReceiveMessageError,
    AbortError,
]
#: The shared cases, each raised combined with an operation's class.
SHARED_ERRORS = [ProcessNotFoundError, ManagerAbortedError, MessagingNotConfiguredError]

EXPORTED_ERRORS = [
    value
    for value in vars(corral).values()
    if isinstance(value, type) and issubclass(value, BaseException)
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
    # Every failure of reading a stream's next item: catch the operation's class.
    for cls in (MessageTooLongError, IncompleteMessageError, ReceiveDeserializedMessageError):
        assert issubclass(cls, ReceiveMessageError)
    assert issubclass(CmdError, InvalidArgumentError)
    assert issubclass(CmdOptionsError, InvalidArgumentError)
    assert not issubclass(SerdeError, InvalidArgumentError)  # also the child's bad output
    assert not issubclass(AbortError, ManagerAbortedError)


def _drawn_tree(block: str) -> dict[str, str | None]:
    """A tree of classes drawn as text: each class's name -> its parent's."""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []  # (column of the name, name), from the root down
    for line in block.splitlines():
        match = re.match(r"^\s*(?:[│ ]*[├└]── )?(\S+)", line)
        if match is None or match[1] == "│":
            continue
        column, name = match.start(1), match[1]
        while stack and stack[-1][0] >= column:
            stack.pop()
        if not name.startswith("<"):  # <Operation>Error[TypeError]: a family, not a class
            parents[name] = stack[-1][1] if stack else None
        stack.append((column, name))
    return parents


def _docstring_tree() -> str:
    doc = errors_module.__doc__
    assert doc is not None
    return doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]


def _documented_tree() -> str:
    page = (Path(__file__).parent.parent / "docs" / "errors.md").read_text(encoding="utf-8")
    return page.split("```text\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("drawing", [_docstring_tree, _documented_tree])
def test_the_drawn_tree_is_the_real_one(drawing: Callable[[], str]) -> None:
    parents = _drawn_tree(drawing())
    assert sorted(parents) == sorted(cls.__name__ for cls in EXPORTED_ERRORS)
    for name, parent in parents.items():
        cls = getattr(corral, name)
        if parent is None:
            assert cls is CorralError
        else:
            assert getattr(corral, parent) in cls.__bases__, (name, parent)


def test_every_error_class_says_when_it_is_raised_in_one_line() -> None:
    for cls in EXPORTED_ERRORS:
        assert cls.__doc__, cls
        first = cls.__doc__.strip().splitlines()[0]
        assert first.endswith("."), f"{cls}: the first line says when it is raised, in full"


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


@pytest.mark.parametrize("operation", OPERATION_ERRORS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("kind", [TypeError, ValueError])
def test_a_refused_argument_is_the_operation_an_invalid_argument_and_the_builtin(
    operation: type[CorralError], kind: type[TypeError | ValueError]
) -> None:
    process_id = ProcessId.new()
    error = bad_argument(operation, kind, "bad", process_id)
    assert isinstance(error, operation)
    assert isinstance(error, InvalidArgumentError)
    assert isinstance(error, kind)
    assert not isinstance(error, ManagerAbortedError)
    assert (str(error), error.process_id) == ("bad", process_id)
    assert type(error).__name__ == f"{operation.__name__}[{kind.__name__}]"
    assert type(bad_argument(operation, kind, "again")) is type(error)


def test_a_refused_argument_never_says_the_manager_is_gone() -> None:
    # abort's own class is AbortError: given ManagerAbortedError, bad_argument uses it instead.
    error = bad_argument(ManagerAbortedError, ValueError, "grace must be >= 0 seconds")
    assert isinstance(error, AbortError)
    assert isinstance(error, InvalidArgumentError)
    assert not isinstance(error, ManagerAbortedError)
    assert isinstance(manager_aborted(AbortError), ManagerAbortedError)


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


async def test_abort_refuses_a_bad_grace_as_its_own_error() -> None:
    handle = ProcessManager.spawn()
    try:
        for bad, kind in ((-1, ValueError), ("1", TypeError)):
            with pytest.raises(AbortError) as caught:
                await handle.abort(grace=bad)  # type: ignore[arg-type]
            assert isinstance(caught.value, kind)
            assert isinstance(caught.value, InvalidArgumentError)
            assert not isinstance(caught.value, ManagerAbortedError)
        assert await handle.list_processes() == []  # the manager runs on
    finally:
        await handle.abort()


# --- pickling ------------------------------------------------------------------------------------

_ID = ProcessId("6f1ed002-ab5d-4b8f-9a6b-10f4c05d5c1e")


def _sample(cls: type[BaseException]) -> BaseException:
    """An instance of ``cls`` with every attribute set."""
    if cls is LostMessagesError:
        return LostMessagesError(7, process_id=_ID)
    if cls is MessageTooLongError:
        return MessageTooLongError(4096, 100, process_id=_ID)
    if cls is IncompleteMessageError:
        return IncompleteMessageError(b"partial\xff", process_id=_ID)
    if cls is ReceiveDeserializedMessageError:
        return ReceiveDeserializedMessageError("not JSON", b"{", process_id=_ID)
    if cls is ProcessNotFoundError:
        return ProcessNotFoundError(_ID)
    if cls is ManagerAbortedError:
        return ManagerAbortedError("the loop is closed")
    if cls is MessagingNotConfiguredError:
        return MessagingNotConfiguredError(_ID, "input")
    if cls is LoggingNotConfiguredError:
        return LoggingNotConfiguredError(_ID, "stderr")
    assert issubclass(cls, CorralError)
    return cls("something failed", process_id=_ID)


def _operations_in_use() -> set[type[CorralError]]:
    """Every class passed as an operation: the requests' own, and the stream readers'."""
    requests: list[type[Any]] = [Request]
    found: set[type[CorralError]] = set(OPERATION_ERRORS)
    while requests:
        cls = requests.pop()
        requests.extend(cls.__subclasses__())
        if cls is not Request:
            found.add(cls.error)
    return found


def _combined_samples() -> list[BaseException]:
    """An error of every combined class the factories make."""
    samples: list[BaseException] = []
    for operation in sorted(_operations_in_use(), key=lambda c: c.__name__):
        if not issubclass(operation, tuple(SHARED_ERRORS)):  # Abort's (today): never these
            samples.append(process_not_found(operation, _ID))
            samples.append(messaging_not_configured(operation, _ID, "output"))
        samples.append(manager_aborted(operation))
        samples.append(manager_aborted(operation, "the manager's event loop is closed"))
        samples.append(bad_argument(operation, TypeError, "query must be a LogsQuery", _ID))
        samples.append(bad_argument(operation, ValueError, "grace must be >= 0 seconds"))
    return samples


SAMPLES = [_sample(cls) for cls in EXPORTED_ERRORS] + _combined_samples()


def _same(a: BaseException, b: BaseException) -> None:
    assert type(a) is type(b)
    assert a.args == b.args
    assert str(a) == str(b)
    assert vars(a) == vars(b)


@pytest.mark.parametrize("error", SAMPLES, ids=lambda e: type(e).__name__)
def test_every_error_round_trips_through_pickle(error: BaseException) -> None:
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        _same(pickle.loads(pickle.dumps(error, protocol)), error)
    _same(copy.copy(error), error)
    _same(copy.deepcopy(error), error)
    assert pickle.loads(pickle.dumps(type(error))) is type(error)


def test_notes_survive_pickling() -> None:
    error = process_not_found(KillProcessError, _ID)
    error.add_note("while stopping the web workers")
    again = pickle.loads(pickle.dumps(error))
    assert again.__notes__ == ["while stopping the web workers"]


@given(
    message=st.text(),
    count=st.integers(min_value=0),
    data=st.binary(),
    process_id=st.none() | st.uuids(version=4).map(ProcessId),
)
def test_attributes_round_trip(
    message: str, count: int, data: bytes, process_id: ProcessId | None
) -> None:
    for error in (
        SpawnProcessError(message, process_id=process_id),
        LostMessagesError(count, process_id=process_id),
        MessageTooLongError(count, count + 1, process_id=process_id),
        IncompleteMessageError(data, process_id=process_id),
        ReceiveDeserializedMessageError(message, data, process_id=process_id),
        bad_argument(GetLogsError, ValueError, message, process_id),
    ):
        _same(pickle.loads(pickle.dumps(error)), error)


def test_errors_cross_to_a_fresh_interpreter() -> None:
    # There no combined class was made yet: unpickling makes it, and both classes catch it.
    code = """
import pickle, sys
import corral
for error in pickle.loads(sys.stdin.buffer.read()):
    for cls in type(error).__mro__[1:]:
        if cls.__module__ == "corral" and "[" not in cls.__name__:
            assert isinstance(error, getattr(corral, cls.__name__))
    print(type(error).__qualname__, error.process_id, vars(error), sep=" | ")
"""
    samples = _combined_samples()
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=pickle.dumps(samples),
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    expected = [f"{type(e).__qualname__} | {e.process_id} | {vars(e)}" for e in samples]
    assert result.stdout.decode().splitlines() == expected


# --- public names are corral's own ---------------------------------------------------------------


def _public_objects() -> list[tuple[str, Any]]:
    return [(name, getattr(corral, name)) for name in corral.__all__]


def test_public_names_say_corral() -> None:
    for name, value in _public_objects():
        if isinstance(value, type) or inspect.isfunction(value):
            assert value.__module__ == "corral", name
            assert value.__qualname__ == name
    assert repr(SerdeError) == "<class 'corral.SerdeError'>"
    assert corral.Cmd.parse.__module__ == "corral"
    assert corral.LogsQuery.tail.__qualname__ == "LogsQuery.tail"
    assert corral.LogsQuery.tail.__module__ == "corral"


def test_tracebacks_name_the_public_class() -> None:
    try:
        corral.Cmd("")
    except CmdError as exc:
        shown = "".join(traceback.format_exception_only(exc))
    assert shown.startswith("corral.CmdError: ")
    try:
        raise process_not_found(KillProcessError, _ID)
    except KillProcessError as exc:
        shown = "".join(traceback.format_exception_only(exc))
    assert shown.startswith("corral.KillProcessError[ProcessNotFoundError]: ")


def test_public_values_pickle_by_their_public_name() -> None:
    values: list[object] = [
        corral.Cmd("echo", ["hi"], corral.CmdOptions.with_logging(corral.LoggingType.STDOUT_ONLY)),
        _ID,
        corral.LogsQuery.tail(3),
        corral.ExitStatus.from_returncode(-9),
        corral.RestartPolicy(corral.RestartMode.ON_FAILURE),
        corral.MessageFormat.JSON,
    ]
    for _, value in _public_objects():
        if isinstance(value, type) and issubclass(value, enum.Enum):
            values.extend(value)
    for value in values:
        assert pickle.loads(pickle.dumps(value)) == value
        assert b"corral._" not in pickle.dumps(value), value


@pytest.mark.parametrize("name", [n for n, v in _public_objects() if isinstance(v, type)])
def test_type_hints_of_public_classes_resolve(name: str) -> None:
    typing.get_type_hints(getattr(corral, name))
