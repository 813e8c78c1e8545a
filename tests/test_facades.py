"""One definition per operation: the facades are generated from it, and stay in step with it.

Every operation is an async method of ``ProcessManagerHandle`` marked with ``@operation``; its
per-process and blocking twins are written by ``scripts/gen_facades.py`` into ``_generated.py``.
These tests fail when that file is stale, when a facade lacks a method or differs in its
parameters, and when a request has no handler in the actor.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, collect, python_cmd

from corral import (
    BlockingIterator,
    Cmd,
    CmdOptions,
    ItemStream,
    MessageFormat,
    MessageStream,
    MessagingType,
    ProcessHandle,
    ProcessManagerHandle,
    ReadMessageError,
    ScopedProcessHandle,
    SyncProcessHandle,
    SyncProcessManager,
    SyncScopedProcessHandle,
    _actor,
    _requests,
)
from corral._sync import BlockingItemStream, BlockingMessageStream

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "scripts" / "gen_facades.py"

#: Public methods of the async handle with no blocking twin, and why.
ASYNC_ONLY = {
    "clone": "a blocking manager owns its thread: share the object",
    "__copy__": "as clone",
}


def public_methods(cls: type) -> dict[str, Any]:
    return {
        name: member
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and (callable(member) or isinstance(member, property))
    }


def parameters(member: Any, drop_id: bool = False) -> list[tuple[str, Any, Any]]:
    if isinstance(member, property):
        return []
    params = list(inspect.signature(member).parameters.values())[1:]  # without self
    if drop_id:
        assert params[0].name == "process_id", member
        params = params[1:]
    return [(p.name, p.kind, p.default) for p in params]


def operations() -> dict[str, Any]:
    """The operations: the async handle's methods marked with ``@operation``."""
    return {
        name: member
        for name, member in public_methods(ProcessManagerHandle).items()
        if getattr(member, "__corral_request__", None) is not None
    }


def test_the_generated_file_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_public_method_of_the_handle_is_an_operation_or_says_why_not() -> None:
    for name, member in public_methods(ProcessManagerHandle).items():
        if isinstance(member, property) or name in ASYNC_ONLY:
            continue
        assert name in operations(), f"ProcessManagerHandle.{name} has no @operation(...)"


def test_the_blocking_manager_has_every_method_of_the_async_handle() -> None:
    blocking = public_methods(SyncProcessManager)
    for name, member in public_methods(ProcessManagerHandle).items():
        if name in ASYNC_ONLY:
            continue
        assert name in blocking, f"SyncProcessManager lacks {name}"
        assert parameters(blocking[name]) == parameters(member), name
        assert isinstance(blocking[name], property) == isinstance(member, property), name


@pytest.mark.parametrize(
    ("bound", "manager"),
    [
        (ProcessHandle, ProcessManagerHandle),
        (ScopedProcessHandle, ProcessManagerHandle),
        (SyncProcessHandle, SyncProcessManager),
        (SyncScopedProcessHandle, SyncProcessManager),
    ],
)
def test_process_handles_have_every_per_process_method_without_the_id(
    bound: type, manager: type
) -> None:
    methods = public_methods(bound)
    for name, member in public_methods(manager).items():
        if isinstance(member, property) or name in ASYNC_ONLY:
            continue
        takes_id = list(inspect.signature(member).parameters)[1:2] == ["process_id"]
        if takes_id:
            assert name in methods, f"{bound.__name__} lacks {name}"
            assert parameters(methods[name]) == parameters(member, drop_id=True), name
        else:
            assert name not in methods or name == "manager", f"{bound.__name__}.{name}"


@pytest.mark.parametrize(
    ("blocking", "stream"),
    [(BlockingMessageStream, MessageStream), (BlockingItemStream, ItemStream)],
)
def test_blocking_streams_have_every_adapter_of_the_async_ones(
    blocking: type, stream: type
) -> None:
    methods = public_methods(blocking)
    for name, member in public_methods(stream).items():
        if name == "aclose":  # the blocking one closes with close(), as any BlockingIterator
            assert "close" in methods
            continue
        assert name in methods, f"{blocking.__name__} lacks {name}"
        assert parameters(methods[name]) == parameters(member), name
    assert issubclass(blocking, BlockingIterator)


def test_every_request_has_one_handler_and_one_operation() -> None:
    requests = {
        cls
        for cls in vars(_requests).values()
        if isinstance(cls, type) and issubclass(cls, _requests.Request)
    }
    requests.discard(_requests.Request)
    assert requests == set(_actor._HANDLERS)
    posted = {member.__corral_request__ for member in operations().values()}
    assert posted == requests


def test_a_second_handler_for_a_request_is_refused() -> None:
    with pytest.raises(TypeError, match="has a handler already"):

        @_actor.handles(_requests.Kill)
        def again(actor: Any, request: Any, envelope: Any) -> None: ...


# --- what the generated facades do, on real children ----------------------------------------


def writer(lines: list[str], message_output: MessagingType = MessagingType.STANDARD_IO) -> Cmd:
    code = "import sys\nfor line in sys.argv[1:]:\n    print(line, flush=True)"
    return python_cmd(code, *lines, options=CmdOptions(message_output=message_output))


def test_blocking_message_streams_keep_their_adapters(work_dir: Path) -> None:
    with SyncProcessManager(work_dir) as pm:
        pid = pm.spawn(writer(["a", '{"n": 1}', '{"n": 2}']))
        stream = pm.subscribe_message_stream(pid)
        assert stream.process_id == pid
        texts = stream.strings()
        assert next(texts) == "a"
        # An adapted stream takes the subscription over: the original is closed.
        with pytest.raises(ReadMessageError):
            stream.raw()
        texts.close()

        pid = pm.spawn(writer(['{"n": 1}', '{"n": 2}']))
        decoded = pm.subscribe_message_stream(pid).decoded(MessageFormat.JSON, dict[str, int])
        assert list(decoded) == [{"n": 1}, {"n": 2}]

        pid = pm.spawn(writer(["x", "y"]))
        assert pm.wait(pid, TIMEOUT).exit_status.success
        batches = pm.subscribe_message_stream(pid).ignore_lost_messages().batches()
        assert [m.to_string() for batch in batches for m in batch] == ["x", "y"]


def test_the_blocking_manager_tells_its_dirs(work_dir: Path) -> None:
    with SyncProcessManager(work_dir) as pm:
        assert pm.working_dir == pm.handle.working_dir == work_dir
        assert pm.stale_process_dirs == ()


async def test_subscriptions_may_ignore_lost_messages_on_every_api(
    manager: ProcessManagerHandle,
) -> None:
    lines = [str(n) for n in range(50)]
    pid = await manager.spawn(
        python_cmd(
            "import sys\nfor line in sys.argv[1:]:\n    print(line, flush=True)",
            *lines,
            options=CmdOptions(message_output=MessagingType.STANDARD_IO, output_buffer_capacity=4),
        )
    )
    lossy = await manager.subscribe_message_stream(pid, lossless=False, ignore_lost_messages=True)
    first = await manager.subscribe_message_stream(pid)  # lossless: the child goes at its pace
    assert [m.to_string() for m in await collect(first)] == lines
    # The lossy one fell behind by more than 4 and skips what it lost, without an error.
    got = [m.to_string() for m in await collect(lossy)]
    assert got == sorted(got, key=int)
    assert got[-1] == "49"
    assert len(got) < len(lines)
    events = await manager.subscribe_events(ignore_lost_messages=True)
    await events.aclose()
