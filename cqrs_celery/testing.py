"""Helpers for users' tests: apply every publish in-process, or capture envelopes instead.

``apply_in_process()`` runs the real code paths minus the broker: the envelope is encoded to JSON,
decoded and applied to this process's replica models. ``capture_envelopes()`` records envelopes
so a test can assert on what would be published. Both are also pytest fixtures
(``cqrs_apply_in_process``, ``cqrs_captured``): import them into your ``conftest.py``.

Publishing happens after commit, so use transactional tests (``django_db(transaction=True)``,
``TransactionTestCase``) or Django's ``captureOnCommitCallbacks(execute=True)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import ujson

from cqrs_celery.conf import get_settings
from cqrs_celery.envelope import Envelope, decode
from cqrs_celery.producer import set_sender
from cqrs_celery.registry import ReplicaRegistry
from cqrs_celery.replica.apply import Result, apply

try:
    import pytest
except ImportError:  # pragma: no cover - pytest is optional for users
    pytest = None  # type: ignore[assignment]


@contextmanager
def apply_in_process(queue: str | None = None, *, only_local: bool = False) -> Iterator[list[Result]]:
    """Apply every envelope published inside the block at once, in this process.

    An exception raised while applying (a replica model's error, an unknown CQRS_ID) does not stop
    the save that published it, as on a real replica; the first one is raised again when the block
    exits, so the test fails where it should.

    Args:
        queue: the replica queue this process plays (``CQRS['queue']`` by default); directed
            syncs for other queues are ignored, as a real replica would.
        only_local: apply only CQRS_IDs that have a replica model in this process; the others
            are skipped instead of failing with ``UnknownCQRSIdError``.

    Yields:
        The list of apply results, appended to as envelopes are published.
    """
    results: list[Result] = []
    errors: list[Exception] = []

    def deliver(envelope: Envelope, route_to: str | None = None, countdown: float | None = None) -> None:
        if only_local and envelope.cqrs_id not in ReplicaRegistry:
            return
        try:
            # strict JSON, as a replica queue accepts it (no NaN or infinity)
            wire = ujson.loads(ujson.dumps(envelope.to_wire(), allow_nan=False))
            results.append(apply(decode(wire), route_to or queue or get_settings().queue))
        except Exception as exc:
            errors.append(exc)

    previous = set_sender(deliver)
    try:
        yield results
    finally:
        set_sender(previous)
    if errors:
        raise errors[0]


@contextmanager
def capture_envelopes() -> Iterator[list[Envelope]]:
    """Record every envelope published inside the block instead of sending it."""
    captured: list[Envelope] = []
    previous = set_sender(captured.append)
    try:
        yield captured
    finally:
        set_sender(previous)


if pytest is not None:

    @pytest.fixture
    def cqrs_apply_in_process() -> Iterator[list[Result]]:
        """Fixture form of :func:`apply_in_process`."""
        with apply_in_process() as results:
            yield results

    @pytest.fixture
    def cqrs_captured() -> Iterator[list[Envelope]]:
        """Fixture form of :func:`capture_envelopes`."""
        with capture_envelopes() as captured:
            yield captured
