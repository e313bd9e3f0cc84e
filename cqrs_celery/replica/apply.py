"""Apply one envelope to this service's replica model: revision rules, tombstones, row locks.

``apply()`` is plain synchronous code returning an explicit :class:`Outcome`; the Celery task in
``tasks.py`` only decodes, calls it and maps outcomes and errors to ack or retry.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
from typing import Any

from django.db import IntegrityError, connections, router, transaction

from cqrs_celery.constants import FIELD_REVISION, FIELD_UPDATED, SignalType
from cqrs_celery.envelope import Envelope
from cqrs_celery.exceptions import ApplyError, DataError
from cqrs_celery.models import ReplicaTombstone, pk_key, record_tombstone, tombstone_revision
from cqrs_celery.registry import ReplicaRegistry
from cqrs_celery.serialization import from_json, python_value

logger = logging.getLogger(__name__)


class Outcome(str, enum.Enum):
    """What applying an envelope did."""

    CREATED = 'created'
    UPDATED = 'updated'
    DELETED = 'deleted'
    TOMBSTONED = 'tombstoned'  # DELETE of a row this replica never had: remembered, nothing to delete
    HANDLED = 'handled'  # a RawReplicaMixin / CQRS_NO_DB_OPERATIONS model's own code ran
    STALE = 'stale'
    DUPLICATE = 'duplicate'
    NOT_FOR_ME = 'not_for_me'


@dataclasses.dataclass(frozen=True)
class Result:
    outcome: Outcome
    instance: Any = None


def apply(envelope: Envelope, queue: str | None = None) -> Result:
    """Apply ``envelope`` on this service, whose replica queue is ``queue``.

    Raises:
        UnknownCQRSIdError: no replica model here has the envelope's CQRS_ID.
        DataError: the data does not fit the model's fields (retrying cannot help).
        ApplyError: the model's code returned a falsy result (a retry may help).
    """
    model = ReplicaRegistry.get(envelope.cqrs_id)
    if envelope.is_directed and queue is not None and envelope.queue != queue:
        return Result(Outcome.NOT_FOR_ME)
    if envelope.signal_type == SignalType.SYNC and model.CQRS_ONLY_DIRECT_SYNCS and not envelope.is_directed:
        return Result(Outcome.NOT_FOR_ME)
    if model.CQRS_NO_DB_OPERATIONS:
        return _apply_custom(model, envelope)
    return apply_row(model, envelope)


def _meta_kwargs(model: Any, envelope: Envelope) -> dict[str, Any]:
    return {'meta': envelope.meta} if model.CQRS_META else {}


def _apply_custom(model: Any, envelope: Envelope) -> Result:
    kwargs = _meta_kwargs(model, envelope)
    if envelope.signal_type == SignalType.DELETE:
        done = model.cqrs_delete(envelope.instance_data, **kwargs)
    else:
        done = model.cqrs_save(envelope.instance_data, previous_data=envelope.previous_data,
                               sync=envelope.signal_type == SignalType.SYNC, **kwargs)
    if not done:
        method = 'cqrs_delete' if envelope.signal_type == SignalType.DELETE else 'cqrs_save'
        raise ApplyError(f'{model.__qualname__}.{method} returned {done!r}')
    return Result(Outcome.HANDLED, done)


def mapped_data(model: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Master data renamed by ``CQRS_MAPPING`` and converted to the replica's Python values."""
    if model.CQRS_CUSTOM_SERIALIZATION:
        return dict(data)
    mapping = model.CQRS_MAPPING
    if mapping is not None:
        renamed = {target: data[source] for source, target in mapping.items() if source in data}
        for name in (FIELD_REVISION, FIELD_UPDATED):
            if name not in mapping.values() and name in data:
                renamed[name] = data[name]
        data = renamed
    return from_json(model, data)


def mapped_previous(model: Any, previous: dict[str, Any] | None) -> dict[str, Any] | None:
    """``previous_data`` with keys renamed by ``CQRS_MAPPING`` (unmapped keys dropped); values stay JSON."""
    mapping = model.CQRS_MAPPING
    if previous is None or mapping is None or model.CQRS_CUSTOM_SERIALIZATION:
        return previous
    return {mapping[key]: value for key, value in previous.items() if key in mapping}


def replica_pk(model: Any, data: dict[str, Any], fallback: Any = None) -> Any:
    """The replica primary key named by master ``data`` (through ``CQRS_MAPPING``), as a Python value."""
    pk_field = model._meta.pk
    value = fallback
    for source, target in (model.CQRS_MAPPING or {}).items():
        if target in (pk_field.name, pk_field.attname) and source in data:
            value = data[source]
            break
    else:
        for key in (pk_field.name, pk_field.attname):
            if key in data:
                value = data[key]
                break
    if value is None:
        raise DataError(f'{model._meta.label}: no primary key in the data')
    return python_value(model, pk_field, value)


