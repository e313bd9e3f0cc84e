"""Turn committed master changes into envelopes: what a transaction changed, and what it looks like now.

A save records only *which* row changed (with what the save alone knows: ``previous_data``,
metadata, correlation id); the row's state is read when it is published, in bulk, from what is
committed. So the published state is always the committed one (a serializer sees related rows
written later in the same transaction), a row changed several times is read once, and a
rolled-back change publishes nothing.

With the outbox (``CQRS['master']['outbox']``, the default) each changed row also gets an outbox
event in the same transaction; after commit the publisher (``publisher.py``) sends the events.
Without it, the rows are read and published right after commit and a failure is only logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import ujson
from django.conf import settings
from django.db import connections, models, transaction
from django.db.models.functions import Cast
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from cqrs_celery import sharing
from cqrs_celery.conf import get_settings
from cqrs_celery.constants import FIELD_REVISION, FIELD_UPDATED, SignalType
from cqrs_celery.correlation import get_correlation_id
from cqrs_celery.envelope import Envelope
from cqrs_celery.exceptions import DataError, MetaError
from cqrs_celery.master import publisher
from cqrs_celery.master.hooks import wants_keyword
from cqrs_celery.master.mixins import RawMasterMixin
from cqrs_celery.master.timestamps import utc_loader
from cqrs_celery.models import MasterTombstone, filter_in, tombstone_revision
from cqrs_celery.registry import MasterRegistry
from cqrs_celery.serialization import (
    ENVELOPE_LEVELS,
    NeedsInstance,
    row_plan,
    row_to_dict,
    to_json,
    unsendable,
)

logger = logging.getLogger(__name__)

_UNSET: Any = object()


def change_meta(instance: Any, signal_type: SignalType, previous_data: dict[str, Any] | None = None,
                instance_data: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The metadata of one change, JSON-safe (``None`` when there is none).

    ``get_cqrs_meta`` gets django-cqrs's keywords: ``signal_type``, ``instance_data`` and, except for
    a DELETE, ``previous_data``. ``instance_data`` is serialized here only when the method (or, for
    the default method, ``meta_function``) can receive it.

    Raises:
        MetaError: the model's ``get_cqrs_meta`` returned something other than a dict or None.
    """
    kwargs: dict[str, Any] = {'signal_type': signal_type}
    if signal_type != SignalType.DELETE:
        kwargs['previous_data'] = previous_data
    method = instance.get_cqrs_meta
    if instance_data is None and getattr(method, '__func__', None) is not RawMasterMixin.get_cqrs_meta \
            and wants_keyword(method, 'instance_data'):
        instance_data = instance.to_cqrs_dict()
    if instance_data is not None:
        kwargs['instance_data'] = instance_data
    meta = method(**kwargs)
    if meta is None or (type(meta) is dict and not meta):  # no metadata (the default): nothing to check or convert
        return None
    if not isinstance(meta, dict):
        raise MetaError(f'{type(instance).__qualname__}.get_cqrs_meta() must return a dict or None, '
                        f'not {type(meta).__name__}')
    deepest = get_settings().replica.max_nesting_depth - ENVELOPE_LEVELS + 1
    reason = unsendable(meta, deepest)
    if reason is not None:
        raise MetaError(f'{type(instance).__qualname__}.get_cqrs_meta() returned metadata that {reason}')
    return to_json(meta) or None


def correlation_id(instance: Any, signal_type: SignalType, queue: str | None = None) -> str | None:
    """The correlation id of the current change, from ``correlation_function`` (see ``correlation.py``)."""
    value = get_correlation_id(signal_type, instance.CQRS_ID, to_json(instance.pk), queue)
    return None if value is None else str(value)


def build_envelope(instance: Any, signal_type: SignalType, using: str | None = None, *,
                   queue: str | None = None, previous_data: dict[str, Any] | None = None,
                   instance_data: dict[str, Any] | None = None, meta: Any = _UNSET,
                   correlation: Any = _UNSET, created: datetime.datetime | None = None,
                   forced: bool = False) -> Envelope:
    """The envelope describing ``instance`` (its in-memory state unless ``instance_data`` is given).

    ``meta`` and ``correlation`` are computed now unless given (they were taken at save time).
    """
    data = instance.to_cqrs_dict(using=using, sync=signal_type == SignalType.SYNC) \
        if instance_data is None else instance_data
    return _envelope(
        instance.CQRS_ID, to_json(instance.pk), signal_type, data, previous_data,
        change_meta(instance, signal_type, previous_data, data) if meta is _UNSET else meta,
        correlation_id(instance, signal_type, queue) if correlation is _UNSET else correlation,
        queue, created, forced,
    )


