"""What scenario A counts after the master's last save: the end of a flood, for cqrs_celery alone.

Run (PostgreSQL, RabbitMQ and Redis on 127.0.0.1; nothing else benchmarking):

    .venv/bin/python benchmarks/flood_tail.py [--broker amqp] [--db postgres] [-c 2] [--saves 1000] [--runs 6]

A's rate runs from the master's first save to the last row made visible on the replica, so it
counts, besides the master's loop, the time from the loop's end to that last row: the publisher's
last gathering, its drain, the broker and the replica's last group. This runs A's flood as
``run.py`` does (the same warmed worker, a fresh master process per run) and prints for every run
the master's own rate, A's rate, that tail, and the groups the replica committed: rows made visible
together (the replica row's ``bench_seen``, within ``SAME_GROUP`` of each other) are one group
apply. The median of each figure over the runs closes the output.

With ``--cpu``, every process of the machine is sampled (``benchlib.cpu``), and each run is
followed by the same loop saving the plain model while the worker idles, as ``run.py`` pairs them.
The output closes with where the CPU went, summed over the runs, in µs a save: the master's process
(and its main thread, the saving loop, alone), the worker, PostgreSQL, the broker, the rest of the
machine and its idle time, over A's window (first save to last row visible) and over the plain
loop's. On 2 cores a window of W seconds holds 2 W of CPU: an idle share near zero means the
machine, not a wait, set the pace.
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
    parser.add_argument('--cpu', action='store_true', help='also where the CPU went, against the plain loop')
    parser.add_argument('--publisher-process', action='store_true',
                        help="publish from a process of its own (publisher = 'relay', cqrs_outbox relay --follow)")
    args = parser.parse_args()

    sys.path.insert(0, str(HERE))
    from benchlib.cpu import CpuSampler
    from benchlib.processes import Worker, stop_background
    from benchlib.scenarios import cqrs_celery_section

    section, queue, master, replica = cqrs_celery_section(args.broker, args.db)
    follower = None
    if args.publisher_process:
        master, _ = section.services(queue, publisher='relay')
        follower = master.manage_in_background('cqrs_outbox', 'relay', '--follow')
    worker = Worker(replica, args.concurrency)
    figures: dict[str, list[float]] = {'master': [], 'A': [], 'tail': [], 'groups': [], 'last group': []}
    print(f'{args.broker} + {args.db}, c={args.concurrency}, {args.saves} creates a run\n', flush=True)
    sampler = CpuSampler() if args.cpu else None
    windows: dict[str, list[tuple[float, float]]] = {'A': [], 'plain loop': []}
    try:
        worker.start()
        section.empty()
        section.warm_up(master, worker)
        if sampler:
            sampler.start()
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
            if sampler:
                windows['A'].append((made['start'], last))
                plain = master.driver('create', str(args.saves), '--plain')
                windows['plain loop'].append((plain['start'], plain['end']))
                print(f'       plain loop {args.saves / (plain["end"] - plain["start"]):.0f} saves/s', flush=True)
    finally:
        if sampler:
            sampler.stop()
        if follower:
            stop_background(follower)
        worker.stop()
        section.clean(queue)
        section.clean_exchanges()
        section.drop()
    if figures['A']:
        print('\nmedian: ' + ', '.join(f'{key} {statistics.median(values):.1f}' for key, values in figures.items())
              + ' (saves/s, events/s, ms, groups, rows)')
    if sampler and windows['A']:
        print_cpu(sampler, windows, args.saves)
    return 0


def print_cpu(sampler, windows: dict[str, list[tuple[float, float]]], saves: int) -> None:
    """The CPU of each role over each kind of window, summed over the runs, in µs a save."""
    from benchlib.cpu import MAIN, ROLES

    keys = ('wall', 'master', *MAIN, *ROLES[1:], 'rest', 'busy', 'idle')
    print(f'\nCPU over the windows, summed over {len(windows["A"])} runs, µs a save '
          '(wall: the window itself; busy + idle = cores × wall):')
    print('| window | ' + ' | '.join(keys) + ' |')
    print('|---|' + '---|' * len(keys))
    for name, spans in windows.items():
        total = dict.fromkeys(keys, 0.0)
        for start, end in spans:
            total['wall'] += end - start
            for key, value in sampler.used(start, end).items():
                total[key] += value
        count = saves * len(spans)
        print(f'| {name} | ' + ' | '.join(f'{total[key] / count * 1e6:.0f}' for key in keys) + ' |')


if __name__ == '__main__':
    sys.exit(main())