def _lock_key(using: str, cqrs_id: str, pk: Any) -> None:
    """Serialize every apply of one (CQRS_ID, pk) on PostgreSQL, even while the row is missing."""
    connection = connections[using]
    if connection.vendor != 'postgresql':
        return
    digest = hashlib.blake2b(f'{cqrs_id}\x00{pk}'.encode(), digest_size=8).digest()
    with connection.cursor() as cursor:
        cursor.execute('SELECT pg_advisory_xact_lock(%s)', [int.from_bytes(digest, 'big', signed=True)])


def apply_row(model: Any, envelope: Envelope) -> Result:
    """Apply a SAVE, SYNC or DELETE to ``model``'s table with the revision rules."""
    using = router.db_for_write(model)
    for attempt in range(2):
        try:
            with transaction.atomic(using=using):
                return _apply_locked(model, envelope, using)
        except IntegrityError:
            # Two workers raced to create the same new pk: the loser follows the rules again.
            if attempt:
                raise
            logger.info('cqrs create race, retrying: cqrs_id=%s pk=%s revision=%s',
                        envelope.cqrs_id, envelope.instance_pk, envelope.revision)
    raise AssertionError('unreachable')


def _apply_locked(model: Any, envelope: Envelope, using: str) -> Result:
    data = envelope.instance_data
    pk = replica_pk(model, data, envelope.instance_pk)
    revision = _revision(envelope)
    _lock_key(using, envelope.cqrs_id, envelope.instance_pk)
    queryset = model._default_manager.using(using)
    if connections[using].features.has_select_for_update:
        queryset = queryset.select_for_update()
    instance = queryset.filter(pk=pk).first()
    log = (envelope.cqrs_id, envelope.instance_pk, revision, envelope.correlation_id)
    if envelope.signal_type == SignalType.DELETE:
        return _apply_delete(model, envelope, using, instance, log)
    if instance is None:
        deleted_at = tombstone_revision(ReplicaTombstone, using, envelope.cqrs_id, envelope.instance_pk)
        if deleted_at is not None and deleted_at >= revision:
            logger.info('cqrs stale %s after delete, skipped: cqrs_id=%s pk=%s revision=%s correlation_id=%s'
                        ' deleted_revision=%s', envelope.signal_type, *log, deleted_at)
            return Result(Outcome.STALE)
        if deleted_at is not None:
            _forget_tombstone(using, envelope)
        created = model.cqrs_create(envelope.signal_type == SignalType.SYNC, mapped_data(model, data),
                                    mapped_previous(model, envelope.previous_data), **_meta_kwargs(model, envelope))
        if not created:
            raise ApplyError(f'{model._meta.label}.cqrs_create returned {created!r}')
        return Result(Outcome.CREATED, created)
    stored = instance.cqrs_revision
    if revision < stored:
        logger.info('cqrs stale %s skipped: cqrs_id=%s pk=%s revision=%s correlation_id=%s stored=%s',
                    envelope.signal_type, *log, stored)
        return Result(Outcome.STALE, instance)
    if revision == stored and envelope.signal_type == SignalType.SAVE:
        logger.debug('cqrs duplicate skipped: cqrs_id=%s pk=%s revision=%s correlation_id=%s', *log)
        return Result(Outcome.DUPLICATE, instance)
    if revision > stored + 1:
        logger.info('cqrs revision gap: cqrs_id=%s pk=%s revision=%s correlation_id=%s stored=%s', *log, stored)
    updated = instance.cqrs_update(envelope.signal_type == SignalType.SYNC, mapped_data(model, data),
                                   mapped_previous(model, envelope.previous_data), **_meta_kwargs(model, envelope))
    if not updated:
        raise ApplyError(f'{model._meta.label}.cqrs_update returned {updated!r}')
    return Result(Outcome.UPDATED, updated)


def _revision(envelope: Envelope) -> int:
    if envelope.revision is None:
        raise DataError(f'{envelope.cqrs_id}: instance_data has no integer {FIELD_REVISION}')
    return envelope.revision


def _forget_tombstone(using: str, envelope: Envelope) -> None:
    ReplicaTombstone._default_manager.using(using).filter(
        cqrs_id=envelope.cqrs_id, pk_value=pk_key(envelope.instance_pk)).delete()


def _apply_delete(model: Any, envelope: Envelope, using: str, instance: Any, log: tuple[Any, ...]) -> Result:
    revision = _revision(envelope)
    if instance is not None and revision < instance.cqrs_revision:
        logger.info('cqrs stale DELETE skipped: cqrs_id=%s pk=%s revision=%s correlation_id=%s stored=%s',
                    *log, instance.cqrs_revision)
        return Result(Outcome.STALE, instance)
    record_tombstone(ReplicaTombstone, using, envelope.cqrs_id, envelope.instance_pk, revision)
    if instance is None:
        return Result(Outcome.TOMBSTONED)
    done = model.cqrs_delete(envelope.instance_data, **_meta_kwargs(model, envelope))
    if not done:
        raise ApplyError(f'{model._meta.label}.cqrs_delete returned {done!r}')
    return Result(Outcome.DELETED)
