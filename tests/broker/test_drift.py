"""Reconciliation through real brokers, workers and beat (tier iii): drift repaired with no command.

The master (this process, its worker and beat) and one replica service (its worker and its own beat,
which starts reconciliation every few seconds) run as real processes on RabbitMQ and on Redis.
"""

from __future__ import annotations

import datetime
import itertools
import time

from django.db.models import Sum
from django.utils import timezone

from cqrs_celery.models import ReconciliationRun
from tests.broker.compare import describe, in_step
from tests.broker.harness import ReplicaBeat, start_all, wait_until
from tests.master_app.models import Item
from tests.replica_app.models import ReplicaItem

ROWS = 10_000
#: Drift made behind the library's back: (what, rows).
DRIFT = {'deleted on the replica': 37, 'changed on the replica at their revision': 41,
         'older revision on the replica': 19, 'added on the replica only': 11,
         'deleted on the master without a message': 23}


def start_replica(services, replica_db):
    """The master's worker and beat, a replica worker and the replica's beat (reconciling every 2 s)."""
    master_queue = services.master()
    queue = services.queue('drift')
    database = replica_db('replica_a')
    services.worker(queue, database, CQRS_TEST_RECONCILE_MASTER_QUEUE=master_queue).start()
    return queue, database, master_queue


def start_beat(services, queue, database, master_queue):
    beat = ReplicaBeat(services.broker_url, queue, database, master_queue, every=2.0, content_every=3.0)
    services.workers.append(beat)
    beat.start()


def seed():
    """10,000 rows replicated, 19 of them changed once more (revision 1) so they can be set back."""
    for start in range(0, ROWS, 2000):
        Item.cqrs.bulk_create([Item(sku=f'sku-{i:05d}', name=f'item {i}', quantity=i)
                               for i in range(start, start + 2000)])
    Item.cqrs.bulk_update(Item.objects.filter(sku__in=[f'sku-{i:05d}' for i in range(100, 119)]), name='renamed')
    wait_until(lambda: in_step('replica_a', 'item'), timeout=120, interval=1,
               message=lambda: describe('replica_a', 'item'))


def make_drift():
    replica = ReplicaItem.objects.using('replica_a')
    keys = [f'sku-{i:05d}' for i in range(ROWS)]
    replica.filter(sku__in=keys[1000:1037]).delete()
    replica.filter(sku__in=keys[2000:2041]).update(name='edited by hand')
    replica.filter(sku__in=keys[100:119]).update(cqrs_revision=0, name='the older name')
    for i in range(11):
        replica.create(sku=f'stray-{i}', name='only here', quantity=0, cqrs_revision=i,
                       cqrs_updated=timezone.now())
    Item.objects.filter(sku__in=keys[3000:3023])._raw_delete('default')  # no signal, no outbox event


def runs(**filters):
    """The master's runs of the item table (the replica's beat reconciles every model it replicates)."""
    return ReconciliationRun.objects.using('default').filter(side='master', cqrs_id='item', **filters)


def figures(queryset):
    totals = queryset.aggregate(messages=Sum('messages'), bytes=Sum('bytes'), repaired=Sum('repaired'))
    return {key: value or 0 for key, value in totals.items()}


def test_beat_reconciliation_repairs_every_kind_of_drift_with_traffic_about_the_drift(services, replica_db):
    queue, database, master_queue = start_replica(services, replica_db)
    seed()
    start_beat(services, queue, database, master_queue)

    # An in-sync table: a few small messages per run.
    for content in (False, True):
        wait_until(lambda content=content: runs(queue=queue, content=content).exclude(finished_at=None).exists(),
                   timeout=60, message=f'an in-sync run (content={content})')
    in_sync = {content: runs(queue=queue, content=content).exclude(finished_at=None).first()
               for content in (False, True)}
    for content, run in in_sync.items():
        print(f'\n[{services.kind}] in-sync run (content={content}): {run.messages} messages, {run.bytes} bytes, '
              f'{run.drift} rows differing')
        assert run.drift == 0 and run.repaired == 0
        assert run.messages <= 3 and run.bytes < 2000

    drifted_at = timezone.now()
    began = time.monotonic()
    make_drift()
    assert sum(DRIFT.values()) == 131
    wait_until(lambda: in_step('replica_a', 'item'), timeout=90, interval=0.5,
               message=lambda: describe('replica_a', 'item'))
    seconds = time.monotonic() - began

    after = runs(queue=queue, started_at__gte=drifted_at - datetime.timedelta(seconds=1))
    total = figures(after)
    print(f'[{services.kind}] drift of 131 rows repaired in {seconds:.1f}s by {after.count()} runs: '
          f'{total["repaired"]} rows re-sent, {total["messages"]} messages, {total["bytes"]} bytes')
    for run in after.order_by('started_at'):
        print(f'    run content={run.content}: missing={run.missing} stale={run.stale} changed={run.changed} '
              f'extra={run.extra} ahead={run.ahead} buckets {run.buckets_differing}/{run.buckets} '
              f'repaired={run.repaired} held_back={run.held_back} messages={run.messages} bytes={run.bytes}')
    assert total['repaired'] < 3 * 131
    assert ReplicaItem.objects.using('replica_a').count() == Item.objects.count() == ROWS - 23
    assert not ReplicaItem.objects.using('replica_a').filter(sku__startswith='stray-').exists()
    # the replica keeps the master's report of each run too
    last = runs(queue=queue).exclude(finished_at=None).order_by('-started_at').first()
    wait_until(lambda: ReconciliationRun.objects.using('replica_a').filter(run_id=last.run_id, side='replica')
               .exists(), timeout=30, message='the report of the last run on the replica')


