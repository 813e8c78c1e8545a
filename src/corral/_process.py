"""One managed process as the manager sees it: its runs, its dir, its logs, its messages.

A :class:`ManagedProcess` is owned by the manager's actor and only touched on the manager's
loop. What lasts for the life of the process (id, dir, log files, the message broadcast, the
restart history) lives here; what belongs to one run of the child (the OS process, its exit
watch, its pipes' reader and writer) lives in a :class:`_Run`. Without a restart policy there is
exactly one run. The process learns of each exit through the manager's
:class:`corral._platform.ExitWatcher`, restarts per its policy, and releases everything it holds
in :meth:`close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from . import _guardian as guardian
from ._broadcast import Broadcast, MessageItem
from ._errors import SpawnProcessError
from ._logs import LogFile
from ._model import (
    Cmd,
    ExitedProcessInfo,
    ExitStatus,
    MessagingType,
    ProcessId,
    ProcessInfo,
    RestartMode,
)
from ._pipes import MessageReader, MessageWriter
from ._platform import (
    ExitWatch,
    ExitWatcher,
    reaped_group_alive,
    signal_group,
    signal_reaped_group,
)
from ._spawn import SpawnedChild, remove_process_dir
from ._supervision import EventKind, EventRecord, RestartTracker

__all__ = ["ManagedProcess"]

#: How a failed respawn is counted: like a shell's "command not found".
_SPAWN_FAILED = ExitStatus(code=127, signal=None, success=False)


class _Run:
    """One run of the child: the OS process, its group and the per-run ends of its pipes.

    The group outlives the child while anything the child started still runs in it: it is
    signalled, and kept in the guardian's care, until the run is closed, the child exited or
    not. Once the child is reaped the group is only signalled after
    :func:`corral._platform.signal_reaped_group` has checked that the id is still ours.
    """

    def __init__(
        self,
        child: SpawnedChild,
        exits: ExitWatcher,
        process_id: ProcessId,
        broadcast: Broadcast[MessageItem] | None,
        on_exit: Callable[[_Run, ExitStatus], None],
        guard_dir: Path | None,
    ) -> None:
        self.popen = child.popen
        self.pid: int = child.popen.pid
        self.exit_status: ExitStatus | None = None
        #: Set by kill / terminate: when the leader exits, SIGKILL what is left of its group.
        self.kill_group_at_exit = False
        self.writer: MessageWriter | None = None
        self.reader: MessageReader | None = None
        #: The group's entry with the guardian (None once forgotten, or without a guardian).
        self._guard = guardian.register_group(self.pid, guard_dir)
        #: Nothing is left of the group, or its id is no longer ours: never signal it again.
        self._group_gone = False
        self._on_exit = on_exit
        # Watched before its pipes are: a watch that cannot start (no thread to wait with)
        # leaves nothing on the loop, and the spawn is undone by the caller, fds included.
        try:
            self.watch: ExitWatch | None = exits.watch(child.popen, self._exited, self._before_reap)
        except BaseException:
            guardian.unregister_group(self._guard)
            raise
        if child.message_in is not None:
            self.writer = MessageWriter(child.message_in, process_id=process_id, loop=exits.loop)
        if child.message_out is not None and broadcast is not None:
            self.reader = MessageReader(
                child.message_out,
                broadcast,
                max_message_bytes=child.cmd.options.max_message_bytes,
                exit_status=lambda: self.exit_status,
            )

    def _before_reap(self) -> None:
        # The leader exited; its zombie holds the group id until the reap. From the reap on the
        # guardian must check the id before signalling it: tell it now, while it is still ours.
        guardian.leader_exited(self._guard, self.pid)
        if self.kill_group_at_exit:  # late forks of a killed child
            self.signal_group(signal.SIGKILL)

    def _exited(self, returncode: int) -> None:
        self.watch = None
        self._on_exit(self, self._after_reap(returncode))

    def _after_reap(self, returncode: int) -> ExitStatus:
        guardian.leader_exited(self._guard, self.pid)  # where the exit was only seen with the reap
        self.exit_status = status = ExitStatus.from_returncode(returncode)
        # Most children leave nothing behind: their group is forgotten here (signal 0 probes).
        self.signal_group(signal.SIGKILL if self.kill_group_at_exit else 0)
        return status

    def _forget_group(self) -> None:
        self._group_gone = True
        guard, self._guard = self._guard, None
        guardian.unregister_group(guard)

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the group: the child and what it started, or what is left of it once
        the child has exited."""
        if self._group_gone:
            return
        if self.popen.returncode is None:  # not reaped: the leader holds the id, live or zombie
            signal_group(self.pid, sig)
        elif not signal_reaped_group(self.pid, sig):
            self._forget_group()

    def kill(self) -> None:
        """SIGKILL the whole group, now and again when the leader exits (late forks included)."""
        self.kill_group_at_exit = True
        self.signal_group(signal.SIGKILL)

    async def wait_group_gone(self) -> None:
        """Return once nothing of the group runs any more (the leader reaped first).

        The OS has no event for the end of a group: this polls, from every few ms to 0.1 s.
        """
        pause = 0.005
        while not self._group_gone and reaped_group_alive(self.pid):
            await asyncio.sleep(pause)
            pause = min(2 * pause, 0.1)

    def reap_blocking(self) -> None:
        """SIGKILL and reap synchronously (shutdown without a running loop)."""
        self.kill()
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        if self.exit_status is None:
            self._before_reap()  # SIGKILLed already: it exits, and is not reaped yet
            self._after_reap(self.popen.wait())

    def close(self) -> None:
        """Release this run's watch and pipe ends; SIGKILL what is left of its group."""
        if self.exit_status is not None:  # else the guardian must keep the live group
            self.signal_group(signal.SIGKILL)
            if not self._group_gone:
                self._forget_group()
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        if self.reader is not None:
            self.reader.close()  # live streams get what is buffered
        if self.writer is not None:
            self.writer.close()


