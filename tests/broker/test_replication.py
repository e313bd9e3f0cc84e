"""Replication through real brokers and real ``celery worker`` processes (tier iii).

Each test runs on RabbitMQ and on Redis; replica services write to their own PostgreSQL databases.
"""

from __future__ import annotations

import contextlib
import datetime
import random
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from cqrs_celery.master import triggers
from cqrs_celery.producer import publish_to_broker, set_sender
from tests.broker.compare import describe, in_step
from tests.broker.harness import queue_depth, start_all, wait_until
from tests.master_app.models import AllFields, Author, Book, Item, Publisher
from tests.replica_app.models import AppliedLog, ReplicaAuthor, ReplicaBook, ReplicaPublisher


def applied(alias: str, **filters) -> int:
    return AppliedLog.objects.using(alias).filter(**filters).count()


def test_creates_updates_and_deletes_reach_two_replica_services_field_for_field(services, replica_db):
    queue_a, queue_b = services.queue('replica_a'), services.queue('replica_b')
    start_all(services.worker(queue_a, replica_db('replica_a')),
              services.worker(queue_b, replica_db('replica_b')))

    ann = Author.objects.create(name='Ann', email='ann@example.com')
    bob = Author.objects.create(name='Bob')
    books = [Book.objects.create(title=f'Book {i}', price=Decimal(f'{i}.1234'), author=ann) for i in range(5)]
    # Changes that wait in the outbox together are published as the row's latest state, once; wait
    # until the creates are applied so that the updates below travel with their own previous_data.
    for alias in ('replica_a', 'replica_b'):
        wait_until(lambda alias=alias: in_step(alias, 'author', 'book'), timeout=60,
                   message=lambda alias=alias: describe(alias, 'author', 'book'))
    ann.name = 'Ann Smith'
    ann.save()
    with transaction.atomic():
        books[0].title, books[0].price = 'Renamed', Decimal('99.9999')
        books[0].save()
    books[1].delete()
    bob.delete()

    for alias in ('replica_a', 'replica_b'):
        wait_until(lambda alias=alias: in_step(alias, 'author', 'book'), timeout=60,
                   message=lambda alias=alias: describe(alias, 'author', 'book'))
        replica_ann = ReplicaAuthor.objects.using(alias).get(pk=ann.pk)
        assert replica_ann.last_meta == {'origin': 'tests', 'model': 'author', 'tenant': 'acme'}
        assert replica_ann.last_previous == {'name': 'Ann'}
        renamed = ReplicaBook.objects.using(alias).get(pk=books[0].pk)
        assert renamed.last_previous == {'name': 'Book 0', 'price': '0.1234'}
        assert renamed.price == Decimal('99.9999')
        assert not ReplicaAuthor.objects.using(alias).filter(pk=bob.pk).exists()


def test_a_replica_that_is_down_gets_every_change_when_its_worker_starts(services, replica_db):
    # replica A has run before and is stopped; replica B has never run, only its topology exists.
    queue_a, queue_b = services.queue('replica_a'), services.queue('replica_b')
    worker_a = services.worker(queue_a, replica_db('replica_a')).start()
    worker_a.stop()
    output = services.declare_topology(queue_b, replica_db('replica_b'))
    assert f'declared queue {queue_b}' in output

    changes = 0
    items = []
    for i in range(400):
        items.append(Item.objects.create(sku=f'sku-{i:04d}', name=f'item {i}', quantity=i))
        changes += 1
    for _ in range(2):
        for item in items[:250]:
            item.quantity += 1
            item.save()
            changes += 1
    for item in items[250:]:
        item.delete()
        changes += 1
    assert changes >= 1000
    assert Item.objects.count() == 250

    start_all(services.worker(queue_a, replica_db('replica_a')),
              services.worker(queue_b, replica_db('replica_b')))
    for alias in ('replica_a', 'replica_b'):
        wait_until(lambda alias=alias: in_step(alias, 'item'), timeout=180,
                   message=lambda alias=alias: describe(alias, 'item'))


def test_two_worker_nodes_of_one_replica_service_share_its_queue(services, replica_db):
    queue_a = services.queue('replica_a')
    start_all(services.worker(queue_a, replica_db('replica_a'), node='one'),
              services.worker(queue_a, replica_db('replica_a'), node='two'))
    for i in range(200):
        Item.objects.create(sku=f'shared-{i:03d}', name='shared', quantity=i)
    wait_until(lambda: applied('replica_a') >= 200, timeout=90, message='200 envelopes handled')
    wait_until(lambda: in_step('replica_a', 'item'), message=lambda: describe('replica_a', 'item'))
    assert applied('replica_a') == 200, 'each message is handled once by the service, not once per node'
    nodes = set(AppliedLog.objects.using('replica_a').values_list('node', flat=True))
    assert {node.split('@')[0] for node in nodes} == {f'{queue_a}-one', f'{queue_a}-two'}


def test_a_directed_sync_reaches_only_its_queue_and_only_direct_replicas_ignore_broadcast_syncs(
        services, replica_db):
    queue_a, queue_b = services.queue('replica_a'), services.queue('replica_b')
    start_all(services.worker(queue_a, replica_db('replica_a')),
              services.worker(queue_b, replica_db('replica_b')))
    publisher = Publisher.objects.create(name='Original')
    author = Author.objects.create(name='Drifting')
    for alias in ('replica_a', 'replica_b'):
        wait_until(lambda alias=alias: in_step(alias, 'publisher', 'author'),
                   message=lambda alias=alias: describe(alias, 'publisher', 'author'))

    # The master changes without publishing (a raw UPDATE), so replicas drift until a sync.
    Publisher.objects.filter(pk=publisher.pk).update(name='Synced')
    Author.objects.filter(pk=author.pk).update(name='Synced author')

    assert Publisher.objects.get(pk=publisher.pk).cqrs_sync(queue=queue_b)
    assert Author.objects.get(pk=author.pk).cqrs_sync(queue=queue_b)
    wait_until(lambda: in_step('replica_b', 'publisher', 'author'), message=lambda: describe('replica_b', 'publisher'))

    # A broadcast SYNC goes to every replica; the CQRS_ONLY_DIRECT_SYNCS model ignores it.
    assert Publisher.objects.get(pk=publisher.pk).cqrs_sync()
    assert Author.objects.get(pk=author.pk).cqrs_sync()
    for alias in ('replica_a', 'replica_b'):
        wait_until(lambda alias=alias: applied(alias, cqrs_id='publisher', signal='SYNC', directed_to=None,
                                               outcome='not_for_me') == 1,
                   message=f'broadcast publisher SYNC ignored on {alias}')
        wait_until(lambda alias=alias: applied(alias, cqrs_id='author', signal='SYNC', directed_to=None) == 1,
                   message=f'broadcast author SYNC on {alias}')
    assert ReplicaAuthor.objects.using('replica_a').get(pk=author.pk).name == 'Synced author'
    assert ReplicaPublisher.objects.using('replica_a').get(pk=publisher.pk).name == 'Original'
    assert ReplicaPublisher.objects.using('replica_b').get(pk=publisher.pk).name == 'Synced'
    # The directed syncs were never routed to replica A's queue at all.
    assert applied('replica_a', directed_to=queue_b) == 0
    assert applied('replica_b', directed_to=queue_b, outcome='updated') == 2
    assert queue_depth(services.broker_url, queue_a) == 0


def test_replicas_converge_under_random_changes_duplicates_and_reordering(services, replica_db):
    queue_a = services.queue('replica_a')
    services.worker(queue_a, replica_db('replica_a')).start()
    rng = random.Random(20261123)
    sent = []
    replays = []

    def send_with_replays(envelope):
        publish_to_broker(envelope)
        sent.append(envelope)
        if rng.random() < 0.2:
            replays.append(envelope)

    set_sender(send_with_replays)
    skus = [f'conv-{i:02d}' for i in range(20)]
    for sku in skus:
        Item.objects.create(sku=sku, name=sku, quantity=0)
    for _ in range(50):
        for sku in skus:
            item = Item.objects.filter(sku=sku).first()
            action = rng.random()
            if item is None:
                Item.objects.create(sku=sku, name=f'{sku} again', quantity=rng.randint(0, 1000))
            elif action < 0.15:
                item.delete()
            else:
                item.quantity = rng.randint(0, 1000)
                item.name = f'{sku} v{item.cqrs_revision + 1}'
                item.save()
    # Old envelopes delivered again, late and out of order.
    rng.shuffle(replays)
    for envelope in replays:
        publish_to_broker(envelope)
    set_sender(None)

    total = len(sent) + len(replays)
    wait_until(lambda: applied('replica_a') >= total, timeout=240,
               message=lambda: f'{applied("replica_a")} of {total} envelopes handled')
    assert in_step('replica_a', 'item'), describe('replica_a', 'item')
    assert applied('replica_a', outcome__in=['stale', 'duplicate']) > 0


