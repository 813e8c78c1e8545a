"""How the manager learns that a child exited.

On Linux (5.3+) each child gets a pidfd (``os.pidfd_open``): no thread, no polling, no SIGCHLD
handler, and thousands of children cost one fd each. A manager's pidfds go into one epoll of its
own, which the event loop watches with a single reader: a spawn and an exit then cost an
``epoll_ctl`` each (about 1.4 µs the pair) instead of the loop's ``add_reader`` and
``remove_reader`` (about 6 µs; both pairs timed with python -m timeit on a pipe's fd), and the
loop's selector holds one fd however many children run.
Elsewhere (macOS, old kernels) a small daemon thread per child blocks in ``waitpid`` and hands the
status back with ``call_soon_threadsafe`` (what asyncio's ``ThreadedChildWatcher`` does too).

Reaping goes through ``Popen.poll()`` / ``Popen.wait()`` so that ``Popen`` knows the child is
gone and never signals or waits on a pid that could have been reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import subprocess
import threading
from collections.abc import Callable

__all__ = ["HAS_PIDFD", "ExitWatch", "ExitWatcher"]


def _probe_pidfd() -> bool:
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError:  # ENOSYS on kernels older than 5.3, EPERM under some sandboxes
        return False
    os.close(fd)
    return True


#: Whether exit detection uses pidfds (else one waiting thread per child).
HAS_PIDFD = _probe_pidfd()

#: waitid() flags that ask, without waiting or reaping, whether a child has exited.
_EXITED_NOW = os.WEXITED | os.WNOHANG | os.WNOWAIT if HAS_PIDFD else 0


def _not_seen() -> bool:
    return False


class ExitWatch:
    """A running watch on one child; ``cancel()`` stops it (idempotent)."""

    def __init__(self, cancel: Callable[[], None], check: Callable[[], bool] | None = None) -> None:
        self._cancel: Callable[[], None] | None = cancel
        #: If the child has exited and the loop has not said so yet, handle the exit now (its
        #: callbacks run here); True if it did. Costs one system call with a pidfd (and returns
        #: False once the watch is cancelled); elsewhere the waiting thread reports the exit
        #: and this returns False. The watcher's function itself rather than a method that
        #: calls it: every message sent to a FIFO asks.
        self.check: Callable[[], bool] = check if check is not None else _not_seen

    def cancel(self) -> None:
        """Stop watching and release the watch's fd (if any)."""
        cancel, self._cancel = self._cancel, None
        if cancel is not None:
            cancel()


class ExitWatcher:
    """Learns of the exits of one manager's children, on the manager's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._epoll: select.epoll | None = None
        self._on_ready: dict[int, Callable[[], None]] = {}  # pidfd -> its watch's callback
        if HAS_PIDFD:  # now, as the manager's other fds: one it holds for its whole life
            with contextlib.suppress(OSError):  # out of fds: tried again on the first spawn
                self._open()

    def _open(self) -> select.epoll:
        epoll = select.epoll()
        try:
            self.loop.add_reader(epoll.fileno(), self._ready)
        except BaseException:
            epoll.close()
            raise
        self._epoll = epoll
        return epoll

    def watch(
        self,
        popen: subprocess.Popen[bytes],
        on_exit: Callable[[int], None],
        before_reap: Callable[[], None],
    ) -> ExitWatch:
        """Call ``on_exit(returncode)`` on the loop once the child has exited and been reaped.

        ``before_reap()`` runs after the exit but before the reap, while the zombie still holds
        its pid and process group id: signalling the group then cannot hit an unrelated one.
        """
        if HAS_PIDFD:
            try:
                return self._watch_pidfd(popen, on_exit, before_reap)
            except OSError:  # e.g. out of fds: still correct, just costlier
                pass
        return _watch_thread(self.loop, popen, on_exit, before_reap)

    def _watch_pidfd(
        self,
        popen: subprocess.Popen[bytes],
        on_exit: Callable[[int], None],
        before_reap: Callable[[], None],
    ) -> ExitWatch:
        epoll = self._epoll if self._epoll is not None else self._open()
        # The child is not reaped yet, so its pid cannot have been reused: the pidfd is its own.
        pidfd = os.pidfd_open(popen.pid)
        try:
            epoll.register(pidfd, select.EPOLLIN)
        except BaseException:
            os.close(pidfd)
            raise

        cancelled = False

        def cancel() -> None:
            nonlocal cancelled
            cancelled = True  # the pidfd is closed: check() must not use it any more
            del self._on_ready[pidfd]
            with contextlib.suppress(OSError, ValueError):  # ValueError: the epoll is closed
                epoll.unregister(pidfd)
            os.close(pidfd)

        def readable() -> None:
            before_reap()  # a readable pidfd means exited, not yet reaped
            returncode = popen.poll()
            if returncode is not None:
                watch.cancel()
                on_exit(returncode)

        def check() -> bool:
            # Exited (a zombie) but not yet seen by the loop: see it now.
            if cancelled or os.waitid(os.P_PIDFD, pidfd, _EXITED_NOW) is None:
                return False
            readable()
            return True

        watch = ExitWatch(cancel, check)
        self._on_ready[pidfd] = readable
        return watch

    def _ready(self) -> None:
        if self._epoll is None:
            return
        for pidfd, _ in self._epoll.poll(0):  # level-triggered: more than a poll's worth waits
            callback = self._on_ready.get(pidfd)
            if callback is not None:  # an earlier callback may have cancelled this watch
                callback()

    def close(self) -> None:
        """Stop watching (every watch should be cancelled already); release the epoll."""
        epoll, self._epoll = self._epoll, None
        if epoll is not None:
            with contextlib.suppress(Exception):  # the loop may already be closed
                self.loop.remove_reader(epoll.fileno())
            epoll.close()


def _watch_thread(
    loop: asyncio.AbstractEventLoop,
    popen: subprocess.Popen[bytes],
    on_exit: Callable[[int], None],
    before_reap: Callable[[], None],
) -> ExitWatch:
    cancelled = False

    def deliver(returncode: int) -> None:
        if not cancelled:
            on_exit(returncode)

    def wait() -> None:
        if hasattr(os, "waitid") and hasattr(os, "WNOWAIT"):
            with contextlib.suppress(ChildProcessError, InterruptedError):
                os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
                before_reap()
        returncode = popen.wait()
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is listening any more
            loop.call_soon_threadsafe(deliver, returncode)

    def cancel() -> None:
        nonlocal cancelled
        cancelled = True

    threading.Thread(target=wait, name=f"corral-wait-{popen.pid}", daemon=True).start()
    return ExitWatch(cancel)