def test_two_beats_and_two_worker_nodes_reconcile_safely_while_changes_keep_flowing(services, replica_db):
    import random

    master_queue = services.master()
    queue = services.queue('drift2')
    database = replica_db('replica_a')
    start_all(*[services.worker(queue, database, node=node, CQRS_TEST_RECONCILE_MASTER_QUEUE=master_queue)
                for node in ('one', 'two')])
    Item.cqrs.bulk_create([Item(sku=f'live-{i:04d}', name=f'item {i}', quantity=i) for i in range(2000)])
    wait_until(lambda: in_step('replica_a', 'item'), timeout=90, interval=1,
               message=lambda: describe('replica_a', 'item'))
    beats = []
    for name in ('a', 'b'):  # two beats of the same replica service, started together
        beat = ReplicaBeat(services.broker_url, queue, database, master_queue, every=1.0, content_every=1.5)
        beat.name = f'{queue}-beat-{name}'
        beat.log_path = beat.log_path.with_name(f'{beat.name}.log')
        beat.arguments[-1] = str(beat.log_path.with_name(f'{beat.name}-schedule'))
        beats.append(beat)
    services.workers += beats
    start_all(*beats)

    replica = ReplicaItem.objects.using('replica_a')
    replica.filter(sku__in=[f'live-{i:04d}' for i in range(0, 40)]).delete()
    replica.filter(sku__in=[f'live-{i:04d}' for i in range(40, 80)]).update(name='edited by hand')
    Item.objects.filter(sku__in=[f'live-{i:04d}' for i in range(80, 100)])._raw_delete('default')
    # Changes keep flowing through the library while the runs compare and repair.
    rng = random.Random(7)
    deadline = time.monotonic() + 8
    created = changes = 0
    while time.monotonic() < deadline:
        for item in Item.objects.filter(sku__in=[f'live-{rng.randrange(100, 2000):04d}' for _ in range(20)]):
            item.quantity += 1
            item.save()
            changes += 1
        Item.objects.create(sku=f'new-{created:04d}', name='new', quantity=created)
        created += 1
        changes += 2
        Item.objects.filter(sku=f'live-{rng.randrange(100, 2000):04d}').delete()
        time.sleep(0.05)
    wait_until(lambda: in_step('replica_a', 'item'), timeout=90, interval=0.5,
               message=lambda: describe('replica_a', 'item'))

    started = list(runs(queue=queue).order_by('started_at').values_list('started_at', 'content'))
    total = figures(runs(queue=queue))
    print(f'\n[{services.kind}] two beats, two nodes, changes flowing: {len(started)} runs, '
          f'{total["repaired"]} rows re-sent, {total["messages"]} messages, {total["bytes"]} bytes')
    assert len(started) >= 3
    for content in (False, True):
        moments = [moment for moment, flag in started if flag == content]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(moments)]
        assert all(gap >= 0.9 for gap in gaps), f'runs closer than the minimum interval: {gaps}'
    in_flight = sum(runs(queue=queue).values_list('in_flight', flat=True))
    print(f'[{services.kind}] rows left to their own messages (changed moments ago): {in_flight}')
    assert not replica.filter(sku__in=[f'live-{i:04d}' for i in range(80, 100)]).exists()
    # 100 rows drifted; a live change slower than the grace period may be sent once more, never more
    print(f'[{services.kind}] live changes on the master meanwhile: {changes}')
    assert total['repaired'] < 100 + changes
