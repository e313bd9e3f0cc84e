"""Tables cqrs_celery keeps on each side: tombstones of deleted rows, keyed by CQRS_ID and pk."""

from __future__ import annotations

import datetime
import decimal
import hashlib
import re
import uuid
from collections.abc import Iterable
from typing import Any

import ujson
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, models
from django.utils import timezone

# Without this, a project that forgot the app gets Django's generic "doesn't declare an explicit
# app_label" RuntimeError about a table of ours, naming nothing the user wrote.
if apps.apps_ready and not apps.is_installed('cqrs_celery'):
    raise ImproperlyConfigured(
        "cqrs_celery is not in INSTALLED_APPS: add 'cqrs_celery' to INSTALLED_APPS in the settings of every "
        'service that uses cqrs_celery (master and replica), then run migrate.'
    )


def pk_key(pk: Any) -> str:
    """The text a JSON-safe primary key is stored under in a tombstone table."""
    return pk if isinstance(pk, str) else ujson.dumps(pk)


def pk_hash(key: str) -> str:
    """The fixed-size key a tombstone is found by, whatever the length of its pk's text."""
    return hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()


class _Tombstone(models.Model):
    cqrs_id = models.CharField(max_length=200)
    #: The pk's text (``pk_key``), any length.
    pk_value = models.TextField()
    #: SHA-256 of ``pk_value``: the unique key, so a pk of any length can have a tombstone.
    pk_hash = models.CharField(max_length=64)
    #: Revision of the DELETE: a SAVE at or below it is older than the deletion.
    revision = models.BigIntegerField()
    deleted_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f'{self.cqrs_id}:{self.pk_value}@{self.revision}'

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.pk_hash = pk_hash(self.pk_value)
        super().save(*args, **kwargs)


class MasterTombstone(_Tombstone):
    """Last revision of a deleted master row, so a row re-inserted with that pk continues from it."""

    class Meta:
        constraints = [models.UniqueConstraint(fields=['cqrs_id', 'pk_hash'], name='cqrs_master_tomb_key')]


class ReplicaTombstone(_Tombstone):
    """Revision at which a replica row was deleted, so a late SAVE cannot bring it back."""

    class Meta:
        constraints = [models.UniqueConstraint(fields=['cqrs_id', 'pk_hash'], name='cqrs_replica_tomb_key')]


class OutboxEvent(models.Model):
    """A change written in the same transaction as the change itself, deleted once published.

    A SAVE event names the row (``cqrs_id``, ``pk_value``) and carries only what the save alone
    knows (``previous_data``, ``meta``, ``correlation_id``) in ``envelope``; the publisher reads
    the row's committed state when it publishes. A DELETE event carries its whole envelope, since
    the row is gone by then.
    """

    cqrs_id = models.CharField(max_length=200)
    #: The JSON form of the primary key (any length).
    pk_value = models.TextField()
    signal_type = models.CharField(max_length=8, default='SAVE')
    #: Revision of a DELETE; a SAVE's revision is read with the row at publish time.
    revision = models.BigIntegerField(null=True)
    #: JSON text: a DELETE's v1 envelope, or a SAVE's ``{previous_data, meta, correlation_id}`` ('' when none).
    envelope = models.TextField(blank=True, default='')
    #: Not indexed: the events are taken, and their age found, in ``id`` order (see ``Meta``).
    created = models.DateTimeField(default=timezone.now)
    #: Failed publish attempts of this event (a broker outage does not count).
    attempts = models.IntegerField(default=0)
    #: The last publish error of this event.
    error = models.TextField(blank=True, default='')
    #: Not taken by the publisher before this time (back-off after a failure).
    available_at = models.DateTimeField(default=timezone.now)
    #: Set aside after too many failed attempts: kept, shown by ``cqrs_outbox status``, and
    #: published again by ``cqrs_outbox retry``.
    set_aside = models.BooleanField(default=False)

    class Meta:
        # The one index a save writes besides the table's own: the events not set aside, in ``id``
        # order, which is the order the publisher takes them in, so a drain reads the oldest
        # ``limit`` of them and stops, however long the backlog, and set-aside events never lie in
        # its way. (An index on ``set_aside, available_at`` had SQLite sort the whole backlog at
        # every drain; one on ``created`` served nothing a save should pay for.)
        indexes = [models.Index(fields=['id'], condition=models.Q(set_aside=False), name='cqrs_outbox_pending')]

    def __str__(self) -> str:
        return f'{self.signal_type} {self.cqrs_id}:{self.pk_value}'


