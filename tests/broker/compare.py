"""Field-by-field comparison of master rows and replica rows."""

from __future__ import annotations

from typing import Any

from tests.master_app.models import AllFields, Author, Book, Item, Publisher
from tests.replica_app.models import ReplicaAllFields, ReplicaAuthor, ReplicaBook, ReplicaItem, ReplicaPublisher

REVISION_FIELDS = ['cqrs_revision', 'cqrs_updated']

#: (master model, replica model, [(master field, replica field), ...])
PAIRS: dict[str, tuple[Any, Any, list[tuple[str, str]]]] = {
    'author': (Author, ReplicaAuthor, [('id', 'id'), ('name', 'name'), ('email', 'email')]),
    'book': (Book, ReplicaBook, [('id', 'id'), ('title', 'name'), ('price', 'price'), ('author_id', 'author_id'),
                                 ('published', 'published')]),
    'item': (Item, ReplicaItem, [('sku', 'sku'), ('name', 'name'), ('quantity', 'quantity')]),
    'publisher': (Publisher, ReplicaPublisher, [('id', 'id'), ('name', 'name')]),
    'all_fields': (AllFields, ReplicaAllFields, [(name, name) for name in (
        'id', 'big', 'char', 'text', 'decimal', 'moment', 'duration', 'document')] + [('author_id', 'author_id')]),
}


def master_rows(cqrs_id: str) -> dict[Any, tuple[Any, ...]]:
    model, _, fields = PAIRS[cqrs_id]
    names = [m for m, _ in fields] + REVISION_FIELDS
    return {row[0]: row for row in model.objects.using('default').order_by('pk').values_list(*names)}


def replica_rows(cqrs_id: str, alias: str) -> dict[Any, tuple[Any, ...]]:
    _, model, fields = PAIRS[cqrs_id]
    names = [r for _, r in fields] + REVISION_FIELDS
    return {row[0]: row for row in model.objects.using(alias).order_by('pk').values_list(*names)}


def differences(cqrs_id: str, alias: str) -> list[str]:
    """Human-readable differences between the master table and one replica's copy."""
    master, replica = master_rows(cqrs_id), replica_rows(cqrs_id, alias)
    problems = [f'{cqrs_id} pk={pk} missing on {alias}' for pk in master.keys() - replica.keys()]
    problems += [f'{cqrs_id} pk={pk} should be deleted on {alias}' for pk in replica.keys() - master.keys()]
    problems += [f'{cqrs_id} pk={pk} master={master[pk]} {alias}={replica[pk]}'
                 for pk in master.keys() & replica.keys() if master[pk] != replica[pk]]
    return sorted(problems)


def in_step(alias: str, *cqrs_ids: str) -> bool:
    return not any(differences(cqrs_id, alias) for cqrs_id in cqrs_ids)


def describe(alias: str, *cqrs_ids: str) -> str:
    found = [d for cqrs_id in cqrs_ids for d in differences(cqrs_id, alias)]
    return f'{len(found)} differences on {alias}: ' + '; '.join(found[:10])
