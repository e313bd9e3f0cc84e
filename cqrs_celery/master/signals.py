"""Receivers that turn master saves and deletes into scheduled events (wired in ``apps.py``)."""

from __future__ import annotations

from typing import Any

from django.db import connections, router
from django.db.models.signals import post_delete, post_save, pre_delete

from cqrs_celery.constants import FIELD_REVISION, SignalType
from cqrs_celery.master import publish, triggers
from cqrs_celery.master.outbox import revision_owner
from cqrs_celery.models import MasterTombstone, lock_and_record_deletion, record_tombstone
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
    # Runs inside the deletion's transaction. Where the table's trigger records the deletion
    # (triggers.py), nothing to do but remember it; otherwise lock the row and read the revision it
    # had (on PostgreSQL storing the tombstone in the same statement, which post_delete then skips).
    instance.__dict__.pop('_cqrs_tombstoned', None)
    if triggers.deletes_active(using, sender):
        instance.__dict__['_cqrs_deleted_by_trigger'] = using
        return
    instance.__dict__.pop('_cqrs_deleted_by_trigger', None)
    connection = connections[using]
    select, params = _locked_revision(connection, sender, instance.pk)
    loaded = instance.cqrs_revision
    if isinstance(loaded, int):
        revision = lock_and_record_deletion(MasterTombstone, using, sender.CQRS_ID, to_json(instance.pk), select,
                                            params, loaded)
        if revision is not None:
            instance._cqrs_delete_revision = revision
            instance.__dict__['_cqrs_tombstoned'] = (using, revision)
            return
    with connection.cursor() as cursor:
        cursor.execute(select, params)
        found = cursor.fetchone()
    instance._cqrs_delete_revision = (instance.cqrs_revision if found is None else found[0]) + 1


_locked_revisions: dict[tuple[str, str, Any], str] = {}


def _locked_revision(connection: Any, model: Any, pk: Any) -> tuple[str, list[Any]]:
    """The ``SELECT`` of row ``pk``'s revision, locking the row where the database can, and its parameters.

    Written once per database and model: building it through the ORM at every delete cost more
    than the rest of the receiver.
    """
    owner = revision_owner(model)
    key = (connection.alias, connection.vendor, owner)
    sql = _locked_revisions.get(key)
    if sql is None:
        quote = connection.ops.quote_name
        lock = ' FOR UPDATE' if connection.features.has_select_for_update else ''
        sql = _locked_revisions[key] = (f'SELECT {quote(FIELD_REVISION)} FROM {quote(owner._meta.db_table)} '
                                        f'WHERE {quote(owner._meta.pk.column)} = %s{lock}')
    field = owner._meta.pk
    return sql, [field.get_db_prep_value(field.to_python(pk), connection)]


def on_post_delete(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    if instance.__dict__.pop('_cqrs_deleted_by_trigger', None) == using:
        publish.wake_after_commit(using)  # the database wrote the event and the tombstone
        return
    revision = getattr(instance, '_cqrs_delete_revision', instance.cqrs_revision + 1)
    if instance.__dict__.pop('_cqrs_tombstoned', None) != (using, revision):
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