def record_tombstone(model: type[_Tombstone], using: str, cqrs_id: str, pk: Any, revision: int) -> None:
    """Store ``revision`` for the pk unless a higher one is already there (caller holds the lock).

    On PostgreSQL and SQLite one statement (``INSERT … ON CONFLICT … DO UPDATE … WHERE``): a
    master's delete pays one round trip for its tombstone, not an UPDATE, a SELECT and an INSERT.
    """
    key = pk_key(pk)
    connection = connections[using]
    if connection.vendor in _UPSERTS:
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        with connection.cursor() as cursor:
            cursor.execute(upsert_sql(model, connection), [cqrs_id, key, pk_hash(key), revision, now])
        return
    rows = model._default_manager.using(using).filter(cqrs_id=cqrs_id, pk_hash=pk_hash(key))
    updated = rows.filter(revision__lt=revision).update(revision=revision, deleted_at=timezone.now())
    if not updated and not rows.exists():
        model._default_manager.using(using).create(cqrs_id=cqrs_id, pk_value=key, revision=revision)


#: Databases whose tombstone is stored by one upsert statement (see ``record_tombstone``).
_UPSERTS = frozenset({'postgresql', 'sqlite'})
_upserts: dict[tuple[type[_Tombstone], str, str], str] = {}


def upsert_sql(model: type[_Tombstone], connection: Any, values: str = 'VALUES (%s, %s, %s, %s, %s)') -> str:
    """The upsert of one tombstone, written once per model, database kind and source of its values.

    ``values`` gives ``cqrs_id``, ``pk_value``, ``pk_hash``, ``revision`` and ``deleted_at`` (by
    default as parameters, in that order). The conflict target is the unique ``(cqrs_id,
    pk_hash)`` both tombstone tables have.
    """
    sql = _upserts.get((model, connection.vendor, values))
    if sql is None:
        quote = connection.ops.quote_name
        table = quote(model._meta.db_table)
        revision, deleted_at = quote('revision'), quote('deleted_at')
        columns = ', '.join(map(quote, ('cqrs_id', 'pk_value', 'pk_hash', 'revision', 'deleted_at')))
        sql = _upserts[(model, connection.vendor, values)] = (
            f'INSERT INTO {table} ({columns}) {values} '
            f'ON CONFLICT ({quote("cqrs_id")}, {quote("pk_hash")}) DO UPDATE SET {revision} = EXCLUDED.{revision}, '
            f'{deleted_at} = EXCLUDED.{deleted_at} WHERE {table}.{revision} < EXCLUDED.{revision}')
    return sql


def lock_and_record_deletion(model: type[_Tombstone], using: str, cqrs_id: str, pk: Any, current: str,
                             params: list[Any], fallback: int) -> int | None:
    """Before a delete on PostgreSQL, in one statement: lock the row, read its revision, store the tombstone.

    ``current`` (with ``params``) is the ``SELECT … FOR UPDATE`` of the row's revision; the
    deletion's revision is one past it, or past ``fallback`` when the row is not there. The
    tombstone is stored as ``record_tombstone`` stores it. Returns the deletion's revision, or
    ``None`` where this is not done in one statement (then lock, read and record one by one).
    """
    connection = connections[using]
    if connection.vendor != 'postgresql':
        return None
    key = pk_key(pk)
    upsert = upsert_sql(model, connection, 'SELECT %s, %s, %s, rev, %s FROM deletion')
    sql = (f'WITH deletion AS (SELECT COALESCE(({current}), %s) + 1 AS rev), tombstone AS ({upsert}) '
           'SELECT rev FROM deletion')
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, fallback, cqrs_id, key, pk_hash(key), timezone.now()])
        return int(cursor.fetchone()[0])


def tombstone_revision(model: type[_Tombstone], using: str, cqrs_id: str, pk: Any) -> int | None:
    return (model._default_manager.using(using).filter(cqrs_id=cqrs_id, pk_hash=pk_hash(pk_key(pk)))
            .values_list('revision', flat=True).first())


