"""Fixtures of the broker tests: a broker per parameter, the master's Celery app, replica services."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from kombu import pools
from django.conf import settings as django_settings
from django.test import override_settings

from cqrs_celery import topology
from cqrs_celery.producer import set_sender
from cqrs_celery.registry import MasterRegistry
from tests.broker import harness

REPLICA_DATABASES = ['default', 'replica_a', 'replica_b']


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if 'tests/broker/' in str(item.fspath):
            item.add_marker(pytest.mark.broker)
            item.add_marker(pytest.mark.django_db(transaction=True, databases=REPLICA_DATABASES))


@pytest.fixture(params=['amqp', 'redis'])
def broker_url(request: pytest.FixtureRequest) -> str:
    harness.require('PostgreSQL', *harness.POSTGRES)
    if django_settings.DATABASE_KIND != 'postgres':
        message = 'broker tests need the PostgreSQL databases (CQRS_TEST_DATABASE=postgres)'
        if harness.services_required():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return harness.require_broker(request.param)


class Services:
    """The replica services and queues one test started; all cleaned up afterwards."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self.workers: list[harness.ReplicaWorker] = []
        self.queues: list[str] = []

    def queue(self, prefix: str) -> str:
        name = harness.unique_queue(prefix)
        self.queues.append(name)
        return name

    def worker(self, queue: str, database: str, concurrency: int = 2) -> harness.ReplicaWorker:
        worker = harness.ReplicaWorker(self.broker_url, queue, database, concurrency)
        self.workers.append(worker)
        return worker

    def declare_topology(self, queue: str, database: str) -> str:
        """``manage.py cqrs_topology --declare`` run as that replica service."""
        return harness.manage(harness.service_env(self.broker_url, queue, database), 'cqrs_topology', '--declare')

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        exchanges = [topology.exchange_name(cqrs_id) for cqrs_id in MasterRegistry.ids()]
        exchanges.append(topology.DIRECT_EXCHANGE_NAME)
        harness.clean_broker(self.broker_url, self.queues, exchanges)


@pytest.fixture
def master_app(broker_url: str) -> Iterator[Celery]:
    """The master's Celery app on the parametrized broker, installed through ``CQRS['app']``."""
    app = Celery('cqrs_test_master', broker=broker_url, set_as_current=False)
    app.conf.update(task_ignore_result=True, broker_connection_timeout=5)
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
