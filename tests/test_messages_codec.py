"""Message, MessageFormat and the outgoing framing: the codec alone, no processes."""

from __future__ import annotations

import binascii
import math
from typing import Any

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from oracles import JSON_VALUES, MSGPACK_VALUES, Job, Point, Reading

from corral import child
from corral._errors import SerdeError
from corral._messages import Message, MessageFormat, as_format, encode_outgoing

ALL_FORMATS = list(MessageFormat)


# --- Message --------------------------------------------------------------------------------


def test_message_wraps_bytes_and_is_immutable() -> None:
    msg = Message.from_bytes(bytearray(b"abc"))
    assert msg.to_bytes() == b"abc"
    assert type(msg.to_bytes()) is bytes
    assert bytes(msg) == b"abc"
    assert len(msg) == 3
    assert msg == Message.from_string("abc")
    assert hash(msg) == hash(Message(b"abc"))
    assert msg != b"abc"
    with pytest.raises(AttributeError):
        msg._data = b"x"
    with pytest.raises(AttributeError):
        msg.other = 1


def test_to_string_is_strict_utf8() -> None:
    assert Message.from_string("héllo ✓").to_string() == "héllo ✓"
    with pytest.raises(SerdeError, match="not valid UTF-8"):
        Message(b"ok \xff\xfe").to_string()
    with pytest.raises(SerdeError, match="UTF-8"):
        Message.from_string("lone \ud800 surrogate")


def test_repr_of_a_big_message_is_short() -> None:
    assert repr(Message(b"hi")) == "Message(b'hi')"
    text = repr(Message(b"x" * 10_000))
    assert len(text) < 120
    assert "10000 bytes" in text


def test_format_values_are_plain_strings() -> None:
    assert [f.value for f in MessageFormat] == ["json", "msgpack-base64", "msgpack-hex"]
    assert MessageFormat("json") is MessageFormat.JSON
    assert isinstance(MessageFormat.MESSAGE_PACK_HEX, str)
    assert str(MessageFormat.MESSAGE_PACK_HEX) == "msgpack-hex"
    assert as_format("msgpack-base64") is MessageFormat.MESSAGE_PACK_BASE64
    with pytest.raises(SerdeError, match="unknown message format 'yaml'"):
        as_format("yaml")
    with pytest.raises(SerdeError, match="unknown message format"):
        Message(b"1").deserialize("xml")


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_encodings_are_one_line_of_text(fmt: MessageFormat) -> None:
    value = {"text": "line one\nline two\r\n", "bytes": "\u2028\u2029", "n": [1, 2.5, None]}
    data = Message.from_serializable(value, fmt).to_bytes()
    assert b"\n" not in data
    assert b"\r" not in data
    data.decode("ascii" if fmt is not MessageFormat.JSON else "utf-8")
    assert Message(data).deserialize(fmt) == value


def test_known_encodings() -> None:
    value = {"a": [1, True, None]}
    assert Message.from_serializable(value, "json").to_bytes() == b'{"a":[1,true,null]}'
    assert Message.from_serializable(value, "msgpack-hex").to_bytes() == b"81a1619301c3c0"
    assert Message.from_serializable(value, "msgpack-base64").to_bytes() == b"gaFhkwHDwA=="


@settings(max_examples=60, deadline=None)
@given(value=JSON_VALUES, fmt=st.sampled_from(ALL_FORMATS))
def test_round_trip_json_compatible_values(value: Any, fmt: MessageFormat) -> None:
    message = Message.from_serializable(value, fmt)
    assert b"\n" not in message.to_bytes()
    assert message.deserialize(fmt) == value


@settings(max_examples=60, deadline=None)
@given(
    value=MSGPACK_VALUES,
    fmt=st.sampled_from([MessageFormat.MESSAGE_PACK_BASE64, MessageFormat.MESSAGE_PACK_HEX]),
)
def test_round_trip_MSGPACK_VALUES(value: Any, fmt: MessageFormat) -> None:
    decoded = Message.from_serializable(value, fmt).deserialize(fmt)
    assert _same(decoded, value)


def _same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b) and type(a) is type(b)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_typed_decoding(fmt: MessageFormat) -> None:
    job = Job(7, "build", ["fast"])
    assert Message.from_serializable(job, fmt).deserialize(fmt, Job) == job
    point: Point = {"x": 1, "y": 2}
    assert Message.from_serializable(point, fmt).deserialize(fmt, Point) == point
    reading = Reading("t1", 21.5)
    assert Message.from_serializable(reading, fmt).deserialize(fmt, Reading) == reading
    assert Message.from_serializable([1, 2], fmt).deserialize(fmt, list[int]) == [1, 2]
    assert Message.from_serializable(3, fmt).deserialize(fmt, int) == 3


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_shape_mismatch_says_what_did_not_match(fmt: MessageFormat) -> None:
    message = Message.from_serializable({"id": "7", "name": "x"}, fmt)
    with pytest.raises(
        SerdeError, match=r"does not match Job: Expected `int`, got `str` - at `\$.id`"
    ):
        message.deserialize(fmt, Job)
    with pytest.raises(
        SerdeError, match=r"does not match Point: Object missing required field `y`"
    ):
        Message.from_serializable({"x": 1}, fmt).deserialize(fmt, Point)
    with pytest.raises(SerdeError, match="Expected `int`, got `str`"):
        Message.from_serializable(["a"], fmt).deserialize(fmt, list[int])
    with pytest.raises(SerdeError) as info:
        message.deserialize(fmt, Reading)
    assert isinstance(info.value.__cause__, msgspec.ValidationError)


