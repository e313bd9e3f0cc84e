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

``--probe`` measures instead what the drains cost *another thread* of the process: the saving
thread of scenario A shares the interpreter with the publisher thread, and each time it comes
back from the database it waits for the interpreter lock until the publisher thread lets it go.
A probe thread sleeps 200 µs again and again while the drains run; its wake-ups late beyond
those of the same probe alone are the waits, printed per event drained (total) and as the 99th
percentile and the longest single wait, with the garbage collections that ran during the drains
(the library's publishers pause automatic collection around each drain: ``cqrs_celery/sharing.py``;
the rounds here drain the same way).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
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
    parser.add_argument('--probe', action='store_true', help="the drains' waits imposed on another thread")
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
    if args.probe:
        probe_rounds(outbox, args)
        return
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


PROBE_SLEEP = 0.0002


def probe_lateness(stop: threading.Event, late: list[float]) -> None:
    """Sleep ``PROBE_SLEEP`` until ``stop``; append how late (s) each wake-up came."""
    while not stop.is_set():
        started = time.perf_counter()
        time.sleep(PROBE_SLEEP)
        late.append(time.perf_counter() - started - PROBE_SLEEP)


def probed(work: Callable[[], object]) -> list[float]:
    """The probe's lateness while ``work()`` runs in this thread."""
    stop, late = threading.Event(), []
    thread = threading.Thread(target=probe_lateness, args=(stop, late))
    thread.start()
    try:
        work()
    finally:
        stop.set()
        thread.join()
    return late


def probe_rounds(outbox: object, args: argparse.Namespace) -> None:
    """Rounds of drains with the probe beside them, each after one of the probe alone."""
    totals, p99s, longest = [], [], []
    collections: list[tuple[int, float]] = []  # (generation, seconds) of each collection during the drains
    started: list[float] = []

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == 'start':
            started[:] = [time.perf_counter()]
        elif started:
            collections.append((info['generation'], time.perf_counter() - started[0]))

    for _ in range(args.rounds):
        fill(args.rows)
        alone = probed(lambda: time.sleep(0.5))
        baseline = statistics.median(alone)
        gc.callbacks.append(timed)
        try:
            late = probed(lambda: drain_all(outbox, args.batch))
        finally:
            gc.callbacks.remove(timed)
        extra = [max(0.0, value - baseline) for value in late]
        totals.append(sum(extra) / args.rows * 1e6)
        p99s.append(sorted(extra)[int(len(extra) * 0.99)] * 1e6)
        longest.append(max(extra) * 1e6)
    print(f'probe thread waits during drains ({args.db}, {args.broker}, {args.rows} rows a round in drains of '
          f'{args.batch}): per event µs median {statistics.median(totals):.1f} '
          f'(rounds {", ".join(f"{t:.1f}" for t in sorted(totals))}); single wait p99 µs '
          f'{statistics.median(p99s):.0f}, longest {statistics.median(longest):.0f}')
    events = args.rows * args.rounds
    for generation in (0, 1, 2):
        times = [seconds for gen, seconds in collections if gen == generation]
        print(f'  garbage collections of generation {generation} during the drains: {len(times)} for {events} events, '
              f'{sum(times) * 1e3:.1f} ms in all, longest {max(times, default=0) * 1e3:.1f} ms')


def fill(rows: int) -> None:
    """Save ``rows`` new rows (their events wait in the outbox)."""
    import decimal

    from bench_master.models import Item
    from django.utils import timezone

    now = timezone.now()
    for index in range(rows):
        Item.objects.create(sku=f'sku-{index}', title='t' * 40, quantity=index, price=decimal.Decimal('12.34'),
                            happened_at=now, active=True, notes='n' * 50)


def paused() -> contextlib.AbstractContextManager[None]:
    """Garbage collection paused as the library's publishers pause it around a drain (nothing for
    a release whose publisher did not)."""
    from cqrs_celery.master import publisher

    sharing = getattr(publisher, 'sharing', None)
    return sharing.collections_paused() if sharing is not None else contextlib.nullcontext()


def drain_all(outbox: object, batch: int) -> float:
    """Drain the outbox until it is empty; returns the process CPU seconds it took.

    Stops the benchmark with an error when a drain publishes nothing of what it took (the broker
    is down, or every message failed): the events would stay and the loop would never end.
    """
    started = time.process_time()
    while True:
        with paused():  # as the library's publishers drain (publisher.drain_ready)
            drained = outbox.drain(limit=batch)  # type: ignore[attr-defined]
        if not drained.taken:
            return time.process_time() - started
        if drained.broker_down is not None or not drained.published:
            raise SystemExit(f'drain_cost: a drain took {drained.taken} events and published {drained.published} '
                             f'(broker: {drained.broker_down or "up"}); is the broker running?')


if __name__ == '__main__':
    main()
