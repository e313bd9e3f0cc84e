"""The transactional outbox: a small event row written with each change, published and deleted later.

An event exists exactly when its change was committed. :func:`drain` takes ready events with
``SELECT … FOR UPDATE SKIP LOCKED`` (so any number of processes may drain at once and no event is
published twice), reads the rows they name in bulk, publishes them as batched messages (one
publisher confirm per message, not per row) and deletes what was published, all in one
transaction. On SQLite, which has one writer and no row locks, drains of a database file exclude
one another with a lock of their own and take the write lock only to delete. Failures are
isolated per model: a model whose message fails is tried again later with back-off, while the
others go out; an event that fails ``outbox_max_attempts`` times is set aside (kept, counted by
``cqrs_outbox status``, published again by ``cqrs_outbox retry``). A broker that cannot be
reached stops the run without counting against the events.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import ujson
from django.db import connections, models, transaction
from django.db.models import Count, Max, Min
from django.db.models.expressions import RawSQL
from django.utils import timezone

from cqrs_celery import sharing
from cqrs_celery.conf import get_settings
from cqrs_celery.constants import FIELD_REVISION, SignalType
from cqrs_celery.envelope import Envelope, decode
from cqrs_celery.exceptions import BrokerUnavailableError, UnroutableError
from cqrs_celery.master.publish import Change, deletion_envelope, envelopes_for, refusal
from cqrs_celery.models import OutboxEvent, where_in
from cqrs_celery.producer import send_batch
from cqrs_celery.registry import MasterRegistry

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: drains of one process exclude one another only
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

#: Longest back-off, in seconds, before a failed event is tried again.
MAX_BACKOFF = 300.0


def _events(using: str) -> Any:
    return OutboxEvent._default_manager.using(using)


def outbox_pk(pk: Any) -> str:
    """The text an outbox event names its row's (JSON-safe) primary key by."""
    # As PostgreSQL's to_jsonb() writes it, so events from triggers and from Python name a row alike.
    return ujson.dumps(pk, ensure_ascii=False, escape_forward_slashes=False)


def _event(change: Change) -> OutboxEvent:
    return OutboxEvent(cqrs_id=change.cqrs_id, pk_value=outbox_pk(change.pk), signal_type=change.signal_type.value,
                       revision=change.delete_envelope.revision if change.delete_envelope else None,
                       envelope=change.payload())


def write(using: str, change: Change, event_id: int | None = None) -> int:
    """Store ``change`` (replacing event ``event_id`` if it is still there); returns the event id.

    A SAVE event records the revision the row has in this transaction (read inside the same
    statement), so the publisher can tell when the row changed again after it.
    """
    connection = connections[using]
    pk_value, envelope = outbox_pk(change.pk), change.payload()
    if change.delete_envelope is None:
        revision_sql, parameter = _revision_of(connection, change.cqrs_id, change.pk)
        revision_params = [parameter]
    else:
        revision_sql, revision_params = '%s', [change.delete_envelope.revision]
    # The row must still be this change's: after a rolled-back savepoint removed it, SQLite may
    # give its id to another row's event, which must not be overwritten.
    if event_id is not None and _events(using).filter(id=event_id, cqrs_id=change.cqrs_id, pk_value=pk_value).update(
            signal_type=change.signal_type.value, revision=_revision_value(revision_sql, revision_params),
            envelope=envelope):
        return event_id
    return _insert(connection, [change.cqrs_id, pk_value, change.signal_type.value], revision_sql, revision_params,
                   envelope)


_revisions: dict[tuple[str, str, Any], str] = {}


def _revision_of(connection: Any, cqrs_id: str, pk: Any) -> tuple[str, Any]:
    """The subquery reading the ``cqrs_revision`` of row ``pk`` (JSON form), and its parameter."""
    model = revision_owner(MasterRegistry.get(cqrs_id))
    field = model._meta.pk
    sql = _revisions.get((connection.alias, connection.vendor, model))
    if sql is None:
        quote = connection.ops.quote_name
        sql = _revisions[(connection.alias, connection.vendor, model)] = (
            f'(SELECT {quote(FIELD_REVISION)} FROM {quote(model._meta.db_table)} WHERE {quote(field.column)} = %s)')
    return sql, field.get_db_prep_value(field.to_python(pk), connection)


