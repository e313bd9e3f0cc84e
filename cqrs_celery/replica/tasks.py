"""The Celery task every envelope travels in: decode, apply, then ack, retry or dead-letter.

The task is registered with ``shared_task`` so it binds to the project's own Celery app. It never
raises: every failure ends as a retry (a new message to this service's queue only, the attempt
count inside the envelope) or as a dead letter, and the message itself is acknowledged only after
that, so a worker killed at any moment loses nothing (``acks_late`` + ``reject_on_worker_lost``).
When the retry or dead letter cannot be published, the message is rejected back to the queue.
"""

from __future__ import annotations

import datetime
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from celery import shared_task
from celery.exceptions import Reject
from django import db

from cqrs_celery import observability
from cqrs_celery.conf import get_settings
from cqrs_celery.constants import TASK_NAME
from cqrs_celery.envelope import Envelope, decode_message
from cqrs_celery.exceptions import DataError, EnvelopeError, UnknownCQRSIdError
from cqrs_celery.producer import send
from cqrs_celery.registry import ReplicaRegistry
from cqrs_celery.replica import dead_letters, gather
from cqrs_celery.replica.apply import Result
from cqrs_celery.replica.group import apply_many
from cqrs_celery.replica.guard import GuardedRequest
from cqrs_celery.replica.queues import max_retry_delay
from cqrs_celery.signals import envelope_handled

logger = logging.getLogger(__name__)


# celery-types' shared_task overloads have no ``Request`` option (Celery takes any Task attribute as
# an option); passing it here keeps the app's own Task class as the base, which ``base=`` would not.
@shared_task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True,  # type: ignore[call-overload, untyped-decorator]
             Request=GuardedRequest)
def apply_envelope(self: Any, raw: Any = None, *args: Any, **kwargs: Any) -> str:
    """Apply one message (a v1 envelope or a v2 batch) on this replica service; returns the outcome(s).

    Nothing escapes but ``Reject(requeue=True)``: an error this module does not expect dead-letters
    the whole message with its raw form (its rows apply again idempotently when it is retried), so
    it is neither lost (Celery acknowledges a task that raised) nor taken again in a loop.
    """
    try:
        return _apply_message(self, raw, args, kwargs)
    except Reject:
        raise
    except Exception as exc:
        logger.exception('cqrs replica task failed unexpectedly; the message is dead-lettered: queue=%s',
                         get_settings().queue)
        return _dead(None, exc, dead_letters.INTERNAL_ERROR, raw=[raw, *args, kwargs] if args or kwargs else raw,
                     attempts=0)


