"""The publisher as a process of its own: ``cqrs_outbox relay --follow``.

With ``CQRS['master']['publisher'] = 'relay'`` the processes that save publish nothing: a commit
costs its outbox row and nothing more. This loop, run as its own process next to them (one or
several, on any host that reaches the database and the broker), publishes what they commit: it
drains the outbox while events are ready, then looks again every ``poll`` seconds. Drains lock
with ``SKIP LOCKED``, so any number of followers (and the beat relay) may run at once; an event
a follower published but could not delete before it died is published again, and replicas skip
it as a duplicate.
"""

from __future__ import annotations

import logging
import threading

from cqrs_celery.master.publisher import BrokerBackoff, close_connection, drain_ready

logger = logging.getLogger(__name__)

#: Seconds between two looks at an outbox that had nothing ready.
POLL = 0.01


def follow(using: str = 'default', *, poll: float = POLL, stop: threading.Event | None = None) -> None:
    """Publish the outbox of ``using`` until ``stop`` is set (for ever without one)."""
    stop = stop or threading.Event()
    backoff = BrokerBackoff()
    logger.info('cqrs outbox follower publishing from %s (looking every %.3f s when idle)', using, poll)
    try:
        while not stop.is_set():
            delay = backoff.wait(drain_ready(using))
            stop.wait(poll if delay is None else delay)
    finally:
        close_connection(using)
    logger.info('cqrs outbox follower on %s stopped', using)