def revision_owner(model: Any) -> Any:
    """The model whose table holds ``model``'s ``cqrs_revision``: a multi-table child's parent (its
    pk has the child's value), the concrete model of a proxy, else the model itself."""
    return model._meta.get_field(FIELD_REVISION).model._meta.concrete_model


def _revision_value(sql: str, params: list[Any]) -> Any:
    """The revision for the ORM: the subquery as an expression, or the value itself."""
    return params[0] if sql == '%s' else RawSQL(sql, params, output_field=models.BigIntegerField())


#: Columns of a new event, in the order ``_insert`` gives their values.
_COLUMNS = ('cqrs_id', 'pk_value', 'signal_type', 'revision', 'envelope', 'created', 'attempts', 'error',
            'available_at', 'set_aside')
_insert_sql: dict[tuple[str, bool, str], str] = {}


def _insert(connection: Any, head: list[Any], revision_sql: str, revision_params: list[Any], envelope: str) -> int:
    """INSERT one event with a statement written once: the save path's one extra write, kept cheap.

    ``head`` holds the values of ``cqrs_id``, ``pk_value`` and ``signal_type``.
    """
    returning = connection.features.can_return_columns_from_insert
    if connection.vendor not in {'postgresql', 'sqlite', 'mysql'}:
        event = OutboxEvent(cqrs_id=head[0], pk_value=head[1], signal_type=head[2], envelope=envelope,
                            revision=_revision_value(revision_sql, revision_params))
        event.save(using=connection.alias, force_insert=True)
        return int(event.pk)
    key = (connection.vendor, returning, revision_sql)
    sql = _insert_sql.get(key)
    if sql is None:
        quote = connection.ops.quote_name
        values = ['%s'] * len(_COLUMNS)
        values[_COLUMNS.index('revision')] = revision_sql
        sql = (f'INSERT INTO {quote(OutboxEvent._meta.db_table)} ({", ".join(map(quote, _COLUMNS))}) '
               f'VALUES ({", ".join(values)})')
        if returning:
            sql += f' RETURNING {quote("id")}'
        _insert_sql[key] = sql
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(sql, [*head, *revision_params, envelope, now, 0, '', now, False])
        return int(cursor.fetchone()[0] if returning else cursor.lastrowid)


def hand_payloads(using: str, cqrs_id: str, rows: Sequence[tuple[Any, int, str]]) -> list[int]:
    """Put payloads on the SAVE events a trigger wrote (PostgreSQL), in one statement.

    ``rows`` are (pk in its JSON form, revision, payload): each payload goes to the row's event of
    that revision that carries none yet. Returns the indexes of the rows that have no such event.
    """
    connection = connections[using]
    table = connection.ops.quote_name(OutboxEvent._meta.db_table)
    keys = [outbox_pk(pk) for pk, _, _ in rows]
    with connection.cursor() as cursor:
        cursor.execute(
            f'UPDATE {table} AS o SET envelope = v.payload '
            f'FROM unnest(%s::text[], %s::bigint[], %s::text[]) AS v(pk_value, revision, payload) '
            f"WHERE o.cqrs_id = %s AND o.signal_type = 'SAVE' AND o.envelope = '' "
            f'AND o.pk_value = v.pk_value AND o.revision = v.revision RETURNING o.pk_value, o.revision',
            [keys, [revision for _, revision, _ in rows], [payload for _, _, payload in rows], cqrs_id])
        found = set(cursor.fetchall())
    return [index for index, (key, (_, revision, _)) in enumerate(zip(keys, rows, strict=True))
            if (key, revision) not in found]