def _envelope(cqrs_id: str, pk: Any, signal_type: SignalType, data: dict[str, Any],
              previous_data: dict[str, Any] | None, meta: dict[str, Any] | None, correlation: str | None,
              queue: str | None, created: datetime.datetime | None, forced: bool = False) -> Envelope:
    """The envelope of one row's state ``data``; ``pk`` in its JSON form."""
    ttl = get_settings().master.message_ttl
    return Envelope.fast(
        signal_type=signal_type, cqrs_id=cqrs_id, instance_pk=pk, instance_data=data, previous_data=previous_data,
        meta=meta, correlation_id=correlation, queue=queue,
        expires=(created or timezone.now()) + datetime.timedelta(seconds=ttl) if ttl else None, forced=forced,
    )


@dataclasses.dataclass
class Change:
    """One changed row of one transaction: what the publisher needs besides the row itself."""

    cqrs_id: str
    #: The primary key in its JSON form.
    pk: Any
    signal_type: SignalType = SignalType.SAVE
    previous_data: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None
    correlation_id: str | None = None
    #: A DELETE's whole envelope (the row is gone when it is published).
    delete_envelope: Envelope | None = None
    created: datetime.datetime | None = None
    #: This change's event in the outbox table (outbox mode).
    outbox_id: int | None = None
    #: The savepoints open when that event was last written: once one has ended, it may have been
    #: rolled back with the event, which must then be written again.
    outbox_savepoints: tuple[str, ...] = ()

    def payload(self) -> str:
        """What the outbox stores for this change besides the row's name."""
        if self.delete_envelope is not None:
            return ujson.dumps(self.delete_envelope.to_wire(), ensure_ascii=False)
        return event_payload(self.previous_data, self.meta, self.correlation_id)


def event_payload(previous_data: dict[str, Any] | None, meta: dict[str, Any] | None = None,
                  correlation_id: str | None = None) -> str:
    """What a SAVE event stores besides the row's name: ``''`` when there is nothing."""
    if previous_data is None and meta is None and correlation_id is None:
        return ''
    return ujson.dumps({'previous_data': previous_data, 'meta': meta, 'correlation_id': correlation_id},
                       ensure_ascii=False)


def refusal(envelope: Envelope) -> DataError | None:
    """Why replica queues would refuse a message holding this row, or None (asked before rows are batched).

    A save checks its JSON fields (``DataError``) and its metadata (``MetaError``), but a row changed
    without ``save()`` (``Model.cqrs.bulk_update``, ``QuerySet.update``, SQL), the output of a
    ``CQRS_SERIALIZER`` or ``to_cqrs_dict`` and a deletion's custom data are only known when they are
    published. Sent in a batch, such a row would have every row of the batch dead-lettered with it,
    so it is held back alone. Only rows of models whose data can hold arrays or objects are walked.
    """
    model = MasterRegistry.get(envelope.cqrs_id) if envelope.cqrs_id in MasterRegistry else None
    nests = model is None or _may_nest(model)
    if not nests and not envelope.meta:
        return None  # (the publisher asks this of every row: the common answer comes first)
    parts: list[tuple[str, Any]] = [('meta', envelope.meta)] if envelope.meta else []
    if nests:
        parts += [('instance_data', envelope.instance_data), ('previous_data', envelope.previous_data)]
    deepest = get_settings().replica.max_nesting_depth - ENVELOPE_LEVELS + 1  # the dict itself is a level
    for name, value in parts:
        reason = None if value is None else unsendable(value, deepest)
        if reason is not None:
            return DataError(f'{envelope.cqrs_id} pk={envelope.instance_pk!r}: its {name} {reason}; the row cannot be '
                             'published until it changes')
    return None


#: Per model: what ``_may_nest`` answered, with the attributes it answered for.
_nesting: dict[Any, tuple[Any, bool]] = {}


