"""The diff pipes of django-cqrs's runbooks, run as separate master and replica processes against a
real broker and a real replica worker (tier iii): they make a drifted replica equal to its master.
``cqrs_status`` reads a replica queue's depth on RabbitMQ."""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from cqrs_celery.testing import capture_envelopes
from tests.broker import harness
from tests.broker.compare import describe, in_step
from tests.broker.harness import wait_until
from tests.master_app.models import Item
from tests.replica_app.models import ReplicaItem


def replica_command(env: dict[str, str], *args: str, stdin: str = '') -> str:
    """``python -m django <args>`` as the replica service, ``stdin`` piped in; returns its stdout."""
    result = subprocess.run([sys.executable, '-m', 'django', *args], env=env, cwd=harness.ROOT, input=stdin,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f'{args} failed:\n{result.stdout}\n{result.stderr}'
    return result.stdout


def master_command(*args: str, stdin: str | None = None) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO(), **({'stdin': StringIO(stdin)} if stdin is not None else {}))
    return out.getvalue()


@pytest.mark.parametrize('broker_url', ['amqp', 'redis'], indirect=True)
def test_the_diff_pipes_repair_a_drifted_replica_through_its_worker(services, replica_db):
    queue = services.queue('replica_a')
    database = replica_db('replica_a')
    services.worker(queue, database).start()
    env = services.replica_env(queue, database)
    items = [Item.objects.create(sku=f'sku-{i:03d}', name=f'item {i}', quantity=i) for i in range(60)]
    wait_until(lambda: in_step('replica_a', 'item'), timeout=60, message=lambda: describe('replica_a', 'item'))

    # behind the library's back: rows missing, older, ahead of the master, deleted on the master
    # without a message, and rows only the replica has
    replica = ReplicaItem.objects.using('replica_a')
    replica.filter(sku__in=['sku-001', 'sku-002', 'sku-003']).delete()
    replica.filter(sku__in=['sku-010', 'sku-011']).update(name='old', cqrs_revision=-1)
    replica.filter(sku__in=['sku-020', 'sku-021']).update(name='ahead', cqrs_revision=50)
    with capture_envelopes():
        Item.objects.filter(sku__in=['sku-030', 'sku-031']).delete()
    for sku in ('extra-1', 'extra-2'):
        replica.create(sku=sku, name='only here', quantity=0, cqrs_revision=0, cqrs_updated=timezone.now())
    assert not in_step('replica_a', 'item')

    # cqrs_diff_master | cqrs_diff_replica | cqrs_diff_sync
    master_diff = master_command('cqrs_diff_master', '--cqrs-id', 'item', '--batch', '25')
    to_sync = replica_command(env, 'cqrs_diff_replica', stdin=master_diff)
    assert to_sync.splitlines()[0].endswith(f',{queue}')
    assert sorted(sum((json.loads(line) for line in to_sync.splitlines()[1:]), [])) == [
        'sku-001', 'sku-002', 'sku-003', 'sku-010', 'sku-011', 'sku-020', 'sku-021']
    master_command('cqrs_diff_sync', stdin=to_sync)

    # cqrs_deleted_diff_replica | cqrs_deleted_diff_master | cqrs_deleted_sync_replica
    replica_pks = replica_command(env, 'cqrs_deleted_diff_replica', '--cqrs-id', 'item')
    to_delete = master_command('cqrs_deleted_diff_master', stdin=replica_pks)
    replica_command(env, 'cqrs_deleted_sync_replica', stdin=to_delete)

    wait_until(lambda: in_step('replica_a', 'item'), timeout=60, message=lambda: describe('replica_a', 'item'))
    assert replica.count() == len(items) - 2
    for sku in ('sku-010', 'sku-020'):
        row = replica.get(sku=sku)
        assert (row.name, row.cqrs_revision) == (Item.objects.get(sku=sku).name, 0)


@pytest.mark.parametrize('broker_url', ['amqp'], indirect=True)
def test_status_reads_the_replica_queue_depth_on_rabbitmq(services, replica_db):
    queue = services.queue('replica_a')
    env = services.replica_env(queue, replica_db('replica_a'))

    before = json.loads(replica_command(env, 'cqrs_status', '--json'))
    services.declare_topology(queue, replica_db('replica_a'))
    Item.objects.create(sku='waiting', name='n')  # no worker: the message waits in the queue
    wait_until(lambda: harness.queue_depth(services.broker_url, queue) == 1, timeout=30)
    after = json.loads(replica_command(env, 'cqrs_status', '--json'))

    assert {q['queue']: q['messages'] for q in before['queues']}[queue] == 'missing'  # never declared
    assert {q['queue']: q['messages'] for q in after['queues']} == {queue: 1, f'dead_letter_{queue}': 0}
