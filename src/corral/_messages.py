"""Messages and their formats: what travels, one line at a time, between parent and child.

A message is one line on the wire. :class:`Message` wraps its bytes (without the ``\\n``) and
converts them to text or to typed values; :class:`MessageFormat` names the serialization formats.
MessagePack is text-encoded (base64 or hex) so that an encoded value never contains a newline and
a shell script can still ``read`` it as one line.

>>> msg = Message.from_serializable({"task": 1}, MessageFormat.JSON)
>>> msg.to_string()
'{"task":1}'
>>> msg.deserialize(MessageFormat.JSON)
{'task': 1}
"""

from __future__ import annotations

import binascii
import builtins
import enum
import functools
import math
from collections.abc import Callable
from typing import Any, Final, TypeVar, final, overload

import msgspec

from ._errors import SerdeError

__all__ = ["Message", "MessageFormat", "encode_outgoing"]

_T = TypeVar("_T")
_Decoder = msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any]


class MessageFormat(enum.StrEnum):
    """How a value is serialized into a message.

    The values are plain strings, so code that cannot import this enum (``corral.child``, a
    configuration file) can name a format with ``"json"``, ``"msgpack-base64"`` or
    ``"msgpack-hex"``; ``MessageFormat("json") is MessageFormat.JSON``.
    """

    #: Compact JSON (newlines inside strings are escaped, so it is always one line).
    JSON = "json"
    #: MessagePack, then standard base64 with padding.
    MESSAGE_PACK_BASE64 = "msgpack-base64"
    #: MessagePack, then lowercase hex.
    MESSAGE_PACK_HEX = "msgpack-hex"


# msgspec encoders are stateless and reusable; building one costs more than a small encode.
_JSON_ENCODER: Final = msgspec.json.Encoder()
_MSGPACK_ENCODER: Final = msgspec.msgpack.Encoder()
# Text-encoded MessagePack tolerates surrounding whitespace (a "\r" from a CRLF writer, say).
_WHITESPACE: Final = b" \t\r\n"


@functools.lru_cache(maxsize=256)
def _cached_decoder(fmt: MessageFormat, type: Any) -> _Decoder:
    if fmt is MessageFormat.JSON:
        return msgspec.json.Decoder(type)
    return msgspec.msgpack.Decoder(type)


def _decoder(fmt: MessageFormat, type: Any) -> _Decoder:
    build: Callable[[MessageFormat, Any], _Decoder] = _cached_decoder
    try:
        hash(type)
    except TypeError:  # rare (an Annotated holding a dict, say): built every time
        build = _cached_decoder.__wrapped__
    try:
        return build(fmt, type)
    except TypeError as exc:  # msgspec does not support this type
        raise SerdeError(f"cannot decode into {_type_name(type)}: {exc}") from exc


def _type_name(type: Any) -> str:
    if isinstance(type, builtins.type) and not getattr(type, "__args__", None):
        return type.__qualname__
    return repr(type)


def as_format(fmt: MessageFormat | str) -> MessageFormat:
    """``fmt`` as a :class:`MessageFormat` (``SerdeError`` if it names none)."""
    if isinstance(fmt, MessageFormat):
        return fmt  # the Enum call's lookup is slow and needless here
    try:
        return MessageFormat(fmt)
    except ValueError:
        known = ", ".join(repr(f.value) for f in MessageFormat)
        raise SerdeError(f"unknown message format {fmt!r} (known: {known})") from None


