"""Master model mixins: the revision fields, the save that bumps them, serialization and syncs."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from django.db import connections, models, router, transaction
from django.db.models.expressions import Combinable, RawSQL, Value
from django.db.models.signals import class_prepared
from django.utils.module_loading import import_string

from cqrs_celery.conf import get_settings
from cqrs_celery.constants import FIELD_REVISION, FIELD_UPDATED, SignalType
from cqrs_celery.exceptions import ConfigurationError, DataError, MetaError
from cqrs_celery.master import inserts, tracker, triggers
from cqrs_celery.master.hooks import call_accepting, name_of, names_parameter, wants_keyword
from cqrs_celery.master.managers import MasterManager
from cqrs_celery.models import MasterTombstone, pk_hash, pk_key, tombstone_revision
from cqrs_celery.registry import MasterRegistry, require_cqrs_id
from cqrs_celery.serialization import (
    ENVELOPE_LEVELS,
    PendingExpression,
    field_value,
    instance_to_dict,
    to_json,
    unsendable,
)


class RawMasterMixin(models.Model):
    """A model whose rows are replicated; events are published only when you call ``cqrs_sync``
    or connect the signals yourself (``MasterMixin`` does that for you)."""

    #: Unique id of this model across services; replicas name the same id.
    CQRS_ID: ClassVar[str]
    #: Publish events for this model (False silences it without removing the mixin).
    CQRS_PRODUCE: ClassVar[bool] = True
    #: Field names sent to replicas, or ``'__all__'``.
    CQRS_FIELDS: ClassVar[str | Sequence[str]] = '__all__'
    #: Dotted path of a serializer class (DRF works): ``Serializer(instance).data`` is sent instead.
    CQRS_SERIALIZER: ClassVar[str | None] = None
    #: Field names whose values before the change are sent as ``previous_data`` (or ``'__all__'``).
    CQRS_TRACKED_FIELDS: ClassVar[str | Sequence[str] | None] = None

    cqrs_revision = models.IntegerField(default=0, help_text='+1 for every committed change (cqrs_celery).')
    cqrs_updated = models.DateTimeField(auto_now=True, help_text='Time of the last change (cqrs_celery).')

    objects = models.Manager()
    cqrs = MasterManager()

    _cqrs_auto_publish: ClassVar[bool] = False
    #: ``CQRS_SERIALIZER`` imported (by ``cqrs_serializer_class()``), and the path it was imported from.
    _cqrs_serializer_class: ClassVar[Any]
    _cqrs_serializer_path: ClassVar[str | None]

    class Meta:
        abstract = True

    @property
    def cqrs_saves_count(self) -> int:
        """How many times this instance was saved in the current transaction (0 outside one)."""
        state = self.__dict__.get('_cqrs_saves')
        if state is None or not _same_transaction(state[0], state[1]):
            return 0
        return int(state[2])

    @property
    def is_initial_cqrs_save(self) -> bool:
        """True until this instance's second save in the current transaction."""
        return self.cqrs_saves_count < 2

    def __getstate__(self) -> dict[str, Any]:
        # The transaction markers hold the connection's on-commit callbacks: never pickle or copy them.
        state: dict[str, Any] = super().__getstate__()
        state.pop('_cqrs_saves', None)
        state.pop('_cqrs_bumped', None)
        return state

    def reset_cqrs_saves_count(self) -> None:
        """Forget this instance's saves in the current transaction: its next save bumps the revision again.

        Not needed after a commit or a rollback (cqrs_celery notices them itself); harmless anyway.
        """
        self.__dict__.pop('_cqrs_saves', None)
        self.__dict__.pop('_cqrs_bumped', None)

    def save(self, *args: Any, update_cqrs_fields: bool | None = None, **kwargs: Any) -> None:
        """Save and bump ``cqrs_revision`` in the same transaction: once per instance and transaction.

        With ``update_fields``, the revision is bumped (and the change published) only with
        ``update_cqrs_fields=True`` or ``CQRS['master']['CQRS_AUTO_UPDATE_FIELDS']``, or when
        ``cqrs_revision`` is among the fields (you set it yourself); otherwise the save is master-only.
        """
        using = kwargs.get('using') or router.db_for_write(type(self), instance=self)
        connection = connections[using]
        update_fields = kwargs.get('update_fields')
        self._cqrs_count_save(connection)
        self._cqrs_skip = False
        self._cqrs_settle_to = None
        if update_fields is not None:
            fields = set(update_fields)
            flag = get_settings().master.auto_update_fields if update_cqrs_fields is None else update_cqrs_fields
            if fields and flag:
                kwargs['update_fields'] = fields | {FIELD_REVISION, FIELD_UPDATED}
            elif FIELD_REVISION in fields:
                self._cqrs_save_as_given(using, *args, **kwargs)
                return
            else:
                self._cqrs_skip = True
                tracker.capture(self, merge=not self.is_initial_cqrs_save)
                super().save(*args, **kwargs)
                return
        for field in _custom_fields(type(self)):
            field_value(field, self)  # refuse now what could not be sent later (DataError)
        for field in _json_fields(type(self)):
            _refuse_unsendable(self, field)
        if self.CQRS_SERIALIZER:
            type(self).cqrs_serializer_class()  # likewise: a serializer that cannot be imported
        self._cqrs_by_trigger = triggers.active(using, type(self), connection)
        bump = not self._cqrs_bumped_in(connection)
        with self._cqrs_transaction(using):
            loaded = self.cqrs_revision
            # The database adds 1 in the UPDATE itself, which orders concurrent saves without reading
            # the row first; if the save turns out to be an INSERT, _do_insert picks the revision.
            # A later save of the same instance in the transaction keeps the revision (one change
            # per transaction, as django-cqrs counts them).
            if self.pk is None:
                self.cqrs_revision = 0
            else:
                self.cqrs_revision = models.F(FIELD_REVISION) + (1 if bump else 0)
                if isinstance(loaded, int):
                    self._cqrs_settle_to = loaded + (1 if bump else 0)
            tracker.capture(self, merge=not self.is_initial_cqrs_save)
            self._cqrs_hand_payload(using)
            if not args:
                kwargs['using'] = using  # Django's save would ask the router again
            try:
                super().save(*args, **kwargs)
            finally:
                self._cqrs_settle_revision()
                self.__dict__.pop('_cqrs_payload', None)
                self.__dict__.pop('_cqrs_handed', None)
        if connection.in_atomic_block:
            self.__dict__['_cqrs_bumped'] = (using, connection.run_on_commit)

    def _cqrs_save_as_given(self, using: str, *args: Any, **kwargs: Any) -> None:
        """A save whose ``update_fields`` name ``cqrs_revision``: the caller set the revision; publish it."""
        tracker.capture(self, merge=not self.is_initial_cqrs_save)
        self._cqrs_by_trigger = triggers.active(using, type(self))
        self._cqrs_hand_payload(using)
        given = isinstance(self.cqrs_revision, Combinable)
        with self._cqrs_transaction(using):
            try:
                super().save(*args, **kwargs)
            finally:
                self.__dict__.pop('_cqrs_payload', None)
                self.__dict__.pop('_cqrs_handed', None)
            if given:  # read back what the expression made of it
                self.cqrs_revision = type(self)._base_manager.using(using).values_list(
                    FIELD_REVISION, flat=True).get(pk=self.pk)

    def _cqrs_transaction(self, using: str) -> contextlib.AbstractContextManager[Any]:
        """The transaction a save runs in: one of its own only when Python writes its outbox event.

        With a trigger the database writes the event in the row's own statement (see
        master/triggers.py), and a model with ``CQRS_PRODUCE = False`` writes none: the save then
        runs what the plain Django save runs (on PostgreSQL and SQLite one statement for a new row
        or a changed one), nothing more.
        """
        if self._cqrs_by_trigger or not self.CQRS_PRODUCE:
            return contextlib.nullcontext()
        return transaction.atomic(using=using, savepoint=False)

    def _cqrs_hand_payload(self, using: str) -> None:
        """With the trigger, have this save's statement hand the event's ``previous_data`` to it.

        What the row's earlier saves in the transaction handed is merged in (their values win), so
        the event carries what the Python path's would. Kept until the save ends: ``_do_update`` and
        ``_do_insert`` add it to the revision's value; ``post_save`` records it (``_cqrs_handed``).
        """
        if not (self._cqrs_by_trigger and tracker.has_tracker(type(self))):
            return
        from cqrs_celery.master.publish import event_payload, handed_before

        data = {**(self.get_tracked_fields_data() or {}), **(handed_before(using, self) or {})}
        self.__dict__['_cqrs_handed'] = data
        if data:
            self.__dict__['_cqrs_payload'] = event_payload(data)

    def _cqrs_count_save(self, connection: Any) -> None:
        if not connection.in_atomic_block:
            self.__dict__.pop('_cqrs_saves', None)
            return
        count = self.cqrs_saves_count
        self.__dict__['_cqrs_saves'] = (connection.alias, connection.run_on_commit, count + 1)

    def _cqrs_bumped_in(self, connection: Any) -> bool:
        """True when this instance already changed the revision in the current transaction."""
        state = self.__dict__.get('_cqrs_bumped')
        return state is not None and connection.in_atomic_block and _same_transaction(state[0], state[1])

    def _save_table(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._save_table(*args, **kwargs)  # type: ignore[misc]
        finally:
            self._cqrs_settle_revision()  # before post_save: receivers see a number, not F()

    def _cqrs_settle_revision(self) -> None:
        if isinstance(self.cqrs_revision, Combinable):
            # An UPDATE: what this instance knew plus one (refresh_from_db() reads the exact value).
            settled = getattr(self, '_cqrs_settle_to', None)
            self.cqrs_revision = settled if isinstance(settled, int) else 0

    def _do_update(self, base_qs: Any, using: str, pk_val: Any, values: Any,  # type: ignore[override]
                   *args: Any, **kwargs: Any) -> Any:
        payload = self.__dict__.get('_cqrs_payload')
        if payload is not None:  # the trigger's payload travels in the revision's new value
            extra = _payload_expression(type(self), payload)
            values = [(field, model, _plus(value, extra) if field.attname == FIELD_REVISION else value)
                      for field, model, value in values]
        return super()._do_update(base_qs, using, pk_val, values, *args, **kwargs)

    def _do_insert(self, manager: Any, using: str, fields: Any, returning_fields: Any, raw: bool) -> Any:
        """Insert with the revision a new row starts at: 0, or one past its pk's tombstone.

        Where the database returns inserted columns, the tombstone is read inside the INSERT
        (a subquery) and the revision comes back with it: one statement for a new row. The
        trigger's payload, if any, travels in the same value. A plain new row (no expression, no
        payload) is inserted by ``inserts.insert``, whose SQL is written once per table and columns;
        so is a row whose revision the statement computes, where ``inserts.insert`` can take it.
        """
        payload = self.__dict__.get('_cqrs_payload')
        revised = isinstance(self.cqrs_revision, Combinable)
        if not revised and payload is None:
            rows = inserts.insert(self, manager, using, fields, returning_fields, raw)
            if rows is not None:
                return rows
            return super()._do_insert(manager, using, fields, returning_fields, raw)  # type: ignore[misc]
        if not connections[using].features.can_return_columns_from_insert:
            self.cqrs_revision = self._cqrs_revision_for_insert(using)
            return super()._do_insert(manager, using, fields, returning_fields, raw)  # type: ignore[misc]
        params: list[Any]
        if revised:
            sql, params = _insert_revision_sql(connections[using]), [self.CQRS_ID, pk_hash(pk_key(to_json(self.pk)))]
        else:
            sql, params = '%s', [self.cqrs_revision]
        if payload is not None:
            extra, extra_params = triggers.payload_sql(type(self), payload)
            sql, params = f'({sql} + {extra})', [*params, *extra_params]
        rows = inserts.insert(self, manager, using, fields, returning_fields, raw, revision=(sql, params))
        if rows is not None:
            self.cqrs_revision = rows[0][-1]
            return [row[:-1] for row in rows]
        self.cqrs_revision = RawSQL(sql, params, output_field=models.IntegerField())
        returning = [*(returning_fields or []), self._meta.get_field(FIELD_REVISION)]
        rows = super()._do_insert(manager, using, fields, returning, raw)  # type: ignore[misc]
        self.cqrs_revision = rows[0][-1]
        return [row[:-1] for row in rows]

    def _cqrs_revision_for_insert(self, using: str) -> int:
        """0 for a new pk; one past the last revision when the pk belonged to a deleted row."""
        if self.pk is None:
            return 0
        last = tombstone_revision(MasterTombstone, using, self.CQRS_ID, to_json(self.pk))
        return 0 if last is None else last + 1

    @classmethod
    def cqrs_field_names(cls) -> list[str]:
        """Names of the fields sent to replicas."""
        names = [f.name for f in cls._meta.concrete_fields]
        if cls.CQRS_FIELDS == '__all__':
            return names
        return [n for n in names if n in set(cls.CQRS_FIELDS) | {FIELD_REVISION, FIELD_UPDATED}
                or n == cls._meta.pk.name]

    def to_cqrs_dict(self, using: str | None = None, sync: bool = False) -> dict[str, Any]:
        """The row as sent to replicas: JSON-safe, always with ``cqrs_revision`` and ``cqrs_updated``."""
        if self.CQRS_SERIALIZER:
            serializer = type(self).cqrs_serializer_class()
            data: dict[str, Any] = to_json(dict(serializer(self).data))
            data[FIELD_REVISION] = self.cqrs_revision
            data[FIELD_UPDATED] = to_json(self.cqrs_updated)
            return data
        names = None if self.CQRS_FIELDS == '__all__' else self.cqrs_field_names()
        try:
            return instance_to_dict(self, names)
        except PendingExpression:  # saved as F('n') + 1: its value is in the database (unsaved: raised again)
            self._cqrs_refresh_expressions(using)
            return instance_to_dict(self, names)

    @classmethod
    def cqrs_serializer_class(cls) -> Any:
        """The class ``CQRS_SERIALIZER`` names, imported once (kept as ``_cqrs_serializer_class``).

        Raises:
            ImportError: the dotted path cannot be imported (system check E012 reports it too).
        """
        path = cls.CQRS_SERIALIZER
        if cls.__dict__.get('_cqrs_serializer_path') != path:
            try:
                serializer = import_string(str(path))
            except ImportError as exc:
                raise ImportError(f"{cls._meta.label}: CQRS_SERIALIZER can't be imported. ({path!r}: {exc})") from exc
            cls._cqrs_serializer_class, cls._cqrs_serializer_path = serializer, path
        return cls.__dict__['_cqrs_serializer_class']

    def _cqrs_refresh_expressions(self, using: str | None) -> None:
        """Read back fields saved as expressions (``F('n') + 1``): their values are in the database."""
        stale = [f.attname for f in self._meta.concrete_fields
                 if isinstance(getattr(self, f.attname, None), Combinable)]
        if stale and self.pk is not None:
            self.refresh_from_db(using=using, fields=stale)

    def get_tracked_fields_data(self) -> dict[str, Any] | None:
        """What the last save changed in the tracked fields: previous values, JSON-safe.

        Captured by the first save of the instance in a transaction (later saves in the same
        transaction keep it); a created row gives its tracked columns with ``None``. ``None`` for a
        model without tracked fields or an instance not saved yet.
        """
        data: dict[str, Any] | None = self.__dict__.get(tracker.TRACKED_DATA_ATTR)
        return data

    def get_cqrs_meta(self, **kwargs: Any) -> dict[str, Any]:
        """Metadata sent with every event of this instance; ``meta_function`` output by default.

        ``kwargs`` are those django-cqrs passes: ``signal_type``, ``instance_data`` and (not for a
        DELETE) ``previous_data``. The function is called as django-cqrs calls it,
        ``meta_function(obj=instance, **kwargs)``; a function that names ``instance`` gets the
        instance under that name too, and one without ``**kwargs`` only the keywords it names.
        ``None`` means no metadata.
        """
        meta_function = get_settings().master.meta_function
        if meta_function is None:
            return {}
        if 'instance_data' not in kwargs and wants_keyword(meta_function, 'instance_data'):
            kwargs['instance_data'] = self.to_cqrs_dict()  # serialized only for a function that asks for it
        meta = call_accepting(meta_function, obj=self, **kwargs, **(
            {'instance': self} if names_parameter(meta_function, 'instance') else {}))
        if meta is None:
            return {}
        if not isinstance(meta, Mapping):
            raise MetaError(f"CQRS['master']['meta_function'] ({name_of(meta_function)}) must return a dict or None, "
                            f'not {type(meta).__name__}')
        return dict(meta)

    def get_custom_cqrs_delete_data(self) -> dict[str, Any] | None:
        """Extra data sent with a DELETE: under ``instance_data['custom']`` (and merged into it)."""
        return None

    @classmethod
    def call_post_bulk_create(cls, instances: list[Any], using: str | None = None) -> None:
        """Send ``post_bulk_create`` for rows inserted without ``save()``: a ``MasterMixin`` model publishes them."""
        from cqrs_celery.signals import post_bulk_create

        post_bulk_create.send(cls, instances=instances, using=using)

    @classmethod
    def call_post_update(cls, instances: list[Any], using: str | None = None) -> None:
        """Send ``post_update`` for rows changed without ``save()``: a ``MasterMixin`` model publishes them.

        Bump their ``cqrs_revision`` in the same update, or replicas skip them as duplicates.
        """
        from cqrs_celery.signals import post_update

        post_update.send(cls, instances=instances, using=using)

    def is_sync_instance(self) -> bool:
        """Whether ``cqrs_sync`` and the sync command publish this instance."""
        return True

    @classmethod
    def relate_cqrs_serialization(cls, queryset: models.QuerySet[Any]) -> models.QuerySet[Any]:
        """Add ``select_related``/``prefetch_related`` that serialization needs."""
        return queryset

    def cqrs_sync(self, using: str | None = None, queue: str | None = None) -> bool:
        """Publish this row's current state as a SYNC; to one replica queue when ``queue`` is given.

        Returns:
            False when the row does not exist or ``is_sync_instance()`` is False.
        """
        from cqrs_celery.master import publish
        from cqrs_celery.producer import send

        using = using or router.db_for_read(type(self), instance=self)
        try:
            fresh = type(self).relate_cqrs_serialization(type(self)._base_manager.using(using)).get(pk=self.pk)
        except type(self).DoesNotExist:
            return False
        if not fresh.is_sync_instance():
            return False
        send(publish.build_envelope(fresh, SignalType.SYNC, using, queue=queue))
        return True


def _same_transaction(alias: str, hooks: Any) -> bool:
    """True while the transaction that had on-commit list ``hooks`` is still the current one.

    Django gives a connection a new list at every commit, rollback and savepoint rollback, so an
    instance that changed the row in a savepoint rolled back since then changes it again.
    """
    connection = connections[alias]
    return bool(connection.in_atomic_block) and connection.run_on_commit is hooks


def _payload_expression(model: Any, payload: str) -> RawSQL:
    sql, params = triggers.payload_sql(model, payload)
    return RawSQL(sql, params, output_field=models.IntegerField())


def _plus(value: Any, extra: RawSQL) -> Any:
    """``value + extra`` as an expression, ``value`` being an expression or a plain number."""
    if not hasattr(value, 'resolve_expression'):
        value = Value(value, output_field=models.IntegerField())
    return value + extra


_REVISION_SQL: dict[str, str] = {}


def _insert_revision_sql(connection: Any) -> str:
    """SQL giving a new row's revision: one past its pk's master tombstone, else 0."""
    sql = _REVISION_SQL.get(connection.vendor)
    if sql is None:
        quote = connection.ops.quote_name
        sql = _REVISION_SQL[connection.vendor] = (
            f'COALESCE((SELECT {quote("revision")} + 1 FROM {quote(MasterTombstone._meta.db_table)} '
            f'WHERE {quote("cqrs_id")} = %s AND {quote("pk_hash")} = %s), 0)')
    return sql


class MasterMixin(RawMasterMixin):
    """A replicated model whose saves and deletes publish automatically after commit."""

    _cqrs_auto_publish: ClassVar[bool] = True

    class Meta:
        abstract = True


def _prepare_master(sender: type[models.Model], **kwargs: Any) -> None:
    if not issubclass(sender, RawMasterMixin) or sender._meta.abstract or sender._meta.proxy:
        return
    prepare(sender)


def prepare(model: type[models.Model]) -> None:
    """Check ``model``'s declaration, add its field tracker and register it (class preparation)."""
    require_cqrs_id(model)
    for attr in ('CQRS_FIELDS', 'CQRS_TRACKED_FIELDS'):
        value = getattr(model, attr)
        if value is None and attr == 'CQRS_TRACKED_FIELDS':
            continue
        if value != '__all__' and not (isinstance(value, list | tuple | set | frozenset)
                                       and all(isinstance(name, str) for name in value)):
            raise ConfigurationError(
                f"{model._meta.label}.{attr} must be '__all__' or a list of field names, not {value!r}."
            )
    serializer = getattr(model, 'CQRS_SERIALIZER', None)
    if serializer is not None and not (isinstance(serializer, str) and serializer):
        raise ConfigurationError(
            f'{model._meta.label}.CQRS_SERIALIZER must be the dotted path of a serializer class '
            f"(e.g. 'shop.serializers.BookSerializer') or None, not {serializer!r}."
        )
    tracked = getattr(model, 'CQRS_TRACKED_FIELDS', None)
    if tracked and tracker.TRACKER_NAME not in model.__dict__:
        tracker.CQRSTracker.add_to_model(model, tracked)
    MasterRegistry.register(model)


@functools.cache
def _custom_fields(model: Any) -> tuple[Any, ...]:
    """Replicated fields of classes outside Django: their values are checked at save time."""
    if model.CQRS_SERIALIZER:
        return ()
    names = set(model.cqrs_field_names())
    return tuple(f for f in model._meta.concrete_fields
                 if f.name in names and not type(f).__module__.startswith('django.'))


@functools.cache
def _json_fields(model: Any) -> tuple[Any, ...]:
    """Replicated JSON fields: how deep their values nest is checked at save time."""
    if model.CQRS_SERIALIZER:
        return ()
    names = set(model.cqrs_field_names())
    return tuple(f for f in model._meta.concrete_fields if f.name in names and isinstance(f, models.JSONField))


def _refuse_unsendable(instance: Any, field: Any) -> None:
    """``DataError`` for a JSON value a replica queue would refuse (checked before the save): nested
    deeper than it accepts, or holding a kombu type marker."""
    deepest = get_settings().replica.max_nesting_depth - ENVELOPE_LEVELS
    reason = unsendable(field.value_from_object(instance), deepest)
    if reason is not None:
        raise DataError(f'{instance._meta.label}.{field.name}: the value {reason}; the row is not saved')


# Declaration errors must surface when the class is defined, before any request or worker runs.
class_prepared.connect(_prepare_master, dispatch_uid='cqrs_celery.master.prepare')
