"""What ``cqrs_status`` shows: per CQRS_ID rows, outbox, unroutable publishes, reconciliation; queue depths.

Each figure is read on its own: one that cannot be read (no broker, a module another release
adds) is reported as such and never hides the others.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from django.db import router
from django.utils import timezone

from cqrs_celery import topology
from cqrs_celery.conf import get_settings
from cqrs_celery.master import outbox
from cqrs_celery.producer import transport_family
from cqrs_celery.registry import MasterRegistry, ReplicaRegistry

#: A figure that does not apply to this service (a replica's rows on a master-only service…).
NOT_HERE = '-'
#: A figure this release (or this broker) cannot give.
UNKNOWN = 'n/a'
NEVER = 'never'


def collect(database: str = 'default', dead_letters_by_id: bool = False) -> dict[str, Any]:
    """Every figure, JSON-safe: ``{'models': [...], 'queues': [...]}``."""
    now = timezone.now()
    masters, replicas = MasterRegistry.ids(), ReplicaRegistry.ids()
    waiting = _outbox(database, now) if masters else {}
    unroutable = _unroutable()
    letters = _dead_letters_by_id() if dead_letters_by_id else None
    models = []
    for cqrs_id in sorted(set(masters) | set(replicas)):
        row: dict[str, Any] = {
            'cqrs_id': cqrs_id,
            'master_rows': _count(MasterRegistry.get(cqrs_id), master=True) if cqrs_id in masters else NOT_HERE,
            'replica_rows': _count(ReplicaRegistry.get(cqrs_id), master=False) if cqrs_id in replicas else NOT_HERE,
        }
        if cqrs_id in masters:
            row.update(waiting.get(cqrs_id, _empty_outbox()))
            row['events_written_by'] = _writer(MasterRegistry.get(cqrs_id))
            row['unroutable'] = unroutable.get(cqrs_id, 0) if isinstance(unroutable, Mapping) else unroutable
        else:
            row.update(outbox_waiting=NOT_HERE, outbox_set_aside=NOT_HERE, outbox_oldest_age=NOT_HERE,
                       events_written_by=NOT_HERE, unroutable=NOT_HERE)
        if letters is not None:
            row['dead_letters'] = letters.get(cqrs_id, 0) if cqrs_id in replicas else NOT_HERE
        row.update(_reconciliation(cqrs_id))
        models.append(row)
    return {'time': now.isoformat(), 'models': models, 'queues': _queues() if replicas else []}


def _count(model: Any, master: bool) -> Any:
    if getattr(model, 'CQRS_NO_DB_OPERATIONS', False):
        return NOT_HERE
    manager = model._base_manager if master else model._default_manager
    try:
        return manager.using(router.db_for_read(model)).count()
    except Exception as exc:
        return f'{UNKNOWN} ({exc})'


def _writer(model: Any) -> str:
    """Who writes the model's outbox events: its trigger, the save, or nobody (``triggers.state``)."""
    from cqrs_celery.master import triggers

    try:
        return triggers.state(router.db_for_write(model) or 'default', model)
    except Exception as exc:
        return f'{UNKNOWN} ({exc})'


def _empty_outbox() -> dict[str, Any]:
    return {'outbox_waiting': 0, 'outbox_set_aside': 0, 'outbox_oldest_age': None}


def _outbox(database: str, now: datetime.datetime) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for row in outbox.status(database)['rows']:
        entry = found.setdefault(row['cqrs_id'], _empty_outbox())
        entry['outbox_set_aside' if row['set_aside'] else 'outbox_waiting'] += row['count']
        age = round((now - row['oldest']).total_seconds(), 1)
        entry['outbox_oldest_age'] = max(age, entry['outbox_oldest_age'] or 0.0)
    return found


def _unroutable() -> Any:
    from cqrs_celery.producer import unroutable_counts

    try:
        return unroutable_counts()
    except Exception as exc:
        return f'{UNKNOWN} ({exc})'


def _reconciliation(cqrs_id: str) -> dict[str, Any]:
    from cqrs_celery.reconcile import last_run

    try:
        run = last_run(cqrs_id, queue=None)
    except Exception as exc:
        return {'last_reconciliation': f'{UNKNOWN} ({exc})', 'drift_found': UNKNOWN}
    if run is None:
        return {'last_reconciliation': NEVER, 'drift_found': UNKNOWN}
    finished = _first(run, 'finished_at', 'finished')
    when = finished or _first(run, 'started_at', 'started', 'created')
    text = when.isoformat() if isinstance(when, datetime.datetime) else str(when or UNKNOWN)
    if finished is None and when is not None:
        text += ' (running)'
    if _first(run, 'error'):
        text += f' (failed: {_first(run, "error")})'
    kinds = [_first(run, name) for name in _DRIFT_KINDS]
    drift = sum(kinds) if all(isinstance(k, int) for k in kinds) else _first(run, 'drift', 'drift_found')
    return {'last_reconciliation': text,
            'drift_found': drift if isinstance(drift, int | float) else (UNKNOWN if drift is None else str(drift))}


#: The kinds of drift a reconciliation run counts; the drift found is their sum.
_DRIFT_KINDS = ('missing', 'stale', 'ahead', 'changed', 'extra')


def _first(run: Any, *names: str) -> Any:
    for name in names:
        value = run.get(name) if isinstance(run, Mapping) else getattr(run, name, None)
        if value is not None:
            return value
    return None


def _queues() -> list[dict[str, Any]]:
    settings = get_settings()
    if not settings.queue:
        return []
    return [{'queue': name, 'kind': kind, 'messages': _depth(name)}
            for name, kind in ((settings.queue, 'replica'), (settings.dead_letter_queue, 'dead-letter')) if name]


def _depth(name: str) -> Any:
    """Messages in queue ``name``: a passive declare (RabbitMQ), the list's length (kombu's virtual brokers)."""
    try:
        app = get_settings().celery_app()
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            channel = conn.channel()
            try:
                return int(channel.queue_declare(queue=name, passive=True).message_count)
            except Exception as exc:
                if 'NOT_FOUND' in str(exc) or 'no queue' in str(exc).lower():
                    # A virtual broker keeps no empty queue; on RabbitMQ nothing was ever declared.
                    return 0 if transport_family(app) == topology.VIRTUAL else 'missing'
                raise
            finally:
                channel.close()
    except Exception as exc:
        return f'{UNKNOWN} ({type(exc).__name__}: {exc})'


def _dead_letters_by_id() -> dict[str, int] | None:
    from cqrs_celery.replica import dead_letters

    if not get_settings().queue:
        return None
    counts: dict[str, int] = {}
    for letter in dead_letters.letters(get_settings().celery_app()):
        named = letter.get('envelope') or letter.get('raw')
        cqrs_id = named.get('cqrs_id') if isinstance(named, Mapping) else None
        key = cqrs_id if isinstance(cqrs_id, str) else UNKNOWN
        counts[key] = counts.get(key, 0) + 1
    return counts
