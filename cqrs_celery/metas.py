"""django-cqrs's registration calls, for models that cannot take the mixin as their first base.

``MasterMeta.register(Model)`` makes a model that has ``RawMasterMixin`` among its bases (an MPTT
model, a diamond, a proxy…) publish its saves and deletes like a ``MasterMixin`` model;
``ReplicaMeta.register(Model)`` registers a replica model the same way. Both return the model, so
they also work as class decorators. Calling them for a model that is registered already is harmless.
"""

from __future__ import annotations

from typing import Any, TypeVar

from django.apps import apps

from cqrs_celery.exceptions import ConfigurationError

ModelT = TypeVar('ModelT')


class MasterMeta:
    """``MasterMeta.register(Model)``: publish ``Model`` as a master model."""

    @staticmethod
    def register(model: ModelT) -> ModelT:
        from cqrs_celery.master import mixins, signals

        if not (isinstance(model, type) and issubclass(model, mixins.RawMasterMixin)):
            raise ConfigurationError(
                f'MasterMeta.register({getattr(model, "__qualname__", model)!r}): the model must inherit '
                'RawMasterMixin (or MasterMixin) from cqrs_celery.mixins.'
            )
        mixins.prepare(model)
        model._cqrs_auto_publish = True
        if apps.ready:  # otherwise AppConfig.ready() connects every registered master model
            signals.connect_model(model)
        return model


class ReplicaMeta:
    """``ReplicaMeta.register(Model)``: apply messages for ``Model``'s CQRS_ID to it."""

    @staticmethod
    def register(model: ModelT) -> ModelT:
        from cqrs_celery.replica import mixins

        prepare: Any = mixins._prepare_replica
        prepare(model)
        return model


__all__ = ['MasterMeta', 'ReplicaMeta']
