"""Where scenario A's share of the master's save loop goes: the loop in four set-ups, fresh processes.

Run (PostgreSQL, RabbitMQ and Redis on 127.0.0.1; nothing else benchmarking):

    .venv/bin/python benchmarks/save_loop_split.py [--broker amqp] [--db postgres] [--saves 1000] [--runs 5]

Scenario A's master is a fresh process that saves N new rows flat out; its rate is compared with
the plain model's save loop. This runs that loop, N creates in a fresh process each time, in
steps that add one part of replication at a time:

1. ``plain``: ``PlainItem`` (no cqrs_celery), the baseline;
2. ``replication off``: ``QuietItem``, the replicated model with ``CQRS_PRODUCE = False``: its two
   revision columns and its save, no outbox event;
3. ``outbox row``: ``Item`` with ``publisher = 'relay'`` and nobody publishing, so the save pays
   only for its revision and its outbox event;
4. ``publisher thread``: ``Item`` as configured by default, a replica queue declared that nothing
   consumes;
5. ``thread + worker``: as 4, with the replica's ``celery worker -c 1`` applying the rows, as in A;
6. ``publisher process`` and 7. ``process + worker``: as 4 and 5, with the publisher as a process
   of its own (``publisher = 'relay'`` and ``cqrs_outbox relay --follow``) instead of the thread.

For each it prints the loop's rate (median and min–max of ``--runs`` runs, the steps alternating
within each run) and its share of the plain loop; the CPU time per save of the saving thread and
of the publisher thread (from ``/proc/self/task``); the messages the publisher thread sent and
their median rows (each message costs the publisher, the broker and the replica a fixed part
besides its rows); and the machine's CPU time per save while the
loop ran, by who spent it (the database server's processes, the broker's, the replica worker's,
and what was left idle; from ``/proc``); and the median save's wall time with the time spent in
slow saves (over ``SLOW``, 2 ms: a save that waited for a core, the interpreter or a lock, not
for its own work). The figures split A's gap to the plain loop into the
model's columns, the outbox event, the publisher thread and the replica's work on the same cores.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS = ('plain', 'replication off', 'outbox row', 'publisher thread', 'thread + worker', 'publisher process',
         'process + worker')
#: Processes whose CPU time is reported: by the name the kernel gives them (``/proc/<pid>/stat``), the
#: worker by its command line (``python -m celery …`` and its pool's children).
#: Steps whose master publishes nothing itself (``publisher = 'relay'``).
RELAY_STEPS = ('outbox row', 'publisher process', 'process + worker')
#: A save that took longer than this (seconds) counts as slow: it waited for something (a core, the
#: interpreter, a lock) besides its own work, which takes a few hundred microseconds.
SLOW = 0.002
SERVERS = {'database': ('postgres',), 'broker': ('beam.smp', 'redis-server'), 'worker': ()}


def machine_cpu() -> tuple[dict[int, tuple[str, float]], float]:
    """CPU seconds so far of every process with a name in ``SERVERS`` (by pid), and the machine's idle seconds."""
    tick = os.sysconf('SC_CLK_TCK')
    processes = {}
    for pid in (int(p) for p in os.listdir('/proc') if p.isdigit()):
        try:
            with open(f'/proc/{pid}/stat') as stat:
                text = stat.read()
        except OSError:
            continue
        name = text[text.index('(') + 1:text.rindex(')')]
        kind = next((k for k, names in SERVERS.items() if any(name.startswith(n) for n in names)), None)
        if kind is None and _runs_celery(pid):
            kind = 'worker'
        if kind is not None:
            fields = text.rsplit(')', 1)[1].split()
            processes[pid] = (kind, (int(fields[11]) + int(fields[12])) / tick)
    with open('/proc/stat') as stat:
        idle = int(stat.readline().split()[4]) / tick
    return processes, idle


def _runs_celery(pid: int) -> bool:
    """True for a ``celery … worker`` process (the replica's worker and its pool's children)."""
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as cmdline:
            args = cmdline.read().split(b'\0')
    except OSError:
        return False
    return b'celery' in args and b'worker' in args


