"""What the tests compare corral against: plain-Python oracles and value strategies, shared."""

from __future__ import annotations

import dataclasses
from typing import TypedDict

import msgspec
from hypothesis import strategies as st

from corral import LogsQuery

# --- log lines ----------------------------------------------------------------------------------


def oracle_lines(content: bytes) -> list[str]:
    """The lines of ``content`` by the spec's rules, computed the obvious way."""
    if not content:
        return []
    pieces = content.split(b"\n")
    if content.endswith(b"\n"):
        pieces.pop()
    return [piece.decode("utf-8", errors="replace") for piece in pieces]


#: Every LogsQuery form.
FORMS = ("fetch_all", "with_limit", "with_offset", "with_offset_and_limit", "tail", "from_end")


def build(form: str, k: int, n: int) -> LogsQuery:
    """The query ``form``, taking its offset from ``k`` and its count from ``n``."""
    match form:
        case "fetch_all":
            return LogsQuery.fetch_all()
        case "with_limit":
            return LogsQuery.with_limit(n)
        case "with_offset":
            return LogsQuery.with_offset(k)
        case "with_offset_and_limit":
            return LogsQuery.with_offset_and_limit(k, n)
        case "tail":
            return LogsQuery.tail(n)
        case _:
            assert form == "from_end"
            return LogsQuery.from_end(k, n)


def expected(lines: list[str], form: str, k: int, n: int) -> list[str]:
    """What ``build(form, k, n)`` selects from ``lines``, by plain slicing."""
    total = len(lines)
    match form:
        case "fetch_all":
            return lines
        case "with_limit":
            return lines[:n]
        case "with_offset":
            return lines[k:]
        case "with_offset_and_limit":
            return lines[k : k + n]
        case "tail":
            return lines[max(0, total - n) :]
        case _:
            end = max(0, total - k)
            return lines[max(0, end - n) : end]


# --- message values -----------------------------------------------------------------------------

# Values every format carries exactly (JSON has no bytes, no NaN, and only str keys).
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)
MSGPACK_VALUES = st.recursive(
    _SCALARS | st.binary() | st.floats(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text() | st.integers(-1000, 1000), inner, max_size=5)
    ),
    max_leaves=20,
)


# --- typed decoding targets: one of each kind ---------------------------------------------------


@dataclasses.dataclass
class Job:
    id: int
    name: str
    tags: list[str] = dataclasses.field(default_factory=list)


class Point(TypedDict):
    x: int
    y: int


class Reading(msgspec.Struct):
    sensor: str
    value: float
