"""How the apply path calls a replica model's own code, with django-cqrs's arguments.

A model's ``cqrs_save``/``cqrs_delete`` is called with exactly the keywords django-cqrs passes; the
envelope's dicts are copied first. While it runs, :class:`Applying` lets the library's own
``cqrs_save``/``cqrs_delete`` (reached through an override's ``super()``) apply inside the apply
path's transaction and report back what happened.
"""

from __future__ import annotations

import contextvars
import copy
import dataclasses
from typing import Any

from cqrs_celery.constants import SignalType
from cqrs_celery.envelope import Envelope
from cqrs_celery.exceptions import ApplyError
from cqrs_celery.replica.outcomes import NO_CHANGE, Outcome, Result


@dataclasses.dataclass
class Applying:
    """The envelope being applied while a model's own ``cqrs_save``/``cqrs_delete`` runs.

    The library's ``cqrs_save``/``cqrs_delete`` (what an override's ``super()`` reaches) find it
    here, so they apply inside the apply path's transaction with the envelope's flags, and record
    what happened: the apply path then reports that outcome, or raises the error they logged.
    """

    model: Any
    envelope: Envelope
    using: str
    used: bool = False
    result: Result | None = None
    error: Exception | None = None


_applying: contextvars.ContextVar[Applying | None] = contextvars.ContextVar('cqrs_celery_applying', default=None)


def claim_applying(model: Any) -> Applying | None:
    """The apply in progress for ``model`` if its library method has not run yet (then it has)."""
    state = _applying.get()
    if state is None or state.model is not model or state.used:
        return None
    state.used = True
    return state


def has_no_table(model: Any) -> bool:
    """True for models whose own code does all the work: RawReplicaMixin classes, abstract models
    and models with ``CQRS_NO_DB_OPERATIONS``."""
    meta = getattr(model, '_meta', None)
    return bool(model.CQRS_NO_DB_OPERATIONS or meta is None or meta.abstract)


def overrides(model: Any, name: str) -> bool:
    """True when ``model`` replaces the library's ``cqrs_save``/``cqrs_create``/``cqrs_update``/``cqrs_delete``."""
    from cqrs_celery.replica.mixins import LIBRARY_METHODS  # mixins imports this module

    attribute = getattr(model, name)
    return getattr(attribute, '__func__', attribute) is not LIBRARY_METHODS[name]


def private_copy(envelope: Envelope) -> Envelope:
    """The envelope with its dicts copied, so model code that mutates them cannot change a retry."""
    return envelope.replace(instance_data=copy.deepcopy(envelope.instance_data),
                            previous_data=copy.deepcopy(envelope.previous_data), meta=copy.deepcopy(envelope.meta))


def meta_kwargs(model: Any, envelope: Envelope) -> dict[str, Any]:
    return {'meta': envelope.meta} if model.CQRS_META else {}


def save_kwargs(model: Any, envelope: Envelope) -> dict[str, Any]:
    """Keywords for ``cqrs_save``, exactly as django-cqrs passes them (``sync`` only on a SYNC)."""
    kwargs: dict[str, Any] = {'previous_data': envelope.previous_data, **meta_kwargs(model, envelope)}
    if envelope.signal_type == SignalType.SYNC:
        kwargs['sync'] = True
    return kwargs


def call_model(model: Any, envelope: Envelope, using: str | None = None) -> Result:
    """Call ``model.cqrs_save`` or ``model.cqrs_delete`` for ``envelope`` (already privately copied)."""
    state = Applying(model, envelope, using or 'default')
    token = _applying.set(state if using is not None else None)
    try:
        if envelope.signal_type == SignalType.DELETE:
            done = model.cqrs_delete(envelope.instance_data, **meta_kwargs(model, envelope))
        else:
            done = model.cqrs_save(envelope.instance_data, **save_kwargs(model, envelope))
    finally:
        _applying.reset(token)
    if state.error is not None:
        raise state.error
    if state.result is not None and (done or state.result.outcome in NO_CHANGE):
        return Result(state.result.outcome, done or state.result.instance)
    if not done:
        method = 'cqrs_delete' if envelope.signal_type == SignalType.DELETE else 'cqrs_save'
        raise ApplyError(f'{getattr(model, "__qualname__", model)}.{method} returned {done!r}')
    return Result(Outcome.HANDLED, done)
