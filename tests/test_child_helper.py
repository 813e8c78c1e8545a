"""corral.child: the stdlib-only helper for Python children, and the example echo children."""

from __future__ import annotations

import asyncio
import math
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import TIMEOUT
from hypothesis import given, settings
from hypothesis import strategies as st
from test_streams import Spawn, Spawner, collect, take
from test_streams import spawn as spawn  # the fixture

from corral import _model, child
from corral._broadcast import Broadcast
from corral._messages import Message, MessageFormat

ROOT = Path(__file__).resolve().parent.parent
CHILD_PY = ROOT / "src" / "corral" / "child.py"
EXAMPLES = ROOT / "examples"

# --- the MessagePack codec against msgspec ----------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text()
    | st.binary()
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=20)
        | st.dictionaries(st.text() | st.integers(-(2**63), 2**63 - 1), inner, max_size=20)
    ),
    max_leaves=40,
)


def same(a: Any, b: Any) -> bool:
    """Deep equality where NaN equals NaN and types must match (True is not 1)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@settings(max_examples=200, deadline=None)
@given(values)
def test_packb_writes_what_msgspec_writes(value: Any) -> None:
    assert child.packb(value) == msgspec.msgpack.encode(value)


@settings(max_examples=200, deadline=None)
@given(values)
def test_unpackb_reads_what_msgspec_writes(value: Any) -> None:
    decoded = child.unpackb(msgspec.msgpack.encode(value))
    assert same(decoded, msgspec.msgpack.decode(msgspec.msgpack.encode(value)))


@pytest.mark.parametrize(
    "value",
    [
        "x" * 31,
        "x" * 32,
        "x" * 255,
        "x" * 256,
        "x" * 65535,
        "x" * 65536,
        b"y" * 255,
        b"y" * 256,
        b"y" * 65536,
        list(range(15)),
        list(range(16)),
        list(range(65536)),
        {str(i): i for i in range(15)},
        {str(i): i for i in range(16)},
        {i: None for i in range(65536)},
        [-(2**63), -(2**31) - 1, -(2**31), -32769, -32768, -129, -128, -33, -32, -1, 0],
        [127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1],
        (1, (2, 3)),
        {(1, 2): "tuple key"},
        [0.0, -0.0, 1.5, float("inf"), -float("inf")],
    ],
    ids=lambda v: f"{type(v).__name__}{len(v) if hasattr(v, '__len__') else ''}",
)
def test_every_size_class_matches_msgspec(value: Any) -> None:
    packed = child.packb(value)
    assert packed == msgspec.msgpack.encode(value)
    assert same(child.unpackb(packed), msgspec.msgpack.decode(packed))


def test_unpackb_reads_float32() -> None:
    assert child.unpackb(b"\xca" + struct.pack(">f", 1.5)) == 1.5


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"\x92\x01", "truncated"),
        (b"\xa5abc", "truncated"),
        (b"\xcd\x01", "truncated"),
        (b"\x01\x02", "trailing bytes"),
        (b"\xc1", "unsupported MessagePack type byte 0xc1"),
        (b"\xd4\x01\x02", "unsupported MessagePack type byte 0xd4"),  # an extension type
        (b"\x81\x80\x01", "map key cannot be a map"),
        (b"\xa2\xff\xfe", "utf-8"),
    ],
)
def test_unpackb_rejects_bad_data(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        child.unpackb(data)


def test_packb_rejects_what_it_cannot_encode() -> None:
    with pytest.raises(TypeError, match="cannot encode set"):
        child.packb({1, 2})
    with pytest.raises(OverflowError):
        child.packb(2**64)
    with pytest.raises(OverflowError):
        child.packb(-(2**63) - 1)


# --- formats ---------------------------------------------------------------------------------


def test_the_format_names_are_those_of_message_format() -> None:
    assert tuple(f.value for f in MessageFormat) == child._FORMATS
    assert child.INPUT_PIPE_ENV_NAME == _model.INPUT_PIPE_ENV_NAME
    assert child.OUTPUT_PIPE_ENV_NAME == _model.OUTPUT_PIPE_ENV_NAME
    assert child.PROCESS_DATA_DIR_ENV_NAME == _model.PROCESS_DATA_DIR_ENV_NAME


@pytest.mark.parametrize("fmt", list(MessageFormat))
def test_child_encodings_are_what_the_parent_decodes(fmt: MessageFormat) -> None:
    value = {"a": [1, 2.5, None, True, "é\n"], "b": {"c": ""}}
    for name in (fmt, fmt.value):
        line = child._encode(value, child._format(name))
        assert Message(line).deserialize(fmt) == value
        assert child._decode(Message.from_serializable(value, fmt).to_bytes(), fmt.value) == value


def test_unknown_formats_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown message format 'yaml'"):
        child.messages("yaml")
    with pytest.raises(ValueError, match="unknown message format"):
        child.send(1, "msgpack")


def test_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROCESS_DATA_DIR", str(tmp_path))
    assert child.data_dir() == tmp_path
    monkeypatch.delenv("PROCESS_DATA_DIR")
    with pytest.raises(RuntimeError, match="PROCESS_DATA_DIR is not set"):
        child.data_dir()


def test_the_module_needs_only_the_standard_library(tmp_path: Path) -> None:
    """Loaded alone, without site-packages: no msgspec, no asyncio, no rest of corral."""
    code = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("corral_child", {str(CHILD_PY)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert module.unpackb(module.packb({{"a": [1, b"x"]}})) == {{"a": [1, b"x"]}}
for name in ("msgspec", "asyncio", "corral"):
    assert name not in sys.modules, name
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.stdout == "ok\n", result.stderr


# --- real children ---------------------------------------------------------------------------


def python_child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@pytest.mark.parametrize("fifo", [False, True], ids=["stdio", "fifo"])
@pytest.mark.parametrize("example", ["echo_child.py", "echo_child.sh"])
async def test_example_echo_children(spawn: Spawn, fifo: bool, example: str) -> None:
    path = EXAMPLES / example
    argv = [sys.executable, str(path)] if example.endswith(".py") else ["bash", str(path)]
    child_ = await spawn(argv, fifo=fifo)
    stream = child_.broadcast.subscribe()
    lines = [b"hello", b"", b"  tabs\tand spaces  ", b"\xff\xfe not utf-8", "ünï".encode()]
    for line in lines:
        await child_.send(line + b"\n")
    assert [m.to_bytes() for m in await take(stream, len(lines))] == lines
    big = b"z" * 300_000
    await child_.send(big)
    assert (await take(stream, 1))[0].to_bytes() == big


#: Decode each incoming message in the format argv[1], reply {"got": value}; report bad input.
REPLY_PY = """\
import sys
from corral import child
fmt = sys.argv[1]
it = child.messages(fmt)
while True:
    try:
        value = next(it)
    except StopIteration:
        break
    except ValueError as exc:
        child.send({"error": str(exc)[:20]}, fmt)
        continue
    child.send({"got": value}, fmt)