def _may_nest(model: Any) -> bool:
    """True when a row of ``model`` can hold arrays or objects: a field that is not one of Django's
    scalar fields (a JSON field, an array, a field of another package), or data the model makes itself."""
    key = (model.CQRS_SERIALIZER, model.CQRS_FIELDS, model.to_cqrs_dict, model.get_custom_cqrs_delete_data)
    known = _nesting.get(model)
    if known is not None and known[0] == key:
        return known[1]
    names = set(model.cqrs_field_names())
    nests = bool(model.CQRS_SERIALIZER or model.to_cqrs_dict is not RawMasterMixin.to_cqrs_dict
                 or model.get_custom_cqrs_delete_data is not RawMasterMixin.get_custom_cqrs_delete_data
                 or any(_may_hold_containers(field) for field in model._meta.concrete_fields if field.name in names))
    _nesting[model] = (key, nests)
    return nests


def _may_hold_containers(field: Any) -> bool:
    return not type(field).__module__.startswith('django.db.models.') or isinstance(field, models.JSONField)


def envelopes_for(using: str, changes: Sequence[Change]) -> list[Envelope | Exception | None]:
    """The envelope of each change, in order, with rows read in one query per model.

    A SAVE whose row is gone gives ``None`` (its DELETE is published instead); a row that cannot be
    serialized gives its exception, so it alone fails.
    """
    rows: dict[str, dict[Any, Any] | Exception] = {}
    cqrs_ids = {c.cqrs_id for c in changes if c.delete_envelope is None}
    python_pks: dict[int, Any] = {}  # by the change's index: its pk as the model's field gives it
    for cqrs_id in cqrs_ids:
        try:
            model = MasterRegistry.get(cqrs_id)
            pks = set()
            for index, change in enumerate(changes):
                if change.cqrs_id == cqrs_id and change.delete_envelope is None:
                    pks.add(python_pks.setdefault(index, _python_pk(model, change.pk)))
            # With several models, each is read in a savepoint: a failing query must not abort the
            # caller's transaction for the others (outside one, as SQLite drains read, nothing to abort).
            savepoint = len(cqrs_ids) > 1 and connections[using].in_atomic_block
            with (transaction.atomic(using=using) if savepoint else contextlib.nullcontext(),
                  utc_loader(connections[using])):
                rows[cqrs_id] = _read_rows(model, using, pks)
        except Exception as exc:  # e.g. a CQRS_ID no master model has any more: its changes alone fail
            rows[cqrs_id] = exc
    result: list[Envelope | Exception | None] = []
    for index, change in enumerate(changes):
        if index % sharing.ENVELOPES_A_SLICE == sharing.ENVELOPES_A_SLICE - 1:
            sharing.offer()  # pure Python: the process's other threads would wait (sharing.py)
        if change.delete_envelope is not None:
            result.append(change.delete_envelope)
            continue
        found = rows[change.cqrs_id]
        if isinstance(found, Exception):
            result.append(found)
            continue
        instance = found.get(python_pks[index])
        if instance is None:
            result.append(None)
            continue
        try:
            if type(instance) is tuple:  # the row read as values: its pk and its data (see _read_rows)
                result.append(_envelope(change.cqrs_id, to_json(instance[0]), SignalType.SAVE, instance[1],
                                        change.previous_data, change.meta, change.correlation_id, None, change.created))
            else:
                result.append(build_envelope(instance, SignalType.SAVE, using, previous_data=change.previous_data,
                                             meta=change.meta, correlation=change.correlation_id,
                                             created=change.created))
        except Exception as exc:
            result.append(exc)
    return result