def machine_spent(before: tuple[dict[int, tuple[str, float]], float], saves: int) -> dict[str, float]:
    """Microseconds a save of CPU time by kind of process, and idle, since ``before``."""
    (old, idle), (new, idle_now) = before, machine_cpu()
    spent = {kind: 0.0 for kind in SERVERS}
    for pid, (kind, seconds) in new.items():
        spent[kind] += seconds - old.get(pid, (kind, 0.0))[1]
    spent['idle'] = idle_now - idle
    return {kind: seconds / saves * 1e6 for kind, seconds in spent.items()}


def child(saves: int, start: int, kind: str) -> None:
    """One loop, inside a bench project's environment: prints its rate and CPU split as JSON."""
    project = Path(os.environ['BENCH_PROJECT']).resolve()
    sys.path[:0] = [str(project), str(HERE / 'projects')]
    import threading

    import django

    django.setup()
    from bench_master.models import Item, PlainItem, QuietItem
    from django.db import connection
    from shapes import row

    from cqrs_celery.master import publisher
    from cqrs_celery.signals import envelopes_published

    messages: list[int] = []  # rows per message the publisher sent
    envelopes_published.connect(lambda sender, pks, **kwargs: messages.append(len(pks)), weak=False)

    def cpu(thread_id: int | None) -> float:
        try:
            with open(f'/proc/self/task/{thread_id}/stat') as stat:
                fields = stat.read().rsplit(')', 1)[1].split()
        except (OSError, TypeError):
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')

    def threads() -> tuple[float, float]:
        publishers = [p.native_id for p in list(publisher._publishers.values())]
        return cpu(threading.main_thread().native_id), sum(cpu(t) for t in publishers)

    model = {'plain': PlainItem, 'quiet': QuietItem, 'item': Item}[kind]
    collected = [0.0, 0, 0.0]  # ms in collections, full collections, when the current one began

    def collecting(phase: str, info: dict) -> None:
        if phase == 'start':
            collected[2] = time.perf_counter()
            return
        collected[0] += (time.perf_counter() - collected[2]) * 1e3
        collected[1] += info.get('generation') == 2

    gc.callbacks.append(collecting)
    connection.ensure_connection()  # as driver.py's loops: the saves are timed, not the connection
    main_before, pub_before = threads()
    machine_before = machine_cpu()
    durations = []
    began = time.perf_counter()
    for i in range(saves):
        before = time.perf_counter()
        model(**row(start + i)).save()
        durations.append(time.perf_counter() - before)
    took = time.perf_counter() - began
    gc.callbacks.remove(collecting)
    machine = machine_spent(machine_before, saves)  # while the loop ran (the worker's part of A)
    publisher.wait_idle(60)  # the publisher thread's CPU for these saves, all of it
    main_after, pub_after = threads()
    print(json.dumps({'rate': saves / took, 'main_us': (main_after - main_before) / saves * 1e6,
                      'publisher_us': (pub_after - pub_before) / saves * 1e6, 'messages': len(messages),
                      'rows_per_message': statistics.median(messages) if messages else 0, **machine,
                      'save_us': statistics.median(durations) * 1e6,
                      'slow_ms': sum(d for d in durations if d > SLOW) * 1e3,
                      'gc_ms': collected[0], 'full_collections': collected[1]}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--broker', choices=['amqp', 'redis'], default='amqp')
    parser.add_argument('--db', choices=['postgres', 'sqlite'], default='postgres')
    parser.add_argument('--saves', type=int, default=1000)
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--steps', default=','.join(STEPS),
                        help='comma-separated loops to run (plain is always run: it is the baseline)')
    parser.add_argument('--child', choices=['plain', 'quiet', 'item'], help=argparse.SUPPRESS)
    parser.add_argument('--start', type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = ['plain', *(step for step in STEPS if step != 'plain' and step in args.steps.split(','))]
    unknown = set(args.steps.split(',')) - set(STEPS)
    if unknown:
        parser.error(f'unknown steps: {", ".join(sorted(unknown))} (known: {", ".join(STEPS)})')
    if args.child:
        child(args.saves, args.start, args.child)
        return 0

    sys.path.insert(0, str(HERE))
    from benchlib.processes import Worker, stop_background
    from benchlib.scenarios import cqrs_celery_section
    from benchlib.services import wait_for

    section, queue, master, replica = cqrs_celery_section(args.broker, args.db)
    relay_master, _ = section.services(queue, publisher='relay')
    worker = Worker(replica, 1)
    results: dict[str, list[dict]] = {step: [] for step in steps}
    offset = 0

    def loop(service, kind: str) -> dict:
        nonlocal offset
        offset += args.saves
        output = service.run([sys.executable, str(Path(__file__).resolve()), '--child', kind, '--saves',
                              str(args.saves), '--start', str(offset)], timeout=300)
        return json.loads(output.strip().splitlines()[-1])

    try:
        for run in range(args.runs):
            order = steps if run % 2 == 0 else steps[::-1]
            for step in order:
                section.empty()
                section.broker.purge(queue)
                follower = None
                if step in ('publisher process', 'process + worker'):
                    follower = relay_master.manage_in_background('cqrs_outbox', 'relay', '--follow')
                if step in ('thread + worker', 'process + worker'):
                    worker.start()
                    # warm: the worker has applied a row before the timed loop starts
                    master.driver('create', '2', '--start', '90000000')
                    wait_for(section.replica_db.applied, lambda applied: applied >= 2, 90)
                    section.empty()
                try:
                    service = relay_master if step in RELAY_STEPS else master
                    kind = {'plain': 'plain', 'replication off': 'quiet'}.get(step, 'item')
                    results[step].append(loop(service, kind))
                    if step in ('thread + worker', 'process + worker'):
                        wait_for(section.replica_db.applied, lambda applied: applied >= args.saves, 60)
                finally:
                    worker.stop()
                    if follower is not None:
                        stop_background(follower)
            print(f'run {run + 1}/{args.runs}: ' + ', '.join(
                f'{step} {results[step][-1]["rate"]:.0f}/s' for step in steps), flush=True)
    finally:
        worker.stop()
        section.clean(queue)
        section.clean_exchanges()
        section.drop()

    def median(step: str, key: str) -> float:
        return statistics.median(r[key] for r in results[step])

    plain = median('plain', 'rate')
    print(f'\n{args.broker} + {args.db}, {args.saves} creates a loop, {args.runs} runs: median (min–max)\n')
    print('| loop | saves/s | share of plain | wall µs a save | CPU µs a save: saving thread / publisher thread '
          '| CPU µs a save: database / broker / worker / idle | messages sent (median rows) '
          f'| median save µs | ms in saves over {SLOW * 1e3:.0f} ms | ms in garbage collections (full ones) |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for step in steps:
        rates = [r['rate'] for r in results[step]]
        publishing = step not in ('plain', 'replication off')
        in_thread = publishing and step not in RELAY_STEPS
        cpu = f'{median(step, "main_us"):.0f} / ' + (f'{median(step, "publisher_us"):.0f}' if in_thread else '–')
        machine = ' / '.join(f'{median(step, kind):.0f}' for kind in (*SERVERS, 'idle'))
        print(f'| {step} | {statistics.median(rates):.0f} ({min(rates):.0f}–{max(rates):.0f}) '
              f'| {statistics.median(rates) / plain * 100:.0f} % | {1e6 / statistics.median(rates):.0f} | {cpu} '
              f'| {machine} | ' + (f'{median(step, "messages"):.0f} ({median(step, "rows_per_message"):.0f})'
                                    if in_thread else '–')
              + f' | {median(step, "save_us"):.0f} | {median(step, "slow_ms"):.1f} '
              f'| {median(step, "gc_ms"):.1f} ({median(step, "full_collections"):g}) |')
    print('\nidle: of the machine\'s cores (2 cores give twice the wall time); worker: counted while the loop ran.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
