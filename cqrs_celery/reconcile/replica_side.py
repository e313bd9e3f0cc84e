"""The replica's part of a reconciliation: summarise its copy, answer the master, keep the report.

Steps (each a ``cqrs_celery.reconcile`` message on this service's replica queue):

* ``start`` (from beat or ``cqrs_reconcile``): for each reconciled model, send the master a summary
  (row count and whole-table digest) with the fields it compares;
* ``buckets`` (from the master, when the digests differ): compare the master's bucket digests with
  this copy's and send the rows (pk, revision, content digest) of the differing buckets only;
* ``report`` (from the master, at the end): record the run here too.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.db import router
from django.utils import timezone

from cqrs_celery.conf import get_settings
from cqrs_celery.models import ReconciliationRun
from cqrs_celery.reconcile import tables, transport
from cqrs_celery.reconcile.digest import decode_sums, differing
from cqrs_celery.registry import ReplicaRegistry
from cqrs_celery.signals import reconciled

logger = logging.getLogger(__name__)

#: Flags every step carries along.
FLAGS = ('content', 'dry_run', 'manual')


def start(body: dict[str, Any]) -> list[str]:
    """Send the master a summary of each reconciled model (or of ``body['cqrs_id']``); returns run ids."""
    settings = get_settings()
    queue = settings.queue
    manual = bool(body.get('manual'))
    if not queue:
        logger.warning('cqrs reconcile: this service has no CQRS["queue"], nothing to reconcile')
        return []
    if not settings.replica.reconcile and not manual:
        return []
    cqrs_id = body.get('cqrs_id')
    models = [ReplicaRegistry.get(cqrs_id)] if cqrs_id else tables.reconciled_models()
    runs = []
    for model in models:
        mode = tables.mode(model)
        if mode == tables.OFF:
            logger.warning('cqrs reconcile: cqrs_id=%s is not reconciled (no table, or CQRS_RECONCILE = False)',
                           model.CQRS_ID)
            continue
        content = bool(body.get('content')) and mode == tables.CONTENT
        fields = tables.field_kinds(model) if content else {}
        summary = tables.summarize(tables.replica_rows(model, fields), 1)
        run = str(body['run']) if cqrs_id and body.get('run') else uuid.uuid4().hex
        transport.to_master({'step': 'summary', 'run': run, 'cqrs_id': model.CQRS_ID, 'queue': queue,
                             'content': content, 'dry_run': bool(body.get('dry_run')), 'manual': manual,
                             'fields': fields, 'count': summary.count, 'digest': summary.digest,
                             'trigger': transport.size(body)})
        runs.append(run)
    return runs


def buckets(body: dict[str, Any]) -> None:
    """Answer the master's bucket digests with the rows of the buckets that differ here."""
    model = ReplicaRegistry.get(body['cqrs_id'])
    count = body['buckets']
    fields = body['fields']
    theirs = decode_sums(body['sums'], count)
    mine = tables.summarize(tables.replica_rows(model, fields), count)
    wanted = differing(mine.sums, theirs)
    rows = [[pk, revision, content] for pk, revision, content in
            tables.in_buckets(tables.replica_rows(model, fields), count, set(wanted))] if wanted else []
    transport.to_master({'step': 'rows', 'run': body['run'], 'cqrs_id': body['cqrs_id'],
                         'queue': get_settings().queue, **{flag: bool(body.get(flag)) for flag in FLAGS},
                         'fields': fields, 'buckets': count, 'differing': wanted, 'rows': rows})


#: Fields of a run the master's report carries.
REPORTED = ('content', 'dry_run', 'buckets', 'buckets_differing', 'missing', 'stale', 'ahead', 'changed', 'extra',
            'repaired', 'held_back', 'in_flight', 'messages', 'bytes', 'error', 'details')


def report(body: dict[str, Any]) -> None:
    """Record the master's report of a finished run in this service's database."""
    model = ReplicaRegistry.get(body['cqrs_id'])
    result = body['result']
    values = {name: result[name] for name in REPORTED if name in result}
    using = router.db_for_write(model)
    run, _ = ReconciliationRun._default_manager.using(using).update_or_create(
        run_id=body['run'], side='replica',
        defaults={**values, 'cqrs_id': body['cqrs_id'], 'queue': body['queue'], 'finished_at': timezone.now()})
    reconciled.send(sender=ReconciliationRun, run=run, cqrs_id=run.cqrs_id, queue=run.queue, side='replica',
                    drift=drift_counts(run))


def drift_counts(run: ReconciliationRun) -> dict[str, int]:
    """Rows that differed in ``run``, by kind."""
    return {'missing': run.missing, 'stale': run.stale, 'ahead': run.ahead, 'changed': run.changed,
            'extra': run.extra}
