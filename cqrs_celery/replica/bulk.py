"""Write many replica rows with one statement per chunk, not Django's ``bulk_update``/``bulk_create``.

New rows (:func:`insert_rows`) are written from the values each field prepares (``pre_save`` then
``get_db_prep_save``, as ``bulk_create`` does), without Django compiling every value into an
expression first:

* SQLite: ``INSERT … VALUES (…), (…)`` built once per chunk. The compilation was more than half of
  ``bulk_create``'s time there (new rows of a 500-row group: 57→44 µs a row applied, in process).
* PostgreSQL: one ``INSERT … SELECT * FROM UNNEST(%s::type[], …)`` whose parameters are the
  columns' array texts, written here (``models.array_text``). Django 5.2's ``bulk_create`` sends
  the same UNNEST, but psycopg's client-side cursor quotes each array element in Python, about
  40 % of a group's time (a 500-row group during ``cqrs_sync``: 69→43 ms); a literal ``VALUES``
  list of thousands of parameters was slower still. A column whose values array text does not
  take (floats, durations, bytes, JSON, IP addresses) leaves the rows to ``bulk_create``.
* A single row (a single-row message, the usual case at a steady rate), on either database: one
  plain ``INSERT … VALUES (…)``, its SQL written here, not compiled by the ORM.

A model or a value this does not cover (another database, a parent table, a row without its
primary key, a value that is an expression such as a ``db_default``, a field with its own SQL
placeholder) takes ``bulk_create`` too.

Changed rows (:func:`update_rows`):

Django's ``bulk_update`` builds a ``CASE WHEN pk = … THEN … END`` expression per field, as Python
objects compiled for every row: on the benchmark's 9-field rows it manages about 900 rows/s, slower
than one UPDATE per row, and it made the replica the bottleneck of every update-heavy workload.

Where the database can join an UPDATE to a list of values (PostgreSQL; SQLite from 3.33), the rows
go as one statement per chunk instead::

    WITH v(c0, c1, …) AS (VALUES (%s, %s, …), …)
    UPDATE table SET col1 = v.c1, … FROM v WHERE table.pk = v.c0

(10–40× faster on the same rows). Values are prepared by each field (``get_db_prep_save``), as
Django's own writes do. On PostgreSQL each value is cast to its column's type *without* a length
or precision (``varchar``, not ``varchar(40)``): an explicit cast to ``varchar(40)`` would cut a
longer value silently, while the assignment to the column keeps the database's own checks (too
long, out of range) and raises as a plain UPDATE would.

Anything else (another database, a field of a parent table, a field without a cast type, a value
that is an expression) takes Django's ``bulk_update``.
"""

from __future__ import annotations

import datetime
import sqlite3
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db import connections, models

from cqrs_celery.models import array_text, cast_type
from cqrs_celery.serialization import RETURNED_AS_IS

#: Rows per statement at most (and fewer where the database limits query parameters).
CHUNK_ROWS = 1000


def insert_rows(model: Any, objs: Sequence[Any], using: str) -> None:
    """Insert ``objs`` (new rows, primary keys set) into the database ``using``, as ``bulk_create`` would."""
    if not objs:
        return
    connection = connections[using]
    meta = model._meta.concrete_model._meta
    fields = [field for field in meta.local_concrete_fields if not getattr(field, 'generated', False)]
    if connection.vendor not in ('sqlite', 'postgresql') or meta.parents or any(obj.pk is None for obj in objs):
        model._default_manager.using(using).bulk_create(objs)
        return
    if any(field.is_relation for field in fields):
        for obj in objs:  # a related object assigned but not saved is refused, as by bulk_create
            obj._prepare_related_fields_for_save(operation_name='bulk_create')
    readers = [(field.attname, _plain_pre_save(field), field) for field in fields]
    values = [getattr(obj, attname) if plain else field.pre_save(obj, True)
              for obj in objs for attname, plain, field in readers]
    if any(hasattr(value, 'resolve_expression') for value in values) or any(map(_own_placeholder, fields)):
        model._default_manager.using(using).bulk_create(objs)
        return
    if connection.vendor == 'sqlite' or len(objs) == 1:
        _insert_values(connection, meta, fields, values, len(objs))
    elif not _insert_unnest(connection, meta, fields, values):
        model._default_manager.using(using).bulk_create(objs)
        return
    for obj in objs:
        obj._state.adding = False
        obj._state.db = using


def _own_placeholder(field: Any) -> bool:
    """True when ``field`` writes its value with SQL of its own (an array or range cast, a geometry), not ``%s``.

    A BinaryField's placeholder is ``%s`` on PostgreSQL and SQLite.
    """
    method = getattr(type(field), 'get_placeholder', None)
    return method is not None and method is not getattr(models.BinaryField, 'get_placeholder', None)


def _plain_pre_save(field: Any) -> bool:
    """True when ``field.pre_save`` of a new row only reads the attribute (no ``auto_now``, no file)."""
    method = type(field).pre_save
    if method is models.Field.pre_save:
        return True
    return method in (models.DateField.pre_save, models.DateTimeField.pre_save) \
        and not field.auto_now and not field.auto_now_add


