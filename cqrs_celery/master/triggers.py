"""Outbox events written by the database itself (PostgreSQL, SQLite): the save pays for its own statement only.

For a master model with nothing for Python to add to its events but the tracked fields' old
values — no ``get_cqrs_meta``/``is_sync_instance`` of its own, and no
``meta_function``/``correlation_function`` configured — an ``AFTER INSERT OR UPDATE`` trigger
writes the outbox event in the same statement as the row, for every write that changed
``cqrs_revision``. ``save()`` then runs as the plain Django save does (one statement, in
autocommit one round trip) and only wakes the publisher after commit.

On SQLite two triggers (``AFTER INSERT``, ``AFTER UPDATE``) do the same, for models whose primary
key is an integer, text or UUID column (``json_quote`` then names the row exactly as Python does)
and that have no tracked fields (SQLite has no setting to hand their old values through).

On PostgreSQL, a model with ``CQRS_TRACKED_FIELDS`` takes the same path: ``save()`` hands the event's payload
(``previous_data``, known before the write) to the trigger inside the row's own statement, as a
transaction-local setting that the revision's value expression sets (:func:`payload_sql`); the
trigger stores it in the event and clears it. A save that wrote the row before in the same
transaction (the revision stays) adds an event with the merged payload; the publisher merges the
events of a row taken together, as it merges those of the Python path.

On PostgreSQL the same trigger also fires ``AFTER DELETE`` for a model whose primary key is an
integer, a UUID or text and that has no ``get_custom_cqrs_delete_data`` of its own: it writes the
deletion's event (revision one past the deleted row's) and the master's tombstone, so a delete
costs the plain Django delete's statements (``pre_delete``/``post_delete`` only mark the instance
and wake the publisher after commit). Its event holds only the time of the deletion; the publisher
builds the same DELETE envelope from it that the Python path stores (``publish.deletion_envelope``).
A row deleted by any statement, not only by ``Model.delete()``/``QuerySet.delete()``, then reaches
the replicas (``TRUNCATE`` fires no row trigger).

Everything else (other databases, models with more to say, multi-table inheritance, other deletes)
takes the Python outbox path of ``publish.py``. Both paths write the same events; the publisher
cannot tell them apart.

Triggers are (re)installed after every ``migrate`` (``post_migrate``), and removed
from models that stop qualifying; until then a model that stopped qualifying keeps a stale trigger,
which ``cqrs_status`` names (``state``). A process uses the trigger path for a table only after it has
seen the trigger in the database (checked once per process and table), and for a model with
tracked fields only a trigger that reads the payload (and for a model whose deletions it should
record, only one that records them); so a database that was not migrated since an
upgrade keeps the Python path and loses nothing.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from django.db import connections, models, transaction

from cqrs_celery.conf import get_settings
from cqrs_celery.constants import FIELD_REVISION
from cqrs_celery.master import tracker
from cqrs_celery.models import MasterTombstone, OutboxEvent, upsert_sql
from cqrs_celery.registry import MasterRegistry

logger = logging.getLogger(__name__)

_seen: dict[tuple[str, str], bool] = {}


def _function_sql(connection: Any, model: Any, name: str) -> str:
    """The trigger function of one table: its CQRS_ID and pk column are written into it.

    The function is as short as the model allows, since it runs inside every save: the payload
    setting is read only for a model with tracked fields, and an integer pk is named by its text,
    which is its JSON (``to_jsonb`` alone cost about 8 µs of a 190 µs INSERT of the benchmark's row).
    """
    quote = connection.ops.quote_name
    column = f'NEW.{quote(model._meta.pk.column)}'
    pk_json = f'{column}::text' if type(model._meta.pk) in _INTEGER_PKS else f'to_jsonb({column})::text'

    def insert(envelope: str) -> str:
        return (f'INSERT INTO {quote(OutboxEvent._meta.db_table)} (cqrs_id, pk_value, signal_type, revision, '
                f'envelope, created, attempts, error, available_at, set_aside)\n'
                f"    VALUES ({_literal(model.CQRS_ID)}, {pk_json}, 'SAVE', NEW.cqrs_revision, {envelope}, now(), 0, "
                f"'', now(), false);")

    deletion = _deletion_sql(connection, model) if serves_deletes(connection, model) else ''
    if not tracker.has_tracker(model):
        return f'''
CREATE OR REPLACE FUNCTION {quote(name)}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN{deletion}
    IF TG_OP = 'UPDATE' AND NEW.cqrs_revision IS NOT DISTINCT FROM OLD.cqrs_revision THEN
        RETURN NULL;
    END IF;
    {insert("''")}
    RETURN NULL;
END $$'''
    setting = _literal(payload_setting(model))
    return f'''
CREATE OR REPLACE FUNCTION {quote(name)}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    payload text := COALESCE(current_setting({setting}, true), '');
BEGIN{deletion}
    IF payload <> '' THEN
        PERFORM set_config({setting}, '', true);
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.cqrs_revision IS NOT DISTINCT FROM OLD.cqrs_revision AND payload = '' THEN
        RETURN NULL;
    END IF;
    {insert('payload')}
    RETURN NULL;
END $$'''


def _deletion_sql(connection: Any, model: Any) -> str:
    """The DELETE branch of a table's trigger function: the deletion's event and the master's tombstone.

    The deletion's revision is one past the deleted row's (``OLD``, locked by the DELETE itself).
    The event's ``envelope`` holds only the time of the deletion, as UTC; the publisher builds the
    envelope from it (``publish.deletion_envelope``). The tombstone is stored as
    ``models.record_tombstone`` stores it: its key is the pk's text, which for the primary keys
    served here (:data:`_DELETE_PKS`) is what ``pk_key`` makes of the pk's JSON.
    """
    quote = connection.ops.quote_name
    column = f'OLD.{quote(model._meta.pk.column)}'
    pk_json = f'{column}::text' if type(model._meta.pk) in _INTEGER_PKS else f'to_jsonb({column})::text'
    cqrs_id, revision = _literal(model.CQRS_ID), f'OLD.{quote(FIELD_REVISION)} + 1'
    key_hash = f"encode(sha256(convert_to({column}::text, 'UTF8')), 'hex')"
    tombstone = upsert_sql(MasterTombstone, connection,
                           f'VALUES ({cqrs_id}, {column}::text, {key_hash}, {revision}, now())')
    return f'''
    IF TG_OP = 'DELETE' THEN
        INSERT INTO {quote(OutboxEvent._meta.db_table)} (cqrs_id, pk_value, signal_type, revision, envelope, created,
            attempts, error, available_at, set_aside)
        VALUES ({cqrs_id}, {pk_json}, 'DELETE', {revision},
            json_build_object('deleted', now() AT TIME ZONE 'UTC')::text, now(), 0, '', now(), false);
        {tombstone};
        RETURN NULL;
    END IF;'''


def payload_setting(model: Any) -> str:
    """The transaction-local setting through which ``save()`` hands an event's payload to the trigger.

    Named after the table (hashed: a setting's name must be a plain identifier), so that a payload
    can only ever reach its own table's trigger.
    """
    return f'cqrs_celery.p{hashlib.sha256(model._meta.db_table.encode()).hexdigest()[:24]}'


def payload_sql(model: Any, payload: str) -> tuple[str, list[str]]:
    """SQL to add to the revision's value in the row's statement: 0, after setting the payload."""
    return '0 * length(set_config(%s, %s, true))', [payload_setting(model), payload]


def trigger_name(model: Any) -> str:
    """The trigger's name on the model's table (PostgreSQL names are at most 63 bytes)."""
    name = f'cqrs_outbox_{model._meta.db_table}'
    if len(name.encode()) <= 63:
        return name
    return f'cqrs_outbox_{hashlib.sha256(model._meta.db_table.encode()).hexdigest()[:24]}'


#: Primary keys whose text in PostgreSQL is their JSON (exact types, as below).
_INTEGER_PKS = frozenset({
    models.AutoField, models.BigAutoField, models.SmallAutoField, models.IntegerField, models.BigIntegerField,
    models.SmallIntegerField, models.PositiveIntegerField, models.PositiveBigIntegerField,
    models.PositiveSmallIntegerField,
})
#: Primary keys whose deletion a PostgreSQL trigger records: their text in PostgreSQL is the
#: tombstone's key (``models.pk_key`` of their JSON: an integer's digits, a UUID's canonical form,
#: a string itself) and their JSON is ``to_jsonb``'s, as for the saves' events.
_DELETE_PKS = _INTEGER_PKS | frozenset({
    models.UUIDField, models.CharField, models.TextField, models.SlugField, models.EmailField,
})
#: Primary keys whose SQLite value the trigger can write as ``outbox.outbox_pk`` writes the pk
#: (exact types: a subclass may store something else than the value Python sends).
_SQLITE_PKS = _INTEGER_PKS | frozenset({
    models.CharField, models.TextField, models.SlugField, models.EmailField,
    models.UUIDField,
})
#: What an SQLite trigger writes for ``created``/``available_at``: UTC text as Django stores datetimes.
_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"


def _sqlite_pk(connection: Any, model: Any) -> str:
    """SQL naming the new row as ``outbox.outbox_pk`` does: its pk as JSON text."""
    column = f'NEW.{connection.ops.quote_name(model._meta.pk.column)}'
    if type(model._meta.pk) is models.UUIDField:  # stored as 32 hex digits; Python sends str(uuid)
        spans = ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))
        parts = [f'substr({column}, {start}, {length})' for start, length in spans]
        column = 'lower(' + " || '-' || ".join(parts) + ')'
    return f'json_quote({column})'


def _sqlite_sql(connection: Any, model: Any, name: str) -> list[str]:
    """The two triggers of one table on SQLite (INSERT; UPDATE that changed the revision)."""
    quote = connection.ops.quote_name
    insert = (f'INSERT INTO {quote(OutboxEvent._meta.db_table)} (cqrs_id, pk_value, signal_type, revision, envelope, '
              f'created, attempts, error, available_at, set_aside) '
              f"VALUES ({_literal(model.CQRS_ID)}, {_sqlite_pk(connection, model)}, 'SAVE', "
              f"NEW.{quote(FIELD_REVISION)}, '', {_SQLITE_NOW}, 0, '', {_SQLITE_NOW}, 0);")
    table, revision = quote(model._meta.db_table), quote(FIELD_REVISION)
    return [f'CREATE TRIGGER {quote(name)} AFTER INSERT ON {table} FOR EACH ROW BEGIN {insert} END',
            f'CREATE TRIGGER {quote(_sqlite_update_name(name))} AFTER UPDATE ON {table} FOR EACH ROW '
            f'WHEN NEW.{revision} IS NOT OLD.{revision} BEGIN {insert} END']


def _sqlite_update_name(name: str) -> str:
    return f'{name}_update'


def serves(connection: Any, model: Any) -> bool:
    """True when the database behind ``connection`` can write ``model``'s events itself."""
    if connection.vendor == 'postgresql':
        return qualifies(model)
    if connection.vendor == 'sqlite':
        return (qualifies(model) and not tracker.has_tracker(model) and type(model._meta.pk) in _SQLITE_PKS
                and connection.features.supports_json_field)
    return False


def serves_deletes(connection: Any, model: Any) -> bool:
    """True when the database behind ``connection`` records ``model``'s deletions itself (PostgreSQL).

    Besides what ``serves`` asks: a primary key of :data:`_DELETE_PKS`, and no
    ``get_custom_cqrs_delete_data`` of the model's own (the database cannot call it).
    """
    return (connection.vendor == 'postgresql' and serves(connection, model) and type(model._meta.pk) in _DELETE_PKS
            and model.get_custom_cqrs_delete_data is _base().get_custom_cqrs_delete_data)


def deletes_active(using: str, model: Any) -> bool:
    """True when this deletion's event and tombstone are written by the database (see ``active``)."""
    connection = connections[using]
    return connection.vendor == 'postgresql' and active(using, model, connection) and serves_deletes(connection, model)


def qualifies(model: Any) -> bool:
    """True when the model's events need nothing from Python (settings included).

    Asked at every save (settings and the model's attributes may change while a process runs), so
    the cheapest conditions come first: a model with replication off is answered after two reads.
    """
    if not (model._cqrs_auto_publish and model.CQRS_PRODUCE):
        return False
    master = get_settings().master
    base = _base()
    return bool(
        master.outbox and master.meta_function is None and master.correlation_function is None
        and not model._meta.parents
        and model.get_cqrs_meta is base.get_cqrs_meta
        and model.is_sync_instance is base.is_sync_instance
    )


def _base() -> Any:
    """``RawMasterMixin`` (imported on first use: its module imports this one)."""
    global _raw_master_mixin
    if _raw_master_mixin is None:
        from cqrs_celery.master.mixins import RawMasterMixin

        _raw_master_mixin = RawMasterMixin
    return _raw_master_mixin


_raw_master_mixin: Any = None


def install(using: str = 'default') -> list[str]:
    """Create or drop the triggers of every master model on ``using``; returns what was done."""
    connection = connections[using]
    if connection.vendor not in {'postgresql', 'sqlite'}:
        return []
    done = []
    tables = set(connection.introspection.table_names())
    # Where the router keeps the outbox out of this database, a trigger could only fail the saves.
    outbox_here = OutboxEvent._meta.db_table in tables
    # One transaction: a save of another process never falls between a trigger's drop and its creation.
    with transaction.atomic(using=using), connection.cursor() as cursor:
        for model in MasterRegistry.models():
            if model._meta.db_table not in tables or model._meta.proxy or model._meta.abstract:
                continue
            name, table = trigger_name(model), connection.ops.quote_name(model._meta.db_table)
            quoted = connection.ops.quote_name(name)
            if connection.vendor == 'sqlite':
                for statement in (f'DROP TRIGGER IF EXISTS {quoted}',
                                  f'DROP TRIGGER IF EXISTS {connection.ops.quote_name(_sqlite_update_name(name))}'):
                    cursor.execute(statement)
                if outbox_here and serves(connection, model):
                    for statement in _sqlite_sql(connection, model, name):
                        cursor.execute(statement)
                    done.append(f'{name} on {model._meta.db_table}')
            else:
                cursor.execute(f'DROP TRIGGER IF EXISTS {quoted} ON {table}')
                if outbox_here and serves(connection, model):
                    cursor.execute(_function_sql(connection, model, name))
                    events = 'INSERT OR UPDATE OR DELETE' if serves_deletes(connection, model) else 'INSERT OR UPDATE'
                    cursor.execute(f'CREATE TRIGGER {quoted} AFTER {events} ON {table} '
                                   f'FOR EACH ROW EXECUTE FUNCTION {quoted}()')
                    done.append(f'{name} on {model._meta.db_table}')
                else:
                    cursor.execute(f'DROP FUNCTION IF EXISTS {quoted}()')
            _seen.pop((using, model._meta.db_table), None)
    return done


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def on_post_migrate(sender: Any = None, using: str = 'default', **kwargs: Any) -> None:
    """``post_migrate`` receiver (wired in ``apps.py``): keep the triggers in step with the models."""
    if sender is None or sender.name != 'cqrs_celery':
        return  # once per migrate run, after cqrs_celery's own tables exist
    done = install(using)
    if done:
        logger.info('cqrs outbox triggers on %s: %s', using, ', '.join(done))


def active(using: str, model: Any, connection: Any = None) -> bool:
    """True when this save's event is written by the database (the trigger exists and applies).

    ``connection``: that of ``using``, when the caller has it at hand.
    """
    if connection is None:
        connection = connections[using]
    if not qualifies(model) or connection.vendor not in {'postgresql', 'sqlite'}:
        return False
    key = (using, model._meta.db_table)
    seen = _seen.get(key)
    if seen is None:
        seen = _seen[key] = serves(connection, model) and _installed(connection, model)
    return seen


def _installed(connection: Any, model: Any) -> bool:
    """Whether the database has the triggers this process's ``serves`` expects (checked once per table)."""
    count, reads_payload, records_deletes = _found(connection, model)
    if connection.vendor == 'sqlite':
        return count == 2
    # A trigger installed by a version that stored no payload serves models without tracked fields
    # only; one that records no deletions, models whose deletions Python records.
    return (count > 0 and (reads_payload or not tracker.has_tracker(model))
            and (records_deletes or not serves_deletes(connection, model)))


def _found(connection: Any, model: Any) -> tuple[int, bool, bool]:
    """How many of the model's triggers the database has, whether one reads the payload, and whether
    one records deletions (PostgreSQL)."""
    name = trigger_name(model)
    with connection.cursor() as cursor:
        if connection.vendor == 'sqlite':
            cursor.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = %s "
                           'AND name IN (%s, %s)', [model._meta.db_table, name, _sqlite_update_name(name)])
            return int(cursor.fetchone()[0]), False, False
        # tgtype's bit 8 (TRIGGER_TYPE_DELETE): the trigger fires on DELETE.
        cursor.execute('SELECT position(%s IN p.prosrc) > 0, (t.tgtype & 8) > 0 AND position(%s IN p.prosrc) > 0 '
                       'FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid '
                       'WHERE t.tgname = %s AND t.tgrelid = %s::regclass',
                       [payload_setting(model), "TG_OP = 'DELETE'", name,
                        connection.ops.quote_name(model._meta.db_table)])
        found = cursor.fetchone()
    return (0, False, False) if found is None else (1, bool(found[0]), bool(found[1]))


#: ``state``'s answers.
BY_TRIGGER, BY_PYTHON, NO_EVENTS = 'trigger', 'python', 'off'
TRIGGER_MISSING, TRIGGER_STALE = 'python, trigger missing (run migrate)', 'stale trigger (run migrate)'


def state(using: str, model: Any) -> str:
    """Who writes ``model``'s outbox events on ``using`` (``cqrs_status``); reads the database every call.

    ``BY_TRIGGER``: the database, in the row's own statement. ``BY_PYTHON``: the save, after the
    statement (no trigger applies to the model or the database). ``NO_EVENTS``: nobody
    (``CQRS_PRODUCE = False``). ``TRIGGER_MISSING``: a trigger would apply, the database has none
    (not migrated since an upgrade): saves take the Python path and lose nothing, but pay more.
    ``TRIGGER_STALE``: the database still has the trigger of a configuration the model no longer
    has (``CQRS_PRODUCE`` turned off, a ``meta_function`` or ``get_cqrs_meta`` added, without
    ``migrate`` since): it keeps writing events, published even with ``CQRS_PRODUCE = False``.
    """
    connection = connections[using]
    producing = bool(model._cqrs_auto_publish and model.CQRS_PRODUCE)
    if connection.vendor not in {'postgresql', 'sqlite'}:
        return BY_PYTHON if producing else NO_EVENTS
    if serves(connection, model):
        if not _installed(connection, model):
            return TRIGGER_MISSING
        # A trigger recording deletions Python now records (say, a get_custom_cqrs_delete_data added).
        return TRIGGER_STALE if _found(connection, model)[2] and not serves_deletes(connection, model) else BY_TRIGGER
    if _found(connection, model)[0]:
        return TRIGGER_STALE
    return BY_PYTHON if producing else NO_EVENTS


def forget() -> None:
    """Look the triggers up again (tests that drop or create them)."""
    _seen.clear()
