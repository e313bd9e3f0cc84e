"""A replica service deployed after its master already had data (tier iii, RabbitMQ and Redis).

The master writes 5,000 rows while no replica queue exists: those publishes are unroutable, and
the master counts and logs them instead of losing them silently. Then the replica service is
deployed (its worker declares its queue and starts) while the master keeps changing rows: the
worker asks the master's worker for a first-run sync (``cqrs_celery.bootstrap``), and the replica
ends equal to the master field for field, with no manual step.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from cqrs_celery.models import OutboxEvent
from tests.broker import harness
from tests.broker.compare import describe, in_step, master_rows
from tests.broker.harness import wait_until

ROWS = 5000


def master_worker(services, *, bootstrap: bool = True) -> str:
    """The master's worker, taking first-run sync requests on its own queue; returns that queue."""
    queue = services.queue('master_boot')
    env = {**services.master_env(queue), **({'CQRS_TEST_BOOTSTRAP_QUEUE': queue} if bootstrap else {})}
    worker = harness.CeleryProcess(env, ['worker', '-Q', queue, '-c', '1', '--loglevel=INFO', '-n', f'{queue}@%h',
                                         '--without-mingle', '--without-gossip'], queue)
    services.workers.append(worker)
    worker.start()
    return queue


def writer(services, mode: str, count: int, seed: int = 0) -> subprocess.Popen[str]:
    """A master process (``tests.broker.master_writer``) writing authors."""
    return subprocess.Popen([sys.executable, '-m', 'tests.broker.master_writer', mode, str(count), str(seed)],
                            env=services.master_env(), cwd=harness.ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def report(process: subprocess.Popen[str], timeout: float = 300) -> tuple[dict, str]:
    """Wait for a writer; returns its JSON report and its log (stderr)."""
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f'master writer failed:\n{out}\n{err}'
    return json.loads(out.strip().splitlines()[-1]), err


def test_a_replica_deployed_after_the_master_wrote_5000_rows_becomes_equal_while_changes_continue(
        services, replica_db):
    queue = services.queue('boot')
    master_worker(services)

    # 1. No replica queue exists: every broadcast is unroutable, counted and logged by the master.
    done, log = report(writer(services, 'bulk', ROWS))
    assert done['done'] == {'created': ROWS}
    assert 'cqrs unroutable: cqrs_id=author exchange=cqrs.author' in log
    assert len(master_rows('author')) == ROWS
    if services.kind == 'amqp':  # not kept: RabbitMQ does not lose bindings, nobody was there
        assert done['unroutable'] == {'author': ROWS}
        assert OutboxEvent.objects.count() == 0
    else:  # Redis may have lost its bindings in a restart: the outbox keeps the events, retrying
        assert 0 < done['unroutable']['author'] <= ROWS
        assert OutboxEvent.objects.count() == ROWS

    # 2. The replica service is deployed while a master process keeps changing rows.
    churn = writer(services, 'churn', 600, seed=1)
    deployed = time.monotonic()
    worker = services.worker(queue, replica_db('replica_a')).start()
    changes, _ = report(churn)
    written = time.monotonic() - deployed
    assert sum(changes['done'].values()) > 0

    # 3. Without a manual step, the replica becomes equal to the master, field for field.
    wait_until(lambda: in_step('replica_a', 'author'), timeout=240, interval=1,
               message=lambda: describe('replica_a', 'author'))
    converged = time.monotonic() - deployed
    assert f'cqrs_id=author queue={queue}: the table is empty, asked the master for a full sync' \
        in worker.log_path.read_text()
    print(f'\n[{services.kind}] {done["unroutable"]["author"]} unroutable rows counted; replica equal to the '
          f'master ({len(master_rows("author"))} rows, {changes["done"]} changed meanwhile) '
          f'{converged:.1f}s after its worker started, {converged - written:.1f}s after the last change')
