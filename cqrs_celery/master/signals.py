"""Receivers that turn master saves and deletes into scheduled events (wired in ``apps.py``)."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save, pre_delete

from cqrs_celery.constants import FIELD_REVISION, SignalType
from cqrs_celery.master import publish
from cqrs_celery.models import MasterTombstone, record_tombstone
from cqrs_celery.registry import MasterRegistry
from cqrs_celery.serialization import to_json


def on_post_save(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    if getattr(instance, '_cqrs_skip', False):
        return
    if getattr(instance, '_cqrs_by_trigger', False):
        publish.wake_after_commit(using)  # the database wrote the event
        return
    previous = instance.get_tracked_fields_data() if not kwargs.get('created') else None
    publish.schedule(instance, SignalType.SAVE, using, previous_data=previous or None)


def on_pre_delete(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    # Runs inside the deletion's transaction: lock the row and read the revision it had.
    current = (sender._base_manager.using(using).select_for_update().filter(pk=instance.pk)
               .values_list(FIELD_REVISION, flat=True).first())
    instance._cqrs_delete_revision = (instance.cqrs_revision if current is None else current) + 1


def on_post_delete(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    revision = getattr(instance, '_cqrs_delete_revision', instance.cqrs_revision + 1)
    record_tombstone(MasterTombstone, using, sender.CQRS_ID, to_json(instance.pk), revision)
    publish.schedule(instance, SignalType.DELETE, using,
                     delete_envelope=publish.delete_envelope(instance, using, revision))


def connect() -> None:
    """Connect the receivers for every ``MasterMixin`` model (``RawMasterMixin`` ones are left alone)."""
    for model in MasterRegistry.models():
        if not model._cqrs_auto_publish:
            continue
        uid = f'cqrs_celery.{model._meta.label_lower}'
        post_save.connect(on_post_save, sender=model, dispatch_uid=f'{uid}.post_save')
        pre_delete.connect(on_pre_delete, sender=model, dispatch_uid=f'{uid}.pre_delete')
        post_delete.connect(on_post_delete, sender=model, dispatch_uid=f'{uid}.post_delete')
