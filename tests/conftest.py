"""Shared fixtures: the in-process loopback for model API tests (tier i)."""

import pytest

from cqrs_celery.testing import cqrs_apply_in_process, cqrs_captured  # noqa: F401  (fixtures)


@pytest.fixture
def loopback(cqrs_apply_in_process):  # noqa: F811
    """Every publish is applied at once to this process's replica models (default database)."""
    return cqrs_apply_in_process


@pytest.fixture(scope='session', autouse=True)
def _publishers_stop_before_the_test_databases_go(django_db_setup, django_db_blocker):
    """The master's publisher threads hold database connections: stop them before teardown drops the databases.

    Stopping publishes what is ready, so it needs the database, which pytest-django blocks outside tests.
    """
    from cqrs_celery.master import publisher

    yield
    with django_db_blocker.unblock():
        publisher.shutdown()


@pytest.fixture
def letters(monkeypatch):
    """Dead letters the replica task sends, instead of publishing them."""
    from cqrs_celery.replica import dead_letters

    sent = []
    monkeypatch.setattr(dead_letters, 'send', sent.append)
    return sent


@pytest.fixture
def retries():
    """(envelope, route_to, countdown) of every envelope sent instead of the broker: a replica's retries."""
    from cqrs_celery.producer import set_sender

    sent = []
    previous = set_sender(lambda envelope, route_to=None, countdown=None: sent.append((envelope, route_to, countdown)))
    yield sent
    set_sender(previous)
