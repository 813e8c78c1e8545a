"""The terminal of the ``corral`` command: rich's console, which a closed stdout stops quietly.

Imported only once :func:`corral.cli.main` knows that ``rich`` (the ``cli`` extra) is installed.
"""

from __future__ import annotations

from rich.console import Console

__all__ = ["PipeAwareConsole"]


class PipeAwareConsole(Console):
    """rich's console, letting a closed stdout raise ``BrokenPipeError`` (rich would exit 1)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError
