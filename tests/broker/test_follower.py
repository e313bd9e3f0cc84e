"""The master's publisher as a process of its own: ``publisher='relay'`` and ``cqrs_outbox relay --follow``.

The test process saves with ``publisher='relay'`` (it publishes nothing itself); real follower
processes publish its outbox to a real replica worker, on RabbitMQ and on Redis.
"""

from __future__ import annotations

from django.conf import settings
from django.db.models import Count
from django.test import override_settings

from cqrs_celery.master import outbox
from tests.broker.compare import describe, in_step
from tests.broker.harness import wait_until
from tests.master_app.models import Item
from tests.replica_app.models import AppliedLog


def _relay_mode() -> override_settings:
    return override_settings(CQRS={**settings.CQRS, 'master': {**settings.CQRS['master'], 'publisher': 'relay',
                                                                'outbox_relay_delay': 3600}})


def test_followers_publish_what_the_master_commits_and_one_killed_midway_loses_nothing(services, replica_db):
    queue_a = services.queue('replica_a')
    services.worker(queue_a, replica_db('replica_a')).start()
    first = services.follower('follower-one')
    with _relay_mode():
        items = [Item.objects.create(sku=f'f{i:04d}', name=f'item {i}', quantity=i) for i in range(200)]
        first.kill()  # SIGKILL while it publishes
        items += [Item.objects.create(sku=f'f{i:04d}', name=f'item {i}', quantity=i) for i in range(200, 400)]
        services.follower('follower-two')
        services.follower('follower-three')  # two at once: each event is published by one of them
        for item in items[::2]:
            item.quantity += 1000
            item.save()
        for item in items[1::5]:
            item.delete()
    wait_until(lambda: in_step('replica_a', 'item'), timeout=120, message=lambda: describe('replica_a', 'item'))
    wait_until(lambda: outbox.pending() == 0, timeout=60, message='outbox drained')
    twice = (AppliedLog.objects.using('replica_a').filter(outcome__in=['created', 'updated'])
             .values('pk_value', 'revision').annotate(times=Count('id')).filter(times__gt=1))
    assert not list(twice[:5])
