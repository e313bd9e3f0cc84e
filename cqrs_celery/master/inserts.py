"""A master row's INSERT with its SQL written once per table and column set.

Django builds every single-row INSERT from scratch: an ``InsertQuery``, its compiler, the
placeholders of each column, the ``RETURNING`` clause: about 15 % of a create's CPU on
PostgreSQL (the benchmark's row, measured in one process), for the same text at every save of
the same columns.
:func:`insert` writes that text once per database connection alias, table, column set and
returned columns, and runs it with the values Django's compiler would send
(``pre_save(add=True)`` then ``get_db_prep_save``), through ``connection.cursor()`` as Django does
(so ``DEBUG`` query logs, ``execute_wrapper`` and broken-transaction checks all see it).

It answers only the plain case and returns ``None`` for everything else, which the caller then
hands to Django's own insert: another database than PostgreSQL or SQLite, ``raw`` saves (fixture
loading), a value that is an expression (``F()``, ``Now()``, ``db_default``), a field with its own
placeholder SQL (geometry fields), returned columns that need converting back, a base manager whose
queryset has its own ``_insert``, and a row with no column to write.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from django.db import connections
from django.db.models import QuerySet
from django.db.models.sql import InsertQuery

from cqrs_celery.constants import FIELD_REVISION

_VENDORS = frozenset({'postgresql', 'sqlite'})


class _Plan(NamedTuple):
    sql: str
    returning_params: tuple[Any, ...]
    #: Index in ``fields`` of ``cqrs_revision`` when the statement computes it, else -1.
    revision_at: int


#: (alias, model, revision SQL, ids of the fields, None, ids of the returned fields) → the plan
#: (None: Django's insert).
_plans: dict[tuple[Any, ...], _Plan | None] = {}


def insert(instance: Any, manager: Any, using: str, fields: Any, returning_fields: Any, raw: bool,
           revision: tuple[str, list[Any]] | None = None) -> list[Any] | None:
    """What ``Model._do_insert`` returns for ``instance``, or ``None`` when Django's insert must run.

    ``revision``: SQL and parameters computing ``cqrs_revision`` in the statement itself (the
    tombstone's subquery, the trigger's payload); the row's revision is then returned as the last
    column of the returned row.
    """
    if raw or not fields:
        return None
    returning = tuple(returning_fields or ())
    revision_sql = None if revision is None else revision[0]
    # By identity: hashing the fields themselves costs more than the rest of the lookup. The
    # model in the key keeps its fields (and so their ids) alive.
    key = (using, manager.model, revision_sql, *map(id, fields), None, *map(id, returning))
    try:
        plan = _plans[key]
    except KeyError:
        plan = _plans[key] = _plan(manager, using, tuple(fields), returning, revision_sql)
    if plan is None:
        return None
    connection = connections[using]
    values: list[Any] = []
    for index, field in enumerate(fields):
        if index == plan.revision_at and revision is not None:
            values.extend(revision[1])
            continue
        value = field.pre_save(instance, True)
        if hasattr(value, 'resolve_expression'):
            return None
        value = field.get_db_prep_save(value, connection)
        if hasattr(value, 'as_sql'):
            return None
        values.append(value)
    with connection.cursor() as cursor:
        cursor.execute(plan.sql, values)
        if not returning and revision is None:
            return []
        ops: Any = connection.ops  # PostgreSQL's and SQLite's have what the base class lacks
        return [ops.fetch_returned_insert_columns(cursor, plan.returning_params)]


def _plan(manager: Any, using: str, fields: tuple[Any, ...], returning: tuple[Any, ...],
          revision_sql: str | None) -> _Plan | None:
    connection = connections[using]
    model = manager.model
    queryset_class: Any = getattr(manager, '_queryset_class', None)
    if (connection.vendor not in _VENDORS or queryset_class is None
            or queryset_class._insert is not QuerySet._insert  # type: ignore[attr-defined]
            or any(getattr(field, 'get_placeholder', None) is not None for field in fields)):
        return None
    placeholders = ['%s'] * len(fields)
    revision_at = -1
    if revision_sql is not None:
        at = [index for index, field in enumerate(fields) if field.attname == FIELD_REVISION]
        if not at:
            return None  # a table of a multi-table model without the revision
        revision_at = at[0]
        placeholders[revision_at] = f'({revision_sql})'
        returning = (*returning, fields[revision_at])
    if returning and not connection.features.can_return_columns_from_insert:
        return None
    table = model._meta.db_table
    if returning and InsertQuery(model).get_compiler(using=using).get_converters(
            [field.get_col(table) for field in returning]):
        return None
    quote = connection.ops.quote_name
    columns = ', '.join(quote(field.column) for field in fields)
    parts = [connection.ops.insert_statement(on_conflict=None), quote(table), f'({columns})',
             f'VALUES ({", ".join(placeholders)})']
    returning_params: tuple[Any, ...] = ()
    if returning:
        ops: Any = connection.ops
        sql, returning_params = ops.return_insert_columns(list(returning))
        if not sql:
            return None
        parts.append(sql)
    return _Plan(' '.join(parts), tuple(returning_params), revision_at)


def forget() -> None:
    """Write the statements again (tests that change a model's table or columns)."""
    _plans.clear()
