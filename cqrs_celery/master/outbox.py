"""The transactional outbox: events written with the change, published after commit or by the relay.

An event row is written in the same transaction as the change, so it exists exactly when the
change was committed. After commit the committing process publishes its own rows at once and
deletes them; whatever is left (broker down, process killed between commit and publish) is
published by :func:`relay`, which Celery beat runs. Rows are taken with ``SELECT … FOR UPDATE SKIP
LOCKED``, so the committing process and any number of relays never publish a row twice.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import ujson
from django.db import connections, transaction
from django.utils import timezone

from cqrs_celery.conf import get_settings
from cqrs_celery.envelope import Envelope, decode
from cqrs_celery.models import OutboxEvent, pk_key
from cqrs_celery.producer import send

logger = logging.getLogger(__name__)

#: Test hook: called after commit, before the committing process publishes its rows.
before_publish_hook: Callable[[list[int]], None] | None = None

#: After a failed publish, the committing process leaves its rows to the relay until this time,
#: so requests do not each wait for an unreachable broker.
_broker_down_until = 0.0
_BROKER_DOWN_PAUSE = 5.0


def write(using: str, envelope: Envelope, event_id: int | None = None) -> int:
    """Store ``envelope`` (replacing event ``event_id`` if it is still there); returns the event id."""
    text = ujson.dumps(envelope.to_wire(), ensure_ascii=False)
    events = OutboxEvent._default_manager.using(using)
    key = pk_key(envelope.instance_pk)
    # The row must still be this instance's: after a rolled-back savepoint removed it, SQLite may
    # give its id to another instance's event, which must not be overwritten.
    if event_id is not None and events.filter(id=event_id, cqrs_id=envelope.cqrs_id, pk_value=key).update(
            envelope=text, revision=envelope.revision):
        return event_id
    event = events.create(cqrs_id=envelope.cqrs_id, pk_value=key, revision=envelope.revision, envelope=text)
    return int(event.pk)


def write_many(using: str, envelopes: list[Envelope]) -> list[int]:
    """Store new events in one INSERT where the database returns their ids; returns the ids."""
    if not connections[using].features.can_return_rows_from_bulk_insert:
        return [write(using, envelope) for envelope in envelopes]
    events = OutboxEvent._default_manager.using(using).bulk_create([
        OutboxEvent(cqrs_id=e.cqrs_id, pk_value=pk_key(e.instance_pk), revision=e.revision,
                    envelope=ujson.dumps(e.to_wire(), ensure_ascii=False)) for e in envelopes])
    return [int(event.pk) for event in events]


def _locked(using: str) -> Any:
    events = OutboxEvent._default_manager.using(using).order_by('id')
    features = connections[using].features
    if features.has_select_for_update_skip_locked:
        return events.select_for_update(skip_locked=True)
    return events.select_for_update() if features.has_select_for_update else events


def _publish(using: str, events: Iterable[OutboxEvent]) -> tuple[int, BaseException | None]:
    """Publish and delete ``events`` (caller holds their locks); stop at the first failure."""
    done: list[int] = []
    error = None
    for event in events:
        try:
            send(decode(event.envelope))
        except Exception as exc:
            error = exc
            logger.warning('cqrs outbox publish failed, left for the relay: cqrs_id=%s pk=%s revision=%s error=%r',
                           event.cqrs_id, event.pk_value, event.revision, exc)
            break
        done.append(int(event.pk))
    if done:
        OutboxEvent._default_manager.using(using).filter(id__in=done).delete()
    return len(done), error


def publish_committed(using: str, event_ids: list[int]) -> int:
    """After commit: publish this transaction's events that no relay has taken."""
    global _broker_down_until
    if before_publish_hook is not None:
        before_publish_hook(event_ids)
    if not event_ids or time.monotonic() < _broker_down_until:
        return 0
    with transaction.atomic(using=using):
        published, error = _publish(using, _locked(using).filter(id__in=event_ids))
    if error is not None:
        _broker_down_until = time.monotonic() + _BROKER_DOWN_PAUSE
    return published


def relay(using: str = 'default', batch: int | None = None, min_age: float | None = None) -> int:
    """Publish events left in the outbox, oldest first; returns how many were published.

    Args:
        batch: events per transaction (``master.outbox_relay_batch``).
        min_age: seconds an event must have waited (``master.outbox_relay_delay``), so the
            process that committed it normally publishes it first.
    """
    master = get_settings().master
    batch = batch or master.outbox_relay_batch
    min_age = master.outbox_relay_delay if min_age is None else min_age
    total = 0
    while True:
        cutoff = timezone.now() - datetime.timedelta(seconds=min_age)
        with transaction.atomic(using=using):
            events = list(_locked(using).filter(created__lte=cutoff)[:batch])
            published, error = _publish(using, events)
        total += published
        if error is not None:
            logger.error('cqrs outbox relay stopped after %s events: %r', total, error)
            break
        if not events or len(events) < batch:  # a batch of 0 takes nothing: stop rather than spin
            break
    if total:
        logger.info('cqrs outbox relay published %s events from %s', total, using)
    return total


def pending(using: str = 'default') -> int:
    """Events not yet published."""
    return int(OutboxEvent._default_manager.using(using).count())
