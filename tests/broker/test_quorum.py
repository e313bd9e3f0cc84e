"""RabbitMQ quorum queues for replica and dead-letter queues (tier iii, single-node RabbitMQ).

``CQRS['replica']['queue_type'] = 'quorum'`` (here through ``CQRS_TEST_QUEUE_TYPE``): the replica
queue and its dead-letter queue are quorum queues, replication works as on classic queues, dead
letters are recorded and retried, a message its workers keep dying on stops at the delivery limit,
and a classic queue that already exists is reported with the fix instead of failing obscurely.
"""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import pytest
from kombu import Connection

from tests.broker import harness
from tests.broker.compare import describe, in_step
from tests.broker.conftest import require_postgres
from tests.broker.harness import manage, queue_depth, wait_until
from tests.master_app.models import Author, Book, Flaky
from tests.replica_app.models import ReplicaAuthor, ReplicaBook, ReplicaFlaky

QUORUM = {'CQRS_TEST_QUEUE_TYPE': 'quorum'}


@pytest.fixture
def broker_url() -> str:
    """Quorum queues are RabbitMQ's: this module runs on RabbitMQ only."""
    require_postgres()
    return harness.require_broker('amqp')


def queue_type(name: str) -> str:
    """RabbitMQ's type of an existing queue (``rabbitmqctl list_queues``)."""
    listed = subprocess.run(['rabbitmqctl', 'list_queues', '-q', 'name', 'type'], check=True, capture_output=True,
                            text=True, timeout=120).stdout
    types = dict(line.split('\t')[:2] for line in listed.splitlines() if '\t' in line)
    return types[name]


def dead_letters(services, queue: str, database: str) -> list[dict]:
    output = manage(services.replica_env(queue, database, **QUORUM), 'cqrs_dead_letters', 'dump')
    return [json.loads(line) for line in output.splitlines() if line.strip().startswith('{')]


def test_creates_updates_and_deletes_replicate_through_a_quorum_queue_field_for_field(services, replica_db):
    queue = services.queue('quorum')
    services.worker(queue, replica_db('replica_a'), **QUORUM).start()
    assert queue_type(queue) == 'quorum'

    ann = Author.objects.create(name='Ann', email='ann@example.com')
    bob = Author.objects.create(name='Bob')
    books = [Book.objects.create(title=f'Book {i}', price=Decimal(f'{i}.5001'), author=ann) for i in range(20)]
    Author.cqrs.bulk_create([Author(name=f'bulk {i}') for i in range(200)])
    wait_until(lambda: in_step('replica_a', 'author', 'book'), timeout=60,
               message=lambda: describe('replica_a', 'author', 'book'))
    ann.name = 'Ann Smith'
    ann.save()
    books[0].title, books[0].price = 'Renamed', Decimal('99.9999')
    books[0].save()
    books[1].delete()
    bob.delete()
    Author.cqrs.bulk_update(Author.objects.filter(name__startswith='bulk'), email='bulk@example.com')

    wait_until(lambda: in_step('replica_a', 'author', 'book'), timeout=60,
               message=lambda: describe('replica_a', 'author', 'book'))
    assert ReplicaAuthor.objects.using('replica_a').get(pk=ann.pk).name == 'Ann Smith'
    assert ReplicaBook.objects.using('replica_a').get(pk=books[0].pk).price == Decimal('99.9999')
    assert not ReplicaAuthor.objects.using('replica_a').filter(pk=bob.pk).exists()


def test_a_dead_letter_on_a_quorum_queue_is_recorded_and_retried(services, replica_db, tmp_path):
    queue = services.queue('quorum')
    services.worker(queue, replica_db('replica_a'), CQRS_TEST_FAULT_DIR=str(tmp_path), **QUORUM).start()
    (tmp_path / 'always_fail_7').touch()
    Flaky.objects.create(id=7, name='always fails', fail_times=-1)

    wait_until(lambda: len(dead_letters(services, queue, replica_db('replica_a'))) == 1, timeout=90,
               interval=1, message='a dead letter')
    [letter] = dead_letters(services, queue, replica_db('replica_a'))
    assert letter['envelope']['cqrs_id'] == 'flaky' and letter['envelope']['instance_pk'] == 7
    assert letter['error']['type'] == 'PlannedFailure' and letter['error']['attempts'] == 6  # 1 try, 5 retries
    assert queue_type(f'dead_letter_{queue}') == 'quorum'

    (tmp_path / 'always_fail_7').unlink()
    output = manage(services.replica_env(queue, replica_db('replica_a'), **QUORUM), 'cqrs_dead_letters', 'retry')
    assert '1 envelopes sent back' in output
    wait_until(lambda: ReplicaFlaky.objects.using('replica_a').filter(pk=7).exists(),
               message='dead letter applied after retry')


def test_a_message_its_workers_keep_dying_on_is_dead_lettered_at_the_delivery_limit(services, replica_db):
    queue = services.queue('quorum')
    env = services.replica_env(queue, replica_db('replica_a'), **QUORUM)
    assert '(quorum)' in manage(env, 'cqrs_topology', '--declare')
    author = Author.objects.create(name='poison')
    wait_until(lambda: queue_depth(services.broker_url, queue) == 1, message='the message queued')

    # Ten workers took it and died before acknowledging it (the default delivery_limit is 10).
    with Connection(services.broker_url, connect_timeout=5) as conn:
        channel = conn.channel()
        for delivery in range(10):
            message = wait_until(lambda: channel.basic_get(queue, no_ack=False), timeout=10,
                                 message='the message delivered again')
            assert (message.headers or {}).get('x-delivery-count', 0) == delivery
            channel.basic_reject(message.delivery_tag, requeue=True)
        channel.close()

    services.worker(queue, replica_db('replica_a'), **QUORUM).start()
    wait_until(lambda: len(dead_letters(services, queue, replica_db('replica_a'))) == 1, timeout=60,
               interval=1, message='the message dead-lettered at the delivery limit')
    [letter] = dead_letters(services, queue, replica_db('replica_a'))
    assert letter['error']['reason'] == 'delivery limit'
    assert 'delivered 11 times' in letter['error']['message']
    assert f'"instance_pk":{author.pk}' in letter['raw'].replace(' ', '')
    assert not ReplicaAuthor.objects.using('replica_a').filter(pk=author.pk).exists()
    assert queue_depth(services.broker_url, queue) == 0


def test_a_classic_queue_configured_as_quorum_is_reported_with_the_fix(services, replica_db):
    queue = services.queue('quorum')
    classic = services.replica_env(queue, replica_db('replica_a'))
    manage(classic, 'cqrs_topology', '--declare')  # created as a classic queue first
    quorum = services.replica_env(queue, replica_db('replica_a'), **QUORUM)

    shown = manage(quorum, 'cqrs_topology')
    assert f'problem: queue {queue} exists on RabbitMQ with other arguments' in shown
    with pytest.raises(AssertionError) as refused:
        manage(quorum, 'cqrs_topology', '--declare')
    assert f'rabbitmqctl delete_queue {queue}' in str(refused.value)

    # A worker started that way stops at once, saying what to do.
    worker = subprocess.run([sys.executable, '-m', 'celery', '-A', 'tests.celery_app', 'worker', '-Q', queue,
                             '-c', '1', '--without-mingle', '--without-gossip'], env=quorum, cwd=harness.ROOT,
                            capture_output=True, text=True, timeout=120)
    assert worker.returncode != 0
    assert f'rabbitmqctl delete_queue {queue}' in worker.stderr + worker.stdout
    assert queue_type(queue) == 'classic'
