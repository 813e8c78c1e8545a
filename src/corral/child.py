"""Helpers for a Python child process spawned by corral; standard library only.

The child reads the messages its parent sends, writes messages back and finds its data dir::

    from corral import child

    for job in child.messages("json"):          # from INPUT_PIPE, or stdin when it is unset
        child.send({"done": job["id"]}, "json")  # to OUTPUT_PIPE, or stdout when it is unset
    scratch = child.data_dir() / "scratch.txt"

Formats are named by the string values of ``corral.MessageFormat`` (``"json"``,
``"msgpack-base64"``, ``"msgpack-hex"``), or by the enum itself. MessagePack is handled by a small
codec in this module (nil, bool, int, float, str, bin, array, map), so a child needs neither
``msgspec`` nor ``asyncio``. The module imports only the standard library (nothing from the rest
of corral), so a child without corral installed can use a copy of this file.

With named-pipe messaging the parent keeps its end of ``INPUT_PIPE`` open for the whole life of
the child, so :func:`messages` never reaches an end: the child stops when its own logic says so,
or when it is killed. With standard-I/O messaging stdout carries the messages: write diagnostics
to stderr.
"""

from __future__ import annotations

import _thread
import binascii
import os
import struct
import sys

# Light to import: a child pays for what it uses. ``json`` (with ``re`` and ``enum``, about half
# of a bare interpreter's start-up) is imported by the first JSON message, ``pathlib`` by
# ``data_dir()``, ``typing`` not at all (type checkers treat this name as
# ``typing.TYPE_CHECKING``), and the output lock comes from ``_thread`` (built in), not
# ``threading``, which imports ``functools`` and ``collections``; ``MessageIterator`` is an
# iterator by its methods (``collections.abc.Iterator`` recognizes it), without importing
# ``collections`` to subclass it. Measured by bench/child_import.py.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import IO, Any, Final

__all__ = ["MessageIterator", "data_dir", "messages", "packb", "send", "unpackb"]

# The names from corral._model and the values of corral.MessageFormat, repeated so that this
# file imports nothing but the standard library: a child may even carry a copy of it alone.
INPUT_PIPE_ENV_NAME: Final = "INPUT_PIPE"
OUTPUT_PIPE_ENV_NAME: Final = "OUTPUT_PIPE"
PROCESS_DATA_DIR_ENV_NAME: Final = "PROCESS_DATA_DIR"
_JSON: Final = "json"
_MSGPACK_BASE64: Final = "msgpack-base64"
_MSGPACK_HEX: Final = "msgpack-hex"
_FORMATS: Final = (_JSON, _MSGPACK_BASE64, _MSGPACK_HEX)


def _format(fmt: object) -> str | None:
    if fmt is None:
        return None
    # A str-valued enum member (corral.MessageFormat) is a str; so is the plain value.
    value = getattr(fmt, "value", fmt)
    if value not in _FORMATS:
        raise ValueError(f"unknown message format {fmt!r} (known: {', '.join(_FORMATS)})")
    return str(value)


# --- a minimal MessagePack codec ----------------------------------------------------------------


def packb(obj: object) -> bytes:
    """``obj`` as MessagePack, in the smallest encoding of each value (as msgspec writes it).

    Supported: ``None``, ``bool``, ``int`` (``-2**63`` to ``2**64-1``), ``float`` (as float
    64), ``str``, ``bytes``/``bytearray``/``memoryview`` (bin), ``list``/``tuple`` (array),
    ``dict`` (map).
    Anything else raises ``TypeError``; an int out of range raises ``OverflowError``.

    >>> packb({"a": [1, True, None]}).hex()
    '81a1619301c3c0'
    """
    out = bytearray()
    _pack(obj, out, 0)
    return bytes(out)


_MAX_DEPTH: Final = 512


