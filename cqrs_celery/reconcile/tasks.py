"""The two Celery tasks of reconciliation: thin, they check a step's shape and hand it on.

``cqrs_celery.reconcile`` runs on a replica service's worker (its replica queue; beat's ``start``
and the master's ``buckets`` and ``report``); ``cqrs_celery.reconcile_master`` runs on the master's
worker (``summary`` and ``rows`` from replicas). A message that is not a well-formed step is logged
and dropped: reconciliation runs again on the next beat, so nothing is retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import shared_task

from cqrs_celery.constants import RECONCILE_MASTER_TASK, RECONCILE_TASK
from cqrs_celery.exceptions import CQRSError
from cqrs_celery.reconcile import master_side, replica_side
from cqrs_celery.reconcile.digest import KINDS
from cqrs_celery.replica.guard import GuardedRequest

logger = logging.getLogger(__name__)


def _text(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 200


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _flags(body: dict[str, Any]) -> bool:
    return all(isinstance(body.get(flag, False), bool) for flag in replica_side.FLAGS)


def _fields(value: Any) -> bool:
    return isinstance(value, dict) and all(_text(k) and v in KINDS for k, v in value.items())


def _buckets(value: Any) -> bool:
    return _count(value) and value >= 1 and value & (value - 1) == 0


def _row(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 3 and isinstance(value[0], str | int)
            and isinstance(value[1], int) and not isinstance(value[1], bool) and isinstance(value[2], str))


#: Every step: who handles it, and what its body must hold.
STEPS: dict[str, tuple[Callable[[dict[str, Any]], Any], dict[str, Callable[[Any], bool]]]] = {
    'start': (replica_side.start, {}),
    'buckets': (replica_side.buckets, {'run': _text, 'cqrs_id': _text, 'fields': _fields, 'buckets': _buckets,
                                       'sums': lambda v: isinstance(v, str)}),
    'report': (replica_side.report, {'run': _text, 'cqrs_id': _text, 'queue': _text,
                                     'result': lambda v: isinstance(v, dict)}),
    'summary': (master_side.summary, {'run': _text, 'cqrs_id': _text, 'queue': _text, 'fields': _fields,
                                      'count': _count, 'digest': lambda v: isinstance(v, str)}),
    'rows': (master_side.rows, {'run': _text, 'cqrs_id': _text, 'queue': _text, 'fields': _fields,
                                'buckets': _buckets,
                                'differing': lambda v: isinstance(v, list) and all(map(_count, v)),
                                'rows': lambda v: isinstance(v, list) and all(map(_row, v))}),
}

REPLICA_STEPS = frozenset({'start', 'buckets', 'report'})
MASTER_STEPS = frozenset({'summary', 'rows'})


def handle(body: Any, allowed: frozenset[str]) -> str:
    """Check ``body`` and run its step; returns the step's name, or why it was dropped."""
    step = body.get('step') if isinstance(body, dict) else None
    if step not in allowed:
        logger.warning('cqrs reconcile message dropped: step %r does not belong here (expected one of %s)',
                       step, ', '.join(sorted(allowed)))
        return 'dropped'
    function, shape = STEPS[step]
    wrong = sorted(key for key, valid in shape.items() if not valid(body.get(key)))
    if wrong or not _flags(body) or (body.get('cqrs_id') is not None and not _text(body['cqrs_id'])):
        logger.warning('cqrs reconcile %s message dropped: malformed %s', step, ', '.join(wrong) or 'flags')
        return 'dropped'
    try:
        function(body)
    except CQRSError as exc:
        logger.warning('cqrs reconcile %s failed: cqrs_id=%s queue=%s error=%s', step, body.get('cqrs_id'),
                       body.get('queue'), exc)
        return 'failed'
    except Exception:
        logger.exception('cqrs reconcile %s failed: cqrs_id=%s queue=%s', step, body.get('cqrs_id'),
                         body.get('queue'))
        return 'failed'
    return str(step)


# (see replica/tasks.py for why Request is passed as an option)
@shared_task(name=RECONCILE_TASK, ignore_result=True, Request=GuardedRequest)  # type: ignore[call-overload, untyped-decorator]
def reconcile(body: Any = None) -> str:
    """A replica's reconciliation step (``start`` from beat; ``buckets`` and ``report`` from the master)."""
    return handle(body if body is not None else {'step': 'start'}, REPLICA_STEPS)


@shared_task(name=RECONCILE_MASTER_TASK, ignore_result=True)
def reconcile_master(body: Any = None) -> str:
    """A master's reconciliation step (``summary`` and ``rows`` from a replica)."""
    return handle(body, MASTER_STEPS)
