"""LogsQuery and LogFile.query: every query form against an independent oracle.

The oracle is plain Python on the whole content: ``content.split(b"\\n")``, dropping the empty
piece after a final newline, each piece decoded with ``errors="replace"``. Not
``str.splitlines``, which would also split on ``\\r``.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracles import FORMS, build, expected, oracle_lines

import corral._logs as logs_module
from corral._logs import LogFile, LogsQuery, split_lines

# --- the oracle ---------------------------------------------------------------------------------


# --- strategies -----------------------------------------------------------------------------

# Pieces that make the edge cases likely: empty lines, \r, \r\n, invalid and truncated UTF-8,
# valid multi-byte characters, and lines longer than the small block sizes used below.
FRAGMENTS = st.one_of(
    st.sampled_from(
        [
            b"\n",
            b"\n",
            b"\r",
            b"\r\n",
            b"a",
            b"xyz",
            b"\xff",
            b"\xe2\x82",
            b"\xe2\x82\xac",
            b"\xc3\xa9",
            b"\xf0\x9f\x98",
            b"\x00",
            b"L" * 70,
        ]
    ),
    st.binary(max_size=6),
)
CONTENTS = st.lists(FRAGMENTS, max_size=40).map(b"".join)
QUERIES = st.lists(
    st.tuples(st.sampled_from(FORMS), st.integers(0, 30), st.integers(0, 30)),
    min_size=1,
    max_size=12,
)
BLOCK_SIZES = st.sampled_from([1, 2, 3, 5, 16, 64, 65536])
INDEX_STEPS = st.sampled_from([1, 2, 3, 7, 1000])
SCAN_SIZES = st.sampled_from([1, 2, 5, 64, 1 << 20])

FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def small_log_file(path: Path, block_size: int, index_step: int, scan_size: int) -> LogFile:
    return LogFile(path, block_size=block_size, index_step=index_step, scan_size=scan_size)


# --- LogsQuery --------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_repr_rebuilds_an_equal_query(form: str) -> None:
    q = build(form, 3, 5)
    rebuilt = eval(repr(q), {"LogsQuery": LogsQuery})
    assert rebuilt == q
    assert hash(rebuilt) == hash(q)
    assert repr(q).startswith(f"LogsQuery.{form}(")


def test_repr_of_an_end_query_without_limit_rebuilds() -> None:
    q = LogsQuery(anchor="end", offset=2, limit=None)
    assert eval(repr(q), {"LogsQuery": LogsQuery}) == q


def test_queries_are_frozen_and_hashable() -> None:
    q = LogsQuery.tail(3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.offset = 1  # type: ignore[misc]
    assert {LogsQuery.tail(3), LogsQuery.tail(3), LogsQuery.from_end(0, 3)} == {q}
    assert LogsQuery.with_limit(2) == LogsQuery.with_offset_and_limit(0, 2)
    assert LogsQuery.tail(2) != LogsQuery.with_limit(2)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: LogsQuery.with_limit(-1), "limit"),
        (lambda: LogsQuery.with_offset(-1), "offset"),
        (lambda: LogsQuery.with_offset_and_limit(-2, 1), "offset"),
        (lambda: LogsQuery.with_offset_and_limit(2, -1), "limit"),
        (lambda: LogsQuery.tail(-1), "limit"),
        (lambda: LogsQuery.from_end(-1, 1), "offset"),
        (lambda: LogsQuery.from_end(1, -5), "limit"),
    ],
)
def test_negative_arguments_raise_value_error(make: object, field: str) -> None:
    assert callable(make)
    with pytest.raises(ValueError, match=rf"LogsQuery {field} must be >= 0"):
        make()


def test_non_int_arguments_raise_type_error() -> None:
    with pytest.raises(TypeError, match="must be an int"):
        LogsQuery.tail(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be an int"):
        LogsQuery.with_offset(True)
    with pytest.raises(ValueError, match="anchor"):
        LogsQuery(anchor="middle", offset=0, limit=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["block_size", "index_step", "scan_size"])
def test_log_file_rejects_non_positive_sizes(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        LogFile(tmp_path / "x.log", **{name: 0})


# --- the line rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "lines"),
    [
        (b"", []),
        (b"a\n", ["a"]),
        (b"a\n\n", ["a", ""]),
        (b"a", ["a"]),
        (b"\n", [""]),
        (b"\n\n", ["", ""]),
        (b"x\r\ny\rz", ["x\r", "y\rz"]),
        (b"ok\n\xff\xfe\nend", ["ok", "\ufffd\ufffd", "end"]),
        (b"\xe2\x82\n\xe2\x82\xac\n", ["\ufffd", "\u20ac"]),
    ],
)
def test_line_rules(tmp_path: Path, content: bytes, lines: list[str]) -> None:
    path = tmp_path / "out.log"
    path.write_bytes(content)
    assert LogFile(path).query(LogsQuery.fetch_all()) == lines
    assert split_lines(content) == lines
    assert oracle_lines(content) == lines


@given(content=CONTENTS)
@settings(max_examples=300, deadline=None)
def test_split_lines_matches_the_oracle(content: bytes) -> None:
    assert split_lines(content) == oracle_lines(content)


# --- each form, example-based -------------------------------------------------------------------

SAMPLE = b"zero\none\r\n\ntwo \xff\nthree\n\xe2\x82\xac four\n\n\nfive-unterminated"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("k", [0, 1, 3, 8, 9, 50])
@pytest.mark.parametrize("n", [0, 1, 2, 5, 9, 50])
@pytest.mark.parametrize(("block_size", "index_step"), [(1, 1), (4, 2), (65536, 1000)])
def test_each_form_matches_the_oracle(
    tmp_path: Path, form: str, k: int, n: int, block_size: int, index_step: int
) -> None:
    path = tmp_path / "out.log"
    path.write_bytes(SAMPLE)
    log = LogFile(path, block_size=block_size, index_step=index_step, scan_size=block_size)
    lines = oracle_lines(SAMPLE)
    assert log.query(build(form, k, n)) == expected(lines, form, k, n)
    assert build(form, k, n).select(lines) == expected(lines, form, k, n)


# --- properties ---------------------------------------------------------------------------------


@given(
    content=CONTENTS,
    queries=QUERIES,
    block_size=BLOCK_SIZES,
    index_step=INDEX_STEPS,
    scan_size=SCAN_SIZES,
)
@FAST
def test_random_queries_match_the_oracle(
    tmp_path: Path,
    content: bytes,
    queries: list[tuple[str, int, int]],
    block_size: int,
    index_step: int,
    scan_size: int,
) -> None:
    path = tmp_path / "prop.log"
    path.write_bytes(content)
    log = small_log_file(path, block_size, index_step, scan_size)
    lines = oracle_lines(content)
    for form, k, n in queries:
        assert log.query(build(form, k, n)) == expected(lines, form, k, n), (form, k, n)


@given(
    chunks=st.lists(CONTENTS, min_size=1, max_size=8),
    queries=QUERIES,
    block_size=BLOCK_SIZES,
    index_step=INDEX_STEPS,
    scan_size=SCAN_SIZES,
)
@FAST
def test_queries_on_a_growing_file_match_the_oracle(
    tmp_path: Path,
    chunks: list[bytes],
    queries: list[tuple[str, int, int]],
    block_size: int,
    index_step: int,
    scan_size: int,
) -> None:
    # One LogFile across all appends: the index is extended, never rebuilt, and chunks end
    # anywhere, often mid-line, so the scan resumes inside a line.
    path = tmp_path / "grow.log"
    path.write_bytes(b"")
    log = small_log_file(path, block_size, index_step, scan_size)
    content = b""
    for i, chunk in enumerate(chunks):
        with path.open("ab") as f:
            f.write(chunk)
        content += chunk
        lines = oracle_lines(content)
        form, k, n = queries[i % len(queries)]
        # Offsets near the end make the index grow right up to the newest bytes.
        for kk in (k, max(0, len(lines) - 1 - k % 3)):
            assert log.query(build(form, kk, n)) == expected(lines, form, kk, n), (form, kk, n)


def naive_newlines(buf: bytes) -> list[int]:
    return [i for i, byte in enumerate(buf) if byte == 0x0A]


@given(
    buf=st.lists(
        st.sampled_from([b"\n", b"a", b"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"]), max_size=200
    ).map(b"".join),
    data=st.data(),
)
@settings(max_examples=300, deadline=None)
def test_newline_search_helpers_match_a_naive_scan(buf: bytes, data: st.DataObject) -> None:
    positions = naive_newlines(buf)
    start = data.draw(st.integers(0, len(buf)))
    end = data.draw(st.integers(start, len(buf)))
    inside = [p for p in positions if start <= p < end]
    n = data.draw(st.integers(1, len(inside) + 2))
    line_len = data.draw(st.integers(1, 40))
    found = logs_module._gallop_nth(buf, n, start, end, line_len)
    if n <= len(inside):
        assert found == (inside[n - 1], n)
        assert logs_module._nth_newline(buf, n, start, end, len(inside)) == inside[n - 1]
    else:
        assert found == (-1, len(inside))


# --- shrinking, replacing, deleting -------------------------------------------------------------


def numbered(count: int, width: int, tag: str = "") -> bytes:
    return b"".join(f"{tag}{i:0{width}d}\n".encode() for i in range(count))


def test_truncated_file_resets_the_index(tmp_path: Path) -> None:
    path = tmp_path / "t.log"
    path.write_bytes(numbered(500, 9))
    log = LogFile(path, index_step=10)
    assert log.query(LogsQuery.with_offset_and_limit(450, 2)) == ["000000450", "000000451"]

    path.write_bytes(numbered(40, 3, "new"))  # truncates in place, then writes less
    content = path.read_bytes()
    for q in (LogsQuery.with_offset_and_limit(30, 3), LogsQuery.with_offset(38), LogsQuery.tail(1)):
        assert log.query(q) == q.select(oracle_lines(content))


def test_truncated_then_regrown_file_is_not_read_through_the_old_index(tmp_path: Path) -> None:
    path = tmp_path / "t.log"
    path.write_bytes(numbered(100, 9))  # 10-byte lines
    log = LogFile(path, index_step=10)
    assert log.query(LogsQuery.with_offset_and_limit(95, 1)) == ["000000095"]

    # Longer than before, with other line lengths: the old newline offsets are meaningless.
    path.write_bytes(numbered(300, 5, "x"))  # 7-byte lines
    content = path.read_bytes()
    for k in (0, 95, 128, 250, 299):
        q = LogsQuery.with_offset_and_limit(k, 2)
        assert log.query(q) == q.select(oracle_lines(content))


def test_replaced_file_resets_the_index(tmp_path: Path) -> None:
    path = tmp_path / "r.log"
    path.write_bytes(numbered(100, 9))
    log = LogFile(path, index_step=10)
    assert log.query(LogsQuery.with_offset_and_limit(95, 1)) == ["000000095"]

    other = tmp_path / "other.log"
    other.write_bytes(b"\n".join(b"y" * (i % 13) for i in range(400)))
    os.replace(other, path)
    content = path.read_bytes()
    for k in (10, 95, 200, 399):
        q = LogsQuery.with_offset_and_limit(k, 3)
        assert log.query(q) == q.select(oracle_lines(content))


@pytest.mark.parametrize("form", FORMS)
def test_deleted_file_raises_os_error(tmp_path: Path, form: str) -> None:
    path = tmp_path / "gone.log"
    path.write_bytes(numbered(10, 3))
    log = LogFile(path, index_step=2)
    log.query(LogsQuery.with_offset(5))
    path.unlink()
    with pytest.raises(OSError, match=r"gone\.log"):
        log.query(build(form, 1, 1))


def test_a_directory_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        LogFile(tmp_path).query(LogsQuery.tail(1))


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.log"
    path.write_bytes(b"")
    log = LogFile(path)
    for form in FORMS:
        assert log.query(build(form, 0, 5)) == []


# --- cost grows with the answer ----------------------------------------------------------------

BIG_LINES = 500_000  # 100-byte lines: a 50 MB file


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("big") / "big.log"
    pad = b"." * 90
    with path.open("wb") as f:
        for first in range(0, BIG_LINES, 50_000):
            f.write(b"".join(b"%09d%s\n" % (i, pad) for i in range(first, first + 50_000)))
    yield path
    path.unlink()


def big_line(i: int) -> str:
    return f"{i:09d}" + "." * 90


def test_bytes_read_counts_every_read(big_log: Path) -> None:
    # The bound checks below rely on this counter: it must see whole-file reads too.
    log = LogFile(big_log)
    log.query(LogsQuery.with_limit(1))
    before = log.bytes_read
    assert before > 0
    lines = log.query(LogsQuery.fetch_all())
    assert len(lines) == BIG_LINES
    assert log.bytes_read - before == big_log.stat().st_size


def test_tail_reads_a_bounded_number_of_bytes(big_log: Path) -> None:
    log = LogFile(big_log)
    assert log.query(LogsQuery.tail(100)) == [
        big_line(i) for i in range(BIG_LINES - 100, BIG_LINES)
    ]
    assert log.bytes_read <= 64 * 1024 + 1

    log = LogFile(big_log)
    q = LogsQuery.from_end(2000, 50)
    assert log.query(q) == [big_line(i) for i in range(BIG_LINES - 2050, BIG_LINES - 2000)]
    # 2050 lines of 100 bytes, rounded up to whole 64 KiB blocks.
    assert log.bytes_read <= 4 * 64 * 1024 + 1


def test_offset_queries_use_the_index(big_log: Path) -> None:
    size = big_log.stat().st_size
    log = LogFile(big_log)
    q = LogsQuery.with_offset_and_limit(400_000, 3)
    want = [big_line(i) for i in range(400_000, 400_003)]
    assert log.query(q) == want
    first = log.bytes_read
    assert first < size  # the index is built only as far as needed
    assert log.query(q) == want
    # Again: at most index_step lines to skip, plus one read block and the index check.
    assert log.bytes_read - first <= 1000 * 100 + 64 * 1024 + 1


def test_growing_log_is_indexed_only_over_new_bytes(tmp_path: Path) -> None:
    path = tmp_path / "grow.log"
    path.write_bytes(numbered(100_000, 9))  # 1 MB
    log = LogFile(path)
    assert log.query(LogsQuery.with_offset_and_limit(99_998, 5)) == ["000099998", "000099999"]
    before = log.bytes_read
    with path.open("ab") as f:
        f.write(b"partial line with no end")
    assert log.query(LogsQuery.with_offset(100_000)) == ["partial line with no end"]
    with path.open("ab") as f:
        f.write(b", now ended\n" + numbered(5_000, 9, "z"))
    assert log.query(LogsQuery.with_offset_and_limit(105_000, 1)) == ["z000004999"]
    # New bytes are about 50 KB; rescanning the file would read over 1 MB.
    assert log.bytes_read - before < 200_000


# --- threads ------------------------------------------------------------------------------------


def test_concurrent_queries_from_threads(tmp_path: Path) -> None:
    path = tmp_path / "threads.log"
    content = b"".join(b"line %d %s\n" % (i, b"#" * (i % 37)) for i in range(20_000))
    path.write_bytes(content)
    lines = oracle_lines(content)
    log = LogFile(path, index_step=7, block_size=512, scan_size=4096)
    barrier = threading.Barrier(8)

    def worker(seed: int) -> None:
        barrier.wait()
        for j in range(40):
            form = FORMS[(seed + j) % len(FORMS)]
            k = (seed * 7919 + j * 104_729) % 21_000
            n = (seed + j) % 30
            assert log.query(build(form, k, n)) == expected(lines, form, k, n)

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(worker, seed) for seed in range(8)]:
            future.result()
