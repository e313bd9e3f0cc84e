"""The correlation id of a change, from ``CQRS['master']['correlation_function']`` (django-cqrs's name)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from cqrs_celery.conf import get_settings


def get_correlation_id(signal_type: Any, cqrs_id: str | None, instance_pk: Any, queue: str | None) -> Any:
    """What ``correlation_function`` gives for this change, or ``None`` without one.

    A function that takes four positional arguments is called as django-cqrs calls it,
    ``function(signal_type, cqrs_id, instance_pk, queue)``; any other is given those of the four, by
    keyword, that its signature names (none for a function without parameters).
    """
    function = get_settings().master.correlation_function
    if function is None:
        return None
    if _takes_four_positional(function):
        return function(signal_type, cqrs_id, instance_pk, queue)
    from cqrs_celery.master.hooks import call_accepting

    return call_accepting(function, signal_type=signal_type, cqrs_id=cqrs_id, instance_pk=instance_pk, queue=queue)


def _takes_four_positional(function: Callable[..., Any]) -> bool:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return False
    try:
        signature.bind(None, None, None, None)
    except TypeError:
        return False
    return True
