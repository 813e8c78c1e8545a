"""What every per-process handle is: a manager (async or blocking) and one process id."""

from __future__ import annotations

from typing import Generic, TypeVar

from ._arguments import check_process_id
from ._errors import GetProcessInfoError
from ._model import ProcessId

__all__ = ["Bound"]

M = TypeVar("M")


class Bound(Generic[M]):
    """A manager bound to one process; the generated methods forward to it with ``self.id``.

    Dropping it does nothing to the process.
    """

    __slots__ = ("_manager", "id")

    def __init__(self, manager: M, process_id: ProcessId | str) -> None:
        self._manager = manager
        #: The process this handle is bound to.
        self.id = check_process_id(process_id, GetProcessInfoError)

    @property
    def manager(self) -> M:
        """The manager this handle forwards to."""
        return self._manager

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id})"
