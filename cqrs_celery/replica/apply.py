"""Apply one envelope to this service's replica model: revision rules, tombstones, row locks.

``apply()`` is plain synchronous code returning an explicit :class:`Outcome`; the Celery task in
``tasks.py`` only decodes, calls it and maps outcomes and errors to ack or retry.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from django.db import IntegrityError, connections, models, router, transaction

from cqrs_celery.constants import FIELD_REVISION, FIELD_UPDATED, SignalType
from cqrs_celery.envelope import Envelope
from cqrs_celery.exceptions import ApplyError, DataError
from cqrs_celery.models import (
    ReplicaTombstone,
    array_param,
    forget_tombstones,
    pk_key,
    record_tombstone,
)
from cqrs_celery.registry import ReplicaRegistry
from cqrs_celery.replica import reads
from cqrs_celery.replica.hooks import call_model, has_no_table, meta_kwargs, overrides, private_copy
from cqrs_celery.replica.outcomes import Outcome as Outcome
from cqrs_celery.replica.outcomes import Result as Result
from cqrs_celery.serialization import from_json, python_value

logger = logging.getLogger(__name__)


def apply(envelope: Envelope, queue: str | None = None) -> Result:
    """Apply ``envelope`` on this service, whose replica queue is ``queue``.

    Raises:
        UnknownCQRSIdError: no replica model here has the envelope's CQRS_ID.
        DataError: the data does not fit the model's fields (retrying cannot help).
        ApplyError: the model's code returned a falsy result (a retry may help).
    """
    model = ReplicaRegistry.get(envelope.cqrs_id)
    if not is_for_me(model, envelope, queue):
        return Result(Outcome.NOT_FOR_ME)
    if has_no_table(model):
        return apply_custom(model, envelope)
    return apply_row(model, envelope)


def is_for_me(model: Any, envelope: Envelope, queue: str | None) -> bool:
    """False for a directed SYNC meant for another queue, or a broadcast SYNC an only-direct model ignores."""
    if envelope.is_directed and queue is not None and envelope.queue != queue:
        return False
    return not (envelope.signal_type == SignalType.SYNC and model.CQRS_ONLY_DIRECT_SYNCS
                and not envelope.is_directed)


def apply_custom(model: Any, envelope: Envelope) -> Result:
    """Hand the envelope to a table-less model's own ``cqrs_save``/``cqrs_delete``."""
    return call_model(model, private_copy(envelope))


def mapped_data(model: Any, data: dict[str, Any], connection: Any = None) -> dict[str, Any]:
    """Master data renamed by ``CQRS_MAPPING`` and converted to the replica's Python values.

    ``connection``: the one the row is written to, when the caller has it at hand.
    """
    if model.CQRS_CUSTOM_SERIALIZATION:
        return dict(data)
    mapping = model.CQRS_MAPPING
    if mapping is not None:
        renamed = {target: data[source] for source, target in mapping.items() if source in data}
        for name in (FIELD_REVISION, FIELD_UPDATED):
            if name not in mapping.values() and name in data:
                renamed[name] = data[name]
        data = renamed
    return from_json(model, data, connection)


def mapped_previous(model: Any, previous: dict[str, Any] | None) -> dict[str, Any] | None:
    """``previous_data`` with keys renamed by ``CQRS_MAPPING`` (unmapped keys dropped); values stay JSON."""
    mapping = model.CQRS_MAPPING
    if previous is None or mapping is None or model.CQRS_CUSTOM_SERIALIZATION:
        return previous
    return {mapping[key]: value for key, value in previous.items() if key in mapping}


def master_pk(model: Any, data: dict[str, Any], fallback: Any = None) -> Any:
    """The primary key in master ``data`` (JSON form) that names this replica's row.

    The one place that decides it: the master field ``CQRS_MAPPING`` maps to the replica's pk, else
    the pk's own name (or attname) in the data, else ``fallback`` (the envelope's ``instance_pk``).
    """
    pk_field = model._meta.pk
    for source, target in (model.CQRS_MAPPING or {}).items():
        if target in (pk_field.name, pk_field.attname) and source in data:
            return data[source]
    for key in (pk_field.name, pk_field.attname):
        if key in data:
            return data[key]
    return fallback


def replica_pk(model: Any, data: dict[str, Any], fallback: Any = None, connection: Any = None) -> Any:
    """The replica primary key named by master ``data`` (through ``CQRS_MAPPING``), as a Python value.

    ``connection``: the replica's connection for ``model``, when the caller has it at hand.
    """
    value = master_pk(model, data, fallback)
    if value is None:
        raise DataError(f'{model._meta.label}: no primary key in the data')
    return python_value(model, model._meta.pk, value, connection)


