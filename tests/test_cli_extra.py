"""``rich`` is the ``cli`` extra's: the library never imports it, the command says it is missing.

Each check runs in a fresh interpreter; a missing ``rich`` is simulated there by
``sys.modules["rich"] = None``, which makes every import of it fail.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from corral.cli import EXIT_MISSING_EXTRA, MISSING_EXTRA

WITHOUT_RICH = "import sys; sys.modules['rich'] = None\n"


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_importing_corral_does_not_import_rich() -> None:
    result = python(
        "import sys\n"
        "import corral, corral.child, corral.cli\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'rich'))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


def test_the_library_works_without_rich() -> None:
    result = python(
        WITHOUT_RICH + "from corral import Cmd, SyncProcessManager\n"
        "with SyncProcessManager() as pm:\n"
        "    print(pm.wait(pm.spawn(Cmd('true'))).exit_status)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "exit code 0\n"


@pytest.mark.parametrize("argv", [["demo"], ["run", "Procfile"]])
def test_the_command_says_the_cli_extra_is_missing(argv: list[str]) -> None:
    result = python(WITHOUT_RICH + f"from corral.cli import main\nsys.exit(main({argv!r}))\n")
    assert result.returncode == EXIT_MISSING_EXTRA != 0
    assert result.stdout == ""
    assert MISSING_EXTRA in result.stderr
    assert "pip install 'corral[cli]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_needs_no_rich() -> None:
    result = python(WITHOUT_RICH + "from corral.cli import main\nsys.exit(main(['--help']))\n")
    assert result.returncode == 0, result.stderr
    assert "usage: corral" in result.stdout
