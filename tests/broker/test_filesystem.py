"""The embedded filesystem broker: replication to two services and the dead-letter commands."""

from __future__ import annotations

import json

import pytest

from tests.broker.compare import describe, in_step
from tests.broker.conftest import require_postgres
from tests.broker.harness import manage, start_all, wait_until
from tests.master_app.models import Author, Flaky, Item
from tests.replica_app.models import ReplicaFlaky


@pytest.fixture
def broker_url(tmp_path, monkeypatch):
    """kombu's filesystem transport in a folder of this test, shared by every service."""
    require_postgres()
    monkeypatch.setenv('CQRS_TEST_FS_DIR', str(tmp_path / 'broker'))
    return 'filesystem://'


def test_the_filesystem_broker_replicates_to_two_services(services, replica_db):
    queue_a, queue_b = services.queue('replica_a'), services.queue('replica_b')
    start_all(services.worker(queue_a, replica_db('replica_a')),
              services.worker(queue_b, replica_db('replica_b')))
    author = Author.objects.create(name='Ann')
    items = [Item.objects.create(sku=f'fs-{i}', name='x', quantity=i) for i in range(20)]
    author.name = 'Ann B.'
    author.save()
    items[0].delete()
    for alias in ('replica_a', 'replica_b'):
        wait_until(lambda alias=alias: in_step(alias, 'author', 'item'),
                   message=lambda alias=alias: describe(alias, 'author', 'item'))


def test_dead_letters_dump_retry_and_purge_on_the_filesystem_broker(services, replica_db, tmp_path):
    queue_a = services.queue('replica_a')
    faults = tmp_path / 'faults'
    faults.mkdir()
    env = services.replica_env(queue_a, replica_db('replica_a'))
    services.worker(queue_a, replica_db('replica_a'), CQRS_TEST_FAULT_DIR=str(faults)).start()
    for pk in (1, 2):
        (faults / f'always_fail_{pk}').touch()
        Flaky.objects.create(id=pk, name=f'broken {pk}', fail_times=-1)

    def letters():
        return [json.loads(line) for line in manage(env, 'cqrs_dead_letters', 'dump').splitlines() if line]

    found = wait_until(lambda: len(letters()) == 2 and letters(), timeout=90, message='two dead letters')
    assert sorted(letter['envelope']['instance_pk'] for letter in found) == [1, 2]
    assert {letter['error']['type'] for letter in found} == {'PlannedFailure'}
    assert len(letters()) == 2  # dump leaves them where they are

    (faults / 'always_fail_1').unlink()
    (faults / 'always_fail_2').unlink()
    assert '1 envelopes sent back' in manage(env, 'cqrs_dead_letters', 'retry', '--limit', '1')
    assert '1 envelopes sent back' in manage(env, 'cqrs_dead_letters', 'retry')
    wait_until(lambda: ReplicaFlaky.objects.using('replica_a').count() == 2, message='both applied after retry')
    assert letters() == []

    (faults / 'always_fail_3').touch()
    Flaky.objects.create(id=3, name='broken 3', fail_times=-1)
    wait_until(lambda: len(letters()) == 1, timeout=90, message='a new dead letter')
    assert '1 dead letters removed' in manage(env, 'cqrs_dead_letters', 'purge')
    assert letters() == []