def test_a_stale_save_after_a_delete_does_not_bring_the_row_back(services, replica_db):
    queue_a = services.queue('replica_a')
    services.worker(queue_a, replica_db('replica_a')).start()
    captured = []

    def capture_and_send(envelope):
        captured.append(envelope)
        publish_to_broker(envelope)

    set_sender(capture_and_send)
    item = Item.objects.create(sku='ghost', name='ghost', quantity=1)
    item.quantity = 2
    item.save()
    item.delete()
    set_sender(None)
    final = ['created', 'updated', 'deleted', 'tombstoned', 'stale', 'duplicate']
    wait_until(lambda: applied('replica_a', cqrs_id='item', outcome__in=final) == len(captured),
               message='all three applied')
    assert applied('replica_a', cqrs_id='item', signal='DELETE') == 1
    # Two pool processes may already have taken the update after the delete (then it was stale too).
    stale_before = applied('replica_a', cqrs_id='item', signal='SAVE', outcome='stale')
    stale_save = captured[1]
    assert stale_save.signal_type.value == 'SAVE' and stale_save.revision == 1
    publish_to_broker(stale_save)
    wait_until(lambda: applied('replica_a', cqrs_id='item', signal='SAVE', outcome='stale') == stale_before + 1,
               message='stale SAVE skipped')
    assert not Item.objects.exists()
    assert in_step('replica_a', 'item'), describe('replica_a', 'item')


def test_plain_models_replicate_through_the_events_their_tables_triggers_write(services, replica_db):
    """Without a meta_function, the database writes the events of saves and deletes (master/triggers.py)."""
    queue = services.queue('replica_a')
    start_all(services.worker(queue, replica_db('replica_a')))
    plain = {**settings.CQRS, 'master': {**settings.CQRS['master'], 'meta_function': None}}
    with override_settings(CQRS=plain):
        triggers.install('default')
        triggers.forget()
    try:
        with override_settings(CQRS=plain):
            plain_story(connection.vendor == 'postgresql')
    finally:
        triggers.install('default')  # the test settings' meta_function: no model qualifies, triggers dropped
        triggers.forget()


def plain_story(postgres: bool) -> None:
    assert triggers.active('default', AllFields) and triggers.active('default', Item)
    assert triggers.deletes_active('default', AllFields) is triggers.deletes_active('default', Item) is postgres
    moment = timezone.now()
    rows = [AllFields.objects.create(big=i, char=f'c{i}', text='t' * i, decimal=Decimal(f'{i}.5'), document={'i': i},
                                     moment=moment + datetime.timedelta(seconds=i), duration=datetime.timedelta(i))
            for i in range(20)]
    items = [Item.objects.create(sku=f's{i}', name='n', quantity=i) for i in range(10)]
    wait_until(lambda: in_step('replica_a', 'all_fields', 'item'), timeout=60,
               message=lambda: describe('replica_a', 'all_fields', 'item'))

    if postgres:  # a deletion by a statement of its own reaches the replica too (published at the next wake)
        with connection.cursor() as cursor:
            cursor.execute(f'DELETE FROM {connection.ops.quote_name(AllFields._meta.db_table)} WHERE big = 13')
    for row in rows[:10]:
        row.char, row.document = 'changed', {'changed': row.big}
        row.save()
    stale = AllFields.objects.get(pk=rows[10].pk)
    rows[10].save()
    stale.delete()  # the deletion's revision is one past the row's, not the stale instance's
    AllFields.objects.filter(big__in=[11, 12]).delete()
    with contextlib.suppress(ZeroDivisionError), transaction.atomic():
        rows[14].delete()
        raise ZeroDivisionError  # rolled back: the row stays, on the replica too
    with transaction.atomic():  # a deletion and a save of another row in one transaction
        rows[15].delete()
        rows[16].text = 'with a deletion'
        rows[16].save()
    items[0].delete()
    items[1].name = 'renamed'
    items[1].save()

    wait_until(lambda: in_step('replica_a', 'all_fields', 'item'), timeout=60,
               message=lambda: describe('replica_a', 'all_fields', 'item'))
    left = {14, 16, 17, 18, 19} if postgres else {13, 14, 16, 17, 18, 19}
    assert set(AllFields.objects.filter(big__gte=10).values_list('big', flat=True)) == left
    assert not Item.objects.filter(sku='s0').exists()