@pytest.mark.parametrize(
    ("fmt", "data", "reason"),
    [
        ("json", b'{"a": ', "not valid json"),
        ("json", b"garbage", "not valid json"),
        ("msgpack-base64", b"gaFhkwHDw", "not valid msgpack-base64"),  # bad padding
        ("msgpack-base64", b"gaFh", "not valid msgpack-base64"),  # a truncated value
        ("msgpack-base64", b"@@@@", "not valid msgpack-base64"),
        ("msgpack-hex", b"81a16193", "not valid msgpack-hex"),  # truncated
        ("msgpack-hex", b"8", "not valid msgpack-hex"),
        ("msgpack-hex", b"zz", "not valid msgpack-hex"),
    ],
)
def test_malformed_messages_raise_serde_error(fmt: str, data: bytes, reason: str) -> None:
    with pytest.raises(SerdeError, match=reason):
        Message(data).deserialize(fmt)


def test_text_encoded_msgpack_tolerates_surrounding_whitespace() -> None:
    assert Message(b" 81a1619301c3c0\r").deserialize("msgpack-hex") == {"a": [1, True, None]}
    assert Message(b"gaFhkwHDwA==\r").deserialize("msgpack-base64") == {"a": [1, True, None]}


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_serialization_failures_raise_serde_error(fmt: MessageFormat) -> None:
    with pytest.raises(SerdeError, match="cannot serialize object"):
        Message.from_serializable(object(), fmt)
    if fmt is not MessageFormat.JSON:  # JSON numbers have no size limit
        with pytest.raises(SerdeError, match="cannot serialize"):
            Message.from_serializable({"big": 2**70}, fmt)


def test_decoder_for_an_unsupported_type_is_a_serde_error() -> None:
    with pytest.raises(
        SerdeError, match=r"cannot decode into .*Job \| .*Reading: Type unions may not"
    ):
        Message(b"1").deserialize("json", type=Job | Reading)


def test_decoders_are_cached_per_format_and_type() -> None:
    from corral._messages import _cached_decoder

    _cached_decoder.cache_clear()
    for _ in range(5):
        Message(b"[1]").deserialize("json", list[int])
        Message(b"[1]").deserialize("json")
        Message(b"9101").deserialize("msgpack-hex", list[int])
    info = _cached_decoder.cache_info()
    assert info.misses == 3
    assert info.hits == 12


# --- the outgoing framing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        ("hello", b"hello\n"),
        (b"hello", b"hello\n"),
        (bytearray(b"hello"), b"hello\n"),
        (Message(b"hello"), b"hello\n"),
        ("hello\n", b"hello\n"),
        ("", b""),
        (b"", b""),
        (Message(b""), b""),
        ("\n", b"\n"),
        ("crlf\r\n", b"crlf\r\n"),
        ("héllo", "héllo\n".encode()),
    ],
)
def test_encode_outgoing(message: Message | str | bytes, wire: bytes) -> None:
    assert encode_outgoing(message) == wire


@pytest.mark.parametrize("message", ["a\nb", b"a\nb\n", "\n\n", Message(b"\nx")])
def test_encode_outgoing_rejects_inner_newlines(message: Message | str | bytes) -> None:
    with pytest.raises(SerdeError, match="a message must be a single line"):
        encode_outgoing(message)


def test_encode_outgoing_rejects_other_types() -> None:
    with pytest.raises(TypeError, match="Message, str or bytes"):
        encode_outgoing(42)  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(st.binary())
def test_encode_outgoing_is_one_line(data: bytes) -> None:
    body = data.rstrip(b"\n")
    if b"\n" in body or data.count(b"\n") > 1:
        with pytest.raises(SerdeError):
            encode_outgoing(data)
        return
    wire = encode_outgoing(data)
    if not data:
        assert wire == b""
    else:
        assert wire.endswith(b"\n")
        assert wire.count(b"\n") == 1
        assert wire[:-1] == body


# --- values nested too deeply ----------------------------------------------------------------

#: How one level of nesting opens, per format (the MessagePack ones before text encoding): an
#: array, or a map holding the rest under key "a".
OPENERS = {
    MessageFormat.JSON: (b"[", b'{"a":'),
    MessageFormat.MESSAGE_PACK_BASE64: (b"\x91", b"\x81\xa1a"),
    MessageFormat.MESSAGE_PACK_HEX: (b"\x91", b"\x81\xa1a"),
}
CLOSERS = {b"[": b"]", b'{"a":': b"}"}


