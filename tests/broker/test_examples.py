"""The example projects as real services (tier iii): the master (``example_master``: its changes,
its worker and its beat) and two replica services of ``example_replica``, each with its own queue,
PostgreSQL database and ``celery -A example_replica worker -Q <queue> -c 2``, on RabbitMQ and Redis.

They run exactly as documented, from their own folders with their own settings, configured only
through the environment variables docker-compose.yml sets. Isolation from the test project's
broker tests, which use the same exchange names (``cqrs.author``, ``cqrs.book``) and delete them
when they finish: a RabbitMQ virtual host of this module's own, and a Redis database of its own.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from cqrs_celery import topology
from tests.broker import harness

EXAMPLES = harness.ROOT
#: Redis database of these tests (the test project's broker tests flush theirs after each test).
REDIS_URL = os.environ.get('CQRS_EXAMPLES_REDIS_URL', 'redis://127.0.0.1:6379/12')
POSTGRES_DSN = os.environ.get('CQRS_EXAMPLES_POSTGRES', 'postgresql://postgres@127.0.0.1:5432/postgres')
TENANT = 'examples-test'
#: Variables of the pytest process that must not leak into an example service.
FOREIGN = {'DJANGO_SETTINGS_MODULE', 'PYTHONPATH', 'DATABASE_URL', 'CELERY_BROKER_URL', 'REPLICA_QUEUE',
           'STOCK_LOG_FILE', 'EXAMPLE_DATA_DIR', 'LIBRARY_TENANT'}


# --- isolation: a vhost, databases ------------------------------------------------------------

@contextmanager
def amqp_vhost() -> Iterator[str]:
    """A RabbitMQ virtual host of its own (deleted afterwards, with everything in it)."""
    base = harness.require_broker('amqp')
    parts = urlsplit(base)
    if not shutil.which('rabbitmqctl'):
        yield base  # shares the default vhost: only this module's queues are deleted afterwards
        return
    vhost = f'cqrs_ex_{uuid.uuid4().hex[:8]}'
    user = parts.username or 'guest'
    subprocess.run(['rabbitmqctl', 'add_vhost', vhost], check=True, capture_output=True, timeout=120)
    try:
        subprocess.run(['rabbitmqctl', 'set_permissions', '-p', vhost, user, '.*', '.*', '.*'], check=True,
                       capture_output=True, timeout=120)
        yield urlunsplit(parts._replace(path='/' + quote(vhost, safe='')))
    finally:
        subprocess.run(['rabbitmqctl', 'delete_vhost', vhost], capture_output=True, timeout=120)


@contextmanager
def redis_database() -> Iterator[str]:
    parts = urlsplit(REDIS_URL)
    harness.require('redis', parts.hostname or '127.0.0.1', parts.port or 6379)
    harness.clean_broker(REDIS_URL, [], [])  # flushes this database: bindings of an interrupted run
    yield REDIS_URL


@contextmanager
def postgres_databases(*names: str) -> Iterator[None]:
    """Create empty databases for the example services, dropped (connections and all) afterwards."""
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        for name in names:
            connection.execute(sql.SQL('CREATE DATABASE {}').format(sql.Identifier(name)))
    try:
        yield
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
            for name in names:
                connection.execute(sql.SQL('DROP DATABASE IF EXISTS {} WITH (FORCE)').format(sql.Identifier(name)))


def database_url(name: str) -> str:
    return urlunsplit(urlsplit(POSTGRES_DSN)._replace(path=f'/{name}'))


def rows(database: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url(database)) as connection:
        return connection.execute(query).fetchall()


# --- example services as processes ------------------------------------------------------------

class Service:
    """One example service: its project folder and the environment docker-compose.yml would give it."""

    def __init__(self, project: str, name: str, **environment: str) -> None:
        self.project, self.name = project, name
        self.env = {k: v for k, v in os.environ.items() if k not in FOREIGN and not k.startswith('CQRS_TEST_')}
        self.env.update(environment, PYTHONUNBUFFERED='1')
        self.processes: list[subprocess.Popen[bytes]] = []
        self.log_paths: list[Path] = []

    @property
    def folder(self) -> Path:
        return EXAMPLES / self.project

    def manage(self, *args: str, **environment: str) -> str:
        """``python manage.py <args>`` in the project folder; returns its output."""
        result = subprocess.run([sys.executable, 'manage.py', *args], cwd=self.folder,
                                env={**self.env, **environment}, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, \
            f'{self.name}: manage.py {" ".join(args)} failed:\n{result.stdout}{result.stderr}'
        return result.stdout + result.stderr

    def celery(self, *args: str) -> Path:
        """Start ``celery -A <project> <args>`` in the project folder, as the docs say; returns its log."""
        executable = Path(sys.executable).with_name('celery')
        command = [str(executable)] if executable.exists() else [sys.executable, '-m', 'celery']
        harness.LOG_DIR.mkdir(parents=True, exist_ok=True)
        log_path = harness.LOG_DIR / f'{self.name}-{args[0]}.log'
        with log_path.open('wb') as log:
            self.processes.append(subprocess.Popen([*command, '-A', self.project, *args, '--loglevel=INFO'],
                                                   cwd=self.folder, env=self.env, stdout=log,
                                                   stderr=subprocess.STDOUT, start_new_session=True))
        self.log_paths.append(log_path)
        return log_path

    def wait_ready(self) -> None:
        for process, log_path in zip(self.processes, self.log_paths, strict=True):
            marker = b'beat: Starting' if log_path.name.endswith('-beat.log') else b' ready.'

            def ready(process: subprocess.Popen[bytes] = process, log_path: Path = log_path,
                      marker: bytes = marker) -> bool:
                if process.poll() is not None:
                    pytest.fail(f'{log_path.name} exited with {process.returncode}:\n{tail(log_path)}', pytrace=False)
                return marker in log_path.read_bytes()

            harness.wait_until(ready, timeout=90,
                               message=lambda log_path=log_path: f'{log_path.name}\n{tail(log_path)}')

    def terminate(self) -> None:
        """SIGTERM to each Celery main process (it stops its own pool), without waiting."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()

    def wait_stopped(self) -> None:
        """Wait for each process to exit, SIGKILL if it hangs."""
        for process in self.processes:
            with suppress(subprocess.TimeoutExpired):
                process.wait(30)
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # what is left of it, pool included
            process.wait(30)


