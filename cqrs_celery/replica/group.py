"""Apply many envelopes of one model in one database transaction, with the same rules per row.

A batch (a v2 message) is applied in one transaction: every row's lock is taken up front (in a
fixed order, so two workers cannot deadlock), the stored rows and tombstones are read in one query
each, and the revision rules of ``apply.py`` decide each row in turn (a pk may appear several
times; later rows see what earlier ones did).

* **Bulk path**, for models that keep the library's own ``cqrs_create``/``cqrs_update``/
  ``cqrs_delete`` and have no ``save()`` override or save signals: new rows are written with one
  INSERT per chunk (on PostgreSQL one ``UNNEST`` of array texts), changed rows with one UPDATE joined to their
  values per chunk (``bulk.py``).
* **Per-row path**, for every other model: its methods are called for each row, each row inside
  a savepoint of the group's transaction, so a failing row is rolled back and reported alone.

If the bulk path fails as a whole (a value the database refuses, a race on a new pk), the group is
rolled back and applied row by row, each row in its own transaction: only the failing rows fail.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from django.db import connections, router, transaction
from django.db.models import Model, signals

from cqrs_celery.constants import SignalType
from cqrs_celery.envelope import Envelope
from cqrs_celery.models import (
    ReplicaTombstone,
    forget_tombstones,
    pk_key,
    record_tombstone,
)
from cqrs_celery.registry import ReplicaRegistry
from cqrs_celery.replica import apply as single
from cqrs_celery.replica import bulk, hooks, reads
from cqrs_celery.replica.apply import Outcome, Result

logger = logging.getLogger(__name__)

#: What applying one row gave: its result, or the exception it alone failed with.
RowResult = Result | Exception


def apply_many(envelopes: Sequence[Envelope], queue: str | None = None) -> list[RowResult]:
    """Apply ``envelopes`` (in order) on this service; one result or exception per envelope."""
    results: list[RowResult | None] = [None] * len(envelopes)
    by_model: dict[Any, list[int]] = {}
    for index, envelope in enumerate(envelopes):
        try:
            model = ReplicaRegistry.get(envelope.cqrs_id)
            if not single.is_for_me(model, envelope, queue):
                results[index] = Result(Outcome.NOT_FOR_ME)
                continue
        except Exception as exc:
            results[index] = exc
            continue
        by_model.setdefault(model, []).append(index)
    for model, indexes in by_model.items():
        group = [envelopes[i] for i in indexes]
        if hooks.has_no_table(model):
            outcomes = [_guarded(single.apply_custom, model, envelope) for envelope in group]
        else:
            outcomes = apply_rows(model, group)
        for index, outcome in zip(indexes, outcomes, strict=True):
            results[index] = outcome
    return [r if r is not None else RuntimeError('not applied') for r in results]


def _guarded(function: Any, *args: Any) -> RowResult:
    try:
        return function(*args)  # type: ignore[no-any-return]
    except Exception as exc:
        return exc


def apply_rows(model: Any, envelopes: Sequence[Envelope]) -> list[RowResult]:
    """Apply rows of one table-backed model in one transaction (see the module's docstring)."""
    in_bulk = uses_bulk_path(model)
    if len(envelopes) == 1 and not in_bulk:
        return [_guarded(single.apply_row, model, envelopes[0])]  # (no savepoint needed for one row)
    using = router.db_for_write(model)
    try:
        with transaction.atomic(using=using):
            single.lock_keys(using, [(e.cqrs_id, e.instance_pk) for e in envelopes])
            if in_bulk:
                return _apply_bulk(model, envelopes, using)
            return [_in_savepoint(model, envelope, using) for envelope in envelopes]
    except Exception as exc:
        logger.log(logging.INFO if len(envelopes) > 1 else logging.DEBUG,
                   'cqrs group of %s %s rows fell back to one transaction per row: %r', len(envelopes),
                   model.CQRS_ID, exc)
        return [_guarded(single.apply_row, model, envelope) for envelope in envelopes]


def _in_savepoint(model: Any, envelope: Envelope, using: str) -> RowResult:
    try:
        with transaction.atomic(using=using):
            return single.apply_locked(model, envelope, using)
    except Exception as exc:
        return exc


def uses_bulk_path(model: Any) -> bool:
    """True when writing rows in bulk skips nothing the model defines.

    A model that overrides ``cqrs_save``, ``cqrs_create``, ``cqrs_update`` or ``cqrs_delete`` (or
    ``save()``, or has save/delete signal receivers) goes row by row, so its code runs.
    """
    if model.CQRS_CUSTOM_SERIALIZATION or model.save is not Model.save:
        return False
    if any(hooks.overrides(model, name) for name in ('cqrs_create', 'cqrs_update', 'cqrs_delete', 'cqrs_save')):
        return False
    return not any(signal.has_listeners(model) for signal in
                   (signals.pre_save, signals.post_save, signals.pre_delete, signals.post_delete))


class _Rows:
    """What the group has done so far to each pk, before anything is written."""

    def __init__(self, model: Any, using: str, cqrs_id: str, envelopes: Sequence[Envelope]) -> None:
        connection = self.connection = connections[using]
        self.pks = [single.replica_pk(model, e.instance_data, e.instance_pk, connection) for e in envelopes]
        self.stored = reads.stored_rows(model, using, self.pks)
        # A tombstone matters to a row that is missing (a create checks it) or deleted in the group.
        self.tombstones = reads.tombstones(using, cqrs_id, [
            e.instance_pk for e, pk in zip(envelopes, self.pks, strict=True)
            if pk not in self.stored or e.signal_type == SignalType.DELETE])
        self.created: dict[Any, Any] = {}
        self.changed: dict[Any, Any] = {}
        self.deleted: set[Any] = set()
        self.fields: set[str] = set()
        self.new_tombstones: dict[str, tuple[Any, int]] = {}
        self.forgotten: set[str] = set()

    def current(self, pk: Any) -> Any:
        return self.created.get(pk) or self.stored.get(pk)


def _apply_bulk(model: Any, envelopes: Sequence[Envelope], using: str) -> list[RowResult]:
    cqrs_id = envelopes[0].cqrs_id
    rows = _Rows(model, using, cqrs_id, envelopes)
    results: list[RowResult] = []
    for envelope, pk in zip(envelopes, rows.pks, strict=True):
        revision = single.revision_of(envelope)
        key = pk_key(envelope.instance_pk)
        instance = rows.current(pk)
        if envelope.signal_type == SignalType.DELETE:
            results.append(_delete(rows, envelope, pk, key, revision, instance))
        elif instance is None:
            results.append(_create(model, rows, envelope, pk, key, revision))
        else:
            results.append(_update(model, rows, envelope, pk, revision, instance))
    _write(model, rows, using, cqrs_id)
    return results


def _delete(rows: _Rows, envelope: Envelope, pk: Any, key: str, revision: int, instance: Any) -> Result:
    if instance is not None and revision < instance.cqrs_revision:
        single.log_stale(envelope, instance.cqrs_revision)
        return Result(Outcome.STALE, instance)
    if revision > rows.tombstones.get(key, -1):
        rows.tombstones[key] = revision
        rows.new_tombstones[key] = (envelope.instance_pk, revision)
    rows.forgotten.discard(key)
    if instance is None:
        return Result(Outcome.TOMBSTONED)
    if rows.created.pop(pk, None) is None:
        rows.stored.pop(pk, None)
        rows.changed.pop(pk, None)
        rows.deleted.add(pk)
    return Result(Outcome.DELETED)


def _create(model: Any, rows: _Rows, envelope: Envelope, pk: Any, key: str, revision: int) -> Result:
    deleted_at = rows.tombstones.get(key)
    if deleted_at is not None and deleted_at >= revision:
        single.log_stale(envelope, deleted_at)
        return Result(Outcome.STALE)
    if deleted_at is not None:
        rows.tombstones.pop(key)
        rows.new_tombstones.pop(key, None)
        rows.forgotten.add(key)
    values = single.mapped_data(model, envelope.instance_data, rows.connection)
    single.require_fields(model, values)
    instance = model(**values)
    rows.created[pk] = instance
    rows.deleted.discard(pk)
    return Result(Outcome.CREATED, instance)


def _update(model: Any, rows: _Rows, envelope: Envelope, pk: Any, revision: int, instance: Any) -> Result:
    stored = instance.cqrs_revision
    if revision < stored and not envelope.forced:
        single.log_stale(envelope, stored)
        return Result(Outcome.STALE, instance)
    if revision == stored and envelope.signal_type == SignalType.SAVE:
        return Result(Outcome.DUPLICATE, instance)
    if revision > stored + 1:
        single.log_gap(envelope, stored)
    data = single.mapped_data(model, envelope.instance_data, rows.connection)
    for name, value in data.items():
        setattr(instance, name, value)
    if pk not in rows.created:
        rows.changed[pk] = instance
        rows.fields.update(data)
    return Result(Outcome.UPDATED, instance)


def _write(model: Any, rows: _Rows, using: str, cqrs_id: str) -> None:
    manager = model._default_manager.using(using)
    if rows.forgotten:
        forget_tombstones(ReplicaTombstone, using, cqrs_id, list(rows.forgotten))
    if rows.deleted:
        manager.filter(pk__in=rows.deleted).delete()
    for pk, revision in rows.new_tombstones.values():
        record_tombstone(ReplicaTombstone, using, cqrs_id, pk, revision)
    if rows.created:
        bulk.insert_rows(model, list(rows.created.values()), using)
    pk_names = {model._meta.pk.name, model._meta.pk.attname}
    fields = sorted(rows.fields - pk_names)
    if rows.changed and fields:
        bulk.update_rows(model, list(rows.changed.values()), fields, using)