def write_many(using: str, changes: Sequence[Change]) -> list[int]:
    """Store new events in one INSERT where the database returns their ids; returns the ids."""
    if not connections[using].features.can_return_rows_from_bulk_insert:
        return [write(using, change) for change in changes]
    return [int(e.pk) for e in _events(using).bulk_create([_event(change) for change in changes])]


@dataclasses.dataclass(slots=True)
class Taken:
    """An outbox event as a drain reads it: the columns publishing needs, no model instance.

    Building ``OutboxEvent`` instances (and parsing their two timestamps) was a fifth of the
    publisher thread's time per event; ``created`` is read only when messages expire.
    """

    pk: int
    cqrs_id: str
    pk_value: str
    signal_type: str
    revision: int | None
    envelope: str
    attempts: int
    created: datetime.datetime | None = None


def _taken(queryset: Any) -> list[Taken]:
    """The events of ``queryset`` (locked as it says), oldest first, as :class:`Taken` records."""
    if get_settings().master.message_ttl:
        return [Taken(*row) for row in queryset.values_list(*_TAKEN, 'created')]
    return [Taken(*row) for row in queryset.values_list(*_TAKEN)]


_TAKEN = ('id', 'cqrs_id', 'pk_value', 'signal_type', 'revision', 'envelope', 'attempts')
_ready_sqls: dict[tuple[str, str, bool, bool], str | None] = {}


def _ready_sql(connection: Any) -> str | None:
    """``SELECT`` of the ready events, oldest first, locked (``SKIP LOCKED``) where the database can.

    The same query as the ORM's, written once per database kind (``None``: a database this is
    not written for, which keeps the ORM). Parameters: ``available_at``, the limit. ``NOT set_aside``
    is written as the partial index ``cqrs_outbox_pending`` is (see ``OutboxEvent.Meta``), so that
    SQLite, which matches an index's condition by its text and never by a parameter's value, reads
    the events from that index in ``id`` order instead of sorting them.
    """
    features = connection.features
    key = (connection.vendor, connection.alias, features.has_select_for_update,
           features.has_select_for_update_skip_locked)
    if key not in _ready_sqls:
        sql = None
        if connection.vendor in {'postgresql', 'sqlite', 'mysql'}:
            quote = connection.ops.quote_name
            columns = ', '.join(quote(getattr(OutboxEvent._meta.get_field(name), 'column', name)) for name in _TAKEN)
            lock = connection.ops.for_update_sql(skip_locked=features.has_select_for_update_skip_locked) \
                if features.has_select_for_update else ''
            sql = (f'SELECT {columns} FROM {quote(OutboxEvent._meta.db_table)} WHERE NOT {quote("set_aside")} '
                   f'AND {quote("available_at")} <= %s ORDER BY {quote("id")} LIMIT %s {lock}')
        _ready_sqls[key] = sql
    return _ready_sqls[key]


def _taken_raw(using: str, sql: str, now: datetime.datetime, limit: int) -> list[Taken]:
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(sql, [connection.ops.adapt_datetimefield_value(now), limit])
        return [Taken(*row) for row in cursor.fetchall()]


def _delete(using: str, ids: list[int]) -> None:
    """Delete the events ``ids`` (one statement with one parameter where the database allows)."""
    connection = connections[using]
    where = where_in(connection, OutboxEvent._meta.db_table, OutboxEvent._meta.pk, ids)
    if where is None:
        _events(using).filter(id__in=ids).delete()
        return
    with connection.cursor() as cursor:
        cursor.execute(f'DELETE FROM {connection.ops.quote_name(OutboxEvent._meta.db_table)} WHERE {where[0]}',
                       [where[1]])


#: The signal types by their stored names (an enum call per event cost more than the rest of ``_change``).
_SIGNALS = {signal.value: signal for signal in SignalType}


