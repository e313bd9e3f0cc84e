"""Replica model mixins: how a service stores (or otherwise handles) what the master publishes."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any, ClassVar

from django.db import models
from django.db.models.signals import class_prepared

from cqrs_celery.conf import get_settings
from cqrs_celery.exceptions import ConfigurationError
from cqrs_celery.registry import ReplicaRegistry, require_cqrs_id


class _ReplicaOptions:
    """Options and retry policy shared by table-backed and raw replicas."""

    #: CQRS_ID of the master model this replicates.
    CQRS_ID: ClassVar[str]
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
    def cqrs_save(cls, master_data: dict[str, Any], previous_data: dict[str, Any] | None = None,
                  sync: bool = False, meta: dict[str, Any] | None = None) -> Any:
        """Handle a SAVE or SYNC; return a truthy value on success (falsy or raising retries)."""
        raise NotImplementedError(f'{cls.__qualname__} must implement cqrs_save().')

    @classmethod
    def cqrs_delete(cls, master_data: dict[str, Any], meta: dict[str, Any] | None = None) -> bool:
        """Handle a DELETE; return True on success (False or raising retries)."""
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

    class Meta:
        abstract = True

    @classmethod
    def cqrs_save(cls, master_data: dict[str, Any], previous_data: dict[str, Any] | None = None,
                  sync: bool = False, meta: dict[str, Any] | None = None) -> Any:
        """Apply one row with the revision rules; returns the instance, or None when skipped."""
        from cqrs_celery.constants import SignalType
        from cqrs_celery.envelope import Envelope
        from cqrs_celery.replica.apply import apply_row, master_pk

        pk = master_pk(cls, master_data, master_data.get('id'))
        envelope = Envelope(signal_type=SignalType.SYNC if sync else SignalType.SAVE, cqrs_id=cls.CQRS_ID,
                            instance_pk=pk, instance_data=dict(master_data),
                            previous_data=previous_data, meta=meta)
        return apply_row(cls, envelope).instance

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
        """Delete the row ``master_data`` names (override to customise); return True."""
        from cqrs_celery.replica.apply import replica_pk

        cls._default_manager.filter(pk=replica_pk(cls, master_data)).delete()
        return True


def _prepare_replica(sender: type[models.Model], **kwargs: Any) -> None:
    if not issubclass(sender, ReplicaMixin) or sender._meta.abstract or sender._meta.proxy:
        return
    require_cqrs_id(sender)
    mapping = sender.CQRS_MAPPING
    if mapping is not None and not isinstance(mapping, Mapping):
        raise ConfigurationError(
            f'{sender._meta.label}.CQRS_MAPPING must be a dict {{master field: replica field}}, not {mapping!r}.'
        )
    ReplicaRegistry.register(sender)


class_prepared.connect(_prepare_replica, dispatch_uid='cqrs_celery.replica.prepare')
