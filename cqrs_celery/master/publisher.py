"""Publishing off the request path: a background thread per process and database, woken after commit.

``CQRS['master']['publisher']`` chooses who publishes the outbox events a commit leaves:

* ``'thread'`` (default): the committing process wakes its publisher thread and returns at once;
  the thread drains the outbox in batches (``outbox.drain``), so a burst of saves goes out as a few
  batched messages. It keeps one database connection (closed when idle) and backs off while the
  broker is down. Events of any process are fair game: drains lock with ``SKIP LOCKED``.
* ``'inline'``: the committing thread publishes its own events right after commit (scripts,
  debugging); a failure leaves them to the relay and pauses inline publishing to that broker.
* ``'relay'``: nothing here; the beat relay (or ``cqrs_outbox relay``) publishes.

Whatever the mode, the beat relay publishes what is left (process killed, broker down), so nothing
committed is lost. While ``cqrs_celery.testing`` replaces the broker, publishing is inline.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from django.db import connections

from cqrs_celery import sharing
from cqrs_celery.conf import get_settings
from cqrs_celery.producer import send_batch, testing_sender_installed

if TYPE_CHECKING:
    from cqrs_celery.master.publish import Change

logger = logging.getLogger(__name__)

#: Seconds an idle publisher thread keeps its database connection.
IDLE_CLOSE = 2.0
#: Seconds to wait, doubling up to ``BROKER_RETRY_MAX``, while the broker cannot be reached.
BROKER_RETRY = 0.5
BROKER_RETRY_MAX = 30.0
#: Seconds before events that failed (and were backed off) are looked at again.
FAILED_RETRY = 5.0
#: After a failed inline publish, inline publishing to that broker waits this long (the relay goes on).
INLINE_PAUSE = 5.0
#: While commits come in a burst (at ``BURST_RATE`` a second or more over the thread's last cycle,
#: from the end of the drain before to the end of its own, waiting and gathering included, and
#: at least two of them), the thread lets events gather before draining, in slices of ``GATHER``
#: seconds, for as long as commits keep coming, until a batch is full (``publish_batch_size``)
#: or ``GATHER_MAX`` has passed (longer in a flood: ``GATHER_LONGEST``). Fewer, larger drains
#: mean far less work per save for the master (a drain costs about 2 ms of the process's
#: interpreter besides its rows: queries, a publisher confirm, a delete) and for the replica (one
#: group apply per message). ``GATHER_QUIET`` slices in a row without a commit end the gathering,
#: so the last events of a burst wait that long. Commits that come one at a time, or at a steady
#: pace below the rate, are published at once: on a slow machine a drain outlasts the 10 ms
#: between commits at 100 a second, and gathering them then only added latency.
#:
#: The rate is taken over the whole cycle, not over the drain alone: the saving threads share the
#: interpreter with the drain, so commits come more slowly while it runs (on a loaded 2-core
#: machine, half as fast), and a flood measured over its drains alone looked like a trickle often
#: enough to be sent as many small messages. Likewise one quiet slice was not a pause: a saving
#: thread that waits for a core a few milliseconds (the replica's worker, the databases and the
#: broker share them) ended gatherings of a flood after a handful of rows.
GATHER = 0.004
GATHER_MAX = 0.064
GATHER_QUIET = 2
BURST_RATE = 250.0
#: While a flood of commits lasts, each gathering that ran for its whole limit (commits never
#: paused, the batch never filled) doubles the limit of the next one, up to ``GATHER_LONGEST``
#: seconds: a sustained flood goes out in fewer, larger messages, so the drains' fixed costs
#: (the master's interpreter, the broker, one group apply per message on the replica) weigh less
#: on every save, while a short burst still waits at most ``GATHER_MAX``. A gathering that ends
#: sooner, or a drain without one, sets the limit back to ``GATHER_MAX``.
GATHER_LONGEST = 0.256

_publishers: dict[str, _Publisher] = {}
_guard = threading.Lock()
_inline_paused_until: dict[str, float] = {}


def committed(using: str, event_ids: Sequence[int], *, everything: bool = False) -> None:
    """After commit: have the outbox events ``event_ids`` published by the configured publisher.

    ``everything``: the database wrote events of this transaction itself (their ids are not known
    here); the inline publisher then publishes every ready event.
    """
    if not event_ids and not everything:
        return
    mode = get_settings().master.publisher
    if testing_sender_installed() or mode == 'inline':
        publish_inline(using, None if everything else event_ids)
    elif mode == 'thread':
        _publisher(using).wake()


def publish_inline(using: str, event_ids: Sequence[int] | None) -> int:
    """Publish these events (``None``: every ready one) now, in this thread; returns how many were published."""
    from cqrs_celery.master import outbox

    broker = _broker_key()
    if time.monotonic() < _inline_paused_until.get(broker, 0.0):
        return 0
    try:
        result = outbox.drain(using, ids=event_ids, limit=len(event_ids) if event_ids is not None else None)
    except Exception:
        logger.exception('cqrs outbox publish failed after commit; the relay will publish the events')
        return 0
    if result.broker_down is not None:
        _inline_paused_until[broker] = time.monotonic() + INLINE_PAUSE
        logger.warning('cqrs broker unavailable, events left to the relay: %s', result.broker_down)
    return result.published


def publish_changes(using: str, changes: Sequence[Change]) -> None:
    """Outbox off: read the committed rows and publish them now (raises on failure)."""
    from cqrs_celery.master.publish import envelopes_for, refusal

    batch_size = get_settings().master.publish_batch_size
    groups: dict[tuple[str, str | None], list[object]] = {}
    for change, envelope in zip(changes, envelopes_for(using, changes), strict=True):
        if isinstance(envelope, Exception):
            logger.error('cqrs cannot serialize cqrs_id=%s pk=%r: %r', change.cqrs_id, change.pk, envelope)
        elif envelope is not None and (refused := refusal(envelope)) is not None:
            logger.error('cqrs cannot publish cqrs_id=%s pk=%r: %s', change.cqrs_id, change.pk, refused)
        elif envelope is not None:
            groups.setdefault((envelope.cqrs_id, envelope.queue), []).append(envelope)
    for group in groups.values():
        for start in range(0, len(group), batch_size):
            send_batch(group[start:start + batch_size], checked=True)  # type: ignore[arg-type]


def _broker_key() -> str:
    app = get_settings().app
    return str(getattr(getattr(app, 'conf', None), 'broker_url', app))


def _publisher(using: str) -> _Publisher:
    publisher = _publishers.get(using)
    if publisher is None or publisher.pid != os.getpid() or not publisher.is_alive():
        with _guard:
            publisher = _publishers.get(using)
            # A forked child (gunicorn, Celery prefork) inherits the object, not the thread.
            if publisher is None or publisher.pid != os.getpid() or not publisher.is_alive():
                publisher = _publishers[using] = _Publisher(using)
                publisher.start()
    return publisher


class _Publisher(threading.Thread):
    """Drains the outbox of one database whenever a commit wakes it."""

    def __init__(self, using: str) -> None:
        super().__init__(name=f'cqrs-publisher-{using}', daemon=True)
        self.using = using
        self.pid = os.getpid()
        self.wakeup = threading.Event()
        self.stopping = False
        self.idle = threading.Event()
        self.idle.set()
        #: Commits that woke the thread (read without a lock: an estimate is all it needs).
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1
        # Every commit wakes the thread: skip the locks when it is woken already (a set flag is
        # cleared only before the next drain, which then reads this commit's events too).
        if not self.wakeup.is_set():
            self.wakeup.set()
        if self.idle.is_set():
            self.idle.clear()

    def run(self) -> None:
        delay: float | None = None
        backoff = BrokerBackoff()
        gathering = Gathering()
        pace = Pace(self.wakes, time.monotonic())
        waiting = 0  # commits that came while the last drain ran: their events wait for the next
        while not self.stopping:
            woken = self.wakeup.wait(IDLE_CLOSE if delay is None else delay)
            if self.stopping:
                break
            if not woken and delay is None:
                self._close_connection()
                continue
            if woken and pace.bursting(self.wakes, time.monotonic()):
                gathering.wait(lambda: self.wakes, waiting, lambda: self.stopping)
            else:
                gathering.reset()
            self.wakeup.clear()
            wakes = self.wakes
            delay = backoff.wait(self._drain())
            waiting = self.wakes - wakes
            pace.drained(self.wakes, time.monotonic())
            if delay is None:
                self.idle.set()
                if self.wakeup.is_set():  # woken again meanwhile: not idle after all
                    self.idle.clear()
        self._close_connection()

    def _drain(self) -> float | None:
        return drain_ready(self.using)[0]

    def _close_connection(self) -> None:
        close_connection(self.using)

    def stop(self, timeout: float) -> None:
        self.stopping = True
        self.wakeup.set()
        self.join(timeout)


def bursting(came: int, took: float) -> bool:
    """True when ``came`` commits woke the thread in the last ``took`` seconds (its last cycle, from
    the end of the drain before to the end of its own, waiting and gathering included, and the
    wait since) at ``BURST_RATE`` a second or more, and at least two: the next drain waits for more."""
    return came >= 2 and came >= BURST_RATE * took


class Pace:
    """How fast commits came over a publisher thread's last cycle (from the end of the drain before
    to the end of its own: waiting, gathering and draining), and the wait since."""

    def __init__(self, wakes: int, now: float) -> None:
        self.last = (0, 0.0)  # commits during the last cycle, and its seconds
        self.ended = (wakes, now)  # the commits counted, and the time, when the last drain ended

    def bursting(self, wakes: int, now: float) -> bool:
        """``bursting`` over the last cycle and the wait since: a burst that ended a while ago is over."""
        return bursting(self.last[0] + wakes - self.ended[0], self.last[1] + now - self.ended[1])

    def drained(self, wakes: int, now: float) -> None:
        """A drain ended: the cycle that ends with it becomes the last one."""
        self.last = (wakes - self.ended[0], now - self.ended[1])
        self.ended = (wakes, now)


def gather(commits: Callable[[], int], came: int, stopping: Callable[[], bool], longest: float = GATHER_MAX) -> bool:
    """Let the events of a burst gather (``came`` of them already did) for at most ``longest``
    seconds: see ``GATHER``. Returns True when commits kept coming until that limit.

    ``commits()`` counts up as commits come (the publisher thread's wake-ups, the follower's newest
    outbox event id); ``GATHER_QUIET`` slices in a row in which it stays put end the gathering, and
    so does one in which it goes back (the follower could not read it).
    """
    full = get_settings().master.publish_batch_size
    began, seen, quiet = time.monotonic(), commits(), 0
    while came < full:
        if stopping():
            return False
        if time.monotonic() - began >= longest:
            return True
        time.sleep(GATHER)
        now = commits()
        if now > seen:
            came, seen, quiet = came + now - seen, now, 0
            continue
        quiet += 1
        if quiet >= GATHER_QUIET or now < seen:
            return False  # the burst paused (or another publisher took the events): what it left goes out now
    return False


class Gathering:
    """The limit of a publisher's gatherings: ``GATHER_MAX``, doubled up to ``GATHER_LONGEST`` after
    each gathering that commits kept going until its limit (see ``GATHER_LONGEST``)."""

    def __init__(self) -> None:
        self.limit = GATHER_MAX

    def wait(self, commits: Callable[[], int], came: int, stopping: Callable[[], bool]) -> None:
        """``gather`` within the current limit, then set the next one's."""
        flooding = gather(commits, came, stopping, self.limit)
        self.limit = min(self.limit * 2, GATHER_LONGEST) if flooding else GATHER_MAX

    def reset(self) -> None:
        """A drain without gathering: the next gathering starts from ``GATHER_MAX`` again."""
        self.limit = GATHER_MAX


