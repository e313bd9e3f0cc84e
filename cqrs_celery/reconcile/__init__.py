"""Reconciliation: each replica compared with its master and repaired in place, driven by beat.

See ``docs/reconciliation.md``. The replica summarises its copy (``replica_side``), the master
compares and sends directed repairs (``master_side``), both through small Celery messages
(``transport``, ``tasks``); digests are in ``digest``, table reading in ``tables``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import router

__all__ = ['last_run', 'run_in_process', 'start']


def last_run(cqrs_id: str, queue: str | None = None, using: str | None = None) -> Any:
    """The latest recorded ``ReconciliationRun`` of ``cqrs_id`` (with ``queue``, of that replica), or None.

    On a master this is the run it led; on a replica, the report the master sent it.
    """
    from cqrs_celery.models import ReconciliationRun

    runs = ReconciliationRun._default_manager.using(using or router.db_for_read(ReconciliationRun))
    runs = runs.filter(cqrs_id=cqrs_id)
    if queue is not None:
        runs = runs.filter(queue=queue)
    return runs.order_by('-started_at', '-pk').first()


def start(cqrs_id: str | None = None, *, content: bool = False, dry_run: bool = False, manual: bool = False,
          run: str | None = None) -> list[str]:
    """Start a reconciliation of this replica service now (what beat's entry does); returns the run ids."""
    from cqrs_celery.reconcile import replica_side

    return replica_side.start({'step': 'start', 'cqrs_id': cqrs_id, 'content': content, 'dry_run': dry_run,
                               'manual': manual, 'run': run})


@contextmanager
def run_in_process() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Play both sides in this process: every reconciliation message is handled here, in order.

    For tests of a project that holds master and replica models in one process (repairs travel as
    envelopes: combine with ``cqrs_celery.testing.apply_in_process``). Yields the list of
    ``(task name, body)`` messages exchanged.
    """
    from cqrs_celery.constants import RECONCILE_TASK
    from cqrs_celery.reconcile import tasks, transport

    sent: list[tuple[str, dict[str, Any]]] = []
    pending: deque[tuple[str, dict[str, Any]]] = deque()
    draining = False

    def deliver(task: str, body: dict[str, Any], queue: str | None, direct: bool) -> None:
        nonlocal draining
        import ujson

        message = (task, ujson.loads(ujson.dumps(body)))
        sent.append(message)
        pending.append(message)
        if draining:
            return
        draining = True
        try:
            while pending:
                name, payload = pending.popleft()
                allowed = tasks.REPLICA_STEPS if name == RECONCILE_TASK else tasks.MASTER_STEPS
                tasks.handle(payload, allowed)
        finally:
            draining = False

    previous = transport.set_transport(deliver)
    try:
        yield sent
    finally:
        transport.set_transport(previous)
