"""The master's (or the replica database's) side of a benchmark step, run inside a library's venv.

    BENCH_PROJECT=benchmarks/projects/djcqrs_bench BENCH_ROLE=master BENCH_DB=… BENCH_BROKER=… \\
        .bench/venv-djcqrs/bin/python benchmarks/driver.py create 1000

run.py starts it once per step with the environment of one bench project (see
projects/common.py) and reads the JSON object it prints as its last line. The same code drives both
libraries: they share the model API (``save``, ``Model.cqrs.bulk_create``, ``Model.cqrs.bulk_update``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = Path(os.environ['BENCH_PROJECT']).resolve()
sys.path[:0] = [str(PROJECT), str(HERE / 'projects')]
os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'benchproj.settings')


def no_broker() -> contextlib.AbstractContextManager:
    """cqrs_celery without a broker: its public test helper keeps the envelopes instead of sending.

    django-cqrs needs nothing here: its settings select the mock transport for BENCH_BROKER=none.
    """
    if os.environ.get('BENCH_BROKER', 'none') != 'none':
        return contextlib.nullcontext()
    try:
        from cqrs_celery.testing import capture_envelopes
    except ImportError:
        return contextlib.nullcontext()
    return capture_envelopes()


def create(n: int, start: int, rate: float, commit_times: bool, plain: bool = False, quiet: bool = False) -> dict:
    """``n`` single-row creates, flat out or paced at ``rate`` per second.

    ``plain``: of ``PlainItem`` (no replication), into an emptied table: the same loop in the same
    kind of fresh process as A's, the like-for-like baseline of A's share of the save loop.
    ``quiet``: likewise of ``QuietItem``, the replicated model with ``CQRS_PRODUCE = False``.
    """
    from bench_master.models import Item, PlainItem, QuietItem
    from django.db import connection, transaction
    from shapes import row

    model = PlainItem if plain else QuietItem if quiet else Item
    if plain or quiet:
        model.objects.all()._raw_delete(model.objects.db)
    # Every loop starts with the process's database connection open (the plain and quiet loops
    # opened it above), as a service's does after its first request: the saves are timed, not
    # the connection. What the library itself sets up on its first save stays in the time.
    connection.ensure_connection()
    commits: dict[int, float] = {}
    began = time.time()
    for i in range(n):
        if rate:
            delay = began + i / rate - time.time()
            if delay > 0:
                time.sleep(delay)
        item = model(**row(start + i))
        if commit_times:
            # Registered before the library's own on_commit publish, so it runs first: the stamp is
            # the commit, not the publish.
            with transaction.atomic():
                transaction.on_commit(lambda item=item: commits.__setitem__(item.pk, time.time()))
                item.save()
        else:
            item.save()
    return {'start': began, 'end': time.time(), 'commits': commits}


def update(n: int) -> dict:
    """One save of each of the first ``n`` rows (a changed quantity)."""
    from bench_master.models import Item

    items = list(Item.objects.order_by('pk')[:n])
    began = time.time()
    for item in items:
        item.quantity += 1
        item.save()
    return {'start': began, 'end': time.time(), 'rows': len(items)}


def delete(n: int) -> dict:
    """``delete()`` of each of the first ``n`` rows, one by one (each its own transaction)."""
    from bench_master.models import Item

    items = list(Item.objects.order_by('pk')[:n])
    began = time.time()
    for item in items:
        item.delete()
    return {'start': began, 'end': time.time(), 'rows': len(items)}


def seed(n: int, replicated: bool, start: int = 0) -> dict:
    """``n`` rows in bulk: through ``Item.cqrs.bulk_create`` (one event per row) or unpublished.

    Unpublished rows on PostgreSQL are inserted with the session's triggers off
    (``session_replication_role``), so that no library's trigger records them; on SQLite the
    events cqrs_celery's triggers wrote are deleted in the same transaction.
    """
    from bench_master.models import Item
    from django.db import connection, transaction
    from shapes import row

    manager = Item.cqrs if replicated else Item.objects
    began = time.time()
    with transaction.atomic():
        quiet = not replicated and connection.vendor == 'postgresql'
        if quiet:
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL session_replication_role = 'replica'")
        events = None if replicated or quiet else outbox_events()
        last = 0 if events is None else events.order_by('-id').values_list('id', flat=True).first() or 0
        for first in range(start, start + n, 500):
            manager.bulk_create([Item(**row(i)) for i in range(first, min(start + n, first + 500))])
        if events is not None:
            events.filter(id__gt=last)._raw_delete(events.db)
    return {'start': began, 'end': time.time()}


def outbox_events():
    """cqrs_celery's outbox events (None in django-cqrs's venv, which has no outbox)."""
    try:
        from cqrs_celery.models import OutboxEvent
    except ImportError:
        return None
    return OutboxEvent.objects.all()


def flood(rounds: int) -> dict:
    """``rounds`` × ``Item.cqrs.bulk_update`` of every row: one event per row each time."""
    from bench_master.models import Item
    from django.db.models import F

    began = time.time()
    for _ in range(rounds):
        Item.cqrs.bulk_update(Item.objects.all(), quantity=F('quantity') + 1)
    return {'start': began, 'end': time.time()}


def _timed(operation, count: int) -> list[float]:
    samples = []
    for i in range(count):
        began = time.perf_counter()
        operation(i)
        samples.append((time.perf_counter() - began) * 1000)
    return samples


def _summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {'mean_ms': statistics.fmean(ordered), 'p50_ms': ordered[len(ordered) // 2],
            'p95_ms': ordered[int(len(ordered) * 0.95)]}


def cost(n: int) -> dict:
    """Milliseconds per create, per update and per delete of ``Item``, of ``PlainItem`` and of ``QuietItem``
    (``Item`` with ``CQRS_PRODUCE = False``), in this process."""
    from bench_master.models import Item, PlainItem, QuietItem
    from shapes import row

    result = {}
    def clear(model) -> None:
        # No delete signals: the replicated model would publish a DELETE per row.
        model.objects.all()._raw_delete(model.objects.db)

    for label, model in (('plain', PlainItem), ('quiet', QuietItem), ('cqrs', Item), ('plain2', PlainItem)):
        clear(model)
        _timed(lambda i, model=model: model.objects.create(**row(10_000_000 + i)), 20)  # warm-up
        creates = _timed(lambda i, model=model: model.objects.create(**row(i)), n)
        rows = list(model.objects.order_by('pk'))

        def save_again(i: int, rows: list = rows) -> None:
            item = rows[i % len(rows)]
            item.quantity += 1
            item.save()

        updates = _timed(save_again, n)
        deletes = _timed(lambda i, rows=rows: rows[i].delete(), len(rows))
        result[label] = {'create': _summary(creates), 'update': _summary(updates), 'delete': _summary(deletes)}
        clear(model)
    # The plain model is timed before and after the replicated one; its baseline is the mean of both.
    for kind in ('create', 'update', 'delete'):
        result['plain'][kind]['mean_ms'] = (result['plain'][kind]['mean_ms'] + result['plain2'][kind]['mean_ms']) / 2
    del result['plain2']
    return result


def db_ceiling(n: int) -> dict:
    """Replica table insert rates: one transaction per row, and ``bulk_create`` in batches of 500."""
    import datetime

    from bench_replica.models import ItemCopy
    from shapes import row

    now = datetime.datetime.now(datetime.timezone.utc)
    ItemCopy.objects.all()._raw_delete('default')
    began = time.perf_counter()
    for i in range(n):
        ItemCopy.objects.create(id=i + 1, cqrs_revision=0, cqrs_updated=now, **row(i))
    per_row = n / (time.perf_counter() - began)
    ItemCopy.objects.all()._raw_delete('default')
    began = time.perf_counter()
    for first in range(0, n, 500):
        ItemCopy.objects.bulk_create([ItemCopy(id=i + 1, cqrs_revision=0, cqrs_updated=now, **row(i))
                                      for i in range(first, min(n, first + 500))])
    bulk = n / (time.perf_counter() - began)
    ItemCopy.objects.all()._raw_delete('default')
    return {'per_row': per_row, 'bulk': bulk}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('action', choices=['create', 'update', 'delete', 'seed', 'bulk-seed', 'flood', 'cost',
                                           'db-ceiling'])
    parser.add_argument('n', type=int)
    parser.add_argument('--start', type=int, default=0, help='create, seed: index of the first row')
    parser.add_argument('--rate', type=float, default=0, help='create: saves per second (0: flat out)')
    parser.add_argument('--commit-times', action='store_true', help='create: report each row\'s commit time')
    parser.add_argument('--plain', action='store_true', help='create: of the plain model (no replication)')
    parser.add_argument('--quiet', action='store_true', help='create: of the model with CQRS_PRODUCE = False')
    args = parser.parse_args()

    import django

    django.setup()
    with no_broker():
        if args.action == 'create':
            result = create(args.n, args.start, args.rate, args.commit_times, args.plain, args.quiet)
        elif args.action == 'update':
            result = update(args.n)
        elif args.action == 'delete':
            result = delete(args.n)
        elif args.action in ('seed', 'bulk-seed'):
            result = seed(args.n, replicated=args.action == 'bulk-seed', start=args.start)
        elif args.action == 'flood':
            result = flood(args.n)
        elif args.action == 'cost':
            result = cost(args.n)
        else:
            result = db_ceiling(args.n)
    print(json.dumps(result))


if __name__ == '__main__':
    main()
