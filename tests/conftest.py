"""Shared fixtures: the in-process loopback for model API tests (tier i)."""

import pytest

from cqrs_celery.testing import cqrs_apply_in_process, cqrs_captured  # noqa: F401  (fixtures)


@pytest.fixture
def loopback(cqrs_apply_in_process):  # noqa: F811
    """Every publish is applied at once to this process's replica models (default database)."""
    return cqrs_apply_in_process