def _pack(obj: object, out: bytearray, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply to encode")
    if obj is None:
        out.append(0xC0)
    elif obj is True:
        out.append(0xC3)
    elif obj is False:
        out.append(0xC2)
    elif isinstance(obj, int):
        _pack_int(int(obj), out)
    elif isinstance(obj, float):
        out.append(0xCB)
        out += struct.pack(">d", obj)
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        _pack_header(len(data), out, fix=(0xA0, 32), sized=(0xD9, 0xDA, 0xDB))
        out += data
    elif isinstance(obj, bytes | bytearray | memoryview):
        data = bytes(obj)
        _pack_header(len(data), out, fix=None, sized=(0xC4, 0xC5, 0xC6))
        out += data
    elif isinstance(obj, list | tuple):
        _pack_header(len(obj), out, fix=(0x90, 16), sized=(None, 0xDC, 0xDD))
        for item in obj:
            _pack(item, out, depth + 1)
    elif isinstance(obj, dict):
        _pack_header(len(obj), out, fix=(0x80, 16), sized=(None, 0xDE, 0xDF))
        for key, value in obj.items():
            _pack(key, out, depth + 1)
            _pack(value, out, depth + 1)
    else:
        raise TypeError(f"cannot encode {type(obj).__qualname__} as MessagePack")


def _pack_int(value: int, out: bytearray) -> None:
    if 0 <= value < 0x80:
        out.append(value)
    elif -32 <= value < 0:
        out.append(value & 0xFF)
    elif value >= 0:
        for code, fmt, limit in (
            (0xCC, ">B", 1 << 8),
            (0xCD, ">H", 1 << 16),
            (0xCE, ">I", 1 << 32),
        ):
            if value < limit:
                out.append(code)
                out += struct.pack(fmt, value)
                return
        if value >= 1 << 64:
            raise OverflowError(f"int too large for MessagePack: {value}")
        out.append(0xCF)
        out += struct.pack(">Q", value)
    else:
        for code, fmt, limit in (
            (0xD0, ">b", 1 << 7),
            (0xD1, ">h", 1 << 15),
            (0xD2, ">i", 1 << 31),
        ):
            if value >= -limit:
                out.append(code)
                out += struct.pack(fmt, value)
                return
        if value < -(1 << 63):
            raise OverflowError(f"int too small for MessagePack: {value}")
        out.append(0xD3)
        out += struct.pack(">q", value)


def _pack_header(
    length: int,
    out: bytearray,
    *,
    fix: tuple[int, int] | None,
    sized: tuple[int | None, int, int],
) -> None:
    if fix is not None and length < fix[1]:
        out.append(fix[0] | length)
    elif sized[0] is not None and length < 1 << 8:
        out.append(sized[0])
        out.append(length)
    elif length < 1 << 16:
        out.append(sized[1])
        out += struct.pack(">H", length)
    elif length < 1 << 32:
        out.append(sized[2])
        out += struct.pack(">I", length)
    else:
        raise ValueError(f"value too long for MessagePack: {length}")


def unpackb(data: bytes) -> Any:
    """The value MessagePack ``data`` holds: arrays become lists, map keys that are arrays tuples.

    Raises ``ValueError`` for truncated or malformed data, extension types, or trailing bytes.

    >>> unpackb(bytes.fromhex("81a1619301c3c0"))
    {'a': [1, True, None]}
    """
    view = memoryview(data)
    try:
        value, end = _unpack(view, 0, 0)
    except (IndexError, struct.error) as exc:
        raise ValueError(f"truncated MessagePack data ({len(view)} bytes)") from exc
    if end != len(view):
        raise ValueError(f"trailing bytes after MessagePack value: {len(view) - end}")
    return value


_SIMPLE: Final[dict[int, Any]] = {0xC0: None, 0xC2: False, 0xC3: True}
# code -> (struct format, size) for numbers with a fixed-size payload
_NUMBERS: Final[dict[int, tuple[str, int]]] = {
    0xCA: (">f", 4),
    0xCB: (">d", 8),
    0xCC: (">B", 1),
    0xCD: (">H", 2),
    0xCE: (">I", 4),
    0xCF: (">Q", 8),
    0xD0: (">b", 1),
    0xD1: (">h", 2),
    0xD2: (">i", 4),
    0xD3: (">q", 8),
}
# code -> (kind, size of the length field)
_SIZED: Final[dict[int, tuple[str, int]]] = {
    0xC4: ("bin", 1),
    0xC5: ("bin", 2),
    0xC6: ("bin", 4),
    0xD9: ("str", 1),
    0xDA: ("str", 2),
    0xDB: ("str", 4),
    0xDC: ("array", 2),
    0xDD: ("array", 4),
    0xDE: ("map", 2),
    0xDF: ("map", 4),
}
_LENGTH_FORMATS: Final = {1: ">B", 2: ">H", 4: ">I"}


def _unpack(view: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    if depth > _MAX_DEPTH:
        raise ValueError("MessagePack value nested too deeply")
    code = view[pos]
    pos += 1
    if code < 0x80:
        return code, pos
    if code >= 0xE0:
        return code - 0x100, pos
    if code in _SIMPLE:
        return _SIMPLE[code], pos
    if code in _NUMBERS:
        fmt, size = _NUMBERS[code]
        (number,) = struct.unpack_from(fmt, view, pos)
        return number, pos + size
    if 0xA0 <= code <= 0xBF:
        kind, length = "str", code & 0x1F
    elif 0x90 <= code <= 0x9F:
        kind, length = "array", code & 0x0F
    elif 0x80 <= code <= 0x8F:
        kind, length = "map", code & 0x0F
    elif code in _SIZED:
        kind, size = _SIZED[code]
        (length,) = struct.unpack_from(_LENGTH_FORMATS[size], view, pos)
        pos += size
    else:
        raise ValueError(f"unsupported MessagePack type byte 0x{code:02x} at offset {pos - 1}")
    if kind in ("str", "bin"):
        end = pos + length
        if end > len(view):
            raise ValueError(f"truncated MessagePack data ({len(view)} bytes)")
        chunk = bytes(view[pos:end])
        return (chunk.decode("utf-8") if kind == "str" else chunk), end
    if kind == "array":
        items = []
        for _ in range(length):
            item, pos = _unpack(view, pos, depth + 1)
            items.append(item)
        return items, pos
    result = {}
    for _ in range(length):
        key, pos = _unpack(view, pos, depth + 1)
        value, pos = _unpack(view, pos, depth + 1)
        result[_hashable(key)] = value
    return result, pos


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(_hashable(item) for item in key)
    if isinstance(key, dict):
        raise ValueError("a MessagePack map key cannot be a map")
    return key


# --- encoding and decoding one message ----------------------------------------------------------


def _encode(obj: object, fmt: str | None) -> bytes:
    try:
        return _encode_value(obj, fmt)
    except RecursionError:  # json.dumps of a deep value; raised as ValueError, as documented
        raise ValueError("value nested too deeply to encode") from None


def _encode_value(obj: object, fmt: str | None) -> bytes:
    if fmt is None:
        if isinstance(obj, str):
            # surrogateescape gives back the exact bytes of a line read by messages()
            return obj.encode("utf-8", "surrogateescape")
        if isinstance(obj, bytes | bytearray | memoryview):
            return bytes(obj)
        raise TypeError(
            f"without a format a message must be str or bytes, not {type(obj).__qualname__}"
        )
    if fmt == _JSON:
        import json

        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.encode("utf-8")
    packed = packb(obj)
    if fmt == _MSGPACK_BASE64:
        return binascii.b2a_base64(packed, newline=False)
    return binascii.b2a_hex(packed)


def _decode(line: bytes, fmt: str | None) -> Any:
    try:
        return _decode_value(line, fmt)
    except RecursionError:  # json.loads of a deep value: a bad message, not a crash
        raise ValueError(f"message nested too deeply to decode ({len(line)} bytes)") from None


def _decode_value(line: bytes, fmt: str | None) -> Any:
    if fmt is None:
        return line.decode("utf-8", "surrogateescape")
    if fmt == _JSON:
        import json

        return json.loads(line)
    text = line.strip()
    try:
        if fmt == _MSGPACK_BASE64:
            packed = binascii.a2b_base64(text, strict_mode=True)
        else:
            packed = binascii.a2b_hex(text)
    except binascii.Error as exc:
        raise ValueError(f"message is not valid {fmt}: {exc}") from exc
    return unpackb(packed)


# --- the child's side of the pipes --------------------------------------------------------------


class MessageIterator:
    """The incoming messages, one per line; see :func:`messages`.

    A message that cannot be decoded raises ``ValueError`` from ``next()`` for that message
    only; the next call goes on with the following one::

        it = child.messages("json")
        while True:
            try:
                job = next(it)
            except StopIteration:
                break
            except ValueError as exc:
                print("bad message:", exc, file=sys.stderr)
                continue
    """

    def __init__(self, source: IO[bytes], fmt: str | None, *, owned: bool) -> None:
        self._source = source
        self._fmt = fmt
        self._owned = owned

    def __iter__(self) -> MessageIterator:
        return self

    def __next__(self) -> Any:
        line = self._source.readline()
        if not line:
            self.close()
            raise StopIteration
        if line.endswith(b"\n"):
            line = line[:-1]
        return _decode(line, self._fmt)

    def close(self) -> None:
        """Close the input pipe (when this iterator opened it)."""
        if self._owned:
            self._source.close()


def messages(fmt: object = None) -> MessageIterator:
    """Iterate over the messages the parent sends, read from ``INPUT_PIPE`` (or stdin).

    Without ``fmt`` each item is the line as ``str``, without its ``\\n``; bytes that are not
    UTF-8 are kept as surrogate escapes, so ``send(line)`` writes back exactly the bytes read.
    With ``fmt`` (``"json"``, ``"msgpack-base64"``, ``"msgpack-hex"`` or a ``MessageFormat``)
    each item is the decoded value.

    >>> for line in messages():        # doctest: +SKIP
    ...     send(line.upper())
    """
    fmt_value = _format(fmt)
    path = os.environ.get(INPUT_PIPE_ENV_NAME)
    if path:
        return MessageIterator(open(path, "rb"), fmt_value, owned=True)
    return MessageIterator(sys.stdin.buffer, fmt_value, owned=False)


_output: IO[bytes] | None = None
_output_lock = _thread.allocate_lock()


def _output_file() -> IO[bytes]:
    global _output
    if _output is None:
        path = os.environ.get(OUTPUT_PIPE_ENV_NAME)
        if path:
            _output = open(path, "wb")  # noqa: SIM115 - kept open for the life of the child
        else:
            sys.stdout.flush()  # text printed before must not come after this message
            _output = sys.stdout.buffer
    return _output


def send(obj: object, fmt: object = None) -> None:
    """Write one message to the parent, on ``OUTPUT_PIPE`` (or stdout), and flush it.

    Without ``fmt``, ``obj`` is a ``str`` or ``bytes`` line (a trailing ``\\n`` is optional).
    ``""`` sends an empty message, unlike ``send_message`` in the parent, where an empty message
    sends nothing: a child echoing its input must be able to echo an empty line. With ``fmt``
    (``"json"``, ``"msgpack-base64"``, ``"msgpack-hex"`` or a ``MessageFormat``), ``obj`` is
    serialized. A newline inside the message raises ``ValueError``; so does a value the format
    cannot encode (``TypeError`` for an unsupported type). Safe to call from several threads:
    messages never interleave.

    >>> send({"progress": 0.5}, "json")   # doctest: +SKIP
    """
    data = _encode(obj, _format(fmt))
    if data.endswith(b"\n"):
        data = data[:-1]
    if b"\n" in data:
        raise ValueError("a message must be a single line: it contains a newline")
    with _output_lock:
        out = _output_file()
        out.write(data + b"\n")
        out.flush()


def data_dir() -> Path:
    """The child's private data dir, from ``PROCESS_DATA_DIR`` (``RuntimeError`` if unset)."""
    path = os.environ.get(PROCESS_DATA_DIR_ENV_NAME)
    if not path:
        raise RuntimeError(
            f"{PROCESS_DATA_DIR_ENV_NAME} is not set: this process was not spawned by corral"
        )
    from pathlib import Path

    return Path(path)
