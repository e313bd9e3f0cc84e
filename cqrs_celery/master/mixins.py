"""Master model mixins: the revision fields, the save that bumps them, serialization and syncs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from django.db import models, router, transaction
from django.db.models.signals import class_prepared
from django.utils import timezone
from django.utils.module_loading import import_string
from model_utils import FieldTracker

from cqrs_celery.conf import get_settings
from cqrs_celery.constants import FIELD_REVISION, FIELD_UPDATED, SignalType
from cqrs_celery.exceptions import ConfigurationError
from cqrs_celery.models import MasterTombstone, tombstone_revision
from cqrs_celery.registry import MasterRegistry, require_cqrs_id
from cqrs_celery.serialization import instance_to_dict, to_json

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
            for obj in objs:
                obj.cqrs_revision = obj._cqrs_revision_for_insert(using)  # type: ignore[attr-defined]
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
        with transaction.atomic(using=using, savepoint=False):
            self.cqrs_revision = self._cqrs_next_revision(using)
            super().save(*args, **kwargs)

    def _cqrs_next_revision(self, using: str) -> int:
        if self.pk is None:
            return 0
        current: int | None = (type(self)._base_manager.using(using).select_for_update().filter(pk=self.pk)
                               .values_list(FIELD_REVISION, flat=True).first())
        if current is not None:
            return current + 1
        return self._cqrs_revision_for_insert(using)

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
        """Metadata sent with every event of this instance; ``meta_function`` output by default."""
        meta_function = get_settings().master.meta_function
        return dict(meta_function(instance=self, **kwargs)) if meta_function else {}

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


def _has_field(model: type[models.Model], name: str) -> bool:
    return any(f.name == name for f in model._meta.concrete_fields)


# Declaration errors must surface when the class is defined, before any request or worker runs.
class_prepared.connect(_prepare_master, dispatch_uid='cqrs_celery.master.prepare')
