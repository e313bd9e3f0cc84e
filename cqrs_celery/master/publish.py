"""Turn committed master changes into envelopes and hand them to Celery.

Changes are collected per transaction and published from ``transaction.on_commit``: a rollback
publishes nothing, and a row changed several times in one transaction is published once.

With the outbox (``CQRS['master']['outbox']``, the default) each change also writes its envelope
to the outbox table inside the transaction, one row per changed instance, rewritten by later
changes; a rolled-back savepoint rolls the row back with the change. Without it, the state is read
back after commit (so a change undone by a rolled-back savepoint is never sent).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Iterable
from typing import Any

from django.db import connections, models, transaction
from django.utils import timezone

from cqrs_celery.conf import get_settings
from cqrs_celery.constants import FIELD_REVISION, FIELD_UPDATED, SignalType
from cqrs_celery.envelope import Envelope
from cqrs_celery.master import outbox
from cqrs_celery.models import MasterTombstone, tombstone_revision
from cqrs_celery.producer import send
from cqrs_celery.serialization import to_json

logger = logging.getLogger(__name__)


def build_envelope(instance: Any, signal_type: SignalType, using: str | None = None, *,
                   queue: str | None = None, previous_data: dict[str, Any] | None = None,
                   instance_data: dict[str, Any] | None = None) -> Envelope:
    """The envelope describing ``instance`` (its current in-memory state unless data is given)."""
    master = get_settings().master
    ttl = master.message_ttl
    correlation = master.correlation_function
    data = instance.to_cqrs_dict(using=using, sync=signal_type == SignalType.SYNC) \
        if instance_data is None else instance_data
    return Envelope(
        signal_type=signal_type,
        cqrs_id=instance.CQRS_ID,
        instance_pk=to_json(instance.pk),
        instance_data=data,
        previous_data=previous_data,
        meta=to_json(instance.get_cqrs_meta(signal_type=signal_type)) or None,
        correlation_id=None if correlation is None else _str_or_none(correlation()),
        queue=queue,
        expires=timezone.now() + datetime.timedelta(seconds=ttl) if ttl else None,
    )


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclasses.dataclass
class _Pending:
    previous_data: dict[str, Any] | None = None
    delete_envelope: Envelope | None = None
    #: Lowest revision this transaction saved; a committed row below it kept none of our saves.
    first_revision: int | None = None
    #: This row's event in the outbox table (outbox mode).
    outbox_id: int | None = None


class _Batch:
    """Rows changed in one transaction on one database, published once after it commits."""

    def __init__(self, using: str) -> None:
        self.using = using
        self.rows: dict[tuple[type[models.Model], Any], _Pending] = {}

    def add(self, instance: Any, previous_data: dict[str, Any] | None,
            delete_envelope: Envelope | None) -> None:
        pending = self._track(instance, previous_data, delete_envelope)
        if get_settings().master.outbox:
            envelope = delete_envelope or build_envelope(_stored(instance, self.using), SignalType.SAVE,
                                                         self.using, previous_data=pending.previous_data)
            pending.outbox_id = outbox.write(self.using, envelope, pending.outbox_id)

    def add_saved(self, model: Any, instances: list[Any]) -> None:
        """``add`` for many saved rows of one model: one query to read them, one to write the events."""
        pendings = [self._track(instance, None, None) for instance in instances]
        if not get_settings().master.outbox:
            return
        stored = {obj.pk: obj for obj in model.relate_cqrs_serialization(
            model._base_manager.using(self.using).filter(pk__in=[i.pk for i in instances]))}
        envelopes = [build_envelope(stored[model._meta.pk.to_python(instance.pk)], SignalType.SAVE, self.using,
                                    previous_data=pending.previous_data)
                     for instance, pending in zip(instances, pendings, strict=True)]
        new = [(p, e) for p, e in zip(pendings, envelopes, strict=True) if p.outbox_id is None]
        for (pending, _), event_id in zip(new, outbox.write_many(self.using, [e for _, e in new]), strict=True):
            pending.outbox_id = event_id
        new_ids = {id(p) for p, _ in new}
        for pending, envelope in zip(pendings, envelopes, strict=True):
            if id(pending) not in new_ids:  # already had an event in this transaction
                pending.outbox_id = outbox.write(self.using, envelope, pending.outbox_id)

    def _track(self, instance: Any, previous_data: dict[str, Any] | None,
               delete_envelope: Envelope | None) -> _Pending:
        # The same row may be saved through instances whose pk has another type ('7' and 7).
        pk = instance._meta.pk.to_python(instance.pk)
        pending = self.rows.setdefault((type(instance), pk), _Pending())
        if delete_envelope is None and (pending.first_revision is None
                                        or instance.cqrs_revision < pending.first_revision):
            pending.first_revision = instance.cqrs_revision
        if previous_data:
            merged = dict(previous_data)
            merged.update(pending.previous_data or {})  # the earliest value of each field wins
            pending.previous_data = merged
        pending.delete_envelope = delete_envelope
        return pending

    def flush(self) -> None:
        if get_settings().master.outbox:
            ids = [p.outbox_id for p in self.rows.values() if p.outbox_id is not None]
            try:
                outbox.publish_committed(self.using, ids)
            except Exception:
                logger.exception('cqrs outbox publish failed after commit; the relay will publish %s events',
                                 len(ids))
            return
        by_model: dict[type[models.Model], list[Any]] = {}
        for model, pk in self.rows:
            by_model.setdefault(model, []).append(pk)
        for model, pks in by_model.items():
            fresh = {obj.pk: obj for obj in model.relate_cqrs_serialization(  # type: ignore[attr-defined]
                model._base_manager.using(self.using).filter(pk__in=pks))}
            for pk in pks:
                self._publish_one(model, pk, fresh.get(pk))

    def _publish_one(self, model: Any, pk: Any, fresh: Any) -> None:
        pending = self.rows[(model, pk)]
        envelope = None
        try:
            if fresh is not None:
                # Saved only inside a rolled-back savepoint: the committed row is not our change.
                if pending.first_revision is not None and fresh.cqrs_revision >= pending.first_revision:
                    envelope = build_envelope(fresh, SignalType.SAVE, self.using,
                                              previous_data=pending.previous_data)
            elif pending.delete_envelope is not None and self._delete_committed(pending.delete_envelope):
                envelope = pending.delete_envelope
            if envelope is not None:
                send(envelope)
        except Exception:
            logger.exception('cqrs publish failed: cqrs_id=%s pk=%s revision=%s',
                             model.CQRS_ID, pk, envelope.revision if envelope else None)

    def _delete_committed(self, envelope: Envelope) -> bool:
        stored = tombstone_revision(MasterTombstone, self.using, envelope.cqrs_id, envelope.instance_pk)
        return stored == envelope.revision


def _stored(instance: Any, using: str) -> Any:
    """The row as the database holds it in this transaction (rounded decimals, ``F()`` results…)."""
    model = type(instance)
    return model.relate_cqrs_serialization(model._base_manager.using(using)).get(pk=instance.pk)


def _current_batch(using: str) -> _Batch:
    connection = connections[using]
    batch: _Batch | None = getattr(connection, '_cqrs_batch', None)
    # A batch whose callback was discarded by a savepoint rollback is no longer valid.
    if batch is None or not any(entry[1] == batch.flush for entry in connection.run_on_commit):
        batch = _Batch(using)
        connection._cqrs_batch = batch  # type: ignore[attr-defined]
        # Publishing only after commit means replicas never see a change that was rolled back,
        # and never receive a message before the row is visible to a reader of the master.
        transaction.on_commit(batch.flush, using=using, robust=True)
    return batch


def schedule(instance: Any, signal_type: SignalType, using: str, *,
             previous_data: dict[str, Any] | None = None, delete_envelope: Envelope | None = None) -> None:
    """Publish ``instance`` after the current transaction commits (at once in autocommit)."""
    if not instance.CQRS_PRODUCE:
        return
    connection = connections[using]
    if not connection.in_atomic_block:
        batch = _Batch(using)
        batch.add(instance, previous_data, delete_envelope)
        batch.flush()
        return
    _current_batch(using).add(instance, previous_data, delete_envelope)


def schedule_many(instances: Iterable[Any], signal_type: SignalType, using: str) -> None:
    """``schedule`` for rows of one model saved in bulk (reads and writes them in batches)."""
    instances = [i for i in instances if i.CQRS_PRODUCE]
    if not instances:
        return
    if not connections[using].in_atomic_block:
        for instance in instances:
            schedule(instance, signal_type, using)
        return
    _current_batch(using).add_saved(type(instances[0]), instances)


def delete_envelope(instance: Any, using: str, revision: int) -> Envelope:
    """The DELETE envelope of ``instance``, carrying the revision of the deletion."""
    pk_name = instance._meta.pk.name
    data = {pk_name: to_json(instance.pk), FIELD_REVISION: revision, FIELD_UPDATED: to_json(timezone.now())}
    data.update(to_json(instance.get_custom_cqrs_delete_data() or {}))
    return build_envelope(instance, SignalType.DELETE, using, instance_data=data)
