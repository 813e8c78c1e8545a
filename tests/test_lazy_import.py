"""``corral`` loads its public names on first use: ``from corral import child`` and ``import
corral`` load none of the rest of the package. Each check runs in a fresh interpreter, since this
one has long loaded everything."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import corral

TIMEOUT = 60
INIT_PY = Path(corral.__file__)
PRIVATE = "[m for m in sys.modules if m.startswith('corral._')]"


def run_fresh(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("statement", ["import corral.child", "from corral import child"])
def test_the_child_helper_loads_no_asyncio_msgspec_or_private_module(statement: str) -> None:
    out = run_fresh(f"""
        import sys
        {statement}
        print(sorted(m for m in ("asyncio", "msgspec") if m in sys.modules), {PRIVATE})
    """)
    assert out == "[] []\n"


def test_the_child_helper_imports_only_small_standard_modules() -> None:
    """``json``, ``pathlib``, ``typing``, ``threading`` and ``collections`` cost a child several
    milliseconds of start-up: they are imported when used, or not at all."""
    out = run_fresh("""
        import sys
        before = set(sys.modules)
        from corral import child
        print(sorted(set(sys.modules) - before))
    """)
    allowed = {"__future__", "_struct", "_thread", "binascii", "corral", "corral.child", "struct"}
    assert set(ast.literal_eval(out)) <= allowed, out


def test_import_corral_loads_no_asyncio_msgspec_or_private_module() -> None:
    out = run_fresh(f"""
        import sys
        import corral
        print(sorted(m for m in ("asyncio", "msgspec") if m in sys.modules), {PRIVATE})
        print(corral.__version__)
    """)
    assert out == f"[] []\n{corral.__version__}\n"


def test_a_name_is_loaded_on_first_use_and_says_it_is_corral_s() -> None:
    out = run_fresh("""
        import pickle
        from corral import Cmd, SpawnProcessError
        print(Cmd.__module__, Cmd.parse.__module__, Cmd("echo", ["x"]).cmd)
        error = pickle.loads(pickle.dumps(SpawnProcessError("boom")))
        print(type(error).__module__, type(error).__qualname__)
    """)
    assert out == "corral corral echo\ncorral SpawnProcessError\n"


def test_every_public_name_resolves_and_is_corral_s() -> None:
    out = run_fresh("""
        import corral
        assert set(corral.__all__) <= set(dir(corral)), set(corral.__all__) - set(dir(corral))
        for name in corral.__all__:
            value = getattr(corral, name)
            if isinstance(value, type) or callable(value):
                assert value.__module__ == "corral", (name, value.__module__)
        print(len(corral.__all__))
    """)
    assert out == f"{len(corral.__all__)}\n"


def test_names_of_the_modules_loaded_with_a_name_are_corral_s_too() -> None:
    """An error raised by a module that ``ProcessManager``'s module imported is ``corral.X``,
    though ``corral.X`` was never asked for."""
    out = run_fresh("""
        import sys
        import corral
        corral.ProcessManager
        print(sys.modules["corral._errors"].SpawnProcessError.__module__)
    """)
    assert out == "corral\n"


def test_dir_lists_all_and_an_unknown_name_raises_attribute_error() -> None:
    out = run_fresh("""
        import corral
        print(sorted(set(corral.__all__) - set(dir(corral))))
        try:
            corral.NoSuchName
        except AttributeError as exc:
            print(exc)
    """)
    assert out == "[]\nmodule 'corral' has no attribute 'NoSuchName'\n"


@pytest.mark.parametrize("module", sorted(set(corral._EXPORTS.values())))
def test_type_hints_resolve_when_only_one_module_was_loaded(module: str) -> None:
    """``get_type_hints`` reads a public class's annotations in ``corral``'s namespace, which
    holds only the names loaded so far: those the class needs were resolved when it was."""
    names = [name for name, where in corral._EXPORTS.items() if where == module]
    out = run_fresh(f"""
        import typing
        import corral
        for name in {names!r}:
            value = getattr(corral, name)
            if isinstance(value, type):
                typing.get_type_hints(value)
        print("ok")
    """)
    assert out == "ok\n"


def test_the_imports_for_type_checkers_match_the_lazy_table() -> None:
    """mypy sees the names through the ``if TYPE_CHECKING:`` imports; run time through
    ``_EXPORTS``: both must say the same, and cover ``__all__``."""
    tree = ast.parse(INIT_PY.read_text(encoding="utf-8"))
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    )
    imported = {
        alias.name: (node.module or "")
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported == corral._EXPORTS
    assert set(corral.__all__) == {*corral._EXPORTS, "__version__"}