def _insert_unnest(connection: Any, meta: Any, fields: list[Any], values: list[Any]) -> bool:
    """PostgreSQL: the rows as ``INSERT … SELECT * FROM UNNEST(%s::type[], …)``, one array text per
    column; False (nothing written) when a column's type or values cannot go as array text."""
    casts = [cast_type(field, connection) for field in fields]
    if any(cast is None for cast in casts):
        return False
    width = len(fields)
    arrays = []
    for index, field in enumerate(fields):
        kind = RETURNED_AS_IS.get(type(field))
        moment = type(field) is models.DateTimeField and settings.USE_TZ
        text = array_text(
            value if type(value) is kind
            # the backend sends an aware datetime as it is (adapt_datetimefield_value)
            else value if moment and type(value) is datetime.datetime and value.utcoffset() is not None
            else field.get_db_prep_save(value, connection)
            for value in values[index::width])
        if text is None:
            return False
        arrays.append(text)
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(f'INSERT INTO {quote(meta.db_table)} ({", ".join(quote(field.column) for field in fields)}) '
                       f'SELECT * FROM UNNEST({", ".join(f"%s::{cast}[]" for cast in casts)})', arrays)
    return True


def _insert_values(connection: Any, meta: Any, fields: list[Any], values: list[Any], count: int) -> None:
    """The rows as ``INSERT … VALUES (…), (…)``, as many rows per statement as parameters allow."""
    quote = connection.ops.quote_name
    head = f'INSERT INTO {quote(meta.db_table)} ({", ".join(quote(field.column) for field in fields)}) VALUES '
    row = '(' + ', '.join(['%s'] * len(fields)) + ')'
    width = len(fields)
    per_statement = max(1, min(CHUNK_ROWS, _query_params(connection) // width))
    # A text, int or boolean value of a built-in field that returns it unchanged is the value the
    # database gets (its preparation would only convert it into itself again). An aware datetime
    # of a plain DateTimeField goes to PostgreSQL as it is (adapt_datetimefield_value); Django's
    # SQLite backend makes it naive in the connection's time zone, as text.
    as_is = [RETURNED_AS_IS.get(type(field)) for field in fields]
    sqlite = connection.vendor == 'sqlite'
    zone = connection.timezone if settings.USE_TZ and sqlite else None
    moments = [settings.USE_TZ and type(field) is models.DateTimeField for field in fields]
    params: list[Any] = [
        value if type(value) is kind
        else (str(value.astimezone(zone).replace(tzinfo=None)) if sqlite else value)
        if moment and type(value) is datetime.datetime and value.utcoffset() is not None
        else field.get_db_prep_save(value, connection)
        for value, field, kind, moment in zip(values, fields * count, as_is * count, moments * count, strict=True)]
    with connection.cursor() as cursor:
        for start in range(0, count, per_statement):
            rows = min(per_statement, count - start)
            cursor.execute(head + ', '.join([row] * rows), params[start * width:(start + rows) * width])


def _query_params(connection: Any) -> int:
    """How many parameters one statement may carry on ``connection``."""
    if connection.vendor == 'sqlite':
        connection.ensure_connection()
        getlimit = getattr(connection.connection, 'getlimit', None)  # Python 3.11+
        if getlimit is not None:
            return int(getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    return int(connection.features.max_query_params or 65535)


def update_rows(model: Any, objs: Sequence[Any], fields: Sequence[str], using: str) -> None:
    """Write ``fields`` of ``objs`` (rows that exist) to the database ``using``."""
    if not objs or not fields:
        return
    connection = connections[using]
    meta = model._meta.concrete_model._meta
    columns = [meta.pk, *(meta.get_field(name) for name in fields)]
    if not _fast_path(connection, meta, columns, objs):
        model._default_manager.using(using).bulk_update(objs, list(fields))
        return
    quote = connection.ops.quote_name
    names = [f'c{i}' for i in range(len(columns))]
    if connection.vendor == 'postgresql':
        row = '(' + ', '.join(f'%s::{cast_type(field, connection)}' for field in columns) + ')'
    else:
        row = '(' + ', '.join(['%s'] * len(columns)) + ')'
    table = quote(meta.db_table)
    assignments = ', '.join(f'{quote(field.column)} = v.{name}' for field, name in zip(columns[1:], names[1:],
                                                                                       strict=True))
    limit = connection.features.max_query_params
    per_statement = max(1, min(CHUNK_ROWS, (limit or CHUNK_ROWS * len(columns)) // len(columns)))
    with connection.cursor() as cursor:
        for start in range(0, len(objs), per_statement):
            chunk = objs[start:start + per_statement]
            params = [field.get_db_prep_save(getattr(obj, field.attname), connection)
                      for obj in chunk for field in columns]
            cursor.execute(f'WITH v({", ".join(names)}) AS (VALUES {", ".join([row] * len(chunk))}) '
                           f'UPDATE {table} SET {assignments} FROM v '
                           f'WHERE {table}.{quote(columns[0].column)} = v.{names[0]}', params)


def _fast_path(connection: Any, meta: Any, columns: list[Any], objs: Sequence[Any]) -> bool:
    if connection.vendor == 'sqlite':
        if sqlite3.sqlite_version_info < (3, 33):
            return False
    elif connection.vendor != 'postgresql':
        return False
    local = set(meta.local_concrete_fields)
    if any(field not in local or field.cast_db_type(connection) is None for field in columns):
        return False
    return not any(hasattr(getattr(obj, field.attname), 'resolve_expression') for obj in objs for field in columns)
