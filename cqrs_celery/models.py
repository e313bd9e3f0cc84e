"""Tables cqrs_celery keeps on each side: tombstones of deleted rows, keyed by CQRS_ID and pk."""

from __future__ import annotations

from typing import Any

import ujson
from django.db import models
from django.utils import timezone


def pk_key(pk: Any) -> str:
    """The text a JSON-safe primary key is stored under in a tombstone table."""
    return pk if isinstance(pk, str) else ujson.dumps(pk)


class _Tombstone(models.Model):
    cqrs_id = models.CharField(max_length=200)
    pk_value = models.CharField(max_length=255)
    #: Revision of the DELETE: a SAVE at or below it is older than the deletion.
    revision = models.BigIntegerField()
    deleted_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f'{self.cqrs_id}:{self.pk_value}@{self.revision}'


class MasterTombstone(_Tombstone):
    """Last revision of a deleted master row, so a row re-inserted with that pk continues from it."""

    class Meta:
        constraints = [models.UniqueConstraint(fields=['cqrs_id', 'pk_value'], name='cqrs_master_tomb_uniq')]


class ReplicaTombstone(_Tombstone):
    """Revision at which a replica row was deleted, so a late SAVE cannot bring it back."""

    class Meta:
        constraints = [models.UniqueConstraint(fields=['cqrs_id', 'pk_value'], name='cqrs_replica_tomb_uniq')]


class OutboxEvent(models.Model):
    """An event written in the same transaction as the change it describes, deleted once published."""

    cqrs_id = models.CharField(max_length=200)
    pk_value = models.CharField(max_length=255)
    revision = models.BigIntegerField(null=True)
    #: The envelope as JSON text, exactly as it will be published.
    envelope = models.TextField()
    created = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        indexes = [models.Index(fields=['cqrs_id', 'pk_value'], name='cqrs_outbox_row')]

    def __str__(self) -> str:
        return f'{self.cqrs_id}:{self.pk_value}@{self.revision}'


def record_tombstone(model: type[_Tombstone], using: str, cqrs_id: str, pk: Any, revision: int) -> None:
    """Store ``revision`` for the pk unless a higher one is already there (caller holds the lock)."""
    key = pk_key(pk)
    updated = (model._default_manager.using(using)
               .filter(cqrs_id=cqrs_id, pk_value=key, revision__lt=revision)
               .update(revision=revision, deleted_at=timezone.now()))
    if not updated and not model._default_manager.using(using).filter(cqrs_id=cqrs_id, pk_value=key).exists():
        model._default_manager.using(using).create(cqrs_id=cqrs_id, pk_value=key, revision=revision)


def tombstone_revision(model: type[_Tombstone], using: str, cqrs_id: str, pk: Any) -> int | None:
    return (model._default_manager.using(using).filter(cqrs_id=cqrs_id, pk_value=pk_key(pk))
            .values_list('revision', flat=True).first())
