"""A replica behind on single-row messages applies many of them in one transaction (tier iii).

The master publishes inline here, so each change is a message of its own, and the replica's
queue fills while no worker runs. Each test runs on RabbitMQ and on Redis with real worker
processes; the replica writes to its own PostgreSQL database, where ``xmin`` tells which
transaction last wrote each row.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import connections
from django.db.models import Count
from django.test import override_settings

from cqrs_celery.constants import TASK_NAME
from tests.broker.compare import describe, in_step
from tests.broker.harness import queue_depth, wait_until
from tests.broker.test_reliability import _raw_task_message, applied, dead_letters
from tests.master_app.models import Item
from tests.replica_app.models import AppliedLog, ReplicaItem


def _inline() -> override_settings:
    """The master publishes each change by itself, one message per change."""
    return override_settings(CQRS={**settings.CQRS, 'master': {**settings.CQRS['master'], 'publisher': 'inline'}})


def _transactions(alias: str) -> int:
    """How many transactions wrote the replica's item rows as they are now."""
    with connections[alias].cursor() as cursor:
        cursor.execute(f'SELECT count(DISTINCT xmin::text) FROM {ReplicaItem._meta.db_table}')
        return int(cursor.fetchone()[0])


def _applied_twice(alias: str) -> list:
    return list(AppliedLog.objects.using(alias).filter(outcome__in=['created', 'updated'])
                .values('pk_value', 'revision').annotate(times=Count('id')).filter(times__gt=1)[:5])


def _backlog(prefix: str, count: int, threads: int = 4) -> int:
    """Creates, updates of every third and deletes of every seventh row; returns the messages sent.

    Each change waits for its own publish, so ``threads`` threads share the rows (all the changes
    of a row are made by one thread, in order) and the backlog builds in a fraction of the time.
    """
    def changes(part: int) -> int:
        try:
            items = {i: Item.objects.create(sku=f'{prefix}{i:05d}', name=f'item {i}', quantity=i)
                     for i in range(part, count, threads)}
            for item in (item for i, item in items.items() if i % 3 == 0):
                item.quantity += 1000
                item.save()
            for item in (item for i, item in items.items() if i % 7 == 1):
                item.delete()
            return len(items) + sum(i % 3 == 0 for i in items) + sum(i % 7 == 1 for i in items)
        finally:
            connections.close_all()

    with _inline(), ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(changes, range(threads)))


def test_a_backlog_of_single_row_messages_is_applied_in_groups_and_the_replica_equals_the_master(
        services, replica_db):
    queue_a = services.queue('replica_a')
    services.declare_topology(queue_a, replica_db('replica_a'))
    sent = _backlog('s', 600)
    assert queue_depth(services.broker_url, queue_a) == sent  # one message per change

    services.worker(queue_a, replica_db('replica_a')).start()
    wait_until(lambda: in_step('replica_a', 'item'), timeout=120, message=lambda: describe('replica_a', 'item'))
    rows = ReplicaItem.objects.using('replica_a').count()
    transactions = _transactions('replica_a')
    print(f'{rows} rows from {sent} messages, last written by {transactions} transactions')
    assert transactions <= rows / 10, f'{transactions} transactions for {rows} rows: the messages were not grouped'
    wait_until(lambda: applied('replica_a') == sent, message=lambda: f'{applied("replica_a")} of {sent} outcomes')
    assert not _applied_twice('replica_a')


def test_bad_and_not_yet_due_messages_in_a_backlog_are_dead_lettered_or_wait_and_the_rest_apply(
        services, replica_db, master_app):
    queue_a = services.queue('replica_a')
    services.declare_topology(queue_a, replica_db('replica_a'))
    # A row the master has but never published: only the delayed message below brings it.
    later = Item.objects.bulk_create([Item(sku='later', name='due in 15 s', quantity=7)])[0]
    later.refresh_from_db()
    envelope = {'v': 1, 'signal_type': 'SAVE', 'cqrs_id': 'item', 'instance_pk': 'later',
                'instance_data': {'sku': 'later', 'name': 'due in 15 s', 'quantity': 7,
                                  'cqrs_revision': later.cqrs_revision,
                                  'cqrs_updated': later.cqrs_updated.isoformat()},
                'previous_data': None, 'meta': None, 'correlation_id': None, 'queue': None,
                'expires': None, 'retries': 0}
    send = lambda args, **kw: master_app.send_task(  # noqa: E731
        TASK_NAME, args=args, exchange='cqrs.direct', routing_key=queue_a, **kw)
    with _inline():
        for i in range(100):
            Item.objects.create(sku=f'b{i:03d}', name=f'before {i}', quantity=i)
    _raw_task_message(master_app, queue_a, b'{"this is": not json', 'application/json')
    send([envelope], serializer='pickle')
    send([{**envelope, 'v': 99}], serializer='json')
    send([{**envelope, 'cqrs_id': 'no_such_model'}], serializer='json')
    due = time.monotonic() + 15
    send([envelope], serializer='json', countdown=15, task_id=str(uuid.uuid4()))
    with _inline():
        for i in range(100):
            Item.objects.create(sku=f'a{i:03d}', name=f'after {i}', quantity=i)

    services.worker(queue_a, replica_db('replica_a')).start()
    wait_until(lambda: ReplicaItem.objects.using('replica_a').count() == 200, timeout=60,
               message=lambda: describe('replica_a', 'item'))
    if time.monotonic() < due - 2:
        assert not ReplicaItem.objects.using('replica_a').filter(sku='later').exists(), 'applied before its eta'
    wait_until(lambda: in_step('replica_a', 'item'), timeout=90, message=lambda: describe('replica_a', 'item'))
    assert time.monotonic() >= due - 2

    letters = wait_until(lambda: (found := dead_letters(services, queue_a, replica_db('replica_a')))
                         and len(found) == 4 and found, timeout=60, message='four dead letters')
    assert sorted(letter['error']['reason'] for letter in letters) == [
        'bad input', 'bad input', 'not json', 'undecodable']
    assert _transactions('replica_a') <= 200 / 10
    assert not _applied_twice('replica_a')


def test_a_worker_killed_while_it_applies_taken_messages_loses_none_of_them(services, replica_db):
    queue_a = services.queue('replica_a')
    services.declare_topology(queue_a, replica_db('replica_a'))
    sent = _backlog('k', 1500)
    worker = services.worker(queue_a, replica_db('replica_a'), CQRS_TEST_VISIBILITY_TIMEOUT='15').start()
    wait_until(lambda: applied('replica_a') >= sent // 5, timeout=120, message='a fifth applied')
    worker.kill()
    assert applied('replica_a') < sent
    services.worker(queue_a, replica_db('replica_a'), CQRS_TEST_VISIBILITY_TIMEOUT='15').start()
    wait_until(lambda: in_step('replica_a', 'item'), timeout=180, message=lambda: describe('replica_a', 'item'))
    assert not _applied_twice('replica_a')