class BrokerBackoff:
    """The wait before the next drain, from what ``drain_ready`` answered.

    While the broker stays out of reach (``BROKER_RETRY``), the wait doubles from ``BROKER_RETRY``
    up to ``BROKER_RETRY_MAX``; any other answer is the wait itself and starts the doubling over.
    """

    def __init__(self) -> None:
        self.next = BROKER_RETRY

    def wait(self, delay: float | None) -> float | None:
        if delay != BROKER_RETRY:
            self.next = BROKER_RETRY
            return delay
        delay, self.next = self.next, min(self.next * 2, BROKER_RETRY_MAX)
        return delay


def drain_ready(using: str) -> tuple[float | None, int]:
    """Publish until nothing is ready; returns how long to wait before looking again (None: nothing
    left) and how many events were published."""
    from cqrs_celery.master import outbox

    limit = get_settings().master.outbox_relay_batch
    published = 0
    try:
        while True:
            with sharing.collections_paused():  # (sharing.py: no full collection set off by a batch)
                result = outbox.drain(using, limit=limit)
            published += result.published
            if result.broker_down is not None:
                logger.warning('cqrs publisher: broker unavailable, retrying: %s', result.broker_down)
                return BROKER_RETRY, published
            if result.taken < limit or result.published == 0:
                return (FAILED_RETRY if result.failed else None), published
    except Exception:
        logger.exception('cqrs publisher failed on %s; the events stay in the outbox', using)
        close_connection(using)
        return FAILED_RETRY, published


