"""``Model.cqrs`` of master models: bulk operations that publish one event per row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from cqrs_celery.constants import FIELD_REVISION, SignalType
from cqrs_celery.master import tracker
from cqrs_celery.models import MasterTombstone, pk_key, tombstone_revisions
from cqrs_celery.serialization import to_json


class MasterManager(models.Manager):  # type: ignore[type-arg]
    """``Model.cqrs``: bulk operations that publish one event per row."""

    def bulk_create(self, objs: Sequence[models.Model], **kwargs: Any) -> list[Any]:  # type: ignore[override]
        """Insert ``objs`` in bulk and publish a SAVE for each after commit (``post_bulk_create`` is sent)."""
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
            tracker.capture_created(objs)
            created = super().bulk_create(objs, **kwargs)
            if created:
                self.model.call_post_bulk_create(created, using=using)
                _publish_unconnected(self.model, created, using)
        return created

    def bulk_update(self, queryset: models.QuerySet[Any], **values: Any) -> int:  # type: ignore[override]
        """``queryset.update(**values)`` that bumps revisions and publishes a SAVE per row.

        With tracked fields, each row's ``previous_data`` is the value of every tracked column before
        the update (as django-cqrs sends it). ``post_update`` is sent with the updated rows.
        """
        using = queryset.db
        tracked = tracker.has_tracker(self.model)
        with transaction.atomic(using=using, savepoint=False):
            locked = queryset.select_for_update()
            if tracked:
                before = {obj.pk: getattr(obj, tracker.TRACKER_NAME).current_json() for obj in locked}
                pks = list(before)
            else:
                pks = list(locked.values_list('pk', flat=True))
            rows = self.model._base_manager.using(using).filter(pk__in=pks)
            count: int = rows.update(cqrs_revision=models.F(FIELD_REVISION) + 1, cqrs_updated=timezone.now(),
                                     **values)
            updated = list(rows)
            if tracked:
                for obj in updated:
                    setattr(obj, tracker.TRACKED_DATA_ATTR, before.get(obj.pk))
            self.model.call_post_update(updated, using=using)
            _publish_unconnected(self.model, updated, using)
        return count


def _publish_unconnected(model: Any, instances: list[Any], using: str) -> None:
    """Publish rows of a model whose signals are not connected (``RawMasterMixin``): bulk operations always publish."""
    from cqrs_celery.master import publish

    if not model._cqrs_auto_publish:
        publish.schedule_many(instances, SignalType.SAVE, using)
