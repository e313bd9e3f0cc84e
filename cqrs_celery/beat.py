"""Periodic tasks for Celery beat: outbox relay, tombstone clean-up, reconciliation; a schedule helper.

Add them in one line to your Celery configuration::

    from cqrs_celery.beat import beat_schedule
    app.conf.beat_schedule = {**app.conf.beat_schedule, **beat_schedule()}

This module imports no models, so ``beat_schedule()`` can be called from ``settings.py``.
The tasks run on whichever worker consumes the queue they are sent to (the master's workers for the
relay; every service for the clean-up). Reconciliation starts on a replica service: its entry is sent
to that service's own replica queue (``reconcile_queue``), see ``docs/reconciliation.md``.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from celery import shared_task
from django.db import router
from django.utils import timezone

from cqrs_celery import topology
from cqrs_celery.conf import get_settings
from cqrs_celery.constants import RECONCILE_TASK
from cqrs_celery.registry import MasterRegistry, ReplicaRegistry

logger = logging.getLogger(__name__)

RELAY_TASK = 'cqrs_celery.relay_outbox'
CLEANUP_TASK = 'cqrs_celery.clean_tombstones'

#: Seconds reconciliation runs are kept (removed by the tombstone clean-up).
RUN_RETENTION = 30 * 24 * 3600


def _master_databases() -> list[str]:
    from cqrs_celery.models import OutboxEvent

    aliases = {router.db_for_write(model) for model in MasterRegistry.models()}
    return sorted(aliases) or [router.db_for_write(OutboxEvent)]


@shared_task(name=RELAY_TASK, ignore_result=True)
def relay_outbox() -> int:
    """Publish outbox events left behind on every database that holds master models."""
    from cqrs_celery.master.outbox import relay

    return sum(relay(using) for using in _master_databases())


@shared_task(name=CLEANUP_TASK, ignore_result=True)
def clean_tombstones() -> int:
    """Forget tombstones older than the retention periods (the master's outlive the replicas'), and
    reconciliation runs older than ``RUN_RETENTION``."""
    from cqrs_celery.models import MasterTombstone, ReconciliationRun, ReplicaTombstone

    settings = get_settings()
    removed = 0
    now = timezone.now()
    if MasterRegistry.ids():
        cutoff = now - datetime.timedelta(seconds=settings.master.tombstone_retention)
        for using in _master_databases():
            removed += MasterTombstone._default_manager.using(using).filter(deleted_at__lt=cutoff).delete()[0]
    if ReplicaRegistry.ids():
        cutoff = now - datetime.timedelta(seconds=settings.replica.tombstone_retention)
        aliases = {router.db_for_write(model) for model in ReplicaRegistry.models()
                   if not getattr(model, 'CQRS_NO_DB_OPERATIONS', False)}
        for using in sorted(aliases):
            removed += ReplicaTombstone._default_manager.using(using).filter(deleted_at__lt=cutoff).delete()[0]
    if removed:
        logger.info('cqrs removed %s expired tombstones', removed)
    aliases = {router.db_for_write(model) for model in [*MasterRegistry.models(), *ReplicaRegistry.models()]
               if hasattr(model, '_meta')}
    cutoff = now - datetime.timedelta(seconds=RUN_RETENTION)
    for using in sorted(aliases):
        ReconciliationRun._default_manager.using(using).filter(started_at__lt=cutoff).delete()
    return removed


def beat_schedule(relay_every: float = 2.0, cleanup_every: float = 3600.0, queue: str | None = None,
                  relay: bool = True, cleanup: bool = True, reconcile_queue: str | None = None,
                  reconcile_every: float = 300.0, content_every: float | None = 3600.0
                  ) -> dict[str, dict[str, Any]]:
    """Entries for ``app.conf.beat_schedule`` (or ``CELERY_BEAT_SCHEDULE``).

    Args:
        relay_every: seconds between outbox relay runs (master services).
        cleanup_every: seconds between tombstone clean-ups.
        queue: queue the relay and clean-up are sent to (default: the app's default queue).
        relay / cleanup: leave an entry out (a replica-only service needs no relay).
        reconcile_queue: a replica service's own queue (``CQRS['queue']``): adds the reconciliation
            entries, sent to that queue (its replica worker starts them).
        reconcile_every: seconds between reconciliations comparing revisions.
        content_every: seconds between reconciliations that also compare field content (``None``:
            never; they cost a read and a serialization of every row on both sides).
    """
    options: dict[str, Any] = {'queue': queue} if queue else {}
    schedule: dict[str, dict[str, Any]] = {}
    if relay:
        # A relay run that waited longer than a few intervals is pointless: a newer one follows.
        schedule['cqrs-outbox-relay'] = {'task': RELAY_TASK, 'schedule': relay_every,
                                         'options': {**options, 'expires': max(relay_every * 5, 10)}}
    if cleanup:
        schedule['cqrs-tombstone-cleanup'] = {'task': CLEANUP_TASK, 'schedule': cleanup_every,
                                              'options': {**options, 'expires': cleanup_every}}
    if reconcile_queue:
        # To this service's replica queue through cqrs.direct, like a directed SYNC (no ``expires``
        # header: the replica queue's gate refuses it; a late start is harmless, the master's
        # minimum interval drops runs that come too close together).
        # (``declare: []``: Celery would otherwise declare its default queue on the way.)
        route = {'exchange': topology.DIRECT_EXCHANGE_NAME, 'routing_key': topology.direct_routing_key(reconcile_queue),
                 'declare': []}
        schedule['cqrs-reconcile'] = {'task': RECONCILE_TASK, 'schedule': reconcile_every,
                                      'args': [{'step': 'start', 'content': False}], 'options': route}
        if content_every:
            schedule['cqrs-reconcile-content'] = {'task': RECONCILE_TASK, 'schedule': content_every,
                                                  'args': [{'step': 'start', 'content': True}], 'options': route}
    return schedule