def _change(event: Taken) -> Change:
    payload = ujson.loads(event.envelope) if event.envelope else {}
    if 'v' in payload:  # a DELETE, or an event written by an older release: the whole envelope
        envelope = decode(payload)
        return Change(envelope.cqrs_id, envelope.instance_pk, envelope.signal_type, delete_envelope=envelope,
                      created=event.created)
    signal_type = _SIGNALS.get(event.signal_type) or SignalType(event.signal_type)  # (the enum's error)
    if signal_type is SignalType.DELETE:  # recorded by the database (triggers.py): only the time is stored
        deleted = datetime.datetime.fromisoformat(payload['deleted']).replace(tzinfo=datetime.timezone.utc)
        if not isinstance(event.revision, int):
            raise ValueError(f'a DELETE event without a revision: {event.revision!r}')
        envelope = deletion_envelope(event.cqrs_id, ujson.loads(event.pk_value), event.revision, deleted)
        return Change(event.cqrs_id, envelope.instance_pk, signal_type, delete_envelope=envelope,
                      created=event.created)
    return Change(event.cqrs_id, ujson.loads(event.pk_value), signal_type,
                  previous_data=payload.get('previous_data'), meta=payload.get('meta'),
                  correlation_id=payload.get('correlation_id'), created=event.created)


@dataclasses.dataclass
class Drained:
    """What one :func:`drain` did."""

    published: int = 0
    failed: int = 0
    taken: int = 0
    broker_down: BrokerUnavailableError | None = None


def _locked(using: str) -> Any:
    events = _events(using).order_by('id')
    features = connections[using].features
    if features.has_select_for_update_skip_locked:
        return events.select_for_update(skip_locked=True)
    return events.select_for_update() if features.has_select_for_update else events


def drain(using: str = 'default', *, limit: int | None = None, ids: Sequence[int] | None = None,
          min_age: float = 0.0) -> Drained:
    """Publish up to ``limit`` ready events (only ``ids`` when given), oldest first.

    On PostgreSQL (and other databases with row locks) in one transaction: the events are taken
    with ``FOR UPDATE SKIP LOCKED`` and deleted once published. On SQLite, see :func:`_sqlite_drain`.
    """
    master = get_settings().master
    if connections[using].vendor == 'sqlite':
        return _sqlite_drain(using, limit, ids, min_age)
    with transaction.atomic(using=using):
        events = _ready(using, limit, ids, min_age)
        result = Drained(taken=len(events))
        if events:
            _settle(using, result, *_publish(using, events, result, master.publish_batch_size))
    return result


def _sqlite_drain(using: str, limit: int | None, ids: Sequence[int] | None, min_age: float) -> Drained:
    """``drain`` on SQLite: one drain at a time per database file, without its write lock while publishing.

    SQLite has one writer. A drain that held the write lock from its first read to its delete
    made every save of the service wait for its publish (envelopes built, a publisher confirm):
    with saves coming flat out, the drains held the lock a third of the time. Drains of the file
    exclude one another with a lock of their own instead (:func:`drain_lock`, held across threads
    and processes); the events and rows are read and published outside any transaction (WAL
    readers do not block the writer), and only the delete of what was published takes the write
    lock, in a short transaction of its own. A row read after its event is read in its newest
    committed state, as on PostgreSQL.
    """
    master = get_settings().master
    with drain_lock(using):
        events = _ready(using, limit, ids, min_age)
        result = Drained(taken=len(events))
        if events:
            done, failed = _publish(using, events, result, master.publish_batch_size)
            with transaction.atomic(using=using):
                _settle(using, result, done, failed)
    return result


_drain_locks: dict[tuple[int, str], threading.Lock] = {}
_drain_locks_guard = threading.Lock()


