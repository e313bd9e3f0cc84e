"""How reconciliation messages travel: Celery task messages with one JSON argument.

* to the master: task ``cqrs_celery.reconcile_master`` on the master worker's queue
  (``CQRS['replica']['reconcile_master_queue']``, Celery's default queue when unset);
* to a replica: task ``cqrs_celery.reconcile`` through ``cqrs.direct`` to that replica's queue only
  (the replica queue's gate admits it, see ``replica/guard.py``).

``set_transport`` replaces the broker (``run_in_process`` plays both sides in one process).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ujson

from cqrs_celery import topology
from cqrs_celery.conf import get_settings
from cqrs_celery.constants import RECONCILE_MASTER_TASK, RECONCILE_TASK
from cqrs_celery.exceptions import BrokerUnavailableError, PublishError

#: ``(task name, body, queue, direct)`` → None; replaces the broker when set.
_transport: Callable[[str, dict[str, Any], str | None, bool], None] | None = None


def set_transport(transport: Callable[[str, dict[str, Any], str | None, bool], None] | None
                  ) -> Callable[[str, dict[str, Any], str | None, bool], None] | None:
    """Install ``transport`` instead of the broker (``None`` restores it); returns the previous one."""
    global _transport
    previous, _transport = _transport, transport
    return previous


def size(body: dict[str, Any]) -> int:
    """Bytes of a message's JSON argument (what the run counts as traffic)."""
    return len(ujson.dumps(body, ensure_ascii=False).encode('utf-8'))


def to_master(body: dict[str, Any]) -> int:
    """Send ``body`` to the master's reconciliation worker; returns its size."""
    queue = get_settings().replica.master_queue(body['cqrs_id'])
    _send(RECONCILE_MASTER_TASK, body, queue, direct=False)
    return size(body)


def to_replica(queue: str, body: dict[str, Any]) -> int:
    """Send ``body`` to one replica queue (``cqrs.direct``); returns its size."""
    _send(RECONCILE_TASK, body, queue, direct=True)
    return size(body)


def _send(task: str, body: dict[str, Any], queue: str | None, direct: bool) -> None:
    if _transport is not None:
        _transport(task, body, queue, direct)
        return
    from cqrs_celery.producer import is_broker_error, producer_pool

    app = get_settings().celery_app()
    timeout = get_settings().master.publish_timeout
    options: dict[str, Any]
    if direct:
        assert queue is not None
        exchange = topology.direct_exchange()
        options = {'exchange': exchange.name, 'routing_key': topology.direct_routing_key(queue),
                   'exchange_type': exchange.type, 'declare': [exchange]}
    else:
        options = {'queue': queue} if queue else {}
    try:
        with producer_pool(app).acquire(block=True, timeout=timeout) as producer:
            app.send_task(task, args=[body], serializer='json', producer=producer, ignore_result=True,
                          delivery_mode=topology.PERSISTENT, **options)
    except Exception as exc:
        error = BrokerUnavailableError if is_broker_error(exc) else PublishError
        raise error(f'sending {task} for {body.get("cqrs_id")} to {queue or "the default queue"} failed: '
                    f'{exc!r}') from exc
