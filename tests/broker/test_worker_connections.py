"""Replica workers keep one database connection per process across tasks (real workers, PostgreSQL)."""

from __future__ import annotations

from cqrs_celery.constants import SignalType
from cqrs_celery.envelope import Envelope
from cqrs_celery.producer import publish_to_broker
from tests.broker.harness import wait_until
from tests.replica_app.models import AppliedLog, ReplicaItem


def test_a_worker_applies_500_messages_over_one_connection_per_process(services, replica_db):
    queue = services.queue('replica_a')
    services.worker(queue, replica_db('replica_a'), concurrency=2, CQRS_TEST_CONN_MAX_AGE='0').start()
    for i in range(500):  # one message each: 500 tasks
        data = {'sku': f'conn-{i:03d}', 'name': 'n', 'quantity': i, 'cqrs_revision': 0,
                'cqrs_updated': '2026-01-01T00:00:00+00:00'}
        publish_to_broker(Envelope(signal_type=SignalType.SAVE, cqrs_id='item', instance_pk=data['sku'],
                                   instance_data=data))

    wait_until(lambda: ReplicaItem.objects.using('replica_a').count() == 500, timeout=120,
               message=lambda: f'{ReplicaItem.objects.using("replica_a").count()} of 500 rows')
    wait_until(lambda: AppliedLog.objects.using('replica_a').count() == 500, timeout=30, message='500 rows logged')
    pids = set(AppliedLog.objects.using('replica_a').values_list('backend_pid', flat=True))
    assert None not in pids
    # Two pool processes: two connections (Celery's fix-up alone would open one per task).
    assert len(pids) <= 2, f'{len(pids)} database connections for 500 tasks'