def _read_rows(model: Any, using: str, pks: set[Any]) -> dict[Any, Any]:
    """The rows of these pks, by pk: each as an instance, or as its pk and the dict it is sent as.

    A model that serializes its rows the default way (``to_cqrs_dict`` and
    ``relate_cqrs_serialization`` not overridden, no ``CQRS_SERIALIZER``) and that loads them
    plainly (``serialization.row_plan``) is read as value tuples, turned into dicts at once: no
    instance is built (about 5 µs of the 35 a row cost the publisher). A row with a value only
    its field can convert is read again as an instance.
    """
    names = None if model.CQRS_FIELDS == '__all__' else model.cqrs_field_names()
    plan = row_plan(model, names) if _serialized_plainly(model) else None
    queryset = model._base_manager.using(using)
    if plan is None:
        queryset = model.relate_cqrs_serialization(queryset)
        return {obj.pk: obj for obj in filter_in(queryset, model._meta.pk, pks)}
    pk_attname = model._meta.pk.attname
    at = next(index for index, (_, attname, *_) in enumerate(plan) if attname == pk_attname)
    connection = connections[using]
    texts = _text_datetimes(plan, connection) - {at}  # (the key stays the value the pks are looked up by)
    columns = [Cast(row[1], output_field=models.TextField()) if index in texts else row[1]
               for index, row in enumerate(plan)]
    found: dict[Any, Any] = {}
    again = []
    for count, values in enumerate(filter_in(queryset, model._meta.pk, pks).values_list(*columns)):
        if count % sharing.ROWS_A_SLICE == sharing.ROWS_A_SLICE - 1:
            sharing.offer()
        if texts:
            values = list(values)
            for index in texts:
                if values[index] is not None:
                    values[index] = _sqlite_datetime(values[index], connection)
        try:
            found[values[at]] = (values[at], row_to_dict(plan, values))
        except NeedsInstance:
            again.append(values[at])
    if again:
        found.update((obj.pk, obj) for obj in filter_in(queryset, model._meta.pk, again))
    return found


def _text_datetimes(plan: list[Any], connection: Any) -> frozenset[int]:
    """Where in ``plan`` a SQLite datetime column is read as its stored text (see ``_sqlite_datetime``).

    SQLite keeps a ``DateTimeField`` as text; Django parses each value in Python, makes it aware and
    the serializer writes it back as text: about 4 µs a value, two values on every master row
    (``cqrs_updated``). Only Django's own field, with ``USE_TZ`` and the connection in UTC.
    """
    if connection.vendor != 'sqlite' or not settings.USE_TZ or connection.timezone is not datetime.timezone.utc:
        return frozenset()
    return frozenset(index for index, (_, _, field, _, _) in enumerate(plan)
                     if type(field) is models.DateTimeField and not field.get_db_converters(connection))


def _sqlite_datetime(text: Any, connection: Any) -> Any:
    """A SQLite datetime column's stored ``text`` as the serializer writes its value.

    The form Django stores (``YYYY-MM-DD HH:MM:SS[.ffffff]``, UTC) becomes ISO text at once; any
    other (written by SQL, another program) goes through Django's own conversion, as a read of the
    row as an instance would (an aware ``datetime``, or ``None`` where Django's parser gives up).
    """
    try:
        moment = datetime.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        moment = None
    if moment is not None and moment.tzinfo is None and len(text) in (19, 26) and text[10] == ' ' and (
            len(text) == 19 or (text[19] == '.' and moment.microsecond)):
        return f'{text[:10]}T{text[11:]}+00:00'
    parsed = parse_datetime(text) if isinstance(text, str) else text
    return connection.ops.convert_datetimefield_value(parsed, None, connection)


def _serialized_plainly(model: Any) -> bool:
    """True when the model leaves its rows' serialization to cqrs_celery's defaults."""
    return (not model.CQRS_SERIALIZER and model.to_cqrs_dict is RawMasterMixin.to_cqrs_dict
            and model.relate_cqrs_serialization.__func__ is _DEFAULT_RELATE)


_DEFAULT_RELATE = vars(RawMasterMixin)['relate_cqrs_serialization'].__func__


def _python_pk(model: Any, pk: Any) -> Any:
    return model._meta.pk.to_python(pk)


