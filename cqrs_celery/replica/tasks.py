"""The Celery task every envelope travels in: decode, apply, then ack or retry.

The task is registered with ``shared_task`` so it binds to the project's own Celery app.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.worker.request import Request

from cqrs_celery.conf import get_settings
from cqrs_celery.constants import JSON_CONTENT_TYPE, TASK_NAME
from cqrs_celery.envelope import Envelope, decode
from cqrs_celery.exceptions import DataError, EnvelopeError, UnknownCQRSIdError
from cqrs_celery.producer import send
from cqrs_celery.registry import ReplicaRegistry
from cqrs_celery.replica.apply import apply

logger = logging.getLogger(__name__)


class JSONOnlyRequest(Request):  # type: ignore[misc]
    """Refuses any body that is not JSON before the task runs (pickle never reaches a replica)."""

    def execute_using_pool(self, pool: Any, **kwargs: Any) -> Any:
        if self.content_type != JSON_CONTENT_TYPE:
            logger.error('cqrs refused a %s message (only %s is accepted): task_id=%s queue=%s',
                         self.content_type, JSON_CONTENT_TYPE, self.id, get_settings().queue)
            self.reject(requeue=False)
            return None
        return super().execute_using_pool(pool, **kwargs)


@shared_task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
             Request=JSONOnlyRequest)
def apply_envelope(self: Any, raw: Any) -> str:
    """Apply one envelope on this replica service; returns the outcome's name."""
    queue = get_settings().queue
    try:
        envelope = decode(raw)
    except EnvelopeError as exc:
        logger.error('cqrs bad envelope, dropped: queue=%s reason=%s', queue, exc)
        return 'invalid'
    fields = envelope.log_fields()
    try:
        result = apply(envelope, queue)
    except (UnknownCQRSIdError, DataError) as exc:
        logger.error('cqrs envelope cannot be applied: cqrs_id=%s pk=%s revision=%s correlation_id=%s '
                     'queue=%s reason=%s', *fields.values(), queue, exc)
        return 'invalid'
    except Exception as exc:
        _retry(envelope, queue, exc)
        return 'retrying'
    logger.debug('cqrs %s: cqrs_id=%s pk=%s revision=%s correlation_id=%s queue=%s',
                 result.outcome.value, *fields.values(), queue)
    return result.outcome.value


def _retry(envelope: Envelope, queue: str | None, exc: Exception) -> None:
    """Send the envelope again to this service's queue only, with the attempt count in it."""
    model = ReplicaRegistry.get(envelope.cqrs_id)
    fields = envelope.log_fields()
    if queue and model.should_retry_cqrs(envelope.retries, exc):
        delay = model.get_cqrs_retry_delay(envelope.retries)
        logger.warning('cqrs apply failed, retry %s in %ss: cqrs_id=%s pk=%s revision=%s correlation_id=%s '
                       'queue=%s error=%r', envelope.retries + 1, delay, *fields.values(), queue, exc)
        send(envelope.replace(retries=envelope.retries + 1), route_to=queue, countdown=delay)
        return
    logger.error('cqrs apply failed, giving up after %s retries: cqrs_id=%s pk=%s revision=%s '
                 'correlation_id=%s queue=%s error=%r', envelope.retries, *fields.values(), queue, exc,
                 exc_info=exc)
