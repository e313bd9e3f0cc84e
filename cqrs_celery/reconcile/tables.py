"""Reading both sides' tables for a reconciliation: which rows, which fields, their digests.

The replica decides what is compared (it knows its mapping and field types); the master computes
the same digests from what it would send (``to_cqrs_dict``), normalised by the replica's kinds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.db import router

from cqrs_celery.constants import FIELD_REVISION, FIELD_UPDATED
from cqrs_celery.reconcile.digest import (
    Summary,
    bucket_of,
    content_digest,
    field_kind,
    key_of,
    resolve_key,
    row_digest,
)
from cqrs_celery.registry import ReplicaRegistry
from cqrs_celery.serialization import field_for_key, to_json

#: Rows read per query.
CHUNK = 2000

#: ``CQRS_RECONCILE`` values.
OFF, REVISION, CONTENT = 'off', 'revision', 'content'


def mode(model: Any) -> str:
    """How a replica model is reconciled: ``'content'``, ``'revision'`` (revisions only) or ``'off'``.

    ``CQRS_RECONCILE = False`` turns it off and ``'revision'`` compares revisions only. By default
    (``None``) a table-backed model is reconciled, with its fields compared when it writes what the
    master sends as it is (the library's own ``cqrs_create``/``cqrs_update``/``cqrs_save``, no
    ``CQRS_CUSTOM_SERIALIZATION``); ``True`` compares fields even with methods of its own.
    Models without a table (``RawReplicaMixin``, ``CQRS_NO_DB_OPERATIONS``) are never reconciled.
    """
    from cqrs_celery.replica.hooks import overrides

    setting = getattr(model, 'CQRS_RECONCILE', None)
    if setting is False or getattr(model, 'CQRS_NO_DB_OPERATIONS', False) or not hasattr(model, '_meta'):
        return OFF
    if setting == REVISION:
        return REVISION
    if setting is True:
        return CONTENT
    if model.CQRS_CUSTOM_SERIALIZATION or any(overrides(model, name)
                                             for name in ('cqrs_create', 'cqrs_update', 'cqrs_save')):
        return REVISION
    return CONTENT


def reconciled_models() -> list[Any]:
    """This service's replica models that take part in reconciliation."""
    return [model for model in ReplicaRegistry.models() if mode(model) != OFF]


def compared_fields(model: Any) -> dict[str, Any]:
    """``{master key: replica field}`` of the fields a content check compares.

    With ``CQRS_MAPPING``: its targets (and ``cqrs_updated``); without: every concrete field. The
    primary key and ``cqrs_revision`` are compared anyway.
    """
    skip = {model._meta.pk.attname, FIELD_REVISION}
    mapping = model.CQRS_MAPPING
    pairs: dict[str, Any] = {}
    if mapping is None:
        for field in model._meta.concrete_fields:
            if field.attname not in skip:
                pairs[field.name] = field
        return pairs
    for source, target in mapping.items():
        field = field_for_key(model, target)
        if field is not None and field.attname not in skip:
            pairs[source] = field
    if FIELD_UPDATED not in mapping.values():
        pairs[FIELD_UPDATED] = model._meta.get_field(FIELD_UPDATED)
    return pairs


def field_kinds(model: Any) -> dict[str, str]:
    """``{master key: kind}`` the replica asks the master to compare."""
    return {key: field_kind(field) for key, field in compared_fields(model).items()}


def replica_rows(model: Any, fields: dict[str, str] | None) -> Iterator[tuple[Any, int, str]]:
    """``(pk in JSON form, revision, content digest)`` of every replica row (digest '' without fields)."""
    using = router.db_for_read(model)
    pairs = compared_fields(model)
    keys = sorted(key for key in (fields or {}) if key in pairs)
    names = [model._meta.pk.attname, FIELD_REVISION, *(pairs[key].attname for key in keys)]
    kinds = [(fields or {})[key] for key in keys]
    queryset = model._default_manager.using(using).order_by().values_list(*names)
    for row in queryset.iterator(chunk_size=CHUNK):
        content = content_digest(zip(keys, kinds, map(to_json, row[2:]), strict=True)) if keys else ''
        yield to_json(row[0]), row[1], content


def master_rows(model: Any, fields: dict[str, str] | None, using: str,
                pks: list[Any] | None = None) -> Iterator[tuple[Any, int, str, Any]]:
    """``(pk in JSON form, revision, content digest, instance or None)`` of master rows.

    Without ``fields`` only pks and revisions are read. ``pks`` limits the rows (Python pk values).
    """
    manager = model._base_manager.using(using)
    if not fields:
        queryset = manager.order_by().values_list('pk', FIELD_REVISION)
        if pks is not None:
            queryset = queryset.filter(pk__in=pks)
        for pk, revision in queryset.iterator(chunk_size=CHUNK):
            yield to_json(pk), revision, '', None
        return
    queryset = model.relate_cqrs_serialization(manager).order_by()
    if pks is not None:
        queryset = queryset.filter(pk__in=pks)
    resolved: dict[str, str | None] | None = None
    for instance in queryset.iterator(chunk_size=CHUNK):
        data = instance.to_cqrs_dict(using=using)
        if resolved is None:
            resolved = {key: resolve_key(key, data) for key in fields}
        values = [(key, kind, data.get(resolved[key] or '')) for key, kind in fields.items()]
        yield to_json(instance.pk), getattr(instance, FIELD_REVISION), content_digest(values), instance


def agreed_fields(model: Any, fields: dict[str, str], using: str) -> dict[str, str]:
    """Those of the replica's ``fields`` the master sends (a replica-only column is not compared)."""
    if not fields:
        return {}
    first = model.relate_cqrs_serialization(model._base_manager.using(using)).order_by('pk').first()
    if first is None:
        return dict(fields)
    data = first.to_cqrs_dict(using=using)
    return {key: kind for key, kind in fields.items() if resolve_key(key, data) is not None}


def summarize(rows: Iterator[tuple[Any, ...]], buckets: int) -> Summary:
    """The table summary of ``rows`` (``(pk, revision, content, ...)`` tuples)."""
    summary = Summary(buckets)
    for row in rows:
        key = key_of(row[0])
        summary.add(key, row_digest(key, row[1], row[2]))
    return summary


def in_buckets(rows: Iterator[tuple[Any, ...]], buckets: int, wanted: set[int]) -> Iterator[tuple[Any, ...]]:
    """The rows whose pk falls in one of the ``wanted`` buckets."""
    for row in rows:
        if bucket_of(key_of(row[0]), buckets) in wanted:
            yield row
