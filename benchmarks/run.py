"""cqrs_celery side by side with django-cqrs 3.1.0, plus ceilings measured in the same run.

    .venv/bin/python benchmarks/run.py            # everything: about 35 minutes on 2 cores
    .venv/bin/python benchmarks/run.py --quick    # smoke test: a few minutes

django-cqrs runs from its own virtual environment, .bench/venv-djcqrs, which this command creates
on first use; cqrs_celery runs from the interpreter that runs this command. Needs PostgreSQL,
RabbitMQ and Redis on 127.0.0.1 (as the broker tests do). Writes benchmarks/results/latest.md and
latest.json. What each scenario measures: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import report
from benchlib.processes import LIBRARIES, LOGS, compile_sources, ensure_djcqrs_venv
from benchlib.scenarios import (
    Recorder,
    Section,
    run_broker_ceiling,
    run_cost,
    run_db_ceiling,
    run_memory,
    run_replication,
)
from benchlib.services import ROOT, Broker

SCENARIOS = ['A', 'B', 'C', 'D', 'E', 'F', 'G']
STARTED = time.monotonic()


def log(message: str) -> None:
    elapsed = time.monotonic() - STARTED
    print(f'[{int(elapsed // 60):02d}:{int(elapsed % 60):02d}] {message}', flush=True)


def comma_list(choices: list[str]):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(',') if v.strip()]
        wrong = [v for v in values if v not in choices]
        if wrong:
            raise argparse.ArgumentTypeError(f'unknown {", ".join(wrong)} (choose from {", ".join(choices)})')
        return values
    return parse


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true',
                        help='smoke test: N=200, 1 run, PostgreSQL, c=2, G to 3k events (flags below still apply)')
    parser.add_argument('--only', type=comma_list(SCENARIOS), help='scenarios, e.g. A,B (default: all)')
    parser.add_argument('--broker', type=comma_list(['amqp', 'redis']), help='amqp,redis (default: both)')
    parser.add_argument('--db', type=comma_list(['postgres', 'sqlite']), help='postgres,sqlite (default: both)')
    parser.add_argument('-c', '--concurrency', type=comma_list(['1', '2']),
                        help='worker processes: 1,2 (default: both)')
    parser.add_argument('--runs', type=int, help='runs per figure (default 3)')
    parser.add_argument('--n', type=int, help='rows per step of A, B, C, D, E (default 1000)')
    parser.add_argument('--sync-rows', type=int,
                        help='rows in the master table for C, topped up with unpublished rows (default 10000; '
                             'never fewer than the N rows A and B made)')
    parser.add_argument('--latency-rows', type=int, help='saves at 100/s for the latency of A (default 500)')
    parser.add_argument('--cost-saves', type=int, help='saves per variant in F (default 500)')
    parser.add_argument('--memory', help='G checkpoints in events applied, e.g. 10000,100000 (default)')
    parser.add_argument('--memory-on', default='amqp/postgres/2',
                        help='broker/db/c of the section G runs in (default amqp/postgres/2; "all": every one)')
    parser.add_argument('--shape', choices=['item', 'narrow', 'wide'], default='item',
                        help='the bench row: item (8 columns, default), narrow (4) or wide (19, JSON and a 2 KB text)')
    parser.add_argument('--tracked', action='store_true',
                        help='the master model names CQRS_TRACKED_FIELDS (every event carries previous_data)')
    parser.add_argument('--meta', action='store_true',
                        help="the master names CQRS['master']['meta_function'] (every event carries metadata; "
                             'cqrs_celery writes its outbox events from Python instead of by trigger)')
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results' / 'latest',
                        help='writes OUT.md and OUT.json (default benchmarks/results/latest)')
    args = parser.parse_args()
    # Every process of the run (drivers, workers, manage.py) inherits the shape: projects/shapes.py.
    os.environ['BENCH_SHAPE'] = args.shape
    os.environ['BENCH_TRACKED'] = '1' if args.tracked else '0'
    os.environ['BENCH_META'] = '1' if args.meta else '0'
    quick = args.quick
    args.only = set(args.only or SCENARIOS)
    args.broker = args.broker or ['amqp', 'redis']
    args.db = args.db or (['postgres'] if quick else ['postgres', 'sqlite'])
    args.concurrency = [int(c) for c in (args.concurrency or (['2'] if quick else ['1', '2']))]
    args.runs = args.runs or (1 if quick else 3)
    args.n = args.n or (200 if quick else 1000)
    args.sync_rows = args.sync_rows if args.sync_rows is not None else (0 if quick else 10000)
    args.latency_rows = args.latency_rows if args.latency_rows is not None else (100 if quick else 500)
    args.cost_saves = args.cost_saves or (100 if quick else 500)
    args.memory = sorted(int(v) for v in (args.memory or ('1000,3000' if quick else '10000,100000')).split(','))
    return args


def memory_here(args: argparse.Namespace, broker: str, db: str, concurrency: int) -> bool:
    if 'G' not in args.only:
        return False
    if args.memory_on == 'all':
        return True
    want_broker, want_db, want_c = (args.memory_on.split('/') + ['', '', ''])[:3]
    if want_broker in args.broker and want_db in args.db and int(want_c or 0) in args.concurrency:
        return (broker, db, str(concurrency)) == (want_broker, want_db, want_c)
    # The chosen section is not part of this run: measure G in the first one that is.
    return (broker, db, concurrency) == (args.broker[0], args.db[0], args.concurrency[-1])


def git_state() -> str:
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--', 'cqrs_celery'], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown commit'
    return f'{commit}{" with uncommitted changes in cqrs_celery/" if dirty else ""}'


def main() -> int:
    args = parse_args()
    started = datetime.datetime.now().astimezone()
    LOGS.mkdir(parents=True, exist_ok=True)
    ensure_djcqrs_venv(log)
    compile_sources()
    log(f'scenarios {",".join(sorted(args.only))}; brokers {",".join(args.broker)}; databases {",".join(args.db)}; '
        f'c={",".join(map(str, args.concurrency))}; {args.runs} run(s); N={args.n}')
    records: list[dict] = []
    for broker_kind in args.broker:
        broker = Broker(broker_kind)
        sizes: list[int] = []
        for db in args.db:
            sections = [Section(library, broker, db) for library in LIBRARIES]
            for section in sections:
                log(f'{broker_kind}/{db}: preparing {section.library} databases')
                section.prepare()
            rec = Recorder({'broker': broker_kind, 'db': db}, log)
            if 'F' in args.only:
                for run in range(1, args.runs + 1):
                    log(f'{broker_kind}/{db}: F master cost per save, run {run}/{args.runs}')
                    for section in sections:
                        run_cost(section, rec, args.cost_saves)
            for concurrency in args.concurrency:
                for run in range(1, args.runs + 1):
                    if args.only & {'A', 'B', 'C', 'D', 'E'}:
                        log(f'{broker_kind}/{db} c={concurrency}: run {run}/{args.runs}')
                        # The two libraries alternate within each run, so drift hits both alike.
                        for section in (sections if run % 2 else sections[::-1]):
                            run_replication(section, rec, concurrency, args.n, args.latency_rows, args.only,
                                            args.sync_rows)
                if memory_here(args, broker_kind, db, concurrency):
                    log(f'{broker_kind}/{db} c={concurrency}: G worker memory at {args.memory} messages')
                    for section in sections:
                        run_memory(section, rec, concurrency, args.memory)
            if db not in {r['db'] for r in records if r['broker'] is None}:
                db_rec = Recorder({'broker': None, 'db': db}, log)
                log(f'{db}: replica database ceiling')
                for _ in range(args.runs):
                    run_db_ceiling(sections[0], db_rec, max(args.n, 1000))
                records += db_rec.records
            records += rec.records
            sizes += [r['value'] for r in rec.records if r['metric'] == 'message size' and r['value']]
            for section in sections:
                section.clean_exchanges()
                section.drop()
        broker_rec = Recorder({'broker': broker_kind, 'db': None}, log)
        size = int(max(sizes)) if sizes else 1000
        log(f'{broker_kind}: raw kombu ceiling, {size} B messages')
        for _ in range(args.runs):
            run_broker_ceiling(broker, broker_rec, max(args.n, 1000) * 5, size)
        records += broker_rec.records
        meta = {
            'command': 'python benchmarks/run.py ' + shlex.join(sys.argv[1:]),
            'started': started.isoformat(' ', 'seconds'),
            'duration_min': (time.monotonic() - STARTED) / 60, 'git': git_state(), 'n': args.n, 'runs': args.runs,
            'shape': args.shape + (', tracked fields' if args.tracked else '')
            + (', meta_function' if args.meta else ''),
            'machine': f'{os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}',
        }
        md, js = report.write(records, meta, args.out)  # after each broker, so a stopped run keeps its figures
    log(f'wrote {md} and {js}')
    failures = [r for r in records if r['value'] is None]
    if failures:
        log(f'{len(failures)} figure(s) failed or timed out: see the ⚠ cells')
    return 0


if __name__ == '__main__':
    sys.exit(main())
