"""Calling user hooks (``meta_function``, ``correlation_function``, ``get_cqrs_meta``) with the keywords they take."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any


def call_accepting(function: Callable[..., Any], **kwargs: Any) -> Any:
    """Call ``function`` with those of ``kwargs`` its signature takes (all of them if it takes ``**kwargs``)."""
    accepted = _accepted(function)
    return function(**(kwargs if accepted is None else {k: v for k, v in kwargs.items() if k in accepted}))


def wants_keyword(function: Callable[..., Any], name: str) -> bool:
    """True when ``function`` would receive keyword ``name`` from :func:`call_accepting`."""
    accepted = _accepted(function)
    return accepted is None or name in accepted


def names_parameter(function: Callable[..., Any], name: str) -> bool:
    """True when ``function``'s signature names ``name`` (``**kwargs`` alone does not count)."""
    return name in _parameters(function)


def _accepted(function: Callable[..., Any]) -> frozenset[str] | None:
    """The keywords ``function`` takes by name; ``None`` when it takes ``**kwargs`` (or has no signature)."""
    names = _names(function)
    return None if names is None or names[1] else names[0]


def _parameters(function: Callable[..., Any]) -> frozenset[str]:
    names = _names(function)
    return frozenset() if names is None else names[0]


def _names(function: Callable[..., Any]) -> tuple[frozenset[str], bool] | None:
    """The parameter names ``function`` takes by keyword, and whether it takes ``**kwargs`` too.

    Read from the signature once per function: a bound method (``instance.get_cqrs_meta``, a new
    object at every save) is looked up by its function, so a save does not pay for
    ``inspect.signature`` again. ``None``: no signature to read (a builtin).
    """
    target, bound = function, False
    underlying = getattr(function, '__func__', None)
    if underlying is not None and getattr(function, '__self__', None) is not None:
        target, bound = underlying, True
    try:
        return _signature_names(target, bound)
    except TypeError:  # an unhashable callable: read its signature every time
        return _signature_names.__wrapped__(target, bound)


@functools.lru_cache(maxsize=256)
def _signature_names(function: Callable[..., Any], bound: bool) -> tuple[frozenset[str], bool] | None:
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return None
    if bound and parameters and parameters[0].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                       inspect.Parameter.POSITIONAL_OR_KEYWORD):
        parameters = parameters[1:]  # the instance (or class) the method is bound to
    named = frozenset(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return named, any(p.kind is p.VAR_KEYWORD for p in parameters)


def name_of(function: Any) -> str:
    return f'{getattr(function, "__module__", "?")}.{getattr(function, "__qualname__", function)}'
