"""Send the observability signals of :mod:`cqrs_celery.signals`, only when someone listens.

Every function returns at once when its signal has no receiver, before building any payload: the
publish and apply paths pay one check per message. Receivers that raise are logged and ignored.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from typing import Any

from django.dispatch import Signal

from cqrs_celery.constants import FIELD_UPDATED
from cqrs_celery.envelope import Envelope
from cqrs_celery.signals import (
    envelope_applied,
    envelope_dead_lettered,
    envelope_retried,
    envelope_skipped,
    envelopes_published,
)

logger = logging.getLogger(__name__)

#: Apply outcomes reported by ``envelope_applied``; ``envelope_skipped`` reports :data:`SKIPPED`.
APPLIED = frozenset({'created', 'updated', 'deleted', 'tombstoned', 'handled'})
SKIPPED = frozenset({'stale', 'duplicate', 'not_for_me'})


def latency(envelope: Envelope | None, now: datetime.datetime | None = None) -> float | None:
    """Seconds from the row's save on the master (its ``cqrs_updated``) to ``now``; None if unknown."""
    if envelope is None:
        return None
    value = envelope.instance_data.get(FIELD_UPDATED)
    if not isinstance(value, str):
        return None
    try:
        saved = datetime.datetime.fromisoformat(value.replace('Z', '+00:00'))
    except ValueError:
        return None
    if saved.tzinfo is None:
        saved = saved.replace(tzinfo=datetime.timezone.utc)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return (now - saved).total_seconds()


def _send(signal: Signal, sender: Any, **kwargs: Any) -> None:
    for receiver, result in signal.send_robust(sender=sender, **kwargs):
        if isinstance(result, Exception):
            logger.error('cqrs signal receiver %r failed (ignored): %r', receiver, result, exc_info=result)


def published(envelopes: Sequence[Envelope], *, queue: str | None, exchange: str, routing_key: str,
              duration: float) -> None:
    """``envelopes_published`` for one message the broker accepted."""
    if not envelopes_published.has_listeners() or not envelopes:
        return
    now = datetime.datetime.now(datetime.timezone.utc)
    latencies = [value for value in (latency(e, now) for e in envelopes) if value is not None]
    cqrs_id = envelopes[0].cqrs_id
    _send(envelopes_published, cqrs_id, cqrs_id=cqrs_id, pks=[e.instance_pk for e in envelopes],
          revisions=[e.revision for e in envelopes], queue=queue, exchange=exchange, routing_key=routing_key,
          latency=max(latencies) if latencies else None, duration=duration)


def handled(envelope: Envelope, outcome: str, queue: str | None) -> None:
    """``envelope_applied`` or ``envelope_skipped`` for one row a worker finished with."""
    signal = envelope_applied if outcome in APPLIED else envelope_skipped if outcome in SKIPPED else None
    if signal is None or not signal.has_listeners():
        return
    _send(signal, envelope.cqrs_id, cqrs_id=envelope.cqrs_id, pk=envelope.instance_pk, revision=envelope.revision,
          outcome=outcome, queue=queue, latency=latency(envelope), envelope=envelope)


def retried(envelope: Envelope, queue: str | None, *, attempt: int, delay: float, exception: BaseException) -> None:
    """``envelope_retried`` after a retry of ``envelope`` was sent."""
    if not envelope_retried.has_listeners():
        return
    _send(envelope_retried, envelope.cqrs_id, cqrs_id=envelope.cqrs_id, pk=envelope.instance_pk,
          revision=envelope.revision, outcome='retrying', queue=queue, latency=latency(envelope),
          envelope=envelope, attempt=attempt, delay=delay, exception=exception)


def dead_lettered(letter: dict[str, Any], envelope: Envelope | None, exception: BaseException | str,
                  named: dict[str, Any] | None = None) -> None:
    """``envelope_dead_lettered`` after ``letter`` was published; ``named``: what a raw body names."""
    if not envelope_dead_lettered.has_listeners():
        return
    error = letter['error']
    cqrs_id: Any
    if envelope is not None:
        cqrs_id, pk, revision = envelope.cqrs_id, envelope.instance_pk, envelope.revision
    else:
        named = named or {}
        data = named.get('instance_data')
        cqrs_id, pk = named.get('cqrs_id'), named.get('instance_pk')
        revision = data.get('cqrs_revision') if isinstance(data, dict) else None
    _send(envelope_dead_lettered, cqrs_id, cqrs_id=cqrs_id, pk=pk, revision=revision, queue=error['queue'],
          latency=latency(envelope), reason=error['reason'], attempts=error['attempts'], exception=exception,
          envelope=envelope)
