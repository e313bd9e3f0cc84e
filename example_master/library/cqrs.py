"""Metadata sent with every change: which tenant, and who made the change.

``CQRS['master']['meta_function']`` points here. "Who" is whatever the current context says:
the admin user for changes made through the web (see ``middleware.py``), or a name given with
``changed_by('…')`` in commands, scripts and tasks.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.conf import settings

_changed_by: ContextVar[str] = ContextVar('library_changed_by', default='system')


@contextmanager
def changed_by(who: str) -> Iterator[None]:
    """Changes made inside the block are sent to replicas as made by ``who``."""
    token = _changed_by.set(who)
    try:
        yield
    finally:
        _changed_by.reset(token)


def change_meta(instance: Any, **kwargs: Any) -> dict[str, Any]:
    """The ``meta`` of every event: tenant, who changed the row, and which model it is."""
    return {
        'tenant': settings.LIBRARY_TENANT,
        'changed_by': _changed_by.get(),
        'model': instance._meta.model_name,
    }
