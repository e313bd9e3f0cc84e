"""The publisher's CPU per outbox event: ``outbox.drain`` in a loop, alone in one process.

Run (RabbitMQ or Redis on 127.0.0.1; PostgreSQL for ``--db postgres``; nothing else benchmarking):

    .venv/bin/python benchmarks/drain_cost.py [--db sqlite] [--broker amqp] [--rows 2000] [--rounds 9]
                                              [--batch 150] [--profile]

Each round saves ``--rows`` new rows of the bench master's ``Item`` with nobody publishing
(``publisher = 'relay'``), then drains them with ``outbox.drain(limit=--batch)`` until none is
left, and takes the process's CPU time over the drains alone, per event: what the publisher
thread costs the master's interpreter for each save in scenario A (reading the events and the
rows, building and encoding the envelopes, the publisher confirms, the deletes). No replica queue
is bound, so the messages are dropped by the broker after their confirm. It prints the median and
every round's figure; ``--profile`` adds one round under cProfile (the 30 functions with the most
time of their own).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BROKERS = {'amqp': 'amqp://guest:guest@127.0.0.1:5672//', 'redis': 'redis://127.0.0.1:6379/0'}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--db', choices=('sqlite', 'postgres'), default='sqlite')
    parser.add_argument('--broker', choices=tuple(BROKERS), default='amqp')
    parser.add_argument('--rows', type=int, default=2000, help='rows saved, then drained, per round')
    parser.add_argument('--rounds', type=int, default=9)
    parser.add_argument('--batch', type=int, default=150, help='events per drain')
    parser.add_argument('--profile', action='store_true', help='one more round under cProfile')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        database = f'sqlite:///{scratch}/master.sqlite3' if args.db == 'sqlite' else 'postgres:///bench_drain_cost'
        setup(database, BROKERS[args.broker])
        run(args)


def setup(database: str, broker: str) -> None:
    """Django for the bench master, with an empty database and nobody publishing."""
    os.environ.update(BENCH_ROLE='master', BENCH_DB=database, BENCH_BROKER=broker, BENCH_PUBLISHER='relay',
                      DJANGO_SETTINGS_MODULE='benchproj.settings')
    sys.path[:0] = [str(HERE / 'projects' / 'cqrs_celery_bench'), str(HERE / 'projects'), str(HERE.parent)]
    if database.startswith('postgres'):
        import psycopg

        name = database.rsplit('/', 1)[1]
        with psycopg.connect('host=127.0.0.1 user=postgres dbname=postgres', autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS {name}')
            admin.execute(f'CREATE DATABASE {name}')
    import django

    django.setup()
    from django.core.management import call_command

    call_command('migrate', run_syncdb=True, verbosity=0)


def run(args: argparse.Namespace) -> None:
    import logging

    from cqrs_celery.master import outbox

    logging.getLogger('cqrs_celery').setLevel(logging.ERROR)  # (no replica queue: each drain reports it)
    fill(args.rows)
    drain_all(outbox, args.batch)  # the first drain connects and declares: not counted
    costs = []
    for _ in range(args.rounds):
        fill(args.rows)
        costs.append(drain_all(outbox, args.batch) / args.rows * 1e6)
    print(f'drain CPU per event, µs ({args.db}, {args.broker}, {args.rows} rows a round in drains of {args.batch}): '
          f'median {statistics.median(costs):.1f}, rounds {", ".join(f"{c:.1f}" for c in sorted(costs))}')
    if args.profile:
        import cProfile
        import pstats

        fill(args.rows)
        profile = cProfile.Profile()
        profile.enable()
        drain_all(outbox, args.batch)
        profile.disable()
        pstats.Stats(profile).sort_stats('tottime').print_stats(30)


def fill(rows: int) -> None:
    """Save ``rows`` new rows (their events wait in the outbox)."""
    import decimal

    from bench_master.models import Item
    from django.utils import timezone

    now = timezone.now()
    for index in range(rows):
        Item.objects.create(sku=f'sku-{index}', title='t' * 40, quantity=index, price=decimal.Decimal('12.34'),
                            happened_at=now, active=True, notes='n' * 50)


def drain_all(outbox: object, batch: int) -> float:
    """Drain the outbox until it is empty; returns the process CPU seconds it took."""
    started = time.process_time()
    while outbox.drain(limit=batch).taken:  # type: ignore[attr-defined]
        pass
    return time.process_time() - started


if __name__ == '__main__':
    main()
