"""Scale-out (tier iii, RabbitMQ and Redis): several master processes writing the same rows at once,
and one replica service served by two worker nodes (two ``celery worker -c 2`` processes sharing
its queue), with the replica's beat reconciling meanwhile and rows dropped on the replica behind
the library's back. The replica ends equal to the master field for field, revisions included: no
change lost, none applied out of order, the drift repaired.
"""

from __future__ import annotations

import time

from cqrs_celery.models import ReconciliationRun
from tests.broker.compare import describe, in_step, master_rows
from tests.broker.harness import ReplicaBeat, start_all, wait_until
from tests.broker.test_bootstrap import report, writer
from tests.replica_app.models import ReplicaAuthor

SEED_ROWS = 2000
CHANGES_PER_MASTER = 500


def test_two_master_processes_and_two_worker_nodes_keep_one_replica_equal_to_the_master(services, replica_db):
    master_queue = services.master()  # the master's worker answers reconciliation requests
    queue = services.queue('scaled')
    database = replica_db('replica_a')
    nodes = [services.worker(queue, database, concurrency=2, node=f'node{i}',
                             CQRS_TEST_RECONCILE_MASTER_QUEUE=master_queue)
             for i in (1, 2)]
    start_all(*nodes)

    seeded, _ = report(writer(services, 'bulk', SEED_ROWS))
    assert seeded['unroutable'] == {}
    wait_until(lambda: in_step('replica_a', 'author'), timeout=120, interval=1,
               message=lambda: describe('replica_a', 'author'))
    beat = ReplicaBeat(services.broker_url, queue, database, master_queue, every=2.0, content_every=3.0)
    services.workers.append(beat.start())

    started = time.monotonic()
    masters = [writer(services, 'churn', CHANGES_PER_MASTER, seed=seed) for seed in (11, 12)]
    # Behind the library's back while both masters write: rows lost on the replica.
    dropped = list(ReplicaAuthor.objects.using('replica_a').order_by('pk').values_list('pk', flat=True)[:25])
    ReplicaAuthor.objects.using('replica_a').filter(pk__in=dropped).delete()
    reports = [report(master)[0] for master in masters]
    written = time.monotonic()
    assert all(r['unroutable'] == {} for r in reports)
    assert all(sum(v for k, v in r['done'].items() if k != 'deadlocks') > 0 for r in reports)

    wait_until(lambda: in_step('replica_a', 'author'), timeout=180, interval=1,
               message=lambda: describe('replica_a', 'author'))
    converged = time.monotonic()
    repairs = ReconciliationRun.objects.using('default').filter(side='master', cqrs_id='author', queue=queue)
    assert repairs.exists(), 'no reconciliation ran while the masters wrote'
    for node in nodes:  # both nodes took their share of the queue
        assert 'Task cqrs_celery.apply[' in node.log_path.read_text(), f'{node.name} applied nothing'
    print(f'\n[{services.kind}] 2 master processes made {[r["done"] for r in reports]} in '
          f'{written - started:.1f}s; the replica ({len(master_rows("author"))} rows, 2 nodes × -c 2) was equal '
          f'{converged - written:.1f}s after the last commit')
