"""Every public call checks its arguments on the caller's side and answers at once; the manager
answers every request it takes, whatever goes wrong while handling it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import math
import typing
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, python_cmd, sleep_cmd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral import (
    AbortError,
    Cmd,
    CmdOptions,
    CorralError,
    ExitedProcessInfo,
    ExitStatus,
    GetLogsError,
    GetProcessInfoError,
    InvalidArgumentError,
    KillProcessError,
    LoggingType,
    LogsQuery,
    ManagerAbortedError,
    MessagingType,
    ProcessHandle,
    ProcessId,
    ProcessManager,
    ProcessManagerHandle,
    ProcessNotFoundError,
    SpawnProcessError,
    SyncProcessHandle,
    SyncProcessManager,
    WriteMessageError,
)
from corral import _logs as logs_module

#: Each call must return or raise within this bound.
BOUND = 1.0

# --- bad values, one strategy per kind of argument ------------------------------------------

_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    st.builds(object),
)


def _not_uuid_text(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) != text.lower()
    except ValueError:
        return True


BAD: dict[str, st.SearchStrategy[Any]] = {
    "id": st.one_of(
        _junk,
        st.text(max_size=40).filter(_not_uuid_text),
        st.builds(lambda: str(ProcessId.new())),  # well formed, never spawned
        st.builds(ProcessId.new),
    ),
    "runnable": st.one_of(_junk, st.text(max_size=8)),
    "timeout": st.one_of(
        st.floats(max_value=-1e-9), st.just(math.nan), st.text(max_size=3), st.booleans()
    ).filter(lambda v: not isinstance(v, int | float) or isinstance(v, bool) or not v >= 0),
    "query": st.one_of(_junk, st.text(max_size=4)),
    "stream": st.one_of(_junk, st.text(max_size=8).filter(lambda s: s not in ("stdout", "stderr"))),
    "message": st.one_of(
        st.none(),
        st.integers(),
        st.floats(),
        st.lists(st.integers(), max_size=2),
        st.builds(object),
        st.text(max_size=4).map(lambda s: f"{s}\n{s}x"),  # a newline inside: two messages
    ),
    "flag": st.one_of(st.none(), st.integers(), st.text(max_size=3), st.floats()),
    "grace": st.one_of(
        st.floats(max_value=-1e-9), st.just(math.nan), st.none(), st.text(max_size=3)
    ),
    "signal": st.one_of(
        st.integers(max_value=-1),
        st.integers(min_value=100),
        st.text(max_size=6).filter(lambda s: not s.upper().lstrip("SIG").isalpha()),
        st.floats(),
        st.none(),
        st.booleans(),
    ),
}

#: The public methods and their arguments: (name, kind, good value, passed by keyword).
METHODS: dict[str, list[tuple[str, str, bool]]] = {
    "spawn": [("runnable", "runnable", False)],
    "spawn_with_handle": [("runnable", "runnable", False)],
    "spawn_with_scoped_handle": [("runnable", "runnable", False)],
    "get_process_info": [("process_id", "id", False)],
    "wait": [("process_id", "id", False), ("timeout", "timeout", True)],
    "get_logs_stdout": [("process_id", "id", False), ("query", "query", False)],
    "get_logs_stderr": [("process_id", "id", False), ("query", "query", False)],
    "follow_logs": [("process_id", "id", False), ("stream", "stream", False)],
    "send_message": [("process_id", "id", False), ("message", "message", False)],
    "subscribe_message_stream": [("process_id", "id", False), ("lossless", "flag", True)],
    "subscribe_events": [("replay", "flag", True)],
    "kill": [("process_id", "id", False)],
    "release": [("process_id", "id", False)],
    "terminate": [("process_id", "id", False), ("grace", "grace", False)],
    "send_signal": [
        ("process_id", "id", False),
        ("sig", "signal", False),
        ("group", "flag", True),
    ],
    "abort": [("grace", "grace", False)],
}


def _good(kind: str, target: ProcessId) -> Any:
    return {
        "id": target,
        "runnable": Cmd("true"),
        "timeout": 0.0,
        "query": LogsQuery.tail(1),
        "stream": "stdout",
        "message": "hello",
        "flag": True,
        "grace": 5.0,
        "signal": 0,
    }[kind]


@st.composite
def bad_calls(draw: st.DrawFn) -> tuple[str, str, int, Any]:
    """(facade, method, index of the bad argument, the bad value)."""
    facade = draw(st.sampled_from(["handle", "process", "sync", "sync_process"]))
    names = sorted(METHODS)
    if facade in ("process", "sync_process"):  # bound to an id: only methods with more
        names = [n for n in names if len(METHODS[n]) > 1 and METHODS[n][0][1] == "id"]
    name = draw(st.sampled_from(names))
    params = METHODS[name]
    first = 1 if facade in ("process", "sync_process") else 0
    index = draw(st.integers(first, len(params) - 1))
    return facade, name, index, draw(BAD[params[index][1]])


def _arguments(
    name: str, index: int, bad: Any, target: ProcessId, bound: bool
) -> tuple[list[Any], dict[str, Any]]:
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for i, (param, kind, keyword) in enumerate(METHODS[name]):
        if bound and i == 0:
            continue
        value = bad if i == index else _good(kind, target)
        if keyword:
            kwargs[param] = value
        else:
            args.append(value)
    return args, kwargs


def _check_refusal(exc: BaseException) -> None:
    """A refused call raises one of corral's errors (also TypeError/ValueError when typed, and
    then an InvalidArgumentError, never a ManagerAbortedError)."""
    if isinstance(exc, TimeoutError):
        return
    assert isinstance(exc, CorralError), f"{type(exc).__mro__}: {exc}"
    if isinstance(exc, TypeError | ValueError):
        assert str(exc)
        assert isinstance(exc, InvalidArgumentError), f"{type(exc).__mro__}: {exc}"
        assert not isinstance(exc, ManagerAbortedError), f"{type(exc).__mro__}: {exc}"


async def _close(result: Any) -> None:
    aclose = getattr(result, "aclose", None)
    if aclose is not None:
        await aclose()
    close = getattr(result, "close", None)
    if close is not None and aclose is None:
        await asyncio.to_thread(close)


@pytest.fixture(scope="module")
def sync_manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncProcessManager]:
    with SyncProcessManager(tmp_path_factory.mktemp("work")) as pm:
        yield pm


@pytest.fixture(scope="module")
def target(sync_manager: SyncProcessManager) -> Iterator[ProcessId]:
    """A running child with logs and named-pipe messages, that bad calls must leave alone."""
    options = CmdOptions(
        logging_type=LoggingType.STDOUT_AND_STDERR,
        message_input=MessagingType.NAMED_PIPE,
        message_output=MessagingType.NAMED_PIPE,
    )
    pid = sync_manager.spawn(Cmd("sleep", ["300"], options))
    yield pid
    sync_manager.kill(pid)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(call=bad_calls())
def test_every_public_method_refuses_bad_arguments_at_once(
    sync_manager: SyncProcessManager, target: ProcessId, call: tuple[str, str, int, Any]
) -> None:
    facade, name, index, bad = call
    args, kwargs = _arguments(name, index, bad, target, facade in ("process", "sync_process"))

    async def on_the_loop() -> None:
        handle: Any = sync_manager.handle
        if facade == "process":
            handle = ProcessHandle(handle, target)
        try:
            async with asyncio.timeout(BOUND):
                result = getattr(handle, name)(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                await _close(result)
        except BaseException as exc:
            _check_refusal(exc)

    if facade in ("handle", "process"):
        asyncio.run_coroutine_threadsafe(on_the_loop(), sync_manager.loop).result(BOUND + 1)
        return

    def blocking() -> None:
        manager: Any = sync_manager
        if facade == "sync_process":
            manager = SyncProcessHandle(sync_manager, target)
        try:
            result = getattr(manager, name)(*args, **kwargs)
            close = getattr(result, "close", None)
            if close is not None:
                close()
        except BaseException as exc:
            _check_refusal(exc)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(blocking).result(BOUND)


def test_the_manager_works_after_the_bad_calls(
    sync_manager: SyncProcessManager, target: ProcessId
) -> None:
    # Runs after the property test in this module (same fixtures): nothing was harmed.
    assert sync_manager.get_process_info(target).is_running
    pid = sync_manager.spawn(
        Cmd("sh", ["-c", "echo ok"], CmdOptions.with_logging(LoggingType.STDOUT_ONLY))
    )
    assert sync_manager.wait(pid, TIMEOUT).exit_status.success
    assert sync_manager.get_logs_stdout(pid) == ["ok"]
    sync_manager.release(pid)


# --- each kind of bad argument, by hand --------------------------------------------------------


async def test_a_wrong_query_type_fails_at_once_instead_of_hanging(
    manager: ProcessManagerHandle,
) -> None:
    pid = await manager.spawn(Cmd("true", options=CmdOptions.with_logging(LoggingType.STDOUT_ONLY)))
    for bad in (10, "tail", None):
        with pytest.raises(GetLogsError) as caught:
            async with asyncio.timeout(BOUND):
                await manager.get_logs_stdout(pid, bad)  # type: ignore[arg-type]
        assert isinstance(caught.value, TypeError)
        assert "LogsQuery" in str(caught.value)
    assert await manager.get_logs_stdout(pid) == []


async def test_an_unexpected_failure_in_a_handler_is_answered(
    manager: ProcessManagerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = await manager.spawn(Cmd("true", options=CmdOptions.with_logging(LoggingType.STDOUT_ONLY)))
    await manager.wait(pid, TIMEOUT)

    def broken(self: Any, query: Any) -> list[str]:
        raise AttributeError("a defect inside the query")

    monkeypatch.setattr(logs_module.LogFile, "query", broken)
    with pytest.raises(GetLogsError) as caught:
        async with asyncio.timeout(BOUND):
            await manager.get_logs_stdout(pid)
    assert isinstance(caught.value.__cause__, AttributeError)
    assert caught.value.process_id == pid
    monkeypatch.undo()
    assert await manager.get_logs_stdout(pid) == []


async def test_ids_are_process_ids_or_their_text(manager: ProcessManagerHandle) -> None:
    pid = await manager.spawn(sleep_cmd())
    assert (await manager.get_process_info(str(pid))).is_running
    assert (await manager.get_process_info(str(pid).upper())).is_running
    assert ProcessId(str(pid)) == pid
    info = await manager.get_process_info(pid)
    assert info.pid is not None
    with pytest.raises(GetProcessInfoError, match="looks like an OS pid") as caught:
        await manager.wait(info.pid)  # type: ignore[arg-type]
    assert isinstance(caught.value, TypeError)
    for bad in ("not-a-uuid", "{" + str(pid) + "}", str(pid).replace("-", "")):
        with pytest.raises(KillProcessError) as refused:
            await manager.kill(bad)
        assert isinstance(refused.value, ValueError)
    with pytest.raises(ValueError, match="not a process id"):
        ProcessId("not-a-uuid")
    with pytest.raises(TypeError):
        ProcessId(1234)  # type: ignore[arg-type]
    await manager.kill(str(pid))
    with pytest.raises(ProcessNotFoundError):
        await manager.get_process_info(pid)


async def test_timeouts_and_graces_are_checked(manager: ProcessManagerHandle) -> None:
    pid = await manager.spawn(sleep_cmd())
    for bad, kind in ((math.nan, ValueError), (-1, ValueError), ("1", TypeError)):
        with pytest.raises(GetProcessInfoError) as caught:
            async with asyncio.timeout(BOUND):
                await manager.wait(pid, timeout=bad)
        assert isinstance(caught.value, kind)
    for bad, kind in ((None, TypeError), (math.nan, ValueError), (-0.5, ValueError)):
        with pytest.raises(KillProcessError) as refused:
            await manager.terminate(pid, grace=bad)
        assert isinstance(refused.value, kind)
        assert isinstance(refused.value, InvalidArgumentError)
        # A refused grace is abort's own error: the manager is not gone.
        with pytest.raises(AbortError) as not_aborted:
            await manager.abort(grace=bad)
        assert isinstance(not_aborted.value, kind)
        assert isinstance(not_aborted.value, InvalidArgumentError)
        assert not isinstance(not_aborted.value, ManagerAbortedError)
    assert (await manager.get_process_info(pid)).is_running


async def test_bad_messages_are_write_errors(manager: ProcessManagerHandle) -> None:
    pid = await manager.spawn(Cmd("cat", options=CmdOptions.with_standard_io_messaging()))
    for bad in (None, 12, ["a"]):
        with pytest.raises(WriteMessageError) as caught:
            await manager.send_message(pid, bad)  # type: ignore[arg-type]
        assert isinstance(caught.value, TypeError)
    with pytest.raises(WriteMessageError) as two_lines:
        await manager.send_message(pid, "a\nb")
    assert isinstance(two_lines.value, ValueError)


def test_spawning_a_manager_without_a_loop_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match=r"inside a coroutine.*SyncProcessManager"):
        ProcessManager.spawn()


async def test_a_non_runnable_is_a_spawn_type_error(manager: ProcessManagerHandle) -> None:
    with pytest.raises(SpawnProcessError) as caught:
        await manager.spawn("echo hi")  # type: ignore[arg-type]
    assert isinstance(caught.value, TypeError)


def test_process_handles_check_their_id(sync_manager: SyncProcessManager) -> None:
    with pytest.raises(TypeError):
        ProcessHandle(sync_manager.handle, 1234)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        SyncProcessHandle(sync_manager, 1234)  # type: ignore[arg-type]


# --- typing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [
        ProcessManagerHandle.wait,
        ProcessManagerHandle.terminate,
        ProcessHandle.wait,
        ProcessHandle.terminate,
        SyncProcessManager.wait,
        SyncProcessManager.terminate,
        SyncProcessHandle.wait,
        SyncProcessHandle.terminate,
    ],
)
def test_wait_and_terminate_return_an_info_whose_exit_status_is_set(
    method: Callable[..., Any],
) -> None:
    # So that `(await handle.wait(pid)).exit_status.code` type-checks under mypy --strict.
    assert typing.get_type_hints(method)["return"] is ExitedProcessInfo
    assert typing.get_type_hints(ExitedProcessInfo)["exit_status"] is ExitStatus


async def test_wait_returns_an_exited_info_equal_to_the_snapshot(
    manager: ProcessManagerHandle, work_dir: Path
) -> None:
    pid = await manager.spawn(python_cmd("raise SystemExit(4)"))
    info = await manager.wait(pid, TIMEOUT)
    assert isinstance(info, ExitedProcessInfo)
    assert info.exit_status.code == 4
    assert info == await manager.get_process_info(pid)
