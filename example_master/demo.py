#!/usr/bin/env python3
"""The cqrs_celery demo: a master and a replica service replicating on this machine, live.

    python3 example_master/demo.py                  # kombu's filesystem broker: nothing to install
    python3 example_master/demo.py --broker amqp://guest:guest@localhost:5672//
    python3 example_master/demo.py --broker redis://localhost:6379/0

Run from a checkout, with Python 3.10 or newer (Linux or macOS). The first run creates ``.venv``
and installs the project into it (``pip install -e .``), then runs itself again with that Python.

What it does, all of it on SQLite files in ``.demo/`` (cleared at the start):

1. ``manage.py migrate`` for the master (``example_master``) and the replica (``example_replica``);
2. ``manage.py cqrs_topology --declare`` for the replica, so its queue exists before anything is
   published;
3. starts the replica worker, ``celery -A example_replica worker -Q my_replica -c 2``;
4. runs ``manage.py demo_changes`` on the master: creates, updates and deletes authors, books and
   stock, step by step;
5. shows both databases side by side while the changes arrive (a live table on a terminal, a
   snapshot per step otherwise) and the lines the replica's stock watcher writes;
6. stops the worker (also on Ctrl-C) and exits 0 only if the replica ended equal to the master.

Only the standard library is used before the re-run inside ``.venv``.
"""

from __future__ import annotations  # the version check below must run on older Pythons too

import argparse
import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / '.venv'
MASTER_DIR = ROOT / 'example_master'
REPLICA_DIR = ROOT / 'example_replica'
DATA = ROOT / '.demo'
QUEUE = 'my_replica'
MASTER_DB = DATA / 'master.sqlite3'
REPLICA_DB = DATA / f'{QUEUE}.sqlite3'
STOCK_LOG = DATA / f'stock_{QUEUE}.log'
WORKER_LOG = DATA / 'logs' / 'replica_worker.log'
WORKER_COMMAND = ['celery', '-A', 'example_replica', 'worker', '-Q', QUEUE, '-c', '2']

#: Installed with the project: brokers other than the filesystem one need them too.
EXTRA_REQUIREMENTS = ['kombu[redis]']

#: Variables of the caller's shell that would point the examples somewhere else.
FOREIGN_VARIABLES = {'DJANGO_SETTINGS_MODULE', 'DATABASE_URL', 'REPLICA_QUEUE', 'STOCK_LOG_FILE',
                     'EXAMPLE_DATA_DIR', 'CELERY_BROKER_URL', 'PYTHONPATH', 'PYTHONHOME'}


# --- 1. a virtual environment with the project in it (standard library only) -------------------

def venv_python() -> Path:
    return VENV / 'bin' / 'python'


def installed(python: Path) -> bool:
    """Whether ``python`` imports this checkout's cqrs_celery and the libraries it needs."""
    probe = 'import celery, django, kombu.transport.redis, cqrs_celery; print(cqrs_celery.__file__)'
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_VARIABLES}
    result = subprocess.run([str(python), '-c', probe], cwd=str(VENV), env=env, capture_output=True, text=True)
    return result.returncode == 0 and Path(result.stdout.strip()).resolve().is_relative_to(ROOT)


