"""Supervision: when to restart a process that ended, and the events that tell what happened.

:class:`RestartTracker` applies a :class:`~corral.RestartPolicy` to one process's runs: it says
whether the next run starts, after which delay, or why the process stays down. The manager
publishes a :class:`ProcessEvent` for every step (spawned, exited, restarting, gave up,
killed, released) to every subscriber of ``subscribe_events()``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import time
from dataclasses import dataclass

from ._broadcast import Broadcast, ItemStream
from ._model import ExitStatus, ProcessId, RestartPolicy

__all__ = ["EventBroadcast", "EventKind", "EventRecord", "ProcessEvent", "RestartTracker"]


class EventKind(enum.Enum):
    """What happened to a process."""

    #: A run started (the first, or a restart).
    SPAWNED = "spawned"
    #: A run ended by itself (``exit_status`` says how).
    EXITED = "exited"
    #: A restart is scheduled in ``delay`` seconds.
    RESTARTING = "restarting"
    #: The restart limit was reached, or a restart failed to spawn: the process stays down.
    GAVE_UP = "gave_up"
    #: The process was killed by ``kill`` / ``abort`` and forgotten (after its EXITED event).
    KILLED = "killed"
    #: The process, exited, was forgotten by ``release`` (or by ``auto_release``).
    RELEASED = "released"


@dataclass(frozen=True, slots=True)
class ProcessEvent:
    """One thing that happened to one process, with when (``time.monotonic()``) it happened.

    >>> events = await handle.subscribe_events()
    >>> policy = RestartPolicy.on_failure(max_restarts=1, backoff=Backoff(initial=0.01))
    >>> flaky = await handle.spawn(Cmd("false", options=CmdOptions(restart_policy=policy)))
    >>> async for event in events:
    ...     if event.kind is EventKind.GAVE_UP:
    ...         print(event.process_id == flaky)
    ...         print(event.reason)
    ...         break
    True
    restarted 1 time(s) within 60 s, the limit of the on_failure policy; last run: exit code 1
    """

    kind: EventKind
    process_id: ProcessId
    #: ``time.monotonic()`` when it happened.
    time: float
    #: The OS pid of the run concerned, if any.
    pid: int | None = None
    #: How the run ended (EXITED, RESTARTING, GAVE_UP, KILLED, RELEASED).
    exit_status: ExitStatus | None = None
    #: Restarts so far.
    restarts: int = 0
    #: Seconds until the restart (RESTARTING).
    delay: float | None = None
    #: Why the process stays down (GAVE_UP).
    reason: str | None = None


class RestartTracker:
    """The restart history of one process under one policy."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        #: Restarts done so far (the process's ``ProcessInfo.restarts``).
        self.restarts = 0
        self._recent: collections.deque[float] = collections.deque()  # restart times
        self._streak = 0  # restarts since the last run that lasted a whole window
        self._run_started = time.monotonic()

    def run_started(self) -> None:
        """A run has just started."""
        self._run_started = time.monotonic()

    def after_exit(self, status: ExitStatus) -> tuple[float | None, str | None]:
        """What to do after a run ended by itself: ``(delay, None)`` to restart after ``delay``
        seconds, ``(None, reason)`` to stay down (``reason`` is None when the policy does not
        ask for a restart at all)."""
        policy = self.policy
        if not policy.wants_restart(status):
            return None, None
        now = time.monotonic()
        if now - self._run_started >= policy.window:
            self._streak = 0  # it ran well for a while: start the backoff over
        while self._recent and now - self._recent[0] > policy.window:
            self._recent.popleft()
        if len(self._recent) >= policy.max_restarts:
            return None, (
                f"restarted {len(self._recent)} time(s) within {policy.window:g} s, the limit "
                f"of the {policy.mode.value} policy; last run: {status}"
            )
        delay = policy.backoff.delay(self._streak)
        return delay, None

    def restarting(self) -> None:
        """A restart is under way (counted against the limit from now on)."""
        self._recent.append(time.monotonic())
        self._streak += 1
        self.restarts += 1


#: A :class:`ProcessEvent`'s fields, in order: what the manager publishes. Most events are
#: never read (nobody subscribes), so the event itself is only built for a subscriber.
EventRecord = tuple[
    EventKind, ProcessId, float, int | None, ExitStatus | None, int, float | None, str | None
]


class EventBroadcast:
    """The manager's events, fanned out to its subscribers like a process's messages are.

    The same bounded buffer serves, holding records: a subscriber that lags by more than
    ``capacity`` events gets :class:`~corral.LostMessagesError` with the exact count, then goes
    on; the manager never waits for a subscriber.
    """

    def __init__(self, capacity: int, loop: asyncio.AbstractEventLoop) -> None:
        self._broadcast: Broadcast[EventRecord] = Broadcast(capacity, loop=loop)

    def publish(self, record: EventRecord) -> None:
        """Hand an event to every subscriber (dropped if nobody ever subscribes)."""
        # try, not suppress(): this runs twice per spawn, a context manager costs an object.
        try:  # noqa: SIM105
            self._broadcast.try_publish(record)
        except RuntimeError:  # at interpreter exit the loop may be closed
            pass

    def subscribe(self, replay: bool = False) -> ItemStream[ProcessEvent]:
        """A new subscriber: the events from now on; with ``replay``, also those still buffered
        from before (a supervisor must not react to exits long past by default)."""
        return self._broadcast.subscribe_items(_as_event, replay=replay)

    def close(self) -> None:
        """No more events: streams end once drained."""
        with contextlib.suppress(RuntimeError):
            self._broadcast.close()


def _as_event(record: EventRecord) -> ProcessEvent:
    return ProcessEvent(*record)
