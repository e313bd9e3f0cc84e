"""Where cqrs_celery's commit → visible latency goes, step by step (scenario A's latency, traced).

    .venv/bin/python benchmarks/latency_stages.py [--broker amqp] [--db postgres] [-c 1] [--rows 500] [--rate 100]
        [--flood 1000] [--worst 8] [--gc-freeze]

Runs the bench project's master at a steady rate of single-row creates and one replica worker, both
with probes installed by this file (signal receivers and wrappers around library functions; the
library has no tracing code of its own). Every row is stamped at each step it passes:

    commit        the master's transaction committed (an on_commit callback, as scenario A stamps it)
    drain         the publisher thread started the outbox drain that took the row
    send          that drain started sending the row's message, then (sent) had the broker's confirm
    received      the worker's main process received the message (Celery's ``task_received``)
    started       the pool process started the task (``task_prerun``)
    taken         the task finished taking queued messages along (``gather.take``)
    visible       the replica table's trigger stamped the row (the figure scenario A reports)
    applied       the group committed and the row's outcome was reported (``envelope_applied``)

and the script prints, for each step, the time since the previous one (p50 / p90 / p99, ms). Rows
a task took along from the queue have no ``received``/``started`` of their own; they are counted
apart. The probes cost a few microseconds per stamp, so the totals run slightly above scenario A's.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS = ['commit', 'drain', 'send', 'sent', 'received', 'started', 'taken', 'visible', 'applied']


# --- probes, run inside the master's and the worker's processes --------------------------------


class Stamps:
    """Stamps of this process, one JSON line each, in ``$LATENCY_STAMPS/<pid>.jsonl``."""

    def __init__(self) -> None:
        self.file = None

    def __call__(self, step: str, pks: object) -> None:
        if self.file is None:
            # kept open for the process's life (line-buffered): a stamp is one write, not an open
            self.file = open(Path(os.environ['LATENCY_STAMPS']) / f'{os.getpid()}.jsonl', 'a', buffering=1)  # noqa: SIM115
        self.file.write(json.dumps([step, pks, time.time()]) + '\n')


stamp = Stamps()


def _pks(raw: object) -> list:
    from cqrs_celery.envelope import decode_message

    try:
        return [getattr(row, 'instance_pk', None) for row in decode_message(raw)]
    except Exception:
        return []


def _trace_gc(role: str) -> None:
    """Stamp each garbage collection of this process (``role``: master or worker) that took 2 ms or more."""
    import gc

    began = [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == 'start':
            began[0] = time.perf_counter()
        elif time.perf_counter() - began[0] >= 0.002:
            stamp('gc', [role, info.get('generation'), (time.perf_counter() - began[0]) * 1000])

    gc.callbacks.append(callback)


def master_probe(argv: list[str]) -> None:
    """The bench driver (``driver.py create … --commit-times``) with the publisher's steps stamped."""
    import runpy

    import django

    django.setup()
    from cqrs_celery.master import outbox, publisher

    drain, send_batch = outbox.drain, outbox.send_batch

    def traced_drain(*args, **kwargs):
        stamp('drain', None)
        return drain(*args, **kwargs)

    def traced_send(envelopes, *args, **kwargs):
        pks = [e.instance_pk for e in envelopes]
        stamp('send', pks)
        result = send_batch(envelopes, *args, **kwargs)
        stamp('sent', pks)
        return result

    outbox.drain, outbox.send_batch = traced_drain, traced_send
    _trace_gc('master')
    if os.environ.get('LATENCY_GC_FREEZE'):
        import gc

        gc.freeze()  # what is alive after start-up is never scanned again
    sys.argv = [str(HERE / 'driver.py'), *argv]
    try:
        runpy.run_path(str(HERE / 'driver.py'), run_name='__main__')
    finally:
        publisher.shutdown()


