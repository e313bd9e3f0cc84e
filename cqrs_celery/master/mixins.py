"""Master model mixins: the revision fields, the save that bumps them, serialization and syncs."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from django.db import connections, models, router, transaction
from django.db.models.expressions import Combinable, RawSQL
from django.db.models.signals import class_prepared
from django.utils import timezone
from django.utils.module_loading import import_string
from model_utils import FieldTracker

from cqrs_celery.conf import get_settings
from cqrs_celery.constants import FIELD_REVISION, FIELD_UPDATED, SignalType
from cqrs_celery.exceptions import ConfigurationError, MetaError
from cqrs_celery.master import triggers
from cqrs_celery.models import MasterTombstone, pk_hash, pk_key, tombstone_revision, tombstone_revisions
from cqrs_celery.registry import MasterRegistry, require_cqrs_id
from cqrs_celery.serialization import field_value, instance_to_dict, to_json

TRACKER_NAME = 'cqrs_tracker'


class MasterManager(models.Manager):  # type: ignore[type-arg]
    """``Model.cqrs``: bulk operations that publish one event per row."""

    def bulk_create(self, objs: Sequence[models.Model], **kwargs: Any) -> list[Any]:  # type: ignore[override]
        """Insert ``objs`` in bulk and publish a SAVE for each after commit."""
        from cqrs_celery.master import publish
        from cqrs_celery.signals import post_bulk_create

        using = self.db
        objs = list(objs)
        with transaction.atomic(using=using, savepoint=False):
            now = timezone.now()
            explicit = [obj for obj in objs if obj.pk is not None]
            last = tombstone_revisions(MasterTombstone, using, self.model.CQRS_ID,
                                       [to_json(obj.pk) for obj in explicit]) if explicit else {}
            for obj in objs:
                deleted = None if obj.pk is None else last.get(pk_key(to_json(obj.pk)))
                obj.cqrs_revision = 0 if deleted is None else deleted + 1  # type: ignore[attr-defined]
                obj.cqrs_updated = now  # type: ignore[attr-defined]
            created = super().bulk_create(objs, **kwargs)
            post_bulk_create.send(sender=self.model, instances=created, using=using)
            publish.schedule_many(created, SignalType.SAVE, using)
        return created

    def bulk_update(self, queryset: models.QuerySet[Any], **values: Any) -> int:  # type: ignore[override]
        """``queryset.update(**values)`` that bumps revisions and publishes a SAVE per row."""
        from cqrs_celery.master import publish
        from cqrs_celery.signals import post_update

        using = queryset.db
        with transaction.atomic(using=using, savepoint=False):
            pks = list(queryset.select_for_update().values_list('pk', flat=True))
            rows = self.model._base_manager.using(using).filter(pk__in=pks)
            count: int = rows.update(cqrs_revision=models.F(FIELD_REVISION) + 1, cqrs_updated=timezone.now(),
                                     **values)
            updated = list(rows)
            post_update.send(sender=self.model, instances=updated, using=using)
            publish.schedule_many(updated, SignalType.SAVE, using)
        return count


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

    class Meta:
        abstract = True

    def save(self, *args: Any, update_cqrs_fields: bool = False, **kwargs: Any) -> None:
        """Save and bump ``cqrs_revision`` in the same transaction.

        With ``update_fields``, the revision is bumped (and the change published) when a replicated
        field is among them, when ``update_cqrs_fields=True``, or when
        ``CQRS['master']['CQRS_AUTO_UPDATE_FIELDS']`` is on; otherwise the save is master-only.
        """
        using = kwargs.get('using') or router.db_for_write(type(self), instance=self)
        update_fields = kwargs.get('update_fields')
        self._cqrs_skip = False
        if update_fields is not None:
            fields = set(update_fields)
            if (update_cqrs_fields or get_settings().master.auto_update_fields
                    or fields & set(self.cqrs_field_names())):
                kwargs['update_fields'] = fields | {FIELD_REVISION, FIELD_UPDATED}
            else:
                self._cqrs_skip = True
                super().save(*args, **kwargs)
                return
        for field in _custom_fields(type(self)):
            field_value(field, self)  # refuse now what could not be sent later (DataError)
        self._cqrs_by_trigger = triggers.active(using, type(self))
        # With a trigger the database writes the outbox event in the row's own statement: nothing to
        # add, so no transaction of our own either (see master/triggers.py).
        with contextlib.nullcontext() if self._cqrs_by_trigger else transaction.atomic(using=using, savepoint=False):
            self._cqrs_loaded_revision = self.cqrs_revision
            # The database adds 1 in the UPDATE itself, which orders concurrent saves without reading
            # the row first; if the save turns out to be an INSERT, _do_insert picks the revision.
            self.cqrs_revision = 0 if self.pk is None else models.F(FIELD_REVISION) + 1
            try:
                super().save(*args, **kwargs)
            finally:
                self._cqrs_settle_revision()

    def _save_table(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._save_table(*args, **kwargs)  # type: ignore[misc]
        finally:
            self._cqrs_settle_revision()  # before post_save: receivers see a number, not F()

    def _cqrs_settle_revision(self) -> None:
        if isinstance(self.cqrs_revision, Combinable):
            # An UPDATE: what this instance knew plus one (refresh_from_db() reads the exact value).
            loaded = getattr(self, '_cqrs_loaded_revision', None)
            self.cqrs_revision = loaded + 1 if isinstance(loaded, int) else 0

    def _do_insert(self, manager: Any, using: str, fields: Any, returning_fields: Any, raw: bool) -> Any:
        """Insert with the revision a new row starts at: 0, or one past its pk's tombstone.

        Where the database returns inserted columns, the tombstone is read inside the INSERT
        (a subquery) and the revision comes back with it: one statement for a new row.
        """
        if not isinstance(self.cqrs_revision, Combinable):
            return super()._do_insert(manager, using, fields, returning_fields, raw)  # type: ignore[misc]
        if not connections[using].features.can_return_columns_from_insert:
            self.cqrs_revision = self._cqrs_revision_for_insert(using)
            return super()._do_insert(manager, using, fields, returning_fields, raw)
        key = pk_hash(pk_key(to_json(self.pk)))
        self.cqrs_revision = RawSQL(_insert_revision_sql(connections[using]), (self.CQRS_ID, key),
                                    output_field=models.IntegerField())
        returning = [*(returning_fields or []), self._meta.get_field(FIELD_REVISION)]
        rows = super()._do_insert(manager, using, fields, returning, raw)
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
            serializer = import_string(self.CQRS_SERIALIZER)
            data: dict[str, Any] = to_json(dict(serializer(self).data))
            data[FIELD_REVISION] = self.cqrs_revision
            data[FIELD_UPDATED] = to_json(self.cqrs_updated)
            return data
        names = None if self.CQRS_FIELDS == '__all__' else self.cqrs_field_names()
        return instance_to_dict(self, names)

    def get_tracked_fields_data(self) -> dict[str, Any] | None:
        """Values of the tracked fields before the unsaved changes, JSON-safe (None if untracked)."""
        tracker = getattr(self, TRACKER_NAME, None)
        if tracker is None:
            return None
        return {name: to_json(value) for name, value in tracker.changed().items()}

    def get_cqrs_meta(self, **kwargs: Any) -> dict[str, Any]:
        """Metadata sent with every event of this instance; ``meta_function`` output by default.

        ``kwargs`` are ``signal_type`` and ``previous_data`` (as django-cqrs passes them). The
        function is called with the instance as ``instance=`` and ``obj=`` (django-cqrs's name) and
        those keywords, each only if its signature takes it; ``None`` means no metadata.
        """
        meta_function = get_settings().master.meta_function
        if meta_function is None:
            return {}
        accepted = _accepted(meta_function)
        if accepted is not None and 'instance_data' in accepted and 'instance_data' not in kwargs:
            kwargs['instance_data'] = self.to_cqrs_dict()  # serialized only for a function that asks for it
        meta = call_accepting(meta_function, instance=self, obj=self, **kwargs)
        if meta is None:
            return {}
        if not isinstance(meta, Mapping):
            raise MetaError(f"CQRS['master']['meta_function'] ({_name(meta_function)}) must return a dict or None, "
                            f'not {type(meta).__name__}')
        return dict(meta)

    def get_custom_cqrs_delete_data(self) -> dict[str, Any] | None:
        """Extra data sent with a DELETE (merged into ``instance_data``)."""
        return None

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


def call_accepting(function: Callable[..., Any], **kwargs: Any) -> Any:
    """Call ``function`` with those of ``kwargs`` its signature takes (all of them if it takes ``**kwargs``)."""
    accepted = _accepted(function)
    return function(**(kwargs if accepted is None else {k: v for k, v in kwargs.items() if k in accepted}))


@functools.lru_cache(maxsize=256)
def _accepted(function: Callable[..., Any]) -> frozenset[str] | None:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: give it everything
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _name(function: Any) -> str:
    return f'{getattr(function, "__module__", "?")}.{getattr(function, "__qualname__", function)}'


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
    require_cqrs_id(sender)
    for attr in ('CQRS_FIELDS', 'CQRS_TRACKED_FIELDS'):
        value = getattr(sender, attr)
        if value is None and attr == 'CQRS_TRACKED_FIELDS':
            continue
        if value != '__all__' and (isinstance(value, str) or not isinstance(value, Sequence | set)):
            raise ConfigurationError(
                f"{sender._meta.label}.{attr} must be '__all__' or a list of field names, not {value!r}."
            )
    tracked = sender.CQRS_TRACKED_FIELDS
    if tracked:
        names = [f.name for f in sender._meta.concrete_fields] if tracked == '__all__' else list(tracked)
        tracker = FieldTracker(fields=[n for n in names if _has_field(sender, n)])
        tracker.name, tracker.attname = TRACKER_NAME, f'_{TRACKER_NAME}'
        tracker.finalize_class(sender)
    MasterRegistry.register(sender)


@functools.cache
def _custom_fields(model: Any) -> tuple[Any, ...]:
    """Replicated fields of classes outside Django: their values are checked at save time."""
    if model.CQRS_SERIALIZER:
        return ()
    names = set(model.cqrs_field_names())
    return tuple(f for f in model._meta.concrete_fields
                 if f.name in names and not type(f).__module__.startswith('django.'))


def _has_field(model: type[models.Model], name: str) -> bool:
    return any(f.name == name for f in model._meta.concrete_fields)


# Declaration errors must surface when the class is defined, before any request or worker runs.
class_prepared.connect(_prepare_master, dispatch_uid='cqrs_celery.master.prepare')
