"""The public way to start a manager: :meth:`ProcessManager.spawn` makes the actor (see
:mod:`corral._actor`) on the running loop and returns the handle that talks to it."""

from __future__ import annotations

import asyncio
import os

from ._actor import Actor
from ._handle import ProcessManagerHandle
from ._workdir import WorkingDir

__all__ = ["ProcessManager"]


class ProcessManager:
    """Spawns and manages child processes; reached only through a :class:`ProcessManagerHandle`.

    The manager is an actor on the event loop that started it: it owns the table of processes,
    and a handle is the only way to it (every call a request, answered on the caller's loop).

    >>> async def main() -> None:
    ...     async with ProcessManager.spawn() as handle:
    ...         pid = await handle.spawn(Cmd("true"))
    ...         info = await handle.wait(pid)
    ...         assert info.exit_status.success
    >>> asyncio.run(main())
    """

    __slots__ = ()

    def __init__(self) -> None:
        raise TypeError("use ProcessManager.spawn() to start a manager; it returns its handle")

    @classmethod
    def spawn(
        cls, working_dir: str | os.PathLike[str] | None = None, *, remove_stale: bool = False
    ) -> ProcessManagerHandle:
        """Start a manager on the running loop and return its handle.

        ``working_dir`` receives one dir per process; it must exist and be writable (``OSError``
        at once otherwise). With ``None`` the manager makes a private temp dir (0700) and
        removes it on ``abort()``. Process dirs that a crashed earlier manager left in
        ``working_dir`` are reported (``handle.stale_process_dirs`` and a warning on the
        ``corral`` logger) and, with ``remove_stale=True``, removed.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "ProcessManager.spawn() needs a running event loop: call it inside a coroutine "
                "(e.g. `async def main(): handle = ProcessManager.spawn()` run by "
                "asyncio.run(main())), or use SyncProcessManager from code without one"
            ) from None
        if not isinstance(remove_stale, bool):
            raise TypeError(f"remove_stale must be a bool, not {remove_stale!r}")
        if working_dir is None:
            workdir = WorkingDir.create_temp()
        else:
            workdir = WorkingDir.claim(working_dir, remove_stale)
        return ProcessManagerHandle(Actor(loop, workdir))