def close_connection(using: str) -> None:
    """Close this thread's connection to ``using`` (a broken one is dropped all the same)."""
    try:
        connections[using].close()
    except Exception:  # pragma: no cover - a broken connection is dropped all the same
        logger.debug('cqrs publisher: closing the connection failed', exc_info=True)


def wait_idle(timeout: float = 10.0) -> bool:
    """Wait until every publisher thread of this process has nothing left to do (for tests, scripts)."""
    deadline = time.monotonic() + timeout
    for publisher in list(_publishers.values()):
        if publisher.pid == os.getpid() and not publisher.idle.wait(max(0.0, deadline - time.monotonic())):
            return False
    return True


def stop_busy(timeout: float = 10.0) -> list[str]:
    """Stop the publisher threads of this process that are not idle, once their current drain ends.

    For test teardowns that empty the tables: a thread still draining holds outbox rows and reads
    model tables while the ``TRUNCATE`` wants them all; a thread waiting to retry would drain the
    next test's events. Idle threads are left running. Returns the databases whose thread
    was stopped (the next commit on one starts a new thread).
    """
    stopped = []
    for using, publisher in list(_publishers.items()):
        if publisher.pid == os.getpid() and publisher.is_alive() and not publisher.idle.is_set():
            publisher.stop(timeout)
            _publishers.pop(using, None)
            stopped.append(using)
    return stopped


#: At exit, seconds a process keeps publishing what is ready while it makes progress (the relay
#: publishes whatever is left afterwards).
EXIT_DRAIN = 60.0


def shutdown(timeout: float = 5.0, drain_for: float = EXIT_DRAIN) -> None:
    """Stop this process's publisher threads, then publish what is ready on their databases.

    A script that commits many changes and exits at once (a data migration, ``demo_changes``)
    publishes them before it goes, as long as the broker takes them, for at most ``drain_for``
    seconds; whatever is left waits for the relay.
    """
    from cqrs_celery.master import outbox

    for using, publisher in list(_publishers.items()):
        if publisher.pid != os.getpid() or not publisher.is_alive():
            continue
        publisher.stop(timeout)
        _publishers.pop(using, None)
        deadline = time.monotonic() + drain_for
        try:
            while time.monotonic() < deadline:
                result = outbox.drain(using)
                if result.broker_down is not None or result.published == 0:
                    break
        except Exception:
            logger.exception('cqrs publisher: publishing at exit failed; the relay will publish the rest')
        finally:
            publisher._close_connection()


# A script that saves and exits at once still publishes what it committed (the relay would, later).
atexit.register(shutdown)
