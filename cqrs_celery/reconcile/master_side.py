"""The master's part of a reconciliation: compare, find the drift, send directed repairs.

Steps (each a ``cqrs_celery.reconcile_master`` message on the master worker's queue):

* ``summary``: take the run's lease; equal whole-table digests end the run (in step); otherwise
  send the replica this table's bucket digests;
* ``rows``: compare the replica's rows of the differing buckets with this table's, then repair:
  a SYNC of the committed row for rows missing, older or changed on the replica (forced only where
  the replica holds a *higher* revision than the master has now), and a DELETE for rows the master
  does not have, all to that replica's queue only, in batches with a pause between them.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from collections.abc import Iterator
from typing import Any

from django.db import router, transaction
from django.utils import timezone

from cqrs_celery.conf import get_settings
from cqrs_celery.constants import FIELD_REVISION, FIELD_UPDATED, SignalType
from cqrs_celery.envelope import Envelope, encode_batch
from cqrs_celery.master.publish import build_envelope
from cqrs_celery.models import (
    MasterTombstone,
    ReconciliationRun,
    pk_hash,
    record_tombstone,
    tombstone_revisions,
)
from cqrs_celery.producer import send_batch
from cqrs_celery.reconcile import tables, transport
from cqrs_celery.reconcile.digest import bucket_count, encode_sums, key_of
from cqrs_celery.reconcile.replica_side import FLAGS, REPORTED, drift_counts
from cqrs_celery.registry import MasterRegistry
from cqrs_celery.replica.apply import lock_keys
from cqrs_celery.serialization import to_json
from cqrs_celery.signals import reconciled

logger = logging.getLogger(__name__)

#: A row repaired by a run and found differing the same way again is not sent again for this long.
HOLD_BACK = 3600.0

#: Seconds after its repair a row still differing the same way is logged as a repair loop.
LOOP_AFTER = 60.0

#: Row keys kept per kind of drift in a run's details.
DETAILS_CAP = 1000

#: Row keys per kind the report to the replica carries.
REPORTED_CAP = 200

KINDS = ('missing', 'stale', 'ahead', 'changed', 'extra')


def summary(body: dict[str, Any]) -> None:
    """Compare whole-table digests; on a difference, send the replica this table's bucket digests."""
    model = MasterRegistry.get(body['cqrs_id'])
    using = router.db_for_write(model)
    run = _open_run(body, using)
    if run is None:
        return
    run.messages, run.bytes = 2, body.get('trigger', 0) + transport.size(body)
    with _recorded(run, using):
        _compare(model, using, run, body)


def _compare(model: Any, using: str, run: ReconciliationRun, body: dict[str, Any]) -> None:
    fields = tables.agreed_fields(model, body['fields'], using) if body['content'] else {}
    count = model._base_manager.using(using).count()
    buckets = bucket_count(max(count, body['count']))
    mine = tables.summarize(tables.master_rows(model, fields, using), buckets)
    run.buckets = buckets
    if fields == body['fields'] and mine.digest == body['digest']:
        _finish(run, using)
        return
    step = {'step': 'buckets', 'run': run.run_id, 'cqrs_id': run.cqrs_id, **{f: bool(body.get(f)) for f in FLAGS},
            'fields': fields, 'buckets': buckets, 'sums': encode_sums(mine.sums)}
    run.bytes += transport.to_replica(run.queue, step)
    run.messages += 1
    run.save(using=using)


def _open_run(body: dict[str, Any], using: str) -> ReconciliationRun | None:
    """The run's record, or None when one of this CQRS_ID and queue started less than the minimum interval ago."""
    runs = ReconciliationRun._default_manager.using(using)
    cqrs_id, queue = body['cqrs_id'], body['queue']
    with transaction.atomic(using=using):
        lock_keys(using, [('cqrs_celery.reconcile', f'{cqrs_id}\x00{queue}')])
        if runs.filter(run_id=body['run'], side='master').exists():
            return None  # the same request delivered twice
        last = runs.filter(side='master', cqrs_id=cqrs_id, queue=queue).order_by('-started_at').first()
        interval = get_settings().master.reconcile_min_interval
        # (a content run may follow a revision-only one at once: beat often starts both together)
        if last is not None and not body.get('manual') and (last.content or not body['content']) and \
                timezone.now() - last.started_at < datetime.timedelta(seconds=interval):
            logger.debug('cqrs reconcile skipped, the last run started less than %ss ago: cqrs_id=%s queue=%s',
                         interval, cqrs_id, queue)
            return None
        return runs.create(run_id=body['run'], side='master', cqrs_id=cqrs_id, queue=queue,
                           content=body['content'], dry_run=body.get('dry_run', False))


def rows(body: dict[str, Any]) -> None:
    """Diff the replica's rows of the differing buckets with this table's and repair the drift."""
    model = MasterRegistry.get(body['cqrs_id'])
    using = router.db_for_write(model)
    runs = ReconciliationRun._default_manager.using(using)
    with transaction.atomic(using=using):
        run = runs.select_for_update().filter(run_id=body['run'], side='master', finished_at=None).first()
        if run is None:
            return  # finished already (the same answer delivered twice)
        run.finished_at = timezone.now()  # claimed: a duplicate answer now finds it finished
        run.save(using=using, update_fields=['finished_at'])
    run.messages += 1
    run.bytes += transport.size(body)
    run.buckets_differing = len(body['differing'])
    with _recorded(run, using):
        _repair_drift(model, using, run, body)


