"""Queued messages applied together: a task that finds more of its queue waiting takes them along.

Celery hands a worker process one message per task, so a replica behind on single-row messages (a
worker that was down, commits that came one at a time) would pay a transaction and a commit per
row. Before it applies its own message, the apply task therefore takes the messages waiting in
its service's queue (``basic_get`` on a broker connection of its own, kept per process) up to
``CQRS['replica']['group_rows']`` rows; all their rows then apply in one transaction per model,
with the same per-row rules (``group.py``).

Nothing taken can be lost or stall the queue:

* a taken message is acknowledged only after each of its rows has its outcome (applied, retried
  or dead-lettered); a process killed before that leaves it unacknowledged, and the broker
  delivers it again (RabbitMQ when the connection drops, Redis after the visibility timeout);
  on an error the task's own code did not expect, the taken messages go back to the queue;
* a message that fails the replica queue's gate is dead-lettered with its reason, as the consumer
  step does, and one delivered ``delivery_limit`` times is too;
* a message the group must not apply now (the reconciliation task, a retry whose ``eta`` is still
  ahead) is copied to the tail of the queue (a confirmed publish), then acknowledged: rejecting it
  back would put it at the head for the next task to take again, and count a delivery on quorum
  queues.

A process whose last look found the queue empty does not look again for ``_QUIET_FOR`` seconds:
a replica that keeps up (every message taken by a worker as soon as it arrives) would otherwise pay
one empty ``basic_get`` round trip per task. A backlog that builds meanwhile is taken by the first
task after the pause (the messages before it apply as they come, one per task).

Only on RabbitMQ and Redis: kombu's filesystem transport removes a message when it is read.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import threading
import time
from typing import Any

from celery.utils.time import maybe_iso8601
from kombu import Queue

from cqrs_celery.conf import get_settings
from cqrs_celery.constants import TASK_NAME
from cqrs_celery.envelope import Envelope, decode_message
from cqrs_celery.exceptions import EnvelopeError
from cqrs_celery.producer import copy_to_queue, testing_sender_installed
from cqrs_celery.replica import consumer

logger = logging.getLogger(__name__)

#: Brokers whose unacknowledged messages come back when the process holding them dies.
_DRIVERS = frozenset({'amqp', 'pyamqp', 'redis'})

#: Seconds without taking after the connection failed (the task goes on with its own message).
_PAUSE_AFTER_ERROR = 5.0

#: Seconds one task spends taking messages, at most.
_TAKE_FOR = 0.5

#: Seconds without looking after a look found the queue empty.
_QUIET_FOR = 0.2

#: Messages one task takes but cannot apply (dead-lettered, or copied to the queue's tail), at most;
#: then it stops taking.
_SKIPPED_AT_MOST = 10


@dataclasses.dataclass
class Taken:
    """A message taken from the queue, with its rows or the error that makes it a dead letter."""

    message: Any
    rows: list[Envelope | EnvelopeError]
    error: EnvelopeError | None = None
    raw: Any = None


class _Link(threading.local):
    pid: int = 0
    connection: Any = None
    queue: Any = None
    paused_until: float = 0.0
    #: When a look last found the queue empty (``time.monotonic()``).
    found_empty_at: float = float('-inf')
    #: Something failed on the connection: it is closed (and taking paused) before the next take,
    #: not while the task still holds messages taken on it.
    broken: bool = False


_link = _Link()


def take(request: Any, queue: str | None, room: int) -> list[Taken]:
    """Messages waiting in ``queue``, until ``room`` more rows or ``max_message_size`` bytes are taken.

    The byte limit keeps a group of large rows from holding many large messages in memory at once
    (the last message taken may go over either limit).

    Takes nothing for a task that was not delivered by a worker, under a test sender, when the
    queue's broker cannot redeliver what a dead process held, or for ``_QUIET_FOR`` seconds after a
    look found the queue empty.
    """
    if room <= 0 or not queue or not _delivered(request) or testing_sender_installed():
        return []
    if time.monotonic() - _link.found_empty_at < _QUIET_FOR and _link.pid == os.getpid():
        return []
    bound = _bound_queue(queue)
    if bound is None:
        return []
    taken: list[Taken] = []
    rows = skipped = size = 0
    deadline = time.monotonic() + _TAKE_FOR
    most_bytes = get_settings().replica.max_message_size
    message = None
    try:
        while rows < room and size < most_bytes and skipped < _SKIPPED_AT_MOST and time.monotonic() < deadline:
            message = bound.get(no_ack=False)
            if message is None:
                if not taken and not skipped:
                    _link.found_empty_at = time.monotonic()
                break
            item = _admit(message, queue)
            if item is None:
                skipped += 1
                continue
            taken.append(item)
            rows += max(len(item.rows), 1)
            size += len(message.body or b'')
    except Exception:
        logger.warning('cqrs could not take more messages from queue %s; the task goes on with what it has',
                       queue, exc_info=True)
        if message is not None and not message.acknowledged:
            give_back([Taken(message, [])])
        _link.broken = True
    return taken


def acknowledge(taken: list[Taken]) -> None:
    """Acknowledge messages whose rows all have their outcome (a failed ack: they come again)."""
    for item in taken:
        try:
            if not item.message.acknowledged:
                item.message.ack()
        except Exception:
            logger.warning('cqrs could not acknowledge a taken message; it will be delivered again', exc_info=True)
            _link.broken = True
            return


def give_back(taken: list[Taken]) -> None:
    """Put every taken message not yet acknowledged back into its queue."""
    for item in taken:
        try:
            if not item.message.acknowledged:
                item.message.reject(requeue=True)
        except Exception:
            # the connection is gone: RabbitMQ requeues what it held, Redis after the visibility timeout
            logger.warning('cqrs could not give a taken message back; the broker will deliver it again',
                           exc_info=True)
            _link.broken = True
            return


def _delivered(request: Any) -> bool:
    return bool(getattr(request, 'delivery_info', None)) and not getattr(request, 'is_eager', False) \
        and not getattr(request, 'called_directly', False)


def _bound_queue(name: str) -> Any:
    """This process's (and thread's) own consumer of ``name``, connected on first use; None if unusable."""
    link = _link
    if link.pid != os.getpid():  # a forked pool process does not share its parent's socket
        link.pid, link.connection, link.queue, link.paused_until, link.broken = os.getpid(), None, None, 0.0, False
        link.found_empty_at = float('-inf')
    if link.broken:
        link.broken = False
        _drop(pause=True)
    if link.queue is not None and link.queue.name == name:
        return link.queue
    if time.monotonic() < link.paused_until:
        return None
    _drop(pause=False)
    app = get_settings().celery_app()
    try:
        connection = app.connection_for_read(heartbeat=0, connect_timeout=get_settings().master.publish_timeout)
        if connection.transport.driver_type not in _DRIVERS:
            connection.release()
            link.paused_until = float('inf')
            return None
        connection.ensure_connection(max_retries=1)
        link.connection = connection
        link.queue = Queue(name, no_declare=True)(connection.channel())
    except Exception:
        logger.warning('cqrs could not connect to take more messages from queue %s', name, exc_info=True)
        _drop(pause=True)
        return None
    return link.queue


def _drop(*, pause: bool) -> None:
    link = _link
    connection, link.connection, link.queue = link.connection, None, None
    if pause:
        link.paused_until = time.monotonic() + _PAUSE_AFTER_ERROR
    if connection is not None:
        try:
            connection.release()
        except Exception:
            logger.debug('cqrs closing the taking connection failed', exc_info=True)


def _admit(message: Any, queue: str) -> Taken | None:
    """The taken message with its rows; None when it was dead-lettered or copied to the queue's tail."""
    body = consumer.admitted(message)
    if body is None:
        return None
    headers = message.headers
    if headers.get('task') != TASK_NAME or _ahead(headers.get('eta')):
        copy_to_queue(message, queue)  # raises when it cannot: the message is then given back
        message.ack()
        return None
    raw = body[0][0]  # the gate checked the call's shape
    try:
        return Taken(message, decode_message(raw))
    except EnvelopeError as exc:
        return Taken(message, [], exc, raw)


def _ahead(eta: Any) -> bool:
    if eta is None:
        return False
    moment = maybe_iso8601(eta)
    if moment is None:
        return False
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return bool(moment > datetime.datetime.now(datetime.timezone.utc))
