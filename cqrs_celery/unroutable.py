"""Unroutable broadcasts: counted per CQRS_ID, announced by a signal, logged at most once a minute.

:mod:`cqrs_celery.producer` detects them (see there for what each broker does with them) and calls
:func:`record`; :func:`unroutable_counts` gives the totals of this process (e.g. for a status command).
"""

from __future__ import annotations

import logging
import threading
import time

from cqrs_celery.exceptions import UnroutableError

logger = logging.getLogger(__name__)

#: Seconds between two log lines about unroutable publishes of one CQRS_ID.
UNROUTABLE_LOG_EVERY = 60.0

_unroutable_lock = threading.Lock()
_unroutable_rows: dict[str, int] = {}
_unroutable_logged: dict[str, tuple[float, int]] = {}


def unroutable_counts() -> dict[str, int]:
    """Rows published by this process, per CQRS_ID, that reached no replica queue (since it started)."""
    with _unroutable_lock:
        return dict(_unroutable_rows)


def record(cqrs_id: str, exchange: str, routing_key: str, target: str | None, rows: int, *,
                keep: bool) -> None:
    """Count, signal and (at most once per interval and CQRS_ID) log a broadcast nobody was bound to.

    Raises:
        UnroutableError: for a directed publish, whose named queue does not exist; and with
            ``keep`` (Redis, filesystem), so that the outbox keeps the event and retries it.
    """
    if target:
        raise UnroutableError(f'no queue {target!r} is bound to {exchange} (routing key {routing_key!r}): '
                              'the message would be dropped; check the queue name, or start that replica '
                              'service\'s worker or run cqrs_topology --declare there')
    from cqrs_celery.signals import unroutable

    now = time.monotonic()
    with _unroutable_lock:
        total = _unroutable_rows[cqrs_id] = _unroutable_rows.get(cqrs_id, 0) + rows
        last, logged_total = _unroutable_logged.get(cqrs_id, (float('-inf'), 0))
        log = now - last >= UNROUTABLE_LOG_EVERY
        if log:
            _unroutable_logged[cqrs_id] = (now, total)
    fate = ('kept in the outbox and retried (the broker may have lost its bindings in a restart; on the filesystem '
             'broker every project must use the same folders: see manage.py check)' if keep
            else 'not kept (a replica service deployed later gets them through its first-run sync or reconciliation)')
    if log:
        logger.warning('cqrs unroutable: cqrs_id=%s exchange=%s: no replica queue is bound, %s rows not delivered '
                       'since the last report (%s in this process), %s', cqrs_id, exchange, total - logged_total,
                       total, fate)
    try:
        unroutable.send(sender=None, cqrs_id=cqrs_id, exchange=exchange, rows=rows, kept=keep)
    except Exception:
        logger.exception('cqrs: a receiver of the unroutable signal failed (cqrs_id=%s)', cqrs_id)
    if keep:
        raise UnroutableError(f'no replica queue is bound to {exchange} with routing key {routing_key!r}: the '
                              'message would be dropped; the outbox keeps it (start a replica worker or run '
                              'cqrs_topology --declare on the replica)')
