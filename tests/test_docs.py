"""The documentation: its examples run, and the site builds with warnings as errors.

Every ```python block in docs/*.md is a complete program, run here in a subprocess of its own
that must exit with status 0. A block is skipped deliberately only when its fence carries a
title (``` ```python title="worker.py" ```: a file shown on its own, not a program to run here)
or its first line is ``# not run``. In README.md only the complete programs run (the blocks that
call ``asyncio.run(``); the others are fragments with top-level ``await``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import corral

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"

# Each example finishes in a second or two; the margin is for a loaded machine.
EXAMPLE_TIMEOUT = 30.0

_FENCE_OPEN = re.compile(r"^(?P<indent>[ ]*)(?P<fence>`{3,}|~{3,})[ ]*(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    info: str  # what follows the language on the opening fence
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of ``path``, dedented to their fence (for blocks in lists)."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE_OPEN.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, fence = len(match["indent"]), match["fence"]
        lang, _, info = match["info"].strip().partition(" ")
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            line = lines[i]
            body.append(line[indent:] if line.startswith(" " * indent) else line.lstrip(" "))
            i += 1
        if i == len(lines):
            raise AssertionError(f"{path}:{start + 1}: code block never closed")
        blocks.append(Block(path, start + 1, lang.lower(), info.strip(), "\n".join(body) + "\n"))
        i += 1
    return blocks


def doc_pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def skip_reason(block: Block) -> str | None:
    """Why ``block`` is not run, or None when it must run."""
    if "title=" in block.info:
        return "a file shown on its own (titled block), not a program"
    if block.code.lstrip().startswith("# not run"):
        return "marked '# not run'"
    if block.path == README and "asyncio.run(" not in block.code:
        return "README fragment (top-level await or child-side code), not a complete program"
    return None


def python_blocks() -> list[Block]:
    blocks = [b for page in [*doc_pages(), README] for b in fenced_blocks(page)]
    return [b for b in blocks if b.lang in ("python", "py")]


PYTHON_BLOCKS = python_blocks()


def test_the_docs_have_runnable_examples() -> None:
    runnable = [b for b in PYTHON_BLOCKS if skip_reason(b) is None]
    pages = {b.path.name for b in runnable}
    # One page per concept, each with examples; and the README's tour.
    for name in (
        "index.md",
        "getting-started.md",
        "spawning.md",
        "logs.md",
        "messages.md",
        "lifecycle.md",
        "errors.md",
        "supervision.md",
        "README.md",
    ):
        assert name in pages, f"no runnable example in {name}"
    skipped = [b.id for b in PYTHON_BLOCKS if b.path != README and skip_reason(b) is not None]
    assert len(skipped) <= 3, f"skipping should stay rare, skipped: {skipped}"


@pytest.mark.parametrize(
    "block", [pytest.param(b, id=b.id) for b in PYTHON_BLOCKS if b.path != README]
)
def test_docs_example_runs(block: Block, tmp_path: Path) -> None:
    run_example(block, tmp_path)


@pytest.mark.parametrize(
    "block", [pytest.param(b, id=b.id) for b in PYTHON_BLOCKS if b.path == README]
)
def test_readme_example_runs(block: Block, tmp_path: Path) -> None:
    run_example(block, tmp_path)


def run_example(block: Block, tmp_path: Path) -> None:
    reason = skip_reason(block)
    if reason is not None:
        pytest.skip(reason)
    assert "```" not in block.code, "a fence was not closed where expected"
    script = tmp_path / "example.py"
    script.write_text(block.code, encoding="utf-8")
    env = dict(os.environ)
    # corral from this checkout, whichever interpreter runs the tests.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    try:
        result = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{block.id}: still running after {EXAMPLE_TIMEOUT} s\n{exc.stdout!r}")
    assert result.returncode == 0, (
        f"{block.id} exited with {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def test_every_public_name_is_in_the_reference() -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in (DOCS / "reference").glob("*.md"))
    documented = set(re.findall(r"^::: corral\.(\w+)", text, flags=re.MULTILINE))
    missing = sorted(set(corral.__all__) - documented - {"__version__"})
    assert not missing, f"public names without a reference entry: {missing}"
    assert "child" in documented  # the child helper module


def test_docs_build_strict(tmp_path: Path) -> None:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[dev]' installs it)")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)],
        cwd=ROOT,  # the Griffe extension in mkdocs.yml is a path relative to the repository
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"mkdocs build failed\n{result.stdout}\n{result.stderr}"
    # The API reference was generated from the docstrings, with cross-references resolved.
    manager = (site / "reference" / "manager" / "index.html").read_text(encoding="utf-8")
    assert 'id="corral.ProcessManagerHandle.spawn"' in manager
    assert 'href="../spawning/#corral.Cmd"' in manager
    for page in ("index.html", "reference/index.html", "comparison/index.html"):
        assert (site / page).is_file(), page