@contextlib.contextmanager
def _recorded(run: ReconciliationRun, using: str) -> Iterator[None]:
    """A step that fails ends its run with the error recorded (and reported to the replica)."""
    try:
        yield
    except Exception as exc:
        run.error = f'{type(exc).__name__}: {exc}'[:2000]
        _finish(run, using)
        raise


def _repair_drift(model: Any, using: str, run: ReconciliationRun, body: dict[str, Any]) -> None:
    plan = diff(model, using, body)
    for kind in KINDS:
        setattr(run, kind, sum(1 for item in plan if item[0] == kind))
    run.details = {kind: [key_of(item[1]) for item in plan if item[0] == kind][:DETAILS_CAP] for kind in KINDS}
    if not run.dry_run:
        send, held, repaired = _hold_back(run, using, plan)
        run.held_back = len(held)
        run.details['repaired'] = repaired
        repair(model, using, run, send)
    _finish(run, using)


def diff(model: Any, using: str, body: dict[str, Any]) -> list[tuple[str, Any, int | None, int | None]]:
    """``(kind, pk in JSON form, master revision, replica revision)`` of every differing row."""
    buckets, wanted, fields = body['buckets'], set(body['differing']), body['fields']
    if not wanted:
        return []
    located = list(tables.in_buckets(tables.master_rows(model, None, using), buckets, wanted))
    if fields:
        pks = [model._meta.pk.to_python(row[0]) for row in located]
        located = [row for start in range(0, len(pks), tables.CHUNK)
                   for row in tables.master_rows(model, fields, using, pks[start:start + tables.CHUNK])]
    master = {key_of(pk): (pk, revision, content) for pk, revision, content, _ in located}
    replica = {key_of(pk): (pk, revision, content) for pk, revision, content in body['rows']}
    plan: list[tuple[str, Any, int | None, int | None]] = []
    for key, (pk, revision, content) in master.items():
        theirs = replica.get(key)
        if theirs is None:
            plan.append(('missing', pk, revision, None))
        elif theirs[1] < revision:
            plan.append(('stale', pk, revision, theirs[1]))
        elif theirs[1] > revision:
            plan.append(('ahead', pk, revision, theirs[1]))
        elif fields and theirs[2] != content:
            plan.append(('changed', pk, revision, theirs[1]))
    plan += [('extra', pk, None, revision) for key, (pk, revision, _) in replica.items() if key not in master]
    return plan


def _hold_back(run: ReconciliationRun, using: str, plan: list[Any]) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """Split ``plan`` into rows to send and rows held back: repaired recently, still differing the same way."""
    # The last run of each kind (revision-only, content): a content run right after a revision-only
    # one does not send its repairs again, and a revision-only run in between does not reset a content loop.
    before: dict[str, Any] = {}
    for content in (not run.content, run.content):
        previous = (ReconciliationRun._default_manager.using(using)
                    .filter(side='master', cqrs_id=run.cqrs_id, queue=run.queue, dry_run=False, content=content)
                    .exclude(pk=run.pk).exclude(finished_at=None).order_by('-started_at').first())
        before.update((previous.details or {}).get('repaired', {}) if previous else {})
    now = time.time()
    send, held, repaired = [], [], {}
    for item in plan:
        kind, pk, master_revision, replica_revision = item
        key = key_of(pk)
        last = before.get(key)
        if last and last[:3] == [kind, master_revision, replica_revision] and now - last[3] < HOLD_BACK:
            held.append(item)
            # (a repair sent moments ago may simply not be applied yet: a loop is logged once, later)
            looping = now - last[3] >= LOOP_AFTER
            repaired[key] = [*last[:4], looping or len(last) > 4]
            if looping and len(last) < 5:
                logger.warning('cqrs reconcile: row still differs after its repair, not sent again for %ss: '
                               'cqrs_id=%s pk=%s revision=%s queue=%s kind=%s replica_revision=%s', HOLD_BACK,
                               run.cqrs_id, pk, master_revision, run.queue, kind, replica_revision)
        else:
            send.append(item)
            repaired[key] = [kind, master_revision, replica_revision, now]
    if len(repaired) > 10 * DETAILS_CAP:
        repaired = dict(list(repaired.items())[:10 * DETAILS_CAP])
    return send, held, repaired


def repair(model: Any, using: str, run: ReconciliationRun, plan: list[Any]) -> None:
    """Send SYNCs and DELETEs for ``plan`` to the run's replica queue, in batches with pauses."""
    settings = get_settings().master
    size = settings.reconcile_batch_size
    for start in range(0, len(plan), size):
        if start:
            time.sleep(settings.reconcile_pause)  # live replication goes first
        envelopes = _envelopes(model, using, run, plan[start:start + size])
        if envelopes:
            send_batch(envelopes)
            run.messages += 1
            run.bytes += transport.size(encode_batch(envelopes))
            run.repaired += len(envelopes)


