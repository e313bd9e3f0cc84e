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


@functools.lru_cache(maxsize=256)
def _accepted(function: Callable[..., Any]) -> frozenset[str] | None:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: give it everything
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


@functools.lru_cache(maxsize=256)
def _parameters(function: Callable[..., Any]) -> frozenset[str]:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def name_of(function: Any) -> str:
    return f'{getattr(function, "__module__", "?")}.{getattr(function, "__qualname__", function)}'