@contextlib.contextmanager
def drain_lock(using: str) -> Iterator[None]:
    """Held while one thread of one process drains this SQLite database.

    Between processes it is an exclusive ``flock`` on a file beside the database
    (``<name>-cqrs-drain.lock``; the kernel lets it go when a process dies), between threads a
    lock per process (keyed by pid: a forked child starts with none held). An in-memory database
    belongs to one process: the thread lock is enough there, as where ``fcntl`` does not exist.
    """
    connection = connections[using]
    name = str(connection.settings_dict['NAME'])
    key = (os.getpid(), name)
    lock = _drain_locks.get(key)
    if lock is None:
        with _drain_locks_guard:
            lock = _drain_locks.setdefault(key, threading.Lock())
    with lock:
        if fcntl is None or connection.is_in_memory_db():  # type: ignore[attr-defined]
            yield
            return
        try:
            handle = open(f'{name}-cqrs-drain.lock', 'ab')  # noqa: SIM115 - closed below
        except OSError as exc:
            logger.warning('cqrs outbox: cannot open the drain lock beside %s (%s): drains of other processes may '
                           'publish an event twice (replicas skip the copy)', name, exc)
            yield
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _ready(using: str, limit: int | None, ids: Sequence[int] | None, min_age: float) -> list[Taken]:
    """The ready events a drain takes (locked where the database can), oldest first."""
    master = get_settings().master
    now = timezone.now()
    sql = None if ids is not None or min_age or master.message_ttl else _ready_sql(connections[using])
    if sql is not None:  # what the publisher thread asks for, without compiling a query each time
        return _taken_raw(using, sql, now, limit or master.outbox_relay_batch)
    queryset = _locked(using).filter(set_aside=False, available_at__lte=now)
    if ids is not None:
        queryset = queryset.filter(id__in=list(ids))
    if min_age:
        queryset = queryset.filter(created__lte=now - datetime.timedelta(seconds=min_age))
    return _taken(queryset[:limit or master.outbox_relay_batch])


def _settle(using: str, result: Drained, done: list[int], failed: list[tuple[Taken, BaseException]]) -> None:
    """Delete the events published, count an attempt on those that failed."""
    if done:
        _delete(using, done)
    result.published += len(done)
    result.failed += len(failed)
    _record_failures(using, failed)


def _publish(using: str, events: list[Taken], result: Drained, batch_size: int
             ) -> tuple[list[int], list[tuple[Taken, BaseException]]]:
    """Publish the rows of ``events``; returns the events done with and those that failed."""
    done: list[int] = []
    failed: list[tuple[Taken, BaseException]] = []
    changes = _collapsed(events, failed)
    try:
        envelopes = envelopes_for(using, [change for _, change in changes])
    except Exception as exc:  # e.g. a CQRS_ID no master model has any more
        envelopes = [exc] * len(changes)
    superseded = _take_newer(using, changes, envelopes)
    groups: dict[tuple[str, str | None], list[tuple[list[Taken], Envelope]]] = {}
    for (taken, _), envelope in zip(changes, envelopes, strict=True):
        if taken[0].pk in superseded:
            done.extend(event.pk for event in taken)  # their row's newer state goes out with a newer event
        elif envelope is None:
            done.extend(event.pk for event in taken)  # the row is gone; its DELETE is published instead
        elif isinstance(envelope, Exception):
            failed.extend((event, envelope) for event in taken)
        elif (refused := refusal(envelope)) is not None:
            failed.extend((event, refused) for event in taken)  # alone: its batch would be dead-lettered with it
        else:
            groups.setdefault((envelope.cqrs_id, envelope.queue), []).append((taken, envelope))
    for group in groups.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            if result.broker_down is not None:
                break
            taken_ids = [event for taken, _ in chunk for event in taken]
            sharing.offer()  # (before the message is encoded: building the envelopes ended a slice)
            try:
                send_batch(_shared_expiry([envelope for _, envelope in chunk]), checked=True)
            except BrokerUnavailableError as exc:
                result.broker_down = exc
            except Exception as exc:
                failed.extend((event, exc) for event in taken_ids)
            else:
                done.extend(event.pk for event in taken_ids)
    return done, failed