def worker_probe(argv: list[str]) -> None:
    """``celery worker`` of the bench replica with the worker's steps stamped."""
    from benchproj.celery import app
    from celery import signals

    @signals.task_received.connect(weak=False)
    def received(request=None, **kwargs):
        stamp('received', _pks(request.args[0]) if request.args else [])

    @signals.task_prerun.connect(weak=False)
    def started(args=None, **kwargs):
        stamp('started', _pks(args[0]) if args else [])

    @signals.worker_process_init.connect(weak=False)
    def pool_process(**kwargs):
        _trace_gc('worker')
        from cqrs_celery import signals as cqrs_signals
        from cqrs_celery.replica import gather

        take = gather.take

        def traced_take(request, *args, **kwargs):
            taken = take(request, *args, **kwargs)
            own = _pks(request.args[0]) if request.args else []
            stamp('taken', own + [getattr(row, 'instance_pk', None) for item in taken for row in item.rows])
            return taken

        gather.take = traced_take
        cqrs_signals.envelope_applied.connect(lambda sender=None, pk=None, **kw: stamp('applied', [pk]), weak=False)

    app.worker_main(argv)


# --- the run -----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(HERE))
    from benchlib.processes import CQRS_CELERY
    from benchlib.scenarios import Section
    from benchlib.services import Broker

    stamps = Path(tempfile.mkdtemp(prefix='latency-stages-'))
    section = Section(CQRS_CELERY, Broker(args.broker), args.db)
    section.prepare()
    queue = section.new_queue()
    master, replica = section.services(queue)
    section.declare(replica)
    probe = [sys.executable, str(Path(__file__).resolve())]
    extra = {'LATENCY_STAMPS': str(stamps), 'LATENCY_GC_FREEZE': '1' if args.gc_freeze else ''}
    worker = subprocess.Popen([*probe, '--probe', 'worker', 'worker', '-Q', queue, '-c', str(args.concurrency),
                               '-n', f'{queue}@%h', '--loglevel=WARNING', '--without-mingle', '--without-gossip',
                               '--without-heartbeat'], env={**replica.env, **extra}, cwd=CQRS_CELERY.project,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        master.driver('create', str(2 * args.concurrency), '--start', '90000000')
        _, ok = section.wait_rows(2 * args.concurrency, deadline=90)
        if not ok:
            raise SystemExit('the worker did not start')
        section.empty()  # (the warm-up's stamps stay: they are older than the first commit, and dropped)
        if args.flood:
            # as in run.py, where the latency is measured right after scenario A's flat-out creates
            master.driver('create', str(args.flood), '--start', '80000000')
            _, ok = section.wait_rows(args.flood)
            if not ok:
                raise SystemExit('the flood was not applied in time')
        done = subprocess.run([*probe, '--probe', 'master', 'create', str(args.rows), '--rate', str(args.rate),
                               '--commit-times'], env={**master.env, **extra}, cwd=CQRS_CELERY.project,
                              capture_output=True, text=True, timeout=120 + args.rows / args.rate)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        commits = json.loads(done.stdout.strip().splitlines()[-1])['commits']
        section.wait_rows(args.flood + args.rows, deadline=60)
        seen = section.replica_db.seen_by_pk()
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
        section.clean(queue)
    lines = [json.loads(line) for path in stamps.iterdir() for line in path.read_text().splitlines()]
    shutil.rmtree(stamps, ignore_errors=True)
    return {'commits': {int(pk): t for pk, t in commits.items()}, 'seen': seen, 'stamps': lines}


def analyse(result: dict, worst: int = 0) -> list[str]:
    commits, seen = result['commits'], result['seen']
    since = min(commits.values()) - 0.05
    rows: dict[int, dict[str, float]] = {pk: {'commit': t} for pk, t in commits.items()}
    drains, collections = [], []
    for step, pks, moment in result['stamps']:
        if moment < since:
            continue
        if step == 'gc':
            collections.append(pks)
            continue
        if step == 'drain':
            drains.append(moment)
            continue
        for pk in pks or ():
            if isinstance(pk, int) and pk in rows:
                rows[pk].setdefault(step, moment)
    drains.sort()
    for pk, row in rows.items():
        if 'send' in row:
            index = bisect.bisect_right(drains, row['send']) - 1
            if index >= 0:
                row['drain'] = drains[index]
        if seen.get(pk) is not None:
            row['visible'] = seen[pk]
    own = [row for row in rows.values() if 'started' in row]
    lines = ['| step | p50 | p90 | p99 | rows |', '|---|---|---|---|---|']
    previous = 'commit'
    for step in STEPS[1:]:
        gaps = [(row[step] - row[previous]) * 1000 for row in own if step in row and previous in row]
        if gaps:
            lines.append(f'| {previous} → {step} | {_pct(gaps, .5):.2f} | {_pct(gaps, .9):.2f} '
                         f'| {_pct(gaps, .99):.2f} | {len(gaps)} |')
            previous = step
    total = [(row['visible'] - row['commit']) * 1000 for row in rows.values() if 'visible' in row]
    if not total:
        return ['no row became visible']
    along = [(row['visible'] - row['commit']) * 1000 for row in rows.values()
             if 'visible' in row and 'started' not in row]
    lines.append(f'| commit → visible, every row | {_pct(total, .5):.2f} | {_pct(total, .9):.2f} '
                 f'| {_pct(total, .99):.2f} | {len(total)} |')
    if along:
        lines.append(f'| commit → visible, rows taken along by another task | {_pct(along, .5):.2f} '
                     f'| {_pct(along, .9):.2f} | {_pct(along, .99):.2f} | {len(along)} |')
    messages = {row['send'] for row in rows.values() if 'send' in row}
    lines.append('')
    lines.append(f'{len(rows)} rows in {len(messages)} messages; {len(own)} rows started their own task.')
    if collections:
        lines.append(f'{len(collections)} garbage collections of 2 ms or more (process, generation, ms): '
                     + ', '.join(f'{role} {g} {ms:.1f}' for role, g, ms in collections[:12]))
    order = {pk: index for index, pk in enumerate(sorted(rows, key=lambda pk: rows[pk]['commit']), 1)}
    slowest = sorted((pk for pk, row in rows.items() if 'visible' in row),
                     key=lambda pk: rows[pk]['visible'] - rows[pk]['commit'])
    for pk in reversed(slowest[-worst:] if worst else []):
        row = rows[pk]
        steps = [step for step in STEPS if step in row]
        gaps = (f'{step} +{(row[step] - row[before]) * 1000:.1f}'
                for before, step in zip(steps, steps[1:], strict=False))
        lines.append(f'  {(row["visible"] - row["commit"]) * 1000:7.1f} ms, save {order[pk]} of {len(rows)}: '
                     + ', '.join(gaps))
    return lines


def _pct(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else float('nan')


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == '--probe':
        role, rest = sys.argv[2], sys.argv[3:]
        sys.path[:0] = [str(HERE), str(HERE / 'projects')]
        (master_probe if role == 'master' else worker_probe)(rest)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--broker', choices=['amqp', 'redis'], default='amqp')
    parser.add_argument('--db', choices=['postgres', 'sqlite'], default='postgres')
    parser.add_argument('-c', '--concurrency', type=int, default=1, help='worker processes (default 1)')
    parser.add_argument('--rows', type=int, default=500, help='saves (default 500)')
    parser.add_argument('--rate', type=float, default=100, help='saves per second (default 100)')
    parser.add_argument('--flood', type=int, default=0,
                        help='first N creates flat out, applied before the timed saves (as run.py does)')
    parser.add_argument('--worst', type=int, default=0, help='also list the steps of the N slowest rows')
    parser.add_argument('--gc-freeze', action='store_true',
                        help="the master calls gc.freeze() after start-up (see docs/performance.md)")
    args = parser.parse_args()
    print(f'latency_stages: {args.rows} creates at {args.rate:g}/s, {args.broker} + {args.db}, '
          f'-c {args.concurrency} (ms since the previous step)\n')
    print('\n'.join(analyse(run(args), args.worst)))


if __name__ == '__main__':
    main()
