"""What scenario A counts after the master's last save: the end of a flood, for cqrs_celery alone.

Run (PostgreSQL, RabbitMQ and Redis on 127.0.0.1; nothing else benchmarking):

    .venv/bin/python benchmarks/flood_tail.py [--broker amqp] [--db postgres] [-c 2] [--saves 1000] [--runs 6]

A's rate runs from the master's first save to the last row made visible on the replica, so it
counts, besides the master's loop, the time from the loop's end to that last row: the publisher's
last gathering, its drain, the broker and the replica's last group. This runs A's flood as
``run.py`` does (the same warmed worker, a fresh master process per run) and prints for every run
the master's own rate, A's rate, that tail, and the groups the replica committed: rows made
visible together (the replica row's ``bench_seen``, within ``SAME_GROUP`` of each other) are
one group apply. The median of each figure over the runs closes the output.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Rows whose visible times are this close (seconds) are counted as one group's commit.
SAME_GROUP = 0.0005


def groups_of(seen: list[float]) -> list[list[float]]:
    """The visible times, sorted, cut where two in a row are more than ``SAME_GROUP`` apart."""
    groups: list[list[float]] = []
    for moment in sorted(seen):
        if groups and moment - groups[-1][-1] < SAME_GROUP:
            groups[-1].append(moment)
        else:
            groups.append([moment])
    return groups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--broker', choices=['amqp', 'redis'], default='amqp')
    parser.add_argument('--db', choices=['postgres', 'sqlite'], default='postgres')
    parser.add_argument('-c', '--concurrency', type=int, default=2, help='worker processes of the replica')
    parser.add_argument('--saves', type=int, default=1000)
    parser.add_argument('--runs', type=int, default=6)
    args = parser.parse_args()

    sys.path.insert(0, str(HERE))
    from benchlib.processes import Worker
    from benchlib.scenarios import cqrs_celery_section

    section, queue, master, replica = cqrs_celery_section(args.broker, args.db)
    worker = Worker(replica, args.concurrency)
    figures: dict[str, list[float]] = {'master': [], 'A': [], 'tail': [], 'groups': [], 'last group': []}
    print(f'{args.broker} + {args.db}, c={args.concurrency}, {args.saves} creates a run\n', flush=True)
    try:
        worker.start()
        section.empty()
        section.warm_up(master, worker)
        for run in range(args.runs):
            section.empty()
            made = master.driver('create', str(args.saves), '--start', str(10_000_000 * (run + 1)))
            (count, _, last), ok = section.wait_rows(args.saves)
            if not ok:
                print(f'run {run + 1}: timed out at {count}/{args.saves}')
                continue
            groups = groups_of(list(section.replica_db.seen_by_pk().values()))
            sizes = [len(group) for group in groups]
            row = {'master': args.saves / (made['end'] - made['start']), 'A': args.saves / (last - made['start']),
                   'tail': (last - made['end']) * 1e3, 'groups': len(groups), 'last group': sizes[-1]}
            for key, value in row.items():
                figures[key].append(value)
            print(f'run {run + 1}: master loop {row["master"]:.0f} saves/s, A {row["A"]:.0f} events/s, '
                  f'tail {row["tail"]:.1f} ms; {len(groups)} groups of {", ".join(map(str, sizes))} rows', flush=True)
    finally:
        worker.stop()
        section.clean(queue)
        section.clean_exchanges()
        section.drop()
    if figures['A']:
        print('\nmedian: ' + ', '.join(f'{key} {statistics.median(values):.1f}' for key, values in figures.items())
              + ' (saves/s, events/s, ms, groups, rows)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
