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
from cqrs_celery.replica.apply import Result, apply

try:
    import pytest
except ImportError:  # pragma: no cover - pytest is optional for users
    pytest = None  # type: ignore[assignment]


@contextmanager
def apply_in_process(queue: str | None = None) -> Iterator[list[Result]]:
    """Apply every envelope published inside the block at once, in this process.

    Args:
        queue: the replica queue this process plays (``CQRS['queue']`` by default); directed
            syncs for other queues are ignored, as a real replica would.

    Yields:
        The list of apply results, appended to as envelopes are published.
    """
    results: list[Result] = []

    def deliver(envelope: Envelope) -> None:
        wire = ujson.loads(ujson.dumps(envelope.to_wire()))
        results.append(apply(decode(wire), queue or get_settings().queue))

    previous = set_sender(deliver)
    try:
        yield results
    finally:
        set_sender(previous)


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
