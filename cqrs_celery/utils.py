"""django-cqrs helper names (``dj_cqrs.utils``) that code moving from it imports."""

from __future__ import annotations

import contextlib
from typing import Any


class bulk_relate_cqrs_serialization(contextlib.ContextDecorator):
    """django-cqrs's context manager (and decorator) that serializes rows saved in bulk together.

    cqrs_celery always does that: the rows a transaction changed are read once, per model, with
    ``relate_cqrs_serialization()``, when they are published. So this only keeps code written for
    django-cqrs working; ``cqrs_id`` is accepted and ignored.
    """

    def __init__(self, cqrs_id: str | None = None) -> None:
        self.cqrs_id = cqrs_id

    def __enter__(self) -> bulk_relate_cqrs_serialization:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


__all__ = ['bulk_relate_cqrs_serialization']