def tombstone_revisions(model: type[_Tombstone], using: str, cqrs_id: str, pks: list[Any]) -> dict[str, int]:
    """``{pk_key(pk): revision}`` for those of ``pks`` that have a tombstone (one query)."""
    hashes = {pk_hash(pk_key(pk)) for pk in pks}
    rows = filter_in(model._default_manager.using(using).filter(cqrs_id=cqrs_id), model._meta.get_field('pk_hash'),
                     hashes)
    return dict(rows.values_list('pk_value', 'revision'))


_TYPMOD = re.compile(r'\([^)]*\)')


def cast_type(field: Any, connection: Any) -> str | None:
    """The PostgreSQL type to cast a parameter of ``field`` to, without its length or precision.

    An explicit cast to ``varchar(30)`` cuts a longer value short without an error, one to
    ``numeric(10, 2)`` rounds: the bare type leaves those checks to the column itself. ``None``
    for a field without a database type.
    """
    cast = field.cast_db_type(connection)
    return None if cast is None else _TYPMOD.sub('', cast)


def filter_in(queryset: Any, field: Any, values: Iterable[Any]) -> Any:
    """``queryset`` limited to the rows whose ``field`` holds one of ``values`` (Python values).

    On PostgreSQL this is ``column = ANY(%s::type[])``, one array parameter: Django's ``__in``
    compiles and quotes the values one by one, which for a group of 500 rows took longer than the
    query itself (3 ms where the array takes 0.6 ms).
    """
    values = list(values)
    where = where_in(connections[queryset.db], queryset.model._meta.db_table, field, values)
    if where is None:
        return queryset.filter(**{f'{field.name}__in': values})
    return queryset.extra(where=[where[0]], params=[where[1]])


def where_in(connection: Any, table: str, field: Any, values: list[Any]) -> tuple[str, Any] | None:
    """SQL ``table.column IN values`` with one parameter, and that parameter (None: use Django's ``__in``).

    PostgreSQL: ``column = ANY(%s::type[])``. SQLite: ``column IN (SELECT value FROM json_each(%s))``,
    when every value goes as an int or a text (JSON keeps both exactly).
    """
    if not values:
        return None
    column = f'{connection.ops.quote_name(table)}.{connection.ops.quote_name(field.column)}'
    if connection.vendor == 'sqlite' and connection.features.supports_json_field:
        prepared = _prepared(connection, field, values)
        if all(type(value) is int and -2 ** 63 <= value < 2 ** 63 or type(value) is str for value in prepared):
            return f'{column} IN (SELECT value FROM json_each(%s))', ujson.dumps(prepared, ensure_ascii=False)
        return None
    cast = cast_type(field, connection) if connection.vendor == 'postgresql' else None
    if cast is None:
        return None
    prepared = _prepared(connection, field, values)
    return f'{column} = ANY(%s::{cast}[])', array_param(prepared)


#: Django's integer fields, whose database value of a Python int is that int on PostgreSQL and
#: SQLite (``int(value)``; only MySQL's ``validate_autopk_value`` looks at it). Exact classes: a
#: subclass may prepare its values otherwise.
_INTEGER_FIELDS = frozenset({
    models.AutoField, models.BigAutoField, models.SmallAutoField, models.IntegerField, models.BigIntegerField,
    models.SmallIntegerField, models.PositiveIntegerField, models.PositiveBigIntegerField,
    models.PositiveSmallIntegerField,
})


def _prepared(connection: Any, field: Any, values: list[Any]) -> list[Any]:
    """``values`` as the database takes them; ints of an integer field as they are (the drains' and
    the group apply's pk lists: Django's preparation was two calls per value)."""
    if type(field) in _INTEGER_FIELDS and connection.vendor in {'postgresql', 'sqlite'} \
            and all(type(value) is int for value in values):
        return values
    return [field.get_db_prep_value(value, connection) for value in values]


def array_param(values: list[Any]) -> Any:
    """``values`` as the parameter of a PostgreSQL ``%s::type[]``: the array's text when ``array_text`` can write it.

    psycopg adapts a list element by element, which for 500 strings took 4 ms where building the
    array's text (each string quoted, its backslashes and double quotes escaped) takes a tenth of
    that; other values keep psycopg's own adaptation.
    """
    text = array_text(values)
    return values if text is None else text


