"""The protocol below the manager: request classes, envelopes, and the actor's pacer.

These are checked here, without a manager, where a behaviour is easiest to pin down: a reply
crossing to another thread's loop, a reply nobody waits for reaching the orphan callback, a
cancellation seen by the actor, and the pacer's one spawn per loop turn.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from corral import (
    GetLogsError,
    GetProcessInfoError,
    KillProcessError,
    ProcessId,
    ReadMessageError,
    SpawnProcessError,
)
from corral._actor import Pacer
from corral._requests import (
    Envelope,
    GetInfo,
    GetLogs,
    Kill,
    Spawn,
    Subscribe,
    Terminate,
    operation,
)

TIMEOUT = 10.0


@pytest.fixture
def other_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running on a thread of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(TIMEOUT)
    loop.close()


def test_each_request_names_its_operations_error_class() -> None:
    pid = ProcessId.new()
    assert isinstance(GetInfo(pid), GetInfo)
    assert GetInfo.error is GetProcessInfoError
    assert Kill.error is KillProcessError
    assert Spawn.error is SpawnProcessError
    assert GetLogs.error is GetLogsError
    assert Subscribe.error is ReadMessageError


def test_requests_check_their_own_fields() -> None:
    pid = ProcessId.new()
    with pytest.raises(TypeError) as raised:
        Spawn("echo hi")  # type: ignore[arg-type]
    assert isinstance(raised.value, SpawnProcessError)
    with pytest.raises(ValueError, match="grace") as bad_grace:
        Terminate(pid, -1.0)
    assert isinstance(bad_grace.value, KillProcessError)
    with pytest.raises(TypeError) as bad_bool:
        Subscribe(pid, lossless="yes")  # type: ignore[arg-type]
    assert isinstance(bad_bool.value, ReadMessageError)
    assert Terminate(pid, 2).grace == 2.0


def test_operation_marks_the_method_with_its_request() -> None:
    @operation(Kill)
    async def kill() -> None: ...

    assert kill.__corral_request__ is Kill  # type: ignore[attr-defined]


async def test_a_reply_on_the_callers_own_loop_is_set_at_once() -> None:
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[int] = loop.create_future()
    envelope = Envelope(GetInfo(ProcessId.new()), reply, loop)
    envelope.resolve(7)
    assert reply.done()
    assert reply.result() == 7


async def test_a_reply_crosses_to_the_callers_loop_on_another_thread(
    other_loop: asyncio.AbstractEventLoop,
) -> None:
    here = asyncio.get_running_loop()
    posted: asyncio.Future[Envelope[int]] = here.create_future()

    async def ask() -> tuple[int, bool]:
        caller = asyncio.get_running_loop()
        reply: asyncio.Future[int] = caller.create_future()
        here.call_soon_threadsafe(
            posted.set_result, Envelope(GetInfo(ProcessId.new()), reply, caller)
        )
        value = await reply
        return value, asyncio.get_running_loop() is caller

    asked = asyncio.run_coroutine_threadsafe(ask(), other_loop)
    # Answered from this loop, as the actor answers from its own.
    (await asyncio.wait_for(posted, TIMEOUT)).resolve(42)
    assert await asyncio.wait_for(asyncio.wrap_future(asked), TIMEOUT) == (42, True)


async def test_an_error_reply_is_raised_to_the_caller() -> None:
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[int] = loop.create_future()
    envelope = Envelope(Kill(ProcessId.new()), reply, loop)
    envelope.fail(KillProcessError("no"))
    with pytest.raises(KillProcessError, match="no"):
        await reply


async def test_a_result_nobody_gets_goes_to_the_orphan_callback(
    other_loop: asyncio.AbstractEventLoop,
) -> None:
    orphans: list[int] = []
    loop = asyncio.get_running_loop()
    # Cancelled before the answer: the answer reaches nobody.
    reply: asyncio.Future[int] = loop.create_future()
    envelope = Envelope(Spawn.__new__(Spawn), reply, loop, orphans.append)
    reply.cancel()
    assert envelope.abandoned
    envelope.resolve(1)
    assert orphans == [1]
    # The caller's loop is closed: nobody can get it either.
    closed = asyncio.new_event_loop()
    closed.close()
    stranded: asyncio.Future[int] = loop.create_future()
    Envelope(Spawn.__new__(Spawn), stranded, closed, orphans.append).resolve(2)
    assert orphans == [1, 2]


async def test_the_actor_hears_of_a_cancelled_caller() -> None:
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[None] = loop.create_future()
    envelope = Envelope(Kill(ProcessId.new()), reply, loop)
    cancelled = asyncio.Event()
    envelope.on_cancel(cancelled.set)
    assert not envelope.abandoned
    reply.cancel()
    await asyncio.wait_for(cancelled.wait(), TIMEOUT)
    # Nobody waits for a request posted without a reply.
    assert Envelope(Kill(ProcessId.new())).abandoned


async def test_the_pacer_runs_one_spawn_per_loop_turn_in_order() -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(loop)
    ran: list[tuple[int, int]] = []
    turn = 0

    def count_turns() -> None:
        nonlocal turn
        turn += 1
        if len(ran) < 3:
            loop.call_soon(count_turns)

    loop.call_soon(count_turns)
    done = asyncio.Event()
    for n in range(3):
        pacer.submit(lambda n=n: ran.append((n, turn)))
    pacer.submit(done.set)
    assert ran == [(0, 0)]  # the first runs at once, the others wait for their turns
    assert pacer.busy
    await asyncio.wait_for(done.wait(), TIMEOUT)
    assert [n for n, _ in ran] == [0, 1, 2]
    turns = [t for _, t in ran]
    assert turns == sorted(set(turns)), "two spawns ran in one loop turn"


async def test_a_claimed_turn_defers_the_next_spawn() -> None:
    pacer = Pacer(asyncio.get_running_loop())
    pacer.claim()
    ran = asyncio.Event()
    pacer.submit(ran.set)
    assert not ran.is_set()
    await asyncio.wait_for(ran.wait(), TIMEOUT)
    pacer.submit(lambda: None)
    pacer.clear()  # at shutdown: what waits is forgotten
