"""Receivers that turn master saves and deletes into scheduled events (wired in ``apps.py``)."""

from __future__ import annotations

from typing import Any

from django.db import router
from django.db.models.signals import post_delete, post_save, pre_delete

from cqrs_celery.constants import FIELD_REVISION, SignalType
from cqrs_celery.master import publish
from cqrs_celery.models import MasterTombstone, record_tombstone
from cqrs_celery.registry import MasterRegistry
from cqrs_celery.serialization import to_json
from cqrs_celery.signals import post_bulk_create, post_update


def on_post_save(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    if getattr(instance, '_cqrs_skip', False):
        return
    if getattr(instance, '_cqrs_by_trigger', False):
        handed = instance.__dict__.get('_cqrs_handed')
        publish.wake_after_commit(using, None if handed is None else (instance, handed))  # the database wrote the event
        return
    publish.schedule(instance, SignalType.SAVE, using, previous_data=instance.get_tracked_fields_data() or None)


def on_pre_delete(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    # Runs inside the deletion's transaction: lock the row and read the revision it had.
    current = (sender._base_manager.using(using).select_for_update().filter(pk=instance.pk)
               .values_list(FIELD_REVISION, flat=True).first())
    instance._cqrs_delete_revision = (instance.cqrs_revision if current is None else current) + 1


def on_post_delete(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    revision = getattr(instance, '_cqrs_delete_revision', instance.cqrs_revision + 1)
    record_tombstone(MasterTombstone, using, sender.CQRS_ID, to_json(instance.pk), revision)
    if not sender.CQRS_PRODUCE or not instance.is_sync_instance():
        return
    publish.schedule(instance, SignalType.DELETE, using,
                     delete_envelope=publish.delete_envelope(instance, using, revision))


def on_post_bulk(sender: Any, instances: Any, using: str | None = None, **kwargs: Any) -> None:
    """``post_bulk_create`` / ``post_update`` (sent by ``Model.cqrs`` or by hand): publish each row."""
    instances = list(instances)
    if instances:
        publish.schedule_many(instances, SignalType.SAVE, using or router.db_for_write(sender))


def connect_model(model: Any) -> None:
    """Connect the receivers that publish ``model``'s saves, deletes and bulk signals."""
    uid = f'cqrs_celery.{model._meta.label_lower}'
    post_save.connect(on_post_save, sender=model, dispatch_uid=f'{uid}.post_save')
    pre_delete.connect(on_pre_delete, sender=model, dispatch_uid=f'{uid}.pre_delete')
    post_delete.connect(on_post_delete, sender=model, dispatch_uid=f'{uid}.post_delete')
    post_bulk_create.connect(on_post_bulk, sender=model, dispatch_uid=f'{uid}.post_bulk_create')
    post_update.connect(on_post_bulk, sender=model, dispatch_uid=f'{uid}.post_update')


def connect() -> None:
    """Connect the receivers for every ``MasterMixin`` model (``RawMasterMixin`` ones are left alone)."""
    for model in MasterRegistry.models():
        if model._cqrs_auto_publish:
            connect_model(model)