def deep_message(fmt: MessageFormat, opener: int, depth: int, closed: bool) -> Message:
    """A message holding a value nested ``depth`` levels deep (unfinished unless ``closed``)."""
    start = OPENERS[fmt][opener]
    if fmt is MessageFormat.JSON:
        end = CLOSERS[start] * depth if closed else b""
        return Message(start * depth + b"0" + end)
    packed = start * depth + b"\xc0"
    if fmt is MessageFormat.MESSAGE_PACK_HEX:
        return Message(packed.hex().encode())
    return Message(binascii.b2a_base64(packed, newline=False))


def nested(depth: int, kind: str) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


@settings(max_examples=25, deadline=None)
@given(
    fmt=st.sampled_from(ALL_FORMATS),
    opener=st.sampled_from([0, 1]),
    depth=st.integers(min_value=5_000, max_value=100_000),
    closed=st.booleans(),
    type=st.sampled_from([object, Any, list[Any], dict[str, Any]]),
)
def test_a_value_nested_too_deeply_to_decode_is_a_serde_error(
    fmt: MessageFormat, opener: int, depth: int, closed: bool, type: Any
) -> None:
    message = deep_message(fmt, opener, depth, closed)
    with pytest.raises(SerdeError, match=r"nested too deeply|does not match"):
        message.deserialize(fmt, type)
    # The decoder is still fine for the next message.
    assert Message.from_serializable([1], fmt).deserialize(fmt, type=list[int]) == [1]


@example(fmt=MessageFormat.JSON, kind="list", depth=100_000)
@settings(max_examples=15, deadline=None)
@given(
    fmt=st.sampled_from(ALL_FORMATS),
    kind=st.sampled_from(["list", "dict"]),
    depth=st.integers(min_value=5_000, max_value=100_000),
)
def test_a_value_nested_too_deeply_to_encode_is_a_serde_error(
    fmt: MessageFormat, kind: str, depth: int
) -> None:
    with pytest.raises(SerdeError, match="nested too deeply"):
        Message.from_serializable(nested(depth, kind), fmt)


def test_the_child_codec_refuses_deep_values_with_value_error() -> None:
    deep = nested(100_000, "list")
    for fmt in ALL_FORMATS:
        with pytest.raises(ValueError, match="nested too deeply"):
            child._encode(deep, fmt.value)
        for opener in (0, 1):
            line = deep_message(fmt, opener, 100_000, closed=True).to_bytes()
            with pytest.raises(ValueError, match="nested too deeply"):
                child._decode(line, fmt.value)


# --- floats that are not finite ------------------------------------------------------------------

NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf, -math.nan])
# Values that may hold NaN or infinities anywhere, also inside typed values.
MAYBE_NON_FINITE = st.recursive(
    st.none() | st.booleans() | st.integers(-100, 100) | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=3), inner, max_size=4)
        | st.builds(Reading, sensor=st.text(max_size=3), value=st.floats())
    ),
    max_leaves=12,
)


def has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, Reading):
        return has_non_finite(value.value)
    if isinstance(value, dict):
        return any(map(has_non_finite, value.values()))
    if isinstance(value, list):
        return any(map(has_non_finite, value))
    return False


@example(value=[None, "null", math.nan])
@example(value={"null": Reading("s", -math.inf)})
@settings(max_examples=200, deadline=None)
@given(value=MAYBE_NON_FINITE)
def test_json_refuses_nan_and_infinities_instead_of_writing_null(value: Any) -> None:
    builtins_value = msgspec.to_builtins(value)
    if has_non_finite(value):
        with pytest.raises(SerdeError, match="JSON cannot hold"):
            Message.from_serializable(value, MessageFormat.JSON)
        with pytest.raises(ValueError, match="not JSON compliant"):
            child._encode(builtins_value, "json")
    else:  # nothing is changed: what comes back is what went in
        decoded = Message.from_serializable(value, MessageFormat.JSON).deserialize("json")
        assert decoded == builtins_value
        assert child._decode(child._encode(builtins_value, "json"), "json") == builtins_value


@settings(max_examples=100, deadline=None)
@given(
    value=MAYBE_NON_FINITE,
    fmt=st.sampled_from([MessageFormat.MESSAGE_PACK_BASE64, MessageFormat.MESSAGE_PACK_HEX]),
)
def test_msgpack_carries_nan_and_infinities_exactly(value: Any, fmt: MessageFormat) -> None:
    builtins_value = msgspec.to_builtins(value)
    decoded = Message.from_serializable(value, fmt).deserialize(fmt)
    assert _same(decoded, builtins_value)
    assert _same(child._decode(child._encode(builtins_value, fmt.value), fmt.value), decoded)
    for number in (math.nan, math.inf, -math.inf):
        assert _same(Message.from_serializable(number, fmt).deserialize(fmt, float), number)
