"""Replica model mixins: how a service stores (or otherwise handles) what the master publishes."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Mapping
from typing import Any, ClassVar

from django.db import models
from django.db.models.signals import class_prepared

from cqrs_celery.conf import get_settings
from cqrs_celery.exceptions import ConfigurationError
from cqrs_celery.registry import ReplicaRegistry, require_cqrs_id
from cqrs_celery.replica.managers import ReplicaManager, delete_instance, save_instance


class _ReplicaOptions:
    """Options and retry policy shared by table-backed and raw replicas."""

    #: CQRS_ID of the master model this replicates (None until a subclass sets it).
    CQRS_ID: ClassVar[str | None] = None
    #: Pass the envelope's metadata as ``meta=`` to cqrs_create / cqrs_update / cqrs_delete.
    CQRS_META: ClassVar[bool] = False
    #: Apply SYNCs only when sent to this service's queue; broadcast SYNCs are ignored.
    CQRS_ONLY_DIRECT_SYNCS: ClassVar[bool] = False

    @classmethod
    def should_retry_cqrs(cls, current_retry: int, exception: BaseException | None = None) -> bool:
        """Whether a failed envelope is tried again after ``current_retry`` retries."""
        return current_retry < get_settings().replica.max_retries

    @classmethod
    def get_cqrs_retry_delay(cls, current_retry: int) -> float:
        """Seconds to wait before retry number ``current_retry + 1``.

        ``CQRS_RETRY_DELAY × retry_backoff ** current_retry``, at most ``retry_backoff_max``, and
        with ``retry_jitter`` a random value between half of that and all of it. The exponent is
        capped where the delay reaches the maximum, so any retry count (a million, or no limit at
        all with ``CQRS_MAX_RETRIES = None``) gives a finite delay without overflowing.
        """
        replica = get_settings().replica
        base, backoff, longest = replica.retry_delay, replica.retry_backoff, replica.retry_backoff_max
        if base <= 0 or longest <= base or backoff <= 1:
            delay = min(base, longest)
        else:
            # the first exponent at which the delay reaches the maximum; higher ones change nothing
            cap = math.ceil((math.log(longest) - math.log(base)) / math.log(backoff))
            exponent = min(max(current_retry, 0), cap)
            try:
                delay = min(base * backoff ** exponent, longest)
            except OverflowError:  # only with a vanishing base delay: count in logarithms
                delay = min(math.exp(min(math.log(base) + exponent * math.log(backoff), math.log(longest))), longest)
        return random.uniform(delay / 2, delay) if replica.retry_jitter else delay


class RawReplicaMixin(_ReplicaOptions):
    """A replica with no table: implement ``cqrs_save`` and ``cqrs_delete`` to act on events."""

    CQRS_NO_DB_OPERATIONS: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if 'CQRS_ID' in cls.__dict__:
            require_cqrs_id(cls)
            ReplicaRegistry.register(cls)

    @classmethod
    def cqrs_save(cls, master_data: dict[str, Any], **kwargs: Any) -> Any:
        """Handle a SAVE or SYNC; return a truthy value on success (falsy or raising retries).

        Called as django-cqrs calls it: ``cqrs_save(data, previous_data=…)``, plus ``sync=True``
        on a SYNC and ``meta=…`` when ``CQRS_META`` is set.
        """
        raise NotImplementedError(f'{cls.__qualname__} must implement cqrs_save().')

    @classmethod
    def cqrs_delete(cls, master_data: dict[str, Any], **kwargs: Any) -> Any:
        """Handle a DELETE; return a truthy value on success (falsy or raising retries).

        Called as ``cqrs_delete(data)``, plus ``meta=…`` when ``CQRS_META`` is set.
        """
        raise NotImplementedError(f'{cls.__qualname__} must implement cqrs_delete().')


class ReplicaMixin(_ReplicaOptions, models.Model):
    """A read-only copy of a master model, kept in step by revision."""

    #: ``{master field: replica field}``; only mapped fields are applied. None: same names.
    CQRS_MAPPING: ClassVar[Mapping[str, str] | None] = None
    #: Hand the raw ``instance_data`` to cqrs_create / cqrs_update, without mapping or conversion.
    CQRS_CUSTOM_SERIALIZATION: ClassVar[bool] = False
    #: Kept for django-cqrs compatibility: rows are always locked while an envelope is applied.
    CQRS_SELECT_FOR_UPDATE: ClassVar[bool] = True
    #: Skip the revision logic and the table: ``cqrs_save``/``cqrs_delete`` do all the work.
    CQRS_NO_DB_OPERATIONS: ClassVar[bool] = False

    cqrs_revision = models.IntegerField(help_text='Master revision of this copy (cqrs_celery).')
    cqrs_updated = models.DateTimeField(help_text='Master time of the last change (cqrs_celery).')

    objects = models.Manager()
    #: django-cqrs's replica manager: ``save_instance``, ``create_instance``, ``update_instance``, ``delete_instance``.
    cqrs = ReplicaManager()

    class Meta:
        abstract = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Abstract models get no class_prepared signal; one that names a CQRS_ID is a replica with
        # no table (django-cqrs registers it too). A concrete subclass later takes its place.
        if cls.__dict__.get('CQRS_ID') is None:
            return
        # a declaration the registry cannot use is left to class_prepared, which names the model
        with contextlib.suppress(ConfigurationError):
            _prepare_replica(cls)

    @classmethod
    def cqrs_save(cls, master_data: dict[str, Any], previous_data: dict[str, Any] | None = None,
                  sync: bool = False, meta: dict[str, Any] | None = None) -> Any:
        """Create or update the row with the revision and tombstone rules.

        Returns the instance (also when the data is stale or a duplicate), or None after logging
        when the data does not fit or the database fails. Override it freely: the apply path calls
        the override and ``super().cqrs_save(...)`` applies the row.
        """
        return save_instance(cls, master_data, previous_data, sync, meta)

    @classmethod
    def cqrs_create(cls, sync: bool, mapped_data: dict[str, Any], previous_data: dict[str, Any] | None = None,
                    meta: dict[str, Any] | None = None) -> Any:
        """Create the row from ``mapped_data`` (override to customise); return it."""
        return cls._default_manager.create(**mapped_data)

    def cqrs_update(self, sync: bool, mapped_data: dict[str, Any], previous_data: dict[str, Any] | None = None,
                    meta: dict[str, Any] | None = None) -> Any:
        """Update this row from ``mapped_data`` (override to customise); return it."""
        for key, value in mapped_data.items():
            setattr(self, key, value)
        self.save()
        return self

    @classmethod
    def cqrs_delete(cls, master_data: dict[str, Any], meta: dict[str, Any] | None = None) -> bool:
        """Delete the row ``master_data`` names (its pk or ``'id'``); True, or False after logging on failure."""
        return delete_instance(cls, master_data)


#: The library's own methods, as defined: the apply path calls a model's method when it differs.
LIBRARY_METHODS: dict[str, Any] = {
    name: getattr(ReplicaMixin.__dict__[name], '__func__', ReplicaMixin.__dict__[name])
    for name in ('cqrs_save', 'cqrs_create', 'cqrs_update', 'cqrs_delete')
}


def _prepare_replica(sender: type[Any], **kwargs: Any) -> None:
    """Register ``sender`` as this service's replica for its CQRS_ID (``ReplicaMeta.register`` calls it).

    Works for any ReplicaMixin model (concrete, abstract, proxy) and any RawReplicaMixin class.
    """
    if not issubclass(sender, _ReplicaOptions):
        raise ConfigurationError(
            f'{sender.__qualname__} cannot be registered as a replica: add ReplicaMixin (a model) or '
            f'RawReplicaMixin (no table) to its bases.'
        )
    require_cqrs_id(sender)
    mapping = getattr(sender, 'CQRS_MAPPING', None)
    if mapping is not None and not isinstance(mapping, Mapping):
        meta = getattr(sender, '_meta', None)
        label = meta.label if meta is not None else sender.__qualname__
        raise ConfigurationError(
            f'{label}.CQRS_MAPPING must be a dict {{master field: replica field}}, not {mapping!r}.'
        )
    ReplicaRegistry.register(sender)


def _on_class_prepared(sender: type[models.Model], **kwargs: Any) -> None:
    # proxies share their concrete model's CQRS_ID: registered only when asked (ReplicaMeta.register)
    if issubclass(sender, ReplicaMixin) and not sender._meta.proxy:
        _prepare_replica(sender)


class_prepared.connect(_on_class_prepared, dispatch_uid='cqrs_celery.replica.prepare')
