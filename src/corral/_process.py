"""One managed child as the manager sees it: its OS process, its dir, its exit, its resources.

A :class:`ManagedProcess` is owned by the manager's actor and only touched on the manager's
loop. It knows how to signal its process group, learns of the exit through
:func:`corral._platform.watch_exit`, and releases everything it holds in :meth:`close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from . import _guardian as guardian
from ._logs import LogFile
from ._model import Cmd, ExitStatus, ProcessId, ProcessInfo
from ._platform import ExitWatch, watch_exit
from ._spawn import SpawnedChild, remove_process_dir
from ._streams import Broadcast, MessageReader, MessageWriter

__all__ = ["ManagedProcess"]


class ManagedProcess:
    """A spawned child and everything corral keeps for it."""

    def __init__(
        self, process_id: ProcessId, child: SpawnedChild, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.id = process_id
        self.cmd: Cmd = child.cmd
        self.process_dir = child.process_dir
        self._popen = child.popen
        self.pid: int = child.popen.pid
        self.exit_status: ExitStatus | None = None
        #: Captured streams ("stdout" / "stderr"); a merged log is one LogFile under both names.
        self.logs: dict[str, LogFile] = {}
        for stream, path in child.logs.items():
            same = next((log for log in self.logs.values() if log.path == path), None)
            self.logs[stream] = same if same is not None else LogFile(path)
        #: Message channels (None when not configured).
        self.writer: MessageWriter | None = None
        self.broadcast: Broadcast | None = None
        self._reader: MessageReader | None = None
        if child.message_in is not None:
            self.writer = MessageWriter(child.message_in, process_id=process_id, loop=loop)
        if child.message_out is not None:
            capacity = child.cmd.options.output_buffer_capacity
            self.broadcast = Broadcast(capacity, process_id=process_id, loop=loop)
            self._reader = MessageReader(child.message_out, self.broadcast)
        #: Resolved with the final :class:`ProcessInfo` once the child is reaped.
        self.exited: asyncio.Future[ProcessInfo] = loop.create_future()
        #: Set by kill / terminate: when the leader exits, SIGKILL what is left of its group.
        self.kill_group_at_exit = False
        guardian.register_group(self.pid)
        guardian.register_dir(self.process_dir)
        self._watch: ExitWatch | None = watch_exit(
            loop, child.popen, self._on_exit, self._before_reap
        )

    @property
    def is_running(self) -> bool:
        """Whether the child has not been reaped yet."""
        return self.exit_status is None

    def info(self) -> ProcessInfo:
        """A snapshot of the process's state."""
        return ProcessInfo(pid=self.pid, exit_status=self.exit_status, is_running=self.is_running)

    def _before_reap(self) -> None:
        if self.kill_group_at_exit:
            # The zombie leader still holds the group id, so this cannot hit another group.
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGKILL)

    def _on_exit(self, returncode: int) -> None:
        guardian.unregister_group(self.pid)
        self._watch = None
        # Deliver what the child wrote, then end its streams; fail sends from now on.
        if self._reader is not None:
            self._reader.child_exited()
        if self.writer is not None:
            self.writer.child_exited()
        self.exit_status = ExitStatus.from_returncode(returncode)
        if not self.exited.done():
            self.exited.set_result(self.info())

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the child's process group, while the child is not reaped.

        After the reap the group id could name an unrelated group, so nothing is sent then.
        """
        if not self.is_running:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def send_signal(self, sig: int, group: bool) -> bool:
        """Send ``sig`` to the child (or its group); False if it was already reaped."""
        if not self.is_running:
            return False
        with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped: nothing to do
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        return True

    def kill(self) -> None:
        """SIGKILL the whole group, now and again when the leader exits (late forks included)."""
        self.kill_group_at_exit = True
        self.signal_group(signal.SIGKILL)

    async def terminate(self, grace: float) -> ProcessInfo:
        """SIGTERM the group; SIGKILL it if the child is still alive after ``grace`` seconds."""
        if grace <= 0:
            self.kill()
        else:
            self.signal_group(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    return await asyncio.shield(self.exited)
            except TimeoutError:
                self.kill()
        return await asyncio.shield(self.exited)

    def kill_and_reap_blocking(self) -> None:
        """SIGKILL the group and reap the child synchronously (shutdown without a running loop)."""
        self.kill()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self.exit_status is None:
            self.exit_status = ExitStatus.from_returncode(self._popen.wait())
            guardian.unregister_group(self.pid)
        if not self.exited.done():
            with contextlib.suppress(RuntimeError):  # the future's loop may be closed
                self.exited.set_result(self.info())

    def close(self) -> None:
        """Release what the parent holds for the child (fds, watchers) and delete its dir."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._reader is not None:
            self._reader.close()  # live streams get what is buffered, then end cleanly
        if self.writer is not None:
            self.writer.close()
        remove_process_dir(self.process_dir)
        guardian.unregister_dir(self.process_dir)