def lock_keys(using: str, keys: list[tuple[str, Any]]) -> None:
    """Serialize every apply of each (CQRS_ID, pk) on PostgreSQL, even while the row is missing.

    Locks are taken in ascending order, so two workers locking overlapping groups cannot deadlock.
    """
    connection = connections[using]
    if connection.vendor != 'postgresql' or not keys:
        return
    numbers = sorted({int.from_bytes(hashlib.blake2b(f'{cqrs_id}\x00{pk}'.encode(), digest_size=8).digest(),
                                     'big', signed=True) for cqrs_id, pk in keys})
    with connection.cursor() as cursor:
        if len(numbers) == 1:
            cursor.execute('SELECT pg_advisory_xact_lock(%s)', numbers)
        else:
            cursor.execute('SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) WITH ORDINALITY '
                           'AS t(k, n)', [array_param(numbers)])


def apply_row(model: Any, envelope: Envelope, *, dispatch: bool = True) -> Result:
    """Apply a SAVE, SYNC or DELETE to ``model``'s table with the revision rules.

    With ``dispatch`` (the apply path), a model's own ``cqrs_save``/``cqrs_delete`` is called;
    without it (the library's own ``cqrs_save`` called directly), only the rules run.
    """
    using = router.db_for_write(model)
    for attempt in range(2):
        try:
            with transaction.atomic(using=using):
                lock_keys(using, [(envelope.cqrs_id, envelope.instance_pk)])
                if dispatch:
                    return apply_locked(model, envelope, using)
                return apply_rules(model, envelope, using, dispatch=False)
        except IntegrityError:
            # Two workers raced to create the same new pk: the loser follows the rules again.
            if attempt:
                raise
            logger.info('cqrs create race, retrying: cqrs_id=%s pk=%s revision=%s',
                        envelope.cqrs_id, envelope.instance_pk, envelope.revision)
    raise AssertionError('unreachable')


def apply_locked(model: Any, envelope: Envelope, using: str) -> Result:
    """Apply one row inside the caller's transaction, which holds the row's lock (``lock_keys``).

    A model that overrides ``cqrs_save`` has it called (as django-cqrs does) after the revision
    and tombstone rules have let the envelope through; its ``super().cqrs_save()`` applies the row.
    """
    envelope = private_copy(envelope)
    if envelope.signal_type == SignalType.DELETE:
        if envelope.revision is None and overrides(model, 'cqrs_delete'):
            return call_model(model, envelope, using)  # no revision to check: the model's own code decides
        return apply_rules(model, envelope, using)
    if not overrides(model, 'cqrs_save'):
        return apply_rules(model, envelope, using)
    try:
        revision_of(envelope)
        skipped = apply_rules(model, envelope, using, check_only=True)
    except DataError:
        skipped = None  # the model's own cqrs_save decides what to do with such data
    if skipped is not None:
        return skipped
    return call_model(model, envelope, using)


def apply_rules(model: Any, envelope: Envelope, using: str, *, dispatch: bool = True,
                check_only: bool = False) -> Result | Any:
    """The revision and tombstone rules for one row; with ``check_only``, None when the row would change."""
    data = envelope.instance_data
    pk = replica_pk(model, data, envelope.instance_pk)
    revision = revision_of(envelope)
    # always asked for (a no-op where the database has no row locks), as django-cqrs does; through
    # the ORM each time, as a model's own code or a test may expect (groups use ``reads``)
    instance = model._default_manager.db_manager(using).select_for_update().filter(pk=pk).first()
    log = (envelope.cqrs_id, envelope.instance_pk, revision, envelope.correlation_id)
    if envelope.signal_type == SignalType.DELETE:
        return _apply_delete(model, envelope, using, instance, log, dispatch)
    if instance is None:
        deleted_at = reads.tombstones(using, envelope.cqrs_id, [envelope.instance_pk]).get(pk_key(envelope.instance_pk))
        if deleted_at is not None and deleted_at >= revision:
            logger.info('cqrs stale %s after delete, skipped: cqrs_id=%s pk=%s revision=%s correlation_id=%s'
                        ' deleted_revision=%s', envelope.signal_type, *log, deleted_at)
            return Result(Outcome.STALE)
        if check_only:
            return None
        if deleted_at is not None:
            _forget_tombstone(using, envelope)
        values = mapped_data(model, data)
        require_fields(model, values)
        created = model.cqrs_create(envelope.signal_type == SignalType.SYNC, values,
                                    previous_data=mapped_previous(model, envelope.previous_data),
                                    **meta_kwargs(model, envelope))
        if not created:
            raise ApplyError(f'{model._meta.label}.cqrs_create returned {created!r}')
        return Result(Outcome.CREATED, created)
    stored = instance.cqrs_revision
    if revision < stored and not envelope.forced:
        log_stale(envelope, stored)
        return Result(Outcome.STALE, instance)
    if revision == stored and envelope.signal_type == SignalType.SAVE:
        logger.debug('cqrs duplicate skipped: cqrs_id=%s pk=%s revision=%s correlation_id=%s', *log)
        return Result(Outcome.DUPLICATE, instance)
    if check_only:
        return None
    if revision > stored + 1:
        log_gap(envelope, stored)
    updated = instance.cqrs_update(envelope.signal_type == SignalType.SYNC, mapped_data(model, data),
                                   previous_data=mapped_previous(model, envelope.previous_data),
                                   **meta_kwargs(model, envelope))
    if not updated:
        raise ApplyError(f'{model._meta.label}.cqrs_update returned {updated!r}')
    return Result(Outcome.UPDATED, updated)


