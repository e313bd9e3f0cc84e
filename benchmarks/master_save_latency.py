"""Master save latency: outbox on vs off, against a plain Django save measured in the same run.

Run (PostgreSQL, RabbitMQ and Redis on 127.0.0.1):

    .venv/bin/python benchmarks/master_save_latency.py [--saves 500] [--brokers amqp redis]

For each broker it times N updates and N creates of ``Item`` (a MasterMixin model) with the outbox
on and off, and the same operations on ``PlainItem`` (no cqrs_celery), and prints mean / p50 / p95
in milliseconds and each mean as a ratio of the plain save. A replica queue is declared (nothing
consumes it) so publishes have somewhere to go; it is deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tests.settings')
os.environ.setdefault('CQRS_TEST_DATABASE', 'postgres')
os.environ.setdefault('CQRS_TEST_DEFAULT_DB', 'cqrs_bench_master')
os.environ['CQRS_TEST_QUEUE'] = ''

BROKERS = {'amqp': 'amqp://guest:guest@127.0.0.1:5672//', 'redis': 'redis://127.0.0.1:6379/14'}
QUEUE = 'cqrs_bench_replica'


def recreate_database(name: str) -> None:
    import psycopg

    with psycopg.connect('host=127.0.0.1 user=postgres dbname=postgres', autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS {name} WITH (FORCE)')
        conn.execute(f'CREATE DATABASE {name}')


def timed(operation, count: int) -> list[float]:
    samples = []
    for i in range(count):
        started = time.perf_counter()
        operation(i)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def summary(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    return (statistics.fmean(ordered), ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.95)])


def run(broker: str, saves: int) -> list[tuple[str, list[float]]]:
    from celery import Celery
    from django.conf import settings
    from django.test import override_settings
    from kombu import Connection, pools

    from cqrs_celery import topology
    from cqrs_celery.registry import MasterRegistry
    from tests.master_app.models import Item, PlainItem

    app = Celery('bench', broker=BROKERS[broker], set_as_current=False)
    family = topology.AMQP if broker == 'amqp' else topology.VIRTUAL
    with Connection(BROKERS[broker]) as conn:
        topology.replica_queue(QUEUE, MasterRegistry.ids(), family)(conn.default_channel).declare()
    results = []
    try:
        for label, outbox in (('outbox on', True), ('outbox off', False)):
            cqrs = {**settings.CQRS, 'app': app, 'queue': None,
                    'master': {**settings.CQRS['master'], 'outbox': outbox}}
            with override_settings(CQRS=cqrs):
                Item.objects.all().delete()
                results.append((f'{broker} create, {label}', timed(
                    lambda i: Item.objects.create(sku=f'b{i}', name='bench', quantity=i), saves)))
                items = list(Item.objects.order_by('sku'))

                def update(i: int, items: list = items) -> None:
                    item = items[i % len(items)]
                    item.quantity += 1
                    item.save()

                results.append((f'{broker} update, {label}', timed(update, saves)))
        PlainItem.objects.all().delete()
        results.append((f'{broker} create, plain Django', timed(
            lambda i: PlainItem.objects.create(sku=f'b{i}', name='bench', quantity=i), saves)))
        plain = list(PlainItem.objects.order_by('sku'))

        def plain_update(i: int) -> None:
            item = plain[i % len(plain)]
            item.quantity += 1
            item.save()

        results.append((f'{broker} update, plain Django', timed(plain_update, saves)))
    finally:
        with Connection(BROKERS[broker]) as conn:
            channel = conn.default_channel
            if broker == 'redis':
                channel.client.flushdb()
            else:
                channel.queue_delete(QUEUE)
        pools.reset()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--saves', type=int, default=500)
    parser.add_argument('--brokers', nargs='+', default=['amqp', 'redis'], choices=sorted(BROKERS))
    args = parser.parse_args()
    recreate_database(os.environ['CQRS_TEST_DEFAULT_DB'])
    import django
    from django.core.management import call_command

    django.setup()
    call_command('migrate', verbosity=0)
    print(f'{args.saves} saves per row, PostgreSQL master database, times in ms')
    print(f'{"operation":<36} {"mean":>7} {"p50":>7} {"p95":>7}  ratio to plain')
    for broker in args.brokers:
        results = run(broker, args.saves)
        plain = {kind: summary(samples)[0] for name, samples in results if 'plain' in name
                 for kind in [name.split()[1]]}
        for name, samples in results:
            mean, p50, p95 = summary(samples)
            ratio = mean / plain[name.split()[1]]
            print(f'{name:<36} {mean:7.2f} {p50:7.2f} {p95:7.2f}  {ratio:5.1f}x')


if __name__ == '__main__':
    main()
