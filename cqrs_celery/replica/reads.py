"""Read stored replica rows and tombstones by key, with each statement's SQL built once per model.

Every group (a single-row message of a model on the bulk path too) starts with these reads: the
stored rows of its primary keys, locked, and the tombstones of those that are missing or deleted.
Building them through the ORM compiled the same SELECT again for every message: on the
benchmark's wide row (19 columns), compiling took about a quarter of the worker's time for a
single-row message. Here the SQL is compiled once per (model, database, vendor syntax) and reused
with the keys as its one parameter; the values are converted by the same converters Django would
use and the rows made by ``Model.from_db``.

The per-row path (a model with its own ``cqrs_*`` methods, the model API called directly) reads
its tombstone here too, but its row through the ORM each time, as django-cqrs does: a model's
code or a project's tests may rely on ``select_for_update()`` being asked for.

The compiled form is reused only when the model's default manager adds nothing that could change
from one call to the next (no parameters, no related or annotated columns, every concrete field);
otherwise the rows are read through the ORM each time, as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from django.db import connections

from cqrs_celery.models import ReplicaTombstone, filter_in, pk_hash, pk_key, tombstone_revisions, where_in


@dataclasses.dataclass(frozen=True)
class _Select:
    """A compiled SELECT of a model's rows whose one parameter is the ``where_in`` value."""

    sql: str
    attnames: list[str]
    #: ``{column index: (converters, expression)}``, as ``SQLCompiler.get_converters`` gives them.
    converters: dict[int, tuple[list[Any], Any]]


#: A parameter no manager adds: the compiled SELECT is reused only when it is the query's one parameter.
_MARKER = object()
_selects: dict[tuple[Any, str, bool, str], _Select | None] = {}


def stored_rows(model: Any, using: str, pks: Iterable[Any]) -> dict[Any, Any]:
    """``{pk: instance}`` of the rows of ``model`` among ``pks`` (Python values), locked where the database can."""
    pks = set(pks)
    connection = connections[using]
    lock = bool(connection.features.has_select_for_update)
    where = where_in(connection, model._meta.db_table, model._meta.pk, list(pks))
    select = None if where is None else _compiled(model, using, lock, where[0])
    if select is None:
        queryset = model._default_manager.using(using)
        if lock:
            queryset = queryset.select_for_update()
        return {obj.pk: obj for obj in filter_in(queryset, model._meta.pk, pks)}
    assert where is not None
    with connection.cursor() as cursor:
        cursor.execute(select.sql, [where[1]])
        rows = cursor.fetchall()
    stored = {}
    for row in rows:
        if select.converters:
            row = list(row)
            for index, (converters, expression) in select.converters.items():
                value = row[index]
                for converter in converters:
                    value = converter(value, expression, connection)
                row[index] = value
        obj = model.from_db(using, select.attnames, row)
        stored[obj.pk] = obj
    return stored


def _compiled(model: Any, using: str, lock: bool, where: str) -> _Select | None:
    key = (model, using, lock, where)
    if key not in _selects:
        _selects[key] = _compile(model, using, lock, where)
    return _selects[key]


def _compile(model: Any, using: str, lock: bool, where: str) -> _Select | None:
    queryset = model._default_manager.using(using)
    if lock:
        queryset = queryset.select_for_update()
    query = queryset.extra(where=[where], params=[_MARKER]).query
    if query.select_related or query.annotations or query.deferred_loading[0] or not query.default_cols:
        return None
    compiler = query.get_compiler(using)
    sql, params = compiler.as_sql()
    fields = model._meta.concrete_fields
    columns = [expression for expression, _sql, _alias in compiler.select]
    if len(params) != 1 or params[0] is not _MARKER or len(columns) != len(fields):
        return None
    if any(getattr(column, 'target', None) is not field for column, field in zip(columns, fields, strict=True)):
        return None
    return _Select(sql=sql, attnames=[field.attname for field in fields],
                   converters=compiler.get_converters(columns))


def tombstones(using: str, cqrs_id: str, master_pks: Iterable[Any]) -> dict[str, int]:
    """``{pk_key(pk): revision}`` of the replica tombstones among ``master_pks`` (one query, none for no pk)."""
    master_pks = list(master_pks)
    if not master_pks:
        return {}
    connection = connections[using]
    meta = ReplicaTombstone._meta
    hashes = sorted({pk_hash(pk_key(pk)) for pk in master_pks})
    where = where_in(connection, meta.db_table, meta.get_field('pk_hash'), hashes)
    if where is None:
        return tombstone_revisions(ReplicaTombstone, using, cqrs_id, master_pks)
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    value, revision, owner = (f'{table}.{quote(name)}' for name in ('pk_value', 'revision', 'cqrs_id'))  # (columns)
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT {value}, {revision} FROM {table} WHERE {owner} = %s AND {where[0]}',
                       [cqrs_id, where[1]])
        return dict(cursor.fetchall())