def log_stale(envelope: Envelope, stored: int) -> None:
    logger.info('cqrs stale %s skipped: cqrs_id=%s pk=%s revision=%s correlation_id=%s stored=%s',
                envelope.signal_type, *envelope.log_fields().values(), stored)


def log_gap(envelope: Envelope, stored: int) -> None:
    logger.info('cqrs revision gap: cqrs_id=%s pk=%s revision=%s correlation_id=%s stored=%s',
                *envelope.log_fields().values(), stored)


#: Highest revision a master can give (its ``cqrs_revision`` is an IntegerField, as the replica's).
MAX_REVISION = 2 ** 31 - 1


def revision_of(envelope: Envelope) -> int:
    """The envelope's revision; ``DataError`` when it has none, or one no master can give (0…2³¹−1)."""
    revision = envelope.revision
    if revision is None:
        raise DataError(f'{envelope.cqrs_id}: instance_data has no integer {FIELD_REVISION}')
    if not 0 <= revision <= MAX_REVISION:
        raise DataError(f'{envelope.cqrs_id}: {FIELD_REVISION} {revision} is outside 0…{MAX_REVISION}, what a master '
                        'gives')
    return revision


def _forget_tombstone(using: str, envelope: Envelope) -> None:
    forget_tombstones(ReplicaTombstone, using, envelope.cqrs_id, [pk_key(envelope.instance_pk)])


def _apply_delete(model: Any, envelope: Envelope, using: str, instance: Any, log: tuple[Any, ...],
                  dispatch: bool) -> Result:
    revision = revision_of(envelope)
    if instance is not None and revision < instance.cqrs_revision:
        logger.info('cqrs stale DELETE skipped: cqrs_id=%s pk=%s revision=%s correlation_id=%s stored=%s',
                    *log, instance.cqrs_revision)
        return Result(Outcome.STALE, instance)
    record_tombstone(ReplicaTombstone, using, envelope.cqrs_id, envelope.instance_pk, revision)
    if not dispatch:
        # a direct call deletes through the manager's filter() even when no row was read, as
        # django-cqrs's cqrs_delete does (a model's manager or a test may expect that call)
        pk = instance.pk if instance is not None else replica_pk(model, envelope.instance_data, envelope.instance_pk)
        model._default_manager.db_manager(using).filter(pk=pk).delete()
        return Result(Outcome.DELETED if instance is not None else Outcome.TOMBSTONED)
    if instance is None:
        return Result(Outcome.TOMBSTONED)
    result = call_model(model, envelope, using)
    if result.outcome == Outcome.HANDLED:
        return Result(Outcome.DELETED, result.instance)
    return result


#: Per replica model, (attname, name) of the columns a new row needs a value for (worked out once).
_required: dict[Any, list[tuple[str, str]]] = {}


def require_fields(model: Any, values: dict[str, Any]) -> None:
    """``DataError`` when a new row would lack a value for a column that needs one.

    Required: NOT NULL, no default, not blank-able, not an auto-generated primary key. The data of
    a custom-serialized model is the model's own business.
    """
    if model.CQRS_CUSTOM_SERIALIZATION:
        return
    required = _required.get(model)
    if required is None:
        required = _required[model] = [
            (field.attname, field.name) for field in model._meta.concrete_fields
            if not (field.null or field.blank or field.has_default()
                    or getattr(field, 'db_default', None) not in (None, models.NOT_PROVIDED)
                    or (field.primary_key and field.auto_created) or isinstance(field, models.AutoField))]
    missing = [name for attname, name in required if attname not in values]
    if missing:
        raise DataError(f'{model._meta.label}: the data has no value for required field(s) {", ".join(missing)}')
