"""Shared fixtures: the in-process loopback for model API tests (tier i)."""

import pytest

from cqrs_celery.testing import cqrs_apply_in_process, cqrs_captured  # noqa: F401  (fixtures)


@pytest.fixture
def loopback(cqrs_apply_in_process):  # noqa: F811
    """Every publish is applied at once to this process's replica models (default database)."""
    return cqrs_apply_in_process


@pytest.fixture(scope='session', autouse=True)
def _publishers_stop_before_the_test_databases_go(django_db_setup):
    """The master's publisher threads hold database connections: stop them before teardown drops the databases."""
    from cqrs_celery.master import publisher

    yield
    publisher.shutdown()
