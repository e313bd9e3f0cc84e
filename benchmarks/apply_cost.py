"""What a replica worker spends on one single-row message, in process: the task's body, no broker.

Run (PostgreSQL on 127.0.0.1 for ``--db postgres``; nothing else benchmarking):

    .venv/bin/python benchmarks/apply_cost.py [--db postgres|sqlite] [--shape wide] [--messages 2000] [--runs 3]

At a steady rate each change travels alone, and the replica's time per message decides how busy
its pool is, and so the latency (scenario A's p99 at 100 saves/s). This measures that time
without Celery around it: in a fresh process per run, the bench replica (``benchmarks/projects``)
decodes and applies ``--messages`` single-row SAVE messages of new rows, one after the other,
through the task's own body (``tasks._apply_rows``: the revision and tombstone rules, the
locks, the write, the outcome's signal), then the same number of updates of those rows.

For reference, the same process also creates and then updates as many rows of the same model with
Django's ``Model.objects.create()`` / ``save()``, each in a transaction of its own: the cost of
the write alone, with no rule checked.

It prints per message the wall time and the process's CPU time (medians and min–max of the runs),
and writes them as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE / 'projects' / 'cqrs_celery_bench'
KINDS = ('apply create', 'apply update', 'create() alone', 'save() alone')


def child(messages: int) -> dict[str, tuple[float, float]]:
    """In the bench replica's process: {kind: (wall µs, CPU µs) per message}."""
    import datetime
    import time

    import django

    django.setup()
    from bench_replica.models import ItemCopy  # type: ignore[import-not-found]
    from django.core.serializers.json import DjangoJSONEncoder
    from django.db import transaction
    from shapes import row  # type: ignore[import-not-found]

    from cqrs_celery.envelope import decode_message
    from cqrs_celery.replica import tasks

    class Task:  # what the task body reads of Celery's task: its request
        class request:
            delivery_info: dict = {}

    now = datetime.datetime.now(datetime.timezone.utc)

    def message(pk: int, revision: int) -> str:
        data = {**row(pk), 'id': pk, 'cqrs_revision': revision, 'cqrs_updated': now}
        return json.dumps({'v': 1, 'cqrs_id': 'bench_item', 'signal_type': 'SAVE', 'instance_pk': pk,
                           'instance_data': data, 'previous_data': None, 'meta': None, 'correlation_id': None,
                           'queue': None, 'expires': None, 'retries': 0}, cls=DjangoJSONEncoder)

    def timed(work: list[str]) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for raw in work:
            outcomes = tasks._apply_rows(Task, decode_message(raw), 'bench_replica')
            assert outcomes[0] in ('created', 'updated'), outcomes
        return ((time.perf_counter() - wall) / len(work) * 1e6, (time.process_time() - cpu) / len(work) * 1e6)

    ItemCopy.objects.all().delete()
    warm = [message(10**9 + i, 0) for i in range(50)]
    timed(warm)
    figures = {'apply create': timed([message(i, 0) for i in range(messages)]),
               'apply update': timed([message(i, 1) for i in range(messages)])}
    ItemCopy.objects.all().delete()

    def direct(update: bool) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(messages):
            with transaction.atomic():
                if update:
                    obj = ItemCopy.objects.select_for_update().get(pk=i)
                    obj.cqrs_revision = 1
                    obj.save()
                else:
                    ItemCopy.objects.create(id=i, cqrs_revision=0, cqrs_updated=now, **row(i))
        return ((time.perf_counter() - wall) / messages * 1e6, (time.process_time() - cpu) / messages * 1e6)

    figures['create() alone'] = direct(update=False)
    figures['save() alone'] = direct(update=True)
    ItemCopy.objects.all().delete()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--db', choices=['postgres', 'sqlite'], default='postgres')
    parser.add_argument('--shape', choices=['item', 'narrow', 'wide'], default='wide')
    parser.add_argument('--messages', type=int, default=2000)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--json', type=Path, help='also write the figures here')
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.messages)))
        return
    name = f'bench_apply_cost_{args.shape}'
    url = f'postgres:///{name}' if args.db == 'postgres' else f'sqlite:////tmp/{name}.sqlite3'
    env = {**os.environ, 'BENCH_ROLE': 'replica', 'BENCH_DB': url, 'BENCH_SHAPE': args.shape, 'BENCH_BROKER': 'none',
           'DJANGO_SETTINGS_MODULE': 'benchproj.settings',
           'PYTHONPATH': os.pathsep.join([str(PROJECT), str(PROJECT.parent)])}
    if args.db == 'postgres':
        for sql in (f'DROP DATABASE IF EXISTS {name}', f'CREATE DATABASE {name}'):
            subprocess.run(['psql', '-h', '127.0.0.1', '-U', 'postgres', '-qc', sql], check=True)
    else:
        Path(url.removeprefix('sqlite://')).unlink(missing_ok=True)
    manage = [sys.executable, str(PROJECT / 'manage.py')]
    subprocess.run([*manage, 'migrate', '--run-syncdb', '-v0'], env=env, check=True, cwd=PROJECT)
    runs = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, __file__, '--child', '--messages', str(args.messages)], env=env,
                             check=True, cwd=PROJECT, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    if args.db == 'postgres':
        subprocess.run(['psql', '-h', '127.0.0.1', '-U', 'postgres', '-qc', f'DROP DATABASE IF EXISTS {name}'],
                       check=True)
    print(f'{args.shape} row on {args.db}, {args.messages} messages, {args.runs} runs: '
          'µs per message, median (min–max)')
    result = {}
    for kind in KINDS:
        walls, cpus = [run[kind][0] for run in runs], [run[kind][1] for run in runs]
        result[kind] = {'wall_us': statistics.median(walls), 'wall_range': [min(walls), max(walls)],
                        'cpu_us': statistics.median(cpus), 'cpu_range': [min(cpus), max(cpus)]}
        print(f'  {kind:15} wall {statistics.median(walls):6.0f} ({min(walls):.0f}–{max(walls):.0f})'
              f'   CPU {statistics.median(cpus):6.0f} ({min(cpus):.0f}–{max(cpus):.0f})')
    if args.json:
        args.json.write_text(json.dumps({'db': args.db, 'shape': args.shape, 'messages': args.messages,
                                         'runs': args.runs, 'figures': result}, indent=2))


if __name__ == '__main__':
    main()