def _apply_message(self: Any, raw: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    queue = get_settings().queue
    if args or kwargs:
        return _dead(None, EnvelopeError('the task takes exactly one argument, the envelope', raw),
                     'bad input', raw=[raw, *args, kwargs], attempts=0)
    try:
        rows = decode_message(raw)
    except EnvelopeError as exc:
        return _handled(self, None, _dead(None, exc, 'bad input', raw=raw, attempts=0), queue, raw)
    # A retry applies alone: a row that failed would otherwise send every group it joins to the
    # slower one-transaction-per-row fallback.
    retrying = any(isinstance(row, Envelope) and row.retries for row in rows)
    taken = [] if retrying else gather.take(self.request, queue, get_settings().replica.group_rows - len(rows))
    if not taken:
        return _summary(_apply_rows(self, rows, queue))
    try:
        outcomes = _apply_rows(self, rows, queue, taken)
        gather.acknowledge(taken)
    except Reject:
        raise
    except Exception:
        logger.exception('cqrs could not apply %s messages taken from queue %s together with this one; they go '
                         'back to the queue and this one applies alone', len(taken), queue)
        gather.give_back(taken)
        return _summary(_apply_rows(self, rows, queue))
    finally:
        gather.give_back(taken)  # (those acknowledged are not touched)
    return _summary(outcomes)


def _apply_rows(task: Any, rows: Sequence[Envelope | EnvelopeError], queue: str | None,
                taken: Sequence[gather.Taken] = ()) -> list[str]:
    """Apply the rows of this message and of the ``taken`` ones together; one outcome per row."""
    outcomes: list[str] = []
    envelopes = _due(task, rows, queue, outcomes)
    for item in taken:
        if item.error is not None:
            outcomes.append(_handled(task, None, _dead(None, item.error, 'bad input', raw=item.raw, attempts=0),
                                     queue, item.raw))
        envelopes.extend(_due(task, item.rows, queue, outcomes))
    if taken:
        logger.debug('cqrs applying %s rows of %s messages in one group: queue=%s', len(envelopes), len(taken) + 1,
                     queue)
    results = apply_many(envelopes, queue)
    for envelope, result in zip(envelopes, results, strict=True):
        outcomes.append(_handled(task, envelope, _settle(envelope, queue, result), queue))
    return outcomes


def _due(task: Any, rows: Sequence[Envelope | EnvelopeError], queue: str | None, outcomes: list[str]) -> list[Envelope]:
    """The rows to apply now; the others (bad, expired, not yet due) get their outcome in ``outcomes``."""
    envelopes: list[Envelope] = []
    for row in rows:
        if isinstance(row, EnvelopeError):
            outcomes.append(_handled(task, None, _dead(None, row, 'bad input', raw=row.raw, attempts=0), queue,
                                     row.raw))
        elif row.expires is not None and row.is_expired():
            outcome = _dead(row, EnvelopeError(f'expired at {row.expires.isoformat()}'), 'expired',
                            attempts=row.retries)
            outcomes.append(_handled(task, row, outcome, queue))
        elif row.not_before is not None and row.not_before > _now() + datetime.timedelta(seconds=_LONGEST_DELAY):
            outcome = _dead(row, EnvelopeError(f'not_before {row.not_before.isoformat()} is further ahead than any '
                                               'retry delay (ten years)'), 'bad input', attempts=row.retries)
            outcomes.append(_handled(task, row, outcome, queue))
        elif row.not_before is not None and queue and _wait(row, queue):
            outcomes.append(_handled(task, row, 'waiting', queue))
        else:
            envelopes.append(row)
    return envelopes


def _summary(outcomes: list[str]) -> str:
    if len(outcomes) == 1:
        return outcomes[0]
    return ' '.join(f'{name}={outcomes.count(name)}' for name in sorted(set(outcomes)))


def _handled(task: Any, envelope: Envelope | None, outcome: str, queue: str | None, raw: Any = None) -> str:
    try:
        envelope_handled.send(sender=task, envelope=envelope, outcome=outcome, queue=queue, raw=raw)
    except Exception:
        logger.exception('cqrs envelope_handled receiver failed (ignored)')
    if envelope is not None:
        observability.handled(envelope, outcome, queue)
    return outcome


def _settle(envelope: Envelope, queue: str | None, result: Result | Exception) -> str:
    """Map one row's result to its outcome name, or to a dead letter or a retry."""
    if isinstance(result, UnknownCQRSIdError | DataError | db.DataError):
        # db.DataError: a value the database refuses (too long, malformed); retrying cannot help.
        return _dead(envelope, result, 'bad input', attempts=envelope.retries + 1)
    if isinstance(result, Exception):
        return _retry(envelope, queue, result)
    logger.debug('cqrs %s: cqrs_id=%s pk=%s revision=%s correlation_id=%s queue=%s',
                 result.outcome.value, *envelope.log_fields().values(), queue)
    return result.outcome.value


def _dead(envelope: Envelope | None, exc: BaseException, reason: str, *, attempts: int, raw: Any = None,
          traceback: bool = False) -> str:
    """Publish the dead letter; ``attempts``: how many times the change was tried (0: never applied).

    ``traceback``: the exception came from applying (the model's own code, the database), so the
    log line carries its traceback.
    """
    if traceback and envelope is not None:
        logger.error('cqrs apply failed at attempt %s, no retry left: cqrs_id=%s pk=%s revision=%s '
                     'correlation_id=%s queue=%s error=%r', attempts, *envelope.log_fields().values(),
                     get_settings().queue, exc, exc_info=exc)
    with _requeue_on_failure('dead-letter', envelope):
        letter = dead_letters.record(error=exc, reason=reason, attempts=attempts, envelope=envelope, raw=raw)
        dead_letters.send(letter)
    observability.dead_lettered(letter, envelope, exc, dead_letters.named_in_letter(letter))
    return 'dead_lettered'


@contextmanager
def _requeue_on_failure(what: str, envelope: Envelope | None) -> Iterator[None]:
    """A retry or dead letter that cannot be published puts the message back instead of losing it.

    A task that raised would be acknowledged (Celery acks failed tasks by default), so the
    envelope would be gone; ``Reject(requeue=True)`` hands it to a worker again.
    """
    try:
        yield
    except Exception as exc:
        fields = envelope.log_fields() if envelope else {}
        logger.exception('cqrs could not %s, the message is requeued: cqrs_id=%s pk=%s revision=%s',
                         what, fields.get('cqrs_id'), fields.get('pk'), fields.get('revision'))
        raise Reject(exc, requeue=True) from exc


def _retry(envelope: Envelope, queue: str | None, exc: Exception) -> str:
    """Send the envelope again to this service's queue only, with the attempt count in it.

    The delay is the model's own (``get_cqrs_retry_delay``), however long. A message must not wait
    unacknowledged in a worker longer than the broker allows (on Redis, the visibility timeout),
    so a longer delay travels as hops of at most ``max_retry_delay()`` with ``not_before`` set.
    """
    model = ReplicaRegistry.get(envelope.cqrs_id)
    if not queue or not _should_retry(model, envelope, exc):
        return _dead(envelope, exc, f'failed after {envelope.retries} retries', attempts=envelope.retries + 1,
                     traceback=True)
    delay = _retry_delay(model, envelope)
    with _requeue_on_failure('send a retry', envelope):
        hop = min(delay, max_retry_delay())
        not_before = _now() + datetime.timedelta(seconds=delay) if hop < delay else None
        # The traceback is logged once, at the first failure (and again with the dead letter): a
        # change that keeps failing does not repeat it at every retry.
        logger.warning('cqrs apply failed, retry %s in %.1fs: cqrs_id=%s pk=%s revision=%s correlation_id=%s '
                       'queue=%s error=%r', envelope.retries + 1, delay, *envelope.log_fields().values(), queue,
                       exc, exc_info=exc if envelope.retries == 0 else None)
        send(envelope.replace(retries=envelope.retries + 1, not_before=not_before), route_to=queue, countdown=hop)
    observability.retried(envelope, queue, attempt=envelope.retries + 1, delay=delay, exception=exc)
    return 'retrying'


#: Longest retry delay, in seconds (ten years, as the settings allow): every date computed from it exists.
_LONGEST_DELAY = 10 * 365 * 24 * 3600.0


def _should_retry(model: Any, envelope: Envelope, exc: Exception) -> bool:
    """The model's ``should_retry_cqrs``; if it raises, the retry limit of the settings decides."""
    try:
        return bool(model.should_retry_cqrs(envelope.retries, exc))
    except Exception:
        logger.exception('cqrs %s.should_retry_cqrs failed; CQRS_MAX_RETRIES decides: cqrs_id=%s pk=%s revision=%s',
                         model.__name__, envelope.cqrs_id, envelope.instance_pk, envelope.revision)
        return envelope.retries < get_settings().replica.max_retries


def _retry_delay(model: Any, envelope: Envelope) -> float:
    """The model's ``get_cqrs_retry_delay`` in seconds, within 0…ten years.

    A delay that is not a number, not finite or negative (or a method that raises) gives
    ``retry_backoff_max``.
    """
    try:
        delay = float(model.get_cqrs_retry_delay(envelope.retries))
    except Exception:
        logger.exception('cqrs %s.get_cqrs_retry_delay failed; retry_backoff_max is used: cqrs_id=%s pk=%s',
                         model.__name__, envelope.cqrs_id, envelope.instance_pk)
        delay = math.nan
    if not math.isfinite(delay) or delay < 0:
        delay = get_settings().replica.retry_backoff_max
    return min(delay, _LONGEST_DELAY)


def _wait(envelope: Envelope, queue: str) -> bool:
    """Send a retry that arrived before its time on for another hop; False when it is due."""
    assert envelope.not_before is not None
    remaining = (envelope.not_before - _now()).total_seconds()
    if remaining <= 0:
        return False
    with _requeue_on_failure('postpone a retry', envelope):
        send(envelope, route_to=queue, countdown=min(remaining, max_retry_delay()))
    return True


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