@final
class Message:
    """The bytes of one message, without the line's ``\\n``; immutable, hashable.

    A received message is exactly the bytes of the child's line. Build one to send with
    :meth:`from_bytes`, :meth:`from_string` or :meth:`from_serializable`; ``send_message`` also
    takes ``str`` and ``bytes`` directly.

    >>> Message.from_string("héllo").to_bytes()
    b'h\\xc3\\xa9llo'
    >>> Message.from_bytes(b"\\xff").to_string()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    corral.SerdeError: message is not valid UTF-8: ...
    """

    __slots__ = ("_data",)

    _data: bytes

    def __init__(self, data: bytes) -> None:
        object.__setattr__(self, "_data", data)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Message is immutable")

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Message:
        """A message holding a copy of ``data``."""
        return cls(bytes(data))

    @classmethod
    def from_string(cls, text: str) -> Message:
        """A message holding ``text`` encoded as UTF-8 (``SerdeError`` for lone surrogates)."""
        try:
            return cls(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise SerdeError(f"text cannot be encoded as UTF-8: {exc}") from exc

    @classmethod
    def from_serializable(cls, obj: object, fmt: MessageFormat | str) -> Message:
        """``obj`` serialized in ``fmt``: builtins, dataclasses, TypedDicts, ``msgspec.Struct``...

        >>> Message.from_serializable([1, "a"], MessageFormat.MESSAGE_PACK_HEX).to_string()
        '9201a161'

        Raises :class:`SerdeError` if ``obj`` (or something inside it) cannot be serialized,
        and for a value nested too deeply to encode. JSON has no way to write NaN or an
        infinity: a float that is not finite raises :class:`SerdeError` in JSON, rather than
        come out as ``null``; the MessagePack formats carry it exactly.

        >>> Message.from_serializable({"x": float("nan")}, "json")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        corral.SerdeError: cannot serialize dict as json: JSON cannot hold nan ...
        """
        fmt = as_format(fmt)
        try:
            if fmt is MessageFormat.JSON:
                data = _JSON_ENCODER.encode(obj)
                # msgspec writes NaN and infinities as null: the only place one can hide.
                if b"null" in data:
                    _check_finite(obj)
                return cls(data)
            packed = _MSGPACK_ENCODER.encode(obj)
        except (msgspec.EncodeError, TypeError, ValueError, OverflowError) as exc:
            raise SerdeError(
                f"cannot serialize {type(obj).__qualname__} as {fmt.value}: {exc}"
            ) from exc
        except RecursionError:
            raise SerdeError(
                f"cannot serialize {type(obj).__qualname__} as {fmt.value}: nested too deeply"
            ) from None
        if fmt is MessageFormat.MESSAGE_PACK_BASE64:
            return cls(binascii.b2a_base64(packed, newline=False))
        return cls(binascii.b2a_hex(packed))

    def to_bytes(self) -> bytes:
        """The raw bytes."""
        return self._data

    def to_string(self) -> str:
        """The bytes decoded as UTF-8, strictly: invalid UTF-8 raises :class:`SerdeError`."""
        try:
            return self._data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SerdeError(f"message is not valid UTF-8: {exc}") from exc

    @overload
    def deserialize(self, fmt: MessageFormat | str, type: builtins.type[_T]) -> _T: ...

    @overload
    def deserialize(self, fmt: MessageFormat | str, type: object = ...) -> Any: ...

    def deserialize(self, fmt: MessageFormat | str, type: object = object) -> Any:
        """The value this message holds in ``fmt``, checked against ``type``.

        ``type`` may be a builtin or a generic alias (``int``, ``list[str]``), a dataclass, a
        ``TypedDict``, a ``msgspec.Struct``...; the default ``object`` accepts any value. A
        malformed message, or a value of the wrong shape, raises :class:`SerdeError` saying what
        did not match and where.

        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Job:
        ...     id: int
        >>> Message.from_string('{"id": 7}').deserialize("json", Job)
        Job(id=7)
        >>> Message.from_string('{"id": "7"}').deserialize("json", Job)
        Traceback (most recent call last):
        ...
        corral.SerdeError: message does not match Job: Expected `int`, got `str` - at `$.id`
        """
        fmt = as_format(fmt)
        decoder = _decoder(fmt, type)
        data = self._data
        if fmt is not MessageFormat.JSON:
            try:
                if fmt is MessageFormat.MESSAGE_PACK_BASE64:
                    data = binascii.a2b_base64(data.strip(_WHITESPACE), strict_mode=True)
                else:
                    data = binascii.a2b_hex(data.strip(_WHITESPACE))
            except (binascii.Error, ValueError) as exc:
                raise SerdeError(f"message is not valid {fmt.value}: {exc}") from exc
        try:
            return decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise SerdeError(f"message does not match {_type_name(type)}: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise SerdeError(f"message is not valid {fmt.value}: {exc}") from exc
        except RecursionError:  # no traceback chain: it would be as deep as the value
            raise SerdeError(
                f"message cannot be decoded from {fmt.value}: nested too deeply "
                f"({len(self._data)} bytes)"
            ) from None

    def __bytes__(self) -> bytes:
        return self._data

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self._data == other._data

    def __hash__(self) -> int:
        return hash(self._data)

    def __repr__(self) -> str:
        if len(self._data) > 80:
            return f"Message({self._data[:60]!r}... ({len(self._data)} bytes))"
        return f"Message({self._data!r})"


def _check_finite(obj: object) -> None:
    """Raise ``ValueError`` if a float that is not finite is a value somewhere in ``obj``.

    Walks the builtins msgspec makes of ``obj`` (dataclasses, structs... become dicts and
    lists; floats stay floats) with a stack, so depth costs no recursion.
    """
    stack = [msgspec.to_builtins(obj)]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"JSON cannot hold {item!r} (it would be written as null)")
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def encode_outgoing(message: Message | str | bytes | bytearray | memoryview) -> bytes:
    """The bytes ``send_message`` writes for ``message``: one line, ``\\n``-terminated.

    A ``\\n`` is appended when missing; an empty message gives ``b""`` (nothing is sent). A
    message that already ends with ``\\n`` is sent as it is, so ``"\\n"`` sends one empty line.
    A newline anywhere else would split the message in two on the wire, so it raises
    :class:`SerdeError` (a ``ValueError``).

    >>> encode_outgoing("hello")
    b'hello\\n'
    >>> encode_outgoing(b"")
    b''
    >>> encode_outgoing("a\\nb")
    Traceback (most recent call last):
    ...
    corral.SerdeError: a message must be a single line: found a newline at byte 1 of 3
    """
    # The exact types first: a type check costs less than isinstance of a union.
    cls = type(message)
    data: bytes
    if cls is bytes:
        data = message  # type: ignore[assignment]  # the type check narrows it
    elif cls is Message:
        data = message._data  # type: ignore[union-attr]
    elif isinstance(message, Message):
        data = message.to_bytes()
    elif isinstance(message, str):
        data = Message.from_string(message).to_bytes()
    elif isinstance(message, bytes | bytearray | memoryview):
        data = bytes(message)
    else:
        raise TypeError(
            f"a message must be a Message, str or bytes, not {type(message).__qualname__}"
        )
    if not data:
        return b""
    newline = data.find(b"\n")
    if newline == len(data) - 1:
        return data
    if newline >= 0:
        raise SerdeError(
            f"a message must be a single line: found a newline at byte {newline} of {len(data)}"
        )
    return data + b"\n"
