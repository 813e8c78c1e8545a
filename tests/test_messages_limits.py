"""The size cap on a child's messages, end to end through the manager, with real children.

A line longer than ``CmdOptions.max_message_bytes`` is skipped as it arrives (its bytes are
counted, never held whole), reported in its place as ``MessageTooLongError`` with its size, and
the stream goes on with the next message.
"""

from __future__ import annotations

import pytest
from conftest import TIMEOUT, outcomes, python_cmd

from corral import (
    CmdOptions,
    CmdOptionsError,
    MessageFormat,
    MessageTooLongError,
    MessagingType,
    ProcessManagerHandle,
    ReceiveMessageError,
)
from corral._broadcast import SkippedLine
from corral._pipes import LineFramer

MiB = 1024 * 1024

#: Writes lines of the sizes given in argv, each of one digit (a JSON int), to its message output.
SIZES_PY = """\
import os, sys
out = open(os.environ["OUTPUT_PIPE"], "wb") if os.environ.get("OUTPUT_PIPE") else sys.stdout.buffer
for i, size in enumerate(sys.argv[1:]):
    letter = b"123456789"[i % 9 : i % 9 + 1]
    for start in range(0, int(size), 1 << 20):
        out.write(letter * min(1 << 20, int(size) - start))
    out.write(b"\\n")
out.flush()
"""


@pytest.fixture
def peak_held(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The most bytes any framer held of an unfinished line, in a list of one, as it changes."""
    peak = [0]
    feed = LineFramer.feed

    def watched(self: LineFramer, chunk: bytes) -> list[bytes | SkippedLine]:
        lines = feed(self, chunk)
        peak[0] = max(peak[0], self.pending_size)
        return lines

    monkeypatch.setattr(LineFramer, "feed", watched)
    return peak


def test_the_default_cap_is_16_mib_and_bad_caps_are_refused() -> None:
    assert CmdOptions().max_message_bytes == 16 * MiB
    for bad in (0, -1, True, 1.5, "1024", None):
        with pytest.raises(CmdOptionsError, match="max_message_bytes"):
            CmdOptions(max_message_bytes=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("output", list(MessagingType), ids=["stdio", "pipe"])
async def test_a_line_over_the_cap_is_reported_with_its_size_and_the_stream_goes_on(
    manager: ProcessManagerHandle, output: MessagingType, peak_held: list[int]
) -> None:
    limit = 1000
    options = CmdOptions(message_output=output, max_message_bytes=limit)
    pid = await manager.spawn(
        python_cmd(SIZES_PY, "3", "5000", "1000", "1001", "2", options=options)
    )
    got = await outcomes(await manager.subscribe_message_stream(pid), ReceiveMessageError)
    assert [len(m) if not isinstance(m, Exception) else m.size for m in got] == [
        3,
        5000,
        1000,
        1001,
        2,
    ]
    kinds = [type(item).__name__ for item in got]
    assert kinds == ["Message", "MessageTooLongError", "Message", "MessageTooLongError", "Message"]
    assert all(e.limit == limit and e.process_id == pid for e in got[1:4:2])
    assert peak_held[0] <= limit
    info = await manager.wait(pid, TIMEOUT)
    assert info.exit_status is not None
    assert info.exit_status.success


async def test_the_error_reaches_every_adapter_and_is_not_a_lost_message(
    manager: ProcessManagerHandle,
) -> None:
    options = CmdOptions(message_output=MessagingType.NAMED_PIPE, max_message_bytes=10)
    pid = await manager.spawn(python_cmd(SIZES_PY, "1", "11", "1", options=options))
    streams = [
        (await manager.subscribe_message_stream(pid)).strings(),
        (await manager.subscribe_message_stream(pid)).decoded(MessageFormat.JSON, int),
        (await manager.subscribe_message_stream(pid)).ignore_lost_messages(),
    ]
    for stream in streams:
        got = await outcomes(stream, ReceiveMessageError)
        assert len(got) == 3
        assert isinstance(got[1], MessageTooLongError)
        assert got[1].size == 11


async def test_a_64_mib_line_costs_the_parent_at_most_the_default_cap(
    manager: ProcessManagerHandle, peak_held: list[int]
) -> None:
    options = CmdOptions(message_output=MessagingType.NAMED_PIPE)
    pid = await manager.spawn(python_cmd(SIZES_PY, str(64 * MiB), "5", options=options))
    stream = await manager.subscribe_message_stream(pid)
    got = await outcomes(stream.raw(), ReceiveMessageError, timeout=30)
    assert isinstance(got[0], MessageTooLongError)
    assert (got[0].size, got[0].limit) == (64 * MiB, 16 * MiB)
    assert got[1:] == [b"22222"]
    assert peak_held[0] <= 16 * MiB