#: How ``array_text`` writes an element of each type it takes (None, text and bool apart).
_ELEMENT_TEXT: dict[type, Any] = {
    int: str, decimal.Decimal: str, uuid.UUID: str,
    datetime.datetime: datetime.datetime.isoformat, datetime.date: datetime.date.isoformat,
    datetime.time: datetime.time.isoformat,
}


def array_text(values: Iterable[Any]) -> str | None:
    """The text of a PostgreSQL array of ``values``, for ``%s::type[]`` (the cast reads each element).

    Only for None, text, integers, booleans, Decimals, UUIDs, dates, times and datetimes (a
    datetime's ISO form keeps its offset); None when another type is among the values.
    """
    parts = []
    for value in values:
        kind = type(value)
        if kind is str:
            parts.append('"' + value.replace('\\', '\\\\').replace('"', '\\"') + '"')
        elif value is None:
            parts.append('NULL')
        elif kind is bool:
            parts.append('t' if value else 'f')
        else:
            write = _ELEMENT_TEXT.get(kind)
            if write is None:
                return None
            parts.append('"' + write(value) + '"')
    return '{' + ','.join(parts) + '}'


def forget_tombstones(model: type[_Tombstone], using: str, cqrs_id: str, keys: list[str]) -> None:
    """Delete the tombstones of these pk texts (``pk_key``)."""
    model._default_manager.using(using).filter(cqrs_id=cqrs_id, pk_hash__in=[pk_hash(k) for k in keys]).delete()


class ReconciliationRun(models.Model):
    """One reconciliation of a CQRS_ID with one replica queue (see ``cqrs_celery.reconcile``).

    The master records the run it led (drift found, rows repaired, traffic); the replica records the
    report the master sends it at the end, so both sides can show the last run.
    """

    #: The run's id, shared by every message of the run and by the rows both sides record.
    run_id = models.CharField(max_length=64)
    #: ``'master'`` or ``'replica'``: which side recorded this row.
    side = models.CharField(max_length=8)
    cqrs_id = models.CharField(max_length=200)
    queue = models.CharField(max_length=200)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    #: Field content compared (not only revisions).
    content = models.BooleanField(default=False)
    #: The drift was found and reported, nothing was repaired.
    dry_run = models.BooleanField(default=False)
    #: Buckets each side summarised, and those whose digests differed.
    buckets = models.IntegerField(default=0)
    buckets_differing = models.IntegerField(default=0)
    #: Rows the master has and the replica lacks.
    missing = models.IntegerField(default=0)
    #: Rows at an older revision on the replica.
    stale = models.IntegerField(default=0)
    #: Rows at a higher revision on the replica than on the master (e.g. master restored).
    ahead = models.IntegerField(default=0)
    #: Rows whose fields differ at an equal revision.
    changed = models.IntegerField(default=0)
    #: Rows the replica has and the master does not.
    extra = models.IntegerField(default=0)
    #: Rows sent again (SYNC) or deleted (DELETE) on the replica.
    repaired = models.IntegerField(default=0)
    #: Differing rows not sent again: repaired recently and still differing (a repair loop).
    held_back = models.IntegerField(default=0)
    #: Differing rows not sent because they changed on the master moments ago: their own message is
    #: on its way (``reconcile_grace``); the next run checks them again.
    in_flight = models.IntegerField(default=0)
    #: Messages and bytes (JSON task arguments) of the run, repairs included.
    messages = models.IntegerField(default=0)
    bytes = models.BigIntegerField(default=0)
    error = models.TextField(blank=True, default='')
    #: Row keys by kind of drift (capped), and rows repaired with their revisions (repair-loop guard).
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [models.Index(fields=['cqrs_id', 'queue', 'started_at'], name='cqrs_reconcile_last'),
                   models.Index(fields=['run_id'], name='cqrs_reconcile_run')]

    def __str__(self) -> str:
        return f'{self.cqrs_id} → {self.queue} at {self.started_at:%Y-%m-%d %H:%M:%S}'

    @property
    def drift(self) -> int:
        """Rows that differed, every kind together."""
        return self.missing + self.stale + self.ahead + self.changed + self.extra