def tail(path: Path, lines: int = 40) -> str:
    return '\n'.join(path.read_text(errors='replace').splitlines()[-lines:]) if path.exists() else '(no log)'


class Stack:
    """The master and the two replica services of one broker, started as docker-compose.yml does."""

    def __init__(self, broker_url: str, data_dir: Path) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.broker_url = broker_url
        self.queues = [f'my_replica_{suffix}', f'analytics_replica_{suffix}']
        self.master_db = f'cqrs_ex_library_{suffix}'
        self.replica_dbs = dict(zip(self.queues, (f'cqrs_ex_my_replica_{suffix}', f'cqrs_ex_analytics_{suffix}'),
                                    strict=True))
        self.stock_logs = {queue: data_dir / f'stock-{queue}.log' for queue in self.queues}
        common = {'CELERY_BROKER_URL': broker_url, 'EXAMPLE_DATA_DIR': str(data_dir)}
        self.master = Service('example_master', f'master_{suffix}', DATABASE_URL=database_url(self.master_db),
                              LIBRARY_TENANT=TENANT, **common)
        self.replicas = {queue: Service('example_replica', queue, REPLICA_QUEUE=queue,
                                        DATABASE_URL=database_url(self.replica_dbs[queue]),
                                        STOCK_LOG_FILE=str(self.stock_logs[queue]), **common)
                         for queue in self.queues}

    @property
    def services(self) -> list[Service]:
        return [self.master, *self.replicas.values()]

    def start(self) -> None:
        migrations = [subprocess.Popen([sys.executable, 'manage.py', 'migrate', '--noinput', '-v', '0'],
                                       cwd=s.folder, env=s.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                      for s in self.services]
        for process in migrations:
            output = process.communicate(timeout=300)[0].decode(errors='replace')
            assert process.returncode == 0, f'migrate failed:\n{output}'
        for queue, replica in self.replicas.items():
            assert f'declared queue {queue}' in replica.manage('cqrs_topology', '--declare')
            replica.celery('worker', '-Q', queue, '-c', '2', '-n', f'{queue}@%h')
        self.master.celery('worker', '-Q', 'example_master', '-c', '2', '-n', f'{self.master.name}@%h')
        self.master.celery('beat')
        for service in self.services:
            service.wait_ready()

    def stop(self) -> None:
        for service in self.services:  # every service shuts down at once
            service.terminate()
        for service in self.services:
            service.wait_stopped()
        queues = [q for queue in self.queues for q in (queue, topology.dead_letter_queue_name(queue))]
        harness.clean_broker(self.broker_url, [*queues, 'example_master'], ['cqrs.stock'])

    # what the databases hold

    def master_authors(self) -> dict[int, tuple[Any, ...]]:
        return {r[0]: r for r in rows(self.master_db, 'SELECT id, name, country, cqrs_revision, cqrs_updated '
                                                      'FROM library_author')}

    def master_books(self) -> dict[int, tuple[Any, ...]]:
        return {r[0]: r for r in rows(self.master_db, 'SELECT id, title, author_id, price, published, '
                                                      'cqrs_revision, cqrs_updated FROM library_book')}

    def replica_authors(self, queue: str, meta: bool = False) -> dict[int, tuple[Any, ...]]:
        columns = 'id, name, country, cqrs_revision, cqrs_updated' + (', changed_by, tenant' if meta else '')
        return {r[0]: r for r in rows(self.replica_dbs[queue], f'SELECT {columns} FROM catalog_author')}

    def replica_books(self, queue: str) -> dict[int, tuple[Any, ...]]:
        return {r[0]: r for r in rows(self.replica_dbs[queue], 'SELECT id, name, author_id, price, published, '
                                                               'cqrs_revision, cqrs_updated FROM catalog_bookcopy')}

    def outbox(self) -> int:
        return rows(self.master_db, 'SELECT count(*) FROM cqrs_celery_outboxevent')[0][0]

    def in_step(self, queue: str) -> bool:
        return (self.replica_authors(queue) == self.master_authors()
                and self.replica_books(queue) == self.master_books())

    def describe(self, queue: str) -> str:
        return (f'{queue}: authors {self.replica_authors(queue)} vs master {self.master_authors()}; '
                f'books {self.replica_books(queue)} vs master {self.master_books()}\n'
                + '\n'.join(f'--- {path.name}\n{tail(path, 15)}' for path in self.replicas[queue].log_paths))

    def stock_lines(self, queue: str) -> list[str]:
        path = self.stock_logs[queue]
        return path.read_text(encoding='utf-8').splitlines() if path.exists() else []


@pytest.fixture(scope='module', params=['amqp', 'redis'])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    harness.require('PostgreSQL', *harness.POSTGRES)
    with ExitStack() as cleanup:
        broker_url = cleanup.enter_context(amqp_vhost() if request.param == 'amqp' else redis_database())
        stack = Stack(broker_url, tmp_path_factory.mktemp(f'examples_{request.param}'))
        cleanup.enter_context(postgres_databases(stack.master_db, *stack.replica_dbs.values()))
        cleanup.callback(stack.stop)
        stack.start()
        yield stack


# --- the tests ---------------------------------------------------------------------------------

def test_the_master_changes_reach_both_replica_services_field_for_field(stack: Stack) -> None:
    output = stack.master.manage('demo_changes', '--pause', '0')
    assert 'step 6/6' in output and 'outbox: 0 events pending' in output

    for queue in stack.queues:
        harness.wait_until(lambda queue=queue: stack.in_step(queue), timeout=60,
                           message=lambda queue=queue: stack.describe(queue))
    assert len(stack.master_authors()) == 3 and len(stack.master_books()) == 4
    assert stack.outbox() == 0
    for queue in stack.queues:
        assert harness.queue_depth(stack.broker_url, topology.dead_letter_queue_name(queue)) == 0


def test_each_replica_stores_who_changed_an_author_from_the_event_metadata(stack: Stack) -> None:
    for queue in stack.queues:
        authors = {row[1]: row[5:] for row in stack.replica_authors(queue, meta=True).values()}
        assert authors['Octavia Estelle Butler'] == ('admin:alice', TENANT)
        assert authors['Ursula K. Le Guin'] == ('demo', TENANT)


def test_the_mapped_replica_keeps_book_titles_as_names_with_exact_prices(stack: Stack) -> None:
    for queue in stack.queues:
        books = {row[1]: row for row in stack.replica_books(queue).values()}
        assert books['A Wizard of Earthsea (illustrated)'][3] == Decimal('24.00')
        assert books['Dune'][3] == Decimal('16.99')
        assert 'Untitled Draft' not in books


def test_the_raw_replica_of_each_service_writes_old_and_new_stock_from_previous_data(stack: Stack) -> None:
    # The replica sees each published state of a row: changes that waited in the outbox together are
    # published once, with previous_data from before the earliest of them, so 8 → 7 → 6 arrives as
    # one or two steps. Whatever the steps, they chain from the first quantity to the last.
    # A raw replica has no revision check (docs/models.md) and its worker runs two pool processes,
    # so two messages may be written in either order: the lines are read in revision order.
    for queue in stack.queues:
        harness.wait_until(lambda queue=queue: any("'Dune'" in line and '6 (stock 3, rev 2' in line
                                                   for line in stack.stock_lines(queue))
                           and any('removed' in line for line in stack.stock_lines(queue)),
                           message=lambda queue=queue: f'stock lines of {queue}: {stack.stock_lines(queue)}')
        text = '\n'.join(stack.stock_lines(queue))
        dune = sorted((line for line in stack.stock_lines(queue) if "'Dune'" in line),
                      key=lambda line: int(re.findall(r'rev (\d+)', line)[-1]))
        # First seen at 8 (created) or changed from 8; or, when its creation was published together
        # with sales, at a later quantity (a created row's previous quantity is None, as in
        # django-cqrs); the last published step is the final 6; quantities only go down.
        assert re.search(r"is 8 \(stock 3, rev 0|changed from 8 to|is [76] \(stock 3, rev [12]", dune[0]), text
        assert re.search(r"(is|to) 6 \(stock 3, rev 2", dune[-1]), text
        steps = [(int(a), int(b)) for line in dune
                 for a, b in re.findall(r"stock of 'Dune' changed from (\d+) to (\d+)", line)]
        assert all(a > b for a, b in steps), text
        assert all(b == c for (_, b), (c, _) in zip(steps, steps[1:], strict=False)), text
        assert "stock of 'Untitled Draft' removed (stock 5, rev 1, by demo)" in text


def test_a_change_committed_while_the_broker_is_unreachable_is_published_by_the_master_beat_relay(
        stack: Stack) -> None:
    unreachable = 'amqp://guest:guest@127.0.0.1:1//' if stack.broker_url.startswith('amqp') \
        else 'redis://127.0.0.1:1/0'
    output = stack.master.manage('shell', '-c', '\n'.join([
        'from cqrs_celery.master.outbox import pending',
        'from library.cqrs import changed_by',
        'from library.models import Author',
        "with changed_by('offline-script'):",
        "    Author.objects.create(name='Written While Offline')",
        "print('pending', pending())",
    ]), CELERY_BROKER_URL=unreachable)
    assert 'pending 1' in output

    for queue in stack.queues:
        harness.wait_until(
            lambda queue=queue: any(r[1:2] + r[5:] == ('Written While Offline', 'offline-script', TENANT)
                                    for r in stack.replica_authors(queue, meta=True).values()),
            timeout=60, message=lambda queue=queue: stack.describe(queue))
    harness.wait_until(lambda: stack.outbox() == 0, timeout=30, message='the outbox emptied by the relay')
    for queue in stack.queues:
        assert stack.in_step(queue), stack.describe(queue)
