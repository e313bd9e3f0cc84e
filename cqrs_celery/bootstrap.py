"""First-run sync: a replica service deployed after its master already had data asks for it.

A broadcast published while no replica queue was bound reached nobody (see
:func:`cqrs_celery.producer.unroutable_counts`). So when a replica worker has started (its queue
declared and bound, so every change from now on reaches it), it looks at each replicated model:
a table that is empty and has no tombstone never received anything, and the worker sends the
master a request for a full sync of that CQRS_ID to this service's queue only.

* The request is a plain Celery task (``cqrs_celery.bootstrap_sync``) published to the durable
  direct exchange ``cqrs_bootstrap`` with the CQRS_ID as routing key. The master's worker receives
  it on the queue ``CQRS['master']['bootstrap_queue']`` (default: the Celery app's default queue,
  where beat's outbox relay runs too): when that worker starts, the queue is bound to
  ``cqrs_bootstrap`` for every master model of the service.
* The master answers with what ``manage.py cqrs_sync --cqrs-id <id> --queue <queue>`` does: the
  current rows as batched, directed SYNC envelopes (not forced), so changes that flow meanwhile
  keep their order by revision on the replica.
* Nothing is sent for a model with rows or tombstones, so restarts cost one ``EXISTS`` query per
  model; two worker nodes starting at once may each ask (the second sync only repeats rows).
* A request nobody takes (no master worker bound yet) is logged with the command to run.

``CQRS['replica']['bootstrap'] = False`` turns it off.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from celery import shared_task
from django.db import connections, router
from kombu import Queue, binding

from cqrs_celery import topology
from cqrs_celery.conf import QUEUE_NAME_RE, get_settings
from cqrs_celery.registry import MasterRegistry, ReplicaRegistry

logger = logging.getLogger(__name__)

BOOTSTRAP_TASK = 'cqrs_celery.bootstrap_sync'


def request_queue_name(app: Any) -> str:
    """The queue the master's worker takes first-run sync requests from."""
    return get_settings().master.bootstrap_queue or str(app.conf.task_default_queue)


def install_request_queue(app: Any) -> Queue | None:
    """Master worker start: bind the request queue to ``cqrs_bootstrap`` for each master model.

    Only when this worker consumes that queue (``-Q``); returns the queue entity installed.
    """
    cqrs_ids = MasterRegistry.ids()
    name = request_queue_name(app)
    queues = app.amqp.queues
    if not cqrs_ids or name not in queues.consume_from:
        return None
    current = queues[name]
    routes = [b for b in current.bindings if topology.binding_exchange(b).name != topology.BOOTSTRAP_EXCHANGE_NAME]
    if current.exchange is not None and current.exchange.name:
        routes.insert(0, binding(current.exchange, routing_key=current.routing_key))
    routes += [binding(topology.bootstrap_exchange(), routing_key=topology.bootstrap_routing_key(cqrs_id))
               for cqrs_id in cqrs_ids]
    entity = Queue(name, bindings=routes, durable=current.durable, auto_delete=current.auto_delete,
                   queue_arguments=current.queue_arguments)
    entity.exchange, entity.routing_key = current.exchange, current.routing_key
    queues[name] = queues.consume_from[name] = entity
    logger.info('cqrs master worker takes first-run sync requests for %s on queue %s', ', '.join(cqrs_ids), name)
    return entity


def needs_bootstrap(model: Any) -> bool:
    """True for a replica model with a table that is empty and never received a DELETE either."""
    from cqrs_celery.models import ReplicaTombstone

    if getattr(model, 'CQRS_NO_DB_OPERATIONS', False):
        return False
    using = router.db_for_read(model)
    if model._base_manager.using(using).exists():
        return False
    return not ReplicaTombstone._default_manager.using(using).filter(cqrs_id=model.CQRS_ID).exists()


def request_missing(queue: str) -> list[str]:
    """Ask the master for a full sync of every replica model that needs one; returns the CQRS_IDs asked for."""
    from cqrs_celery.producer import publish_task

    asked = []
    for model in ReplicaRegistry.models():
        cqrs_id = model.CQRS_ID
        try:
            if not needs_bootstrap(model):
                continue
            routed = publish_task(BOOTSTRAP_TASK, [cqrs_id, queue], topology.bootstrap_exchange(),
                                  topology.bootstrap_routing_key(cqrs_id))
        except Exception:
            logger.exception('cqrs bootstrap: cqrs_id=%s queue=%s: asking the master for a first-run sync failed; '
                             'run manage.py cqrs_sync --cqrs-id %s --queue %s on the master', cqrs_id, queue,
                             cqrs_id, queue)
            continue
        if routed:
            asked.append(cqrs_id)
            logger.info('cqrs bootstrap: cqrs_id=%s queue=%s: the table is empty, asked the master for a full sync',
                        cqrs_id, queue)
        else:
            logger.warning("cqrs bootstrap: cqrs_id=%s queue=%s: the table is empty and no master worker takes "
                           "first-run sync requests for it (the master's worker consumes "
                           "CQRS['master']['bootstrap_queue'], by default its app's default queue); run "
                           'manage.py cqrs_sync --cqrs-id %s --queue %s on the master', cqrs_id, queue, cqrs_id,
                           queue)
    return asked


def on_worker_ready(sender: Any = None, **kwargs: Any) -> None:
    """``worker_ready`` receiver: the replica queue is declared and bound; ask for what is missing."""
    settings = get_settings()
    queue = settings.queue
    if not settings.replica.bootstrap or not queue or not ReplicaRegistry.ids():
        return
    app = getattr(sender, 'app', None)
    if app is not None and queue not in app.amqp.queues.consume_from:
        return  # this worker does not serve the replica queue (e.g. the master's own worker)
    try:
        request_missing(queue)
    finally:
        # The worker's main process forks replacement pool processes: it must not hold a connection.
        connections.close_all()


@shared_task(name=BOOTSTRAP_TASK, ignore_result=True)
def bootstrap_sync(cqrs_id: str, queue: str) -> str:
    """Master side: send every row of ``cqrs_id`` to ``queue`` as directed SYNCs (as ``cqrs_sync`` does)."""
    from django.core.management import call_command

    if not isinstance(queue, str) or not QUEUE_NAME_RE.fullmatch(queue) or cqrs_id not in MasterRegistry:
        logger.error('cqrs bootstrap: refused a first-run sync request for cqrs_id=%r queue=%r '
                     '(not a master model of this service, or not a queue name)', cqrs_id, queue)
        return 'refused'
    out = io.StringIO()
    call_command('cqrs_sync', '--cqrs-id', cqrs_id, '--queue', queue, stdout=out)
    result = out.getvalue().strip().splitlines()[-1] if out.getvalue().strip() else ''
    logger.info('cqrs bootstrap: cqrs_id=%s queue=%s: first-run sync sent (%s)', cqrs_id, queue, result)
    return result
