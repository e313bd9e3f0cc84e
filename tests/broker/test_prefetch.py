"""A worker of the replica queue alone holds one message per pool process (RabbitMQ, real workers).

Messages a worker prefetches wait in its main process behind the one being applied, where the
apply task cannot take them into its group; left in the queue, the next task takes them along
(``cqrs_celery.replica.queues.prefetch_one``). RabbitMQ lists the prefetch count of each consumer's channel.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.broker import harness
from tests.broker.conftest import require_postgres
from tests.broker.harness import wait_until


@pytest.fixture
def broker_url() -> str:
    """Consumer prefetch counts are listed by RabbitMQ; Redis keeps them inside the worker."""
    require_postgres()
    return harness.require_broker('amqp')


def _listed(*what: str) -> list[list[str]]:
    listed = subprocess.run(['rabbitmqctl', what[0], '-q', '--no-table-headers', *what[1:]], check=True,
                            capture_output=True, text=True, timeout=120).stdout
    return [line.split('\t') for line in listed.splitlines() if '\t' in line]


def prefetch_counts(queue: str) -> list[int]:
    """The prefetch count of the channel of each consumer of ``queue`` (``rabbitmqctl``).

    Celery asks RabbitMQ for a prefetch count shared by the channel (``global``), so it is listed
    with the channel, not the consumer.
    """
    channels = {row[0]: int(row[1]) for row in _listed('list_channels', 'pid', 'global_prefetch_count')}
    return [channels.get(row[1], -1) for row in _listed('list_consumers', 'queue_name', 'channel_pid')
            if row[0] == queue]


def test_a_worker_of_the_replica_queue_alone_prefetches_one_message_per_process(services, replica_db):
    queue = services.queue('replica_a')
    services.worker(queue, replica_db('replica_a'), concurrency=2).start()

    wait_until(lambda: prefetch_counts(queue) == [2], timeout=30, message=lambda: f'consumers {prefetch_counts(queue)}')


def test_a_prefetch_multiplier_given_to_the_worker_is_kept(services, replica_db):
    queue = services.queue('replica_a')
    worker = services.worker(queue, replica_db('replica_a'), concurrency=2)
    worker.arguments += ['--prefetch-multiplier', '3']
    worker.start()

    wait_until(lambda: prefetch_counts(queue) == [6], timeout=30, message=lambda: f'consumers {prefetch_counts(queue)}')