def _take_newer(using: str, changes: list[tuple[list[Taken], Change]],
                envelopes: list[Envelope | Exception | None]) -> set[int]:
    """Join newer events of rows that changed again after their taken events; returns what to drop.

    The row's state as read now belongs to its newest change: published with an older event's
    metadata it would pair one change's state with another's. So the newer SAVE events of such rows
    are taken (locked) into this drain too and merged — metadata of the newest, ``previous_data``
    of the earliest — and their envelopes rebuilt. Where no newer event can be taken (another drain
    holds it, or it was published already), the newer state goes out with that event: the older
    events are dropped (the first event ids of those entries are returned).
    """
    stale: dict[tuple[str, str], int] = {}
    for index, ((taken, change), envelope) in enumerate(zip(changes, envelopes, strict=True)):
        revisions = [e.revision for e in taken]
        if (change.delete_envelope is None and isinstance(envelope, Envelope) and None not in revisions
                and envelope.revision is not None and envelope.revision > max(r for r in revisions if r is not None)):
            stale[(taken[0].cqrs_id, taken[0].pk_value)] = index
    if not stale:
        return set()
    newest = max(event.pk for taken, _ in changes for event in taken)
    merged: set[int] = set()
    for event in _taken(_locked(using).filter(id__gt=newest, signal_type=SignalType.SAVE.value,
                                              pk_value__in={key[1] for key in stale})):
        found = stale.get((event.cqrs_id, event.pk_value))
        if found is None:
            continue
        try:
            newer = _change(event)
        except Exception:  # a broken row is left for its own drain to fail
            continue
        _absorb(changes[found], event, newer)
        merged.add(found)
    if merged:
        indexes = sorted(merged)
        for index, envelope in zip(indexes, envelopes_for(using, [changes[i][1] for i in indexes]), strict=True):
            envelopes[index] = envelope
    return {changes[index][0][0].pk for index in stale.values() if index not in merged}


def _collapsed(events: list[Taken], failed: list[tuple[Taken, BaseException]]
               ) -> list[tuple[list[Taken], Change]]:
    """One change per row: saves of the same row taken together publish its state once.

    Their ``previous_data`` keeps, for each field, the value before the earliest of them; their
    metadata and correlation id are the latest. DELETEs stay as they are (revisions order them),
    but for two events of one deletion (same revision): the later one goes out.
    """
    collapsed: list[tuple[list[Taken], Change]] = []
    saves: dict[tuple[str, str], tuple[list[Taken], Change]] = {}
    deletions: dict[tuple[str, str, int], int] = {}
    for index, event in enumerate(events):
        if index % sharing.EVENTS_A_SLICE == sharing.EVENTS_A_SLICE - 1:
            sharing.offer()
        try:
            change = _change(event)
        except Exception as exc:  # a row an older or broken writer left: it alone fails
            failed.append((event, exc))
            continue
        key = (event.cqrs_id, event.pk_value)
        if change.delete_envelope is not None and event.revision is not None:
            # Two events of one deletion: a trigger left from another configuration wrote one, Python
            # the other (later, with what only Python knows). One DELETE goes out, the later one's.
            index = deletions.setdefault((*key, event.revision), len(collapsed))
            if index < len(collapsed):
                collapsed[index] = ([*collapsed[index][0], event], change)
                continue
        if change.delete_envelope is not None or key not in saves:
            entry = ([event], change)
            collapsed.append(entry)
            if change.delete_envelope is None:
                saves[key] = entry
            continue
        _absorb(saves[key], event, change)
    return collapsed


def _absorb(entry: tuple[list[Taken], Change], event: Taken, newer: Change) -> None:
    """Add a later SAVE event of the same row to ``entry``: earliest ``previous_data``, latest meta."""
    taken, change = entry
    taken.append(event)
    if newer.previous_data:
        change.previous_data = {**newer.previous_data, **(change.previous_data or {})}
    change.meta, change.correlation_id = newer.meta, newer.correlation_id


