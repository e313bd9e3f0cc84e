"""Fixtures of the broker tests: a broker per parameter, the master's Celery app, replica services."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from django.conf import settings as django_settings
from django.test import override_settings
from kombu import pools

from cqrs_celery import topology
from cqrs_celery.master import publisher
from cqrs_celery.producer import set_sender
from cqrs_celery.registry import MasterRegistry
from tests.broker import harness
from tests.settings import FILESYSTEM_TRANSPORT, filesystem_broker_options

REPLICA_DATABASES = ['default', 'replica_a', 'replica_b']


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if 'tests/broker/' in str(item.fspath):
            item.add_marker(pytest.mark.broker)
            item.add_marker(pytest.mark.django_db(transaction=True, databases=REPLICA_DATABASES))
            # (under pytest-xdist they all run in one worker: tests/conftest.py's scheduler groups them)


def require_postgres() -> None:
    harness.require('PostgreSQL', *harness.POSTGRES)
    if django_settings.DATABASE_KIND != 'postgres':
        message = 'broker tests need the PostgreSQL databases (CQRS_TEST_DATABASE=postgres)'
        if harness.services_required():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(params=['amqp', 'redis'])
def broker_url(request: pytest.FixtureRequest) -> str:
    require_postgres()
    return harness.require_broker(request.param)


class Services:
    """The replica services and queues one test started; all cleaned up afterwards."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self.kind = broker_url.split(':')[0]
        self.workers: list[harness.CeleryProcess] = []
        self.queues: list[str] = []

    def queue(self, prefix: str) -> str:
        """A replica queue name unique to this test (its dead-letter queue is cleaned up too)."""
        name = harness.unique_queue(prefix)
        self.queues += [name, topology.dead_letter_queue_name(name)]
        return name

    def worker(self, queue: str, database: str, concurrency: int = 2, node: str = '',
               **env: str) -> harness.ReplicaWorker:
        worker = harness.ReplicaWorker(self.broker_url, queue, database, concurrency, node, **env)
        self.workers.append(worker)
        return worker

    def master(self) -> str:
        """Start the master's worker and beat (the outbox relay); returns the master queue."""
        queue = harness.unique_queue('master')
        self.queues.append(queue)
        database = database_name('default')
        started = [harness.MasterWorker(self.broker_url, database, queue),
                   harness.Beat(self.broker_url, database, queue)]
        self.workers += started
        harness.start_all(*started)
        return queue

    def follower(self, name: str) -> harness.Follower:
        """``cqrs_outbox relay --follow`` on the master's database, started."""
        follower = harness.Follower(self.broker_url, database_name('default'), harness.unique_queue(name))
        self.workers.append(follower)
        follower.start()
        return follower

    def master_env(self, master_queue: str = '') -> dict[str, str]:
        return harness.master_env(self.broker_url, database_name('default'), master_queue)

    def replica_env(self, queue: str, database: str, **env: str) -> dict[str, str]:
        return {**harness.service_env(self.broker_url, queue, database), **env}

    def declare_topology(self, queue: str, database: str) -> str:
        """``manage.py cqrs_topology --declare`` run as that replica service."""
        return harness.manage(harness.service_env(self.broker_url, queue, database), 'cqrs_topology', '--declare')

    def close(self) -> None:
        publisher.wait_idle(10)  # this test's events go out before its services stop
        harness.stop_all(self.workers)
        if self.kind == 'amqp' and not harness._port_open('127.0.0.1', 5672):
            harness.start_broker('amqp')
        if self.kind == 'redis' and not harness._port_open('127.0.0.1', 6379):
            harness.start_broker('redis')
        exchanges = [topology.exchange_name(cqrs_id) for cqrs_id in MasterRegistry.ids()]
        exchanges.append(topology.DIRECT_EXCHANGE_NAME)
        harness.clean_broker(self.broker_url, self.queues, exchanges)


@pytest.fixture
def master_app(broker_url: str) -> Iterator[Celery]:
    """The master's Celery app on the parametrized broker, installed through ``CQRS['app']``."""
    app = Celery('cqrs_test_master', broker=broker_url, set_as_current=False)
    app.conf.update(task_ignore_result=True, broker_connection_timeout=5)
    if broker_url.startswith('filesystem'):
        app.conf.broker_transport = FILESYSTEM_TRANSPORT
        app.conf.broker_transport_options = filesystem_broker_options(harness.filesystem_dir())
    cqrs = dict(django_settings.CQRS, app=app)
    with override_settings(CQRS=cqrs):
        yield app
    # Celery's pools are kombu's global ones, keyed by URL: close and forget them together.
    pools.reset()


@pytest.fixture
def services(broker_url: str, master_app: Celery) -> Iterator[Services]:
    services = Services(broker_url)
    previous = set_sender(None)
    try:
        yield services
    finally:
        set_sender(previous)
        services.close()


def database_name(alias: str) -> str:
    return str(django_settings.DATABASES[alias]['NAME'])


@pytest.fixture
def replica_db() -> Any:
    return database_name