class _Batch:
    """Rows changed in one transaction on one database, handed on once after it commits."""

    def __init__(self, using: str) -> None:
        self.using = using
        self.outbox = get_settings().master.outbox
        self.rows: dict[tuple[type[models.Model], Any], Change] = {}
        #: The database wrote events of this transaction too (triggers.py): publish what is ready.
        self.by_trigger = False
        #: ``previous_data`` the trigger's events of this transaction carry, per row: a later save of
        #: a row merges it into its own, as ``rows`` does for the Python path (savepoints that were
        #: rolled back included).
        self.handed: dict[tuple[type[models.Model], Any], dict[str, Any]] = {}

    def add(self, instance: Any, signal_type: SignalType, previous_data: dict[str, Any] | None,
            delete_envelope: Envelope | None) -> None:
        change, before = self._track(instance, signal_type, previous_data, delete_envelope)
        # A SAVE is written again on every save of the row in the transaction: its event records the
        # row's revision, which the publisher compares with the row's when it publishes.
        if self.outbox and (change.outbox_id is None or change.payload() != before or self._may_be_gone(change)
                            or change.delete_envelope is None):
            self._write(change)

    def add_saved(self, model: Any, instances: list[Any]) -> None:
        """``add`` for many saved rows of one model, their new events written in one query."""
        from cqrs_celery.master import outbox

        tracked = [self._track(instance, SignalType.SAVE, instance.get_tracked_fields_data() or None, None)
                   for instance in instances]
        if not self.outbox:
            return
        new = [change for change, _ in tracked if change.outbox_id is None]
        savepoints = self._savepoints()
        for change, event_id in zip(new, outbox.write_many(self.using, new), strict=True):
            change.outbox_id, change.outbox_savepoints = event_id, savepoints
        written = {id(change) for change in new}  # by identity: comparing dataclasses is quadratic
        for change, _ in tracked:
            if id(change) not in written:  # saved before in this transaction: its event takes the new revision
                self._write(change)

    def _write(self, change: Change) -> None:
        from cqrs_celery.master import outbox

        change.outbox_id = outbox.write(self.using, change, change.outbox_id)
        change.outbox_savepoints = self._savepoints()

    def _savepoints(self) -> tuple[str, ...]:
        # (a nested ``atomic(savepoint=False)`` is listed as None)
        return tuple(sid for sid in connections[self.using].savepoint_ids if sid is not None)

    def _may_be_gone(self, change: Change) -> bool:
        """True when a savepoint open at the event's last write has ended (released or rolled back)."""
        written = change.outbox_savepoints
        return bool(written) and self._savepoints()[:len(written)] != written

    def _track(self, instance: Any, signal_type: SignalType, previous_data: dict[str, Any] | None,
               delete_envelope: Envelope | None) -> tuple[Change, str | None]:
        # The same row may be saved through instances whose pk has another type ('7' and 7).
        key = (type(instance), instance._meta.pk.to_python(instance.pk))
        change = self.rows.get(key)
        before = None if change is None else change.payload()
        if change is None:
            change = self.rows[key] = Change(instance.CQRS_ID, to_json(instance.pk), created=timezone.now())
        change.signal_type = signal_type
        change.delete_envelope = delete_envelope
        if previous_data:
            merged = dict(previous_data)
            merged.update(change.previous_data or {})  # the earliest value of each field wins
            change.previous_data = merged
        if delete_envelope is None:
            change.meta = change_meta(instance, signal_type, change.previous_data)
            change.correlation_id = correlation_id(instance, signal_type)
        return change, before

    def flush(self) -> None:
        if self.outbox:
            publisher.committed(self.using, [c.outbox_id for c in self.rows.values() if c.outbox_id is not None],
                                everything=self.by_trigger)
            return
        changes = [c for c in self.rows.values() if c.delete_envelope is None or self._delete_committed(c)]
        try:
            publisher.publish_changes(self.using, changes)
        except Exception:
            logger.exception('cqrs publish failed after commit (outbox off: these changes are not sent): %s',
                             ', '.join(f'{c.cqrs_id}:{c.pk!r}' for c in changes[:20]))

    def _delete_committed(self, change: Change) -> bool:
        envelope = change.delete_envelope
        assert envelope is not None
        stored = tombstone_revision(MasterTombstone, self.using, envelope.cqrs_id, envelope.instance_pk)
        return stored == envelope.revision


def _open_batch(connection: Any) -> _Batch | None:
    """The batch of the connection's current transaction, if it has one."""
    batch: _Batch | None = getattr(connection, '_cqrs_batch', None)
    # A batch whose callback was discarded by a savepoint rollback is no longer valid.
    if batch is None or not any(entry[1] == batch.flush for entry in connection.run_on_commit):
        return None
    return batch


def _current_batch(using: str) -> _Batch:
    connection = connections[using]
    batch = _open_batch(connection)
    if batch is None:
        batch = _Batch(using)
        connection._cqrs_batch = batch  # type: ignore[attr-defined]
        # Publishing only after commit means replicas never see a change that was rolled back,
        # and never receive a message before the row is visible to a reader of the master.
        transaction.on_commit(batch.flush, using=using, robust=True)
    return batch


