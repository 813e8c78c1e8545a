"""What differs per platform, behind one small interface: how the manager learns a child exited.

On Linux (5.3+) each child gets a pidfd (``os.pidfd_open``) watched by the event loop's reader:
no thread, no polling, no SIGCHLD handler, and thousands of children cost one fd each. Elsewhere
(macOS, old kernels) a small daemon thread per child blocks in ``waitpid`` and hands the status
back with ``call_soon_threadsafe`` (what asyncio's ``ThreadedChildWatcher`` does too).

Reaping goes through ``Popen.poll()`` / ``Popen.wait()`` so that ``Popen`` knows the child is
gone and never signals or waits on a pid that could have been reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
from collections.abc import Callable

__all__ = ["HAS_PIDFD", "ExitWatch", "watch_exit"]


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


class ExitWatch:
    """A running watch on one child; ``cancel()`` stops it (idempotent)."""

    def __init__(self, cancel: Callable[[], None]) -> None:
        self._cancel: Callable[[], None] | None = cancel

    def cancel(self) -> None:
        """Stop watching and release the watch's fd (if any)."""
        cancel, self._cancel = self._cancel, None
        if cancel is not None:
            cancel()


def watch_exit(
    loop: asyncio.AbstractEventLoop,
    popen: subprocess.Popen[bytes],
    on_exit: Callable[[int], None],
    before_reap: Callable[[], None],
) -> ExitWatch:
    """Call ``on_exit(returncode)`` on ``loop`` once the child has exited and been reaped.

    ``before_reap()`` runs after the exit but before the reap, while the zombie still holds its
    pid and process group id: signalling the group then cannot hit an unrelated one.
    """
    if HAS_PIDFD:
        try:
            return _watch_pidfd(loop, popen, on_exit, before_reap)
        except OSError:  # e.g. out of fds: still correct, just costlier
            pass
    return _watch_thread(loop, popen, on_exit, before_reap)


def _watch_pidfd(
    loop: asyncio.AbstractEventLoop,
    popen: subprocess.Popen[bytes],
    on_exit: Callable[[int], None],
    before_reap: Callable[[], None],
) -> ExitWatch:
    # The child is not reaped yet, so its pid cannot have been reused: the pidfd is the child's.
    pidfd = os.pidfd_open(popen.pid)

    def cancel() -> None:
        with contextlib.suppress(Exception):  # the loop may already be closed
            loop.remove_reader(pidfd)
        os.close(pidfd)

    watch = ExitWatch(cancel)

    def readable() -> None:
        before_reap()  # a readable pidfd means exited, not yet reaped
        returncode = popen.poll()
        if returncode is not None:
            watch.cancel()
            on_exit(returncode)

    loop.add_reader(pidfd, readable)
    return watch


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