def _envelopes(model: Any, using: str, run: ReconciliationRun, batch: list[Any]) -> list[Envelope]:
    """Envelopes of one batch, built from the rows as committed now."""
    cutoff = timezone.now() - datetime.timedelta(seconds=get_settings().master.reconcile_grace)
    extra = [item for item in batch if item[0] == 'extra']
    if extra:
        # a row deleted on the master moments ago: its DELETE is on its way
        recent = set(MasterTombstone._default_manager.using(using).filter(
            cqrs_id=run.cqrs_id, pk_hash__in=[pk_hash(key_of(item[1])) for item in extra], deleted_at__gt=cutoff,
        ).values_list('pk_value', flat=True))
        run.in_flight += sum(1 for item in extra if key_of(item[1]) in recent)
        batch = [item for item in batch if item[0] != 'extra' or key_of(item[1]) not in recent]
        extra = [item for item in extra if key_of(item[1]) not in recent]
    known: dict[str, int] = {}
    if extra:
        with transaction.atomic(using=using):
            # The master remembers these pks as deleted first, so a row inserted with one of them
            # later continues above the revision the replica deletes it at.
            lock_keys(using, [(run.cqrs_id, pk) for _, pk, _, _ in extra])
            known = tombstone_revisions(MasterTombstone, using, run.cqrs_id, [pk for _, pk, _, _ in extra])
            for _, pk, _, revision in extra:
                record_tombstone(MasterTombstone, using, run.cqrs_id, pk, max(revision, known.get(key_of(pk), -1)))
        known = tombstone_revisions(MasterTombstone, using, run.cqrs_id, [pk for _, pk, _, _ in extra])
    python = {key_of(item[1]): model._meta.pk.to_python(item[1]) for item in batch}
    found = {key_of(to_json(obj.pk)): obj for obj in
             model.relate_cqrs_serialization(model._base_manager.using(using)).filter(pk__in=python.values())}
    envelopes = []
    for kind, pk, _, replica_revision in batch:
        key = key_of(pk)
        instance = found.get(key)
        if kind == 'extra':
            if instance is not None:
                continue  # created again meanwhile: its own SAVE is on its way
            revision = known[key]
            data = {model._meta.pk.name: pk, FIELD_REVISION: revision, FIELD_UPDATED: to_json(timezone.now())}
            envelope = Envelope(signal_type=SignalType.DELETE, cqrs_id=run.cqrs_id, instance_pk=pk,
                                instance_data=data, queue=run.queue)
        else:
            if instance is None or not instance.is_sync_instance():
                continue  # deleted meanwhile (its DELETE is on its way), or not replicated
            if kind in ('missing', 'stale') and getattr(instance, FIELD_UPDATED, None) and \
                    getattr(instance, FIELD_UPDATED) > cutoff:
                run.in_flight += 1  # changed moments ago: its own message is on its way
                continue
            forced = replica_revision is not None and replica_revision > instance.cqrs_revision
            envelope = build_envelope(instance, SignalType.SYNC, using, queue=run.queue, forced=forced)
        logger.info('cqrs reconcile repair: cqrs_id=%s pk=%s revision=%s queue=%s kind=%s replica_revision=%s '
                    'action=%s', run.cqrs_id, pk, envelope.revision, run.queue, kind, replica_revision,
                    'forced SYNC' if envelope.forced else envelope.signal_type.value)
        envelopes.append(envelope)
    return envelopes


def _finish(run: ReconciliationRun, using: str) -> None:
    """Record the run, report it to the replica and send the ``reconciled`` signal."""
    report: dict[str, Any] = {'step': 'report', 'run': run.run_id, 'cqrs_id': run.cqrs_id, 'queue': run.queue}
    run.messages += 1
    run.finished_at = timezone.now()
    result = {name: getattr(run, name) for name in REPORTED}
    result['details'] = {k: v[:REPORTED_CAP] for k, v in (run.details or {}).items() if k in KINDS}
    report['result'] = result
    run.bytes += transport.size(report)
    result['bytes'] = run.bytes
    run.save(using=using)
    try:
        transport.to_replica(run.queue, report)
    except Exception:
        logger.exception('cqrs reconcile could not send its report: cqrs_id=%s queue=%s', run.cqrs_id, run.queue)
    logger.info('cqrs reconcile finished: cqrs_id=%s queue=%s buckets=%s differing=%s missing=%s stale=%s ahead=%s '
                'changed=%s extra=%s repaired=%s held_back=%s in_flight=%s messages=%s bytes=%s dry_run=%s',
                run.cqrs_id, run.queue, run.buckets, run.buckets_differing, run.missing, run.stale, run.ahead,
                run.changed, run.extra, run.repaired, run.held_back, run.in_flight, run.messages, run.bytes,
                run.dry_run)
    reconciled.send(sender=ReconciliationRun, run=run, cqrs_id=run.cqrs_id, queue=run.queue, side='master',
                    drift=drift_counts(run))