def schedule(instance: Any, signal_type: SignalType, using: str, *,
             previous_data: dict[str, Any] | None = None, delete_envelope: Envelope | None = None) -> None:
    """Publish ``instance`` after the current transaction commits (at once in autocommit)."""
    if not instance.CQRS_PRODUCE or not instance.is_sync_instance():
        return
    if not connections[using].in_atomic_block:
        with transaction.atomic(using=using):
            _current_batch(using).add(instance, signal_type, previous_data, delete_envelope)
        return
    _current_batch(using).add(instance, signal_type, previous_data, delete_envelope)


def wake_after_commit(using: str, handed: tuple[Any, dict[str, Any]] | None = None) -> None:
    """Have the events the database wrote in this transaction published after it commits.

    ``handed``: the instance just saved and the ``previous_data`` its statement gave the trigger.
    """
    if connections[using].in_atomic_block:
        batch = _current_batch(using)
        batch.by_trigger = True
        if handed is not None:
            instance, previous_data = handed
            batch.handed[(type(instance), instance._meta.pk.to_python(instance.pk))] = previous_data
    else:
        publisher.committed(using, [], everything=True)


def handed_before(using: str, instance: Any) -> dict[str, Any] | None:
    """``previous_data`` given to the trigger for this row earlier in the current transaction."""
    connection = connections[using]
    if not connection.in_atomic_block or instance.pk is None:
        return None
    batch = _open_batch(connection)
    return None if batch is None else batch.handed.get((type(instance), instance._meta.pk.to_python(instance.pk)))


def schedule_many(instances: Iterable[Any], signal_type: SignalType, using: str) -> None:
    """``schedule`` for rows of one model saved in bulk (events written in one query)."""
    from cqrs_celery.master import triggers

    instances = [i for i in instances if i.CQRS_PRODUCE and i.is_sync_instance()]
    if not instances:
        return
    model = type(instances[0])
    if triggers.active(using, model):
        wake_after_commit(using)
        # A multi-row statement cannot hand each row's old values to the trigger: they are put on
        # its events now; a row whose event is not found (its revision was not bumped) gets one.
        from cqrs_celery.master import outbox

        instances = [i for i in instances if i.get_tracked_fields_data()]
        if not instances:
            return
        rows = [(to_json(i.pk), i.cqrs_revision, event_payload(i.get_tracked_fields_data())) for i in instances]
        instances = [instances[index] for index in outbox.hand_payloads(using, model.CQRS_ID, rows)]
        if not instances:
            return
    with transaction.atomic(using=using, savepoint=False):
        _current_batch(using).add_saved(model, instances)


def delete_envelope(instance: Any, using: str, revision: int) -> Envelope:
    """The DELETE envelope of ``instance``, carrying the revision of the deletion.

    ``instance_data`` names the pk both by its field name and as ``'id'`` (django-cqrs's key), and
    carries ``get_custom_cqrs_delete_data()`` under ``'custom'`` (and, as before, merged in).
    """
    custom = to_json(instance.get_custom_cqrs_delete_data() or {})
    data = _deletion_data(instance._meta.pk.name, to_json(instance.pk), revision, timezone.now(), custom)
    return build_envelope(instance, SignalType.DELETE, using, instance_data=data)


def _deletion_data(pk_name: str, pk: Any, revision: int, deleted: datetime.datetime,
                   custom: dict[str, Any] | None = None) -> dict[str, Any]:
    data = {pk_name: pk, FIELD_REVISION: revision, FIELD_UPDATED: to_json(deleted)}
    if custom:
        data.update(custom)
    data.setdefault('id', pk)
    if custom:
        data['custom'] = custom
    return data


def deletion_envelope(cqrs_id: str, pk: Any, revision: int, deleted: datetime.datetime) -> Envelope:
    """The DELETE envelope of a deletion the database recorded (``triggers.py``), as ``delete_envelope`` builds it.

    The trigger serves only models with nothing for Python to add: no metadata, no correlation
    id, no custom delete data. ``deleted`` (aware) is the time of the deletion.
    """
    model = MasterRegistry.get(cqrs_id)
    ttl = get_settings().master.message_ttl
    return Envelope(signal_type=SignalType.DELETE, cqrs_id=cqrs_id, instance_pk=pk,
                    instance_data=_deletion_data(model._meta.pk.name, pk, revision, deleted),
                    expires=deleted + datetime.timedelta(seconds=ttl) if ttl else None)