def ensure_venv() -> None:
    """Create ``.venv`` and install the project if needed, then run this script again inside it."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if os.environ.get('CQRS_DEMO_IN_VENV'):
        sys.exit(f'demo: {venv_python()} does not run inside {VENV}; delete .venv and try again.')
    python = venv_python()
    try:
        if not python.exists():
            print(f'creating {VENV} (python3 -m venv) ...', flush=True)
            subprocess.run([sys.executable, '-m', 'venv', str(VENV)], check=True)
        if not installed(python):
            print('installing cqrs_celery and its dependencies into .venv (pip install -e .) ...', flush=True)
            # kombu's Redis transport also needs what its "redis" extra brings (packaging).
            subprocess.run([str(python), '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check',
                            '-e', str(ROOT), *EXTRA_REQUIREMENTS], check=True)
    except subprocess.CalledProcessError as exc:
        sys.exit(f'demo: setting up {VENV} failed ({exc}). On Debian/Ubuntu, `apt install python3-venv` '
                 'may be missing; delete .venv and try again.')
    os.environ['CQRS_DEMO_IN_VENV'] = '1'
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


# --- 2. processes the demo starts, and stops whatever happens ----------------------------------

class Processes:
    """Every process the demo started, each in its own session so that Ctrl-C reaches only us."""

    def __init__(self) -> None:
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, command: list[str], cwd: Path, env: dict[str, str], **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(command, cwd=str(cwd), env=env, start_new_session=True, **kwargs)
        self.running.append((name, process))
        return process

    def stop_all(self) -> None:
        """SIGTERM to each process (a worker's warm shutdown stops its pool itself), SIGKILL after 20 s."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
        try:
            for _, process in self.running:
                if process.poll() is None:
                    process.terminate()
            deadline = time.monotonic() + 20
            for _, process in self.running:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(max(0.1, deadline - time.monotonic()))
                _signal_group(process, signal.SIGKILL)  # whatever is left of it, children included
                process.wait()
            self.running.clear()
        finally:
            signal.signal(signal.SIGINT, previous)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def service_env(broker: str, settings: str, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_VARIABLES}
    env.update({'DJANGO_SETTINGS_MODULE': settings, 'CELERY_BROKER_URL': broker, 'EXAMPLE_DATA_DIR': str(DATA),
                'PYTHONUNBUFFERED': '1', **values})
    return env


def master_env(broker: str) -> dict[str, str]:
    return service_env(broker, 'example_master.settings', DATABASE_URL=f'sqlite:///{MASTER_DB}')


def replica_env(broker: str) -> dict[str, str]:
    return service_env(broker, 'example_replica.settings', REPLICA_QUEUE=QUEUE,
                       DATABASE_URL=f'sqlite:///{REPLICA_DB}', STOCK_LOG_FILE=str(STOCK_LOG))


def run_step(text: str, command: list[str], cwd: Path, env: dict[str, str], show_output: bool = False) -> str:
    print(f'  {text}', flush=True)
    result = subprocess.run(command, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise DemoFailed(f'{" ".join(command)} failed (in {cwd.name}/):\n{result.stdout}{result.stderr}')
    if show_output:
        for line in result.stdout.splitlines():
            print(f'      {line}')
    return result.stdout


class DemoFailed(Exception):
    pass


# --- 3. what the two databases hold -------------------------------------------------------------

def rows(path: Path, sql: str) -> list[tuple]:
    connection = sqlite3.connect(f'file:{path}?mode=ro', uri=True, timeout=2)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def money(value: object) -> str:
    return '' if value is None else f'{float(value):.2f}'  # type: ignore[arg-type]


class Snapshot:
    """Both sides at one moment, compared row by row."""

    def __init__(self) -> None:
        self.master_authors = {r[0]: r for r in rows(
            MASTER_DB, 'SELECT id, name, country, cqrs_revision, cqrs_updated FROM library_author')}
        self.master_books = {r[0]: r[:3] + (money(r[3]),) + r[4:] for r in rows(
            MASTER_DB, 'SELECT id, title, author_id, price, published, cqrs_revision, cqrs_updated FROM library_book')}
        self.master_stock = rows(MASTER_DB, 'SELECT id, cqrs_revision FROM library_stock')
        self.outbox = rows(MASTER_DB, 'SELECT count(*) FROM cqrs_celery_outboxevent')[0][0]
        self.replica_authors = {r[0]: r for r in rows(
            REPLICA_DB, 'SELECT id, name, country, cqrs_revision, cqrs_updated, changed_by, tenant '
                        'FROM catalog_author')}
        self.replica_books = {r[0]: r[:3] + (money(r[3]),) + r[4:] for r in rows(
            REPLICA_DB, 'SELECT id, name, author_id, price, published, cqrs_revision, cqrs_updated '
                        'FROM catalog_bookcopy')}
        self.stock_log = STOCK_LOG.read_text(encoding='utf-8').splitlines() if STOCK_LOG.exists() else []

    @staticmethod
    def status(master: tuple | None, replica: tuple | None, width: int, revision: int) -> str:
        if replica is None:
            return 'missing'
        if master is None:
            return 'deleting'
        if replica[revision] < master[revision]:
            return 'behind'
        return 'in step' if replica[:width] == master[:width] else 'differs'

    def author_status(self, pk: int) -> str:
        return self.status(self.master_authors.get(pk), self.replica_authors.get(pk), 5, 3)

    def book_status(self, pk: int) -> str:
        return self.status(self.master_books.get(pk), self.replica_books.get(pk), 7, 5)

    def stock_logged(self) -> bool:
        """Every stock row's latest revision has its line in the stock watcher's log."""
        seen = {tuple(map(int, m.groups())) for m in map(STOCK_LINE.search, self.stock_log) if m}
        return all((pk, revision) in seen for pk, revision in self.master_stock)

    def equal(self) -> bool:
        authors = self.master_authors.keys() | self.replica_authors.keys()
        books = self.master_books.keys() | self.replica_books.keys()
        return (all(self.author_status(pk) == 'in step' for pk in authors)
                and all(self.book_status(pk) == 'in step' for pk in books) and self.stock_logged())

    def differences(self) -> list[str]:
        found = [f'author {pk}: {self.author_status(pk)}'
                 for pk in sorted(self.master_authors.keys() | self.replica_authors.keys())
                 if self.author_status(pk) != 'in step']
        found += [f'book {pk}: {self.book_status(pk)}'
                  for pk in sorted(self.master_books.keys() | self.replica_books.keys())
                  if self.book_status(pk) != 'in step']
        if not self.stock_logged():
            found.append('stock watcher: a stock change has no line yet')
        return found


STOCK_LINE = re.compile(r'\(stock (\d+), rev (\d+),')


# --- 4. drawing it ------------------------------------------------------------------------------

class Screen:
    def __init__(self, live: bool) -> None:
        self.live = live
        self.color = live and not os.environ.get('NO_COLOR')
        utf = (sys.stdout.encoding or '').lower().replace('-', '').startswith('utf8')
        self.bar, self.arrow, self.ellipsis = ('│', '─▶', '…') if utf else ('|', '->', '~')

    def paint(self, text: str, color: str) -> str:
        codes = {'green': '32', 'yellow': '33', 'red': '31', 'bold': '1', 'dim': '2'}
        return f'\x1b[{codes[color]}m{text}\x1b[0m' if self.color else text

    def status(self, text: str) -> str:
        color = {'in step': 'green', 'differs': 'red'}.get(text, 'yellow')
        return self.paint(text, color)

    def cut(self, value: object, width: int) -> str:
        text = '' if value is None else str(value)
        return text if len(text) <= width else text[:width - 1] + self.ellipsis

    def frame(self, snap: Snapshot, broker: str, master_line: str) -> str:
        columns = shutil.get_terminal_size((100, 40)).columns if self.live else 100
        name = max(12, min(32, (columns - 50) // 2))
        bar = self.bar
        lines = [
            self.paint('cqrs_celery demo', 'bold') + f'   master example_master {self.arrow} {broker} {self.arrow} '
            f'replica example_replica (queue {QUEUE})',
            f'master: {master_line}',
            '',
            self.paint('AUTHORS', 'bold') + '  master library.Author'.ljust(name + 8)
            + '   replica catalog.Author (CQRS_META: who changed it)',
            f'  {"id":>3}  {"name":<{name}} {"rev":>3} {bar} {"name":<{name}} {"rev":>3}  {"changed_by":<12} status',
        ]
        for pk in sorted(snap.master_authors.keys() | snap.replica_authors.keys()):
            m, r = snap.master_authors.get(pk), snap.replica_authors.get(pk)
            lines.append(f'  {pk:>3}  {self.cut(m and m[1], name):<{name}} {m[3] if m else "":>3} {bar} '
                         f'{self.cut(r and r[1], name):<{name}} {r[3] if r else "":>3}  '
                         f'{self.cut(r and r[5], 12):<12} {self.status(snap.author_status(pk))}')
        lines += [
            '',
            self.paint('BOOKS', 'bold') + '    master library.Book'.ljust(name + 15)
            + f'   replica catalog.BookCopy (CQRS_MAPPING title {self.arrow} name)',
            f'  {"id":>3}  {"title":<{name}} {"price":>6} {"rev":>3} {bar} '
            f'{"name":<{name}} {"price":>6} {"rev":>3}  status',
        ]
        for pk in sorted(snap.master_books.keys() | snap.replica_books.keys()):
            m, r = snap.master_books.get(pk), snap.replica_books.get(pk)
            lines.append(f'  {pk:>3}  {self.cut(m and m[1], name):<{name}} {m[3] if m else "":>6} '
                         f'{m[5] if m else "":>3} {bar} {self.cut(r and r[1], name):<{name}} '
                         f'{r[3] if r else "":>6} {r[5] if r else "":>3}  {self.status(snap.book_status(pk))}')
        lines += ['', self.paint('STOCK', 'bold') + '    replica catalog.StockWatch (RawReplicaMixin, no table) writes '
                  f'{STOCK_LOG.relative_to(ROOT)}:']
        lines += [f'  {self.cut(line, columns - 3)}' for line in snap.stock_log[-8:]] or ['  (nothing yet)']
        in_step_authors = sum(snap.author_status(pk) == 'in step' for pk in snap.master_authors)
        in_step_books = sum(snap.book_status(pk) == 'in step' for pk in snap.master_books)
        lines += ['', f'replica in step: {in_step_authors}/{len(snap.master_authors)} authors, '
                      f'{in_step_books}/{len(snap.master_books)} books   outbox: {snap.outbox} events pending'
                      + ('   (Ctrl-C stops the demo)' if self.live else '')]
        return '\n'.join(lines)

    def show(self, text: str) -> None:
        if self.live:
            sys.stdout.write('\x1b[H\x1b[J' + text + '\n')
        else:
            sys.stdout.write(text + '\n\n')
        sys.stdout.flush()


def shown(url: str) -> str:
    """The broker URL without its password."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f':{parts.password}@', ':***@')
        return urlunsplit(parts._replace(netloc=netloc))
    return url


# --- 5. the demo --------------------------------------------------------------------------------

def wait_for_worker(worker: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise DemoFailed(f'the replica worker exited with {worker.returncode}:\n{tail(WORKER_LOG)}')
        if WORKER_LOG.exists() and ' ready.' in WORKER_LOG.read_text(errors='replace'):
            return
        time.sleep(0.2)
    raise DemoFailed(f'the replica worker was not ready after {timeout:.0f} s:\n{tail(WORKER_LOG)}')


def tail(path: Path, count: int = 30) -> str:
    return '\n'.join(path.read_text(errors='replace').splitlines()[-count:]) if path.exists() else '(no log)'


def follow(stream, lines: list[str]) -> None:
    for line in stream:
        lines.append(line.rstrip('\n'))


#: The signals that asked the demo to stop (Ctrl-C, SIGTERM, SIGHUP), as they came.
INTERRUPTED: list[int] = []


def run(broker: str, pause: float, live: bool, processes: Processes) -> bool:
    screen = Screen(live)
    python = sys.executable
    celery = str(Path(python).with_name('celery'))
    print(f'cqrs_celery demo: master example_master {screen.arrow} {shown(broker)} {screen.arrow} '
          f'replica example_replica (queue {QUEUE})')
    if DATA.exists():
        shutil.rmtree(DATA)
    (DATA / 'logs').mkdir(parents=True)
    print(f'  starting from scratch in {DATA.relative_to(ROOT)}/ (SQLite databases, broker folders, logs)')

    m_env, r_env = master_env(broker), replica_env(broker)
    migrations = [subprocess.Popen([python, 'manage.py', 'migrate', '--noinput', '-v', '0'], cwd=str(d), env=e,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                  for d, e in ((MASTER_DIR, m_env), (REPLICA_DIR, r_env))]
    print('  python manage.py migrate   (example_master and example_replica, at once)', flush=True)
    for process in migrations:
        output = process.communicate(timeout=300)[0]
        if process.returncode != 0:
            raise DemoFailed(f'migrate failed:\n{output}')
    run_step('python manage.py cqrs_topology --declare   (example_replica: its queue exists from now on)',
             [python, 'manage.py', 'cqrs_topology', '--declare'], REPLICA_DIR, r_env, show_output=True)
    if not broker.startswith('filesystem'):
        run_step(f'celery -A example_replica purge -f -Q {QUEUE}   (messages left by an earlier run)',
                 [celery, '-A', 'example_replica', 'purge', '-f', '-Q', QUEUE], REPLICA_DIR, r_env)

    print(f'  {" ".join(WORKER_COMMAND)}   (in example_replica/, log: {WORKER_LOG.relative_to(ROOT)})', flush=True)
    with WORKER_LOG.open('ab') as log:
        worker = processes.start('replica worker', [celery, *WORKER_COMMAND[1:], '--loglevel=INFO'],
                                 REPLICA_DIR, r_env, stdout=log, stderr=subprocess.STDOUT)
    wait_for_worker(worker)

    print(f'  python manage.py demo_changes --pause {pause:g}   (example_master: the changes, step by step)',
          flush=True)
    time.sleep(1.5 if live else 0)
    master_output: list[str] = []
    master = processes.start('master', [python, 'manage.py', 'demo_changes', '--pause', str(pause)], MASTER_DIR,
                             m_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reader = threading.Thread(target=follow, args=(master.stdout, master_output), daemon=True)
    reader.start()

    shown_broker = shown(broker)
    printed_steps = 0  # plain output: one snapshot per step, taken when the master starts it
    caught_up_by: float | None = None
    snap = None
    while True:
        steps = [line for line in master_output if line.startswith('step ')]
        finished = master.poll() is not None
        if finished and master.returncode != 0:
            reader.join(5)
            raise DemoFailed('the master changes failed:\n' + '\n'.join(master_output[-30:]))
        if worker.poll() is not None:
            raise DemoFailed(f'the replica worker stopped:\n{tail(WORKER_LOG)}')
        try:
            snap = Snapshot()
        except sqlite3.OperationalError:  # a writer holds a lock this instant: next time
            if INTERRUPTED:  # (Ctrl-C during the read can surface as this error)
                raise KeyboardInterrupt from None
            time.sleep(0.1)
            continue
        if live:
            outbox = [line for line in master_output if line.startswith('outbox: ')]
            line = f'all steps done; {outbox[-1] if outbox else ""}' if finished else (steps or ['starting'])[-1]
            screen.show(screen.frame(snap, shown_broker, line))
        elif printed_steps < len(steps):
            screen.show(screen.frame(snap, shown_broker, steps[printed_steps]))
            printed_steps += 1
        if finished and (live or printed_steps == len(steps)):
            reader.join(5)
            caught_up_by = caught_up_by or time.monotonic() + 60
            if snap.equal() or time.monotonic() > caught_up_by:
                break
        time.sleep(0.25 if live else 0.1)

    if not live:
        screen.show(screen.frame(snap, shown_broker, 'all steps done'))
    print('stopping the replica worker (warm shutdown) ...', flush=True)
    processes.stop_all()
    if snap.equal():
        print(screen.paint('The replica is equal to the master', 'green')
              + f': {len(snap.master_authors)} authors and {len(snap.master_books)} books, field for field and '
              f'revision for revision, and the stock watcher logged {len(snap.stock_log)} changes.')
        print_next_steps()
        return True
    print(screen.paint('The replica did not catch up with the master within 60 s', 'red') + ':\n  '
          + '\n  '.join(snap.differences()) + f'\nReplica worker log ({WORKER_LOG}):\n{tail(WORKER_LOG)}')
    return False


def print_next_steps() -> None:
    print(f"""
Everything the demo started is stopped; the databases stay in {DATA.relative_to(ROOT)}/ until the next run.
Run the services yourself (each in its own terminal, from the repository root):
  .venv/bin/python example_master/manage.py createsuperuser
  .venv/bin/python example_master/manage.py runserver       # edit at http://127.0.0.1:8000/admin/
  cd example_replica && ../.venv/bin/celery -A {' '.join(WORKER_COMMAND[2:])}
All of it on RabbitMQ, Redis and PostgreSQL, with a second replica service: docker compose up --build""")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--broker', default=os.environ.get('CELERY_BROKER_URL') or 'filesystem://',
                        help='broker URL: amqp://…, redis://… (default: $CELERY_BROKER_URL, else '
                             "kombu's filesystem broker in .demo/broker)")
    parser.add_argument('--pause', type=float, default=None,
                        help='seconds between the master\'s steps (default: 1.5 on a terminal, 0.3 otherwise)')
    args = parser.parse_args()
    if sys.version_info < (3, 10):  # noqa: UP036  (any python3 may run this file)
        sys.exit('demo: cqrs_celery needs Python 3.10 or newer')
    ensure_venv()

    live = sys.stdout.isatty()
    pause = args.pause if args.pause is not None else (1.5 if live else 0.3)
    processes = Processes()

    def terminate(signum: int, frame: object) -> None:
        INTERRUPTED.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, terminate)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)  # the terminal went away
    try:
        return 0 if run(args.broker, pause, live, processes) else 1
    except KeyboardInterrupt:
        print('\ninterrupted: stopping everything the demo started ...', flush=True)
        processes.stop_all()
        print('stopped.')
        return 130
    except DemoFailed as exc:
        print(f'\ndemo failed: {exc}', file=sys.stderr)
        return 1
    finally:
        processes.stop_all()


if __name__ == '__main__':
    sys.exit(main())