"""


@pytest.mark.parametrize("fifo", [False, True], ids=["stdio", "fifo"])
@pytest.mark.parametrize("fmt", list(MessageFormat))
async def test_formats_both_ways(spawn: Spawn, fifo: bool, fmt: MessageFormat) -> None:
    child_ = await spawn([*python_child(REPLY_PY), fmt.value], fifo=fifo)
    stream = child_.broadcast.subscribe().decoded(fmt)
    value = {"list": [1, -2, 3.5, None, False], "text": "multi\nline ✓", "empty": {}}
    await child_.send(Message.from_serializable(value, fmt))
    await child_.send("garbage!")  # the child reports it, and goes on
    await child_.send(Message.from_serializable([1, 2], fmt))
    first, error, last = await take(stream, 3)
    assert first == {"got": value}
    assert list(error) == ["error"]
    assert last == {"got": [1, 2]}


@settings(max_examples=10, deadline=None)
@given(
    batch=st.lists(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**63), 2**63 - 1)
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(),
            lambda inner: (
                st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)
            ),
            max_leaves=10,
        ),
        min_size=1,
        max_size=6,
    ),
    fmt=st.sampled_from(list(MessageFormat)),
)
def test_round_trip_through_a_python_child(batch: list[Any], fmt: MessageFormat) -> None:
    """Parent (msgspec) -> child (stdlib codec) -> parent, in every format."""

    async def run() -> None:
        spawner = Spawner(Path("/nonexistent"))
        try:
            broadcast = Broadcast(len(batch))
            stream = broadcast.subscribe().decoded(fmt)
            child_ = await spawner([*python_child(REPLY_PY), fmt.value], broadcast=broadcast)
            for value in batch:
                await child_.send(Message.from_serializable(value, fmt))
            assert await take(stream, len(batch)) == [{"got": value} for value in batch]
        finally:
            await spawner.cleanup()

    asyncio.run(run())


#: send() with every kind of argument, then a refused one; ends by exiting.
SEND_KINDS_PY = """\
from corral import child
child.send("text")
child.send(b"bytes")
child.send("with newline\\n")
child.send("")
child.send(b"\\xff raw")
try:
    child.send("two\\nlines")
except ValueError:
    child.send("refused")
try:
    child.send(3)
except TypeError:
    child.send("type refused")
"""


@pytest.mark.parametrize("fifo", [False, True], ids=["stdio", "fifo"])
async def test_send_kinds(spawn: Spawn, fifo: bool) -> None:
    child_ = await spawn(python_child(SEND_KINDS_PY), fifo=fifo, message_input=False)
    stream = child_.broadcast.subscribe().raw()
    assert await child_.exited() == 0
    assert await collect(stream) == [
        b"text",
        b"bytes",
        b"with newline",
        b"",
        b"\xff raw",
        b"refused",
        b"type refused",
    ]


#: Eight threads send 50 big messages each at once.
THREADS_PY = """\
import threading
from corral import child
def work(n):
    for _ in range(50):
        child.send(chr(65 + n) * 20000)
threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
for t in threads: t.start()
for t in threads: t.join()
"""


async def test_sends_from_many_threads_never_interleave(spawn: Spawn) -> None:
    broadcast = Broadcast(16)
    stream = broadcast.subscribe(lossless=True).strings()
    child_ = await spawn(python_child(THREADS_PY), fifo=True, broadcast=broadcast)
    got = await take(stream, 400)
    assert all(len(line) == 20000 and len(set(line)) == 1 for line in got)
    assert sorted(set(line[0] for line in got)) == list("ABCDEFGH")
    assert await child_.exited() == 0


async def test_messages_ends_with_stdin(tmp_path: Path) -> None:
    code = "from corral import child\nprint([m for m in child.messages('json')])"
    env = {k: v for k, v in os.environ.items() if k not in ("INPUT_PIPE", "OUTPUT_PIPE")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    out, _ = await asyncio.wait_for(proc.communicate(b'1\n"two"\n[3]'), TIMEOUT)
    assert out == b"[1, 'two', [3]]\n"
