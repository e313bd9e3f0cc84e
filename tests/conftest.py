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


@pytest.fixture(autouse=True)
def _publisher_threads_finish_before_the_database_is_flushed():
    """A test that commits outside a capture may leave its publisher thread draining: stop it first.

    A transactional test's teardown truncates every table, which has to wait for a drain; a
    thread left waiting to retry (the test's broker refused or was down) would drain the next
    test's events, and an inline publisher paused by an outage would skip them. This fixture is
    torn down before pytest-django's database teardown.
    """
    from cqrs_celery.master import publisher

    yield
    publisher.stop_busy()
    publisher._inline_paused_until.clear()  # a broker outage in one test must not pause the next


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """With pytest-xdist's ``--dist loadgroup`` (as CI runs): the broker tests one after the other in one worker.

    They stop and restart the local brokers, so no two may run at once; every other test is
    scheduled as ``--dist load`` would, in the other worker meanwhile. (The tests are grouped by
    their path here: pytest-xdist 3.8's ``xdist_group`` mark does not group them under pytest 9.)
    """
    if config.getvalue('dist') != 'loadgroup':
        return None
    from xdist.scheduler import LoadGroupScheduling

    class BrokerTestsInOneWorker(LoadGroupScheduling):
        def _split_scope(self, nodeid):
            return 'broker tests' if nodeid.startswith('tests/broker/') else super()._split_scope(nodeid)

    return BrokerTestsInOneWorker(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Lift the "queries not allowed" guards that a test whose database teardown failed left behind.

    pytest-django skips the test case's class clean-up when its ``_post_teardown`` raises, which
    leaves Django's guards on the databases that test did not ask for; every later test using
    them would then fail too, hiding the one real failure.
    """
    from django.db import connections
    from django.test.testcases import _DatabaseFailure

    for alias in connections:
        connection = connections[alias]
        for name in ('connect', 'temporary_connection', 'cursor', 'chunked_cursor'):
            guard = getattr(connection, name)
            if isinstance(guard, _DatabaseFailure):
                while isinstance(guard, _DatabaseFailure):
                    guard = guard.wrapped
                setattr(connection, name, guard)


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


@pytest.fixture
def registries():
    """Throwaway models register themselves; put both registries back as they were afterwards."""
    from cqrs_celery.registry import MasterRegistry, ReplicaRegistry

    saved = [(r, dict(r._models), {k: list(v) for k, v in r._all.items()}) for r in (MasterRegistry, ReplicaRegistry)]
    yield
    for registry, by_id, every in saved:
        registry._models.clear()
        registry._models.update(by_id)
        registry._all.clear()
        registry._all.update(every)