def _shared_expiry(envelopes: list[Envelope]) -> list[Envelope]:
    """A batch carries one expiry: the earliest of its rows."""
    expiries = {e.expires for e in envelopes}
    if len(expiries) == 1:
        return envelopes
    earliest = min(e for e in expiries if e is not None) if None not in expiries else None
    return [e.replace(expires=earliest) for e in envelopes]


def _record_failures(using: str, failed: list[tuple[Taken, BaseException]]) -> None:
    """Count one more attempt for each failed event, back it off, set it aside at the limit; one log line per error."""
    if not failed:
        return
    limit = get_settings().master.outbox_max_attempts
    now = timezone.now()
    by_error: dict[tuple[int, int], list[Taken]] = {}
    errors: dict[int, BaseException] = {}
    for event, exc in failed:
        errors[id(exc)] = exc
        by_error.setdefault((id(exc), event.attempts + 1), []).append(event)
    for (error_id, attempts), events in by_error.items():
        exc = errors[error_id]
        aside = attempts >= limit
        backoff = min(2.0 ** min(attempts, 16), MAX_BACKOFF)
        _events(using).filter(id__in=[e.pk for e in events]).update(
            attempts=attempts, error=f'{type(exc).__name__}: {exc}'[:2000], set_aside=aside,
            available_at=now + datetime.timedelta(seconds=backoff))
        first = events[0]
        # An unroutable event is logged once a minute per CQRS_ID by cqrs_celery.unroutable already.
        log = logger.error if aside else logger.info if isinstance(exc, UnroutableError) else logger.warning
        log('cqrs outbox: %s events failed (attempt %s/%s%s): cqrs_id=%s pk=%s%s error=%r', len(events), attempts,
            limit, ', set aside: see cqrs_outbox status' if aside else f', next in {backoff:.0f}s', first.cqrs_id,
            first.pk_value, ' …' if len(events) > 1 else '', exc)


def relay(using: str = 'default', batch: int | None = None, min_age: float | None = None) -> int:
    """Publish events left in the outbox, oldest first; returns how many were published.

    Args:
        batch: events per transaction (``master.outbox_relay_batch``).
        min_age: seconds an event must have waited (``master.outbox_relay_delay``), so the
            publisher of the process that committed it normally publishes it first.
    """
    master = get_settings().master
    min_age = master.outbox_relay_delay if min_age is None else min_age
    total = 0
    while True:
        result = drain(using, limit=batch, min_age=min_age)
        total += result.published
        if result.broker_down is not None:
            logger.error('cqrs outbox relay stopped after %s events, the broker is unavailable: %s', total,
                         result.broker_down)
            break
        if result.taken < (batch or master.outbox_relay_batch) or result.published == 0:
            break
    if total:
        logger.info('cqrs outbox relay published %s events from %s', total, using)
    return total


def pending(using: str = 'default') -> int:
    """Events not yet published (set-aside ones included)."""
    return int(_events(using).count())


def newest_id(using: str = 'default') -> int:
    """The id of the newest event in the outbox (0 when empty): it grows as commits write events."""
    return int(_events(using).aggregate(newest=Max('id'))['newest'] or 0)


def status(using: str = 'default') -> dict[str, Any]:
    """Waiting and set-aside events, per CQRS_ID, with the oldest creation time; the last errors, newest first."""
    rows = _events(using).values('cqrs_id', 'set_aside').annotate(count=Count('id'), oldest=Min('created'))
    errors = _events(using).filter(set_aside=True).order_by('-available_at', '-id')
    return {'rows': sorted(rows, key=lambda r: (r['cqrs_id'], r['set_aside'])),
            'errors': list(errors.values_list('cqrs_id', 'pk_value', 'error')[:20])}


def retry_set_aside(using: str = 'default', ids: Sequence[int] | None = None) -> int:
    """Put set-aside events (all, or those of ``ids``) back in line (attempts reset); returns how many."""
    events = _events(using).filter(set_aside=True)
    if ids is not None:
        events = events.filter(id__in=list(ids))
    return int(events.update(set_aside=False, attempts=0, available_at=timezone.now()))
