"""The publisher as a process of its own: ``cqrs_outbox relay --follow``.

With ``CQRS['master']['publisher'] = 'relay'`` the processes that save publish nothing: a commit
costs its outbox row and nothing more. This loop, run as its own process next to them (one or
several, on any host that reaches the database and the broker), publishes what they commit: it
drains the outbox while events are ready, then looks again every ``poll`` seconds. Drains lock
with ``SKIP LOCKED``, so any number of followers (and the beat relay) may run at once; an event
a follower published but could not delete before it died is published again, and replicas skip
it as a duplicate.

While commits come in a burst (a drain published events at ``publisher.BURST_RATE`` a second or
more since the one before), the follower lets them gather before the next drain as the publisher
thread does (``publisher.GATHER``), watching the outbox's newest event id instead of wake-ups:
each drain costs the follower, the broker and the replica about as much as dozens of events, and
polling every ``poll`` seconds through a burst sent them many small batches.
"""

from __future__ import annotations

import logging
import threading
import time

from cqrs_celery.master import outbox
from cqrs_celery.master.publisher import BrokerBackoff, Gathering, bursting, close_connection, drain_ready

logger = logging.getLogger(__name__)

#: Seconds between two looks at an outbox that had nothing ready.
POLL = 0.01


def follow(using: str = 'default', *, poll: float = POLL, stop: threading.Event | None = None) -> None:
    """Publish the outbox of ``using`` until ``stop`` is set (for ever without one)."""
    stop = stop or threading.Event()
    backoff = BrokerBackoff()
    gathering = Gathering()
    logger.info('cqrs outbox follower publishing from %s (looking every %.3f s when idle)', using, poll)
    try:
        previous = time.monotonic()
        while not stop.is_set():
            started = time.monotonic()
            delay, published = drain_ready(using)
            delay = backoff.wait(delay)
            # The events just published were committed since the previous drain began.
            if delay is None and bursting(published, time.monotonic() - previous):
                gathering.wait(lambda: _newest(using), 0, stop.is_set)
            else:
                gathering.reset()
                stop.wait(poll if delay is None else delay)
            previous = started
    finally:
        close_connection(using)
    logger.info('cqrs outbox follower on %s stopped', using)


def _newest(using: str) -> int:
    """The outbox's newest event id, or -1 when it cannot be read: the gathering then ends, and the
    next drain meets the failure and backs off as it does for any other."""
    try:
        return outbox.newest_id(using)
    except Exception:
        logger.debug('cqrs outbox follower: the newest event id could not be read', exc_info=True)
        return -1
