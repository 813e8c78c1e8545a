"""The working dir: leftovers of a crashed manager are reported (and removed on request), never
confused with the process dirs of another live manager sharing the dir."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from corral import Cmd, ProcessManager


def leftover(work_dir: Path) -> Path:
    """A process dir as a manager killed together with its guardian would leave it."""
    path = work_dir / str(uuid.uuid4())
    (path / "data").mkdir(parents=True)
    (path / "stdout.log").write_text("last words\n")
    return path


async def test_leftovers_are_reported_and_kept(
    work_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stale = leftover(work_dir)
    mine = work_dir / "notes.txt"
    mine.write_text("the user's own file")
    with caplog.at_level(logging.WARNING, logger="corral"):
        async with ProcessManager.spawn(work_dir) as handle:
            assert handle.stale_process_dirs == (stale,)
            assert stale.is_dir()
    assert stale.name in caplog.text
    assert "remove_stale=True" in caplog.text
    assert stale.is_dir()
    assert mine.read_text() == "the user's own file"


async def test_leftovers_are_removed_on_request(work_dir: Path) -> None:
    stale = [leftover(work_dir), leftover(work_dir)]
    not_a_process_dir = work_dir / "cache"
    not_a_process_dir.mkdir()
    async with ProcessManager.spawn(work_dir, remove_stale=True) as handle:
        assert set(handle.stale_process_dirs) == set(stale)
        assert not any(p.exists() for p in stale)
        process_id = await handle.spawn(Cmd("true"))
        assert (await handle.wait(process_id)).exit_status is not None
    assert list(work_dir.iterdir()) == [not_a_process_dir]


async def test_a_live_managers_dirs_are_not_leftovers(work_dir: Path) -> None:
    async with ProcessManager.spawn(work_dir) as first:
        running = await first.spawn(Cmd("sleep", ["60"]))
        async with ProcessManager.spawn(work_dir, remove_stale=True) as second:
            assert second.stale_process_dirs == ()
            assert (work_dir / str(running)).is_dir()
            assert (await first.get_process_info(running)).is_running
        # The second one leaving does not disturb the first.
        assert (await first.get_process_info(running)).is_running
    assert list(work_dir.iterdir()) == []


async def test_a_clean_dir_has_no_leftovers(work_dir: Path) -> None:
    async with ProcessManager.spawn(work_dir) as handle:
        assert handle.stale_process_dirs == ()
    async with ProcessManager.spawn() as handle:  # corral's own temp dir
        assert handle.stale_process_dirs == ()