class ManagedProcess:
    """A spawned process and everything corral keeps for it, across restarts."""

    def __init__(
        self,
        process_id: ProcessId,
        child: SpawnedChild,
        exits: ExitWatcher,
        respawn: Callable[[], SpawnedChild],
        pace: Callable[[Callable[[], None]], None],
        emit: Callable[[EventRecord], None],
        guard_dir: bool,
        remove_dir: Callable[[Path], bool] = remove_process_dir,
    ) -> None:
        self.id = process_id
        # How the process dir goes at close: the manager's ProcessDirs recycle it.
        self._remove_dir = remove_dir
        self.cmd: Cmd = child.cmd
        self.process_dir = child.process_dir
        self._exits = exits
        self._loop = loop = exits.loop
        self._respawn = respawn
        self._pace = pace
        self._emit = emit
        #: Captured streams ("stdout" / "stderr"); a merged log is one LogFile under both names.
        self.logs: dict[str, LogFile] = {}
        for stream, path in child.logs.items():
            same = next((log for log in self.logs.values() if log.path == path), None)
            self.logs[stream] = same if same is not None else LogFile(path)
        #: The message output's subscribers, kept across restarts (None when not configured).
        self.broadcast: Broadcast[MessageItem] | None = None
        if child.message_out is not None:
            capacity = child.cmd.options.output_buffer_capacity
            self.broadcast = Broadcast(capacity, process_id=process_id, loop=loop)
        self._input_is_fifo = child.cmd.options.message_input is MessagingType.NAMED_PIPE
        self._tracker = RestartTracker(child.cmd.options.restart_policy)
        self._restart_timer: asyncio.TimerHandle | None = None
        self._restart_pending = False  # from RESTARTING until the next run starts (or stop)
        self._stopping = False  # kill / terminate / abort: no more restarts
        self._gave_up: str | None = None
        #: Resolved with the final info once the process is down for good.
        self.exited: asyncio.Future[ExitedProcessInfo] = loop.create_future()
        self._waiters: list[Callable[[ExitedProcessInfo], None]] = []
        # In a working dir of the user's, the guardian removes this dir if the parent dies; a
        # working dir corral made is removed whole, this one with it.
        self._guard_dir = guard_dir
        self._run = self._start_run(child, self.process_dir if guard_dir else None)

    # --- state ----------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The OS pid of the latest run."""
        return self._run.pid

    @property
    def is_running(self) -> bool:
        """Whether the latest run's child has not been reaped yet."""
        return self._run.exit_status is None

    @property
    def exit_status(self) -> ExitStatus | None:
        """How the latest run ended (None while it runs)."""
        return self._run.exit_status

    @property
    def writer(self) -> MessageWriter | None:
        """The latest run's message input (None when not configured)."""
        return self._run.writer

    def writer_for_send(self) -> MessageWriter | None:
        """:attr:`writer`, once an exit the loop has not handled yet is handled, for a FIFO: a
        message written there after the child is gone would vanish without an error (the
        parent's end never reports EPIPE). A pipe does report it, unless a grandchild holds
        the child's stdin, and then that grandchild may still read the message."""
        if self._input_is_fifo:
            watch = self._run.watch
            if watch is not None:
                watch.check()  # one waitid(): ~0.26 us (timeit, on a live child's pidfd)
        return self._run.writer

    def info(self) -> ProcessInfo:
        """A snapshot of the process's state."""
        return ProcessInfo(
            pid=self.pid,
            exit_status=self.exit_status,
            is_running=self.is_running,
            restarts=self._tracker.restarts,
            restart_pending=self._restart_pending,
            gave_up_reason=self._gave_up,
        )

    def _event(
        self, kind: EventKind, delay: float | None = None, reason: str | None = None
    ) -> None:
        run = self._run
        now = time.monotonic()
        self._emit(
            (kind, self.id, now, run.pid, run.exit_status, self._tracker.restarts, delay, reason)
        )

    # --- runs and restarts ----------------------------------------------------------------

    def _start_run(self, child: SpawnedChild, guard_dir: Path | None = None) -> _Run:
        """Start watching a new run; ``guard_dir``: the process dir, for the guardian to remove
        if the parent dies (registered with the first run's group, in one message)."""
        run = _Run(child, self._exits, self.id, self.broadcast, self._on_exit, guard_dir)
        if run.reader is not None and self._tracker.policy.mode is not RestartMode.NEVER:
            # A restart may follow, and the end of this run's output (a pipe's EOF comes before
            # the exit is seen) must not end the streams: _go_down does, when down for good.
            run.reader.close_broadcast = False
        self._run = run
        self._tracker.run_started()
        self._event(EventKind.SPAWNED)
        return run

    def _on_exit(self, run: _Run, status: ExitStatus) -> None:
        delay: float | None = None
        reason: str | None = None
        # Every exit is told, however it was caused (kill and terminate included), with its
        # real status; only an exit nobody asked for can lead to a restart.
        self._event(EventKind.EXITED)
        if not self._stopping:
            delay, reason = self._tracker.after_exit(status)
        # Deliver what the child wrote, then end its streams; fail sends from now on.
        if run.reader is not None:
            run.reader.child_exited()
        if run.writer is not None:
            run.writer.child_exited()
        if delay is not None:
            self._schedule_restart(delay)
        else:
            self._go_down(reason)

    def _schedule_restart(self, delay: float) -> None:
        # What the last run left in its group is asked to stop now, and SIGKILLed when the
        # restart is due: a new run never shares the stage with the last one's leftovers.
        self._run.signal_group(signal.SIGTERM)
        self._tracker.restarting()
        self._restart_pending = True
        self._restart_timer = self._loop.call_later(delay, self._restart_due)
        self._event(EventKind.RESTARTING, delay=delay)

    def _restart_due(self) -> None:
        self._restart_timer = None
        if self._stopping:
            return
        self._run.signal_group(signal.SIGKILL)  # before the drain: leftovers may hold the pipe
        reader = self._run.reader
        if reader is not None and not reader.closed:
            # The last run's output is still being delivered (a lossless subscriber may hold it
            # back): the next run's messages come after it, none is dropped.
            drained = asyncio.ensure_future(reader.wait_closed())
            drained.add_done_callback(lambda _: self._restart_due())
            return
        # Spawning blocks the loop until the child execs: the manager paces restarts, one per
        # loop turn, so a burst of them cannot stall everything else.
        self._pace(self._restart)

    def _restart(self) -> None:
        if self._stopping or not self._restart_pending:
            return
        self._restart_pending = False
        self._run.close()
        try:
            child = self._respawn()
        except SpawnProcessError as exc:  # e.g. the program is gone: a failed run
            # A run of no length: the last real run's length must not reset the streak.
            self._tracker.run_started()
            delay, reason = self._tracker.after_exit(_SPAWN_FAILED)
            if delay is None:
                self._go_down(reason or f"restart failed: {exc}")
            else:
                self._schedule_restart(delay)
            return
        self._start_run(child)

    def _go_down(self, reason: str | None) -> None:
        """No more runs: end the streams, resolve the waiters."""
        if reason is not None:
            self._gave_up = reason
            self._event(EventKind.GAVE_UP, reason=reason)
        if self.broadcast is not None:
            reader = self._run.reader
            if reader is None or reader.closed:
                self.broadcast.close()
            else:  # still draining the last run's pipe: it ends the streams when done
                reader.close_broadcast = True
        self._set_exited()

    def when_down(self, callback: Callable[[ExitedProcessInfo], None]) -> None:
        """Call ``callback`` with the final info once the process is down for good (at once if it
        is): in the same loop turn, where a callback on :attr:`exited` would wait for the next."""
        if self.exited.done():
            callback(self.exited.result())
        else:
            self._waiters.append(callback)

    def _set_exited(self) -> None:
        if self.exited.done():
            return
        status = self.exit_status
        assert status is not None, "down for good, so its last run has ended"
        info = ExitedProcessInfo(
            pid=self.pid,
            exit_status=status,
            is_running=False,
            restarts=self._tracker.restarts,
            restart_pending=False,
            gave_up_reason=self._gave_up,
        )
        self.exited.set_result(info)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter(info)

    # --- stopping -------------------------------------------------------------------------

    def _cancel_restarts(self) -> None:
        self._stopping = True
        self._restart_pending = False
        if self._restart_timer is not None:
            self._restart_timer.cancel()
            self._restart_timer = None

    def _stop_restarts(self) -> bool:
        """No more restarts; True if a run is still alive (else the process is now down)."""
        self._cancel_restarts()
        if self.is_running:
            return True
        self._go_down(None)
        return False

    def send_signal(self, sig: int, group: bool) -> bool:
        """Send ``sig`` to the child (or its group); False if it was already reaped."""
        if not self.is_running:
            return False
        with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped: nothing to do
            if group:
                signal_group(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        return True

    def kill(self) -> None:
        """No more restarts; SIGKILL the whole group, or what is left of it if the child exited."""
        self._stop_restarts()
        self._run.kill()

    async def terminate(self, grace: float) -> ExitedProcessInfo:
        """No more restarts; SIGTERM the group (or what is left of it if the child exited), and
        SIGKILL whatever of it still runs after ``grace`` s."""
        running = self._stop_restarts()
        run = self._run
        if grace > 0:
            run.signal_group(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    if running:
                        await asyncio.shield(self.exited)
                    await run.wait_group_gone()
        run.kill()
        return await asyncio.shield(self.exited)

    def kill_and_reap_blocking(self) -> None:
        """SIGKILL the group and reap the child synchronously (shutdown without a running loop)."""
        self._cancel_restarts()
        self._run.reap_blocking()
        with contextlib.suppress(RuntimeError):  # the future's loop may be closed
            self._set_exited()

    async def output_drained(self) -> None:
        """Return once the last run's message output is all read (at once without one)."""
        reader = self._run.reader
        if reader is not None and not reader.closed:
            await reader.wait_closed()

    @property
    def down(self) -> bool:
        """Whether the process is down for good: exited, and no restart will follow."""
        return self.exited.done()

    def close(self, event: EventKind = EventKind.KILLED) -> None:
        """Release what the parent holds for the process (fds, watchers) and delete its dir;
        ``event`` tells why (killed, or released once exited)."""
        self._run.close()
        if self.broadcast is not None:
            self.broadcast.close()
        self._remove_dir(self.process_dir)
        if self._guard_dir:
            guardian.unregister_process_dir(self.process_dir)
        self._event(event)
